"""Every setting declared once: the value parsers and the `Setting` tables.

``--help``, the README's settings table and the validation of every value come from
these tables; `config.py` turns the parsed values into the frozen configs. A bad value
raises ``ConfigError`` naming the variable or flag, which the CLI prints on one line
before exiting with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lambda_rapid.credentials import parse_runtime_user, read_secret_file
from lambda_rapid.names import is_function_name
from lambda_rapid.routes import parse_routes


class ConfigError(Exception):
    """A setting has an invalid value; the CLI prints it on one line and exits 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
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


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its field name, env var, flag, parser, default and help text."""

    field: str
    env: str
    flag: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    is_switch: bool = False


DAEMON_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "invoke_api_host",
        "INVOKE_API_HOST",
        "--invoke-api-host",
        _text,
        "0.0.0.0",
        "address the Invoke API listens on",
    ),
    Setting("port", "PORT", "--port", _port, "8080", "port of the Invoke API"),
    Setting(
        "runtime_api_host",
        "RUNTIME_API_HOST",
        "--runtime-api-host",
        _text,
        "127.0.0.1",
        "address the Runtime API listens on (runtimes connect here)",
    ),
    Setting(
        "runtime_api_port",
        "RUNTIME_API_PORT",
        "--runtime-api-port",
        _port,
        "9001",
        "Runtime API port of the first instance; further instances get free ports "
        "(0: every instance gets a free port)",
    ),
    Setting(
        "function_name",
        "AWS_LAMBDA_FUNCTION_NAME",
        "--function-name",
        _function_name,
        None,
        "function name (default: the handler's module, or the command's name)",
    ),
    Setting(
        "function_version",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "--function-version",
        _text,
        "$LATEST",
        "function version reported to runtimes and callers",
    ),
    Setting(
        "timeout",
        "AWS_LAMBDA_FUNCTION_TIMEOUT",
        "--timeout",
        _positive_seconds,
        "3",
        "seconds an invocation may run before it times out",
    ),
    Setting(
        "idle_timeout",
        "AWS_LAMBDA_FUNCTION_IDLETIMEOUT",
        "--idle-timeout",
        _positive_seconds,
        "1800",
        "seconds an idle instance lives before it is stopped",
    ),
    Setting(
        "memory_size",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "--memory-size",
        _memory_size,
        "3008",
        "memory size in MB reported to runtimes and in REPORT lines",
    ),
    Setting(
        "max_concurrency",
        "MAX_CONCURRENCY",
        "--max-concurrency",
        _positive_int,
        "1",
        "most runtime instances running at once",
    ),
    Setting(
        "print_reports",
        "PRINT_REPORTS",
        "--print-reports",
        _boolean,
        "FALSE",
        "print START, END and REPORT lines for each invocation",
        is_switch=True,
    ),
    Setting(
        "runtime_api_peer_check",
        "RUNTIME_API_PEER_CHECK",
        "--runtime-api-peer-check",
        _boolean,
        "TRUE",
        "serve an instance's Runtime API only to that instance's processes (needs /proc); "
        "others get 403",
        is_switch=True,
    ),
    Setting(
        "log_level",
        "LOG_LEVEL",
        "--log-level",
        _log_level,
        "INFO",
        "level of the daemon's own log lines",
    ),
    Setting(
        "structured_logging",
        "USE_STRUCTURED_LOGGING",
        "--structured-logging",
        _boolean,
        None,
        "log JSON lines instead of human-readable ones",
        is_switch=True,
    ),
    Setting(
        "region",
        "AWS_REGION",
        "--region",
        _region,
        "us-east-1",
        "region used in ARNs and given to runtimes",
    ),
    Setting(
        "account_id",
        "AWS_ACCOUNT_ID",
        "--account-id",
        _account_id,
        "123456789012",
        "account id used in ARNs",
    ),
    Setting(
        "shutdown_grace",
        "SHUTDOWN_GRACE_PERIOD",
        "--shutdown-grace",
        _non_negative_seconds,
        "5",
        "seconds in-flight invocations may finish after SIGTERM/SIGINT",
    ),
    Setting(
        "runtime_user",
        "RUNTIME_USER",
        "--runtime-user",
        parse_runtime_user,
        None,
        "user runtimes run as when the daemon is root: name or uid[:gid], e.g. 65534:65534 "
        "(unset: the daemon's user)",
    ),
)

AMQP_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "amqp_uri",
        "AMQP_URI",
        "--amqp-uri",
        _amqp_uri,
        None,
        "RabbitMQ URI, e.g. amqp://host:5672/?connection_attempts=20&retry_delay=10 "
        "(unset: no broker)",
    ),
    Setting(
        "amqp_username",
        "AMQP_USERNAME",
        "--amqp-username",
        _text,
        None,
        "broker user name when AMQP_URI has none",
    ),
    Setting(
        "amqp_password",
        "AMQP_PASSWORD",
        "--amqp-password",
        _text,
        None,
        "broker password when AMQP_URI has none",
    ),
    Setting(
        "amqp_uri_file",
        "AMQP_URI_FILE",
        "--amqp-uri-file",
        _amqp_uri_file,
        None,
        "file holding AMQP_URI (e.g. a Docker or Kubernetes secret), instead of AMQP_URI",
    ),
    Setting(
        "amqp_password_file",
        "AMQP_PASSWORD_FILE",
        "--amqp-password-file",
        read_secret_file,
        None,
        "file holding AMQP_PASSWORD, instead of AMQP_PASSWORD",
    ),
)

DAEMON_AMQP_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "max_retry_attempts",
        "MAXIMUM_RETRY_ATTEMPTS",
        "--maximum-retry-attempts",
        _retry_attempts,
        "2",
        "retries of a failed Event invocation (AMQP mode)",
    ),
    Setting(
        "dead_letter_queue",
        "DEAD_LETTER_QUEUE",
        "--dead-letter-queue",
        _queue_name,
        None,
        "queue for Event invocations that failed every attempt (default <function>-dlq)",
    ),
    Setting(
        "max_event_age",
        "MAXIMUM_EVENT_AGE",
        "--maximum-event-age",
        _event_age,
        "21600",
        "seconds an Event may wait in the queue before it is dead-lettered unrun "
        "(60-21600, as Lambda's MaximumEventAgeInSeconds)",
    ),
    Setting(
        "event_retry_delay",
        "RETRY_DELAY",
        "--retry-delay",
        _non_negative_seconds,
        "60",
        "seconds before the first retry of a failed Event, doubled for each later one, "
        "waited in the broker (0: retry at once)",
    ),
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


GATEWAY_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "gateway_port",
        "GATEWAY_PORT",
        "--gateway-port",
        _port,
        None,
        "port of the API Gateway-style HTTP front door on INVOKE_API_HOST (unset: off)",
    ),
    Setting(
        "gateway_event_format",
        "GATEWAY_EVENT_FORMAT",
        "--gateway-event-format",
        _event_format,
        "v2",
        "event the gateway sends: v1 (REST API proxy) or v2 (HTTP API, function URL)",
    ),
    Setting(
        "gateway_stage",
        "GATEWAY_STAGE",
        "--gateway-stage",
        _stage,
        None,
        "stage name: requests must start with /<stage> (unset: $default, no prefix)",
    ),
    Setting(
        "gateway_routes",
        "GATEWAY_ROUTES",
        "--gateway-routes",
        parse_routes,
        None,
        "route keys, e.g. 'GET /items/{id},ANY /files/{proxy+}', or @FILE with one a line "
        "(lambda-server: 'GET /items/{id}=function'); other paths answer 404 (unset: every path)",
    ),
    Setting(
        "gateway_timeout",
        "GATEWAY_TIMEOUT",
        "--gateway-timeout",
        _positive_seconds,
        "29",
        "seconds the gateway waits for the function before answering 504",
    ),
)


OPENFAAS_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "enable_openfaas",
        "ENABLE_OPENFAAS",
        "--enable-openfaas",
        _boolean,
        "FALSE",
        "also serve the OpenFaaS watchdog routes POST /, GET /_/health and GET /_/ready",
        is_switch=True,
    ),
)

ALL_DAEMON_SETTINGS = (
    DAEMON_SETTINGS + AMQP_SETTINGS + DAEMON_AMQP_SETTINGS + GATEWAY_SETTINGS + OPENFAAS_SETTINGS
)


def build_parser(
    prog: str, settings: Sequence[Setting], description: str
) -> argparse.ArgumentParser:
    """An argument parser whose flags and help come from the settings table."""
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


def expand_switches(argv: Sequence[str], settings: Sequence[Setting]) -> list[str]:
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


def resolve_settings(
    settings: Sequence[Setting], flags: argparse.Namespace, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Parse each setting from its flag, else its env var, else its default."""
    values: dict[str, Any] = {}
    for setting in settings:
        flag_value = getattr(flags, setting.field, None)
        if flag_value is not None:
            raw, source = flag_value, setting.flag
        elif setting.env in environ:
            raw, source = environ[setting.env], setting.env
        else:
            raw, source = setting.default, setting.env
        if raw is None:
            values[setting.field] = None
            continue
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as exc:
            reason = str(exc) if not str(exc).startswith("invalid literal") else "not a number"
            if "could not convert" in reason:
                reason = "not a number"
            raise ConfigError(f"invalid {source}={raw!r}: {reason}") from None
    return values


def settings_markdown(settings: Sequence[Setting]) -> str:
    """The README's settings table (a test keeps the README in step with this)."""
    rows = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for s in settings:
        default = "unset" if s.default is None else f"`{s.default}`"
        rows.append(f"| `{s.env}` | `{s.flag}` | {default} | {s.help} |")
    return "\n".join(rows)


def _server_settings() -> tuple[Setting, ...]:
    shared = {s.field: s for s in DAEMON_SETTINGS}
    timeout = dataclasses.replace(
        shared["timeout"],
        default="1800",
        help="seconds to wait for a reply before answering with a timeout (fail-safe)",
    )
    return (
        shared["invoke_api_host"],
        shared["port"],
        timeout,
        shared["log_level"],
        shared["structured_logging"],
        shared["region"],
        shared["account_id"],
        dataclasses.replace(
            AMQP_SETTINGS[0],
            default="amqp://127.0.0.1:5672/?connection_attempts=20&retry_delay=10",
        ),
        *AMQP_SETTINGS[1:],
        *GATEWAY_SETTINGS,
    )


SERVER_SETTINGS = _server_settings()
