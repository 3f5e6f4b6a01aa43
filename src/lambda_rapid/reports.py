"""Platform log lines: START, END and REPORT for each invocation.

They are printed on stdout when PRINT_REPORTS is on and added to the instance's
``LogCapture`` when the caller asked for its log tail. Max Memory Used is the real peak resident set
(VmHWM) of the runtime process and the processes it started, not a constant.
"""

from __future__ import annotations

import math
import time

from lambda_rapid.invocation import Invocation
from lambda_rapid.output import STDOUT, WRITER, LogCapture

MAX_PROCESSES = 64  # enough for any runtime's own tree; bounds the cost of a report


def peak_kb(pid: int) -> int:
    """Peak resident memory of one process in KB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def peak_memory_mb(pid: int | None) -> int:
    """Peak resident memory of a runtime and its live descendants, in MB (0 when unknown).

    A bash runtime's work happens in its children (curl, the handler), so they count too;
    the instance is the whole tree, as a Lambda sandbox is.
    """
    if pid is None:
        return 0
    total, pending, seen = 0, [pid], 0
    while pending and seen < MAX_PROCESSES:
        current = pending.pop()
        seen += 1
        total += peak_kb(current)
        pending.extend(children_of(current))
    return math.ceil(total / 1024)


class Reporter:
    """Writes the platform lines for invocations that need them."""

    __slots__ = ("enabled", "version", "memory_size")

    def __init__(self, enabled: bool, version: str, memory_size: int) -> None:
        self.enabled = enabled
        self.version = version
        self.memory_size = memory_size

    def wanted(self, invocation: Invocation) -> bool:
        return self.enabled or invocation.want_log_tail

    def start(self, invocation: Invocation, capture: LogCapture) -> None:
        if self.wanted(invocation):
            # Read now too: a process that crashes can no longer be measured at the end.
            invocation.peak_memory_mb = peak_memory_mb(invocation.pid)
            line = f"START RequestId: {invocation.request_id} Version: {self.version}\n"
            self._emit(capture, line.encode())

    def end(self, invocation: Invocation, capture: LogCapture, status: str | None = None) -> None:
        """END and REPORT; `status` is e.g. "timeout" or "error" for failed invocations."""
        if not self.wanted(invocation):
            return
        duration = (time.monotonic() - invocation.invoked_at) * 1000
        billed = duration
        peak = peak_memory_mb(invocation.pid)
        fields = [
            f"REPORT RequestId: {invocation.request_id}",
            f"Duration: {duration:.2f} ms",
            "",
            f"Memory Size: {self.memory_size} MB",
            f"Max Memory Used: {max(peak, invocation.peak_memory_mb)} MB",
        ]
        if invocation.init_duration_ms is not None:
            fields.append(f"Init Duration: {invocation.init_duration_ms:.2f} ms")
            billed += invocation.init_duration_ms
        fields[2] = f"Billed Duration: {max(1, math.ceil(billed))} ms"
        if status is not None:
            fields.append(f"Status: {status}")
        text = f"END RequestId: {invocation.request_id}\n" + "\t".join(fields) + "\t\n"
        self._emit(capture, text.encode())

    def _emit(self, capture: LogCapture, line: bytes) -> None:
        if self.enabled:
            WRITER.write(STDOUT, line)
        capture.add(line)
