"""Hostile and broken AMQP traffic against the real daemon and lambda-server: forged header
values, malformed messages, oversized errors, redelivery loops, retries that wait in the
broker, foreign queues, the readiness signal and a broker that goes away."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from tests.e2e.broker import (
    Names,
    amqp_daemon,
    broker_connection,
    broker_url,
    count_lines,
    declare_queue,
    header,
    kill_runtimes,
    names,
    pika_rpc,
    publish_event,
    queue_depth,
    start_server,
    wait_for,
    wait_for_message,
)
from tests.e2e.conftest import free_port

__all__ = ["amqp_daemon", "broker_url", "names", "start_server"]

HEADER_ECHO = [sys.executable, "header_echo.py"]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ONE_AT_A_TIME = {"MAX_CONCURRENCY": "1", "MAXIMUM_RETRY_ATTEMPTS": "0"}


def marker() -> str:
    return f"marker-{uuid.uuid4().hex}"


def wire_lines(body: bytes) -> dict[str, str]:
    """The /next header lines the header_echo runtime saw, as name → value (all of them)."""
    lines = json.loads(body)
    parsed = {}
    for line in lines:
        name, sep, value = line.partition(":")
        assert sep and name == name.strip() and name, f"not a header line: {line!r} in {lines}"
        parsed[name.lower()] = value.strip()
    return parsed


def publish_raw(url: str, queue: str, body: bytes, properties: pika.BasicProperties) -> None:
    with broker_connection(url) as channel:
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, properties, mandatory=True)


# -- item 3: no header injection ---------------------------------------------------------------


def test_crlf_in_message_properties_never_reaches_the_runtime(
    names: Names, amqp_daemon: Any
) -> None:
    name = names.function()
    amqp_daemon(name, command=HEADER_ECHO)
    forged_context = base64.b64encode(b'{"custom":\r\n{"a": 1}}').decode()
    _, body = pika_rpc(
        names.url,
        name,
        {},
        message_id="id\r\nLambda-Runtime-Forged: 1",
        headers={
            "X-Amzn-Trace-Id": "Root=1-x\r\nForged-Trace: 1",
            "X-Amz-Invoked-Function-Arn": "arn\r\nForged-Arn: 1",
            "X-Amz-Client-Context": forged_context,
        },
    )
    seen = wire_lines(body)  # every line is a header line: nothing was split
    assert not [n for n in seen if "forged" in n], seen
    assert UUID.match(seen["lambda-runtime-aws-request-id"]), seen
    assert seen["lambda-runtime-trace-id"].startswith("Root=1-"), seen
    assert seen["lambda-runtime-invoked-function-arn"].endswith(f":function:{name}")
    assert json.loads(seen["lambda-runtime-client-context"]) == {"custom": {"a": 1}}


@pytest.mark.parametrize("message_id", ["../../x", "a/b", "..", "a b", "x" * 200, "é"])
def test_unsafe_message_id_gets_a_generated_request_id(
    names: Names, amqp_daemon: Any, message_id: str
) -> None:
    name = names.function()
    amqp_daemon(name)
    _, body = pika_rpc(names.url, name, {"context": 1}, message_id=message_id)
    assert UUID.match(json.loads(body)["aws_request_id"]), body
    _, body = pika_rpc(names.url, name, {"context": 1}, message_id="req-1.A_b")
    assert json.loads(body)["aws_request_id"] == "req-1.A_b"


@contextlib.contextmanager
def fake_daemon(url: str, name: str, reply_headers: dict[str, Any]) -> Iterator[None]:
    """A consumer on function `name`'s queue answering every request with `reply_headers`."""
    declare_queue(url, name)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()

    def on_request(ch: Any, method: Any, props: Any, _body: bytes) -> None:
        reply = pika.BasicProperties(correlation_id=props.correlation_id, headers=reply_headers)
        ch.basic_publish("", props.reply_to, b'{"ok": 1}', reply)
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(name, on_request)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            connection.process_data_events(time_limit=0.1)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        connection.close()


