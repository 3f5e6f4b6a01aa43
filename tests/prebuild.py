"""Build what the slowest-to-prepare tests need, into the caches they read from: the Go
runtimes (tests/e2e/go_toolchain.py) and the single executables
(packaging/cached_build.py), both at once. Started in the background by tests/conftest.py."""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "packaging"))

from cached_build import CACHE, executables  # noqa: E402

from tests.e2e.go_toolchain import build_go_echo, build_go_program, go_executable  # noqa: E402


def build_go_runtimes() -> None:
    if go_executable() is not None:
        with tempfile.TemporaryDirectory() as out:
            build_go_echo(Path(out))
            hostile = REPO / "tests" / "e2e" / "functions" / "scratch"
            build_go_program(hostile, "hostile", Path(out), CACHE / "go")


def main() -> None:
    # The executables take longest and their tests come last: start them first.
    executable = threading.Thread(target=executables)
    executable.start()
    build_go_runtimes()
    executable.join()


if __name__ == "__main__":
    main()
