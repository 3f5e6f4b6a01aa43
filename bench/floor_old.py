"""The previous floor, kept to compare with `bench/floor.py`: one asyncio task and a
generator per request, headers split into lines, futures between the two sides.

`python bench/floor_old.py PORT RUNTIME_PORT INSTANCES COMMAND...`
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections import deque

ARN = b"arn:aws:lambda:us-east-1:123456789012:function:bench"


class Broker:
    def __init__(self) -> None:
        self.waiting_invokes: deque[tuple[bytes, asyncio.Future[bytes]]] = deque()
        self.waiting_runtimes: deque[asyncio.Future[tuple[str, bytes]]] = deque()
        self.running: dict[str, asyncio.Future[bytes]] = {}
        self.ids = itertools.count()


def parse_requests(buffer: bytearray, transport: asyncio.Transport):  # type: ignore[no-untyped-def]
    """Yield (method, path, body) for every complete request at the start of buffer."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end])
        length = 0
        expects = False
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
            elif line.lower() == b"expect: 100-continue":
                expects = True
        if len(buffer) < end + 4 + length:
            if expects:  # libcurl (awslambdaric) waits for this before sending the body
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                at = head.lower().find(b"\r\nexpect: 100-continue") + 2
                buffer[at : at + 20] = b"X-Done: 100-continue"  # answer it only once
            return
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        method, path, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        yield method, path, body


class Http(asyncio.Protocol):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        assert self.transport is not None
        for method, path, body in parse_requests(self.buffer, self.transport):
            asyncio.ensure_future(self.handle(method, path, body))

    def reply(self, status: bytes, body: bytes, extra: bytes = b"") -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n"
            + extra
            + b"\r\n"
            + body
        )

    async def handle(self, method: bytes, path: bytes, body: bytes) -> None:
        broker = self.broker
        loop = asyncio.get_running_loop()
        if path.endswith(b"/invocations"):
            future: asyncio.Future[bytes] = loop.create_future()
            if broker.waiting_runtimes:
                request_id = str(next(broker.ids))
                broker.running[request_id] = future
                broker.waiting_runtimes.popleft().set_result((request_id, body))
            else:
                broker.waiting_invokes.append((body, future))
            self.reply(b"200 OK", await future)
        elif path.endswith(b"/next"):
            if broker.waiting_invokes:
                payload, future = broker.waiting_invokes.popleft()
                request_id = str(next(broker.ids))
                broker.running[request_id] = future
            else:
                waiter: asyncio.Future[tuple[str, bytes]] = loop.create_future()
                broker.waiting_runtimes.append(waiter)
                request_id, payload = await waiter
            deadline = str(int(time.time() * 1000) + 3000).encode()
            self.reply(
                b"200 OK",
                payload,
                b"Lambda-Runtime-Aws-Request-Id: "
                + request_id.encode()
                + b"\r\nLambda-Runtime-Deadline-Ms: "
                + deadline
                + b"\r\nLambda-Runtime-Invoked-Function-Arn: "
                + ARN
                + b"\r\nContent-Type: application/json\r\n",
            )
        else:
            request_id = path.split(b"/")[-2].decode()
            broker.running.pop(request_id).set_result(body)
            self.reply(b"202 Accepted", b'{"status":"OK"}')


async def serve(port: int, runtime_port: int, command: list[str], instances: int) -> None:
    broker = Broker()
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Http(broker), "127.0.0.1", port)
    await loop.create_server(lambda: Http(broker), "127.0.0.1", runtime_port)
    env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{runtime_port}")
    children = [subprocess.Popen(command, env=env) for _ in range(instances)]  # noqa: ASYNC220
    try:
        await asyncio.Event().wait()
    finally:
        for child in children:
            child.kill()
            child.wait()


if __name__ == "__main__":
    # floor.py PORT RUNTIME_PORT INSTANCES COMMAND...
    port, runtime_port, instances = (int(a) for a in sys.argv[1:4])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(port, runtime_port, sys.argv[4:], instances))
