"""A runtime that asks for work twice at once, then serves on the newer request.

Real runtimes can do this when a /next connection breaks and they retry. The older
request's answer is printed to stdout as `FIRST <status> <body>`.
"""

import http.client
import os
import threading

HOST, _, PORT = os.environ["AWS_LAMBDA_RUNTIME_API"].rpartition(":")
NEXT = "/2018-06-01/runtime/invocation/next"


def serve_one(conn: http.client.HTTPConnection) -> None:
    conn.request("GET", NEXT)
    response = conn.getresponse()
    event = response.read()
    request_id = response.getheader("Lambda-Runtime-Aws-Request-Id")
    conn.request("POST", f"/2018-06-01/runtime/invocation/{request_id}/response", body=event)
    conn.getresponse().read()


def older_answer(conn: http.client.HTTPConnection) -> None:
    response = conn.getresponse()
    print("FIRST", response.status, response.read().decode(), flush=True)


older = http.client.HTTPConnection(HOST, int(PORT))
serve_one(older)  # the invocation that started this runtime
# The older request is sent before the newer connection is even opened, so the daemon
# reads it first.
older.request("GET", NEXT)
threading.Thread(target=older_answer, args=(older,), daemon=True).start()
newer = http.client.HTTPConnection(HOST, int(PORT))
while True:
    serve_one(newer)
