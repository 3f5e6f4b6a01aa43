"""Listening sockets, bound before anything heavy is imported.

One place turns "cannot listen" into a ``ConfigError`` naming the setting, for the
Invoke API (bound by the CLI at start-up) and the Runtime API (one socket per slot).
"""

from __future__ import annotations

import socket

from lambda_rapid.settings import ConfigError


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
