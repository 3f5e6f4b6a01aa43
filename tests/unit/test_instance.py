"""The runtime instance state machine: legal and illegal transitions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from lambda_rapid.errors import InvalidRequestId, InvalidStateTransition
from lambda_rapid.instance import Instance, State
from lambda_rapid.invocation import Invocation


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test body in a fresh event loop (Invocation needs a running loop)."""

    def wrapper() -> None:
        asyncio.run(test())

    wrapper.__name__ = test.__name__
    return wrapper


def invocation(request_id: str = "req-1", *, tail: bool = False) -> Invocation:
    return Invocation(
        request_id=request_id,
        payload=b"{}",
        timeout=3.0,
        invoked_arn="arn:aws:lambda:us-east-1:123456789012:function:fn",
        want_log_tail=tail,
    )


def new_instance() -> Instance:
    instance = Instance(0, "127.0.0.1:9001", "stream")
    instance.pid = 4242
    return instance


def test_new_instance_is_starting() -> None:
    instance = new_instance()
    assert instance.state is State.STARTING
    assert instance.current is None
    assert instance.cold is True
    assert instance.served == 0
    assert instance.init_duration_ms is None
    assert "Starting" in repr(instance)


def test_first_ready_records_init_duration() -> None:
    instance = new_instance()
    instance.ready()
    assert instance.state is State.IDLE
    assert instance.init_duration_ms is not None
    assert instance.init_duration_ms >= 0


def test_ready_twice_is_allowed() -> None:
    instance = new_instance()
    instance.ready()
    first = instance.init_duration_ms
    instance.ready()
    assert instance.state is State.IDLE
    assert instance.init_duration_ms == first


@run
async def test_full_cycle() -> None:
    instance = new_instance()
    instance.ready()
    first = invocation("req-1", tail=True)
    instance.assign(first)
    assert instance.state is State.BUSY
    assert instance.current is first
    assert instance.output.active  # the caller wants its log tail
    assert first.pid == 4242
    assert first.invoked_at > 0
    assert first.init_duration_ms == instance.init_duration_ms
    assert instance.cold is False

    assert instance.answer("req-1") is first
    assert instance.state is State.ANSWERED
    assert instance.current is None
    assert instance.served == 1

    instance.ready()
    assert instance.state is State.IDLE
    instance.output.stop()
    second = invocation("req-2")
    instance.assign(second)
    assert not instance.output.active
    assert second.init_duration_ms is None  # only the cold invocation reports init
    assert instance.answer("req-2") is second
    assert instance.served == 2


@run
async def test_next_while_busy_is_refused() -> None:
    instance = new_instance()
    instance.ready()
    instance.assign(invocation())
    with pytest.raises(InvalidStateTransition) as info:
        instance.ready()
    assert info.value.status == 403
    assert info.value.error_type == "InvalidStateTransition"
    assert "from Invoking to Ready" in info.value.message
    assert instance.state is State.BUSY


@run
async def test_answer_with_wrong_id() -> None:
    instance = new_instance()
    instance.ready()
    held = invocation("req-1")
    instance.assign(held)
    with pytest.raises(InvalidRequestId) as info:
        instance.answer("other")
    assert info.value.status == 400
    assert info.value.error_type == "InvalidRequestID"
    assert instance.state is State.BUSY
    assert instance.current is held


def test_answer_before_any_invocation_while_starting() -> None:
    instance = new_instance()
    with pytest.raises(InvalidStateTransition) as info:
        instance.answer("req-1")
    assert info.value.status == 403
    assert "InvocationResponse" in info.value.message


def test_answer_before_any_invocation_while_idle() -> None:
    instance = new_instance()
    instance.ready()
    with pytest.raises(InvalidStateTransition) as info:
        instance.answer("req-1")
    assert info.value.status == 403


@run
async def test_second_answer_for_the_same_request() -> None:
    instance = new_instance()
    instance.ready()
    instance.assign(invocation("req-1"))
    instance.answer("req-1")
    with pytest.raises(InvalidRequestId):
        instance.answer("req-1")
    instance.ready()
    with pytest.raises(InvalidRequestId):
        instance.answer("req-1")


def test_init_failed_while_starting() -> None:
    instance = new_instance()
    instance.init_failed()
    assert instance.state is State.STOPPING


def test_init_failed_after_ready_is_refused() -> None:
    instance = new_instance()
    instance.ready()
    with pytest.raises(InvalidStateTransition) as info:
        instance.init_failed()
    assert info.value.status == 403
    assert "from Ready to InitError" in info.value.message
    assert instance.state is State.IDLE


@run
async def test_init_failed_while_busy_is_refused() -> None:
    instance = new_instance()
    instance.ready()
    instance.assign(invocation())
    with pytest.raises(InvalidStateTransition):
        instance.init_failed()


@run
async def test_assign_requires_idle() -> None:
    instance = new_instance()
    with pytest.raises(InvalidStateTransition):
        instance.assign(invocation("a"))
    instance.ready()
    instance.assign(invocation("b"))
    with pytest.raises(InvalidStateTransition) as info:
        instance.assign(invocation("c"))
    assert info.value.status == 403
    assert instance.current is not None and instance.current.request_id == "b"


@run
async def test_stopping_instance_takes_no_work() -> None:
    instance = new_instance()
    instance.ready()
    instance.stopping()
    assert instance.state is State.STOPPING
    with pytest.raises(InvalidStateTransition):
        instance.ready()
    with pytest.raises(InvalidStateTransition):
        instance.assign(invocation())


@run
async def test_died_while_busy_returns_the_held_invocation() -> None:
    instance = new_instance()
    instance.ready()
    held = invocation()
    instance.assign(held)
    assert instance.died() is held
    assert instance.state is State.DEAD
    assert instance.current is None


def test_died_while_idle_returns_nothing() -> None:
    instance = new_instance()
    instance.ready()
    assert instance.died() is None
    assert instance.state is State.DEAD
    instance.stopping()
    assert instance.state is State.DEAD  # the dead stay dead
    with pytest.raises(InvalidStateTransition):
        instance.ready()


@run
async def test_release_waiter() -> None:
    instance = new_instance()
    assert instance.release_waiter() is None
    waiter: asyncio.Future[Invocation] = asyncio.get_running_loop().create_future()
    instance.waiter = waiter
    assert instance.release_waiter() is waiter
    assert instance.waiter is None
    assert instance.release_waiter() is None


def test_the_transition_table_is_the_only_way_between_states() -> None:
    from lambda_rapid.instance import TRANSITIONS

    for transition, (allowed, target) in TRANSITIONS.items():
        for state in State:
            instance = new_instance()
            instance.state = state
            if state in allowed:
                instance._move(transition)
                assert instance.state is target
            else:
                with pytest.raises(InvalidStateTransition) as info:
                    instance._move(transition)
                assert f"from {state.value} to {transition}" in info.value.message
                assert instance.state is state
