"""Hostile and unusual clients on the gateway port: the same limits as the Invoke API
(431 for a huge head, 413 for a huge body, answered before it is sent), and the HTTP
details a web client relies on (pipelining, chunked bodies, HTTP/1.0, UTF-8 headers)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import raw_exchange
from tests.e2e.test_gateway import Gateway, start_gateway

MAX_BODY = 10 * 1024 * 1024  # API Gateway's request size limit


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    started = start_gateway(tmp_path_factory.mktemp("limits"))
    yield started
    assert started.daemon.stop() == 0


def answers(received: bytes) -> list[tuple[bytes, dict[str, str], bytes]]:
    """Status line, headers (lower-case names, last wins) and body of each answer."""
    found = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        found.append((status.encode(), headers, rest[:length]))
        received = rest[length:]
    return found


def still_serves(gateway: Gateway) -> None:
    assert gateway.get("/status/200").status == 200


def test_a_header_block_over_64_kb_is_431(gateway: Gateway) -> None:
    head = f"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 70_000}\r\n\r\n"
    [(status, headers, body)] = answers(raw_exchange(gateway.port, head.encode()))
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"message": "Request Header Fields Too Large"}
    still_serves(gateway)


def test_headers_up_to_the_cap_reach_the_function(gateway: Gateway) -> None:
    # Well over what many servers take on one line (8 KB), well under the 64 KB cap.
    value = "v" * 40_000
    event = gateway.get("/echo", headers=[("X-Large", value)]).event()
    assert event["headers"]["x-large"] == value


def test_expect_continue_over_10_mb_gets_413_without_100(gateway: Gateway) -> None:
    head = (
        f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    received = raw_exchange(gateway.port, head.encode())
    assert b"100 Continue" not in received
    [(status, _, body)] = answers(received)
    assert status.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body) == {"message": "Request Entity Too Large"}
    still_serves(gateway)


def test_a_body_over_10_mb_is_413_and_the_function_never_sees_it(gateway: Gateway) -> None:
    reply = gateway.request("PUT", "/echo", b"x" * (MAX_BODY + 1))
    assert reply.status == 413
    assert reply.json() == {"message": "Request Entity Too Large"}
    assert reply.header("Apigw-Requestid")
    still_serves(gateway)


def test_a_chunked_body_over_10_mb_is_413(gateway: Gateway) -> None:
    chunk = b"y" * (1024 * 1024)
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 11 + b"0\r\n\r\n"
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    [(status, _, body)] = answers(raw_exchange(gateway.port, head + body))
    assert status.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body) == {"message": "Request Entity Too Large"}
    still_serves(gateway)


def test_a_chunked_body_reaches_the_function(gateway: Gateway) -> None:
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    [(status, _, body)] = answers(raw_exchange(gateway.port, request))
    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(body)["body"] == "hello world"


def test_garbage_is_400_and_the_gateway_keeps_serving(gateway: Gateway) -> None:
    [(status, _, _)] = answers(raw_exchange(gateway.port, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status.split(b" ")[1] == b"400"
    still_serves(gateway)


def test_pipelined_requests_are_answered_in_order(gateway: Gateway) -> None:
    request = b"GET /sleep/0.3 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: x\r\n"
    received = raw_exchange(gateway.port, request + b"Connection: close\r\n\r\n")
    [(first, _, slept), (second, _, status)] = answers(received)
    assert (first, slept) == (b"HTTP/1.1 200 OK", b"slept")
    assert (second, status) == (b"HTTP/1.1 201 Created", b"201")


def test_an_http_1_0_request_is_answered_and_closed(gateway: Gateway) -> None:
    [(status, _, body)] = answers(raw_exchange(gateway.port, b"GET /echo HTTP/1.0\r\n\r\n"))
    assert status.split(b" ")[1] == b"200"
    event = json.loads(body)
    assert event["requestContext"]["http"]["protocol"] == "HTTP/1.0"


def test_utf8_header_values_both_ways(gateway: Gateway) -> None:
    # /reflect sends the request's Content-Type back as the answer's.
    media = "text/plain; name=café ✓"
    request = (
        f"POST /reflect HTTP/1.1\r\nHost: x\r\nContent-Type: {media}\r\n"
        "Content-Length: 2\r\nConnection: close\r\n\r\nhi"
    ).encode()
    [(status, headers, body)] = answers(raw_exchange(gateway.port, request))
    assert (status, body) == (b"HTTP/1.1 200 OK", b"hi")
    assert headers["content-type"].encode("latin-1") == media.encode()
    echo = f"GET /echo HTTP/1.1\r\nHost: x\r\nX-Name: {media}\r\nConnection: close\r\n\r\n"
    [(_, _, body)] = answers(raw_exchange(gateway.port, echo.encode()))
    assert json.loads(body)["headers"]["x-name"] == media
