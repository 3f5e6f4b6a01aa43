"""RabbitMQ helpers and fixtures for the AMQP end-to-end tests.

The broker is the one at 127.0.0.1:5672 (guest/guest). Without it the tests that need it
are skipped, or fail when REQUIRE_BROKER is set. Every test works on queues named with a
fresh uuid (`names`), deleted at teardown after the test's daemons and servers stopped.

Test modules import what they use explicitly (ruff forbids star imports):
``from tests.e2e.broker import amqp_daemon, broker_url, names, start_server``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pika
import pika.exceptions
import psutil
import pytest

from tests.e2e.conftest import (
    PYTHON_RIC,
    Daemon,
    HttpProcess,
    Response,
    free_port,
    poll,
    processes_with_marker,
    wait_for_port,
)

__all__ = [
    "AMQP_HOST",
    "AMQP_PORT",
    "DIRECT_REPLY_TO",
    "FN",
    "SERVER",
    "Names",
    "Server",
    "amqp_daemon",
    "broker_connection",
    "broker_url",
    "client_context",
    "close_broker_connections",
    "count_lines",
    "declare_queue",
    "function_exchange",
    "get_message",
    "header",
    "kill_runtimes",
    "names",
    "pika_rpc",
    "publish_event",
    "queue_depth",
    "reconnecting_uri",
    "start_server",
    "wait_consuming",
    "wait_for",
    "wait_for_message",
]

AMQP_HOST = "127.0.0.1"
AMQP_PORT = 5672
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
BIN = Path(sys.executable).parent
SERVER = str(BIN / "lambda-server")
FN = [*PYTHON_RIC, "fn.handler"]
RECONNECT = "connection_attempts=10&retry_delay=1"
REGION = "us-east-1"


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Call `predicate` until it returns something truthy or `timeout` passes."""
    return poll(predicate, timeout, interval)


def count_lines(text: str, needle: str) -> int:
    return sum(1 for line in text.splitlines() if needle in line)


