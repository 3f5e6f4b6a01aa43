"""The dispatcher: the one owner of the instance lifecycle and of waiting work.

It owns the slots and their instances (whose states it alone moves, through
``Instance``'s transition table), the one FIFO of waiting invocations (RequestResponse
and in-memory Events alike), the idle instances, the deadline timer of every invocation
and the map of running ones. It decides when the process pool spawns an instance (work
waits and no instance will soon be free), fails invocations whose deadline passes or
whose instance dies, and reclaims instances idle for too long.

Its collaborators are narrow: the pool (``Processes``) is built by the dispatcher from a
factory and reports exits to it through the callback it was built with; callers get a
future of their own for each invocation, which they may cancel (a queued invocation is
then withdrawn); the Runtime API asks only what an instance may ask (next, answer,
init error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Protocol

from lambda_rapid.config import DaemonConfig
from lambda_rapid.errors import exit_error, function_error_body, timeout_error
from lambda_rapid.extensions import Extension, ExtensionSet, Hub, discover
from lambda_rapid.extensions import Observer as ExtensionsObserver
from lambda_rapid.instance import COMING, HOLDING, ExitCallback, Instance, State
from lambda_rapid.invocation import Invocation, InvocationResult
from lambda_rapid.reports import Reporter
from lambda_rapid.spawning import log_stream_name
from lambda_rapid.streaming import Mode, ResponseStream, StreamedResult

logger = logging.getLogger(__name__)

STOPPED = frozenset({State.STOPPING, State.DEAD})
# Events held in memory (without a broker) before further ones are refused.
MAX_QUEUED_EVENTS = 1000
MAX_QUEUED_EVENT_BYTES = 64 * 1024 * 1024
# With extensions: how long processes get between SIGTERM (after the SHUTDOWN phase) and
# SIGKILL.
SIGKILL_AFTER = 0.3


class Processes(Protocol):
    """What the dispatcher needs of the process pool."""

    def start(self) -> None: ...

    def spawn(self, instance: Instance) -> None: ...

    def kill(self, instance: Instance) -> None: ...

    async def stop(self, instance: Instance, grace: float) -> None: ...

    async def stop_all(self, grace: float) -> None: ...


# Builds the pool, given the callback through which it reports every exit.
ProcessesFactory = Callable[[ExitCallback], Processes]


class Observer(Protocol):
    """What the dispatcher tells its observer (the metrics, when METRICS_PORT is set)."""

    def started(self, invocation: Invocation) -> None: ...

    def ended(self, invocation: Invocation, result: InvocationResult) -> None: ...

    def throttled(self) -> None: ...

    def event_queued(self) -> None: ...


def shutdown_result() -> InvocationResult:
    body = function_error_body("Runtime.ExitError", "The daemon is shutting down")
    return InvocationResult(body, "Runtime.ExitError")


class InstanceStopped(Exception):
    """Raised in a pending /next when its instance is being stopped."""


class Job:
    """One invocation in the dispatcher's hands: who waits for it, its timer, its instance."""

    __slots__ = ("invocation", "future", "timer", "instance", "reads_streams", "stream")

    def __init__(
        self,
        invocation: Invocation,
        future: asyncio.Future[InvocationResult] | None,
        reads_streams: bool = False,
    ) -> None:
        self.invocation = invocation
        self.future = future  # None for an Event: nobody waits for its result
        self.timer: asyncio.TimerHandle | None = None
        self.instance: Instance | None = None
        # Whether the caller takes a streamed response as it comes (a StreamedResult).
        self.reads_streams = reads_streams
        self.stream: ResponseStream | None = None

    @property
    def withdrawn(self) -> bool:
        """Its caller stopped waiting (cancelled its future) before it started."""
        return self.future is not None and self.future.done()


