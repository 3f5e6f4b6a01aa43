"""The Lambda Invoke API (2015-03-31) over HTTP, with the service's answers.

``InvokeApi`` turns ``POST /2015-03-31/functions/{FunctionName}/invocations`` into an
``Invocation`` (checking the invocation type, log type, payload and client context the
way Lambda does) and renders what comes back. Where the invocation goes is a
``Backend``: ``LocalBackend`` (this module) runs it on the daemon's own dispatcher;
the Lambda Server's backend sends it over AMQP. Neither knows about processes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from lambda_rapid.config import DaemonConfig
from lambda_rapid.dispatcher import Dispatcher
from lambda_rapid.errors import (
    MAX_EVENT_PAYLOAD,
    MAX_REQUEST_PAYLOAD,
    BadRequest,
    ExpectationFailed,
    HeaderFieldsTooLarge,
    InvalidParameterValue,
    InvokeError,
    MethodNotAllowed,
    RequestTimeout,
    RequestTooLarge,
    ResourceNotFound,
    ServiceException,
    ServiceUnavailable,
    TooManyRequests,
    UnknownOperation,
    error_member,
)
from lambda_rapid.eventstream import CHUNK_HEADERS, invoke_complete, message, payload_chunks
from lambda_rapid.futures import chain
from lambda_rapid.httpserver import (
    Deferred,
    HttpServer,
    Limits,
    Request,
    Response,
    StreamedResponse,
)
from lambda_rapid.invocation import (
    Invocation,
    InvocationResult,
    check_payload,
    check_tenant_id,
    check_trace_id,
    decode_client_context,
    decode_cognito_identity,
    new_request_id,
    new_trace_id,
)
from lambda_rapid.sockets import listen_socket
from lambda_rapid.streaming import StreamedResult

__all__ = [
    "Backend",
    "FunctionResolver",
    "InvokeApi",
    "LocalBackend",
    "Target",
    "decode_client_context",
]

logger = logging.getLogger(__name__)

INVOKE_PREFIX = "/2015-03-31/functions/"
INVOKE_SUFFIX = "/invocations"
GENERIC_NAME = "function"  # the emulator's fixed name, accepted for compatibility
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
# InvokeWithResponseStream, answered with eventstream frames.
STREAM_PREFIX = "/2021-11-15/functions/"
STREAM_SUFFIX = "/response-streaming-invocations"
STREAM_INVOCATION_TYPES = ("RequestResponse", "DryRun")
EVENTSTREAM = "application/vnd.amazon.eventstream"
EMPTY_EVENT = b"{}"
KEEP_ALIVE_SECONDS = 75.0  # idle client connections are closed after this, as aiohttp does
# What one client may make the Invoke API hold (it listens on every interface by default).
LIMITS = Limits(
    max_body=MAX_REQUEST_PAYLOAD + 1,  # the size check is ours, to answer as AWS does
    max_head=64 * 1024,
    keep_alive=KEEP_ALIVE_SECONDS,
    request_timeout=30.0,  # time to send one request, 6 MB included
    max_connections=1000,
    max_drain=2 * MAX_REQUEST_PAYLOAD,
)

REFUSALS: dict[int, InvokeError] = {
    400: BadRequest("The request is not valid HTTP/1.1"),
    408: RequestTimeout("The request was not received in time"),
    417: ExpectationFailed("Only Expect: 100-continue is supported"),
    431: HeaderFieldsTooLarge(
        f"The request line and headers must be at most {LIMITS.max_head} bytes"
    ),
    503: ServiceUnavailable("The request was cancelled"),
}


def refusal(status: int) -> Response:
    """The HTTP server's own refusals, in the Invoke API's error shape."""
    return render_error(REFUSALS.get(status) or ServiceException("An internal error occurred"))


def render_error(error: InvokeError, request_id: str | None = None) -> Response:
    """One AWS error answer: status, x-amzn-ErrorType, JSON body."""
    return Response(
        error.status,
        error.body(),
        {
            "x-amzn-ErrorType": error.code,
            "x-amzn-RequestId": request_id or new_request_id(),
            "Content-Type": "application/json",
        },
    )


@dataclass(frozen=True, slots=True)
class Target:
    """What a FunctionName (+ Qualifier) resolved to."""

    function_name: str
    qualifier: str | None
    invoked_arn: str


def split_function_name(function_name: str) -> tuple[str, str | None, str | None, str | None]:
    """FunctionName in any documented form → (name, qualifier, region, account)."""
    parts = function_name.split(":")
    if parts[0] == "arn":
        if len(parts) not in (7, 8) or parts[2] != "lambda" or parts[5] != "function":
            raise ResourceNotFound(f"Function not found: {function_name}")
        return parts[6], (parts[7] if len(parts) == 8 else None), parts[3], parts[4]
    if len(parts) in (3, 4) and parts[1] == "function":
        return parts[2], (parts[3] if len(parts) == 4 else None), None, parts[0]
    if len(parts) == 2 and len(parts[0]) == 12 and parts[0].isdigit():
        return parts[1], None, None, parts[0]
    if len(parts) == 2:
        return parts[0], parts[1], None, None
    if len(parts) == 1 and parts[0]:
        return parts[0], None, None, None
    raise ResourceNotFound(f"Function not found: {function_name}")


def merge_qualifier(from_name: str | None, from_query: str | None) -> str | None:
    if from_name and from_query and from_name != from_query:
        raise InvalidParameterValue(
            "The derived qualifier from the function name does not match the specified qualifier."
        )
    return from_name or from_query


class FunctionResolver:
    """Resolves FunctionName forms against the one function a daemon runs."""

    def __init__(self, config: DaemonConfig) -> None:
        self._config = config
        self._names = {config.function_name, GENERIC_NAME}
        self._qualifiers = {None, "$LATEST", config.function_version}

    def resolve(self, function_name: str, qualifier_param: str | None) -> Target:
        name, qualifier, region, account = split_function_name(function_name)
        qualifier = merge_qualifier(qualifier, qualifier_param)
        config = self._config
        suffix = f":{qualifier}" if qualifier else ""
        if (
            name not in self._names
            or qualifier not in self._qualifiers
            or region not in (None, config.region)
            or account not in (None, config.account_id)
        ):
            arn = (
                f"arn:aws:lambda:{region or config.region}:{account or config.account_id}"
                f":function:{name}{suffix}"
            )
            raise ResourceNotFound(f"Function not found: {arn}")
        return Target(config.function_name, qualifier, config.function_arn + suffix)


class Backend(Protocol):
    """Where the Invoke API sends invocations."""

    def resolve(self, function_name: str, qualifier: str | None) -> Target: ...

    def invoke(self, target: Target, invocation: Invocation) -> Awaitable[InvocationResult]: ...

    def enqueue(self, target: Target, invocation: Invocation) -> Awaitable[None]: ...

    def dry_run(self, target: Target) -> Awaitable[None]: ...


EventSink = Callable[[Invocation], Awaitable[None]]


class LocalBackend:
    """Runs invocations on this daemon's dispatcher.

    Events wait in the dispatcher's queue (which refuses them beyond a bound), or, with a
    broker, are handed to `durable_events`, which persists them on the function's queue
    before the caller gets 202.
    """

    def __init__(
        self, config: DaemonConfig, dispatcher: Dispatcher, durable_events: EventSink | None = None
    ) -> None:
        self._resolver = FunctionResolver(config)
        self._durable_events = durable_events
        self._dispatcher = dispatcher

    def resolve(self, function_name: str, qualifier: str | None) -> Target:
        return self._resolver.resolve(function_name, qualifier)

    def invoke(self, target: Target, invocation: Invocation) -> Awaitable[InvocationResult]:
        # A future of the caller's own, chained by callback: no task on the hot path.
        return self._dispatcher.submit(invocation)

    def invoke_stream(self, target: Target, invocation: Invocation) -> Awaitable[InvocationResult]:
        """As `invoke`, but a streamed response comes as a ``StreamedResult`` at once."""
        return self._dispatcher.submit(invocation, reads_streams=True)

    async def enqueue(self, target: Target, invocation: Invocation) -> None:
        if self._durable_events is not None:
            await self._durable_events(invocation)
        elif not self._dispatcher.submit_event(invocation):
            raise TooManyRequests("Rate Exceeded.")

    async def dry_run(self, target: Target) -> None:
        return None

    async def close(self, grace: float) -> None:
        """Nothing of its own: queued events are the dispatcher's, drained with the rest."""


