"""The settings table, daemon_config and the environments handed to runtimes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_rapid.config import (
    DAEMON_SETTINGS,
    DEFAULT_BOOTSTRAPS,
    ConfigError,
    daemon_config,
    default_function_name,
    instance_environ,
    runtime_base_environ,
    server_config,
)
from lambda_rapid.credentials import RuntimeUser

PYTHON = sys.executable
COMMAND = [PYTHON, "-m", "awslambdaric", "echo.handler"]


def test_defaults_match_the_table() -> None:
    config = daemon_config(COMMAND, {})
    assert config.invoke_api_host == "0.0.0.0"
    assert config.port == 8080
    assert config.runtime_api_host == "127.0.0.1"
    assert config.runtime_api_port == 9001
    assert config.function_name == "echo"
    assert config.function_version == "$LATEST"
    assert config.timeout == 3
    assert config.idle_timeout == 1800
    assert config.memory_size == 3008
    assert config.max_concurrency == 1
    assert config.print_reports is False
    assert config.log_level == "INFO"
    assert config.structured_logging is False
    assert config.region == "us-east-1"
    assert config.account_id == "123456789012"
    assert config.shutdown_grace == 5
    assert config.function_arn == "arn:aws:lambda:us-east-1:123456789012:function:echo"


@pytest.mark.parametrize("setting", DAEMON_SETTINGS, ids=lambda s: s.env)
def test_every_default_is_the_parsed_table_default(setting) -> None:
    config = daemon_config(COMMAND, {})
    if setting.default is not None:
        assert getattr(config, setting.field) == setting.parse(setting.default)


def test_every_setting_has_a_distinct_env_var_and_flag() -> None:
    envs = [s.env for s in DAEMON_SETTINGS]
    flags = [s.flag for s in DAEMON_SETTINGS]
    assert len(set(envs)) == len(envs)
    assert len(set(flags)) == len(flags)
    assert all(flag.startswith("--") for flag in flags)


ENV_VALUES = {
    "RUNTIME_USER": ("54321:54322", "runtime_user", RuntimeUser(54321, 54322, (54322,))),
    "INVOKE_API_HOST": ("127.0.0.1", "invoke_api_host", "127.0.0.1"),
    "PORT": ("9000", "port", 9000),
    "RUNTIME_API_HOST": ("::1", "runtime_api_host", "::1"),
    "RUNTIME_API_PORT": ("0", "runtime_api_port", 0),
    "AWS_LAMBDA_FUNCTION_NAME": ("my-fn_2", "function_name", "my-fn_2"),
    "AWS_LAMBDA_FUNCTION_VERSION": ("7", "function_version", "7"),
    "AWS_LAMBDA_FUNCTION_TIMEOUT": ("0.5", "timeout", 0.5),
    "AWS_LAMBDA_FUNCTION_IDLETIMEOUT": ("60", "idle_timeout", 60.0),
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": ("128", "memory_size", 128),
    "MAX_CONCURRENCY": ("4", "max_concurrency", 4),
    "PROVISIONED_CONCURRENCY": ("1", "provisioned_concurrency", 1),
    "PROACTIVE_INIT": ("FALSE", "proactive_init", False),
    "PRINT_REPORTS": ("TRUE", "print_reports", True),
    "LOG_LEVEL": ("debug", "log_level", "DEBUG"),
    "USE_STRUCTURED_LOGGING": ("1", "structured_logging", True),
    "AWS_REGION": ("eu-west-3", "region", "eu-west-3"),
    "AWS_ACCOUNT_ID": ("000011112222", "account_id", "000011112222"),
    "SHUTDOWN_GRACE_PERIOD": ("0", "shutdown_grace", 0.0),
    "RUNTIME_API_PEER_CHECK": ("FALSE", "runtime_api_peer_check", False),
    "LAMBDA_EXTENSIONS_DIR": ("/srv/ext", "extensions_dir", "/srv/ext"),
}


def test_env_values_table_covers_every_setting() -> None:
    assert set(ENV_VALUES) == {s.env for s in DAEMON_SETTINGS}


@pytest.mark.parametrize("env", sorted(ENV_VALUES))
def test_env_value_is_parsed(env: str) -> None:
    raw, field, expected = ENV_VALUES[env]
    config = daemon_config(COMMAND, {env: raw})
    assert getattr(config, field) == expected


def test_env_values_together() -> None:
    environ = {env: raw for env, (raw, _, _) in ENV_VALUES.items()}
    config = daemon_config(COMMAND, environ)
    for _env, (_, field, expected) in ENV_VALUES.items():
        assert getattr(config, field) == expected
    assert config.function_arn == "arn:aws:lambda:eu-west-3:000011112222:function:my-fn_2"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("yes", True),
        ("On", True),
        ("1", True),
        ("false", False),
        ("no", False),
        ("OFF", False),
        ("0", False),
        ("", False),
    ],
)
def test_boolean_spellings(raw: str, expected: bool) -> None:
    assert daemon_config(COMMAND, {"PRINT_REPORTS": raw}).print_reports is expected
    assert daemon_config(COMMAND, {"USE_STRUCTURED_LOGGING": raw}).structured_logging is expected


def test_warn_is_warning() -> None:
    assert daemon_config(COMMAND, {"LOG_LEVEL": "warn"}).log_level == "WARNING"


def test_flags_win_over_env() -> None:
    environ = {
        "PORT": "9000",
        "MAX_CONCURRENCY": "2",
        "AWS_LAMBDA_FUNCTION_NAME": "from-env",
        "LOG_LEVEL": "ERROR",
        "PRINT_REPORTS": "false",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "10",
    }
    argv = [
        "--port",
        "9100",
        "--max-concurrency=3",
        "--function-name",
        "from-flag",
        "--log-level",
        "DEBUG",
        "--print-reports",
        "--timeout",
        "1.5",
        *COMMAND,
    ]
    config = daemon_config(argv, environ)
    assert config.port == 9100
    assert config.max_concurrency == 3
    assert config.function_name == "from-flag"
    assert config.log_level == "DEBUG"
    assert config.print_reports is True
    assert config.timeout == 1.5


def test_switch_flag_takes_an_explicit_value() -> None:
    config = daemon_config(["--print-reports=false", *COMMAND], {"PRINT_REPORTS": "true"})
    assert config.print_reports is False
    config = daemon_config(["--structured-logging", "--", *COMMAND], {})
    assert config.structured_logging is True
    assert config.command == tuple(COMMAND)


def test_handler_is_the_last_of_two_or_more_arguments() -> None:
    config = daemon_config(COMMAND, {"_HANDLER": "ignored.handler"})
    assert config.command == tuple(COMMAND)
    assert config.handler == "echo.handler"
    config = daemon_config([PYTHON, "app.main"], {})
    assert config.handler == "app.main"
    assert config.function_name == "app"


def test_single_argument_takes_the_handler_from_env() -> None:
    config = daemon_config([PYTHON], {"_HANDLER": "lambda_function.lambda_handler"})
    assert config.command == (PYTHON,)
    assert config.handler == "lambda_function.lambda_handler"
    assert config.function_name == "lambda_function"


def test_single_argument_without_handler() -> None:
    config = daemon_config([PYTHON], {})
    assert config.handler is None
    assert config.function_name == default_function_name(None, PYTHON)
    assert config.function_name == Path(PYTHON).name.replace(".", "-")


def test_leading_double_dash_is_not_part_of_the_command() -> None:
    config = daemon_config(["--port", "1234", "--", *COMMAND], {})
    assert config.port == 1234
    assert config.command == tuple(COMMAND)


def test_options_after_the_command_belong_to_the_command() -> None:
    config = daemon_config([PYTHON, "--port", "1", "x.handler"], {})
    assert config.port == 8080
    assert config.command == (PYTHON, "--port", "1", "x.handler")


def test_explicit_function_name_wins_over_derived_name() -> None:
    config = daemon_config(COMMAND, {"AWS_LAMBDA_FUNCTION_NAME": "chosen"})
    assert config.function_name == "chosen"


@pytest.mark.parametrize(
    ("handler", "program", "expected"),
    [
        ("echo.handler", "python3", "echo"),
        ("pkg/app.handler", "python3", "app"),
        ("lambda_function.lambda_handler", "/usr/bin/python3", "lambda_function"),
        ("pkg.app.handler", "python3", "pkg-app"),
        (None, "/var/task/bootstrap", "bootstrap"),
        (None, "/usr/local/bin/my-runtime", "my-runtime"),
        ("handler", "/opt/bootstrap", "bootstrap"),
        (None, "/x/my.app", "my-app"),
        (".handler", "prog", "prog"),
    ],
)
def test_default_function_name(handler: str | None, program: str, expected: str) -> None:
    assert default_function_name(handler, program) == expected


def test_default_function_name_is_always_a_valid_name() -> None:
    for handler, program in [
        ("a b/c d.handler", "x"),
        (None, "/weird/na me!@#"),
        ("x" * 100 + ".handler", "p"),
        (None, "/"),
        ("naïve.handler", "p"),
    ]:
        name = default_function_name(handler, program)
        assert 1 <= len(name) <= 64
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in name), name
        # and the daemon accepts it as a function name
        assert daemon_config(["--function-name", name, *COMMAND], {}).function_name == name


INVALID = [
    ("PORT", "--port", "abc"),
    ("PORT", "--port", "70000"),
    ("PORT", "--port", "-1"),
    ("PORT", "--port", ""),
    ("RUNTIME_API_PORT", "--runtime-api-port", "x"),
    ("MAX_CONCURRENCY", "--max-concurrency", "0"),
    ("MAX_CONCURRENCY", "--max-concurrency", "1.5"),
    ("AWS_LAMBDA_FUNCTION_TIMEOUT", "--timeout", "-1"),
    ("AWS_LAMBDA_FUNCTION_TIMEOUT", "--timeout", "0"),
    ("AWS_LAMBDA_FUNCTION_TIMEOUT", "--timeout", "nan"),
    ("AWS_LAMBDA_FUNCTION_TIMEOUT", "--timeout", "inf"),
    ("AWS_LAMBDA_FUNCTION_IDLETIMEOUT", "--idle-timeout", "soon"),
    ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "--memory-size", "64"),
    ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "--memory-size", "10241"),
    ("PRINT_REPORTS", "--print-reports", "maybe"),
    ("PROACTIVE_INIT", "--proactive-init", "maybe"),
    ("USE_STRUCTURED_LOGGING", "--structured-logging", "perhaps"),
    ("LOG_LEVEL", "--log-level", "LOUD"),
    ("AWS_REGION", "--region", "us east 1"),
    ("AWS_ACCOUNT_ID", "--account-id", "1234"),
    ("AWS_LAMBDA_FUNCTION_NAME", "--function-name", "bad name"),
    ("AWS_LAMBDA_FUNCTION_NAME", "--function-name", "x" * 65),
    # Lambda's names are ASCII: lambda-server could never route to another one.
    ("AWS_LAMBDA_FUNCTION_NAME", "--function-name", "café"),
    ("SHUTDOWN_GRACE_PERIOD", "--shutdown-grace", "-1"),
]


@pytest.mark.parametrize(("env", "flag", "value"), INVALID)
def test_invalid_env_value_names_the_env_var(env: str, flag: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        daemon_config(COMMAND, {env: value})
    message = str(info.value)
    assert f"{env}=" in message
    assert repr(value) in message
    assert "\n" not in message


@pytest.mark.parametrize(("env", "flag", "value"), INVALID)
def test_invalid_flag_value_names_the_flag(env: str, flag: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        daemon_config([f"{flag}={value}", *COMMAND], {env: ENV_VALUES[env][0]})
    message = str(info.value)
    assert f"{flag}=" in message
    assert repr(value) in message
    assert "\n" not in message


def test_non_numbers_are_reported_as_such() -> None:
    with pytest.raises(ConfigError, match=r"invalid PORT='abc': not a number"):
        daemon_config(COMMAND, {"PORT": "abc"})
    with pytest.raises(ConfigError, match="not a number"):
        daemon_config(COMMAND, {"AWS_LAMBDA_FUNCTION_TIMEOUT": "soon"})


def test_memory_size_bounds_are_accepted() -> None:
    assert daemon_config(COMMAND, {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"}).memory_size == 128
    assert daemon_config(COMMAND, {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "10240"}).memory_size == (
        10240
    )


def test_port_bounds_are_accepted() -> None:
    assert daemon_config(COMMAND, {"PORT": "0"}).port == 0
    assert daemon_config(COMMAND, {"PORT": "65535"}).port == 65535


def test_nonexistent_command_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="runtime command") as info:
        daemon_config(["/nonexistent/runtime", "fn.handler"], {})
    assert "/nonexistent/runtime" in str(info.value)


def test_non_executable_command_is_a_config_error(tmp_path: Path) -> None:
    script = tmp_path / "bootstrap"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(ConfigError, match="not found or not executable"):
        daemon_config([str(script)], {})


@pytest.mark.skipif(
    any(os.access(p, os.X_OK) for p in DEFAULT_BOOTSTRAPS), reason="a default bootstrap exists"
)
def test_no_command_and_no_bootstrap_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no bootstrap found"):
        daemon_config([], {})


def test_runtime_base_environ_drops_secrets_and_daemon_only_settings() -> None:
    environ = {
        "AMQP_URI": "amqp://user:secret@host/",
        "AMQP_USERNAME": "user",
        "AMQP_PASSWORD": "secret",
        "AWS_LAMBDA_MAX_CONCURRENCY": "4",
        "_LAMBDA_TELEMETRY_LOG_FD": "3",
        "PATH": "/usr/bin",
        "MY_SETTING": "kept",
        "AWS_ACCESS_KEY_ID": "AKIA",
    }
    base = runtime_base_environ(environ)
    assert base == {"PATH": "/usr/bin", "MY_SETTING": "kept", "AWS_ACCESS_KEY_ID": "AKIA"}
    assert "AMQP_URI" in environ  # the input is not changed


def test_config_runtime_environ_is_filtered() -> None:
    config = daemon_config(COMMAND, {"AMQP_PASSWORD": "secret", "KEEP": "1"})
    assert "AMQP_PASSWORD" not in config.runtime_environ
    assert config.runtime_environ["KEEP"] == "1"


def test_instance_environ_sets_the_lambda_variables() -> None:
    config = daemon_config(
        COMMAND,
        {
            "AWS_LAMBDA_FUNCTION_NAME": "fn",
            "AWS_LAMBDA_FUNCTION_VERSION": "3",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "AWS_REGION": "eu-central-1",
            "AMQP_PASSWORD": "secret",
            "AWS_LAMBDA_MAX_CONCURRENCY": "8",
            "USER_VAR": "x",
        },
    )
    env = instance_environ(config, 0, "127.0.0.1:9001", "2024/01/01/[$LATEST]abc")
    assert env["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9001"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "fn"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "3"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/fn"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == "2024/01/01/[$LATEST]abc"
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["AWS_REGION"] == "eu-central-1"
    assert env["AWS_DEFAULT_REGION"] == "eu-central-1"
    assert env["_HANDLER"] == "echo.handler"
    assert env["LAMBDA_TASK_ROOT"] == os.getcwd()
    assert env["LAMBDA_RUNTIME_DIR"] == "/var/runtime"
    assert env["TZ"] == ":UTC"
    assert env["USER_VAR"] == "x"
    assert "AMQP_PASSWORD" not in env
    assert "AWS_LAMBDA_MAX_CONCURRENCY" not in env
    assert all(isinstance(v, str) for v in env.values())


def test_instance_environ_keeps_user_task_root_and_tz() -> None:
    config = daemon_config(
        COMMAND, {"LAMBDA_TASK_ROOT": "/srv/app", "TZ": "Europe/Paris", "AWS_DEFAULT_REGION": "x"}
    )
    env = instance_environ(config, 0, "127.0.0.1:1", "s")
    assert env["LAMBDA_TASK_ROOT"] == "/srv/app"
    assert env["TZ"] == "Europe/Paris"
    assert env["AWS_DEFAULT_REGION"] == "x"


def test_instance_environ_without_handler() -> None:
    config = daemon_config([PYTHON], {})
    env = instance_environ(config, 0, "127.0.0.1:1", "s")
    assert "_HANDLER" not in env
    config = daemon_config([PYTHON], {"_HANDLER": "mod.fn"})
    assert instance_environ(config, 0, "127.0.0.1:1", "s")["_HANDLER"] == "mod.fn"


def test_config_is_frozen() -> None:
    config = daemon_config(COMMAND, {})
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_gateway_routes_from_a_route_file(tmp_path):
    routes = tmp_path / "routes.txt"
    routes.write_text("# items\nGET /items/{id}=items-fn\n\nANY /files/{proxy+}=files-fn  # all\n")
    config = daemon_config(["--gateway-routes", f"@{routes}", *COMMAND], {"GATEWAY_PORT": "0"})
    assert config.gateway is not None and config.gateway.routes is not None
    assert [(r.method, r.path, r.function) for r in config.gateway.routes] == [
        ("GET", "/items/{id}", "items-fn"),
        ("ANY", "/files/{proxy+}", "files-fn"),
    ]


def test_missing_route_file_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="GATEWAY_ROUTES"):
        daemon_config(COMMAND, {"GATEWAY_ROUTES": f"@{tmp_path}/nope.txt"})


def test_gateway_settings_are_checked_even_with_the_gateway_off() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_TIMEOUT"):
        daemon_config(COMMAND, {"GATEWAY_TIMEOUT": "soon"})


@pytest.mark.parametrize(
    "uri",
    [
        "amqp://user:s3cr3t-pw@broker:notaport/",
        "amqp://user:s3cr3t-pw@broker/?connection_attempts=many",
        "http://user:s3cr3t-pw@broker/",
        "amqp://user:s3cr3t-pw@/",
        "amqp://user:s3cr3t-pw@[::1/",
        "amqp://us@er:s3cr3t-pw@x@host:bad/",
    ],
)
def test_invalid_amqp_uri_never_shows_the_password(uri: str) -> None:
    for build in (lambda env: daemon_config(COMMAND, env), lambda env: server_config([], env)):
        with pytest.raises(ConfigError) as info:
            build({"AMQP_URI": uri})
        message = str(info.value)
        assert message.startswith("invalid AMQP_URI=")
        assert "s3cr3t" not in message
        assert "***" in message
    with pytest.raises(ConfigError) as info:
        daemon_config([f"--amqp-uri={uri}", *COMMAND], {})
    assert "--amqp-uri=" in str(info.value) and "s3cr3t" not in str(info.value)


def test_the_executable_path_comes_from_the_launcher_and_stays_from_runtimes() -> None:
    from lambda_rapid.config import program_path

    env = {"LAMBDA_RAPID_EXECUTABLE": "/opt/lambda-rapid", "PATH": "/bin"}
    assert program_path(env) == "/opt/lambda-rapid"
    for frozen in (False, True):
        assert runtime_base_environ(env, frozen=frozen) == {"PATH": "/bin"}


def test_a_plain_start_reads_its_settings_without_loading_the_flag_parser() -> None:
    # The common start (only a runtime command) must not pay for argparse, shutil or
    # urllib: they are most of a megabyte of the daemon's idle memory.
    code = (
        "import sys\n"
        "from lambda_rapid.config import daemon_config\n"
        "config = daemon_config([sys.executable, '-c', 'pass'], {})\n"
        "assert config.command[1:] == ('-c', 'pass'), config.command\n"
        "print(sorted({'argparse', 'shutil', 'urllib.parse'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_flags_still_parse_when_given(tmp_path: Path) -> None:
    config = daemon_config(["--port", "9123", sys.executable, "-c", "pass"], {})
    assert config.port == 9123 and config.command == (sys.executable, "-c", "pass")


@pytest.mark.parametrize("where", ["path", "PATH"])
def test_the_runtime_program_is_found_as_a_path_or_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    program = tmp_path / "bootstrap"
    program.write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", f"/nonexistent:{tmp_path}")
    name = str(program) if where == "path" else "bootstrap"
    with pytest.raises(ConfigError, match="not found or not executable"):
        daemon_config([name], {})
    program.chmod(0o755)
    assert daemon_config([name], {}).command == (name,)
    (tmp_path / "directory").mkdir(mode=0o755)
    with pytest.raises(ConfigError, match="not found or not executable"):
        daemon_config(["directory" if where == "PATH" else str(tmp_path / "directory")], {})
