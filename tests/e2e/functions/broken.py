"""A function whose module fails at import: the runtime posts init/error."""

raise RuntimeError("this module cannot be imported")


def handler(event, context):
    return event
