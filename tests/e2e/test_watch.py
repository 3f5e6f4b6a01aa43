"""WATCH=TRUE: an edited handler is served at once, busy instances finish on the old code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import PYTHON_RIC, Daemon, poll, read_response

HANDLER = """\
import time


def handler(event, context):
    print("running {version}", flush=True)
    time.sleep(event.get("sleep", 0))
    return {{"version": {version}}}
"""


def write_handler(directory: Path, version: int) -> None:
    (directory / "app.py").write_text(HANDLER.format(version=version))


def watching(start_daemon: Any, tmp_path: Path, **env: str) -> tuple[Daemon, Path]:
    code = tmp_path / "code"
    code.mkdir()
    write_handler(code, 1)
    daemon = start_daemon([*PYTHON_RIC, "app.handler"], env={"WATCH": "TRUE", **env}, cwd=code)
    return daemon, code


def version(daemon: Daemon) -> Any:
    answer = daemon.invoke({})
    assert answer.status == 200
    return answer.json().get("version")


def test_edit_is_served_by_the_next_invocation(start_daemon: Any, tmp_path: Path) -> None:
    daemon, code = watching(start_daemon, tmp_path)
    assert version(daemon) == 1
    write_handler(code, 2)
    assert poll(lambda: version(daemon) == 2)
    assert poll(lambda: "code changed (app.py): restarting instances: <Instance" in daemon.stderr())


def test_busy_instance_finishes_on_the_old_code(start_daemon: Any, tmp_path: Path) -> None:
    daemon, code = watching(start_daemon, tmp_path)
    assert version(daemon) == 1
    busy = daemon.send_invoke({"sleep": 1.5})
    poll(lambda: daemon.stdout().count("running 1") == 2)
    write_handler(code, 2)
    poll(lambda: "code changed (app.py)" in daemon.stderr())
    assert read_response(busy).json() == {"version": 1}
    assert version(daemon) == 2


def test_syntax_error_gives_the_init_error_and_a_fix_recovers(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon, code = watching(start_daemon, tmp_path)
    assert version(daemon) == 1
    (code / "app.py").write_text("def handler(event, context)\n    return 1\n")

    def init_error() -> bool:
        answer = daemon.invoke({})
        return answer.header("X-Amz-Function-Error") is not None and (
            answer.json().get("errorType") == "Runtime.UserCodeSyntaxError"
        )

    assert poll(init_error)
    write_handler(code, 3)
    assert poll(lambda: version(daemon) == 3)


def test_compiled_files_and_editor_temp_files_are_ignored(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon, code = watching(start_daemon, tmp_path)
    assert version(daemon) == 1
    (code / "__pycache__").mkdir(exist_ok=True)
    (code / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"x")
    (code / ".app.py.swp").write_bytes(b"x")
    (code / "app.py~").write_bytes(b"x")
    (code / ".git").mkdir()
    (code / ".git" / "index").write_bytes(b"x")
    (code / "data.json").write_text("{}")
    # The one change that counts is logged alone, and after it no ignored file ever is.
    assert poll(lambda: "code changed (data.json)" in daemon.stderr())
    logged = [line for line in daemon.stderr().splitlines() if "code changed" in line]
    assert all(
        "swp" not in line and "pycache" not in line and ".git" not in line for line in logged
    )
    assert all("app.py~" not in line for line in logged)
