"""A small HTTP/1.1 server on asyncio protocols and httptools, for the hot paths.

The Invoke API and the Runtime API serve a handful of routes each, at rates where a
framework's per-request machinery is most of the cost. This module parses requests with
httptools, hands each complete ``Request`` to one handler function and writes its
``Response``. A handler may answer at once or return an awaitable (a future is answered
from its done-callback, without a task). Requests on one connection are answered in
order; keep-alive, ``Expect: 100-continue``, chunked request bodies and a body size cap
(the handler sees ``body_too_large``) are handled here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from http import HTTPStatus
from typing import cast

import httptools

logger = logging.getLogger(__name__)

STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Request:
    """One parsed request. Header names are lower-case; the last value of a name wins."""

    __slots__ = ("method", "path", "query", "headers", "body", "body_too_large", "body_size")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = b""
        self.body_too_large = False
        self.body_size = 0


class Response:
    """Status, body and extra headers (Content-Length is added when written)."""

    __slots__ = ("status", "body", "headers")

    def __init__(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def encode(self, keep_alive: bool) -> bytes:
        status = STATUS_LINES.get(self.status) or f"HTTP/1.1 {self.status} Unknown\r\n"
        headers = self.headers
        lines = (
            "".join([f"{name}: {value}\r\n" for name, value in headers.items()]) if headers else ""
        )
        close = "" if keep_alive else "Connection: close\r\n"
        head = f"{status}{lines}{close}Content-Length: {len(self.body)}\r\n\r\n"
        return head.encode("latin-1") + self.body


Handler = Callable[[Request], "Response | Awaitable[Response]"]
ErrorRenderer = Callable[[Exception], Response]


class HttpProtocol(asyncio.Protocol):
    """One connection: parse requests, answer them in order."""

    def __init__(
        self,
        handler: Handler,
        on_error: ErrorRenderer,
        max_body: int,
        connections: set[HttpProtocol],
    ) -> None:
        self._handler = handler
        self._on_error = on_error
        self._max_body = max_body
        self._connections = connections
        self.last_active = time.monotonic()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[tuple[Request, bool]] = deque()
        self._busy = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._request: Request | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pending.clear()
        self._connections.discard(self)

    def close_if_idle(self, idle_since: float) -> None:
        """Close a kept-alive connection with no request in flight since `idle_since`."""
        if not self._busy and self.last_active < idle_since and self._transport is not None:
            self._transport.close()
            self._transport = None

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400)
        except httptools.HttpParserError:
            self._fail(400)

    def _fail(self, status: int) -> None:
        if self._transport is not None:
            self._transport.write(Response(status).encode(keep_alive=False))
            self._transport.close()
            self._transport = None

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._request = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        url = self._url
        if url.startswith(b"/"):  # origin form, as every client here sends
            path, _, query = url.partition(b"?")
            query, _, _ = query.partition(b"#")
        else:
            parsed = httptools.parse_url(url)
            path, query = parsed.path or b"/", parsed.query or b""
        method = self._parser.get_method().decode("latin-1")
        self._request = Request(
            method, path.decode("latin-1"), query.decode("latin-1"), self._headers
        )
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        request = self._request
        assert request is not None
        request.body_size += len(body)
        if request.body_size > self._max_body:
            request.body_too_large = True
            self._body = []
        elif not request.body_too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        if self._body:
            request.body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._pending.append((request, self._parser.should_keep_alive()))
        if not self._busy:
            self._next()

    # -- answering ---------------------------------------------------------------------

    def _next(self) -> None:
        while self._pending and not self._busy:
            request, keep_alive = self._pending.popleft()
            try:
                answer = self._handler(request)
            except Exception as error:  # noqa: BLE001 - a handler bug must not kill the server
                logger.exception("error handling %s %s", request.method, request.path)
                answer = self._on_error(error)
            if isinstance(answer, Response):
                self._write(answer, keep_alive)
                continue
            self._busy = True
            future = asyncio.ensure_future(answer)
            future.add_done_callback(partial(self._answered, keep_alive))

    def _answered(self, keep_alive: bool, done: asyncio.Future[Response]) -> None:
        self._busy = False
        if done.cancelled():
            self._fail(503)
            return
        error = done.exception()
        if error is not None:
            logger.error("error handling a request", exc_info=error)
            self._write(self._on_error(error), keep_alive)  # type: ignore[arg-type]
        else:
            self._write(done.result(), keep_alive)
        self._next()

    def _write(self, response: Response, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(response.encode(keep_alive))
        self.last_active = time.monotonic()
        if not keep_alive:
            transport.close()
            self._transport = None


class HttpServer:
    """Listening sockets serving one handler; closing stops accepting.

    With `keep_alive` set, connections with no request in flight for that many seconds
    are closed, so abandoned or half-sent requests cannot pile up. (The Runtime API sets
    none: a runtime's connection is quiet for as long as its handler runs.)
    """

    def __init__(
        self,
        handler: Handler,
        on_error: ErrorRenderer,
        max_body: int,
        keep_alive: float | None = None,
    ) -> None:
        self._connections: set[HttpProtocol] = set()
        self._factory = lambda: HttpProtocol(handler, on_error, max_body, self._connections)
        self._servers: list[asyncio.Server] = []
        self._keep_alive = keep_alive
        self._sweeper: asyncio.TimerHandle | None = None

    def _start_sweeping(self) -> None:
        if self._keep_alive is not None and self._sweeper is None:
            self._sweep_later()

    def _sweep_later(self) -> None:
        assert self._keep_alive is not None
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self._keep_alive / 5, self._sweep)

    def _sweep(self) -> None:
        assert self._keep_alive is not None
        idle_since = time.monotonic() - self._keep_alive
        for connection in list(self._connections):
            connection.close_if_idle(idle_since)
        self._sweep_later()

    async def serve_socket(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._start_sweeping()
        self._servers.append(await loop.create_server(self._factory, sock=sock, backlog=1024))

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
