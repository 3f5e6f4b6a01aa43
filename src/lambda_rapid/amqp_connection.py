"""The broker connection shared by the daemon's consumer and lambda-server's client.

Owns connecting to RabbitMQ on aio-pika as the URI's ``connection_attempts`` and
``retry_delay`` say (``BrokerUnavailable`` once they are exhausted), noticing a connection
that closed, and which exceptions mean "the broker is away" rather than a bug. Importing
it installs the tolerant frame decoding of ``amqp_wire``.

It also owns the delivery tap: a connection's socket protocol that hands the deliveries
of one channel to a callback as soon as their bytes arrive, and passes every other frame
on to aiormq, which runs the connection (handshake, channels, heartbeats, closing). The
tap's owner writes its replies and acks on the same socket.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import Any, cast

import aio_pika
import aiormq
import pamqp.frame
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp import commands as spec
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat
from yarl import URL

from lambda_rapid.amqp_wire import (
    BODY_FRAME,
    FRAME_END,
    FRAME_HEADER,
    METHOD_FRAME,
    install_tolerant_decoding,
)
from lambda_rapid.config import AmqpConfig
from lambda_rapid.errors import BrokerUnavailable

logger = logging.getLogger(__name__)
install_tolerant_decoding()

READY_WAIT = 5.0  # seconds a publish waits for the broker connection before a 503
CLOSE_WAIT = 3.0  # seconds a close waits for the broker's Close-Ok
CONNECTION_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, TimeoutError)
# A channel closed under a publish raises ChannelInvalidStateError, a RuntimeError.
BROKER_ERRORS = (*CONNECTION_ERRORS, aiormq.exceptions.ChannelInvalidStateError)


async def connect(
    amqp: AmqpConfig, tap: DeliveryTap | None = None
) -> aio_pika.abc.AbstractConnection:
    """Connect, retrying as the URI's connection_attempts and retry_delay say.

    With `tap`, the connection's socket is read through it (see ``DeliveryTap``).
    """
    for attempt in range(1, amqp.connection_attempts + 1):
        try:
            connection = await _open(amqp.url, tap)
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


async def _open(url: str, tap: DeliveryTap | None) -> aio_pika.abc.AbstractConnection:
    if tap is None:
        return await aio_pika.connect(url, timeout=10)
    connection = aio_pika.Connection(URL(url))
    # Passed to aiormq's connection as it is (aio_pika.connect would put it in the URL).
    connection.kwargs["transport_factory"] = _TappedTransport(tap)
    await connection.connect(timeout=10)
    return connection


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


DeliveryCallback = Callable[[DeliveredMessage], None]
METHOD_INDEX = struct.Struct(">I")  # class and method of a method frame, as pamqp indexes them
FRAME_OVERHEAD = FRAME_HEADER.size + len(FRAME_END)
# The connection takes a connection with no incoming frame for a while as stuck, and
# frames the tap keeps to itself are not seen there: a heartbeat is passed on instead.
HEARTBEAT = pamqp.frame.marshal(Heartbeat(), 0)
HEARTBEAT_EVERY = 1.0  # seconds


class DeliveryTap:
    """Which channel's deliveries to take out of a connection's stream, and where to."""

    def __init__(self) -> None:
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.number = 0  # the channel's number; 0: none
        self.deliver: DeliveryCallback | None = None
        self.transport: asyncio.Transport | None = None

    def take(self, channel: aiormq.abc.AbstractChannel, deliver: DeliveryCallback) -> None:
        """Hand the deliveries on `channel` to `deliver`, from the socket's read (before
        the channel consumes: nothing of them reaches the channel's own reader)."""
        self.channel = channel
        self.deliver = deliver
        self.number = channel.number

    def write(self, data: bytes) -> bool:
        """Write whole frames on the connection; False once it is closing."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True


def wanted(start: bytearray) -> int:
    """The bytes a frame starting with `start` takes: all of them once its size is known."""
    if len(start) < FRAME_HEADER.size:
        return FRAME_HEADER.size
    size: int = FRAME_HEADER.unpack_from(start)[2]
    return size + FRAME_OVERHEAD


class _Pending:
    """A delivery whose header or body frames are still to come."""

    __slots__ = ("deliver", "header", "body", "size")

    def __init__(self, deliver: spec.Basic.Deliver) -> None:
        self.deliver = deliver
        self.header: ContentHeader | None = None
        self.body: list[bytes] = []
        self.size = 0


class TappedStream(asyncio.StreamReaderProtocol):
    """The socket protocol under aiormq's stream: splits what arrives into frames and keeps
    the tapped channel's deliveries (method, header and body frames) from the stream."""

    def __init__(self, reader: asyncio.StreamReader, tap: DeliveryTap) -> None:
        super().__init__(reader)
        self._stream = reader
        self._tap = tap
        self._partial = bytearray()  # the start of a frame still arriving
        self._wanted = 0  # how many bytes make it whole (or make its size known)
        self._pending: _Pending | None = None
        self._passed_at = time.monotonic()
        self._broken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._tap.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        if self._partial:
            # The rest of a frame: gathered until whole, so each byte is copied once.
            self._partial += data
            if len(self._partial) < self._wanted:
                return
            data = bytes(self._partial)
            self._partial.clear()
        elif data[:4] == b"AMQP":  # the broker refused our protocol version
            self._broken = True
            super().data_received(data)
            return
        try:
            kept, used = self._split(data)
        except (PAMQPException, ValueError, TypeError) as error:
            self._broken = True
            self._stream.set_exception(InvalidFrameError(f"undecodable delivery: {error!r}"))
            return
        if used < len(data):
            self._partial += memoryview(data)[used:]
            self._wanted = wanted(self._partial)
        if kept:
            now = time.monotonic()
            if now - self._passed_at > HEARTBEAT_EVERY:
                self._passed_at = now
                super().data_received(HEARTBEAT)

    def _split(self, data: bytes) -> tuple[bool, int]:
        """Pass on the whole frames of `data` but the tapped ones; (any kept, bytes used)."""
        size, at, passed, kept = len(data), 0, 0, False
        channel = self._tap.number
        while size - at >= FRAME_HEADER.size:
            kind, number, length = FRAME_HEADER.unpack_from(data, at)
            end = at + length + FRAME_OVERHEAD
            if end > size:
                break
            if number == channel and channel and self._is_delivery(data, at, kind):
                if passed < at:
                    self._pass(data[passed:at])
                self._keep(kind, data, at, end)
                passed, kept = end, True
            at = end
        if passed < at:
            self._pass(data if passed == 0 and at == size else data[passed:at])
        return kept, at

    def _is_delivery(self, data: bytes, at: int, kind: int) -> bool:
        if self._pending is not None:
            return True  # its header and body frames follow on this channel
        index = METHOD_INDEX.unpack_from(data, at + FRAME_HEADER.size)[0]
        return kind == METHOD_FRAME and index == spec.Basic.Deliver.index

    def _pass(self, frames: bytes) -> None:
        self._passed_at = time.monotonic()
        super().data_received(frames)

    def _keep(self, kind: int, data: bytes, at: int, end: int) -> None:
        if data[end - 1] != FRAME_END[0]:
            raise ValueError("frame end missing")
        pending = self._pending
        if pending is None:
            _, _, method = pamqp.frame.unmarshal(data[at:end])
            assert isinstance(method, spec.Basic.Deliver)
            self._pending = pending = _Pending(method)
        elif pending.header is None:
            _, _, frame = pamqp.frame.unmarshal(data[at:end])
            if not isinstance(frame, ContentHeader):
                raise ValueError(f"{frame!r} instead of a content header")
            pending.header = frame
        elif kind == BODY_FRAME:
            pending.body.append(data[at + FRAME_HEADER.size : end - 1])
            pending.size += end - at - FRAME_OVERHEAD
        else:
            raise ValueError("a frame other than a body inside a delivery")
        header = pending.header
        if header is not None and pending.size >= header.body_size:
            self._pending = None
            tap = self._tap
            assert tap.deliver is not None and tap.channel is not None
            body = b"".join(pending.body)
            delivered = DeliveredMessage(pending.deliver, header, body, tap.channel)
            try:
                tap.deliver(delivered)
            except Exception:  # noqa: BLE001 - one delivery must not end the connection
                logger.exception("delivery callback failed")


class _TappedTransport(aiormq.TransportFactory):
    """aiormq's TCP or TLS connection, read through a ``TappedStream``."""

    def __init__(self, tap: DeliveryTap) -> None:
        self._tap = tap

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider else None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = TappedStream(reader, self._tap)
        assert url.port is not None  # aiormq puts in the scheme's default
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, url.host or "localhost", url.port, ssl=ssl, **kwargs
            )
        except OSError as error:
            raise AMQPConnectionError(*error.args) from error
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
