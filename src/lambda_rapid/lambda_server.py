"""The Lambda Server: the Invoke API for many functions, routed over AMQP.

Each HTTP invocation is published to the queue named after its FunctionName (mandatory
routing: no queue → 404 at once) and answered with the correlated reply of whichever
daemon served it. Events are published persistent and answered 202 at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode

from lambda_rapid import amqp
from lambda_rapid.amqp import BrokerUnavailable, RpcClient
from lambda_rapid.amqp_wire import MalformedMessage, header_text, log_result_of, wire_safe
from lambda_rapid.config import ServerConfig
from lambda_rapid.errors import InvokeError, ResourceNotFound, timeout_error
from lambda_rapid.invocation import Invocation, InvocationResult
from lambda_rapid.invoke_api import InvokeApi, Target, merge_qualifier, split_function_name

if TYPE_CHECKING:
    from lambda_rapid.gateway import Gateway

logger = logging.getLogger(__name__)

VALID_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
ERROR_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.")
VALID_ERROR_STATUS = range(400, 600)
INVALID_REPLY = json.dumps(
    {"Type": "Service", "Message": "The function's daemon sent an invalid reply"}
).encode()


class RemoteError(InvokeError):
    """An Invoke API error decided by the daemon that received the message."""

    def __init__(self, status: int, code: str, body: bytes) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self._body = body

    def body(self) -> bytes:
        return self._body


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
        if len(name) > 64 or not VALID_NAME.issuperset(name):
            raise ResourceNotFound(f"Function not found: {arn}")
        return Target(name, qualifier, arn)

    def _message(self, invocation: Invocation, persistent: bool) -> aio_pika.Message:
        headers: dict[str, aio_pika.abc.FieldValue] = {
            "X-Amz-Invoked-Function-Arn": invocation.invoked_arn,
        }
        if invocation.trace_id:
            headers["X-Amzn-Trace-Id"] = invocation.trace_id
        if invocation.client_context:
            encoded = base64.b64encode(invocation.client_context.encode()).decode()
            headers["X-Amz-Client-Context"] = encoded
        if invocation.want_log_tail:
            headers["X-Amz-Log-Type"] = "Tail"
        if invocation.cognito_identity:
            headers[amqp.COGNITO_IDENTITY] = invocation.cognito_identity
        if invocation.tenant_id:
            headers[amqp.TENANT_ID] = invocation.tenant_id
        return aio_pika.Message(
            invocation.payload,
            message_id=invocation.request_id,
            content_type="application/json",
            headers=headers,
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
        return result_from_reply(reply)

    async def enqueue(self, target: Target, invocation: Invocation) -> None:
        message = self._message(invocation, persistent=True)
        await self._client.publish(target.function_name, target.invoked_arn, message)

    async def dry_run(self, target: Target) -> None:
        # The same test as an Event's: the function's daemon set up its exchange and queue.
        if not await self._client.exists(target.function_name):
            raise ResourceNotFound(f"Function not found: {target.invoked_arn}")


def reply_text(headers: Mapping[str, Any], name: str) -> str | None:
    """A reply header that may become an HTTP header: None unless text and header-safe."""
    try:
        value = header_text(headers, name)
    except MalformedMessage:
        return None
    return value if value is not None and wire_safe(value) else None


def remote_error(headers: Mapping[str, Any], body: bytes) -> RemoteError:
    """The error the daemon decided; an invalid one becomes a 502 ServiceException."""
    code = reply_text(headers, amqp.ERROR_CODE)
    status = headers.get(amqp.ERROR_STATUS)
    if isinstance(status, bytes | str) and status.isdigit():
        status = int(status)
    if code and ERROR_CODE_CHARS.issuperset(code) and status in VALID_ERROR_STATUS:
        assert isinstance(status, int)
        return RemoteError(status, code, body)
    return RemoteError(502, "ServiceException", INVALID_REPLY)


def result_from_reply(reply: AbstractIncomingMessage) -> InvocationResult:
    headers = reply.headers or {}
    if amqp.ERROR_CODE in headers:
        raise remote_error(headers, reply.body)
    error_type = None
    if amqp.FUNCTION_ERROR in headers:
        error_type = reply_text(headers, amqp.ERROR_TYPE) or "Unhandled"
    return InvocationResult(
        reply.body,
        error_type,
        log_result_of(reply_text(headers, amqp.LOG_RESULT)),
        reply_text(headers, amqp.EXECUTED_VERSION) or "$LATEST",
    )


class LambdaServer:
    """Composition root of the Lambda Server."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.client = RpcClient(config.amqp)
        backend = AmqpBackend(config, self.client)
        self.invoke_api = InvokeApi(config.invoke_api_host, config.port, config.timeout, backend)
        self.gateway = self._gateway(backend)
        self._stop = asyncio.Event()

    def _gateway(self, backend: AmqpBackend) -> Gateway | None:
        if self.config.gateway is None:
            return None
        # Imported only when the gateway is on, to keep the start-up of the others short.
        from lambda_rapid.gateway import gateway_for

        return gateway_for(self.config, backend, None)

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        await self.invoke_api.start()
        if self.gateway is not None:
            await self.gateway.start()
        connection = loop.create_task(self.client.run())
        stop = loop.create_task(self._stop.wait())
        logger.info(
            "Lambda Server ready: Invoke API on %s:%d, broker %s",
            self.config.invoke_api_host,
            self.config.port,
            self.config.amqp.display,
        )
        await asyncio.wait({connection, stop}, return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if connection.done():
            error = connection.exception()
            logger.error("giving up: %s", error)
            status = 1 if isinstance(error, BrokerUnavailable) else 2
        self.invoke_api.stop_accepting()
        if self.gateway is not None:
            self.gateway.stop_accepting()
        stop.cancel()
        connection.cancel()
        await asyncio.gather(connection, return_exceptions=True)
        await self.invoke_api.close()
        if self.gateway is not None:
            await self.gateway.close()
        return status
