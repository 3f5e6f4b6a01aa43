"""Figures of the single executable beside the installed package (and the Go daemon).

`python -m bench.executable [--rounds N] [--go-daemon PATH]` builds (or reuses) the
single file and the directory variant, then, with the static Go echo function as the
runtime (its first instance starts with the daemon: PROACTIVE_INIT), measures from exec
to the first answered invocation, the file (or directory) size, the bytes unpacked into
the temp directory per start, and the resident memory of the daemon's processes (the
launcher and the daemon, not the runtime) once it has answered. Each round also starts
every variant with the raw Python runtime (`bench/raw_runtime.py`) and takes that
runtime's own start-up, measured alone just before, from its first answer: the daemon's
share of a cold start, as `python -m bench` reports it for the installed package.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "packaging"))
sys.path.insert(0, str(REPO))

from cached_build import CACHE, executables  # noqa: E402

from bench.__main__ import RAW, runtime_startup  # noqa: E402
from tests.e2e.go_toolchain import build_go_echo  # noqa: E402

INSTALLED = str(Path(sys.executable).parent / "lambda-runtime-api-daemon")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found = [pid]
    for parent in found:
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as children:
                found.extend(int(child) for child in children.read().split())
        except OSError:
            pass
    return found


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def one_start(daemon: str, runtime: Path, temp: Path) -> dict[str, float]:
    first, proc = first_answer(daemon, [str(runtime)], temp)
    daemon_pids = [pid for pid in tree(proc.pid) if _cmdline(pid)[:1] != [str(runtime)]]
    rss = sum(rss_kb(pid) for pid in daemon_pids) / 1024
    unpacked = du(temp) / 1e6
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    left = du(temp) / 1e6
    return {"first_ms": first, "rss_mb": rss, "unpacked_mb": unpacked, "left_mb": left}


def raw_share(daemon: str, temp: Path) -> float:
    """The daemon's share of a cold start with the raw Python runtime, in ms."""
    alone = runtime_startup(RAW) * 1000
    first, proc = first_answer(daemon, RAW, temp)
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    return first - alone


def first_answer(
    daemon: str, runtime: list[str], temp: Path
) -> tuple[float, subprocess.Popen[bytes]]:
    """Start `daemon` with `runtime`; ms from exec to its first answer, and the process."""
    port = free_port()
    env = dict(os.environ, PORT=str(port), INVOKE_API_HOST="127.0.0.1", RUNTIME_API_PORT="0")
    env["TMPDIR"] = str(temp)
    url = f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [daemon, *runtime],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=10) as r:
                r.read()
            break
        except ConnectionError:
            time.sleep(0.001)
        except urllib.error.URLError as error:
            if not isinstance(error.reason, ConnectionError):
                raise
            time.sleep(0.001)
    return (time.perf_counter() - started) * 1000, proc


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().decode().split("\0")[:-1]
    except OSError:
        return []


def measure(name: str, daemon: str, runtime: Path, rounds: int) -> dict[str, object]:
    runs = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as temp:
            runs.append(one_start(daemon, runtime, Path(temp)))
        with tempfile.TemporaryDirectory() as temp:
            runs[-1]["share_ms"] = raw_share(daemon, Path(temp))
    size = 0.0
    if daemon != INSTALLED:
        directory = Path(daemon).parent
        is_directory = directory.name == "lambda-rapid"
        size = (du(directory) if is_directory else Path(daemon).stat().st_size) / 1e6
    row: dict[str, object] = {"variant": name, "file_mb": size}
    for key in runs[0]:
        values = [run[key] for run in runs]
        row[key] = (statistics.median(values), min(values), max(values))
    return row


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| variant | first invocation ms | share of a cold start, raw runtime, ms | RSS MB | "
        "file MB | unpacked per start MB | left after SIGTERM MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [str(row["variant"])]
        for key in ("first_ms", "share_ms", "rss_mb"):
            median, low, high = row[key]  # type: ignore[misc]
            cells.append(
                f"{median:.1f}" if key == "rss_mb" else f"{median:.0f} ({low:.0f}..{high:.0f})"
            )
        cells.append(f"{row['file_mb']:.1f}")
        cells.append(f"{row['unpacked_mb'][0]:.1f}")  # type: ignore[index]
        cells.append(f"{row['left_mb'][0]:.1f}")  # type: ignore[index]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--go-daemon", help="path of the Go lambda-runtime-api-daemon, if any")
    args = parser.parse_args()
    runtime = build_go_echo(Path(tempfile.mkdtemp()), CACHE / "go")
    dist = executables()
    variants = [("single file", str(dist / "lambda-runtime-api-daemon"))]
    variants.append(("directory", str(dist / "lambda-rapid" / "lambda-runtime-api-daemon")))
    variants.append(("installed package", INSTALLED))
    go_daemon = args.go_daemon or shutil.which("lambda-runtime-api-daemon-go")
    if go_daemon:
        variants.append(("Go daemon", go_daemon))
    rows = [measure(name, path, runtime, args.rounds) for name, path in variants]
    print(markdown(rows))
    shutil.rmtree(runtime.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
