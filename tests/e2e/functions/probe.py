"""A test function that reports when and where it ran; behaviour chosen by event keys.

Module import sleeps PROBE_INIT_SLEEP seconds (env) to make cold starts slow on purpose,
and with PROBE_INIT_GATE=<path> waits until that file exists (the test opens the gate);
with PROBE_IGNORE_SIGTERM set the runtime process ignores SIGTERM.

Keys (applied in this order):
  announce  print "PROBE pid=<pid> request=<aws_request_id>" on stdout at once
  child     start `sleep 300` in the background (same process group) and print
            "PROBE child=<pid> request=<aws_request_id>"; with "stubborn" the child
            (a shell running sleep) ignores SIGTERM
  alloc     allocate and touch this many MB, held until the handler returns
  spray     {"letter": "a", "lines": 200, "width": 3000, "chunk": 777}: write that many
            lines of one letter to stdout and stderr in odd-sized os.write chunks
  sleep     seconds
  wait      a path: return once that file exists (the test decides when)
  exit      os._exit(status)
Returns {"pid", "start", "end", "tag", "child", "cold"}.
"""

import os
import signal
import subprocess
import sys
import time

time.sleep(float(os.environ.get("PROBE_INIT_SLEEP", "0")))
while not os.path.exists(os.environ.get("PROBE_INIT_GATE") or "/"):
    time.sleep(0.01)
if os.environ.get("PROBE_IGNORE_SIGTERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

COLD = True


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _spray(spec):
    line = spec.get("letter", "a").encode() * spec.get("width", 3000) + b"\n"
    blob = line * spec.get("lines", 200)
    chunk = spec.get("chunk", 777)
    sys.stdout.flush()
    sys.stderr.flush()
    for start in range(0, len(blob), chunk):
        piece = blob[start : start + chunk]
        _write_all(1, piece)
        _write_all(2, piece)


def handler(event, context):
    global COLD
    cold, COLD = COLD, False
    start = time.time()
    event = event if isinstance(event, dict) else {}
    request_id = context.aws_request_id
    if event.get("announce"):
        print(f"PROBE pid={os.getpid()} request={request_id}", flush=True)
    child = None
    if event.get("child"):
        if event["child"] == "stubborn":
            command = ["sh", "-c", "trap '' TERM; sleep 300; true"]
        else:
            command = ["sleep", "300"]
        child = subprocess.Popen(command).pid
        print(f"PROBE child={child} request={request_id}", flush=True)
    held = None
    if "alloc" in event:
        held = b"\x01" * (event["alloc"] * 1024 * 1024)
    if "spray" in event:
        _spray(event["spray"])
    if "sleep" in event:
        time.sleep(event["sleep"])
    while "wait" in event and not os.path.exists(event["wait"]):
        time.sleep(0.01)
    if "exit" in event:
        sys.stdout.flush()
        os._exit(event["exit"])
    del held
    return {
        "pid": os.getpid(),
        "start": start,
        "end": time.time(),
        "tag": event.get("tag"),
        "child": child,
        "cold": cold,
    }
