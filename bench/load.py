"""Closed-loop load generator, run in its own process.

`python -m bench.load URL CONCURRENCY SECONDS [MINIMUM]` keeps CONCURRENCY keep-alive
connections busy with ~1 KB JSON invocations and prints JSON: count, errors, inv/s, p50/p99
in ms. With MINIMUM, it goes on past SECONDS (up to ten times as long) until that many
invocations are done: a short load on a busy machine still measures something.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.parse
from collections.abc import Callable

PAYLOAD = json.dumps({"data": "x" * 1000}).encode()


def finished(seconds: float, minimum: int, done: list[float]) -> Callable[[], bool]:
    """Whether a load that began now is over: `seconds` have passed and `done` holds
    `minimum` results, or ten times `seconds` have passed."""
    started = time.perf_counter()
    stop_at, give_up_at = started + seconds, started + 10 * seconds

    def until() -> bool:
        now = time.perf_counter()
        return now >= stop_at and (len(done) >= minimum or now >= give_up_at)

    return until


async def worker(
    host: str,
    port: int,
    path: str,
    until: Callable[[], bool],
    latencies: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(PAYLOAD)}\r\n\r\n"
    ).encode() + PAYLOAD
    try:
        while not until():
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    finally:
        writer.close()


async def run(url: str, concurrency: int, seconds: float, minimum: int = 0) -> dict[str, float]:
    parts = urllib.parse.urlsplit(url)
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    until = finished(seconds, minimum, latencies)
    await asyncio.gather(
        *(
            worker(
                parts.hostname or "127.0.0.1",
                parts.port or 80,
                parts.path,
                until,
                latencies,
                errors,
            )
            for _ in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    count = len(latencies)
    return {
        "count": count,
        "errors": len(errors),
        "rate": count / elapsed,
        "p50_ms": latencies[count // 2] * 1000 if count else 0.0,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000 if count else 0.0,
    }


if __name__ == "__main__":
    target, conc, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    least = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    print(json.dumps(asyncio.run(run(target, conc, secs, least))))
