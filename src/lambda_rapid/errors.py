"""The AWS error vocabulary, as data: one class per error the daemon can answer with.

Invoke API errors carry their HTTP status, the ``x-amzn-ErrorType`` code and the member
name AWS uses for the message (some shapes say ``Message``, others ``message``). Runtime
API errors carry the status and ``errorType`` Lambda gives a misbehaving runtime.
Function-level failures (timeout, exit, oversized response) are built by the helpers at
the bottom, in the body shape Lambda hands to the invoker, and `error_member` is the one
reader of such bodies. ``BrokerUnavailable`` ends a daemon or lambda-server with status 1.
"""

from __future__ import annotations

import json


class InvokeError(Exception):
    """An Invoke API error answer: status, error code, message."""

    status = 500
    code = "ServiceException"
    message_key = "Message"
    error_kind = "Service"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"Type": self.error_kind, self.message_key: self.message}).encode()


class ResourceNotFound(InvokeError):
    status = 404
    code = "ResourceNotFoundException"
    error_kind = "User"


class InvalidRequestContent(InvokeError):
    status = 400
    code = "InvalidRequestContentException"
    message_key = "message"
    error_kind = "User"


class InvalidParameterValue(InvokeError):
    status = 400
    code = "InvalidParameterValueException"
    message_key = "message"
    error_kind = "User"


class RequestTooLarge(InvokeError):
    status = 413
    code = "RequestTooLargeException"
    message_key = "message"
    error_kind = "User"


class TooManyRequests(InvokeError):
    """Throttled: Lambda adds a Reason member to the body."""

    status = 429
    code = "TooManyRequestsException"
    message_key = "message"
    error_kind = "User"
    reason = "ConcurrentInvocationLimitExceeded"

    def body(self) -> bytes:
        return json.dumps(
            {"Type": self.error_kind, "message": self.message, "Reason": self.reason}
        ).encode()


class HeaderFieldsTooLarge(InvokeError):
    """The request line and headers are over the size the Invoke API reads."""

    status = 431
    code = "RequestHeaderFieldsTooLarge"
    message_key = "message"
    error_kind = "User"


class RequestTimeout(InvokeError):
    """The client took too long to send its request."""

    status = 408
    code = "RequestTimeoutException"
    message_key = "message"
    error_kind = "User"


class ExpectationFailed(InvokeError):
    status = 417
    code = "ExpectationFailedException"
    message_key = "message"
    error_kind = "User"


class BadRequest(InvokeError):
    """A request that is not well-formed HTTP/1.x."""

    status = 400
    code = "BadRequestException"
    message_key = "message"
    error_kind = "User"


class UnknownOperation(InvokeError):
    status = 404
    code = "UnknownOperationException"
    error_kind = "User"


class MethodNotAllowed(InvokeError):
    status = 405
    code = "MethodNotAllowedException"
    error_kind = "User"


class ServiceException(InvokeError):
    """A fault of the daemon itself (never expected)."""


class ServiceUnavailable(InvokeError):
    """The daemon is shutting down; SDKs retry a 503."""

    status = 503
    code = "ServiceException"


class BrokerUnavailable(Exception):
    """The broker could not be reached within the configured attempts (exit status 1)."""


class RuntimeApiError(Exception):
    """A Runtime API error answer to a runtime process."""

    status = 500
    error_type = "InternalServerError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"errorMessage": self.message, "errorType": self.error_type}).encode()


class InvalidRequestId(RuntimeApiError):
    status = 400
    error_type = "InvalidRequestID"


class InvalidStateTransition(RuntimeApiError):
    status = 403
    error_type = "InvalidStateTransition"


class PayloadTooLarge(RuntimeApiError):
    status = 413
    error_type = "RequestEntityTooLarge"


# Sizes from the Lambda quotas: requests are checked at 6 MiB, responses allow 100 bytes
# of envelope on top, as the service does.
MAX_REQUEST_PAYLOAD = 6 * 1024 * 1024
MAX_EVENT_PAYLOAD = 1024 * 1024
MAX_RESPONSE_PAYLOAD = MAX_REQUEST_PAYLOAD + 100
MAX_CLIENT_CONTEXT = 3583


def error_member(body: bytes, name: str) -> str | None:
    """A text member (errorType, errorMessage) of a JSON error body; None when it has none."""
    try:
        value = json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def function_error_body(error_type: str, message: str) -> bytes:
    """The JSON a caller receives for a failure the platform reports on the function's behalf."""
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


def timeout_error(request_id: str, timeout: float) -> bytes:
    return function_error_body(
        "Sandbox.Timedout",
        f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds",
    )


def exit_error(request_id: str, exit_description: str) -> bytes:
    return function_error_body(
        "Runtime.ExitError",
        f"RequestId: {request_id} Error: Runtime exited with error: {exit_description}",
    )


def response_too_large_error(size: int) -> bytes:
    return function_error_body(
        "Function.ResponseSizeTooLarge",
        f"Response payload size ({size} bytes) exceeded maximum allowed payload size "
        f"({MAX_RESPONSE_PAYLOAD} bytes).",
    )
