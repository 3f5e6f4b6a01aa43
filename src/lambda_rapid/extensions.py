"""Lambda extensions: who registered, for which events, and what each one is doing.

An instance's extensions are its ``ExtensionSet`` (``Instance.extensions``; None until
the first registers or is started, so an instance without extensions pays nothing).
External extensions are the executables of ``LAMBDA_EXTENSIONS_DIR`` (``discover``),
started by the pool with each instance, before its runtime; internal ones register from
inside the runtime process before its first ``/next``. ``Hub`` is the daemon-wide part:
the identifier → ``Extension`` map (an identifier names one extension of one instance),
the observer of lifecycle moments and the Telemetry/Logs API handlers.

For the Telemetry and Logs APIs (``telemetry.py``):

- ``Hub.telemetry`` and ``Hub.logs`` are ``SubscribeHandler``s for
  ``PUT /2022-07-01/telemetry`` and ``PUT /2020-08-15/logs``, which arrive on the
  instance's Runtime API port. The Runtime API calls them with the ``Extension`` named by
  the ``Lambda-Extension-Identifier`` header (already checked: it is one of that
  instance's extensions) and the request. While unset they answer 404, as AWS's emulator
  does.
- ``Hub.observer`` (an ``Observer``; None costs nothing) hears the lifecycle moments
  listed on that protocol, from the dispatcher (init, invoke, report), from this module
  (registration) and from the pool (extension exits, extension output lines).
- Init failures reach it too: ``runtime_init_done`` and ``init_report`` get the failure's
  error type (None on success): the runtime's init/error type, ``Runtime.ExitError``
  when the runtime exits during init, an extension's init/error type,
  ``Extension.Crash`` when an extension exits during init, and ``INIT_TIMEOUT_ERROR``
  (``Sandbox.Timedout``, Lambda's status ``timeout``) when an external extension does
  not register within the init limit. Every other error type is Lambda's status
  ``error``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from lambda_rapid.errors import RuntimeApiError
from lambda_rapid.output import LogCapture

if TYPE_CHECKING:
    from lambda_rapid.httpserver import Request, Response
    from lambda_rapid.instance import Instance
    from lambda_rapid.invocation import Invocation

MAX_EXTENSIONS = 10
# An external extension that has not registered within the init limit fails init thus.
INIT_TIMEOUT_ERROR = "Sandbox.Timedout"
DISABLE_FILE = "disable-extensions-jwigqn8j"
EVENT_TYPES = frozenset({"INVOKE", "SHUTDOWN"})
# How long extensions get between the SHUTDOWN event and SIGTERM (Lambda's limits).
SHUTDOWN_LIMIT_INTERNAL = 0.5
SHUTDOWN_LIMIT_EXTERNAL = 2.0
# Variables extensions do not see (Lambda hides them from extensions).
HIDDEN_FROM_EXTENSIONS = (
    "_HANDLER",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
)


class ExtensionError(RuntimeApiError):
    """An Extensions API refusal with its Lambda error type."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def discover(directory: str) -> list[str]:
    """The external extensions to start: executable files of `directory`, by name.

    None when the directory is missing or the disable file sits in its parent.
    """
    parent = os.path.dirname(os.path.abspath(directory))
    if os.path.exists(os.path.join(parent, DISABLE_FILE)):
        return []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            found.append(path)
    return found


def extension_environ(runtime_env: dict[str, str]) -> dict[str, str]:
    """An external extension's environment: the runtime's, less what Lambda hides."""
    env = dict(runtime_env)
    for name in HIDDEN_FROM_EXTENSIONS:
        env.pop(name, None)
    return env


class Observer(Protocol):
    """Lifecycle moments, for the Telemetry/Logs APIs. Times are epoch seconds."""

    def init_start(self, instance: Instance) -> None: ...

    def runtime_init_done(self, instance: Instance, error_type: str | None) -> None: ...

    def init_report(
        self, instance: Instance, duration_ms: float, error_type: str | None
    ) -> None: ...

    def invoke_start(self, instance: Instance, invocation: Invocation) -> None: ...

    def runtime_done(
        self, instance: Instance, invocation: Invocation, status: str, error_type: str | None
    ) -> None:
        """status: "success", "error", "timeout" or "failure" (Lambda's words)."""

    def report(
        self,
        instance: Instance,
        invocation: Invocation,
        duration_ms: float,
        status: str,
        error_type: str | None,
    ) -> None: ...

    def extension_registered(self, instance: Instance, extension: Extension) -> None: ...

    def extension_exited(
        self, instance: Instance, extension: Extension, description: str | None
    ) -> None: ...

    def extension_output(self, instance: Instance, name: str, lines: bytes) -> None:
        """Whole lines an external extension printed (stdout and stderr alike)."""

    def instance_gone(self, instance: Instance) -> None:
        """The instance is being shut down or has ended (called at least once)."""


