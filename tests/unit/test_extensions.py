"""ExtensionSet and Hub: registration limits, identifiers, event delivery, SHUTDOWN.

With the real dispatcher over the fake process pool of test_dispatcher where the
instance's lifecycle matters (init failures and what the observer hears).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from lambda_rapid.extensions import (
    INIT_TIMEOUT_ERROR,
    MAX_EXTENSIONS,
    ExtensionError,
    ExtensionSet,
    ExtState,
    Hub,
)
from lambda_rapid.instance import Instance, State
from tests.unit.test_dispatcher import Harness, invocation, run, turns


def new_set(hub: Hub | None = None) -> tuple[ExtensionSet, list[Instance]]:
    idle: list[Instance] = []
    instance = Instance(0, "127.0.0.1:9001", "stream")
    hub = hub or Hub("fn", "$LATEST", "fn.handler", "123456789012")
    extensions = ExtensionSet(instance, idle.append, lambda *_: None, hub)
    instance.extensions = extensions
    return extensions, idle


def refusal(call: Any) -> tuple[int, str]:
    with pytest.raises(ExtensionError) as caught:
        call()
    return caught.value.status, caught.value.error_type


def test_at_most_ten_extensions_register() -> None:
    extensions, _ = new_set()
    for n in range(MAX_EXTENSIONS):
        extensions.register(extensions.instance, f"agent{n}", frozenset({"INVOKE"}))
    eleventh = refusal(lambda: extensions.register(extensions.instance, "x", frozenset()))
    assert eleventh == (403, "Extension.TooManyExtensions")
    assert len(extensions.members) == MAX_EXTENSIONS


def test_internal_extensions_may_not_take_shutdown() -> None:
    extensions, _ = new_set()
    shutdown = frozenset({"SHUTDOWN"})
    answer = refusal(lambda: extensions.register(extensions.instance, "inner", shutdown))
    assert answer == (403, "Extension.InvalidEventType")
    extensions.expect("outer")  # an external one (started from the directory) may
    assert not extensions.register(extensions.instance, "outer", shutdown).internal
    assert extensions.registered.is_set()


def test_identifiers_name_one_extension_of_one_instance() -> None:
    hub = Hub("fn", "$LATEST", "fn.handler", "123456789012")
    first, _ = new_set(hub)
    other, _ = new_set(hub)
    extension = first.register(first.instance, "agent", frozenset({"INVOKE"}))
    hub.add(extension)
    assert hub.find(first.instance, extension.identifier) is extension
    assert refusal(lambda: hub.find(first.instance, None)) == (
        403,
        "Extension.MissingExtensionIdentifier",
    )
    assert refusal(lambda: hub.find(first.instance, "nope"))[1] == (
        "Extension.InvalidExtensionIdentifier"
    )
    unknown = refusal(lambda: hub.find(other.instance, extension.identifier))
    assert unknown == (403, "Extension.UnknownExtensionIdentifier")
    hub.forget(first)
    assert refusal(lambda: hub.find(first.instance, extension.identifier))[1] == (
        "Extension.UnknownExtensionIdentifier"
    )


@run
async def test_invoke_reaches_parked_next_and_waits_for_busy_ones() -> None:
    extensions, idle = new_set()
    parked = extensions.register(extensions.instance, "parked", frozenset({"INVOKE"}))
    busy = extensions.register(extensions.instance, "busy", frozenset({"INVOKE"}))
    deaf = extensions.register(extensions.instance, "deaf", frozenset())
    waiter = extensions.next(parked)
    assert isinstance(waiter, asyncio.Future) and not waiter.done()
    assert not extensions.idle
    extensions.next(deaf)
    extensions.invoke(invocation("req-7"))
    event = json.loads(await waiter)
    assert (event["eventType"], event["requestId"]) == ("INVOKE", "req-7")
    # The one that was not waiting gets the event at its next call, at once.
    given = extensions.next(busy)
    assert isinstance(given, bytes) and json.loads(given)["requestId"] == "req-7"
    assert idle == []  # nobody ever had every extension waiting
    extensions.next(parked)
    assert not extensions.idle
    extensions.next(busy)
    assert extensions.idle and idle == [extensions.instance]


@run
async def test_shutdown_is_done_when_each_receiver_asked_again() -> None:
    extensions, _ = new_set()
    for name in ("a", "b"):
        extensions.expect(name)
    waiting = extensions.register(extensions.instance, "a", frozenset({"INVOKE", "SHUTDOWN"}))
    working = extensions.register(extensions.instance, "b", frozenset({"SHUTDOWN"}))
    waiter = extensions.next(waiting)
    done = extensions.shutdown("timeout", 2.0)
    event = json.loads(await waiter)  # type: ignore[arg-type]
    assert event["eventType"] == "SHUTDOWN" and event["shutdownReason"] == "timeout"
    assert event["deadlineMs"] > 0
    # The busy one's next hands it SHUTDOWN: that call acknowledges nothing yet.
    given = extensions.next(working)
    assert isinstance(given, bytes) and json.loads(given)["eventType"] == "SHUTDOWN"
    assert not done.is_set()
    extensions.next(waiting)
    assert not done.is_set()
    extensions.next(working)
    assert done.is_set()


@run
async def test_an_exit_counts_as_done_with_shutdown() -> None:
    extensions, _ = new_set()
    extensions.expect("a")
    extensions.started("a", 4242)
    member = extensions.register(extensions.instance, "a", frozenset({"SHUTDOWN"}))
    extensions.next(member)
    done = extensions.shutdown("spindown", 2.0)
    assert extensions.exited("a") is member
    assert member.state is ExtState.EXITED and done.is_set()
    assert refusal(lambda: extensions.next(member)) == (403, "Extension.InvalidState")


class InitObserver:
    """Records what the dispatcher tells about init; ignores the rest."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, str | None]] = []

    def runtime_init_done(self, instance: Instance, error_type: str | None) -> None:
        self.heard.append(("runtime_init_done", error_type))

    def init_report(self, instance: Instance, duration_ms: float, error_type: str | None) -> None:
        assert duration_ms >= 0
        self.heard.append(("init_report", error_type))

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


