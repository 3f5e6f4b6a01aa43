"""The HTTP front door: API Gateway Lambda proxy events in, HTTP responses out.

``Gateway`` listens on GATEWAY_PORT and turns each request into one invocation whose
payload is an API Gateway proxy event (REST API format 1.0 or HTTP API format 2.0),
then maps the function's proxy response back to HTTP as API Gateway does: 502 for a
malformed response or a failed function, 504 when GATEWAY_TIMEOUT passes first.
``Router`` decides which function and route a path belongs to (the daemon's own
function; in the Lambda Server the first path segment or the route table). Building
events and mapping results are plain functions of plain data.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import secrets
import string
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from lambda_rapid.config import ConfigError, DaemonConfig, GatewayRoute, ServerConfig
from lambda_rapid.errors import MAX_REQUEST_PAYLOAD, InvokeError
from lambda_rapid.invocation import Invocation, InvocationResult, new_trace_id
from lambda_rapid.invoke_api import Backend

logger = logging.getLogger(__name__)

MAX_GATEWAY_PAYLOAD = 10 * 1024 * 1024  # API Gateway's own request limit
DEFAULT_STAGE = "$default"
DEFAULT_ROUTE_KEY = "$default"
TEXT_MEDIA_HINTS = ("json", "xml", "x-www-form-urlencoded", "javascript")
# Framing is the gateway's business, not the function's.
DROPPED_RESPONSE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request as the function sees it (stage and function segment removed)."""

    method: str
    raw_path: str
    raw_query: str = ""
    headers: Headers = ()
    body: bytes = b""
    source_ip: str = "127.0.0.1"
    stage_prefix: str = ""
    protocol: str = "HTTP/1.1"

    @property
    def path(self) -> str:
        return urllib.parse.unquote(self.raw_path)

    def staged(self, path: str) -> str:
        """`path` as requested, with the stage: /prod/items, and /prod for /."""
        return self.stage_prefix + path if path != "/" else self.stage_prefix or "/"

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What API Gateway knows about a request beyond the request itself."""

    request_id: str
    time_epoch_ms: int
    api_id: str
    account_id: str
    stage: str
    domain_name: str


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The route a request matched: its template path, route key and parameters."""

    resource: str
    route_key: str
    path_parameters: Mapping[str, str] | None = None
    function: str | None = None


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: Headers
    body: bytes


class MalformedResponse(ValueError):
    """The function's result is not a proxy response API Gateway could send."""


# -- routing ------------------------------------------------------------------------------


def proxy_match(raw_path: str) -> RouteMatch:
    """Without a route table every path is served by a `/{proxy+}` resource (and `/`)."""
    if raw_path.strip("/") == "":
        return RouteMatch("/", DEFAULT_ROUTE_KEY)
    proxy = urllib.parse.unquote(raw_path.lstrip("/"))
    return RouteMatch("/{proxy+}", DEFAULT_ROUTE_KEY, {"proxy": proxy})


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


# -- events -------------------------------------------------------------------------------


