"""The HTTP front door: every request becomes one invocation with a proxy event.

``Gateway`` listens on GATEWAY_PORT, turns each request into one invocation whose payload
is an API Gateway proxy event (format 1.0 or 2.0, built by ``proxy_events``) and answers
with the function's proxy response as API Gateway does: 502 for a malformed response or
a failed function, 504 when GATEWAY_TIMEOUT passes first. It runs on ``httpserver``
with the Invoke API's limits (``GATEWAY_LIMITS``), its refusals in API Gateway's shape.
``Router`` decides which function and route a path belongs to: the daemon's own
function; in the Lambda Server the first path segment, or the route table when its
routes name functions.

With GATEWAY_INVOKE_MODE=RESPONSE_STREAM it answers as a function URL whose InvokeMode is
RESPONSE_STREAM: the function's streamed response goes to the client with chunked
encoding as it comes, its ``http-integration-response`` prelude (status code, headers,
cookies, then eight NUL bytes) giving the answer's head; a stream without the prelude is
answered 200 with the runtime's content type. A failure before the first byte answers
502; a failure mid-stream cuts the answer (no last chunk), so the client sees it
incomplete. A response that was not streamed is answered as in BUFFERED mode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import socket
import string
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

from lambda_rapid.config import ConfigError, DaemonConfig, ServerConfig
from lambda_rapid.errors import MAX_REQUEST_PAYLOAD, InvokeError
from lambda_rapid.httpserver import (
    CutStream,
    FullRequest,
    HeaderList,
    HttpServer,
    Limits,
    ProxyProtocol,
    Request,
    Response,
    StreamedResponse,
)
from lambda_rapid.invocation import (
    Invocation,
    InvocationResult,
    new_request_id,
    new_trace_id,
)
from lambda_rapid.invoke_api import LIMITS, Backend
from lambda_rapid.proxy_events import (
    ApiContext,
    Headers,
    HttpRequest,
    MalformedResponse,
    RouteMatch,
    build_event,
    map_result,
    proxy_match,
)
from lambda_rapid.routes import GatewayRoute
from lambda_rapid.sockets import listen_socket
from lambda_rapid.streaming import ResponseStream, StreamedResult

logger = logging.getLogger(__name__)

MAX_GATEWAY_PAYLOAD = 10 * 1024 * 1024  # API Gateway's own request limit
DEFAULT_STAGE = "$default"
# The Invoke API's limits (head size, time to send a request, idle time, connections),
# with API Gateway's body size.
GATEWAY_LIMITS = dataclasses.replace(
    LIMITS, max_body=MAX_GATEWAY_PAYLOAD, max_drain=2 * MAX_GATEWAY_PAYLOAD
)


# -- routing ------------------------------------------------------------------------------


def _path_segments(raw_path: str) -> list[str]:
    return [segment for segment in raw_path.split("/") if segment]


class _CompiledRoute:
    def __init__(self, route: GatewayRoute) -> None:
        self.route = route
        self.template = _path_segments(route.path)
        params = [s for s in self.template if s.startswith("{")]
        greedy = bool(params) and params[-1].endswith("+}")
        # API Gateway prefers literal segments over parameters over a greedy tail.
        self.rank = (greedy, len(params), -len(self.template), route.method == "ANY")

    def match(self, method: str, segments: list[str]) -> RouteMatch | None:
        if self.route.method not in ("ANY", method):
            return None
        params: dict[str, str] = {}
        for index, part in enumerate(self.template):
            if part.endswith("+}"):
                if index >= len(segments):
                    return None
                params[part[1:-2]] = urllib.parse.unquote("/".join(segments[index:]))
                return self._found(params)
            if index >= len(segments):
                return None
            value = urllib.parse.unquote(segments[index])
            if part.startswith("{"):
                params[part[1:-1]] = value
            elif part != value:
                return None
        return self._found(params) if len(segments) == len(self.template) else None

    def _found(self, params: dict[str, str]) -> RouteMatch:
        route = self.route
        return RouteMatch(route.path, route.key, params or None, route.function)


class RouteTable:
    """GATEWAY_ROUTES, most specific route first."""

    def __init__(self, routes: Sequence[GatewayRoute]) -> None:
        compiled = [_CompiledRoute(route) for route in routes]
        self._routes = sorted(compiled, key=lambda c: c.rank)

    def match(self, method: str, raw_path: str) -> RouteMatch | None:
        segments = _path_segments(raw_path)
        for route in self._routes:
            found = route.match(method, segments)
            if found is not None:
                return found
        return None


@dataclass(frozen=True, slots=True)
class Located:
    function: str
    raw_path: str
    match: RouteMatch


class Router:
    """Picks the function and route of a request path.

    With `function` set every request goes to it; otherwise the route table picks when
    its routes name functions, else the first path segment names the function.
    """

    def __init__(
        self, stage: str | None, routes: Sequence[GatewayRoute] | None, function: str | None
    ) -> None:
        self._stage = stage
        self._function = function
        self._table = RouteTable(routes) if routes else None
        named = [route for route in routes or () if route.function]
        self._by_route = function is None and bool(named)
        if self._by_route and len(named) != len(routes or ()):
            raise ConfigError(
                "invalid GATEWAY_ROUTES: when one route names its function "
                "(GET /path=function), every route must"
            )

    def locate(self, method: str, raw_path: str) -> Located | None:
        path = self.strip_stage(raw_path)
        if path is None:
            return None
        if self._by_route:
            assert self._table is not None
            match = self._table.match(method, path)
            if match is None or match.function is None:
                return None
            return Located(match.function, path, match)
        function = self._function
        if function is None:
            function, path = _first_segment(path)
            if not function:
                return None
        match = self._table.match(method, path) if self._table else proxy_match(path)
        return None if match is None else Located(function, path, match)

    def strip_stage(self, raw_path: str) -> str | None:
        if self._stage is None:
            return raw_path
        prefix = "/" + self._stage
        if raw_path == prefix:
            return "/"
        return raw_path[len(prefix) :] if raw_path.startswith(prefix + "/") else None

    @property
    def stage_prefix(self) -> str:
        return "" if self._stage is None else "/" + self._stage


def _first_segment(raw_path: str) -> tuple[str, str]:
    first, _, rest = raw_path.lstrip("/").partition("/")
    return urllib.parse.unquote(first), "/" + rest


# -- the server ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    host: str
    port: int
    event_format: str
    stage: str | None
    routes: tuple[GatewayRoute, ...] | None
    timeout: float
    account_id: str
    streams: bool = False  # GATEWAY_INVOKE_MODE=RESPONSE_STREAM


def message_response(status: int, message: str, headers: Headers = ()) -> Response:
    body = json.dumps({"message": message}).encode()
    return Response(status, body, HeaderList([*headers, ("Content-Type", "application/json")]))


def refusal(status: int) -> Response:
    """The HTTP server's own refusals (400, 408, 413, 417, 431, 503) as API Gateway words them."""
    return message_response(status, HTTPStatus(status).phrase)


