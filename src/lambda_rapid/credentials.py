"""Credentials out of the runtimes' reach.

Owns everything that keeps the broker's password from a function, even one running as
root: secret files (``AMQP_PASSWORD_FILE``, ``AMQP_URI_FILE``), the in-place masking of
the password in the kernel's copies of this process's argv and environ
(``/proc/<pid>/cmdline`` and ``environ``; the single executable's launcher scrubs its
own), the daemon made non-dumpable with ``CAP_SYS_PTRACE`` kept from the runtimes it
starts (so its memory and environment are out of their reach), and runtimes started as
``RUNTIME_USER``.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lambda_rapid.config import AmqpConfig

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_SYS_PTRACE = 19
CAPABILITY_VERSION_3 = 0x20080522
# /proc/<pid>/stat fields 48-51 (arg_start, arg_end, env_start, env_end), counted after
# the command name, which is field 2 and the only one that may hold spaces.
ARG_START_INDEX = 45


def read_secret_file(path: str) -> str:
    """The secret in a file (Docker and Kubernetes secrets), without its final newline."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read the file: {reason or error}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ValueError("the file is empty")
    return secret


# -- masking the kernel's copies of argv and environ ------------------------------------


def needles(secret: str) -> list[bytes]:
    """The forms a password takes in argv and environ: as is, and percent-encoded."""
    from urllib.parse import quote  # only with a broker password: off the start-up path

    forms = {secret, quote(secret, safe=""), quote(secret)}
    return sorted((form.encode() for form in forms if form), key=len, reverse=True)


def mask(data: bytes, secrets: Iterable[bytes]) -> bytes:
    """`data` with every occurrence of every secret overwritten by as many '*'."""
    for secret in secrets:
        data = data.replace(secret, b"*" * len(secret))
    return data


def _areas(pid: int | str) -> list[tuple[int, int]]:
    """The (start, end) addresses of a process's argv and environ strings."""
    with open(f"/proc/{pid}/stat", "rb") as file:
        fields = file.read().rsplit(b")", 1)[1].split()
    arg_start, arg_end, env_start, env_end = (
        int(field) for field in fields[ARG_START_INDEX : ARG_START_INDEX + 4]
    )
    return [(arg_start, arg_end), (env_start, env_end)]


def mask_process(pid: int | str, secrets: list[bytes]) -> None:
    """Overwrite the secrets where the kernel reads /proc/<pid>/cmdline and environ.

    The strings keep their places (libc's environ points into them); only the bytes of a
    secret change. Raises OSError when the process's memory is out of our reach.
    """
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as memory:
        for start, end in _areas(pid):
            if not 0 < start < end:
                continue
            memory.seek(start)
            data = memory.read(end - start)
            masked = mask(data, secrets)
            if masked != data:
                memory.seek(start)
                memory.write(masked)


def conceal(secrets: list[bytes]) -> None:
    """Mask the secrets in this process's argv and environ."""
    if not secrets:
        return
    try:
        mask_process("self", secrets)
    except OSError as error:  # no /proc here: nothing of ours to read there either
        import logging  # only here: the daemon's first runtime starts before logging loads

        logging.getLogger(__name__).warning("cannot mask the broker password: %s", error)


# -- keeping the daemon's memory from runtimes ------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def seal(runtimes: bool) -> None:
    """Make this process non-dumpable; with runtimes, keep CAP_SYS_PTRACE from them.

    A non-dumpable process's environ, mem, maps and fds are readable only with
    CAP_SYS_PTRACE, which the runtimes' processes then cannot hold, even as root: it
    leaves the inheritable, ambient and bounding sets (dropping it from the bounding set
    needs CAP_SETPCAP, which root has in a default container).
    """
    libc = _libc()
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if not runtimes:
        return
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    libc.prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0)
    header = _CapHeader(CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) == 0 and data[0].inheritable & (1 << CAP_SYS_PTRACE):
        data[0].inheritable &= ~(1 << CAP_SYS_PTRACE)
        libc.capset(ctypes.byref(header), data)


def conceal_password(amqp: AmqpConfig | None) -> None:
    """Mask the broker password where /proc shows this process's argv and environ."""
    secrets: list[bytes] = []
    if amqp is not None:
        from urllib.parse import unquote, urlsplit  # AMQP only: off the start-up path

        password = urlsplit(amqp.url).password
        secrets = needles(unquote(password)) if password else []
    conceal(secrets)


# -- runtimes as another user -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuntimeUser:
    """The user, group and supplementary groups runtimes run as (RUNTIME_USER)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def _user_id(text: str) -> tuple[int, pwd.struct_passwd | None]:
    try:
        entry = pwd.getpwnam(text) if not text.isdigit() else pwd.getpwuid(int(text))
    except KeyError:
        if not text.isdigit():
            raise ValueError(f"no user named {text!r} (give a number: uid[:gid])") from None
        return int(text), None
    return entry.pw_uid, entry


def _group_id(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no group named {text!r}") from None


def parse_runtime_user(text: str) -> RuntimeUser:
    """`name`, `uid`, `name:group` or `uid:gid`; a uid unknown to /etc/passwd is fine."""
    user, _, group = text.strip().partition(":")
    if not user:
        raise ValueError("must be a user name or uid, optionally :group or :gid")
    uid, entry = _user_id(user)
    default_gid = entry.pw_gid if entry is not None else uid
    gid = _group_id(group) if group else default_gid
    groups = tuple(os.getgrouplist(entry.pw_name, gid)) if entry is not None else (gid,)
    if os.geteuid() != 0 and uid != os.geteuid():
        raise ValueError("starting runtimes as another user needs the daemon to run as root")
    return RuntimeUser(uid, gid, groups)


def hand_over(user: RuntimeUser | None, *pipes: int) -> None:
    """Give the runtime's output pipes to `user`.

    A pipe belongs to its creator with mode 0600: without this a runtime running as another
    user could not reopen /dev/stdout or /dev/stderr (as bash's `> /dev/stderr` does).
    """
    if user is not None:
        for fd in pipes:
            os.fchown(fd, user.uid, user.gid)


def switch_user(user: RuntimeUser | None) -> Callable[[], None] | None:
    """The function a runtime's child process runs before exec to become `user`."""
    if user is None:
        return None

    def become_user() -> None:
        os.setgroups(list(user.groups))
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)

    return become_user
