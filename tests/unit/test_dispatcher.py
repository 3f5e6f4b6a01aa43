"""The dispatcher with a fake process pool: queueing, deadlines, failures, reclaim, drain.

The fake stands in for runtime processes only (spawn records, exits are reported through
the callback the dispatcher built it with); everything else is the real code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from lambda_rapid.config import daemon_config
from lambda_rapid.dispatcher import (
    MAX_QUEUED_EVENTS,
    Dispatcher,
    InstanceStopped,
)
from lambda_rapid.errors import InvalidRequestId
from lambda_rapid.instance import ExitCallback, Instance, State
from lambda_rapid.invocation import Invocation, InvocationResult
from lambda_rapid.reports import Reporter


class FakeProcesses:
    """Stands in for the pool: records what the dispatcher asks, exits on demand."""

    def __init__(self, on_exit: ExitCallback, fail_spawns: bool = False) -> None:
        self.on_exit = on_exit
        self.fail_spawns = fail_spawns
        self.started = False
        self.spawned: list[Instance] = []
        self.killed: list[Instance] = []
        self.stopped: list[Instance] = []
        self.stopped_all = False

    def start(self) -> None:
        self.started = True

    def spawn(self, instance: Instance) -> None:
        self.spawned.append(instance)
        if self.fail_spawns:
            self.on_exit(instance, "no such file or directory")
            return
        instance.pid = 1000 + len(self.spawned)

    def kill(self, instance: Instance) -> None:
        self.killed.append(instance)

    async def stop(self, instance: Instance, grace: float) -> None:
        self.stopped.append(instance)
        self.exit(instance, "signal: terminated")

    async def stop_all(self, grace: float) -> None:
        self.stopped_all = True
        for instance in self.spawned:
            self.exit(instance, "signal: terminated")

    def exit(self, instance: Instance, description: str | None) -> None:
        if instance.state is not State.DEAD:
            self.on_exit(instance, description)


class Harness:
    def __init__(self, slots: int = 1, fail_spawns: bool = False, tail: bool = False) -> None:
        config = dataclasses.replace(
            daemon_config(["/bin/true"], {}), max_concurrency=slots, idle_timeout=60.0
        )
        self.processes: FakeProcesses | None = None
        self.errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: self.errors.append(ctx))

        def build(on_exit: ExitCallback) -> FakeProcesses:
            self.processes = FakeProcesses(on_exit, fail_spawns)
            return self.processes

        reporter = Reporter(False, config.function_version, config.memory_size)
        addresses = [f"127.0.0.1:{9001 + i}" for i in range(slots)]
        self.dispatcher = Dispatcher(config, reporter, addresses, build)

    @property
    def pool(self) -> FakeProcesses:
        assert self.processes is not None
        return self.processes


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def wrapper() -> None:
        asyncio.run(test())

    wrapper.__name__ = test.__name__
    return wrapper


def invocation(
    request_id: str = "req-1", timeout: float = 3.0, *, tail: bool = False
) -> Invocation:
    return Invocation(
        request_id=request_id,
        payload=b'{"n": 1}',
        timeout=timeout,
        invoked_arn="arn:aws:lambda:us-east-1:123456789012:function:echo",
        want_log_tail=tail,
    )


def past_deadline(request_id: str = "late") -> Invocation:
    """An invocation whose deadline has passed: its timer fires on the next loop turn."""
    late = invocation(request_id, timeout=1.0)
    late.started_at = time.time() - 10
    return late


async def turns(count: int = 3) -> None:
    """Let the loop run its ready callbacks (timers due now) a few times."""
    for _ in range(count):
        await asyncio.sleep(0)


def error_type(result: InvocationResult) -> str:
    body = json.loads(result.body)
    assert body["errorType"] == result.error_type
    return str(result.error_type)


def next_now(h: Harness, instance: Instance) -> Invocation:
    got = h.dispatcher.next_invocation(instance)
    assert isinstance(got, Invocation)
    return got


@run
async def test_first_invocation_spawns_and_is_handed_to_the_first_next() -> None:
    h = Harness()
    h.dispatcher.start()
    assert h.pool.started
    future = h.dispatcher.submit(invocation("a"))
    assert [i.state for i in h.pool.spawned] == [State.STARTING]
    instance = h.pool.spawned[0]
    assert h.dispatcher.instance_at(0) is instance
    assert h.dispatcher.pids() == frozenset({instance.pid})
    assert next_now(h, instance).request_id == "a"
    assert instance.state is State.BUSY
    assert not future.done()
    h.dispatcher.complete(instance, "a", InvocationResult(b'"ok"'))
    result = await future
    assert result.body == b'"ok"'
    assert result.error_type is None
    assert result.executed_version == "$LATEST"
    assert h.dispatcher.in_flight == 0
    await h.dispatcher.close(0.1)


@run
async def test_an_idle_instance_takes_new_work_at_once() -> None:
    h = Harness()
    h.dispatcher.submit(invocation("a"))
    instance = h.pool.spawned[0]
    next_now(h, instance)
    h.dispatcher.complete(instance, "a", InvocationResult(b"1"))
    parked = h.dispatcher.next_invocation(instance)
    assert isinstance(parked, asyncio.Future)
    h.dispatcher.submit(invocation("b"))
    assert parked.done() and parked.result().request_id == "b"
    assert len(h.pool.spawned) == 1  # no second instance for work an idle one took


@run
async def test_a_caller_that_stops_waiting_withdraws_its_queued_invocation() -> None:
    h = Harness()
    gone = h.dispatcher.submit(invocation("gone"))
    kept = h.dispatcher.submit(invocation("kept"))
    gone.cancel()
    instance = h.pool.spawned[0]
    assert next_now(h, instance).request_id == "kept"
    h.dispatcher.complete(instance, "kept", InvocationResult(b"1"))
    assert (await kept).body == b"1"


@run
async def test_deadline_after_the_caller_cancelled_is_harmless() -> None:
    h = Harness()
    future = h.dispatcher.submit(past_deadline("late"))
    future.cancel()
    parked = h.dispatcher.next_invocation(h.pool.spawned[0])
    assert isinstance(parked, asyncio.Future)  # the withdrawn invocation is not handed out
    await turns()
    assert h.errors == []
    assert h.dispatcher.in_flight == 0


@run
async def test_deadline_of_a_cancelled_caller_still_queued() -> None:
    h = Harness()
    future = h.dispatcher.submit(past_deadline("late"))
    future.cancel()
    await turns()  # the timer fires while the invocation is still in the queue
    assert h.errors == []
    assert h.dispatcher.in_flight == 0
    parked = h.dispatcher.next_invocation(h.pool.spawned[0])
    assert isinstance(parked, asyncio.Future)


@run
async def test_deadline_while_queued_fails_with_sandbox_timedout() -> None:
    h = Harness()
    future = h.dispatcher.submit(past_deadline("late"))
    result = await future
    assert error_type(result) == "Sandbox.Timedout"
    assert b"RequestId: late Error: Task timed out after 1.00 seconds" in result.body
    assert h.dispatcher.in_flight == 0
    assert h.errors == []


@run
async def test_deadline_while_running_kills_the_instance() -> None:
    h = Harness()
    future = h.dispatcher.submit(invocation("slow", timeout=0.05))
    instance = h.pool.spawned[0]
    next_now(h, instance)
    result = await future
    assert error_type(result) == "Sandbox.Timedout"
    assert h.pool.killed == [instance]
    assert instance.state is State.STOPPING
    with pytest.raises(InvalidRequestId):  # its late answer is refused
        h.dispatcher.complete(instance, "slow", InvocationResult(b"late"))
    h.pool.exit(instance, "signal: killed")
    assert h.dispatcher.instance_at(0) is None
    assert h.errors == []


@run
async def test_crash_while_starting_fails_the_oldest_waiting_invocation() -> None:
    h = Harness()
    first = h.dispatcher.submit(invocation("first"))
    second = h.dispatcher.submit(invocation("second"))
    crashed = h.pool.spawned[0]
    h.pool.exit(crashed, "exit status 1")
    result = await first
    assert error_type(result) == "Runtime.ExitError"
    assert b"RequestId: first Error: Runtime exited with error: exit status 1" in result.body
    assert not second.done()
    replacement = h.pool.spawned[1]  # the one still waiting gets a new instance
    assert h.dispatcher.instance_at(0) is replacement
    assert next_now(h, replacement).request_id == "second"


@run
async def test_a_runtime_that_cannot_start_fails_each_waiting_invocation() -> None:
    h = Harness(fail_spawns=True)
    futures = [h.dispatcher.submit(invocation(f"r{i}")) for i in range(3)]
    results = [await f for f in futures]
    assert [error_type(r) for r in results] == ["Runtime.ExitError"] * 3
    assert b"no such file or directory" in results[0].body
    assert h.dispatcher.instance_at(0) is None
    assert h.dispatcher.in_flight == 0


@run
async def test_init_error_fails_the_oldest_waiting_invocation_and_stops_the_instance() -> None:
    h = Harness()
    first = h.dispatcher.submit(invocation("first"))
    instance = h.pool.spawned[0]
    body = b'{"errorMessage": "bad handler", "errorType": "Runtime.ImportModuleError"}'
    h.dispatcher.init_failed(instance, "Runtime.ImportModuleError", body)
    result = await first
    assert result.body == body
    assert result.error_type == "Runtime.ImportModuleError"
    await turns()
    assert h.pool.stopped == [instance]
    assert instance.state is State.DEAD
    assert h.dispatcher.instance_at(0) is None


@run
async def test_exit_with_a_parked_next_ends_that_next() -> None:
    h = Harness()
    h.dispatcher.submit(invocation("a"))
    instance = h.pool.spawned[0]
    next_now(h, instance)
    h.dispatcher.complete(instance, "a", InvocationResult(b"1"))
    parked = h.dispatcher.next_invocation(instance)
    assert isinstance(parked, asyncio.Future)
    h.pool.exit(instance, None)
    with pytest.raises(InstanceStopped):
        await parked
    assert h.dispatcher.instance_at(0) is None
    later = h.dispatcher.submit(invocation("b"))  # goes to a new instance, not the dead one
    assert len(h.pool.spawned) == 2
    assert not later.done()


@run
async def test_exit_while_busy_fails_the_held_invocation() -> None:
    h = Harness()
    future = h.dispatcher.submit(invocation("held"))
    instance = h.pool.spawned[0]
    next_now(h, instance)
    h.pool.exit(instance, None)
    result = await future
    assert error_type(result) == "Runtime.ExitError"
    assert b"Runtime exited without providing a reason" in result.body


@run
async def test_a_second_next_supersedes_the_first() -> None:
    h = Harness()
    h.dispatcher.submit(invocation("a"))
    instance = h.pool.spawned[0]
    next_now(h, instance)
    h.dispatcher.complete(instance, "a", InvocationResult(b"1"))
    first = h.dispatcher.next_invocation(instance)
    second = h.dispatcher.next_invocation(instance)
    assert isinstance(first, asyncio.Future) and isinstance(second, asyncio.Future)
    with pytest.raises(InstanceStopped):
        await first
    h.dispatcher.submit(invocation("b"))
    assert second.result().request_id == "b"


@run
async def test_a_given_up_next_is_not_handed_work() -> None:
    h = Harness(slots=2)
    h.dispatcher.submit(invocation("a"))
    instance = h.pool.spawned[0]
    next_now(h, instance)
    h.dispatcher.complete(instance, "a", InvocationResult(b"1"))
    parked = h.dispatcher.next_invocation(instance)
    assert isinstance(parked, asyncio.Future)
    parked.cancel()
    future = h.dispatcher.submit(invocation("b"))
    assert len(h.pool.spawned) == 2  # a new instance, since nobody waits on the first
    assert next_now(h, h.pool.spawned[1]).request_id == "b"
    assert not future.done()
    # The first runtime asks again: it is idle once more and can be given work.
    again = h.dispatcher.next_invocation(instance)
    assert isinstance(again, asyncio.Future)
    h.dispatcher.submit(invocation("c"))
    assert again.result().request_id == "c"


@run
async def test_idle_instances_are_reclaimed() -> None:
    h = Harness(slots=2)
    for name in ("a", "b"):
        h.dispatcher.submit(invocation(name))
    instances = h.pool.spawned
    for instance, name in zip(instances, ("a", "b"), strict=True):
        next_now(h, instance)
        h.dispatcher.complete(instance, name, InvocationResult(b"1"))
    parked = [h.dispatcher.next_invocation(i) for i in instances]
    cutoff = instances[0].idle_since  # the first has been idle since then, the second not
    h.dispatcher.reclaim_idle(cutoff)
    await turns()
    assert h.pool.stopped == [instances[0]]
    first = parked[0]
    assert isinstance(first, asyncio.Future)
    with pytest.raises(InstanceStopped):
        await first
    assert h.dispatcher.instance_at(instances[0].slot) is None
    assert h.dispatcher.instance_at(instances[1].slot) is instances[1]


@run
async def test_close_fails_waiting_invocations_and_stops_every_instance() -> None:
    h = Harness()
    h.dispatcher.start()
    running = h.dispatcher.submit(invocation("running"))
    waiting = h.dispatcher.submit(invocation("waiting"))
    assert h.dispatcher.submit_event(invocation("event"))
    next_now(h, h.pool.spawned[0])
    assert h.dispatcher.in_flight == 3
    assert not h.dispatcher.ready()
    await h.dispatcher.drain(0.0)
    await h.dispatcher.close(0.1)
    assert h.pool.stopped_all
    assert b"The daemon is shutting down" in (await waiting).body
    assert error_type(await running) == "Runtime.ExitError"
    late = await h.dispatcher.submit(invocation("late"))
    assert b"The daemon is shutting down" in late.body
    assert h.dispatcher.in_flight == 0
    assert h.errors == []


@run
async def test_drain_waits_for_running_invocations() -> None:
    h = Harness()
    future = h.dispatcher.submit(invocation("a"))
    instance = h.pool.spawned[0]
    next_now(h, instance)
    asyncio.get_running_loop().call_soon(
        h.dispatcher.complete, instance, "a", InvocationResult(b"1")
    )
    await h.dispatcher.drain(30.0)
    assert future.done()
    assert h.dispatcher.in_flight == 0


@run
async def test_events_share_the_queue_and_their_deadline_starts_when_they_run() -> None:
    h = Harness()
    sync = h.dispatcher.submit(invocation("sync"))
    event = invocation("event", timeout=1.0)
    event.started_at = time.time() - 10  # long queued: no matter, its time starts later
    assert h.dispatcher.submit_event(event)
    instance = h.pool.spawned[0]
    assert next_now(h, instance).request_id == "sync"  # first in, first out
    h.dispatcher.complete(instance, "sync", InvocationResult(b"1"))
    await sync
    assert next_now(h, instance).request_id == "event"
    assert event.started_at > time.time() - 5
    await turns()
    assert instance.state is State.BUSY  # not timed out
    h.dispatcher.complete(instance, "event", InvocationResult(b"done"))
    assert h.dispatcher.in_flight == 0


@run
async def test_events_beyond_the_bound_are_refused() -> None:
    h = Harness()
    accepted = [h.dispatcher.submit_event(invocation(f"e{i}")) for i in range(MAX_QUEUED_EVENTS)]
    assert all(accepted)
    assert not h.dispatcher.submit_event(invocation("one too many"))
    instance = h.pool.spawned[0]
    next_now(h, instance)
    h.dispatcher.complete(instance, "e0", InvocationResult(b"1"))
    assert h.dispatcher.submit_event(invocation("room again"))


@run
async def test_the_log_tail_holds_the_output_and_the_platform_lines() -> None:
    h = Harness()
    future = h.dispatcher.submit(invocation("tail", tail=True))
    instance = h.pool.spawned[0]
    next_now(h, instance)
    instance.output.add(b"hello from the handler\n")
    h.dispatcher.complete(instance, "tail", InvocationResult(b"1"))
    result = await future
    assert result.log_tail is not None
    lines = result.log_tail.decode().splitlines()
    assert lines[0] == "START RequestId: tail Version: $LATEST"
    assert lines[1] == "hello from the handler"
    assert lines[2] == "END RequestId: tail"
    assert lines[3].startswith("REPORT RequestId: tail")
    assert not instance.output.active  # nothing more is kept after the invocation
    next_now_or_park = h.dispatcher.next_invocation(instance)
    assert isinstance(next_now_or_park, asyncio.Future)
    plain = h.dispatcher.submit(invocation("plain"))
    h.dispatcher.complete(instance, "plain", InvocationResult(b"2"))
    assert (await plain).log_tail is None
