"""Plot of the daemon's Prometheus metrics under a short mixed load: `python -m bench.metrics_plot`.

Starts the daemon with METRICS_PORT set (awslambdaric, MAX_CONCURRENCY=4, a one-second
timeout) and drives it through phases: light traffic, overload (more clients than
instances, so invocations wait), a burst of Event invocations (some refused with 429), light
traffic with crashes and timeouts (instances restart), then nothing. /metrics is scraped
every 0.5 s; the plot shows what the Grafana dashboard's panels show (rates from counter
deltas, quantiles from histogram bucket deltas, gauges as read) in docs/metrics.png.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.__main__ import REPO, free_port, running

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FUNCTION = [sys.executable, "-m", "awslambdaric", "soak_function.handler"]
INVOKE_PATH = "/2015-03-31/functions/{}/invocations"
SCRAPE_EVERY = 0.5
RATE_WINDOW = 2  # scrapes: rates over 1 s
QUANTILE_WINDOW = 4  # scrapes: quantiles over 2 s
LIMIT = 4
BURST_EVENTS = 1400  # beyond the 1000 Events the daemon holds, some get 429

# One color per outcome, error type, status and state across the panels.
COLORS = {
    "success": "tab:green",
    "200": "tab:green",
    "function_error": "tab:orange",
    "ValueError": "tab:orange",
    "timeout": "tab:purple",
    "Sandbox.Timedout": "tab:purple",
    "crash": "tab:red",
    "Runtime.ExitError": "tab:red",
    "throttled": "tab:brown",
    "TooManyRequestsException": "tab:brown",
    "429": "tab:brown",
    "202": "tab:blue",
    "404": "tab:gray",
    "busy": "tab:red",
    "idle": "tab:green",
    "starting": "tab:orange",
}

Labels = tuple[tuple[str, str], ...]
Sample = dict[tuple[str, Labels], float]


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    clients: int
    # (weight, event, function name); a missing function is answered 404.
    mix: tuple[tuple[int, Event, str], ...]
    burst: int = 0


Event = dict[str, object]
QUICK: Event = {"sleep": 0.005}
SLOWER: Event = {"sleep": 0.05}
FAIL: Event = {"raise": "bad input"}
CRASH: Event = {"exit": 1}
TIMEOUT: Event = {"sleep": 2}

PHASES = (
    Phase("light", 5, 2, ((95, QUICK, "bench"), (4, FAIL, "bench"), (1, QUICK, "missing"))),
    Phase("overload", 6, 12, ((70, SLOWER, "bench"), (27, QUICK, "bench"), (3, FAIL, "bench"))),
    Phase("Event burst", 4, 0, (), burst=BURST_EVENTS),
    Phase(
        "crashes, timeouts",
        6,
        2,
        ((88, QUICK, "bench"), (5, FAIL, "bench"), (4, CRASH, "bench"), (3, TIMEOUT, "bench")),
    ),
    Phase("idle", 4, 0, ()),
)


@dataclass
class Load:
    """Clients following the phases, by elapsed time since `began`."""

    port: int
    began: float = field(default_factory=time.monotonic)
    stopped: threading.Event = field(default_factory=threading.Event)

    def phase(self) -> Phase | None:
        elapsed = time.monotonic() - self.began
        for phase in PHASES:
            if elapsed < phase.seconds:
                return phase
            elapsed -= phase.seconds
        return None

    def client(self, index: int) -> None:
        rng = random.Random(index)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stopped.is_set():
            phase = self.phase()
            if phase is None:
                return
            if index >= phase.clients:
                self.stopped.wait(0.05)  # this client sits this phase out
                continue
            weights = [weight for weight, _, _ in phase.mix]
            _, event, function = rng.choices(phase.mix, weights)[0]
            post(connection, function, event, {})

    def burst(self) -> None:
        """At the burst phase, fire its Events from a few connections at once."""
        while (phase := self.phase()) is not None and not phase.burst:
            self.stopped.wait(0.05)
        if phase is None:
            return
        senders = [
            threading.Thread(target=self._events, args=(phase.burst // 4,)) for _ in range(4)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()

    def _events(self, count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        for _ in range(count):
            post(connection, "bench", {"sleep": 0.01}, {"X-Amz-Invocation-Type": "Event"})


def post(
    connection: http.client.HTTPConnection,
    function: str,
    event: Event,
    headers: dict[str, str],
) -> int:
    connection.request("POST", INVOKE_PATH.format(function), json.dumps(event), headers)
    response = connection.getresponse()
    response.read()
    return response.status


def scrape(port: int) -> Sample:
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def wait_scrapable(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            scrape(port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def record() -> list[tuple[float, Sample]]:
    """Run the daemon under the phased load; the scrapes, timed from the load's start."""
    metrics_port = free_port()
    extra = {
        "METRICS_PORT": str(metrics_port),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "1",
        "PYTHONPATH": str(REPO / "bench"),
    }
    scrapes: list[tuple[float, Sample]] = []
    with running("ours", FUNCTION, LIMIT, extra) as server:
        wait_scrapable(metrics_port)
        load = Load(server.port)
        most = max(phase.clients for phase in PHASES)
        threads = [threading.Thread(target=load.client, args=(i,)) for i in range(most)]
        threads.append(threading.Thread(target=load.burst))
        for thread in threads:
            thread.start()
        total = sum(phase.seconds for phase in PHASES)
        next_at = load.began
        while next_at - load.began <= total:
            scrapes.append((time.monotonic() - load.began, scrape(metrics_port)))
            next_at += SCRAPE_EVERY
            time.sleep(max(0.0, next_at - time.monotonic()))
        load.stopped.set()
        for thread in threads:
            thread.join()
    return scrapes


