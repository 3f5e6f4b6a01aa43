"""The gateway front door end to end: real daemon, real runtime (web.py), raw HTTP and curl."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    DAEMON,
    FUNCTIONS,
    PYTHON_RIC,
    Daemon,
    free_port,
    poll,
    spawn_daemon,
    wait_for_port,
)

WEB = [*PYTHON_RIC, "web.handler"]
INTERNAL_ERROR = {"message": "Internal server error"}
NOT_FOUND = {"message": "Not Found"}
TIME_FORMAT = r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000$"


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[-1] if values else None

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def event(self) -> dict[str, Any]:
        """The event web.py echoed back."""
        assert self.status == 200, (self.status, self.body)
        return self.json()  # type: ignore[no-any-return]


@dataclass
class Gateway:
    daemon: Daemon
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        timeout: float = 30,
    ) -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers or []:
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return Reply(response.status, response.getheaders(), response.read())
        finally:
            connection.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)


def start_gateway(log_dir: Path, **env: str) -> Gateway:
    port = free_port()
    settings = {"AWS_LAMBDA_FUNCTION_NAME": "web", "GATEWAY_PORT": str(port), **env}
    daemon = spawn_daemon(WEB, log_dir, env=settings)
    wait_for_port(port, daemon.proc)
    return Gateway(daemon, port)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Gateway] = []

    def start(**env: str) -> Gateway:
        gateway = start_gateway(tmp_path / f"daemon{len(started)}", **env)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        assert gateway.daemon.stop() == 0


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("v2"))  # v2 is the default format
    yield gateway
    assert gateway.daemon.stop() == 0


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("v1"), GATEWAY_EVENT_FORMAT="v1")
    yield gateway
    assert gateway.daemon.stop() == 0


# -- 2.0 events ------------------------------------------------------------------------------


def test_v2_event_field_by_field(v2: Gateway) -> None:
    before = int(time.time() * 1000)
    headers = [
        ("User-Agent", "gateway-test/1.0"),
        ("X-Multi", "one"),
        ("X-Multi", "two"),
        ("Cookie", "a=1; b=2"),
        ("Cookie", "c=3"),
    ]
    reply = v2.get("/echo/a%20b/c?x=1&x=2&y=&z=%2F", headers=headers)
    event = reply.event()
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/echo/a%20b/c"
    assert event["rawQueryString"] == "x=1&x=2&y=&z=%2F"
    assert event["cookies"] == ["a=1", "b=2", "c=3"]
    assert event["queryStringParameters"] == {"x": "1,2", "y": "", "z": "/"}
    assert "pathParameters" not in event
    assert "body" not in event
    assert event["isBase64Encoded"] is False
    sent = event["headers"]
    assert all(name == name.lower() for name in sent)
    assert "cookie" not in sent
    assert sent["x-multi"] == "one,two"
    assert sent["user-agent"] == "gateway-test/1.0"
    assert sent["host"] == f"127.0.0.1:{v2.port}"
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-port"] == str(v2.port)
    assert sent["x-forwarded-proto"] == "http"
    assert re.match(r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24}$", sent["x-amzn-trace-id"])
    context = event["requestContext"]
    assert context["accountId"] == "123456789012"
    assert re.match(r"^[a-z0-9]{10}$", context["apiId"])
    assert context["domainName"] == f"127.0.0.1:{v2.port}"
    assert context["domainPrefix"] == "127"
    assert context["http"] == {
        "method": "GET",
        "path": "/echo/a b/c",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "gateway-test/1.0",
    }
    assert str(uuid.UUID(context["requestId"])) == context["requestId"]
    assert reply.header("Apigw-Requestid") == context["requestId"]
    assert context["routeKey"] == "$default"
    assert context["stage"] == "$default"
    assert re.match(TIME_FORMAT, context["time"])
    assert before <= context["timeEpoch"] <= int(time.time() * 1000)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_reaches_the_function(v2: Gateway, method: str) -> None:
    event = v2.request(method, "/echo").event()
    assert event["requestContext"]["http"]["method"] == method


def test_head_gets_the_status_and_no_body(v2: Gateway) -> None:
    reply = v2.request("HEAD", "/status/201")
    assert reply.status == 201
    assert reply.body == b""


def test_root_path(v2: Gateway) -> None:
    event = v2.get("/").event()
    assert event["rawPath"] == "/"
    assert event["rawQueryString"] == ""
    assert "queryStringParameters" not in event
    assert "cookies" not in event


def test_json_body_stays_text(v2: Gateway) -> None:
    body = json.dumps({"name": "café", "n": [1, 2]}).encode()
    event = v2.request(
        "POST", "/echo", body, headers=[("Content-Type", "application/json")]
    ).event()
    assert event["body"] == body.decode()
    assert event["isBase64Encoded"] is False
    assert event["headers"]["content-length"] == str(len(body))


@pytest.mark.parametrize(
    ("content_type", "text"),
    [
        ("text/plain; charset=utf-8", True),
        ("application/x-www-form-urlencoded", True),
        ("application/xml", True),
        ("application/javascript", True),
        ("application/octet-stream", False),
        ("image/png", False),
        (None, False),
    ],
)
def test_body_encoding_follows_the_content_type(
    v2: Gateway, content_type: str | None, text: bool
) -> None:
    body = b"a=1&b=two"
    headers = [("Content-Type", content_type)] if content_type else []
    event = v2.request("POST", "/echo", body, headers=headers).event()
    assert event["isBase64Encoded"] is not text
    assert event["body"] == (body.decode() if text else base64.b64encode(body).decode())


def test_binary_body_both_ways(v2: Gateway) -> None:
    data = secrets.token_bytes(4096) + b"\x00\xff"
    reply = v2.request("POST", "/reflect", data, headers=[("Content-Type", "image/x-raw")])
    assert reply.status == 200
    assert reply.body == data
    assert reply.header("Content-Type") == "image/x-raw"


def test_binary_response_is_decoded(v2: Gateway) -> None:
    reply = v2.get("/binary")
    assert reply.status == 200
    assert reply.body.startswith(b"\x89PNG\r\n\x1a\n")
    assert reply.header("Content-Type") == "image/png"


@pytest.mark.parametrize("status", [201, 204, 400, 404, 418, 500, 503])
def test_status_codes_pass_through(v2: Gateway, status: int) -> None:
    reply = v2.get(f"/status/{status}")
    assert reply.status == status
    assert reply.body == (b"" if status == 204 else str(status).encode())
    assert reply.header("Content-Type") == "text/plain"


def test_redirect_is_not_followed(v2: Gateway) -> None:
    reply = v2.get("/redirect")
    assert reply.status == 302
    assert reply.header("Location") == "/target"


def test_v2_cookies_become_set_cookie_headers(v2: Gateway) -> None:
    reply = v2.get("/cookies")
    assert reply.status == 200
    assert reply.header_values("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]


def test_v2_comma_joined_header(v2: Gateway) -> None:
    assert v2.get("/multi").header("x-multi") == "one,two"


@pytest.mark.parametrize(
    ("kind", "body"),
    [("string", b"hello"), ("object", b'{"a": 1}'), ("list", b"[1, 2]"), ("number", b"42")],
)
def test_v2_infers_a_response_without_status_code(v2: Gateway, kind: str, body: bytes) -> None:
    reply = v2.get(f"/infer/{kind}")
    assert reply.status == 200
    assert reply.header("Content-Type") == "application/json"
    assert reply.body == body


def test_v2_result_without_status_code_is_inferred_not_malformed(v2: Gateway) -> None:
    reply = v2.get("/malformed/no-status")
    assert reply.status == 200
    assert reply.json() == {"body": "no status code"}


@pytest.mark.parametrize("kind", ["body-object", "bad-status", "bad-base64", "bad-header"])
def test_v2_malformed_result_is_502(v2: Gateway, kind: str) -> None:
    reply = v2.get(f"/malformed/{kind}")
    assert reply.status == 502
    assert reply.json() == INTERNAL_ERROR
    assert reply.header("Content-Type") == "application/json"


def test_function_error_is_502(v2: Gateway) -> None:
    reply = v2.get("/raise")
    assert reply.status == 502
    assert reply.json() == INTERNAL_ERROR
    assert v2.get("/status/200").status == 200  # the next request is served as usual


def test_with_curl(v2: Gateway) -> None:
    result = subprocess.run(
        [
            "curl", "-sS", "-i", "-X", "PUT", "-H", "Content-Type: application/json",
            "-H", "X-Multi: a", "-H", "X-Multi: b", "-b", "session=xyz",
            "-d", '{"k": "v"}', f"{v2.url}/echo/items/7?tag=a&tag=b",
        ],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 200")
    event = json.loads(body)
    assert event["requestContext"]["http"]["method"] == "PUT"
    assert event["rawPath"] == "/echo/items/7"
    assert event["queryStringParameters"] == {"tag": "a,b"}
    assert event["cookies"] == ["session=xyz"]
    assert event["headers"]["x-multi"] == "a,b"
    assert json.loads(event["body"]) == {"k": "v"}


def test_curl_sees_each_cookie(v2: Gateway) -> None:
    result = subprocess.run(
        ["curl", "-sS", "-c", "-", f"{v2.url}/cookies"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    jar = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert sorted((fields[-2], fields[-1]) for fields in jar) == [("a", "1"), ("b", "2")]


# -- 1.0 events ------------------------------------------------------------------------------


def test_v1_event_field_by_field(v1: Gateway) -> None:
    before = int(time.time() * 1000)
    headers = [("User-Agent", "gateway-test/1.0"), ("X-Multi", "one"), ("X-Multi", "two")]
    reply = v1.get("/echo/a%20b?x=1&x=2&y=", headers=headers)
    event = reply.event()
    assert event["resource"] == "/{proxy+}"
    assert event["path"] == "/echo/a b"
    assert event["httpMethod"] == "GET"
    assert event["headers"]["X-Multi"] == "two"
    assert event["multiValueHeaders"]["X-Multi"] == ["one", "two"]
    assert event["headers"]["User-Agent"] == "gateway-test/1.0"
    assert event["multiValueHeaders"]["Host"] == [f"127.0.0.1:{v1.port}"]
    assert event["queryStringParameters"] == {"x": "2", "y": ""}
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"], "y": [""]}
    assert event["pathParameters"] == {"proxy": "echo/a b"}
    assert event["stageVariables"] is None
    assert event["body"] is None
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["accountId"] == "123456789012"
    assert re.match(r"^[a-z0-9]{10}$", context["apiId"])
    assert context["resourcePath"] == "/{proxy+}"
    assert context["httpMethod"] == "GET"
    assert context["path"] == "/echo/a b"
    assert context["protocol"] == "HTTP/1.1"
    assert context["stage"] == "$default"
    assert str(uuid.UUID(context["requestId"])) == context["requestId"]
    assert reply.header("x-amzn-RequestId") == context["requestId"]
    assert re.match(TIME_FORMAT, context["requestTime"])
    assert before <= context["requestTimeEpoch"] <= int(time.time() * 1000)
    assert context["identity"]["sourceIp"] == "127.0.0.1"
    assert context["identity"]["userAgent"] == "gateway-test/1.0"
    assert context["identity"]["user"] is None
    assert context["domainName"] == f"127.0.0.1:{v1.port}"


def test_v1_absent_maps_are_null(v1: Gateway) -> None:
    event = v1.get("/").event()
    assert event["resource"] == "/"
    assert event["path"] == "/"
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None
    assert event["pathParameters"] is None


def test_v1_bodies(v1: Gateway) -> None:
    text = v1.request("POST", "/echo", b'{"a": 1}', headers=[("Content-Type", "application/json")])
    assert (text.event()["body"], text.event()["isBase64Encoded"]) == ('{"a": 1}', False)
    data = bytes(range(256))
    binary = v1.request("POST", "/echo", data, headers=[("Content-Type", "image/png")]).event()
    assert binary["isBase64Encoded"] is True
    assert base64.b64decode(binary["body"]) == data
    reflected = v1.request("POST", "/reflect", data, headers=[("Content-Type", "image/png")])
    assert (reflected.status, reflected.body) == (200, data)


def test_v1_multi_value_headers_win(v1: Gateway) -> None:
    reply = v1.get("/multi")
    assert reply.status == 200
    assert reply.header_values("x-multi") == ["one", "two"]
    assert reply.header("x-single") == "s"


def test_v1_cookies_through_multi_value_headers(v1: Gateway) -> None:
    assert v1.get("/cookies").header_values("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]


def test_v1_status_and_redirect(v1: Gateway) -> None:
    assert v1.get("/status/404").status == 404
    redirect = v1.get("/redirect")
    assert (redirect.status, redirect.header("Location")) == (302, "/target")


@pytest.mark.parametrize(
    "path",
    [
        "/malformed/no-status",
        "/malformed/not-object",
        "/malformed/body-object",
        "/malformed/bad-status",
        "/infer/string",
        "/infer/object",
        "/raise",
    ],
)
def test_v1_malformed_or_failed_is_502(v1: Gateway, path: str) -> None:
    reply = v1.get(path)
    assert reply.status == 502
    assert reply.json() == INTERNAL_ERROR


# -- timeouts --------------------------------------------------------------------------------


def test_function_timeout_is_502(gateway_factory: Any) -> None:
    gateway = gateway_factory(AWS_LAMBDA_FUNCTION_TIMEOUT="1")
    reply = gateway.get("/sleep/60", timeout=20)  # answered by the 1 s timeout, not at 60 s
    assert reply.status == 502
    assert reply.json() == INTERNAL_ERROR
    assert gateway.get("/status/200").status == 200  # a fresh instance serves the next one


def test_integration_timeout_is_504(gateway_factory: Any) -> None:
    gateway = gateway_factory(GATEWAY_TIMEOUT="1", AWS_LAMBDA_FUNCTION_TIMEOUT="30")
    started = time.monotonic()
    reply = gateway.get("/sleep/6", timeout=5)  # answered at 1 s, before the function's end
    elapsed = time.monotonic() - started
    assert reply.status == 504
    assert reply.json() == {"message": "Endpoint request timed out"}
    assert elapsed >= 0.9
    # The function finishes in the background, then serves the next request (until then,
    # requests wait for the busy instance and time out with 504).
    assert poll(lambda: gateway.get("/status/200").status == 200, timeout=20)


def test_integration_timeout_flag(tmp_path: Path) -> None:
    port = free_port()
    daemon = spawn_daemon(
        WEB,
        tmp_path / "flags",
        env={"AWS_LAMBDA_FUNCTION_NAME": "web"},
        args=["--gateway-port", str(port), "--gateway-timeout", "0.5", "--timeout", "3"],
    )
    try:
        wait_for_port(port, daemon.proc)
        assert Gateway(daemon, port).get("/sleep/1").status == 504
    finally:
        assert daemon.stop() == 0


# -- stage and route table -------------------------------------------------------------------


def test_v2_stage_prefix(gateway_factory: Any) -> None:
    gateway = gateway_factory(GATEWAY_STAGE="prod")
    event = gateway.get("/prod/echo/x?q=1").event()
    assert event["rawPath"] == "/prod/echo/x"
    assert event["requestContext"]["http"]["path"] == "/prod/echo/x"
    assert event["requestContext"]["stage"] == "prod"
    assert gateway.get("/prod").event()["rawPath"] == "/prod"
    for path in ("/echo/x", "/production/echo", "/"):
        reply = gateway.get(path)
        assert (reply.status, reply.json()) == (404, NOT_FOUND), path


def test_v1_stage_prefix(gateway_factory: Any) -> None:
    gateway = gateway_factory(GATEWAY_STAGE="prod", GATEWAY_EVENT_FORMAT="v1")
    event = gateway.get("/prod/echo/x").event()
    assert event["path"] == "/echo/x"
    assert event["requestContext"]["path"] == "/prod/echo/x"
    assert event["requestContext"]["stage"] == "prod"
    assert gateway.get("/echo/x").status == 404


ROUTES = "GET /items/{id}, POST /items, ANY /files/{proxy+}, GET /items/special"


def test_v2_route_table(gateway_factory: Any) -> None:
    gateway = gateway_factory(GATEWAY_ROUTES=ROUTES)
    event = gateway.get("/items/42").event()
    assert event["routeKey"] == "GET /items/{id}"
    assert event["requestContext"]["routeKey"] == "GET /items/{id}"
    assert event["pathParameters"] == {"id": "42"}
    assert gateway.get("/items/special").event()["routeKey"] == "GET /items/special"
    posted = gateway.request("POST", "/items", b"{}", [("Content-Type", "application/json")])
    assert posted.event()["routeKey"] == "POST /items"
    assert "pathParameters" not in posted.event()
    files = gateway.request("DELETE", "/files/a/b%20c.txt").event()
    assert files["routeKey"] == "ANY /files/{proxy+}"
    assert files["pathParameters"] == {"proxy": "a/b c.txt"}
    for method, path in [("DELETE", "/items/42"), ("GET", "/items"), ("GET", "/files"),
                         ("GET", "/other"), ("GET", "/items/1/2")]:  # fmt: skip
        reply = gateway.request(method, path)
        assert (reply.status, reply.json()) == (404, NOT_FOUND), (method, path)


def test_v1_route_table_with_stage(gateway_factory: Any) -> None:
    gateway = gateway_factory(GATEWAY_ROUTES=ROUTES, GATEWAY_EVENT_FORMAT="v1", GATEWAY_STAGE="dev")
    event = gateway.get("/dev/items/42?full=1").event()
    assert event["resource"] == "/items/{id}"
    assert event["path"] == "/items/42"
    assert event["pathParameters"] == {"id": "42"}
    assert event["queryStringParameters"] == {"full": "1"}
    assert event["requestContext"]["resourcePath"] == "/items/{id}"
    assert event["requestContext"]["path"] == "/dev/items/42"
    assert event["requestContext"]["stage"] == "dev"
    files = gateway.request("PUT", "/dev/files/x/y").event()
    assert files["resource"] == "/files/{proxy+}"
    assert files["pathParameters"] == {"proxy": "x/y"}
    assert gateway.get("/items/42").status == 404
    assert gateway.get("/dev/nothing").status == 404


# -- settings --------------------------------------------------------------------------------


def run_daemon(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GATEWAY_"))}
    base.update(INVOKE_API_HOST="127.0.0.1", PORT=str(free_port()), RUNTIME_API_PORT="0", **env)
    return subprocess.run(
        [DAEMON, *args, *WEB], env=base, cwd=FUNCTIONS, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("GATEWAY_PORT", "http"),
        ("GATEWAY_PORT", "70000"),
        ("GATEWAY_EVENT_FORMAT", "v3"),
        ("GATEWAY_STAGE", "a/b"),
        ("GATEWAY_ROUTES", "FETCH /x"),
        ("GATEWAY_ROUTES", "GET items"),
        ("GATEWAY_ROUTES", "GET /a/{proxy+}/b"),
        ("GATEWAY_ROUTES", "GET /a={bad name}"),
        ("GATEWAY_TIMEOUT", "0"),
        ("GATEWAY_TIMEOUT", "soon"),
    ],
)
def test_invalid_setting_is_one_line_and_exit_2(env: str, value: str) -> None:
    result = run_daemon([], **{env: value})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lambda-runtime-api-daemon: error: invalid ")
    assert env in lines[0]


def test_invalid_flag_names_the_flag() -> None:
    result = run_daemon(["--gateway-event-format", "rest"])
    assert result.returncode == 2
    assert "--gateway-event-format" in result.stderr


def test_busy_gateway_port_is_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_daemon([], GATEWAY_PORT=str(port))
    assert result.returncode == 2, result.stderr
    assert "GATEWAY_PORT" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr


def test_lambda_server_refuses_a_half_named_route_table() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMQP_", "GATEWAY_"))}
    env.update(
        PORT=str(free_port()), GATEWAY_PORT=str(free_port()), GATEWAY_ROUTES="GET /a=fn,GET /b"
    )
    result = subprocess.run(
        [str(Path(DAEMON).parent / "lambda-server")], env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("lambda-server: error: invalid GATEWAY_ROUTES")
