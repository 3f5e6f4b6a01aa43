"""An awslambdaric function with an internal extension registered at import time.

The module registers an internal extension (INVOKE only) from a thread, as an agent
library would, and records the Extensions API's answers to misuse. The handler returns
what was recorded, the INVOKE events the thread received so far, and the answer to a
registration attempted after init.
"""

import json
import os
import threading
import urllib.error
import urllib.request

BASE = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2020-01-01/extension"
ANSWERS = {}
EVENTS = []


def call(method, route, body=None, headers=None):
    request = urllib.request.Request(BASE + route, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.load(error)


def kind(result):
    return [result[0], result[2].get("errorType")]


def register(events, name="internal-agent"):
    body = json.dumps({"events": events}).encode()
    return call("POST", "/register", body, {"Lambda-Extension-Name": name} if name else {})


def next_event(identifier):
    headers = {"Lambda-Extension-Identifier": identifier} if identifier is not None else {}
    return call("GET", "/event/next", headers=headers)


ANSWERS["missing_name"] = kind(register(["INVOKE"], name=None))
ANSWERS["unknown_event"] = kind(register(["BOGUS"]))
ANSWERS["internal_shutdown"] = kind(register(["SHUTDOWN"]))
ANSWERS["missing_identifier"] = kind(next_event(None))
ANSWERS["invalid_identifier"] = kind(next_event("not-a-uuid"))
ANSWERS["unknown_identifier"] = kind(next_event("00000000-0000-4000-8000-000000000000"))
STATUS, HEADERS, INFO = register(["INVOKE"])
IDENTIFIER = HEADERS["Lambda-Extension-Identifier"]


def agent():
    while True:
        status, _, event = next_event(IDENTIFIER)
        if status != 200:
            return
        EVENTS.append(event["requestId"])


threading.Thread(target=agent, daemon=True).start()


def handler(event, context):
    return {
        "answers": ANSWERS,
        "registered": [STATUS, INFO],
        "events": list(EVENTS),
        "request_id": context.aws_request_id,
        "late": kind(register(["INVOKE"], name="late-agent")),
        "instance": os.environ.get("_INSTANCE"),
    }
