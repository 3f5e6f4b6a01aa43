"""The daemon in AMQP mode against a real RabbitMQ: AMQP-RPC from pika and aio-pika
(requests of megabytes too), Event messages with retries and a dead-letter queue, HTTP
next to AMQP, prefetch bounded by MAX_CONCURRENCY, redelivery after a crash, reconnection,
credentials kept secret, and the broker being unreachable or misconfigured."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aio_pika
import pika.exceptions
import pytest
from aio_pika.abc import AbstractIncomingMessage

from tests.e2e.broker import (
    Names,
    amqp_daemon,
    broker_url,
    client_context,
    close_broker_connections,
    count_lines,
    declare_queue,
    header,
    kill_runtimes,
    names,
    pika_rpc,
    publish_event,
    queue_depth,
    wait_consuming,
    wait_for,
    wait_for_message,
)
from tests.e2e.conftest import DAEMON, free_port

# The broker fixtures, re-exported so that pytest (and ruff) see them as used here.
__all__ = ["amqp_daemon", "broker_url", "names"]

TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


def marker() -> str:
    return f"marker-{uuid.uuid4().hex}"


# -- AMQP-RPC ----------------------------------------------------------------------------------


def test_pika_rpc_echo_with_matching_correlation_id(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    amqp_daemon(name)
    correlation_id = str(uuid.uuid4())
    props, body = pika_rpc(names.url, name, {"hello": "amqp"}, correlation_id=correlation_id)
    assert json.loads(body) == {"hello": "amqp"}
    assert props.correlation_id == correlation_id
    assert header(props.headers, "X-Amz-Executed-Version") == "$LATEST"
    assert header(props.headers, "X-Amz-Function-Error") is None


def test_pika_rpc_function_error_and_log_tail(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    amqp_daemon(name)
    text = marker()
    props, body = pika_rpc(
        names.url, name, {"print": text, "raise": "boom"}, headers={"X-Amz-Log-Type": "Tail"}
    )
    assert header(props.headers, "X-Amz-Function-Error") == "Unhandled", props.headers
    assert header(props.headers, "X-Amz-Function-Error-Type"), props.headers
    error = json.loads(body)
    assert error["errorMessage"] == "boom"
    assert error["errorType"] == "ValueError"
    tail = base64.b64decode(header(props.headers, "X-Amz-Log-Result") or "")
    assert text.encode() in tail


def test_pika_rpc_timeout(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    amqp_daemon(name, {"AWS_LAMBDA_FUNCTION_TIMEOUT": "1"})
    # The function would take 120 s: a reply within 30 s came from the timeout.
    props, body = pika_rpc(names.url, name, {"sleep": 120}, timeout=30)
    assert header(props.headers, "X-Amz-Function-Error") == "Unhandled"
    assert json.loads(body)["errorType"] == "Sandbox.Timedout"


def test_pika_rpc_context_trace_id_and_request_id(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    amqp_daemon(name)
    request_id = str(uuid.uuid4())
    custom = {"tenant": "t-1", "n": 2}
    props, body = pika_rpc(
        names.url,
        name,
        {"context": 1},
        message_id=request_id,
        headers={"X-Amz-Client-Context": client_context(custom), "X-Amzn-Trace-Id": TRACE},
    )
    seen = json.loads(body)
    assert seen["aws_request_id"] == request_id
    assert seen["trace_id"] == TRACE
    assert seen["client_context"]["custom"] == custom
    assert seen["function_name"] == name


def test_message_timestamp_starts_the_deadline(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    amqp_daemon(name, {"AWS_LAMBDA_FUNCTION_TIMEOUT": "60"})
    pika_rpc(names.url, name, {"warm": 1})  # the cold start would count against the deadline
    # Wide margins: the timestamp has whole seconds, and a loaded machine adds delay.
    _, fresh = pika_rpc(names.url, name, {"context": 1}, timestamp=int(time.time()))
    assert json.loads(fresh)["remaining_ms"] > 50_000
    _, aged = pika_rpc(names.url, name, {"context": 1}, timestamp=int(time.time()) - 20)
    assert json.loads(aged)["remaining_ms"] < 45_000, "a queued message's wait was not counted"


async def aio_pika_calls(url: str, queue: str, events: list[Any]) -> list[tuple[str, Any, bytes]]:
    """Concurrent RPC calls over an exclusive reply queue: (correlation_id, headers, body)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        callback = await channel.declare_queue(exclusive=True, auto_delete=True)
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}

        async def on_reply(message: AbstractIncomingMessage) -> None:
            future = futures.get(message.correlation_id or "")
            assert future is not None, f"reply with unknown correlation id {message.correlation_id}"
            future.set_result(message)

        await callback.consume(on_reply, no_ack=True)
        for event in events:
            correlation_id = str(uuid.uuid4())
            futures[correlation_id] = loop.create_future()
            await channel.default_exchange.publish(
                aio_pika.Message(
                    json.dumps(event).encode(),
                    correlation_id=correlation_id,
                    reply_to=callback.name,
                    content_type="application/json",
                ),
                routing_key=queue,
            )
        replies = await asyncio.wait_for(asyncio.gather(*futures.values()), 60)
        return [(str(r.correlation_id), dict(r.headers or {}), r.body) for r in replies]


