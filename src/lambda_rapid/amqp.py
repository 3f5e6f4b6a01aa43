"""The AMQP transport (RabbitMQ, AMQP-RPC) on aio-pika.

``RpcConsumer`` (daemon side) consumes the queue named after the function and runs each
message as an invocation: the reply goes to ``reply_to`` with the same
``correlation_id``; a message without ``reply_to`` is an Event, retried and finally
dead-lettered. A message is acknowledged only after its reply (or retry, or dead letter)
is published, so the broker redelivers anything a dead daemon held.

``RpcClient`` (Lambda Server side) publishes invocations with mandatory routing and
waits for the correlated reply on RabbitMQ's direct reply-to pseudo-queue.

Both reconnect as the URI's ``connection_attempts``/``retry_delay`` say and raise
``BrokerUnavailable`` once the attempts are exhausted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, DeliveryMode
from aiormq.abc import DeliveredMessage

from lambda_rapid.config import AmqpConfig, DaemonConfig
from lambda_rapid.errors import (
    MAX_EVENT_PAYLOAD,
    MAX_REQUEST_PAYLOAD,
    InvokeError,
    ResourceNotFound,
    ServiceUnavailable,
    function_error_body,
)
from lambda_rapid.invocation import (
    Invocation,
    InvocationResult,
    check_payload,
    decode_client_context,
    new_trace_id,
)

logger = logging.getLogger(__name__)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
FUNCTION_ERROR = "X-Amz-Function-Error"
ERROR_TYPE = "X-Amz-Function-Error-Type"
EXECUTED_VERSION = "X-Amz-Executed-Version"
LOG_RESULT = "X-Amz-Log-Result"
ERROR_CODE = "x-amzn-ErrorType"
ERROR_STATUS = "x-amzn-Status"
ATTEMPT = "x-lambda-attempt"  # how many times an Event has already run
CONNECTION_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, TimeoutError)

Submit = Callable[[Invocation], Awaitable[InvocationResult]]


class BrokerUnavailable(Exception):
    """The broker could not be reached within the configured attempts."""


async def connect(amqp: AmqpConfig) -> aio_pika.abc.AbstractConnection:
    """Connect, retrying as the URI's connection_attempts and retry_delay say."""
    for attempt in range(1, amqp.connection_attempts + 1):
        try:
            return await aio_pika.connect(amqp.url, timeout=10)
        except CONNECTION_ERRORS as error:
            if attempt == amqp.connection_attempts:
                raise BrokerUnavailable(
                    f"cannot reach the broker at {amqp.display} after {attempt} attempt(s): "
                    f"{error or type(error).__name__}"
                ) from None
            logger.warning(
                "cannot reach the broker at %s (attempt %d of %d): %s; retrying in %g s",
                amqp.display,
                attempt,
                amqp.connection_attempts,
                error or type(error).__name__,
                amqp.retry_delay,
            )
            await asyncio.sleep(amqp.retry_delay)
    raise AssertionError("unreachable")


def closed_future(connection: aio_pika.abc.AbstractConnection) -> asyncio.Future[None]:
    """A future resolved when the connection closes, for whatever reason."""
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_close(*_: Any) -> None:
        if not closed.done():
            closed.set_result(None)

    connection.close_callbacks.add(on_close)
    return closed