SubscribeHandler = Callable[["Extension", "Request"], "Response | Awaitable[Response]"]


class ExtState(enum.Enum):
    REGISTERED = "Registered"  # has not called next yet
    WAITING = "Waiting"  # in event/next
    BUSY = "Busy"  # working on the event it was given
    EXITED = "Exited"


class Extension:
    """One registered extension of one instance."""

    __slots__ = (
        "name",
        "identifier",
        "instance",
        "events",
        "internal",
        "state",
        "waiter",
        "pending",
        "registered_at",
    )

    def __init__(
        self, name: str, instance: Instance, events: frozenset[str], internal: bool
    ) -> None:
        self.name = name
        self.identifier = new_identifier()
        self.instance = instance
        self.events = events
        self.internal = internal
        self.state = ExtState.REGISTERED
        self.waiter: asyncio.Future[bytes] | None = None
        self.pending: bytes | None = None  # an event sent while it was not waiting
        self.registered_at = time.time()

    def __repr__(self) -> str:
        return f"<Extension {self.name} {self.state.value}>"


class ExtensionSet:
    """The extensions of one instance: registration, next, event delivery, shutdown."""

    def __init__(
        self,
        instance: Instance,
        on_idle: Callable[[Instance], None],
        on_exit: Callable[[Instance, str, str | None], None],
        hub: Hub,
        on_init_failed: Callable[[Instance, str, bytes], None] | None = None,
    ) -> None:
        self.instance = instance
        self.hub = hub
        self._on_idle = on_idle
        self._on_exit = on_exit
        self._on_init_failed = on_init_failed
        self.to_start: list[str] = []  # paths of the external extensions to start
        self.members: list[Extension] = []
        self.external: dict[str, int | None] = {}  # started file name -> pid (None: exited)
        self.unregistered = 0  # external ones started that have not registered nor exited
        self.registered = asyncio.Event()  # set when no external one is still registering
        self.registered.set()
        self.busy = 0  # members not waiting in next
        self.shutting_down: set[Extension] | None = None
        self.shutdown_done: asyncio.Event | None = None
        self.overdue: asyncio.TimerHandle | None = None
        self.init_reported = False  # the observer heard this instance's init end

    @property
    def idle(self) -> bool:
        """Every extension waits in next (so the instance may take work)."""
        return self.busy == 0 and self.unregistered == 0

    @property
    def has_external(self) -> bool:
        return bool(self.external)

    def expect(self, name: str) -> None:
        """External extension `name` is being started (it may register at once)."""
        self.external[name] = None
        self.unregistered += 1
        self.registered.clear()

    def started(self, name: str, pid: int) -> None:
        self.external[name] = pid

    def process_exited(self, name: str, description: str | None) -> None:
        """The pool saw the process of external extension `name` exit."""
        self._on_exit(self.instance, name, description)

    def registration_timed_out(self, limit: float) -> None:
        """External extensions did not all register within `limit` seconds: init fails."""
        late = [m for m in self.external if not any(e.name == m for e in self.members)]
        message = (
            f"Extension init timed out after {limit:g} s: "
            f"{', '.join(late) or 'an extension'} did not register"
        )
        body = json.dumps({"errorMessage": message, "errorType": INIT_TIMEOUT_ERROR}).encode()
        if self._on_init_failed is not None:
            self._on_init_failed(self.instance, INIT_TIMEOUT_ERROR, body)

    def output(self, name: str) -> LogCapture:
        """Where an external extension's output lines go besides the daemon's own."""
        return ExtensionOutput(self, name)

    def pids(self) -> list[int]:
        return [pid for pid in self.external.values() if pid is not None]

    def register(self, instance: Instance, name: str, events: frozenset[str]) -> Extension:
        internal = name not in self.external or any(m.name == name for m in self.members)
        if internal and "SHUTDOWN" in events:
            raise ExtensionError(
                403,
                "Extension.InvalidEventType",
                "Internal extensions cannot register for the SHUTDOWN event",
            )
        if len(self.members) >= MAX_EXTENSIONS:
            raise ExtensionError(
                403,
                "Extension.TooManyExtensions",
                f"Too many extensions: at most {MAX_EXTENSIONS} may register",
            )
        extension = Extension(name, instance, events, internal)
        self.members.append(extension)
        self.busy += 1
        if not internal:
            self._one_less_registering()
        return extension

    def _one_less_registering(self) -> None:
        self.unregistered -= 1
        if self.unregistered <= 0:
            self.unregistered = 0
            self.registered.set()

    def next(self, extension: Extension) -> bytes | asyncio.Future[bytes]:
        """The extension called event/next: its next event, or a future for it."""
        state = extension.state
        if state is ExtState.EXITED:
            raise ExtensionError(403, "Extension.InvalidState", "The extension has exited")
        if state is ExtState.WAITING:  # a second next supersedes the first
            old, extension.waiter = extension.waiter, None
            if old is not None and not old.done():
                old.cancel()
        elif extension.pending is None:  # not while SHUTDOWN waits to be handed over
            self._acknowledged(extension)
        event, extension.pending = extension.pending, None
        if event is not None:
            extension.state = ExtState.BUSY
            return event
        extension.state = ExtState.WAITING
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        extension.waiter = waiter
        if state is not ExtState.WAITING:
            self.busy -= 1
            if self.busy == 0:
                self._on_idle(extension.instance)
        return waiter

    def _acknowledged(self, extension: Extension) -> None:
        """An extension that was given SHUTDOWN is done with it."""
        waiting_for = self.shutting_down
        if waiting_for is not None and extension in waiting_for:
            waiting_for.discard(extension)
            if not waiting_for and self.shutdown_done is not None:
                self.shutdown_done.set()

    def _give(self, extension: Extension, event: bytes) -> None:
        waiter = extension.waiter
        if extension.state is ExtState.WAITING and waiter is not None and not waiter.done():
            extension.waiter = None
            extension.state = ExtState.BUSY
            self.busy += 1
            waiter.set_result(event)
        elif extension.state is ExtState.WAITING:  # its next was given up: keep the event
            extension.waiter = None
            extension.state = ExtState.BUSY
            self.busy += 1
            extension.pending = event
        elif extension.state is not ExtState.EXITED:
            extension.pending = event

    def invoke(self, invocation: Invocation) -> None:
        """Send INVOKE to every extension that registered for it."""
        event: bytes | None = None
        for extension in self.members:
            if "INVOKE" in extension.events:
                if event is None:
                    event = invoke_event(invocation)
                self._give(extension, event)

    def shutdown(self, reason: str, limit: float) -> asyncio.Event:
        """Send SHUTDOWN; the returned event is set when every receiver called next
        again or exited (the caller waits for it up to `limit` seconds)."""
        deadline_ms = int((time.time() + limit) * 1000)
        event = json.dumps(
            {"eventType": "SHUTDOWN", "shutdownReason": reason, "deadlineMs": deadline_ms}
        ).encode()
        done = self.shutdown_done = asyncio.Event()
        receivers = {
            m for m in self.members if "SHUTDOWN" in m.events and m.state is not ExtState.EXITED
        }
        self.shutting_down = receivers
        for extension in receivers:
            self._give(extension, event)
        if not receivers:
            done.set()
        return done

    def exited(self, name: str) -> Extension | None:
        """An external extension's process exited; the member it registered as, if any."""
        if name in self.external:
            self.external[name] = None
        member = next((m for m in self.members if m.name == name and not m.internal), None)
        if member is None:
            if name in self.external:
                self._one_less_registering()
            return None
        if member.state is not ExtState.EXITED:
            if member.state is not ExtState.WAITING:
                self.busy -= 1
            member.state = ExtState.EXITED
            waiter, member.waiter = member.waiter, None
            if waiter is not None and not waiter.done():
                waiter.cancel()
            self._acknowledged(member)
        return member

    def release(self) -> None:
        """The instance is gone: end every pending next."""
        for member in self.members:
            waiter, member.waiter = member.waiter, None
            if waiter is not None and not waiter.done():
                waiter.cancel()
        if self.overdue is not None:
            self.overdue.cancel()
            self.overdue = None
        self.registered.set()

    @property
    def shutdown_limit(self) -> float:
        return SHUTDOWN_LIMIT_EXTERNAL if self.has_external else SHUTDOWN_LIMIT_INTERNAL


