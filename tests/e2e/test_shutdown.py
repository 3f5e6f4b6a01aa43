"""Shutdown on SIGTERM/SIGINT: in-flight invocations finish, new ones are refused, the
daemon exits 0, and no runtime process or child of one survives (also after a timeout)."""

from __future__ import annotations

import itertools
import re
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import PROBE, alive, poll

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def child_pid(daemon: Any, request_id: str) -> int:
    pattern = re.compile(rf"PROBE child=(\d+) request={re.escape(request_id)}")
    match = poll(lambda: pattern.search(daemon.stdout()))
    assert match, f"the function did not report its child:\n{daemon.stdout()}"
    return int(match.group(1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_the_inflight_invocation_finish(start_daemon, signum):
    daemon = start_daemon(env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "10"})
    tag = f"inflight-{uuid.uuid4().hex}"
    event = {"print": tag, "sleep": 1}
    with ThreadPoolExecutor(1) as executor:
        future = executor.submit(daemon.invoke, event)
        assert poll(lambda: tag in daemon.stdout()), "the invocation never started"
        runtimes = daemon.runtime_pids()
        assert runtimes
        daemon.signal(signum)
        response = future.result(timeout=30)
    assert response.status == 200, response.body
    assert response.header("X-Amz-Function-Error") is None, response.body
    assert response.json() == event
    assert daemon.proc.wait(20) == 0
    assert daemon.stop() == 0  # asserts that nothing outlived the daemon
    assert not any(alive(pid) for pid in runtimes)


def test_sigterm_with_idle_instances_exits_0(start_daemon):
    # Idle instances are stopped at once: the daemon does not wait out the grace period.
    daemon = start_daemon(env={"MAX_CONCURRENCY": "2", "SHUTDOWN_GRACE_PERIOD": "60"})
    with ThreadPoolExecutor(2) as executor:
        for future in [executor.submit(daemon.invoke, {"sleep": 0.5}) for _ in range(2)]:
            assert future.result(timeout=30).status == 200
    runtimes = daemon.runtime_pids()
    assert len(runtimes) == 2
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    assert daemon.stop() == 0
    assert not any(alive(pid) for pid in runtimes)


def test_new_invocations_are_refused_during_shutdown(start_daemon):
    daemon = start_daemon(env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "60", "SHUTDOWN_GRACE_PERIOD": "60"})
    tag = f"inflight-{uuid.uuid4().hex}"
    event = {"print": tag, "sleep": 5}
    with ThreadPoolExecutor(1) as executor:
        future = executor.submit(daemon.invoke, event)
        assert poll(lambda: tag in daemon.stdout()), "the invocation never started"
        daemon.signal(signal.SIGTERM)
        assert poll(lambda: "stopping" in daemon.stderr()), "the daemon never began stopping"
        late = daemon.invoke({"late": 1}, timeout=10)
        # Refused at once: answered while the in-flight invocation still runs.
        assert not future.done(), "the refused invocation waited for the in-flight one"
        assert late.status == 503, f"a new invocation was not refused: {late.status} {late.body}"
        assert late.header("x-amzn-ErrorType") == "ServiceException", late.headers
        response = future.result(timeout=30)
    assert response.status == 200 and response.json() == event
    assert daemon.proc.wait(20) == 0
    assert daemon.stop() == 0


def test_background_child_is_killed_with_a_timed_out_instance(start_daemon):
    daemon = start_daemon(PROBE, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "1"})
    response = daemon.invoke({"child": 1, "announce": 1, "sleep": 5})
    assert response.status == 200
    assert response.header("X-Amz-Function-Error") == "Unhandled"
    assert response.json()["errorType"] == "Sandbox.Timedout"
    request_id = response.header("x-amzn-RequestId")
    child = child_pid(daemon, request_id)
    match = re.search(rf"PROBE pid=(\d+) request={request_id}", daemon.stdout())
    assert match
    runtime = int(match.group(1))
    assert poll(lambda: not alive(runtime), timeout=5), "the timed-out runtime survived"
    assert poll(lambda: not alive(child), timeout=5), "the runtime's child was orphaned"
    assert daemon.runtime_pids() == []
    after = daemon.invoke({"tag": "after"})
    assert after.status == 200 and after.json()["tag"] == "after"
    assert daemon.stop() == 0


def test_background_child_is_killed_at_shutdown(start_daemon):
    daemon = start_daemon(PROBE)
    response = daemon.invoke({"child": 1})
    assert response.status == 200 and response.header("X-Amz-Function-Error") is None
    result = response.json()
    child = result["child"]
    assert alive(child), "the background child is not running"
    assert set(daemon.runtime_pids()) == {result["pid"], child}
    assert daemon.stop() == 0
    assert not alive(child), "the background child survived the daemon"
    assert not alive(result["pid"])


def test_background_child_is_killed_when_its_runtime_crashes(start_daemon):
    daemon = start_daemon(PROBE, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "10"})
    response = daemon.invoke({"child": 1, "exit": 5})
    assert response.json()["errorType"] == "Runtime.ExitError"
    child = child_pid(daemon, response.header("x-amzn-RequestId"))
    assert poll(lambda: not alive(child), timeout=5), "the crashed runtime's child was orphaned"
    assert daemon.stop() == 0


def test_runtime_ignoring_sigterm_is_killed_at_shutdown(start_daemon):
    # The idle runtime gets SIGTERM, then SIGKILL 2 s later: far sooner than the wait below.
    daemon = start_daemon(PROBE, env={"PROBE_IGNORE_SIGTERM": "1"})
    response = daemon.invoke({"child": "stubborn"})
    assert response.status == 200 and response.header("X-Amz-Function-Error") is None
    result = response.json()
    assert alive(result["child"]) and alive(result["pid"])
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    assert daemon.stop() == 0  # asserts the runtime, its shell and its sleep are gone
    assert not alive(result["pid"]) and not alive(result["child"])


def test_invocation_longer_than_the_shutdown_grace_still_gets_an_answer(start_daemon):
    # The invocation would run 120 s: an answer within the wait below came from the grace.
    daemon = start_daemon(
        PROBE, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "300", "SHUTDOWN_GRACE_PERIOD": "1"}
    )
    with ThreadPoolExecutor(1) as executor:
        future = executor.submit(daemon.invoke, {"announce": 1, "sleep": 120}, timeout=60)
        assert poll(lambda: "PROBE pid=" in daemon.stdout()), "the invocation never started"
        daemon.signal(signal.SIGTERM)
        response = future.result(timeout=30)
    assert response.status == 200, response.body
    assert response.header("X-Amz-Function-Error") == "Unhandled"
    assert response.json()["errorType"]
    assert daemon.proc.wait(20) == 0
    assert daemon.stop() == 0


def test_repeated_sigterm_while_stopping_still_exits_0(start_daemon):
    # Supervisors repeat SIGTERM and people press Ctrl-C twice: a stop already under way
    # goes on to its end and the exit status stays 0, up to the last moment of the process.
    daemon = start_daemon(env={"MAX_CONCURRENCY": "2"})
    assert daemon.invoke({}).status == 200
    for signum in itertools.islice(itertools.cycle(STOP_SIGNALS), 20_000):
        if daemon.proc.poll() is not None:
            break
        daemon.signal(signum)
        time.sleep(0.0005)
    assert daemon.proc.wait(20) == 0
    assert daemon.stop() == 0
