"""Whole-line forwarding of runtime output, and the 4 KB log tail."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import pytest

from lambda_rapid.output import (
    LOG_KEPT,
    LOG_TAIL_BYTES,
    MAX_LINE,
    LineBuffer,
    Writer,
    append_log,
    log_tail,
    write_fd,
)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_end = os.pipe()
    os.set_blocking(read_fd, False)
    yield read_fd, write_end
    for fd in (read_fd, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


def drain(fd: int) -> bytes:
    """Everything written to the pipe so far (the read end is non-blocking)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_partial_line_is_kept_until_its_newline(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    buffer = LineBuffer(write_end)
    assert buffer.feed(b"hel") == b""
    assert buffer.feed(b"lo") == b""
    assert drain(read_fd) == b""
    assert buffer.feed(b" world\nnext") == b"hello world\n"
    assert drain(read_fd) == b"hello world\n"
    assert buffer.feed(b" line\n") == b"next line\n"
    assert drain(read_fd) == b"next line\n"
    assert buffer.pending == b""


def test_several_lines_in_one_chunk(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    buffer = LineBuffer(write_end)
    assert buffer.feed(b"a\nb\nc") == b"a\nb\n"
    assert drain(read_fd) == b"a\nb\n"
    assert buffer.feed(b"\n") == b"c\n"
    assert drain(read_fd) == b"c\n"


def test_whole_lines_pass_straight_through(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    buffer = LineBuffer(write_end)
    assert buffer.feed(b"one\ntwo\n") == b"one\ntwo\n"
    assert drain(read_fd) == b"one\ntwo\n"
    assert buffer.feed(b"\n") == b"\n"
    assert drain(read_fd) == b"\n"


def test_flush_adds_the_missing_newline(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    buffer = LineBuffer(write_end)
    buffer.feed(b"done\nunterminated")
    drain(read_fd)
    assert buffer.flush() == b"unterminated\n"
    assert drain(read_fd) == b"unterminated\n"
    assert buffer.flush() == b""
    assert drain(read_fd) == b""


def test_flush_with_nothing_pending_writes_nothing(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    buffer = LineBuffer(write_end)
    assert buffer.flush() == b""
    assert drain(read_fd) == b""


def test_lines_from_two_buffers_never_interleave(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    first, second = LineBuffer(write_end), LineBuffer(write_end)
    first.feed(b"first-")
    second.feed(b"second-")
    first.feed(b"a\n")
    second.feed(b"b\n")
    first.feed(b"tail")
    second.flush()
    first.flush()
    assert drain(read_fd) == b"first-a\nsecond-b\ntail\n"


def test_binary_data_is_passed_unchanged(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    buffer = LineBuffer(write_end)
    data = bytes(range(256)).replace(b"\n", b"") + b"\n"
    assert buffer.feed(data) == data
    assert drain(read_fd) == data


def test_write_fd_writes_everything(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    data = b"x" * 50_000  # less than a pipe's buffer, more than one small write
    write_fd(write_end, data)
    assert drain(read_fd) == data
    write_fd(write_end, bytearray(b"ba"))
    write_fd(write_end, memoryview(b"mv"))
    assert drain(read_fd) == b"bamv"


def test_write_fd_ignores_a_closed_reader(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    os.close(read_fd)
    write_fd(write_end, b"nobody listens\n")  # no BrokenPipeError
    LineBuffer(write_end).feed(b"still fine\n")


def test_log_tail_keeps_the_last_4096_bytes() -> None:
    assert LOG_TAIL_BYTES == 4096
    log = bytearray(b"a" * 1000 + b"b" * 4096)
    tail = log_tail(log)
    assert isinstance(tail, bytes)
    assert tail == b"b" * 4096
    log = bytearray(bytes(i % 251 for i in range(10_000)))
    assert log_tail(log) == bytes(log[-4096:])


def test_log_tail_of_a_short_log_is_all_of_it() -> None:
    assert log_tail(bytearray(b"short\n")) == b"short\n"
    assert log_tail(bytearray()) == b""
    exact = bytearray(b"z" * 4096)
    assert log_tail(exact) == bytes(exact)


def test_log_tail_is_a_copy() -> None:
    log = bytearray(b"abc")
    tail = log_tail(log)
    log += b"def"
    assert tail == b"abc"


def test_a_long_line_is_cut_into_256_kb_lines(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    written: list[bytes] = []
    buffer = LineBuffer(write_end, lambda fd, data: written.append(data))
    line = b"y" * (MAX_LINE * 2 + 10) + b"\n"
    for start in range(0, len(line), 1000):
        buffer.feed(line[start : start + 1000])
    assert b"".join(written).split(b"\n") == [b"y" * MAX_LINE, b"y" * MAX_LINE, b"y" * 10, b""]


def test_a_line_of_exactly_256_kb_stays_whole() -> None:
    written: list[bytes] = []
    buffer = LineBuffer(1, lambda fd, data: written.append(data))
    buffer.feed(b"z" * (MAX_LINE - 1))
    buffer.feed(b"z\n")
    assert written == [b"z" * MAX_LINE + b"\n"]


def test_output_without_newlines_keeps_a_bounded_buffer() -> None:
    written: list[bytes] = []
    buffer = LineBuffer(1, lambda fd, data: written.append(data))
    chunk = b"x" * 65536
    for _ in range(320):  # 20 MB without a newline
        buffer.feed(chunk)
        assert len(buffer.pending) <= MAX_LINE
    lines = b"".join(written).split(b"\n")[:-1]
    assert {len(line) for line in lines} == {MAX_LINE}
    assert len(lines) * MAX_LINE + len(buffer.pending) == 320 * len(chunk)


def test_an_invocation_log_keeps_only_its_end() -> None:
    log = bytearray()
    for n in range(10000):
        append_log(log, f"line {n}\n".encode())
        assert len(log) <= LOG_KEPT
    assert log_tail(log).endswith(b"line 9999\n")
    assert len(log_tail(log)) == LOG_TAIL_BYTES


def test_writer_never_blocks_on_a_reader_that_does_not_read(pipe: tuple[int, int]) -> None:
    read_fd, write_end = pipe
    writer = Writer(limit=256 * 1024)
    piece = b"w" * 10000 + b"\n"
    # 2 MB into a 64 KB pipe that nobody reads yet: every write returns all the same.
    writing = threading.Thread(target=lambda: [writer.write(write_end, piece) for _ in range(200)])
    writing.start()
    writing.join(30)
    assert not writing.is_alive(), "a write blocked"
    received = bytearray()
    while True:
        done = writer.flush(0.01)
        data = drain(read_fd)
        received += data
        if done and not data:
            break
    assert 0 < len(received) < 200 * len(piece), "nothing was dropped"
    assert received == piece * (len(received) // len(piece)), "a line was cut or reordered"
