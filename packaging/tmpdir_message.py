"""Make the static loader's temp-directory error name TMPDIR (edits the file in place).

The loader unpacks into $TMPDIR (else /tmp) before any of our code runs, so its own
message is what a user sees when that directory is missing or read-only. The new text
replaces the old one in the loader's read-only data, padded to the same length.
"""

import sys

OLD = b"Failed to create temporary directory in %s\0"
NEW = b"cannot unpack into TMPDIR (or /tmp) %s\0"


def main(path: str) -> None:
    with open(path, "rb") as file:
        data = file.read()
    if data.count(OLD) != 1:
        raise SystemExit(f"{path}: the loader's temp-directory message was not found once")
    with open(path, "wb") as file:
        file.write(data.replace(OLD, NEW.ljust(len(OLD), b"\0")))


if __name__ == "__main__":
    main(sys.argv[1])