@pytest.mark.parametrize(
    ("reply_headers", "status"),
    [
        ({"X-Amz-Executed-Version": "1\r\nX-Forged: 1", "X-Amz-Log-Result": "a\r\nb"}, 200),
        ({"x-amzn-ErrorType": "Boom\r\nX-Forged: 1", "x-amzn-Status": 400}, 502),
        ({"x-amzn-ErrorType": "Boom", "x-amzn-Status": "abc"}, 502),
    ],
)
def test_lambda_server_never_copies_unsafe_reply_headers(
    names: Names, start_server: Any, reply_headers: dict[str, Any], status: int
) -> None:
    name = names.function()
    server = start_server()
    with fake_daemon(names.url, name, reply_headers):
        response = server.invoke(name, {"k": 1}, timeout=20)
    assert response.status == status, (response.status, response.body, server.stderr())
    assert response.header("X-Forged") is None
    assert all("\n" not in v and "\r" not in v for v in response.headers.values())
    assert "Traceback" not in server.stderr()


# -- item 5: lambda-server routes only to functions -------------------------------------------


def test_foreign_queue_with_a_consumer_is_not_a_function(names: Names, start_server: Any) -> None:
    queue = names.queue("e2e-foreign")
    received: list[bytes] = []
    with broker_connection(names.url) as channel:
        channel.queue_declare(queue)
        channel.basic_consume(queue, lambda *args: received.append(args[3]), auto_ack=True)
        server = start_server({"AWS_LAMBDA_FUNCTION_TIMEOUT": "5"})
        for invocation_type in ("RequestResponse", "Event", "DryRun"):
            response = server.invoke(
                queue, {"k": 1}, headers={"X-Amz-Invocation-Type": invocation_type}
            )
            assert response.status == 404, (invocation_type, response.status, response.body)
            assert response.header("x-amzn-ErrorType") == "ResourceNotFoundException"
        channel.connection.process_data_events(time_limit=0.2)
    assert received == [], "the foreign application received lambda-server's messages"


def test_dry_run_agrees_with_event(names: Names, amqp_daemon: Any, start_server: Any) -> None:
    plain = names.queue("e2e-plain")
    with broker_connection(names.url) as channel:
        channel.queue_declare(plain, durable=True)
    name = names.function()
    daemon = amqp_daemon(name)
    assert daemon.stop() == 0  # the function's queue stays bound, with nobody consuming
    server = start_server()
    for function, expected in ((name, (204, 202)), (plain, (404, 404))):
        statuses = tuple(
            server.invoke(function, {}, headers={"X-Amz-Invocation-Type": kind}).status
            for kind in ("DryRun", "Event")
        )
        assert statuses == expected, (function, statuses)
    assert queue_depth(names.url, name) == 1  # the Event waits for a daemon


# -- item 12: a malformed message never jams the consumer -------------------------------------

MALFORMED_EVENTS: list[Any] = [
    pytest.param({"headers": {"x-lambda-attempt": "abc"}}, id="attempt-text"),
    pytest.param({"headers": {"x-lambda-attempt": {"a": 1}}}, id="attempt-table"),
    pytest.param({"headers": {"x-lambda-attempt": -1}}, id="attempt-negative"),
    pytest.param({"headers": {"X-Amzn-Trace-Id": [1, 2]}}, id="trace-list"),
    pytest.param({"headers": {"X-Amz-Client-Context": 5}}, id="context-int"),
    pytest.param({"headers": {"X-Amz-Tenant-Id": "t\r\nx: 1"}}, id="tenant-crlf"),
    pytest.param({"correlation_id": b"\xff\xfe"}, id="correlation-not-utf8"),
    pytest.param({"timestamp": 2**63}, id="timestamp-out-of-range"),
]


