"""The AWS error vocabulary: statuses, codes, JSON bodies and function-error texts."""

from __future__ import annotations

import json

import pytest

from lambda_rapid import errors
from lambda_rapid.errors import (
    InvalidParameterValue,
    InvalidRequestContent,
    InvalidRequestId,
    InvalidStateTransition,
    InvokeError,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTooLarge,
    ResourceNotFound,
    RuntimeApiError,
    ServiceUnavailable,
    UnknownOperation,
    exit_error,
    function_error_body,
    response_too_large_error,
    timeout_error,
)

INVOKE_ERRORS = [
    # class, status, x-amzn-ErrorType, message member, Type
    (InvokeError, 500, "ServiceException", "Message", "Service"),
    (ResourceNotFound, 404, "ResourceNotFoundException", "Message", "User"),
    (InvalidRequestContent, 400, "InvalidRequestContentException", "message", "User"),
    (InvalidParameterValue, 400, "InvalidParameterValueException", "message", "User"),
    (RequestTooLarge, 413, "RequestTooLargeException", "message", "User"),
    (UnknownOperation, 404, "UnknownOperationException", "Message", "User"),
    (MethodNotAllowed, 405, "MethodNotAllowedException", "Message", "User"),
    (ServiceUnavailable, 503, "ServiceException", "Message", "Service"),
]


@pytest.mark.parametrize(
    ("cls", "status", "code", "key", "kind"),
    INVOKE_ERRORS,
    ids=lambda v: getattr(v, "__name__", None),
)
def test_invoke_error_shape(cls, status: int, code: str, key: str, kind: str) -> None:
    error = cls('Something "quoted" \\ went wrong: ünïcode')
    assert isinstance(error, InvokeError)
    assert error.status == status
    assert error.code == code
    assert error.message == 'Something "quoted" \\ went wrong: ünïcode'
    assert str(error) == error.message
    body = json.loads(error.body())
    assert body == {"Type": kind, key: error.message}
    assert isinstance(error.body(), bytes)


def test_resource_not_found_uses_capital_message() -> None:
    body = json.loads(ResourceNotFound("Function not found: arn").body())
    assert body["Message"] == "Function not found: arn"
    assert "message" not in body


def test_invalid_request_content_uses_lowercase_message() -> None:
    body = json.loads(InvalidRequestContent("Could not parse").body())
    assert body["message"] == "Could not parse"
    assert "Message" not in body


RUNTIME_ERRORS = [
    (RuntimeApiError, 500, "InternalServerError"),
    (InvalidRequestId, 400, "InvalidRequestID"),
    (InvalidStateTransition, 403, "InvalidStateTransition"),
    (PayloadTooLarge, 413, "RequestEntityTooLarge"),
]


@pytest.mark.parametrize(
    ("cls", "status", "error_type"), RUNTIME_ERRORS, ids=lambda v: getattr(v, "__name__", None)
)
def test_runtime_api_error_shape(cls, status: int, error_type: str) -> None:
    error = cls("bad thing")
    assert isinstance(error, RuntimeApiError)
    assert error.status == status
    assert error.error_type == error_type
    assert json.loads(error.body()) == {"errorMessage": "bad thing", "errorType": error_type}


def test_timeout_error_text() -> None:
    body = json.loads(timeout_error("req-1", 3))
    assert body == {
        "errorMessage": "RequestId: req-1 Error: Task timed out after 3.00 seconds",
        "errorType": "Sandbox.Timedout",
    }
    assert "after 0.50 seconds" in json.loads(timeout_error("r", 0.5))["errorMessage"]


def test_exit_error_text() -> None:
    body = json.loads(exit_error("req-2", "exit status 1"))
    assert body == {
        "errorMessage": "RequestId: req-2 Error: Runtime exited with error: exit status 1",
        "errorType": "Runtime.ExitError",
    }
    assert json.loads(exit_error("r", "signal: killed"))["errorMessage"].endswith(
        "Runtime exited with error: signal: killed"
    )


def test_response_too_large_error_text() -> None:
    body = json.loads(response_too_large_error(7_000_000))
    assert body["errorType"] == "Function.ResponseSizeTooLarge"
    assert body["errorMessage"] == (
        "Response payload size (7000000 bytes) exceeded maximum allowed payload size "
        f"({errors.MAX_RESPONSE_PAYLOAD} bytes)."
    )


def test_function_error_body_escapes_json() -> None:
    body = function_error_body("My.Type", 'quote " and newline\n')
    assert json.loads(body) == {"errorMessage": 'quote " and newline\n', "errorType": "My.Type"}


def test_limits() -> None:
    assert errors.MAX_REQUEST_PAYLOAD == 6 * 1024 * 1024
    assert errors.MAX_EVENT_PAYLOAD == 1024 * 1024
    assert errors.MAX_RESPONSE_PAYLOAD == errors.MAX_REQUEST_PAYLOAD + 100
    assert errors.MAX_CLIENT_CONTEXT == 3583


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"errorType": "Runtime.Crash", "errorMessage": "x"}', "Runtime.Crash"),
        (b'{"errorType": 5}', None),
        (b'["errorType"]', None),
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"", None),
    ],
)
def test_error_member_reads_text_members_only(body: bytes, expected: str | None) -> None:
    assert errors.error_member(body, "errorType") == expected
