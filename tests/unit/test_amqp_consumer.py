"""The daemon's AMQP consumer against a fake broker connection, and the delivery tap.

The fakes stand in for aio-pika's connection, channels and exchanges, for aiormq's channel
under them (consumers, acks) and for the socket's transport only: they record what the
consumer publishes, writes and acknowledges, in one log. A delivery reaches the consumer
as the broker sends it: as frames, through the connection's delivery tap. The function's
side is the `submit` callable the consumer is built with (its only link to the daemon's
core), here a list of answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import pamqp.frame
import pytest
from aio_pika.abc import DeliveryMode
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from lambda_rapid import amqp_connection
from lambda_rapid.amqp_connection import DeliveryTap, TappedStream
from lambda_rapid.amqp_consumer import RpcConsumer
from lambda_rapid.amqp_wire import (
    ATTEMPT,
    ERROR_CODE,
    ERROR_STATUS,
    UNDECODABLE_HEADERS,
    reply_frames,
    result_headers,
)
from lambda_rapid.config import DaemonConfig, daemon_config
from lambda_rapid.invocation import Invocation, InvocationResult

COMMAND = ["python3", "-m", "awslambdaric", "fn.handler"]
FUNCTION = "fn"
CONTENT_SIZE = 16  # the raw channel's max_content_size: longer bodies span several frames
BROKER_CONTENT_SIZE = 128 * 1024  # the body frames of a delivery


# -- the aio-pika / aiormq edge -----------------------------------------------------------


@dataclass
class Published:
    message: aio_pika.Message
    routing_key: str


class FakeExchange:
    """The default exchange; on a confirming channel, publish returns once confirmed."""

    def __init__(self, channel: FakeChannel) -> None:
        self._channel = channel

    async def publish(
        self, message: aio_pika.Message, routing_key: str, mandatory: bool = True
    ) -> None:
        channel = self._channel
        if channel.connection.broken:
            channel.log.append(("failed", routing_key))
            raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
        channel.log.append(("publish", routing_key))
        channel.published.append(Published(message, routing_key))
        if channel.confirms:
            await channel.confirm.wait()
            channel.log.append(("confirm", routing_key))


class FakeQueue:
    def __init__(self, channel: FakeChannel, name: str, arguments: Any) -> None:
        self.channel, self.name, self.arguments = channel, name, arguments

    async def bind(self, exchange: str, routing_key: str) -> None:
        self.channel.bindings.append((self.name, exchange, routing_key))

    async def cancel(self, tag: str) -> None:
        del self.channel.raw.consumers[tag]


def frames_in(data: bytes) -> list[Any]:
    """The frames of a write, as the broker decodes them."""
    frames: list[Any] = []
    while data:
        used, _, frame = pamqp.frame.unmarshal(data)
        frames.append(frame)
        data = data[used:]
    return frames


class FakeTransport:
    """The connection's socket: each write is recorded as the frames it holds."""

    def __init__(self, raw: FakeRawChannel) -> None:
        self.raw = raw
        self.writes: list[list[Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        frames = frames_in(data)
        self.writes.append(frames)
        self.raw.record(frames)

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class FakeRawChannel(aiormq.Channel):
    """aiormq's channel under the consuming channel: its consumers, acks and writes."""

    def __init__(self, channel: FakeChannel) -> None:  # no broker to open it with
        self.owner = channel
        self.number = 1
        self.max_content_size = CONTENT_SIZE
        self.consumers: dict[str, Any] = {}
        self.transport = FakeTransport(self)
        self.tags: dict[int, str] = {}  # delivery tag: message id, to read the log

    @property
    def is_closed(self) -> bool:
        return self.owner.connection.broken

    async def basic_consume(
        self, queue: str, consumer_callback: Callable[[Any], Awaitable[None]], **_: Any
    ) -> spec.Basic.ConsumeOk:
        self.consumers["ctag-1"] = consumer_callback
        return spec.Basic.ConsumeOk("ctag-1")

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        self._settle("ack", delivery_tag)

    async def basic_reject(
        self, delivery_tag: int, *, requeue: bool = True, wait: bool = True
    ) -> None:
        self._settle("reject", delivery_tag)

    def _settle(self, how: str, delivery_tag: int) -> None:
        if self.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
        self.owner.log.append((how, self.tags[delivery_tag]))

    def record(self, frames: list[Any]) -> None:
        """Log a write as the broker reads it: publishes (whole messages) and acks."""
        for frame in frames:
            if isinstance(frame, spec.Basic.Publish):
                routing_key, body = frame.routing_key, b""
            elif isinstance(frame, ContentHeader):
                properties, size = frame.properties, frame.body_size
            elif isinstance(frame, ContentBody):
                body += frame.value
            elif isinstance(frame, spec.Basic.Ack):
                self.owner.log.append(("ack", self.tags[frame.delivery_tag]))
            if isinstance(frame, ContentHeader | ContentBody) and len(body) == size:
                message = aio_pika.Message(
                    body,
                    headers=properties.headers,
                    correlation_id=properties.correlation_id,
                    content_type=properties.content_type,
                )
                self.owner.log.append(("publish", routing_key))
                self.owner.published.append(Published(message, routing_key))


class FakeChannel:
    def __init__(self, connection: FakeConnection, confirms: bool) -> None:
        self.connection, self.confirms = connection, confirms
        self.is_closed = False
        self.default_exchange = FakeExchange(self)
        self.raw = FakeRawChannel(self)
        self.published: list[Published] = []
        self.log = connection.log
        self.queues: dict[str, FakeQueue] = {}
        self.bindings: list[tuple[str, str, str]] = []
        self.prefetch = 0
        self.confirm = asyncio.Event()  # set: the broker confirms at once
        self.confirm.set()

    async def set_qos(self, prefetch_count: int) -> None:
        self.prefetch = prefetch_count

    async def declare_queue(
        self, name: str, durable: bool = False, arguments: Any = None
    ) -> FakeQueue:
        self.queues[name] = FakeQueue(self, name, arguments)
        return self.queues[name]

    async def declare_exchange(self, name: str, kind: Any, durable: bool = False) -> str:
        return name

    async def get_underlay_channel(self) -> FakeRawChannel:
        return self.raw


class FakeConnection:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.channels: list[FakeChannel] = []
        self.close_callbacks: set[Callable[..., None]] = set()
        self.is_closed = False
        self.broken = False  # every channel closed under the consumer

    async def channel(self, publisher_confirms: bool = True) -> FakeChannel:
        self.channels.append(FakeChannel(self, publisher_confirms))
        return self.channels[-1]

    def lose(self) -> None:
        self.is_closed = True
        for callback in list(self.close_callbacks):
            callback(None)


# -- the consumer under test --------------------------------------------------------------


class Function:
    """The function's side of `submit`: answers in turn, and the invocations it got.

    An answer is an InvocationResult, an exception (a failure the dispatcher's contract
    rules out), or None: the invocation runs until `finish` is called.
    """

    def __init__(self, *answers: InvocationResult | Exception | None) -> None:
        self.answers = list(answers)
        self.invocations: list[Invocation] = []
        self.futures: list[asyncio.Future[InvocationResult]] = []

    def submit(self, invocation: Invocation) -> asyncio.Future[InvocationResult]:
        self.invocations.append(invocation)
        future: asyncio.Future[InvocationResult] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        answer = self.answers.pop(0) if self.answers else InvocationResult(invocation.payload)
        if isinstance(answer, Exception):
            future.set_exception(answer)
        elif answer is not None:
            future.set_result(answer)
        return future

    def finish(self, result: InvocationResult) -> None:
        (running,) = [future for future in self.futures if not future.done()]
        running.set_result(result)


def config(**env: str) -> DaemonConfig:
    base = {"AWS_LAMBDA_FUNCTION_NAME": FUNCTION, "AMQP_URI": "amqp://127.0.0.1/"}
    return daemon_config(COMMAND, {**base, **env})


@dataclass
class Broker:
    loop: asyncio.AbstractEventLoop
    consumer: RpcConsumer
    connection: FakeConnection
    function: Function
    stream: TappedStream

    @property
    def channel(self) -> FakeChannel:
        """The channel the consumer consumes, replies and acknowledges on."""
        plain = [channel for channel in self.connection.channels if not channel.confirms]
        assert len(plain) == 1
        return plain[0]

    @property
    def confirmed(self) -> FakeChannel:
        """The channel with publisher confirms."""
        confirming = [channel for channel in self.connection.channels if channel.confirms]
        assert len(confirming) == 1
        return confirming[0]

    @property
    def log(self) -> list[tuple[str, str]]:
        return self.connection.log

    @property
    def writes(self) -> list[list[Any]]:
        return self.channel.raw.transport.writes

    def message(
        self,
        body: bytes = b"{}",
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = "m-1",
        redelivered: bool = False,
        expiration: float | None = None,
        **properties: Any,
    ) -> DeliveredMessage:
        """A delivery on the consumed channel."""
        raw = self.channel.raw
        tag = len(raw.tags) + 1
        raw.tags[tag] = message_id or ""
        header = ContentHeader(
            body_size=len(body),
            properties=spec.Basic.Properties(
                content_type=properties.pop("content_type", "application/json"),
                headers=headers,
                message_id=message_id,
                expiration=None if expiration is None else str(int(expiration * 1000)),
                delivery_mode=int(DeliveryMode.NOT_PERSISTENT),
                **properties,
            ),
        )
        deliver = spec.Basic.Deliver("ctag-1", tag, redelivered, "", FUNCTION)
        return DeliveredMessage(delivery=deliver, header=header, body=body, channel=raw)

    def deliver(self, message: DeliveredMessage) -> None:
        """Send `message` to the consumer and let it finish."""
        self.loop.run_until_complete(self.start(message))
        self.settle()

    def start(self, message: DeliveredMessage) -> asyncio.Task[None]:
        """Send `message` as the broker does; the task ends when its handling does (for a
        request on the fast path: once submitted)."""
        assert "ctag-1" in self.channel.raw.consumers, "the function's queue is not consumed"
        return self.loop.create_task(self.receive(frames_of(message)))

    async def receive(self, data: bytes) -> None:
        """`data` arrives on the socket; return once what it started has ended."""
        before = set(self.consumer._tasks)
        self.stream.data_received(data)
        for task in self.consumer._tasks - before:
            await task

    def settle(self) -> None:
        """Let whatever waits on the function's results (registered before us) run."""
        for future in self.function.futures:
            if future.done():
                self.loop.run_until_complete(after(future))

    def until(self, condition: Callable[[Broker], bool]) -> None:
        """Run the loop until `condition` holds (a bounded number of turns)."""
        for _ in range(1000):
            if condition(self):
                return
            self.loop.run_until_complete(turn())
        raise AssertionError("the condition never held")

    def published_to(self, routing_key: str) -> list[aio_pika.Message]:
        published = self.channel.published + self.confirmed.published
        return [p.message for p in published if p.routing_key == routing_key]


def frames_of(message: DeliveredMessage, channel: int = 1) -> bytes:
    """A delivery as the broker sends it: method, content header and body frames."""
    body = message.body
    parts = [
        pamqp.frame.marshal(message.delivery, channel),
        pamqp.frame.marshal(message.header, channel),
    ]
    for at in range(0, len(body), BROKER_CONTENT_SIZE):
        chunk = ContentBody(body[at : at + BROKER_CONTENT_SIZE])
        parts.append(pamqp.frame.marshal(chunk, channel))
    return b"".join(parts)


async def after(future: asyncio.Future[Any]) -> None:
    """Return once the callbacks `future` already had have run (they are called in order)."""
    marker = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda _: marker.set_result(None))
    await marker


async def turn() -> None:
    """One turn of the event loop."""
    await asyncio.sleep(0)


def serve(function: Function, **env: str) -> Iterator[Broker]:
    """A consumer serving a fake connection, in a loop of its own kept for the test."""
    loop = asyncio.new_event_loop()
    consumer = RpcConsumer(config(**env), function.submit)
    connection = FakeConnection()
    tap = DeliveryTap()
    task = loop.create_task(consumer._serve(connection, tap))  # type: ignore[arg-type]
    loop.run_until_complete(asyncio.wait_for(consumer.consuming.wait(), 5))
    plain = [channel for channel in connection.channels if not channel.confirms]
    stream = tapped_stream(loop, tap, plain[0].raw.transport)
    broker = Broker(loop, consumer, connection, function, stream)
    try:
        yield broker
    finally:
        connection.lose()
        loop.run_until_complete(task)
        loop.close()


def tapped_stream(
    loop: asyncio.AbstractEventLoop,
    tap: DeliveryTap,
    transport: Any,
    reader: asyncio.StreamReader | None = None,
) -> TappedStream:
    """The socket protocol of a connection, read through `tap`, made in `loop` (as the
    connection makes it)."""

    async def made() -> TappedStream:
        stream = TappedStream(reader or asyncio.StreamReader(), tap)
        if transport is not None:
            stream.connection_made(transport)
        return stream

    return loop.run_until_complete(made())


@pytest.fixture
def broker() -> Iterator[Broker]:
    yield from serve(Function(), RETRY_DELAY="10")


def rpc(broker: Broker, body: bytes = b'{"k": 1}', **properties: Any) -> DeliveredMessage:
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


def test_consumes_on_the_channel_without_confirms_beside_a_confirming_one(broker: Broker) -> None:
    assert not broker.channel.confirms and broker.confirmed.confirms
    assert set(broker.channel.raw.consumers) == {"ctag-1"}
    assert broker.confirmed.raw.consumers == {}


def test_stop_consuming_cancels_the_consumer(broker: Broker) -> None:
    broker.loop.run_until_complete(broker.consumer.stop_consuming())
    assert broker.channel.raw.consumers == {}


# -- RequestResponse: the fast path -------------------------------------------------------


def test_request_is_answered_to_reply_to_then_acknowledged(broker: Broker) -> None:
    broker.deliver(rpc(broker))
    (reply,) = broker.published_to("replies")
    assert reply.body == b'{"k": 1}'
    assert reply.correlation_id == "c-1"
    assert reply.content_type == "application/json"
    assert reply.headers == {"X-Amz-Executed-Version": "$LATEST"}
    assert broker.log == [("publish", "replies"), ("ack", "m-1")]
    (invocation,) = broker.function.invocations
    assert invocation.request_id == "m-1"
    assert invocation.invoked_arn.endswith(":function:fn")


def test_reply_and_its_ack_leave_in_one_write(broker: Broker) -> None:
    payload = b'{"text": "' + b"x" * (3 * CONTENT_SIZE) + b'"}'
    broker.deliver(rpc(broker, payload))
    (write,) = broker.writes
    publish, header, *bodies, ack = write
    assert isinstance(publish, spec.Basic.Publish)
    assert (publish.exchange, publish.routing_key) == ("", "replies")
    assert isinstance(header, ContentHeader) and header.body_size == len(payload)
    assert len(bodies) == 4 and all(len(body.value) <= CONTENT_SIZE for body in bodies)
    assert b"".join(body.value for body in bodies) == payload
    assert isinstance(ack, spec.Basic.Ack)
    assert (ack.delivery_tag, ack.multiple) == (1, False)
    assert broker.confirmed.published == []


def test_empty_reply_has_no_body_frame(broker: Broker) -> None:
    broker.function.answers.append(InvocationResult(b""))
    broker.deliver(rpc(broker))
    (write,) = broker.writes
    assert [type(frame) for frame in write] == [spec.Basic.Publish, ContentHeader, spec.Basic.Ack]
    assert write[1].body_size == 0
    assert broker.log == [("publish", "replies"), ("ack", "m-1")]


def test_nothing_is_written_before_the_function_answers() -> None:
    for broker in serve(Function(None)):
        broker.deliver(rpc(broker))
        assert broker.writes == [] and broker.log == []
        broker.function.finish(InvocationResult(b'"done"'))
        broker.settle()
        assert broker.published_to("replies")[0].body == b'"done"'
        assert broker.log == [("publish", "replies"), ("ack", "m-1")]


def test_requests_are_answered_in_the_order_they_finish() -> None:
    for broker in serve(Function(None, None), AWS_LAMBDA_MAX_CONCURRENCY="2"):
        broker.deliver(rpc(broker, b'"first"', message_id="m-1"))
        broker.deliver(rpc(broker, b'"second"', message_id="m-2"))
        second, first = broker.function.futures
        first.set_result(InvocationResult(b'"2"'))
        broker.settle()
        second.set_result(InvocationResult(b'"1"'))
        broker.settle()
        assert broker.log == [("publish", "replies"), ("ack", "m-2")] + [
            ("publish", "replies"),
            ("ack", "m-1"),
        ]
        assert [ack.delivery_tag for *_, ack in broker.writes] == [2, 1]


def test_a_delivery_through_the_channels_reader_is_answered_the_same(broker: Broker) -> None:
    consume = broker.channel.raw.consumers["ctag-1"]
    broker.loop.run_until_complete(consume(rpc(broker)))
    broker.settle()
    assert broker.published_to("replies")[0].body == b'{"k": 1}'
    assert broker.log == [("publish", "replies"), ("ack", "m-1")]


@pytest.mark.parametrize(
    ("error_type", "tail", "correlation_id"), [(None, None, "c-9"), ("E", b"tail", None)]
)
def test_reply_frames_are_what_pamqp_marshals(
    error_type: str | None, tail: bytes | None, correlation_id: str | None
) -> None:
    body = b'{"k": "' + b"v" * 40 + b'"}'  # 49 bytes: four body frames
    result = InvocationResult(body, error_type, tail)
    headers = result_headers(result)
    properties = spec.Basic.Properties(
        content_type="application/json", correlation_id=correlation_id, headers=headers
    )
    bodies = [ContentBody(body[at : at + CONTENT_SIZE]) for at in range(0, 49, CONTENT_SIZE)]
    expected = ChannelFrame.marshall(
        3,
        [
            spec.Basic.Publish(exchange="", routing_key="amq.rabbitmq.reply-to.x"),
            ContentHeader(body_size=len(body), properties=properties),
            *bodies,
            spec.Basic.Ack(delivery_tag=7),
        ],
    ).payload
    for _ in range(2):  # encoded, then from what was kept of the first
        written = reply_frames(
            3, CONTENT_SIZE, "amq.rabbitmq.reply-to.x", correlation_id, headers, body, 7
        )
        assert written == expected


def test_reply_without_correlation_id_has_none(broker: Broker) -> None:
    broker.deliver(broker.message(reply_to="replies"))
    (write,) = broker.writes
    assert write[1].properties.correlation_id is None
    assert broker.log == [("publish", "replies"), ("ack", "m-1")]


def test_a_closing_connection_leaves_the_request_to_the_broker() -> None:
    for broker in serve(Function(None)):
        broker.deliver(rpc(broker))
        broker.channel.raw.transport.closing = True
        broker.function.finish(InvocationResult(b"{}"))
        broker.settle()
        assert broker.writes == [] and broker.log == []


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
        assert len(broker.writes) == 1


def test_a_closed_channel_leaves_the_request_to_the_broker() -> None:
    for broker in serve(Function(None)):
        broker.deliver(rpc(broker))
        broker.connection.broken = True
        broker.function.finish(InvocationResult(b"{}"))
        broker.settle()
        # Neither answered nor acknowledged: the broker redelivers it on the next connection.
        assert broker.writes == [] and broker.log == []


def test_unexpected_failure_dead_letters_the_message_and_goes_on() -> None:
    for broker in serve(Function(RuntimeError("boom"))):
        broker.deliver(rpc(broker))
        broker.until(lambda b: ("ack", "m-1") in b.log)
        (dead,) = broker.confirmed.published
        assert dead.routing_key == f"{FUNCTION}-dlq"
        assert dead.message.headers is not None
        assert dead.message.headers["x-condition"] == "MalformedMessage"
        assert "boom" in str(dead.message.headers["x-error-body"])
        assert broker.log == [("publish", "fn-dlq"), ("confirm", "fn-dlq"), ("ack", "m-1")]
        broker.deliver(rpc(broker, message_id="m-2"))
        assert len(broker.published_to("replies")) == 1
        assert broker.log[-1] == ("ack", "m-2")


# -- RequestResponse: the general path ----------------------------------------------------


def test_bad_request_header_is_answered_with_the_invoke_error_unrun(broker: Broker) -> None:
    broker.deliver(rpc(broker, headers={"X-Amz-Client-Context": 5}))
    (reply,) = broker.published_to("replies")
    error = error_of(reply)
    assert (error["code"], error["status"]) == ("InvalidParameterValueException", 400)
    assert "X-Amz-Client-Context" in error["message"]
    assert broker.function.invocations == []
    assert broker.writes == [], "refused on the general path"
    assert broker.log == [("publish", "replies"), ("ack", "m-1")]


def test_oversized_request_is_refused_unrun(broker: Broker) -> None:
    broker.deliver(rpc(broker, b"x" * (6 * 1024 * 1024 + 1)))
    assert error_of(broker.published_to("replies")[0])["status"] == 413
    assert broker.function.invocations == []
    assert broker.writes == []


def test_request_with_undecodable_headers_is_dead_lettered_unrun(broker: Broker) -> None:
    broker.deliver(rpc(broker, headers={UNDECODABLE_HEADERS: True}))
    assert broker.function.invocations == []
    (dead,) = broker.confirmed.published
    assert dead.routing_key == f"{FUNCTION}-dlq"
    assert dead.message.headers is not None
    assert dead.message.headers["x-condition"] == "MalformedMessage"
    assert broker.log == [("publish", "fn-dlq"), ("confirm", "fn-dlq"), ("ack", "m-1")]


def test_redelivered_request_runs_again_as_a_counted_copy(broker: Broker) -> None:
    queued = datetime(2030, 1, 1, tzinfo=UTC)
    broker.deliver(rpc(broker, redelivered=True, timestamp=queued, expiration=30.0))
    assert broker.function.invocations == [], "the copy runs, not the redelivered message"
    (copy,) = broker.published_to(FUNCTION)
    assert copy.headers == {ATTEMPT: 1}
    assert (copy.reply_to, copy.correlation_id, copy.message_id) == ("replies", "c-1", "m-1")
    assert copy.expiration == 30.0
    assert copy.timestamp == queued
    assert broker.confirmed.published[0].message is copy, "the copy must survive the broker"
    assert broker.log == [("publish", FUNCTION), ("confirm", FUNCTION), ("ack", "m-1")]


def test_counted_copy_is_run_on_the_general_path() -> None:
    for broker in serve(Function(None), MAXIMUM_RETRY_ATTEMPTS="2"):
        handled = broker.start(rpc(broker, headers={ATTEMPT: 1}))
        broker.until(lambda b: len(b.function.invocations) == 1)
        assert broker.writes == [] and broker.log == []
        broker.function.finish(InvocationResult(b'"again"'))
        broker.loop.run_until_complete(handled)
        assert broker.published_to("replies")[0].body == b'"again"'
        assert broker.log == [("publish", "replies"), ("ack", "m-1")]
        assert broker.writes == []


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
        assert broker.log[-1] == ("ack", "m-1")


def test_a_closed_channel_leaves_the_message_to_the_broker(broker: Broker) -> None:
    broker.connection.broken = True
    broker.deliver(rpc(broker, headers={"X-Amz-Client-Context": 5}))
    # Neither dead-lettered nor rejected: the broker redelivers it on the next connection.
    assert broker.log == [("failed", "replies")]


# -- Events -------------------------------------------------------------------------------


def test_event_that_succeeds_is_acknowledged_and_nothing_else(broker: Broker) -> None:
    broker.deliver(broker.message(b'{"e": 1}'))
    assert broker.channel.published == [] and broker.confirmed.published == []
    assert broker.log == [("ack", "m-1")]
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
        assert broker.channel.published == [], "all on the confirming channel"
        assert [p.routing_key for p in broker.confirmed.published] == [
            "fn-retry-1",
            "fn-retry-2",
            "fn-dlq",
        ]


@pytest.mark.parametrize(("attempt", "queue"), [(0, "fn-retry-1"), (2, "fn-dlq")])
def test_failed_event_is_acknowledged_only_once_its_copy_is_confirmed(
    attempt: int, queue: str
) -> None:
    failure = InvocationResult(b'{"errorMessage": "bad", "errorType": "E"}', "E")
    for broker in serve(Function(failure), RETRY_DELAY="10"):
        broker.confirmed.confirm.clear()
        headers = {ATTEMPT: attempt} if attempt else None
        handled = broker.start(broker.message(b"{}", headers=headers))
        broker.until(lambda b: ("publish", queue) in b.log)
        broker.loop.run_until_complete(turn())
        assert broker.log == [("publish", queue)], "acknowledged before the broker confirmed"
        broker.confirmed.confirm.set()
        broker.loop.run_until_complete(handled)
        assert broker.log == [("publish", queue), ("confirm", queue), ("ack", "m-1")]


def test_http_event_is_queued_on_the_confirming_channel(broker: Broker) -> None:
    invocation = Invocation("r-1", b'{"e": 2}', 3.0, broker.consumer._config.function_arn)
    broker.loop.run_until_complete(broker.consumer.publish_event(invocation))
    (queued,) = broker.confirmed.published
    assert (queued.routing_key, queued.message.body) == (FUNCTION, b'{"e": 2}')
    assert queued.message.delivery_mode == DeliveryMode.PERSISTENT
    assert broker.log == [("publish", FUNCTION), ("confirm", FUNCTION)]


def test_redelivered_event_is_counted_on_a_copy(broker: Broker) -> None:
    broker.deliver(broker.message(b"{}", redelivered=True, headers={"mine": "kept"}))
    (copy,) = broker.published_to(FUNCTION)
    assert copy.headers == {"mine": "kept", ATTEMPT: 1}
    assert broker.function.invocations == []
    assert broker.log == [("publish", FUNCTION), ("confirm", FUNCTION), ("ack", "m-1")]


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
    assert broker.log[-1] == ("ack", "m-1")


# -- the delivery tap ---------------------------------------------------------------------


class TapRun:
    """A tap on channel 1 of a connection: what it delivers, and what reaches aiormq."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[..., None]) -> None:
        self.loop = loop
        self.tap = DeliveryTap()
        self.delivered: list[DeliveredMessage] = []
        self.reader = asyncio.StreamReader(loop=loop)
        self.stream = tapped_stream(loop, self.tap, None, self.reader)
        channel = FakeChannel(FakeConnection(), confirms=False).raw
        self.tap.take(channel, deliver)

    def receive(self, *reads: bytes) -> None:
        for data in reads:
            self.stream.data_received(data)

    def passed_on(self) -> bytes:
        """Everything aiormq's reader got."""
        self.reader.feed_eof()
        return self.loop.run_until_complete(self.reader.read())


@pytest.fixture
def tapped() -> Iterator[TapRun]:
    loop = asyncio.new_event_loop()
    delivered: list[DeliveredMessage] = []
    run = TapRun(loop, delivered.append)
    run.delivered = delivered
    yield run
    loop.close()


def delivery(tag: int, body: bytes, channel: int = 1) -> bytes:
    header = ContentHeader(
        body_size=len(body), properties=spec.Basic.Properties(correlation_id=f"c-{tag}")
    )
    deliver = spec.Basic.Deliver("ctag-1", tag, False, "", FUNCTION)
    message = DeliveredMessage(delivery=deliver, header=header, body=body, channel=None)  # type: ignore[arg-type]
    return frames_of(message, channel)


def test_tap_keeps_the_channels_deliveries_and_passes_on_everything_else(
    tapped: TapRun,
) -> None:
    others = [
        pamqp.frame.marshal(spec.Basic.QosOk(), 1),
        pamqp.frame.marshal(spec.Basic.Ack(delivery_tag=3), 2),
        pamqp.frame.marshal(Heartbeat(), 0),
    ]
    tapped.receive(
        others[0] + delivery(1, b'"one"') + others[1] + delivery(2, b'"two"', channel=2),
        others[2],
    )
    assert [(d.delivery_tag, d.body) for d in tapped.delivered] == [(1, b'"one"')]
    assert tapped.delivered[0].header.properties.correlation_id == "c-1"
    assert tapped.passed_on() == others[0] + others[1] + delivery(2, b'"two"', 2) + others[2]


def test_tap_assembles_a_delivery_from_any_reads_around_other_channels(tapped: TapRun) -> None:
    body = bytes(range(256)) * 1200  # three body frames
    deliver = spec.Basic.Deliver("ctag-1", 1, False, "", FUNCTION)
    header = ContentHeader(body_size=len(body), properties=spec.Basic.Properties())
    other = pamqp.frame.marshal(spec.Basic.Ack(delivery_tag=9), 2)
    stream = pamqp.frame.marshal(deliver, 1) + other + pamqp.frame.marshal(header, 1) + other
    for at in range(0, len(body), BROKER_CONTENT_SIZE):
        chunk = ContentBody(body[at : at + BROKER_CONTENT_SIZE])
        stream += pamqp.frame.marshal(chunk, 1) + other
    tapped.receive(*(stream[at : at + 1000] for at in range(0, len(stream), 1000)))
    (message,) = tapped.delivered
    assert message.body == body
    assert tapped.passed_on() == other * 5


def test_tap_takes_a_delivery_read_byte_by_byte(tapped: TapRun) -> None:
    frames = delivery(1, b"") + delivery(2, b'{"k": 1}')
    tapped.receive(*(frames[at : at + 1] for at in range(len(frames))))
    assert [(d.delivery_tag, d.body) for d in tapped.delivered] == [(1, b""), (2, b'{"k": 1}')]
    assert all(isinstance(frame, Heartbeat) for frame in frames_in(tapped.passed_on()))


def test_tap_passes_a_heartbeat_on_while_it_keeps_every_frame(
    tapped: TapRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amqp_connection, "HEARTBEAT_EVERY", -1.0)
    ack = pamqp.frame.marshal(spec.Basic.Ack(delivery_tag=3), 2)
    tapped.receive(delivery(1, b"{}"), ack + delivery(2, b"{}"), delivery(3, b"{}"))
    heartbeat = pamqp.frame.marshal(Heartbeat(), 0)
    assert tapped.passed_on() == heartbeat + ack + heartbeat + heartbeat


def test_tap_fails_the_stream_on_an_undecodable_delivery(tapped: TapRun) -> None:
    frames = bytearray(delivery(1, b"{}"))
    frames[
        len(pamqp.frame.marshal(spec.Basic.Deliver("ctag-1", 1, False, "", FUNCTION), 1)) - 1
    ] = 0
    tapped.receive(bytes(frames), delivery(2, b"{}"))
    assert tapped.delivered == []
    with pytest.raises(aiormq.exceptions.InvalidFrameError):
        tapped.passed_on()


def test_tap_goes_on_after_a_failing_callback(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    taken: list[int] = []

    def deliver(message: DeliveredMessage) -> None:
        taken.append(message.delivery_tag or 0)
        raise RuntimeError("bug")

    run = TapRun(loop, deliver)
    run.receive(delivery(1, b"{}") + delivery(2, b"{}"))
    assert taken == [1, 2]
    assert "delivery callback failed" in caplog.text
    loop.close()


def test_tap_passes_a_protocol_refusal_on(tapped: TapRun) -> None:
    tapped.receive(b"AMQP\x00\x00\x09\x01")
    assert tapped.passed_on() == b"AMQP\x00\x00\x09\x01"
