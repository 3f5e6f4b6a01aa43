"""The benchmark suite runs end to end in quick mode and reports coherent figures.

Figures depend on the machine, so none is compared with a target; but every case must
have run (invocations counted, CPU measured), the statistics must be consistent, and the
AMQP cases must have completed invocations whenever the broker is there.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOAD_CASES = [
    "raw C=1 MAX_CONCURRENCY=1",
    "raw C=8 MAX_CONCURRENCY=4",
    "awslambdaric C=1 MAX_CONCURRENCY=1",
    "awslambdaric C=8 MAX_CONCURRENCY=4",
]


def broker_expected() -> bool:
    if os.environ.get("REQUIRE_BROKER", "") not in ("", "0"):
        return True
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", 5672)) == 0


def assert_summary(stat: dict[str, float], where: str) -> None:
    assert stat["min"] <= stat["median"] <= stat["max"], (where, stat)


def assert_load_case(result: dict[str, Any], where: str) -> None:
    for metric, stat in result.items():
        assert_summary(stat, f"{where} {metric}")
    assert result["count"]["median"] >= 10, (where, "hardly any invocation completed")
    assert result["errors"]["max"] == 0, (where, "invocations failed")
    assert result["rate"]["median"] > 0, where
    assert 0 < result["p50_ms"]["median"] <= result["p99_ms"]["median"], where
    assert result["cpu_us"]["median"] > 0, (where, "no daemon CPU was measured")
    assert result["rss_mb"]["median"] > 5, (where, "implausible resident memory")


def test_quick_benchmark_produces_results(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["quick"] is True and report["rounds"] == 1
    assert [key for key in report if "C=" in key] == LOAD_CASES
    for key in LOAD_CASES:
        assert set(report[key]) == {"ours", "floor"}
        for kind in ("ours", "floor"):
            assert_load_case(report[key][kind], f"{key} {kind}")
    for kind in ("ours", "floor"):
        memory = {k: v["median"] for k, v in report["memory"][kind].items()}
        assert memory["invocations"] >= 500, memory
        assert memory["idle_mb"] > 5 and memory["loaded_mb"] > 5, memory
    assert set(report["startup"]) == {"ours", "on demand", "floor"}
    for kind in report["startup"]:
        startup = {k: v["median"] for k, v in report["startup"][kind].items()}
        assert 0 < startup["listen_ms"] < startup["first_ms"], startup
        # The runtime's start is measured alone, in a run of its own: on a busy machine
        # that one sample may take longer than the daemon's whole first answer.
        assert startup["runtime_ms"] > 0, startup
        share = startup["first_ms"] - startup["runtime_ms"]
        assert abs(startup["share_ms"] - share) < 1e-6, startup
    assert list(report["floors"]) == LOAD_CASES[:1]  # quick mode: one case
    for key, floors in report["floors"].items():
        assert set(floors) == {"floor", "floor on asyncio", "old floor"}, key
        for kind, result in floors.items():
            assert_load_case(result, f"{key} {kind}")
    table = (tmp_path / "results.md").read_text()
    assert "| case | daemon CPU" in table
    assert "| raw runtime, PROACTIVE_INIT=FALSE | " in table
    for key in LOAD_CASES:
        assert f"| {key} | " in table
    if broker_expected():
        assert set(report.get("amqp", {})) == {"C=1", "C=8"}, "the AMQP cases did not run"
        for case, figures in report["amqp"].items():
            for path in ("rpc", "server"):
                assert figures[f"{path}_count"] >= 10, (case, path, figures)
                assert figures.get(f"{path}_errors", 0) == 0, (case, path, figures)
                assert 0 < figures[f"{path}_p50_ms"] <= figures[f"{path}_p99_ms"], (case, figures)
        assert "| AMQP | RPC inv/s" in table
