"""START, END and REPORT lines and the peak-memory reading behind them."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time

import pytest

from lambda_rapid.invocation import Invocation
from lambda_rapid.output import LogCapture
from lambda_rapid.reports import Reporter, peak_memory_mb

REPORT = re.compile(
    r"REPORT RequestId: (?P<id>\S+)\t"
    r"Duration: (?P<duration>\d+\.\d\d) ms\t"
    r"Billed Duration: (?P<billed>\d+) ms\t"
    r"Memory Size: (?P<size>\d+) MB\t"
    r"Max Memory Used: (?P<used>\d+) MB\t"
    r"(?:Init Duration: (?P<init>\d+\.\d\d) ms\t)?"
    r"(?:Status: (?P<status>\w+)\t)?\n"
)


def make_invocation(request_id: str = "req-1", *, tail: bool = True) -> Invocation:
    return Invocation(
        request_id=request_id,
        payload=b"{}",
        timeout=3.0,
        invoked_arn="arn:aws:lambda:us-east-1:123456789012:function:fn",
        want_log_tail=tail,
    )


def capture_for(invocation: Invocation) -> LogCapture:
    """The instance's capture, started as the dispatcher starts it for this invocation."""
    capture = LogCapture()
    if invocation.want_log_tail:
        capture.start()
    return capture


def report_lines(log: bytes | bytearray) -> tuple[str, str, re.Match[str]]:
    text = log.decode()
    start, end, report = text.splitlines(keepends=True)
    match = REPORT.fullmatch(report)
    assert match is not None, repr(report)
    return start, end, match


def test_peak_memory_of_this_process() -> None:
    assert peak_memory_mb(os.getpid()) > 0


def test_peak_memory_unknown() -> None:
    assert peak_memory_mb(None) == 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert peak_memory_mb(child.pid) == 0  # reaped: no /proc entry any more


def test_start_end_report_in_the_invocation_log() -> None:
    invocation = make_invocation("abc-123")
    invocation_capture = capture_for(invocation)
    invocation.pid = os.getpid()
    invocation.invoked_at = time.monotonic()
    reporter = Reporter(enabled=False, version="$LATEST", memory_size=256)
    reporter.start(invocation, invocation_capture)
    assert invocation.peak_memory_mb > 0
    reporter.end(invocation, invocation_capture)
    log = invocation_capture.stop()
    assert log is not None
    start, end, match = report_lines(log)
    assert start == "START RequestId: abc-123 Version: $LATEST\n"
    assert end == "END RequestId: abc-123\n"
    assert match["id"] == "abc-123"
    assert match["size"] == "256"
    assert int(match["used"]) >= invocation.peak_memory_mb > 0
    assert match["init"] is None
    assert match["status"] is None
    assert log.endswith(b"\t\n")


def test_report_fields_are_tab_separated() -> None:
    invocation = make_invocation()
    invocation_capture = capture_for(invocation)
    invocation.invoked_at = time.monotonic()
    Reporter(False, "7", 128).end(invocation, invocation_capture)
    log = invocation_capture.stop()
    assert log is not None
    report = log.decode().splitlines()[1]
    fields = report.split("\t")
    assert fields[0] == "REPORT RequestId: req-1"
    assert fields[1].startswith("Duration: ")
    assert fields[2].startswith("Billed Duration: ")
    assert fields[3] == "Memory Size: 128 MB"
    assert fields[4].startswith("Max Memory Used: ")
    assert fields[-1] == ""


def test_init_duration_only_when_set() -> None:
    cold = make_invocation("cold")
    cold_capture = capture_for(cold)
    cold.invoked_at = time.monotonic()
    cold.init_duration_ms = 123.456
    warm = make_invocation("warm")
    warm_capture = capture_for(warm)
    warm.invoked_at = time.monotonic()
    reporter = Reporter(False, "$LATEST", 128)
    reporter.end(cold, cold_capture)
    reporter.end(warm, warm_capture)
    cold_log, warm_log = cold_capture.stop(), warm_capture.stop()
    assert cold_log is not None and warm_log is not None
    assert report_lines(b"START\n" + cold_log)[2]["init"] == "123.46"
    assert b"Init Duration" not in warm_log
    assert report_lines(b"START\n" + warm_log)[2]["init"] is None


