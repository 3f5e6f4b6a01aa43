"""Configuration: the frozen configs built from the environment and flags.

This module (with `settings.py`, whose tables it applies) is the only reader of
``os.environ``. It owns the frozen ``DaemonConfig`` and ``ServerConfig`` and the
environment handed to runtime processes (the daemon's own minus secrets).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lambda_rapid import settings
from lambda_rapid.credentials import RuntimeUser
from lambda_rapid.names import function_name_from
from lambda_rapid.routes import GatewayRoute
from lambda_rapid.settings import (
    ALL_DAEMON_SETTINGS,
    DAEMON_SETTINGS,
    SERVER_SETTINGS,
    ConfigError,
    Setting,
    SettingValues,
    build_parser,
    expand_switches,
    settings_markdown,
)

if TYPE_CHECKING:
    import argparse

__all__ = [
    "ALL_DAEMON_SETTINGS",
    "DAEMON_SETTINGS",
    "DEFAULT_BOOTSTRAPS",
    "SERVER_SETTINGS",
    "AmqpConfig",
    "ConfigError",
    "DaemonConfig",
    "GatewayConfig",
    "ServerConfig",
    "Setting",
    "daemon_config",
    "default_function_name",
    "emulator_flags",
    "init_container_requested",
    "instance_environ",
    "program_path",
    "runtime_base_environ",
    "server_config",
    "settings_markdown",
]

DEFAULT_BOOTSTRAPS = ("/var/task/bootstrap", "/opt/bootstrap", "/var/runtime/bootstrap")

# Set by the single executable's launcher: the file that was started.
PROGRAM_PATH_VAR = "LAMBDA_RAPID_EXECUTABLE"

# Never handed to a runtime: credentials, and variables that switch runtime interface
# clients into modes this daemon does not drive (multi-concurrency, telemetry frames).
RUNTIME_ENV_BLOCKLIST = frozenset(
    {
        "AMQP_URI",
        "AMQP_USERNAME",
        "AMQP_PASSWORD",
        "AMQP_URI_FILE",
        "AMQP_PASSWORD_FILE",
        PROGRAM_PATH_VAR,
        "AWS_LAMBDA_MAX_CONCURRENCY",
        "_LAMBDA_TELEMETRY_LOG_FD",
        "_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET",
    }
)


@dataclass(frozen=True, slots=True)
class AmqpConfig:
    """Where the broker is and how hard to try reaching it."""

    url: str  # with credentials, without the reconnection parameters
    display: str  # for log lines: no credentials
    connection_attempts: int
    retry_delay: float

    def __repr__(self) -> str:
        return f"AmqpConfig({self.display!r})"


# Where CA bundles live when the Python build's own default path does not exist (Debian
# and Go scratch images, RHEL, Alpine).
CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


def ca_file(
    environ: Mapping[str, str], default: str | None, candidates: Sequence[str] = CA_FILES
) -> str | None:
    """The CA bundle for amqps://: SSL_CERT_FILE, else None when Python's `default`
    exists, else the first existing candidate."""
    if environ.get("SSL_CERT_FILE"):
        return environ["SSL_CERT_FILE"]
    if default is not None:
        return None
    return next((path for path in candidates if os.path.isfile(path)), None)


def amqp_config(
    uri: str | None,
    username: str | None,
    password: str | None,
    environ: Mapping[str, str] | None = None,
) -> AmqpConfig | None:
    """Split AMQP_URI into a connection URL and the reconnection policy it names."""
    if uri is None:
        return None
    import urllib.parse  # only with AMQP on: kept off the start-up path

    parts = urllib.parse.urlsplit(uri)
    query = urllib.parse.parse_qs(parts.query)
    if parts.scheme == "amqps" and "cafile" not in query and "capath" not in query:
        import ssl  # only for TLS: it is not otherwise needed at start-up

        env = os.environ if environ is None else environ
        found = ca_file(env, ssl.get_default_verify_paths().cafile)
        if found is not None:
            query["cafile"] = [found]
    attempts = max(1, int(float(query.pop("connection_attempts", ["1"])[0])))
    delay = max(0.0, float(query.pop("retry_delay", ["2"])[0]))
    user = urllib.parse.unquote(parts.username) if parts.username else (username or "guest")
    secret = urllib.parse.unquote(parts.password) if parts.password else (password or "guest")
    host = parts.hostname or "localhost"
    host_port = f"[{host}]" if ":" in host else host
    if parts.port:
        host_port += f":{parts.port}"
    credentials = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(secret, safe='')}"
    path = parts.path or "/"
    url = urllib.parse.urlunsplit(
        (parts.scheme, f"{credentials}@{host_port}", path, urllib.parse.urlencode(query, True), "")
    )
    display = urllib.parse.urlunsplit((parts.scheme, host_port, path, "", ""))
    return AmqpConfig(url, display, attempts, delay)


def amqp_settings(values: SettingValues, env: Mapping[str, str]) -> AmqpConfig | None:
    """The broker settings; a *_FILE setting stands in for its setting."""
    uri = _or_file(values, settings.AMQP_URI, settings.AMQP_URI_FILE)
    password = _or_file(values, settings.AMQP_PASSWORD, settings.AMQP_PASSWORD_FILE)
    return amqp_config(uri, values.get(settings.AMQP_USERNAME), password, env)


def _or_file(values: SettingValues, setting: Setting[str], file: Setting[str]) -> str | None:
    from_file = values.get(file)
    if from_file is None:
        return values.get(setting)
    if values.given(setting):
        raise ConfigError(f"{setting.env} and {file.env} are both set: give one")
    return from_file


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The API Gateway-style front door (GATEWAY_PORT set)."""

    port: int
    event_format: str = "v2"
    stage: str | None = None
    routes: tuple[GatewayRoute, ...] | None = None
    timeout: float = 29.0
    invoke_mode: str = "BUFFERED"