@pytest.mark.parametrize("properties", MALFORMED_EVENTS)
def test_malformed_event_is_dead_lettered_and_the_queue_goes_on(
    names: Names, amqp_daemon: Any, properties: dict[str, Any]
) -> None:
    name = names.function()
    daemon = amqp_daemon(name, ONE_AT_A_TIME)
    message_id = str(uuid.uuid4())
    publish_raw(
        names.url,
        name,
        b'{"print": "never"}',
        pika.BasicProperties(message_id=message_id, delivery_mode=2, **properties),
    )
    props, body = wait_for_message(names.url, f"{name}-dlq", timeout=20)
    assert body == b'{"print": "never"}'
    assert header(props.headers, "x-condition") == "MalformedMessage", props.headers
    assert header(props.headers, "x-error-body"), props.headers
    assert json.loads(pika_rpc(names.url, name, {"after": 1}, timeout=20)[1]) == {"after": 1}
    assert "never" not in daemon.stdout()
    assert queue_depth(names.url, name) == 0


def test_rpc_with_reply_to_a_missing_queue_does_not_jam(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    daemon = amqp_daemon(name, ONE_AT_A_TIME)
    text = marker()
    for reply_to in (f"no-such-queue-{uuid.uuid4().hex}", "amq.rabbitmq.reply-to.bogus"):
        publish_raw(
            names.url,
            name,
            json.dumps({"print": text}).encode(),
            pika.BasicProperties(reply_to=reply_to, correlation_id="c-1"),
        )
    assert json.loads(pika_rpc(names.url, name, {"after": 1}, timeout=20)[1]) == {"after": 1}
    assert count_lines(daemon.stdout(), text) == 2
    assert queue_depth(names.url, name) == 0


def test_malformed_rpc_is_answered_with_an_error(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    amqp_daemon(name, ONE_AT_A_TIME)
    props, body = pika_rpc(names.url, name, {}, headers={"X-Amz-Client-Context": 5})
    assert header(props.headers, "x-amzn-ErrorType") == "InvalidParameterValueException"
    assert "X-Amz-Client-Context" in json.loads(body)["message"]


# -- item 13: dead-lettering never loops --------------------------------------------------------


def test_huge_error_is_dead_lettered_after_one_run(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    daemon = amqp_daemon(name, ONE_AT_A_TIME)
    text = marker()
    event = {"print": text, "raise": "e" * 200_000}
    publish_event(names.url, name, event, headers={"big": "h" * 60_000})
    props, body = wait_for_message(names.url, f"{name}-dlq", timeout=30)
    assert json.loads(body) == event
    assert len(header(props.headers, "x-error-body").encode()) <= 8 * 1024
    assert header(props.headers, "ErrorMessage") == "e" * 1024
    assert header(props.headers, "big") == "h" * 60_000  # the publisher's headers are kept
    assert json.loads(pika_rpc(names.url, name, {"after": 1}, timeout=20)[1]) == {"after": 1}
    assert count_lines(daemon.stdout(), text) == 1, "the event ran more than once"


def requeue_once(url: str, queue: str) -> None:
    """Take the head message without acknowledging it, then drop the channel: redelivered."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    method, _, _ = channel.basic_get(queue, auto_ack=False)
    assert method is not None and not method.redelivered
    connection.close()


@pytest.mark.parametrize(("retries", "attempt", "runs"), [(0, 0, 0), (2, 2, 0), (2, 1, 1)])
def test_redelivered_event_counts_the_interrupted_run(
    names: Names, amqp_daemon: Any, retries: int, attempt: int, runs: int
) -> None:
    name = names.function()
    declare_queue(names.url, name)
    text = marker()
    headers = {"x-lambda-attempt": attempt} if attempt else None
    publish_event(names.url, name, {"print": text, "raise": "x"}, headers=headers)
    requeue_once(names.url, name)
    env = {"MAXIMUM_RETRY_ATTEMPTS": str(retries), "RETRY_DELAY": "0"}
    daemon = amqp_daemon(name, env)
    props, _ = wait_for_message(names.url, f"{name}-dlq", timeout=30)
    assert header(props.headers, "x-condition") == "RetriesExhausted"
    assert props.headers["x-lambda-attempt"] == retries + 1
    assert json.loads(pika_rpc(names.url, name, {"after": 1}, timeout=20)[1]) == {"after": 1}
    assert count_lines(daemon.stdout(), text) == runs


def publish_request(url: str, queue: str, event: Any, reply_to: str, **headers: Any) -> str:
    """An RPC request whose reply goes to the ordinary queue `reply_to`; its correlation id."""
    correlation_id = str(uuid.uuid4())
    properties = pika.BasicProperties(
        reply_to=reply_to,
        correlation_id=correlation_id,
        content_type="application/json",
        headers=headers or None,
    )
    publish_raw(url, queue, json.dumps(event).encode(), properties)
    return correlation_id


@pytest.mark.parametrize(("retries", "attempt", "runs"), [(0, 0, 0), (2, 2, 0), (2, 1, 1)])
def test_redelivered_request_counts_the_interrupted_run(
    names: Names, amqp_daemon: Any, retries: int, attempt: int, runs: int
) -> None:
    name, replies = names.function(), names.queue()
    declare_queue(names.url, name)
    with broker_connection(names.url) as channel:
        channel.queue_declare(replies)
    text = marker()
    extra = {"x-lambda-attempt": attempt} if attempt else {}
    correlation_id = publish_request(names.url, name, {"print": text}, replies, **extra)
    requeue_once(names.url, name)
    daemon = amqp_daemon(name, {"MAXIMUM_RETRY_ATTEMPTS": str(retries)})
    props, body = wait_for_message(names.url, replies, timeout=30)
    assert props.correlation_id == correlation_id
    if runs:
        assert json.loads(body) == {"print": text}
    else:
        assert header(props.headers, "x-amzn-ErrorType") == "ServiceException"
        assert props.headers["x-amzn-Status"] == 500
        assert "interrupted" in json.loads(body)["Message"]
    assert json.loads(pika_rpc(names.url, name, {"after": 1}, timeout=20)[1]) == {"after": 1}
    assert count_lines(daemon.stdout(), text) == runs
    assert queue_depth(names.url, name) == 0


def test_request_whose_daemon_was_killed_mid_run_is_not_run_forever(
    names: Names, amqp_daemon: Any
) -> None:
    name, replies = names.function(), names.queue()
    with broker_connection(names.url) as channel:
        channel.queue_declare(replies)
    env = {"MAXIMUM_RETRY_ATTEMPTS": "1", "AWS_LAMBDA_FUNCTION_TIMEOUT": "60"}
    text = marker()
    runs = []
    for _ in range(2):  # the first run, and the one re-run allowed
        daemon = amqp_daemon(name, env, check_exit=False)
        if not runs:
            publish_request(names.url, name, {"print": text, "sleep": 60}, replies)
        assert wait_for(lambda d=daemon: text in d.stdout(), 20), daemon.stderr()
        runs.append(daemon.stdout())
        daemon.signal(signal.SIGKILL)
        daemon.proc.wait(10)
        kill_runtimes(daemon)
    last = amqp_daemon(name, env)
    props, body = wait_for_message(names.url, replies, timeout=30)
    assert header(props.headers, "x-amzn-ErrorType") == "ServiceException", body
    assert "interrupted 2 time(s)" in json.loads(body)["Message"]
    assert text not in last.stdout()
    assert queue_depth(names.url, name) == 0


def test_retries_wait_in_the_broker_and_survive_the_daemon(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    env = {"MAXIMUM_RETRY_ATTEMPTS": "2", "RETRY_DELAY": "1"}
    first = amqp_daemon(name, env)
    text = marker()
    publish_event(names.url, name, {"print": text, "raise": "x"})
    assert wait_for(lambda: text in first.stdout(), 20)
    assert first.stop() == 0
    assert wait_for(lambda: queue_depth(names.url, name) == 1, 10), "the retry was lost"
    second = amqp_daemon(name, env)
    props, _ = wait_for_message(names.url, f"{name}-dlq", timeout=30)
    assert props.headers["x-lambda-attempt"] == 3
    assert count_lines(first.stdout() + second.stdout(), text) == 3
    waited = {header(d, "queue"): d["count"] for d in props.headers["x-death"]}
    assert waited == {f"{name}-retry-1": 1, f"{name}-retry-2": 1}, props.headers["x-death"]


# -- item 14: readiness and an unreachable broker ---------------------------------------------


def test_ready_line_means_http_events_are_queued(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    daemon = amqp_daemon(name, consuming=False, wait=False)
    assert wait_for(lambda: " ready: " in daemon.stderr(), 20), daemon.stderr()
    text = marker()
    response = daemon.invoke({"print": text}, headers={"X-Amz-Invocation-Type": "Event"})
    assert response.status == 202, response.body
    assert daemon.stderr().index("consuming queue") < daemon.stderr().index(" ready: ")
    assert wait_for(lambda: text in daemon.stdout(), 20)


class Proxy:
    """A loopback TCP proxy to the broker that can be cut and restored."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self._target = target
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and end the open ones."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()


def test_lambda_server_answers_503_while_the_broker_is_away(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    name = names.function()
    amqp_daemon(name)
    proxy = Proxy(5672)
    proxy.start()
    uri = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?connection_attempts=100&retry_delay=0.5"
    server = start_server(uri=uri)
    try:
        assert server.invoke(name, {"up": 1}).status == 200
        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                statuses.append(server.invoke(name, {"k": 1}, timeout=30).status)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: len(statuses) > 10, 20)
        proxy.cut()
        assert wait_for(lambda: 503 in statuses, 30), statuses
        response = server.invoke(name, {"k": 1}, timeout=30)
        assert response.status == 503, response.body
        assert response.header("x-amzn-ErrorType") == "ServiceException"
        proxy.start()
        assert wait_for(lambda: statuses[-1] == 200, 30), statuses[-20:]
        stop.set()
        for thread in threads:
            thread.join(60)
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        assert "Traceback" not in server.stderr()
    finally:
        proxy.cut()


def test_lambda_server_stops_on_sigterm_while_it_reconnects(start_server: Any) -> None:
    # Nothing listens on the port, and retry_delay=0 keeps each server inside a connection
    # attempt almost all the time: SIGTERM lands on one mid-attempt in about half the cases.
    refused = free_port()
    uri = f"amqp://guest:guest@127.0.0.1:{refused}/?connection_attempts=1000000&retry_delay=0"
    servers = [start_server(uri=uri, ready=False) for _ in range(4)]
    for server in servers:
        assert wait_for(lambda s=server: "cannot reach the broker" in s.stderr(), 30), (
            server.stderr()
        )
    assert [server.stop() for server in servers] == [0, 0, 0, 0]  # SIGTERM, then wait


def test_daemon_stops_on_sigterm_while_it_reconnects(start_daemon: Any) -> None:
    # As above, for the daemon's consumer: SIGTERM mid-attempt must still stop it, status 0.
    refused = free_port()
    uri = f"amqp://guest:guest@127.0.0.1:{refused}/?connection_attempts=1000000&retry_delay=0"
    daemons = [start_daemon(env={"AMQP_URI": uri}) for _ in range(4)]
    for daemon in daemons:
        assert wait_for(lambda d=daemon: "cannot reach the broker" in d.stderr(), 30), (
            daemon.stderr()
        )
    assert [daemon.stop() for daemon in daemons] == [0, 0, 0, 0]  # SIGTERM, then wait