class InvokeApi:
    """The HTTP front door: parses requests, asks the backend, renders answers."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        backend: Backend,
        watchdog: Watchdog | None = None,
        listening: socket.socket | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._backend = backend
        self._watchdog = watchdog
        self._listening = listening
        self._accepting = True
        # The size check is ours (to answer as AWS does), so the server's cap is above it.
        self._server = HttpServer(
            self.handle, internal_error, LIMITS.max_body, limits=LIMITS, refuse=refusal
        )

    async def start(self) -> None:
        listening = self._listening or listen_socket(self._host, self._port, "INVOKE_API_HOST:PORT")
        await self._server.serve_socket(listening)

    def stop_accepting(self) -> None:
        self._accepting = False

    def observe_answers(self, answered: Callable[[int], None]) -> None:
        """Have `answered` told the status of every answer (metrics)."""
        self._server.observe_answers(answered)

    async def close(self) -> None:
        self._server.close()

    def handle(self, request: Request) -> Response | Deferred | Awaitable[Response]:
        """Route one request: the invoke path, or AWS's answer for anything else."""
        path = request.path
        if self._watchdog is not None and (path == "/" or path.startswith("/_/")):
            return self._watchdog_route(request, self._watchdog)
        if not (path.startswith(INVOKE_PREFIX) and path.endswith(INVOKE_SUFFIX)):
            if path.startswith(STREAM_PREFIX) and path.endswith(STREAM_SUFFIX):
                return self._stream_route(request)
            error: InvokeError = UnknownOperation(f"Unknown operation: {request.method} {path}")
            return render_error(error)
        request_id = new_request_id()
        if request.method != "POST":
            error = MethodNotAllowed(f"Method {request.method} is not allowed for Invoke")
            return render_error(error, request_id)
        function_name = unquoted(path[len(INVOKE_PREFIX) : -len(INVOKE_SUFFIX)])
        try:
            if not self._accepting:
                raise ServiceUnavailable("The function is shutting down")
            return self._invoke(request, request_id, function_name)
        except InvokeError as error:
            return render_error(error, request_id)

    def _stream_route(self, request: Request) -> Response | Deferred | Awaitable[Response]:
        """InvokeWithResponseStream: the same checks as Invoke, the answer as events."""
        path = request.path
        request_id = new_request_id()
        if request.method != "POST":
            error = MethodNotAllowed(f"Method {request.method} is not allowed for Invoke")
            return render_error(error, request_id)
        function_name = unquoted(path[len(STREAM_PREFIX) : -len(STREAM_SUFFIX)])
        try:
            if not self._accepting:
                raise ServiceUnavailable("The function is shutting down")
            return self._invoke_stream(request, request_id, function_name)
        except InvokeError as error:
            return render_error(error, request_id)

    def _invoke_stream(
        self, request: Request, request_id: str, function_name: str
    ) -> Response | Deferred | Awaitable[Response]:
        parsed = self._parse(request, request_id, function_name, STREAM_INVOCATION_TYPES)
        if not isinstance(parsed, tuple):  # a DryRun, answered
            return parsed
        target, invocation, _ = parsed
        # A backend that cannot stream (lambda-server's, over AMQP) answers buffered: the
        # whole body in one PayloadChunk.
        invoke_stream = getattr(self._backend, "invoke_stream", self._backend.invoke)
        return then(
            invoke_stream(target, invocation), lambda result: render_stream(request_id, result)
        )

    def _watchdog_route(
        self, request: Request, watchdog: Watchdog
    ) -> Response | Deferred | Awaitable[Response]:
        """OpenFaaS watchdog routes: health, readiness (429 when full), invoke on /."""
        if request.path == "/_/health":
            return Response(200, b"OK")
        if request.path == "/_/ready":
            return Response(200, b"OK") if watchdog.ready() else Response(429, b"Busy")
        if request.path != "/":
            return render_error(UnknownOperation(f"Unknown operation: {request.method} /_/"))
        request_id = new_request_id()
        try:
            if not self._accepting:
                raise ServiceUnavailable("The function is shutting down")
            answer = self._invoke(request, request_id, watchdog.function_name)
        except InvokeError as error:
            return render_error(error, request_id)
        if isinstance(answer, Response):
            return watchdog_status(answer)
        return then_status(answer)

    def _invoke(
        self, request: Request, request_id: str, function_name: str
    ) -> Response | Deferred | Awaitable[Response]:
        parsed = self._parse(request, request_id, function_name, INVOCATION_TYPES)
        if not isinstance(parsed, tuple):  # a DryRun, answered
            return parsed
        target, invocation, invocation_type = parsed
        if invocation_type == "Event":
            return then(
                self._backend.enqueue(target, invocation), lambda _: accepted(202, request_id)
            )
        return then(
            self._backend.invoke(target, invocation),
            lambda result: render_result(request_id, result),
        )

    def _parse(
        self,
        request: Request,
        request_id: str,
        function_name: str,
        invocation_types: tuple[str, ...],
    ) -> tuple[Target, Invocation, str] | Response | Deferred | asyncio.Future[Response]:
        """The checks Invoke and InvokeWithResponseStream share; a DryRun is answered here."""
        headers = request.headers
        invocation_type = headers.get("x-amz-invocation-type", "RequestResponse")
        if invocation_type not in invocation_types:
            raise InvalidParameterValue(
                f"Invalid InvocationType: {invocation_type!r}; expected one of "
                + ", ".join(invocation_types)
            )
        log_type = headers.get("x-amz-log-type", "None")
        if log_type not in ("None", "Tail"):
            raise InvalidParameterValue(f"Invalid LogType: {log_type!r}; expected None or Tail")
        target = self._backend.resolve(function_name, qualifier_of(request.query))
        limit = MAX_EVENT_PAYLOAD if invocation_type == "Event" else MAX_REQUEST_PAYLOAD
        payload = checked_payload(request, limit)
        client_context = decode_client_context(headers.get("x-amz-client-context"))
        if invocation_type == "DryRun":
            return then(self._backend.dry_run(target), lambda _: accepted(204, request_id))
        invocation = Invocation(
            request_id=request_id,
            payload=payload,
            timeout=self._timeout,
            invoked_arn=target.invoked_arn,
            trace_id=check_trace_id(headers.get("x-amzn-trace-id")) or new_trace_id(),
            client_context=client_context,
            cognito_identity=decode_cognito_identity(headers.get("x-amz-cognito-identity")),
            tenant_id=check_tenant_id(headers.get("x-amz-tenant-id")),
            want_log_tail=log_type == "Tail" and invocation_type == "RequestResponse",
        )
        return target, invocation, invocation_type


