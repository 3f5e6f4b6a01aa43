"""A streamed function response on its way from the runtime to whoever reads it.

A runtime that posts its response with ``Lambda-Runtime-Function-Response-Mode:
streaming`` hands the daemon its body chunk by chunk. ``ResponseStream`` carries those
chunks from the runtime's connection (the producer) to one reader: an InvokeWithResponse
Stream caller or a Function URL client. The buffer is bounded: past ``HIGH_WATER`` bytes
the producer is told to stop reading the runtime's socket, and it is resumed when the
reader has taken the buffer below ``LOW_WATER``, so a slow client slows the runtime and
memory stays bounded. A stream nobody reads (an Event, a caller gone) drops its chunks;
a stream for a caller that wants the whole body (the plain Invoke API, AMQP) keeps them.
The stream ends with the invocation's ``InvocationResult`` (error, log tail).
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from lambda_rapid.invocation import InvocationResult

# Lambda's limit on a streamed response; past it the stream ends with an error.
MAX_STREAMED_RESPONSE = 20 * 1024 * 1024
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
STREAMING_MODE_HEADER = "lambda-runtime-function-response-mode"


class Mode(enum.Enum):
    READ = "read"  # one reader takes the chunks as they come
    COLLECT = "collect"  # the caller gets the whole body at the end
    DISCARD = "discard"  # nobody reads it


class ResponseStream:
    """The chunks of one streamed response, and its end."""

    __slots__ = ("content_type", "mode", "result", "_chunks", "_buffered", "_waiter", "_resume")

    def __init__(self, content_type: str, mode: Mode) -> None:
        self.content_type = content_type
        self.mode = mode
        self.result: InvocationResult | None = None  # set when the stream has ended
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._resume: Callable[[], None] | None = None

    @property
    def ended(self) -> bool:
        return self.result is not None

    # -- the producer (the runtime's connection) --------------------------------------

    def push(self, chunk: bytes, resume: Callable[[], None]) -> bool:
        """Add a chunk; False when the producer should pause until `resume` is called."""
        if self.result is not None or self.mode is Mode.DISCARD:
            return True
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wake()
        if self.mode is Mode.READ and self._buffered > HIGH_WATER:
            self._resume = resume
            return False
        return True

    def finish(self, result: InvocationResult) -> None:
        """The stream has ended (normally or not); later chunks are dropped."""
        if self.result is not None:
            return
        self.result = result
        self._wake()
        self._release_producer()

    def collected(self) -> bytes:
        """Everything pushed (COLLECT mode)."""
        return b"".join(self._chunks)

    # -- the reader ---------------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[bytes]:
        """The chunks as they come, until the stream ends; stopping early detaches."""
        try:
            while True:
                if self._chunks:
                    chunk = self._chunks.popleft()
                    self._buffered -= len(chunk)
                    if self._buffered < LOW_WATER:
                        self._release_producer()
                    yield chunk
                elif self.result is not None:
                    return
                else:
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
        finally:
            if self.result is None or self._chunks:
                self.detach()

    def detach(self) -> None:
        """The reader is gone: drop what is buffered and whatever comes."""
        self.mode = Mode.DISCARD
        self._chunks.clear()
        self._buffered = 0
        self._release_producer()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _release_producer(self) -> None:
        resume, self._resume = self._resume, None
        if resume is not None:
            resume()


@dataclass(slots=True)
class StreamedResult(InvocationResult):
    """What a caller that reads streams gets as soon as the runtime starts streaming:
    the chunks come through `stream`, whose `result` is the outcome once it ended."""

    stream: ResponseStream | None = None
