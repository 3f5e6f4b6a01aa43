"""The executables' build cache keeps the most recently used source states, so that one
checkout building its own does not delete the build another checkout's tests run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "packaging"))

from cached_build import prune  # noqa: E402


def test_the_most_recently_used_builds_stay(tmp_path: Path) -> None:
    for age, name in enumerate(["newest", "recent", "older", "oldest"]):
        build = tmp_path / name
        (build / "lambda-rapid").mkdir(parents=True)
        (build / "lambda-server").write_bytes(b"x")
        os.utime(build, (1_000_000 - age, 1_000_000 - age))
    prune(tmp_path, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newest", "older", "recent"]
