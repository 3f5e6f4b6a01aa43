"""Hot reload (WATCH=TRUE): time from saving a handler to the first invocation it serves.

Runs the daemon with awslambdaric on a handler in a temporary directory, rewrites the
handler `--rounds` times and, after each save, invokes until the answer comes from the
new code. Prints the median and the worst, in milliseconds.

    python -m bench.hot_reload [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HANDLER = "def handler(event, context):\n    return {{'version': {version}}}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def invoke(port: int) -> object:
    url = f"http://127.0.0.1:{port}/2015-03-31/functions/app/invocations"
    with urllib.request.urlopen(urllib.request.Request(url, b"{}"), timeout=30) as answer:
        return json.loads(answer.read()).get("version")


def wait_for(port: int, version: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while invoke(port) != version:
        if time.monotonic() > deadline:
            raise SystemExit(f"version {version} never served")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    daemon = str(Path(sys.executable).parent / "lambda-runtime-api-daemon")
    with tempfile.TemporaryDirectory() as code:
        (Path(code) / "app.py").write_text(HANDLER.format(version=0))
        port = free_port()
        env = {**os.environ, "PORT": str(port), "INVOKE_API_HOST": "127.0.0.1", "WATCH": "TRUE"}
        env["RUNTIME_API_PORT"] = str(free_port())
        proc = subprocess.Popen(
            [daemon, sys.executable, "-m", "awslambdaric", "app.handler"],
            cwd=code, env=env, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    wait_for(port, 0)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            samples = []
            for version in range(1, rounds + 1):
                time.sleep(0.3)  # the previous replacement has settled
                saved = time.perf_counter()
                (Path(code) / "app.py").write_text(HANDLER.format(version=version))
                wait_for(port, version)
                samples.append((time.perf_counter() - saved) * 1000)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print(
        f"save -> first invocation of the new code, awslambdaric, {rounds} rounds: "
        f"median {statistics.median(samples):.0f} ms, worst {max(samples):.0f} ms"
    )


if __name__ == "__main__":
    main()
