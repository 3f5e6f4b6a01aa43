"""The Lambda Runtime API (2018-06-01) served to runtime processes.

There is one listener per pool slot, so the listener a request arrives on names the
instance that sent it. Each connection is checked once, before its first request is
served: only the processes of the slot's instance may use it (``peers``); anyone else
gets 403 and nothing else. Handlers are one per route; every misuse is answered with
Lambda's status code and ``{"errorMessage", "errorType"}`` body, rendered in one place.
What the handlers may ask of the daemon's core is the narrow ``RuntimeCore``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol, cast

from lambda_rapid.config import DaemonConfig
from lambda_rapid.errors import (
    MAX_RESPONSE_PAYLOAD,
    PayloadTooLarge,
    RuntimeApiError,
    error_member,
    function_error_body,
    response_too_large_error,
)
from lambda_rapid.extensions_api import ExtensionsApi
from lambda_rapid.httpserver import (
    BodySink,
    ConstantResponse,
    Deferred,
    HttpServer,
    Request,
    Response,
)
from lambda_rapid.instance import Instance
from lambda_rapid.invocation import Invocation, InvocationResult
from lambda_rapid.peers import PeerCheck, proc_available
from lambda_rapid.streaming import MAX_STREAMED_RESPONSE, STREAMING_MODE_HEADER, ResponseStream

logger = logging.getLogger(__name__)

PREFIX = "/2018-06-01/runtime"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
# Trailers of a streamed response that failed mid-stream (the body is base64).
ERROR_TYPE_TRAILER = "lambda-runtime-function-error-type"
ERROR_BODY_TRAILER = "lambda-runtime-function-error-body"
RESPONSE_PREFIX = PREFIX + "/invocation/"
RESPONSE_SUFFIX = "/response"
UNKNOWN_ERROR_TYPE = "Runtime.Unknown"

JSON = {"Content-Type": "application/json"}


class Forbidden(RuntimeApiError):
    status = 403
    error_type = "AccessDeniedException"


def render_error(error: RuntimeApiError) -> Response:
    return Response(error.status, error.body(), JSON)


REFUSAL = render_error(
    Forbidden("This Runtime API address serves only its own runtime instance")
).encode(keep_alive=False)
# A refused client's request head is read (so that it sees the answer) up to this size,
# and its connection is closed after this many seconds at most.
MAX_REFUSED_HEAD = 64 * 1024
REFUSED_LINGER = 10.0


def error_type_of(body: bytes) -> str:
    """The errorType of an error body, for runtimes that send no error-type header."""
    return error_member(body, "errorType") or UNKNOWN_ERROR_TYPE


ACCEPTED = ConstantResponse(202, b'{"status":"OK"}', JSON)


def accepted() -> Response:
    return ACCEPTED


class RuntimeCore(Protocol):
    """What the Runtime API may ask of the core: which instance a slot holds (and which
    processes are runtimes), and what an instance may do (next, answer, init error)."""

    def instance_at(self, slot: int) -> Instance | None: ...

    def pids(self) -> frozenset[int]: ...

    def next_invocation(self, instance: Instance) -> Invocation | asyncio.Future[Invocation]: ...

    def complete(
        self,
        instance: Instance,
        request_id: str,
        result: InvocationResult,
        status: str | None = None,
    ) -> None: ...

    def init_failed(self, instance: Instance, error_type: str, body: bytes) -> None: ...

    def begin_stream(
        self, instance: Instance, request_id: str, content_type: str
    ) -> ResponseStream: ...


class RuntimeApi:
    """Runtime API listeners (one per slot) and their route handlers."""

    def __init__(
        self,
        config: DaemonConfig,
        sockets: Sequence[socket.socket],
        core: RuntimeCore,
        extensions: ExtensionsApi | None = None,
    ) -> None:
        self._core = core
        self._extensions = extensions  # the Extensions API: every path outside PREFIX
        self._sockets = sockets
        self._servers: list[asyncio.Server] = []
        self._peers = self._peer_check(config.runtime_api_peer_check)

    @staticmethod
    def _peer_check(enabled: bool) -> PeerCheck | None:
        if not enabled:
            return None
        if not proc_available():
            logger.warning(
                "RUNTIME_API_PEER_CHECK: /proc is not mounted, so the Runtime API cannot "
                "tell an instance's processes from other local processes; it serves "
                "every connection (as with RUNTIME_API_PEER_CHECK=FALSE)"
            )
            return None
        return PeerCheck()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for slot, sock in enumerate(self._sockets):
            http = HttpServer(
                partial(self.handle, slot),
                internal_error,
                MAX_RESPONSE_PAYLOAD,
                stream_body=partial(self.stream_body, slot),
            )
            factory = partial(Guard, self, slot, http)
            self._servers.append(await loop.create_server(factory, sock=sock, backlog=1024))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        if self._peers is not None:
            self._peers.close()

    def owner(self, slot: int, transport: asyncio.BaseTransport) -> Instance | None:
        """The slot's instance if the client of `transport` may use it, else None."""
        instance = self._core.instance_at(slot)
        if self._peers is None:
            return instance
        mine = instance.roots() if instance is not None else []
        if instance is None or not mine:
            return None  # none of its processes exists yet: nobody can be it
        client = transport.get_extra_info("peername")
        server = transport.get_extra_info("sockname")
        roots = self._core.pids()
        # The runtime and each external extension lead their own sessions.
        if client and server and any(self._peers.belongs(client, server, r, roots) for r in mine):
            return instance
        logger.warning("refused a Runtime API client that is not the runtime's: %s", client)
        return None

    def instance_at(self, slot: int) -> Instance | None:
        return self._core.instance_at(slot)

    def handle(self, slot: int, request: Request) -> Response | Deferred | Awaitable[Response]:
        """Route one request from the instance in `slot`."""
        instance = self._core.instance_at(slot)
        if instance is None:
            return render_error(RuntimeApiError("No runtime instance is using this address"))
        path = request.path
        if not path.startswith(PREFIX):
            if self._extensions is not None:
                return self._extensions.handle(instance, request)
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

    def next(self, instance: Instance) -> Response | Deferred:
        invocation = self._core.next_invocation(instance)
        if isinstance(invocation, Invocation):
            return next_response(invocation)
        return Deferred(invocation, next_response, stopped)

    def stream_body(
        self, slot: int, request: Request, resume: Callable[[], None]
    ) -> BodySink | None:
        """A streamed response's body goes, chunk by chunk, to its caller's stream."""
        mode = request.headers.get(STREAMING_MODE_HEADER)
        if mode is None or mode.lower() != "streaming" or request.method != "POST":
            return None
        path = request.path
        if not (path.startswith(RESPONSE_PREFIX) and path.endswith(RESPONSE_SUFFIX)):
            return None
        request_id = path[len(RESPONSE_PREFIX) : -len(RESPONSE_SUFFIX)]
        instance = self._core.instance_at(slot)
        if instance is None:
            return None
        content_type = request.headers.get("content-type") or "application/octet-stream"
        try:
            stream = self._core.begin_stream(instance, request_id, content_type)
        except RuntimeApiError:
            return None  # the route answers the same refusal once the body is in
        return StreamSink(self._core, instance, request_id, stream, resume)

    def response(self, request: Request, instance: Instance, request_id: str) -> Response:
        if isinstance(request.sink, StreamSink):
            return request.sink.answer()
        if request.body_too_large:
            return self._too_large(instance, request_id, request.body_size)
        self._core.complete(instance, request_id, InvocationResult(request.body))
        return accepted()

    def _too_large(self, instance: Instance, request_id: str, size: int) -> Response:
        result = InvocationResult(response_too_large_error(size), "Function.ResponseSizeTooLarge")
        self._core.complete(instance, request_id, result, "error")
        return render_error(
            PayloadTooLarge(
                f"Exceeded maximum allowed payload size ({MAX_RESPONSE_PAYLOAD} bytes)."
            )
        )

    def error(self, request: Request, instance: Instance, request_id: str) -> Response:
        body = request.body
        error_type = request.headers.get(ERROR_TYPE_HEADER) or error_type_of(body)
        self._core.complete(instance, request_id, InvocationResult(body, error_type), "error")
        return accepted()

    def init_error(self, request: Request, instance: Instance) -> Response:
        body = request.body
        error_type = request.headers.get(ERROR_TYPE_HEADER) or error_type_of(body)
        logger.warning("runtime init failed: %s", error_type)
        self._core.init_failed(instance, error_type, body)
        return accepted()