def internal_error(error: Exception) -> Response:
    return message_response(500, "Internal server error")


def wire_headers(headers: Headers) -> HeaderList:
    """Answer headers; non-ASCII text goes on the wire as UTF-8."""
    return HeaderList([(_wire_text(name), _wire_text(value)) for name, value in headers])


def _wire_text(text: str) -> str:
    if text.isascii():
        return text
    try:
        # Bytes of a request header that were not UTF-8 go back as they came.
        encoded = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        encoded = text.encode("utf-8", "replace")
    return encoded.decode("latin-1")  # the server writes headers as latin-1: byte for byte


def gateway_for(
    config: DaemonConfig | ServerConfig, backend: Backend, function: str | None
) -> Gateway | None:
    """The gateway a config asks for (None when GATEWAY_PORT is unset)."""
    gateway = config.gateway
    if gateway is None:
        return None
    options = GatewayOptions(
        config.invoke_api_host,
        gateway.port,
        gateway.event_format,
        gateway.stage,
        gateway.routes,
        gateway.timeout,
        config.account_id,
        gateway.invoke_mode == "RESPONSE_STREAM",
    )
    return Gateway(options, backend, function, config.timeout)


class Gateway:
    """An HTTP server on its own port: any method, any path → one invocation."""

    def __init__(
        self,
        options: GatewayOptions,
        backend: Backend,
        function: str | None,
        invocation_timeout: float,
        limits: Limits = GATEWAY_LIMITS,
    ) -> None:
        self._options = options
        self._backend = backend
        self._router = Router(options.stage, options.routes, function)
        self._invocation_timeout = invocation_timeout
        self._api_id = "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(10)
        )
        self._accepting = True
        self._calls: set[asyncio.Future[InvocationResult]] = set()
        self._server = HttpServer(
            self.handle,
            internal_error,
            limits.max_body,
            limits=limits,
            refuse=refusal,
            protocol=ProxyProtocol,
        )

    async def start(self, listening: socket.socket | None = None) -> None:
        """Serve on `listening`, or on a socket bound to INVOKE_API_HOST:GATEWAY_PORT."""
        options = self._options
        if listening is None:
            listening = listen_socket(options.host, options.port, "INVOKE_API_HOST:GATEWAY_PORT")
        await self._server.serve_socket(listening)
        logger.info(
            "gateway (%s events) on %s:%d", options.event_format, options.host, options.port
        )

    def observe_answers(self, answered: Callable[[int], None]) -> None:
        """Have `answered` told the status of every answer (metrics)."""
        self._server.observe_answers(answered)

    def stop_accepting(self) -> None:
        self._accepting = False

    async def close(self) -> None:
        # Requests still waiting get 503; the functions' own runs are the daemon's to end.
        for call in list(self._calls):
            call.cancel()
        self._server.close()

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        assert isinstance(request, FullRequest)  # ProxyProtocol makes only these
        context = self._context(request)
        marker = self._request_id_header(context.request_id)
        if not self._accepting:
            return message_response(503, "Service Unavailable", marker)
        located = self._router.locate(request.method, request.path)
        if located is None:
            return message_response(404, "Not Found", marker)
        if request.body_too_large:
            return message_response(413, "Request Entity Too Large", marker)
        http_request = self._http_request(request, located.raw_path)
        event = build_event(self._options.event_format, http_request, located.match, context)
        payload = json.dumps(event).encode()
        if len(payload) > MAX_REQUEST_PAYLOAD:
            return message_response(413, "Request Entity Too Large", marker)
        if self._options.streams:
            return self._answer_stream(located.function, payload, http_request, marker)
        return self._answer(located.function, payload, http_request, marker)

    async def _answer(
        self, function: str, payload: bytes, request: HttpRequest, marker: Headers
    ) -> Response:
        result = await self._result(function, payload, request, marker)
        if isinstance(result, Response):
            return result
        return self._proxy_answer(result, marker)

    async def _result(
        self, function: str, payload: bytes, request: HttpRequest, marker: Headers
    ) -> InvocationResult | Response:
        """The function's result, or the answer when the invocation itself failed."""
        try:
            return await self._invoke(function, payload, request.header("x-amzn-trace-id"))
        except TimeoutError:
            return message_response(504, "Endpoint request timed out", marker)
        except InvokeError as error:
            return _invoke_error_response(error, marker)

    def _proxy_answer(self, result: InvocationResult, marker: Headers) -> Response:
        if result.error_type is not None:
            logger.debug("function failed (%s): answering 502", result.error_type)
            return message_response(502, "Internal server error", marker)
        try:
            reply = map_result(self._options.event_format, result.body)
        except MalformedResponse as error:
            logger.warning("malformed Lambda proxy response: %s", error)
            return message_response(502, "Internal server error", marker)
        return Response(reply.status, reply.body, wire_headers(reply.headers + marker))

    async def _answer_stream(
        self, function: str, payload: bytes, request: HttpRequest, marker: Headers
    ) -> Response:
        result = await self._result(function, payload, request, marker)
        if isinstance(result, Response):
            return result
        stream = result.stream if isinstance(result, StreamedResult) else None
        if stream is None:
            return self._unstreamed_answer(result, marker)
        # An async generator (closing it detaches the stream), typed as the iterator it is.
        chunks = cast("AsyncGenerator[bytes, None]", stream.chunks())
        try:
            if _media(stream.content_type) == HTTP_INTEGRATION:
                head, first = await _read_prelude(chunks)
            else:
                first = await anext(chunks, b"")
                head = Prelude(200, (("Content-Type", stream.content_type),))
        except MalformedResponse as error:
            await chunks.aclose()
            logger.warning("malformed streamed response: %s", error)
            return message_response(502, "Internal server error", marker)
        if not first and stream.result is not None and stream.result.error_type is not None:
            await chunks.aclose()
            logger.debug("function failed (%s): answering 502", stream.result.error_type)
            return message_response(502, "Internal server error", marker)
        body = _relay(first, chunks, stream)
        return StreamedResponse(head.status, body, wire_headers(head.headers + marker))

    def _unstreamed_answer(self, result: InvocationResult, marker: Headers) -> Response:
        """A whole response: lambda-server's (a stream collected through the broker, its
        prelude included) or a function's that did not stream (a proxy response)."""
        if result.error_type is None:
            split = _split_prelude(result.body)
            if split is not None:
                head, body = split
                return Response(head.status, body, wire_headers(head.headers + marker))
        return self._proxy_answer(result, marker)

    async def _invoke(self, function: str, payload: bytes, trace: str | None) -> InvocationResult:
        target = self._backend.resolve(function, None)
        invocation = Invocation(
            request_id=new_request_id(),
            payload=payload,
            timeout=self._invocation_timeout,
            invoked_arn=target.invoked_arn,
            trace_id=trace or new_trace_id(),
        )
        invoke = self._backend.invoke
        if self._options.streams:
            # A backend that cannot stream (lambda-server's, over AMQP) answers whole.
            invoke = getattr(self._backend, "invoke_stream", invoke)
        # The function keeps running after the integration timeout, as behind API Gateway.
        call = asyncio.ensure_future(invoke(target, invocation))
        self._calls.add(call)
        call.add_done_callback(self._on_call_done)
        try:
            return await asyncio.wait_for(asyncio.shield(call), self._options.timeout)
        except TimeoutError:
            call.add_done_callback(_drop_stream)  # nobody will read what it streams
            raise

    def _on_call_done(self, call: asyncio.Future[InvocationResult]) -> None:
        self._calls.discard(call)
        if not call.cancelled() and call.exception() is not None:
            logger.debug("invocation ended with %r", call.exception())

    def _context(self, request: FullRequest) -> ApiContext:
        options = self._options
        return ApiContext(
            request_id=new_request_id(),
            time_epoch_ms=int(time.time() * 1000),
            api_id=self._api_id,
            account_id=options.account_id,
            stage=options.stage or DEFAULT_STAGE,
            domain_name=request.headers.get("host") or f"{options.host}:{options.port}",
        )

    def _request_id_header(self, request_id: str) -> Headers:
        name = "x-amzn-RequestId" if self._options.event_format == "v1" else "Apigw-Requestid"
        return ((name, request_id),)

    def _http_request(self, request: FullRequest, raw_path: str) -> HttpRequest:
        source_ip = request.peer or "127.0.0.1"
        headers = []
        forwarded = []
        for name, value in request.header_list:
            if name.lower() == "x-forwarded-for":
                forwarded.append(value)
            else:
                headers.append((name, value))
        headers += [
            ("X-Forwarded-For", ", ".join([*forwarded, source_ip])),
            ("X-Forwarded-Port", str(self._options.port)),
            ("X-Forwarded-Proto", "http"),
        ]
        if "x-amzn-trace-id" not in request.headers:
            headers.append(("X-Amzn-Trace-Id", new_trace_id().split(";")[0]))
        return HttpRequest(
            method=request.method,
            raw_path=raw_path,
            raw_query=request.query,
            headers=tuple(headers),
            body=request.body,
            source_ip=source_ip,
            stage_prefix=self._router.stage_prefix,
            protocol=f"HTTP/{request.version}",
        )


