"""The daemon's AMQP consumer against a fake broker connection.

The fakes stand in for aio-pika's connection, channel, queue and incoming message only:
they record what the consumer publishes and acknowledges. The function's side is the
`submit` callable the consumer is built with (its only link to the daemon's core), here a
list of answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import pytest
from aio_pika.abc import DeliveryMode

from lambda_rapid.amqp_consumer import RpcConsumer
from lambda_rapid.amqp_wire import ATTEMPT, ERROR_CODE, ERROR_STATUS, UNDECODABLE_HEADERS
from lambda_rapid.config import DaemonConfig, daemon_config
from lambda_rapid.invocation import Invocation, InvocationResult

COMMAND = ["python3", "-m", "awslambdaric", "fn.handler"]
FUNCTION = "fn"


# -- the aio-pika edge --------------------------------------------------------------------


@dataclass
class Published:
    message: aio_pika.Message
    routing_key: str


class FakeExchange:
    def __init__(self, channel: FakeChannel) -> None:
        self._channel = channel

    async def publish(
        self, message: aio_pika.Message, routing_key: str, mandatory: bool = True
    ) -> None:
        if self._channel.broken:
            self._channel.log.append(("failed", routing_key))
            raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
        self._channel.log.append(("publish", routing_key))
        self._channel.published.append(Published(message, routing_key))


class FakeQueue:
    def __init__(self, channel: FakeChannel, name: str, arguments: Any) -> None:
        self.channel, self.name, self.arguments = channel, name, arguments
        self.callback: Callable[[Any], Awaitable[None]] | None = None

    async def bind(self, exchange: str, routing_key: str) -> None:
        self.channel.bindings.append((self.name, exchange, routing_key))

    async def consume(self, callback: Callable[[Any], Awaitable[None]]) -> str:
        self.callback = callback
        return "ctag-1"

    async def cancel(self, tag: str) -> None:
        self.callback = None


class FakeChannel:
    def __init__(self) -> None:
        self.is_closed = False
        self.broken = False
        self.default_exchange = FakeExchange(self)
        self.published: list[Published] = []
        self.log: list[tuple[str, str]] = []
        self.queues: dict[str, FakeQueue] = {}
        self.bindings: list[tuple[str, str, str]] = []
        self.prefetch = 0

    async def set_qos(self, prefetch_count: int) -> None:
        self.prefetch = prefetch_count

    async def declare_queue(
        self, name: str, durable: bool = False, arguments: Any = None
    ) -> FakeQueue:
        self.queues[name] = FakeQueue(self, name, arguments)
        return self.queues[name]

    async def declare_exchange(self, name: str, kind: Any, durable: bool = False) -> str:
        return name


class FakeConnection:
    def __init__(self) -> None:
        self.channel_ = FakeChannel()
        self.close_callbacks: set[Callable[..., None]] = set()
        self.is_closed = False

    async def channel(self, publisher_confirms: bool = True) -> FakeChannel:
        return self.channel_

    def lose(self) -> None:
        self.is_closed = True
        for callback in list(self.close_callbacks):
            callback(None)


@dataclass
class FakeMessage:
    """What aio-pika hands a consumer: properties, and ack/reject that the fake records."""

    body: bytes
    channel: FakeChannel
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = "m-1"
    correlation_id: str | None = None
    reply_to: str | None = None
    redelivered: bool = False
    timestamp: datetime | None = None
    content_type: str | None = "application/json"
    delivery_mode: DeliveryMode = DeliveryMode.NOT_PERSISTENT
    expiration: float | None = None

    async def ack(self) -> None:
        self._settle("ack")

    async def reject(self, requeue: bool = False) -> None:
        self._settle("reject")

    def _settle(self, how: str) -> None:
        if self.channel.broken:
            raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
        self.channel.log.append((how, self.message_id or ""))


# -- the consumer under test --------------------------------------------------------------


class Function:
    """The function's side of `submit`: answers in turn, and the invocations it got."""

    def __init__(self, *answers: InvocationResult | Exception) -> None:
        self.answers = list(answers)
        self.invocations: list[Invocation] = []

    async def submit(self, invocation: Invocation) -> InvocationResult:
        self.invocations.append(invocation)
        answer = self.answers.pop(0) if self.answers else InvocationResult(invocation.payload)
        if isinstance(answer, Exception):
            raise answer
        return answer


def config(**env: str) -> DaemonConfig:
    base = {"AWS_LAMBDA_FUNCTION_NAME": FUNCTION, "AMQP_URI": "amqp://127.0.0.1/"}
    return daemon_config(COMMAND, {**base, **env})


