"""PROACTIVE_INIT: the first on-demand instance starts with the daemon (its runtime even
before the rest of the daemon has loaded), as Lambda may initialise an on-demand
execution environment ahead of its first invocation."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import PYTHON_RIC, alive, poll, stays

# A handler whose module prints while it is imported (the init phase), and counts inits.
NOISY_INIT = """
import os
with open(os.environ["INIT_COUNT"], "a") as count:
    count.write("init\\n")
print("INIT-MARKER " + os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"], flush=True)
if os.path.exists(os.environ["INIT_COUNT"] + ".fail"):
    raise RuntimeError("init refused")

def handler(event, context):
    return {"pid": os.getpid(), "stream": context.log_stream_name}
"""


def ready(daemon: Any) -> bool:
    return " ready: " in daemon.stderr()


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as file:
        pairs = [item.partition(b"=") for item in file.read().split(b"\0") if item]
    return {name.decode(): value.decode() for name, _, value in pairs}


def noisy_daemon(
    start_daemon: Any, tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[Any, Path]:
    """A daemon running NOISY_INIT under awslambdaric, and the file counting its inits."""
    code, count = tmp_path / "code", tmp_path / "inits"
    code.mkdir()
    (code / "noisy.py").write_text(NOISY_INIT)
    env = {"INIT_COUNT": str(count), **(env or {})}
    return start_daemon([*PYTHON_RIC, "noisy.handler"], env=env, cwd=code), count


def inits(count: Path) -> int:
    return count.read_text().count("init") if count.exists() else 0


def test_the_first_runtime_starts_before_any_invocation_and_serves_it(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon, count = noisy_daemon(start_daemon, tmp_path, {"PRINT_REPORTS": "TRUE"})
    assert poll(lambda: "INIT-MARKER on-demand" in daemon.stdout()), daemon.stderr()
    [pid] = daemon.runtime_pids()
    runtime_env = environ_of(pid)
    assert runtime_env["AWS_LAMBDA_RUNTIME_API"] == f"127.0.0.1:{daemon.runtime_port}"
    assert runtime_env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert not any(name.startswith("AMQP") for name in runtime_env)
    answer = daemon.invoke({})
    assert answer.status == 200, answer.body
    assert answer.json()["pid"] == pid, "the invocation started another runtime"
    assert answer.json()["stream"] == runtime_env["AWS_LAMBDA_LOG_STREAM_NAME"]
    assert inits(count) == 1
    # Its init is reported with the first invocation, as for any on-demand instance.
    assert poll(lambda: "REPORT RequestId" in daemon.stdout()), daemon.stdout()
    report = next(line for line in daemon.stdout().splitlines() if line.startswith("REPORT"))
    assert re.search(r"Init Duration: \d+\.\d\d ms", report), report


def test_off_the_runtime_starts_with_the_first_invocation(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon, count = noisy_daemon(start_daemon, tmp_path, {"PROACTIVE_INIT": "FALSE"})
    assert poll(lambda: ready(daemon)), daemon.stderr()
    # Absence, with a documented bound: started ahead, it prints within ~150 ms.
    assert stays(lambda: not daemon.runtime_pids() and inits(count) == 0, 1.0)
    answer = daemon.invoke({})
    assert answer.status == 200, answer.body
    assert inits(count) == 1
    assert "INIT-MARKER on-demand" in daemon.stdout()


def test_a_failed_early_init_is_tried_again_by_the_first_invocation(
    start_daemon: Any, tmp_path: Path
) -> None:
    (tmp_path / "inits.fail").touch()
    daemon, count = noisy_daemon(start_daemon, tmp_path)
    assert poll(lambda: "runtime init failed" in daemon.stderr()), daemon.stderr()
    assert poll(lambda: not daemon.runtime_pids()), "the failed instance was not stopped"
    answer = daemon.invoke({})
    # Lambda's answer to an init that fails on the invocation's own cold start.
    assert answer.status == 200, answer.body
    assert answer.header("X-Amz-Function-Error") == "Unhandled"
    assert answer.json()["errorMessage"] == "init refused"
    assert inits(count) == 2


@pytest.mark.parametrize("proactive", ["TRUE", "FALSE"])
def test_a_runtime_that_cannot_be_executed_gets_the_same_answer_either_way(
    start_daemon: Any, tmp_path: Path, proactive: str
) -> None:
    # Executable, so the daemon starts, but exec fails: its interpreter does not exist.
    runtime = tmp_path / "bootstrap"
    runtime.write_text("#!/nonexistent/interpreter\n")
    runtime.chmod(0o755)
    daemon = start_daemon([str(runtime)], env={"PROACTIVE_INIT": proactive})
    answer = daemon.invoke({})
    assert answer.status == 200, answer.body
    assert answer.header("X-Amz-Function-Error") == "Unhandled"
    assert answer.json() == {
        "errorType": "Runtime.ExitError",
        "errorMessage": "RequestId: "
        + answer.header("X-Amzn-RequestId")
        + " Error: Runtime exited with error: No such file or directory",
    }


def test_sigterm_before_any_invocation_stops_the_early_runtime(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon, _ = noisy_daemon(start_daemon, tmp_path)
    assert poll(lambda: len(daemon.runtime_pids()) == 1), daemon.stderr()
    [pid] = daemon.runtime_pids()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    assert daemon.stop() == 0  # asserts that nothing outlived the daemon
    assert not alive(pid)


def test_the_early_runtime_dies_with_a_killed_daemon(start_daemon: Any, tmp_path: Path) -> None:
    # The runtime's parent-death signal is set before it runs, as for any runtime.
    daemon, _ = noisy_daemon(start_daemon, tmp_path)
    assert poll(lambda: len(daemon.runtime_pids()) == 1), daemon.stderr()
    [pid] = daemon.runtime_pids()
    os.killpg(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(20)
    assert poll(lambda: not alive(pid)), f"runtime {pid} outlived the daemon"
    daemon.stopped = True