def unquoted(name: str) -> str:
    """A path segment percent-decoded (most names have nothing to decode)."""
    if "%" not in name:
        return name
    from urllib.parse import unquote  # rare: kept off the start-up path

    return unquote(name)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Watchdog:
    """What the OpenFaaS routes need: the function's name, and whether it can start one now."""

    function_name: str
    ready: Callable[[], bool]


def watchdog_status(response: Response) -> Response:
    """OpenFaaS callers learn of a failed function from the status code."""
    if response.headers and "X-Amz-Function-Error" in response.headers:
        response.status = 500
    return response


def then(
    awaitable: Awaitable[T], render: Callable[[T], Response]
) -> Deferred | asyncio.Future[Response]:
    """The response rendered from `awaitable`'s result, or from the InvokeError it raised.

    A future (the dispatcher's) is answered from its own callback; anything else runs as
    a task.
    """
    if isinstance(awaitable, asyncio.Future):
        return Deferred(awaitable, render, render_invoke_error)
    return chain(asyncio.ensure_future(awaitable), render, render_invoke_error)


def then_status(answer: Deferred | Awaitable[Response]) -> Deferred | Awaitable[Response]:
    """`answer` with the OpenFaaS status applied once it comes."""
    if isinstance(answer, Deferred):
        render, fail = answer.render, answer.fail
        return Deferred(
            answer.future,
            lambda result: watchdog_status(render(result)),
            lambda error: watchdog_status(fail(error)),
        )
    return then(answer, watchdog_status)


