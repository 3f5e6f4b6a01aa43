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
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
    ExchangeType,
)
from aiormq.abc import DeliveredMessage
from pamqp.common import FieldTable

from lambda_rapid.amqp_wire import (
    MAX_ERROR_HEADER,
    MAX_ERROR_MESSAGE,
    UNDECODABLE_TIME,
    MalformedMessage,
    attempts_of,
    check_properties,
    client_context_of,
    copied_headers,
    encodable,
    header_text,
    install_tolerant_decoding,
    optional_safe,
    request_id_of,
    trace_id_of,
    truncated,
    wire_safe,
)
from lambda_rapid.config import AmqpConfig, DaemonConfig
from lambda_rapid.errors import (
    MAX_EVENT_PAYLOAD,
    MAX_REQUEST_PAYLOAD,
    InvokeError,
    ResourceNotFound,
    ServiceUnavailable,
    function_error_body,
)
from lambda_rapid.invocation import Invocation, InvocationResult, check_payload, new_request_id

logger = logging.getLogger(__name__)
install_tolerant_decoding()

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
FUNCTION_ERROR = "X-Amz-Function-Error"
ERROR_TYPE = "X-Amz-Function-Error-Type"
EXECUTED_VERSION = "X-Amz-Executed-Version"
LOG_RESULT = "X-Amz-Log-Result"
ERROR_CODE = "x-amzn-ErrorType"
ERROR_STATUS = "x-amzn-Status"
ATTEMPT = "x-lambda-attempt"  # how many times an Event has already run
COGNITO_IDENTITY = "X-Amz-Cognito-Identity"
TENANT_ID = "X-Amz-Tenant-Id"
MALFORMED = "MalformedMessage"  # x-condition of a message dead-lettered as it came
READY_WAIT = 5.0  # seconds a publish waits for the broker connection before a 503
CONNECTION_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, TimeoutError)
# A channel closed under a publish raises ChannelInvalidStateError, a RuntimeError.
BROKER_ERRORS = (*CONNECTION_ERRORS, aiormq.exceptions.ChannelInvalidStateError)

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


def function_exchange(function_name: str) -> str:
    """The exchange a daemon binds its function's queue to: only daemons declare it.

    lambda-server publishes there, never to the default exchange, so a queue of some other
    application that happens to carry a function's name is never reachable through it.
    """
    return f"lambda-function.{function_name}"


