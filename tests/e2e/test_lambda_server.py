"""The Lambda Server (lambda-server) against a real RabbitMQ: boto3 end to end through the
server to daemons in AMQP mode, fast 404s for functions nobody serves, Event and DryRun,
several daemons sharing a queue, the fail-safe timeout, reconnection, and the broker being
unreachable or misconfigured."""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.broker import (
    SERVER,
    Names,
    amqp_daemon,
    broker_url,
    client_context,
    close_broker_connections,
    declare_queue,
    names,
    queue_depth,
    start_server,
    wait_for,
)
from tests.e2e.conftest import free_port

# The broker fixtures, re-exported so that pytest (and ruff) see them as used here.
__all__ = ["amqp_daemon", "broker_url", "names", "start_server"]

TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


def marker() -> str:
    return f"marker-{uuid.uuid4().hex}"


def payload_of(response: dict[str, Any]) -> Any:
    return json.loads(response["Payload"].read())


def served(
    names: Names,
    amqp_daemon: Any,
    start_server: Any,
    env: dict[str, str] | None = None,
    server_env: dict[str, str] | None = None,
) -> tuple[str, Any, Any]:
    """A fresh function served by one daemon, and a lambda-server: (name, daemon, server)."""
    name = names.function()
    daemon = amqp_daemon(name, env)
    server = start_server(server_env)
    return name, daemon, server


# -- boto3 end to end -------------------------------------------------------------------------


def test_boto3_invoke_through_the_server(names: Names, amqp_daemon: Any, start_server: Any) -> None:
    name, _, server = served(names, amqp_daemon, start_server)
    client = server.lambda_client()
    response = client.invoke(FunctionName=name, Payload=b'{"hello": "server"}')
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    assert payload_of(response) == {"hello": "server"}
    # The request id the caller sees is the function's aws_request_id (the message id).
    response = client.invoke(FunctionName=name, Payload=b'{"context": 1}')
    seen = payload_of(response)
    assert seen["aws_request_id"] == response["ResponseMetadata"]["RequestId"]
    assert seen["function_name"] == name
    assert seen["invoked_function_arn"] == f"arn:aws:lambda:us-east-1:123456789012:function:{name}"


def test_boto3_function_error(names: Names, amqp_daemon: Any, start_server: Any) -> None:
    name, _, server = served(names, amqp_daemon, start_server)
    response = server.lambda_client().invoke(FunctionName=name, Payload=b'{"raise": "boom"}')
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = payload_of(response)
    assert error["errorMessage"] == "boom" and error["errorType"] == "ValueError"


def test_boto3_log_tail(names: Names, amqp_daemon: Any, start_server: Any) -> None:
    name, _, server = served(names, amqp_daemon, start_server)
    client = server.lambda_client()
    text = marker()
    event = json.dumps({"print": text}).encode()
    response = client.invoke(FunctionName=name, Payload=event, LogType="Tail")
    assert text in base64.b64decode(response["LogResult"]).decode()
    response = client.invoke(FunctionName=name, Payload=event)
    assert "LogResult" not in response


def test_boto3_client_context_and_trace_id(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    name, _, server = served(names, amqp_daemon, start_server)
    custom = {"from": "boto3", "n": 3}
    response = server.lambda_client().invoke(
        FunctionName=name, Payload=b'{"context": 1}', ClientContext=client_context(custom)
    )
    assert payload_of(response)["client_context"]["custom"] == custom
    raw = server.invoke(name, {"context": 1}, headers={"X-Amzn-Trace-Id": TRACE})
    assert raw.status == 200, raw.body
    assert raw.json()["trace_id"] == TRACE
    assert raw.json()["aws_request_id"] == raw.header("x-amzn-RequestId")


# "At once" below: the server's fail-safe timeout is LONG and the client gives up well
# before it, so a request that waited for a reply fails the test however loaded the machine.
LONG = {"AWS_LAMBDA_FUNCTION_TIMEOUT": "120"}
SOON = 30


def test_boto3_unserved_function_is_404_at_once(names: Names, start_server: Any) -> None:
    server = start_server(LONG)
    client = server.lambda_client(read_timeout=SOON)
    name = names.function("e2e-nobody")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName=name, Payload=b"{}")
    assert queue_depth(names.url, name) is None, "the server created the queue"


def test_queue_without_consumer_is_404_at_once(names: Names, start_server: Any) -> None:
    server = start_server(LONG)
    name = names.function("e2e-idle")
    declare_queue(names.url, name)
    client = server.lambda_client(read_timeout=SOON)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName=name, Payload=b"{}")
    raw = server.invoke(name, {"k": 1}, timeout=SOON)
    assert raw.status == 404
    assert raw.header("x-amzn-ErrorType") == "ResourceNotFoundException"
    assert queue_depth(names.url, name) == 0, "the request was left in the queue"