@dataclass
class Broker:
    loop: asyncio.AbstractEventLoop
    consumer: RpcConsumer
    connection: FakeConnection
    function: Function

    @property
    def channel(self) -> FakeChannel:
        return self.connection.channel_

    def message(self, body: bytes = b"{}", **properties: Any) -> FakeMessage:
        return FakeMessage(body, self.channel, **properties)

    def deliver(self, message: FakeMessage) -> None:
        """Hand `message` to the consumer's callback, as aio-pika does, and let it finish."""
        queue = self.channel.queues[FUNCTION]
        assert queue.callback is not None, "the function's queue is not consumed"
        self.loop.run_until_complete(queue.callback(message))

    def published_to(self, routing_key: str) -> list[aio_pika.Message]:
        return [p.message for p in self.channel.published if p.routing_key == routing_key]


def serve(function: Function, **env: str) -> Iterator[Broker]:
    """A consumer serving a fake connection, in a loop of its own kept for the test."""
    loop = asyncio.new_event_loop()
    consumer = RpcConsumer(config(**env), function.submit)
    connection = FakeConnection()
    task = loop.create_task(consumer._serve(connection))  # type: ignore[arg-type]
    loop.run_until_complete(asyncio.wait_for(consumer.consuming.wait(), 5))
    broker = Broker(loop, consumer, connection, function)
    try:
        yield broker
    finally:
        connection.lose()
        loop.run_until_complete(task)
        loop.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    yield from serve(Function(), RETRY_DELAY="10")


def rpc(broker: Broker, body: bytes = b'{"k": 1}', **properties: Any) -> FakeMessage:
    return broker.message(body, reply_to="replies", correlation_id="c-1", **properties)


def error_of(message: aio_pika.Message) -> dict[str, Any]:
    assert message.headers is not None
    body: dict[str, Any] = json.loads(message.body)
    return {"code": message.headers[ERROR_CODE], "status": message.headers[ERROR_STATUS], **body}


# -- set-up -------------------------------------------------------------------------------


def test_declares_the_queue_bound_to_its_exchange_and_the_delay_queues(broker: Broker) -> None:
    channel = broker.channel
    assert channel.bindings == [(FUNCTION, f"lambda-function.{FUNCTION}", FUNCTION)]
    assert set(channel.queues) == {FUNCTION, f"{FUNCTION}-dlq", f"{FUNCTION}-retry-1", "fn-retry-2"}
    back = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": FUNCTION}
    assert channel.queues[f"{FUNCTION}-retry-1"].arguments == back
    assert channel.prefetch == 1


# -- RequestResponse ----------------------------------------------------------------------


def test_request_is_answered_to_reply_to_then_acknowledged(broker: Broker) -> None:
    broker.deliver(rpc(broker))
    (reply,) = broker.published_to("replies")
    assert reply.body == b'{"k": 1}'
    assert reply.correlation_id == "c-1"
    assert reply.headers == {"X-Amz-Executed-Version": "$LATEST"}
    assert broker.channel.log == [("publish", "replies"), ("ack", "m-1")]
    (invocation,) = broker.function.invocations
    assert invocation.request_id == "m-1"
    assert invocation.invoked_arn.endswith(":function:fn")


def test_function_error_and_log_tail_become_reply_headers() -> None:
    result = InvocationResult(b'{"errorType": "ValueError"}', "ValueError", b"log line\n")
    for broker in serve(Function(result)):
        broker.deliver(rpc(broker, headers={"X-Amz-Log-Type": "Tail"}))
        (reply,) = broker.published_to("replies")
        assert reply.headers == {
            "X-Amz-Executed-Version": "$LATEST",
            "X-Amz-Function-Error": "Unhandled",
            "X-Amz-Function-Error-Type": "ValueError",
            "X-Amz-Log-Result": "bG9nIGxpbmUK",
        }
        assert broker.function.invocations[0].want_log_tail


def test_bad_request_header_is_answered_with_the_invoke_error_unrun(broker: Broker) -> None:
    broker.deliver(rpc(broker, headers={"X-Amz-Client-Context": 5}))
    (reply,) = broker.published_to("replies")
    error = error_of(reply)
    assert (error["code"], error["status"]) == ("InvalidParameterValueException", 400)
    assert "X-Amz-Client-Context" in error["message"]
    assert broker.function.invocations == []
    assert broker.channel.log[-1] == ("ack", "m-1")


def test_oversized_request_is_refused_unrun(broker: Broker) -> None:
    broker.deliver(rpc(broker, b"x" * (6 * 1024 * 1024 + 1)))
    assert error_of(broker.published_to("replies")[0])["status"] == 413
    assert broker.function.invocations == []


def test_redelivered_request_runs_again_as_a_counted_copy(broker: Broker) -> None:
    queued = datetime(2030, 1, 1, tzinfo=UTC)
    broker.deliver(rpc(broker, redelivered=True, timestamp=queued, expiration=30.0))
    assert broker.function.invocations == [], "the copy runs, not the redelivered message"
    (copy,) = broker.published_to(FUNCTION)
    assert copy.headers == {ATTEMPT: 1}
    assert (copy.reply_to, copy.correlation_id, copy.message_id) == ("replies", "c-1", "m-1")
    assert copy.expiration == 30.0
    assert copy.timestamp == queued
    assert broker.channel.log == [("publish", FUNCTION), ("ack", "m-1")]


