"""Proxy events built from plain requests, and proxy results mapped to HTTP answers."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from lambda_rapid.gateway import RouteTable
from lambda_rapid.proxy_events import (
    ApiContext,
    HttpRequest,
    MalformedResponse,
    encode_body,
    event_v1,
    event_v2,
    is_text_media,
    map_result,
    proxy_match,
)
from lambda_rapid.routes import GatewayRoute

CONTEXT = ApiContext(
    request_id="c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
    time_epoch_ms=1_700_000_000_123,
    api_id="abcde12345",
    account_id="123456789012",
    stage="$default",
    domain_name="abcde12345.execute-api.us-east-1.amazonaws.com",
)
HEADERS = (
    ("Host", "example.com"),
    ("User-Agent", "ua/1"),
    ("X-Multi", "one"),
    ("x-multi", "two"),
    ("Cookie", "a=1; b=2"),
)


def request(**overrides: Any) -> HttpRequest:
    fields: dict[str, Any] = {
        "method": "GET",
        "raw_path": "/items/a%20b",
        "raw_query": "x=1&x=2&y=",
        "headers": HEADERS,
        "source_ip": "203.0.113.7",
    }
    fields.update(overrides)
    return HttpRequest(**fields)


def result(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "text"),
    [
        ("text/html; charset=utf-8", True),
        ("application/json", True),
        ("application/vnd.api+json", True),
        ("application/xml", True),
        ("application/x-www-form-urlencoded", True),
        ("application/javascript", True),
        ("TEXT/PLAIN", True),
        ("application/octet-stream", False),
        ("image/png", False),
        ("multipart/form-data; boundary=x", False),
        ("", False),
        (None, False),
    ],
)
def test_text_media_types(content_type: str | None, text: bool) -> None:
    assert is_text_media(content_type) is text


def test_encode_body() -> None:
    assert encode_body(b"", "text/plain") == (None, False)
    assert encode_body(b"hi", "text/plain") == ("hi", False)
    assert encode_body(b"\x00\x01", "image/png") == ("AAE=", True)
    assert encode_body(b"\xff\xfe", "text/plain") == ("//4=", True)  # not UTF-8: base64


# -- 1.0 events -----------------------------------------------------------------------------


def test_v1_event() -> None:
    event = event_v1(request(), proxy_match("/items/a%20b"), CONTEXT)
    assert event["resource"] == "/{proxy+}"
    assert event["path"] == "/items/a b"
    assert event["httpMethod"] == "GET"
    assert event["headers"] == {
        "Host": "example.com",
        "User-Agent": "ua/1",
        "X-Multi": "two",
        "Cookie": "a=1; b=2",
    }
    assert event["multiValueHeaders"]["X-Multi"] == ["one", "two"]
    assert event["queryStringParameters"] == {"x": "2", "y": ""}
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"], "y": [""]}
    assert event["pathParameters"] == {"proxy": "items/a b"}
    assert event["stageVariables"] is None
    assert event["body"] is None
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["resourcePath"] == "/{proxy+}"
    assert context["path"] == "/items/a b"
    assert context["requestTime"] == "14/Nov/2023:22:13:20 +0000"
    assert context["requestTimeEpoch"] == CONTEXT.time_epoch_ms
    assert context["identity"]["sourceIp"] == "203.0.113.7"
    assert context["identity"]["userAgent"] == "ua/1"
    assert context["domainPrefix"] == "abcde12345"
    for key in ("accountId", "apiId", "requestId", "stage", "protocol", "httpMethod"):
        assert context[key]


def test_v1_absent_maps_are_null() -> None:
    event = event_v1(request(raw_path="/", raw_query="", headers=()), proxy_match("/"), CONTEXT)
    assert event["resource"] == "/"
    for key in ("headers", "multiValueHeaders", "queryStringParameters", "pathParameters"):
        assert event[key] is None, key
    assert event["multiValueQueryStringParameters"] is None


def test_v1_stage_and_body() -> None:
    body = b"\x89PNG\x00"
    req = request(
        method="POST",
        stage_prefix="/prod",
        body=body,
        headers=(("Content-Type", "image/png"),),
    )
    event = event_v1(req, proxy_match(req.raw_path), CONTEXT)
    assert event["path"] == "/items/a b"
    assert event["requestContext"]["path"] == "/prod/items/a b"
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body


# -- 2.0 events -----------------------------------------------------------------------------


def test_v2_event() -> None:
    event = event_v2(request(), proxy_match("/items/a%20b"), CONTEXT)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/items/a%20b"
    assert event["rawQueryString"] == "x=1&x=2&y="
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["headers"] == {"host": "example.com", "user-agent": "ua/1", "x-multi": "one,two"}
    assert event["queryStringParameters"] == {"x": "1,2", "y": ""}
    assert "pathParameters" not in event
    assert "body" not in event
    assert event["isBase64Encoded"] is False
    assert event["requestContext"]["http"] == {
        "method": "GET",
        "path": "/items/a b",
        "protocol": "HTTP/1.1",
        "sourceIp": "203.0.113.7",
        "userAgent": "ua/1",
    }
    assert event["requestContext"]["time"] == "14/Nov/2023:22:13:20 +0000"
    assert event["requestContext"]["timeEpoch"] == CONTEXT.time_epoch_ms


def test_v2_omits_absent_fields() -> None:
    event = event_v2(request(raw_path="/", raw_query="", headers=()), proxy_match("/"), CONTEXT)
    assert set(event) == {
        "version",
        "routeKey",
        "rawPath",
        "rawQueryString",
        "headers",
        "requestContext",
        "isBase64Encoded",
    }


def test_v2_route_stage_and_body() -> None:
    match = RouteTable([GatewayRoute("GET", "/items/{id}")]).match("GET", "/items/a%20b")
    assert match is not None
    req = request(stage_prefix="/prod", body=b'{"a":1}', headers=(("content-type", "json"),))
    event = event_v2(req, match, CONTEXT)
    assert event["routeKey"] == "GET /items/{id}"
    assert event["pathParameters"] == {"id": "a b"}
    assert event["rawPath"] == "/prod/items/a%20b"
    assert event["requestContext"]["http"]["path"] == "/prod/items/a b"
    assert event["requestContext"]["routeKey"] == "GET /items/{id}"
    assert (event["body"], event["isBase64Encoded"]) == ('{"a":1}', False)
    assert event_v2(request(raw_path="/", stage_prefix="/prod"), match, CONTEXT)["rawPath"] == (
        "/prod"
    )


# -- results --------------------------------------------------------------------------------


def test_v1_result() -> None:
    reply = map_result(
        "v1",
        result(
            {
                "statusCode": 201,
                "headers": {"X-One": "1", "X-Both": "single", "X-Num": 5, "X-Flag": True},
                "multiValueHeaders": {"x-both": ["m1", "m2"], "Set-Cookie": ["a=1", "b=2"]},
                "body": "created",
            }
        ),
    )
    assert reply.status == 201
    assert reply.body == b"created"
    assert reply.headers == (
        ("X-One", "1"),
        ("X-Num", "5"),
        ("X-Flag", "true"),
        ("x-both", "m1"),
        ("x-both", "m2"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Type", "application/json"),
    )


def test_v2_result_cookies_and_base64() -> None:
    reply = map_result(
        "v2",
        result(
            {
                "statusCode": 200,
                "headers": {"content-type": "image/png", "content-length": "999"},
                "cookies": ["a=1; Path=/", "b=2"],
                "body": base64.b64encode(b"\x00\x01").decode(),
                "isBase64Encoded": True,
            }
        ),
    )
    assert reply.body == b"\x00\x01"
    assert reply.headers == (
        ("content-type", "image/png"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2"),
    )


def test_result_status_as_digits_and_no_body() -> None:
    reply = map_result("v1", result({"statusCode": "204", "body": "ignored"}))
    assert (reply.status, reply.body) == (204, b"")
    assert map_result("v2", result({"statusCode": 302})).body == b""


def test_v1_ignores_cookies_and_v2_ignores_multi_value_headers() -> None:
    v1 = map_result("v1", result({"statusCode": 200, "cookies": ["a=1"]}))
    assert all(name != "Set-Cookie" for name, _ in v1.headers)
    v2 = map_result("v2", result({"statusCode": 200, "multiValueHeaders": {"x": ["1"]}}))
    assert all(name != "x" for name, _ in v2.headers)


@pytest.mark.parametrize(
    ("value", "body"),
    [("hello", b'"hello"'), ({"a": 1}, b'{"a": 1}'), ([1], b"[1]"), (7, b"7"), (None, b"null")],
)
def test_v2_infers_results_without_status_code(value: Any, body: bytes) -> None:
    reply = map_result("v2", result(value))
    assert reply.status == 200
    assert reply.headers == (("Content-Type", "application/json"),)
    assert reply.body == (b"hello" if value == "hello" else body)


@pytest.mark.parametrize(
    "value",
    [
        {"body": "no status"},
        "a string",
        [200],
        None,
        {"statusCode": 200, "body": {"a": 1}},
        {"statusCode": 200, "body": 5},
        {"statusCode": True},
        {"statusCode": 99},
        {"statusCode": 600},
        {"statusCode": "ok"},
        {"statusCode": 200, "headers": ["x"]},
        {"statusCode": 200, "headers": {"x": {"y": 1}}},
        {"statusCode": 200, "headers": {"x": "a\r\nInjected: 1"}},
        {"statusCode": 200, "headers": {"bad name": "1"}},
        {"statusCode": 200, "multiValueHeaders": {"x": "not a list"}},
        {"statusCode": 200, "body": "***", "isBase64Encoded": True},
        {"statusCode": 200, "body": "x", "isBase64Encoded": "yes"},
    ],
)
def test_v1_malformed_results(value: Any) -> None:
    with pytest.raises(MalformedResponse):
        map_result("v1", result(value))


@pytest.mark.parametrize(
    "value",
    [
        {"statusCode": 200, "body": {"a": 1}},
        {"statusCode": "ok"},
        {"statusCode": 200, "cookies": "a=1"},
        {"statusCode": 200, "cookies": [1]},
        {"statusCode": 200, "body": "***", "isBase64Encoded": True},
    ],
)
def test_v2_malformed_results(value: Any) -> None:
    with pytest.raises(MalformedResponse):
        map_result("v2", result(value))


@pytest.mark.parametrize("event_format", ["v1", "v2"])
def test_a_result_that_is_not_json_is_malformed(event_format: str) -> None:
    with pytest.raises(MalformedResponse):
        map_result(event_format, b"not json")


def test_proxy_match() -> None:
    assert proxy_match("/").resource == "/"
    assert proxy_match("/").path_parameters is None
    match = proxy_match("/a/b%2Fc")
    assert (match.resource, match.route_key) == ("/{proxy+}", "$default")
    assert match.path_parameters == {"proxy": "a/b/c"}
