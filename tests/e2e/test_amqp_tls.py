"""The daemon on amqps://: its connection, deliveries tapped from the socket included,
runs over TLS. The broker here listens in plain text only, so a TLS terminator on a
loopback port (with a certificate made for the test) stands between the daemon and it;
clients publish to the broker directly."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.broker import (
    AMQP_HOST,
    AMQP_PORT,
    RECONNECT,
    Names,
    amqp_daemon,
    broker_url,
    header,
    names,
    pika_rpc,
)
from tests.e2e.conftest import free_port

__all__ = ["amqp_daemon", "broker_url", "names"]


@dataclass
class TlsTerminator:
    """Accepts TLS on `port` and passes the plain bytes to the broker, both ways."""

    port: int
    cafile: Path
    accepted: int = 0  # TLS handshakes completed
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def run(self, context: ssl.SSLContext, ready: threading.Event) -> None:
        self.loop.create_task(self.serve(context, ready))
        self.loop.run_forever()

    async def serve(self, context: ssl.SSLContext, ready: threading.Event) -> None:
        server = await asyncio.start_server(self.pipe, "127.0.0.1", self.port, ssl=context)
        ready.set()
        async with server:
            await server.serve_forever()

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        broker_reader, broker_writer = await asyncio.open_connection(AMQP_HOST, AMQP_PORT)
        try:
            await asyncio.gather(copy(reader, broker_writer), copy(broker_reader, writer))
        finally:
            writer.close()
            broker_writer.close()

    async def close(self) -> None:
        """Cancel every connection's copying and the server, and wait for them."""
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        sink.close()


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def terminator(tmp_path: Path, broker_url: str) -> Iterator[TlsTerminator]:
    cert, key = certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    proxy = TlsTerminator(free_port(), cert)
    ready = threading.Event()
    thread = threading.Thread(target=proxy.run, args=(context, ready), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield proxy
    asyncio.run_coroutine_threadsafe(proxy.close(), proxy.loop).result(10)
    proxy.loop.call_soon_threadsafe(proxy.loop.stop)
    thread.join(10)
    proxy.loop.close()


def amqps_uri(proxy: TlsTerminator) -> str:
    return f"amqps://guest:guest@127.0.0.1:{proxy.port}/?cafile={proxy.cafile}&{RECONNECT}"


def test_rpc_over_tls_small_and_many_frames(
    terminator: TlsTerminator, names: Names, amqp_daemon: Any
) -> None:
    name = names.function()
    amqp_daemon(name, uri=amqps_uri(terminator))
    assert terminator.accepted >= 1  # the daemon's connection is the terminator's
    props, body = pika_rpc(names.url, name, {"over": "tls"})
    assert json.loads(body) == {"over": "tls"}
    assert header(props.headers, "X-Amz-Function-Error") is None
    # A request of many frames, whose TLS records end anywhere in them.
    big = {"data": "x" * (3 * 1024 * 1024)}
    _, body = pika_rpc(names.url, name, big)
    assert json.loads(body) == big


def test_an_unknown_certificate_authority_is_refused(
    terminator: TlsTerminator, names: Names, amqp_daemon: Any, tmp_path: Path
) -> None:
    # The daemon trusts another CA: the handshake fails, and the daemon ends with one
    # error line that says so, without a traceback or the password.
    (tmp_path / "other").mkdir()
    other, _ = certificate(tmp_path / "other")
    uri = f"amqps://guest:guest@127.0.0.1:{terminator.port}/?cafile={other}"
    daemon = amqp_daemon(names.function(), uri=uri + "&connection_attempts=1", consuming=False)
    assert daemon.proc.wait(30) != 0
    daemon.stop()
    errors = [line for line in daemon.stderr().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "certificate" in errors[0].lower(), daemon.stderr()[-2000:]
    assert "Traceback" not in daemon.stderr()
    assert "guest:guest" not in daemon.stderr() + daemon.stdout()
