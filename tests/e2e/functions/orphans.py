"""A function that leaves an orphan behind: a background `sleep` whose parent exits."""

import subprocess


def handler(event, context):
    subprocess.run(["sh", "-c", f"sleep {event.get('sleep', 0.2)} &"], check=True)
    return {"orphaned": True}