@pytest.mark.parametrize(("retries", "attempt"), [("0", 0), ("2", 2), ("1", 1)])
def test_request_interrupted_too_often_is_answered_with_service_exception(
    retries: str, attempt: int
) -> None:
    for broker in serve(Function(), MAXIMUM_RETRY_ATTEMPTS=retries):
        headers = {ATTEMPT: attempt} if attempt else {}
        broker.deliver(rpc(broker, redelivered=True, headers=headers))
        assert broker.function.invocations == []
        assert broker.published_to(FUNCTION) == []
        error = error_of(broker.published_to("replies")[0])
        assert (error["code"], error["status"]) == ("ServiceException", 500)
        assert f"interrupted {attempt + 1} time(s)" in error["Message"]
        assert broker.channel.log[-1] == ("ack", "m-1")


def test_a_closed_channel_leaves_the_message_to_the_broker(broker: Broker) -> None:
    broker.channel.broken = True
    broker.deliver(rpc(broker))
    # Neither dead-lettered nor rejected: the broker redelivers it on the next connection.
    assert broker.channel.log == [("failed", "replies")]


def test_unexpected_failure_dead_letters_the_message_and_goes_on() -> None:
    for broker in serve(Function(RuntimeError("boom"))):
        broker.deliver(rpc(broker))
        (dead,) = broker.published_to(f"{FUNCTION}-dlq")
        assert dead.headers is not None and dead.headers["x-condition"] == "MalformedMessage"
        assert "boom" in str(dead.headers["x-error-body"])
        broker.deliver(rpc(broker, message_id="m-2"))
        assert len(broker.published_to("replies")) == 1
        assert broker.channel.log[-1] == ("ack", "m-2")


# -- Events -------------------------------------------------------------------------------


def test_event_that_succeeds_is_acknowledged_and_nothing_else(broker: Broker) -> None:
    broker.deliver(broker.message(b'{"e": 1}'))
    assert broker.channel.published == []
    assert broker.channel.log == [("ack", "m-1")]
    assert broker.function.invocations[0].payload == b'{"e": 1}'


def test_failed_event_waits_in_the_delay_queues_then_is_dead_lettered() -> None:
    failure = InvocationResult(b'{"errorMessage": "bad", "errorType": "E"}', "E")
    for broker in serve(Function(failure, failure, failure), RETRY_DELAY="10"):
        broker.deliver(broker.message(b"{}"))
        (retry,) = broker.published_to(f"{FUNCTION}-retry-1")
        assert (retry.headers, retry.expiration) == ({ATTEMPT: 1}, 10)
        assert retry.delivery_mode == DeliveryMode.PERSISTENT
        broker.deliver(broker.message(b"{}", headers={ATTEMPT: 1}))
        (second,) = broker.published_to(f"{FUNCTION}-retry-2")
        assert (second.headers, second.expiration) == ({ATTEMPT: 2}, 20)
        broker.deliver(broker.message(b"{}", headers={ATTEMPT: 2}))
        (dead,) = broker.published_to(f"{FUNCTION}-dlq")
        assert dead.headers is not None
        assert dead.headers[ATTEMPT] == 3
        assert dead.headers["x-condition"] == "RetriesExhausted"
        assert dead.headers["ErrorMessage"] == "bad"
        assert len(broker.function.invocations) == 3


def test_redelivered_event_is_counted_on_a_copy(broker: Broker) -> None:
    broker.deliver(broker.message(b"{}", redelivered=True, headers={"mine": "kept"}))
    (copy,) = broker.published_to(FUNCTION)
    assert copy.headers == {"mine": "kept", ATTEMPT: 1}
    assert broker.function.invocations == []


def test_event_older_than_the_maximum_age_is_dead_lettered_unrun(broker: Broker) -> None:
    broker.deliver(broker.message(b"{}", timestamp=datetime(2000, 1, 1, tzinfo=UTC)))
    (dead,) = broker.published_to(f"{FUNCTION}-dlq")
    assert dead.headers is not None and dead.headers["x-condition"] == "EventAgeExceeded"
    assert broker.function.invocations == []


def test_undecodable_headers_are_dead_lettered_as_they_came(broker: Broker) -> None:
    broker.deliver(broker.message(b"{}", headers={UNDECODABLE_HEADERS: True}))
    (dead,) = broker.published_to(f"{FUNCTION}-dlq")
    assert dead.headers is not None and dead.headers["x-condition"] == "MalformedMessage"
    assert broker.function.invocations == []
    assert broker.channel.log[-1] == ("ack", "m-1")
