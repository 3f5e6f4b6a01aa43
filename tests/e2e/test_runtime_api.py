"""The Runtime API as a runtime sees it: /next headers, Lambda's answers to misuse
(unknown or repeated request ids, wrong lifecycle state, oversized responses), errors and
init errors passed to the invoker, and one Runtime API address per instance.

Most tests run functions/raw_runtime.py, which misbehaves on purpose and reports the
daemon's answers through its own responses.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.e2e.conftest import FUNCTIONS, ok, poll

RAW = [sys.executable, str(FUNCTIONS / "raw_runtime.py")]
MAX_RESPONSE = 6291556
ARN = "arn:aws:lambda:us-east-1:123456789012:function:fn"


def logged(daemon: Any, call: str) -> dict[str, Any]:
    """The raw runtime's record of its API call named `call` (fetched by invoking it)."""
    entries = [e for e in ok(daemon.invoke({"do": "report"}))["log"] if e["call"] == call]
    assert entries, f"the raw runtime made no {call!r} call"
    return entries[-1]  # type: ignore[no-any-return]


def test_next_carries_the_invocation_headers(start_daemon):
    daemon = start_daemon(RAW, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "7"})
    before_ms = time.time() * 1000
    response = daemon.invoke({"do": "headers"})
    after_ms = time.time() * 1000
    headers = {k.lower(): v for k, v in ok(response)["headers"].items()}
    assert headers["lambda-runtime-aws-request-id"] == response.header("x-amzn-RequestId")
    deadline = int(headers["lambda-runtime-deadline-ms"])
    assert before_ms + 7000 - 100 <= deadline <= after_ms + 7000 + 100, (
        f"deadline {deadline} is not now + 7 s ({before_ms:.0f}..{after_ms:.0f})"
    )
    assert headers["lambda-runtime-invoked-function-arn"] == ARN
    assert headers["lambda-runtime-trace-id"].startswith("Root=1-")
    assert headers["content-type"].startswith("application/json")


def test_next_passes_the_callers_trace_id_and_qualified_arn(start_daemon):
    daemon = start_daemon(RAW)
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    response = daemon.invoke(
        {"do": "headers"}, name="fn:$LATEST", headers={"X-Amzn-Trace-Id": trace}
    )
    headers = {k.lower(): v for k, v in ok(response)["headers"].items()}
    assert headers["lambda-runtime-trace-id"] == trace
    assert headers["lambda-runtime-invoked-function-arn"] == ARN + ":$LATEST"


def test_response_before_any_next_is_an_invalid_state_transition(start_daemon):
    daemon = start_daemon(RAW, env={"RAW_BEFORE": "response"})
    assert ok(daemon.invoke({"hello": "world"})) == {"hello": "world"}
    entry = logged(daemon, "response_before_next")
    assert entry["status"] == 403, entry
    assert entry["body"]["errorType"] == "InvalidStateTransition"
    assert entry["body"]["errorMessage"]


def test_response_for_an_unknown_request_id_is_refused(start_daemon):
    daemon = start_daemon(RAW)
    log = ok(daemon.invoke({"do": "unknown"}))["log"]
    entry = next(e for e in log if e["call"] == "response_unknown_id")
    assert entry["status"] == 400, entry
    assert entry["body"]["errorType"] == "InvalidRequestID"
    assert ok(daemon.invoke({"still": "working"})) == {"still": "working"}


def test_second_response_for_the_same_request_id_is_refused(start_daemon):
    daemon = start_daemon(RAW)
    assert ok(daemon.invoke({"do": "twice"})) == {"first": True}
    assert logged(daemon, "response_first")["status"] == 202
    entry = logged(daemon, "response_second")
    assert entry["status"] == 400, entry
    assert entry["body"]["errorType"] == "InvalidRequestID"


def test_next_while_holding_an_invocation_is_refused(start_daemon):
    # A second /next that blocked would hold the invocation until its (long) deadline: the
    # client gives up well before.
    daemon = start_daemon(RAW, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "120"})
    log = ok(daemon.invoke({"do": "next_again"}, timeout=30))["log"]
    entry = next(e for e in log if e["call"] == "next_while_busy")
    assert entry["status"] == 403, entry
    assert entry["body"]["errorType"] == "InvalidStateTransition"