def header_text(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if isinstance(value, bytes):
        return value.decode()
    return None if value is None else str(value)


def persistent_message(
    body: bytes,
    message_id: str | None,
    headers: dict[str, Any],
    timestamp: datetime | float | None = None,
) -> aio_pika.Message:
    """A message that survives a broker restart (Events, retries, dead letters).

    `timestamp` is when the event was first queued; its age is counted from it.
    """
    return aio_pika.Message(
        body,
        message_id=message_id,
        headers=headers,
        delivery_mode=DeliveryMode.PERSISTENT,
        content_type="application/json",
        timestamp=time.time() if timestamp is None else timestamp,
    )


def result_headers(result: InvocationResult) -> dict[str, Any]:
    headers: dict[str, Any] = {EXECUTED_VERSION: result.executed_version}
    if result.error_type is not None:
        headers[FUNCTION_ERROR] = "Unhandled"
        headers[ERROR_TYPE] = result.error_type
    if result.log_tail is not None:
        headers[LOG_RESULT] = base64.b64encode(result.log_tail).decode()
    return headers


class RpcConsumer:
    """Serves the function's queue from the daemon's pool."""

    def __init__(self, config: DaemonConfig, submit: Submit) -> None:
        assert config.amqp is not None
        self._config = config
        self._amqp = config.amqp
        self._submit = submit
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None

    async def run(self) -> None:
        """Consume until cancelled; reconnect on loss; raise BrokerUnavailable at the end."""
        while True:
            connection = await connect(self._amqp)
            try:
                await self._serve(connection)
                logger.warning("lost the broker connection; reconnecting")
            except CONNECTION_ERRORS as error:
                logger.warning("broker connection failed (%s); reconnecting", error)
            finally:
                self._channel = None
                if not connection.is_closed:
                    await connection.close()

    async def _serve(self, connection: aio_pika.abc.AbstractConnection) -> None:
        closed = closed_future(connection)
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=self._config.max_concurrency)
        queue = await channel.declare_queue(self._config.function_name, durable=True)
        await channel.declare_queue(self._config.dead_letter_queue, durable=True)
        self._channel = channel
        self._queue = queue
        self._consumer_tag = await queue.consume(self.on_message)
        logger.info("consuming queue %s at %s", self._config.function_name, self._amqp.display)
        await closed

    async def stop_consuming(self) -> None:
        """Take no more messages (shutdown); those in flight may still be answered."""
        queue, tag = self._queue, self._consumer_tag
        self._queue = self._consumer_tag = None
        if queue is not None and tag is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await queue.cancel(tag)

    async def publish_event(self, invocation: Invocation) -> None:
        """Make an HTTP Event invocation durable: persist it on the function's queue."""
        channel = self._channel
        if channel is None or channel.is_closed:
            raise ServiceUnavailable("The broker is unavailable; the event was not queued")
        headers: dict[str, Any] = {}
        if invocation.trace_id:
            headers["X-Amzn-Trace-Id"] = invocation.trace_id
        message = persistent_message(invocation.payload, invocation.request_id, headers)
        try:
            await channel.default_exchange.publish(message, self._config.function_name)
        except CONNECTION_ERRORS:
            raise ServiceUnavailable(
                "The broker is unavailable; the event was not queued"
            ) from None

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            if message.reply_to:
                await self._answer(message)
            else:
                await self._run_event(message)
            await message.ack()
        except CONNECTION_ERRORS as error:
            # Not acknowledged: the broker redelivers it once the connection is back.
            logger.warning("could not finish message %s: %s", message.message_id, error)

    def _invocation(self, message: AbstractIncomingMessage, event: bool) -> Invocation:
        headers = message.headers or {}
        check_payload(message.body, MAX_EVENT_PAYLOAD if event else MAX_REQUEST_PAYLOAD)
        client_context = decode_client_context(header_text(headers, "X-Amz-Client-Context"))
        invocation = Invocation(
            request_id=message.message_id or str(uuid.uuid4()),
            payload=message.body,
            timeout=self._config.timeout,
            invoked_arn=header_text(headers, "X-Amz-Invoked-Function-Arn")
            or self._config.function_arn,
            trace_id=header_text(headers, "X-Amzn-Trace-Id") or new_trace_id(),
            client_context=client_context,
            want_log_tail=header_text(headers, "X-Amz-Log-Type") == "Tail" and not event,
        )
        if not event and message.timestamp is not None:
            invocation.started_at = deadline_start(message.timestamp)
        return invocation

    async def _answer(self, message: AbstractIncomingMessage) -> None:
        try:
            invocation = self._invocation(message, event=False)
        except InvokeError as error:
            headers = {ERROR_CODE: error.code, ERROR_STATUS: error.status}
            await self._reply(message, error.body(), headers)
            return
        result = await self._submit(invocation)
        result.executed_version = self._config.function_version
        await self._reply(message, result.body, result_headers(result))

    async def _reply(
        self, request: AbstractIncomingMessage, body: bytes, headers: dict[str, Any]
    ) -> None:
        assert request.reply_to is not None
        reply = aio_pika.Message(
            body,
            correlation_id=request.correlation_id,
            headers=headers,
            content_type="application/json",
        )
        await self._require_channel().default_exchange.publish(
            reply, request.reply_to, mandatory=False
        )

    def _require_channel(self) -> AbstractChannel:
        if self._channel is None:
            raise ConnectionError("no broker channel")
        return self._channel

    async def _run_event(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        attempt = int(header_text(headers, ATTEMPT) or 0) + 1
        try:
            invocation = self._invocation(message, event=True)
        except InvokeError as error:
            await self._dead_letter(message, headers, attempt, error.code, error.body())
            return
        if self._too_old(message.timestamp):
            body = function_error_body(
                "EventAgeExceeded",
                f"The event was older than {self._config.max_event_age:g} seconds; not run",
            )
            await self._dead_letter(
                message, headers, attempt - 1, "EventAgeExceeded", body, "EventAgeExceeded"
            )
            return
        result = await self._submit(invocation)
        if result.error_type is None:
            return
        if attempt <= self._config.max_retry_attempts:
            logger.info(
                "event %s failed (%s); retry %d", invocation.request_id, result.error_type, attempt
            )
            headers[ATTEMPT] = attempt
            retry = persistent_message(
                message.body, invocation.request_id, headers, message.timestamp
            )
            await self._require_channel().default_exchange.publish(
                retry, self._config.function_name
            )
            return
        await self._dead_letter(message, headers, attempt, result.error_type, result.body)

    def _too_old(self, queued: datetime | None) -> bool:
        """Whether an Event waited longer than MAXIMUM_EVENT_AGE."""
        if queued is None:
            return False
        return time.time() - epoch_of(queued) > self._config.max_event_age

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        headers: dict[str, Any],
        attempts: int,
        error_type: str,
        error_body: bytes,
        condition: str = "RetriesExhausted",
    ) -> None:
        logger.warning(
            "event %s failed %d time(s); sent to %s",
            message.message_id,
            attempts,
            self._config.dead_letter_queue,
        )
        headers.update(
            {
                ATTEMPT: attempts,
                "x-error-type": error_type,
                "x-error-body": error_body.decode(errors="replace"),
                "x-function-arn": self._config.function_arn,
                "x-condition": condition,
                # The attributes Lambda puts on the messages it sends to a dead-letter queue.
                "RequestID": message.message_id or "",
                "ErrorCode": "200",
                "ErrorMessage": error_message(error_body),
            }
        )
        dead = persistent_message(message.body, message.message_id, headers, message.timestamp)
        await self._require_channel().default_exchange.publish(dead, self._config.dead_letter_queue)