def gateway_config(values: SettingValues) -> GatewayConfig | None:
    """The gateway's settings, or None when GATEWAY_PORT is unset (all are validated)."""
    port = values.get(settings.GATEWAY_PORT)
    if port is None:
        return None
    return GatewayConfig(
        port,
        values[settings.GATEWAY_EVENT_FORMAT],
        values.get(settings.GATEWAY_STAGE),
        values.get(settings.GATEWAY_ROUTES),
        values[settings.GATEWAY_TIMEOUT],
        values[settings.GATEWAY_INVOKE_MODE],
    )


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything the daemon needs, validated before anything starts."""

    command: tuple[str, ...]
    handler: str | None
    invoke_api_host: str
    port: int
    runtime_api_host: str
    runtime_api_port: int
    function_name: str
    function_version: str
    timeout: float
    idle_timeout: float
    memory_size: int
    max_concurrency: int
    print_reports: bool
    log_level: str
    structured_logging: bool
    region: str
    account_id: str
    shutdown_grace: float
    runtime_environ: Mapping[str, str]
    amqp: AmqpConfig | None = None
    max_retry_attempts: int = 2
    dead_letter_queue: str = ""
    max_event_age: float = 21600.0
    event_retry_delay: float = 60.0
    gateway: GatewayConfig | None = None
    enable_openfaas: bool = False
    runtime_api_peer_check: bool = True
    runtime_user: RuntimeUser | None = None
    extensions_dir: str = "/opt/extensions"
    # Lambda's init limit for external extensions to register (an override for tests).
    extensions_init_limit: float = 10.0
    metrics_port: int | None = None
    watch: bool = False
    provisioned_concurrency: int = 0
    proactive_init: bool = True

    @property
    def function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"


DAEMON_DESCRIPTION = """\
Run an AWS Lambda function: serve the Lambda Runtime API to runtime processes started
from COMMAND (up to MAX_CONCURRENCY at once) and the Lambda Invoke API to clients.

