"""Telemetry/Logs API pieces: subscription checks, bounded buffers, record shapes, and
delivery to a real HTTP listener on a loopback port."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from lambda_rapid import telemetry
from lambda_rapid.telemetry import (
    LOGS,
    TELEMETRY,
    LogsValidationError,
    Subscriber,
    SubscriptionClosed,
    Telemetry,
    ValidationError,
    parse_subscription,
)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(test())

    return sync


def request(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "schemaVersion": "2022-12-13",
        "types": ["platform", "function"],
        "destination": {"protocol": "HTTP", "URI": "http://sandbox.localdomain:8123/in?x=1"},
    }
    body.update(overrides)
    return json.dumps(body).encode()


def test_defaults_and_sandbox_host_delivered_to_loopback() -> None:
    sub = parse_subscription(TELEMETRY, request())
    assert (sub.max_items, sub.max_bytes, sub.timeout_ms) == (10000, 262144, 1000)
    assert (sub.host, sub.port, sub.target) == ("127.0.0.1", 8123, "/in?x=1")
    assert sub.host_header == "sandbox.localdomain:8123"
    assert sub.types == frozenset({"platform", "function"})


@pytest.mark.parametrize(
    "overrides",
    [
        {"buffering": {"maxItems": 999}},
        {"buffering": {"maxItems": 10001}},
        {"buffering": {"maxBytes": 262143}},
        {"buffering": {"maxBytes": 1048577}},
        {"buffering": {"timeoutMs": 24}},
        {"buffering": {"timeoutMs": 30001}},
        {"buffering": {"timeoutMs": True}},
        {"types": []},
        {"types": ["platform", "metrics"]},
        {"schemaVersion": "2020-08-15"},
        {"destination": {"protocol": "HTTP", "URI": "http://sandbox.localdomain/"}},
        {"destination": {"protocol": "TCP", "URI": "http://sandbox:9000"}},
        {"destination": {"protocol": "HTTP", "URI": "http://example.com:9000/"}},
        {"destination": {"protocol": "HTTP", "URI": "http://10.0.0.1:9000/"}},
        {"destination": {"protocol": "HTTP", "URI": "https://sandbox:9000/"}},
        {"destination": None},
    ],
)
def test_refused_subscriptions_get_lambdas_validation_error(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_subscription(TELEMETRY, request(**overrides))
    assert refused.value.status == 400
    assert json.loads(refused.value.body())["errorType"] == "ValidationError"


def test_logs_api_schema_is_optional_and_its_errors_are_its_own() -> None:
    body = json.loads(request())
    del body["schemaVersion"]
    assert parse_subscription(LOGS, json.dumps(body).encode()).schema == "2020-08-15"
    with pytest.raises(LogsValidationError) as refused:
        parse_subscription(LOGS, b"not json")
    assert json.loads(refused.value.body())["errorType"] == "Logs.ValidationError"


def test_limits_are_honoured_at_their_bounds() -> None:
    limits = {"maxItems": 1000, "maxBytes": 1048576, "timeoutMs": 25}
    sub = parse_subscription(TELEMETRY, request(buffering=limits))
    assert (sub.max_items, sub.max_bytes, sub.timeout_ms) == (1000, 1048576, 25)


@run
async def test_a_full_buffer_drops_and_counts_then_reports_the_loss() -> None:
    sub = parse_subscription(TELEMETRY, request(buffering={"maxItems": 1000}))
    subscriber = Subscriber("ext", sub)
    subscriber.offer(b'{"n":%d}' % n for n in range(1500))
    assert subscriber.dropped_records == 500
    batch = subscriber.take()
    assert len(batch) == 1001
    dropped = json.loads(batch[0])
    assert dropped["type"] == "platform.logsDropped"
    assert dropped["record"]["droppedRecords"] == 500
    assert dropped["record"]["droppedBytes"] == sum(len(b'{"n":%d}' % n) for n in range(1000, 1500))
    assert subscriber.take() == []  # counted once


def test_logs_api_formats() -> None:
    when = telemetry.timestamp(0)
    assert when == "1970-01-01T00:00:00.000Z"
    report = telemetry.Event(
        "platform.report", when, {"requestId": "r", "status": "success", "metrics": {"a": 1}}
    )
    shapes = [json.loads(i) for i in telemetry.logs_items(report, "2020-08-15")]
    assert [s["type"] for s in shapes] == ["platform.end", "platform.report"]
    assert shapes[1]["record"] == {"requestId": "r", "metrics": {"a": 1}}
    crash = telemetry.Event(
        "platform.runtimeDone",
        when,
        {"requestId": "r", "status": "error", "errorType": "Runtime.ExitError"},
    )
    assert [json.loads(i)["type"] for i in telemetry.logs_items(crash, "2020-08-15")] == [
        "platform.fault"
    ]
    newer = [json.loads(i) for i in telemetry.logs_items(crash, "2021-03-18")]
    assert newer[1]["record"] == {"requestId": "r", "status": "failure"}
    init = telemetry.Event("platform.initStart", when, {})
    assert telemetry.logs_items(init, "2021-03-18") == []


class Listener:
    """A real HTTP/1.1 listener on a loopback port that records the JSON arrays posted."""

    def __init__(self, status: int = 200) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.status = status
        self.connections = 0
        self.arrived = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    async def close(self, server: asyncio.Server) -> None:
        server.close()
        for writer in self.writers:
            writer.close()
        await server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                answer = b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % self.status
                if self.status == 200:
                    self.batches.append(json.loads(body))
                    self.arrived.set()
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def wait_for(predicate: Any) -> None:
    async with asyncio.timeout(5.0):
        while not predicate():  # noqa: ASYNC110 - polls the listener's records
            await asyncio.sleep(0.005)


@run
async def test_hub_delivers_init_backlog_then_invocation_records_over_one_connection() -> None:
    listener = Listener()
    server = await asyncio.start_server(listener.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hub = Telemetry("$LATEST")
    hub.init_start()
    uri = f"http://sandbox:{port}/"
    body = request(destination={"protocol": "HTTP", "URI": uri}, buffering={"timeoutMs": 25})
    assert hub.subscribe("id-1", "ext", TELEMETRY, body) == b'"OK"'
    hub.init_runtime_done("success")
    hub.init_report(12.5, "success")
    with pytest.raises(SubscriptionClosed):
        hub.subscribe("id-2", "late", TELEMETRY, body)
    hub.start("req", None)
    hub.lines("function", b"one\ntwo\n")
    hub.lines("extension", b"not subscribed\n")
    hub.runtime_done("req", "timeout", "Sandbox.Timedout", 3.0, None)
    hub.report("req", "timeout", "Sandbox.Timedout", {"durationMs": 3.0})
    await wait_for(lambda: sum(len(b) for b in listener.batches) >= 8)
    records = [r for batch in listener.batches for r in batch]
    kinds = [r["type"] for r in records]
    assert kinds == [
        "platform.initStart",
        "platform.telemetrySubscription",
        "platform.initRuntimeDone",
        "platform.initReport",
        "platform.start",
        "function",
        "function",
        "platform.runtimeDone",
        "platform.report",
    ]
    assert [r["record"] for r in records if r["type"] == "function"] == ["one", "two"]
    done = records[7]["record"]
    assert (done["status"], done["errorType"]) == ("timeout", "Sandbox.Timedout")
    assert listener.connections == 1
    await hub.close(1.0)
    await listener.close(server)


@run
async def test_unreachable_subscriber_is_retried_until_it_listens() -> None:
    placeholder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = placeholder.sockets[0].getsockname()[1]
    placeholder.close()
    await placeholder.wait_closed()
    sub = parse_subscription(
        TELEMETRY,
        request(
            destination={"protocol": "HTTP", "URI": f"http://127.0.0.1:{port}/"},
            buffering={"timeoutMs": 25},
        ),
    )
    subscriber = Subscriber("ext", sub)
    subscriber.start()
    subscriber.offer([b'{"n":1}'])
    await asyncio.sleep(0.1)  # a few refused attempts
    listener = Listener()
    server = await asyncio.start_server(listener.serve, "127.0.0.1", port)
    await asyncio.wait_for(listener.arrived.wait(), 5)
    assert listener.batches == [[{"n": 1}]]
    await subscriber.close(0)
    await listener.close(server)


@run
async def test_an_error_answer_is_retried() -> None:
    listener = Listener(status=500)
    server = await asyncio.start_server(listener.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    uri = f"http://127.0.0.1:{port}/"
    sub = parse_subscription(
        TELEMETRY,
        request(destination={"protocol": "HTTP", "URI": uri}, buffering={"timeoutMs": 25}),
    )
    subscriber = Subscriber("ext", sub)
    subscriber.start()
    subscriber.offer([b'{"n":1}'])
    await wait_for(lambda: listener.connections >= 1)
    listener.status = 200
    await asyncio.wait_for(listener.arrived.wait(), 5)
    assert listener.batches == [[{"n": 1}]]
    await subscriber.close(0)
    await listener.close(server)


def test_the_daemon_does_not_load_telemetry_without_extensions() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lambda_rapid.cli, lambda_rapid.daemon;"
        "print('lambda_rapid.telemetry' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
