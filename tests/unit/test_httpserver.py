"""The small HTTP server under the Invoke and Runtime APIs, over real loopback sockets."""

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from lambda_rapid.httpserver import (
    ConstantResponse,
    FullRequest,
    HeaderList,
    HttpServer,
    Limits,
    ProxyProtocol,
    Request,
    Response,
)

Handler = Callable[[Request], "Response | Awaitable[Response]"]


def error_response(error: Exception) -> Response:
    return Response(500, b"error")


async def serve(
    handler: Handler, keep_alive: float | None = None, max_body: int = 1024
) -> tuple[HttpServer, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    server = HttpServer(handler, error_response, max_body, keep_alive)
    await server.serve_socket(sock)
    return server, sock.getsockname()[1]


OPEN: list[asyncio.StreamWriter] = []


async def exchange(
    port: int, data: bytes, responses: int = 1
) -> tuple[bytes, asyncio.StreamReader]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    OPEN.append(writer)
    writer.write(data)
    received = b""
    while received.count(b"HTTP/1.1 ") < responses:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, f"connection closed after {received!r}"
        received += chunk
    return received, reader


async def close_all(server: HttpServer) -> None:
    server.close()
    while OPEN:
        writer = OPEN.pop()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def echo(request: Request) -> Response:
    return Response(
        200,
        request.method.encode()
        + b" "
        + request.path.encode()
        + b" "
        + request.query.encode()
        + b" "
        + request.body,
    )


def test_answers_pipelined_requests_in_order_even_when_the_first_is_slow() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()

        def handler(request: Request) -> "Response | Awaitable[Response]":
            if request.path == "/slow":
                answer: asyncio.Future[Response] = loop.create_future()
                loop.call_later(0.2, answer.set_result, Response(200, b"slow"))
                return answer
            return Response(200, b"fast")

        server, port = await serve(handler)
        received, _ = await exchange(
            port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n", 2
        )
        await close_all(server)
        return received

    received = asyncio.run(main())
    assert received.index(b"slow") < received.index(b"fast")


def test_chunked_body_query_and_expect_continue() -> None:
    async def main() -> bytes:
        server, port = await serve(echo)
        request = (
            b"POST /p?a=1&b=2 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        received, _ = await exchange(port, request, 2)
        await close_all(server)
        return received

    received = asyncio.run(main())
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert received.endswith(b"POST /p a=1&b=2 abcde")


def test_a_body_over_the_cap_is_flagged_not_kept() -> None:
    async def main() -> bytes:
        def handler(request: Request) -> Response:
            return Response(
                413 if request.body_too_large else 200,
                str(request.body_size).encode() + b" " + request.body[:10],
            )

        server, port = await serve(handler, max_body=10)
        body = b"x" * 100
        received, _ = await exchange(port, b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + body)
        await close_all(server)
        return received

    received = asyncio.run(main())
    assert received.startswith(b"HTTP/1.1 413 ")
    assert received.endswith(b"100 ")


def test_garbage_gets_400_and_a_closed_connection() -> None:
    async def main() -> bytes:
        server, port = await serve(echo)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        OPEN.append(writer)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        received = await asyncio.wait_for(reader.read(), 5)  # until the server closes
        await close_all(server)
        return received

    assert asyncio.run(main()).startswith(b"HTTP/1.1 400 ")


def test_idle_connections_close_but_a_request_in_flight_does_not() -> None:
    async def main() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()

        def handler(request: Request) -> "Response | Awaitable[Response]":
            if request.path == "/long":
                answer: asyncio.Future[Response] = loop.create_future()
                loop.call_later(0.8, answer.set_result, Response(200, b"done"))
                return answer
            return Response(200, b"ok")

        server, port = await serve(handler, keep_alive=0.2)
        _, idle_reader = await exchange(port, b"GET /quick HTTP/1.1\r\n\r\n")
        closed = await asyncio.wait_for(idle_reader.read(), 3)  # b"" once the server closes
        long_answer, _ = await exchange(port, b"GET /long HTTP/1.1\r\n\r\n")
        await close_all(server)
        return closed, long_answer

    closed, long_answer = asyncio.run(main())
    assert closed == b""
    assert long_answer.endswith(b"done")


# -- hostile clients, on raw blocking sockets against a server in its own thread ----------


class Running:
    """An HttpServer on a loopback port, its event loop in a thread of its own."""

    def __init__(self, handler: Handler, limits: Limits, small_buffers: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sock = socket.socket()
        if small_buffers:  # inherited by accepted sockets: the kernel holds little for us
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.server = HttpServer(handler, error_response, limits.max_body, limits=limits)
        self.call(self.server.serve_socket(self.sock))
        self.clients: list[socket.socket] = []

    def call(self, coroutine: Awaitable[object]) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)  # type: ignore[arg-type]

    def connect(self, small_buffers: bool = False) -> socket.socket:
        client = socket.socket()
        if small_buffers:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        client.connect(("127.0.0.1", self.port))
        client.settimeout(5)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()

        async def stop() -> None:
            self.server.close()
            self.server.drop_connections()
            await asyncio.sleep(0.01)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def running(handler: Handler, small_buffers: bool = False, **limits: Any) -> Iterator[Running]:
    limits.setdefault("max_body", 1024)
    server = Running(handler, Limits(**limits), small_buffers)
    try:
        yield server
    finally:
        server.close()


def read_all(client: socket.socket) -> bytes:
    """Everything until the server closes (or resets) the connection."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.recv(65536):
            received += chunk
    return received


def ok(request: Request) -> Response:
    return Response(200, b"hello")


def send_until_stalled(client: socket.socket, data: bytes, stall: float = 1.0) -> int:
    """Send `data` until the peer stops reading for `stall` seconds; the bytes sent."""
    client.setblocking(False)
    sent = 0
    view = memoryview(data)
    while sent < len(data):
        try:
            sent += client.send(view[sent : sent + 65536])
        except BlockingIOError:
            _, writable, _ = select.select([], [client], [], stall)
            if not writable:
                break
        except (BrokenPipeError, ConnectionResetError):
            break
    client.settimeout(5)
    return sent


def test_a_request_head_over_the_cap_gets_431_and_is_not_buffered() -> None:
    with running(ok, max_head=64 * 1024) as server:
        # In one piece: counted from the parsed headers.
        client = server.connect()
        client.sendall(b"GET / HTTP/1.1\r\n" + b"X-A: " + b"a" * 70_000 + b"\r\n\r\n")
        assert read_all(client).startswith(b"HTTP/1.1 431 ")
        # Streamed without end (the daemon once took 107 MB of one header): cut early.
        client = server.connect()
        endless = b"GET / HTTP/1.1\r\nX-A: " + b"a" * (16 * 1024 * 1024)
        sent = send_until_stalled(client, endless)
        assert sent < len(endless)
        assert read_all(client).startswith(b"HTTP/1.1 431 ")
        # Below the cap, many headers are fine.
        client = server.connect()
        headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(400))
        client.sendall(b"GET / HTTP/1.1\r\n" + headers + b"Connection: close\r\n\r\n")
        assert read_all(client).startswith(b"HTTP/1.1 200 ")


def test_a_request_sent_a_byte_at_a_time_is_cut_off() -> None:
    with running(ok, request_timeout=0.5) as server:
        client = server.connect()
        request = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 1000
        answer = b""
        for byte in request[:100]:  # slowloris: never done, always active
            client.send(bytes([byte]))
            readable, _, _ = select.select([client], [], [], 0.1)
            if readable:
                answer = read_all(client)
                break
        assert answer.startswith(b"HTTP/1.1 408 ")


def test_connections_over_the_cap_are_refused_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running(ok, max_connections=3) as server:
        kept = [server.connect() for _ in range(3)]
        for client in kept:
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200 ")
        for _ in range(2):
            refused = server.connect()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                refused.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert read_all(refused) == b""
        full = [r for r in caplog.records if "connections open" in r.getMessage()]
        assert len(full) == 1
        for client in kept:
            client.close()

        def serves() -> bool:
            client = server.connect()
            client.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            return read_all(client).startswith(b"HTTP/1.1 200 ")

        assert poll_until(serves)


def poll_until(predicate: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_pipelined_requests_behind_one_in_flight_are_not_all_read() -> None:
    calls: list[str] = []

    def handler(request: Request) -> "Response | Awaitable[Response]":
        calls.append(request.path)
        if request.path == "/hang":
            return asyncio.get_running_loop().create_future()  # answered never
        return Response(200)

    with running(handler, small_buffers=True) as server:
        client = server.connect(small_buffers=True)
        one = b"GET /next HTTP/1.1\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"
        stream = b"GET /hang HTTP/1.1\r\n\r\n" + one * 20_000  # 20 MB
        sent = send_until_stalled(client, stream)
        assert sent < len(stream) // 4
        assert calls == ["/hang"]


def test_a_client_that_never_reads_its_answers_stops_being_read() -> None:
    answers = 0

    def handler(request: Request) -> Response:
        nonlocal answers
        answers += 1
        return Response(200, b"a" * 4096)

    with running(handler, small_buffers=True) as server:
        client = server.connect(small_buffers=True)
        one = b"GET / HTTP/1.1\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"
        stream = one * 8000  # 8 MB of requests for 32 MB of answers
        sent = send_until_stalled(client, stream)
        assert sent < len(stream) // 4
        assert answers < 8000 // 4


def test_expect_100_continue_over_the_cap_gets_413_at_once() -> None:
    def handler(request: Request) -> Response:
        return Response(413 if request.body_too_large else 200, b"")

    with running(handler, max_body=100) as server:
        client = server.connect()
        client.sendall(b"POST / HTTP/1.1\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
        answer = read_all(client)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"100 Continue" not in answer
        # Any other expectation: 417.
        client = server.connect()
        client.sendall(b"POST / HTTP/1.1\r\nContent-Length: 10\r\nExpect: something\r\n\r\n")
        assert read_all(client).startswith(b"HTTP/1.1 417 ")


def test_a_declared_body_over_the_cap_is_answered_before_it_is_sent() -> None:
    sizes: list[int] = []

    def handler(request: Request) -> Response:
        sizes.append(request.body_size)
        return Response(413 if request.body_too_large else 200, b"")

    with running(handler, max_body=100) as server:
        client = server.connect()
        client.sendall(b"POST / HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n")  # no body yet
        answer = client.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"Connection: close" in answer
        assert sizes == [5_000_000]
        # The connection ends once the client has sent its body (or given up).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.sendall(b"x" * 5_000_000)
        assert read_all(client) == b""


def test_head_gets_no_body_and_the_next_answer_follows() -> None:
    with running(ok) as server:
        client = server.connect()
        client.sendall(b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        received = read_all(client)
    first, _, rest = received.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 5" in first
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\nhello")


def test_an_upgrade_header_is_ignored_and_answered_once() -> None:
    with running(ok) as server:
        client = server.connect()
        client.sendall(
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nsome bytes"
        )
        received = read_all(client)
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"hello")
    assert received.count(b"HTTP/1.1 ") == 1


def test_an_upgrade_with_a_body_is_refused_not_served_empty() -> None:
    bodies: list[bytes] = []

    def handler(request: Request) -> Response:
        bodies.append(request.body)
        return Response(200)

    with running(handler) as server:
        client = server.connect()
        client.sendall(
            b"POST / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
            b"Content-Length: 3\r\n\r\nabc"
        )
        assert read_all(client).startswith(b"HTTP/1.1 400 ")
    assert bodies == []


def test_garbage_after_a_pipelined_request_does_not_swallow_its_answer() -> None:
    def handler(request: Request) -> "Response | Awaitable[Response]":
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.1, answer.set_result, Response(200, b"slow"))
        return answer

    with running(handler) as server:
        client = server.connect()
        client.sendall(b"GET /slow HTTP/1.1\r\n\r\nNOT HTTP\r\n\r\n")
        received = read_all(client)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"slowHTTP/1.1 400 " in received


def test_a_request_line_without_version_gets_400() -> None:
    with running(ok) as server:
        client = server.connect()
        client.sendall(b"GET /\r\n\r\n")
        assert read_all(client).startswith(b"HTTP/1.1 400 ")


def test_header_values_never_carry_cr_or_lf_to_the_wire() -> None:
    response = Response(200, b"{}", {"X-A": 'x\r\nX-Forged: 1\r\n\r\n{"a"', "X-B\n": "ok"})
    head = response.encode(keep_alive=True).split(b"\r\n\r\n")[0]
    lines = head.split(b"\r\n")
    assert not any(line.startswith(b"X-Forged") for line in lines)
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert len(lines) == 4  # status, X-A, X-B, Content-Length


# -- ProxyProtocol: what a proxy passes on (the gateway) ---------------------------------


async def serve_proxy(handler: Handler, **limits: Any) -> tuple[HttpServer, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    server = HttpServer(
        handler,
        error_response,
        1024,
        limits=Limits(**{"max_body": 1024, **limits}),
        protocol=ProxyProtocol,
    )
    await server.serve_socket(sock)
    return server, sock.getsockname()[1]


def test_a_proxy_request_keeps_every_header_as_sent() -> None:
    seen: list[FullRequest] = []

    def handler(request: Request) -> Response:
        assert isinstance(request, FullRequest)
        seen.append(request)
        return Response(200, b"ok")

    async def main() -> None:
        server, port = await serve_proxy(handler)
        request = (
            b"GET /a%20b?x=1&x=2 HTTP/1.0\r\nX-A: 1\r\nx-a: 2\r\n"
            b"Cookie: a=1\r\nCookie: b=2\r\nX-Name: caf\xc3\xa9 \xff\r\n\r\n"
        )
        await exchange(port, request)
        await close_all(server)

    asyncio.run(main())
    [request] = seen
    assert (request.path, request.query) == ("/a%20b", "x=1&x=2")
    assert request.header_list == [
        ("X-A", "1"),
        ("x-a", "2"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("X-Name", "café \udcff"),  # UTF-8 text; other bytes kept as surrogate escapes
    ]
    assert request.headers["x-a"] == "2"
    assert (request.version, request.peer) == ("1.0", "127.0.0.1")


def test_repeated_headers_count_toward_the_head_cap() -> None:
    async def main() -> bytes:
        server, port = await serve_proxy(ok, max_head=1000)
        repeated = b"X-R: " + b"r" * 20 + b"\r\n"
        request = b"GET / HTTP/1.1\r\n" + repeated * 100 + b"\r\n"
        received, _ = await exchange(port, request)
        await close_all(server)
        return received

    assert asyncio.run(main()).startswith(b"HTTP/1.1 431 ")


def test_a_header_list_writes_repeated_names_in_order() -> None:
    headers = HeaderList([("Set-Cookie", "a=1"), ("X-Other", "o"), ("Set-Cookie", "b=2\r\nX: y")])
    wire = Response(200, b"hi", headers).encode(keep_alive=True)
    assert wire == (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Other: o\r\nSet-Cookie: b=2  X: y\r\n"
        b"Content-Length: 2\r\n\r\nhi"
    )


def test_a_constant_response_is_encoded_once_and_still_closes_when_asked() -> None:
    answer = ConstantResponse(202, b'{"status":"OK"}', {"Content-Type": "application/json"})
    kept = answer.encode(keep_alive=True)
    assert answer.encode(keep_alive=True) is kept
    assert kept == Response(202, b'{"status":"OK"}', {"Content-Type": "application/json"}).encode(
        keep_alive=True
    )
    closing = answer.encode(keep_alive=False)
    assert b"Connection: close\r\n" in closing and closing.endswith(b'{"status":"OK"}')
    assert answer.encode(keep_alive=True, head=True).endswith(b"\r\n\r\n")
