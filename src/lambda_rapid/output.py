"""Runtime output: whole lines from each instance's stdout/stderr to the daemon's own.

Each pipe keeps its unfinished last line until the newline arrives, so lines from
different instances never interleave mid-line. While an invocation asked for its log
tail (`X-Amz-Log-Type: Tail`), the lines are also appended to that invocation's log.
"""

from __future__ import annotations

import os

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
