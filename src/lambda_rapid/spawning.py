"""How runtime processes start, and the first runtime started ahead of the daemon.

The daemon is a child subreaper, so what a runtime leaves behind is re-parented to it.
A new runtime process becomes the runtime's user, then gets SIGKILL from the kernel when
the daemon dies (`before_exec`).

`prelaunch` starts the first instance's runtime as soon as the config is read and its
Runtime API socket is open, before the event loop and the rest of the daemon are
imported (most of the daemon's start-up time): the runtime's own start-up overlaps the
daemon's. This is Lambda's proactive initialization of an on-demand instance
(PROACTIVE_INIT). The process pool adopts the process once the loop runs; whatever keeps
it from being adopted ends it. Only the standard library's light modules are imported
here: asyncio would defeat the purpose.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lambda_rapid.config import instance_environ
from lambda_rapid.credentials import hand_over, switch_user

if TYPE_CHECKING:
    from lambda_rapid.config import DaemonConfig

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# The C library, as already loaded into this process (finding it by name runs ldconfig).
_LIBC = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> bool:
    """Have orphaned descendants re-parented to this process (Linux 3.4+)."""
    return bool(_LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def die_with(parent: int) -> None:
    """In a new child before exec: SIGKILL when `parent` dies (if it already has, exit)."""
    # The signal follows the thread that forked, which is the event loop's thread.
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def before_exec(parent: int, become: Callable[[], None] | None) -> None:
    """In a new child: become the runtime's user, then tie its life to the daemon's."""
    if become is not None:
        become()
    die_with(parent)  # after any change of user, which would clear it


def log_stream_name(version: str) -> str:
    """A CloudWatch-style log stream name for a new instance."""
    day = time.strftime("%Y/%m/%d", time.gmtime())
    # os.urandom rather than secrets: the same bytes without importing hashlib (~0.8 MB).
    return f"{day}/[{version}]{os.urandom(16).hex()}"


class Prelaunched:
    """A runtime process started before the event loop, waiting to be adopted.

    Holds the process (its `Popen` keeps its exit status from being collected by anyone
    else), a pidfd that becomes readable when it exits, and the read ends of its stdout
    and stderr pipes.
    """

    __slots__ = ("process", "pidfd", "stdout", "stderr", "log_stream", "started_at")

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        pidfd: int,
        pipes: tuple[int, int],
        log_stream: str,
        started_at: float,
    ) -> None:
        self.process = process
        self.pidfd = pidfd
        self.stdout, self.stderr = pipes
        self.log_stream = log_stream
        self.started_at = started_at

    @property
    def pid(self) -> int:
        return self.process.pid

    def discard(self) -> None:
        """End it unadopted: kill its process group, collect its exit, close its fds."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for fd in (self.pidfd, self.stdout, self.stderr):
            if fd >= 0:
                os.close(fd)


def prelaunch(config: DaemonConfig, runtime_api: str) -> Prelaunched | None:
    """Start the runtime of the first instance (slot 0, at `runtime_api`), or None when it
    is not to start now: proactive init is off, provisioned instances are configured,
    external extensions may have to start first, or the process cannot be watched or
    started here (the pool then starts it, and reports why it could not)."""
    if not config.proactive_init or config.provisioned_concurrency or not hasattr(os, "pidfd_open"):
        return None
    if has_entries(config.extensions_dir):
        return None  # extensions start before the runtime: the pool's usual path
    become_subreaper()
    log_stream = log_stream_name(config.function_version)
    env = instance_environ(config, 0, runtime_api, log_stream)
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    hand_over(config.runtime_user, stdout_write, stderr_write)
    setup = functools.partial(before_exec, os.getpid(), switch_user(config.runtime_user))
    started_at = time.monotonic()
    try:
        process = subprocess.Popen(
            config.command,
            stdin=subprocess.DEVNULL,
            stdout=stdout_write,
            stderr=stderr_write,
            env=env,
            start_new_session=True,
            preexec_fn=setup,
        )
    except (OSError, subprocess.SubprocessError):
        os.close(stdout_read)
        os.close(stderr_read)
        return None
    finally:
        # The process holds the write ends now; ours would keep the pipes from closing.
        os.close(stdout_write)
        os.close(stderr_write)
    started = Prelaunched(process, -1, (stdout_read, stderr_read), log_stream, started_at)
    try:
        started.pidfd = os.pidfd_open(process.pid)
    except OSError:  # a kernel before 5.3: no way to watch it without the loop's help
        started.discard()
        return None
    return started


def has_entries(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return any(True for _ in entries)
    except OSError:
        return False
