"""The single executables built once per source state, for the tests and benchmarks.

`executables()` returns a directory holding `lambda-runtime-api-daemon` and
`lambda-server` (the single files) and `lambda-rapid/` (the directory variant), built by
build-executables.sh into
~/.cache/lambda-rapid/executables/<hash of the sources>/ unless already there. The few
most recently used source states are kept: another checkout's tests (a clone, a worktree)
may be running on one while this one builds its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lambda-rapid"
NAMES = ("lambda-runtime-api-daemon", "lambda-server", "lambda-rapid/lambda-runtime-api-daemon")


def source_hash() -> str:
    """A hash of everything that goes into the executables."""
    digest = hashlib.sha256()
    files = sorted((REPO / "src" / "lambda_rapid").rglob("*.py"))
    files += sorted(p for p in (REPO / "packaging").iterdir() if p.is_file())
    files.append(REPO / "pyproject.toml")
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def executables() -> Path:
    """The directory of the executables for the current sources, building them if needed."""
    target = CACHE / "executables" / source_hash()
    if not all((target / name).is_file() for name in NAMES):
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others reuse it
            if not all((target / name).is_file() for name in NAMES):
                _build(target)
                prune(target.parent, KEEP)
    os.utime(target)  # used now: the last to be pruned
    return target


KEEP = 3  # source states whose executables stay in the cache


def prune(directory: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used builds in `directory`."""
    builds = sorted(directory.iterdir(), key=lambda build: build.stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _build(target: Path) -> None:
    env = dict(os.environ, BUILD_DIR=str(CACHE / "build"), DIST_DIR=str(target))
    result = subprocess.run(
        [str(REPO / "packaging" / "build-executables.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"build-executables.sh failed:\n{result.stderr[-4000:]}")


if __name__ == "__main__":
    print(executables())
