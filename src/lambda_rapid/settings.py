"""Every setting declared once: the value parsers and the `Setting` tables.

``--help``, the README's settings table and the validation of every value come from
these tables; `config.py` turns the parsed values into the frozen configs. A bad value
raises ``ConfigError`` naming the variable or flag, which the CLI prints on one line
before exiting with status 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from lambda_rapid.credentials import parse_runtime_user, read_secret_file
from lambda_rapid.names import is_function_name
from lambda_rapid.routes import parse_routes

if TYPE_CHECKING:
    import argparse


class ConfigError(Exception):
    """A setting has an invalid value; the CLI prints it on one line and exits 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0-65535")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be zero or a positive number of seconds")
    return value


def _memory_size(text: str) -> int:
    value = int(text)
    if not 128 <= value <= 10240:
        raise ValueError("must be between 128 and 10240 (MB)")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise ValueError("must be TRUE or FALSE")


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _account_id(text: str) -> str:
    if len(text) != 12 or not text.isdigit():
        raise ValueError("must be a 12-digit AWS account id")
    return text


def _region(text: str) -> str:
    if not text or not all(c.isalnum() or c == "-" for c in text):
        raise ValueError("must look like an AWS region, e.g. us-east-1")
    return text


def _function_name(text: str) -> str:
    if not is_function_name(text):
        raise ValueError("must be 1-64 characters of letters, digits, '-' and '_'")
    return text


def _text(text: str) -> str:
    return text


def _amqp_uri(text: str) -> str:
    import urllib.parse  # only with AMQP on: kept off the start-up path

    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("amqp", "amqps") or not parsed.hostname:
        raise ValueError("must be an amqp:// or amqps:// URI with a host")
    try:
        parsed.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError("has an invalid port") from None
    query = urllib.parse.parse_qs(parsed.query)
    for name in ("connection_attempts", "retry_delay"):
        for value in query.get(name, []):
            float(value)
    return text


def _amqp_uri_file(path: str) -> str:
    return _amqp_uri(read_secret_file(path))


