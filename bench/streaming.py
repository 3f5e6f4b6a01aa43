"""Time to first byte of a streamed response, run as `python -m bench.streaming`.

Starts the daemon with the streaming test runtime on free loopback ports, invokes it
through InvokeWithResponseStream with a function that streams one chunk, then waits
(HOLD seconds, until the bench opens its gate) before its last chunk, and prints JSON:
the time to the first PayloadChunk and to InvokeComplete, in ms, per round. The first
figure stays far below the second: the chunk reaches the client while the function runs.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from botocore.eventstream import EventStreamBuffer  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "tests" / "e2e" / "functions" / "stream_runtime.py"
DAEMON = str(Path(sys.executable).parent / "lambda-runtime-api-daemon")
HOLD = 0.5  # how long the function keeps running after its first chunk
ROUNDS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise SystemExit("the daemon did not start")


def one_round(port: int, gate: Path) -> tuple[float, float]:
    gate.unlink(missing_ok=True)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    event = {"chunks": ["first", "last"], "gate": str(gate)}
    start = time.perf_counter()
    conn.request(
        "POST", "/2021-11-15/functions/fn/response-streaming-invocations", json.dumps(event)
    )
    answer = conn.getresponse()
    buffer, first = EventStreamBuffer(), 0.0
    while True:
        data = answer.read1(65536)
        if not data:
            raise SystemExit("the stream ended early")
        buffer.add_data(data)
        for message in buffer:
            kind = message.headers[":event-type"]
            if kind == "PayloadChunk" and not first:
                first = time.perf_counter() - start
                time.sleep(HOLD)  # the function is still running: let it go on for HOLD
                gate.touch()
            elif kind == "InvokeComplete":
                conn.close()
                return first * 1000, (time.perf_counter() - start) * 1000


def main() -> None:
    port, runtime_port = free_port(), free_port()
    env = dict(os.environ, PORT=str(port), RUNTIME_API_PORT=str(runtime_port))
    env.update(INVOKE_API_HOST="127.0.0.1", AWS_LAMBDA_FUNCTION_NAME="fn")
    with tempfile.TemporaryDirectory() as scratch:
        proc = subprocess.Popen(
            [DAEMON, sys.executable, str(RUNTIME)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for(port, proc)
            rounds = [one_round(port, Path(scratch) / "gate") for _ in range(ROUNDS)]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    firsts, totals = [r[0] for r in rounds], [r[1] for r in rounds]
    print(
        json.dumps(
            {
                "first_chunk_ms_p50": round(statistics.median(firsts), 2),
                "complete_ms_p50": round(statistics.median(totals), 2),
                "hold_ms": HOLD * 1000,
                "rounds": ROUNDS,
            }
        )
    )


if __name__ == "__main__":
    main()
