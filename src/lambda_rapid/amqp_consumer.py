"""The daemon's AMQP consumer: the function's queue served by the daemon's dispatcher.

``RpcConsumer`` consumes the queue named after the function and runs each message as an
invocation: the reply goes to ``reply_to`` with the same ``correlation_id``; a message
without ``reply_to`` is an Event, retried and finally dead-lettered. A message is
acknowledged only after its reply (or retry, or dead letter) is published, so the broker
redelivers anything a dead daemon held. Redeliveries are counted on a copy (the broker's
flag says only "at least once"): an invocation interrupted more than
MAXIMUM_RETRY_ATTEMPTS times is not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any, Protocol

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
    ExchangeType,
)
from aio_pika.message import IncomingMessage
from aiormq.abc import DeliveredMessage
from pamqp.common import FieldTable

from lambda_rapid.amqp_connection import (
    BROKER_ERRORS,
    CONNECTION_ERRORS,
    READY_WAIT,
    DeliveryTap,
    close,
    closed_future,
    connect,
    raise_if_cancelled,
)
from lambda_rapid.amqp_wire import (
    ATTEMPT,
    COGNITO_IDENTITY,
    JSON,
    MAX_ERROR_HEADER,
    MAX_ERROR_MESSAGE,
    TENANT_ID,
    TRACE_ID,
    UNDECODABLE_TIME,
    MalformedMessage,
    attempts_of,
    check_properties,
    client_context_of,
    copied_headers,
    deadline_start,
    encodable,
    epoch_of,
    error_headers,
    error_message,
    function_exchange,
    invoked_arn_of,
    optional_safe,
    reply_frames,
    request_id_of,
    result_headers,
    retry_queue,
    trace_id_of,
    truncated,
    wants_log_tail,
)
from lambda_rapid.config import DaemonConfig
from lambda_rapid.errors import (
    MAX_EVENT_PAYLOAD,
    MAX_REQUEST_PAYLOAD,
    InvokeError,
    ServiceException,
    ServiceUnavailable,
    function_error_body,
)
from lambda_rapid.invocation import Invocation, InvocationResult, check_payload

logger = logging.getLogger(__name__)

MALFORMED = "MalformedMessage"  # x-condition of a message dead-lettered as it came

Submit = Callable[[Invocation], asyncio.Future[InvocationResult]]


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


def interrupted(runs: int) -> ServiceException:
    """What the caller of a RequestResponse invocation interrupted too often receives."""
    return ServiceException(
        f"The invocation was interrupted {runs} time(s) (its daemon stopped or lost the "
        "broker while running it); it is not run again"
    )


class EventObserver(Protocol):
    """What the consumer tells the metrics (METRICS_PORT) about Events."""

    def event_queued(self) -> None: ...

    def event_retried(self) -> None: ...

    def event_dead_lettered(self) -> None: ...


class RpcConsumer:
    """Serves the function's queue from the daemon's pool."""

    def __init__(self, config: DaemonConfig, submit: Submit) -> None:
        assert config.amqp is not None
        self._config = config
        self._amqp = config.amqp
        self._submit = submit
        self._channel: AbstractChannel | None = None
        self._confirmed: AbstractChannel | None = None
        self._raw: aiormq.Channel | None = None
        self._tap: DeliveryTap | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        # Set while the function's queue is declared, bound and consumed.
        self.consuming = asyncio.Event()
        self.metrics: EventObserver | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Consume until cancelled; reconnect on loss; raise BrokerUnavailable at the end."""
        while True:
            tap = DeliveryTap()
            connection = await connect(self._amqp, tap)
            try:
                await self._serve(connection, tap)
                logger.warning("lost the broker connection; reconnecting")
            except CONNECTION_ERRORS as error:
                raise_if_cancelled()
                logger.warning("broker connection failed (%s); reconnecting", error)
            finally:
                self.consuming.clear()
                self._channel = self._confirmed = self._raw = self._tap = None
                await close(connection)

    async def _serve(self, connection: aio_pika.abc.AbstractConnection, tap: DeliveryTap) -> None:
        closed = closed_future(connection)
        # Deliveries, RPC replies and acks share one channel without publisher confirms: a
        # reply and its ack leave in one write, in order (the reply goes to a transient
        # reply-to queue, which a confirm would not make any safer). What must survive the
        # broker (Events, retries, dead letters) is published on a confirming channel and
        # acknowledged only once confirmed.
        channel = await connection.channel(publisher_confirms=False)
        self._confirmed = await connection.channel(publisher_confirms=True)
        # No more than the instances: other daemons on the queue take the rest. A reply
        # carries its ack, so the broker sends the next message as the reply leaves.
        await channel.set_qos(prefetch_count=self._config.max_concurrency)
        queue = await self._declare(channel)
        self._channel = channel
        self._queue = queue
        raw = await channel.get_underlay_channel()
        assert isinstance(raw, aiormq.Channel)
        self._raw, self._tap = raw, tap
        # Deliveries are taken as their bytes arrive and replies written straight to the
        # socket: no task, queue or writer between the socket and the dispatcher.
        tap.take(raw, self._deliver)
        consumed = await raw.basic_consume(queue.name, self._consumed)
        self._consumer_tag = consumed.consumer_tag
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
        channel = self._confirmed
        if channel is None or channel.is_closed:
            raise ServiceUnavailable("The broker is unavailable; the event was not queued")
        headers: dict[str, Any] = {}
        if invocation.trace_id:
            headers[TRACE_ID] = invocation.trace_id
        message = persistent_message(invocation.payload, invocation.request_id, headers)
        try:
            await channel.default_exchange.publish(message, self._config.function_name)
        except BROKER_ERRORS:
            raise ServiceUnavailable(
                "The broker is unavailable; the event was not queued"
            ) from None
        if self.metrics is not None:
            self.metrics.event_queued()

    async def _consumed(self, delivered: DeliveredMessage) -> None:
        """A delivery that reached the channel's reader instead of the tap."""
        self._deliver(delivered)

    def _deliver(self, delivered: DeliveredMessage) -> None:
        """A delivery: a fresh RPC request runs on the fast path, anything else as before."""
        properties = delivered.header.properties
        reply_to = properties.reply_to
        headers = properties.headers or {}
        tap = self._tap
        if tap and reply_to and not delivered.redelivered and ATTEMPT not in headers:
            try:
                check_properties(properties.correlation_id, reply_to, headers, properties.timestamp)
                invocation = self._invocation_of(
                    delivered.body, properties.message_id, headers, properties.timestamp, False
                )
            except InvokeError:
                pass  # refused on the general path, with its reply
            else:
                reply = functools.partial(self._send_reply, tap, delivered)
                self._submit(invocation).add_done_callback(reply)
                return
        self._spawn(self.on_message(IncomingMessage(delivered, no_ack=False)))

    def _send_reply(
        self,
        tap: DeliveryTap,
        delivered: DeliveredMessage,
        done: asyncio.Future[InvocationResult],
    ) -> None:
        """Publish the reply and acknowledge the request in one write, from the result's
        callback, on the connection the request came from."""
        channel = delivered.channel
        if channel.is_closed or done.cancelled():
            return  # not acknowledged: the broker redelivers it
        error = done.exception()
        if error is not None:
            # Not the dispatcher's contract, but an unsettled message would hold its
            # prefetch slot until the connection closes: dead-letter it as the general path does.
            self._spawn(self._reject(IncomingMessage(delivered, no_ack=False), error))
            return
        result = done.result()
        result.executed_version = self._config.function_version
        request = delivered.header.properties
        assert isinstance(channel, aiormq.Channel)
        tap.write(
            reply_frames(
                channel.number,
                channel.max_content_size,
                request.reply_to or "",
                request.correlation_id,
                result_headers(result),
                result.body,
                delivered.delivery_tag or 0,
            )
        )  # False once the connection closes: then the broker redelivers it

    async def settle(self, seconds: float) -> None:
        """Wait, up to `seconds`, for the messages still being answered, retried or
        dead-lettered: each is acknowledged only at its end, so one cut off by the
        connection closing would be delivered again and run twice."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=seconds)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` from a callback, holding its task until it ends."""
        self._tasks.add(task := asyncio.get_running_loop().create_task(work))
        task.add_done_callback(self._tasks.discard)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._handle(message)
            await message.ack()
        except BROKER_ERRORS as error:
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

    async def _reject(self, message: AbstractIncomingMessage, error: BaseException) -> None:
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
        return self._invocation_of(
            message.body, message.message_id, message.headers or {}, message.timestamp, event
        )

    def _invocation_of(
        self,
        body: bytes,
        message_id: str | None,
        headers: Mapping[str, Any],
        timestamp: datetime | None,
        event: bool,
    ) -> Invocation:
        check_payload(body, MAX_EVENT_PAYLOAD if event else MAX_REQUEST_PAYLOAD)
        invocation = Invocation(
            request_id=request_id_of(message_id),
            payload=body,
            timeout=self._config.timeout,
            invoked_arn=invoked_arn_of(headers, self._config.function_arn),
            trace_id=trace_id_of(headers),
            client_context=client_context_of(headers),
            cognito_identity=optional_safe(headers, COGNITO_IDENTITY),
            tenant_id=optional_safe(headers, TENANT_ID),
            want_log_tail=wants_log_tail(headers) and not event,
        )
        if not event and timestamp is not None:
            invocation.started_at = deadline_start(timestamp)
        return invocation

    async def _answer(self, message: AbstractIncomingMessage) -> None:
        """Run a RequestResponse message and reply; count it again when it was interrupted."""
        headers = message.headers or {}
        try:
            ran = attempts_of(headers) + bool(message.redelivered)
            invocation = self._invocation(message, event=False)
        except InvokeError as error:
            await self._reply(message, error.body(), error_headers(error))
            return
        if ran > self._config.max_retry_attempts:
            refusal = interrupted(ran)
            await self._reply(message, refusal.body(), error_headers(refusal))
            return
        if message.redelivered:
            await self._requeue_request(message, headers, ran)
            return
        result = await self._submit(invocation)
        result.executed_version = self._config.function_version
        await self._reply(message, result.body, result_headers(result))

    async def _requeue_request(
        self, message: AbstractIncomingMessage, headers: Mapping[str, Any], runs: int
    ) -> None:
        """Put a counted copy of an interrupted request back, for the same caller."""
        copy = copied_headers(headers)
        if copy is None:
            refusal = MalformedMessage("The headers are too large to run the request again")
            await self._reply(message, refusal.body(), error_headers(refusal))
            return
        copy[ATTEMPT] = runs
        again = aio_pika.Message(
            message.body,
            message_id=message.message_id,
            headers=copy,
            content_type=message.content_type,
            delivery_mode=message.delivery_mode,
            expiration=message.expiration,
            timestamp=message.timestamp,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
        )
        await self._require_channel(confirmed=True).default_exchange.publish(
            again, self._config.function_name
        )

    async def _reply(
        self, request: AbstractIncomingMessage, body: bytes, headers: dict[str, Any]
    ) -> None:
        assert request.reply_to is not None
        reply = aio_pika.Message(
            body, correlation_id=request.correlation_id, headers=headers, content_type=JSON
        )
        await self._require_channel().default_exchange.publish(
            reply, request.reply_to, mandatory=False
        )

    def _require_channel(self, confirmed: bool = False) -> AbstractChannel:
        channel = self._confirmed if confirmed else self._channel
        if channel is None:
            raise ConnectionError("no broker channel")
        return channel

    async def _run_event(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        try:
            # An interrupted run (daemon gone, connection lost before the ack) counts.
            ran = attempts_of(headers) + bool(message.redelivered)
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
        if self.metrics is not None:
            self.metrics.event_retried()

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
        await self._require_channel(confirmed=True).default_exchange.publish(retry, queue)

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
        channel = self._require_channel(confirmed=True)
        await channel.default_exchange.publish(dead, self._config.dead_letter_queue)
        if self.metrics is not None:
            self.metrics.event_dead_lettered()
        logger.warning(
            "event %s failed %d time(s) (%s); sent to %s",
            message_id,
            attempts,
            condition,
            self._config.dead_letter_queue,
        )
