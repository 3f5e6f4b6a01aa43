"""Hot reload (WATCH=TRUE): restart the instances when the function's code changes.

``CodeWatcher`` watches the code directory (LAMBDA_TASK_ROOT, else the daemon's working
directory) with ``watchfiles`` and, after a short quiet period, asks the dispatcher to
recycle its instances: idle ones are replaced at once, busy ones after their current
invocation, so the next invocation runs the new code. Compiled files, version-control
directories and editors' temporary files are ignored. Imported only when WATCH is on:
nothing of it is on the invocation path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import watchfiles

logger = logging.getLogger(__name__)

# Changes closer together than this are one change (an editor's save is often several
# writes and a rename); short, since the whole reload should take well under 300 ms.
DEBOUNCE_MS = 30
IGNORED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache"})
# Editors' swap, backup and temporary files.
IGNORED_SUFFIXES = (".swp", ".swo", ".swx", ".tmp", "~", ".pyc", ".pyo", ".bak")
IGNORED_PREFIXES = (".#", "#")
MAX_NAMES_LOGGED = 5


def code_directory(environ: dict[str, str] | None = None) -> str:
    """Where the function's code is: LAMBDA_TASK_ROOT, else the working directory."""
    env = os.environ if environ is None else environ
    return env.get("LAMBDA_TASK_ROOT") or os.getcwd()


def ignored(path: str) -> bool:
    """Whether a changed path is not the function's code."""
    parts = Path(path).parts
    if any(part in IGNORED_DIRS for part in parts[:-1]):
        return True
    name = parts[-1] if parts else ""
    return (
        name in IGNORED_DIRS
        or name.endswith(IGNORED_SUFFIXES)
        or name.startswith(IGNORED_PREFIXES)
        or (name.startswith(".") and name.endswith(".tmp"))
        or name == "4913"  # vim's probe file when it checks it may write a directory
    )


def _accept(change: watchfiles.Change, path: str) -> bool:
    return not ignored(path)


class CodeWatcher:
    """Watches one directory and calls `recycle` after each burst of changes."""

    def __init__(self, directory: str, recycle: Callable[[], Sequence[object]]) -> None:
        self._directory = directory
        self._recycle = recycle
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        logger.info("watching %s: instances restart when it changes", self._directory)

    async def stop(self) -> None:
        self._stop.set()
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        try:
            async for changes in watchfiles.awatch(
                self._directory,
                watch_filter=_accept,
                debounce=DEBOUNCE_MS,
                step=10,
                stop_event=self._stop,
                recursive=True,
            ):
                self.changed(sorted({path for _, path in changes}))
        except (OSError, RuntimeError) as error:  # the directory vanished, inotify limits...
            logger.error("stopped watching %s: %s", self._directory, error)

    def changed(self, paths: Sequence[str]) -> None:
        """Recycle the instances and say what changed and which restart."""
        restarting = self._recycle()
        names = [os.path.relpath(p, self._directory) for p in paths[:MAX_NAMES_LOGGED]]
        more = len(paths) - len(names)
        what = ", ".join(names) + (f" and {more} more" if more > 0 else "")
        which = ", ".join(str(i) for i in restarting) or "none running"
        logger.info("code changed (%s): restarting instances: %s", what, which)