def _retry_attempts(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 2:
        raise ValueError("must be 0, 1 or 2 (as Lambda's MaximumRetryAttempts)")
    return value


def _event_age(text: str) -> float:
    value = float(text)
    if not 60 <= value <= 21600:
        raise ValueError("must be between 60 and 21600 seconds")
    return value


def _queue_name(text: str) -> str:
    if not 1 <= len(text) <= 255:
        raise ValueError("must be a queue name of 1-255 characters")
    return text


T = TypeVar("T")


def _as_is(text: str) -> str:
    return repr(text)


def _without_password(uri: str) -> str:
    """A URI as an error message may show it: the password (or all it might be) masked."""
    scheme, sep, rest = uri.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return repr(uri)
    return repr(f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{host}")


@dataclass(frozen=True, slots=True)
class Setting(Generic[T]):
    """One setting: its field name, env var, flag, parser, default and help text.

    `shown` renders a bad value in the error message (a URI's password never is).
    """

    field: str
    env: str
    flag: str
    parse: Callable[[str], T]
    default: str | None
    help: str
    is_switch: bool = False
    shown: Callable[[str], str] = _as_is


INVOKE_API_HOST = Setting(
    "invoke_api_host",
    "INVOKE_API_HOST",
    "--invoke-api-host",
    _text,
    "0.0.0.0",
    "address the Invoke API listens on",
)

PORT = Setting("port", "PORT", "--port", _port, "8080", "port of the Invoke API")

RUNTIME_API_HOST = Setting(
    "runtime_api_host",
    "RUNTIME_API_HOST",
    "--runtime-api-host",
    _text,
    "127.0.0.1",
    "address the Runtime API listens on (runtimes connect here)",
)

RUNTIME_API_PORT = Setting(
    "runtime_api_port",
    "RUNTIME_API_PORT",
    "--runtime-api-port",
    _port,
    "9001",
    "Runtime API port of the first instance; further instances get free ports "
    "(0: every instance gets a free port)",
)

FUNCTION_NAME = Setting(
    "function_name",
    "AWS_LAMBDA_FUNCTION_NAME",
    "--function-name",
    _function_name,
    None,
    "function name (default: the handler's module, or the command's name)",
)

FUNCTION_VERSION = Setting(
    "function_version",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "--function-version",
    _text,
    "$LATEST",
    "function version reported to runtimes and callers",
)

TIMEOUT = Setting(
    "timeout",
    "AWS_LAMBDA_FUNCTION_TIMEOUT",
    "--timeout",
    _positive_seconds,
    "3",
    "seconds an invocation may run before it times out",
)

IDLE_TIMEOUT = Setting(
    "idle_timeout",
    "AWS_LAMBDA_FUNCTION_IDLETIMEOUT",
    "--idle-timeout",
    _positive_seconds,
    "1800",
    "seconds an idle instance lives before it is stopped",
)

MEMORY_SIZE = Setting(
    "memory_size",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "--memory-size",
    _memory_size,
    "3008",
    "memory size in MB reported to runtimes and in REPORT lines",
)

MAX_CONCURRENCY = Setting(
    "max_concurrency",
    "MAX_CONCURRENCY",
    "--max-concurrency",
    _positive_int,
    "1",
    "most runtime instances running at once",
)

PROVISIONED_CONCURRENCY = Setting(
    "provisioned_concurrency",
    "PROVISIONED_CONCURRENCY",
    "--provisioned-concurrency",
    _non_negative_int,
    "0",
    "instances initialised at start-up and kept (at most MAX_CONCURRENCY)",
)

PROACTIVE_INIT = Setting(
    "proactive_init",
    "PROACTIVE_INIT",
    "--proactive-init",
    _boolean,
    "TRUE",
    "start the first on-demand instance with the daemon, as Lambda may, rather than on the "
    "first invocation",
    is_switch=True,
)

PRINT_REPORTS = Setting(
    "print_reports",
    "PRINT_REPORTS",
    "--print-reports",
    _boolean,
    "FALSE",
    "print START, END and REPORT lines for each invocation",
    is_switch=True,
)

RUNTIME_API_PEER_CHECK = Setting(
    "runtime_api_peer_check",
    "RUNTIME_API_PEER_CHECK",
    "--runtime-api-peer-check",
    _boolean,
    "TRUE",
    "serve an instance's Runtime API only to that instance's processes (needs /proc); "
    "others get 403",
    is_switch=True,
)

LOG_LEVEL = Setting(
    "log_level",
    "LOG_LEVEL",
    "--log-level",
    _log_level,
    "INFO",
    "level of the daemon's own log lines",
)

STRUCTURED_LOGGING = Setting(
    "structured_logging",
    "USE_STRUCTURED_LOGGING",
    "--structured-logging",
    _boolean,
    None,
    "log JSON lines instead of human-readable ones",
    is_switch=True,
)

REGION = Setting(
    "region",
    "AWS_REGION",
    "--region",
    _region,
    "us-east-1",
    "region used in ARNs and given to runtimes",
)

ACCOUNT_ID = Setting(
    "account_id",
    "AWS_ACCOUNT_ID",
    "--account-id",
    _account_id,
    "123456789012",
    "account id used in ARNs",
)

SHUTDOWN_GRACE = Setting(
    "shutdown_grace",
    "SHUTDOWN_GRACE_PERIOD",
    "--shutdown-grace",
    _non_negative_seconds,
    "5",
    "seconds in-flight invocations may finish after SIGTERM/SIGINT",
)

RUNTIME_USER = Setting(
    "runtime_user",
    "RUNTIME_USER",
    "--runtime-user",
    parse_runtime_user,
    None,
    "user runtimes run as when the daemon is root: name or uid[:gid], e.g. 65534:65534 "
    "(unset: the daemon's user)",
)

EXTENSIONS_DIR = Setting(
    "extensions_dir",
    "LAMBDA_EXTENSIONS_DIR",
    "--extensions-dir",
    str,
    "/opt/extensions",
    "directory whose executables start as external Lambda extensions with each instance "
    "(none when disable-extensions-jwigqn8j exists in its parent directory)",
)

DAEMON_SETTINGS: tuple[Setting[Any], ...] = (
    INVOKE_API_HOST,
    PORT,
    RUNTIME_API_HOST,
    RUNTIME_API_PORT,
    FUNCTION_NAME,
    FUNCTION_VERSION,
    TIMEOUT,
    IDLE_TIMEOUT,
    MEMORY_SIZE,
    MAX_CONCURRENCY,
    PROVISIONED_CONCURRENCY,
    PROACTIVE_INIT,
    PRINT_REPORTS,
    RUNTIME_API_PEER_CHECK,
    LOG_LEVEL,
    STRUCTURED_LOGGING,
    REGION,
    ACCOUNT_ID,
    SHUTDOWN_GRACE,
    RUNTIME_USER,
    EXTENSIONS_DIR,
)

AMQP_URI = Setting(
    "amqp_uri",
    "AMQP_URI",
    "--amqp-uri",
    _amqp_uri,
    None,
    "RabbitMQ URI, e.g. amqp://host:5672/?connection_attempts=20&retry_delay=10 (unset: no broker)",
    shown=_without_password,
)

AMQP_USERNAME = Setting(
    "amqp_username",
    "AMQP_USERNAME",
    "--amqp-username",
    _text,
    None,
    "broker user name when AMQP_URI has none",
)

AMQP_PASSWORD = Setting(
    "amqp_password",
    "AMQP_PASSWORD",
    "--amqp-password",
    _text,
    None,
    "broker password when AMQP_URI has none",
)

AMQP_URI_FILE = Setting(
    "amqp_uri_file",
    "AMQP_URI_FILE",
    "--amqp-uri-file",
    _amqp_uri_file,
    None,
    "file holding AMQP_URI (e.g. a Docker or Kubernetes secret), instead of AMQP_URI",
)

AMQP_PASSWORD_FILE = Setting(
    "amqp_password_file",
    "AMQP_PASSWORD_FILE",
    "--amqp-password-file",
    read_secret_file,
    None,
    "file holding AMQP_PASSWORD, instead of AMQP_PASSWORD",
)

AMQP_SETTINGS: tuple[Setting[Any], ...] = (
    AMQP_URI,
    AMQP_USERNAME,
    AMQP_PASSWORD,
    AMQP_URI_FILE,
    AMQP_PASSWORD_FILE,
)

MAX_RETRY_ATTEMPTS = Setting(
    "max_retry_attempts",
    "MAXIMUM_RETRY_ATTEMPTS",
    "--maximum-retry-attempts",
    _retry_attempts,
    "2",
    "retries of a failed Event invocation, and re-runs of an interrupted Event or "
    "RequestResponse (AMQP mode)",
)

DEAD_LETTER_QUEUE = Setting(
    "dead_letter_queue",
    "DEAD_LETTER_QUEUE",
    "--dead-letter-queue",
    _queue_name,
    None,
    "queue for Event invocations that failed every attempt (default <function>-dlq)",
)

MAX_EVENT_AGE = Setting(
    "max_event_age",
    "MAXIMUM_EVENT_AGE",
    "--maximum-event-age",
    _event_age,
    "21600",
    "seconds an Event may wait in the queue before it is dead-lettered unrun "
    "(60-21600, as Lambda's MaximumEventAgeInSeconds)",
)

EVENT_RETRY_DELAY = Setting(
    "event_retry_delay",
    "RETRY_DELAY",
    "--retry-delay",
    _non_negative_seconds,
    "60",
    "seconds before the first retry of a failed Event, doubled for each later one, "
    "waited in the broker (0: retry at once)",
)

DAEMON_AMQP_SETTINGS: tuple[Setting[Any], ...] = (
    MAX_RETRY_ATTEMPTS,
    DEAD_LETTER_QUEUE,
    MAX_EVENT_AGE,
    EVENT_RETRY_DELAY,
)


def _event_format(text: str) -> str:
    lowered = text.strip().lower()
    if lowered in ("v1", "1.0"):
        return "v1"
    if lowered in ("v2", "2.0"):
        return "v2"
    raise ValueError("must be v1 (REST API) or v2 (HTTP API / function URL)")


def _stage(text: str) -> str | None:
    if text in ("", "$default"):
        return None
    if len(text) > 128 or not all(c.isalnum() or c in "-_" for c in text):
        raise ValueError("must be $default or letters, digits, '-' and '_'")
    return text


GATEWAY_PORT = Setting(
    "gateway_port",
    "GATEWAY_PORT",
    "--gateway-port",
    _port,
    None,
    "port of the API Gateway-style HTTP front door on INVOKE_API_HOST (unset: off)",
)

GATEWAY_EVENT_FORMAT = Setting(
    "gateway_event_format",
    "GATEWAY_EVENT_FORMAT",
    "--gateway-event-format",
    _event_format,
    "v2",
    "event the gateway sends: v1 (REST API proxy) or v2 (HTTP API, function URL)",
)

GATEWAY_STAGE = Setting(
    "gateway_stage",
    "GATEWAY_STAGE",
    "--gateway-stage",
    _stage,
    None,
    "stage name: requests must start with /<stage> (unset: $default, no prefix)",
)

GATEWAY_ROUTES = Setting(
    "gateway_routes",
    "GATEWAY_ROUTES",
    "--gateway-routes",
    parse_routes,
    None,
    "route keys, e.g. 'GET /items/{id},ANY /files/{proxy+}', or @FILE with one a line "
    "(lambda-server: 'GET /items/{id}=function'); other paths answer 404 (unset: every path)",
)

GATEWAY_TIMEOUT = Setting(
    "gateway_timeout",
    "GATEWAY_TIMEOUT",
    "--gateway-timeout",
    _positive_seconds,
    "29",
    "seconds the gateway waits for the function before answering 504",
)


def _invoke_mode(text: str) -> str:
    mode = text.strip().upper()
    if mode not in ("BUFFERED", "RESPONSE_STREAM"):
        raise ValueError("must be BUFFERED or RESPONSE_STREAM")
    return mode


GATEWAY_INVOKE_MODE = Setting(
    "gateway_invoke_mode",
    "GATEWAY_INVOKE_MODE",
    "--gateway-invoke-mode",
    _invoke_mode,
    "BUFFERED",
    "as a function URL's InvokeMode: BUFFERED (the proxy response) or RESPONSE_STREAM "
    "(the function's stream, its http-integration-response prelude honoured, sent chunked)",
)

GATEWAY_SETTINGS: tuple[Setting[Any], ...] = (
    GATEWAY_PORT,
    GATEWAY_EVENT_FORMAT,
    GATEWAY_STAGE,
    GATEWAY_ROUTES,
    GATEWAY_TIMEOUT,
    GATEWAY_INVOKE_MODE,
)


ENABLE_OPENFAAS = Setting(
    "enable_openfaas",
    "ENABLE_OPENFAAS",
    "--enable-openfaas",
    _boolean,
    "FALSE",
    "also serve the OpenFaaS watchdog routes POST /, GET /_/health and GET /_/ready",
    is_switch=True,
)

OPENFAAS_SETTINGS: tuple[Setting[Any], ...] = (ENABLE_OPENFAAS,)

METRICS_PORT = Setting(
    "metrics_port",
    "METRICS_PORT",
    "--metrics-port",
    _port,
    None,
    "port serving Prometheus metrics at /metrics on INVOKE_API_HOST (unset: off)",
)

WATCH = Setting(
    "watch",
    "WATCH",
    "--watch",
    _boolean,
    "FALSE",
    "restart instances when a file under the function's code directory (LAMBDA_TASK_ROOT, "
    "else the working directory) changes: idle ones at once, busy ones after their invocation",
    is_switch=True,
)

OPERATE_SETTINGS: tuple[Setting[Any], ...] = (METRICS_PORT, WATCH)

ALL_DAEMON_SETTINGS = (
    DAEMON_SETTINGS
    + AMQP_SETTINGS
    + DAEMON_AMQP_SETTINGS
    + GATEWAY_SETTINGS
    + OPENFAAS_SETTINGS
    + OPERATE_SETTINGS
)


def build_parser(
    prog: str, settings: Sequence[Setting[Any]], description: str
) -> argparse.ArgumentParser:
    """An argument parser whose flags and help come from the settings table."""
    import argparse  # only with flags: a plain start parses none

    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for setting in settings:
        default = "unset" if setting.default is None else setting.default
        help_text = f"{setting.help} [env {setting.env}, default {default}]"
        if setting.is_switch:
            parser.add_argument(
                setting.flag, dest=setting.field, metavar="TRUE|FALSE", help=help_text
            )
        else:
            parser.add_argument(
                setting.flag, dest=setting.field, metavar=setting.env, help=help_text
            )
    return parser


def expand_switches(argv: Sequence[str], settings: Sequence[Setting[Any]]) -> list[str]:
    """A bare switch (`--print-reports`) means TRUE, without taking the next word.

    Only the options before the runtime command are looked at; `--flag=VALUE` still works.
    """
    switches = {s.flag for s in settings if s.is_switch}
    takes_value = {s.flag for s in settings if not s.is_switch}
    result = list(argv)
    index = 0
    while index < len(result):
        token = result[index]
        if token == "--" or not token.startswith("-"):
            break
        if token in switches:
            result[index] = f"{token}=TRUE"
        elif token in takes_value:
            index += 1
        index += 1
    return result


class SettingValues:
    """Every setting of a table parsed from its flag, else its env var, else its default."""

    def __init__(
        self,
        settings: Sequence[Setting[Any]],
        flags: object,
        environ: Mapping[str, str],
    ) -> None:
        self._flags = flags
        self._environ = environ
        self._values: dict[str, object] = {}
        for setting in settings:
            self._values[setting.field] = self._parse(setting)

    def _parse(self, setting: Setting[Any]) -> object:
        flag_value = getattr(self._flags, setting.field, None)
        if flag_value is not None:
            raw, source = flag_value, setting.flag
        elif setting.env in self._environ:
            raw, source = self._environ[setting.env], setting.env
        else:
            raw, source = setting.default, setting.env
        if raw is None:
            return None
        try:
            return setting.parse(raw)
        except ValueError as exc:
            reason = str(exc)
            if reason.startswith("invalid literal") or "could not convert" in reason:
                reason = "not a number"
            raise ConfigError(f"invalid {source}={setting.shown(raw)}: {reason}") from None

    def get(self, setting: Setting[T]) -> T | None:
        """The setting's value; None when it is unset and has no default."""
        return cast("T | None", self._values[setting.field])

    def __getitem__(self, setting: Setting[T]) -> T:
        """The value of a setting that has a default."""
        value = self.get(setting)
        if value is None:
            raise AssertionError(f"{setting.env} has no default")
        return value

    def given(self, setting: Setting[Any]) -> bool:
        """Whether the flag or the env var was given (even empty)."""
        return getattr(self._flags, setting.field, None) is not None or setting.env in self._environ


def settings_markdown(settings: Sequence[Setting[Any]]) -> str:
    """The README's settings table (a test keeps the README in step with this)."""
    rows = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for s in settings:
        default = "unset" if s.default is None else f"`{s.default}`"
        rows.append(f"| `{s.env}` | `{s.flag}` | {default} | {s.help} |")
    return "\n".join(rows)


# lambda-server's own defaults of two shared settings (same fields, so read the same way).
SERVER_TIMEOUT = dataclasses.replace(
    TIMEOUT,
    default="1800",
    help="seconds to wait for a reply before answering with a timeout (fail-safe)",
)
SERVER_AMQP_URI = dataclasses.replace(
    AMQP_URI, default="amqp://127.0.0.1:5672/?connection_attempts=20&retry_delay=10"
)

SERVER_SETTINGS: tuple[Setting[Any], ...] = (
    INVOKE_API_HOST,
    PORT,
    SERVER_TIMEOUT,
    LOG_LEVEL,
    STRUCTURED_LOGGING,
    REGION,
    ACCOUNT_ID,
    SERVER_AMQP_URI,
    *AMQP_SETTINGS[1:],
    *GATEWAY_SETTINGS,
    METRICS_PORT,
)
