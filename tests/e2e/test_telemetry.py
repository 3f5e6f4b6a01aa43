"""Telemetry API and Logs API with real processes: an external extension that subscribes
and writes every batch the daemon POSTs to it (functions/telemetry_subscriber.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.e2e.conftest import FUNCTIONS, ok, poll

SUBSCRIBER = FUNCTIONS / "telemetry_subscriber.py"


def subscription(types: list[str], schema: str = "2022-12-13", **buffering: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemaVersion": schema,
        "types": types,
        "buffering": {"timeoutMs": 25, **buffering},
        "destination": {"protocol": "HTTP", "URI": "http://sandbox.localdomain:{port}/telemetry"},
    }
    return body


def setup(tmp_path: Path, body: dict[str, Any], **env: str) -> dict[str, str]:
    """Install the subscriber extension; the daemon's environment for it."""
    directory = tmp_path / "opt" / "extensions"
    directory.mkdir(parents=True)
    path = directory / "subscriber"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} {SUBSCRIBER} "$0"\n')
    path.chmod(0o755)
    return {
        "LAMBDA_EXTENSIONS_DIR": str(directory),
        "TEL_OUT": str(tmp_path / "tel"),
        "TEL_BODY": json.dumps(body),
        **env,
    }


def received(tmp_path: Path, slot: int = 0) -> list[dict[str, Any]]:
    path = tmp_path / f"tel.{slot}"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [record for line in lines if line.strip() for record in json.loads(line)]


def of_request(records: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if isinstance(r["record"], dict) and r["record"].get("requestId") == request_id
    ]


def answer(tmp_path: Path, suffix: str = "subscribed") -> Any:
    path = tmp_path / f"tel.0.{suffix}"
    poll(path.exists)
    return json.loads(path.read_text())


def test_batches_for_success_failure_and_timeout(start_daemon: Any, tmp_path: Path) -> None:
    body = subscription(["platform", "function", "extension"])
    env = setup(
        tmp_path, body, AWS_LAMBDA_FUNCTION_TIMEOUT="1", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256"
    )
    daemon = start_daemon(env=env)
    good = daemon.invoke({"print": "hello from the function"})
    assert ok(good) == {"print": "hello from the function"}
    bad = daemon.invoke({"raise": "boom"})
    assert bad.header("X-Amz-Function-Error") == "Unhandled"
    late = daemon.invoke({"sleep": 5})
    assert late.json()["errorType"] == "Sandbox.Timedout"
    ids = [r.header("x-amzn-RequestId") for r in (good, bad, late)]
    assert answer(tmp_path) == [200, '"OK"']

    def reported() -> bool:
        kinds = [
            (r["type"], r["record"].get("requestId"))
            for r in received(tmp_path)
            if isinstance(r["record"], dict)
        ]
        return all(("platform.report", i) in kinds for i in ids)

    assert poll(reported), received(tmp_path)
    records = received(tmp_path)
    kinds = [r["type"] for r in records]
    # The init, from its start (delivered once the extension subscribed).
    init = [k for k in kinds if k.startswith("platform.init")]
    assert init[:3] == ["platform.initStart", "platform.initRuntimeDone", "platform.initReport"]
    assert kinds.index("platform.initStart") < kinds.index("platform.telemetrySubscription")
    subscribed = next(r for r in records if r["type"] == "platform.telemetrySubscription")
    assert subscribed["record"] == {
        "name": "subscriber",
        "state": "Subscribed",
        "types": ["extension", "function", "platform"],
    }
    extension = next(r for r in records if r["type"] == "platform.extension")
    assert extension["record"] == {
        "name": "subscriber",
        "state": "Ready",
        "events": ["INVOKE", "SHUTDOWN"],
    }
    assert {"type": "extension", "record": "subscriber subscribed"}.items() <= next(
        r for r in records if r["type"] == "extension"
    ).items()

    # A successful invocation: start, the function's line, runtimeDone, report, in order.
    start = kinds.index("platform.start")
    line = next(i for i, r in enumerate(records) if r["record"] == "hello from the function")
    assert records[line]["type"] == "function"
    assert records[line]["time"].endswith("Z")
    flow = [r["type"] for r in of_request(records, ids[0])]
    assert flow == ["platform.start", "platform.runtimeDone", "platform.report"]
    assert start < line < kinds.index("platform.runtimeDone")
    done = of_request(records, ids[0])[1]["record"]
    assert done["status"] == "success" and done["metrics"]["durationMs"] >= 0
    report = of_request(records, ids[0])[2]["record"]
    assert report["status"] == "success"
    metrics = report["metrics"]
    assert metrics["memorySizeMB"] == 256 and metrics["maxMemoryUsedMB"] > 0
    assert metrics["billedDurationMs"] >= metrics["durationMs"]
    assert "initDurationMs" in metrics  # the instance's first invocation

    # A function error and a timeout show in runtimeDone and report with Lambda's words.
    failed = {r["type"]: r["record"] for r in of_request(records, ids[1])}
    assert failed["platform.runtimeDone"]["status"] == "error"
    assert failed["platform.runtimeDone"]["errorType"]
    assert failed["platform.report"]["status"] == "error"
    timed_out = {r["type"]: r["record"] for r in of_request(records, ids[2])}
    assert timed_out["platform.runtimeDone"]["status"] == "timeout"
    assert timed_out["platform.runtimeDone"]["errorType"] == "Sandbox.Timedout"
    assert timed_out["platform.report"]["status"] == "timeout"
    # The deadline counts from the invocation's arrival, the duration from the moment an
    # instance took it: the handover between the two (well under 100 ms) is not in it.
    assert timed_out["platform.report"]["metrics"]["durationMs"] > 900
    # The function's own output still goes to the daemon's stdout.
    assert "hello from the function" in daemon.stdout()


