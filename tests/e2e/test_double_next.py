"""A runtime that polls /next twice: the newer request wins, nothing is assigned twice."""

import sys

from tests.e2e.conftest import FUNCTIONS, poll


def test_second_next_supersedes_the_first(start_daemon):
    daemon = start_daemon([sys.executable, str(FUNCTIONS / "double_next.py")])
    first = daemon.invoke({"n": 1})  # starts the runtime; it polls twice
    assert first.status == 200
    assert first.json() == {"n": 1}
    # The older /next is answered (and printed as FIRST) once the newer one has arrived.
    line = poll(
        lambda: next((x for x in daemon.stdout().splitlines() if x.startswith("FIRST")), None)
    )
    assert line, f"the older /next was never answered:\n{daemon.stdout()}"
    assert line.startswith("FIRST 500 ") and "errorType" in line
    for n in range(2, 6):
        response = daemon.invoke({"n": n})
        assert response.status == 200
        assert response.json() == {"n": n}
    assert [x for x in daemon.stdout().splitlines() if x.startswith("FIRST")] == [line]
