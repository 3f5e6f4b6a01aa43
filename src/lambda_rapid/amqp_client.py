"""lambda-server's AMQP client: invocations published to function exchanges, replies awaited.

``RpcClient`` publishes with mandatory routing (no queue bound → 404 at once) and waits
for the correlated reply on RabbitMQ's direct reply-to pseudo-queue, one future per
correlation id; it reconnects as the URI says and fails pending calls when the connection
is lost. ``AmqpBackend`` is the Invoke API's backend on top of it: one function's queue
per FunctionName.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, DeliveryMode
from aiormq.abc import DeliveredMessage

from lambda_rapid.amqp_connection import (
    BROKER_ERRORS,
    CONNECTION_ERRORS,
    READY_WAIT,
    close,
    closed_future,
    connect,
    raise_if_cancelled,
)
from lambda_rapid.amqp_wire import function_exchange, request_headers, result_of_reply
from lambda_rapid.config import AmqpConfig, ServerConfig
from lambda_rapid.errors import ResourceNotFound, ServiceUnavailable, timeout_error
from lambda_rapid.invocation import Invocation, InvocationResult, new_request_id
from lambda_rapid.invoke_api import Target, merge_qualifier, split_function_name
from lambda_rapid.names import is_function_name

logger = logging.getLogger(__name__)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


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

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

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
                raise_if_cancelled()
                logger.warning("broker connection failed (%s); reconnecting", error)
            finally:
                self._ready.clear()
                self._fail_pending()
                await close(connection)

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
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiormq cancels a pending confirmation when the connection closes under it.
            raise ServiceUnavailable("The broker is unavailable") from None
        except Exception as error:  # noqa: BLE001
            # aiormq fails pending confirmations with a bare Exception when a connection is
            # lost: the publish did not happen, as for any broker error.
            logger.warning("publish to %s failed: %r", function_name, error)
            raise ServiceUnavailable("The broker is unavailable") from None
        if isinstance(confirmation, DeliveredMessage):  # returned: no queue bound
            raise ResourceNotFound(f"Function not found: {arn}")


class AmqpBackend:
    """Sends invocations to the queue named after each function."""

    def __init__(self, config: ServerConfig, client: RpcClient) -> None:
        self._config = config
        self._client = client
        self._arn_prefix = f"arn:aws:lambda:{config.region}:{config.account_id}:function:"

    def resolve(self, function_name: str, qualifier: str | None) -> Target:
        name, from_name, _, _ = split_function_name(function_name)
        qualifier = merge_qualifier(from_name, qualifier)
        arn = self._arn_prefix + name + (f":{qualifier}" if qualifier else "")
        if not is_function_name(name):
            raise ResourceNotFound(f"Function not found: {arn}")
        return Target(name, qualifier, arn)

    def _message(self, invocation: Invocation, persistent: bool) -> aio_pika.Message:
        return aio_pika.Message(
            invocation.payload,
            message_id=invocation.request_id,
            content_type="application/json",
            headers=request_headers(invocation),
            timestamp=time.time(),
            delivery_mode=DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT,
            expiration=None if persistent else self._config.timeout,
        )

    async def invoke(self, target: Target, invocation: Invocation) -> InvocationResult:
        message = self._message(invocation, persistent=False)
        try:
            reply = await self._client.call(
                target.function_name, target.invoked_arn, message, self._config.timeout
            )
        except TimeoutError:
            body = timeout_error(invocation.request_id, self._config.timeout)
            return InvocationResult(body, "Sandbox.Timedout")
        return result_of_reply(reply.headers or {}, reply.body)

    async def enqueue(self, target: Target, invocation: Invocation) -> None:
        message = self._message(invocation, persistent=True)
        await self._client.publish(target.function_name, target.invoked_arn, message)

    async def dry_run(self, target: Target) -> None:
        # The same test as an Event's: the function's daemon set up its exchange and queue.
        if not await self._client.exists(target.function_name):
            raise ResourceNotFound(f"Function not found: {target.invoked_arn}")
