"""The AMQP wire format shared by the daemon's consumer and lambda-server's client.

Owns the names on the wire (header names, the function exchange), the headers of a
request and of a reply, encoded and decoded here and nowhere else, the tolerant frame
decoding (a message whose properties cannot be decoded must not take the whole
connection down with it), the validation of the properties and headers that become
Runtime API or Invoke API headers (no CR/LF ever reaches the wire), the size bounds
of the headers this daemon adds to retries and dead letters, and the frames of a reply
written together with the ack of its request.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pamqp.decode
import pamqp.encode
import pamqp.frame
from pamqp import commands as spec
from pamqp.common import FieldValue

from lambda_rapid.errors import InvalidParameterValue, InvokeError, error_member
from lambda_rapid.invocation import (
    Invocation,
    InvocationResult,
    decode_client_context,
    new_request_id,
    new_trace_id,
)

# Request headers (lambda-server → daemon), as the Invoke API's HTTP headers are named.
INVOKED_ARN = "X-Amz-Invoked-Function-Arn"
TRACE_ID = "X-Amzn-Trace-Id"
CLIENT_CONTEXT = "X-Amz-Client-Context"
LOG_TYPE = "X-Amz-Log-Type"
COGNITO_IDENTITY = "X-Amz-Cognito-Identity"
TENANT_ID = "X-Amz-Tenant-Id"
# Reply headers (daemon → caller).
FUNCTION_ERROR = "X-Amz-Function-Error"
ERROR_TYPE = "X-Amz-Function-Error-Type"
EXECUTED_VERSION = "X-Amz-Executed-Version"
LOG_RESULT = "X-Amz-Log-Result"
ERROR_CODE = "x-amzn-ErrorType"
ERROR_STATUS = "x-amzn-Status"
# Our own: how many times an invocation already ran (or was interrupted).
ATTEMPT = "x-lambda-attempt"

# Put in place of what pamqp could not decode, so the message can be rejected by us.
UNDECODABLE_HEADERS = "x-undecodable-headers"
UNDECODABLE_TIME = datetime(1, 1, 1, tzinfo=UTC)

MAX_REQUEST_ID = 128
REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
MAX_HEADER_VALUE = 4096  # a trace id, ARN, tenant or identity longer than this is refused
MAX_COPIED_HEADERS = 64 * 1024  # the publisher's headers kept on retries and dead letters
MAX_ERROR_HEADER = 8 * 1024  # x-error-body: a copy; the frame must stay far below frame_max
MAX_ERROR_MESSAGE = 1024  # Lambda puts "the first 1 KB of the error message" on dead letters

Decoder = Callable[[bytes], tuple[int, Any]]


class MalformedMessage(InvalidParameterValue):
    """A message this daemon cannot run as it is: dead-lettered (Event) or refused (RPC)."""


def _tolerant(decode: Decoder, fallback: Decoder) -> Decoder:
    def decode_or_mark(value: bytes) -> tuple[int, Any]:
        try:
            return decode(value)
        except (ValueError, OverflowError, OSError):  # UnicodeDecodeError is a ValueError
            return fallback(value)

    return decode_or_mark


def _marked_text(value: bytes) -> tuple[int, str]:
    length = value[0]
    return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")


def _marked_time(_: bytes) -> tuple[int, datetime]:
    return 8, UNDECODABLE_TIME


def _marked_table(value: bytes) -> tuple[int, dict[str, Any]]:
    (length,) = struct.unpack_from(">I", value)
    return length + 4, {UNDECODABLE_HEADERS: True}


def install_tolerant_decoding() -> None:
    """Decode non-UTF-8 short strings, out-of-range timestamps and bad tables to markers.

    pamqp raises on them, which ends the connection; the broker then redelivers the
    same message to the next connection, forever. Idempotent.
    """
    methods, embedded = pamqp.decode.METHODS, pamqp.decode.TABLE_MAPPING
    if getattr(methods["shortstr"], "tolerant", False):
        return
    replacements = (
        (methods, "shortstr", _marked_text),
        (methods, "timestamp", _marked_time),
        (methods, "table", _marked_table),
        (embedded, b"T", _marked_time),
        (embedded, b"F", _marked_table),
    )
    for table, key, fallback in replacements:
        decoder = _tolerant(table[key], fallback)  # type: ignore[index]
        decoder.tolerant = True  # type: ignore[attr-defined]
        table[key] = decoder  # type: ignore[index]


def encodable(text: str) -> bool:
    """False for text holding bytes that were not UTF-8 (decoded with surrogateescape)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_properties(
    correlation_id: str | None,
    reply_to: str | None,
    headers: Mapping[str, Any],
    timestamp: datetime | None,
) -> None:
    """MalformedMessage unless the properties this daemon uses were decoded intact."""
    if correlation_id is not None and not encodable(correlation_id):
        raise MalformedMessage("correlation_id is not UTF-8")
    if reply_to is not None and not encodable(reply_to):
        raise MalformedMessage("reply_to is not UTF-8")
    if UNDECODABLE_HEADERS in headers:
        raise MalformedMessage("the headers table could not be decoded")
    if timestamp is UNDECODABLE_TIME:
        raise MalformedMessage("the timestamp is out of range")


