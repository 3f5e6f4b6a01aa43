"""Gateway routing (route table, stage, function picking), the GATEWAY_* settings, and the
limits of the gateway's server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
from collections.abc import Awaitable

import pytest

from lambda_rapid.config import (
    ConfigError,
    GatewayConfig,
    daemon_config,
    server_config,
)
from lambda_rapid.gateway import GATEWAY_LIMITS, Gateway, GatewayOptions, Router, RouteTable
from lambda_rapid.invocation import Invocation, InvocationResult
from lambda_rapid.invoke_api import Target
from lambda_rapid.routes import GatewayRoute

COMMAND = [sys.executable, "-m", "awslambdaric", "web.handler"]


# -- routing --------------------------------------------------------------------------------


def test_route_table_prefers_the_most_specific_route() -> None:
    table = RouteTable(
        [
            GatewayRoute("ANY", "/{proxy+}"),
            GatewayRoute("ANY", "/items/{id}"),
            GatewayRoute("GET", "/items/{id}"),
            GatewayRoute("GET", "/items/new"),
        ]
    )

    def key(method: str, path: str) -> str | None:
        match = table.match(method, path)
        return None if match is None else match.route_key

    assert key("GET", "/items/new") == "GET /items/new"
    assert key("GET", "/items/7") == "GET /items/{id}"
    assert key("POST", "/items/7") == "ANY /items/{id}"
    assert key("POST", "/items/7/parts") == "ANY /{proxy+}"
    assert key("GET", "/") is None  # a greedy parameter needs at least one segment


def test_route_table_parameters() -> None:
    table = RouteTable(
        [GatewayRoute("GET", "/u/{user}/files/{path+}", "fn"), GatewayRoute("GET", "/")]
    )
    match = table.match("GET", "/u/j%20d/files/a/b.txt/")
    assert match is not None
    assert match.path_parameters == {"user": "j d", "path": "a/b.txt"}
    assert (match.resource, match.function) == ("/u/{user}/files/{path+}", "fn")
    root = table.match("GET", "/")
    assert root is not None and root.path_parameters is None
    assert table.match("GET", "/u/x/files") is None
    assert table.match("HEAD", "/") is None


def test_router_for_the_daemon_function() -> None:
    router = Router("prod", None, "web")
    assert router.locate("GET", "/items") is None
    assert router.locate("GET", "/production/items") is None
    located = router.locate("GET", "/prod/items")
    assert located is not None
    assert (located.function, located.raw_path) == ("web", "/items")
    root = router.locate("GET", "/prod")
    assert root is not None and root.raw_path == "/"
    assert router.stage_prefix == "/prod"


def test_router_ignores_route_functions_in_the_daemon() -> None:
    router = Router(None, (GatewayRoute("GET", "/a", "other"),), "web")
    located = router.locate("GET", "/a")
    assert located is not None and located.function == "web"
    assert router.locate("GET", "/b") is None


def test_router_first_segment_names_the_function() -> None:
    router = Router(None, None, None)
    located = router.locate("GET", "/my-fn/hello/world")
    assert located is not None
    assert (located.function, located.raw_path) == ("my-fn", "/hello/world")
    assert located.match.path_parameters == {"proxy": "hello/world"}
    bare = router.locate("GET", "/my-fn")
    assert bare is not None and (bare.function, bare.raw_path) == ("my-fn", "/")
    assert router.locate("GET", "/") is None


def test_router_first_segment_then_route_table() -> None:
    router = Router(None, (GatewayRoute("GET", "/items/{id}"),), None)
    located = router.locate("GET", "/fn/items/3")
    assert located is not None and located.function == "fn"
    assert located.match.path_parameters == {"id": "3"}
    assert router.locate("GET", "/fn/other") is None


def test_router_route_table_names_the_functions() -> None:
    routes = (GatewayRoute("GET", "/items/{id}", "items"), GatewayRoute("ANY", "/u/{p+}", "users"))
    router = Router("v1", routes, None)
    located = router.locate("GET", "/v1/items/3")
    assert located is not None
    assert (located.function, located.raw_path) == ("items", "/items/3")
    users = router.locate("PUT", "/v1/u/a/b")
    assert users is not None and users.function == "users"
    assert router.locate("GET", "/v1/items") is None


def test_router_refuses_a_half_named_route_table() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_ROUTES"):
        Router(None, (GatewayRoute("GET", "/a", "fn"), GatewayRoute("GET", "/b")), None)


# -- settings -------------------------------------------------------------------------------


def test_gateway_is_off_by_default_and_its_settings_default_when_on() -> None:
    assert daemon_config(COMMAND, {}).gateway is None
    assert server_config([], {}).gateway is None
    for config in (
        daemon_config(COMMAND, {"GATEWAY_PORT": "8081"}),
        server_config(["--gateway-port", "8081"], {}),
    ):
        assert config.gateway == GatewayConfig(8081, "v2", None, None, 29.0)


def test_gateway_settings_from_env_and_flags() -> None:
    environ = {
        "GATEWAY_PORT": "8081",
        "GATEWAY_EVENT_FORMAT": "1.0",
        "GATEWAY_STAGE": "prod",
        "GATEWAY_ROUTES": " GET /items/{id} , any /files/{proxy+}=files-fn,",
        "GATEWAY_TIMEOUT": "2.5",
    }
    routes = (
        GatewayRoute("GET", "/items/{id}"),
        GatewayRoute("ANY", "/files/{proxy+}", "files-fn"),
    )
    assert daemon_config(COMMAND, environ).gateway == GatewayConfig(8081, "v1", "prod", routes, 2.5)
    flags = ["--gateway-port", "9", "--gateway-event-format", "V2", "--gateway-stage", "$default"]
    server = server_config([*flags, "--gateway-routes", "POST /x=fn"], environ)
    assert server.gateway == GatewayConfig(9, "v2", None, (GatewayRoute("POST", "/x", "fn"),), 2.5)


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("GATEWAY_PORT", "-1"),
        ("GATEWAY_EVENT_FORMAT", "rest"),
        ("GATEWAY_STAGE", "pr od"),
        ("GATEWAY_ROUTES", "GET"),
        ("GATEWAY_ROUTES", "GET /a//b"),
        ("GATEWAY_ROUTES", "GET /{}"),
        ("GATEWAY_ROUTES", "GET /{a}b"),
        ("GATEWAY_ROUTES", "GET /a=bad/name"),
        ("GATEWAY_TIMEOUT", "-3"),
    ],
)
def test_invalid_gateway_settings(env: str, value: str) -> None:
    with pytest.raises(ConfigError, match=env):
        daemon_config(COMMAND, {env: value})
    with pytest.raises(ConfigError, match=env):
        server_config([], {env: value})


# -- the server: the Invoke API's limits, API Gateway's words -------------------------------


class Unreachable:
    """The backend of requests that must be refused before they reach a function."""

    def resolve(self, function_name: str, qualifier: str | None) -> Target:
        raise AssertionError("a refused request reached the backend")

    def invoke(self, target: Target, invocation: Invocation) -> Awaitable[InvocationResult]:
        raise AssertionError("a refused request reached the backend")

    def enqueue(self, target: Target, invocation: Invocation) -> Awaitable[None]:
        raise AssertionError("a refused request reached the backend")

    def dry_run(self, target: Target) -> Awaitable[None]:
        raise AssertionError("a refused request reached the backend")


def test_a_request_trickled_past_the_request_timeout_gets_408() -> None:
    # The daemon's gateway allows GATEWAY_LIMITS.request_timeout (30 s); here 0.5 s.
    assert GATEWAY_LIMITS.request_timeout == 30.0

    async def main() -> bytes:
        options = GatewayOptions("127.0.0.1", 0, "v2", None, None, 1.0, "123456789012")
        limits = dataclasses.replace(GATEWAY_LIMITS, request_timeout=0.5)
        gateway = Gateway(options, Unreachable(), "fn", 1.0, limits)
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        listening.setblocking(False)
        await gateway.start(listening)
        reader, writer = await asyncio.open_connection(*listening.getsockname())
        writer.write(b"GET /items HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:  # slowloris: always active, never done
            while not writer.is_closing():
                writer.write(b"X-Slow: 1\r\n")
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        try:
            return await asyncio.wait_for(reader.read(), 10)  # until the gateway closes
        finally:
            trickling.cancel()
            writer.close()
            await gateway.close()

    answer = asyncio.run(main())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Content-Type: application/json\r\n" in head
    assert json.loads(body) == {"message": "Request Timeout"}