class StreamSink:
    """Takes a streamed response from the runtime's connection into the caller's stream,
    and ends the invocation when the body ends (with the trailers' error, if any), grows
    past Lambda's limit, or is cut off."""

    __slots__ = ("_core", "_instance", "_request_id", "_stream", "_resume", "_size", "_ended")

    def __init__(
        self,
        core: RuntimeCore,
        instance: Instance,
        request_id: str,
        stream: ResponseStream,
        resume: Callable[[], None],
    ) -> None:
        self._core = core
        self._instance = instance
        self._request_id = request_id
        self._stream = stream
        self._resume = resume
        self._size = 0
        self._ended: InvocationResult | None = None

    def data(self, chunk: bytes) -> bool:
        if self._ended is not None:
            return True  # read and dropped
        self._size += len(chunk)
        if self._size > MAX_STREAMED_RESPONSE:
            self._end(streamed_too_large(self._size))
            return True
        return self._stream.push(chunk, self._resume)

    def end(self, request: Request) -> None:
        if self._ended is not None:
            return
        headers = request.headers
        error_type = headers.get(ERROR_TYPE_TRAILER)
        if error_type is None:
            self._end(InvocationResult(b""))
            return
        body = decode_error_body(headers.get(ERROR_BODY_TRAILER, ""))
        self._end(InvocationResult(body or function_error_body(error_type, ""), error_type))

    def abort(self) -> None:
        if self._ended is None:
            message = "The runtime's connection closed before its streamed response ended"
            body = function_error_body("Runtime.TruncatedResponse", message)
            self._end(InvocationResult(body, "Runtime.TruncatedResponse"))

    def _end(self, result: InvocationResult) -> None:
        self._ended = result
        status = None if result.error_type is None else "error"
        # Refused when the invocation ended already (timed out, or its runtime exited).
        with contextlib.suppress(RuntimeApiError):
            self._core.complete(self._instance, self._request_id, result, status)

    def answer(self) -> Response:
        """The runtime's answer once its body is in."""
        ended = self._ended
        if ended is not None and ended.error_type == "Function.ResponseSizeTooLarge":
            message = f"Exceeded maximum allowed payload size ({MAX_STREAMED_RESPONSE} bytes)."
            return render_error(PayloadTooLarge(message))
        return accepted()


