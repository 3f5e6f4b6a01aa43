"""lambda-server's composition root: the Invoke API for many functions, over AMQP.

Each HTTP invocation goes through ``amqp_client.AmqpBackend`` to the queue named after
its FunctionName and is answered with the correlated reply of whichever daemon served
it; Events are published persistent and answered 202 at once. Runs on the shared
``lifecycle`` (SIGTERM/SIGINT → stop; broker given up on → exit 1).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from lambda_rapid.amqp_client import AmqpBackend, RpcClient
from lambda_rapid.config import ServerConfig
from lambda_rapid.invoke_api import InvokeApi
from lambda_rapid.lifecycle import Lifecycle

if TYPE_CHECKING:
    from collections.abc import Callable

    from lambda_rapid.gateway import Gateway
    from lambda_rapid.invoke_api import Backend
    from lambda_rapid.metrics import MetricsEndpoint

logger = logging.getLogger(__name__)


class LambdaServer:
    """Composition root of the Lambda Server."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.client = RpcClient(config.amqp)
        backend = AmqpBackend(config, self.client)
        self.metrics: MetricsEndpoint | None = None
        self._answered: Callable[[str], Callable[[int], None]] | None = None
        front: Backend = backend
        if config.metrics_port is not None:
            front = self._metered(backend, config.metrics_port)
        self.invoke_api = InvokeApi(config.invoke_api_host, config.port, config.timeout, front)
        self.gateway = self._gateway(front)
        self.lifecycle = Lifecycle()
        self._connection: asyncio.Task[None] | None = None

    def _gateway(self, backend: Backend) -> Gateway | None:
        if self.config.gateway is None:
            return None
        # Imported only when the gateway is on, to keep the start-up of the others short.
        from lambda_rapid.gateway import gateway_for

        return gateway_for(self.config, backend, None)

    def _metered(self, backend: Backend, port: int) -> Backend:
        # Imported only with METRICS_PORT set: off, metrics cost nothing.
        from lambda_rapid.metrics import MeteredBackend, MetricsEndpoint, ServerMetrics

        metrics = ServerMetrics(lambda: self.client.connected)
        self._answered = metrics.families.answered
        self.metrics = MetricsEndpoint(metrics.registry, self.config.invoke_api_host, port)
        return MeteredBackend(backend, metrics)

    def request_stop(self) -> None:
        self.lifecycle.request_stop()

    async def serve(self) -> int:
        return await self.lifecycle.run(self.startup, self.shutdown)

    async def startup(self) -> None:
        await self.invoke_api.start()
        if self.metrics is not None and self._answered is not None:
            self.invoke_api.observe_answers(self._answered("invoke"))
            if self.gateway is not None:
                self.gateway.observe_answers(self._answered("gateway"))
            await self.metrics.start()
        if self.gateway is not None:
            await self.gateway.start()
        self._connection = self.lifecycle.keep(self.client.run())
        logger.info(
            "Lambda Server ready: Invoke API on %s:%d, broker %s",
            self.config.invoke_api_host,
            self.config.port,
            self.config.amqp.display,
        )

    async def shutdown(self) -> None:
        self.invoke_api.stop_accepting()
        if self.gateway is not None:
            self.gateway.stop_accepting()
        if self._connection is not None:
            self._connection.cancel()
            await asyncio.gather(self._connection, return_exceptions=True)
        await self.invoke_api.close()
        if self.gateway is not None:
            await self.gateway.close()
        if self.metrics is not None:
            self.metrics.close()
