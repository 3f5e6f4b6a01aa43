"""An external extension for the tests that subscribes to the Telemetry (or Logs) API.

It registers (for INVOKE and SHUTDOWN), listens on a free loopback port, subscribes with
`$TEL_BODY` (a JSON subscription whose destination URI gets the port: "{port}" in it is
replaced) on `$TEL_API` ("telemetry" or "logs"), and appends every batch it receives as
one JSON line to `$TEL_OUT.<_INSTANCE>`. The subscription's answer is written to
`$TEL_OUT.<_INSTANCE>.subscribed` as [status, body]. With `$TEL_GATE` set, the listener
answers nothing until that file exists (a stalled subscriber); with `$TEL_SECOND` set it
then subscribes again with the other API and records that answer in `.second`.
"""

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
NAME = os.path.basename(sys.argv[1] if len(sys.argv) > 1 else sys.argv[0])
OUT = f"{os.environ['TEL_OUT']}.{os.environ['_INSTANCE']}"
GATE = os.environ.get("TEL_GATE")
LOCK = threading.Lock()


class Listener(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the standard library's spelling
        body = self.rfile.read(int(self.headers["Content-Length"]))
        while GATE and not os.path.exists(GATE):
            threading.Event().wait(0.02)
        with LOCK, open(OUT, "a") as out:
            out.write(json.dumps(json.loads(body)) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def call(method, path, body=None, headers=None):
    request = urllib.request.Request(f"http://{API}{path}", body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def subscribe(identifier, api, port):
    path = "/2022-07-01/telemetry" if api == "telemetry" else "/2020-08-15/logs"
    body = os.environ["TEL_BODY"].replace("{port}", str(port)).encode()
    status, _, answer = call("PUT", path, body, {"Lambda-Extension-Identifier": identifier})
    return [status, answer.decode()]


def main():
    headers = {"Lambda-Extension-Name": NAME}
    events = json.dumps({"events": ["INVOKE", "SHUTDOWN"]}).encode()
    _, answer, _ = call("POST", "/2020-01-01/extension/register", events, headers)
    identifier = answer["Lambda-Extension-Identifier"]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    api = os.environ.get("TEL_API", "telemetry")
    with open(OUT + ".subscribed", "w") as out:
        json.dump(subscribe(identifier, api, port), out)
    if os.environ.get("TEL_SECOND"):
        other = "logs" if api == "telemetry" else "telemetry"
        with open(OUT + ".second", "w") as out:
            json.dump(subscribe(identifier, other, port), out)
    print(f"{NAME} subscribed", flush=True)
    next_headers = {"Lambda-Extension-Identifier": identifier}
    while True:
        _, _, event = call("GET", "/2020-01-01/extension/event/next", None, next_headers)
        if json.loads(event).get("eventType") == "SHUTDOWN":
            threading.Event().wait(0.3)  # the last batches arrive during shutdown
            return


if __name__ == "__main__":
    main()
