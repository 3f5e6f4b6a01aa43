"""Runtime output: whole lines from each instance's stdout/stderr to the daemon's own.

The daemon owns both pipes of every runtime (``OutputPipe``).

Each pipe keeps its unfinished last line until the newline arrives, so lines from
different instances never interleave mid-line; a line longer than 256 KB is cut into
256 KB lines, as Lambda does, so what is kept per pipe is bounded. Each instance's
``LogCapture`` owns both its pipes and the log of its current invocation: while that
invocation asked for its log tail (`X-Amz-Log-Type: Tail`), the lines (and the
platform's START/END/REPORT) are also kept there, of which only the end is kept.

Nothing here blocks the event loop on the daemon's own stdout/stderr: ``WRITER`` writes
small pieces at once when there is room, hands the rest to a thread, and drops (and
counts, in a note on stderr) what a slow reader leaves waiting beyond a bound, instead
of stalling invocations.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import os
import select
import termios
import threading
from collections import deque
from collections.abc import Callable

STDOUT = 1
STDERR = 2
LOG_TAIL_BYTES = 4096
MAX_LINE = 256 * 1024  # Lambda's limit for one log line
LOG_KEPT = 64 * 1024  # an invocation's log is cut back to its tail beyond this
MAX_WAITING = 8 * 1024 * 1024  # output waiting for a slow stdout before some is dropped
READ_SIZE = 65536

Sink = Callable[[int, bytes], None]


def write_fd(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data` to a file descriptor, ignoring a closed reader."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except (BrokenPipeError, BlockingIOError):
        pass


class Writer:
    """Writes to the daemon's own file descriptors from a thread, in order.

    `write` never blocks: beyond `limit` bytes waiting, new output is dropped and
    counted, and once the reader catches up a line on stderr says how much was lost.
    """

    def __init__(self, limit: int = MAX_WAITING) -> None:
        self._limit = limit
        self._queue: deque[tuple[int, bytes]] = deque()
        self._waiting = 0
        self._dropped = 0
        self._busy = False
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._pollers: dict[int, select.poll] = {}

    def write(self, fd: int, data: bytes) -> None:
        with self._ready:
            if not self._queue and not self._busy and self._writes_now(fd, data):
                return
            if self._waiting + len(data) > self._limit:
                self._dropped += len(data)
                return
            self._queue.append((fd, data))
            self._waiting += len(data)
            if self._thread is None:
                self._start()
            self._ready.notify_all()

    def _writes_now(self, fd: int, data: bytes) -> bool:
        """Write at once what cannot block: up to PIPE_BUF bytes into a pipe with room."""
        if len(data) > select.PIPE_BUF:
            return False
        poller = self._pollers.get(fd)
        if poller is None:
            poller = self._pollers[fd] = select.poll()
            poller.register(fd, select.POLLOUT)
        if not poller.poll(0):
            return False
        write_fd(fd, data)
        return True

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="output-writer", daemon=True)
        self._thread.start()
        atexit.register(self.flush, 2.0)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._busy = False
                    self._ready.notify_all()
                    self._ready.wait()
                self._busy = True
                fd, data = self._queue.popleft()
                self._waiting -= len(data)
                dropped, self._dropped = self._dropped, 0
            write_fd(fd, data)
            if dropped:
                note = f"lambda-rapid: {dropped} bytes of output dropped (stdout too slow)\n"
                write_fd(STDERR, note.encode())

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for everything queued to be written."""
        with self._ready:
            return self._ready.wait_for(lambda: not self._queue and not self._busy, timeout)


WRITER = Writer()


class LineBuffer:
    """Splits a pipe's byte stream into whole lines (at most MAX_LINE long) for one fd.

    What it keeps between calls never holds a newline and is at most MAX_LINE long.
    """

    __slots__ = ("fd", "pending", "_sink")

    def __init__(self, fd: int, sink: Sink = write_fd) -> None:
        self.fd = fd
        self.pending = bytearray()
        self._sink = sink

    def feed(self, data: bytes) -> bytes:
        """Take new bytes; write and return the complete lines among them."""
        if not self.pending and len(data) <= MAX_LINE and data.endswith(b"\n"):
            self._sink(self.fd, data)  # the common case: whole lines, nothing kept
            return data
        buffer = self.pending
        scanned = len(buffer)  # the kept part has no newline: search only the new bytes
        buffer += data
        lines = bytearray()
        start, size = 0, len(buffer)
        while start < size:
            end = buffer.find(b"\n", max(start, scanned), start + MAX_LINE + 1)
            if end >= 0:
                lines += buffer[start : end + 1]
                start = end + 1
            elif size - start > MAX_LINE:
                lines += buffer[start : start + MAX_LINE]
                lines += b"\n"
                start += MAX_LINE
            else:
                break
        del buffer[:start]
        if not lines:
            return b""
        out = bytes(lines)
        self._sink(self.fd, out)
        return out

    def flush(self) -> bytes:
        """Write what is left as a final line (the process has closed the pipe)."""
        if not self.pending:
            return b""
        line = bytes(self.pending) + b"\n"
        self.pending.clear()
        self._sink(self.fd, line)
        return line