def render_invoke_error(error: BaseException) -> Response:
    """An InvokeError's answer; any other exception is re-raised."""
    if isinstance(error, InvokeError):
        return render_error(error)
    raise error


def accepted(status: int, request_id: str) -> Response:
    return Response(status, b"", {"x-amzn-RequestId": request_id})


def internal_error(error: Exception) -> Response:
    return render_error(ServiceException("An internal error occurred"))


def qualifier_of(query: str) -> str | None:
    if not query:
        return None
    from urllib.parse import parse_qs  # rare: kept off the start-up path

    values = parse_qs(query).get("Qualifier")
    return values[-1] if values else None


def render_result(request_id: str, result: InvocationResult) -> Response:
    headers = {
        "x-amzn-RequestId": request_id,
        "X-Amz-Executed-Version": result.executed_version,
        "Content-Type": "application/json",
    }
    if result.error_type is not None:
        headers["X-Amz-Function-Error"] = "Unhandled"
    if result.log_tail is not None:
        headers["X-Amz-Log-Result"] = base64.b64encode(result.log_tail).decode()
    return Response(200, result.body, headers)


def render_stream(request_id: str, result: InvocationResult) -> Response:
    """InvokeWithResponseStream's answer: 200 and the events (even when the function failed)."""
    headers = {
        "x-amzn-RequestId": request_id,
        "X-Amz-Executed-Version": result.executed_version,
        "Content-Type": EVENTSTREAM,
    }
    return StreamedResponse(200, events(result), headers)


