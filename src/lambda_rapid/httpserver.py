"""A small HTTP/1.1 server on asyncio protocols and httptools, for the hot paths.

The Invoke API and the Runtime API serve a handful of routes each, at rates where a
framework's per-request machinery is most of the cost. This module parses requests with
httptools, hands each complete ``Request`` to one handler function and writes its
``Response``. A handler may answer at once or return an awaitable (a future is answered
from its done-callback, without a task). Requests on one connection are answered in
order; keep-alive, ``Expect: 100-continue``, chunked request bodies and a body size cap
(the handler sees ``body_too_large``) are handled here, and so are the limits that keep a
hostile client from growing the daemon (``Limits``): request head size, time to send a
request, idle time, open connections, pipelined requests and unread answers.
``ProxyProtocol`` serves what a proxy passes on: every header as sent (``FullRequest``)
and repeated answer headers (``HeaderList``).

Streaming, both ways, for the routes that want it: a server built with `stream_body`
hands the body of a request that hook accepts to a ``BodySink`` chunk by chunk (reading
pauses while the sink says so; trailers end up in the request's headers), and a
``StreamedResponse`` is written with chunked encoding as its chunks come, each written
only once the client has taken the previous ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any, Protocol, cast

import httptools

logger = logging.getLogger(__name__)

STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in HTTPStatus
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Requests parsed but not yet answered on one connection before reading pauses.
MAX_PIPELINED = 16
# How long the rest of a refused body is read (and dropped) so the client sees the answer.
DRAIN_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What one server accepts. The defaults suit the Runtime API, whose clients are the
    function's own runtimes: awslambdaric sends X-Ray error causes of up to 1 MiB in a
    header, and a runtime may be quiet for as long as its handler runs."""

    max_body: int
    max_head: int = 1024 * 1024 + 64 * 1024  # request line + headers, bytes
    keep_alive: float | None = None  # idle seconds before a connection is closed
    request_timeout: float | None = None  # seconds from a request's first byte to its last
    max_connections: int = 1024
    # The most of an oversized body read and dropped after the answer, before closing:
    # a client still sending when the socket closes may get a reset instead of the answer.
    max_drain: int = 1 << 30


class Request:
    """One parsed request. Header names are lower-case; the last value of a name wins."""

    __slots__ = (
        "method",
        "path",
        "query",
        "headers",
        "body",
        "body_too_large",
        "body_size",
        "keep_alive",
        "sink",
    )

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = b""
        self.body_too_large = False
        self.body_size = 0
        self.keep_alive = True
        self.sink: BodySink | None = None  # who took the body, when it was streamed


class FullRequest(Request):
    """A request as a proxy passes it on: every header in the client's spelling and
    order, repeats kept; the HTTP version ("1.1"); the client's address."""

    __slots__ = ("header_list", "version", "peer")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        header_list: list[tuple[str, str]],
        version: str,
        peer: str,
    ) -> None:
        super().__init__(method, path, query, headers)
        self.header_list = header_list
        self.version = version
        self.peer = peer


class HeaderList(list[tuple[str, str]]):
    """Answer headers that may repeat a name (Set-Cookie), written in this order."""

    __slots__ = ()

    def items(self) -> HeaderList:
        return self


