"""Soak: `python -m bench.soak [--seconds N] [--out DIR]`.

Runs the daemon with a few awslambdaric instances under a steady mix of good and hostile
traffic for N seconds (600 by default) and samples the daemon's RSS and open file
descriptors every few seconds. Good clients invoke on kept-alive connections (echo,
Event, Tail, function errors, timeouts and crashes); hostile clients send garbage,
oversized headers and bodies, invalid JSON, half requests that stall, requests they
never read the answer of, and connections they drop mid-request. Each request loop is
bounded in time and stops by itself; only loopback addresses are used.

Writes DIR/soak.json and prints a summary: the statuses seen, RSS and descriptors after
warm-up and at the end. A 500 answer, a daemon exit or growth beyond the limits fail it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench.__main__ import REPO, rss_mb, running

SOAK_FUNCTION = [sys.executable, "-m", "awslambdaric", "soak_function.handler"]
PATH = "/2015-03-31/functions/function/invocations"
# Allowed drift between the first sample after warm-up and the end.
RSS_GROWTH_LIMIT_MB = 8.0
FD_GROWTH_LIMIT = 16


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    """The traffic threads, their counters and the samples."""

    def __init__(self, port: int, pid: int, seconds: float) -> None:
        self.port = port
        self.pid = pid
        self.deadline = time.monotonic() + seconds
        self.statuses: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.samples: list[tuple[float, float, int]] = []

    def count(self, key: str) -> None:
        with self.lock:
            self.statuses[key] += 1

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    # -- good traffic --------------------------------------------------------------------

    def good_client(self, seed: int) -> None:
        rng = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while self.running():
            event, headers = self._good_request(rng)
            try:
                connection.request("POST", PATH, json.dumps(event), headers)
                response = connection.getresponse()
                response.read()
                error = response.getheader("X-Amz-Function-Error")
                self.count(f"good {response.status}{' error' if error else ''}")
            except (OSError, http.client.HTTPException):
                self.count("good connection error")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.close()

    @staticmethod
    def _good_request(rng: random.Random) -> tuple[dict[str, object], dict[str, str]]:
        roll = rng.random()
        if roll < 0.80:
            return {"echo": rng.randrange(10**6)}, {}
        if roll < 0.88:
            return {"print": "x" * rng.randrange(1, 2000)}, {"X-Amz-Log-Type": "Tail"}
        if roll < 0.93:
            return {"raise": "planned"}, {}
        if roll < 0.96:
            return {"n": 1}, {"X-Amz-Invocation-Type": "Event"}
        if roll < 0.985:
            return {"sleep": 2}, {}  # over the 1 s timeout: the instance is replaced
        return {"exit": 3}, {}

    # -- hostile traffic -----------------------------------------------------------------

    def hostile_client(self, seed: int) -> None:
        rng = random.Random(seed)
        attacks = [
            self._garbage,
            self._huge_header,
            self._huge_body,
            self._invalid_json,
            self._deep_json,
            self._stall,
            self._never_read,
            self._drop_mid_body,
        ]
        while self.running():
            attack = rng.choice(attacks)
            try:
                self.count(f"hostile {attack.__name__.strip('_')} {attack(rng)}")
            except OSError:
                self.count(f"hostile {attack.__name__.strip('_')} closed")

    def _connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def _exchange(self, payload: bytes) -> str:
        with self._connect() as sock:
            sock.sendall(payload)
            head = sock.recv(64)
        return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"

    def _garbage(self, rng: random.Random) -> str:
        return self._exchange(rng.randbytes(rng.randrange(1, 4096)) + b"\r\n\r\n")

    def _huge_header(self, rng: random.Random) -> str:
        header = b"X-Filler: " + b"a" * (200 * 1024) + b"\r\n"
        return self._exchange(f"POST {PATH} HTTP/1.1\r\nHost: x\r\n".encode() + header + b"\r\n")

    def _huge_body(self, rng: random.Random) -> str:
        head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {7 * 1024 * 1024}\r\n\r\n"
        with self._connect() as sock:
            sock.sendall(head.encode())
            with contextlib.suppress(OSError):
                sock.sendall(b"x" * 65536)
            head_bytes = sock.recv(64)
        return head_bytes.split(b" ", 2)[1].decode() if head_bytes else "closed"

    def _request(self, body: bytes) -> bytes:
        return (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def _invalid_json(self, rng: random.Random) -> str:
        return self._exchange(self._request(b'{"a": NaN, "b": [1, 2'))

    def _deep_json(self, rng: random.Random) -> str:
        depth = rng.randrange(1000, 20000)
        return self._exchange(self._request(b"[" * depth + b"]" * depth))

    def _stall(self, rng: random.Random) -> str:
        """Half a request, then nothing: the daemon must cut it off, not keep it."""
        with self._connect() as sock:
            sock.sendall(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n".encode())
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                sock.recv(64)
        return "abandoned"

    def _never_read(self, rng: random.Random) -> str:
        """Many pipelined requests whose answers are never read."""
        with self._connect() as sock:
            sock.settimeout(0.5)
            request = self._request(b'{"echo": 1}')
            try:
                sock.sendall(request * 200)
            except OSError:
                return "refused"
        return "abandoned"

    def _drop_mid_body(self, rng: random.Random) -> str:
        with self._connect() as sock:
            sock.sendall(self._request(b'{"echo": 1}' * 100)[:-200])
        return "dropped"

    # -- sampling ------------------------------------------------------------------------

    def sample(self, interval: float) -> None:
        start = time.monotonic()
        while self.running():
            self.samples.append((time.monotonic() - start, rss_mb(self.pid), open_fds(self.pid)))
            time.sleep(interval)


def soak(seconds: float, good: int = 3, hostile: int = 2) -> dict[str, object]:
    extra = {
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "1",
        "PYTHONPATH": str(REPO / "bench"),
    }
    with running("ours", SOAK_FUNCTION, 4, extra) as server:
        run = Soak(server.port, server.proc.pid, seconds)
        threads = [threading.Thread(target=run.good_client, args=(i,)) for i in range(good)] + [
            threading.Thread(target=run.hostile_client, args=(100 + i,)) for i in range(hostile)
        ]
        sampler = threading.Thread(target=run.sample, args=(max(1.0, seconds / 120),))
        for thread in [*threads, sampler]:
            thread.start()
        for thread in [*threads, sampler]:
            thread.join()
        alive = server.proc.poll() is None
    return summarise(run, alive)


def summarise(run: Soak, alive: bool) -> dict[str, object]:
    settled = [s for s in run.samples if s[0] >= run.samples[-1][0] * 0.1] or run.samples
    head, tail = settled[: max(1, len(settled) // 10)], settled[-max(1, len(settled) // 10) :]
    rss_start = statistics.median(s[1] for s in head)
    rss_end = statistics.median(s[1] for s in tail)
    fds_start = statistics.median(s[2] for s in head)
    fds_end = statistics.median(s[2] for s in tail)
    server_errors = sum(n for key, n in run.statuses.items() if " 5" in key and "503" not in key)
    return {
        "alive": alive,
        "statuses": dict(sorted(run.statuses.items())),
        "rss_mb_after_warmup": round(rss_start, 1),
        "rss_mb_end": round(rss_end, 1),
        "rss_mb_max": round(max(s[1] for s in run.samples), 1),
        "fds_after_warmup": fds_start,
        "fds_end": fds_end,
        "server_errors": server_errors,
        "passed": alive
        and server_errors == 0
        and rss_end - rss_start <= RSS_GROWTH_LIMIT_MB
        and fds_end - fds_start <= FD_GROWTH_LIMIT,
        "samples": run.samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    result = soak(args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    summary = {key: value for key, value in result.items() if key != "samples"}
    print(json.dumps(summary, indent=1))
    raise SystemExit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
