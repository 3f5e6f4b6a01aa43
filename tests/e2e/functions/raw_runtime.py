"""A hand-written runtime that talks to the Runtime API with http.client and misbehaves
on purpose, to check the daemon's answers to a misbehaving runtime.

Every Runtime API call it makes is recorded as {"call", "status", "body"} in LOG, printed
on stdout as "RAW_RUNTIME <json>" and returned in later responses ("log").

Before its first /next it runs the steps named in RAW_BEFORE (comma separated):
  response    POST a response for a made-up request id (no invocation held yet)
  init_error  POST /init/error (type RAW_INIT_ERROR_TYPE, body RAW_INIT_ERROR_BODY), then
              exit with status RAW_INIT_EXIT (default 0)

Then for each event (a JSON object) it does what "do" says (default "echo"):
  echo        respond with the event
  headers     respond with the /next response's headers and the log
  report      respond with the log
  unknown     POST a response for a made-up request id, then respond with the log
  twice       respond, then POST a second response for the same id (result in the log)
  next_again  GET /next while holding the invocation, then respond with the log
  error       POST /error with header type=event["type"] and body=event["body"]
  big         POST a response of event["size"] bytes (result in the log), then carry on
"""

import http.client
import json
import os
import sys
import uuid

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = "/2018-06-01/runtime"
LOG = []


def call(method, path, body=b"", headers=None, name=None):
    host, _, port = API.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=None)
    try:
        conn.putrequest(method, BASE + path)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if method == "POST":
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        send_error = None
        view = memoryview(body)
        try:
            while view:
                conn.sock.sendall(view[:65536])
                view = view[65536:]
        except OSError as error:  # the server may answer before reading everything
            send_error = repr(error)
        try:
            resp = conn.getresponse()
            status, resp_headers, data = resp.status, dict(resp.getheaders()), resp.read()
        except OSError as error:
            status, resp_headers, data = None, {}, repr(error).encode()
    finally:
        conn.close()
    if name is not None:
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = data.decode(errors="replace")
        entry = {"call": name, "status": status, "body": parsed}
        if send_error:
            entry["send_error"] = send_error
        LOG.append(entry)
        print("RAW_RUNTIME " + json.dumps(entry), flush=True)
    return status, resp_headers, data


def respond(request_id, payload, name=None):
    return call(
        "POST",
        f"/invocation/{request_id}/response",
        json.dumps(payload).encode(),
        {"Content-Type": "application/json"},
        name,
    )


def before_first_next():
    steps = [s for s in os.environ.get("RAW_BEFORE", "").split(",") if s]
    for step in steps:
        if step == "response":
            respond(str(uuid.uuid4()), {"early": True}, "response_before_next")
        elif step == "init_error":
            error_type = os.environ.get("RAW_INIT_ERROR_TYPE", "Custom.InitFailed")
            body = os.environ.get(
                "RAW_INIT_ERROR_BODY", '{"errorMessage": "init went wrong", "errorType": "Custom"}'
            )
            call(
                "POST",
                "/init/error",
                body.encode(),
                {
                    "Lambda-Runtime-Function-Error-Type": error_type,
                    "Content-Type": "application/json",
                },
                "init_error",
            )
            sys.exit(int(os.environ.get("RAW_INIT_EXIT", "0")))


def main():
    before_first_next()
    while True:
        status, headers, body = call("GET", "/invocation/next")
        if status != 200:
            print(f"RAW_RUNTIME next failed: {status} {body!r}", flush=True)
            sys.exit(1)
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(body) if body else {}
        action = event.get("do", "echo") if isinstance(event, dict) else "echo"
        if action == "echo":
            respond(request_id, event)
        elif action == "headers":
            respond(request_id, {"headers": headers, "log": LOG})
        elif action == "report":
            respond(request_id, {"log": LOG})
        elif action == "unknown":
            respond(str(uuid.uuid4()), {"wrong": True}, "response_unknown_id")
            respond(request_id, {"log": LOG})
        elif action == "twice":
            respond(request_id, {"first": True}, "response_first")
            respond(request_id, {"second": True}, "response_second")
        elif action == "next_again":
            call("GET", "/invocation/next", name="next_while_busy")
            respond(request_id, {"log": LOG})
        elif action == "error":
            call(
                "POST",
                f"/invocation/{request_id}/error",
                json.dumps(event["body"]).encode(),
                {
                    "Lambda-Runtime-Function-Error-Type": event["type"],
                    "Content-Type": "application/json",
                },
                "error",
            )
        elif action == "big":
            call(
                "POST",
                f"/invocation/{request_id}/response",
                b"x" * event["size"],
                {"Content-Type": "application/octet-stream"},
                "response_big",
            )
        else:
            respond(request_id, {"unknown action": action})


if __name__ == "__main__":
    main()
