"""Benchmark suite: `python -m bench [--quick] [--rounds N] [--out DIR] [--docs] [--report F]`.

Starts the daemon as users do (and the floor server, in alternating rounds) on free
loopback ports and measures daemon CPU per invocation, throughput and latency, memory,
start-up, and the AMQP path. Writes DIR/results.json and DIR/results.md; with --docs
also docs/benchmarks.md and docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAEMON = str(BIN / "lambda-runtime-api-daemon")
SERVER = str(BIN / "lambda-server")
RAW = [sys.executable, str(REPO / "bench" / "raw_runtime.py")]
RIC = [sys.executable, "-m", "awslambdaric", "echo.handler"]
ECHO_DIR = REPO / "examples" / "echo"
BROKER = "amqp://guest:guest@127.0.0.1:5672/"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The checkout given with --against, measured as "base" beside ours.
BASE: list[Path] = []
# The floor (on uvloop, which measured cheaper) and, to compare, its variants.
FLOORS = {
    "floor": [str(REPO / "bench" / "floor.py")],
    "floor on asyncio": [str(REPO / "bench" / "floor.py"), "--loop", "asyncio"],
    "old floor": [str(REPO / "bench" / "floor_old.py")],
}


def free_port() -> int:
    """A free port below the kernel's ephemeral range, where no client socket can take it
    before the server binds it (the tests may run beside the benchmark)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        ephemeral = int(ports.read().split()[0])
    for _ in range(100):
        port = random.randrange(10000, max(ephemeral, 10001))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def cpu_seconds(pid: int) -> float:
    """CPU time of one process's threads (not its children): to the microsecond from the
    scheduler's per-thread runtime where the kernel shows it (/proc/PID/task/*/sched),
    else /proc's user and system times, which count in 10 ms ticks (too coarse for a
    quick-mode load)."""
    if os.path.exists(f"/proc/{pid}/sched"):
        return sum(thread_runtime(pid, task) for task in os.listdir(f"/proc/{pid}/task"))
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_runtime(pid: int, task: str) -> float:
    """Seconds one thread ran (0 for a thread gone meanwhile)."""
    try:
        with open(f"/proc/{pid}/task/{task}/sched") as sched:
            for line in sched:
                if line.startswith("se.sum_exec_runtime"):
                    return float(line.rsplit(":", 1)[1]) / 1000  # given in milliseconds
    except FileNotFoundError:
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.001)
    raise RuntimeError(f"port {port} not open after {timeout} s")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/2015-03-31/functions/function/invocations"


