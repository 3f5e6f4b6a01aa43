"""The benchmark suite runs end to end in quick mode (its figures are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    load_cases = [key for key in report if "C=" in key]
    assert len(load_cases) == 4
    for key in load_cases:
        for kind in ("ours", "floor"):
            assert report[key][kind]["count"]["median"] > 0
            assert report[key][kind]["cpu_us"]["median"] > 0
    assert report["startup"]["ours"]["listen_ms"]["median"] > 0
    assert report["memory"]["ours"]["idle_mb"]["median"] > 0
    assert "| case | daemon CPU" in (tmp_path / "results.md").read_text()
