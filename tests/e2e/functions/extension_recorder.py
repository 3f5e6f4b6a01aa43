"""An external Lambda extension for the tests: it records what it is told.

Each line of `$EXT_LOG.<_INSTANCE>` is a JSON record: its registration answer, then
every event it receives, then {"done": requestId} once it has finished with an INVOKE.
With `$EXT_GATE` set it finishes an INVOKE only once the file `$EXT_GATE` exists (a slow
extension). `$EXT_EVENTS` lists the events it registers for (default INVOKE,SHUTDOWN);
`$EXT_IGNORE_SHUTDOWN` makes it hang on SHUTDOWN, ignoring SIGTERM.
"""

import json
import os
import signal
import sys
import time
import urllib.request

BASE = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2020-01-01/extension"
# Started through a wrapper in the extensions directory, whose path is the first argument.
NAME = os.path.basename(sys.argv[1] if len(sys.argv) > 1 else sys.argv[0])


def record(log, item):
    log.write(json.dumps(item) + "\n")
    log.flush()


def main():
    events = os.environ.get("EXT_EVENTS", "INVOKE,SHUTDOWN").split(",")
    request = urllib.request.Request(
        BASE + "/register",
        data=json.dumps({"events": events}).encode(),
        headers={"Lambda-Extension-Name": NAME, "Lambda-Extension-Accept-Feature": "accountId"},
        method="POST",
    )
    with urllib.request.urlopen(request) as answer:
        identifier = answer.headers["Lambda-Extension-Identifier"]
        info = json.load(answer)
    with open(f"{os.environ['EXT_LOG']}.{os.environ['_INSTANCE']}", "a") as log:
        serve(log, identifier, info)


def serve(log, identifier, info):
    record(log, {"registered": info, "pid": os.getpid(), "handler_seen": "_HANDLER" in os.environ})
    gate = os.environ.get("EXT_GATE")
    while True:
        request = urllib.request.Request(
            BASE + "/event/next", headers={"Lambda-Extension-Identifier": identifier}
        )
        with urllib.request.urlopen(request) as answer:
            event = json.load(answer)
        record(log, event)
        if event["eventType"] == "SHUTDOWN":
            if os.environ.get("EXT_IGNORE_SHUTDOWN"):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                while True:
                    time.sleep(1)
            return
        while gate and not os.path.exists(gate):
            time.sleep(0.02)
        record(log, {"done": event["requestId"]})


if __name__ == "__main__":
    main()