With no COMMAND the first existing of /var/task/bootstrap, /opt/bootstrap and
/var/runtime/bootstrap runs. With two or more arguments the last is the handler
(e.g. `python -m awslambdaric echo.handler`); otherwise the handler is _HANDLER.
Every setting is an environment variable or a flag; flags win."""


class NoFlags:
    """The parsed command line when it is only the runtime command (the common start):
    no flag is set, so the argument parser is not even imported."""

    def __init__(self, command: list[str]) -> None:
        self.command = command


def daemon_flags(argv: list[str]) -> NoFlags | argparse.Namespace:
    """The flags (as attributes named after the settings' fields) and `command`."""
    if not argv or not argv[0].startswith("-"):
        return NoFlags(argv)
    import argparse  # see NoFlags

    parser = build_parser("lambda-runtime-api-daemon", ALL_DAEMON_SETTINGS, DAEMON_DESCRIPTION)
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="COMMAND ...",
        help="the runtime command, e.g. python -m awslambdaric echo.handler",
    )
    return parser.parse_args(argv)


def daemon_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """Build the daemon's config from command-line arguments and the environment."""
    env = os.environ if environ is None else environ
    flags = daemon_flags(expand_switches(emulator_flags(argv), ALL_DAEMON_SETTINGS))
    values = SettingValues(ALL_DAEMON_SETTINGS, flags, env)
    command = _runtime_command(list(flags.command))
    handler = command[-1] if len(command) >= 2 else (env.get("_HANDLER") or None)
    function_name = values.get(settings.FUNCTION_NAME) or default_function_name(handler, command[0])
    return DaemonConfig(
        command=tuple(command),
        handler=handler,
        invoke_api_host=values[settings.INVOKE_API_HOST],
        port=values[settings.PORT],
        runtime_api_host=values[settings.RUNTIME_API_HOST],
        runtime_api_port=values[settings.RUNTIME_API_PORT],
        function_name=function_name,
        function_version=values[settings.FUNCTION_VERSION],
        timeout=values[settings.TIMEOUT],
        idle_timeout=values[settings.IDLE_TIMEOUT],
        memory_size=values[settings.MEMORY_SIZE],
        max_concurrency=values[settings.MAX_CONCURRENCY],
        print_reports=values[settings.PRINT_REPORTS],
        log_level=values[settings.LOG_LEVEL],
        structured_logging=values.get(settings.STRUCTURED_LOGGING) or False,
        region=values[settings.REGION],
        account_id=values[settings.ACCOUNT_ID],
        shutdown_grace=values[settings.SHUTDOWN_GRACE],
        runtime_environ=runtime_base_environ(env),
        amqp=amqp_settings(values, env),
        max_retry_attempts=values[settings.MAX_RETRY_ATTEMPTS],
        dead_letter_queue=values.get(settings.DEAD_LETTER_QUEUE) or f"{function_name}-dlq",
        max_event_age=values[settings.MAX_EVENT_AGE],
        event_retry_delay=values[settings.EVENT_RETRY_DELAY],
        gateway=gateway_config(values),
        enable_openfaas=values[settings.ENABLE_OPENFAAS],
        runtime_api_peer_check=values[settings.RUNTIME_API_PEER_CHECK],
        runtime_user=values.get(settings.RUNTIME_USER),
        extensions_dir=values[settings.EXTENSIONS_DIR],
        extensions_init_limit=_extensions_init_limit(env),
        metrics_port=values.get(settings.METRICS_PORT),
        watch=values[settings.WATCH],
        provisioned_concurrency=_provisioned(values),
        proactive_init=values[settings.PROACTIVE_INIT],
    )


def _provisioned(values: SettingValues) -> int:
    """PROVISIONED_CONCURRENCY, which may not exceed MAX_CONCURRENCY."""
    provisioned: int = values[settings.PROVISIONED_CONCURRENCY]
    if provisioned > values[settings.MAX_CONCURRENCY]:
        raise ConfigError(
            f"invalid PROVISIONED_CONCURRENCY={provisioned}: must not exceed MAX_CONCURRENCY "
            f"({values[settings.MAX_CONCURRENCY]})"
        )
    return provisioned


