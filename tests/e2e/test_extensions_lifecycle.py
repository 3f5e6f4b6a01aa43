"""Extensions' failures and limits with real processes: too many extensions, init/error,
exit/error, an extension that exits or never registers, the timeout reset, Init Duration
and the extensions' lines in the log tail."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from tests.e2e.conftest import PYTHON_RIC, alive, ok, poll
from tests.e2e.test_extensions import extension_env, install, records


def error_type(answer: Any) -> str:
    assert answer.status == 200
    assert answer.header("X-Amz-Function-Error") == "Unhandled"
    return str(answer.json()["errorType"])


def shutdowns(log: Path) -> list[dict[str, Any]]:
    return [r for r in records(log) if r.get("eventType") == "SHUTDOWN"]


def test_eleventh_extension_is_refused(start_daemon: Any, tmp_path: Path) -> None:
    directory = tmp_path / "opt" / "extensions"
    for n in range(11):
        install(directory, f"ext{n:02d}")
    daemon = start_daemon(env=extension_env(tmp_path))
    # The refused one exits, which fails init as an exiting extension does on Lambda.
    assert error_type(daemon.invoke({"n": 1})) == "Extension.Crash"
    refused = tmp_path / "ext.log.0.refused"
    assert [json.loads(line) for line in refused.read_text().splitlines()] == [
        {"refused": [403, "Extension.TooManyExtensions"]}
    ]
    log = tmp_path / "ext.log"
    assert poll(lambda: len([r for r in records(log) if "registered" in r]) == 10)


def test_extension_init_error_fails_init(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "picky", EXT_INIT_ERROR="Extension.ConfigInvalid")
    daemon = start_daemon(env=extension_env(tmp_path))
    answer = daemon.invoke({"n": 1})
    assert error_type(answer) == "Extension.ConfigInvalid"
    assert answer.json()["errorMessage"] == "test"


def test_extension_exit_error_ends_the_instance(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "grumpy", EXT_EXIT_ERROR="Extension.Grumpy")
    daemon = start_daemon(env=extension_env(tmp_path))
    assert error_type(daemon.invoke({"sleep": 30})) == "Extension.Grumpy"
    log = tmp_path / "ext.log"
    assert poll(lambda: [r["shutdownReason"] for r in shutdowns(log)] == ["failure"])


def test_timeout_resets_instance_with_shutdown_timeout(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "recorder")
    env = extension_env(tmp_path, AWS_LAMBDA_FUNCTION_TIMEOUT="3")
    daemon = start_daemon(env=env)
    ok(daemon.invoke({"n": 1}))  # warm: the next invocation's time is all the handler's
    log = tmp_path / "ext.log"
    first_pid = records(log)[0]["pid"]
    runtime = daemon.runtime_pids()
    assert error_type(daemon.invoke({"sleep": 30})) == "Sandbox.Timedout"
    shutdown = poll(lambda: shutdowns(log))[0]
    assert shutdown["shutdownReason"] == "timeout"
    assert shutdown["deadlineMs"] > 0
    assert poll(lambda: not alive(first_pid) and not any(alive(p) for p in runtime))
    # The next invocation starts a new instance: its extension registers again.
    assert ok(daemon.invoke({"n": 2})) == {"n": 2}
    pids = [r["pid"] for r in records(log) if "registered" in r]
    assert len(pids) == 2 and pids[1] != first_pid


def test_extension_exiting_after_init_resets_instance(start_daemon: Any, tmp_path: Path) -> None:
    directory = tmp_path / "opt" / "extensions"
    install(directory, "quitter", EXT_EXIT_ON_INVOKE="1")
    install(directory, "recorder")
    daemon = start_daemon(env=extension_env(tmp_path))
    assert error_type(daemon.invoke({"sleep": 30})) == "Extension.Crash"
    log = tmp_path / "ext.log"
    assert poll(lambda: [r["shutdownReason"] for r in shutdowns(log)] == ["failure"])
    # The next invocation starts a new instance, whose extensions register again.
    assert ok(daemon.invoke({"n": 2})) == {"n": 2}


def test_init_duration_includes_extensions_init(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "slow", EXT_DELAY="0.3")
    daemon = start_daemon(env=extension_env(tmp_path, PRINT_REPORTS="true"))
    ok(daemon.invoke({"n": 1}))
    found = poll(lambda: re.search(r"Init Duration: ([0-9.]+) ms", daemon.stdout()))
    assert float(found.group(1)) >= 300


def test_extension_that_never_registers_fails_init(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "mute", EXT_NO_REGISTER="1")
    env = extension_env(tmp_path, LAMBDA_RAPID_EXTENSIONS_INIT_LIMIT="0.5")
    daemon = start_daemon(env=env)
    answer = daemon.invoke({"n": 1})
    assert error_type(answer) == "Sandbox.Timedout"
    assert "mute did not register" in answer.json()["errorMessage"]


def test_extension_lines_in_log_tail(start_daemon: Any, tmp_path: Path) -> None:
    said = tmp_path / "said"
    install(
        tmp_path / "opt" / "extensions", "talker", EXT_SAY="hello from talker", EXT_SAID=str(said)
    )
    daemon = start_daemon([*PYTHON_RIC, "wait_file.handler"], env=extension_env(tmp_path))
    answer = daemon.invoke({"file": str(said)}, headers={"X-Amz-Log-Type": "Tail"})
    assert ok(answer) == {"seen": True}
    tail = base64.b64decode(answer.header("X-Amz-Log-Result") or "").decode()
    assert "hello from talker" in tail
