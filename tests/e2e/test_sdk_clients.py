"""The daemon as AWS SDK users see it: boto3's Lambda client and the AWS CLI.

One daemon (module scope) runs tests/e2e/functions/fn.py under awslambdaric. boto3 runs
without retries so that an error answer is seen exactly once; the CLI runs as a
subprocess with dummy credentials and no config files.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from tests.e2e.conftest import PYTHON_RIC, Daemon, poll, spawn_daemon

NAME = "fn"
REGION = "us-east-1"
ACCOUNT = "123456789012"
ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{NAME}"
MEMORY = 256
AWS_CLI = str(Path(sys.executable).parent / "aws")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    started = spawn_daemon(
        [*PYTHON_RIC, "fn.handler"],
        tmp_path_factory.mktemp("sdk_clients"),
        env={
            "AWS_LAMBDA_FUNCTION_NAME": NAME,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(MEMORY),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": "3",
        },
    )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[Any]:
    lambda_client = boto3.session.Session().client(
        "lambda",
        endpoint_url=daemon.url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(
            retries={"max_attempts": 0}, connect_timeout=10, read_timeout=30
        ),
    )
    yield lambda_client
    lambda_client.close()


def payload_of(response: dict[str, Any]) -> Any:
    return json.loads(response["Payload"].read())


def wait_for_output(daemon: Daemon, text: str, timeout: float = 15) -> bool:
    return bool(poll(lambda: text in daemon.stdout(), timeout))


# -- boto3 --------------------------------------------------------------------------------


def test_boto3_request_response(client: Any) -> None:
    response = client.invoke(FunctionName=NAME, Payload=json.dumps({"key": "value"}))
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    assert "LogResult" not in response
    assert response["ResponseMetadata"]["RequestId"]
    assert payload_of(response) == {"key": "value"}


@pytest.mark.parametrize(
    ("function_name", "qualifier", "arn_suffix"),
    [
        (NAME, None, ""),
        ("function", None, ""),
        (f"{NAME}:$LATEST", None, ":$LATEST"),
        (NAME, "$LATEST", ":$LATEST"),
        (ARN, None, ""),
        (f"{ARN}:$LATEST", None, ":$LATEST"),
        (f"{ACCOUNT}:function:{NAME}", None, ""),
    ],
)
def test_boto3_function_name_forms(
    client: Any, function_name: str, qualifier: str | None, arn_suffix: str
) -> None:
    extra = {"Qualifier": qualifier} if qualifier else {}
    response = client.invoke(FunctionName=function_name, Payload=b'{"context": 1}', **extra)
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    context = payload_of(response)
    assert context["invoked_function_arn"] == ARN + arn_suffix
    assert context["aws_request_id"] == response["ResponseMetadata"]["RequestId"]


def test_boto3_unknown_function(client: Any) -> None:
    with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
        client.invoke(FunctionName="nope", Payload=b"{}")
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert error["Error"]["Code"] == "ResourceNotFoundException"
    assert error["Error"]["Message"] == (
        f"Function not found: arn:aws:lambda:{REGION}:{ACCOUNT}:function:nope"
    )
    assert error["Type"] == "User"


def test_boto3_unknown_qualifier(client: Any) -> None:
    with pytest.raises(client.exceptions.ResourceNotFoundException) as caught:
        client.invoke(FunctionName=NAME, Qualifier="prod", Payload=b"{}")
    assert caught.value.response["Error"]["Message"] == f"Function not found: {ARN}:prod"


def test_boto3_conflicting_qualifier(client: Any) -> None:
    with pytest.raises(client.exceptions.InvalidParameterValueException):
        client.invoke(FunctionName=f"{NAME}:$LATEST", Qualifier="prod", Payload=b"{}")


def test_boto3_event(client: Any, daemon: Daemon) -> None:
    marker = f"boto3-event-{uuid.uuid4().hex}"
    response = client.invoke(
        FunctionName=NAME, InvocationType="Event", Payload=json.dumps({"print": marker})
    )
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    assert wait_for_output(daemon, marker), "the Event invocation never ran"


def test_boto3_dry_run(client: Any) -> None:
    response = client.invoke(FunctionName=NAME, InvocationType="DryRun", Payload=b"{}")
    assert response["StatusCode"] == 204


def test_boto3_function_error(client: Any) -> None:
    response = client.invoke(FunctionName=NAME, Payload=b'{"raise": "boto3 boom"}')
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = payload_of(response)
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "boto3 boom"


def test_boto3_log_tail(client: Any) -> None:
    marker = f"boto3-tail-{uuid.uuid4().hex}"
    response = client.invoke(
        FunctionName=NAME, LogType="Tail", Payload=json.dumps({"print": marker})
    )
    assert response["StatusCode"] == 200
    request_id = response["ResponseMetadata"]["RequestId"]
    log = base64.b64decode(response["LogResult"]).decode()
    assert f"START RequestId: {request_id}" in log
    assert marker in log
    assert f"END RequestId: {request_id}" in log
    assert f"REPORT RequestId: {request_id}" in log
    assert f"Memory Size: {MEMORY} MB" in log


def test_boto3_invalid_json(client: Any) -> None:
    with pytest.raises(client.exceptions.InvalidRequestContentException) as caught:
        client.invoke(FunctionName=NAME, Payload=b"{not json")
    assert caught.value.response["Error"]["Message"]


def test_boto3_request_too_large(client: Any) -> None:
    with pytest.raises(client.exceptions.RequestTooLargeException):
        client.invoke(FunctionName=NAME, Payload=b'"' + b"x" * 6291456 + b'"')


def test_boto3_client_context(client: Any) -> None:
    context = {"custom": {"from": "boto3"}, "env": {"sdk": "python"}}
    response = client.invoke(
        FunctionName=NAME,
        Payload=b'{"context": 1}',
        ClientContext=base64.b64encode(json.dumps(context).encode()).decode(),
    )
    seen = payload_of(response)["client_context"]
    assert seen["custom"] == context["custom"]
    assert seen["env"] == context["env"]


def test_boto3_json_string_payload(client: Any) -> None:
    response = client.invoke(FunctionName=NAME, Payload=b'"hello"')
    assert payload_of(response) == "hello"


# -- AWS CLI ------------------------------------------------------------------------------


@functools.cache
def cli_binary_format() -> list[str]:
    """AWS CLI v2 base64-decodes blob arguments unless told not to; v1 has no such option."""
    version = subprocess.run(
        [AWS_CLI, "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    is_v2 = (version.stdout + version.stderr).startswith("aws-cli/2")
    return ["--cli-binary-format", "raw-in-base64-out"] if is_v2 else []


def run_cli(daemon: Daemon, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_RETRY_MODE": "standard",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
        }
    )
    return subprocess.run(
        [
            AWS_CLI,
            "lambda",
            "invoke",
            "--endpoint-url",
            daemon.url,
            *cli_binary_format(),
            "--cli-read-timeout",
            "30",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_cli_invoke(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = run_cli(
        daemon, tmp_path, "--function-name", NAME, "--payload", '{"from": "cli"}', str(out)
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["StatusCode"] == 200
    assert summary["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in summary
    assert json.loads(out.read_bytes()) == {"from": "cli"}


def test_cli_log_tail_and_function_error(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = run_cli(
        daemon,
        tmp_path,
        "--function-name",
        ARN,
        "--log-type",
        "Tail",
        "--payload",
        '{"print": "cli-tail-line", "raise": "cli boom"}',
        str(out),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["StatusCode"] == 200
    assert summary["FunctionError"] == "Unhandled"
    log = base64.b64decode(summary["LogResult"]).decode()
    assert "START RequestId: " in log
    assert "cli-tail-line" in log
    assert "REPORT RequestId: " in log
    assert json.loads(out.read_bytes())["errorMessage"] == "cli boom"


def test_cli_event(daemon: Daemon, tmp_path: Path) -> None:
    marker = f"cli-event-{uuid.uuid4().hex}"
    result = run_cli(
        daemon,
        tmp_path,
        "--function-name",
        NAME,
        "--invocation-type",
        "Event",
        "--payload",
        json.dumps({"print": marker}),
        str(tmp_path / "out.json"),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["StatusCode"] == 202
    assert wait_for_output(daemon, marker), "the Event invocation never ran"


def test_cli_unknown_function(daemon: Daemon, tmp_path: Path) -> None:
    result = run_cli(
        daemon, tmp_path, "--function-name", "nope", "--payload", "{}", str(tmp_path / "out.json")
    )
    assert result.returncode != 0
    assert "ResourceNotFoundException" in result.stderr
    assert "Function not found" in result.stderr