def test_status_is_appended() -> None:
    invocation = make_invocation()
    invocation_capture = capture_for(invocation)
    invocation.invoked_at = time.monotonic()
    invocation.init_duration_ms = 5.0
    Reporter(False, "$LATEST", 128).end(invocation, invocation_capture, "timeout")
    log = invocation_capture.stop()
    assert log is not None
    match = report_lines(b"START\n" + log)[2]
    assert match["status"] == "timeout"
    assert match["init"] == "5.00"


@pytest.mark.parametrize("elapsed_ms", [0.0, 10.1, 250.7])
def test_billed_duration_rounds_up(elapsed_ms: float) -> None:
    invocation = make_invocation()
    invocation_capture = capture_for(invocation)
    invocation.invoked_at = time.monotonic() - elapsed_ms / 1000
    Reporter(False, "$LATEST", 128).end(invocation, invocation_capture)
    log = invocation_capture.stop()
    assert log is not None
    match = report_lines(b"START\n" + log)[2]
    duration, billed = float(match["duration"]), int(match["billed"])
    assert duration >= elapsed_ms
    assert billed >= 1
    assert billed >= duration
    assert billed <= max(1, math.ceil(duration + 0.01))


def test_billed_duration_includes_init_and_rounds_up() -> None:
    invocation = make_invocation()
    invocation_capture = capture_for(invocation)
    invocation.invoked_at = time.monotonic()
    invocation.init_duration_ms = 100.2
    Reporter(False, "$LATEST", 128).end(invocation, invocation_capture)
    log = invocation_capture.stop()
    assert log is not None
    match = report_lines(b"START\n" + log)[2]
    duration, init, billed = float(match["duration"]), float(match["init"]), int(match["billed"])
    assert billed >= duration + init
    assert billed <= math.ceil(duration + init + 0.01)
    assert billed >= 101


def test_enabled_reporter_prints_on_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    invocation = make_invocation("printed", tail=False)
    invocation_capture = capture_for(invocation)
    invocation.invoked_at = time.monotonic()
    reporter = Reporter(enabled=True, version="3", memory_size=512)
    assert reporter.wanted(invocation)
    reporter.start(invocation, invocation_capture)
    reporter.end(invocation, invocation_capture)
    out = capfd.readouterr().out
    start, end, match = report_lines(out.encode())
    assert start == "START RequestId: printed Version: 3\n"
    assert end == "END RequestId: printed\n"
    assert match["size"] == "512"
    assert invocation_capture.stop() is None


def test_disabled_reporter_without_tail_does_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    invocation = make_invocation(tail=False)
    invocation_capture = capture_for(invocation)
    invocation.invoked_at = time.monotonic()
    reporter = Reporter(enabled=False, version="$LATEST", memory_size=128)
    assert not reporter.wanted(invocation)
    reporter.start(invocation, invocation_capture)
    reporter.end(invocation, invocation_capture)
    assert capfd.readouterr().out == ""
    assert invocation_capture.stop() is None


def test_tail_is_written_even_when_reports_are_off(capfd: pytest.CaptureFixture[str]) -> None:
    invocation = make_invocation(tail=True)
    invocation_capture = capture_for(invocation)
    invocation.invoked_at = time.monotonic()
    reporter = Reporter(enabled=False, version="$LATEST", memory_size=128)
    assert reporter.wanted(invocation)
    reporter.start(invocation, invocation_capture)
    assert capfd.readouterr().out == ""
    log = invocation_capture.stop()
    assert log is not None and log.startswith(b"START RequestId: req-1")


def test_peak_memory_counts_the_processes_a_runtime_started() -> None:
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; x = bytearray(64 * 2**20); sys.stdout.write('ok\\n'); "
            "sys.stdout.flush(); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ok\n"
        alone = peak_memory_mb(holder.pid)
        assert alone >= 64
        # This test process is the holder's parent: its tree includes the holder's 64 MB.
        assert peak_memory_mb(os.getpid()) >= alone + 1
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
