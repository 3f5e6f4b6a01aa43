"""PROVISIONED_CONCURRENCY: instances initialised at start-up, kept idle, replaced."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.conftest import DAEMON, PYTHON_RIC, poll, read_response, stays
from tests.e2e.test_telemetry import received, setup, subscription

# A handler whose init (its module's import) waits for the file named by INIT_GATE.
GATED = """
import os, time
while not os.path.exists(os.environ["INIT_GATE"]):
    time.sleep(0.01)

def handler(event, context):
    return {"type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"], "pid": os.getpid()}
"""


def ready(daemon: Any) -> bool:
    return " ready: " in daemon.stderr()


def reports(daemon: Any) -> list[str]:
    return [line for line in daemon.stdout().splitlines() if line.startswith("REPORT ")]


def pid_of(daemon: Any, event: Any = None) -> int:
    response = daemon.invoke(event or {"pid": True})
    assert response.status == 200, response.body
    return int(response.json()["pid"])


def test_ready_only_once_the_provisioned_instances_are_initialised(
    start_daemon: Any, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "gated.py").write_text(GATED)
    gate = tmp_path / "gate"
    env = {"PROVISIONED_CONCURRENCY": "2", "MAX_CONCURRENCY": "3", "INIT_GATE": str(gate)}
    daemon = start_daemon([*PYTHON_RIC, "gated.handler"], env=env, cwd=code)
    # Both runtimes start at once, before any invocation...
    assert poll(lambda: len(daemon.runtime_pids()) == 2), daemon.stderr()
    # ...and while their init blocks, the daemon does not say it is ready (it would say so
    # within milliseconds of listening without provisioned instances).
    assert stays(lambda: not ready(daemon), 0.5), daemon.stderr()
    gate.touch()
    assert poll(lambda: ready(daemon)), daemon.stderr()
    answer = daemon.invoke({})
    assert answer.status == 200, answer.body
    assert answer.json()["type"] == "provisioned-concurrency"
    assert answer.json()["pid"] in daemon.runtime_pids()


def test_report_has_no_init_duration_and_on_demand_instances_still_do(start_daemon: Any) -> None:
    env = {"PROVISIONED_CONCURRENCY": "1", "MAX_CONCURRENCY": "2", "PRINT_REPORTS": "TRUE"}
    daemon = start_daemon(env=env)
    assert poll(lambda: ready(daemon)), daemon.stderr()
    provisioned = daemon.invoke({"env": True}).json()
    assert provisioned["AWS_LAMBDA_INITIALIZATION_TYPE"] == "provisioned-concurrency"
    assert poll(lambda: len(reports(daemon)) == 1), daemon.stdout()
    assert "Init Duration" not in reports(daemon)[0]
    # While the provisioned instance is busy, a second invocation starts one on demand.
    busy = daemon.send_invoke({"sleep": 1})  # reaches the daemon before the next one
    on_demand = daemon.invoke({"env": True}).json()
    assert read_response(busy).status == 200
    assert on_demand["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert poll(lambda: len(reports(daemon)) == 3), daemon.stdout()
    with_init = [line for line in reports(daemon) if "Init Duration" in line]
    assert len(with_init) == 1, reports(daemon)


def test_provisioned_instance_is_not_reclaimed_when_idle(start_daemon: Any) -> None:
    env = {
        "PROVISIONED_CONCURRENCY": "1",
        "MAX_CONCURRENCY": "2",
        "AWS_LAMBDA_FUNCTION_IDLETIMEOUT": "0.3",
    }
    daemon = start_daemon(env=env)
    assert poll(lambda: ready(daemon)), daemon.stderr()
    kept = pid_of(daemon)
    busy = daemon.send_invoke({"sleep": 1})  # reaches the daemon before the next one
    on_demand = pid_of(daemon)
    assert read_response(busy).status == 200
    assert on_demand != kept
    # The on-demand instance is reclaimed after its idle timeout; the provisioned one stays.
    assert poll(lambda: daemon.runtime_pids() == [kept]), daemon.runtime_pids()
    # Ten idle timeouts: a reclaim of the provisioned one would have happened by then.
    assert stays(lambda: daemon.runtime_pids() == [kept], 3.0)
    assert pid_of(daemon) == kept


def test_provisioned_instance_is_replaced_after_a_crash(start_daemon: Any) -> None:
    env = {"PROVISIONED_CONCURRENCY": "1", "PRINT_REPORTS": "TRUE"}
    daemon = start_daemon(env=env)
    assert poll(lambda: ready(daemon)), daemon.stderr()
    first = pid_of(daemon)
    crashed = daemon.invoke({"exit": 3})
    assert crashed.header("X-Amz-Function-Error") == "Unhandled"
    # A successor is initialised at once, without waiting for an invocation.
    # The polled value itself: a second read can catch the successor mid-exec.
    successor = poll(lambda: (p := daemon.runtime_pids()) and p != [first] and p)
    assert successor, daemon.stderr()
    answer = daemon.invoke({"env": True}).json()
    assert answer["AWS_LAMBDA_INITIALIZATION_TYPE"] == "provisioned-concurrency"
    assert pid_of(daemon) in successor
    assert not any("Init Duration" in line for line in reports(daemon)), reports(daemon)


def test_provisioned_instance_is_replaced_after_a_timeout(start_daemon: Any) -> None:
    env = {"PROVISIONED_CONCURRENCY": "1", "AWS_LAMBDA_FUNCTION_TIMEOUT": "1"}
    daemon = start_daemon(env=env)
    assert poll(lambda: ready(daemon)), daemon.stderr()
    first = pid_of(daemon)
    timed_out = daemon.invoke({"sleep": 5})
    assert timed_out.header("X-Amz-Function-Error") == "Unhandled"
    assert poll(lambda: (p := daemon.runtime_pids()) and p != [first]), daemon.stderr()
    answer = daemon.invoke({"env": True}).json()
    assert answer["AWS_LAMBDA_INITIALIZATION_TYPE"] == "provisioned-concurrency"


def test_a_failing_init_is_not_restarted_in_a_loop(start_daemon: Any, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "broken_init.py").write_text("raise SystemExit(1)\n")
    env = {"PROVISIONED_CONCURRENCY": "1"}
    daemon = start_daemon([*PYTHON_RIC, "broken_init.handler"], env=env, cwd=code)
    assert poll(lambda: ready(daemon)), daemon.stderr()
    assert "provisioned instance failed its init" in daemon.stderr()
    # A restart loop would show new runtimes within this time.
    assert stays(lambda: not daemon.runtime_pids(), 1.0)


def test_bad_provisioned_concurrency_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for env, flags in (
        ({"PROVISIONED_CONCURRENCY": "3", "MAX_CONCURRENCY": "2"}, []),
        ({"PROVISIONED_CONCURRENCY": "-1"}, []),
        ({}, ["--provisioned-concurrency", "two"]),
    ):
        done = subprocess.run(
            [DAEMON, *flags, "true"],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            timeout=30,
        )
        lines = done.stderr.decode().strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and re.search("provisioned.concurrency", lines[0], re.I), lines


def test_telemetry_shows_the_provisioned_init(start_daemon: Any, tmp_path: Path) -> None:
    body = subscription(["platform"])
    daemon = start_daemon(env=setup(tmp_path, body, PROVISIONED_CONCURRENCY="1"))
    assert poll(lambda: ready(daemon)), daemon.stderr()
    request_id = daemon.invoke({}).header("x-amzn-RequestId")

    def record(kind: str) -> Any:
        for r in received(tmp_path):
            if r["type"] == kind and (
                kind != "platform.report" or r["record"]["requestId"] == request_id
            ):
                return r["record"]
        return None

    assert poll(lambda: record("platform.report")), received(tmp_path)
    for kind in ("platform.initStart", "platform.initRuntimeDone", "platform.initReport"):
        assert record(kind)["initializationType"] == "provisioned-concurrency", kind
    assert "initDurationMs" not in record("platform.report")["metrics"]
