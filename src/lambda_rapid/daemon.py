"""The daemon: composition root and lifecycle of one function's daemon.

``Daemon.serve()`` wires the parts in dependency order (dispatcher, pool, Runtime API,
Invoke API, and the AMQP consumer when AMQP_URI is set), waits for SIGTERM/SIGINT (or
the broker being given up on) and then shuts down: stop accepting, let in-flight
invocations finish within the grace period, stop every runtime process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lambda_rapid.config import DaemonConfig
from lambda_rapid.dispatcher import Dispatcher
from lambda_rapid.extensions import enable_telemetry
from lambda_rapid.extensions_api import ExtensionsApi
from lambda_rapid.invoke_api import InvokeApi, LocalBackend, Watchdog
from lambda_rapid.lifecycle import Lifecycle
from lambda_rapid.pool import Pool
from lambda_rapid.reports import Reporter
from lambda_rapid.runtime_api import RuntimeApi
from lambda_rapid.sockets import bind_slots, slot_addresses
from lambda_rapid.spawning import Prelaunched

if TYPE_CHECKING:
    from lambda_rapid.amqp_consumer import RpcConsumer
    from lambda_rapid.gateway import Gateway
    from lambda_rapid.metrics import MetricsEndpoint
    from lambda_rapid.watch import CodeWatcher

logger = logging.getLogger(__name__)

# How long runtimes get between SIGTERM and SIGKILL at shutdown (Lambda gives 300-2000 ms).
RUNTIME_STOP_GRACE = 2.0
# Seconds the last AMQP messages get, once their invocations ended, to be published and
# acknowledged before the broker connection closes.
SETTLE_WAIT = 5.0


class Daemon:
    """Owns the parts of one function's daemon and their lifecycle."""

    def __init__(
        self,
        config: DaemonConfig,
        invoke_socket: socket.socket | None = None,
        slots: list[socket.socket] | None = None,
        prelaunched: Prelaunched | None = None,
    ) -> None:
        """`invoke_socket`, `slots` (the Runtime API's sockets) and `prelaunched` (the first
        runtime) come from the CLI when it opened or started them ahead of the daemon."""
        self.config = config
        self.lifecycle = Lifecycle()
        reporter = Reporter(config.print_reports, config.function_version, config.memory_size)
        slots = slots or bind_slots(config)
        # The dispatcher builds the pool, which reports exits to it: the one owner of the
        # instance lifecycle. The Runtime API sees only what an instance may ask of it.
        self.dispatcher = Dispatcher(
            config,
            reporter,
            slot_addresses(slots),
            functools.partial(Pool, config, prelaunched=prelaunched),
        )
        # Extensions: their registry, lifecycle observer and Telemetry/Logs hooks.
        self.extensions = self.dispatcher.hub
        enable_telemetry(
            self.extensions, config.function_version, config.memory_size, config.extensions_dir
        )
        extensions_api = ExtensionsApi(self.extensions, self.dispatcher)
        self.runtime_api = RuntimeApi(config, slots, self.dispatcher, extensions_api)
        self.consumer = self._amqp_consumer()
        self.backend = LocalBackend(
            config, self.dispatcher, self.consumer.publish_event if self.consumer else None
        )
        watchdog = (
            Watchdog(config.function_name, self.dispatcher.ready)
            if config.enable_openfaas
            else None
        )
        self.invoke_api = InvokeApi(
            config.invoke_api_host,
            config.port,
            config.timeout,
            self.backend,
            watchdog,
            invoke_socket,
        )
        self.gateway = self._gateway()
        self.metrics = self._metrics()
        self.watcher = self._watcher()
        self._consuming: asyncio.Task[None] | None = None
        self._announcing: asyncio.Task[None] | None = None

    def _amqp_consumer(self) -> RpcConsumer | None:
        if self.config.amqp is None:
            return None
        # Imported only with a broker configured: it is most of the start-up time.
        from lambda_rapid.amqp_consumer import RpcConsumer

        return RpcConsumer(self.config, self.dispatcher.submit)

    def _gateway(self) -> Gateway | None:
        if self.config.gateway is None:
            return None
        # Imported only when the gateway is on, to keep the start-up of the others short.
        from lambda_rapid.gateway import gateway_for

        return gateway_for(self.config, self.backend, self.config.function_name)

    def _metrics(self) -> MetricsEndpoint | None:
        config = self.config
        if config.metrics_port is None:
            return None
        # Imported only with METRICS_PORT set: off, metrics cost nothing.
        from lambda_rapid.metrics import DaemonMetrics, MetricsEndpoint

        consumer = self.consumer
        metrics = DaemonMetrics(
            config.function_name,
            config.max_concurrency,
            self.dispatcher,
            consumer.consuming.is_set if consumer is not None else None,
        )
        self.dispatcher.metrics = metrics
        if consumer is not None:
            consumer.metrics = metrics
        self.invoke_api.observe_answers(metrics.families.answered("invoke"))
        if self.gateway is not None:
            self.gateway.observe_answers(metrics.families.answered("gateway"))
        return MetricsEndpoint(metrics.registry, config.invoke_api_host, config.metrics_port)

    def _watcher(self) -> CodeWatcher | None:
        if not self.config.watch:
            return None
        from lambda_rapid.watch import CodeWatcher, code_directory

        task_root = self.config.runtime_environ.get("LAMBDA_TASK_ROOT")
        return CodeWatcher(task_root or code_directory(), self.dispatcher.recycle)

    async def serve(self, early_signals: Sequence[int] = ()) -> int:
        """Run until told to stop; the exit status (1 when the broker was given up on).

        `early_signals` lists SIGTERM/SIGINT received before the handlers were installed.
        """
        return await self.lifecycle.run(self.startup, self.shutdown, early_signals)

    def request_stop(self) -> None:
        self.lifecycle.request_stop()

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self.dispatcher.start()
        await self.runtime_api.start()
        await self.invoke_api.start()
        if self.gateway is not None:
            await self.gateway.start()
        if self.metrics is not None:
            await self.metrics.start()
        if self.watcher is not None:
            self.watcher.start()
        if self.consumer is not None:
            self._consuming = self.lifecycle.keep(self.consumer.run())
        # "ready" waits for the provisioned instances' init and, with a broker, for the
        # queue to be consumed: the readiness signal.
        self._announcing = loop.create_task(self._ready_when_set_up(self.consumer))

    async def _ready_when_set_up(self, consumer: RpcConsumer | None) -> None:
        await self.dispatcher.provisioned()
        if consumer is not None:
            await consumer.consuming.wait()
        self._log_ready()

    def _log_ready(self) -> None:
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
        if self.watcher is not None:
            await self.watcher.stop()
        self.invoke_api.stop_accepting()
        if self.gateway is not None:
            self.gateway.stop_accepting()
        if self.consumer is not None:
            await self.consumer.stop_consuming()
        deadline = time.monotonic() + self.config.shutdown_grace
        await self.backend.close(self.config.shutdown_grace)
        await self.dispatcher.drain(max(0.0, deadline - time.monotonic()))
        if self._consuming is not None:
            assert self.consumer is not None
            await self.consumer.settle(SETTLE_WAIT)
            self._consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consuming
        await self.dispatcher.close(RUNTIME_STOP_GRACE)
        if self._announcing is not None:
            self._announcing.cancel()
        await self.invoke_api.close()
        if self.gateway is not None:
            await self.gateway.close()
        await self.runtime_api.close()
        if self.metrics is not None:
            self.metrics.close()
        logger.info("stopped")
