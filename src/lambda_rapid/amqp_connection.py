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
CLOSE_WAIT = 3.0  # seconds a close waits for the broker's Close-Ok
CONNECTION_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, TimeoutError)
# A channel closed under a publish raises ChannelInvalidStateError, a RuntimeError.
BROKER_ERRORS = (*CONNECTION_ERRORS, aiormq.exceptions.ChannelInvalidStateError)


async def connect(amqp: AmqpConfig) -> aio_pika.abc.AbstractConnection:
    """Connect, retrying as the URI's connection_attempts and retry_delay say."""
    for attempt in range(1, amqp.connection_attempts + 1):
        try:
            connection = await aio_pika.connect(amqp.url, timeout=10)
        except CONNECTION_ERRORS as error:
            raise_if_cancelled()
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
        else:
            if cancelling():
                await close(connection)
                raise asyncio.CancelledError
            return connection
    raise AssertionError("unreachable")


def cancelling() -> bool:
    """Whether the current task was asked to stop, whatever it is seeing instead.

    On Python 3.11, ``asyncio.wait_for`` (aio-pika and aiormq use it while connecting)
    drops a cancellation that arrives just as the attempt fails or succeeds: the task is
    still marked as cancelling, but gets the attempt's outcome instead of CancelledError.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancelled() -> None:
    """Turn a broker error that hides a cancellation back into CancelledError."""
    if cancelling():
        raise asyncio.CancelledError


async def close(connection: aio_pika.abc.AbstractConnection) -> None:
    """Close without waiting on a broker that no longer answers (a half-open socket)."""
    if connection.is_closed:
        return
    try:
        await asyncio.wait_for(connection.close(), CLOSE_WAIT)
    except Exception:  # noqa: BLE001 - the connection is dropped either way
        logger.debug("broker connection closed uncleanly", exc_info=True)


def closed_future(connection: aio_pika.abc.AbstractConnection) -> asyncio.Future[None]:
    """A future resolved when the connection closes, for whatever reason."""
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_close(*_: Any) -> None:
        if not closed.done():
            closed.set_result(None)

    connection.close_callbacks.add(on_close)
    return closed