# -- what the dashboard's queries compute ------------------------------------------------


def series_sum(sample: Sample, name: str, **match: str) -> float:
    """Sum of `name` over the series whose labels include `match`."""
    wanted = set(match.items())
    return sum(v for (n, labels), v in sample.items() if n == name and wanted <= set(labels))


def reader(name: str, **match: str) -> Callable[[Sample], float]:
    """What one series (or a sum of series) reads in a scrape."""

    def read(sample: Sample) -> float:
        return series_sum(sample, name, **match)

    return read


def label_values(scrapes: Iterable[tuple[float, Sample]], name: str, label: str) -> list[str]:
    found = {
        dict(labels)[label]
        for _, sample in scrapes
        for (n, labels) in sample
        if n == name and label in dict(labels)
    }
    return sorted(found)


def rates(
    scrapes: list[tuple[float, Sample]], read: Callable[[Sample], float]
) -> tuple[list[float], list[float]]:
    """Per-second increase of a counter, over RATE_WINDOW scrapes."""
    times, values = [], []
    for i in range(RATE_WINDOW, len(scrapes)):
        (t0, s0), (t1, s1) = scrapes[i - RATE_WINDOW], scrapes[i]
        times.append(t1)
        values.append(max(read(s1) - read(s0), 0.0) / (t1 - t0))
    return times, values