class ExtensionOutput(LogCapture):
    """An external extension's lines: into its instance's log tail (Lambda's execution
    log holds them) and to the observer."""

    __slots__ = ("_extensions", "_name")

    def __init__(self, extensions: ExtensionSet, name: str) -> None:
        super().__init__()
        self._extensions = extensions
        self._name = name

    def add(self, data: bytes) -> None:
        if not data:
            return
        instance = self._extensions.instance
        instance.output.add(data)
        observer = self._extensions.hub.observer
        if observer is not None:
            observer.extension_output(instance, self._name, data)

    printed = add  # the name the output pipes call for whole lines


def invoke_event(invocation: Invocation) -> bytes:
    return json.dumps(
        {
            "eventType": "INVOKE",
            "deadlineMs": int(invocation.deadline_ms),
            "requestId": invocation.request_id,
            "invokedFunctionArn": invocation.invoked_arn,
            "tracing": {"type": "X-Amzn-Trace-Id", "value": invocation.trace_id or ""},
        }
    ).encode()


class Hub:
    """Daemon-wide: every extension by identifier, the observer and the subscribe hooks."""

    def __init__(self, function_name: str, version: str, handler: str, account_id: str) -> None:
        self.by_identifier: dict[str, Extension] = {}
        self.observer: Observer | None = None
        self.telemetry: SubscribeHandler | None = None
        self.logs: SubscribeHandler | None = None
        self._info = {"functionName": function_name, "functionVersion": version, "handler": handler}
        self._account_id = account_id

    def registration_body(self, account_id: bool) -> bytes:
        info = dict(self._info)
        if account_id:
            info["accountId"] = self._account_id
        return json.dumps(info).encode()

    def add(self, extension: Extension) -> None:
        self.by_identifier[extension.identifier] = extension
        if self.observer is not None:
            self.observer.extension_registered(extension.instance, extension)

    def forget(self, extensions: ExtensionSet) -> None:
        for member in extensions.members:
            self.by_identifier.pop(member.identifier, None)

    def find(self, instance: Instance, identifier: str | None) -> Extension:
        """The extension of `instance` an identifier header names, or Lambda's 403."""
        if not identifier:
            raise ExtensionError(
                403, "Extension.MissingExtensionIdentifier", "Missing extension identifier"
            )
        import uuid  # off the start-up path: extensions are rare

        try:
            uuid.UUID(identifier)
        except ValueError:
            raise ExtensionError(
                403, "Extension.InvalidExtensionIdentifier", "Invalid extension identifier"
            ) from None
        extension = self.by_identifier.get(identifier)
        if extension is None or extension.instance is not instance:
            raise ExtensionError(
                403, "Extension.UnknownExtensionIdentifier", "Unknown extension identifier"
            )
        return extension


def enable_telemetry(hub: Hub, version: str, memory_size: int, extensions_dir: str) -> None:
    """Serve the Telemetry and Logs APIs through `hub`.

    telemetry.py is loaded only when an extension may use it: at once when external
    extensions exist (they subscribe during their instance's init, and get its records
    from its start), otherwise at the first subscription (an internal extension's).
    """

    def first(api: str, extension: Extension, request: Request) -> Response:
        from lambda_rapid.telemetry import install

        return install(hub, version, memory_size).subscribe(api, extension, request)

    if discover(extensions_dir):
        from lambda_rapid.telemetry import install

        install(hub, version, memory_size)
        return
    hub.telemetry = lambda extension, request: first("telemetry", extension, request)
    hub.logs = lambda extension, request: first("logs", extension, request)


def new_identifier() -> str:
    """A random (version 4) UUID from the OS: an extension's identifier is its credential."""
    import uuid  # off the start-up path: extensions are rare

    return str(uuid.uuid4())
