"""API Gateway Lambda proxy integration as data: events out, proxy responses back.

Builds the event of one HTTP request in REST API format 1.0 (`event_v1`) or HTTP API
format 2.0 (`event_v2`) from plain ``HttpRequest``/``RouteMatch``/``ApiContext`` values,
and maps a function's result to the HTTP answer API Gateway would give (`map_result`,
``MalformedResponse`` where it would answer 502). No I/O: the gateway and the sample
events both use it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


def proxy_match(raw_path: str) -> RouteMatch:
    """Without a route table every path is served by a `/{proxy+}` resource (and `/`)."""
    if raw_path.strip("/") == "":
        return RouteMatch("/", DEFAULT_ROUTE_KEY)
    proxy = urllib.parse.unquote(raw_path.lstrip("/"))
    return RouteMatch("/{proxy+}", DEFAULT_ROUTE_KEY, {"proxy": proxy})


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
