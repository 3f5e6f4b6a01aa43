"""The command line as a user meets it: bad settings, --help, logging, busy ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from lambda_rapid.config import DAEMON_SETTINGS
from tests.e2e.conftest import DAEMON, FUNCTIONS, PYTHON_RIC, free_port, wait_for_port

RUNTIME = [*PYTHON_RIC, "fn.handler"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "AMQP_")) and k not in {s.env for s in DAEMON_SETTINGS}
    }
    env.update(
        INVOKE_API_HOST="127.0.0.1",
        PORT=str(free_port()),
        RUNTIME_API_PORT="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DAEMON, *args],
        env=clean_env() if env is None else env,
        cwd=FUNCTIONS,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line naming every one of `names`."""
    details = f"stdout={result.stdout!r} stderr={result.stderr!r}"
    assert result.returncode == 2, details
    assert "Traceback" not in result.stderr, details
    lines = result.stderr.splitlines()
    assert len(lines) == 1, details
    line = lines[0]
    assert line.startswith("lambda-runtime-api-daemon: error: "), details
    for name in names:
        assert name in line, details
    assert result.stdout == "", details
    return line


INVALID = [
    ("PORT", "--port", "abc"),
    ("PORT", "--port", "70000"),
    ("RUNTIME_API_PORT", "--runtime-api-port", "-5"),
    ("MAX_CONCURRENCY", "--max-concurrency", "0"),
    ("AWS_LAMBDA_FUNCTION_TIMEOUT", "--timeout", "-1"),
    ("AWS_LAMBDA_FUNCTION_IDLETIMEOUT", "--idle-timeout", "0"),
    ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "--memory-size", "64"),
    ("PRINT_REPORTS", "--print-reports", "maybe"),
    ("USE_STRUCTURED_LOGGING", "--structured-logging", "sometimes"),
    ("LOG_LEVEL", "--log-level", "LOUD"),
    ("AWS_REGION", "--region", "not a region"),
    ("AWS_ACCOUNT_ID", "--account-id", "12"),
    ("AWS_LAMBDA_FUNCTION_NAME", "--function-name", "no/slashes"),
    ("SHUTDOWN_GRACE_PERIOD", "--shutdown-grace", "-3"),
]


@pytest.mark.parametrize(("env_var", "flag", "value"), INVALID)
def test_invalid_env_setting(env_var: str, flag: str, value: str) -> None:
    result = run_cli(RUNTIME, clean_env(**{env_var: value}))
    line = assert_one_line_error(result, f"{env_var}=")
    assert value in line


@pytest.mark.parametrize(("env_var", "flag", "value"), INVALID)
def test_invalid_flag_setting(env_var: str, flag: str, value: str) -> None:
    result = run_cli([f"{flag}={value}", *RUNTIME])
    line = assert_one_line_error(result, f"{flag}=")
    assert value in line


def test_nonexistent_command() -> None:
    result = run_cli(["/nonexistent/bootstrap", "fn.handler"])
    assert_one_line_error(result, "runtime command", "/nonexistent/bootstrap")


def test_nonexistent_command_on_path() -> None:
    result = run_cli(["no-such-runtime-xyz"])
    assert_one_line_error(result, "no-such-runtime-xyz")


def test_help_mentions_every_setting() -> None:
    result = run_cli(["--help"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("usage: lambda-runtime-api-daemon")
    for setting in DAEMON_SETTINGS:
        assert setting.env in result.stdout, setting.env
        assert setting.flag in result.stdout, setting.flag
    assert "_HANDLER" in result.stdout


def test_python_m_lambda_rapid_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lambda_rapid", "--help"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: lambda-runtime-api-daemon" in result.stdout
    for setting in DAEMON_SETTINGS:
        assert setting.env in result.stdout


def test_python_m_lambda_rapid_reports_bad_settings_the_same_way() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lambda_rapid", *RUNTIME],
        env=clean_env(PORT="abc"),
        cwd=FUNCTIONS,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert_one_line_error(result, "PORT=")


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_invoke_port_in_use(busy_port: int) -> None:
    result = run_cli(RUNTIME, clean_env(PORT=str(busy_port)))
    assert_one_line_error(result, "PORT", str(busy_port))


def test_runtime_api_port_in_use(busy_port: int) -> None:
    result = run_cli(RUNTIME, clean_env(RUNTIME_API_PORT=str(busy_port)))
    assert_one_line_error(result, "RUNTIME_API_PORT", str(busy_port))


def log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_structured_logging_writes_json_lines(start_daemon: Any) -> None:
    daemon = start_daemon(env={"USE_STRUCTURED_LOGGING": "1"})
    assert daemon.stop() == 0
    lines = log_lines(daemon.stderr())
    assert lines, "the daemon logged nothing"
    entries = [json.loads(line) for line in lines]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert entry["time"].endswith("Z")
    messages = [entry["message"] for entry in entries]
    assert any("ready" in message for message in messages), messages
    assert any(message == "stopped" for message in messages), messages


def test_structured_logging_flag(start_daemon: Any) -> None:
    daemon = start_daemon(args=["--structured-logging"], command=["--", *RUNTIME])
    assert daemon.stop() == 0
    lines = log_lines(daemon.stderr())
    assert lines
    for line in lines:
        json.loads(line)


def test_human_logging_by_default(start_daemon: Any) -> None:
    daemon = start_daemon()
    assert daemon.stop() == 0
    lines = log_lines(daemon.stderr())
    assert lines, "the daemon logged nothing"
    for line in lines:
        with pytest.raises(ValueError):
            json.loads(line)
    assert any(" INFO lambda_rapid." in line and "ready" in line for line in lines), lines


def test_log_level_debug(start_daemon: Any) -> None:
    daemon = start_daemon(env={"LOG_LEVEL": "DEBUG", "USE_STRUCTURED_LOGGING": "true"})
    response = daemon.invoke({"hello": "debug"})
    assert response.status == 200
    assert response.json() == {"hello": "debug"}
    assert daemon.stop() == 0
    entries = [json.loads(line) for line in log_lines(daemon.stderr())]
    levels = {entry["level"] for entry in entries}
    assert "DEBUG" in levels, entries
    assert "INFO" in levels, entries
    assert "Traceback" not in daemon.stderr()


def test_log_level_error_hides_info(start_daemon: Any) -> None:
    daemon = start_daemon(env={"LOG_LEVEL": "ERROR"})
    assert daemon.invoke({"x": 1}).status == 200
    assert daemon.stop() == 0
    assert " INFO " not in daemon.stderr()
    assert " DEBUG " not in daemon.stderr()


def test_port_flag_wins_over_the_environment(start_daemon: Any) -> None:
    """The Invoke API listens where --port says, not on PORT from the environment (which
    the daemon opens before reading its config when no flag is given)."""
    flag_port = free_port()
    daemon = start_daemon(args=["--port", str(flag_port)], wait=False)
    wait_for_port(flag_port, daemon.proc)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", daemon.port)) != 0
    url = f"http://127.0.0.1:{flag_port}/2015-03-31/functions/fn/invocations"
    request = urllib.request.Request(url, data=b'{"a": 1}', method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert json.loads(answer.read()) == {"a": 1}
