"""`lambda-events`: every sample event is valid JSON that functions accept through the daemon."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_rapid.proxy_events import map_result
from tests.e2e.conftest import PYTHON_RIC, Daemon, spawn_daemon

EVENTS = str(Path(sys.executable).parent / "lambda-events")
KINDS = ["apigw-v1", "apigw-v2", "sqs", "sns", "s3-put", "schedule", "dynamodb"]


def lambda_events(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [EVENTS, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = spawn_daemon(
        [*PYTHON_RIC, "fn.handler"],
        tmp_path_factory.mktemp("echo"),
        env={"AWS_LAMBDA_FUNCTION_NAME": "fn"},
    )
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = spawn_daemon(
        [*PYTHON_RIC, "web.handler"],
        tmp_path_factory.mktemp("web"),
        env={"AWS_LAMBDA_FUNCTION_NAME": "web"},
    )
    yield daemon
    assert daemon.stop() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_event_round_trips_through_the_echo_function(echo: Daemon, kind: str) -> None:
    event = lambda_events(kind)
    response = echo.invoke(event)
    assert response.status == 200, response.body
    assert response.header("X-Amz-Function-Error") is None
    assert response.json() == event


@pytest.mark.parametrize("kind", KINDS)
def test_ids_are_fresh(kind: str) -> None:
    assert lambda_events(kind) != lambda_events(kind)


def test_piped_to_curl(echo: Daemon) -> None:
    url = f"{echo.url}/2015-03-31/functions/function/invocations"
    result = subprocess.run(
        f"{EVENTS} sqs --body hi | curl -sS -d @- {url}",
        shell=True, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)["Records"][0]
    assert record["body"] == "hi"
    assert record["eventSource"] == "aws:sqs"


def test_sqs_options() -> None:
    record = lambda_events("sqs", "--body", '{"order": 7}', "--queue", "orders")["Records"][0]
    assert record["body"] == '{"order": 7}'
    assert record["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:orders"
    assert re.match(r"^[0-9a-f]{32}$", record["md5OfBody"])
    assert record["attributes"]["SentTimestamp"].isdigit()


def test_sns_options() -> None:
    record = lambda_events("sns", "--body", "alert")["Records"][0]
    assert record["EventSource"] == "aws:sns"
    assert record["Sns"]["Message"] == "alert"
    assert record["Sns"]["Type"] == "Notification"


def test_s3_options() -> None:
    record = lambda_events("s3-put", "--bucket", "photos", "--key", "2024/my cat+1.jpg")
    s3 = record["Records"][0]["s3"]
    assert record["Records"][0]["eventName"] == "ObjectCreated:Put"
    assert s3["bucket"] == {
        "name": "photos",
        "ownerIdentity": s3["bucket"]["ownerIdentity"],
        "arn": "arn:aws:s3:::photos",
    }
    assert s3["object"]["key"] == "2024/my+cat%2B1.jpg"


def test_schedule_and_dynamodb_shapes() -> None:
    scheduled = lambda_events("schedule")
    assert scheduled["detail-type"] == "Scheduled Event"
    assert scheduled["source"] == "aws.events"
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", scheduled["time"])
    record = lambda_events("dynamodb")["Records"][0]
    assert record["eventSource"] == "aws:dynamodb"
    assert record["dynamodb"]["Keys"] == {"Id": {"N": "101"}}


@pytest.mark.parametrize("args", [["schedule", "--body", "x"], ["s3-put", "--queue", "q"], ["x"]])
def test_options_that_do_not_apply_are_refused(args: list[str]) -> None:
    result = subprocess.run([EVENTS, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "usage: lambda-events" in result.stderr


@pytest.mark.parametrize(("kind", "event_format"), [("apigw-v1", "v1"), ("apigw-v2", "v2")])
def test_api_gateway_events_get_a_proxy_response(web: Daemon, kind: str, event_format: str) -> None:
    event = lambda_events(kind, "--method", "POST", "--path", "/orders/7?x=1", "--body", '{"a": 1}')
    response = web.invoke(event)
    assert response.status == 200, response.body
    assert response.header("X-Amz-Function-Error") is None
    proxy = response.json()
    assert proxy["statusCode"] == 200
    echoed = json.loads(proxy["body"])
    assert echoed == event
    assert json.loads(echoed["body"]) == {"a": 1}
    reply = map_result(event_format, response.body)
    assert reply.status == 200
    assert json.loads(reply.body) == event


@pytest.mark.parametrize("kind", ["apigw-v1", "apigw-v2"])
def test_api_gateway_event_path_drives_the_function(web: Daemon, kind: str) -> None:
    response = web.invoke(lambda_events(kind, "--path", "/status/201"))
    assert response.json()["statusCode"] == 201


def test_api_gateway_event_fields() -> None:
    v1 = lambda_events("apigw-v1", "--method", "put", "--path", "/a/b?x=1&x=2")
    assert (v1["httpMethod"], v1["path"], v1["resource"]) == ("PUT", "/a/b", "/{proxy+}")
    assert v1["multiValueQueryStringParameters"] == {"x": ["1", "2"]}
    assert v1["requestContext"]["stage"] == "prod"
    assert v1["requestContext"]["path"] == "/prod/a/b"
    assert v1["body"] is None
    v2 = lambda_events("apigw-v2", "--body", "plain text")
    assert (v2["version"], v2["rawPath"], v2["routeKey"]) == ("2.0", "/", "$default")
    assert v2["body"] == "plain text"
    assert v2["headers"]["content-type"] == "text/plain"
    assert v2["requestContext"]["http"]["method"] == "GET"