@run
async def test_extension_init_error_while_runtime_waits_fails_init() -> None:
    h = Harness()
    observer = InitObserver()
    h.dispatcher.hub.observer = observer  # type: ignore[assignment]
    first = h.dispatcher.submit(invocation("first"))
    instance = h.pool.spawned[0]
    extensions = h.dispatcher.extensions_of(instance)
    agent = extensions.register(instance, "agent", frozenset({"INVOKE"}))
    h.dispatcher.next_invocation(instance)  # the runtime is ready; the agent is not
    assert instance.state is State.IDLE and instance.init_duration_ms is None
    body = b'{"errorMessage": "bad config", "errorType": "Extension.ConfigInvalid"}'
    h.dispatcher.extension_error(instance, agent, "Extension.ConfigInvalid", body)
    result = await first
    assert (result.error_type, result.body) == ("Extension.ConfigInvalid", body)
    assert observer.heard == [
        ("runtime_init_done", "Extension.ConfigInvalid"),
        ("init_report", "Extension.ConfigInvalid"),
    ]
    for _ in range(50):  # the stop follows the SHUTDOWN phase, a few turns later
        if h.pool.stopped:
            break
        await turns()
    assert h.pool.stopped == [instance]


@run
async def test_registration_timeout_fails_init() -> None:
    h = Harness()
    observer = InitObserver()
    h.dispatcher.hub.observer = observer  # type: ignore[assignment]
    first = h.dispatcher.submit(invocation("first"))
    instance = h.pool.spawned[0]
    extensions = h.dispatcher.extensions_of(instance)
    extensions.expect("mute")
    extensions.registration_timed_out(10.0)
    result = await first
    assert result.error_type == INIT_TIMEOUT_ERROR
    assert "mute did not register" in json.loads(result.body)["errorMessage"]
    assert observer.heard[0] == ("runtime_init_done", INIT_TIMEOUT_ERROR)
    assert instance.state in (State.STOPPING, State.DEAD)


@run
async def test_successful_init_reports_no_error() -> None:
    h = Harness()
    observer = InitObserver()
    h.dispatcher.hub.observer = observer  # type: ignore[assignment]
    h.dispatcher.submit(invocation("first"))
    instance = h.pool.spawned[0]
    extensions = h.dispatcher.extensions_of(instance)
    agent = extensions.register(instance, "agent", frozenset({"INVOKE"}))
    h.dispatcher.next_invocation(instance)
    assert observer.heard == []
    extensions.next(agent)  # init ends when the last one waits
    assert observer.heard == [("runtime_init_done", None), ("init_report", None)]
    assert instance.init_duration_ms is not None
