"""Interop types passed between the front doors (HTTP, AMQP) and the dispatcher.

An ``Invocation`` is everything a runtime needs to run one event (plain data: where its
result goes is the dispatcher's business); an ``InvocationResult`` is what comes back.
Neither knows about HTTP, AMQP or processes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field
from random import getrandbits

from lambda_rapid.errors import (
    MAX_CLIENT_CONTEXT,
    InvalidParameterValue,
    InvalidRequestContent,
    RequestTooLarge,
)


@dataclass(slots=True)
class InvocationResult:
    """The outcome of one invocation, as the caller sees it."""

    body: bytes
    # Set when the function failed (its own error, a timeout, a crash): the caller gets
    # `X-Amz-Function-Error: Unhandled` with this body.
    error_type: str | None = None
    log_tail: bytes | None = None
    executed_version: str = "$LATEST"

    @property
    def is_function_error(self) -> bool:
        return self.error_type is not None


@dataclass(slots=True, eq=False)
class Invocation:
    """One invocation on its way to a runtime instance."""

    request_id: str
    payload: bytes
    timeout: float
    invoked_arn: str
    trace_id: str | None = None
    client_context: str | None = None
    cognito_identity: str | None = None
    tenant_id: str | None = None
    want_log_tail: bool = False
    content_type: str = "application/json"
    # Wall-clock start in seconds (set by the front door; AMQP may pass the message time).
    started_at: float = field(default_factory=time.time)
    # Filled in by the dispatcher when an instance takes the invocation (for REPORT).
    invoked_at: float = field(default=0.0, init=False)
    init_duration_ms: float | None = field(default=None, init=False)
    pid: int | None = field(default=None, init=False)
    peak_memory_mb: int = field(default=0, init=False)

    @property
    def deadline_epoch(self) -> float:
        return self.started_at + self.timeout

    @property
    def deadline_ms(self) -> str:
        return str(int(self.deadline_epoch * 1000))


def reject_constant(name: str) -> None:
    raise ValueError(f"Unrecognized token '{name}'")


# Validation only: numbers stay text, so a 5 000-digit integer (valid JSON) does not hit
# Python's int-string length limit, and NaN/Infinity (not JSON) are refused.
STRICT_JSON = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=reject_constant)


def parse_strict_json(data: bytes | str) -> object:
    """The JSON value of `data`; ValueError for anything that is not RFC 8259 JSON."""
    if isinstance(data, bytes):
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    try:
        return STRICT_JSON.decode(data)
    except RecursionError:
        raise ValueError("too deeply nested") from None


def check_payload(payload: bytes, limit: int) -> None:
    """Lambda's checks on an invocation payload: size, then JSON unless empty."""
    if len(payload) > limit:
        raise RequestTooLarge(
            f"Request must be smaller than {limit} bytes for the Invoke operation"
        )
    if payload:
        try:
            parse_strict_json(payload)
        except ValueError as exc:
            raise InvalidRequestContent(
                f"Could not parse request body into json: Could not parse payload into json: {exc}"
            ) from None


def decode_client_context(header: str | None) -> str | None:
    """X-Amz-Client-Context: base64 of a JSON object → the JSON text for the runtime."""
    if not header:
        return None
    try:
        raw = base64.b64decode(header, validate=True)
        if len(raw) > MAX_CLIENT_CONTEXT:
            raise InvalidParameterValue(
                f"Client context must be at most {MAX_CLIENT_CONTEXT} bytes once decoded."
            )
        text = raw.decode()
        value = parse_strict_json(text)
        if not isinstance(value, dict):
            raise ValueError("not an object")
    except (binascii.Error, ValueError):
        raise InvalidParameterValue(
            "Client context must be a valid Base64-encoded JSON object."
        ) from None
    return header_safe_json(text)


def header_safe_json(text: str) -> str:
    """`text` (valid JSON) fit for an HTTP header: ASCII, no CR or LF.

    Outside strings CR and LF are only whitespace, and inside them JSON allows no raw
    control character, so blanking them keeps the value; other characters are escaped.
    """
    if not text.isascii():
        # Only strings can hold non-ASCII characters: their \u escapes mean the same.
        text = "".join([c if c.isascii() else json.dumps(c)[1:-1] for c in text])
    if "\n" in text or "\r" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return text


def decode_cognito_identity(header: str | None) -> str | None:
    """X-Amz-Cognito-Identity: a JSON object, passed on to the runtime as header-safe JSON."""
    if not header:
        return None
    try:
        if not isinstance(parse_strict_json(header), dict):
            raise ValueError("not an object")
    except ValueError:
        raise InvalidParameterValue("Cognito identity must be a JSON object.") from None
    return header_safe_json(header)


TENANT_ID = re.compile(r"[A-Za-z0-9._:/=+\-@ ]{1,256}")
TRACE_ID = re.compile(r"[\x20-\x7e]{1,2048}")


def check_tenant_id(header: str | None) -> str | None:
    if header is None:
        return None
    if TENANT_ID.fullmatch(header) is None:
        raise InvalidParameterValue(
            "TenantId must be 1 to 256 characters of letters, digits, spaces and ._:/=+-@"
        )
    return header


def check_trace_id(header: str | None) -> str | None:
    if header is None:
        return None
    if TRACE_ID.fullmatch(header) is None:
        raise InvalidParameterValue("X-Amzn-Trace-Id must be printable ASCII.")
    return header


def new_trace_id() -> str:
    """An X-Ray trace header, as Lambda generates when the caller sent none."""
    bits = f"{getrandbits(160):040x}"
    return f"Root=1-{int(time.time()):08x}-{bits[:24]};Parent={bits[24:]};Sampled=0"


# Version 4 and the RFC 4122 variant, over 128 random bits.
UUID_CLEAR = ~((0xF << 76) | (0x3 << 62))
UUID_SET = (0x4 << 76) | (0x2 << 62)


def new_request_id() -> str:
    """A random (version 4) UUID string, as Lambda's request ids are.

    From the random module (seeded from the OS, reseeded after a fork) rather than
    os.urandom: ids must be unique, not secret, and this saves a system call per
    invocation.
    """
    h = f"{getrandbits(128) & UUID_CLEAR | UUID_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
