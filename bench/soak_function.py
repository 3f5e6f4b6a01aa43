"""The soak benchmark's function: echo, print, raise, sleep or exit as the event says."""

import os
import sys
import time


def handler(event, context):
    if "print" in event:
        print(event["print"], flush=True)
    if "sleep" in event:
        time.sleep(event["sleep"])
    if "raise" in event:
        raise ValueError(event["raise"])
    if "exit" in event:
        sys.stdout.flush()
        os._exit(event["exit"])
    return event
