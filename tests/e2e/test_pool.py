"""The instance pool: runtimes start on demand up to MAX_CONCURRENCY, invocations wait
first in first out, warm instances are reused, and an instance that times out, crashes,
fails its init or idles too long is gone afterwards."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.e2e.conftest import PROBE, PYTHON_RIC, alive, poll, read_response, stays


def assert_function_error(response: Any, error_type: str) -> dict[str, Any]:
    assert response.status == 200, response.body
    assert response.header("X-Amz-Function-Error") == "Unhandled", response.headers
    body = response.json()
    assert body["errorType"] == error_type, body
    return body  # type: ignore[no-any-return]


def test_on_demand_no_runtime_before_first_invocation_then_exactly_one(start_daemon):
    fn_daemon = start_daemon(env={"PROACTIVE_INIT": "FALSE"})
    # An eager daemon starts its runtime right after it listens: well within this window.
    assert stays(lambda: fn_daemon.runtime_pids() == [], 0.5), (
        "a runtime was started before any invocation"
    )
    response = fn_daemon.invoke({"pid": 1})
    assert response.status == 200
    pid = response.json()["pid"]
    assert fn_daemon.runtime_pids() == [pid]


def test_warm_instance_is_reused(fn_daemon):
    first = fn_daemon.invoke({"pid": 1}).json()
    second = fn_daemon.invoke({"pid": 1}).json()
    third = fn_daemon.invoke({"pid": 1}).json()
    assert first["cold"] is True
    assert second["pid"] == first["pid"] and second["cold"] is False
    assert third["pid"] == first["pid"]
    assert fn_daemon.runtime_pids() == [first["pid"]]


def test_concurrency_is_capped_and_every_invocation_succeeds(start_daemon):
    daemon = start_daemon(PROBE, env={"MAX_CONCURRENCY": "3", "AWS_LAMBDA_FUNCTION_TIMEOUT": "30"})
    counts: list[int] = []
    done = threading.Event()

    def monitor() -> None:
        while not done.is_set():
            counts.append(len(daemon.runtime_pids()))
            time.sleep(0.03)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    try:
        with ThreadPoolExecutor(6) as executor:
            futures = [executor.submit(daemon.invoke, {"sleep": 1.5, "tag": i}) for i in range(6)]
            responses = [f.result(timeout=60) for f in futures]
    finally:
        done.set()
        watcher.join()

    for i, response in enumerate(responses):
        assert response.status == 200
        assert response.header("X-Amz-Function-Error") is None, response.body
        assert response.json()["tag"] == i
    assert max(counts) <= 3, f"more than 3 runtime processes at once: {max(counts)}"
    assert max(counts) == 3, f"the pool never grew to MAX_CONCURRENCY=3: {max(counts)}"
    results = [r.json() for r in responses]
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for result in results:
        by_pid.setdefault(result["pid"], []).append(result)
    assert len(by_pid) <= 3
    for pid, runs in by_pid.items():  # one invocation at a time per instance
        runs.sort(key=lambda r: r["start"])
        for earlier, later in zip(runs, runs[1:], strict=False):
            assert later["start"] >= earlier["end"], f"overlapping invocations on pid {pid}"
    assert len(daemon.runtime_pids()) <= 3


def test_waiting_invocations_are_served_first_in_first_out(start_daemon, tmp_path):
    daemon = start_daemon(PROBE, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "30"})
    assert daemon.invoke({"tag": "warm"}).status == 200
    gate = tmp_path / "gate"
    with ThreadPoolExecutor(6) as executor:
        blocker = executor.submit(daemon.invoke, {"wait": str(gate), "announce": 1})
        assert poll(lambda: "PROBE pid=" in daemon.stdout()), "the first invocation never ran"
        # Each request is written before the next connection opens: they arrive in order.
        waiting = [daemon.send_invoke({"tag": tag}) for tag in range(5)]
        gate.touch()
        assert blocker.result(timeout=60).status == 200
        results = [read_response(conn).json() for conn in waiting]
    assert [r["tag"] for r in results] == list(range(5))
    starts = [r["start"] for r in results]
    assert starts == sorted(starts), f"waiting invocations ran out of order: {results}"


def test_invocations_waiting_past_their_deadline_time_out(start_daemon, tmp_path):
    # The runtime's init lasts until the test opens its gate; each invocation may take 1 s.
    gate = tmp_path / "gate"
    daemon = start_daemon(
        PROBE, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "1", "PROBE_INIT_GATE": str(gate)}
    )
    with ThreadPoolExecutor(3) as executor:
        futures = [executor.submit(daemon.invoke, {"tag": i}) for i in range(3)]
        responses = [f.result(timeout=30) for f in futures]
    # Answered while the init still runs: they did not wait for the instance.
    assert daemon.runtime_pids(), "the starting instance is gone"
    gate.touch()
    for response in responses:
        body = assert_function_error(response, "Sandbox.Timedout")
        assert "Task timed out after 1.00 seconds" in body["errorMessage"]
        assert response.header("x-amzn-RequestId") in body["errorMessage"]

    # The instance that was starting is not lost: once warm it serves the next invocation.
    def warm_success() -> Any:
        response = daemon.invoke({"tag": "after"})
        return response if response.header("X-Amz-Function-Error") is None else None

    response = poll(warm_success, timeout=15, interval=0.2)
    assert response, "no invocation succeeded after the slow init finished"
    assert response.json()["tag"] == "after"


def test_timeout_kills_the_instance_and_the_next_invocation_gets_a_new_one(start_daemon):
    daemon = start_daemon(env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "1"})
    pid = daemon.invoke({"pid": 1}).json()["pid"]
    started = time.monotonic()
    response = daemon.invoke({"sleep": 60}, timeout=30)
    elapsed = time.monotonic() - started
    body = assert_function_error(response, "Sandbox.Timedout")
    assert "Task timed out after 1.00 seconds" in body["errorMessage"]
    assert f"RequestId: {response.header('x-amzn-RequestId')}" in body["errorMessage"]
    assert elapsed >= 0.9, f"timeout answered after {elapsed:.2f} s, before the deadline"
    assert poll(lambda: not alive(pid), timeout=5), "the timed-out instance is still running"
    assert pid not in daemon.runtime_pids()
    after = daemon.invoke({"pid": 1})
    assert after.status == 200 and after.header("X-Amz-Function-Error") is None, after.body
    assert after.json()["pid"] != pid
    assert after.json()["cold"] is True


# "At once" below: the function timeout is LONG and the client gives up well before it, so
# an answer that waited for the deadline fails the test, however loaded the machine is.
LONG = {"AWS_LAMBDA_FUNCTION_TIMEOUT": "120"}
SOON = 30


def test_crash_is_reported_at_once_and_the_next_invocation_works(start_daemon):
    daemon = start_daemon(env=LONG)
    pid = daemon.invoke({"pid": 1}).json()["pid"]
    response = daemon.invoke({"exit": 3}, timeout=SOON)
    body = assert_function_error(response, "Runtime.ExitError")
    assert "exit status 3" in body["errorMessage"]
    assert response.header("x-amzn-RequestId") in body["errorMessage"]
    assert poll(lambda: not alive(pid), timeout=5)
    after = daemon.invoke({"pid": 1})
    assert after.status == 200 and after.header("X-Amz-Function-Error") is None, after.body
    assert after.json()["pid"] != pid


def test_init_error_fails_each_invocation_at_once(start_daemon):
    daemon = start_daemon([*PYTHON_RIC, "broken.handler"], env=LONG)
    for attempt in range(2):
        response = daemon.invoke({"attempt": attempt}, timeout=SOON)
        body = assert_function_error(response, "RuntimeError")
        assert body["errorMessage"] == "this module cannot be imported"
        assert isinstance(body.get("stackTrace"), list)
    assert poll(lambda: daemon.runtime_pids() == [], timeout=5), "a failed runtime lingers"


def test_missing_handler_module_is_an_import_module_error(start_daemon):
    daemon = start_daemon([*PYTHON_RIC, "no_such_module.handler"], env=LONG)
    for _ in range(2):
        response = daemon.invoke({}, timeout=SOON)
        body = assert_function_error(response, "Runtime.ImportModuleError")
        assert "no_such_module" in body["errorMessage"]


def test_runtime_exiting_before_next_is_an_exit_error(start_daemon):
    daemon = start_daemon(["sh", "-c", "exit 7"], env=LONG)
    for _ in range(2):
        response = daemon.invoke({"x": 1}, timeout=SOON)
        body = assert_function_error(response, "Runtime.ExitError")
        assert "exit status 7" in body["errorMessage"]
        assert response.header("x-amzn-RequestId") in body["errorMessage"]


def test_idle_instances_are_reclaimed(start_daemon):
    daemon = start_daemon(
        PROBE,
        env={
            "MAX_CONCURRENCY": "3",
            "AWS_LAMBDA_FUNCTION_IDLETIMEOUT": "1",
            "AWS_LAMBDA_FUNCTION_TIMEOUT": "30",
        },
    )
    with ThreadPoolExecutor(3) as executor:
        futures = [executor.submit(daemon.invoke, {"sleep": 1, "tag": i}) for i in range(3)]
        results = [f.result(timeout=60).json() for f in futures]
    burst_end = time.monotonic()
    pids = {r["pid"] for r in results}
    assert len(pids) == 3, f"three concurrent invocations used {len(pids)} instances"
    assert set(daemon.runtime_pids()) == pids

    assert poll(lambda: not any(alive(p) for p in pids), timeout=8, interval=0.05), (
        f"idle instances still running: {daemon.runtime_pids()}"
    )
    gone_after = time.monotonic() - burst_end
    assert gone_after >= 0.8, f"instances reclaimed after {gone_after:.2f} s, idle timeout is 1 s"
    assert daemon.runtime_pids() == []

    response = daemon.invoke({"tag": "again"})
    assert response.status == 200 and response.header("X-Amz-Function-Error") is None
    result = response.json()
    assert result["pid"] not in pids and result["cold"] is True
    assert daemon.runtime_pids() == [result["pid"]]


def test_runtime_pids_have_their_own_process_group(fn_daemon):
    pid = fn_daemon.invoke({"pid": 1}).json()["pid"]
    assert os.getpgid(pid) == pid, "the runtime does not lead its own process group"
    assert os.getpgid(pid) != os.getpgid(fn_daemon.proc.pid)
