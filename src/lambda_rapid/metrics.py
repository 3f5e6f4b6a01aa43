"""Prometheus metrics (METRICS_PORT): what the daemon and lambda-server export, and /metrics.

Imported only when METRICS_PORT is set, so nothing here costs anything otherwise. The
dispatcher calls ``DaemonMetrics`` (its ``metrics`` observer) when an invocation starts
and ends and when an Event is refused; the AMQP consumer when an Event is queued,
retried or dead-lettered; the HTTP servers with the status of every answer. Gauges
(instances by state, waiting invocations, the broker connection) are read when
Prometheus scrapes, not kept up to date on the hot path. lambda-server's invocations are
measured by ``MeteredBackend``, wrapped around its AMQP backend.

Label values are bounded: the daemon's function label has one value; lambda-server's
and the error types are capped (``CappedLabel``), beyond which they read ``other``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lambda_rapid.errors import InvokeError, TooManyRequests
from lambda_rapid.httpserver import HttpServer, Limits, Request, Response
from lambda_rapid.invocation import Invocation, InvocationResult
from lambda_rapid.sockets import listen_socket

if TYPE_CHECKING:
    import socket
    from collections.abc import Awaitable

    from lambda_rapid.instance import Instance
    from lambda_rapid.invoke_api import Backend, Target

# Without the *_created series: they double every counter and histogram for little use.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "lambda_rapid"
OUTCOMES = ("success", "function_error", "timeout", "crash", "throttled")
# Seconds: from a few milliseconds (a warm echo) to Lambda's 15-minute limit.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
)  # fmt: skip
MAX_ERROR_TYPES = 32
MAX_FUNCTIONS = 200  # lambda-server: distinct function names before "other"
OTHER = "other"
THROTTLED_ERROR = "TooManyRequestsException"
# What one scraper may make the metrics port hold: a GET with no body.
LIMITS = Limits(
    max_body=0,
    max_head=16 * 1024,
    keep_alive=75.0,
    request_timeout=10.0,
    max_connections=64,
    max_drain=0,
)


def outcome_of(result: InvocationResult) -> str:
    """The outcome label of a finished invocation."""
    error_type = result.error_type
    if error_type is None:
        return "success"
    if error_type == "Sandbox.Timedout":
        return "timeout"
    if error_type == "Runtime.ExitError":
        return "crash"
    return "function_error"


class CappedLabel:
    """Label values as given until `cap` distinct ones were seen, then ``other``."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        seen = self._seen
        if value in seen:
            return value
        if len(seen) >= self._cap:
            return OTHER
        seen.add(value)
        return value


class Families:
    """The counters and histograms both programs export, in their own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.invocations = Counter(
            f"{PREFIX}_invocations",
            "Invocations finished, by function and outcome "
            "(success, function_error, timeout, crash, throttled)",
            ["function", "outcome"],
            registry=registry,
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "Failed invocations by error type (function errors by the type the runtime gave)",
            ["function", "error_type"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_invocation_duration_seconds",
            "Time from handing an invocation to an instance (daemon) or from receiving it "
            "(lambda-server) to its answer",
            ["function"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.events_queued = Counter(
            f"{PREFIX}_events_queued",
            "Event invocations accepted (held in memory or persisted on the broker)",
            ["function"],
            registry=registry,
        )
        self.http = Counter(
            f"{PREFIX}_http_responses",
            "HTTP answers by server and status code",
            ["server", "code"],
            registry=registry,
        )
        self.error_types = CappedLabel(MAX_ERROR_TYPES)

    def answered(self, server: str) -> Callable[[int], None]:
        """The callback an HTTP server calls with the status of each answer."""
        children = {code: self.http.labels(server, str(code)) for code in (200, 202, 429)}
        http = self.http

        def count(status: int) -> None:
            child = children.get(status)
            if child is None:
                child = children[status] = http.labels(server, str(status))
            child.inc()

        return count


class DispatcherView(Protocol):
    """What the daemon's gauges read from the dispatcher at scrape time."""

    @property
    def waiting(self) -> int: ...

    def live_instances(self) -> Iterable[Instance]: ...


