"""A handler that leaves a process behind in its own session, ignoring SIGTERM.

Event keys: orphan (the process's parent exits at once, so it is re-parented), exit
(the runtime exits with this status after starting it). Returns {"pid": ...}.
With sleep, it only sleeps that many seconds.
"""

import os
import subprocess
import sys
import time

STUBBORN = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "os.setsid()\n"
    "print('ready', flush=True)\n"
    "time.sleep(1000)\n"
)
START_AND_LEAVE = (
    "import subprocess, sys\n"
    "child = subprocess.Popen(\n"
    "    [sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL\n"
    ")\n"
    "child.stdout.readline()\n"
    "print(child.pid)\n"
)


def handler(event, context):
    if "sleep" in event:
        time.sleep(event["sleep"])
        return {}
    if event.get("orphan"):
        done = subprocess.run(
            [sys.executable, "-c", START_AND_LEAVE, STUBBORN],
            capture_output=True,
            text=True,
            check=True,
        )
        pid = int(done.stdout)
    else:
        child = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
        child.stdout.readline()
        pid = child.pid
    if "exit" in event:
        os._exit(event["exit"])
    return {"pid": pid}