async def events(result: InvocationResult) -> AsyncGenerator[bytes, None]:
    """PayloadChunk events as the body comes, then InvokeComplete."""
    stream = result.stream if isinstance(result, StreamedResult) else None
    if stream is None:
        if result.error_type is None:
            for frame in payload_chunks(result.body):
                yield frame
        yield complete_event(result)
        return
    try:
        async for chunk in stream.chunks():
            yield message(CHUNK_HEADERS, chunk)
    finally:
        if stream.result is None:
            stream.detach()  # the client left first
    assert stream.result is not None
    yield complete_event(stream.result)


def complete_event(result: InvocationResult) -> bytes:
    log = None if result.log_tail is None else base64.b64encode(result.log_tail).decode()
    if result.error_type is None:
        return invoke_complete(log_result=log)
    details = error_member(result.body, "errorMessage") or result.body.decode("utf-8", "replace")
    return invoke_complete(result.error_type, details, log)


def checked_payload(request: Request, limit: int) -> bytes:
    """The request body, checked as Lambda checks it (size, JSON)."""
    if request.body_too_large or request.body_size > limit:
        raise RequestTooLarge(
            f"Request must be smaller than {limit} bytes for the Invoke operation"
        )
    check_payload(request.body, limit)
    # Lambda hands a function invoked without a payload the empty object.
    return request.body or EMPTY_EVENT