class Response:
    """Status, body and extra headers (Content-Length is added when written)."""

    __slots__ = ("status", "body", "headers")

    def __init__(
        self, status: int, body: bytes = b"", headers: dict[str, str] | HeaderList | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def encode(self, keep_alive: bool, head: bool = False) -> bytes:
        status = STATUS_LINES.get(self.status) or f"HTTP/1.1 {self.status} Unknown\r\n"
        headers = self.headers
        lines = ""
        if headers:
            lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
            # A CR or LF inside a name or value would forge headers: one scan to catch it.
            if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
                lines = safe_header_lines(headers)
        close = "" if keep_alive else "Connection: close\r\n"
        head_bytes = f"{status}{lines}{close}Content-Length: {len(self.body)}\r\n\r\n"
        if head:
            return head_bytes.encode("latin-1")
        return head_bytes.encode("latin-1") + self.body


class ConstantResponse(Response):
    """An answer sent unchanged again and again: encoded once, for kept-alive connections.
    Never mutated once built."""

    __slots__ = ("_wire",)

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
        super().__init__(status, body, headers)
        self._wire = super().encode(keep_alive=True)

    def encode(self, keep_alive: bool, head: bool = False) -> bytes:
        if keep_alive and not head:
            return self._wire
        return super().encode(keep_alive, head)


class CutStream(Exception):
    """Raised by a streamed answer's source: end the answer as incomplete (no last chunk)."""


class StreamedResponse(Response):
    """An answer whose body comes as chunks (written with chunked encoding)."""

    __slots__ = ("chunks",)

    def __init__(
        self,
        status: int,
        chunks: AsyncGenerator[bytes, None],
        headers: dict[str, str] | HeaderList | None = None,
    ) -> None:
        super().__init__(status, b"", headers)
        self.chunks = chunks

    def encode(self, keep_alive: bool, head: bool = False) -> bytes:
        head_bytes = super().encode(keep_alive, head=True)
        return head_bytes.replace(b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n")


class BodySink(Protocol):
    """Takes a streamed request body."""

    def data(self, chunk: bytes) -> bool:
        """One chunk; False to pause reading until the resume callback is called."""

    def end(self, request: Request) -> None:
        """The body is complete (its trailers are in `request.headers`)."""

    def abort(self) -> None:
        """The connection was lost before the body was complete."""


# Decides, once a request's head is in, whether its body is streamed (to the sink it
# returns); gets the callback that resumes reading.
StreamBody = Callable[[Request, Callable[[], None]], "BodySink | None"]


def safe_header_lines(headers: dict[str, str] | HeaderList) -> str:
    """Header lines with every CR and LF inside names and values replaced by a space."""
    table = {ord("\r"): " ", ord("\n"): " "}
    return "".join(
        [
            f"{name.translate(table)}: {value.translate(table)}\r\n"
            for name, value in headers.items()
        ]
    )


def plain_refusal(status: int) -> Response:
    """The server's own answer to a request it will not pass on (400, 408, 417, 431)."""
    return Response(status, HTTPStatus(status).phrase.encode(), {"Content-Type": "text/plain"})


class Deferred:
    """An answer still to come from `future`: rendered by `render` from its result, or by
    `fail` from its exception (a CancelledError when it was cancelled), in the future's
    own done-callback. Cheaper than a chained future: one loop turn, not two."""

    __slots__ = ("future", "render", "fail")

    def __init__(
        self,
        future: asyncio.Future[Any],
        render: Callable[[Any], Response],
        fail: Callable[[BaseException], Response],
    ) -> None:
        self.future = future
        self.render = render
        self.fail = fail


Handler = Callable[[Request], "Response | Deferred | Awaitable[Response]"]
ErrorRenderer = Callable[[Exception], Response]
Refusal = Callable[[int], Response]


class _Stop(Exception):
    """Raised from a parser callback to stop parsing a connection's input for good."""


class Connections(set["HttpProtocol"]):
    """A server's open connections; says once when there are too many."""

    full = False
    # Told the status of every answer (metrics, when METRICS_PORT is set).
    answered: Callable[[int], None] | None = None

    def admit(self, connection: HttpProtocol, limit: int) -> bool:
        if len(self) < limit:
            self.add(connection)
            return True
        if not self.full:
            self.full = True
            logger.warning("%d connections open: refusing new ones", limit)
        return False

    def release(self, connection: HttpProtocol, limit: int) -> None:
        self.discard(connection)
        if self.full and len(self) < limit // 2:
            self.full = False


class HttpProtocol(asyncio.Protocol):
    """One connection: parse requests, answer them in order."""

    def __init__(
        self,
        handler: Handler,
        on_error: ErrorRenderer,
        max_body: int,
        connections: set[HttpProtocol],
        *,
        limits: Limits | None = None,
        refuse: Refusal = plain_refusal,
        stream_body: StreamBody | None = None,
    ) -> None:
        self._handler = handler
        self._stream_body = stream_body
        self._sink: BodySink | None = None
        self._body_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._on_error = on_error
        self._refuse = refuse
        self._limits = limits = limits or Limits(max_body)
        self._max_body = limits.max_body
        self._max_body_digits = len(str(limits.max_body))
        self._connections = connections
        self._tell_status: Callable[[int], None] | None = getattr(connections, "answered", None)
        self.last_active = time.monotonic()
        # When the request being received began (0.0: none is), for the request deadline.
        self.receiving_since = 0.0
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        # Requests waiting for their answer, and the refusal that ends a connection.
        self._pending: deque[Request | Response] = deque()
        self._busy = False
        self._stopped = False  # no more input is parsed
        self._drain = 0  # bytes of a refused body still to read and drop
        self._half_closed = False
        self._write_paused = False
        self._read_paused = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._chunk_size = 0
        self._in_head = False
        self._head_spill = 0  # bytes of chunks that fell wholly inside one request head
        self._head_began = False
        self._body: list[bytes] = []
        self._request: Request | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        if not self._admit():
            self._stopped = True
            self._transport.abort()
            self._transport = None
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _admit(self) -> bool:
        connections, limit = self._connections, self._limits.max_connections
        if isinstance(connections, Connections):
            return connections.admit(self, limit)
        if len(connections) >= limit:
            return False
        connections.add(self)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._stopped = True
        self._pending.clear()
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.abort()
        self._wake_writer()
        connections = self._connections
        if isinstance(connections, Connections):
            connections.release(self, self._limits.max_connections)
        else:
            connections.discard(self)

    def eof_received(self) -> bool | None:
        # A client may end its side after its requests: it still gets the answers.
        self._stopped = True
        self._drain = 0
        return True if self._busy or self._pending else None

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its requests until it does.
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()
        self._update_reading()
        self._next()

    def _wake_writer(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    def close_if_idle(self, idle_since: float) -> None:
        """Close a kept-alive connection with no request in flight since `idle_since`."""
        if not self._busy and self.last_active < idle_since and self._transport is not None:
            self._transport.close()
            self._transport = None

    def cut_if_slow(self, started_before: float) -> None:
        """Refuse (408) a request whose first byte came before `started_before`."""
        # While reading is paused the wait is ours, not the client's.
        if 0.0 < self.receiving_since < started_before and not self._read_paused:
            self.receiving_since = 0.0
            if not self._stopped:
                self._end_with(self._refuse(408))

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._stopped:
            if self._drain:
                self._drop(len(data))
            return
        was_in_head = self._in_head
        self._head_began = False
        self._chunk_size = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The upgrade is ignored: the request is answered, then the connection closed.
            self._end_with(None)
        except httptools.HttpParserError:
            if not self._stopped:  # else a callback stopped on purpose
                self._end_with(self._refuse(400))
        else:
            if was_in_head and self._in_head and not self._head_began:
                # httptools holds a header until it ends: count what it is holding.
                self._head_spill += len(data)
                if self._head_spill > self._limits.max_head:
                    self._end_with(self._refuse(431))

    def _drop(self, size: int) -> None:
        self._drain = max(0, self._drain - size)
        if not self._drain and self._half_closed:
            self._close()

    def _end_with(self, refusal: Response | None) -> None:
        """Parse nothing more; answer what is pending, then `refusal`, then close."""
        self._stopped = True
        self._in_head = False
        if refusal is not None:
            self._pending.append(refusal)
        elif self._pending:
            last = self._pending[-1]
            if isinstance(last, Request):
                last.keep_alive = False
        self._update_reading()
        self._next()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None:
            return
        pause = (
            (self._stopped and not self._drain)
            or self._write_paused
            or len(self._pending) >= MAX_PIPELINED
            or self._body_paused
        )
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                if self.receiving_since:
                    self.receiving_since = time.monotonic()
                transport.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.receiving_since = self.last_active
        self._head_began = True
        self._url = b""
        self._headers = {}
        self._head_spill = 0
        self._in_head = True
        self._body = []
        self._request = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._in_head = False
        url = self._url
        # A head that came in one chunk below the cap is below it: count only the others.
        if not self._head_began or self._chunk_size > self._limits.max_head:
            self._check_head_size(url)
        self._request = request = self._new_request(url)
        headers = self._headers
        if self._stream_body is not None and self._take_body(request):
            return
        expect = headers.get("expect")
        length = headers.get("content-length")
        # Fewer digits than the cap has is below it: no int() on the common path.
        if (
            length is not None
            and len(length) >= self._max_body_digits
            and self._over_limit(request, length)
        ):
            self._stop(request)
        if "upgrade" in headers and self._declares_body():
            # httptools would skip the body of an upgrade: refuse rather than serve it empty.
            self._stop(self._refuse(400))
        if expect is not None:
            self._expect(expect)

    def _take_body(self, request: Request) -> bool:
        """Whether the request's body goes to a sink (no size cap here: the sink's)."""
        assert self._stream_body is not None
        sink = self._stream_body(request, self._resume_body)
        if sink is None:
            return False
        request.sink = self._sink = sink
        return True

    def _resume_body(self) -> None:
        if self._body_paused:
            self._body_paused = False
            self._update_reading()

    def _check_head_size(self, url: bytes) -> None:
        headers = self._headers
        size = len(url) + sum(map(len, headers)) + sum(map(len, headers.values()))
        if size > self._limits.max_head:
            self._stop(self._refuse(431))

    def _new_request(self, url: bytes) -> Request:
        if url.startswith(b"/"):  # origin form, as every client here sends
            path, _, query = url.partition(b"?")
            query, _, _ = query.partition(b"#")
        else:
            parsed = httptools.parse_url(url)
            path, query = parsed.path or b"/", parsed.query or b""
        method = self._parser.get_method().decode("latin-1")
        return Request(method, path.decode("latin-1"), query.decode("latin-1"), self._headers)

    def _over_limit(self, request: Request, length: str) -> bool:
        """A declared body over the cap: the handler answers at once, the body is not read."""
        size = int(length)
        if size <= self._max_body:
            return False
        request.body_too_large = True
        request.body_size = size
        if "expect" not in request.headers:  # else the client waits, sending nothing
            self._drain = min(request.body_size, self._limits.max_drain)
        return True

    def _declares_body(self) -> bool:
        headers = self._headers
        return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"

    def _expect(self, expect: str) -> None:
        if expect.lower() != "100-continue":
            self._stop(self._refuse(417))
        if self._transport is not None:
            self._transport.write(CONTINUE)

    def _stop(self, last: Request | Response) -> None:
        """End the connection with `last` as its final answer, and leave the parser."""
        if isinstance(last, Request):
            last.keep_alive = False
            self._pending.append(last)
            self._end_with(None)
        else:
            self._end_with(last)
        raise _Stop

    def on_body(self, body: bytes) -> None:
        if self._sink is not None:
            if not self._sink.data(body):
                self._body_paused = True
                self._update_reading()
            return
        request = self._request
        assert request is not None
        request.body_size += len(body)
        if request.body_size > self._max_body:
            # Only a chunked body gets here (a declared length is checked up front).
            request.body_too_large = True
            self._body = []
            self._stop(request)
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        self.receiving_since = 0.0
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.end(request)
        if self._body:
            request.body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request.keep_alive = keep_alive = self._parser.should_keep_alive()
        if not keep_alive and self._parser.get_http_version() == "0.9":
            self._stop(self._refuse(400))  # a request line without a version
        self._pending.append(request)
        if not self._busy:
            self._next()
        elif len(self._pending) >= MAX_PIPELINED:
            self._update_reading()

    # -- answering ---------------------------------------------------------------------

    def _next(self) -> None:
        while self._pending and not self._busy and not self._write_paused:
            request = self._pending.popleft()
            if isinstance(request, Response):
                self._write(request, False)
                return
            try:
                answer = self._handler(request)
            except Exception as error:  # noqa: BLE001 - a handler bug must not kill the server
                logger.exception("error handling %s %s", request.method, request.path)
                answer = self._on_error(error)
            if isinstance(answer, Response):
                self._write(answer, request.keep_alive, request.method == "HEAD")
                continue
            self._busy = True
            if isinstance(answer, Deferred):
                answer.future.add_done_callback(partial(self._rendered, request, answer))
                continue
            future = asyncio.ensure_future(answer)
            future.add_done_callback(partial(self._answered, request))
        if self._stopped:
            if not self._pending and not self._busy:
                self._close()
        elif self._read_paused:
            self._update_reading()

    def _answered(self, request: Request, done: asyncio.Future[Response]) -> None:
        self._busy = False
        if done.cancelled():
            self._pending.clear()
            self._write(self._refuse(503), False)
            return
        error = done.exception()
        if error is not None:
            logger.error("error handling a request", exc_info=error)
            answer = self._on_error(error)  # type: ignore[arg-type]
        else:
            answer = done.result()
        self._write(answer, request.keep_alive, request.method == "HEAD")
        self._next()

    def _rendered(self, request: Request, deferred: Deferred, done: asyncio.Future[Any]) -> None:
        self._busy = False
        try:
            if done.cancelled():
                answer = deferred.fail(asyncio.CancelledError())
            else:
                error = done.exception()
                answer = deferred.render(done.result()) if error is None else deferred.fail(error)
        except asyncio.CancelledError:
            self._pending.clear()
            self._write(self._refuse(503), False)
            return
        except Exception as error:  # noqa: BLE001 - a rendering bug must not kill the server
            logger.exception("error handling %s %s", request.method, request.path)
            answer = self._on_error(error)
        self._write(answer, request.keep_alive, request.method == "HEAD")
        self._next()

    def _write(self, response: Response, keep_alive: bool, head: bool = False) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(response.encode(keep_alive, head))
        self.last_active = time.monotonic()
        if self._tell_status is not None:
            self._tell_status(response.status)
        if isinstance(response, StreamedResponse):
            self._busy = True
            self._pump = asyncio.get_running_loop().create_task(
                self._write_chunks(response.chunks, keep_alive)
            )
            return
        if not keep_alive:
            self._pending.clear()
            self._close()

    async def _write_chunks(self, chunks: AsyncGenerator[bytes, None], keep_alive: bool) -> None:
        """Write a streamed answer's chunks, each once the client took the ones before."""
        complete = False
        try:
            async for chunk in chunks:
                transport = self._transport
                if transport is None:
                    break
                if chunk:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                    self.last_active = time.monotonic()
                if self._write_paused:
                    self._writable = asyncio.get_running_loop().create_future()
                    await self._writable
            else:
                complete = True
        except CutStream:
            pass  # the source ended the answer unfinished, on purpose
        except Exception:  # noqa: BLE001 - the stream's source failed: cut the answer
            logger.exception("error streaming an answer")
        finally:
            await chunks.aclose()
            self._pump = None
            self._busy = False
        self._after_stream(complete, keep_alive)

    def _after_stream(self, complete: bool, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        if not complete:
            # A cut chunked answer must not look complete: the client sees the reset.
            self.abort()
            return
        transport.write(b"0\r\n\r\n")
        if not keep_alive:
            self._pending.clear()
            self._close()
        else:
            self._next()

    def _close(self) -> None:
        self._stopped = True
        transport = self._transport
        if transport is None:
            return
        if self._half_closed and self._drain:
            return  # closed when the rest of the body is in, or given up on
        if self._drain and transport.can_write_eof():
            # Answered, but the client may still be sending the body: finish our side,
            # read and drop the rest for a while, then close.
            self._half_closed = True
            transport.write_eof()
            self._update_reading()
            asyncio.get_running_loop().call_later(DRAIN_SECONDS, self._abandon_drain)
            return
        transport.close()
        self._transport = None

    def _abandon_drain(self) -> None:
        self._drain = 0
        self._close()


class ProxyProtocol(HttpProtocol):
    """A connection whose requests are ``FullRequest``s: what a proxy needs to pass a
    request on whole. Header values are decoded as UTF-8 (undecodable bytes kept as
    surrogate escapes); the head size counts every header, repeats included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_list: list[tuple[str, str]] = []
        self._peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = str(peer[0])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_list = []

    def on_header(self, name: bytes, value: bytes) -> None:
        text_name = name.decode("latin-1")  # a token: ASCII, or httptools refuses it
        text = value.decode("utf-8", "surrogateescape")
        self._headers[text_name.lower()] = text
        self._header_list.append((text_name, text))

    def _check_head_size(self, url: bytes) -> None:
        size = len(url) + sum([len(name) + len(value) for name, value in self._header_list])
        if size > self._limits.max_head:
            self._stop(self._refuse(431))

    def _new_request(self, url: bytes) -> Request:
        # The target is ASCII (httptools refuses other bytes there): no decoding to redo.
        plain = super()._new_request(url)
        return FullRequest(
            plain.method,
            plain.path,
            plain.query,
            self._headers,
            self._header_list,
            self._parser.get_http_version(),
            self._peer,
        )


class HttpServer:
    """Listening sockets serving one handler; closing stops accepting.

    With `limits.keep_alive` set, connections with no request in flight for that many
    seconds are closed, and with `limits.request_timeout` set, a request still arriving
    after that many seconds is refused (408), so abandoned, half-sent or trickled
    requests cannot pile up. `refuse` renders the server's own refusals in the API's
    style (default: a plain-text body). `protocol` is ``ProxyProtocol`` for a handler
    that needs ``FullRequest``s.
    """

    def __init__(
        self,
        handler: Handler,
        on_error: ErrorRenderer,
        max_body: int,
        keep_alive: float | None = None,
        *,
        limits: Limits | None = None,
        refuse: Refusal = plain_refusal,
        protocol: type[HttpProtocol] = HttpProtocol,
        stream_body: StreamBody | None = None,
    ) -> None:
        self.limits = limits = limits or Limits(max_body, keep_alive=keep_alive)
        self._connections = Connections()
        self._factory = partial(
            protocol,
            handler,
            on_error,
            limits.max_body,
            self._connections,
            limits=limits,
            refuse=refuse,
            stream_body=stream_body,
        )
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None

    def _sweep_every(self) -> float | None:
        periods = [p for p in (self.limits.keep_alive, self.limits.request_timeout) if p]
        return min(periods) / 5 if periods else None

    def _sweep_later(self) -> None:
        every = self._sweep_every()
        if every is not None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(every, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        keep_alive, request_timeout = self.limits.keep_alive, self.limits.request_timeout
        for connection in list(self._connections):
            if request_timeout is not None:
                connection.cut_if_slow(now - request_timeout)
            if keep_alive is not None:
                connection.close_if_idle(now - keep_alive)
        self._sweep_later()

    async def serve_socket(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweep_later()
        self._servers.append(await loop.create_server(self._factory, sock=sock, backlog=1024))

    def observe_answers(self, answered: Callable[[int], None]) -> None:
        """Have `answered` told the status of every answer from now on."""
        self._connections.answered = answered

    def drop_connections(self) -> None:
        """Abort every open connection, answered or not."""
        for connection in list(self._connections):
            connection.abort()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