def test_aio_pika_rpc_concurrent_calls_are_correlated(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    amqp_daemon(name, {"MAX_CONCURRENCY": "2"})
    events: list[Any] = [{"n": n, "sleep": 0.2 * (3 - n)} for n in range(3)]
    events.append({"raise": "aio"})
    replies = asyncio.run(aio_pika_calls(names.url, name, events))
    for event, (_, headers, body) in zip(events[:3], replies[:3], strict=True):
        assert json.loads(body) == event
        assert header(headers, "X-Amz-Function-Error") is None
    _, headers, body = replies[3]
    assert header(headers, "X-Amz-Function-Error") == "Unhandled"
    assert json.loads(body)["errorMessage"] == "aio"


def test_large_requests_span_many_frames_beside_http_events(names: Names, amqp_daemon: Any) -> None:
    """Requests of megabytes arrive in many frames and socket reads while the broker's
    confirms of HTTP Events arrive on the same connection."""
    name = names.function()
    daemon = amqp_daemon(name, {"MAX_CONCURRENCY": "2"})
    events: list[Any] = [{"n": n, "pad": chr(97 + n) * (2 * 1024 * 1024)} for n in range(3)]
    texts = [marker() for _ in range(3)]
    with ThreadPoolExecutor(1) as pool:
        calls = pool.submit(asyncio.run, aio_pika_calls(names.url, name, events))
        for text in texts:
            response = daemon.invoke({"print": text}, headers={"X-Amz-Invocation-Type": "Event"})
            assert response.status == 202, response.body
        replies = calls.result(timeout=90)
    for event, (_, headers, body) in zip(events, replies, strict=True):
        assert json.loads(body) == event
        assert header(headers, "X-Amz-Function-Error") is None
    assert wait_for(lambda: all(text in daemon.stdout() for text in texts), 30), daemon.stdout()


def test_http_keeps_working_in_amqp_mode(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    daemon = amqp_daemon(name)
    response = daemon.invoke({"over": "http", "pid": 1})
    assert response.status == 200, response.body
    _, body = pika_rpc(names.url, name, {"pid": 1})
    assert json.loads(body)["pid"] == response.json()["pid"], "not the same daemon's runtime"
    assert daemon.invoke({"again": 1}).json() == {"again": 1}


# -- Event messages: retries and the dead-letter queue -----------------------------------------


def test_failing_event_is_retried_twice_then_dead_lettered(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    daemon = amqp_daemon(name, {"RETRY_DELAY": "0"})
    text = marker()
    event = {"print": text, "raise": "always"}
    message_id = publish_event(names.url, name, event)
    props, body = wait_for_message(names.url, f"{name}-dlq")
    assert json.loads(body) == event
    assert props.message_id == message_id
    assert props.headers["x-lambda-attempt"] == 3
    assert header(props.headers, "x-error-type") == "ValueError"
    assert "always" in header(props.headers, "x-error-body")
    # The attributes Lambda sets on dead-letter messages, too.
    assert header(props.headers, "RequestID") == message_id
    assert header(props.headers, "ErrorCode") == "200"
    assert header(props.headers, "ErrorMessage") == "always"
    assert count_lines(daemon.stdout(), text) == 3, daemon.stdout()
    assert queue_depth(names.url, name) == 0


def test_event_older_than_the_maximum_age_is_dead_lettered_unrun(
    names: Names, amqp_daemon: Any
) -> None:
    name = names.function()
    daemon = amqp_daemon(name, {"MAXIMUM_EVENT_AGE": "60"})
    stale, fresh = marker(), marker()
    stale_id = publish_event(names.url, name, {"print": stale}, timestamp=int(time.time()) - 120)
    publish_event(names.url, name, {"print": fresh}, timestamp=int(time.time()))
    props, body = wait_for_message(names.url, f"{name}-dlq")
    assert props.message_id == stale_id
    assert json.loads(body) == {"print": stale}
    assert header(props.headers, "x-condition") == "EventAgeExceeded"
    assert wait_for(lambda: fresh in daemon.stdout(), 20)
    assert stale not in daemon.stdout()


def test_timed_out_event_is_retried(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    env = {"AWS_LAMBDA_FUNCTION_TIMEOUT": "1", "MAXIMUM_RETRY_ATTEMPTS": "1", "RETRY_DELAY": "0"}
    daemon = amqp_daemon(name, env)
    text = marker()
    publish_event(names.url, name, {"print": text, "sleep": 3})
    props, _ = wait_for_message(names.url, f"{name}-dlq", timeout=40)
    assert props.headers["x-lambda-attempt"] == 2
    assert header(props.headers, "x-error-type") == "Sandbox.Timedout"
    assert count_lines(daemon.stdout(), text) == 2, daemon.stdout()


def test_no_retries_means_one_attempt(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    daemon = amqp_daemon(name, {"MAXIMUM_RETRY_ATTEMPTS": "0", "RETRY_DELAY": "0"})
    text, later = marker(), marker()
    publish_event(names.url, name, {"print": text, "raise": "once"})
    props, _ = wait_for_message(names.url, f"{name}-dlq")
    assert props.headers["x-lambda-attempt"] == 1
    # A retry (published with no delay before the dead letter) would run before this event.
    publish_event(names.url, name, {"print": later})
    assert wait_for(lambda: later in daemon.stdout(), 20), daemon.stdout()
    assert count_lines(daemon.stdout(), text) == 1, daemon.stdout()


def test_custom_dead_letter_queue(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    dlq = names.queue("e2e-custom-dlq")
    amqp_daemon(name, {"DEAD_LETTER_QUEUE": dlq, "MAXIMUM_RETRY_ATTEMPTS": "0"})
    publish_event(names.url, name, {"raise": "custom"})
    props, _ = wait_for_message(names.url, dlq)
    assert header(props.headers, "x-error-type") == "ValueError"
    assert not queue_depth(names.url, f"{name}-dlq"), "the default dead-letter queue was used"


def test_successful_event_is_acknowledged(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    daemon = amqp_daemon(name)
    text = marker()
    publish_event(names.url, name, {"print": text})
    assert wait_for(lambda: text in daemon.stdout(), 20)
    assert daemon.stop() == 0
    assert queue_depth(names.url, name) == 0, "the event was not acknowledged"
    assert not queue_depth(names.url, f"{name}-dlq")


# -- HTTP Event invocations go through the queue -----------------------------------------------


def test_http_event_runs_through_the_queue(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    daemon = amqp_daemon(name)
    text = marker()
    response = daemon.invoke({"print": text}, headers={"X-Amz-Invocation-Type": "Event"})
    assert response.status == 202, response.body
    assert wait_for(lambda: text in daemon.stdout(), 20), daemon.stdout()


def test_http_event_persists_while_the_pool_is_busy(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    first = amqp_daemon(name, {"AWS_LAMBDA_FUNCTION_TIMEOUT": "30"})
    busy_text = marker()
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(pika_rpc, names.url, name, {"print": busy_text, "sleep": 3})
        assert wait_for(lambda: busy_text in first.stdout(), 15), "the busy one never started"
        text = marker()
        response = first.invoke({"print": text}, headers={"X-Amz-Invocation-Type": "Event"})
        assert response.status == 202, response.body
        # The only prefetch slot is taken: the event waits, persisted, in the queue.
        assert queue_depth(names.url, name) == 1
        first.signal(signal.SIGTERM)
        busy.result(timeout=30)
    assert first.stop() == 0
    assert text not in first.stdout()
    assert queue_depth(names.url, name) == 1, "the queued event was lost at shutdown"
    second = amqp_daemon(name)
    assert wait_for(lambda: text in second.stdout(), 20), second.stdout()


# -- prefetch, redelivery ----------------------------------------------------------------------


def test_prefetch_is_bounded_by_max_concurrency(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    first = amqp_daemon(name, {"MAX_CONCURRENCY": "1", "AWS_LAMBDA_FUNCTION_TIMEOUT": "30"})
    texts = [marker() for _ in range(4)]
    for text in texts:
        publish_event(names.url, name, {"print": text, "sleep": 2})
    assert wait_for(lambda: texts[0] in first.stdout(), 20)
    assert queue_depth(names.url, name) == 3, "the first daemon prefetched more than one"
    second = amqp_daemon(name, {"MAX_CONCURRENCY": "1", "AWS_LAMBDA_FUNCTION_TIMEOUT": "30"})
    assert wait_for(lambda: any(t in second.stdout() for t in texts[1:]), 20), (
        "the second daemon received nothing"
    )
    both = lambda: first.stdout() + second.stdout()  # noqa: E731
    assert wait_for(lambda: all(t in both() for t in texts), 30), both()


def test_event_of_a_killed_daemon_is_completed_by_another(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    env = {"AWS_LAMBDA_FUNCTION_TIMEOUT": "30", "PRINT_REPORTS": "TRUE"}
    first = amqp_daemon(name, env, check_exit=False)
    text = marker()
    message_id = publish_event(names.url, name, {"print": text, "sleep": 3})
    assert wait_for(lambda: text in first.stdout(), 20), first.stdout()
    first.signal(signal.SIGKILL)
    first.proc.wait(10)
    kill_runtimes(first)
    first.stopped = True
    second = amqp_daemon(name, env)
    assert wait_for(lambda: f"REPORT RequestId: {message_id}" in second.stdout(), 30), (
        second.stdout()
    )
    assert text in second.stdout()
    assert second.stop() == 0
    assert queue_depth(names.url, name) == 0, "the redelivered event was not acknowledged"


# -- broker connections closed under load ------------------------------------------------------


def rpc_with_retry(url: str, queue: str, event: Any, deadline: float) -> bytes:
    """The client's side of at-least-once: resend on connection loss or timeout."""
    while True:
        try:
            _, body = pika_rpc(url, queue, event, timeout=8)
            return body
        except (TimeoutError, OSError, pika.exceptions.AMQPError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_daemon_reconnects_after_its_connection_is_closed(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    daemon = amqp_daemon(name, {"MAX_CONCURRENCY": "2", "AWS_LAMBDA_FUNCTION_TIMEOUT": "30"})
    texts = [marker() for _ in range(16)]
    for text in texts:
        publish_event(names.url, name, {"print": text, "sleep": 0.5})
    deadline = time.monotonic() + 90
    http_statuses: list[int] = []
    stop_http = threading.Event()

    def http_load() -> None:
        while not stop_http.is_set():
            http_statuses.append(daemon.invoke({"http": 1}, timeout=30).status)
            time.sleep(0.05)

    with ThreadPoolExecutor(6) as pool:
        http = pool.submit(http_load)
        calls = [
            pool.submit(rpc_with_retry, names.url, name, {"n": n, "sleep": 0.5}, deadline)
            for n in range(4)
        ]
        assert wait_for(lambda: sum(t in daemon.stdout() for t in texts) >= 2, 30), (
            "the load never got going"
        )
        pending = [t for t in texts if t not in daemon.stdout()]
        assert close_broker_connections([daemon.proc.pid]) >= 1
        assert pending, "the load was over before the connection was closed"
        for n, call in enumerate(calls):
            assert json.loads(call.result(timeout=100)) == {"n": n, "sleep": 0.5}
        stop_http.set()
        http.result(timeout=60)
    wait_consuming(daemon, times=2)
    missing = lambda: [t for t in texts if t not in daemon.stdout()]  # noqa: E731
    wait_for(lambda: not missing(), 60)
    assert not missing(), f"events never processed: {missing()}"
    assert http_statuses and set(http_statuses) == {200}, http_statuses
    assert "lost the broker connection" in daemon.stderr() or "reconnecting" in daemon.stderr()
    # Still consuming afterwards.
    assert json.loads(pika_rpc(names.url, name, {"after": 1})[1]) == {"after": 1}


# -- credentials -------------------------------------------------------------------------------


def test_credentials_stay_out_of_runtimes_and_logs(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    daemon = amqp_daemon(name, {"LOG_LEVEL": "DEBUG"})
    env = json.loads(pika_rpc(names.url, name, {"env": 1})[1])
    http_env = daemon.invoke({"env": 1}).json()
    for seen in (env, http_env):
        assert not {"AMQP_URI", "AMQP_USERNAME", "AMQP_PASSWORD"} & set(seen)
        assert "guest:guest" not in json.dumps(seen)
    assert daemon.stop() == 0
    logs = daemon.stderr() + daemon.stdout()
    assert "consuming queue" in logs
    assert "guest:guest" not in logs


def test_username_and_password_settings(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    uri = "amqp://127.0.0.1:5672/?connection_attempts=3&retry_delay=1"
    daemon = amqp_daemon(name, {"AMQP_USERNAME": "guest", "AMQP_PASSWORD": "guest"}, uri=uri)
    env = json.loads(pika_rpc(names.url, name, {"env": 1})[1])
    assert not {"AMQP_URI", "AMQP_USERNAME", "AMQP_PASSWORD"} & set(env)
    assert daemon.stop() == 0
    assert "guest:guest" not in daemon.stderr()


# -- an unreachable or misconfigured broker ----------------------------------------------------


def test_unreachable_broker_ends_the_daemon(start_daemon: Any) -> None:
    port = free_port()  # nothing listens there
    uri = f"amqp://guest:guest@127.0.0.1:{port}/?connection_attempts=2&retry_delay=2"
    daemon = start_daemon(
        env={"AWS_LAMBDA_FUNCTION_NAME": "unreachable", "AMQP_URI": uri}, wait=False
    )
    up = wait_for(lambda: daemon.proc.poll() is not None or _listening(daemon.port), 15, 0.01)
    assert up and daemon.proc.poll() is None, "the Invoke API never came up"
    response = daemon.invoke({"before": "exit"})
    assert response.status == 200 and response.json() == {"before": "exit"}, response
    status = daemon.proc.wait(20)  # two attempts 2 s apart; far sooner than that
    assert status != 0
    daemon.stop()
    errors = [line for line in daemon.stderr().splitlines() if " ERROR " in line]
    assert len(errors) == 1, daemon.stderr()
    assert f"127.0.0.1:{port}" in errors[0] and "broker" in errors[0]
    assert "Traceback" not in daemon.stderr()
    assert "guest:guest" not in daemon.stderr() + daemon.stdout()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("uri", ["http://x", "amqp://", "amqp://host:notaport/"])
def test_invalid_amqp_uri_is_a_usage_error(uri: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMQP_"))}
    env.update({"AMQP_URI": uri, "AWS_LAMBDA_FUNCTION_NAME": "bad"})
    result = subprocess.run(
        [DAEMON, "python3", "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "AMQP_URI" in lines[0], result.stderr
    assert result.stdout == ""


def test_queue_declared_beforehand_is_served(names: Names, amqp_daemon: Any) -> None:
    name = names.function()
    declare_queue(names.url, name)
    publish_event(names.url, name, {"print": (text := marker())})
    daemon = amqp_daemon(name)
    assert wait_for(lambda: text in daemon.stdout(), 20), daemon.stdout()
