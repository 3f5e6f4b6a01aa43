"""The ``application/vnd.amazon.eventstream`` framing, as InvokeWithResponseStream answers.

A message is a prelude (total length, headers length, both 32-bit big-endian, and the
CRC32 of those 8 bytes), the headers (name length byte, name, value type 7 = string,
16-bit value length, value), the payload and the CRC32 of everything before it.
InvokeWithResponseStream sends ``PayloadChunk`` events, then one ``InvokeComplete``.
"""

from __future__ import annotations

import json
import struct
import zlib

STRING = 7
PRELUDE = struct.Struct(">II")
CRC = struct.Struct(">I")
# The largest payload one message carries (clients refuse messages over 16 MiB).
MAX_PAYLOAD = 8 * 1024 * 1024


def encode_headers(headers: tuple[tuple[str, str], ...]) -> bytes:
    parts = []
    for name, value in headers:
        raw_name, raw_value = name.encode(), value.encode()
        parts.append(bytes((len(raw_name),)) + raw_name)
        parts.append(struct.pack(">BH", STRING, len(raw_value)) + raw_value)
    return b"".join(parts)


def message(headers: bytes, payload: bytes) -> bytes:
    """One framed message from encoded `headers` and `payload`."""
    total = PRELUDE.size + CRC.size + len(headers) + len(payload) + CRC.size
    prelude = PRELUDE.pack(total, len(headers))
    head = prelude + CRC.pack(zlib.crc32(prelude)) + headers
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + payload + CRC.pack(crc)


CHUNK_HEADERS = encode_headers(
    (
        (":event-type", "PayloadChunk"),
        (":content-type", "application/octet-stream"),
        (":message-type", "event"),
    )
)
COMPLETE_HEADERS = encode_headers(
    (
        (":event-type", "InvokeComplete"),
        (":content-type", "application/json"),
        (":message-type", "event"),
    )
)


def payload_chunks(data: bytes) -> list[bytes]:
    """`data` as PayloadChunk messages (one unless it is over MAX_PAYLOAD)."""
    if len(data) <= MAX_PAYLOAD:
        return [message(CHUNK_HEADERS, data)]
    view = memoryview(data)
    return [
        message(CHUNK_HEADERS, bytes(view[i : i + MAX_PAYLOAD]))
        for i in range(0, len(data), MAX_PAYLOAD)
    ]


def invoke_complete(
    error_code: str | None = None, error_details: str | None = None, log_result: str | None = None
) -> bytes:
    """The InvokeComplete event: what failed (if anything) and the log tail (base64)."""
    fields: dict[str, str] = {}
    if error_code is not None:
        fields["ErrorCode"] = error_code
    if error_details is not None:
        fields["ErrorDetails"] = error_details
    if log_result is not None:
        fields["LogResult"] = log_result
    return message(COMPLETE_HEADERS, json.dumps(fields).encode())
