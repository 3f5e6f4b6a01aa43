"""A runtime that, when asked, tries to use another Runtime API address as a stranger would.

Events: {"probe": ["host:port", ...]} → GET /next (3 s timeout) on each address that is
not its own and respond with the list of {"status", "body"} it got; anything else is
echoed. With PROBER_SETSID set, the
runtime first starts itself again in a new session and leaves the serving to that copy.
"""

import http.client
import json
import os
import subprocess
import sys

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
NEXT = "/2018-06-01/runtime/invocation/next"


def request(address, method, path, body=None, timeout=3):
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except OSError as error:
        return None, {}, repr(error).encode()
    finally:
        conn.close()


def probe(address):
    status, _, body = request(address, "GET", NEXT)
    return {"status": status, "body": body.decode(errors="replace")}


def main():
    while True:
        status, headers, body = request(API, "GET", NEXT, timeout=None)
        if status != 200:
            print(f"PROBER next failed: {status} {body!r}", flush=True)
            sys.exit(1)
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(body)
        if isinstance(event, dict) and "probe" in event:
            event = [probe(address) for address in event["probe"] if address != API]
        path = f"/2018-06-01/runtime/invocation/{request_id}/response"
        request(API, "POST", path, json.dumps(event).encode())


if __name__ == "__main__":
    if os.environ.pop("PROBER_SETSID", None):
        child = subprocess.Popen([sys.executable, __file__], start_new_session=True)
        sys.exit(child.wait())
    main()
