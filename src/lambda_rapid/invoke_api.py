"""The Lambda Invoke API (2015-03-31) over HTTP, with the service's answers.

It turns ``POST /2015-03-31/functions/{FunctionName}/invocations`` into an
``Invocation`` (checking the name, qualifier, headers and payload the way Lambda does),
hands it to the dispatcher and renders the result. It knows nothing of processes.
Event invocations are accepted at once and run in the background from memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from lambda_rapid.config import ConfigError, DaemonConfig
from lambda_rapid.dispatcher import Dispatcher
from lambda_rapid.errors import (
    MAX_CLIENT_CONTEXT,
    MAX_EVENT_PAYLOAD,
    MAX_REQUEST_PAYLOAD,
    InvalidParameterValue,
    InvalidRequestContent,
    InvokeError,
    MethodNotAllowed,
    RequestTooLarge,
    ResourceNotFound,
    ServiceUnavailable,
    UnknownOperation,
)
from lambda_rapid.invocation import Invocation, InvocationResult

logger = logging.getLogger(__name__)

INVOKE_PATH = "/2015-03-31/functions/{function_name}/invocations"
GENERIC_NAME = "function"  # the emulator's fixed name, accepted for compatibility
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")


def render_error(error: InvokeError, request_id: str | None = None) -> web.Response:
    """One AWS error answer: status, x-amzn-ErrorType, JSON body."""
    return web.Response(
        status=error.status,
        body=error.body(),
        headers={
            "x-amzn-ErrorType": error.code,
            "x-amzn-RequestId": request_id or str(uuid.uuid4()),
            "Content-Type": "application/json",
        },
    )


@dataclass(frozen=True, slots=True)
class Target:
    """What a FunctionName (+ Qualifier) resolved to."""

    qualifier: str | None
    invoked_arn: str


class FunctionResolver:
    """Resolves FunctionName forms (name, name:qualifier, partial or full ARN)."""

    def __init__(self, config: DaemonConfig) -> None:
        self._config = config
        self._names = {config.function_name, GENERIC_NAME}
        self._qualifiers = {None, "$LATEST", config.function_version}

    def resolve(self, function_name: str, qualifier_param: str | None) -> Target:
        name, qualifier, region, account = self._split(function_name)
        if qualifier and qualifier_param and qualifier != qualifier_param:
            raise InvalidParameterValue(
                "The derived qualifier from the function name does not match the specified "
                "qualifier."
            )
        qualifier = qualifier or qualifier_param
        config = self._config
        if (
            name not in self._names
            or qualifier not in self._qualifiers
            or region not in (None, config.region)
            or account not in (None, config.account_id)
        ):
            arn = (
                f"arn:aws:lambda:{region or config.region}:{account or config.account_id}"
                f":function:{name}" + (f":{qualifier}" if qualifier else "")
            )
            raise ResourceNotFound(f"Function not found: {arn}")
        arn = config.function_arn + (f":{qualifier}" if qualifier else "")
        return Target(qualifier, arn)

    @staticmethod
    def _split(function_name: str) -> tuple[str, str | None, str | None, str | None]:
        """→ (name, qualifier, region, account) for every documented form."""
        parts = function_name.split(":")
        if parts[0] == "arn":
            if len(parts) not in (7, 8) or parts[2] != "lambda" or parts[5] != "function":
                raise ResourceNotFound(f"Function not found: {function_name}")
            return parts[6], (parts[7] if len(parts) == 8 else None), parts[3], parts[4]
        if len(parts) in (3, 4) and parts[1] == "function":
            return parts[2], (parts[3] if len(parts) == 4 else None), None, parts[0]
        if len(parts) == 2 and len(parts[0]) == 12 and parts[0].isdigit():
            return parts[1], None, None, parts[0]
        if len(parts) == 2:
            return parts[0], parts[1], None, None
        if len(parts) == 1:
            return parts[0], None, None, None
        raise ResourceNotFound(f"Function not found: {function_name}")


class InvokeApi:
    """HTTP front door of one function."""

    def __init__(self, config: DaemonConfig, dispatcher: Dispatcher) -> None:
        self._config = config
        self._dispatcher = dispatcher
        self._resolver = FunctionResolver(config)
        self._accepting = True
        self._events: set[asyncio.Task[None]] = set()
        self._event_slots = asyncio.Semaphore(config.max_concurrency)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        # The size check is ours (to answer as AWS does), so aiohttp's limit is set above it.
        app = web.Application(client_max_size=MAX_REQUEST_PAYLOAD + 1)
        app.router.add_route("*", INVOKE_PATH, self.invoke)
        app.router.add_route("*", "/{tail:.*}", self.unknown_route)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        host, port = self._config.invoke_api_host, self._config.port
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as error:
            raise ConfigError(
                f"cannot listen on INVOKE_API_HOST:PORT {host}:{port}: {error.strerror or error}"
            ) from None

    def stop_accepting(self) -> None:
        self._accepting = False

    async def close(self, grace: float) -> None:
        if self._events:
            await asyncio.wait(self._events, timeout=grace)
        if self._runner is not None:
            await self._runner.cleanup()

    async def unknown_route(self, request: web.Request) -> web.Response:
        return render_error(UnknownOperation(f"Unknown operation: {request.method} {request.path}"))

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        if request.method != "POST":
            return render_error(
                MethodNotAllowed(f"Method {request.method} is not allowed for Invoke"), request_id
            )
        try:
            if not self._accepting:
                raise ServiceUnavailable("The function is shutting down")
            return await self._invoke(request, request_id)
        except InvokeError as error:
            return render_error(error, request_id)

    async def _invoke(self, request: web.Request, request_id: str) -> web.StreamResponse:
        headers = request.headers
        invocation_type = headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type not in INVOCATION_TYPES:
            raise InvalidParameterValue(
                f"Invalid InvocationType: {invocation_type!r}; expected one of "
                + ", ".join(INVOCATION_TYPES)
            )
        log_type = headers.get("X-Amz-Log-Type", "None")
        if log_type not in ("None", "Tail"):
            raise InvalidParameterValue(f"Invalid LogType: {log_type!r}; expected None or Tail")
        target = self._resolver.resolve(
            request.match_info["function_name"], request.query.get("Qualifier")
        )
        limit = MAX_EVENT_PAYLOAD if invocation_type == "Event" else MAX_REQUEST_PAYLOAD
        payload = await read_payload(request, limit)
        client_context = decode_client_context(headers.get("X-Amz-Client-Context"))
        if invocation_type == "DryRun":
            return web.Response(status=204, headers={"x-amzn-RequestId": request_id})
        invocation = Invocation(
            request_id=request_id,
            payload=payload,
            timeout=self._config.timeout,
            invoked_arn=target.invoked_arn,
            trace_id=headers.get("X-Amzn-Trace-Id") or new_trace_id(),
            client_context=client_context,
            cognito_identity=headers.get("X-Amz-Cognito-Identity"),
            tenant_id=headers.get("X-Amz-Tenant-Id"),
            want_log_tail=log_type == "Tail" and invocation_type == "RequestResponse",
        )
        if invocation_type == "Event":
            self._run_event(invocation)
            return web.Response(status=202, headers={"x-amzn-RequestId": request_id})
        result = await self._dispatcher.submit(invocation)
        return self._render_result(request_id, result)

    def _render_result(self, request_id: str, result: InvocationResult) -> web.Response:
        response_headers = {
            "x-amzn-RequestId": request_id,
            "X-Amz-Executed-Version": self._config.function_version,
            "Content-Type": "application/json",
        }
        if result.error_type is not None:
            response_headers["X-Amz-Function-Error"] = "Unhandled"
        if result.log_tail is not None:
            response_headers["X-Amz-Log-Result"] = base64.b64encode(result.log_tail).decode()
        return web.Response(body=result.body, headers=response_headers)

    def _run_event(self, invocation: Invocation) -> None:
        task = asyncio.get_running_loop().create_task(self._event(invocation))
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _event(self, invocation: Invocation) -> None:
        # Events wait here, not in the dispatcher, so their deadline starts when they run.
        async with self._event_slots:
            invocation.started_at = time.time()
            result = await self._dispatcher.submit(invocation)
        if result.error_type is not None:
            logger.warning("event %s failed: %s", invocation.request_id, result.error_type)


async def read_payload(request: web.Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes, and valid JSON unless empty."""
    size = request.content_length
    if size is not None and size > limit:
        raise RequestTooLarge(
            f"Request must be smaller than {limit} bytes for the Invoke operation"
        )
    try:
        payload = await request.read()
    except web.HTTPRequestEntityTooLarge:
        payload = b"x" * (limit + 1)
    if len(payload) > limit:
        raise RequestTooLarge(
            f"Request must be smaller than {limit} bytes for the Invoke operation"
        )
    if payload:
        try:
            json.loads(payload)
        except ValueError as exc:
            raise InvalidRequestContent(
                f"Could not parse request body into json: Could not parse payload into json: {exc}"
            ) from None
    return payload


def decode_client_context(header: str | None) -> str | None:
    """X-Amz-Client-Context: base64 of a JSON object → the JSON text for the runtime."""
    if not header:
        return None
    try:
        text = base64.b64decode(header, validate=True).decode()
        if len(text) > MAX_CLIENT_CONTEXT:
            raise InvalidParameterValue(
                f"Client context must be at most {MAX_CLIENT_CONTEXT} bytes once decoded."
            )
        if not isinstance(json.loads(text), dict):
            raise ValueError("not an object")
    except (binascii.Error, ValueError):
        raise InvalidParameterValue(
            "Client context must be a valid Base64-encoded JSON object."
        ) from None
    return text


def new_trace_id() -> str:
    """An X-Ray trace header, as Lambda generates when the caller sent none."""
    return (
        f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};"
        f"Parent={secrets.token_hex(8)};Sampled=0"
    )
