"""The Telemetry API (2022-07-01) and the Logs API (2020-08-15): subscriptions and delivery.

An extension subscribes (``parse_subscription`` checks the request as Lambda does) and
from then on its instance's ``Telemetry`` hands it the records of that instance only:
platform events, the function's lines and the extensions' lines, each as the API it
subscribed with formats them (``telemetry_items``, ``logs_items``). Every subscription
is a ``Subscriber``: a buffer bounded by its own maxItems/maxBytes and a background task
that POSTs JSON arrays to the destination, retrying with backoff; what does not fit is
dropped and counted, and the next batch starts with a ``platform.logsDropped`` record.
Nothing here is ever awaited by an invocation. This module is only imported once an
extension subscribes, so an instance without subscribers pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lambda_rapid.errors import RuntimeApiError
from lambda_rapid.httpserver import Response
from lambda_rapid.reports import peak_memory_mb

if TYPE_CHECKING:
    from lambda_rapid.extensions import Extension, Hub
    from lambda_rapid.httpserver import Request
    from lambda_rapid.instance import Instance
    from lambda_rapid.invocation import Invocation

logger = logging.getLogger(__name__)

TELEMETRY = "telemetry"
LOGS = "logs"
TELEMETRY_SCHEMAS = frozenset({"2022-07-01", "2022-12-13", "2025-01-29"})
LOGS_SCHEMAS = frozenset({"2020-08-15", "2021-03-18"})
LOGS_DEFAULT_SCHEMA = "2020-08-15"
TYPES = ("platform", "function", "extension")
# Lambda's buffering limits: (minimum, maximum, default).
BUFFERING = {
    "maxItems": (1000, 10000, 10000),
    "maxBytes": (262144, 1048576, 262144),
    "timeoutMs": (25, 30000, 1000),
}
# Host names that extensions written for Lambda use for their own listener.
LOCAL_NAMES = frozenset({"sandbox.localdomain", "sandbox", "localhost"})
DROPPED_REASON = "Consumer seems to have fallen behind as it has not acknowledged receipt of logs."
POST_TIMEOUT = 10.0  # a subscriber that takes longer gets the batch again
RETRY_FIRST, RETRY_MAX = 0.025, 1.0


class ValidationError(RuntimeApiError):
    status = 400
    error_type = "ValidationError"


class LogsValidationError(ValidationError):
    error_type = "Logs.ValidationError"


class SubscriptionClosed(RuntimeApiError):
    status = 403
    error_type = "Telemetry.SubscriptionClosed"


class LogsSubscriptionClosed(SubscriptionClosed):
    error_type = "Logs.SubscriptionClosed"


@dataclass(frozen=True, slots=True)
class Subscription:
    """A checked subscription request."""

    api: str  # TELEMETRY or LOGS
    schema: str
    types: frozenset[str]
    max_items: int
    max_bytes: int
    timeout_ms: int
    host: str  # the loopback address delivered to
    port: int
    target: str  # path and query of the POST
    host_header: str


def parse_subscription(api: str, body: bytes) -> Subscription:
    """The subscription in a PUT body; ValidationError (400) for anything Lambda refuses."""
    invalid = ValidationError if api == TELEMETRY else LogsValidationError
    try:
        request = json.loads(body)
    except ValueError:
        raise invalid("The request body is not valid JSON") from None
    if not isinstance(request, dict):
        raise invalid("The request body must be a JSON object")
    try:
        schema = subscription_schema(api, request.get("schemaVersion"))
        types = subscription_types(request.get("types"))
        limits = buffering(request.get("buffering"))
        host, port, target, host_header = destination(request.get("destination"))
    except ValueError as error:
        raise invalid(str(error)) from None
    return Subscription(api, schema, types, *limits, host, port, target, host_header)


def subscription_schema(api: str, value: object) -> str:
    if api == LOGS and value is None:
        return LOGS_DEFAULT_SCHEMA
    valid = TELEMETRY_SCHEMAS if api == TELEMETRY else LOGS_SCHEMAS
    if value not in valid:
        raise ValueError(f"schemaVersion must be one of {', '.join(sorted(valid))}")
    assert isinstance(value, str)
    return value


def subscription_types(value: object) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise ValueError("types should not be empty")
    for kind in value:
        if kind not in TYPES:
            raise ValueError(f"types must be among {', '.join(TYPES)}")
    return frozenset(value)


def buffering(value: object) -> tuple[int, int, int]:
    """maxItems, maxBytes, timeoutMs: the given ones checked, the others Lambda's defaults."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError("buffering must be an object")
    figures = []
    for name, (low, high, default) in BUFFERING.items():
        figure = value.get(name, default)
        if not isinstance(figure, int) or isinstance(figure, bool) or not low <= figure <= high:
            raise ValueError(f"buffering.{name} must be an integer from {low} to {high}")
        figures.append(figure)
    return figures[0], figures[1], figures[2]


