"""Listening sockets, bound before anything heavy is imported.

One place turns "cannot listen" into a ``ConfigError`` naming the setting, for the
Invoke API (bound by the CLI at start-up) and the Runtime API (one socket per slot).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lambda_rapid.settings import ConfigError

if TYPE_CHECKING:
    from lambda_rapid.config import DaemonConfig


def listen_socket(host: str, port: int, settings: str) -> socket.socket:
    """A non-blocking listening TCP socket; a ConfigError naming `settings` on failure."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise ConfigError(f"cannot listen on {settings} {host}:{port}: {error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as error:
        sock.close()
        raise ConfigError(
            f"cannot listen on {settings} {host}:{port}: {error.strerror or error}"
        ) from None
    sock.setblocking(False)
    return sock


def bind_slots(config: DaemonConfig) -> list[socket.socket]:
    """One listening socket per slot (MAX_CONCURRENCY of them)."""
    sockets = []
    for slot in range(config.max_concurrency):
        # The first slot is where Lambda's runtimes look (9001); the others take free ports.
        port = config.runtime_api_port if slot == 0 else 0
        address = "RUNTIME_API_HOST:RUNTIME_API_PORT"
        sockets.append(listen_socket(config.runtime_api_host, port, address))
    return sockets


def slot_addresses(sockets: Sequence[socket.socket]) -> list[str]:
    """`host:port` of each slot, as runtimes receive it in AWS_LAMBDA_RUNTIME_API."""
    result = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        result.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return result