def start(
    kind: str,
    runtime: list[str],
    concurrency: int,
    extra_env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Server:
    """Start the daemon ("ours") or the floor server with `runtime` (stderr to `log`)."""
    port = free_port()
    env = dict(
        os.environ,
        PORT=str(port),
        INVOKE_API_HOST="127.0.0.1",
        RUNTIME_API_PORT="0",
        MAX_CONCURRENCY=str(concurrency),
        AWS_LAMBDA_FUNCTION_NAME="bench",
    )
    env.update(extra_env or {})
    if kind in ("ours", "on demand"):
        command = [DAEMON, *runtime]
        if kind == "on demand":
            env["PROACTIVE_INIT"] = "FALSE"
    elif kind == "base":  # another checkout's daemon (--against), on this interpreter
        command = [sys.executable, "-m", "lambda_rapid", *runtime]
        env["PYTHONPATH"] = str(BASE[0] / "src")
    else:
        command = [
            sys.executable,
            *FLOORS[kind],
            str(port),
            str(free_port()),
            str(concurrency),
            *runtime,
        ]
    with open(log or os.devnull, "wb") as stderr:
        proc = subprocess.Popen(
            command,
            cwd=ECHO_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    wait_port(port, proc)
    return Server(proc, port)


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


@contextmanager
def running(
    kind: str,
    runtime: list[str],
    concurrency: int,
    extra_env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[Server]:
    server = start(kind, runtime, concurrency, extra_env, log)
    try:
        yield server
    finally:
        stop(server)


def invoke(url: str, payload: bytes = b"{}") -> bytes:
    request = urllib.request.Request(url, data=payload, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


# Invocations every load must complete, however busy the machine (quick mode sets it).
MINIMUM_COUNT = [0]


def load(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.load", url, str(concurrency), str(seconds)]
    out = subprocess.run(
        [*command, str(MINIMUM_COUNT[0])],
        cwd=REPO,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


# Seconds of load before each measurement (shorter in quick mode).
WARM_SECONDS = [0.5]


def warm(server: Server, concurrency: int) -> None:
    load(server.url, concurrency, WARM_SECONDS[0])


def measure_load(
    kind: str,
    runtime: list[str],
    concurrency: int,
    instances: int,
    seconds: float,
    extra_env: dict[str, str] | None = None,
    check: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """CPU per invocation of the server process alone, plus throughput and latency; `check`
    sees the result while the server still runs."""
    with running(kind, runtime, instances, extra_env) as server:
        warm(server, concurrency)
        before = cpu_seconds(server.proc.pid)
        result = load(server.url, concurrency, seconds)
        used = cpu_seconds(server.proc.pid) - before
        if check is not None:
            check(result)
        result["cpu_us"] = used / max(result["count"], 1) * 1e6
        result["rss_mb"] = rss_mb(server.proc.pid)
    return result


def measure_one(
    runtime: list[str], concurrency: int, instances: int, seconds: float, kind: str
) -> dict[str, float]:
    return measure_load(kind, runtime, concurrency, instances, seconds)


def measure_metrics(
    runtime: list[str], concurrency: int, instances: int, seconds: float, setting: str
) -> dict[str, float]:
    """The daemon with METRICS_PORT unset ("off") or set ("on"). Nothing scrapes during the
    load (a scrape costs per scrape, not per invocation); one scrape after it checks that
    every invocation was counted."""
    if setting == "off":
        return measure_load("ours", runtime, concurrency, instances, seconds)
    port = free_port()

    def counted(result: dict[str, float]) -> None:
        total = scraped_invocations(port)
        if total < result["count"]:
            raise RuntimeError(f"metrics counted {total} of {result['count']} invocations")

    env = {"METRICS_PORT": str(port)}
    return measure_load("ours", runtime, concurrency, instances, seconds, env, counted)


def scraped_invocations(port: int) -> float:
    """lambda_rapid_invocations_total summed over outcomes, from one scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "lambda_rapid_invocations"
        for sample in family.samples
    )


def measure_memory(kind: str, invocations: int) -> dict[str, float]:
    with running(kind, RAW, 1) as server:
        time.sleep(0.3)
        idle = rss_mb(server.proc.pid)
        warm(server, 1)
        after_warm = rss_mb(server.proc.pid)
        done = 0
        while done < invocations:
            done += int(load(server.url, 4, min(1.0, invocations / 2000))["count"])
        after = rss_mb(server.proc.pid)
    return {
        "idle_mb": idle,
        "loaded_mb": after,
        "growth_mb": after - after_warm,
        "invocations": done,
    }


def measure_startup(kind: str) -> dict[str, float]:
    """Exec to the Invoke API accepting, and to the first answered invocation; the
    server's own share of the latter is what remains once the runtime's own start-up
    (measured alone just before) is taken out."""
    runtime = runtime_startup(RAW)
    began = time.perf_counter()
    server = start(kind, RAW, 1)
    listening = time.perf_counter() - began
    try:
        invoke(server.url)
        first = time.perf_counter() - began
    finally:
        stop(server)
    return {
        "listen_ms": listening * 1000,
        "first_ms": first * 1000,
        "runtime_ms": runtime * 1000,
        "share_ms": (first - runtime) * 1000,
    }


def runtime_startup(runtime: list[str]) -> float:
    """Seconds from exec of `runtime` to its first Runtime API request arriving whole."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}")
        began = time.perf_counter()
        proc = subprocess.Popen(
            runtime, cwd=ECHO_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                return time.perf_counter() - began
        finally:
            proc.kill()
            proc.wait()


def broker_up() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", 5672)) == 0


def wait_ready(
    log: Path, proc: subprocess.Popen[bytes], line: bytes = b" ready: ", timeout: float = 30
) -> None:
    """Wait for the daemon's "ready" line (with a broker, its queue is consumed by then), or
    another `line` in a server's log."""
    deadline = time.monotonic() + timeout
    while line not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{line.decode()!r} never logged:\n{log.read_text()}")
        time.sleep(0.01)


def measure_amqp(concurrency: int, instances: int, seconds: float) -> dict[str, float]:
    """RPC through RabbitMQ straight to the daemon, and HTTP through lambda-server."""
    from bench.amqp_load import rpc_load

    name = f"bench-{os.getpid()}-{concurrency}"
    env = {"AMQP_URI": BROKER, "AWS_LAMBDA_FUNCTION_NAME": name}
    results: dict[str, float] = {}
    log = Path(tempfile.mkdtemp()) / "daemon.log"
    with running("ours", RAW, instances, env, log) as daemon:
        wait_ready(log, daemon.proc)
        rpc = rpc_load(BROKER, name, concurrency, seconds, MINIMUM_COUNT[0])
        results.update({f"rpc_{k}": v for k, v in rpc.items()})
        port = free_port()
        server_log = log.with_name("server.log")
        with open(server_log, "wb") as stderr:
            server = subprocess.Popen(
                [SERVER],
                env=dict(os.environ, PORT=str(port), AMQP_URI=BROKER),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        try:
            wait_port(port, server)
            wait_ready(server_log, server, b"connected to the broker")
            url = f"http://127.0.0.1:{port}/2015-03-31/functions/{name}/invocations"
            load(url, concurrency, 0.5)
            via = load(url, concurrency, seconds)
            results.update({f"server_{k}": v for k, v in via.items()})
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(15)
    return results


Stat = dict[str, float]


def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def rounds(
    count: int, measure: Callable[[str], Stat], kinds: tuple[str, ...] = ("ours", "floor")
) -> dict[str, dict[str, dict[str, float]]]:
    """Alternate the `kinds` (ours and the floor) `count` times, the order reversed every
    other round; summarize every metric, with the median of its paired ratios to the
    same round's last kind (the reference) as "paired"."""
    collected: dict[str, list[Stat]] = {kind: [] for kind in kinds}
    for number in range(count):
        for kind in kinds if number % 2 == 0 else kinds[::-1]:
            collected[kind].append(measure(kind))
    reference = collected[kinds[-1]]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for kind, samples in collected.items():
        summary[kind] = {}
        for key in samples[0]:
            stat = summarize([s[key] for s in samples])
            pairs = [s[key] / r[key] for s, r in zip(samples, reference, strict=True) if r[key]]
            if pairs:
                stat["paired"] = statistics.median(pairs)
            summary[kind][key] = stat
    return summary


def compile_package() -> None:
    """Byte-compile the package as a regular install would (an editable one does not).

    Servers start without PYTHONDONTWRITEBYTECODE, so start-up is measured as users see it.
    """
    import compileall

    import lambda_rapid

    compileall.compile_dir(Path(lambda_rapid.__file__).parent, quiet=1)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def run(quick: bool, count: int) -> dict[str, Any]:
    compile_package()
    seconds = 0.3 if quick else 5.0
    WARM_SECONDS[0] = 0.1 if quick else 0.5
    MINIMUM_COUNT[0] = 20 if quick else 0
    report: dict[str, Any] = {
        "quick": quick,
        "rounds": count,
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    cases = [
        ("raw", RAW, 1, 1),
        ("raw", RAW, 8, 4),
        ("awslambdaric", RIC, 1, 1),
        ("awslambdaric", RIC, 8, 4),
    ]
    for runtime_name, runtime, conc, instances in cases:
        key = f"{runtime_name} C={conc} MAX_CONCURRENCY={instances}"
        print(f"load: {key}", file=sys.stderr)
        kinds = ("ours", "base", "floor") if BASE else ("ours", "floor")
        report[key] = rounds(count, partial(measure_one, runtime, conc, instances, seconds), kinds)
    # The floor's variants only compare floors: quick mode proves them on one case.
    report["floors"] = measure_floors(count, seconds, cases[:1] if quick else cases)
    report["metrics"] = measure_metrics_cost(count, seconds)
    print("memory", file=sys.stderr)
    report["memory"] = rounds(1, lambda kind: measure_memory(kind, 500 if quick else 20000))
    print("start-up", file=sys.stderr)
    # "on demand": the same daemon with PROACTIVE_INIT=FALSE, its runtime started only
    # when the first request comes.
    report["startup"] = rounds(1 if quick else 5, measure_startup, ("ours", "on demand", "floor"))
    if broker_up():
        print("amqp", file=sys.stderr)
        # A full second even when quick: an AMQP round trip is slower on a busy machine.
        amqp_seconds = max(seconds, 1.0)
        report["amqp"] = {f"C={c}": measure_amqp(c, i, amqp_seconds) for c, i in ((1, 1), (8, 4))}
    return report


METRICS_CASES = (("raw", RAW, 1, 1), ("raw", RAW, 8, 4))
FLOOR_KINDS = ("floor", "floor on asyncio", "old floor")


def measure_floors(count: int, seconds: float, cases: list[Any]) -> dict[str, Any]:
    """The floor on uvloop and on asyncio's loop, and the old floor, in alternating rounds."""
    floors: dict[str, Any] = {}
    for runtime_name, runtime, conc, instances in cases:
        key = f"{runtime_name} C={conc} MAX_CONCURRENCY={instances}"
        print(f"floors: {key}", file=sys.stderr)
        measure = partial(measure_one, runtime, conc, instances, seconds)
        floors[key] = rounds(count, measure, FLOOR_KINDS)
    return floors


def against_markdown(report: dict[str, Any]) -> list[str]:
    """Ours against the --against checkout ("base"), per load case: the ratio of the two
    paired ratios to the floor."""
    cases = [k for k in report if "C=" in k and "base" in report[k]]
    if not cases:
        return []
    lines = ["", "| ours / base (--against) | CPU µs/inv | inv/s | p50 ms |", "|---|---|---|---|"]
    for key in cases:
        ours, base = report[key]["ours"], report[key]["base"]
        cells = [
            f"{ours[m].get('paired', 0) / (base[m].get('paired') or 1):.2f}×"
            for m in ("cpu_us", "rate", "p50_ms")
        ]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def floors_markdown(floors: dict[str, Any]) -> list[str]:
    """Each floor's CPU per invocation and throughput: median (min..max) and its ratio to
    the floor kept (uvloop)."""
    lines = [
        "",
        "| floors: CPU µs/inv, inv/s | " + " | ".join(FLOOR_KINDS) + " |",
        "|---|" + "---|" * len(FLOOR_KINDS),
    ]
    for key, case in floors.items():
        cells = []
        for kind in FLOOR_KINDS:
            cpu, rate = case[kind]["cpu_us"], case[kind]["rate"]
            base_cpu = case["floor"]["cpu_us"]["median"]
            cells.append(
                f"{spread(cpu)} µs = {cpu['median'] / base_cpu:.2f}×, {rate['median']:.4g}/s"
            )
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def measure_metrics_cost(count: int, seconds: float) -> dict[str, Any]:
    """The daemon with metrics off and on, in alternating rounds, per case."""
    cost: dict[str, Any] = {}
    for runtime_name, runtime, conc, instances in METRICS_CASES:
        key = f"{runtime_name} C={conc} MAX_CONCURRENCY={instances}"
        print(f"metrics off/on: {key}", file=sys.stderr)
        measure = partial(measure_metrics, runtime, conc, instances, seconds)
        cost[key] = rounds(count, measure, ("off", "on"))
    return cost


def metrics_markdown(cost: dict[str, Any]) -> list[str]:
    """The metrics table: each cell off / on, medians (min..max)."""
    lines = [
        "",
        "| METRICS_PORT unset / set | daemon CPU µs/inv | extra µs/inv | inv/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for key, case in cost.items():
        off, on = case["off"], case["on"]
        extra = on["cpu_us"]["median"] - off["cpu_us"]["median"]
        cells = [
            f"{spread(off[m])} / {spread(on[m])}" for m in ("cpu_us", "rate", "p50_ms", "p99_ms")
        ]
        lines.append(f"| {key} | {cells[0]} | {extra:+.3g} | " + " | ".join(cells[1:]) + " |")
    return lines


def spread(stat: dict[str, float]) -> str:
    return f"{stat['median']:.3g} ({stat['min']:.3g}..{stat['max']:.3g})"


def ratio(report: dict[str, Any], section: str, metric: str, kind: str = "ours") -> str:
    ours = report[section][kind][metric]
    floor = report[section]["floor"][metric]["median"]
    text = f"{ours['median']:.3g} ({ours['min']:.3g}..{ours['max']:.3g})"
    if not floor:
        return text
    return f"{text} / {floor:.3g} = {ours.get('paired', ours['median'] / floor):.2f}×"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured {report['when']}, {report['rounds']} round(s), quick={report['quick']}.",
        "Each cell: ours median (min..max) / floor median = median of the paired ratios.",
        "",
        "| case | daemon CPU µs/inv | inv/s | p50 ms | p99 ms | RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for key in report:
        if "C=" in key:
            cells = [
                ratio(report, key, m) for m in ("cpu_us", "rate", "p50_ms", "p99_ms", "rss_mb")
            ]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| memory | idle MB | after load MB | growth MB |",
        "|---|---|---|---|",
        "| raw runtime | "
        + " | ".join(ratio(report, "memory", m) for m in ("idle_mb", "loaded_mb", "growth_mb"))
        + " |",
        "",
        "| start-up | Invoke API listening ms | first invocation ms | the runtime alone ms "
        "| the server's share ms |",
        "|---|---|---|---|---|",
    ]
    kinds = (("ours", "raw runtime"), ("on demand", "raw runtime, PROACTIVE_INIT=FALSE"))
    for kind, label in kinds:
        if kind in report["startup"]:
            metrics = ("listen_ms", "first_ms", "runtime_ms", "share_ms")
            cells = [ratio(report, "startup", m, kind) for m in metrics]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "floors" in report:
        lines += floors_markdown(report["floors"])
    lines += against_markdown(report)
    if "metrics" in report:
        lines += metrics_markdown(report["metrics"])
    if "amqp" in report:
        lines += [
            "",
            "| AMQP | RPC inv/s | RPC p50 ms | RPC p99 ms | lambda-server inv/s | "
            "lambda-server p50 ms | lambda-server p99 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, values in report["amqp"].items():
            cells = [
                f"{values[m]:.3g}"
                for m in (
                    "rpc_rate",
                    "rpc_p50_ms",
                    "rpc_p99_ms",
                    "server_rate",
                    "server_p50_ms",
                    "server_p99_ms",
                )
            ]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in report if "C=" in k]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for offset, kind in ((-0.2, "ours"), (0.2, "floor")):
        xs = [i + offset for i in range(len(keys))]
        left.bar(xs, [report[k][kind]["rate"]["median"] for k in keys], 0.4, label=kind)
        right.bar(xs, [report[k][kind]["p50_ms"]["median"] for k in keys], 0.4, label=kind)
    for axis, title in ((left, "throughput (inv/s)"), (right, "p50 latency (ms)")):
        axis.set_xticks(
            range(len(keys)), [k.replace(" MAX_CONCURRENCY=", "\nM=") for k in keys], fontsize=7
        )
        axis.set_title(title)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds, to prove it works")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--docs", action="store_true", help="update docs/benchmarks.md and .png")
    parser.add_argument(
        "--against", type=Path, help="a checkout whose daemon is measured too (results.json)"
    )
    parser.add_argument(
        "--report", type=Path, help="measure nothing: render this results.json (with --docs)"
    )
    args = parser.parse_args()
    if args.against is not None:
        BASE.append(args.against)
    if args.report is not None:
        report = json.loads(args.report.read_text())
    else:
        report = run(args.quick, args.rounds or (1 if args.quick else 3))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    if args.report is None:
        (args.out / "results.md").write_text(table)
    print(table)
    if args.docs:
        write_docs(report, table)


def write_docs(report: dict[str, Any], table: str) -> None:
    """docs/benchmarks.md (the intro, then the results) and its chart."""
    chart(report, REPO / "docs" / "benchmarks.png")
    intro = (REPO / "docs" / "benchmarks.intro.md").read_text()
    docs = REPO / "docs" / "benchmarks.md"
    kept = kept_section(docs.read_text() if docs.exists() else "", "## Single executable")
    docs.write_text(
        intro + "\n## Latest results\n\n" + table + "\n![chart](benchmarks.png)\n" + kept
    )


def kept_section(text: str, heading: str) -> str:
    """The section under `heading` (written by another benchmark), to carry over, or ""."""
    start = text.find("\n" + heading + "\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(heading) + 2)
    return "\n" + text[start + 1 : end if end >= 0 else len(text)].rstrip("\n") + "\n"


if __name__ == "__main__":
    main()
