"""The daemon as PID 1 (a container entrypoint) reaps the orphans runtimes leave behind."""

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid

import pytest

from tests.e2e.conftest import (
    DAEMON,
    FUNCTIONS,
    MARKER,
    command_of,
    free_port,
    poll,
    process_table,
    processes_with_marker,
    wait_for_port,
    wait_until_gone,
)


def zombies_of(pid: int) -> list[int]:
    return [child for child, parent, state in process_table() if parent == pid and state == b"Z"]


def child_of(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return int(children.read().split()[0])


@pytest.fixture
def pid1_daemon(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(
        ["unshare", "--fork", "--pid", "--mount-proc", "true"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip("cannot create a PID namespace here")
    token = uuid.uuid4().hex
    port = free_port()
    env = dict(
        os.environ,
        PORT=str(port),
        INVOKE_API_HOST="127.0.0.1",
        RUNTIME_API_PORT="0",
        AWS_LAMBDA_FUNCTION_NAME="orphans",
        **{MARKER: token},
    )
    command = [
        "unshare",
        "--fork",
        "--pid",
        "--mount-proc",
        DAEMON,
        sys.executable,
        "-m",
        "awslambdaric",
        "orphans.handler",
    ]
    with open(tmp_path / "out", "wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=FUNCTIONS,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for_port(port, proc)
    yield proc, port, token
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not wait_until_gone(token)
    assert not processes_with_marker(token)


def test_orphans_are_reaped_when_the_daemon_is_pid_1(pid1_daemon):
    proc, port, token = pid1_daemon
    url = f"http://127.0.0.1:{port}/2015-03-31/functions/orphans/invocations"
    for _ in range(3):
        with urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=20) as r:
            assert r.status == 200
    daemon_pid = child_of(proc.pid)

    def orphans_running() -> list[int]:
        return [pid for pid in processes_with_marker(token) if command_of(pid) in (b"sh", b"sleep")]

    assert poll(lambda: not orphans_running(), timeout=20), "the orphans never ended"
    # Every orphan has ended: one the daemon did not reap stays a zombie.
    assert poll(lambda: not zombies_of(daemon_pid), timeout=10), zombies_of(daemon_pid)
