"""The executables do what the installed package does: AMQP, lambda-server, gateway, OpenFaaS.

Each test runs the built single file (and, where it says so, the directory variant) on
the host, with the real broker at 127.0.0.1:5672 and real clients; exit statuses are
the package's: 0 after SIGTERM, 1 when the broker is given up, 2 for a bad setting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.broker import (
    Names,
    broker_url,
    names,
    pika_rpc,
    reconnecting_uri,
    wait_consuming,
    wait_for,
)
from tests.e2e.conftest import (
    FUNCTIONS,
    MARKER,
    PYTHON_RIC,
    REPO,
    Daemon,
    HttpProcess,
    free_port,
    wait_for_port,
)

sys.path.insert(0, str(REPO / "packaging"))
from cached_build import executables  # noqa: E402

__all__ = ["broker_url", "names"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds and runs as root, like CI")

FN = [*PYTHON_RIC, "fn.handler"]
VARIANTS = {
    "single file": "lambda-runtime-api-daemon",
    "directory": "lambda-rapid/lambda-runtime-api-daemon",
}


class Endpoint(HttpProcess):
    """An HTTP port to talk to (a gateway, a lambda-server)."""

    def __init__(self, port: int) -> None:
        self.port = port


@pytest.fixture(scope="session")
def dist() -> Path:
    return executables()


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMQP_", "GATEWAY"))}
    env.update({"INVOKE_API_HOST": "127.0.0.1", "RUNTIME_API_PORT": "0", **settings})
    return env


@pytest.fixture
def start(tmp_path: Path, dist: Path) -> Iterator[Any]:
    """Factory: start(variant, env=..., name=...) → Daemon running the built executable."""
    started: list[Daemon] = []

    def run(variant: str, env: dict[str, str], name: str = "fn", wait: bool = True) -> Daemon:
        token, port = uuid.uuid4().hex, free_port()
        settings = {MARKER: token, "PORT": str(port), "AWS_LAMBDA_FUNCTION_NAME": name, **env}
        log_dir = tmp_path / f"daemon{len(started)}"
        log_dir.mkdir()
        with open(log_dir / "stdout", "wb") as out, open(log_dir / "stderr", "wb") as err:
            proc = subprocess.Popen(
                [str(dist / VARIANTS[variant]), *FN],
                cwd=FUNCTIONS,
                env=clean_env(**settings),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        daemon = Daemon(proc, port, 0, token, log_dir, name)
        started.append(daemon)
        if wait:
            wait_for_port(port, proc)
        return daemon

    yield run
    for daemon in started:
        daemon.stop()


@pytest.mark.parametrize("variant", VARIANTS)
def test_amqp_rpc_through_the_executable(variant: str, names: Names, start: Any) -> None:
    name = names.function()
    daemon = start(variant, {"AMQP_URI": reconnecting_uri(names.url)}, name)
    wait_consuming(daemon)
    properties, body = pika_rpc(names.url, name, {"via": "amqp"})
    assert json.loads(body) == {"via": "amqp"}
    assert properties.correlation_id
    assert daemon.stop() == 0
    assert "guest:guest" not in daemon.stderr() + daemon.stdout()


def test_a_broker_given_up_is_exit_status_1(start: Any) -> None:
    uri = f"amqp://guest:guest@127.0.0.1:{free_port()}/?connection_attempts=1"
    daemon = start("single file", {"AMQP_URI": uri}, wait=False)
    assert daemon.proc.wait(20) == 1, daemon.stderr()
    errors = [line for line in daemon.stderr().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "broker" in errors[0], daemon.stderr()
    assert "Traceback" not in daemon.stderr()


@pytest.mark.parametrize("variant", VARIANTS)
def test_gateway_and_openfaas_through_the_executable(variant: str, start: Any) -> None:
    gateway_port = free_port()
    daemon = start(variant, {"GATEWAY_PORT": str(gateway_port), "ENABLE_OPENFAAS": "TRUE"})
    wait_for_port(gateway_port, daemon.proc)
    answer = Endpoint(gateway_port).request("POST", "/items/7?x=1", b'{"k": "v"}')
    assert answer.status == 200, answer.body
    event = answer.json()  # fn echoes the gateway's event back as the response body
    assert event["rawPath"] == "/items/7" and event["rawQueryString"] == "x=1"
    assert event["requestContext"]["http"]["method"] == "POST"

    assert daemon.request("GET", "/_/health").status == 200
    echoed = daemon.request("POST", "/", b'{"faas": 1}')
    assert echoed.status == 200 and echoed.json() == {"faas": 1}
    assert daemon.stop() == 0


def test_lambda_server_routes_to_the_executable_daemon(
    names: Names, start: Any, dist: Path, tmp_path: Path
) -> None:
    name = names.function()
    daemon = start("single file", {"AMQP_URI": reconnecting_uri(names.url)}, name)
    wait_consuming(daemon)
    port = free_port()
    env = clean_env(PORT=str(port), AMQP_URI=reconnecting_uri(names.url))
    with open(tmp_path / "server.err", "wb") as err:
        server = subprocess.Popen(
            [str(dist / "lambda-server")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for_port(port, server)
        log = tmp_path / "server.err"
        assert wait_for(lambda: "connected to the broker" in log.read_text(), 30), log.read_text()
        path = f"/2015-03-31/functions/{name}/invocations"
        answer = Endpoint(port).request("POST", path, b'{"through": "server"}')
        assert answer.status == 200, answer.body
        assert answer.json() == {"through": "server"}
    finally:
        server.terminate()
        status = server.wait(20)
    assert status == 0, (tmp_path / "server.err").read_text()
    assert daemon.stop() == 0


@pytest.mark.parametrize("program", ["lambda-runtime-api-daemon", "lambda-server"])
@pytest.mark.parametrize("variant", ["", "lambda-rapid/"])
def test_a_bad_setting_is_one_line_and_exit_2(dist: Path, program: str, variant: str) -> None:
    runtime = ["/bin/true"] if program == "lambda-runtime-api-daemon" else []
    result = subprocess.run(
        [str(dist / f"{variant}{program}"), *runtime],
        env=clean_env(PORT="http"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PORT" in lines[0] and program in lines[0], lines
