"""Session set-up shared by every test group.

The single executables (tests/e2e/test_executable*.py) and the Go runtimes take most of a
minute to build on a fresh machine. When the whole suite runs, the builds
(tests/prebuild.py) start in the background as the session starts, and the tests that
need them run last, so they overlap the other tests instead of holding up workers; those
tests wait on the builds' locks and find them done. A session that ends first stops the
builds: nothing outlives pytest.
The longest test (the quick benchmark) runs first, so that no worker ends far behind.

The package is byte-compiled once, before any test starts a daemon: an editable install
is not, and with PYTHONDONTWRITEBYTECODE set every daemon would compile it again (twice
the start-up CPU of a compiled one).
"""

from __future__ import annotations

import compileall
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_prebuild: list[subprocess.Popen[bytes]] = []


def _runs_executable_tests(config: pytest.Config) -> bool:
    if hasattr(config, "workerinput") or config.option.keyword or config.option.markexpr:
        return False  # a worker, or a selection: the tests build on demand if they run
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "chroot", "mknod")):
        return False  # the executable tests are skipped here
    target = REPO / "tests" / "e2e" / "test_executable.py"
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == target or path in target.parents:
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        compileall.compile_dir(REPO / "src" / "lambda_rapid", quiet=1)


def _order(item: pytest.Item) -> int:
    name = item.path.name
    if name == "test_bench.py":
        return 0
    built = name.startswith("test_executable") or "go_echo" in getattr(item, "fixturenames", ())
    return 2 if built else 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_order)  # stable: the same order in every worker


def pytest_sessionstart(session: pytest.Session) -> None:
    if _runs_executable_tests(session.config):
        _prebuild.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "prebuild.py")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    for build in _prebuild:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
        build.wait()