def _extensions_init_limit(env: Mapping[str, str]) -> float:
    """Lambda's 10 s, or LAMBDA_RAPID_EXTENSIONS_INIT_LIMIT (seconds) for tests."""
    raw = env.get("LAMBDA_RAPID_EXTENSIONS_INIT_LIMIT")
    if not raw:
        return 10.0
    try:
        limit = float(raw)
    except ValueError:
        limit = 0.0
    if not limit > 0:
        raise ConfigError(f"LAMBDA_RAPID_EXTENSIONS_INIT_LIMIT: not a positive number: {raw!r}")
    return limit


def _runtime_command(args: list[str]) -> list[str]:
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        for candidate in DEFAULT_BOOTSTRAPS:
            if os.access(candidate, os.X_OK):
                return [candidate]
        raise ConfigError(
            "runtime command: none given and no bootstrap found in " + ", ".join(DEFAULT_BOOTSTRAPS)
        )
    program = args[0]
    if not is_executable_program(program):
        raise ConfigError(f"runtime command: {program!r} not found or not executable")
    return args


def is_executable_program(program: str) -> bool:
    """Whether `program` names an executable file, as a path or found on PATH."""
    if os.sep in program:
        candidates = [program]
    else:
        path = os.environ.get("PATH", os.defpath).split(os.pathsep)
        candidates = [os.path.join(directory or ".", program) for directory in path]
    return any(os.path.isfile(c) and os.access(c, os.X_OK) for c in candidates)


# The AWS emulator's flags, accepted anywhere before a `--` (its own scripts put them
# after the handler) and never passed on to the runtime: flag → our (host, port) flags.
EMULATOR_ADDRESS_FLAGS = {
    "--runtime-interface-emulator-address": ("--invoke-api-host", "--port"),
    "--runtime-api-address": ("--runtime-api-host", "--runtime-api-port"),
}
EMULATOR_FLAGS = (*EMULATOR_ADDRESS_FLAGS, "--log-level")


def emulator_flags(argv: Sequence[str]) -> list[str]:
    """Move the emulator's flags, wherever they stand, to the front as our own flags."""
    moved: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            rest.extend(argv[index:])
            break
        flag, equals, value = token.partition("=")
        if flag not in EMULATOR_FLAGS:
            rest.append(token)
            index += 1
            continue
        if not equals:
            if index + 1 >= len(argv):
                raise ConfigError(f"{flag} needs a value")
            value = argv[index + 1]
            index += 1
        index += 1
        moved.extend(_as_own_flags(flag, value))
    return moved + rest


def _as_own_flags(flag: str, value: str) -> list[str]:
    if flag not in EMULATOR_ADDRESS_FLAGS:
        return [f"{flag}={value}"]
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # an IPv6 address needs brackets: [::1]:8080
    if not sep or not port.isdigit():
        raise ConfigError(f"invalid {flag}={value!r}: must be HOST:PORT")
    host_flag, port_flag = EMULATOR_ADDRESS_FLAGS[flag]
    return [f"{host_flag}={host or '0.0.0.0'}", f"{port_flag}={port}"]


def default_function_name(handler: str | None, program: str) -> str:
    """`echo.handler` → `echo`; with no handler, the program's file name."""
    source = handler.rpartition(".")[0] if handler and "." in handler else None
    return function_name_from(os.path.basename(os.path.normpath(source or program)))


def runtime_base_environ(
    environ: Mapping[str, str], frozen: bool = getattr(sys, "frozen", False)
) -> dict[str, str]:
    """The daemon's environment without secrets and settings runtimes must not see.

    In the single executable the loaders' variables are dropped too, and the library
    path is the one the executable was started with: a Python runtime would otherwise
    load the bundle's libpython.
    """
    env = {k: v for k, v in environ.items() if k not in RUNTIME_ENV_BLOCKLIST}
    if frozen:
        env = {k: v for k, v in env.items() if not k.startswith(BUNDLE_ENV_PREFIXES)}
        original = environ.get("LD_LIBRARY_PATH_ORIG")
        if original is not None:
            env["LD_LIBRARY_PATH"] = original
    return env