def header_text(headers: Mapping[str, Any], name: str) -> str | None:
    """A text header (str, or UTF-8 bytes); MalformedMessage for any other type."""
    value = headers.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            pass
    raise MalformedMessage(f"header {name} must be text")


def wire_safe(text: str) -> bool:
    """Whether `text` may be an HTTP header value: printable ASCII, bounded."""
    return len(text) <= MAX_HEADER_VALUE and text.isascii() and text.isprintable()


def request_id_of(message_id: str | None) -> str:
    """The message id as request id, or a new one when it is not a safe path segment.

    Runtimes put the request id in `/invocation/{id}/response`: anything but letters,
    digits, '-', '_' and '.' (or a bare '.'/'..') could aim that request elsewhere.
    """
    if (
        message_id
        and len(message_id) <= MAX_REQUEST_ID
        and REQUEST_ID_CHARS.issuperset(message_id)
        and message_id.strip(".")
    ):
        return message_id
    return new_request_id()


def trace_id_of(headers: Mapping[str, Any]) -> str:
    """X-Amzn-Trace-Id when it is header-safe; otherwise a new one, as for no header."""
    trace = header_text(headers, TRACE_ID)
    return trace if trace and wire_safe(trace) else new_trace_id()


def optional_safe(headers: Mapping[str, Any], name: str) -> str | None:
    """A header passed on to the runtime as it is: refused unless header-safe."""
    value = header_text(headers, name)
    if value is not None and not wire_safe(value):
        raise MalformedMessage(f"header {name} must be printable ASCII of at most 4096 bytes")
    return value or None


def client_context_of(headers: Mapping[str, Any]) -> str | None:
    """The decoded client context, re-serialized when its JSON spans lines."""
    text = decode_client_context(header_text(headers, CLIENT_CONTEXT))
    if text is not None and ("\r" in text or "\n" in text):
        text = json.dumps(json.loads(text), separators=(",", ":"))
    return text


def attempts_of(headers: Mapping[str, Any], name: str = ATTEMPT) -> int:
    """How many times an invocation already ran, from our own counter header."""
    value = headers.get(name, 0)
    if isinstance(value, bytes | str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedMessage(f"header {name} must be a non-negative integer")
    return value


def truncated(data: bytes, limit: int) -> str:
    """At most `limit` bytes of `data` as text (a cut character is dropped)."""
    if len(data) > limit:
        return data[:limit].decode(errors="ignore")
    return data.decode(errors="replace")


def copied_headers(headers: Mapping[str, Any]) -> dict[str, Any] | None:
    """The publisher's headers to carry over, or None when they are too large to keep."""
    copy = dict(headers)
    try:
        size = len(pamqp.encode.field_table(copy))
    except (TypeError, ValueError):  # ValueError covers text that is not UTF-8
        return None
    return copy if size <= MAX_COPIED_HEADERS else None


def log_result_of(value: str | None) -> bytes | None:
    """X-Amz-Log-Result of a reply: base64, else dropped."""
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def error_message(error_body: bytes) -> str:
    """The errorMessage of an error body (the whole body when it has none)."""
    message = error_member(error_body, "errorMessage")
    return message if message is not None else error_body.decode(errors="replace")


def function_exchange(function_name: str) -> str:
    """The exchange a daemon binds its function's queue to: only daemons declare it.

    lambda-server publishes there, never to the default exchange, so a queue of some other
    application that happens to carry a function's name is never reachable through it.
    """
    return f"lambda-function.{function_name}"


def retry_queue(function_name: str, retry: int) -> str:
    """Where the `retry`-th retry of a failed Event waits (one queue per delay)."""
    return f"{function_name}-retry-{retry}"


def epoch_of(timestamp: datetime) -> float:
    """A message timestamp in epoch seconds (AMQP timestamps are UTC, often naive)."""
    return (timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)).timestamp()