def retry_queue(function_name: str, retry: int) -> str:
    """Where the `retry`-th retry of a failed Event waits (one queue per delay)."""
    return f"{function_name}-retry-{retry}"


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
        # Set while the function's queue is declared, bound and consumed.
        self.consuming = asyncio.Event()

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
                self.consuming.clear()
                self._channel = None
                if not connection.is_closed:
                    await connection.close()

    async def _serve(self, connection: aio_pika.abc.AbstractConnection) -> None:
        closed = closed_future(connection)
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=self._config.max_concurrency)
        queue = await self._declare(channel)
        self._channel = channel
        self._queue = queue
        self._consumer_tag = await queue.consume(self.on_message)
        logger.info("consuming queue %s at %s", self._config.function_name, self._amqp.display)
        self.consuming.set()
        await closed

    async def _declare(self, channel: AbstractChannel) -> AbstractQueue:
        """The function's queue, bound to its exchange, and its dead-letter and delay queues."""
        name = self._config.function_name
        queue = await channel.declare_queue(name, durable=True)
        exchange = await channel.declare_exchange(
            function_exchange(name), ExchangeType.DIRECT, durable=True
        )
        await queue.bind(exchange, routing_key=name)
        await channel.declare_queue(self._config.dead_letter_queue, durable=True)
        if self._config.event_retry_delay > 0:
            # Expired retries go back to the function's queue: the wait survives the daemon.
            back: FieldTable = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": name}
            for retry in range(1, self._config.max_retry_attempts + 1):
                await channel.declare_queue(retry_queue(name, retry), durable=True, arguments=back)
        return queue

    async def stop_consuming(self) -> None:
        """Take no more messages (shutdown); those in flight may still be answered."""
        queue, tag = self._queue, self._consumer_tag
        self._queue = self._consumer_tag = None
        if queue is not None and tag is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await queue.cancel(tag)

    async def publish_event(self, invocation: Invocation) -> None:
        """Make an HTTP Event invocation durable: persist it on the function's queue."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.consuming.wait(), READY_WAIT)
        channel = self._channel
        if channel is None or channel.is_closed:
            raise ServiceUnavailable("The broker is unavailable; the event was not queued")
        headers: dict[str, Any] = {}
        if invocation.trace_id:
            headers["X-Amzn-Trace-Id"] = invocation.trace_id
        message = persistent_message(invocation.payload, invocation.request_id, headers)
        try:
            await channel.default_exchange.publish(message, self._config.function_name)
        except BROKER_ERRORS:
            raise ServiceUnavailable(
                "The broker is unavailable; the event was not queued"
            ) from None

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._handle(message)
            await message.ack()
        except CONNECTION_ERRORS as error:
            # Not acknowledged: the broker redelivers it once the connection is back.
            logger.warning("could not finish message %s: %s", message.message_id, error)
        except Exception as error:  # noqa: BLE001 - one bad message must not stop the queue
            await self._reject(message, error)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        try:
            check_properties(message.correlation_id, message.reply_to, headers, message.timestamp)
        except MalformedMessage as error:
            await self._dead_letter(message, None, 0, error.code, error.body(), MALFORMED)
            return
        if message.reply_to:
            await self._answer(message)
        else:
            await self._run_event(message)

    async def _reject(self, message: AbstractIncomingMessage, error: Exception) -> None:
        """Dead-letter a message that could not be handled, with the reason, and go on."""
        logger.warning("message %r could not be handled: %r", message.message_id, error)
        body = function_error_body(type(error).__name__, str(error) or type(error).__name__)
        try:
            await self._dead_letter(message, None, 0, "MalformedMessage", body, MALFORMED)
            await message.ack()
        except CONNECTION_ERRORS:
            return  # redelivered later, and counted as a delivery then
        except Exception as failure:  # noqa: BLE001
            logger.error(
                "dropping message %r: cannot dead-letter it: %r", message.message_id, failure
            )
            with contextlib.suppress(*BROKER_ERRORS):
                await message.reject(requeue=False)

    def _invocation(self, message: AbstractIncomingMessage, event: bool) -> Invocation:
        headers = message.headers or {}
        check_payload(message.body, MAX_EVENT_PAYLOAD if event else MAX_REQUEST_PAYLOAD)
        arn = header_text(headers, "X-Amz-Invoked-Function-Arn")
        invocation = Invocation(
            request_id=request_id_of(message.message_id),
            payload=message.body,
            timeout=self._config.timeout,
            invoked_arn=arn if arn and wire_safe(arn) else self._config.function_arn,
            trace_id=trace_id_of(headers),
            client_context=client_context_of(headers),
            cognito_identity=optional_safe(headers, COGNITO_IDENTITY),
            tenant_id=optional_safe(headers, TENANT_ID),
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
        headers = message.headers or {}
        try:
            # An interrupted run (daemon gone, connection lost before the ack) counts.
            ran = attempts_of(headers, ATTEMPT) + bool(message.redelivered)
            invocation = self._invocation(message, event=True)
        except InvokeError as error:
            await self._dead_letter(message, headers, 0, error.code, error.body(), MALFORMED)
            return
        if self._too_old(message.timestamp):
            body = function_error_body(
                "EventAgeExceeded",
                f"The event was older than {self._config.max_event_age:g} seconds; not run",
            )
            await self._dead_letter(
                message, headers, ran, "EventAgeExceeded", body, "EventAgeExceeded"
            )
            return
        if ran > self._config.max_retry_attempts:
            body = function_error_body(
                "RetriesExhausted",
                f"The event already ran {ran} time(s), the last one interrupted; not run again",
            )
            await self._dead_letter(message, headers, ran, "RetriesExhausted", body)
            return
        if message.redelivered:
            # Count the interrupted run on a copy before running it again.
            await self._republish(message, headers, ran, self._config.function_name)
            return
        result = await self._submit(invocation)
        if result.error_type is not None:
            await self._failed(message, headers, ran + 1, result)

    async def _failed(
        self,
        message: AbstractIncomingMessage,
        headers: Mapping[str, Any],
        attempt: int,
        result: InvocationResult,
    ) -> None:
        """Retry a failed Event (after the delay, in the broker) or dead-letter it."""
        assert result.error_type is not None
        if attempt > self._config.max_retry_attempts:
            await self._dead_letter(message, headers, attempt, result.error_type, result.body)
            return
        logger.info(
            "event %s failed (%s); retry %d", message.message_id, result.error_type, attempt
        )
        delay = self._config.event_retry_delay * 2 ** (attempt - 1)
        queue = retry_queue(self._config.function_name, attempt) if delay else None
        await self._republish(message, headers, attempt, queue or self._config.function_name, delay)

    async def _republish(
        self,
        message: AbstractIncomingMessage,
        headers: Mapping[str, Any],
        attempts: int,
        queue: str,
        delay: float = 0.0,
    ) -> None:
        copy = copied_headers(headers)
        if copy is None:
            body = function_error_body("HeadersTooLarge", "The headers are too large to retry")
            await self._dead_letter(message, None, attempts, "HeadersTooLarge", body, MALFORMED)
            return
        copy[ATTEMPT] = attempts
        retry = persistent_message(message.body, message.message_id, copy, message.timestamp)
        if delay:
            retry.expiration = delay
        await self._require_channel().default_exchange.publish(retry, queue)

    def _too_old(self, queued: datetime | None) -> bool:
        """Whether an Event waited longer than MAXIMUM_EVENT_AGE."""
        if queued is None:
            return False
        return time.time() - epoch_of(queued) > self._config.max_event_age

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        headers: Mapping[str, Any] | None,
        attempts: int,
        error_type: str,
        error_body: bytes,
        condition: str = "RetriesExhausted",
    ) -> None:
        """Publish to the dead-letter queue (confirmed); the headers stay far below a frame."""
        kept = copied_headers(headers) if headers is not None else None
        dead_headers: dict[str, Any] = {} if kept is None else kept
        if kept is None and headers is not None:
            dead_headers["x-headers-dropped"] = True
        message_id = message.message_id if encodable(message.message_id or "") else None
        dead_headers.update(
            {
                ATTEMPT: attempts,
                "x-error-type": truncated(error_type.encode(), MAX_ERROR_MESSAGE),
                "x-error-body": truncated(error_body, MAX_ERROR_HEADER),
                "x-function-arn": self._config.function_arn,
                "x-condition": condition,
                # The attributes Lambda puts on the messages it sends to a dead-letter queue.
                "RequestID": message_id or "",
                "ErrorCode": "200",
                "ErrorMessage": truncated(error_message(error_body).encode(), MAX_ERROR_MESSAGE),
            }
        )
        queued = None if message.timestamp == UNDECODABLE_TIME else message.timestamp
        dead = persistent_message(message.body, message_id, dead_headers, queued)
        channel = self._require_channel()
        await channel.default_exchange.publish(dead, self._config.dead_letter_queue)
        logger.warning(
            "event %s failed %d time(s) (%s); sent to %s",
            message_id,
            attempts,
            condition,
            self._config.dead_letter_queue,
        )


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
    """Publishes invocations to function exchanges and awaits the correlated replies."""

    def __init__(self, amqp: AmqpConfig) -> None:
        self._amqp = amqp
        self._futures: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}
        self._channel: AbstractChannel | None = None
        self._check_channel: AbstractChannel | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._ready = asyncio.Event()
        # Function name → when its exchange (or queue consumers) were last seen.
        self._known: dict[str, float] = {}
        self._served: dict[str, float] = {}

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
            await asyncio.wait_for(self._ready.wait(), READY_WAIT)
        except TimeoutError:
            raise ServiceUnavailable("The broker is unavailable") from None
        channel = self._channel
        if channel is None or channel.is_closed:
            self._reconnect()
            raise ServiceUnavailable("The broker is unavailable")
        return channel

    def _reconnect(self) -> None:
        """Drop a connection whose channel died under us; `run` opens a new one."""
        self._ready.clear()
        connection = self._connection
        if connection is not None and not connection.is_closed:
            asyncio.get_running_loop().create_task(connection.close())

    async def _passive(self, kind: str, name: str) -> int | None:
        """Consumers of queue `name`, 0 for an existing exchange `name`; None when missing."""
        await self._ready_channel()
        try:
            channel = self._check_channel
            if channel is None or channel.is_closed:
                assert self._connection is not None
                channel = self._check_channel = await self._connection.channel()
            if kind == "exchange":
                await channel.declare_exchange(name, passive=True)
                return 0
            declared = await channel.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        except BROKER_ERRORS:
            raise ServiceUnavailable("The broker is unavailable") from None
        return declared.declaration_result.consumer_count or 0

    async def consumers(self, queue: str) -> int | None:
        """Consumers on `queue`, or None when it does not exist."""
        return await self._passive("queue", queue)

    async def exists(self, function_name: str) -> bool:
        """Whether a daemon ever set the function up (its exchange and its queue exist)."""
        if await self._passive("exchange", function_exchange(function_name)) is None:
            return False
        return await self._passive("queue", function_name) is not None

    async def require_function(self, function_name: str, arn: str) -> None:
        """ResourceNotFound unless the function's exchange exists (cached for a second)."""
        if time.monotonic() - self._known.get(function_name, -10.0) < 1.0:
            return
        if await self._passive("exchange", function_exchange(function_name)) is None:
            raise ResourceNotFound(f"Function not found: {arn}")
        self._known[function_name] = time.monotonic()

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
        correlation_id = message.correlation_id or new_request_id()
        message.correlation_id = correlation_id
        message.reply_to = DIRECT_REPLY_TO
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self._futures[correlation_id] = future
        try:
            await self.publish(queue, arn, message)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._futures.pop(correlation_id, None)

    async def publish(self, function_name: str, arn: str, message: aio_pika.Message) -> None:
        """Publish to the function's exchange; ResourceNotFound when no queue is bound."""
        await self.require_function(function_name, arn)
        channel = await self._ready_channel()
        try:
            exchange = await channel.get_exchange(function_exchange(function_name), ensure=False)
            confirmation = await exchange.publish(message, function_name, mandatory=True)
        except BROKER_ERRORS:
            raise ServiceUnavailable("The broker is unavailable") from None
        if isinstance(confirmation, DeliveredMessage):  # returned: no queue bound
            raise ResourceNotFound(f"Function not found: {arn}")
