"""The process pool: spawning, reaping and killing runtime processes.

Each instance runs in its own session (so its own process group) with the Runtime API
address of its slot (the dispatcher owns the slots), which is how the daemon knows which
instance is calling. The pool owns processes only, and is the only caller of
``os.killpg``. It tells its owner about every exit through the ``on_exit`` callback it
was built with, with the exit described in words.

Nothing a runtime starts outlives it: the daemon is a child subreaper, so orphans are
re-parented to it (and reaped by it) even when it is not PID 1; an instance that stops
or dies takes its whole tree with it, descendants in their own sessions included
(found through /proc while their parents live, or remembered from an earlier look);
and every runtime gets SIGKILL from the kernel if the daemon dies, even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar, cast

from lambda_rapid.config import DaemonConfig, instance_environ
from lambda_rapid.credentials import hand_over, switch_user
from lambda_rapid.extensions import ExtensionSet, extension_environ
from lambda_rapid.instance import ExitCallback, Instance, State
from lambda_rapid.output import (
    STDERR,
    STDOUT,
    LogCapture,
    connect_output_pipe,
    open_output_pipe,
)
from lambda_rapid.peers import MAX_PROCESSES, children_of, session_of
from lambda_rapid.spawning import Prelaunched, become_subreaper, before_exec

logger = logging.getLogger(__name__)

P = TypeVar("P", bound=asyncio.SubprocessProtocol)


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


def process_state(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def tree_of(root: int) -> list[int]:
    """`root` and its live descendants (those whose parents still live)."""
    found: list[int] = []
    pending = [root]
    while pending and len(found) < MAX_PROCESSES:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children_of(pid))
    return found


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class InstanceProcess(asyncio.SubprocessProtocol):
    """Receives one runtime process's exit; its output comes through its instance's pipes."""

    def __init__(
        self,
        instance: Instance,
        on_exit: Callable[[InstanceProcess], None],
    ) -> None:
        self.instance = instance
        self.on_exit = on_exit
        self.transport: asyncio.SubprocessTransport | None = None
        self.exited = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.SubprocessTransport subclasses.
        self.transport = cast(asyncio.SubprocessTransport, transport)
        # Known before the runtime can connect: the Runtime API's peer check needs it.
        self.instance.pid = self.transport.get_pid()

    def process_exited(self) -> None:
        assert self.transport is not None
        self.instance.output.drain()
        if not self.exited.done():
            self.exited.set_result(self.transport.get_returncode())
        self.on_exit(self)


class AdoptedProcess(asyncio.SubprocessTransport):
    """The transport of a prelaunched runtime: its exit is seen through its pidfd."""

    def __init__(self, prelaunched: Prelaunched, protocol: asyncio.SubprocessProtocol) -> None:
        super().__init__()
        self._process = prelaunched.process
        self._pidfd = prelaunched.pidfd
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._pidfd, self._exited)

    def get_pid(self) -> int:
        return self._process.pid

    def get_returncode(self) -> int | None:
        return self._process.returncode

    def _exited(self) -> None:
        self.close()
        self._process.wait()  # at once: it has exited
        self._protocol.process_exited()

    def close(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def is_closing(self) -> bool:
        return self._pidfd < 0


class ExtensionProcess(asyncio.SubprocessProtocol):
    """Receives one external extension's exit; its output comes through its own pipes."""

    def __init__(self, instance: Instance, name: str, on_exit: Callable[[ExtensionProcess], None]):
        self.instance = instance
        self.name = name
        self.on_exit = on_exit
        self.pid: int | None = None
        self.transport: asyncio.SubprocessTransport | None = None
        self.exited = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.SubprocessTransport, transport)
        self.pid = self.transport.get_pid()

    def process_exited(self) -> None:
        assert self.transport is not None
        if not self.exited.done():
            self.exited.set_result(self.transport.get_returncode())
        self.on_exit(self)


