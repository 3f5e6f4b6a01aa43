"""Turn PyInstaller's one-folder output into the directory variant and the single file.

`python bundle.py complete DIR` adds to the bundle DIR what it needs from the build
machine (the C library and its loader, renamed ld-lambda-rapid.so.2 so that PyInstaller
recognizes it as a loader and `ps` shows a telling name; every other shared library a
bundled binary needs and the bundle lacks) and the program names under _internal/names.

`python bundle.py pack DIR LAUNCHER OUT` writes the single file: the static launcher,
the bundle's files but the archive (zstd-compressed), a trailer, and the archive last,
where PyInstaller's bootloader finds it (see launcher.c for the format).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

LOADER_NAME = "ld-lambda-rapid.so.2"
NAMES = ("lambda-runtime-api-daemon", "lambda-server")
ARCHIVE = "lambda-rapid.pkg"
PAYLOAD_MAGIC = b"LRPAYLD1"


def is_elf(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"\x7fELF"


def needed(path: Path) -> dict[str, str]:
    """The shared libraries `path` needs, by name, with where this machine has them."""
    result = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    found = {}
    for line in result.stdout.splitlines():
        match = re.match(r"\s*(\S+) => (/\S+)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def loader_of(path: Path) -> str:
    result = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True)
    for line in result.stdout.splitlines():
        match = re.match(r"\s*(/\S*ld-linux\S*)", line)
        if match:
            return match.group(1)
    raise SystemExit(f"{path}: no dynamic loader in ldd's output")


def complete(bundle: Path) -> None:
    internal = bundle / "_internal"
    elves = [p for p in bundle.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p)]
    present = {p.name for p in internal.rglob("*")}
    queue = list(elves)
    while queue:
        for name, source in needed(queue.pop()).items():
            if name not in present:
                target = internal / name
                shutil.copy2(os.path.realpath(source), target)
                target.chmod(0o755)
                present.add(name)
                queue.append(target)
    shutil.copy2(os.path.realpath(loader_of(bundle / "lambda-rapid")), internal / LOADER_NAME)
    (internal / LOADER_NAME).chmod(0o755)
    names = internal / "names"
    names.mkdir(exist_ok=True)
    for name in NAMES:
        link = names / name
        if link.is_symlink():
            link.unlink()
        link.symlink_to("../../lambda-rapid")


def compress(path: Path) -> bytes:
    """zstd: it unpacks several times faster than zlib, and start-up waits for it."""
    command = ["zstd", "-q", "-c", "-19", str(path)]
    return subprocess.run(command, capture_output=True, check=True).stdout


def entries(bundle: Path) -> list[Path]:
    """Every path in the bundle but the archive, parents first."""
    paths = sorted(p for p in bundle.rglob("*") if p.relative_to(bundle) != Path(ARCHIVE))
    return sorted(paths, key=lambda p: len(p.relative_to(bundle).parts))


def entry(bundle: Path, path: Path) -> bytes:
    name = str(path.relative_to(bundle)).encode()
    mode = stat.S_IMODE(path.lstat().st_mode)
    if path.is_symlink():
        kind, data = b"l", os.readlink(path).encode()
    elif path.is_dir():
        kind, data = b"d", b""
    else:
        kind, data = b"f", compress(path)
    return kind + struct.pack(">IHQ", mode, len(name), len(data)) + name + data


def pack(bundle: Path, launcher: Path, out: Path) -> None:
    head = launcher.read_bytes()
    # One zstd process per file, as many at once as there are CPUs; written in order.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool, open(out, "wb") as file:
        file.write(head)
        for data in pool.map(partial(entry, bundle), entries(bundle)):
            file.write(data)
        file.write(b"e" + bytes(14))
        file.write(PAYLOAD_MAGIC + struct.pack(">Q", len(head)))
        file.write((bundle / ARCHIVE).read_bytes())
    out.chmod(0o755)


if __name__ == "__main__":
    if sys.argv[1] == "complete":
        complete(Path(sys.argv[2]))
    else:
        pack(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