def is_text_media(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or any(hint in media for hint in TEXT_MEDIA_HINTS)


def encode_body(body: bytes, content_type: str | None) -> tuple[str | None, bool]:
    """The event's body and isBase64Encoded: text stays text, anything else is base64."""
    if not body:
        return None, False
    if is_text_media(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def group_headers(headers: Headers) -> dict[str, list[str]]:
    """Header values by name, case-insensitively, under the first spelling seen."""
    spellings: dict[str, str] = {}
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(spellings.setdefault(name.lower(), name), []).append(value)
    return grouped


def query_lists(raw_query: str) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in urllib.parse.parse_qsl(raw_query, keep_blank_values=True):
        grouped.setdefault(name, []).append(value)
    return grouped


def request_time(epoch_ms: int) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(epoch_ms / 1000))


def _domain_prefix(domain_name: str) -> str:
    return domain_name.split(":", 1)[0].split(".", 1)[0]


def build_event(
    event_format: str, request: HttpRequest, match: RouteMatch, context: ApiContext
) -> dict[str, Any]:
    if event_format == "v1":
        return event_v1(request, match, context)
    return event_v2(request, match, context)


def event_v1(request: HttpRequest, match: RouteMatch, context: ApiContext) -> dict[str, Any]:
    """A REST API proxy event (payload format 1.0): absent maps are null."""
    headers = group_headers(request.headers)
    query = query_lists(request.raw_query)
    body, is_base64 = encode_body(request.body, request.header("content-type"))
    return {
        "resource": match.resource,
        "path": request.path,
        "httpMethod": request.method,
        "headers": {name: values[-1] for name, values in headers.items()} or None,
        "multiValueHeaders": headers or None,
        "queryStringParameters": {name: values[-1] for name, values in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": dict(match.path_parameters) if match.path_parameters else None,
        "stageVariables": None,
        "requestContext": _request_context_v1(request, match, context),
        "body": body,
        "isBase64Encoded": is_base64,
    }


def _request_context_v1(
    request: HttpRequest, match: RouteMatch, context: ApiContext
) -> dict[str, Any]:
    identity: dict[str, str | None] = dict.fromkeys(
        ("cognitoIdentityPoolId", "accountId", "cognitoIdentityId", "caller", "principalOrgId")
        + ("accessKey", "cognitoAuthenticationType", "cognitoAuthenticationProvider")
        + ("userArn", "user")
    )
    identity.update(sourceIp=request.source_ip, userAgent=request.header("user-agent"))
    return {
        "accountId": context.account_id,
        "apiId": context.api_id,
        "resourceId": hashlib.sha1(match.resource.encode()).hexdigest()[:6],
        "resourcePath": match.resource,
        "httpMethod": request.method,
        "path": request.staged(request.path),
        "protocol": request.protocol,
        "stage": context.stage,
        "requestId": context.request_id,
        "requestTime": request_time(context.time_epoch_ms),
        "requestTimeEpoch": context.time_epoch_ms,
        "identity": identity,
        "domainName": context.domain_name,
        "domainPrefix": _domain_prefix(context.domain_name),
    }


def event_v2(request: HttpRequest, match: RouteMatch, context: ApiContext) -> dict[str, Any]:
    """An HTTP API / function URL event (payload format 2.0): absent fields are omitted."""
    headers = group_headers(tuple((k.lower(), v) for k, v in request.headers))
    cookie_headers = headers.pop("cookie", [])
    cookies = [c.strip() for header in cookie_headers for c in header.split(";") if c.strip()]
    query = query_lists(request.raw_query)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": match.route_key,
        "rawPath": request.staged(request.raw_path),
        "rawQueryString": request.raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = {name: ",".join(values) for name, values in headers.items()}
    if query:
        event["queryStringParameters"] = {name: ",".join(v) for name, v in query.items()}
    if match.route_key != DEFAULT_ROUTE_KEY and match.path_parameters:
        event["pathParameters"] = dict(match.path_parameters)
    event["requestContext"] = _request_context_v2(request, match, context)
    body, is_base64 = encode_body(request.body, request.header("content-type"))
    if body is not None:
        event["body"] = body
    event["isBase64Encoded"] = is_base64
    return event


def _request_context_v2(
    request: HttpRequest, match: RouteMatch, context: ApiContext
) -> dict[str, Any]:
    return {
        "accountId": context.account_id,
        "apiId": context.api_id,
        "domainName": context.domain_name,
        "domainPrefix": _domain_prefix(context.domain_name),
        "http": {
            "method": request.method,
            "path": request.staged(request.path),
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": request.header("user-agent") or "",
        },
        "requestId": context.request_id,
        "routeKey": match.route_key,
        "stage": context.stage,
        "time": request_time(context.time_epoch_ms),
        "timeEpoch": context.time_epoch_ms,
    }


# -- results ------------------------------------------------------------------------------


def map_result(event_format: str, body: bytes) -> HttpReply:
    """The function's result → the HTTP response; MalformedResponse if API Gateway would 502."""
    try:
        value = json.loads(body)
    except ValueError:
        raise MalformedResponse("the result is not JSON") from None
    if event_format == "v2" and not (isinstance(value, dict) and "statusCode" in value):
        return _inferred_reply(value, body)
    return _proxy_reply(event_format, value)


def _inferred_reply(value: object, body: bytes) -> HttpReply:
    # HTTP APIs treat a result without statusCode as the body of a 200.
    content = value.encode() if isinstance(value, str) else body
    return HttpReply(200, (("Content-Type", "application/json"),), content)


def _proxy_reply(event_format: str, value: object) -> HttpReply:
    if not isinstance(value, dict):
        raise MalformedResponse("the result is not a JSON object")
    status = _status_code(value.get("statusCode"))
    headers = _single_headers(value.get("headers"))
    if event_format == "v1":
        headers = _merge_multi_headers(headers, value.get("multiValueHeaders"))
    else:
        headers += tuple(("Set-Cookie", cookie) for cookie in _cookies(value.get("cookies")))
    headers = tuple(h for h in headers if h[0].lower() not in DROPPED_RESPONSE_HEADERS)
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers += (("Content-Type", "application/json"),)
    body = _body(value.get("body"), value.get("isBase64Encoded", False))
    return HttpReply(status, headers, b"" if status in (204, 304) else body)


def _status_code(status: object) -> int:
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise MalformedResponse(f"statusCode {status!r} is not an HTTP status code")
    return status


def _header_value(name: object, value: object) -> tuple[str, str]:
    if not isinstance(name, str) or not name or any(c in name for c in ": \t\r\n"):
        raise MalformedResponse(f"bad header name {name!r}")
    if isinstance(value, bool):
        value = "true" if value else "false"
    if not isinstance(value, str | int | float) or any(c in str(value) for c in "\r\n"):
        raise MalformedResponse(f"bad value for header {name}: {value!r}")
    return name, str(value)


def _single_headers(headers: object) -> Headers:
    if headers is None:
        return ()
    if not isinstance(headers, dict):
        raise MalformedResponse("headers is not an object")
    return tuple(_header_value(name, value) for name, value in headers.items())


def _merge_multi_headers(headers: Headers, multi: object) -> Headers:
    """multiValueHeaders win over headers of the same name."""
    if multi is None:
        return headers
    if not isinstance(multi, dict) or not all(isinstance(v, list) for v in multi.values()):
        raise MalformedResponse("multiValueHeaders is not an object of lists")
    names = {str(name).lower() for name in multi}
    kept = tuple(h for h in headers if h[0].lower() not in names)
    return kept + tuple(_header_value(n, v) for n, values in multi.items() for v in values)


def _cookies(cookies: object) -> list[str]:
    if cookies is None:
        return []
    if not isinstance(cookies, list) or not all(isinstance(c, str) for c in cookies):
        raise MalformedResponse("cookies is not a list of strings")
    return [_header_value("Set-Cookie", cookie)[1] for cookie in cookies]


def _body(body: object, is_base64: object) -> bytes:
    if body is None:
        return b""
    if not isinstance(body, str):
        raise MalformedResponse("body is not a string")
    if not isinstance(is_base64, bool):
        raise MalformedResponse("isBase64Encoded is not a boolean")
    if not is_base64:
        return body.encode()
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedResponse("body is not valid base64") from None


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


def message_response(status: int, message: str, headers: Headers = ()) -> web.Response:
    body = json.dumps({"message": message}).encode()
    merged = CIMultiDict(headers)
    merged["Content-Type"] = "application/json"
    return web.Response(status=status, body=body, headers=merged)


def gateway_for(
    config: DaemonConfig | ServerConfig, backend: Backend, function: str | None
) -> Gateway | None:
    """The gateway a config asks for (None when GATEWAY_PORT is unset)."""
    if config.gateway_port is None:
        return None
    options = GatewayOptions(
        config.invoke_api_host,
        config.gateway_port,
        config.gateway_event_format,
        config.gateway_stage,
        config.gateway_routes,
        config.gateway_timeout,
        config.account_id,
    )
    return Gateway(options, backend, function, config.timeout)


class Gateway:
    """An aiohttp app on its own port: any method, any path → one invocation."""

    def __init__(
        self,
        options: GatewayOptions,
        backend: Backend,
        function: str | None,
        invocation_timeout: float,
    ) -> None:
        self._options = options
        self._backend = backend
        self._router = Router(options.stage, options.routes, function)
        self._invocation_timeout = invocation_timeout
        self._api_id = "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(10)
        )
        self._accepting = True
        self._runner: web.AppRunner | None = None
        self._calls: set[asyncio.Task[InvocationResult]] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_GATEWAY_PAYLOAD)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def start(self) -> None:
        options = self._options
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, options.host, options.port).start()
        except OSError as error:
            raise ConfigError(
                f"cannot listen on INVOKE_API_HOST:GATEWAY_PORT {options.host}:{options.port}: "
                f"{error.strerror or error}"
            ) from None
        logger.info(
            "gateway (%s events) on %s:%d", options.event_format, options.host, options.port
        )

    def stop_accepting(self) -> None:
        self._accepting = False

    async def close(self) -> None:
        for call in list(self._calls):
            call.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        context = self._context(request)
        marker = self._request_id_header(context.request_id)
        if not self._accepting:
            return message_response(503, "Service Unavailable", marker)
        located = self._router.locate(request.method, request.rel_url.raw_path)
        if located is None:
            return message_response(404, "Not Found", marker)
        try:
            http_request = await self._http_request(request, located.raw_path)
        except web.HTTPRequestEntityTooLarge:
            return message_response(413, "Request Entity Too Large", marker)
        event = build_event(self._options.event_format, http_request, located.match, context)
        payload = json.dumps(event).encode()
        if len(payload) > MAX_REQUEST_PAYLOAD:
            return message_response(413, "Request Entity Too Large", marker)
        return await self._answer(located.function, payload, http_request, marker)

    async def _answer(
        self, function: str, payload: bytes, request: HttpRequest, marker: Headers
    ) -> web.Response:
        try:
            result = await self._invoke(function, payload, request.header("x-amzn-trace-id"))
        except TimeoutError:
            return message_response(504, "Endpoint request timed out", marker)
        except InvokeError as error:
            return _invoke_error_response(error, marker)
        if result.error_type is not None:
            logger.debug("function failed (%s): answering 502", result.error_type)
            return message_response(502, "Internal server error", marker)
        try:
            reply = map_result(self._options.event_format, result.body)
        except MalformedResponse as error:
            logger.warning("malformed Lambda proxy response: %s", error)
            return message_response(502, "Internal server error", marker)
        headers = CIMultiDict(reply.headers)
        headers.extend(marker)
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    async def _invoke(self, function: str, payload: bytes, trace: str | None) -> InvocationResult:
        target = self._backend.resolve(function, None)
        invocation = Invocation(
            request_id=str(uuid.uuid4()),
            payload=payload,
            timeout=self._invocation_timeout,
            invoked_arn=target.invoked_arn,
            trace_id=trace,
        )
        # The function keeps running after the integration timeout, as behind API Gateway.
        call = asyncio.get_running_loop().create_task(self._backend.invoke(target, invocation))
        self._calls.add(call)
        call.add_done_callback(self._on_call_done)
        return await asyncio.wait_for(asyncio.shield(call), self._options.timeout)

    def _on_call_done(self, call: asyncio.Task[InvocationResult]) -> None:
        self._calls.discard(call)
        if not call.cancelled() and call.exception() is not None:
            logger.debug("invocation ended with %r", call.exception())

    def _context(self, request: web.Request) -> ApiContext:
        options = self._options
        return ApiContext(
            request_id=str(uuid.uuid4()),
            time_epoch_ms=int(time.time() * 1000),
            api_id=self._api_id,
            account_id=options.account_id,
            stage=options.stage or DEFAULT_STAGE,
            domain_name=request.host or f"{options.host}:{options.port}",
        )

    def _request_id_header(self, request_id: str) -> Headers:
        name = "x-amzn-RequestId" if self._options.event_format == "v1" else "Apigw-Requestid"
        return ((name, request_id),)

    async def _http_request(self, request: web.Request, raw_path: str) -> HttpRequest:
        source_ip = request.remote or "127.0.0.1"
        headers = [(k, v) for k, v in request.headers.items() if k.lower() != "x-forwarded-for"]
        forwarded = ", ".join([*request.headers.getall("X-Forwarded-For", []), source_ip])
        headers += [
            ("X-Forwarded-For", forwarded),
            ("X-Forwarded-Port", str(self._options.port)),
            ("X-Forwarded-Proto", request.scheme),
        ]
        if "X-Amzn-Trace-Id" not in request.headers:
            headers.append(("X-Amzn-Trace-Id", new_trace_id().split(";")[0]))
        return HttpRequest(
            method=request.method,
            raw_path=raw_path,
            raw_query=request.rel_url.raw_query_string,
            headers=tuple(headers),
            body=await request.read(),
            source_ip=source_ip,
            stage_prefix=self._router.stage_prefix,
            protocol=f"HTTP/{request.version.major}.{request.version.minor}",
        )


def _invoke_error_response(error: InvokeError, marker: Headers) -> web.Response:
    if error.status == 404:
        return message_response(404, "Not Found", marker)
    if error.status == 503:
        return message_response(503, "Service Unavailable", marker)
    logger.warning("invocation refused: %s %s", error.code, error.message)
    return message_response(502, "Internal server error", marker)
