"""Which process is on the other end of a loopback TCP connection (Linux /proc).

The Runtime API serves an instance's own processes only. For a new connection this
module finds the inode of the client's socket (sock_diag netlink, an exact lookup by
the 4-tuple; /proc/net/tcp{,6} when netlink is unavailable) and looks for it among the
file descriptors of the instance's processes: the runtime and its live descendants
(found through /proc/<pid>/task/<tid>/children, so a descendant in its own session
still counts while its parent lives), and the orphans of its session that were
re-parented to the daemon. Nothing outside that set is ever scanned.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

SOCK_DIAG_BY_FAMILY = 20
NETLINK_SOCK_DIAG = 4
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
ALL_STATES = 0xFFFFFFFF
NO_COOKIE = 0xFFFFFFFF
# nlmsghdr, then inet_diag_req_v2: family, protocol, ext, pad, states, then the socket
# id: ports (big-endian), two 16-byte addresses, interface and a two-word cookie.
HEADER = struct.Struct("=IHHII")
SELECT = struct.Struct("=BBBxI")
PORTS = struct.Struct(">HH")
TAIL = struct.Struct("=III")
REQUEST_SIZE = HEADER.size + SELECT.size + PORTS.size + 32 + TAIL.size
INODE_OFFSET = 16 + 68  # nlmsghdr + inet_diag_msg up to idiag_inode
MAX_PROCESSES = 256  # bounds the work a fork-happy stranger can cause

Address = tuple[str, int]


def proc_available() -> bool:
    return os.path.exists("/proc/self/fd")


V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d


def _family_and_bytes(host: str) -> tuple[int, bytes]:
    """The family and the 16 address bytes sock_diag wants (an IPv4 address, or an IPv6
    one that maps it, as IPv4 padded with zeros) of a socket address's host."""
    host = host.split("%", 1)[0]
    try:
        return socket.AF_INET, socket.inet_pton(socket.AF_INET, host).ljust(16, b"\0")
    except OSError:
        packed = socket.inet_pton(socket.AF_INET6, host)
    if packed.startswith(V4_MAPPED):
        return socket.AF_INET, packed[12:].ljust(16, b"\0")
    return socket.AF_INET6, packed


class SocketFinder:
    """Finds the inode of the socket at the client end of an accepted connection."""

    def __init__(self) -> None:
        self._netlink: socket.socket | None = None
        self._sequence = 0
        with contextlib.suppress(OSError):
            self._netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None

    def client_inode(self, client: Address, server: Address) -> int | None:
        """The inode of the socket bound to `client` and connected to `server`."""
        if self._netlink is not None:
            with contextlib.suppress(OSError):
                return self._by_netlink(client, server)
        return by_proc_net(client, server)

    def _by_netlink(self, client: Address, server: Address) -> int | None:
        assert self._netlink is not None
        family, source = _family_and_bytes(client[0])
        _, destination = _family_and_bytes(server[0])
        self._sequence += 1
        message = b"".join(
            (
                HEADER.pack(REQUEST_SIZE, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, self._sequence, 0),
                SELECT.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES),
                PORTS.pack(client[1], server[1]),
                source,
                destination,
                TAIL.pack(0, NO_COOKIE, NO_COOKIE),
            )
        )
        self._netlink.send(message)
        while True:
            answer = self._netlink.recv(4096)
            _, kind, _, sequence, _ = HEADER.unpack_from(answer)
            if sequence != self._sequence:
                continue  # a late answer to an earlier question
            if kind == NLMSG_ERROR or len(answer) < INODE_OFFSET + 4:
                return None
            (inode,) = struct.unpack_from("=I", answer, INODE_OFFSET)
            return int(inode) or None


def _proc_net_address(address: Address) -> str:
    family, packed = _family_and_bytes(address[0])
    if family == socket.AF_INET:
        text = struct.pack("=I", *struct.unpack(">I", packed[:4])).hex().upper()
    else:
        words = struct.unpack(">4I", packed)
        text = struct.pack("=4I", *words).hex().upper()
    return f"{text}:{address[1]:04X}"


def by_proc_net(client: Address, server: Address) -> int | None:
    """The client socket's inode from /proc/net/tcp or tcp6 (slower: reads the table)."""
    family, _ = _family_and_bytes(client[0])
    table = "/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6"
    local, remote = _proc_net_address(client), _proc_net_address(server)
    try:
        with open(table, "rb") as lines:
            for line in lines:
                fields = line.split()
                if fields[1].decode() == local and fields[2].decode() == remote:
                    return int(fields[9]) or None
    except (OSError, IndexError, ValueError):
        pass
    return None


def children_of(pid: int) -> list[int]:
    """Live children of every thread of `pid` (a thread's children are listed per thread)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as children:
                found.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return found


def session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[4])
    except (OSError, IndexError, ValueError):
        return None


def holds_socket(pid: int, link: str) -> bool:
    """Whether one of `pid`'s file descriptors is the socket `link` ("socket:[inode]")."""
    directory = f"/proc/{pid}/fd/"
    try:
        fds = os.listdir(directory)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(directory + fd) == link:
                return True
        except OSError:
            continue
    return False


def tree_holds_socket(root: int, inode: int, roots: frozenset[int]) -> bool:
    """Whether a process of the instance whose runtime is `root` holds socket `inode`.

    `roots` are the runtimes of every instance: orphans re-parented to the daemon that
    are not runtimes themselves count for `root` when they are still in its session.
    """
    link = f"socket:[{inode}]"
    if _subtree_holds(root, link):
        return True
    for orphan in children_of(os.getpid()):
        if orphan not in roots and session_of(orphan) == root and _subtree_holds(orphan, link):
            return True
    return False


def _subtree_holds(root: int, link: str) -> bool:
    pending, seen = [root], 0
    while pending and seen < MAX_PROCESSES:
        pid = pending.pop()
        seen += 1
        if holds_socket(pid, link):
            return True
        pending.extend(children_of(pid))
    return False


class PeerCheck:
    """Decides whether a Runtime API client is one of an instance's processes."""

    def __init__(self) -> None:
        self._finder = SocketFinder()

    def close(self) -> None:
        self._finder.close()

    def belongs(self, client: Address, server: Address, root: int, roots: frozenset[int]) -> bool:
        inode = self._finder.client_inode(client, server)
        return inode is not None and tree_holds_socket(root, inode, roots)
