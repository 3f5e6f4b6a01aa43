"""Whole-line forwarding of runtime output, and the 4 KB log tail."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from lambda_rapid.output import LOG_TAIL_BYTES, LineBuffer, log_tail, write_fd


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
