"""A raw runtime that answers each invocation with the header lines of its /next response.

It speaks HTTP over a plain socket, so the test sees exactly what went over the wire.
"""

import json
import os
import socket

HOST, PORT = os.environ["AWS_LAMBDA_RUNTIME_API"].rsplit(":", 1)
BASE = "/2018-06-01/runtime/invocation"


def exchange(method: str, path: str, body: bytes = b"") -> bytes:
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((HOST, int(PORT))) as sock:
        sock.sendall(request + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[0]


while True:
    lines = exchange("GET", f"{BASE}/next").decode("latin-1").split("\r\n")[1:]
    request_id = next(
        line.split(":", 1)[1].strip()
        for line in lines
        if line.lower().startswith("lambda-runtime-aws-request-id:")
    )
    exchange("POST", f"{BASE}/{request_id}/response", json.dumps(lines).encode())
