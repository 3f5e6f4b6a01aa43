"""The dispatcher: the one place that pairs invocations with runtime instances.

It owns the FIFO of waiting invocations, the list of idle instances, the deadline timer
of every invocation and the map of running ones. It decides when the pool spawns an
instance (an invocation waits and no instance will soon be free), fails invocations whose
deadline passes or whose instance dies, and reclaims instances idle for too long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from lambda_rapid.config import DaemonConfig
from lambda_rapid.errors import exit_error, function_error_body, timeout_error
from lambda_rapid.instance import Instance, State
from lambda_rapid.invocation import Invocation, InvocationResult
from lambda_rapid.output import log_tail
from lambda_rapid.pool import Pool
from lambda_rapid.reports import Reporter

logger = logging.getLogger(__name__)


def shutdown_result() -> InvocationResult:
    body = function_error_body("Runtime.ExitError", "The daemon is shutting down")
    return InvocationResult(body, "Runtime.ExitError")


class InstanceStopped(Exception):
    """Raised in a pending /next when its instance is being stopped."""


class Dispatcher:
    """Schedules invocations onto instances, first in first out."""

    def __init__(self, config: DaemonConfig, reporter: Reporter) -> None:
        self._config = config
        self._reporter = reporter
        self._queue: deque[Invocation] = deque()
        self._idle: list[Instance] = []  # most recently idle last
        self._running: dict[str, Instance] = {}
        self._timers: dict[Invocation, asyncio.TimerHandle] = {}
        self._pool: Pool | None = None
        self._reclaimer: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    def attach(self, pool: Pool) -> None:
        self._pool = pool
        self._reclaimer = asyncio.get_running_loop().create_task(self._reclaim_idle())

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "dispatcher used before attach()"
        return self._pool

    def ready(self) -> bool:
        """Whether one more invocation could start now (OpenFaaS readiness)."""
        return len(self._running) + len(self._queue) < self._config.max_concurrency

    @property
    def in_flight(self) -> int:
        return len(self._queue) + len(self._running)

    # -- the caller's side ------------------------------------------------------------

    def submit(self, invocation: Invocation) -> asyncio.Future[InvocationResult]:
        """Run an invocation; its future gets the result (never an exception)."""
        if self._closed:
            invocation.finish(shutdown_result())
            return invocation.future
        loop = asyncio.get_running_loop()
        delay = invocation.deadline_epoch - time.time()
        self._timers[invocation] = loop.call_later(max(delay, 0), self._on_deadline, invocation)
        if self._idle:
            self._start(self._idle.pop(), invocation)
        else:
            self._queue.append(invocation)
            self._spawn_if_needed()
        return invocation.future

    def _spawn_if_needed(self) -> None:
        pool = self.pool
        if pool.size >= self._config.max_concurrency:
            return
        coming = sum(1 for i in pool.instances if i.state in (State.STARTING, State.ANSWERED))
        while len(self._queue) > coming and pool.size < self._config.max_concurrency:
            pool.spawn()
            coming += 1

    def _start(self, instance: Instance, invocation: Invocation) -> None:
        instance.assign(invocation)
        self._running[invocation.request_id] = instance
        self._reporter.start(invocation)
        waiter = instance.release_waiter()
        if waiter is not None and not waiter.done():
            waiter.set_result(invocation)

    # -- the runtime's side -------------------------------------------------------------

    def next_invocation(self, instance: Instance) -> Invocation | asyncio.Future[Invocation]:
        """The runtime's /next: the head of the queue, or a future for the next arrival."""
        if instance.state is State.IDLE:
            # A second /next (the runtime gave up on the first): it supersedes the first.
            self._idle.remove(instance)
            self._release(instance)
        instance.ready()
        while self._queue:
            invocation = self._queue.popleft()
            if not invocation.done:
                self._start(instance, invocation)
                return invocation
        waiter: asyncio.Future[Invocation] = asyncio.get_running_loop().create_future()
        instance.waiter = waiter
        self._idle.append(instance)
        return waiter

    def complete(
        self,
        instance: Instance,
        request_id: str,
        result: InvocationResult,
        status: str | None = None,
    ) -> None:
        """The runtime answered (response or error) for `request_id`."""
        invocation = instance.answer(request_id)
        if self._reporter.wanted(invocation):
            # What the runtime printed just before answering belongs before END.
            self.pool.drain_output(instance)
        self._finish(instance, invocation, result, status)

    def _finish(
        self,
        instance: Instance,
        invocation: Invocation,
        result: InvocationResult,
        status: str | None,
    ) -> None:
        self._running.pop(invocation.request_id, None)
        timer = self._timers.pop(invocation, None)
        if timer is not None:
            timer.cancel()
        self._reporter.end(invocation, status)
        if instance.log is invocation.log:
            instance.log = None
        if invocation.log is not None:
            result.log_tail = log_tail(invocation.log)
        result.executed_version = self._config.function_version
        invocation.finish(result)

    def init_failed(self, instance: Instance, error_type: str, body: bytes) -> None:
        """The runtime posted init/error: the oldest waiting invocation gets that error."""
        instance.init_failed()
        self._fail_waiting(InvocationResult(body, error_type))
        self._stop_in_background(instance, grace=1.0)

    def _fail_waiting(self, result: InvocationResult) -> None:
        while self._queue:
            invocation = self._queue.popleft()
            if not invocation.done:
                timer = self._timers.pop(invocation, None)
                if timer is not None:
                    timer.cancel()
                invocation.finish(result)
                return

    # -- failures -----------------------------------------------------------------------

    def _on_deadline(self, invocation: Invocation) -> None:
        self._timers.pop(invocation, None)
        result = InvocationResult(
            timeout_error(invocation.request_id, invocation.timeout), "Sandbox.Timedout"
        )
        instance = self._running.get(invocation.request_id)
        if instance is None:  # still waiting for an instance
            self._queue.remove(invocation)
            invocation.finish(result)
            return
        logger.info("invocation %s timed out; stopping its instance", invocation.request_id)
        instance.answer(invocation.request_id)
        instance.stopping()
        if self._reporter.wanted(invocation):
            self.pool.drain_output(instance)
        self._finish(instance, invocation, result, "timeout")
        self.pool.kill(instance)

    def on_instance_exit(self, instance: Instance, description: str | None) -> None:
        """Called by the pool when a runtime process has exited."""
        was = instance.state
        held = instance.died()
        self._release(instance)
        if instance in self._idle:
            self._idle.remove(instance)
        if held is not None:
            body = exit_error(held.request_id, description or "exit status 0")
            if description is None:
                reason = "Runtime exited without providing a reason"
                body = function_error_body(
                    "Runtime.ExitError", f"RequestId: {held.request_id} Error: {reason}"
                )
            self._finish(instance, held, InvocationResult(body, "Runtime.ExitError"), "error")
        elif was is State.STARTING:
            self._fail_head_on_init_exit(description)
        self._spawn_if_needed()

    @staticmethod
    def _release(instance: Instance) -> None:
        """End an instance's pending /next: it is being stopped, or asked again."""
        waiter = instance.release_waiter()
        if waiter is not None and not waiter.done():
            waiter.set_exception(InstanceStopped())

    def _fail_head_on_init_exit(self, description: str | None) -> None:
        head = next((i for i in self._queue if not i.done), None)
        if head is None:
            return
        body = exit_error(head.request_id, description or "exit status 0")
        self._fail_waiting(InvocationResult(body, "Runtime.ExitError"))

    # -- idle reclaim and shutdown ------------------------------------------------------

    async def _reclaim_idle(self) -> None:
        idle_timeout = self._config.idle_timeout
        interval = min(max(idle_timeout / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            cutoff = time.monotonic() - idle_timeout
            for instance in [i for i in self._idle if i.idle_since <= cutoff]:
                self._idle.remove(instance)
                instance.stopping()
                self._release(instance)
                logger.debug("reclaiming idle instance %s", instance)
                self._stop_in_background(instance, grace=2.0)

    def _stop_in_background(self, instance: Instance, grace: float) -> None:
        task = asyncio.get_running_loop().create_task(self.pool.stop(instance, grace))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def drain(self, grace: float) -> None:
        """Let queued and running invocations finish for up to `grace` seconds."""
        deadline = time.monotonic() + grace
        while self.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110 - simple poll
            await asyncio.sleep(0.05)

    async def close(self, grace: float) -> None:
        """Stop reclaiming, fail whatever is left, and stop every instance."""
        self._closed = True
        if self._reclaimer is not None:
            self._reclaimer.cancel()
        for invocation in list(self._timers):
            self._timers.pop(invocation).cancel()
        for invocation in list(self._queue):
            invocation.finish(shutdown_result())
        self._queue.clear()
        await self.pool.stop_all(grace)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
