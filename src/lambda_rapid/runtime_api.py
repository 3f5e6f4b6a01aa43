"""The Lambda Runtime API (2018-06-01) served to runtime processes.

There is one listener per pool slot, so the local port a request arrives on names the
instance that sent it. Handlers are one per route; every misuse is answered with
Lambda's status code and ``{"errorMessage", "errorType"}`` body, rendered in one place.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from lambda_rapid.config import ConfigError, DaemonConfig
from lambda_rapid.dispatcher import Dispatcher, InstanceStopped
from lambda_rapid.errors import (
    MAX_RESPONSE_PAYLOAD,
    PayloadTooLarge,
    RuntimeApiError,
    response_too_large_error,
)
from lambda_rapid.instance import Instance
from lambda_rapid.invocation import InvocationResult

logger = logging.getLogger(__name__)

PREFIX = "/2018-06-01/runtime"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
UNKNOWN_ERROR_TYPE = "Runtime.Unknown"

Handler = Callable[[web.Request, Instance], Awaitable[web.StreamResponse]]


def render_error(error: RuntimeApiError) -> web.Response:
    return web.Response(status=error.status, body=error.body(), content_type="application/json")


def error_type_of(body: bytes) -> str:
    """The errorType of an error body, for runtimes that send no error-type header."""
    try:
        error_type = json.loads(body).get("errorType")
    except (ValueError, AttributeError):
        return UNKNOWN_ERROR_TYPE
    return error_type if isinstance(error_type, str) and error_type else UNKNOWN_ERROR_TYPE


def accepted() -> web.Response:
    return web.Response(status=202, body=b'{"status":"OK"}', content_type="application/json")


class RuntimeApi:
    """Runtime API listeners (one per slot) and their route handlers."""

    def __init__(self, config: DaemonConfig, dispatcher: Dispatcher) -> None:
        self._config = config
        self._dispatcher = dispatcher
        self._sockets = [self._bind(slot) for slot in range(config.max_concurrency)]
        self._slot_by_port = {s.getsockname()[1]: slot for slot, s in enumerate(self._sockets)}
        self._runner: web.AppRunner | None = None

    def _bind(self, slot: int) -> socket.socket:
        port = self._config.runtime_api_port if slot == 0 else 0
        host = self._config.runtime_api_host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            sock.close()
            raise ConfigError(
                f"cannot listen on RUNTIME_API_HOST:RUNTIME_API_PORT {host}:{port}: "
                f"{error.strerror or error}"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        return sock

    @property
    def addresses(self) -> list[str]:
        """`host:port` of each slot, as runtimes receive it in AWS_LAMBDA_RUNTIME_API."""
        result = []
        for sock in self._sockets:
            host, port = sock.getsockname()[:2]
            result.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return result

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_RESPONSE_PAYLOAD)
        app.router.add_get(f"{PREFIX}/invocation/next", self._route(self.next))
        app.router.add_post(
            f"{PREFIX}/invocation/{{request_id}}/response", self._route(self.response)
        )
        app.router.add_post(f"{PREFIX}/invocation/{{request_id}}/error", self._route(self.error))
        app.router.add_post(f"{PREFIX}/init/error", self._route(self.init_error))
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        for sock in self._sockets:
            await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _route(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            instance = self._caller(request)
            if instance is None:
                return render_error(RuntimeApiError("No runtime instance is using this address"))
            try:
                return await handler(request, instance)
            except RuntimeApiError as error:
                return render_error(error)

        return route

    def _caller(self, request: web.Request) -> Instance | None:
        transport = request.transport
        if transport is None:
            return None
        slot = self._slot_by_port.get(transport.get_extra_info("sockname")[1])
        return None if slot is None else self._dispatcher.pool.instance_at(slot)

    async def next(self, request: web.Request, instance: Instance) -> web.StreamResponse:
        try:
            invocation = await self._dispatcher.next_invocation(instance)
        except InstanceStopped:
            return render_error(RuntimeApiError("The runtime instance is being stopped"))
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": invocation.deadline_ms,
            "Lambda-Runtime-Invoked-Function-Arn": invocation.invoked_arn,
            "Content-Type": invocation.content_type,
        }
        if invocation.trace_id:
            headers["Lambda-Runtime-Trace-Id"] = invocation.trace_id
        if invocation.client_context:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        if invocation.cognito_identity:
            headers["Lambda-Runtime-Cognito-Identity"] = invocation.cognito_identity
        if invocation.tenant_id:
            headers["Lambda-Runtime-Aws-Tenant-Id"] = invocation.tenant_id
        return web.Response(body=invocation.payload, headers=headers)

    async def response(self, request: web.Request, instance: Instance) -> web.StreamResponse:
        request_id = request.match_info["request_id"]
        size = request.content_length
        if size is not None and size > MAX_RESPONSE_PAYLOAD:
            return self._too_large(instance, request_id, size)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(instance, request_id, size or MAX_RESPONSE_PAYLOAD + 1)
        self._dispatcher.complete(instance, request_id, InvocationResult(body))
        return accepted()

    def _too_large(self, instance: Instance, request_id: str, size: int) -> web.Response:
        result = InvocationResult(response_too_large_error(size), "Function.ResponseSizeTooLarge")
        self._dispatcher.complete(instance, request_id, result, "error")
        return render_error(
            PayloadTooLarge(
                f"Exceeded maximum allowed payload size ({MAX_RESPONSE_PAYLOAD} bytes)."
            )
        )

    async def error(self, request: web.Request, instance: Instance) -> web.StreamResponse:
        request_id = request.match_info["request_id"]
        body = await request.read()
        error_type = request.headers.get(ERROR_TYPE_HEADER) or error_type_of(body)
        self._dispatcher.complete(instance, request_id, InvocationResult(body, error_type), "error")
        return accepted()

    async def init_error(self, request: web.Request, instance: Instance) -> web.StreamResponse:
        body = await request.read()
        error_type = request.headers.get(ERROR_TYPE_HEADER) or error_type_of(body)
        logger.warning("runtime init failed: %s", error_type)
        self._dispatcher.init_failed(instance, error_type, body)
        return accepted()
