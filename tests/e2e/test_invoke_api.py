"""The Invoke API (2015-03-31) over raw HTTP: names, invocation types, errors, logs, context.

Most tests share one daemon (module scope) running tests/e2e/functions/fn.py under
awslambdaric; tests that need a differently configured daemon start their own.
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import PYTHON_RIC, Daemon, Response, poll, spawn_daemon

NAME = "fn"
REGION = "us-east-1"
ACCOUNT = "123456789012"
ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{NAME}"
MEMORY = 256
TIMEOUT = 3
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Generous, so a busy shared machine does not turn into failures; a hang still fails.
HTTP_TIMEOUT = 20


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    started = spawn_daemon(
        [*PYTHON_RIC, "fn.handler"],
        tmp_path_factory.mktemp("invoke_api"),
        env={
            "AWS_LAMBDA_FUNCTION_NAME": NAME,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(MEMORY),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(TIMEOUT),
        },
    )
    yield started
    started.stop()


def invoke(daemon: Daemon, payload: Any = None, **kwargs: Any) -> Response:
    kwargs.setdefault("timeout", HTTP_TIMEOUT)
    response = daemon.invoke(payload, **kwargs)
    assert response.status < 500, (response.status, response.body[:500])
    return response


def assert_error(response: Response, status: int, code: str) -> dict[str, Any]:
    """An AWS error answer: status, x-amzn-ErrorType, JSON body with Type and a message."""
    assert response.status == status, (response.status, response.body[:500])
    assert response.header("x-amzn-ErrorType") == code
    body = response.json()
    assert body["Type"] == "User"
    assert isinstance(body.get("message", body.get("Message")), str)
    return body  # type: ignore[no-any-return]


def wait_for_output(daemon: Daemon, text: str, timeout: float = 15) -> bool:
    return bool(poll(lambda: text in daemon.stdout(), timeout))


def log_result(response: Response) -> str:
    header = response.header("X-Amz-Log-Result")
    assert header is not None, "no X-Amz-Log-Result header"
    return base64.b64decode(header, validate=True).decode()


# -- FunctionName and Qualifier -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "query", "arn_suffix"),
    [
        ("fn", "", ""),
        ("function", "", ""),
        ("fn:$LATEST", "", ":$LATEST"),
        ("fn", "?Qualifier=$LATEST", ":$LATEST"),
        ("fn", "?Qualifier=%24LATEST", ":$LATEST"),
        ("fn:$LATEST", "?Qualifier=$LATEST", ":$LATEST"),
        (ARN, "", ""),
        (f"{ARN}:$LATEST", "", ":$LATEST"),
        (f"{ACCOUNT}:function:fn", "", ""),
        (f"{ACCOUNT}:function:fn:$LATEST", "", ":$LATEST"),
        ("fn%3A%24LATEST", "", ":$LATEST"),
        ("fn%3A$LATEST", "", ":$LATEST"),
        (ARN.replace(":", "%3A"), "", ""),
        (f"{ACCOUNT}%3Afunction%3Afn", "", ""),
    ],
)
def test_function_name_forms(daemon: Daemon, name: str, query: str, arn_suffix: str) -> None:
    response = invoke(daemon, {"context": 1}, name=name, query=query)
    assert response.status == 200, response.body
    assert response.header("X-Amz-Function-Error") is None, response.body
    context = response.json()
    assert context["function_name"] == NAME
    assert context["invoked_function_arn"] == ARN + arn_suffix


@pytest.mark.parametrize(
    ("name", "query", "missing_arn"),
    [
        ("other", "", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:other"),
        ("fn:prod", "", f"{ARN}:prod"),
        ("fn", "?Qualifier=7", f"{ARN}:7"),
        ("fn%3Aprod", "", f"{ARN}:prod"),
        (f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:fn", "", None),
        ("arn:aws:lambda:us-east-1:999999999999:function:fn", "", None),
        ("999999999999:function:fn", "", None),
        (f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:other", "", None),
    ],
)
def test_unknown_function_or_qualifier_is_404(
    daemon: Daemon, name: str, query: str, missing_arn: str | None
) -> None:
    response = invoke(daemon, {"k": 1}, name=name, query=query)
    body = assert_error(response, 404, "ResourceNotFoundException")
    assert UUID_RE.match(response.header("x-amzn-RequestId") or "")
    if missing_arn is not None:
        assert body == {"Type": "User", "Message": f"Function not found: {missing_arn}"}
    else:
        assert body["Message"].startswith("Function not found: arn:aws:lambda:")


def test_qualifier_in_name_conflicting_with_query_is_400(daemon: Daemon) -> None:
    response = invoke(daemon, {"k": 1}, name="fn:$LATEST", query="?Qualifier=prod")
    body = assert_error(response, 400, "InvalidParameterValueException")
    assert "message" in body


# -- invocation types ---------------------------------------------------------------------


def test_request_response(daemon: Daemon) -> None:
    response = invoke(
        daemon, {"key": "value"}, headers={"X-Amz-Invocation-Type": "RequestResponse"}
    )
    assert response.status == 200
    assert response.json() == {"key": "value"}
    assert response.header("X-Amz-Executed-Version") == "$LATEST"
    assert UUID_RE.match(response.header("x-amzn-RequestId") or "")
    assert response.header("X-Amz-Function-Error") is None
    assert response.header("X-Amz-Log-Result") is None


def test_request_ids_differ(daemon: Daemon) -> None:
    ids = {invoke(daemon, {"n": n}).header("x-amzn-RequestId") for n in range(3)}
    assert len(ids) == 3


def test_event_is_accepted_and_runs(daemon: Daemon) -> None:
    marker = f"event-ran-{uuid.uuid4().hex}"
    response = invoke(daemon, {"print": marker}, headers={"X-Amz-Invocation-Type": "Event"})
    assert response.status == 202
    assert response.body == b""
    assert UUID_RE.match(response.header("x-amzn-RequestId") or "")
    assert wait_for_output(daemon, marker), "the Event invocation never ran"


def test_dry_run_does_not_run_the_function(daemon: Daemon) -> None:
    marker = f"dry-run-{uuid.uuid4().hex}"
    response = invoke(daemon, {"print": marker}, headers={"X-Amz-Invocation-Type": "DryRun"})
    assert response.status == 204
    assert response.body == b""
    # A synchronous invoke after it has finished: had the dry run been queued, it ran first.
    assert invoke(daemon, {"k": 1}).status == 200
    assert marker not in daemon.stdout()


@pytest.mark.parametrize("invocation_type", ["Async", "requestresponse"])
def test_invalid_invocation_type_is_400(daemon: Daemon, invocation_type: str) -> None:
    response = invoke(daemon, {"k": 1}, headers={"X-Amz-Invocation-Type": invocation_type})
    assert_error(response, 400, "InvalidParameterValueException")


def test_invalid_log_type_is_400(daemon: Daemon) -> None:
    response = invoke(daemon, {"k": 1}, headers={"X-Amz-Log-Type": "Full"})
    assert_error(response, 400, "InvalidParameterValueException")


# -- function errors ----------------------------------------------------------------------


def test_function_error_is_200_unhandled(daemon: Daemon) -> None:
    response = invoke(daemon, {"raise": "broken on purpose"})
    assert response.status == 200
    assert response.header("X-Amz-Function-Error") == "Unhandled"
    assert response.header("X-Amz-Executed-Version") == "$LATEST"
    error = response.json()
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "broken on purpose"
    assert isinstance(error["stackTrace"], list)
    # The runtime stays usable.
    assert invoke(daemon, {"after": "error"}).json() == {"after": "error"}


# -- LogType Tail -------------------------------------------------------------------------


def test_log_tail(daemon: Daemon) -> None:
    marker = f"tail-line-{uuid.uuid4().hex}"
    response = invoke(daemon, {"print": marker}, headers={"X-Amz-Log-Type": "Tail"})
    assert response.status == 200
    request_id = response.header("x-amzn-RequestId")
    log = log_result(response)
    start = log.index(f"START RequestId: {request_id} Version: $LATEST")
    printed = log.index(marker)
    end = log.index(f"END RequestId: {request_id}")
    report = re.search(
        rf"REPORT RequestId: {request_id}\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\t"
        rf"Memory Size: {MEMORY} MB\tMax Memory Used: \d+ MB\t",
        log,
    )
    assert report is not None, log
    assert start < printed < end < report.start()


def test_log_tail_is_at_most_4kb(daemon: Daemon) -> None:
    response = invoke(daemon, {"print": "y" * 10240}, headers={"X-Amz-Log-Type": "Tail"})
    assert response.status == 200
    header = response.header("X-Amz-Log-Result")
    assert header is not None
    raw = base64.b64decode(header, validate=True)
    assert 0 < len(raw) <= 4096
    # The tail is the end of the log, so the REPORT line is in it.
    assert f"REPORT RequestId: {response.header('x-amzn-RequestId')}" in raw.decode()


def test_no_log_result_without_tail_or_for_events(daemon: Daemon) -> None:
    response = invoke(daemon, {"k": 1}, headers={"X-Amz-Log-Type": "None"})
    assert response.status == 200
    assert response.header("X-Amz-Log-Result") is None
    event = invoke(
        daemon, {"k": 1}, headers={"X-Amz-Invocation-Type": "Event", "X-Amz-Log-Type": "Tail"}
    )
    assert event.status == 202
    assert event.header("X-Amz-Log-Result") is None


# -- payloads and bad input ---------------------------------------------------------------


def test_json_string_payload_echoes(daemon: Daemon) -> None:
    response = invoke(daemon, raw=b'"hello"')
    assert response.status == 200
    assert response.json() == "hello"


@pytest.mark.parametrize("raw", [b"{bad json", b"{'single': 'quotes'}", b"[1, 2", b"nope"])
def test_invalid_json_is_400(daemon: Daemon, raw: bytes) -> None:
    response = invoke(daemon, raw=raw)
    body = assert_error(response, 400, "InvalidRequestContentException")
    assert "message" in body


def test_empty_body_is_accepted(daemon: Daemon) -> None:
    response = invoke(daemon, raw=b"")
    assert response.status == 200


def test_empty_body_reaches_the_function_as_empty_object(daemon: Daemon) -> None:
    # Lambda hands the runtime `{}` when the caller sent no payload.
    response = invoke(daemon, raw=b"")
    assert response.status == 200
    assert response.header("X-Amz-Function-Error") is None, response.body
    assert response.json() == {}


def test_body_over_6mb_is_413(daemon: Daemon) -> None:
    raw = b'"' + b"x" * 6291456 + b'"'
    response = invoke(daemon, raw=raw)
    body = assert_error(response, 413, "RequestTooLargeException")
    assert "message" in body
    assert invoke(daemon, {"still": "alive"}).status == 200


def test_body_of_exactly_6mb_is_accepted(daemon: Daemon) -> None:
    raw = b'"' + b"x" * (6291456 - 2) + b'"'
    response = invoke(daemon, raw=raw)
    assert response.status == 200
    assert response.header("X-Amz-Function-Error") is None, response.body[:300]
    assert len(response.json()) == 6291456 - 2


def test_event_body_over_1mb_is_413_but_sync_accepts_it(daemon: Daemon) -> None:
    raw = b'"' + b"x" * (1024 * 1024) + b'"'
    event = invoke(daemon, raw=raw, headers={"X-Amz-Invocation-Type": "Event"})
    assert_error(event, 413, "RequestTooLargeException")
    sync = invoke(daemon, raw=raw)
    assert sync.status == 200
    assert sync.header("X-Amz-Function-Error") is None


@pytest.mark.parametrize(
    "client_context",
    [
        "not base64!!",
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b'"a json string, not an object"').decode(),
        base64.b64encode(json.dumps({"custom": {"k": "v" * 4000}}).encode()).decode(),
    ],
)
def test_bad_client_context_is_400(daemon: Daemon, client_context: str) -> None:
    response = invoke(daemon, {"k": 1}, headers={"X-Amz-Client-Context": client_context})
    assert_error(response, 400, "InvalidParameterValueException")


def test_client_context_reaches_the_function(daemon: Daemon) -> None:
    # No "client" member: fn.py cannot serialise awslambdaric's slotted Client object.
    context = {"custom": {"tenant": "t-1", "n": 2}, "env": {"platform": "test"}}
    header = base64.b64encode(json.dumps(context).encode()).decode()
    response = invoke(daemon, {"context": 1}, headers={"X-Amz-Client-Context": header})
    assert response.status == 200, response.body
    seen = response.json()["client_context"]
    assert seen["custom"] == context["custom"]
    assert seen["env"] == context["env"]


def test_no_client_context_means_none(daemon: Daemon) -> None:
    response = invoke(daemon, {"context": 1})
    assert response.json()["client_context"] is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("POST", "/nope"),
        ("POST", "/2015-03-31/functions/fn"),
        ("POST", "/2015-03-31/functions/fn/invocation"),
        ("GET", "/2015-03-31/functions"),
    ],
)
def test_unknown_route_is_404_json(daemon: Daemon, method: str, path: str) -> None:
    response = daemon.request(
        method, path, b"{}" if method == "POST" else None, timeout=HTTP_TIMEOUT
    )
    assert response.status == 404
    assert isinstance(response.json(), dict)
    assert response.header("x-amzn-ErrorType")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_on_the_invoke_path_are_405(daemon: Daemon, method: str) -> None:
    response = daemon.request(
        method,
        "/2015-03-31/functions/fn/invocations",
        b"{}" if method == "PUT" else None,
        timeout=HTTP_TIMEOUT,
    )
    assert response.status == 405
    assert isinstance(response.json(), dict)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"X-Amz-Invocation-Type": "Event", "X-Amz-Client-Context": "%%%"},
        {"X-Amz-Invocation-Type": "DryRun", "X-Amz-Log-Type": "Tail"},
        {"X-Amzn-Trace-Id": "garbage"},
        {"X-Amz-Cognito-Identity": "not json"},
    ],
)
def test_odd_headers_never_500(daemon: Daemon, headers: dict[str, str]) -> None:
    response = invoke(daemon, {"k": 1}, headers=headers)
    assert response.status in (200, 202, 204, 400, 415), response.body


# -- trace id and context -----------------------------------------------------------------


def test_trace_id_passes_through(daemon: Daemon) -> None:
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    response = invoke(daemon, {"context": 1}, headers={"X-Amzn-Trace-Id": trace})
    assert response.json()["trace_id"] == trace


def test_trace_id_generated_when_absent(daemon: Daemon) -> None:
    first = invoke(daemon, {"context": 1}).json()["trace_id"]
    second = invoke(daemon, {"context": 1}).json()["trace_id"]
    for trace in (first, second):
        assert re.match(r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24}(;|$)", trace or ""), trace
    assert first != second


def test_context_fields(daemon: Daemon) -> None:
    response = invoke(daemon, {"context": 1})
    assert response.status == 200
    context = response.json()
    assert context["function_name"] == NAME
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == ARN
    assert context["memory_limit_in_mb"] == str(MEMORY)
    assert context["log_group_name"] == f"/aws/lambda/{NAME}"
    assert re.match(r"^\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}$", context["log_stream_name"])
    assert 0 < context["remaining_ms"] <= TIMEOUT * 1000
    assert context["aws_request_id"] == response.header("x-amzn-RequestId")


# -- the runtime's environment ------------------------------------------------------------


def test_runtime_environment(start_daemon: Any) -> None:
    # A unique name: with AMQP_URI set the daemon may also consume the function's queue.
    name = f"envtest-{uuid.uuid4().hex[:12]}"
    daemon = start_daemon(
        env={
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AMQP_URI": "amqp://127.0.0.1:5672/",
            "AMQP_USERNAME": "guest",
            "AMQP_PASSWORD": "guest",
            "AWS_LAMBDA_MAX_CONCURRENCY": "4",
            "MY_APP_SETTING": "passes-through",
        }
    )
    response = invoke(daemon, {"env": 1})
    assert response.status == 200, response.body
    env = response.json()
    assert env["AWS_LAMBDA_RUNTIME_API"] == f"127.0.0.1:{daemon.runtime_port}"
    assert env["_HANDLER"] == "fn.handler"
    assert env["AWS_REGION"] == REGION
    assert env["AWS_DEFAULT_REGION"] == REGION
    assert os.path.isfile(os.path.join(env["LAMBDA_TASK_ROOT"], "fn.py"))
    assert env["LAMBDA_RUNTIME_DIR"]
    assert env["TZ"] == ":UTC"
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == name
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == f"/aws/lambda/{name}"
    for secret in ("AMQP_URI", "AMQP_USERNAME", "AMQP_PASSWORD", "AWS_LAMBDA_MAX_CONCURRENCY"):
        assert secret not in env, f"{secret} leaked into the runtime's environment"
    assert env["MY_APP_SETTING"] == "passes-through"


def test_region_setting_changes_arns(start_daemon: Any) -> None:
    daemon = start_daemon(env={"AWS_REGION": "eu-west-1"})
    arn = f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:{NAME}"
    context = invoke(daemon, {"context": 1}).json()
    assert context["invoked_function_arn"] == arn
    assert invoke(daemon, {"k": 1}, name=arn).status == 200
    env = invoke(daemon, {"env": 1}).json()
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    body = assert_error(invoke(daemon, {"k": 1}, name="other"), 404, "ResourceNotFoundException")
    other = f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:other"
    assert body["Message"] == f"Function not found: {other}"
    assert_error(invoke(daemon, {"k": 1}, name=ARN), 404, "ResourceNotFoundException")


def test_generic_name_path_matches_the_emulator(daemon: Daemon) -> None:
    # The emulator's only path; tools written for it keep working.
    response = daemon.request(
        "POST", "/2015-03-31/functions/function/invocations", b'{"rie": true}', timeout=HTTP_TIMEOUT
    )
    assert response.status == 200
    assert response.json() == {"rie": True}


def test_daemon_still_serves_after_bad_requests(daemon: Daemon) -> None:
    assert invoke(daemon, {"final": "check"}).json() == {"final": "check"}
    assert daemon.proc.poll() is None
    assert Path(daemon.log_dir / "stderr").read_text().count("Traceback") == 0
