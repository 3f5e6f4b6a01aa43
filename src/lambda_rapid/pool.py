"""The process pool: spawning, reaping and killing runtime processes.

Each instance runs in its own session (so its own process group) and gets its own
Runtime API address (a slot), which is how the daemon knows which instance is calling.
The pool is the only caller of ``os.killpg``. It tells its owner about every exit
through the ``on_exit`` callback, with the exit described in words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import cast

from lambda_rapid.config import DaemonConfig, instance_environ
from lambda_rapid.credentials import hand_over, switch_user
from lambda_rapid.instance import Instance, State
from lambda_rapid.output import STDERR, STDOUT, OutputPipe, open_output_pipe

logger = logging.getLogger(__name__)

ExitCallback = Callable[[Instance, str | None], None]


def describe_exit(returncode: int) -> str | None:
    """Lambda's wording for an exit: "exit status 1", "signal: killed"; None for 0."""
    if returncode == 0:
        return None
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"signal: {-returncode}"
        words = {
            "SIGKILL": "killed",
            "SIGTERM": "terminated",
            "SIGSEGV": "segmentation fault",
            "SIGABRT": "aborted",
            "SIGINT": "interrupt",
        }
        return f"signal: {words.get(name, name)}"
    return f"exit status {returncode}"


def reap_orphans(known: set[int]) -> None:
    """Reap exited children of this process that it did not start itself."""
    me = str(os.getpid()).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in known:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and fields[1] == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)


class InstanceProcess(asyncio.SubprocessProtocol):
    """Receives one runtime process's exit; its output comes through its OutputPipes."""

    def __init__(
        self,
        instance: Instance,
        pipes: tuple[OutputPipe, OutputPipe],
        on_exit: Callable[[InstanceProcess], None],
    ) -> None:
        self.instance = instance
        self.pipes = pipes
        self.on_exit = on_exit
        self.transport: asyncio.SubprocessTransport | None = None
        self.exited = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.SubprocessTransport subclasses.
        self.transport = cast(asyncio.SubprocessTransport, transport)
        # Known before the runtime can connect: the Runtime API's peer check needs it.
        self.instance.pid = self.transport.get_pid()

    def drain_output(self) -> None:
        for pipe in self.pipes:
            pipe.drain()

    def process_exited(self) -> None:
        assert self.transport is not None
        self.drain_output()
        if not self.exited.done():
            self.exited.set_result(self.transport.get_returncode())
        self.on_exit(self)


class Pool:
    """Owns runtime processes and the slots (Runtime API addresses) they use."""

    def __init__(
        self, config: DaemonConfig, slot_addresses: Sequence[str], on_exit: ExitCallback
    ) -> None:
        self._config = config
        self._free_slots = list(reversed(range(len(slot_addresses))))
        self._addresses = slot_addresses
        self._on_exit = on_exit
        self._processes: dict[Instance, InstanceProcess] = {}
        self._by_slot: dict[int, Instance] = {}
        self._starting: set[asyncio.Task[None]] = set()

    @property
    def size(self) -> int:
        return len(self._by_slot)

    @property
    def instances(self) -> list[Instance]:
        return list(self._by_slot.values())

    def instance_at(self, slot: int) -> Instance | None:
        return self._by_slot.get(slot)

    def spawn(self) -> Instance:
        """Start a new instance in a free slot; the process starts in the background."""
        slot = self._free_slots.pop()
        instance = Instance(slot, self._addresses[slot], self._log_stream_name())
        self._by_slot[slot] = instance
        task = asyncio.get_running_loop().create_task(self._start(instance))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)
        return instance

    def _log_stream_name(self) -> str:
        day = time.strftime("%Y/%m/%d", time.gmtime())
        return f"{day}/[{self._config.function_version}]{secrets.token_hex(16)}"

    async def _start(self, instance: Instance) -> None:
        env = instance_environ(self._config, instance.runtime_api, instance.log_stream)
        loop = asyncio.get_running_loop()

        def log_of() -> bytearray | None:
            return instance.log

        stdout, stdout_fd = await open_output_pipe(STDOUT, log_of)
        stderr, stderr_fd = await open_output_pipe(STDERR, log_of)
        hand_over(self._config.runtime_user, stdout_fd, stderr_fd)
        try:
            _, protocol = await loop.subprocess_exec(
                lambda: InstanceProcess(instance, (stdout, stderr), self._process_exited),
                *self._config.command,
                stdin=subprocess.DEVNULL,
                stdout=stdout_fd,
                stderr=stderr_fd,
                env=env,
                start_new_session=True,
                preexec_fn=switch_user(self._config.runtime_user),
            )
        except OSError as exc:
            logger.error("cannot start runtime %s: %s", self._config.command[0], exc)
            self._forget(instance)
            self._on_exit(instance, f"{exc.strerror or exc}")
            return
        finally:
            # The runtime holds the write ends now; ours would keep the pipes from closing.
            os.close(stdout_fd)
            os.close(stderr_fd)
        assert protocol.transport is not None
        instance.pid = protocol.transport.get_pid()
        self._processes[instance] = protocol
        if instance.state is State.DEAD:  # stopped while starting
            self.kill(instance)
        logger.debug("started instance %s", instance)

    def _process_exited(self, process: InstanceProcess) -> None:
        instance = process.instance
        returncode = process.transport.get_returncode() if process.transport else None
        # Leftover children of the runtime (its process group) must not outlive it.
        self._signal_group(instance, signal.SIGKILL)
        if process.transport is not None:
            process.transport.close()
        self._forget(instance)
        description = describe_exit(returncode if returncode is not None else -9)
        logger.debug("instance %s exited: %s", instance, description or "exit status 0")
        self._on_exit(instance, description)

    def _forget(self, instance: Instance) -> None:
        self._processes.pop(instance, None)
        if self._by_slot.get(instance.slot) is instance:
            del self._by_slot[instance.slot]
            self._free_slots.append(instance.slot)

    def _signal_group(self, instance: Instance, signum: signal.Signals) -> None:
        if instance.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(instance.pid, signum)

    def drain_output(self, instance: Instance) -> None:
        """Take in the output an instance has written so far (before its END line)."""
        process = self._processes.get(instance)
        if process is not None:
            process.drain_output()

    def kill(self, instance: Instance) -> None:
        """SIGKILL the instance's whole process group at once (timeouts, failed inits)."""
        self._signal_group(instance, signal.SIGKILL)

    async def stop(self, instance: Instance, grace: float) -> None:
        """SIGTERM the group, wait up to `grace` seconds, then SIGKILL it."""
        process = self._processes.get(instance)
        if process is None:
            return
        self._signal_group(instance, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.exited), grace)
        except TimeoutError:
            self._signal_group(instance, signal.SIGKILL)
            await process.exited

    async def stop_all(self, grace: float) -> None:
        """Stop every instance (shutdown), including any still being started."""
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
        await asyncio.gather(*(self.stop(i, grace) for i in list(self._processes)))
        if os.getpid() == 1:
            reap_orphans(self._known_pids())

    def _known_pids(self) -> set[int]:
        return {i.pid for i in self._processes if i.pid is not None}

    async def reap_orphans_forever(self, interval: float = 1.0) -> None:
        """As PID 1 (a container's entrypoint), reap the orphans the kernel hands us.

        Processes a runtime left behind are re-parented to PID 1; the event loop waits
        only for the runtimes it started, so without this they would stay zombies.
        """
        while True:
            await asyncio.sleep(interval)
            reap_orphans(self._known_pids())
