"""A function that answers once the file named by its event's "file" exists (10 s at most)."""

import os
import time


def handler(event, context):
    deadline = time.monotonic() + 10
    while not os.path.exists(event["file"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"seen": os.path.exists(event["file"])}