def test_oversized_response_is_413_for_the_runtime_and_an_error_for_the_invoker(start_daemon):
    daemon = start_daemon(RAW)
    size = MAX_RESPONSE + 1
    response = daemon.invoke({"do": "big", "size": size})
    assert response.status == 200
    assert response.header("X-Amz-Function-Error") == "Unhandled"
    body = response.json()
    assert body["errorType"] == "Function.ResponseSizeTooLarge"
    assert f"({size} bytes)" in body["errorMessage"]
    assert f"({MAX_RESPONSE} bytes)" in body["errorMessage"]
    entry = logged(daemon, "response_big")
    assert entry["status"] == 413, entry
    assert entry["body"]["errorType"] == "RequestEntityTooLarge"


def test_response_of_exactly_the_limit_is_accepted(start_daemon):
    daemon = start_daemon(RAW)
    response = daemon.invoke({"do": "big", "size": MAX_RESPONSE})
    assert response.status == 200
    assert response.header("X-Amz-Function-Error") is None
    assert len(response.body) == MAX_RESPONSE
    assert logged(daemon, "response_big")["status"] == 202


def test_oversized_response_from_awslambdaric(fn_daemon):
    # fn.py returns "x" * size; JSON quotes make it two bytes over the limit.
    response = fn_daemon.invoke({"size": MAX_RESPONSE})
    assert response.status == 200
    assert response.header("X-Amz-Function-Error") == "Unhandled"
    assert response.json()["errorType"] == "Function.ResponseSizeTooLarge"
    assert ok(fn_daemon.invoke({"after": 1})) == {"after": 1}


def test_error_with_a_custom_type_reaches_the_invoker_unchanged(start_daemon):
    daemon = start_daemon(RAW)
    error = {
        "errorMessage": "custom failure",
        "errorType": "Custom.Thing",
        "stackTrace": ["line 1", "line 2"],
    }
    response = daemon.invoke({"do": "error", "type": "Custom.Thing", "body": error})
    assert response.status == 200
    assert response.header("X-Amz-Function-Error") == "Unhandled"
    assert response.body == json.dumps(error).encode()
    assert logged(daemon, "error")["status"] == 202


def test_init_error_body_reaches_the_invoker(start_daemon):
    error = '{"errorMessage": "init went wrong", "errorType": "Custom.InitFailed"}'
    daemon = start_daemon(
        RAW,
        env={
            "RAW_BEFORE": "init_error",
            "RAW_INIT_ERROR_TYPE": "Custom.InitFailed",
            "RAW_INIT_ERROR_BODY": error,
            "AWS_LAMBDA_FUNCTION_TIMEOUT": "120",
        },
    )
    for _ in range(2):  # each invocation tries init again
        # At once: the client gives up long before the invocation's deadline.
        response = daemon.invoke({"x": 1}, timeout=30)
        assert response.status == 200
        assert response.header("X-Amz-Function-Error") == "Unhandled"
        assert response.body == error.encode()
    assert poll(lambda: daemon.runtime_pids() == [], timeout=5), "the failed runtime lingers"


def test_each_instance_has_its_own_runtime_api_address(start_daemon):
    daemon = start_daemon(
        env={
            "MAX_CONCURRENCY": "2",
            "AWS_LAMBDA_MAX_CONCURRENCY": "4",
            "AWS_LAMBDA_FUNCTION_TIMEOUT": "30",
        }
    )
    with ThreadPoolExecutor(2) as executor:
        futures = [executor.submit(daemon.invoke, {"env": 1, "sleep": 1.5}) for _ in range(2)]
        envs = [ok(f.result(timeout=60)) for f in futures]
    addresses = [env["AWS_LAMBDA_RUNTIME_API"] for env in envs]
    assert addresses[0] != addresses[1], "two instances share one Runtime API address"
    for address in addresses:
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1" and port.isdigit()
    assert f"127.0.0.1:{daemon.runtime_port}" in addresses
    for env in envs:
        assert "AWS_LAMBDA_MAX_CONCURRENCY" not in env
        assert env["AWS_LAMBDA_FUNCTION_NAME"] == "fn"
