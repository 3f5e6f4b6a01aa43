"""The gateway front door seen by `requests`, the HTTP client most Python users reach for."""

import base64
import json
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.test_gateway import Gateway, start_gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    started = start_gateway(tmp_path_factory.mktemp("requests"))
    yield started
    assert started.daemon.stop() == 0


@pytest.fixture(scope="module")
def gateway_v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    started = start_gateway(tmp_path_factory.mktemp("requests-v1"), GATEWAY_EVENT_FORMAT="v1")
    yield started
    assert started.daemon.stop() == 0


def test_query_repeated_keys_cookies_and_json_body(gateway: Gateway) -> None:
    response = requests.post(
        f"{gateway.url}/orders/7",
        params=[("tag", "a"), ("tag", "b"), ("q", "x y")],
        json={"item": "book"},
        cookies={"session": "s1", "theme": "dark"},
        headers={"X-Trace": "t"},
        timeout=30,
    )
    assert response.status_code == 200
    event = response.json()
    assert event["rawPath"] == "/orders/7"
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["queryStringParameters"] == {"tag": "a,b", "q": "x y"}
    assert sorted(event["cookies"]) == ["session=s1", "theme=dark"]
    assert json.loads(event["body"]) == {"item": "book"}
    assert event["isBase64Encoded"] is False
    assert event["headers"]["x-trace"] == "t"


def test_v1_multi_value_query_and_binary_body(gateway_v1: Gateway) -> None:
    payload = bytes(range(256))
    response = requests.put(
        f"{gateway_v1.url}/files/a?k=1&k=2",
        data=payload,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    event = response.json()
    assert event["httpMethod"] == "PUT"
    assert event["multiValueQueryStringParameters"] == {"k": ["1", "2"]}
    assert event["queryStringParameters"] == {"k": "2"}
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


def test_binary_response_cookies_redirects_and_failures(gateway: Gateway) -> None:
    png = requests.get(f"{gateway.url}/binary", timeout=30)
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    with requests.Session() as session:
        session.get(f"{gateway.url}/cookies", timeout=30)
        assert session.cookies.get("a") == "1" and session.cookies.get("b") == "2"
    redirect = requests.get(f"{gateway.url}/redirect", allow_redirects=False, timeout=30)
    assert redirect.status_code == 302 and redirect.headers["location"] == "/target"
    assert requests.get(f"{gateway.url}/status/418", timeout=30).status_code == 418
    failed = requests.get(f"{gateway.url}/raise", timeout=30)
    assert failed.status_code == 502
    assert failed.json() == {"message": "Internal server error"}


def test_the_daemon_keeps_its_invoke_api(gateway: Gateway) -> None:
    daemon = gateway.daemon
    direct = requests.post(daemon.invoke_url("web"), json={"rawPath": "/x"}, timeout=30)
    assert direct.status_code == 200
