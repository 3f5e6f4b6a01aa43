"""Runtime output: whole lines from each instance's stdout/stderr to the daemon's own.

The daemon owns both pipes of every runtime (``OutputPipe``).

Each pipe keeps its unfinished last line until the newline arrives, so lines from
different instances never interleave mid-line. While an invocation asked for its log
tail (`X-Amz-Log-Type: Tail`), the lines are also appended to that invocation's log.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

STDOUT = 1
STDERR = 2
LOG_TAIL_BYTES = 4096


def write_fd(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data` to a file descriptor, ignoring a closed reader."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except (BrokenPipeError, BlockingIOError):
        pass


class LineBuffer:
    """Splits a pipe's byte stream into whole lines for one destination fd."""

    __slots__ = ("fd", "pending")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = b""

    def feed(self, data: bytes) -> bytes:
        """Take new bytes; write and return the complete lines among them."""
        end = data.rfind(b"\n")
        if end < 0:
            self.pending += data
            return b""
        if self.pending:
            lines = self.pending + data[: end + 1]
        else:
            lines = data[: end + 1] if end + 1 < len(data) else data
        self.pending = data[end + 1 :]
        write_fd(self.fd, lines)
        return lines

    def flush(self) -> bytes:
        """Write what is left as a final line (the process has closed the pipe)."""
        if not self.pending:
            return b""
        line, self.pending = self.pending + b"\n", b""
        write_fd(self.fd, line)
        return line


def log_tail(log: bytearray) -> bytes:
    """The last 4 KB of an invocation's log, as Lambda returns in X-Amz-Log-Result."""
    return bytes(log[-LOG_TAIL_BYTES:])


class OutputPipe(asyncio.Protocol):
    """The read end of one runtime's stdout or stderr pipe, owned by the daemon.

    The daemon creates the pipe itself (rather than letting the event loop do it) so it
    can `drain()` it on demand: when a runtime answers, what it printed just before is
    already in the pipe, and reports and log tails must include it.
    """

    def __init__(self, fd: int, destination: int, log_of: Callable[[], bytearray | None]) -> None:
        self.fd = fd
        self._lines = LineBuffer(destination)
        self._log_of = log_of
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._capture(self._lines.feed(data))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._capture(self._lines.flush())
        if not self.closed.done():
            self.closed.set_result(None)

    def drain(self) -> None:
        """Take in whatever the runtime has written so far."""
        if self.closed.done():
            return
        try:
            while data := os.read(self.fd, 65536):
                self.data_received(data)
        except (BlockingIOError, OSError):
            pass

    def _capture(self, lines: bytes) -> None:
        log = self._log_of()
        if lines and log is not None:
            log += lines


async def open_output_pipe(
    destination: int, log_of: Callable[[], bytearray | None]
) -> tuple[OutputPipe, int]:
    """A pipe whose read end feeds `destination`; returns it and the write end's fd."""
    read_fd, write_fd = os.pipe()
    pipe = OutputPipe(read_fd, destination, log_of)
    await asyncio.get_running_loop().connect_read_pipe(lambda: pipe, os.fdopen(read_fd, "rb", 0))
    return pipe, write_fd
