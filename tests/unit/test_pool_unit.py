"""The process pool on its own: real (tiny) runtime processes, exits reported in words.

The pool's owner is a small recorder of the exits the pool reports through the callback
it was built with; the processes are real `sh` commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_rapid import spawning
from lambda_rapid.config import DaemonConfig, daemon_config
from lambda_rapid.instance import Instance
from lambda_rapid.pool import Pool, describe_exit
from lambda_rapid.spawning import Prelaunched, prelaunch

EXIT_WAIT = 20.0  # a bound for a failing test only; exits come within milliseconds


@pytest.fixture(autouse=True)
def not_a_subreaper() -> Iterator[None]:
    """The pool makes its process a subreaper: undo that for the rest of this worker."""
    yield
    spawning._LIBC.prctl(spawning.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def wrapper() -> None:
        asyncio.run(test())

    wrapper.__name__ = test.__name__
    return wrapper


async def until(condition: Callable[[], bool]) -> None:
    """Poll for a condition set by a process or a background start (bounded)."""
    async with asyncio.timeout(EXIT_WAIT):
        while not condition():  # noqa: ASYNC110 - nothing to await: the condition is outside
            await asyncio.sleep(0.01)


class Owner:
    """Builds a pool for a shell script and records the exits it reports."""

    def __init__(self, script: str) -> None:
        config = daemon_config(["/bin/sh", "-c", script], {})
        self.config = dataclasses.replace(config, command=["/bin/sh", "-c", script])
        self.exits: asyncio.Queue[tuple[Instance, str | None]] = asyncio.Queue()
        self.pool = Pool(self.config, lambda i, d: self.exits.put_nowait((i, d)))
        self.pool.start()

    def spawn(self) -> Instance:
        instance = Instance(0, "127.0.0.1:9", "stream")
        self.pool.spawn(instance)
        return instance

    async def exit(self) -> tuple[Instance, str | None]:
        return await asyncio.wait_for(self.exits.get(), EXIT_WAIT)


def test_exits_in_lambdas_words() -> None:
    assert describe_exit(0) is None
    assert describe_exit(2) == "exit status 2"
    assert describe_exit(-9) == "signal: killed"
    assert describe_exit(-15) == "signal: terminated"
    assert describe_exit(-11) == "signal: segmentation fault"
    assert describe_exit(-10) == "signal: SIGUSR1"


@run
async def test_an_exit_is_reported_with_its_status() -> None:
    owner = Owner("exit 3")
    instance = owner.spawn()
    assert await owner.exit() == (instance, "exit status 3")
    assert instance.pid is not None
    await owner.pool.stop_all(1.0)


@run
async def test_a_clean_exit_is_reported_as_none() -> None:
    owner = Owner("exit 0")
    instance = owner.spawn()
    assert await owner.exit() == (instance, None)
    await owner.pool.stop_all(1.0)


@run
async def test_a_runtime_that_cannot_start_is_reported_as_an_exit() -> None:
    owner = Owner("unused")
    owner.config = dataclasses.replace(owner.config, command=["/nonexistent/runtime"])
    owner.pool = Pool(owner.config, lambda i, d: owner.exits.put_nowait((i, d)))
    instance = owner.spawn()
    exited, description = await owner.exit()
    assert exited is instance
    assert description is not None and "No such file" in description
    await owner.pool.stop_all(1.0)


@run
async def test_stop_sends_sigterm() -> None:
    owner = Owner("exec sleep 30")
    instance = owner.spawn()
    await until(lambda: instance.pid is not None)  # started in the background
    await owner.pool.stop(instance, grace=EXIT_WAIT)
    assert await owner.exit() == (instance, "signal: terminated")
    await owner.pool.stop_all(1.0)


def test_stop_kills_a_runtime_that_ignores_sigterm(tmp_path: Path) -> None:
    trapped = tmp_path / "trapped"

    async def body() -> None:
        # The runtime tells (by a file) that it ignores SIGTERM once the trap is set.
        owner = Owner(f"trap '' TERM; : > {trapped}; while :; do sleep 1; done")
        instance = owner.spawn()
        await until(trapped.exists)
        await owner.pool.stop(instance, grace=0.2)
        assert await owner.exit() == (instance, "signal: killed")
        await owner.pool.stop_all(1.0)

    asyncio.run(body())


@run
async def test_a_runtime_stopped_while_starting_is_killed_once_it_exists() -> None:
    owner = Owner("exec sleep 30")
    instance = owner.spawn()
    await owner.pool.stop(instance, grace=EXIT_WAIT)  # before its process exists
    assert await owner.exit() == (instance, "signal: killed")
    await owner.pool.stop_all(1.0)


@run
async def test_output_is_captured_for_the_instance() -> None:
    owner = Owner("echo one; echo two >&2")
    instance = owner.spawn()
    instance.output.start()
    await owner.exit()
    # All of it is in by the time the exit is reported (the pool drains the pipes).
    assert sorted(instance.output.stop().splitlines()) == [b"one", b"two"]
    await owner.pool.stop_all(1.0)


@run
async def test_stop_all_stops_every_runtime() -> None:
    owner = Owner("exec sleep 30")
    first, second = owner.spawn(), owner.spawn()
    await owner.pool.stop_all(EXIT_WAIT)
    exits = {await owner.exit(), await owner.exit()}
    assert exits == {(first, "signal: terminated"), (second, "signal: terminated")}


# -- the runtime prelaunched before the loop (PROACTIVE_INIT) --------------------------


def prelaunched(script: str) -> tuple[DaemonConfig, Prelaunched]:
    """`script` started as the first runtime before any event loop ran, and its config."""
    config = dataclasses.replace(
        daemon_config(["/bin/sh", "-c", script], {}), command=["/bin/sh", "-c", script]
    )
    started = prelaunch(config, "127.0.0.1:9")
    assert started is not None
    return config, started


def test_the_prelaunched_runtime_is_adopted_by_the_first_instance() -> None:
    config, started = prelaunched(
        'echo "early $AWS_LAMBDA_RUNTIME_API $AWS_LAMBDA_INITIALIZATION_TYPE"; '
        "read line; exit 4"  # stdin is /dev/null: exits at once after printing
    )

    async def body() -> None:
        owner = Owner("unused")
        owner.pool = Pool(config, lambda i, d: owner.exits.put_nowait((i, d)), started)
        instance = owner.spawn()
        # Taken over at once: the peer check needs the pid before the loop turns.
        assert instance.pid == started.pid
        assert instance.log_stream == started.log_stream
        instance.output.start()
        assert await owner.exit() == (instance, "exit status 4")
        # What it printed before being adopted waited in its pipe.
        assert instance.output.stop() == b"early 127.0.0.1:9 on-demand\n"
        await owner.pool.stop_all(1.0)

    asyncio.run(body())
    assert started.process.returncode == 4  # collected by the pool, not left a zombie


@pytest.mark.parametrize("slot", [1, "provisioned"])
def test_a_prelaunched_runtime_unfit_for_the_instance_is_ended(slot: int | str) -> None:
    config, started = prelaunched("exec sleep 30")

    async def body() -> None:
        owner = Owner("exec sleep 30")
        owner.pool = Pool(owner.config, lambda i, d: owner.exits.put_nowait((i, d)), started)
        instance = Instance(1 if slot == 1 else 0, "127.0.0.1:9", "stream")
        instance.provisioned = slot == "provisioned"
        owner.pool.spawn(instance)
        assert instance.pid != started.pid
        assert started.process.returncode == -9  # killed and collected at once
        await until(lambda: instance.pid is not None)
        await owner.pool.stop_all(EXIT_WAIT)
        assert await owner.exit() == (instance, "signal: terminated")

    asyncio.run(body())


def test_an_unclaimed_prelaunched_runtime_is_ended_at_shutdown() -> None:
    config, started = prelaunched("exec sleep 30")

    async def body() -> None:
        pool = Pool(config, lambda i, d: None, started)
        await pool.stop_all(1.0)

    asyncio.run(body())
    assert started.process.returncode == -9


def test_nothing_is_prelaunched_when_proactive_init_is_off_or_others_come_first(
    tmp_path: Path,
) -> None:
    base = daemon_config(["/bin/true"], {})
    extensions = tmp_path / "extensions"
    extensions.mkdir()
    (extensions / "agent").touch()
    for config in (
        dataclasses.replace(base, proactive_init=False),
        dataclasses.replace(base, provisioned_concurrency=1),
        dataclasses.replace(base, extensions_dir=str(extensions)),
    ):
        assert prelaunch(config, "127.0.0.1:9") is None
