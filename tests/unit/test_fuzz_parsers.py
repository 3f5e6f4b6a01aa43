"""Random and mutated request bytes against the real daemon's Invoke and Runtime APIs.

Whatever arrives, every connection ends with answers that are never 5xx (or is just
closed), nothing logs a traceback, and valid requests are still served afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import REPO, Daemon, ok, spawn_daemon

INVOKE = "/2015-03-31/functions/fn/invocations"
RUNTIME = "/2018-06-01/runtime"
CONTEXT = base64.b64encode(b'{"custom":{"a":1}}').decode()
RID = "8f2a1c1e-0000-4000-8000-000000000000"

INVOKE_SEEDS = [
    f'POST {INVOKE} HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{{"a":1}}',
    f"POST {INVOKE}?Qualifier=$LATEST HTTP/1.1\r\nX-Amz-Invocation-Type: DryRun\r\n"
    f"X-Amz-Client-Context: {CONTEXT}\r\nContent-Length: 2\r\n\r\n[]",
    f"POST {INVOKE} HTTP/1.1\r\nX-Amz-Invocation-Type: Event\r\nTransfer-Encoding: chunked"
    "\r\n\r\n3\r\n[1]\r\n0\r\n\r\n",
    f"POST {INVOKE} HTTP/1.1\r\nX-Amz-Log-Type: Tail\r\nExpect: 100-continue\r\n"
    "Content-Length: 4\r\n\r\nnull",
    "GET /2015-03-31/functions/fn HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\n",
]
RUNTIME_SEEDS = [
    f"POST {RUNTIME}/invocation/{RID}/response HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}",
    f"POST {RUNTIME}/invocation/{RID}/error HTTP/1.1\r\n"
    "Lambda-Runtime-Function-Error-Type: E\r\nContent-Length: 2\r\n\r\n{}",
    f"POST {RUNTIME}/init/error HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    f"GET {RUNTIME}/nope HTTP/1.1\r\nConnection: close\r\n\r\n",
]
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # A runtime that echoes bytes: the function never fails, so any traceback is ours.
    started = spawn_daemon(
        [sys.executable, str(REPO / "bench" / "raw_runtime.py")],
        tmp_path_factory.mktemp("fuzz"),
        env={"AWS_LAMBDA_FUNCTION_NAME": "fn"},
    )
    yield started
    started.stop()


@st.composite
def mutated(draw: st.DrawFn, seeds: list[str]) -> bytes:
    """A seed request with a few random edits, or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=300))
    data = bytearray(draw(st.sampled_from(seeds)).encode())
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        if edit == "insert":
            data[at:at] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=8),
                    st.sampled_from([b"\r\n", b"\n", b"\r", b":", b" ", b"\x00", b"\xff"]),
                )
            )
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif edit == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif edit == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


ODD_BODIES = [b"[" * 3000 + b"]" * 3000, b"NaN", b"-Infinity", b"7" * 5000, b"\xff\xfe"]
ODD_HEADERS = [
    b"X-Amz-Client-Context: " + base64.b64encode(b'{"a":\r\n\r\n1}'),
    b"X-Amz-Client-Context: " + base64.b64encode(b"[" * 2000),
    b"X-Amz-Cognito-Identity: [" + b"[" * 2000,
    b"X-Amz-Tenant-Id: \xff",
    b"X-Amzn-Trace-Id: Root=1",
    b"X-Amz-Invocation-Type: Event",
    b"X-Amz-Invocation-Type: DryRun",
    b"Upgrade: h2c\r\nConnection: Upgrade",
]


@st.composite
def invoke_with_body(draw: st.DrawFn) -> bytes:
    """A well-formed invoke request whose body and headers are odd."""
    body = draw(st.one_of(st.sampled_from(ODD_BODIES), st.binary(max_size=200)))
    headers = draw(st.lists(st.sampled_from(ODD_HEADERS), max_size=3))
    head = b"".join(header + b"\r\n" for header in headers)
    return (
        f"POST {INVOKE} HTTP/1.1\r\nContent-Length: {len(body)}\r\n".encode()
        + head
        + b"\r\n"
        + body
    )


def exchange(port: int, data: bytes) -> bytes:
    """Send `data`, end our side, and read until the daemon closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def assert_no_server_error(received: bytes, sent: bytes) -> None:
    for status in STATUS.findall(received):
        assert int(status) < 500, (sent, received[:500])


def test_fuzzed_requests_never_break_the_daemon(daemon: Daemon) -> None:
    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(
        st.one_of(
            st.tuples(st.just("invoke"), mutated(INVOKE_SEEDS)),
            st.tuples(st.just("invoke"), invoke_with_body()),
            st.tuples(st.just("runtime"), mutated(RUNTIME_SEEDS)),
        )
    )
    def one(case: tuple[str, bytes]) -> None:
        api, data = case
        port = daemon.port if api == "invoke" else daemon.runtime_port
        received = exchange(port, data)
        assert_no_server_error(received, data)
        seen.update((api, int(status)) for status in STATUS.findall(received))

    seen: set[tuple[str, int]] = set()
    one()
    # The mutations reach the handlers too, not only the parser's refusals.
    assert {("invoke", 200), ("invoke", 202), ("invoke", 400)} <= seen, seen
    assert any(api == "runtime" for api, _ in seen), seen
    logs = daemon.stdout() + daemon.stderr()
    assert "Traceback" not in logs, logs[-3000:]
    assert ok(daemon.invoke({"after": "fuzz"}, timeout=20)) == {"after": "fuzz"}


def test_seeds_are_served(daemon: Daemon, tmp_path: Path) -> None:
    # The seeds themselves reach the handlers (else the fuzzing would test only the parser).
    answer = exchange(daemon.port, INVOKE_SEEDS[0].encode())
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"a":1}'), answer
    answer = exchange(daemon.runtime_port, RUNTIME_SEEDS[3].encode())
    assert re.match(rb"HTTP/1\.1 (403|404) ", answer), answer