def test_function_whose_daemon_stopped_is_404_at_once(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    name, daemon, server = served(names, amqp_daemon, start_server, server_env=LONG)
    assert server.invoke(name, {"up": 1}).status == 200
    assert daemon.stop() == 0
    # Not a condition but a known delay: the server trusts a queue it saw served for 1 s.
    time.sleep(1.1)
    raw = server.invoke(name, {"down": 1}, timeout=SOON)
    assert raw.status == 404, raw.body


def test_repeated_stop_signals_still_exit_0(start_server: Any) -> None:
    # The same lifecycle as the daemon's: a stop under way goes on to exit status 0.
    server = start_server()
    for signum in itertools.islice(itertools.cycle((signal.SIGTERM, signal.SIGINT)), 20_000):
        if server.proc.poll() is not None:
            break
        server.proc.send_signal(signum)
        time.sleep(0.0005)
    assert server.proc.wait(20) == 0
    assert server.stop() == 0


def test_boto3_event_is_accepted_and_runs(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    name, daemon, server = served(names, amqp_daemon, start_server)
    text = marker()
    response = server.lambda_client().invoke(
        FunctionName=name, InvocationType="Event", Payload=json.dumps({"print": text}).encode()
    )
    assert response["StatusCode"] == 202
    assert wait_for(lambda: text in daemon.stdout(), 20), daemon.stdout()


def test_event_waits_in_the_queue_until_a_daemon_comes(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    server = start_server()
    name = names.function()
    declare_queue(names.url, name)
    text = marker()
    response = server.invoke(name, {"print": text}, headers={"X-Amz-Invocation-Type": "Event"})
    assert response.status == 202, response.body
    assert queue_depth(names.url, name) == 1
    daemon = amqp_daemon(name)
    assert wait_for(lambda: text in daemon.stdout(), 20), daemon.stdout()


def test_event_to_a_missing_queue_is_404(names: Names, start_server: Any) -> None:
    server = start_server()
    client = server.lambda_client()
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(
            FunctionName=names.function("e2e-nobody"), InvocationType="Event", Payload=b"{}"
        )


def test_boto3_dry_run(names: Names, amqp_daemon: Any, start_server: Any) -> None:
    name, _, server = served(names, amqp_daemon, start_server)
    client = server.lambda_client()
    assert client.invoke(FunctionName=name, InvocationType="DryRun")["StatusCode"] == 204
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName=names.function("e2e-nobody"), InvocationType="DryRun")


# -- several daemons, timeouts, reconnection --------------------------------------------------


def test_two_daemons_on_one_queue_both_serve(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    name = names.function()
    env = {"MAX_CONCURRENCY": "1", "AWS_LAMBDA_FUNCTION_TIMEOUT": "30"}
    amqp_daemon(name, env)
    amqp_daemon(name, env)
    server = start_server()
    with ThreadPoolExecutor(6) as pool:
        responses = list(
            pool.map(lambda _: server.invoke(name, {"pid": 1, "sleep": 0.3}), range(6))
        )
    assert all(r.status == 200 for r in responses), [r.body for r in responses]
    pids = {r.json()["pid"] for r in responses}
    assert len(pids) == 2, pids


def test_fail_safe_timeout(names: Names, amqp_daemon: Any, start_server: Any) -> None:
    name, _, server = served(
        names,
        amqp_daemon,
        start_server,
        env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "30"},
        server_env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "2"},
    )
    client = server.lambda_client(read_timeout=SOON)
    # The function would run 120 s; an answer within SOON came from the 2 s fail-safe.
    response = client.invoke(FunctionName=name, Payload=b'{"sleep": 120}')
    assert response["FunctionError"] == "Unhandled"
    assert payload_of(response)["errorType"] == "Sandbox.Timedout"


def test_server_reconnects_after_its_connection_is_closed(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    name, _, server = served(names, amqp_daemon, start_server)
    assert server.invoke(name, {"before": 1}).status == 200
    assert close_broker_connections([server.proc.pid]) >= 1

    def answered() -> bool:
        response = server.invoke(name, {"after": 1}, timeout=30)
        return response.status == 200 and response.json() == {"after": 1}

    assert wait_for(answered, 30, 0.5), server.stderr()
    assert "lost the broker connection" in server.stderr()
    assert server.stderr().count("connected to the broker") >= 2
    assert server.proc.poll() is None


def test_credentials_stay_out_of_the_server_log(
    names: Names, amqp_daemon: Any, start_server: Any
) -> None:
    name = names.function()
    amqp_daemon(name)
    server = start_server({"LOG_LEVEL": "DEBUG"})
    assert server.invoke(name, {"k": 1}).status == 200
    assert server.invoke(names.function("e2e-nobody"), {"k": 1}).status == 404
    assert server.stop() == 0
    assert "guest:guest" not in server.stderr() + server.stdout()


# -- an unreachable or misconfigured broker ---------------------------------------------------


def test_unreachable_broker_ends_the_server(start_server: Any) -> None:
    port = free_port()  # nothing listens there
    uri = f"amqp://guest:guest@127.0.0.1:{port}/?connection_attempts=2&retry_delay=0.5"
    server = start_server(uri=uri, ready=False)
    status = server.wait_exit(20)  # two attempts 0.5 s apart; far sooner than that
    assert status != 0
    stderr = server.stderr()
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr
    assert f"127.0.0.1:{port}" in errors[0] and "broker" in errors[0]
    assert "Traceback" not in stderr
    assert "guest:guest" not in stderr + server.stdout()


@pytest.mark.parametrize("uri", ["http://x", "amqp://", "amqp://host:notaport/"])
def test_invalid_amqp_uri_is_a_usage_error(uri: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMQP_"))}
    env["AMQP_URI"] = uri
    result = subprocess.run(
        [SERVER, "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "AMQP_URI" in lines[0], result.stderr
    assert result.stdout == ""
