"""What a runtime prints cannot hold the function timeout or the daemon hostage."""

from tests.e2e.conftest import PYTHON_RIC


def test_timeout_holds_while_the_runtime_prints_without_newlines(start_daemon):
    daemon = start_daemon(
        [*PYTHON_RIC, "spew.handler"],
        env={"PRINT_REPORTS": "TRUE", "AWS_LAMBDA_FUNCTION_TIMEOUT": "1"},
    )
    response = daemon.invoke({}, timeout=20)
    assert response.status == 200
    assert response.json()["errorType"] == "Sandbox.Timedout"
    # Lambda cuts lines at 256 KB: the daemon's stdout has no longer line.
    lines = daemon.stdout().split("\n")
    assert max(len(line) for line in lines) == 256 * 1024
    assert any(line.startswith("REPORT") and "Status: timeout" in line for line in lines)
