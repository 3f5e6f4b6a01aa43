"""Response streaming end to end: a streaming runtime, InvokeWithResponseStream, Invoke."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer

from tests.e2e.conftest import FUNCTIONS, Daemon, poll, stays

STREAM_RUNTIME = [sys.executable, str(FUNCTIONS / "stream_runtime.py")]


def stream_path(daemon: Daemon) -> str:
    return f"/2021-11-15/functions/{daemon.function_name}/response-streaming-invocations"


def open_stream(
    daemon: Daemon, event: Any, headers: dict[str, str] | None = None, rcvbuf: int = 0
) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    if rcvbuf:  # a small window: what the client does not read stays in the daemon
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", daemon.port))
        conn.sock = sock
    conn.request("POST", stream_path(daemon), json.dumps(event).encode(), headers or {})
    return conn, conn.getresponse()


class Events:
    """Reads eventstream messages off an answer as they come."""

    def __init__(self, answer: Any) -> None:
        self._answer = answer
        self._buffer = EventStreamBuffer()
        self._ready: list[Any] = []

    def next(self) -> tuple[str, bytes]:
        while not self._ready:
            data = self._answer.read1(65536)
            assert data, "the stream ended before its InvokeComplete"
            self._buffer.add_data(data)
            self._ready.extend(self._buffer)
        message = self._ready.pop(0)
        return message.headers[":event-type"], message.payload

    def rest(self) -> tuple[bytes, dict[str, Any]]:
        """The body of every PayloadChunk left, and the InvokeComplete's fields."""
        body = []
        while True:
            kind, payload = self.next()
            if kind == "InvokeComplete":
                return b"".join(body), json.loads(payload)
            body.append(payload)


def client(daemon: Daemon) -> Any:
    return boto3.client(
        "lambda",
        endpoint_url=daemon.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}, read_timeout=30),
    )


def test_chunks_reach_the_client_before_the_function_ends(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon(STREAM_RUNTIME)
    gate = tmp_path / "gate"
    conn, answer = open_stream(daemon, {"chunks": ["first", "second"], "gate": str(gate)})
    assert answer.status == 200
    assert answer.getheader("Content-Type") == "application/vnd.amazon.eventstream"
    assert answer.getheader("X-Amz-Executed-Version") == "$LATEST"
    events = Events(answer)
    # The function is still waiting for the gate: this chunk was streamed, not buffered.
    assert events.next() == ("PayloadChunk", b"first")
    gate.touch()
    assert events.rest() == (b"second", {})
    conn.close()


def test_boto3_reads_the_events(start_daemon: Any) -> None:
    daemon = start_daemon(STREAM_RUNTIME)
    answer = client(daemon).invoke_with_response_stream(
        FunctionName=daemon.function_name,
        Payload=json.dumps({"chunks": ["a", "b", "c"]}),
        LogType="Tail",
    )
    assert answer["StatusCode"] == 200
    assert answer["ExecutedVersion"] == "$LATEST"
    events = list(answer["EventStream"])
    chunks = [e["PayloadChunk"]["Payload"] for e in events if "PayloadChunk" in e]
    assert b"".join(chunks) == b"abc"
    complete = events[-1]["InvokeComplete"]
    assert "ErrorCode" not in complete
    assert "REPORT RequestId:" in base64.b64decode(complete["LogResult"]).decode()


def test_a_mid_stream_error_ends_the_stream_with_it(start_daemon: Any) -> None:
    daemon = start_daemon(STREAM_RUNTIME)
    fail = {"type": "Handler.Broken", "message": "broke after one chunk"}
    answer = client(daemon).invoke_with_response_stream(
        FunctionName=daemon.function_name,
        Payload=json.dumps({"chunks": ["partial"], "fail": fail}),
    )
    assert answer["StatusCode"] == 200
    events = list(answer["EventStream"])
    assert events[0] == {"PayloadChunk": {"Payload": b"partial"}}
    complete = events[-1]["InvokeComplete"]
    assert complete["ErrorCode"] == "Handler.Broken"
    assert complete["ErrorDetails"] == "broke after one chunk"
    # The instance is free again: the next invocation runs on it.
    again = daemon.invoke({"chunks": ["ok"]})
    assert again.status == 200 and again.body == b"ok"


def test_plain_invoke_answers_the_whole_body_buffered(start_daemon: Any) -> None:
    daemon = start_daemon(STREAM_RUNTIME)
    answer = daemon.invoke({"chunks": ["one ", "two ", "three"]})
    assert answer.status == 200
    assert answer.header("X-Amz-Function-Error") is None
    assert answer.body == b"one two three"
    fail = {"type": "Handler.Broken", "message": "no"}
    failed = daemon.invoke({"chunks": ["x"], "fail": fail})
    assert failed.header("X-Amz-Function-Error") == "Unhandled"
    assert json.loads(failed.body)["errorType"] == "Handler.Broken"


def test_a_function_that_does_not_stream_answers_through_the_same_events(
    start_daemon: Any,
) -> None:
    daemon = start_daemon()  # awslambdaric, fn.handler: a buffered response
    conn, answer = open_stream(daemon, {"hello": "world"})
    assert answer.status == 200
    body, complete = Events(answer).rest()
    assert json.loads(body) == json.loads(daemon.invoke({"hello": "world"}).body)
    assert complete == {}
    conn.close()


def test_the_timeout_covers_the_whole_stream(start_daemon: Any) -> None:
    daemon = start_daemon(STREAM_RUNTIME, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "1"})
    conn, answer = open_stream(daemon, {"chunks": ["started"], "hang": True})
    events = Events(answer)
    assert events.next() == ("PayloadChunk", b"started")
    body, complete = events.rest()
    assert body == b""
    assert complete["ErrorCode"] == "Sandbox.Timedout"
    conn.close()
    # A new instance serves the next invocation.
    assert daemon.invoke({"chunks": ["after"]}).body == b"after"


def test_a_stream_past_20_mb_ends_with_response_size_too_large(start_daemon: Any) -> None:
    daemon = start_daemon(STREAM_RUNTIME, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "60"})
    conn, answer = open_stream(daemon, {"size": 20 * 1024 * 1024 + 65536})
    body, complete = Events(answer).rest()
    assert complete["ErrorCode"] == "Function.ResponseSizeTooLarge"
    assert len(body) <= 20 * 1024 * 1024
    conn.close()
    assert "answered 413" in poll(lambda: "answered" in daemon.stdout() and daemon.stdout())


def test_a_slow_reader_slows_the_runtime(start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon(STREAM_RUNTIME, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "60"})
    progress = tmp_path / "progress"
    total = 19 * 1024 * 1024
    event = {"size": total, "progress": str(progress), "sndbuf": 65536}
    conn, answer = open_stream(daemon, event, rcvbuf=65536)
    events = Events(answer)
    assert events.next()[0] == "PayloadChunk"

    def sent() -> int:
        return int(progress.read_text()) if progress.exists() else 0

    # Unread, the answer stops the runtime short of its body (the socket buffers between
    # them hold a few MB): on loopback an unbounded relay takes it all in well under this.
    assert stays(lambda: sent() < total, 2.0)
    body, complete = events.rest()
    assert complete == {}
    assert sent() == total
    conn.close()
