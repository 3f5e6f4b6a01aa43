"""Streaming through lambda-server (RabbitMQ at 127.0.0.1:5672): answered buffered.

A daemon serves a streaming runtime over AMQP; lambda-server relays each invocation as
one message and its reply as one message, so InvokeWithResponseStream gets the whole
body in one PayloadChunk, then InvokeComplete; a RESPONSE_STREAM gateway answers with
the prelude applied and the body whole.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

from tests.e2e.broker import Names, amqp_daemon, broker_url, names, start_server
from tests.e2e.conftest import free_port
from tests.e2e.test_streaming import STREAM_RUNTIME

# The broker fixtures, re-exported so that pytest (and ruff) see them as used here.
__all__ = ["amqp_daemon", "broker_url", "names", "start_server"]


def test_a_streamed_response_comes_as_one_payload_chunk(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    name = names.function()
    amqp_daemon(name, command=STREAM_RUNTIME)
    client = start_server().lambda_client()
    answer = client.invoke_with_response_stream(
        FunctionName=name, Payload=json.dumps({"chunks": ["one ", "two ", "three"]})
    )
    assert answer["StatusCode"] == 200
    events = list(answer["EventStream"])
    assert events[0] == {"PayloadChunk": {"Payload": b"one two three"}}
    assert len(events) == 2
    assert "ErrorCode" not in events[1]["InvokeComplete"]


def test_a_function_error_shows_in_invoke_complete(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    name = names.function()
    amqp_daemon(name, command=STREAM_RUNTIME)
    client = start_server().lambda_client()
    fail = {"type": "Handler.Broken", "message": "broke mid-stream"}
    answer = client.invoke_with_response_stream(
        FunctionName=name, Payload=json.dumps({"chunks": ["partial"], "fail": fail})
    )
    events = list(answer["EventStream"])
    complete = events[-1]["InvokeComplete"]
    assert complete["ErrorCode"] == "Handler.Broken"
    assert complete["ErrorDetails"] == "broke mid-stream"


def test_a_streaming_gateway_answers_the_prelude_whole(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    name = names.function()
    amqp_daemon(name, command=STREAM_RUNTIME)
    port = free_port()
    start_server({"GATEWAY_PORT": str(port), "GATEWAY_INVOKE_MODE": "RESPONSE_STREAM"})
    prelude = {"statusCode": 202, "headers": {"X-Via": "broker"}, "cookies": ["s=1"]}
    body = json.dumps({"http": prelude, "chunks": ["whole ", "body"]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", f"/{name}/path", body)
    answer = conn.getresponse()
    assert answer.status == 202
    assert answer.getheader("X-Via") == "broker"
    assert answer.getheader("Set-Cookie") == "s=1"
    assert answer.read() == b"whole body"
    conn.close()