class Pool:
    """Owns runtime processes: starting, signalling, reaping them and their orphans."""

    def __init__(
        self, config: DaemonConfig, on_exit: ExitCallback, prelaunched: Prelaunched | None = None
    ) -> None:
        self._config = config
        self._on_exit = on_exit
        # The first instance's runtime, started before the loop: the first spawn adopts it.
        self._prelaunched = prelaunched
        self._processes: dict[Instance, InstanceProcess] = {}
        self._starting: set[asyncio.Task[None]] = set()
        self._launching: set[Instance] = set()
        self._doomed: set[Instance] = set()  # stopped while being started
        self._me = os.getpid()
        self.subreaper = become_subreaper()
        self._reaper: asyncio.Task[None] | None = None
        # Processes seen in an instance's tree, so that they can be found once orphaned.
        self._members: dict[int, Instance] = {}
        self._extensions: dict[int, ExtensionProcess] = {}  # by pid

    def start(self) -> None:
        """Reap orphans in the background when they come to the daemon."""
        if os.getpid() == 1 or self.subreaper:
            self._reaper = asyncio.get_running_loop().create_task(self.reap_orphans_forever())

    def spawn(self, instance: Instance) -> None:
        """Start the instance's runtime process in the background."""
        prelaunched = self._claim_prelaunched(instance)
        work = self._start(instance) if prelaunched is None else self._adopt(instance, prelaunched)
        task = asyncio.get_running_loop().create_task(work)
        self._starting.add(task)
        self._launching.add(instance)
        task.add_done_callback(self._starting.discard)

    def _claim_prelaunched(self, instance: Instance) -> Prelaunched | None:
        """The prelaunched process, if it is this instance's runtime (else it is ended).

        Its pid is the instance's from now on: the Runtime API's peer check needs it as
        soon as the loop runs, and the process may have connected long ago.
        """
        prelaunched, self._prelaunched = self._prelaunched, None
        if prelaunched is None:
            return None
        extensions = instance.extensions
        if instance.slot != 0 or instance.provisioned or (extensions and extensions.to_start):
            prelaunched.discard()  # not started as this instance would be
            return None
        instance.pid = prelaunched.pid
        instance.log_stream = prelaunched.log_stream
        instance.spawned_at = instance.idle_since = prelaunched.started_at
        return prelaunched

    async def _adopt(self, instance: Instance, prelaunched: Prelaunched) -> None:
        """Take over the prelaunched runtime: its output pipes, then its exit."""
        capture = instance.output
        capture.attach(
            await connect_output_pipe(prelaunched.stdout, STDOUT, capture),
            await connect_output_pipe(prelaunched.stderr, STDERR, capture),
        )
        protocol = InstanceProcess(instance, self._process_exited)
        protocol.connection_made(AdoptedProcess(prelaunched, protocol))
        self._started(instance, protocol)

    async def _start(self, instance: Instance) -> None:
        env = instance_environ(
            self._config, instance.slot, instance.runtime_api, instance.log_stream
        )
        if instance.provisioned:
            env["AWS_LAMBDA_INITIALIZATION_TYPE"] = "provisioned-concurrency"
        extensions = instance.extensions
        if extensions is not None and extensions.to_start:
            await self._start_extensions(instance, extensions, env)
            if instance.state is not State.STARTING or instance in self._doomed:
                self._launching.discard(instance)
                self._doomed.discard(instance)
                self._on_exit(instance, None)  # init failed: its runtime never starts
                return
        try:
            protocol = await self._exec(
                lambda: InstanceProcess(instance, self._process_exited),
                self._config.command,
                env,
                instance.output,
            )
        except OSError as exc:
            logger.error("cannot start runtime %s: %s", self._config.command[0], exc)
            self._launching.discard(instance)
            self._doomed.discard(instance)
            self._on_exit(instance, f"{exc.strerror or exc}")
            return
        self._started(instance, protocol)

    def _started(self, instance: Instance, protocol: InstanceProcess) -> None:
        assert protocol.transport is not None
        instance.pid = protocol.transport.get_pid()
        self._processes[instance] = protocol
        self._launching.discard(instance)
        if instance in self._doomed:  # stopped while starting
            self._doomed.discard(instance)
            self.kill(instance)
        logger.debug("started instance %s", instance)

    async def _exec(
        self,
        protocol_factory: Callable[[], P],
        argv: Sequence[str],
        env: dict[str, str],
        capture: LogCapture,
    ) -> P:
        """Start one process of an instance: own session, output into `capture`."""
        stdout, stdout_fd = await open_output_pipe(STDOUT, capture)
        stderr, stderr_fd = await open_output_pipe(STDERR, capture)
        capture.attach(stdout, stderr)
        hand_over(self._config.runtime_user, stdout_fd, stderr_fd)
        try:
            _, protocol = await asyncio.get_running_loop().subprocess_exec(
                protocol_factory,
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout_fd,
                stderr=stderr_fd,
                env=env,
                start_new_session=True,
                preexec_fn=functools.partial(
                    before_exec, self._me, switch_user(self._config.runtime_user)
                ),
            )
        finally:
            # The process holds the write ends now; ours would keep the pipes from closing.
            os.close(stdout_fd)
            os.close(stderr_fd)
        return protocol

    async def _start_extensions(
        self, instance: Instance, extensions: ExtensionSet, runtime_env: dict[str, str]
    ) -> None:
        """Start the external extensions; return once each registered or exited."""
        env = extension_environ(runtime_env)
        for path in extensions.to_start:
            await self._start_extension(instance, extensions, path, env)
        limit = self._config.extensions_init_limit
        try:
            await asyncio.wait_for(extensions.registered.wait(), limit)
        except TimeoutError:
            logger.warning("extensions of %s did not all register: init failed", instance)
            extensions.registration_timed_out(limit)

    async def _start_extension(
        self, instance: Instance, extensions: ExtensionSet, path: str, env: dict[str, str]
    ) -> None:
        name = os.path.basename(path)
        extensions.expect(name)
        try:
            protocol = await self._exec(
                lambda: ExtensionProcess(instance, name, self._extension_exited),
                [path],
                env,
                extensions.output(name),
            )
        except OSError as exc:
            logger.error("cannot start extension %s: %s", path, exc)
            extensions.process_exited(name, f"{exc.strerror or exc}")
            return
        assert protocol.pid is not None
        self._extensions[protocol.pid] = protocol
        extensions.started(name, protocol.pid)

    def _extension_exited(self, process: ExtensionProcess) -> None:
        if process.transport is not None:
            process.transport.close()
        returncode = process.transport.get_returncode() if process.transport else None
        if process.pid is not None:
            self._extensions.pop(process.pid, None)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # what it started goes with it
        description = describe_exit(returncode if returncode is not None else -9)
        extensions = process.instance.extensions
        if extensions is not None:
            extensions.process_exited(process.name, description)

    def _process_exited(self, process: InstanceProcess) -> None:
        instance = process.instance
        returncode = process.transport.get_returncode() if process.transport else None
        if process.transport is not None:
            process.transport.close()
        self._processes.pop(instance, None)
        # Whatever the runtime started must not outlive it, in its session or not.
        self._signal_group(instance, signal.SIGKILL)
        kill_all(self._leftovers_of(instance))
        description = describe_exit(returncode if returncode is not None else -9)
        logger.debug("instance %s exited: %s", instance, description or "exit status 0")
        self._on_exit(instance, description)

    def _roots(self) -> set[int]:
        roots = {i.pid for i in self._processes if i.pid is not None}
        roots.update(self._extensions)
        return roots

    def _orphans(self) -> list[int]:
        """Children of the daemon that are not runtimes: descendants re-parented to it."""
        roots = self._roots()
        return [pid for pid in children_of(self._me) if pid not in roots]

    def _tree(self, instance: Instance) -> list[int]:
        """Every process of a live instance the daemon can find, remembered for later."""
        roots = instance.roots()
        found = [pid for root in roots for pid in tree_of(root)]
        for orphan in self._orphans():
            if self._members.get(orphan) is instance or session_of(orphan) in roots:
                found.extend(tree_of(orphan))
        for pid in found:
            self._members[pid] = instance
        return found

    def _leftovers_of(self, instance: Instance) -> list[int]:
        """The orphans of an exited instance: those not found in a live instance's tree."""
        claimed: set[int] = set()
        for other in list(self._processes):
            claimed.update(self._tree(other))
        leftovers = []
        for orphan in self._orphans():
            if orphan not in claimed:
                leftovers.extend(tree_of(orphan))
        for pid in [p for p, owner in self._members.items() if owner is instance]:
            del self._members[pid]
        return leftovers

    def _signal_group(self, instance: Instance, signum: signal.Signals) -> None:
        if instance.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(instance.pid, signum)

    def _extension_processes(self, instance: Instance) -> list[ExtensionProcess]:
        if instance.extensions is None:
            return []
        return [p for p in self._extensions.values() if p.instance is instance]

    def kill(self, instance: Instance) -> None:
        """SIGKILL the instance's processes at once (timeouts, failed inits)."""
        self._signal(instance, signal.SIGKILL)

    def _signal(self, instance: Instance, signum: signal.Signals) -> None:
        """Signal the instance's process group and every process found in its tree."""
        self._signal_group(instance, signum)
        for pid in [p.pid for p in self._extension_processes(instance) if p.pid is not None]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signum)
        if instance.roots() and (instance in self._processes or instance.extensions):
            for pid in self._tree(instance):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)

    async def stop(self, instance: Instance, grace: float) -> None:
        """SIGTERM its processes, wait up to `grace` seconds, then SIGKILL them."""
        process = self._processes.get(instance)
        if instance in self._launching:
            self._doomed.add(instance)  # killed as soon as its process exists
        exits = [p.exited for p in self._extension_processes(instance)]
        if process is not None:
            exits.append(process.exited)
        if not exits:
            return
        self._signal(instance, signal.SIGTERM)
        _, running = await asyncio.wait([asyncio.shield(e) for e in exits], timeout=grace)
        if running:
            self._signal(instance, signal.SIGKILL)
            await asyncio.gather(*exits)

    async def stop_all(self, grace: float) -> None:
        """Stop every instance (shutdown), including any still being started."""
        if self._reaper is not None:
            self._reaper.cancel()
        if self._prelaunched is not None:  # never claimed: stopped before the first spawn
            self._prelaunched.discard()
            self._prelaunched = None
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
        instances = set(self._processes) | {p.instance for p in self._extensions.values()}
        await asyncio.gather(*(self.stop(i, grace) for i in instances))
        orphans = self._orphans()
        kill_all(orphans)
        for _ in range(20):  # killed processes become zombies within moments
            if not self._reap(orphans):
                break
            await asyncio.sleep(0.05)

    def _reap(self, pids: Iterable[int]) -> list[int]:
        """Reap those of `pids` that are zombies; the ones still alive."""
        living = []
        for pid in pids:
            state = process_state(pid)
            if state == b"Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            elif state is not None:
                living.append(pid)
        return living

    async def reap_orphans_forever(self, interval: float = 1.0) -> None:
        """Reap the orphans re-parented to the daemon (a subreaper, or PID 1).

        The event loop waits only for the runtimes it started; without this the
        processes they leave behind would stay zombies. Runtimes are never waited for
        here, and nothing is while one is being started (its pid is not known yet).
        """
        while True:
            await asyncio.sleep(interval)
            if not self._starting:
                self._reap(self._orphans())
                self._forget_gone_members()

    def _forget_gone_members(self) -> None:
        for pid in [p for p in self._members if process_state(p) in (None, b"Z")]:
            del self._members[pid]
