"""Streaming from other real runtimes: bash + curl, and AWS's Node.js runtime interface client.

The Node.js client (npm `aws-lambda-ric`) builds a native addon (curl and aws-lambda-cpp
from source) when installed; its tests run when NODE_RIC_MODULES names a node_modules
directory holding the built package, and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import FUNCTIONS
from tests.e2e.test_streaming import Events, client, open_stream
from tests.e2e.test_streaming_gateway import STREAM_MODE, gateway_factory  # noqa: F401

BASH_STREAM = [str(FUNCTIONS / "stream_bash.sh")]
NODE_FUNCTION = FUNCTIONS / "node_stream"
NODE_RIC = Path(os.environ.get("NODE_RIC_MODULES", "/nonexistent")) / "aws-lambda-ric"
needs_node_ric = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_RIC / "rapid-client.node").exists(),
    reason="node or a built aws-lambda-ric (NODE_RIC_MODULES) is absent",
)


def test_bash_curl_runtime_streams_chunks_as_written(start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon(BASH_STREAM)
    gate = tmp_path / "gate"
    conn, answer = open_stream(daemon, {"chunks": ["first ", "second"], "gate": str(gate)})
    assert answer.status == 200
    events = Events(answer)
    # curl is still uploading (its writer waits for the gate): the piece was streamed.
    assert events.next() == ("PayloadChunk", b"first ")
    gate.touch()
    assert events.rest() == (b"second", {})
    conn.close()
    # The plain Invoke API gets the whole body.
    assert daemon.invoke({"chunks": ["a", "b"]}).body == b"ab"


def test_bash_curl_runtime_behind_a_streaming_gateway(gateway_factory: Any) -> None:  # noqa: F811
    gateway = gateway_factory(BASH_STREAM)
    prelude = {"statusCode": 203, "headers": {"X-From": "bash"}, "cookies": ["c=1"]}
    conn, answer = gateway.post({"http": prelude, "chunks": ["one ", "two"]})
    assert answer.status == 203
    assert answer.getheader("X-From") == "bash"
    assert answer.getheader("Set-Cookie") == "c=1"
    assert answer.read() == b"one two"
    conn.close()


def node_command() -> list[str]:
    return ["node", str(NODE_RIC / "index.mjs"), "index.handler"]


def node_env() -> dict[str, str]:
    return {"LAMBDA_TASK_ROOT": str(NODE_FUNCTION), "AWS_LAMBDA_FUNCTION_TIMEOUT": "30"}


@needs_node_ric
def test_node_streamify_response_streams(start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon(node_command(), env=node_env(), cwd=NODE_FUNCTION)
    gate = tmp_path / "gate"
    conn, answer = open_stream(daemon, {"chunks": ["first ", "second"], "gate": str(gate)})
    assert answer.status == 200
    events = Events(answer)
    assert events.next() == ("PayloadChunk", b"first ")
    gate.touch()
    assert events.rest() == (b"second", {})
    conn.close()


@needs_node_ric
def test_node_mid_stream_error_reaches_boto3(start_daemon: Any) -> None:
    daemon = start_daemon(node_command(), env=node_env(), cwd=NODE_FUNCTION)
    answer = client(daemon).invoke_with_response_stream(
        FunctionName=daemon.function_name,
        Payload=json.dumps({"chunks": ["partial"], "fail": "broke"}),
    )
    events = list(answer["EventStream"])
    assert events[0] == {"PayloadChunk": {"Payload": b"partial"}}
    complete = events[-1]["InvokeComplete"]
    assert complete["ErrorCode"] == "Error"
    assert "broke" in complete["ErrorDetails"]


@needs_node_ric
def test_node_http_response_stream_behind_the_gateway(gateway_factory: Any) -> None:  # noqa: F811
    gateway = gateway_factory(node_command(), **node_env(), **STREAM_MODE)
    prelude = {"statusCode": 201, "headers": {"Content-Type": "text/html"}, "cookies": ["n=1"]}
    conn, answer = gateway.post({"http": prelude, "chunks": ["<p>", "hi</p>"]})
    assert answer.status == 201
    assert answer.getheader("Content-Type") == "text/html"
    assert answer.getheader("Set-Cookie") == "n=1"
    assert answer.read() == b"<p>hi</p>"
    conn.close()
