"""The eventstream frames decode with botocore's own parser, as boto3 reads them."""

from __future__ import annotations

import json
import zlib

import pytest
from botocore.eventstream import EventStreamBuffer

from lambda_rapid.eventstream import MAX_PAYLOAD, invoke_complete, payload_chunks


def decoded(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(message.headers, message.payload) for message in buffer]


def test_payload_chunk_decodes_with_its_event_headers() -> None:
    (frame,) = payload_chunks(b"hello \x00 world")
    ((headers, payload),) = decoded(frame)
    assert headers == {
        ":event-type": "PayloadChunk",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }
    assert payload == b"hello \x00 world"


def test_invoke_complete_carries_error_and_log() -> None:
    frame = invoke_complete("Function.ResponseSizeTooLarge", "too big", "bG9n")
    ((headers, payload),) = decoded(frame)
    assert headers[":event-type"] == "InvokeComplete"
    assert json.loads(payload) == {
        "ErrorCode": "Function.ResponseSizeTooLarge",
        "ErrorDetails": "too big",
        "LogResult": "bG9n",
    }
    ((_, empty),) = decoded(invoke_complete())
    assert json.loads(empty) == {}


def test_frames_split_anywhere_decode_in_order() -> None:
    data = b"".join(payload_chunks(b"a" * 10) + payload_chunks(b"") + [invoke_complete()])
    buffer = EventStreamBuffer()
    seen = []
    for i in range(len(data)):
        buffer.add_data(data[i : i + 1])
        seen.extend(message.payload for message in buffer)
    assert seen == [b"a" * 10, b"", b"{}"]


def test_a_payload_over_the_frame_cap_is_split() -> None:
    data = bytes(range(256)) * (MAX_PAYLOAD // 256 + 10)
    frames = payload_chunks(data)
    assert len(frames) == 2
    assert b"".join(payload for _, payload in decoded(b"".join(frames))) == data


def test_a_corrupted_frame_is_refused_by_the_client() -> None:
    (frame,) = payload_chunks(b"x")
    broken = frame[:-1] + bytes((frame[-1] ^ 1,))
    with pytest.raises(Exception, match="CRC|crc|Checksum|checksum"):
        decoded(broken)
    assert zlib.crc32(frame[:8]).to_bytes(4, "big") == frame[8:12]
