"""The AMQP path against another checkout's daemon, in paired alternating rounds.

    python -m bench.amqp_compare --against /tmp/old [--rounds 5] [--seconds 3]

Both daemons (ours and the one installed in the other checkout's ``.venv``) serve their own
queue with the same raw runtime; ``bench.amqp_load`` drives one then the other in each round,
at C=1 (MAX_CONCURRENCY=1) and C=8 (MAX_CONCURRENCY=4). Reported: RPC p50 and rate for each,
daemon CPU per invocation, and the medians of the per-round ratios (ours / theirs).

``--floor`` puts in place of our daemon our consumer alone, answering every request at once
(no runtime, no dispatcher): what the client and the broker allow whatever the daemon does.

``--first`` measures instead the first invocation's latency after the daemon logged ready,
with PROVISIONED_CONCURRENCY unset and set to 1 (Invoke API, awslambdaric runtime).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.__main__ import (
    BROKER,
    ECHO_DIR,
    RAW,
    REPO,
    RIC,
    cpu_seconds,
    free_port,
    wait_ready,
)
from bench.amqp_load import rpc_load

OURS = str(Path(sys.executable).parent / "lambda-runtime-api-daemon")
FLOOR = [sys.executable, "-m", "bench.amqp_compare", "--serve-floor"]


def daemon_command(checkout: Path | None) -> str:
    if checkout is None:
        return OURS
    return str(checkout / ".venv" / "bin" / "lambda-runtime-api-daemon")


def start(
    command: str | list[str],
    runtime: list[str],
    concurrency: int,
    env: dict[str, str],
    log: Path,
) -> subprocess.Popen[bytes]:
    full = dict(
        os.environ,
        PORT=str(free_port()),
        INVOKE_API_HOST="127.0.0.1",
        RUNTIME_API_PORT="0",
        MAX_CONCURRENCY=str(concurrency),
        PYTHONPATH=str(REPO),
        **env,
    )
    argv = command if isinstance(command, list) else [command, *runtime]
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            argv,
            cwd=ECHO_DIR,
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    if isinstance(command, str):  # a daemon (the floor has no "ready" line)
        wait_ready(log, proc)
    if "AMQP_URI" in env:
        # An older daemon logs "ready" before its queue exists: a request sent then is lost.
        wait_ready(log, proc, b"consuming queue ")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure(proc: subprocess.Popen[bytes], queue: str, c: int, seconds: float) -> dict[str, float]:
    before = cpu_seconds(proc.pid)
    result = rpc_load(BROKER, queue, c, seconds)
    result["cpu_us"] = (cpu_seconds(proc.pid) - before) / result["count"] * 1e6
    return result


def compare(against: Path, rounds: int, seconds: float, floor: bool = False) -> dict[str, Any]:
    report: dict[str, Any] = {"load_average_before": os.getloadavg()}
    tmp = Path(tempfile.mkdtemp())
    for c, instances in ((1, 1), (8, 4)):
        procs = {}
        try:
            for kind, checkout in (("ours", None), ("base", against)):
                queue = f"cmp-{kind}-{os.getpid()}-{c}"
                env = {"AMQP_URI": BROKER, "AWS_LAMBDA_FUNCTION_NAME": queue}
                command = FLOOR if floor and checkout is None else daemon_command(checkout)
                proc = start(command, RAW, instances, env, tmp / f"{queue}.log")
                procs[kind] = (proc, queue)
                rpc_load(BROKER, queue, c, 0.5)  # warm
            samples: dict[str, list[dict[str, float]]] = {"ours": [], "base": []}
            order = ["ours", "base"]
            for _ in range(rounds):
                for kind in order:
                    proc, queue = procs[kind]
                    samples[kind].append(measure(proc, queue, c, seconds))
                order.reverse()  # alternate who goes first
            report[f"C={c}"] = summarize(samples)
        finally:
            for proc, _ in procs.values():
                stop(proc)
    report["load_average_after"] = os.getloadavg()
    return report


def serve_floor() -> None:
    """Our consumer alone on the queue the environment names, answering with the payload."""
    from lambda_rapid.amqp_consumer import RpcConsumer
    from lambda_rapid.config import daemon_config
    from lambda_rapid.invocation import Invocation, InvocationResult

    logging.basicConfig(level=logging.INFO)
    config = daemon_config(["true"], dict(os.environ))

    async def serve() -> None:
        loop = asyncio.get_running_loop()

        def submit(invocation: Invocation) -> asyncio.Future[InvocationResult]:
            answer: asyncio.Future[InvocationResult] = loop.create_future()
            answer.set_result(InvocationResult(invocation.payload))
            return answer

        await RpcConsumer(config, submit).run()

    try:
        import uvloop

        uvloop.run(serve())
    except KeyboardInterrupt:
        pass


def summarize(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, runs in samples.items():
        out[kind] = {k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "rate", "cpu_us")}
    ratios = {
        k: [o[k] / b[k] for o, b in zip(samples["ours"], samples["base"], strict=True)]
        for k in ("p50_ms", "rate", "cpu_us")
    }
    out["ratio"] = {k: statistics.median(r) for k, r in ratios.items()}
    out["ratio_min"] = {k: min(r) for k, r in ratios.items()}
    out["ratio_max"] = {k: max(r) for k, r in ratios.items()}
    return out


def first_invocation(provisioned: int, tmp: Path) -> float:
    """Seconds from sending the first invocation (after "ready") to its answer."""
    port = free_port()
    env = dict(
        os.environ,
        PORT=str(port),
        INVOKE_API_HOST="127.0.0.1",
        RUNTIME_API_PORT="0",
        MAX_CONCURRENCY="1",
        PROVISIONED_CONCURRENCY=str(provisioned),
    )
    log = tmp / f"first-{provisioned}.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [OURS, *RIC],
            cwd=ECHO_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        wait_ready(log, proc)
        url = f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations"
        began = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, b"{}"), timeout=30) as answer:
            answer.read()
        return time.perf_counter() - began
    finally:
        stop(proc)


def first(rounds: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    samples: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(rounds):
        for provisioned in samples:
            samples[provisioned].append(first_invocation(provisioned, tmp) * 1000)
    return {
        f"PROVISIONED_CONCURRENCY={p}": {
            "median_ms": statistics.median(s),
            "min_ms": min(s),
            "max_ms": max(s),
        }
        for p, s in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--first", action="store_true")
    parser.add_argument("--floor", action="store_true")
    parser.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor()
        return
    if args.first:
        result = first(args.rounds)
    else:
        if args.against is None:
            parser.error("--against DIR is required")
        result = compare(args.against, args.rounds, args.seconds, args.floor)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
