"""External and internal Lambda extensions with real processes (Extensions API)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.e2e.conftest import (
    FUNCTIONS,
    PYTHON_RIC,
    alive,
    ok,
    poll,
    processes_with_marker,
    read_response,
)

RECORDER = FUNCTIONS / "extension_recorder.py"


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def install(directory: Path, name: str, source: Path = RECORDER, **env: str) -> Path:
    """An executable extension `name` in `directory` that runs a test script (with `env`)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    exports = "".join(f"export {key}='{value}'\n" for key, value in env.items())
    path.write_text(f'#!/bin/sh\n{exports}exec {sys.executable} {source} "$0"\n')
    path.chmod(0o755)
    return path


def records(log: Path, slot: int = 0) -> list[dict[str, Any]]:
    path = Path(f"{log}.{slot}")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def extension_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "LAMBDA_EXTENSIONS_DIR": str(tmp_path / "opt" / "extensions"),
        "EXT_LOG": str(tmp_path / "ext.log"),
        **extra,
    }


def test_external_extension_sees_invoke_and_shutdown(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "recorder")
    daemon = start_daemon(env=extension_env(tmp_path))
    first, second = daemon.invoke({"n": 1}), daemon.invoke({"n": 2})
    assert ok(first) == {"n": 1} and ok(second) == {"n": 2}
    ids = [first.header("x-amzn-RequestId"), second.header("x-amzn-RequestId")]
    log = tmp_path / "ext.log"
    poll(lambda: len([r for r in records(log) if "done" in r]) == 2)
    daemon.stop()
    seen = records(log)
    assert seen[0]["registered"] == {
        "functionName": "fn",
        "functionVersion": "$LATEST",
        "handler": "fn.handler",
        "accountId": "123456789012",
    }
    assert seen[0]["handler_seen"] is False
    invokes = [r for r in seen if r.get("eventType") == "INVOKE"]
    assert [r["requestId"] for r in invokes] == ids
    assert invokes[0]["invokedFunctionArn"].endswith(":function:fn")
    assert invokes[0]["tracing"]["type"] == "X-Amzn-Trace-Id"
    assert invokes[0]["deadlineMs"] > 0
    assert seen[-1]["eventType"] == "SHUTDOWN"
    assert seen[-1]["shutdownReason"] == "spindown"


def test_client_answered_before_slow_extension_finishes(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "recorder")
    gate = tmp_path / "gate"
    daemon = start_daemon(env=extension_env(tmp_path, EXT_GATE=str(gate)))
    answer = daemon.invoke({"n": 1})
    assert ok(answer) == {"n": 1}
    log = tmp_path / "ext.log"
    request_id = answer.header("x-amzn-RequestId")
    poll(lambda: any(r.get("requestId") == request_id for r in records(log)))
    assert not any("done" in r for r in records(log))
    conn = daemon.send_invoke({"n": 2})  # waits for the extension: one instance only
    gate.touch()
    poll(lambda: any(r.get("done") == request_id for r in records(log)))
    assert read_response(conn).status == 200


def test_init_records_extension_in_init_duration(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "recorder")
    daemon = start_daemon(env=extension_env(tmp_path, PRINT_REPORTS="true"))
    ok(daemon.invoke({"n": 1}))
    poll(lambda: "Init Duration" in daemon.stdout())


def test_disable_file_keeps_extensions_off(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "recorder")
    (tmp_path / "opt" / "disable-extensions-jwigqn8j").touch()
    daemon = start_daemon(env=extension_env(tmp_path))
    ok(daemon.invoke({"n": 1}))
    assert records(tmp_path / "ext.log") == []


def test_extension_crash_during_init_fails_init(start_daemon: Any, tmp_path: Path) -> None:
    directory = tmp_path / "opt" / "extensions"
    directory.mkdir(parents=True)
    crash = directory / "crasher"
    crash.write_text("#!/bin/sh\nexit 3\n")
    crash.chmod(0o755)
    daemon = start_daemon(env=extension_env(tmp_path))
    answer = daemon.invoke({"n": 1})
    assert answer.status == 200
    assert answer.header("X-Amz-Function-Error") == "Unhandled"
    assert answer.json()["errorType"] == "Extension.Crash"


