"""The broker connection shared by the daemon's consumer and lambda-server's client.

Owns connecting to RabbitMQ on aio-pika as the URI's ``connection_attempts`` and
``retry_delay`` say (``BrokerUnavailable`` once they are exhausted), noticing a connection
that closed, and which exceptions mean "the broker is away" rather than a bug. Importing
it installs the tolerant frame decoding of ``amqp_wire``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
import aiormq

from lambda_rapid.amqp_wire import install_tolerant_decoding
from lambda_rapid.config import AmqpConfig
from lambda_rapid.errors import BrokerUnavailable

logger = logging.getLogger(__name__)
install_tolerant_decoding()

READY_WAIT = 5.0  # seconds a publish waits for the broker connection before a 503
CONNECTION_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, TimeoutError)
# A channel closed under a publish raises ChannelInvalidStateError, a RuntimeError.
BROKER_ERRORS = (*CONNECTION_ERRORS, aiormq.exceptions.ChannelInvalidStateError)


async def connect(amqp: AmqpConfig) -> aio_pika.abc.AbstractConnection:
    """Connect, retrying as the URI's connection_attempts and retry_delay say."""
    for attempt in range(1, amqp.connection_attempts + 1):
        try:
            return await aio_pika.connect(amqp.url, timeout=10)
        except CONNECTION_ERRORS as error:
            if attempt == amqp.connection_attempts:
                raise BrokerUnavailable(
                    f"cannot reach the broker at {amqp.display} after {attempt} attempt(s): "
                    f"{error or type(error).__name__}"
                ) from None
            logger.warning(
                "cannot reach the broker at %s (attempt %d of %d): %s; retrying in %g s",
                amqp.display,
                attempt,
                amqp.connection_attempts,
                error or type(error).__name__,
                amqp.retry_delay,
            )
            await asyncio.sleep(amqp.retry_delay)
    raise AssertionError("unreachable")


def closed_future(connection: aio_pika.abc.AbstractConnection) -> asyncio.Future[None]:
    """A future resolved when the connection closes, for whatever reason."""
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_close(*_: Any) -> None:
        if not closed.done():
            closed.set_result(None)

    connection.close_callbacks.add(on_close)
    return closed