def buckets(sample: Sample, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram, summed over its other labels."""
    found: dict[float, float] = {}
    for (n, labels), value in sample.items():
        if n == f"{name}_bucket":
            bound = float(dict(labels)["le"])
            found[bound] = found.get(bound, 0.0) + value
    return sorted(found.items())


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket holding the rank."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def quantiles(
    scrapes: list[tuple[float, Sample]], name: str, q: float
) -> tuple[list[float], list[float]]:
    """The q-quantile of what a histogram observed over QUANTILE_WINDOW scrapes, in ms."""
    times, values = [], []
    for i in range(QUANTILE_WINDOW, len(scrapes)):
        before = dict(buckets(scrapes[i - QUANTILE_WINDOW][1], name))
        after = buckets(scrapes[i][1], name)
        delta = [(bound, count - before.get(bound, 0.0)) for bound, count in after]
        value = quantile(q, delta)
        if value is not None:
            times.append(scrapes[i][0])
            values.append(value * 1000)
    return times, values


# -- the plot ----------------------------------------------------------------------------


def plot(scrapes: list[tuple[float, Sample]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(13, 11), sharex=True)
    (outcomes, errors), (duration, instances), (waiting, answers) = axes
    p = "lambda_rapid_"

    invocations = f"{p}invocations_total"
    for outcome in label_values(scrapes, invocations, "outcome"):
        outcomes.plot(
            *rates(scrapes, reader(invocations, outcome=outcome)),
            label=outcome,
            color=COLORS.get(outcome),
        )
    outcomes.set_title("Invocations per second by outcome", pad=16)
    outcomes.set_yscale("symlog", linthresh=1)

    error_total = f"{p}errors_total"
    for kind in label_values(scrapes, error_total, "error_type"):
        errors.plot(
            *rates(scrapes, reader(error_total, error_type=kind)),
            label=kind,
            color=COLORS.get(kind),
        )
    errors.set_title("Errors per second by type", pad=16)
    errors.set_yscale("symlog", linthresh=1)

    for q, style in ((0.5, "-"), (0.99, "--")):
        duration.plot(
            *quantiles(scrapes, f"{p}invocation_duration_seconds", q),
            style,
            label=f"duration p{int(q * 100)}",
            color="tab:blue",
        )
        duration.plot(
            *quantiles(scrapes, f"{p}instance_wait_seconds", q),
            style,
            label=f"wait for an instance p{int(q * 100)}",
            color="tab:orange",
        )
    duration.set_title("Invocation duration and wait (ms, from the histograms)")
    duration.set_yscale("log")

    times = [t for t, _ in scrapes]
    for state in ("busy", "idle", "starting"):
        instances.plot(
            times,
            [series_sum(s, f"{p}instances", state=state) for _, s in scrapes],
            label=state,
            color=COLORS[state],
            drawstyle="steps-post",
        )
    limit = [series_sum(s, f"{p}concurrency_limit") for _, s in scrapes]
    instances.plot(times, limit, ":", color="black", label="concurrency limit")
    instances.set_title("Instances by state")
    instances.set_ylim(-0.3, LIMIT + 1.5)

    waiting.plot(times, [series_sum(s, f"{p}invocations_waiting") for _, s in scrapes])
    waiting.set_title("Invocations waiting for an instance")
    waiting.set_yscale("symlog", linthresh=10)

    answered = f"{p}http_responses_total"
    for code in label_values(scrapes, answered, "code"):
        answers.plot(
            *rates(scrapes, reader(answered, code=code)), label=code, color=COLORS.get(code)
        )
    answers.set_title("HTTP answers per second by status")
    answers.set_yscale("symlog", linthresh=1)

    for row in axes:
        for axis in row:
            shade_phases(axis)
            axis.grid(True, alpha=0.3)
            labels = axis.get_legend_handles_labels()[1]
            if labels:
                if axis.get_yscale() != "linear":  # room above the curves for the legend
                    axis.set_ylim(top=axis.get_ylim()[1] * 40)
                columns = min(len(labels), 2 if len(labels) == 4 else 3)
                axis.legend(fontsize=8, loc="upper left", ncol=columns)
    for axis in axes[-1]:
        axis.set_xlabel("seconds")
    label_phases(outcomes)
    fig.suptitle(
        f"lambda-runtime-api-daemon /metrics, scraped every {SCRAPE_EVERY} s "
        f"(awslambdaric, MAX_CONCURRENCY={LIMIT}, 1 s timeout)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def phase_spans() -> list[tuple[str, float, float]]:
    spans, start = [], 0.0
    for phase in PHASES:
        spans.append((phase.name, start, start + phase.seconds))
        start += phase.seconds
    return spans


def shade_phases(axis: Axes) -> None:
    for index, (_, start, end) in enumerate(phase_spans()):
        if index % 2:
            axis.axvspan(start, end, color="0.92", zorder=0)


def label_phases(axis: Axes) -> None:
    for name, start, end in phase_spans():
        axis.text(
            (start + end) / 2,
            1.0,
            name,
            transform=axis.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.35",
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_plot", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "metrics.png")
    args = parser.parse_args()
    scrapes = record()
    plot(scrapes, args.out)
    last = scrapes[-1][1]
    total = series_sum(last, "lambda_rapid_invocations_total")
    print(f"{len(scrapes)} scrapes, {total:.0f} invocations; plot in {args.out}")


if __name__ == "__main__":
    main()