def deadline_start(timestamp: datetime) -> float:
    """When a message's deadline starts: its timestamp, if it waited in the queue.

    AMQP timestamps have one-second resolution, so a fresh message's timestamp would cut
    up to a second off its deadline; only an older one is taken as the start.
    """
    now = time.time()
    sent = epoch_of(timestamp)
    return sent if sent < now - 1 else now


# -- request headers: lambda-server encodes, the daemon's consumer decodes ------------------


def request_headers(invocation: Invocation) -> dict[str, FieldValue]:
    """The headers that carry an invocation's Invoke API headers to the function's daemon."""
    headers: dict[str, FieldValue] = {INVOKED_ARN: invocation.invoked_arn}
    if invocation.trace_id:
        headers[TRACE_ID] = invocation.trace_id
    if invocation.client_context:
        headers[CLIENT_CONTEXT] = base64.b64encode(invocation.client_context.encode()).decode()
    if invocation.want_log_tail:
        headers[LOG_TYPE] = "Tail"
    if invocation.cognito_identity:
        headers[COGNITO_IDENTITY] = invocation.cognito_identity
    if invocation.tenant_id:
        headers[TENANT_ID] = invocation.tenant_id
    return headers


def invoked_arn_of(headers: Mapping[str, Any], default: str) -> str:
    """The ARN the caller invoked, when header-safe; else the function's own."""
    arn = header_text(headers, INVOKED_ARN)
    return arn if arn and wire_safe(arn) else default


def wants_log_tail(headers: Mapping[str, Any]) -> bool:
    return header_text(headers, LOG_TYPE) == "Tail"


# -- reply headers: the daemon's consumer encodes, lambda-server decodes ---------------------

ERROR_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.")
VALID_ERROR_STATUS = range(400, 600)
INVALID_REPLY = json.dumps(
    {"Type": "Service", "Message": "The function's daemon sent an invalid reply"}
).encode()


def result_headers(result: InvocationResult) -> dict[str, FieldValue]:
    """The reply headers of an invocation that ran (or failed as a function)."""
    headers: dict[str, FieldValue] = {EXECUTED_VERSION: result.executed_version}
    if result.error_type is not None:
        headers[FUNCTION_ERROR] = "Unhandled"
        headers[ERROR_TYPE] = result.error_type
    if result.log_tail is not None:
        headers[LOG_RESULT] = base64.b64encode(result.log_tail).decode()
    return headers


def error_headers(error: InvokeError) -> dict[str, FieldValue]:
    """The reply headers of an Invoke API error the daemon decided (the body is error.body())."""
    return {ERROR_CODE: error.code, ERROR_STATUS: error.status}


class RemoteError(InvokeError):
    """An Invoke API error decided by the daemon that received the message."""

    def __init__(self, status: int, code: str, body: bytes) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self._body = body

    def body(self) -> bytes:
        return self._body


def reply_text(headers: Mapping[str, Any], name: str) -> str | None:
    """A reply header that may become an HTTP header: None unless text and header-safe."""
    try:
        value = header_text(headers, name)
    except MalformedMessage:
        return None
    return value if value is not None and wire_safe(value) else None


def remote_error(headers: Mapping[str, Any], body: bytes) -> RemoteError:
    """The error the daemon decided; an invalid one becomes a 502 ServiceException."""
    code = reply_text(headers, ERROR_CODE)
    status = headers.get(ERROR_STATUS)
    if isinstance(status, bytes | str) and status.isdigit():
        status = int(status)
    if code and ERROR_CODE_CHARS.issuperset(code) and status in VALID_ERROR_STATUS:
        assert isinstance(status, int)
        return RemoteError(status, code, body)
    return RemoteError(502, "ServiceException", INVALID_REPLY)


