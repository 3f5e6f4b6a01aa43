"""The fixtures' port picks: parallel test processes never hand out the same port.

Two daemons given one port cannot both start; the one that fails exits at start-up and
resets the connections its early-bound Invoke API socket had already accepted.
"""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.conftest import REPO, free_port

PICK = "from tests.e2e.conftest import free_port; print(free_port(range({0}, {0} + 1)))"


def test_a_port_picked_by_another_process_is_not_picked_again() -> None:
    port = free_port()  # not bound by anyone yet, as between a pick and a daemon's start
    other = subprocess.run(
        [sys.executable, "-c", PICK.format(port)],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert int(other.stdout) != port


def test_a_process_never_picks_its_own_pending_port_twice() -> None:
    port = free_port()
    assert free_port(range(port, port + 1)) != port