def test_shutdown_then_kill_after_deadline(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "recorder")
    daemon = start_daemon(env=extension_env(tmp_path, EXT_IGNORE_SHUTDOWN="1"))
    ok(daemon.invoke({"n": 1}))
    log = tmp_path / "ext.log"
    pid = poll(lambda: records(log) and records(log)[0]["pid"])
    poll(lambda: any("done" in r for r in records(log)))  # then it calls next again
    daemon.stop()  # asserts nothing is left behind
    assert records(log)[-1]["eventType"] == "SHUTDOWN"
    assert not alive(pid)


def test_instances_have_their_own_extensions(start_daemon: Any, tmp_path: Path) -> None:
    install(tmp_path / "opt" / "extensions", "recorder")
    daemon = start_daemon(env=extension_env(tmp_path, MAX_CONCURRENCY="3"))
    conns = [daemon.send_invoke({"sleep": 1.0}) for _ in range(3)]
    answers = [read_response(c) for c in conns]
    assert all(a.status == 200 for a in answers)
    ids = {a.header("x-amzn-RequestId") for a in answers}
    log = tmp_path / "ext.log"
    seen: dict[int, list[str]] = {}
    for slot in range(3):
        seen[slot] = [r["requestId"] for r in records(log, slot) if r.get("eventType") == "INVOKE"]
    assert sorted(len(v) for v in seen.values()) == [1, 1, 1]
    assert {i for v in seen.values() for i in v} == ids
    pids = {poll(lambda s=slot: records(log, s) and records(log, s)[0]["pid"]) for slot in range(3)}
    assert len(pids) == 3


def test_internal_extension_and_register_errors(start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon([*PYTHON_RIC, "internal_ext.handler"], env=extension_env(tmp_path))
    first = ok(daemon.invoke({}))
    assert first["answers"] == {
        "missing_name": [403, "Extension.InvalidExtensionName"],
        "unknown_event": [403, "Extension.InvalidEventType"],
        "internal_shutdown": [403, "Extension.InvalidEventType"],
        "missing_identifier": [403, "Extension.MissingExtensionIdentifier"],
        "invalid_identifier": [403, "Extension.InvalidExtensionIdentifier"],
        "unknown_identifier": [403, "Extension.UnknownExtensionIdentifier"],
    }
    assert first["registered"][0] == 200
    assert "accountId" not in first["registered"][1]
    assert first["late"] == [403, "Extension.RegistrationClosed"]
    assert first["instance"] == "0"
    # The next invocation starts only once the agent called next again: it saw the first.
    second = ok(daemon.invoke({}))
    assert first["request_id"] in second["events"]


def test_bash_curl_extension(start_daemon: Any, tmp_path: Path) -> None:
    directory = tmp_path / "opt" / "extensions"
    directory.mkdir(parents=True)
    script = directory / "bash-agent"
    log = tmp_path / "bash.log"
    script.write_text(
        "#!/bin/bash\n"
        "set -e\n"
        'base="http://${AWS_LAMBDA_RUNTIME_API}/2020-01-01/extension"\n'
        'id=$(curl -sS -D - -o /dev/null -X POST "$base/register" '
        '-H \'Lambda-Extension-Name: bash-agent\' -d \'{"events":["INVOKE","SHUTDOWN"]}\' '
        "| tr -d '\\r' | sed -n 's/^[Ll]ambda-[Ee]xtension-[Ii]dentifier: //p')\n"
        "while true; do\n"
        f'  event=$(curl -sS "$base/event/next" -H "Lambda-Extension-Identifier: $id")\n'
        f'  echo "$event" >> {log}\n'
        '  case "$event" in *SHUTDOWN*) exit 0;; esac\n'
        "done\n"
    )
    script.chmod(0o755)
    daemon = start_daemon(env=extension_env(tmp_path))
    answer = daemon.invoke({"n": 1})
    assert ok(answer) == {"n": 1}
    request_id = answer.header("x-amzn-RequestId")
    poll(lambda: log.exists() and request_id in log.read_text())
    # Stop once the extension waits in event/next again (its curl is running).
    assert poll(
        lambda: any(b"event/next" in cmdline(p) for p in processes_with_marker(daemon.token))
    )
    daemon.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["eventType"] for e in lines] == ["INVOKE", "SHUTDOWN"]
