"""The small HTTP server under the Invoke and Runtime APIs, over real loopback sockets."""

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

from lambda_rapid.httpserver import HttpServer, Request, Response

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