def streamed_too_large(size: int) -> InvocationResult:
    body = function_error_body(
        "Function.ResponseSizeTooLarge",
        f"Response payload size exceeded maximum allowed payload size ({MAX_STREAMED_RESPONSE}"
        " bytes).",
    )
    return InvocationResult(body, "Function.ResponseSizeTooLarge")


def decode_error_body(value: str) -> bytes:
    """The error body of a mid-stream failure (base64 in its trailer; else as sent)."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value.encode("latin-1", "replace")


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


class Guard(asyncio.Protocol):
    """Stands in front of one Runtime API connection.

    When the connection is accepted its client is checked: an instance's own process is
    handed to the HTTP protocol, anyone else gets a 403 after its request head, and
    nothing more. Bytes that arrive once the slot holds another instance close it.
    """

    def __init__(self, api: RuntimeApi, slot: int, http: HttpServer) -> None:
        self._api = api
        self._slot = slot
        self._http = http
        self._inner: asyncio.Protocol | None = None
        self._owner: Instance | None = None
        self._transport: asyncio.Transport | None = None
        self._head: bytes | None = b""
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        self._owner = self._api.owner(self._slot, transport)
        if self._owner is None:
            loop = asyncio.get_running_loop()
            self._linger = loop.call_later(REFUSED_LINGER, self._transport.abort)
            return
        # The HTTP server's own protocol, with its limits and connection count.
        self._inner = self._http._factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            self._refuse(data)
        elif self._owner is self._api.instance_at(self._slot):
            inner.data_received(data)
        elif self._transport is not None:
            self._transport.abort()

    def _refuse(self, data: bytes) -> None:
        """Answer 403 once the request head is in; drop everything else."""
        if self._head is None or self._transport is None:
            return
        self._head += data
        if b"\r\n\r\n" in self._head or len(self._head) > MAX_REFUSED_HEAD:
            self._head = None
            self._transport.write(REFUSAL)
            if self._transport.can_write_eof():
                self._transport.write_eof()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def stopped(error: BaseException) -> Response:
    """A pending /next whose instance is being stopped."""
    return render_error(RuntimeApiError("The runtime instance is being stopped"))


def internal_error(error: Exception) -> Response:
    return render_error(RuntimeApiError("Internal Server Error"))


def NOT_FOUND() -> Response:  # noqa: N802 - reads as a constant answer
    return Response(404, b'{"errorMessage":"Not found","errorType":"NotFound"}', JSON)
