"""One runtime instance: its lifecycle state machine and the invocation it holds.

Every transition is a method that raises ``InvalidStateTransition`` (or
``InvalidRequestId``) when the current state does not allow it; the Runtime API turns
those into Lambda's error answers. The instance owns its current invocation and the
future of its pending ``/next`` long-poll; the dispatcher drives the transitions.
"""

from __future__ import annotations

import asyncio
import enum
import time

from lambda_rapid.errors import InvalidRequestId, InvalidStateTransition
from lambda_rapid.invocation import Invocation


class State(enum.Enum):
    STARTING = "Starting"  # spawned, has not asked for work yet (init phase)
    IDLE = "Ready"  # waiting in /next
    BUSY = "Invoking"  # holds an invocation
    ANSWERED = "Answered"  # posted its answer, not yet back in /next
    STOPPING = "Stopping"  # failed init or timed out; its process is being stopped
    DEAD = "Dead"


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
        "log",
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
        self.idle_since = self.spawned_at
        self.served = 0
        # Where the runtime's output is copied while an invocation wants its log tail.
        self.log: bytearray | None = None

    def __repr__(self) -> str:
        return f"<Instance slot={self.slot} pid={self.pid} {self.state.value}>"

    def _refuse(self, transition: str) -> InvalidStateTransition:
        return InvalidStateTransition(
            f"State transition from {self.state.value} to {transition} failed for runtime. "
            "Error: State transition is not allowed"
        )

    def ready(self) -> None:
        """The runtime called /next."""
        if self.state is State.STARTING:
            self.init_duration_ms = (time.monotonic() - self.spawned_at) * 1000
        elif self.state not in (State.ANSWERED, State.IDLE):
            raise self._refuse("Ready")
        self.state = State.IDLE
        self.idle_since = time.monotonic()

    def assign(self, invocation: Invocation) -> None:
        """Hand an invocation to this (idle) instance."""
        if self.state is not State.IDLE:
            raise self._refuse("Invoking")
        self.state = State.BUSY
        self.current = invocation
        self.log = invocation.log
        invocation.invoked_at = time.monotonic()
        invocation.pid = self.pid
        if self.cold:
            invocation.init_duration_ms = self.init_duration_ms
            self.cold = False

    def answer(self, request_id: str) -> Invocation:
        """The runtime posted a response or error for `request_id`."""
        current = self.current
        if self.state is State.BUSY and current is not None and current.request_id == request_id:
            self.state = State.ANSWERED
            self.current = None
            self.served += 1
            return current
        if self.served == 0 and self.state is not State.BUSY:
            raise self._refuse("InvocationResponse")
        raise InvalidRequestId("Invalid request ID")

    def init_failed(self) -> None:
        """The runtime posted init/error."""
        if self.state is not State.STARTING:
            raise self._refuse("InitError")
        self.state = State.STOPPING

    def stopping(self) -> None:
        """The daemon is stopping this instance; it takes no more work."""
        if self.state is not State.DEAD:
            self.state = State.STOPPING

    def release_waiter(self) -> asyncio.Future[Invocation] | None:
        waiter, self.waiter = self.waiter, None
        return waiter

    def died(self) -> Invocation | None:
        """The process exited; returns the invocation it was holding, if any."""
        held = self.current if self.state is State.BUSY else None
        self.state = State.DEAD
        self.current = None
        return held
