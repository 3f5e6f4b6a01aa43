"""How the Runtime API's peer check names the two ends of a connection to the kernel."""

from __future__ import annotations

import os
import socket

import pytest

from lambda_rapid.peers import SocketFinder, _family_and_bytes, by_proc_net


@pytest.mark.parametrize(
    ("host", "family", "packed"),
    [
        ("127.0.0.1", socket.AF_INET, bytes([127, 0, 0, 1]) + bytes(12)),
        ("::ffff:127.0.0.2", socket.AF_INET, bytes([127, 0, 0, 2]) + bytes(12)),
        ("::1", socket.AF_INET6, bytes(15) + b"\x01"),
        ("fe80::1%lo", socket.AF_INET6, b"\xfe\x80" + bytes(13) + b"\x01"),
    ],
)
def test_addresses_as_the_kernel_tables_hold_them(host: str, family: int, packed: bytes) -> None:
    assert _family_and_bytes(host) == (family, packed)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_client_socket_of_a_loopback_connection_is_found(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        with socket.socket(family) as client:
            client.connect(server.getsockname())
            accepted, peer = server.accept()
            with accepted:
                link = os.readlink(f"/proc/self/fd/{client.fileno()}")  # socket:[INODE]
                inode = int(link.removeprefix("socket:[").removesuffix("]"))
                mine, theirs = peer[:2], accepted.getsockname()[:2]
                finder = SocketFinder()
                try:
                    assert finder.client_inode(mine, theirs) == inode
                finally:
                    finder.close()
                assert by_proc_net(mine, theirs) == inode
