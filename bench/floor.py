"""The floor: the cheapest asyncio server we could write for the same two endpoints.

Invoke API (POST .../invocations) and Runtime API (GET next, POST response). One
Protocol per side, no task, future or generator per request: a client's request is
written straight into the waiting runtime's connection, and the runtime's response
straight into the client's, each in one write. Parsing is the least that works for the
benchmark's clients (the head's end, Content-Length, Expect: 100-continue, the request id
in the path). No validation, ids from a counter, no process management beyond starting
INSTANCES copies of COMMAND with AWS_LAMBDA_RUNTIME_API pointing at the Runtime API port.
No real daemon can beat it in Python; the benchmark reports the daemon against it.

`python bench/floor.py [--loop asyncio|uvloop] PORT RUNTIME_PORT INSTANCES COMMAND...`
(uvloop by default: it measured cheaper, see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable

ARN = b"arn:aws:lambda:us-east-1:123456789012:function:bench"
NEXT_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Lambda-Runtime-Invoked-Function-Arn: " + ARN + b"\r\nLambda-Runtime-Aws-Request-Id: "
)
ACCEPTED = b'HTTP/1.1 202 Accepted\r\nContent-Length: 15\r\n\r\n{"status":"OK"}'
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Broker:
    """Clients waiting for a runtime, runtimes waiting in /next, invocations running."""

    def __init__(self) -> None:
        self.invokes: deque[tuple[Invoke, bytes]] = deque()
        self.runtimes: deque[Runtime] = deque()
        self.running: dict[bytes, Invoke] = {}
        self.count = 0

    def dispatch(self, runtime: Runtime, client: Invoke, payload: bytes) -> None:
        self.count += 1
        request_id = b"%d" % self.count
        self.running[request_id] = client
        runtime.send_next(request_id, payload)


class Side(asyncio.Protocol):
    """Splits a connection's input into (head, body) requests and hands them on."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.buffer = b""
        self.continued = False
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.write: Callable[[bytes], None] = print

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.write = self.transport.write

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            at = buffer.find(b"ength: ", 0, end)  # Content-Length, in any case
            length = int(buffer[at + 7 : buffer.find(b"\r", at)]) if at > 0 else 0
            stop = end + 4 + length
            if len(buffer) < stop:
                if not self.continued and buffer.find(b"100-continue", 0, end) > 0:
                    self.continued = True  # libcurl waits for this before the body
                    self.write(CONTINUE)
                break
            self.continued = False
            self.request(buffer[:end], buffer[end + 4 : stop])
            buffer = buffer[stop:]
        self.buffer = buffer

    def request(self, head: bytes, body: bytes) -> None:
        raise NotImplementedError


class Invoke(Side):
    def request(self, head: bytes, body: bytes) -> None:
        broker = self.broker
        if broker.runtimes:
            broker.dispatch(broker.runtimes.popleft(), self, body)
        else:
            broker.invokes.append((self, body))

    def answer(self, body: bytes) -> None:
        self.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))


class Runtime(Side):
    def request(self, head: bytes, body: bytes) -> None:
        broker = self.broker
        if head[0] == 71:  # GET .../next
            if broker.invokes:
                client, payload = broker.invokes.popleft()
                broker.dispatch(self, client, payload)
            else:
                broker.runtimes.append(self)
            return
        # POST /2018-06-01/runtime/invocation/ID/response
        request_id = head[36 : head.find(b"/", 36)]
        broker.running.pop(request_id).answer(body)
        self.write(ACCEPTED)

    def send_next(self, request_id: bytes, payload: bytes) -> None:
        deadline = int(time.time() * 1000) + 3000
        self.write(
            b"%b%b\r\nLambda-Runtime-Deadline-Ms: %d\r\nContent-Length: %d\r\n\r\n%b"
            % (NEXT_HEAD, request_id, deadline, len(payload), payload)
        )


async def serve(port: int, runtime_port: int, command: list[str], instances: int) -> None:
    broker = Broker()
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Invoke(broker), "127.0.0.1", port, backlog=1024)
    await loop.create_server(lambda: Runtime(broker), "127.0.0.1", runtime_port, backlog=1024)
    env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{runtime_port}")
    children = [subprocess.Popen(command, env=env) for _ in range(instances)]  # noqa: ASYNC220
    try:
        await asyncio.Event().wait()
    finally:
        for child in children:
            child.kill()
            child.wait()


def main(argv: list[str]) -> None:
    loop = "uvloop"
    if argv[0] == "--loop":
        loop, argv = argv[1], argv[2:]
    port, runtime_port, instances = (int(a) for a in argv[:3])
    run: Callable[..., None] = asyncio.run
    if loop == "uvloop":
        import uvloop

        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(port, runtime_port, argv[3:], instances))


if __name__ == "__main__":
    main(sys.argv[1:])
