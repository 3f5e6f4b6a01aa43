"""The gateway as a RESPONSE_STREAM function URL: streamed answers with chunked encoding."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_rapid.config import ConfigError, daemon_config
from tests.e2e.conftest import PYTHON_RIC, Daemon, free_port, spawn_daemon, wait_for_port
from tests.e2e.test_streaming import STREAM_RUNTIME

STREAM_MODE = {"GATEWAY_INVOKE_MODE": "RESPONSE_STREAM"}


class StreamGateway:
    def __init__(self, daemon: Daemon, port: int) -> None:
        self.daemon = daemon
        self.port = port

    def post(self, instructions: Any) -> tuple[http.client.HTTPConnection, Any]:
        """Send the runtime its instructions; the answer's head is read, its body not."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", "/stream", json.dumps(instructions).encode())
        return conn, conn.getresponse()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[StreamGateway] = []

    def start(command: list[str] = STREAM_RUNTIME, **env: str) -> StreamGateway:
        port = free_port()
        settings = {
            "AWS_LAMBDA_FUNCTION_NAME": "streamer",
            "GATEWAY_PORT": str(port),
            **STREAM_MODE,
            **env,
        }
        daemon = spawn_daemon(command, tmp_path / f"daemon{len(started)}", env=settings)
        wait_for_port(port, daemon.proc)
        started.append(StreamGateway(daemon, port))
        return started[-1]

    yield start
    for gateway in started:
        assert gateway.daemon.stop() == 0


@pytest.fixture
def gateway(gateway_factory: Any) -> StreamGateway:
    return gateway_factory()  # type: ignore[no-any-return]


def test_the_first_chunk_reaches_the_client_before_the_function_ends(
    gateway: StreamGateway, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    conn, answer = gateway.post({"chunks": ["first ", "second"], "gate": str(gate)})
    assert answer.status == 200
    assert answer.getheader("Transfer-Encoding") == "chunked"
    # Without a prelude: the content type the runtime gave.
    assert answer.getheader("Content-Type") == "application/octet-stream"
    assert answer.getheader("Apigw-Requestid")
    # The function waits for the gate: this chunk was streamed, not buffered.
    assert answer.read1(65536) == b"first "
    gate.touch()
    assert answer.read() == b"second"
    conn.close()


def test_the_prelude_gives_status_headers_and_cookies(gateway: StreamGateway) -> None:
    prelude = {
        "statusCode": 201,
        "headers": {"Content-Type": "text/plain", "X-Custom": "yes", "Content-Length": "1"},
        "cookies": ["a=1; Path=/", "b=2"],
    }
    conn, answer = gateway.post({"http": prelude, "chunks": ["hello ", "world"]})
    assert answer.status == 201
    assert answer.getheader("Content-Type") == "text/plain"
    assert answer.getheader("X-Custom") == "yes"
    assert [v for k, v in answer.getheaders() if k.lower() == "set-cookie"] == [
        "a=1; Path=/",
        "b=2",
    ]
    # The answer's framing is the gateway's: chunked, whatever the prelude said.
    assert answer.getheader("Transfer-Encoding") == "chunked"
    assert answer.getheader("Content-Length") is None
    assert answer.read() == b"hello world"
    conn.close()


def test_an_empty_prelude_answers_200(gateway: StreamGateway) -> None:
    conn, answer = gateway.post({"http": {}, "chunks": ["body"]})
    assert (answer.status, answer.read()) == (200, b"body")
    conn.close()


def test_a_mid_stream_error_cuts_the_answer(gateway: StreamGateway) -> None:
    fail = {"type": "Handler.Broken", "message": "broke after one chunk"}
    conn, answer = gateway.post({"chunks": ["partial"], "fail": fail})
    assert answer.status == 200
    assert answer.read1(65536) == b"partial"
    # No last chunk: the client can tell the answer is incomplete.
    with pytest.raises(http.client.IncompleteRead):
        answer.read()
    conn.close()
    # The instance is free again and the next request is answered whole.
    conn, answer = gateway.post({"chunks": ["again"]})
    assert (answer.status, answer.read()) == (200, b"again")
    conn.close()


def test_an_error_before_the_first_byte_answers_502(gateway: StreamGateway) -> None:
    fail = {"type": "Handler.Broken", "message": "nothing sent"}
    conn, answer = gateway.post({"chunks": [], "fail": fail})
    assert answer.status == 502
    assert json.loads(answer.read()) == {"message": "Internal server error"}
    conn.close()


def test_a_malformed_prelude_answers_502(gateway: StreamGateway) -> None:
    conn, answer = gateway.post({"http": {"statusCode": "soon"}, "chunks": ["x"]})
    assert answer.status == 502
    assert json.loads(answer.read()) == {"message": "Internal server error"}
    conn.close()


def test_a_function_that_does_not_stream_answers_its_proxy_response(
    gateway_factory: Any,
) -> None:
    gateway = gateway_factory([*PYTHON_RIC, "web.handler"])
    conn, answer = gateway.post({"hello": "world"})
    assert answer.status == 200
    event = json.loads(answer.read())  # web.py echoes the proxy event
    assert event["rawPath"] == "/stream"
    conn.close()


def test_the_invoke_mode_setting_is_checked() -> None:
    command = ["true"]
    assert daemon_config(command, {"GATEWAY_PORT": "9000"}).gateway.invoke_mode == "BUFFERED"  # type: ignore[union-attr]
    streaming = daemon_config(command, {"GATEWAY_PORT": "9000", **STREAM_MODE})
    assert streaming.gateway is not None and streaming.gateway.invoke_mode == "RESPONSE_STREAM"
    with pytest.raises(ConfigError, match="GATEWAY_INVOKE_MODE"):
        daemon_config(command, {"GATEWAY_PORT": "9000", "GATEWAY_INVOKE_MODE": "STREAMING"})
