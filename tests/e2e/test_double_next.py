"""A runtime that polls /next twice: the newer request wins, nothing is assigned twice."""

import sys
import time

from tests.e2e.conftest import FUNCTIONS


def test_second_next_supersedes_the_first(start_daemon):
    daemon = start_daemon([sys.executable, str(FUNCTIONS / "double_next.py")])
    first = daemon.invoke({"n": 1})  # starts the runtime; it polls twice
    assert first.status == 200
    assert first.json() == {"n": 1}
    time.sleep(1.0)  # the runtime now polls twice: the older request, then the newer
    for n in range(2, 6):
        response = daemon.invoke({"n": n})
        assert response.status == 200
        assert response.json() == {"n": n}
    deadline = time.monotonic() + 5
    while "FIRST" not in daemon.stdout() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in daemon.stdout().splitlines() if line.startswith("FIRST"))
    assert line.startswith("FIRST 500 ") and "errorType" in line