class Dispatcher:
    """Schedules invocations onto instances, first in first out."""

    def __init__(
        self,
        config: DaemonConfig,
        reporter: Reporter,
        slot_addresses: Sequence[str],
        processes: ProcessesFactory,
        hub: Hub | None = None,
    ) -> None:
        self._config = config
        handler = config.handler or ""
        self.hub = hub or Hub(
            config.function_name, config.function_version, handler, config.account_id
        )
        self._reporter = reporter
        self._addresses = list(slot_addresses)
        self._slots: list[Instance | None] = [None] * len(self._addresses)
        self._free_slots = list(reversed(range(len(self._addresses))))
        self._processes = processes(self.on_instance_exit)
        self._queue: deque[Job] = deque()
        self._idle: list[Instance] = []  # most recently idle last
        self._running: dict[Instance, Job] = {}
        self._events = 0
        self._event_bytes = 0
        self._reclaimer: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False
        self.metrics: Observer | None = None
        # Instances to stop at their next /next instead of giving them work (hot reload).
        self._outdated: set[Instance] = set()
        self._recycled: set[Instance] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Provisioned instances still in their first init, and when none is left.
        self._provisioning: set[Instance] = set()
        self._provisioned: asyncio.Future[None] | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Cached: asyncio.get_running_loop() costs a getpid() system call each time.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def start(self) -> None:
        """Start the pool's and the dispatcher's own background work (idle reclaim)."""
        self._processes.start()
        loop = asyncio.get_running_loop()
        self._reclaimer = loop.create_task(self._reclaim_idle())
        self._provisioned = loop.create_future()
        for _ in range(self._config.provisioned_concurrency):
            self._provisioning.add(self._spawn(provisioned=True))
        if self._config.proactive_init and not self._provisioning:
            # Lambda's proactive initialization: an on-demand instance, started ahead of
            # the first invocation (reclaimed when idle like any other).
            self._spawn()
        if not self._provisioning:
            self._provisioned.set_result(None)

    async def provisioned(self) -> None:
        """Wait until every provisioned instance has ended its first init (or failed it)."""
        assert self._provisioned is not None
        await self._provisioned

    def _settle_provisioned(self, instance: Instance, failed: bool = False) -> None:
        if instance not in self._provisioning or (instance.init_duration_ms is None and not failed):
            return
        self._provisioning.discard(instance)
        if failed:
            logger.warning("a provisioned instance failed its init; it is not replaced")
        if not self._provisioning and self._provisioned is not None:
            self._provisioned.set_result(None)

    def ready(self) -> bool:
        """Whether one more invocation could start now (OpenFaaS readiness)."""
        return len(self._running) + len(self._queue) < self._config.max_concurrency

    @property
    def in_flight(self) -> int:
        return len(self._queue) + len(self._running)

    # -- what the Runtime API may ask ---------------------------------------------------

    @property
    def waiting(self) -> int:
        """Invocations waiting for an instance."""
        return len(self._queue)

    def live_instances(self) -> list[Instance]:
        return [i for i in self._slots if i is not None]

    def instance_at(self, slot: int) -> Instance | None:
        """The instance using Runtime API slot `slot`, if any."""
        return self._slots[slot] if 0 <= slot < len(self._slots) else None

    def pids(self) -> frozenset[int]:
        """The runtime process of every instance that has one."""
        return frozenset(pid for i in self._slots if i is not None for pid in i.roots())

    # -- the caller's side ------------------------------------------------------------

    def submit(
        self, invocation: Invocation, reads_streams: bool = False
    ) -> asyncio.Future[InvocationResult]:
        """Run an invocation; the returned future (the caller's) gets the result.

        The future never gets an exception. Cancelling it withdraws the invocation if it
        has not started; a started one runs to its end. With `reads_streams`, a streamed
        response resolves it as soon as it begins, with a ``StreamedResult``; otherwise
        a streamed response is collected and the future gets the whole body.
        """
        loop = self._running_loop()
        future: asyncio.Future[InvocationResult] = loop.create_future()
        if self._closed:
            future.set_result(shutdown_result())
            return future
        job = Job(invocation, future, reads_streams)
        delay = invocation.deadline_epoch - time.time()
        job.timer = loop.call_later(max(delay, 0), self._on_deadline, job)
        self._enqueue(job)
        return future

    def submit_event(self, invocation: Invocation) -> bool:
        """Queue an Event (nobody waits for it); False when too many are held already.

        Its deadline starts when an instance takes it, not now.
        """
        size = len(invocation.payload)
        if self._events >= MAX_QUEUED_EVENTS or self._event_bytes + size > MAX_QUEUED_EVENT_BYTES:
            if self.metrics is not None:
                self.metrics.throttled()
            return False
        if self._closed:
            logger.warning("event invocation dropped at shutdown")
            return True
        self._events += 1
        self._event_bytes += size
        if self.metrics is not None:
            self.metrics.event_queued()
        self._enqueue(Job(invocation, None))
        return True

    def _enqueue(self, job: Job) -> None:
        instance = self._take_idle()
        if instance is None:
            self._queue.append(job)
            self._spawn_if_needed()
            return
        self._start(instance, job)
        waiter = instance.release_waiter()
        assert waiter is not None
        waiter.set_result(job.invocation)

    def _take_idle(self) -> Instance | None:
        """The most recently idle instance whose /next is still waiting."""
        idle = self._idle
        while idle:
            instance = idle.pop()
            waiter = instance.waiter
            if waiter is not None and not waiter.done():
                return instance
            instance.waiter = None  # that /next was given up; the runtime will ask again
        return None

    def _take_queued(self) -> Job | None:
        """The oldest waiting job whose caller still waits."""
        queue = self._queue
        while queue:
            job = queue.popleft()
            if not job.withdrawn:
                return job
            self._cancel_timer(job)
        return None

    def _spawn_if_needed(self) -> None:
        if not self._free_slots or self._closed:
            return
        coming = sum(1 for i in self._slots if i is not None and i.state in COMING)
        while len(self._queue) > coming and self._free_slots:
            self._spawn()
            coming += 1

    def _spawn(self, provisioned: bool = False) -> Instance:
        slot = self._free_slots.pop()
        log_stream = log_stream_name(self._config.function_version)
        instance = Instance(slot, self._addresses[slot], log_stream)
        if provisioned:
            # Lambda shows no Init Duration for provisioned concurrency: its init was ahead.
            instance.provisioned = True
            instance.cold = False
        self._slots[slot] = instance
        paths = discover(self._config.extensions_dir)
        if paths:
            self.extensions_of(instance).to_start = paths
        if self.hub.observer is not None:
            self.hub.observer.init_start(instance)
        self._processes.spawn(instance)
        return instance

    def _start(self, instance: Instance, job: Job) -> None:
        invocation = job.invocation
        instance.assign(invocation)
        job.instance = instance
        self._running[instance] = job
        if self.metrics is not None:
            self.metrics.started(invocation)  # before an Event's clock restarts
        if job.timer is None:  # an Event: its time starts now
            invocation.started_at = time.time()
            loop = self._running_loop()
            job.timer = loop.call_later(invocation.timeout, self._on_deadline, job)
        self._reporter.start(invocation, instance.output)
        if instance.extensions is not None:
            instance.extensions.invoke(invocation)
        if self.hub.observer is not None:
            self.hub.observer.invoke_start(instance, invocation)

    # -- the runtime's side -------------------------------------------------------------

    def next_invocation(self, instance: Instance) -> Invocation | asyncio.Future[Invocation]:
        """The runtime's /next: the head of the queue, or a future for the next arrival.

        The future is the caller's; cancelling it gives up that /next.
        """
        if instance.state is State.IDLE:
            # A second /next (the runtime gave up on the first): it supersedes the first.
            if instance in self._idle:
                self._idle.remove(instance)
            self._release(instance)
        if self._outdated and instance in self._outdated:
            return self._retire_outdated(instance)
        instance.ready()
        if instance.init_duration_ms is None or instance.extensions is not None:
            self._init_moments(instance)
        if self._provisioning:
            self._settle_provisioned(instance)
        if instance.free:
            job = self._take_queued()
            if job is not None:
                self._start(instance, job)
                return job.invocation
        waiter: asyncio.Future[Invocation] = self._running_loop().create_future()
        instance.waiter = waiter
        if instance.free:
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
        instance.answer(request_id)
        job = self._running.pop(instance)
        self._end(instance, job, result, status)
        if instance.extensions is not None and not instance.extensions.idle:
            self._arm_overdue(instance, job.invocation)

    def begin_stream(
        self, instance: Instance, request_id: str, content_type: str
    ) -> ResponseStream:
        """The runtime began streaming its response for `request_id`.

        The instance stays taken until the stream ends with `complete()`; the deadline
        still applies.
        """
        instance.stream(request_id)
        job = self._running[instance]
        if job.future is None or job.future.done():
            mode = Mode.DISCARD
        else:
            mode = Mode.READ if job.reads_streams else Mode.COLLECT
        job.stream = stream = ResponseStream(content_type, mode)
        if mode is Mode.READ:
            assert job.future is not None
            version = self._config.function_version
            job.future.set_result(StreamedResult(b"", executed_version=version, stream=stream))
        return stream

    def init_failed(self, instance: Instance, error_type: str, body: bytes) -> None:
        """The runtime posted init/error: the oldest waiting invocation gets that error."""
        instance.init_failed()
        self._init_ended(instance, error_type, body)

    def _init_ended(self, instance: Instance, error_type: str, body: bytes) -> None:
        """Init failed (the instance is stopping): the oldest waiting invocation gets it."""
        self._init_moments(instance, error_type)
        job = self._take_queued()
        if job is not None:
            self._fail_queued(job, InvocationResult(body, error_type))
        self._stop_in_background(instance, grace=1.0)

    @staticmethod
    def _in_init(instance: Instance) -> bool:
        """Its init has not ended: the runtime or an extension has not called next yet."""
        return instance.init_duration_ms is None and instance.state in (State.STARTING, State.IDLE)

    def _extension_init_failed(self, instance: Instance, error_type: str, body: bytes) -> None:
        """An extension failed the instance's init (its runtime may wait in /next)."""
        if not self._in_init(instance):
            return
        if instance.state is State.STARTING:
            instance.init_failed()
        else:
            if instance in self._idle:
                self._idle.remove(instance)
            instance.stopping()
            self._release(instance)
        self._init_ended(instance, error_type, body)

    # -- extensions ---------------------------------------------------------------------

    def extensions_of(self, instance: Instance) -> ExtensionSet:
        """The instance's extensions (created with the first)."""
        if instance.extensions is None:
            instance.extensions = ExtensionSet(
                instance,
                self._extensions_idle,
                self._extension_exited,
                self.hub,
                self._extension_init_failed,
            )
        return instance.extensions

    def _extensions_idle(self, instance: Instance) -> None:
        """Every extension of the instance called event/next: it may be free now."""
        extensions = instance.extensions
        if extensions is not None and extensions.overdue is not None:
            extensions.overdue.cancel()
            extensions.overdue = None
        if instance.state is not State.IDLE:
            return
        self._init_moments(instance)
        if self._provisioning:
            self._settle_provisioned(instance)
        waiter = instance.waiter
        if waiter is None or waiter.done() or instance in self._idle:
            return
        job = self._take_queued()
        if job is None:
            self._idle.append(instance)
            return
        instance.waiter = None
        self._start(instance, job)
        waiter.set_result(job.invocation)

    def _init_moments(self, instance: Instance, error_type: str | None = None) -> None:
        """Init ends when the runtime and every extension wait for work, or it failed."""
        extensions = instance.extensions
        unreported = extensions is not None and not extensions.init_reported
        if instance.init_duration_ms is not None and not unreported:
            return
        if error_type is None:
            duration = instance.settle_init()
        else:
            duration = (time.monotonic() - instance.spawned_at) * 1000
        observer = self.hub.observer
        if observer is not None and duration is not None and extensions is not None:
            extensions.init_reported = True  # ready() may have settled init already
            observer.runtime_init_done(instance, error_type)
            observer.init_report(instance, duration, error_type)

    def _arm_overdue(self, instance: Instance, invocation: Invocation) -> None:
        """Extensions still work on an answered invocation: its deadline still applies."""
        extensions = instance.extensions
        assert extensions is not None
        loop = asyncio.get_running_loop()
        delay = max(0.0, invocation.deadline_epoch - time.time())
        extensions.overdue = loop.call_later(delay, self._extensions_overdue, instance)

    def _extensions_overdue(self, instance: Instance) -> None:
        if instance.extensions is not None:
            instance.extensions.overdue = None
        if instance.state in STOPPED:
            return
        logger.info("extensions of %s passed the invocation's deadline; resetting it", instance)
        self._reset(instance, "timeout")

    def _reset(self, instance: Instance, reason: str) -> None:
        """Stop an instance that took no invocation yet or has answered its last."""
        if instance in self._idle:
            self._idle.remove(instance)
        held = instance.stopping()
        self._release(instance)
        if held is not None:  # not expected: callers fail held invocations first
            self._end(instance, self._running.pop(instance), extension_crash(held), "error")
        self._stop_in_background(instance, SIGKILL_AFTER, reason)

    def extension_error(
        self, instance: Instance, extension: Extension, error_type: str, body: bytes
    ) -> None:
        """An extension posted init/error or exit/error."""
        if self._in_init(instance):
            self._extension_init_failed(instance, error_type, body)
        elif instance.state not in STOPPED:
            self._fail_held(instance, InvocationResult(body, error_type))
            self._reset(instance, "failure")

    def _extension_exited(self, instance: Instance, name: str, description: str | None) -> None:
        """The pool saw an external extension's process exit."""
        extensions = instance.extensions
        assert extensions is not None
        member = extensions.exited(name)
        observer = self.hub.observer
        if observer is not None and member is not None:
            observer.extension_exited(instance, member, description)
        state = instance.state
        if self._in_init(instance):
            message = f"Extension {name} exited: {description or 'exit status 0'}"
            body = function_error_body("Extension.Crash", message)
            self._extension_init_failed(instance, "Extension.Crash", body)
        elif state is State.DEAD:
            if not extensions.pids():
                self._free_slot(instance)
                self._spawn_if_needed()
        elif state is not State.STOPPING:
            logger.warning("extension %s exited (%s); resetting %s", name, description, instance)
            held = self._running.get(instance)
            if held is not None:
                self._fail_held(instance, extension_crash(held.invocation))
            self._reset(instance, "failure")

    def _fail_held(self, instance: Instance, result: InvocationResult) -> None:
        if instance.state in HOLDING:
            instance.stopping()
            self._end(instance, self._running.pop(instance), result, "error")

    async def _shut_down(
        self,
        instance: Instance,
        extensions: ExtensionSet,
        reason: str,
        stop: Coroutine[object, object, None],
    ) -> None:
        """SHUTDOWN to the extensions, up to Lambda's limit, then the processes' stop."""
        if self.hub.observer is not None:  # telemetry: deliver what is buffered now
            self.hub.observer.instance_gone(instance)
        limit = extensions.shutdown_limit
        done = extensions.shutdown(reason, limit)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), limit)
        await stop
        extensions.release()
        self.hub.forget(extensions)

    async def _spin_down(self, instance: Instance) -> None:
        """At daemon shutdown: SHUTDOWN (spindown) to a live instance's extensions."""
        extensions = instance.extensions
        if extensions is None or not extensions.members or instance.state in STOPPED:
            return
        if instance in self._idle:
            self._idle.remove(instance)
        # Its runtime's /next stays pending (as without extensions): it is stopped next.
        instance.stopping()
        if self.hub.observer is not None:  # telemetry: deliver what is buffered now
            self.hub.observer.instance_gone(instance)
        limit = extensions.shutdown_limit
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(extensions.shutdown("spindown", limit).wait(), limit)

    def _report_to(
        self,
        observer: ExtensionsObserver,
        instance: Instance,
        invocation: Invocation,
        result: InvocationResult,
        status: str | None,
    ) -> None:
        word = "success" if result.error_type is None else status or "error"
        duration = (time.monotonic() - invocation.invoked_at) * 1000
        observer.runtime_done(instance, invocation, word, result.error_type)
        observer.report(instance, invocation, duration, word, result.error_type)

    # -- ending jobs --------------------------------------------------------------------

    def _end(
        self, instance: Instance, job: Job, result: InvocationResult, status: str | None
    ) -> None:
        """End a started job: timer, END/REPORT, log tail, result."""
        self._cancel_timer(job)
        invocation = job.invocation
        output = instance.output
        if self._reporter.wanted(invocation):
            output.drain()  # what the runtime printed just before answering goes before END
            self._reporter.end(invocation, output, status)
        result.log_tail = output.stop()
        result.executed_version = self._config.function_version
        if self.hub.observer is not None:
            self._report_to(self.hub.observer, instance, invocation, result, status)
        self._resolve(job, result)

    def _fail_queued(self, job: Job, result: InvocationResult) -> None:
        """End a job taken from the queue before it started."""
        self._cancel_timer(job)
        self._resolve(job, result)

    def _resolve(self, job: Job, result: InvocationResult) -> None:
        stream = job.stream
        if stream is not None:
            if stream.mode is Mode.COLLECT and result.error_type is None:
                result.body = stream.collected()
            stream.finish(result)
        future = job.future
        if future is None:
            self._events -= 1
            self._event_bytes -= len(job.invocation.payload)
            if result.error_type is not None:
                logger.warning("event %s failed: %s", job.invocation.request_id, result.error_type)
        elif not future.done():
            future.set_result(result)
        if self.metrics is not None:
            self.metrics.ended(job.invocation, result)

    @staticmethod
    def _cancel_timer(job: Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    # -- failures -----------------------------------------------------------------------

    def _on_deadline(self, job: Job) -> None:
        invocation = job.invocation
        remaining = invocation.deadline_epoch - time.time()
        if remaining > 0:  # uvloop's millisecond timers may fire a little early
            job.timer = self._running_loop().call_later(remaining, self._on_deadline, job)
            return
        job.timer = None
        result = InvocationResult(
            timeout_error(invocation.request_id, invocation.timeout), "Sandbox.Timedout"
        )
        instance = job.instance
        if instance is None:  # still waiting for an instance (an armed timer: queued)
            self._queue.remove(job)
            self._resolve(job, result)
            return
        logger.info("invocation %s timed out; stopping its instance", invocation.request_id)
        instance.stopping()
        del self._running[instance]
        self._end(instance, job, result, "timeout")
        if instance.extensions is not None and instance.extensions.members:
            self._stop_in_background(instance, SIGKILL_AFTER, "timeout")
        else:
            self._processes.kill(instance)

    def on_instance_exit(self, instance: Instance, description: str | None) -> None:
        """Called by the pool when a runtime process has exited (or could not start)."""
        was = instance.state
        held = instance.died()
        self._release(instance)
        if instance in self._idle:
            self._idle.remove(instance)
        if instance.extensions is None or not instance.extensions.pids():
            self._free_slot(instance)
        elif was is not State.STOPPING:  # a reset: its extensions get SHUTDOWN first
            self._stop_in_background(instance, SIGKILL_AFTER, "failure")
        if held is not None:
            result = exit_result(held, description)
            self._end(instance, self._running.pop(instance), result, "error")
        elif was is State.STARTING:
            self._init_moments(instance, "Runtime.ExitError")
            job = self._take_queued()
            if job is not None:
                body = exit_error(job.invocation.request_id, description or "exit status 0")
                self._fail_queued(job, InvocationResult(body, "Runtime.ExitError"))
        if instance.provisioned:
            self._replace_provisioned(instance)
        self._spawn_if_needed()
        if instance in self._recycled or instance in self._outdated:
            self._replace(instance)

    def _replace_provisioned(self, instance: Instance) -> None:
        """A provisioned instance exited (crash, timeout, hot reload): initialise another,
        unless it never ended an init (a broken function is not restarted in a loop)."""
        if instance in self._provisioning:
            self._settle_provisioned(instance, failed=True)
        elif instance.init_duration_ms is not None and not self._closed and self._free_slots:
            self._spawn(provisioned=True)

    def _free_slot(self, instance: Instance) -> None:
        if self._slots[instance.slot] is instance:
            self._slots[instance.slot] = None
            self._free_slots.append(instance.slot)
            if self.hub.observer is not None:
                self.hub.observer.instance_gone(instance)

    @staticmethod
    def _release(instance: Instance) -> None:
        """End an instance's pending /next: it is being stopped, or asked again."""
        waiter = instance.release_waiter()
        if waiter is not None and not waiter.done():
            waiter.set_exception(InstanceStopped())

    # -- idle reclaim and shutdown ------------------------------------------------------

    async def _reclaim_idle(self) -> None:
        idle_timeout = self._config.idle_timeout
        interval = min(max(idle_timeout / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            self.reclaim_idle(time.monotonic() - idle_timeout)

    def reclaim_idle(self, cutoff: float) -> None:
        """Stop the instances idle since before `cutoff` (a monotonic time)."""
        for instance in [i for i in self._idle if i.idle_since <= cutoff and not i.provisioned]:
            self._idle.remove(instance)
            instance.stopping()
            self._release(instance)
            logger.debug("reclaiming idle instance %s", instance)
            self._stop_in_background(instance, grace=2.0)

    # -- recycling (hot reload) ---------------------------------------------------------

    def recycle(self) -> list[Instance]:
        """Replace every instance (the function's code changed): idle ones at once, the
        others when they next ask for work. Returns the instances that will restart."""
        doomed = [i for i in self._slots if i is not None and i.state not in STOPPED]
        for instance in doomed:
            if instance in self._idle:
                self._idle.remove(instance)
                self._retire(instance)
            else:
                self._outdated.add(instance)
        return doomed

    def _retire(self, instance: Instance) -> None:
        instance.stopping()
        self._release(instance)
        self._recycled.add(instance)
        self._stop_in_background(instance, grace=2.0)

    def _retire_outdated(self, instance: Instance) -> asyncio.Future[Invocation]:
        """An outdated instance asked for work: stop it instead (its /next fails)."""
        self._outdated.discard(instance)
        self._retire(instance)
        refused: asyncio.Future[Invocation] = asyncio.get_running_loop().create_future()
        refused.set_exception(InstanceStopped())
        return refused

    def _replace(self, instance: Instance) -> None:
        """A recycled instance exited: start its successor, so the new code is warm."""
        self._recycled.discard(instance)
        self._outdated.discard(instance)
        if instance.provisioned:
            return  # its successor is already initialising
        if not self._queue and self._free_slots and not self._closed:
            self._spawn()

    def _stop_in_background(
        self, instance: Instance, grace: float, reason: str = "spindown"
    ) -> None:
        stop = self._processes.stop(instance, grace)
        extensions = instance.extensions
        if extensions is not None and extensions.members:
            stop = self._shut_down(instance, extensions, reason, stop)
        task = asyncio.get_running_loop().create_task(stop)
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def drain(self, grace: float) -> None:
        """Let queued and running invocations finish for up to `grace` seconds."""
        deadline = time.monotonic() + grace
        while self.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110 - simple poll
            await asyncio.sleep(0.05)

    async def close(self, grace: float) -> None:
        """Stop reclaiming, fail whatever waits, and stop every instance.

        A running invocation is failed by its instance's exit.
        """
        self._closed = True
        if self._reclaimer is not None:
            self._reclaimer.cancel()
        for job in self._running.values():
            self._cancel_timer(job)
        while self._queue:
            job = self._queue.popleft()
            if job.future is None:
                logger.warning("event invocation dropped at shutdown")
            self._fail_queued(job, shutdown_result())
        await asyncio.gather(*(self._spin_down(i) for i in self._slots if i is not None))
        await self._processes.stop_all(grace)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)


def extension_crash(held: Invocation) -> InvocationResult:
    message = f"RequestId: {held.request_id} Error: an extension exited"
    return InvocationResult(function_error_body("Extension.Crash", message), "Extension.Crash")


def exit_result(held: Invocation, description: str | None) -> InvocationResult:
    """What an invocation gets when its runtime exits while holding it."""
    if description is None:
        reason = "Runtime exited without providing a reason"
        body = function_error_body(
            "Runtime.ExitError", f"RequestId: {held.request_id} Error: {reason}"
        )
    else:
        body = exit_error(held.request_id, description)
    return InvocationResult(body, "Runtime.ExitError")
