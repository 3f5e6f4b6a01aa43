"""The daemon: composition root and lifecycle of one function's daemon.

``Daemon.serve()`` wires the parts in dependency order (dispatcher, pool, Runtime API,
Invoke API), waits for SIGTERM/SIGINT and then shuts down: stop accepting, let in-flight
invocations finish within the grace period, stop every runtime process group.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from lambda_rapid.config import DaemonConfig
from lambda_rapid.dispatcher import Dispatcher
from lambda_rapid.invoke_api import InvokeApi, LocalBackend
from lambda_rapid.pool import Pool
from lambda_rapid.reports import Reporter
from lambda_rapid.runtime_api import RuntimeApi

logger = logging.getLogger(__name__)

# How long runtimes get between SIGTERM and SIGKILL at shutdown (Lambda gives 300-2000 ms).
RUNTIME_STOP_GRACE = 2.0


class Daemon:
    """Owns the parts of one function's daemon and their lifecycle."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._stop = asyncio.Event()
        reporter = Reporter(config.print_reports, config.function_version, config.memory_size)
        self.dispatcher = Dispatcher(config, reporter)
        self.runtime_api = RuntimeApi(config, self.dispatcher)
        self.pool = Pool(config, self.runtime_api.addresses, self.dispatcher.on_instance_exit)
        self.backend = LocalBackend(config, self.dispatcher)
        self.invoke_api = InvokeApi(
            config.invoke_api_host, config.port, config.timeout, self.backend
        )

    async def serve(self) -> None:
        await self.startup()
        await self._stop.wait()
        await self.shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        self.dispatcher.attach(self.pool)
        await self.runtime_api.start()
        await self.invoke_api.start()
        logger.info(
            "function %s ready: Invoke API on %s:%d, runtime %s, max concurrency %d",
            self.config.function_name,
            self.config.invoke_api_host,
            self.config.port,
            " ".join(self.config.command),
            self.config.max_concurrency,
        )

    async def shutdown(self) -> None:
        logger.info("stopping: letting in-flight invocations finish")
        self.invoke_api.stop_accepting()
        deadline = time.monotonic() + self.config.shutdown_grace
        await self.backend.close(self.config.shutdown_grace)
        await self.dispatcher.drain(max(0.0, deadline - time.monotonic()))
        await self.dispatcher.close(RUNTIME_STOP_GRACE)
        await self.invoke_api.close()
        await self.runtime_api.close()
        logger.info("stopped")
