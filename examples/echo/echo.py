"""Echo Lambda handler: returns the invocation event unchanged."""

from typing import Any


def handler(event: Any, context: Any) -> Any:
    return event