def header(headers: dict[str, Any] | None, name: str) -> Any:
    """A message header as text (pika and aio-pika may hand strings back as bytes)."""
    value = (headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else value


def reconnecting_uri(broker_url: str) -> str:
    return f"{broker_url}?{RECONNECT}"


# -- the broker ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The broker's URI (with credentials); skip (or fail with REQUIRE_BROKER) without one."""
    url = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/"
    try:
        socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=3).close()
        pika.BlockingConnection(pika.URLParameters(url + "?socket_timeout=5")).close()
    except (OSError, pika.exceptions.AMQPError) as error:
        message = f"RabbitMQ is not reachable at {AMQP_HOST}:{AMQP_PORT}: {error!r}"
        if os.environ.get("REQUIRE_BROKER", "") not in ("", "0"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@contextlib.contextmanager
def broker_connection(url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        yield connection.channel()
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def queue_depth(url: str, queue: str) -> int | None:
    """Ready messages in `queue`, or None when it does not exist."""
    with broker_connection(url) as channel:
        try:
            ok = channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code == 404:
                return None
            raise
        return int(ok.method.message_count)


def function_exchange(name: str) -> str:
    """The exchange a daemon binds its function's queue to (as amqp_wire.function_exchange)."""
    return f"lambda-function.{name}"


def declare_queue(url: str, queue: str) -> None:
    """Set function `queue` up as its daemon does (durable, bound to its exchange)."""
    with broker_connection(url) as channel:
        channel.queue_declare(queue, durable=True)
        channel.exchange_declare(function_exchange(queue), "direct", durable=True)
        channel.queue_bind(queue, function_exchange(queue), routing_key=queue)


def get_message(url: str, queue: str) -> tuple[Any, bytes] | None:
    """Take one message (acknowledged) from `queue`: (properties, body), or None."""
    with broker_connection(url) as channel:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        return None if method is None else (properties, body)


def wait_for_message(url: str, queue: str, timeout: float = 30) -> tuple[Any, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
            got = get_message(url, queue)
            if got is not None:
                return got
        if time.monotonic() > deadline:
            raise AssertionError(f"no message arrived in {queue} within {timeout} s")
        time.sleep(0.2)


def publish_event(
    url: str,
    queue: str,
    event: Any,
    *,
    message_id: str | None = None,
    headers: dict[str, Any] | None = None,
    timestamp: int | None = None,
) -> str:
    """Publish an Event invocation (no reply_to), persistent, with confirms; its message id."""
    message_id = message_id or str(uuid.uuid4())
    with broker_connection(url) as channel:
        channel.confirm_delivery()
        channel.basic_publish(
            "",
            queue,
            json.dumps(event).encode(),
            pika.BasicProperties(
                message_id=message_id,
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type="application/json",
                headers=headers,
                timestamp=timestamp,
            ),
            mandatory=True,
        )
    return message_id


def pika_rpc(
    url: str,
    queue: str,
    event: Any,
    *,
    headers: dict[str, Any] | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    timestamp: int | None = None,
    timeout: float = 30,
) -> tuple[Any, bytes]:
    """One AMQP-RPC call over direct reply-to: (properties, body) of the correlated reply."""
    correlation_id = correlation_id or str(uuid.uuid4())
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        replies: list[tuple[Any, bytes]] = []
        channel.basic_consume(
            DIRECT_REPLY_TO,
            lambda _ch, _m, props, body: replies.append((props, body)),
            auto_ack=True,
        )
        channel.basic_publish(
            "",
            queue,
            json.dumps(event).encode(),
            pika.BasicProperties(
                reply_to=DIRECT_REPLY_TO,
                correlation_id=correlation_id,
                message_id=message_id,
                headers=headers,
                timestamp=timestamp,
                content_type="application/json",
            ),
        )
        deadline = time.monotonic() + timeout
        while not replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply from {queue} within {timeout} s")
            connection.process_data_events(time_limit=0.1)
        return replies[0]
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def close_broker_connections(pids: list[int], reason: str = "test") -> int:
    """Force-close (broker side) the AMQP connections of the processes `pids`.

    Like `rabbitmqctl close_all_connections`, but only for these processes, so that other
    test runs sharing the broker keep their connections. Returns how many were closed.
    """
    ports: set[int] = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == AMQP_PORT:
                    ports.add(conn.laddr.port)
    assert ports, f"processes {pids} have no broker connection"
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "peer_port"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    closed = 0
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit() and int(fields[1]) in ports:
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", fields[0], reason],
                capture_output=True,
                timeout=60,
                check=True,
            )
            closed += 1
    assert closed, f"the broker lists none of the connections from ports {ports}:\n{listing}"
    return closed


# -- unique names and their cleanup ----------------------------------------------------------


@dataclass
class Names:
    """Fresh queue/function names for one test; all deleted at teardown."""

    url: str
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    def function(self, prefix: str = "e2e") -> str:
        """A fresh function name; its queues (dead-letter, retry) and exchange are tracked."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.queues += [name, f"{name}-dlq", f"{name}-retry-1", f"{name}-retry-2"]
        self.exchanges.append(function_exchange(name))
        return name

    def queue(self, prefix: str = "e2e-q") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.queues.append(name)
        return name

    def delete_all(self) -> None:
        if not self.queues:
            return
        with contextlib.suppress(OSError, pika.exceptions.AMQPError):
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            try:
                for queue in self.queues:
                    channel = connection.channel()
                    with contextlib.suppress(pika.exceptions.AMQPError):
                        channel.queue_delete(queue)
                    with contextlib.suppress(pika.exceptions.AMQPError):
                        channel.close()
                for exchange in self.exchanges:
                    channel = connection.channel()
                    with contextlib.suppress(pika.exceptions.AMQPError):
                        channel.exchange_delete(exchange)
                    with contextlib.suppress(pika.exceptions.AMQPError):
                        channel.close()
            finally:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()


@pytest.fixture
def names(broker_url: str) -> Iterator[Names]:
    created = Names(broker_url)
    yield created
    created.delete_all()


# -- daemons in AMQP mode --------------------------------------------------------------------


def wait_consuming(daemon: Daemon, times: int = 1, timeout: float = 30) -> None:
    """Wait until the daemon has logged `times` "consuming queue" lines (one per connection)."""

    def consuming() -> bool:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.stderr()}")
        return count_lines(daemon.stderr(), "consuming queue") >= times

    assert wait_for(consuming, timeout), (
        f"daemon did not consume (x{times}) within {timeout} s:\n{daemon.stderr()}"
    )


def kill_runtimes(daemon: Daemon) -> None:
    """Kill the process groups of a dead (SIGKILLed) daemon's runtimes and wait them out."""
    for _ in range(50):
        pids = processes_with_marker(daemon.token)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise AssertionError(f"runtimes survived SIGKILL: {processes_with_marker(daemon.token)}")


@pytest.fixture
def amqp_daemon(names: Names, start_daemon: Any) -> Iterator[Callable[..., Daemon]]:
    """Factory: amqp_daemon(name, env=..., uri=...) → a daemon consuming queue `name`.

    Depends on `names` first, so queues are deleted only after the daemons stopped. Daemons
    still running at teardown get SIGTERM and must exit 0 (unless check_exit=False).
    """
    started: list[tuple[Daemon, bool]] = []

    def start(
        name: str,
        env: dict[str, str] | None = None,
        *,
        uri: str | None = None,
        consuming: bool = True,
        check_exit: bool = True,
        **kwargs: Any,
    ) -> Daemon:
        full_env = {
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AMQP_URI": uri or reconnecting_uri(names.url),
        }
        full_env.update(env or {})
        daemon: Daemon = start_daemon(kwargs.pop("command", FN), env=full_env, **kwargs)
        started.append((daemon, check_exit))
        if consuming:
            wait_consuming(daemon)
        return daemon

    yield start
    bad = []
    for daemon, check_exit in started:
        if daemon.stopped:
            continue
        status = daemon.stop()
        if check_exit and status != 0:
            bad.append(f"daemon exited {status} after SIGTERM:\n{daemon.stderr()[-3000:]}")
    assert not bad, "\n".join(bad)


# -- the Lambda Server -----------------------------------------------------------------------


@dataclass
class Server(HttpProcess):
    """A running lambda-server process."""

    proc: subprocess.Popen[bytes]
    port: int
    log_dir: Path
    stopped: bool = False

    request_timeout = 60.0

    def invoke(
        self,
        name: str,
        payload: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Response:
        path = f"/2015-03-31/functions/{name}/invocations"
        return self.request("POST", path, json.dumps(payload).encode(), headers, timeout)

    def lambda_client(self, read_timeout: float = 60) -> Any:
        return boto3.session.Session().client(
            "lambda",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=botocore.config.Config(
                retries={"max_attempts": 0}, connect_timeout=10, read_timeout=read_timeout
            ),
        )

    def wait_exit(self, timeout: float = 20) -> int:
        """Wait for the server to exit on its own (it is then not stopped at teardown)."""
        self.stopped = True
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20) -> int:
        if not self.stopped:
            self.stopped = True
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"lambda-server ignored SIGTERM for {timeout} s") from None
        return self.proc.returncode


@pytest.fixture
def start_server(names: Names, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: start_server(env=..., uri=..., ready=True) → a lambda-server on a free port.

    Each server runs in its own session; at teardown it gets SIGTERM and must exit 0.
    """
    started: list[Server] = []

    def start(
        env: dict[str, str] | None = None, *, uri: str | None = None, ready: bool = True
    ) -> Server:
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMQP_"))}
        full_env.update(
            {
                "PORT": str(port),
                "INVOKE_API_HOST": "127.0.0.1",
                "AMQP_URI": uri or reconnecting_uri(names.url),
                "PYTHONUNBUFFERED": "1",
            }
        )
        full_env.update(env or {})
        log_dir = tmp_path / f"server{len(started)}"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "stdout", "wb") as out, open(log_dir / "stderr", "wb") as err:
            proc = subprocess.Popen(
                [SERVER],
                env=full_env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = Server(proc, port, log_dir)
        started.append(server)
        if ready:
            wait_for_port(port, proc)
            assert wait_for(lambda: "connected to the broker" in server.stderr(), 30), (
                f"lambda-server did not connect to the broker:\n{server.stderr()}"
            )
        return server

    yield start
    bad = []
    for server in started:
        if server.stopped:
            continue
        status = server.stop()
        if status != 0:
            bad.append(f"lambda-server exited {status} after SIGTERM:\n{server.stderr()[-3000:]}")
    assert not bad, "\n".join(bad)


def client_context(custom: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps({"custom": custom}).encode()).decode()
