"""A custom runtime (Python standard library only) that streams its responses.

It answers each event with `Lambda-Runtime-Function-Response-Mode: streaming` and a
chunked body, written on a raw socket so that trailers can be sent. The event says what
to do:
  chunks      list of strings, streamed one chunk each (default ["hello ", "world"])
  gate        a path: after the first chunk, wait until this file exists, then go on
  size        stream this many bytes (in 64 KiB chunks) instead of `chunks`
  progress    a path where the count of body bytes sent so far is written
  sndbuf      the socket's send buffer size while streaming
  fail        {"type", "message"}: end with these trailers instead of a clean end
  hang        after the first chunk, never end (the timeout must stop it)
  http        a Function URL prelude {"statusCode", "headers", "cookies"} sent first,
              with the http-integration-response content type
Behind the gateway the event is a proxy event: its request body holds these fields.
"""

import base64
import json
import os
import socket
import time

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = "/2018-06-01/runtime"
HTTP_INTEGRATION = "application/vnd.awslambda.http-integration-response"


def connect():
    host, _, port = API.rpartition(":")
    return socket.create_connection((host.strip("[]"), int(port)))


def read_answer(sock):
    """Status, headers and body of one HTTP answer (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("closed")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def next_event(sock):
    sock.sendall(f"GET {BASE}/invocation/next HTTP/1.1\r\nHost: rt\r\n\r\n".encode())
    _, headers, body = read_answer(sock)
    event = json.loads(body or b"{}")
    if "requestContext" in event:  # a proxy event: the instructions are its body
        body = event.get("body") or "{}"
        event = json.loads(base64.b64decode(body) if event.get("isBase64Encoded") else body)
    return headers["lambda-runtime-aws-request-id"], event


def chunk(sock, data, sent, progress):
    sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
    sent += len(data)
    if progress:
        with open(progress + ".tmp", "w") as out:
            out.write(str(sent))
        os.replace(progress + ".tmp", progress)
    return sent


def pieces(event):
    if "size" in event:
        left = event["size"]
        while left > 0:
            yield b"x" * min(65536, left)
            left -= 65536
        return
    for text in event.get("chunks", ["hello ", "world"]):
        yield text.encode()


def respond(sock, request_id, event):
    if "sndbuf" in event:  # a small send buffer: the runtime feels the daemon's pauses
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, event["sndbuf"])
    content_type = HTTP_INTEGRATION if "http" in event else "application/octet-stream"
    sock.sendall(
        (
            f"POST {BASE}/invocation/{request_id}/response HTTP/1.1\r\nHost: rt\r\n"
            "Lambda-Runtime-Function-Response-Mode: streaming\r\n"
            "Transfer-Encoding: chunked\r\n"
            f"Content-Type: {content_type}\r\n"
            "Trailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body\r\n"
            "\r\n"
        ).encode()
    )
    sent, progress = 0, event.get("progress")
    if "http" in event:
        prelude = json.dumps(event["http"]).encode() + b"\0" * 8
        sent = chunk(sock, prelude, sent, None)
    first = True
    for data in pieces(event):
        sent = chunk(sock, data, sent, progress)
        if first:
            first = False
            if "gate" in event:
                while not os.path.exists(event["gate"]):
                    time.sleep(0.01)
            if event.get("hang"):
                while True:
                    time.sleep(60)
    fail = event.get("fail")
    if fail:
        body = json.dumps({"errorMessage": fail["message"], "errorType": fail["type"]})
        trailers = (
            f"Lambda-Runtime-Function-Error-Type: {fail['type']}\r\n"
            f"Lambda-Runtime-Function-Error-Body: {base64.b64encode(body.encode()).decode()}\r\n"
        )
        sock.sendall(b"0\r\n" + trailers.encode() + b"\r\n")
    else:
        sock.sendall(b"0\r\n\r\n")
    return read_answer(sock)


def main():
    sock = connect()
    while True:
        request_id, event = next_event(sock)
        status, _, body = respond(sock, request_id, event)
        print(f"STREAM_RUNTIME answered {status} {body.decode(errors='replace')}", flush=True)


main()
