"""An external Lambda extension for the tests: it records what it is told.

Each line of `$EXT_LOG.<_INSTANCE>` is a JSON record: its registration answer, then
every event it receives, then {"done": requestId} once it has finished with an INVOKE.
With `$EXT_GATE` set it finishes an INVOKE only once the file `$EXT_GATE` exists (a slow
extension). `$EXT_EVENTS` lists the events it registers for (default INVOKE,SHUTDOWN);
`$EXT_IGNORE_SHUTDOWN` makes it hang on SHUTDOWN, ignoring SIGTERM. Misbehaviours:
`$EXT_DELAY` (seconds to sleep before registering), `$EXT_NO_REGISTER` (never
registers), `$EXT_INIT_ERROR` (posts init/error with that error type after registering),
`$EXT_EXIT_ERROR` (posts exit/error with that type on an INVOKE), `$EXT_EXIT_ON_INVOKE`
(exits on an INVOKE), `$EXT_SAY` (prints it on an INVOKE, then creates the file
`$EXT_SAID`). A refused registration is recorded as {"refused": [status, type]}
in `$EXT_LOG.<_INSTANCE>.refused`, then it exits with status 1.
"""

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

BASE = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2020-01-01/extension"
# Started through a wrapper in the extensions directory, whose path is the first argument.
NAME = os.path.basename(sys.argv[1] if len(sys.argv) > 1 else sys.argv[0])


def record(log, item):
    log.write(json.dumps(item) + "\n")
    log.flush()


def log_path():
    return f"{os.environ['EXT_LOG']}.{os.environ['_INSTANCE']}"


def post_error(identifier, route, error_type):
    request = urllib.request.Request(
        f"{BASE}/{route}",
        data=json.dumps({"errorMessage": "test", "errorType": error_type}).encode(),
        headers={
            "Lambda-Extension-Identifier": identifier,
            "Lambda-Extension-Function-Error-Type": error_type,
        },
        method="POST",
    )
    with urllib.request.urlopen(request) as answer:
        answer.read()


def main():
    if os.environ.get("EXT_NO_REGISTER"):
        while True:
            time.sleep(1)
    time.sleep(float(os.environ.get("EXT_DELAY", "0")))
    events = os.environ.get("EXT_EVENTS", "INVOKE,SHUTDOWN").split(",")
    request = urllib.request.Request(
        BASE + "/register",
        data=json.dumps({"events": events}).encode(),
        headers={"Lambda-Extension-Name": NAME, "Lambda-Extension-Accept-Feature": "accountId"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request) as answer:
            identifier = answer.headers["Lambda-Extension-Identifier"]
            info = json.load(answer)
    except urllib.error.HTTPError as error:
        with open(log_path() + ".refused", "a") as log:
            record(log, {"refused": [error.code, json.load(error).get("errorType")]})
        sys.exit(1)
    with open(log_path(), "a") as log:
        serve(log, identifier, info)


def serve(log, identifier, info):
    record(log, {"registered": info, "pid": os.getpid(), "handler_seen": "_HANDLER" in os.environ})
    gate = os.environ.get("EXT_GATE")
    if os.environ.get("EXT_INIT_ERROR"):
        post_error(identifier, "init/error", os.environ["EXT_INIT_ERROR"])
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
        if os.environ.get("EXT_SAY"):
            print(os.environ["EXT_SAY"], flush=True)
            open(os.environ["EXT_SAID"], "w").close()
        if os.environ.get("EXT_EXIT_ON_INVOKE"):
            sys.exit(0)
        if os.environ.get("EXT_EXIT_ERROR"):
            post_error(identifier, "exit/error", os.environ["EXT_EXIT_ERROR"])
        while gate and not os.path.exists(gate):
            time.sleep(0.02)
        record(log, {"done": event["requestId"]})


if __name__ == "__main__":
    main()