def log_tail(log: bytearray) -> bytes:
    """The last 4 KB of an invocation's log, as Lambda returns in X-Amz-Log-Result."""
    return bytes(log[-LOG_TAIL_BYTES:])


def append_log(log: bytearray, data: bytes) -> None:
    """Add to an invocation's log, keeping only what its tail can need."""
    log += data
    if len(log) > LOG_KEPT:
        del log[:-LOG_TAIL_BYTES]


class LogCapture:
    """One instance's output: its two pipes, and the log of the invocation it runs.

    Capturing starts when an invocation that wants its log tail is assigned and stops
    when it ends; in between, whatever the runtime prints (and the platform lines) is
    kept, bounded.
    """

    __slots__ = ("_log", "_pipes", "tap")

    def __init__(self) -> None:
        self._log: bytearray | None = None
        self._pipes: tuple[OutputPipe, ...] = ()
        # Also given the runtime's whole lines (not the platform's), when an extension
        # subscribed to them (telemetry); None otherwise.
        self.tap: Callable[[bytes], None] | None = None

    @property
    def active(self) -> bool:
        return self._log is not None

    def attach(self, *pipes: OutputPipe) -> None:
        """The pipes the runtime writes to (set once its process is being started)."""
        self._pipes = pipes

    def start(self) -> None:
        self._log = bytearray()

    def add(self, data: bytes) -> None:
        if self._log is not None and data:
            append_log(self._log, data)

    def printed(self, data: bytes) -> None:
        """Whole lines the runtime printed."""
        if self._log is not None and data:
            append_log(self._log, data)
        if self.tap is not None and data:
            self.tap(data)

    def drain(self) -> None:
        """Take in what the runtime has written so far: it belongs before END."""
        for pipe in self._pipes:
            pipe.drain()

    def stop(self) -> bytes | None:
        """Stop capturing; the tail of what was captured (None if nothing was)."""
        log, self._log = self._log, None
        return None if log is None else log_tail(log)


def pipe_bytes(fd: int) -> int:
    """Bytes waiting in a pipe."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")
    except OSError:
        return 0


class OutputPipe(asyncio.Protocol):
    """The read end of one runtime's stdout or stderr pipe, owned by the daemon.

    The daemon creates the pipe itself (rather than letting the event loop do it) so it
    can `drain()` it on demand: when a runtime answers, what it printed just before is
    already in the pipe, and reports and log tails must include it.
    """

    def __init__(self, fd: int, destination: int, capture: LogCapture) -> None:
        self.fd = fd
        self._lines = LineBuffer(destination, WRITER.write)
        self._capture = capture
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._capture.printed(self._lines.feed(data))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._capture.printed(self._lines.flush())
        if not self.closed.done():
            self.closed.set_result(None)

    def drain(self) -> None:
        """Take in what the runtime has written so far (no more: it may still be writing)."""
        if self.closed.done():
            return
        left = pipe_bytes(self.fd)
        try:
            while left > 0 and (data := os.read(self.fd, min(left, READ_SIZE))):
                left -= len(data)
                self.data_received(data)
        except OSError:
            pass


async def open_output_pipe(destination: int, capture: LogCapture) -> tuple[OutputPipe, int]:
    """A pipe whose read end feeds `destination` and `capture`; it and the write end's fd."""
    read_fd, write_fd = os.pipe()
    return await connect_output_pipe(read_fd, destination, capture), write_fd


async def connect_output_pipe(read_fd: int, destination: int, capture: LogCapture) -> OutputPipe:
    """Feed `destination` and `capture` from the pipe whose read end is `read_fd`."""
    pipe = OutputPipe(read_fd, destination, capture)
    await asyncio.get_running_loop().connect_read_pipe(lambda: pipe, os.fdopen(read_fd, "rb", 0))
    return pipe
