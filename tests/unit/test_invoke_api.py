"""FunctionName resolution and X-Amz-Client-Context decoding, as Lambda does them."""

from __future__ import annotations

import base64
import json
import sys

import pytest

from lambda_rapid.config import DaemonConfig, daemon_config
from lambda_rapid.errors import MAX_CLIENT_CONTEXT, InvalidParameterValue, ResourceNotFound
from lambda_rapid.invoke_api import FunctionResolver, decode_client_context

ARN = "arn:aws:lambda:eu-west-1:111122223333:function:my-fn"


@pytest.fixture(scope="module")
def config() -> DaemonConfig:
    return daemon_config(
        [sys.executable, "-m", "awslambdaric", "fn.handler"],
        {
            "AWS_LAMBDA_FUNCTION_NAME": "my-fn",
            "AWS_LAMBDA_FUNCTION_VERSION": "7",
            "AWS_REGION": "eu-west-1",
            "AWS_ACCOUNT_ID": "111122223333",
        },
    )


@pytest.fixture(scope="module")
def resolver(config: DaemonConfig) -> FunctionResolver:
    return FunctionResolver(config)


RESOLVABLE = [
    # FunctionName, Qualifier param, expected qualifier, expected invoked ARN
    ("my-fn", None, None, ARN),
    ("function", None, None, ARN),  # the emulator's generic name
    ("my-fn:$LATEST", None, "$LATEST", ARN + ":$LATEST"),
    ("my-fn:7", None, "7", ARN + ":7"),
    ("my-fn", "$LATEST", "$LATEST", ARN + ":$LATEST"),
    ("my-fn", "7", "7", ARN + ":7"),
    ("my-fn:7", "7", "7", ARN + ":7"),
    ("function:$LATEST", None, "$LATEST", ARN + ":$LATEST"),
    ("111122223333:function:my-fn", None, None, ARN),
    ("111122223333:function:my-fn:$LATEST", None, "$LATEST", ARN + ":$LATEST"),
    ("111122223333:function:my-fn", "7", "7", ARN + ":7"),
    (ARN, None, None, ARN),
    (ARN + ":$LATEST", None, "$LATEST", ARN + ":$LATEST"),
    (ARN + ":7", None, "7", ARN + ":7"),
    (ARN, "$LATEST", "$LATEST", ARN + ":$LATEST"),
    (ARN + ":$LATEST", "$LATEST", "$LATEST", ARN + ":$LATEST"),
]


@pytest.mark.parametrize(("name", "qualifier", "expected", "arn"), RESOLVABLE)
def test_resolves(
    resolver: FunctionResolver, name: str, qualifier: str | None, expected: str | None, arn: str
) -> None:
    target = resolver.resolve(name, qualifier)
    assert target.qualifier == expected
    assert target.invoked_arn == arn


NOT_FOUND = [
    # FunctionName, Qualifier param, ARN named in the message
    ("other", None, "arn:aws:lambda:eu-west-1:111122223333:function:other"),
    ("my-fn:prod", None, ARN + ":prod"),
    ("my-fn", "prod", ARN + ":prod"),
    ("my-fn:8", None, ARN + ":8"),
    ("999988887777:function:my-fn", None, "arn:aws:lambda:eu-west-1:999988887777:function:my-fn"),
    (
        "arn:aws:lambda:us-east-1:111122223333:function:my-fn",
        None,
        "arn:aws:lambda:us-east-1:111122223333:function:my-fn",
    ),
    (
        "arn:aws:lambda:eu-west-1:999988887777:function:my-fn",
        None,
        "arn:aws:lambda:eu-west-1:999988887777:function:my-fn",
    ),
    (
        "arn:aws:lambda:eu-west-1:111122223333:function:other:$LATEST",
        None,
        "arn:aws:lambda:eu-west-1:111122223333:function:other:$LATEST",
    ),
    (ARN + ":alias", None, ARN + ":alias"),
]