def _invoke_error_response(error: InvokeError, marker: Headers) -> Response:
    if error.status == 404:
        return message_response(404, "Not Found", marker)
    if error.status == 503:
        return message_response(503, "Service Unavailable", marker)
    logger.warning("invocation refused: %s %s", error.code, error.message)
    return message_response(502, "Internal server error", marker)


# -- RESPONSE_STREAM ----------------------------------------------------------------------

HTTP_INTEGRATION = "application/vnd.awslambda.http-integration-response"
PRELUDE_END = b"\0" * 8
MAX_PRELUDE = 64 * 1024
# The answer's framing is ours (chunked or Content-Length), whatever the function says.
FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "trailer"))


@dataclass(frozen=True, slots=True)
class Prelude:
    """The head a streamed response asks for."""

    status: int
    headers: Headers


def _media(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


async def _read_prelude(chunks: AsyncIterator[bytes]) -> tuple[Prelude, bytes]:
    """The prelude, and what came after its separator in the same chunks."""
    data = b""
    async for chunk in chunks:
        data += chunk
        end = data.find(PRELUDE_END)
        if end >= 0:
            return parse_prelude(data[:end]), data[end + len(PRELUDE_END) :]
        if len(data) > MAX_PRELUDE:
            raise MalformedResponse(f"no prelude end in the first {MAX_PRELUDE} bytes")
    raise MalformedResponse("the stream ended before its prelude did")


def _split_prelude(body: bytes) -> tuple[Prelude, bytes] | None:
    """A whole body that starts with a prelude, split; None when it does not.

    JSON text holds no NUL byte, so a proxy response is never taken for one."""
    end = body.find(PRELUDE_END)
    if end < 0 or not body.lstrip().startswith(b"{"):
        return None
    try:
        return parse_prelude(body[:end]), body[end + len(PRELUDE_END) :]
    except MalformedResponse:
        return None


def parse_prelude(data: bytes) -> Prelude:
    """`{"statusCode", "headers", "cookies"}` (each optional) as the answer's head."""
    try:
        prelude = json.loads(data) if data.strip() else {}
    except ValueError as error:
        raise MalformedResponse(f"prelude is not JSON: {error}") from None
    if not isinstance(prelude, dict):
        raise MalformedResponse("prelude is not a JSON object")
    status = prelude.get("statusCode", 200)
    if type(status) is not int or not 100 <= status <= 599:
        raise MalformedResponse(f"invalid statusCode {status!r}")
    headers = prelude.get("headers") or {}
    cookies = prelude.get("cookies") or []
    if not isinstance(headers, dict) or not isinstance(cookies, list):
        raise MalformedResponse("headers must be an object and cookies a list")
    head = [
        (str(name), _header_value(value))
        for name, value in headers.items()
        if str(name).lower() not in FRAMING_HEADERS
    ]
    head += [("Set-Cookie", str(cookie)) for cookie in cookies]
    return Prelude(status, tuple(head))


def _header_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def _relay(
    first: bytes, chunks: AsyncGenerator[bytes, None], stream: ResponseStream
) -> AsyncGenerator[bytes, None]:
    """The body after the head; a stream that ended with an error cuts the answer."""
    try:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()  # detaches the stream when the client left first
    result = stream.result
    if result is not None and result.error_type is not None:
        logger.debug("function failed mid-stream (%s): answer cut", result.error_type)
        raise CutStream


def _drop_stream(call: asyncio.Future[InvocationResult]) -> None:
    if call.cancelled() or call.exception() is not None:
        return
    result = call.result()
    if isinstance(result, StreamedResult) and result.stream is not None:
        result.stream.detach()