# Set by the bundle's loader (PyInstaller's bootloader).
BUNDLE_ENV_PREFIXES = ("_PYI_", "_MEI", "LD_LIBRARY_PATH")


def program_path(environ: Mapping[str, str] | None = None) -> str:
    """The file that was started: the single executable (its launcher says which), the
    frozen executable, or argv[0]."""
    env = os.environ if environ is None else environ
    if PROGRAM_PATH_VAR in env:
        return env[PROGRAM_PATH_VAR]
    if getattr(sys, "frozen", False):
        return sys.executable
    import shutil  # only for the init container's copy

    return shutil.which(sys.argv[0]) or sys.argv[0]


def init_container_requested(environ: Mapping[str, str] | None = None) -> bool:
    """KUBERNETES_INIT_CONTAINER set: copy the executable to /tmp instead of serving."""
    env = os.environ if environ is None else environ
    return bool(env.get("KUBERNETES_INIT_CONTAINER"))


def temp_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where the single executable unpacks itself: TMPDIR, else /tmp."""
    env = os.environ if environ is None else environ
    return env.get("TMPDIR") or "/tmp"


def instance_environ(
    config: DaemonConfig, slot: int, runtime_api: str, log_stream: str
) -> dict[str, str]:
    """The environment of one runtime instance, as the Lambda service would set it, and
    `_INSTANCE`, its slot (extensions that listen pick distinct ports by it)."""
    env = dict(config.runtime_environ)
    env.setdefault("LAMBDA_TASK_ROOT", os.getcwd())
    env.setdefault("LAMBDA_RUNTIME_DIR", "/var/runtime")
    env.setdefault("TZ", ":UTC")
    env.setdefault("AWS_DEFAULT_REGION", config.region)
    env.update(
        AWS_LAMBDA_RUNTIME_API=runtime_api,
        AWS_LAMBDA_FUNCTION_NAME=config.function_name,
        AWS_LAMBDA_FUNCTION_VERSION=config.function_version,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(config.memory_size),
        AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{config.function_name}",
        AWS_LAMBDA_LOG_STREAM_NAME=log_stream,
        AWS_LAMBDA_INITIALIZATION_TYPE="on-demand",
        AWS_REGION=config.region,
    )
    env["_INSTANCE"] = str(slot)
    if config.handler is not None:
        env["_HANDLER"] = config.handler
    return env


SERVER_DESCRIPTION = """\
The Lambda Invoke API for many functions: each invocation is published to the RabbitMQ
queue named after its FunctionName, where lambda-runtime-api-daemon instances (started
with AMQP_URI) serve it, and the correlated reply is returned to the caller.
Every setting is an environment variable or a flag; flags win."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Settings of the Lambda Server."""

    invoke_api_host: str
    port: int
    timeout: float
    log_level: str
    structured_logging: bool
    region: str
    account_id: str
    amqp: AmqpConfig
    gateway: GatewayConfig | None = None
    metrics_port: int | None = None


def server_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerConfig:
    env = os.environ if environ is None else environ
    parser = build_parser("lambda-server", SERVER_SETTINGS, SERVER_DESCRIPTION)
    flags = parser.parse_args(expand_switches(argv, SERVER_SETTINGS))
    values = SettingValues(SERVER_SETTINGS, flags, env)
    amqp = amqp_settings(values, env)
    assert amqp is not None  # AMQP_URI has a default here
    return ServerConfig(
        invoke_api_host=values[settings.INVOKE_API_HOST],
        port=values[settings.PORT],
        timeout=values[settings.SERVER_TIMEOUT],
        log_level=values[settings.LOG_LEVEL],
        structured_logging=values.get(settings.STRUCTURED_LOGGING) or False,
        region=values[settings.REGION],
        account_id=values[settings.ACCOUNT_ID],
        amqp=amqp,
        gateway=gateway_config(values),
        metrics_port=values.get(settings.METRICS_PORT),
    )
