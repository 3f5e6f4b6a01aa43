"""One runtime instance: its lifecycle state machine, its invocation and its output.

The states and the transitions between them are one table (``TRANSITIONS``): a
transition the table does not allow raises ``InvalidStateTransition`` (or
``InvalidRequestId``), which the Runtime API turns into Lambda's error answers. The
instance owns its current invocation, the future of its pending ``/next`` long-poll and
its output (``LogCapture``); the dispatcher is the only one that drives the transitions.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lambda_rapid.errors import InvalidRequestId, InvalidStateTransition
from lambda_rapid.invocation import Invocation
from lambda_rapid.output import LogCapture

if TYPE_CHECKING:
    from lambda_rapid.extensions import ExtensionSet


class State(enum.Enum):
    # Members are singletons: hashing by identity is right, and C-fast (Enum's own hash is
    # a Python call, made several times per invocation by the transition checks).
    __hash__ = object.__hash__

    STARTING = "Starting"  # spawned, has not asked for work yet (init phase)
    IDLE = "Ready"  # waiting in /next
    BUSY = "Invoking"  # holds an invocation
    STREAMING = "Streaming"  # streaming its answer: not free until the stream ended
    ANSWERED = "Answered"  # posted its answer, not yet back in /next
    STOPPING = "Stopping"  # failed init, timed out or reclaimed; its process is being stopped
    DEAD = "Dead"


S = State
# Each transition, by the name Lambda's errors give it: the states it may start from and
# the state it leads to. New phases (extensions' init, SHUTDOWN) are new rows and states.
TRANSITIONS: dict[str, tuple[frozenset[State], State]] = {
    "Ready": (frozenset({S.STARTING, S.IDLE, S.ANSWERED}), S.IDLE),
    "Invoking": (frozenset({S.IDLE}), S.BUSY),
    "Streaming": (frozenset({S.BUSY}), S.STREAMING),
    "InvocationResponse": (frozenset({S.BUSY, S.STREAMING}), S.ANSWERED),
    "InitError": (frozenset({S.STARTING}), S.STOPPING),
    "Stopping": (
        frozenset({S.STARTING, S.IDLE, S.BUSY, S.STREAMING, S.ANSWERED, S.STOPPING}),
        S.STOPPING,
    ),
    "Dead": (frozenset(State), S.DEAD),
}
# The states in which an instance holds an invocation.
HOLDING = frozenset({S.BUSY, S.STREAMING})
# An instance that is not in one of these states is on its way to a new invocation.
COMING = frozenset({S.STARTING, S.ANSWERED})
# How the process pool reports an instance's exit: the exit in words, None for status 0.
ExitCallback = Callable[["Instance", str | None], None]


class Instance:
    """A runtime process slot as the dispatcher and Runtime API see it."""

    __slots__ = (
        "slot",
        "runtime_api",
        "log_stream",
        "pid",
        "state",
        "current",
        "waiter",
        "spawned_at",
        "init_duration_ms",
        "cold",
        "idle_since",
        "served",
        "output",
        "extensions",
        "provisioned",
    )

    def __init__(self, slot: int, runtime_api: str, log_stream: str) -> None:
        self.slot = slot
        self.runtime_api = runtime_api
        self.log_stream = log_stream
        self.pid: int | None = None
        self.state = State.STARTING
        self.current: Invocation | None = None
        self.waiter: asyncio.Future[Invocation] | None = None
        self.spawned_at = time.monotonic()
        self.init_duration_ms: float | None = None
        self.cold = True  # the next invocation is this instance's first
        # Initialised ahead of demand (PROVISIONED_CONCURRENCY): kept while idle, replaced
        # when it dies, no Init Duration in its REPORT.
        self.provisioned = False
        self.idle_since = self.spawned_at
        self.served = 0
        self.output = LogCapture()
        self.extensions: ExtensionSet | None = None  # None: no extension, nothing to wait for

    def __repr__(self) -> str:
        return f"<Instance slot={self.slot} pid={self.pid} {self.state.value}>"

    def _move(self, transition: str) -> None:
        allowed, target = TRANSITIONS[transition]
        if self.state not in allowed:
            raise InvalidStateTransition(
                f"State transition from {self.state.value} to {transition} failed for "
                "runtime. Error: State transition is not allowed"
            )
        self.state = target

    @property
    def free(self) -> bool:
        """Whether the instance may take an invocation now.

        Its runtime waits in /next (which a streaming runtime cannot reach before its
        stream ended: /next is refused in STREAMING), and each of its extensions waits in
        event/next.
        """
        return self.state is State.IDLE and (self.extensions is None or self.extensions.idle)

    def roots(self) -> list[int]:
        """Its runtime and external extension processes (each leads its own session)."""
        found = [] if self.pid is None else [self.pid]
        if self.extensions is not None:
            found.extend(self.extensions.pids())
        return found

    def settle_init(self) -> float | None:
        """Init ends when the runtime and every extension wait for work (Lambda's Init);
        its duration once it has."""
        if self.init_duration_ms is None and self.free:
            self.init_duration_ms = (time.monotonic() - self.spawned_at) * 1000
        return self.init_duration_ms

    def ready(self) -> None:
        """The runtime called /next."""
        was = self.state
        self._move("Ready")
        self.idle_since = time.monotonic()
        if was is State.STARTING:
            self.settle_init()

    def assign(self, invocation: Invocation) -> None:
        """Hand an invocation to this (idle) instance."""
        self._move("Invoking")
        self.current = invocation
        invocation.invoked_at = time.monotonic()
        invocation.pid = self.pid
        if self.cold:
            invocation.init_duration_ms = self.init_duration_ms
            self.cold = False
        if invocation.want_log_tail:
            self.output.start()

    def stream(self, request_id: str) -> Invocation:
        """The runtime began streaming its response for `request_id`."""
        current = self.current
        if self.state in HOLDING and current is not None and current.request_id == request_id:
            self._move("Streaming")  # refused when it streams already
            return current
        return self.answer(request_id)  # raises: the same refusals as a plain answer

    def answer(self, request_id: str) -> Invocation:
        """The runtime posted a response or error for `request_id` (or its stream ended)."""
        current = self.current
        if self.state in HOLDING and current is not None and current.request_id == request_id:
            self._move("InvocationResponse")
            self.current = None
            self.served += 1
            return current
        if self.served == 0 and self.state not in HOLDING:
            self._move("InvocationResponse")  # raises: nothing was ever handed out
        raise InvalidRequestId("Invalid request ID")

    def init_failed(self) -> None:
        """The runtime posted init/error."""
        self._move("InitError")

    def stopping(self) -> Invocation | None:
        """The daemon is stopping this instance; it takes no more work.

        Returns the invocation it was holding, which is now the caller's to end.
        """
        if self.state is State.DEAD:
            return None
        held = self.current if self.state in HOLDING else None
        self._move("Stopping")
        if held is not None:
            self.current = None
            self.served += 1
        return held

    def release_waiter(self) -> asyncio.Future[Invocation] | None:
        waiter, self.waiter = self.waiter, None
        return waiter

    def died(self) -> Invocation | None:
        """The process exited; returns the invocation it was holding, if any."""
        held = self.current if self.state in HOLDING else None
        self._move("Dead")
        self.current = None
        return held
