"""The run/stop lifecycle shared by the daemon and lambda-server.

``Lifecycle.run(startup, shutdown)`` installs the SIGTERM/SIGINT handlers (they only
record the request), starts the service, waits until a stop is requested or a task the
service cannot live without (its broker connection) ends, then shuts the service down
and returns the exit status: 0 when asked to stop, 1 when the broker was given up on,
2 for any other end of such a task. A stop signal during the shutdown changes nothing;
after it, it is ignored up to the process's exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from lambda_rapid.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Once stopped, a stop signal changes nothing, up to the process's very end.

    Closing the loop restores the default action, and so does the interpreter's exit for
    Python handlers: a second SIGTERM from a supervisor, or Ctrl-C pressed twice, would end
    the process by that signal instead of with its exit status. Called only once the
    runtimes are stopped: an ignored signal stays ignored in the processes started after.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class Lifecycle:
    """Start, wait for a stop request or a vital task's end, stop."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._vital: list[asyncio.Task[None]] = []

    def request_stop(self) -> None:
        self._stop.set()

    def keep(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` as a task whose end (it only ends by failing) stops the service."""
        task = asyncio.get_running_loop().create_task(work)
        self._vital.append(task)
        return task

    async def run(
        self,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
        early_signals: Sequence[int] = (),
    ) -> int:
        """Serve until told to stop; the exit status.

        `early_signals` lists SIGTERM/SIGINT received before the handlers were installed.
        """
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.request_stop)
        await startup()
        if early_signals:
            self.request_stop()
        stop = loop.create_task(self._stop.wait())
        await asyncio.wait([stop, *self._vital], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        status = self._status()
        await shutdown()
        ignore_stop_signals(loop)
        return status

    def _status(self) -> int:
        ended = next((task for task in self._vital if task.done()), None)
        if ended is None:
            return 0
        error = None if ended.cancelled() else ended.exception()
        logger.error("giving up: %s", error)
        return 1 if isinstance(error, BrokerUnavailable) else 2
