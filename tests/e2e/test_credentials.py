"""The broker's credentials are out of a function's reach, even a function running as root.

A hostile function (functions/snoop.py) hunts for the password in every /proc/<pid>/environ
and cmdline it can read and in the daemon's memory, while the daemon is connected to the
real RabbitMQ as a user made for this module (so the password is unique on the machine).
The password is given in the environment, in flags and in *_FILE files; runtimes also run
as an unprivileged RUNTIME_USER. Bad secret files and users stop the daemon with one line.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.broker import (
    SERVER,
    Names,
    broker_url,
    declare_queue,
    names,
    pika_rpc,
    start_server,
    wait_consuming,
    wait_for,
)
from tests.e2e.conftest import DAEMON, FUNCTIONS, PYTHON_RIC, Daemon, free_port

__all__ = ["broker_url", "names", "start_server"]

SNOOP = [*PYTHON_RIC, "snoop.handler"]
CAP_SYS_PTRACE = 19
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class BrokerUser:
    name: str
    password: str
    token: str  # the unique part of the password: what the function looks for

    def uri(self, host: str = "127.0.0.1:5672") -> str:
        quoted = urllib.parse.quote(self.password, safe="")
        return f"amqp://{self.name}:{quoted}@{host}/"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=True)


@pytest.fixture(scope="module")
def broker_user(broker_url: str) -> Iterator[BrokerUser]:
    """A broker user whose password (with characters a URI must escape) exists only here."""
    token = uuid.uuid4().hex
    user = BrokerUser(f"rapid-credentials-{token[:8]}", f"p@ss:w/rd-{token}", token)
    rabbitmqctl("add_user", user.name, user.password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user.name, ".*", ".*", ".*")
        yield user
    finally:
        rabbitmqctl("delete_user", user.name)


def secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def snoop(names: Names, function: str, user: BrokerUser) -> dict[str, Any]:
    """Invoke the hostile function over AMQP-RPC (the daemon is connected) and get its report."""
    _, body = pika_rpc(names.url, function, {"needle_hex": user.token.encode().hex()})
    report: dict[str, Any] = json.loads(body)
    assert "hits" in report, report
    return report


def assert_out_of_reach(report: dict[str, Any], daemon: Daemon, user: BrokerUser) -> None:
    """Nothing the function (or even a full root reader) can see holds the password."""
    assert report["hits"] == [], f"the password is readable in {report['hits']}"
    assert report["ppid"] == daemon.proc.pid
    assert report["parent"]["cmdline"] == "clean", report
    assert report["parent"]["environ"] in ("clean", "denied"), report
    assert report["parent"]["mem"] in ("clean", "denied"), report
    for name in ("environ", "cmdline"):  # read with every capability: masked, not only hidden
        data = Path(f"/proc/{daemon.proc.pid}/{name}").read_bytes()
        assert user.token.encode() not in data, name


def start_snoop(
    start_daemon: Any, names: Names, env: dict[str, str], args: list[str] | None = None
) -> tuple[Daemon, str]:
    function = names.function("credentials")
    daemon: Daemon = start_daemon(
        SNOOP, env={"AWS_LAMBDA_FUNCTION_NAME": function, **env}, args=args or []
    )
    wait_consuming(daemon)
    return daemon, function


def test_password_in_the_environment(
    names: Names, start_daemon: Any, broker_user: BrokerUser
) -> None:
    env = {
        "AMQP_URI": "amqp://127.0.0.1:5672/",
        "AMQP_USERNAME": broker_user.name,
        "AMQP_PASSWORD": broker_user.password,
    }
    daemon, function = start_snoop(start_daemon, names, env)
    report = snoop(names, function, broker_user)
    assert_out_of_reach(report, daemon, broker_user)
    # A root function cannot read the daemon's memory at all: it lacks CAP_SYS_PTRACE. (Its
    # environ is readable with CAP_SYS_ADMIN or CAP_PERFMON, which this machine gives.)
    assert report["uid"] == 0
    assert report["parent"]["mem"] == "denied"
    assert not int(report["cap_eff"], 16) & (1 << CAP_SYS_PTRACE)


def test_password_in_the_uri_in_the_environment(
    names: Names, start_daemon: Any, broker_user: BrokerUser
) -> None:
    daemon, function = start_snoop(start_daemon, names, {"AMQP_URI": broker_user.uri()})
    assert_out_of_reach(snoop(names, function, broker_user), daemon, broker_user)


@pytest.mark.parametrize("form", ["uri", "password", "password="])
def test_password_in_flags(
    names: Names, start_daemon: Any, broker_user: BrokerUser, form: str
) -> None:
    if form == "uri":
        args = ["--amqp-uri", broker_user.uri()]
    else:
        password = ["--amqp-password", broker_user.password]
        if form == "password=":
            password = [f"--amqp-password={broker_user.password}"]
        args = ["--amqp-uri", "amqp://127.0.0.1:5672/", "--amqp-username", broker_user.name]
        args += password
    daemon, function = start_snoop(start_daemon, names, {}, args)
    assert_out_of_reach(snoop(names, function, broker_user), daemon, broker_user)


@pytest.mark.parametrize("setting", ["AMQP_PASSWORD_FILE", "AMQP_URI_FILE"])
def test_password_in_a_file(
    names: Names, start_daemon: Any, broker_user: BrokerUser, tmp_path: Path, setting: str
) -> None:
    if setting == "AMQP_URI_FILE":
        env = {setting: secret_file(tmp_path, "uri", broker_user.uri())}
    else:
        env = {
            "AMQP_URI": "amqp://127.0.0.1:5672/",
            "AMQP_USERNAME": broker_user.name,
            setting: secret_file(tmp_path, "password", broker_user.password),
        }
    daemon, function = start_snoop(start_daemon, names, env)
    report = snoop(names, function, broker_user)
    assert_out_of_reach(report, daemon, broker_user)


def runtime_code_dir() -> Path:
    """The function's code where any user can read it (pytest's tmp_path is private)."""
    code = Path(tempfile.mkdtemp(prefix="rapid-credentials-"))
    code.chmod(0o755)
    (code / "snoop.py").write_text((FUNCTIONS / "snoop.py").read_text())
    (code / "snoop.py").chmod(0o644)
    return code


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason="no system python3")
@pytest.mark.parametrize("runtime_user", ["nobody", "54321"])
def test_runtimes_as_an_unprivileged_user(
    names: Names, start_daemon: Any, broker_user: BrokerUser, runtime_user: str
) -> None:
    code = runtime_code_dir()
    env = {"AMQP_URI": broker_user.uri(), "RUNTIME_USER": runtime_user}
    try:
        function = names.function("credentials")
        # The system's Python: the test's own interpreter may sit in a directory only
        # root can enter.
        daemon: Daemon = start_daemon(
            [SYSTEM_PYTHON, "snoop.py"], env={"AWS_LAMBDA_FUNCTION_NAME": function, **env}, cwd=code
        )
        wait_consuming(daemon)
        report = snoop(names, function, broker_user)
    finally:
        shutil.rmtree(code)
    if runtime_user == "nobody":
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
        groups = set(os.getgrouplist("nobody", gid))
    else:  # unknown to /etc/passwd: its own number as group, no other group
        uid = gid = 54321
        groups = {gid}
    assert (report["uid"], report["gid"], set(report["groups"])) == (uid, gid, groups)
    assert report["tmp"] is True
    assert report["parent"] == {"environ": "denied", "cmdline": "clean", "mem": "denied"}
    assert_out_of_reach(report, daemon, broker_user)
    for stream, read in (("stdout", daemon.stdout), ("stderr", daemon.stderr)):
        line = f"SNOOP wrote to /dev/{stream} as uid {uid}"
        assert wait_for(lambda line=line, read=read: line in read(), 10), read()


@pytest.mark.parametrize("given_in", ["environment", "file"])
def test_lambda_server_keeps_the_password_out_of_proc(
    names: Names, start_server: Any, broker_user: BrokerUser, tmp_path: Path, given_in: str
) -> None:
    queue = names.queue()
    declare_queue(names.url, queue)
    env = {"AMQP_USERNAME": broker_user.name, "AMQP_PASSWORD": broker_user.password}
    if given_in == "file":
        env = {
            "AMQP_USERNAME": broker_user.name,
            "AMQP_PASSWORD_FILE": secret_file(tmp_path, "password", broker_user.password),
        }
    server = start_server(env, uri="amqp://127.0.0.1:5672/")
    response = server.invoke(queue, {}, headers={"X-Amz-Invocation-Type": "DryRun"})
    assert response.status == 204, response.body
    for name in ("environ", "cmdline"):
        data = Path(f"/proc/{server.proc.pid}/{name}").read_bytes()
        assert broker_user.token.encode() not in data, name


# -- bad secret files and users: one line naming the setting, exit 2 -------------------------


def run_program(program: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMQP_"))}
    full_env.update(
        {"PORT": str(free_port()), "INVOKE_API_HOST": "127.0.0.1", "RUNTIME_API_PORT": "0"}
    )
    full_env.update(env)
    command = [program, *args]
    if program == DAEMON:
        command += [*PYTHON_RIC, "fn.handler"]
    return subprocess.run(
        command, env=full_env, cwd=FUNCTIONS, capture_output=True, text=True, timeout=30
    )


def assert_config_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    details = f"status {result.returncode}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, details
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, details
    for word in words:
        assert word in lines[0], details


@pytest.mark.parametrize("program", [DAEMON, SERVER])
@pytest.mark.parametrize("setting", ["AMQP_PASSWORD_FILE", "AMQP_URI_FILE"])
@pytest.mark.parametrize("problem", ["missing", "directory", "empty"])
def test_bad_secret_file(tmp_path: Path, program: str, setting: str, problem: str) -> None:
    path = tmp_path / "secret"
    if problem == "directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("\n")
    env = {setting: str(path)}
    if setting == "AMQP_PASSWORD_FILE":
        env["AMQP_URI"] = "amqp://127.0.0.1:1/"
    result = run_program(program, env)
    reason = {"missing": "No such file", "directory": "Is a directory", "empty": "empty"}
    assert_config_error(result, setting, reason[problem])


def test_bad_uri_in_a_file_does_not_print_it(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "uri", "http://user:hunter2-secret@host/")
    result = run_program(DAEMON, {"AMQP_URI_FILE": path})
    assert_config_error(result, "AMQP_URI_FILE", "amqp://")
    assert "hunter2-secret" not in result.stderr


@pytest.mark.parametrize("program", [DAEMON, SERVER])
def test_setting_and_its_file_together(tmp_path: Path, program: str) -> None:
    path = secret_file(tmp_path, "password", "x")
    result = run_program(program, {"AMQP_PASSWORD": "y", "AMQP_PASSWORD_FILE": path})
    assert_config_error(result, "AMQP_PASSWORD", "AMQP_PASSWORD_FILE")
    result = run_program(program, {"AMQP_PASSWORD_FILE": path}, "--amqp-password", "y")
    assert_config_error(result, "AMQP_PASSWORD", "AMQP_PASSWORD_FILE")


@pytest.mark.parametrize("value", ["no-such-user-here", "nobody:no-such-group", ":1", "1:x:2"])
def test_bad_runtime_user(value: str) -> None:
    assert_config_error(run_program(DAEMON, {"RUNTIME_USER": value}), "RUNTIME_USER")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_without_proc_the_daemon_warns_and_serves(tmp_path: Path, broker_url: str) -> None:
    """Where /proc is not mounted the password cannot be masked: one warning, no crash."""
    port = free_port()
    env = dict(
        os.environ,
        PORT=str(port),
        INVOKE_API_HOST="127.0.0.1",
        RUNTIME_API_PORT="0",
        AMQP_URI=broker_url,
        AWS_LAMBDA_FUNCTION_NAME=f"noproc-{uuid.uuid4().hex[:8]}",
    )
    log = tmp_path / "daemon.log"
    unmount_proc = ["unshare", "--mount", "sh", "-c", 'umount -l /proc && exec "$@"', "sh"]
    command = [*unmount_proc, DAEMON, *PYTHON_RIC, "fn.handler"]  # the daemon keeps the pid
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=FUNCTIONS, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        daemon = Daemon(proc, port, 0, "", tmp_path, env["AWS_LAMBDA_FUNCTION_NAME"])
        assert wait_for(lambda: b" ready" in log.read_bytes(), 30), log.read_text()
        assert daemon.invoke({"echo": 1}).json() == {"echo": 1}
        text = log.read_text()
        assert "cannot mask the broker password" in text
        assert "Traceback" not in text
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