def result_of_reply(headers: Mapping[str, Any], body: bytes) -> InvocationResult:
    """The result a reply carries; RemoteError when the daemon answered with an error."""
    if ERROR_CODE in headers:
        raise remote_error(headers, body)
    error_type = None
    if FUNCTION_ERROR in headers:
        error_type = reply_text(headers, ERROR_TYPE) or "Unhandled"
    return InvocationResult(
        body,
        error_type,
        log_result_of(reply_text(headers, LOG_RESULT)),
        reply_text(headers, EXECUTED_VERSION) or "$LATEST",
    )


# -- a reply and the ack of its request, in one write ---------------------------------------

JSON = "application/json"
FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size
CONTENT_HEADER = struct.Struct(">HHQH")  # class, weight, body size, property flags
FRAME_END = b"\xce"
METHOD_FRAME, HEADER_FRAME, BODY_FRAME = 1, 2, 3
REPLY_FLAGS = spec.Basic.Properties.flags["content_type"] | spec.Basic.Properties.flags["headers"]
CORRELATION_FLAG = spec.Basic.Properties.flags["correlation_id"]
JSON_TYPE = pamqp.encode.short_string(JSON)
ACK = struct.Struct(">BHIIQ?c")  # a Basic.Ack method frame, multiple=False
ACK_SIZE = ACK.size - FRAME_HEADER.size - 1
MAX_CACHED_PUBLISH = 256
_publish_frames: dict[tuple[int, str], bytes] = {}
_tables: dict[tuple[str, str], bytes] = {}


def _publish_frame(channel: int, routing_key: str) -> bytes:
    """Basic.Publish to the default exchange; the same for every reply to one caller."""
    key = (channel, routing_key)
    frame = _publish_frames.get(key)
    if frame is None:
        if len(_publish_frames) >= MAX_CACHED_PUBLISH:
            _publish_frames.clear()  # reply_to is the publisher's: keep the cache bounded
        method = spec.Basic.Publish(exchange="", routing_key=routing_key)
        frame = _publish_frames[key] = pamqp.frame.marshal(method, channel)
    return frame


def _table(headers: dict[str, FieldValue]) -> bytes:
    """The encoded headers; those of a plain result (the executed version only) once."""
    if len(headers) != 1:
        return pamqp.encode.field_table(headers)
    ((name, value),) = headers.items()
    if not isinstance(value, str):
        return pamqp.encode.field_table(headers)
    table = _tables.get((name, value))
    if table is None:
        if len(_tables) >= MAX_CACHED_PUBLISH:
            _tables.clear()
        table = _tables[name, value] = pamqp.encode.field_table(headers)
    return table


def _content_header(
    channel: int, body_size: int, correlation_id: str | None, headers: dict[str, FieldValue]
) -> bytes:
    """The content header of a reply: content type, headers and correlation id."""
    flags = REPLY_FLAGS
    properties = JSON_TYPE + _table(headers)
    if correlation_id is not None:
        flags |= CORRELATION_FLAG
        properties += pamqp.encode.short_string(correlation_id)
    start = CONTENT_HEADER.pack(spec.Basic.frame_id, 0, body_size, flags)
    size = len(start) + len(properties)
    return FRAME_HEADER.pack(HEADER_FRAME, channel, size) + start + properties + FRAME_END


def reply_frames(
    channel: int,
    max_content: int,
    reply_to: str,
    correlation_id: str | None,
    headers: dict[str, FieldValue],
    body: bytes,
    delivery_tag: int,
) -> bytes:
    """A reply to `reply_to` followed by the ack of the request (`delivery_tag`).

    `max_content` is the largest body frame payload the connection's frame size allows.
    """
    parts = [
        _publish_frame(channel, reply_to),
        _content_header(channel, len(body), correlation_id, headers),
    ]
    for at in range(0, len(body), max_content):
        chunk = body[at : at + max_content]
        parts += (FRAME_HEADER.pack(BODY_FRAME, channel, len(chunk)), chunk, FRAME_END)
    ack = spec.Basic.Ack.index
    parts.append(ACK.pack(METHOD_FRAME, channel, ACK_SIZE, ack, delivery_tag, False, FRAME_END))
    return b"".join(parts)
