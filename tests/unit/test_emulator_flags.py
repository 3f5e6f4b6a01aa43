"""The AWS emulator's flags anywhere on the command line, and the frozen runtime environment."""

from __future__ import annotations

import sys

import pytest

from lambda_rapid.config import ConfigError, daemon_config, runtime_base_environ

PYTHON = sys.executable


def test_emulator_flags_after_the_handler_are_the_daemons_not_the_runtimes() -> None:
    argv = [PYTHON, "-m", "awslambdaric", "main.handler"]
    argv += ["--runtime-interface-emulator-address", "0.0.0.0:8081"]
    argv += ["--runtime-api-address=127.0.0.2:9005", "--log-level", "debug"]
    config = daemon_config(argv, {})
    assert config.command == (PYTHON, "-m", "awslambdaric", "main.handler")
    assert config.handler == "main.handler"
    assert (config.invoke_api_host, config.port) == ("0.0.0.0", 8081)
    assert (config.runtime_api_host, config.runtime_api_port) == ("127.0.0.2", 9005)
    assert config.log_level == "DEBUG"


def test_emulator_flags_before_the_command_and_ipv6() -> None:
    argv = ["--runtime-interface-emulator-address=[::1]:7000", PYTHON, "fn.py"]
    config = daemon_config(argv, {})
    assert (config.invoke_api_host, config.port) == ("::1", 7000)
    assert config.command == (PYTHON, "fn.py")


def test_an_empty_host_means_every_interface() -> None:
    config = daemon_config([PYTHON, "--runtime-interface-emulator-address", ":8082"], {})
    assert (config.invoke_api_host, config.port) == ("0.0.0.0", 8082)


def test_after_a_double_dash_everything_is_the_runtimes() -> None:
    argv = ["--", PYTHON, "app.py", "--log-level", "debug", "h.handler"]
    config = daemon_config(argv, {"LOG_LEVEL": "ERROR"})
    assert config.command == (PYTHON, "app.py", "--log-level", "debug", "h.handler")
    assert config.log_level == "ERROR"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([PYTHON, "--runtime-interface-emulator-address", "8080"], "must be HOST:PORT"),
        ([PYTHON, "--runtime-api-address=::1:9001"], "must be HOST:PORT"),
        ([PYTHON, "--runtime-api-address=host:port"], "must be HOST:PORT"),
        ([PYTHON, "--runtime-interface-emulator-address=h:99999"], "--port"),
        ([PYTHON, "h.handler", "--log-level"], "--log-level needs a value"),
        ([PYTHON, "h.handler", "--log-level", "loud"], "--log-level"),
    ],
)
def test_bad_emulator_flags_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        daemon_config(argv, {})


BUNDLE_ENV = {
    "PATH": "/usr/bin",
    "LD_LIBRARY_PATH": "/tmp/_MEIabc",
    "LD_LIBRARY_PATH_ORIG": "/opt/lib",
    "_PYI_APPLICATION_HOME_DIR": "/tmp/_MEIabc",
    "_PYI_ARCHIVE_FILE": "/tmp/staticx-x/prog",
    "_MEIPASS2": "/tmp/_MEIabc",
    "LAMBDA_RAPID_EXECUTABLE": "/usr/local/bin/aws-lambda-rie",
}


def test_frozen_runtimes_get_the_library_path_the_executable_was_started_with() -> None:
    env = runtime_base_environ(BUNDLE_ENV, frozen=True)
    assert env == {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"}


def test_frozen_without_an_original_library_path_runtimes_get_none() -> None:
    bundle = {k: v for k, v in BUNDLE_ENV.items() if k != "LD_LIBRARY_PATH_ORIG"}
    assert runtime_base_environ(bundle, frozen=True) == {"PATH": "/usr/bin"}


def test_the_installed_package_passes_the_library_path_on() -> None:
    env = runtime_base_environ({"LD_LIBRARY_PATH": "/opt/lib", "PATH": "/bin"}, frozen=False)
    assert env == {"LD_LIBRARY_PATH": "/opt/lib", "PATH": "/bin"}
