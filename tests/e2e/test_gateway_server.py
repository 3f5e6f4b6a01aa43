"""The gateway of lambda-server: many functions behind one front door, over a real RabbitMQ.

Skipped without a broker at 127.0.0.1:5672 (guest/guest), unless REQUIRE_BROKER is set.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import PYTHON_RIC, Daemon, free_port, wait_for_port

SERVER = str(Path(sys.executable).parent / "lambda-server")
BROKER = ("127.0.0.1", 5672)
AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture(scope="module", autouse=True)
def broker() -> None:
    try:
        socket.create_connection(BROKER, timeout=3).close()
    except OSError as error:
        message = f"RabbitMQ is not reachable at {BROKER[0]}:{BROKER[1]}: {error}"
        if os.environ.get("REQUIRE_BROKER", "") not in ("", "0"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(url: str, method: str = "GET") -> Reply:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.read())


def get_when_served(url: str, timeout: float = 30) -> Reply:
    """GET `url` until the function's daemon consumes its queue (404 until then)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = get(url)
        if reply.status != 404 or time.monotonic() > deadline:
            return reply
        time.sleep(0.2)


def clean_env(**extra: str) -> dict[str, str]:
    prefixes = ("AWS_", "AMQP_", "GATEWAY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(PYTHONUNBUFFERED="1", INVOKE_API_HOST="127.0.0.1", **extra)
    return env


@pytest.fixture
def function(start_daemon: Any) -> Daemon:
    """web.py served from its queue by a daemon consuming over AMQP."""
    name = f"gw-{uuid.uuid4().hex[:12]}"
    env = {"AWS_LAMBDA_FUNCTION_NAME": name, "AMQP_URI": AMQP_URI}
    return start_daemon([*PYTHON_RIC, "web.handler"], env=env)  # type: ignore[no-any-return]


@pytest.fixture
def lambda_server(tmp_path: Path) -> Iterator[Any]:
    """Factory: start lambda-server with a gateway; returns the gateway's base URL."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> str:
        port, gateway_port = free_port(), free_port()
        settings = clean_env(
            PORT=str(port), GATEWAY_PORT=str(gateway_port), AMQP_URI=AMQP_URI, **env
        )
        with open(tmp_path / f"server{len(started)}.log", "wb") as log:
            proc = subprocess.Popen(
                [SERVER], env=settings, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        started.append(proc)
        wait_for_port(gateway_port, proc)
        return f"http://127.0.0.1:{gateway_port}"

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_first_path_segment_picks_the_function(function: Daemon, lambda_server: Any) -> None:
    url = lambda_server()
    reply = get_when_served(f"{url}/{function.function_name}/hello?x=1")
    assert reply.status == 200, reply.body
    event = reply.json()
    assert event["version"] == "2.0"
    assert event["rawPath"] == "/hello"
    assert event["queryStringParameters"] == {"x": "1"}
    assert event["requestContext"]["http"]["path"] == "/hello"
    status = get(f"{url}/{function.function_name}/status/418")
    assert status.status == 418
    failed = get(f"{url}/{function.function_name}/raise")
    assert (failed.status, failed.json()) == (502, {"message": "Internal server error"})
    missing = get(f"{url}/no-such-function-{uuid.uuid4().hex[:8]}/hello")
    assert (missing.status, missing.json()) == (404, {"message": "Not Found"})


def test_route_table_picks_the_function(function: Daemon, lambda_server: Any) -> None:
    name = function.function_name
    url = lambda_server(
        GATEWAY_EVENT_FORMAT="v1",
        GATEWAY_STAGE="prod",
        GATEWAY_ROUTES=f"GET /items/{{id}}={name},ANY /web/{{proxy+}}={name}",
    )
    reply = get_when_served(f"{url}/prod/items/42")
    assert reply.status == 200, reply.body
    event = reply.json()
    assert event["resource"] == "/items/{id}"
    assert event["path"] == "/items/42"
    assert event["pathParameters"] == {"id": "42"}
    assert event["requestContext"]["stage"] == "prod"
    proxied = get(f"{url}/prod/web/a/b", "DELETE").json()
    assert (proxied["httpMethod"], proxied["resource"]) == ("DELETE", "/web/{proxy+}")
    assert proxied["pathParameters"] == {"proxy": "a/b"}
    for path in ("/prod/other", "/prod/items", "/items/42", f"/prod/{name}/hello"):
        missing = get(url + path)
        assert (missing.status, missing.json()) == (404, {"message": "Not Found"}), path
