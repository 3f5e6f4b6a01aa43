"""Hostile clients against the real daemon: forged headers, oversized heads, odd JSON,
a flood of Events. Each answer is Lambda's, and the daemon keeps serving afterwards."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import PYTHON_RIC, Daemon, Response, ok, raw_exchange, spawn_daemon

HTTP_TIMEOUT = 20
PATH = "/2015-03-31/functions/fn/invocations"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    started = spawn_daemon(
        [*PYTHON_RIC, "fn.handler"],
        tmp_path_factory.mktemp("hostile"),
        env={"AWS_LAMBDA_FUNCTION_NAME": "fn"},
    )
    yield started
    started.stop()


def error_of(response: Response, status: int, code: str) -> dict[str, object]:
    assert response.status == status, (response.status, response.body[:300])
    assert response.header("x-amzn-ErrorType") == code
    body = response.json()
    assert body["Type"] == "User"
    return body  # type: ignore[no-any-return]


# -- item 3: nothing from the caller forges a header on the runtime's /next answer --------


def test_a_client_context_with_cr_lf_cannot_forge_runtime_headers(daemon: Daemon) -> None:
    # Valid JSON (CR LF are whitespace between tokens) that would end the header block.
    text = '{"custom":{"a":1},\r\n\r\n"env":{"b":"Lambda-Runtime-Deadline-Ms: 1"}}'
    header = base64.b64encode(text.encode()).decode()
    response = daemon.invoke(
        {"context": 1}, headers={"X-Amz-Client-Context": header}, timeout=HTTP_TIMEOUT
    )
    seen = ok(response)["client_context"]
    assert seen["custom"] == {"a": 1}
    assert seen["env"] == {"b": "Lambda-Runtime-Deadline-Ms: 1"}
    assert ok(daemon.invoke({"still": "alive"}, timeout=HTTP_TIMEOUT)) == {"still": "alive"}


def test_a_non_ascii_client_context_reaches_the_function(daemon: Daemon) -> None:
    header = base64.b64encode(json.dumps({"custom": {"v": "ünï ✓"}}).encode()).decode()
    response = daemon.invoke(
        {"context": 1}, headers={"X-Amz-Client-Context": header}, timeout=HTTP_TIMEOUT
    )
    assert ok(response)["client_context"]["custom"] == {"v": "ünï ✓"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Amz-Cognito-Identity", "not json"),
        ("X-Amz-Cognito-Identity", "[1, 2]"),
        ("X-Amz-Tenant-Id", "a" * 300),
        ("X-Amz-Tenant-Id", "tenant\tid"),
    ],
)
def test_invalid_identity_headers_are_400(daemon: Daemon, name: str, value: str) -> None:
    response = daemon.invoke({"k": 1}, headers={name: value}, timeout=HTTP_TIMEOUT)
    error_of(response, 400, "InvalidParameterValueException")


# -- item 8: payloads -------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"NaN", b"[-Infinity]"],
    ids=["deep-array", "deep-object", "nan", "infinity"],
)
def test_non_json_payloads_are_400(daemon: Daemon, payload: bytes) -> None:
    response = daemon.invoke(raw=payload, timeout=HTTP_TIMEOUT)
    body = error_of(response, 400, "InvalidRequestContentException")
    assert "Could not parse request body into json" in str(body["message"])
    assert "Traceback" not in daemon.stdout() + daemon.stderr()


def test_a_5000_digit_integer_is_valid_json(daemon: Daemon) -> None:
    number = b"7" * 5000
    response = daemon.invoke(
        raw=number, headers={"X-Amz-Invocation-Type": "DryRun"}, timeout=HTTP_TIMEOUT
    )
    assert response.status == 204, response.body[:300]


# -- item 6: the head of a request is capped; the Runtime API keeps its larger cap -----


def test_a_header_block_over_64_kb_is_431(daemon: Daemon) -> None:
    head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 70_000}\r\n"
    answer = raw_exchange(daemon.port, head.encode() + b"Content-Length: 2\r\n\r\n{}")
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert b"x-amzn-ErrorType: RequestHeaderFieldsTooLarge\r\n" in rest
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["Type"] == "User"
    assert ok(daemon.invoke({"after": 431}, timeout=HTTP_TIMEOUT)) == {"after": 431}


def test_a_runtime_may_send_a_1_mb_xray_error_cause(daemon: Daemon) -> None:
    # awslambdaric puts the exception (message included) in an X-Ray header on /error.
    message = "m" * 900_000
    response = daemon.invoke({"raise": message}, timeout=HTTP_TIMEOUT)
    assert response.status == 200
    assert response.header("X-Amz-Function-Error") == "Unhandled"
    assert response.json()["errorMessage"] == message


# -- item 7 on the daemon: an over-limit body is refused before it is sent -------------


def test_expect_continue_over_6_mb_gets_413_without_100(daemon: Daemon) -> None:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 7000000\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    answer = raw_exchange(daemon.port, head.encode())
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in answer
    assert b"x-amzn-ErrorType: RequestTooLargeException\r\n" in answer


# -- item 9: Events held in memory are bounded ----------------------------------------


def test_events_beyond_the_in_memory_queue_get_429(tmp_path: Path) -> None:
    daemon = spawn_daemon(
        [*PYTHON_RIC, "fn.handler"],
        tmp_path,
        env={"AWS_LAMBDA_FUNCTION_NAME": "fn", "SHUTDOWN_GRACE_PERIOD": "1"},
    )
    try:
        # Each event keeps the one runtime busy; ~1 MB each, so 64 MB fill the queue.
        event = json.dumps({"sleep": 2, "pad": "p" * (1024 * 1024 - 100)}).encode()
        statuses = []
        for _ in range(80):
            response = daemon.invoke(
                raw=event, headers={"X-Amz-Invocation-Type": "Event"}, timeout=HTTP_TIMEOUT
            )
            statuses.append(response.status)
            if response.status != 202:
                break
        assert statuses[:60] == [202] * 60
        body = error_of(response, 429, "TooManyRequestsException")
        assert body["Reason"] == "ConcurrentInvocationLimitExceeded"
        assert isinstance(body["message"], str)
    finally:
        daemon.stop()  # the queued events are dropped after the grace period
