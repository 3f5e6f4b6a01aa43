"""The Lambda Extensions API (2020-01-01) and the Telemetry/Logs subscription routes.

Served on each instance's Runtime API listener (the Runtime API hands over every path
outside its own prefix, so its hot path is unchanged): register, event/next, init/error
and exit/error, answered with Lambda's statuses and error bodies. ``PUT
/2022-07-01/telemetry`` and ``PUT /2020-08-15/logs`` go to ``Hub.telemetry`` /
``Hub.logs`` with the calling extension, or get 404 while those are unset.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Protocol

from lambda_rapid.errors import RuntimeApiError, error_member
from lambda_rapid.extensions import (
    EVENT_TYPES,
    Extension,
    ExtensionError,
    ExtensionSet,
    Hub,
    new_identifier,
)
from lambda_rapid.futures import chain
from lambda_rapid.httpserver import Request, Response
from lambda_rapid.instance import Instance, State

logger = logging.getLogger(__name__)

PREFIX = "/2020-01-01/extension/"
TELEMETRY_PATH = "/2022-07-01/telemetry"
LOGS_PATH = "/2020-08-15/logs"
NAME_HEADER = "lambda-extension-name"
IDENTIFIER_HEADER = "lambda-extension-identifier"
FEATURE_HEADER = "lambda-extension-accept-feature"
ERROR_TYPE_HEADER = "lambda-extension-function-error-type"
JSON = {"Content-Type": "application/json"}


class ExtensionsCore(Protocol):
    """What the Extensions API may ask of the dispatcher."""

    def extensions_of(self, instance: Instance) -> ExtensionSet: ...

    def extension_error(
        self, instance: Instance, extension: Extension, error_type: str, body: bytes
    ) -> None: ...


def render(error: RuntimeApiError) -> Response:
    return Response(error.status, error.body(), JSON)


def not_found() -> Response:
    return Response(404, b'{"errorMessage":"Not found","errorType":"NotFound"}', JSON)


class ExtensionsApi:
    """Route handlers of the Extensions API and the subscription hooks."""

    def __init__(self, hub: Hub, core: ExtensionsCore) -> None:
        self._hub = hub
        self._core = core

    def handle(self, instance: Instance, request: Request) -> Response | Awaitable[Response]:
        path, method = request.path, request.method
        try:
            if path.startswith(PREFIX):
                route = path[len(PREFIX) :]
                if route == "register" and method == "POST":
                    return self.register(instance, request)
                if route == "event/next" and method == "GET":
                    return self.next(instance, request)
                if route in ("init/error", "exit/error") and method == "POST":
                    return self.error(instance, request)
            elif path in (TELEMETRY_PATH, LOGS_PATH) and method == "PUT":
                return self.subscribe(instance, request, path == TELEMETRY_PATH)
        except RuntimeApiError as error:
            return render(error)
        return not_found()

    def register(self, instance: Instance, request: Request) -> Response:
        name = request.headers.get(NAME_HEADER)
        if not name:
            raise ExtensionError(
                403, "Extension.InvalidExtensionName", "Missing Lambda-Extension-Name header"
            )
        events = requested_events(request.body)
        if instance.state is not State.STARTING:
            raise ExtensionError(
                403, "Extension.RegistrationClosed", "Extension registration closed already"
            )
        extension = self._core.extensions_of(instance).register(instance, name, events)
        self._hub.add(extension)
        feature = request.headers.get(FEATURE_HEADER, "")
        body = self._hub.registration_body("accountId" in feature)
        headers = {"Lambda-Extension-Identifier": extension.identifier, **JSON}
        return Response(200, body, headers)

    def next(self, instance: Instance, request: Request) -> Response | Awaitable[Response]:
        extension = self._hub.find(instance, request.headers.get(IDENTIFIER_HEADER))
        extensions = self._core.extensions_of(instance)
        event = extensions.next(extension)
        if isinstance(event, bytes):
            return event_response(event)
        return chain(event, event_response, stopped)

    def error(self, instance: Instance, request: Request) -> Response:
        extension = self._hub.find(instance, request.headers.get(IDENTIFIER_HEADER))
        error_type = request.headers.get(ERROR_TYPE_HEADER)
        if not error_type:
            raise ExtensionError(
                400,
                "InvalidRequestFormat",
                "Missing Lambda-Extension-Function-Error-Type header",
            )
        body = request.body or json.dumps({"errorMessage": "", "errorType": error_type}).encode()
        if error_member(body, "errorType") is None:
            body = json.dumps({"errorMessage": "", "errorType": error_type}).encode()
        logger.warning("extension %s reported %s", extension.name, error_type)
        self._core.extension_error(instance, extension, error_type, body)
        return Response(202, b'{"status":"OK"}', JSON)

    def subscribe(
        self, instance: Instance, request: Request, telemetry: bool
    ) -> Response | Awaitable[Response]:
        handler = self._hub.telemetry if telemetry else self._hub.logs
        if handler is None:
            return not_found()
        extension = self._hub.find(instance, request.headers.get(IDENTIFIER_HEADER))
        return handler(extension, request)


def requested_events(body: bytes) -> frozenset[str]:
    """The event types of a register body, or Lambda's refusal."""
    try:
        document = json.loads(body) if body.strip() else {}
    except ValueError:
        raise ExtensionError(400, "InvalidRequestFormat", "The body is not valid JSON") from None
    events = document.get("events", []) if isinstance(document, dict) else None
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ExtensionError(400, "InvalidRequestFormat", "events must be a list of strings")
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise ExtensionError(403, "Extension.InvalidEventType", f"Unknown event type: {unknown[0]}")
    return frozenset(events)


def event_response(event: bytes) -> Response:
    headers = {"Lambda-Extension-Event-Identifier": new_identifier(), **JSON}
    return Response(200, event, headers)


def stopped(error: BaseException) -> Response:
    if isinstance(error, asyncio.CancelledError):
        message = "The extension's instance is being stopped"
    else:
        message = str(error)
    return render(RuntimeApiError(message))