def destination(value: object) -> tuple[str, int, str, str]:
    """Address, port, request target and Host header of an HTTP destination on this host."""
    if not isinstance(value, dict):
        raise ValueError("destination is required")
    protocol = value.get("protocol")
    if protocol != "HTTP":
        raise ValueError("destination.protocol must be HTTP (TCP is not supported here)")
    uri = value.get("URI")
    if not isinstance(uri, str):
        raise ValueError("destination.URI is required")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        raise ValueError("destination.URI is not a valid URI") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("destination.URI must be an http:// URI")
    if port is None:
        raise ValueError("URI port is not provided")
    host = loopback_address(parts.hostname)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, port, target, parts.netloc.rpartition("@")[2]


def loopback_address(hostname: str) -> str:
    """The address to deliver to: only this host (sandbox names, localhost, loopback)."""
    if hostname.lower() in LOCAL_NAMES:
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        raise ValueError("destination.URI must name this host (sandbox.localdomain)") from None
    if not address.is_loopback:
        raise ValueError("destination.URI must be a loopback address")
    return str(address)


# -- records ------------------------------------------------------------------------------


def timestamp(now: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds, as Lambda writes record times."""
    now = time.time() if now is None else now
    seconds = int(now)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        + f".{int((now - seconds) * 1000):03d}Z"
    )


def encode(when: str, kind: str, record: object) -> bytes:
    return json.dumps({"time": when, "type": kind, "record": record}).encode()


@dataclass(frozen=True, slots=True)
class Event:
    """One platform event as the hub sees it, before an API formats it."""

    kind: str  # e.g. "platform.start"
    when: str
    record: dict[str, Any]


def telemetry_items(event: Event, schema: str) -> list[bytes]:
    record = event.record
    if schema == "2022-07-01" and "errorType" in record:
        record = {k: v for k, v in record.items() if k != "errorType"}
    return [encode(event.when, event.kind, record)]


def logs_items(event: Event, schema: str) -> list[bytes]:
    """The Logs API's older shapes; events it does not have give nothing."""
    record, when = event.record, event.when
    kind = event.kind
    if kind == "platform.start":
        return [
            encode(when, kind, {"requestId": record["requestId"], "version": record["version"]})
        ]
    if kind == "platform.runtimeDone":
        items = []
        if record["status"] == "error" and record.get("errorType") == "Runtime.ExitError":
            fault = f"RequestId: {record['requestId']} Process exited before completing request"
            items.append(encode(when, "platform.fault", fault))
        if schema == "2021-03-18":
            status = "failure" if record["status"] == "error" else record["status"]
            items.append(encode(when, kind, {"requestId": record["requestId"], "status": status}))
        return items
    if kind == "platform.report":
        request_id = record["requestId"]
        end = encode(when, "platform.end", {"requestId": request_id})
        return [end, encode(when, kind, {"requestId": request_id, "metrics": record["metrics"]})]
    if kind == "platform.telemetrySubscription":
        return [encode(when, "platform.logsSubscription", record)]
    if kind in ("platform.extension", "platform.logsDropped"):
        return [encode(when, kind, record)]
    return []


def line_items(when: str, kind: str, data: bytes) -> list[bytes]:
    """One record per line of `data` (whole lines, each ending in a newline)."""
    text = data.decode("utf-8", "replace")
    return [encode(when, kind, line) for line in text.split("\n")[:-1]]


# -- delivery -----------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Status of one HTTP/1.1 answer (its body read and dropped) and whether it keeps alive."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    keep_alive = headers.get("connection") != "close"
    if "chunked" in headers.get("transfer-encoding", ""):
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    elif "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif status not in (204, 304):
        await reader.read()
        keep_alive = False
    return status, keep_alive


class Poster:
    """POSTs bodies to one destination over a kept-alive HTTP/1.1 connection."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: bytes) -> int:
        sub = self._subscription
        if self._streams is None:
            self._streams = await asyncio.open_connection(sub.host, sub.port)
        reader, writer = self._streams
        head = (
            f"POST {sub.target} HTTP/1.1\r\nHost: {sub.host_header}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            status, keep_alive = await read_response(reader)
        except BaseException:
            self.close()
            raise
        if not keep_alive:
            self.close()
        return status

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None

    async def aclose(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class Subscriber:
    """One extension's subscription: its bounded buffer and its delivery task."""

    def __init__(self, name: str, subscription: Subscription) -> None:
        self.name = name
        self.subscription = subscription
        self.format: Callable[[Event, str], list[bytes]] = (
            telemetry_items if subscription.api == TELEMETRY else logs_items
        )
        self._items: list[bytes] = []
        self._size = 0
        self.dropped_records = 0
        self.dropped_bytes = 0
        self.delivered = 0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._poster = Poster(subscription)
        self._delivering = False
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    def wants(self, kind: str) -> bool:
        return kind in self.subscription.types

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def offer(self, items: Iterable[bytes]) -> None:
        """Buffer records; drop (and count) those beyond the subscription's limits."""
        sub = self.subscription
        for item in items:
            if len(self._items) >= sub.max_items or self._size + len(item) > sub.max_bytes:
                self.dropped_records += 1
                self.dropped_bytes += len(item)
                self._full.set()
                continue
            self._items.append(item)
            self._size += len(item)
        if self._items:
            self._arrived.set()
            if len(self._items) >= sub.max_items or self._size >= sub.max_bytes:
                self._full.set()

    def flush(self) -> None:
        """Send what is buffered without waiting for timeoutMs (a stream has closed)."""
        self._full.set()

    def take(self) -> list[bytes]:
        batch, self._items, self._size = self._items, [], 0
        if self.dropped_records:
            record = {
                "reason": DROPPED_REASON,
                "droppedRecords": self.dropped_records,
                "droppedBytes": self.dropped_bytes,
            }
            batch.insert(0, encode(timestamp(), "platform.logsDropped", record))
            self.dropped_records = self.dropped_bytes = 0
        self._arrived.clear()
        self._full.clear()
        return batch

    async def _run(self) -> None:
        timeout = self.subscription.timeout_ms / 1000
        while not self._stopped:
            await self._arrived.wait()
            if not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._full.wait()
            batch = self.take()
            if not batch:
                continue
            self._delivering = True
            try:
                await self._deliver(b"[" + b",".join(batch) + b"]")
            finally:
                self._delivering = False
            self.delivered += len(batch)

    async def _deliver(self, body: bytes) -> None:
        """POST until the subscriber takes it (2xx), with backoff in between."""
        delay = RETRY_FIRST
        while True:
            try:
                async with asyncio.timeout(POST_TIMEOUT):
                    status = await self._poster.post(body)
                if 200 <= status < 300:
                    return
                logger.debug("telemetry subscriber %s answered %d", self.name, status)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as error:
                logger.debug("telemetry subscriber %s unreachable: %r", self.name, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    @property
    def drained(self) -> bool:
        return not self._items and not self._delivering

    async def close(self, grace: float) -> None:
        """Deliver what is buffered for up to `grace` seconds, then stop."""
        self.flush()
        deadline = time.monotonic() + grace
        while not self.drained and time.monotonic() < deadline:  # noqa: ASYNC110 - short poll
            await asyncio.sleep(0.01)
        self._stopped = True
        self._arrived.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._poster.aclose()


# -- one instance's hub -------------------------------------------------------------------

OK_BODY = b'"OK"'
MAX_BACKLOG = 100
STATUS_SUCCESS, STATUS_ERROR, STATUS_TIMEOUT = "success", "error", "timeout"


def status_fields(status: str, error_type: str | None) -> dict[str, Any]:
    """`status` and, for a failure, `errorType`, as Lambda's records carry them."""
    if status == STATUS_SUCCESS or error_type is None:
        return {"status": status}
    return {"status": status, "errorType": error_type}


class Telemetry:
    """The subscriptions of one instance's extensions and the records sent to them.

    Records are built once per event and offered to each subscriber whose types include
    them; an extension receives only this instance's records. Subscriptions are taken
    until the instance's init ends, as on Lambda.
    """

    def __init__(self, function_version: str, initialization_type: str = "on-demand") -> None:
        self._version = function_version
        self._init_type = initialization_type
        self._subscribers: dict[str, Subscriber] = {}
        self._open = True
        self.wants_lines = False  # some subscriber takes function lines
        self._backlog: list[Event] = []  # the init's platform events, for later subscribers

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._subscribers.values())

    def subscribe(self, extension_id: str, name: str, api: str, body: bytes) -> bytes:
        """A PUT /telemetry or /logs from extension `name`; the answer body, or raises."""
        closed = SubscriptionClosed if api == TELEMETRY else LogsSubscriptionClosed
        if not self._open:
            raise closed("Subscriptions are accepted only during the init phase")
        subscription = parse_subscription(api, body)
        current = self._subscribers.get(extension_id)
        if current is not None and current.subscription.api != api:
            other = "Telemetry API" if current.subscription.api == TELEMETRY else "Logs API"
            invalid = ValidationError if api == TELEMETRY else LogsValidationError
            raise invalid(f"The extension is already subscribed with the {other}")
        subscriber = Subscriber(name, subscription)
        if current is not None:  # subscribing again replaces the earlier settings
            subscriber.offer(current.take())
            current_task = asyncio.get_running_loop().create_task(current.close(0))
            current_task.add_done_callback(lambda _: None)
        self._subscribers[extension_id] = subscriber
        self.wants_lines = any(s.wants("function") for s in self._subscribers.values())
        subscriber.start()
        if subscriber.wants("platform"):
            schema = subscription.schema
            subscriber.offer([i for e in self._backlog for i in subscriber.format(e, schema)])
        record = {"name": name, "state": "Subscribed", "types": sorted(subscription.types)}
        self.platform("platform.telemetrySubscription", record)
        return OK_BODY

    def close_subscriptions(self) -> None:
        self._open = False
        self._backlog = []

    @property
    def idle(self) -> bool:
        """Nobody subscribed and nobody can any more: the hub may be forgotten."""
        return not self._open and not self._subscribers

    # -- what is offered ----------------------------------------------------------------

    def platform(self, kind: str, record: dict[str, Any]) -> None:
        event = Event(kind, timestamp(), record)
        if self._open and len(self._backlog) < MAX_BACKLOG:
            self._backlog.append(event)
        for subscriber in self._subscribers.values():
            if subscriber.wants("platform"):
                subscriber.offer(subscriber.format(event, subscriber.subscription.schema))

    def lines(self, kind: str, data: bytes) -> None:
        """Whole lines printed by the function (`kind` "function") or an extension."""
        items: list[bytes] | None = None
        for subscriber in self._subscribers.values():
            if subscriber.wants(kind):
                if items is None:
                    items = line_items(timestamp(), kind, data)
                subscriber.offer(items)

    def flush(self) -> None:
        for subscriber in self._subscribers.values():
            subscriber.flush()

    async def close(self, grace: float) -> None:
        """Deliver what is buffered for up to `grace` seconds, then stop every subscriber."""
        self._open = False
        subscribers = list(self._subscribers.values())
        self._subscribers.clear()
        self.wants_lines = False
        await asyncio.gather(*(s.close(grace) for s in subscribers))

    # -- the lifecycle's records --------------------------------------------------------

    def init_start(self) -> None:
        record = {
            "initializationType": self._init_type,
            "phase": "init",
            "functionVersion": self._version,
        }
        self.platform("platform.initStart", record)

    def init_runtime_done(self, status: str, error_type: str | None = None) -> None:
        record = {"initializationType": self._init_type, "phase": "init"}
        self.platform("platform.initRuntimeDone", record | status_fields(status, error_type))

    def init_report(self, duration_ms: float, status: str, error_type: str | None = None) -> None:
        record: dict[str, Any] = {"initializationType": self._init_type, "phase": "init"}
        record |= status_fields(status, error_type)
        record["metrics"] = {"durationMs": round(duration_ms, 3)}
        self.platform("platform.initReport", record)
        self.close_subscriptions()

    def extension(self, name: str, state: str, events: list[str]) -> None:
        self.platform("platform.extension", {"name": name, "state": state, "events": events})

    def start(self, request_id: str, trace_id: str | None) -> None:
        record: dict[str, Any] = {"requestId": request_id, "version": self._version}
        if trace_id:
            record["tracing"] = {"type": "X-Amzn-Trace-Id", "value": trace_id}
        self.platform("platform.start", record)

    def runtime_done(
        self,
        request_id: str,
        status: str,
        error_type: str | None,
        duration_ms: float,
        produced_bytes: int | None,
    ) -> None:
        metrics: dict[str, Any] = {"durationMs": round(duration_ms, 3)}
        if produced_bytes is not None:
            metrics["producedBytes"] = produced_bytes
        record = {"requestId": request_id} | status_fields(status, error_type)
        record["metrics"] = metrics
        self.platform("platform.runtimeDone", record)
        if status != STATUS_SUCCESS:
            self.flush()

    def report(
        self, request_id: str, status: str, error_type: str | None, metrics: dict[str, Any]
    ) -> None:
        record = {"requestId": request_id} | status_fields(status, error_type)
        record["metrics"] = metrics
        self.platform("platform.report", record)


# -- the lifecycle observer ---------------------------------------------------------------

JSON_TYPE = {"Content-Type": "application/json"}
MAX_BACKLOG = 100  # platform events of an instance's init kept for later subscribers


# -- the extensions' lifecycle observer ---------------------------------------------------

CLOSE_GRACE = 1.0  # an instance that ends gets this long to deliver what is buffered


class TelemetryObserver:
    """Hears the lifecycle of instances with extensions; one ``Telemetry`` per instance.

    An instance's hub lives from its init until its init ended with nobody subscribed,
    or until the instance is gone; afterwards the instance costs a dict look-up.
    """

    def __init__(self, function_version: str, memory_size: int) -> None:
        self._version = function_version
        self._memory_size = memory_size
        self._hubs: dict[Instance, Telemetry] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def handler(self, api: str) -> Callable[[Extension, Request], Response]:
        return lambda extension, request: self.subscribe(api, extension, request)

    def subscribe(self, api: str, extension: Extension, request: Request) -> Response:
        instance = extension.instance
        hub = self._hubs.get(instance)
        if hub is None and instance.init_duration_ms is None:  # in init, seen only now
            hub = self._hubs[instance] = Telemetry(self._version, initialization_type(instance))
        try:
            if hub is None:
                closed = SubscriptionClosed if api == TELEMETRY else LogsSubscriptionClosed
                raise closed("Subscriptions are accepted only during the init phase")
            body = hub.subscribe(extension.identifier, extension.name, api, request.body)
        except RuntimeApiError as error:
            return Response(error.status, error.body(), JSON_TYPE)
        if hub.wants_lines:
            instance.output.tap = partial(hub.lines, "function")
        return Response(200, body, JSON_TYPE)

    def init_start(self, instance: Instance) -> None:
        hub = self._hubs[instance] = Telemetry(self._version, initialization_type(instance))
        hub.init_start()

    def runtime_init_done(self, instance: Instance, error_type: str | None) -> None:
        if (hub := self._hubs.get(instance)) is not None:
            hub.init_runtime_done(outcome(error_type), error_type)

    def init_report(self, instance: Instance, duration_ms: float, error_type: str | None) -> None:
        if (hub := self._hubs.get(instance)) is not None:
            hub.init_report(duration_ms, outcome(error_type), error_type)
            if hub.idle:
                del self._hubs[instance]

    def invoke_start(self, instance: Instance, invocation: Invocation) -> None:
        if (hub := self._hubs.get(instance)) is not None:
            hub.start(invocation.request_id, invocation.trace_id)

    def runtime_done(
        self, instance: Instance, invocation: Invocation, status: str, error_type: str | None
    ) -> None:
        if (hub := self._hubs.get(instance)) is not None:
            if instance.output.tap is not None:
                # What the runtime printed before answering is already in its pipe, but
                # a busy loop may read the answer first: those lines go before runtimeDone.
                instance.output.drain()
            duration = (time.monotonic() - invocation.invoked_at) * 1000
            hub.runtime_done(invocation.request_id, status, error_type, duration, None)

    def report(
        self,
        instance: Instance,
        invocation: Invocation,
        duration_ms: float,
        status: str,
        error_type: str | None,
    ) -> None:
        if (hub := self._hubs.get(instance)) is not None:
            metrics = report_metrics(invocation, duration_ms, self._memory_size)
            hub.report(invocation.request_id, status, error_type, metrics)

    def extension_registered(self, instance: Instance, extension: Extension) -> None:
        if (hub := self._hubs.get(instance)) is not None:
            hub.extension(extension.name, "Ready", sorted(extension.events))

    def extension_exited(
        self, instance: Instance, extension: Extension, description: str | None
    ) -> None:
        if (hub := self._hubs.get(instance)) is not None:
            hub.flush()

    def extension_output(self, instance: Instance, name: str, lines: bytes) -> None:
        if (hub := self._hubs.get(instance)) is not None:
            hub.lines("extension", lines)

    def instance_gone(self, instance: Instance) -> None:
        """The instance is stopping: deliver what its subscribers still have, then stop."""
        hub = self._hubs.pop(instance, None)
        instance.output.tap = None
        if hub is not None:
            task = asyncio.get_running_loop().create_task(hub.close(CLOSE_GRACE))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for instance in list(self._hubs):
            self.instance_gone(instance)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def initialization_type(instance: Instance) -> str:
    return "provisioned-concurrency" if instance.provisioned else "on-demand"


def outcome(error_type: str | None) -> str:
    return STATUS_SUCCESS if error_type is None else STATUS_ERROR


def report_metrics(invocation: Invocation, duration_ms: float, memory_size: int) -> dict[str, Any]:
    """The REPORT line's figures, as platform.report carries them."""
    billed = duration_ms
    metrics: dict[str, Any] = {"durationMs": round(duration_ms, 2)}
    if invocation.init_duration_ms is not None:
        metrics["initDurationMs"] = round(invocation.init_duration_ms, 2)
        billed += invocation.init_duration_ms
    metrics["billedDurationMs"] = max(1, math.ceil(billed))
    metrics["memorySizeMB"] = memory_size
    used = max(peak_memory_mb(invocation.pid), invocation.peak_memory_mb)
    metrics["maxMemoryUsedMB"] = used
    return metrics


def install(hub: Hub, function_version: str, memory_size: int) -> TelemetryObserver:
    """Make a ``TelemetryObserver`` the extensions hub's observer and subscribe handlers."""
    observer = TelemetryObserver(function_version, memory_size)
    hub.observer = observer
    hub.telemetry = observer.handler(TELEMETRY)
    hub.logs = observer.handler(LOGS)
    return observer