class DaemonMetrics:
    """The daemon's metrics: the dispatcher's and AMQP consumer's observer, and the gauges."""

    def __init__(
        self,
        function: str,
        max_concurrency: int,
        dispatcher: DispatcherView,
        amqp_connected: Callable[[], bool] | None = None,
    ) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.families = families = Families(registry)
        self._function = function
        # Children bound once: the per-invocation path only increments and observes.
        self._outcomes = {o: families.invocations.labels(function, o) for o in OUTCOMES}
        self._duration = families.duration.labels(function)
        self._wait = Histogram(
            f"{PREFIX}_instance_wait_seconds",
            "Time an invocation waited for an instance (queue time, cold start included)",
            ["function"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        ).labels(function)
        self._init = Histogram(
            f"{PREFIX}_init_duration_seconds",
            "Init phase of the instances that served a first invocation (cold starts)",
            ["function"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        ).labels(function)
        self._events_queued = families.events_queued.labels(function)
        self._retried = Counter(
            f"{PREFIX}_events_retried",
            "Failed Event invocations sent for another attempt (AMQP mode)",
            ["function"],
            registry=registry,
        ).labels(function)
        self._dead_lettered = Counter(
            f"{PREFIX}_events_dead_lettered",
            "Event invocations published to the dead-letter queue (AMQP mode)",
            ["function"],
            registry=registry,
        ).labels(function)
        registry.register(DaemonGauges(function, max_concurrency, dispatcher, amqp_connected))

    # -- the dispatcher's observer (per invocation: keep it cheap) ----------------------

    def started(self, invocation: Invocation) -> None:
        """An instance took the invocation (before an Event's deadline clock restarts)."""
        self._wait.observe(max(time.time() - invocation.started_at, 0.0))
        init_ms = invocation.init_duration_ms
        if init_ms is not None:
            self._init.observe(init_ms / 1000)

    def ended(self, invocation: Invocation, result: InvocationResult) -> None:
        """The invocation has its result (started or failed while it waited)."""
        if invocation.invoked_at:
            self._duration.observe(time.monotonic() - invocation.invoked_at)
        outcome = outcome_of(result)
        self._outcomes[outcome].inc()
        error_type = result.error_type
        if error_type is not None:
            self._error(error_type)

    def throttled(self) -> None:
        self._outcomes["throttled"].inc()
        self._error(THROTTLED_ERROR)

    def _error(self, error_type: str) -> None:
        families = self.families
        families.errors.labels(self._function, families.error_types(error_type)).inc()

    # -- Events -----------------------------------------------------------------------

    def event_queued(self) -> None:
        self._events_queued.inc()

    def event_retried(self) -> None:
        self._retried.inc()

    def event_dead_lettered(self) -> None:
        self._dead_lettered.inc()


class DaemonGauges(Collector):
    """Gauges read from the dispatcher when Prometheus scrapes."""

    def __init__(
        self,
        function: str,
        max_concurrency: int,
        dispatcher: DispatcherView,
        amqp_connected: Callable[[], bool] | None,
    ) -> None:
        self._function = function
        self._limit = max_concurrency
        self._dispatcher = dispatcher
        self._amqp_connected = amqp_connected

    def describe(self) -> Iterable[Metric]:
        return ()  # collected on demand; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        function = self._function
        counts = {"busy": 0, "idle": 0, "starting": 0}
        for instance in self._dispatcher.live_instances():
            state = instance_state(instance)
            if state is not None:
                counts[state] += 1
        instances = GaugeMetricFamily(
            f"{PREFIX}_instances",
            "Runtime instances by state (busy, idle, starting)",
            labels=["function", "state"],
        )
        for state, count in counts.items():
            instances.add_metric([function, state], count)
        yield instances
        yield _gauge("concurrency_limit", "Most instances at once (MAX_CONCURRENCY)", function)(
            self._limit
        )
        yield _gauge("invocations_waiting", "Invocations waiting for an instance", function)(
            self._dispatcher.waiting
        )
        if self._amqp_connected is not None:
            yield _gauge(
                "amqp_connected", "1 while the broker connection is up and consuming", function
            )(1 if self._amqp_connected() else 0)


def instance_state(instance: Instance) -> str | None:
    """busy, idle or starting; None for an instance being stopped or gone."""
    from lambda_rapid.instance import State

    state = instance.state
    if state is State.STARTING:
        return "starting"
    if state in (State.STOPPING, State.DEAD):
        return None
    return "idle" if instance.free else "busy"


def _gauge(name: str, documentation: str, function: str) -> Callable[[float], GaugeMetricFamily]:
    def family(value: float) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=["function"])
        gauge.add_metric([function], value)
        return gauge

    return family


class ServerMetrics:
    """lambda-server's metrics: its invocations by function, HTTP answers, broker state."""

    def __init__(self, amqp_connected: Callable[[], bool]) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.families = Families(registry)
        self.functions = CappedLabel(MAX_FUNCTIONS)
        registry.register(ServerGauges(amqp_connected))


class ServerGauges(Collector):
    def __init__(self, amqp_connected: Callable[[], bool]) -> None:
        self._amqp_connected = amqp_connected

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            f"{PREFIX}_amqp_connected", "1 while the broker connection is up", labels=["function"]
        )
        gauge.add_metric([""], 1 if self._amqp_connected() else 0)
        yield gauge


