"""A handler that prints without newlines, as fast as it can, until it is killed."""

import os


def handler(event, context):
    chunk = b"x" * 65536
    while True:
        os.write(1, chunk)