def error_message(error_body: bytes) -> str:
    """The errorMessage of an error body (the whole body when it has none)."""
    try:
        message = json.loads(error_body).get("errorMessage")
    except (ValueError, AttributeError):
        message = None
    return message if isinstance(message, str) else error_body.decode(errors="replace")


def deadline_start(timestamp: datetime) -> float:
    """When a message's deadline starts: its timestamp, if it waited in the queue.

    AMQP timestamps have one-second resolution, so a fresh message's timestamp would cut
    up to a second off its deadline; only an older one is taken as the start.
    """
    now = time.time()
    sent = epoch_of(timestamp)
    return sent if sent < now - 1 else now


def epoch_of(timestamp: datetime) -> float:
    """A message timestamp in epoch seconds (AMQP timestamps are UTC, often naive)."""
    return (timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)).timestamp()


class RpcClient:
    """Publishes invocations to function queues and awaits the correlated replies."""

    def __init__(self, amqp: AmqpConfig) -> None:
        self._amqp = amqp
        self._futures: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}
        self._channel: AbstractChannel | None = None
        self._check_channel: AbstractChannel | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._ready = asyncio.Event()
        self._served: dict[str, float] = {}  # queue → when it was last seen with consumers

    async def run(self) -> None:
        """Stay connected until cancelled; raise BrokerUnavailable when attempts run out."""
        while True:
            connection = await connect(self._amqp)
            try:
                closed = closed_future(connection)
                await self._open(connection)
                logger.info("connected to the broker at %s", self._amqp.display)
                await closed
                logger.warning("lost the broker connection; reconnecting")
            except CONNECTION_ERRORS as error:
                logger.warning("broker connection failed (%s); reconnecting", error)
            finally:
                self._ready.clear()
                self._fail_pending()
                if not connection.is_closed:
                    await connection.close()

    async def _open(self, connection: aio_pika.abc.AbstractConnection) -> None:
        self._connection = connection
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)
        await replies.consume(self.on_reply, no_ack=True)
        self._channel = channel
        self._check_channel = await connection.channel()
        self._ready.set()

    def _fail_pending(self) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ServiceUnavailable("The broker connection was lost"))
        self._futures.clear()

    async def on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._futures.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message)

    async def _ready_channel(self) -> AbstractChannel:
        try:
            await asyncio.wait_for(self._ready.wait(), 5)
        except TimeoutError:
            raise ServiceUnavailable("The broker is unavailable") from None
        assert self._channel is not None
        return self._channel

    async def consumers(self, queue: str) -> int | None:
        """Consumers on `queue`, or None when it does not exist."""
        await self._ready_channel()
        assert self._connection is not None
        channel = self._check_channel
        if channel is None or channel.is_closed:
            channel = self._check_channel = await self._connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        return declared.declaration_result.consumer_count or 0

    async def require_served(self, queue: str, arn: str) -> None:
        """ResourceNotFound unless some daemon consumes `queue` (cached for a second)."""
        if time.monotonic() - self._served.get(queue, -10.0) < 1.0:
            return
        if not await self.consumers(queue):
            raise ResourceNotFound(f"Function not found: {arn}")
        self._served[queue] = time.monotonic()

    async def call(
        self,
        queue: str,
        arn: str,
        message: aio_pika.Message,
        timeout: float,  # noqa: ASYNC109
    ) -> AbstractIncomingMessage:
        """Publish an RPC request and wait up to `timeout` for its reply."""
        await self.require_served(queue, arn)
        channel = await self._ready_channel()
        correlation_id = message.correlation_id or str(uuid.uuid4())
        message.correlation_id = correlation_id
        message.reply_to = DIRECT_REPLY_TO
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self._futures[correlation_id] = future
        try:
            await self._publish(channel, message, queue, arn)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._futures.pop(correlation_id, None)

    async def publish(self, queue: str, arn: str, message: aio_pika.Message) -> None:
        """Publish a persistent Event; ResourceNotFound when no queue takes it."""
        channel = await self._ready_channel()
        await self._publish(channel, message, queue, arn)

    @staticmethod
    async def _publish(
        channel: AbstractChannel, message: aio_pika.Message, queue: str, arn: str
    ) -> None:
        try:
            confirmation = await channel.default_exchange.publish(message, queue, mandatory=True)
        except CONNECTION_ERRORS:
            raise ServiceUnavailable("The broker is unavailable") from None
        if isinstance(confirmation, DeliveredMessage):  # returned: no such queue
            raise ResourceNotFound(f"Function not found: {arn}")