@pytest.mark.parametrize(("name", "qualifier", "arn"), NOT_FOUND)
def test_not_found_names_the_arn(
    resolver: FunctionResolver, name: str, qualifier: str | None, arn: str
) -> None:
    with pytest.raises(ResourceNotFound) as info:
        resolver.resolve(name, qualifier)
    assert info.value.message == f"Function not found: {arn}"
    assert info.value.status == 404
    assert info.value.code == "ResourceNotFoundException"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "arn:aws:s3:::bucket",
        "arn:aws:lambda:eu-west-1:111122223333:layer:my-fn",
        "arn:aws:lambda:eu-west-1",
        "arn:aws:lambda:eu-west-1:111122223333:function:my-fn:7:extra",
        "a:b:c:d:e",
        "111122223333:notfunction:my-fn",
    ],
)
def test_malformed_names_are_not_found(resolver: FunctionResolver, name: str) -> None:
    with pytest.raises(ResourceNotFound):
        resolver.resolve(name, None)


@pytest.mark.parametrize(
    ("name", "qualifier"),
    [
        ("my-fn:$LATEST", "7"),
        ("my-fn:7", "$LATEST"),
        (ARN + ":7", "$LATEST"),
        ("111122223333:function:my-fn:7", "8"),
    ],
)
def test_conflicting_qualifiers(resolver: FunctionResolver, name: str, qualifier: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:
        resolver.resolve(name, qualifier)
    assert info.value.status == 400
    assert "qualifier" in info.value.message


def test_latest_config_accepts_only_latest() -> None:
    config = daemon_config([sys.executable, "fn.handler"], {})
    resolver = FunctionResolver(config)
    assert config.function_name == "fn"
    assert resolver.resolve("fn", "$LATEST").invoked_arn == config.function_arn + ":$LATEST"
    with pytest.raises(ResourceNotFound):
        resolver.resolve("fn", "1")


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "context",
    [
        {},
        {"custom": {"a": 1}, "env": {"locale": "fr"}},
        {"client": {"installation_id": "ünïcode ✓"}},
    ],
)
def test_client_context_accepts_base64_json_objects(context: dict[str, object]) -> None:
    text = json.dumps(context, ensure_ascii=False)
    decoded = decode_client_context(b64(text))
    assert decoded is not None and json.loads(decoded) == context
    # It becomes a header on the runtime's /next answer: ASCII only, as the same JSON.
    assert decoded == text or (not text.isascii() and decoded.isascii())


def test_no_client_context() -> None:
    assert decode_client_context(None) is None
    assert decode_client_context("") is None


@pytest.mark.parametrize(
    "header",
    [
        "not base64!!",
        "eyJhIjoxfQ",  # '{"a":1}' without its padding
        b64('{"a": 1}') + "$",
        b64("not json"),
        b64("[1, 2]"),
        b64('"a string"'),
        b64("42"),
        b64("null"),
        b64(b"\xff\xfe{}"),  # not UTF-8
    ],
)
def test_client_context_rejects(header: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:
        decode_client_context(header)
    assert info.value.status == 400
    assert info.value.code == "InvalidParameterValueException"
    assert "Base64-encoded JSON object" in info.value.message


def test_client_context_size_limit() -> None:
    def context_of(length: int) -> str:
        text = json.dumps({"k": "x" * (length - len('{"k": ""}'))})
        assert len(text) == length
        return text

    largest = context_of(MAX_CLIENT_CONTEXT)
    assert decode_client_context(b64(largest)) == largest
    with pytest.raises(InvalidParameterValue) as info:
        decode_client_context(b64(context_of(MAX_CLIENT_CONTEXT + 1)))
    assert f"at most {MAX_CLIENT_CONTEXT} bytes" in info.value.message


def test_request_ids_are_version_4_uuids() -> None:
    import uuid

    from lambda_rapid.invocation import new_request_id

    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:50]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_generated_trace_ids_have_the_xray_shape() -> None:
    import re

    from lambda_rapid.invocation import new_trace_id

    assert re.fullmatch(
        r"Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=0", new_trace_id()
    )
