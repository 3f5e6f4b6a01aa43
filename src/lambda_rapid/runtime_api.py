"""The Lambda Runtime API (2018-06-01) served to runtime processes.

There is one listener per pool slot, so the listener a request arrives on names the
instance that sent it. Handlers are one per route; every misuse is answered with
Lambda's status code and ``{"errorMessage", "errorType"}`` body, rendered in one place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable
from functools import partial

from lambda_rapid.config import DaemonConfig
from lambda_rapid.dispatcher import Dispatcher
from lambda_rapid.errors import (
    MAX_RESPONSE_PAYLOAD,
    PayloadTooLarge,
    RuntimeApiError,
    response_too_large_error,
)
from lambda_rapid.httpserver import HttpServer, Request, Response
from lambda_rapid.instance import Instance
from lambda_rapid.invocation import Invocation, InvocationResult
from lambda_rapid.sockets import listen_socket

logger = logging.getLogger(__name__)

PREFIX = "/2018-06-01/runtime"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
UNKNOWN_ERROR_TYPE = "Runtime.Unknown"

JSON = {"Content-Type": "application/json"}


def render_error(error: RuntimeApiError) -> Response:
    return Response(error.status, error.body(), JSON)


def error_type_of(body: bytes) -> str:
    """The errorType of an error body, for runtimes that send no error-type header."""
    try:
        error_type = json.loads(body).get("errorType")
    except (ValueError, AttributeError):
        return UNKNOWN_ERROR_TYPE
    return error_type if isinstance(error_type, str) and error_type else UNKNOWN_ERROR_TYPE


def accepted() -> Response:
    return Response(202, b'{"status":"OK"}', JSON)


class RuntimeApi:
    """Runtime API listeners (one per slot) and their route handlers."""

    def __init__(self, config: DaemonConfig, dispatcher: Dispatcher) -> None:
        self._config = config
        self._dispatcher = dispatcher
        self._sockets = [self._bind(slot) for slot in range(config.max_concurrency)]
        self._servers: list[HttpServer] = []

    def _bind(self, slot: int) -> socket.socket:
        # The first slot is where Lambda's runtimes look (9001); the others take free ports.
        port = self._config.runtime_api_port if slot == 0 else 0
        return listen_socket(
            self._config.runtime_api_host, port, "RUNTIME_API_HOST:RUNTIME_API_PORT"
        )

    @property
    def addresses(self) -> list[str]:
        """`host:port` of each slot, as runtimes receive it in AWS_LAMBDA_RUNTIME_API."""
        result = []
        for sock in self._sockets:
            host, port = sock.getsockname()[:2]
            result.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return result

    async def start(self) -> None:
        for slot, sock in enumerate(self._sockets):
            server = HttpServer(partial(self.handle, slot), internal_error, MAX_RESPONSE_PAYLOAD)
            await server.serve_socket(sock)
            self._servers.append(server)

    async def close(self) -> None:
        for server in self._servers:
            server.close()

    def handle(self, slot: int, request: Request) -> Response | Awaitable[Response]:
        """Route one request from the instance in `slot`."""
        instance = self._dispatcher.pool.instance_at(slot)
        if instance is None:
            return render_error(RuntimeApiError("No runtime instance is using this address"))
        path = request.path
        if not path.startswith(PREFIX):
            return NOT_FOUND()
        route = path[len(PREFIX) :]
        try:
            if route == "/invocation/next" and request.method == "GET":
                return self.next(instance)
            if route.startswith("/invocation/") and request.method == "POST":
                request_id, _, action = route[len("/invocation/") :].partition("/")
                if action == "response":
                    return self.response(request, instance, request_id)
                if action == "error":
                    return self.error(request, instance, request_id)
            if route == "/init/error" and request.method == "POST":
                return self.init_error(request, instance)
        except RuntimeApiError as error:
            return render_error(error)
        return NOT_FOUND()

    def next(self, instance: Instance) -> Response | Awaitable[Response]:
        invocation = self._dispatcher.next_invocation(instance)
        if isinstance(invocation, Invocation):
            return next_response(invocation)
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def on_assigned(done: asyncio.Future[Invocation]) -> None:
            if answer.done():
                return
            if done.cancelled() or done.exception() is not None:
                answer.set_result(
                    render_error(RuntimeApiError("The runtime instance is being stopped"))
                )
            else:
                answer.set_result(next_response(done.result()))

        invocation.add_done_callback(on_assigned)
        return answer

    def response(self, request: Request, instance: Instance, request_id: str) -> Response:
        if request.body_too_large:
            return self._too_large(instance, request_id, request.body_size)
        self._dispatcher.complete(instance, request_id, InvocationResult(request.body))
        return accepted()

    def _too_large(self, instance: Instance, request_id: str, size: int) -> Response:
        result = InvocationResult(response_too_large_error(size), "Function.ResponseSizeTooLarge")
        self._dispatcher.complete(instance, request_id, result, "error")
        return render_error(
            PayloadTooLarge(
                f"Exceeded maximum allowed payload size ({MAX_RESPONSE_PAYLOAD} bytes)."
            )
        )

    def error(self, request: Request, instance: Instance, request_id: str) -> Response:
        body = request.body
        error_type = request.headers.get(ERROR_TYPE_HEADER) or error_type_of(body)
        self._dispatcher.complete(instance, request_id, InvocationResult(body, error_type), "error")
        return accepted()

    def init_error(self, request: Request, instance: Instance) -> Response:
        body = request.body
        error_type = request.headers.get(ERROR_TYPE_HEADER) or error_type_of(body)
        logger.warning("runtime init failed: %s", error_type)
        self._dispatcher.init_failed(instance, error_type, body)
        return accepted()


def next_response(invocation: Invocation) -> Response:
    """The /next answer: the payload and the Lambda-Runtime-* headers."""
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
    return Response(200, invocation.payload, headers)


def internal_error(error: Exception) -> Response:
    return render_error(RuntimeApiError("Internal Server Error"))


def NOT_FOUND() -> Response:  # noqa: N802 - reads as a constant answer
    return Response(404, b'{"errorMessage":"Not found","errorType":"NotFound"}', JSON)
