"""What a Lambda function name may be: the one check behind every setting and route.

A plain function name is 1-64 ASCII letters, digits, '-' and '_' (Lambda's own rule), so
it is also a safe queue name, exchange name suffix and URL path segment.
"""

from __future__ import annotations

FUNCTION_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
MAX_FUNCTION_NAME = 64


def is_function_name(text: str) -> bool:
    """Whether `text` is a plain Lambda function name."""
    return 1 <= len(text) <= MAX_FUNCTION_NAME and FUNCTION_NAME_CHARS.issuperset(text)


def function_name_from(text: str) -> str:
    """`text` made into a function name: other characters become '-', cut at 64."""
    cleaned = "".join(c if c in FUNCTION_NAME_CHARS else "-" for c in text)
    return cleaned[:MAX_FUNCTION_NAME] or "function"