def test_function_lines_come_between_start_and_runtime_done(
    start_daemon: Any, tmp_path: Path
) -> None:
    """What the function printed before answering is delivered before its runtimeDone,
    however late the daemon's loop gets to the runtime's stdout."""
    env = setup(tmp_path, subscription(["platform", "function"]))
    daemon = start_daemon(env=env)
    ids = []
    for n in range(20):
        response = daemon.invoke({"print": f"line {n}"})
        assert ok(response)["print"] == f"line {n}"
        ids.append(response.header("x-amzn-RequestId"))

    def reported() -> bool:  # one buffer delivered in order: the last report comes last
        return "platform.report" in [r["type"] for r in of_request(received(tmp_path), ids[-1])]

    assert poll(reported), received(tmp_path)
    records = received(tmp_path)
    for n, request_id in enumerate(ids):
        start = records.index(of_request(records, request_id)[0])
        done = records.index(of_request(records, request_id)[1])
        line = next(i for i, r in enumerate(records) if r["record"] == f"line {n}")
        assert records[start]["type"] == "platform.start"
        assert records[done]["type"] == "platform.runtimeDone"
        assert start < line < done, (n, records[start : done + 2])


def test_logs_api_delivers_its_own_format(start_daemon: Any, tmp_path: Path) -> None:
    body = subscription(["platform", "function"], schema="2021-03-18")
    env = setup(tmp_path, body, TEL_API="logs", TEL_SECOND="1")
    daemon = start_daemon(env=env)
    good = daemon.invoke({"print": "logged line"})
    ok(good)
    request_id = good.header("x-amzn-RequestId")
    assert answer(tmp_path) == [200, '"OK"']
    # The other API is refused once one is used.
    status, refusal = answer(tmp_path, "second")
    assert status == 400 and json.loads(refusal)["errorType"] == "ValidationError"
    assert poll(lambda: any(r["type"] == "platform.report" for r in received(tmp_path)))
    records = received(tmp_path)
    flow = [r["type"] for r in of_request(records, request_id)]
    assert flow == ["platform.start", "platform.runtimeDone", "platform.end", "platform.report"]
    start, done, _, report = (r["record"] for r in of_request(records, request_id))
    assert start == {"requestId": request_id, "version": "$LATEST"}
    assert done == {"requestId": request_id, "status": "success"}
    assert set(report) == {"requestId", "metrics"}
    kinds = {r["type"] for r in records}
    assert "platform.logsSubscription" in kinds
    assert not any(k.startswith("platform.init") for k in kinds)
    assert {"type": "function", "record": "logged line"}.items() <= next(
        r for r in records if r["type"] == "function"
    ).items()


def test_bad_subscription_gets_lambdas_error(start_daemon: Any, tmp_path: Path) -> None:
    body = subscription(["platform"], maxItems=5)
    daemon = start_daemon(env=setup(tmp_path, body))
    ok(daemon.invoke({"n": 1}))
    status, refusal = answer(tmp_path)
    assert status == 400
    assert json.loads(refusal)["errorType"] == "ValidationError"
    assert "maxItems" in json.loads(refusal)["errorMessage"]


def test_stalled_subscriber_delays_nothing_and_drops_what_does_not_fit(
    start_daemon: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    body = subscription(["platform", "function"], maxItems=1000)
    daemon = start_daemon(env=setup(tmp_path, body, TEL_GATE=str(gate)))
    lines = "\n".join(f"line {n}" for n in range(3000))
    # The subscriber answers nothing until the gate opens: invocations still complete.
    for n in range(3):
        assert ok(daemon.invoke({"print": lines, "n": n}))["n"] == n
    assert received(tmp_path) == []
    gate.touch()

    def dropped() -> list[dict[str, Any]]:
        return [r for r in received(tmp_path) if r["type"] == "platform.logsDropped"]

    assert poll(dropped), received(tmp_path)
    loss = dropped()[0]["record"]
    assert loss["droppedRecords"] > 0 and loss["droppedBytes"] > 0
    assert loss["reason"]
    functions = [r for r in received(tmp_path) if r["type"] == "function"]
    # At most one batch in flight plus one full buffer were kept.
    assert 0 < len(functions) <= 2 * 1000
    # Every line still reached the daemon's own stdout.
    out = daemon.stdout()
    assert out.count("line 2999") == 3
