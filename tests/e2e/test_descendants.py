"""Nothing a runtime starts outlives its instance or the daemon."""

import contextlib
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import PYTHON_RIC, alive, ok, poll, wait_until_gone

STUBBORN = [*PYTHON_RIC, "stubborn.handler"]


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[1])


@pytest.mark.parametrize("orphan", [False, True], ids=["child", "orphan"])
def test_a_setsid_descendant_ignoring_sigterm_dies_with_its_instance(start_daemon, orphan):
    daemon = start_daemon(STUBBORN)
    pid = ok(daemon.invoke({"orphan": orphan}))["pid"]
    assert alive(pid)
    if orphan:  # re-parented to the daemon (a subreaper), not to PID 1
        assert parent_of(pid) == daemon.proc.pid
    # The runtime crashes; its instance is gone, and so must be everything it started.
    response = daemon.invoke({"orphan": False, "exit": 3})
    assert response.json()["errorType"] == "Runtime.ExitError"
    assert poll(lambda: not alive(pid), timeout=5), "a descendant outlived its instance"


def test_a_setsid_descendant_dies_when_its_instance_times_out(start_daemon):
    daemon = start_daemon(STUBBORN, env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "1"})
    pid = ok(daemon.invoke({"orphan": True}))["pid"]
    response = daemon.invoke({"sleep": 5})
    assert response.json()["errorType"] == "Sandbox.Timedout"
    assert poll(lambda: not alive(pid), timeout=5), "a descendant outlived its instance"


def test_runtimes_die_with_the_daemon_even_on_sigkill(start_daemon):
    daemon = start_daemon(env={"AWS_LAMBDA_FUNCTION_TIMEOUT": "60"})
    # A runtime busy in its handler does not notice its Runtime API going away.
    ThreadPoolExecutor(1).submit(daemon.invoke, {"print": "busy", "sleep": 30}, timeout=5)
    assert poll(lambda: "busy" in daemon.stdout())
    runtimes = daemon.runtime_pids()
    assert runtimes
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    daemon.stopped = True
    try:
        assert poll(lambda: not any(alive(pid) for pid in runtimes), timeout=5)
    finally:
        wait_until_gone(daemon.token, timeout=0)


def test_orphans_are_reaped_when_the_daemon_is_not_pid_1(start_daemon):
    daemon = start_daemon([*PYTHON_RIC, "orphans.handler"])
    assert os.getpid() != 1 and daemon.proc.pid != 1
    ok(daemon.invoke({"sleep": 0.5}))

    def zombie_children() -> list[str]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    with open(f"/proc/{entry}/stat", "rb") as stat:
                        fields = stat.read().rsplit(b")", 1)[1].split()
                    if fields[0] == b"Z" and int(fields[1]) == daemon.proc.pid:
                        found.append(entry)
        return found

    sleepers = [p for p in daemon.runtime_pids() if parent_of(p) == daemon.proc.pid]
    assert len(sleepers) >= 2, "the orphan was not re-parented to the daemon"
    assert poll(lambda: len([p for p in daemon.runtime_pids() if alive(p)]) == 1, timeout=5)
    assert poll(lambda: not zombie_children(), timeout=5)