class MeteredBackend:
    """lambda-server's backend with each invocation counted and timed."""

    def __init__(self, backend: Backend, metrics: ServerMetrics) -> None:
        self._backend = backend
        self._metrics = metrics
        self._families = metrics.families

    def resolve(self, function_name: str, qualifier: str | None) -> Target:
        return self._backend.resolve(function_name, qualifier)

    async def invoke(self, target: Target, invocation: Invocation) -> InvocationResult:
        function = self._metrics.functions(target.function_name)
        began = time.monotonic()
        try:
            result = await self._backend.invoke(target, invocation)
        except InvokeError as error:
            self._failed(function, error)
            raise
        families = self._families
        families.duration.labels(function).observe(time.monotonic() - began)
        families.invocations.labels(function, outcome_of(result)).inc()
        if result.error_type is not None:
            self._error(function, result.error_type)
        return result

    async def enqueue(self, target: Target, invocation: Invocation) -> None:
        function = self._metrics.functions(target.function_name)
        try:
            await self._backend.enqueue(target, invocation)
        except InvokeError as error:
            self._failed(function, error)
            raise
        self._families.events_queued.labels(function).inc()

    def dry_run(self, target: Target) -> Awaitable[None]:
        return self._backend.dry_run(target)

    def _failed(self, function: str, error: InvokeError) -> None:
        if isinstance(error, TooManyRequests):
            self._families.invocations.labels(function, "throttled").inc()
        self._error(function, error.code)

    def _error(self, function: str, error_type: str) -> None:
        families = self._families
        families.errors.labels(function, families.error_types(error_type)).inc()


class MetricsEndpoint:
    """GET /metrics on METRICS_PORT, on the same HTTP server (and limits) as every port."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server = HttpServer(self.handle, self.failed, 0, limits=LIMITS)

    async def start(self, listening: socket.socket | None = None) -> None:
        sock = listening or listen_socket(self._host, self._port, "INVOKE_API_HOST:METRICS_PORT")
        await self._server.serve_socket(sock)

    def close(self) -> None:
        self._server.close()

    def handle(self, request: Request) -> Response:
        if request.path != "/metrics":
            return Response(404, b"Not found: metrics are at /metrics\n", PLAIN)
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"Method not allowed\n", {**PLAIN, "Allow": "GET, HEAD"})
        body = generate_latest(self._registry)
        return Response(200, body, {"Content-Type": TEXT_FORMAT})

    @staticmethod
    def failed(error: Exception) -> Response:
        return Response(500, b"Internal error\n", PLAIN)


PLAIN = {"Content-Type": "text/plain; charset=utf-8"}
# The text format every Prometheus version reads (our names and labels are ASCII).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
