"""The AWS emulator's command line works unchanged: its flags, after the handler too."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import (
    PYTHON_RIC,
    free_port,
    ok,
    spawn_daemon,
    wait_for_port,
    wait_until_gone,
)


def test_emulator_flags_after_the_handler_set_the_addresses_and_skip_the_runtime(
    tmp_path: Path,
) -> None:
    port, runtime_port = free_port(), free_port()
    flags = ["--runtime-interface-emulator-address", f"127.0.0.1:{port}"]
    flags += [f"--runtime-api-address=127.0.0.1:{runtime_port}", "--log-level", "debug"]
    daemon = spawn_daemon(
        [*PYTHON_RIC, "fn.handler", *flags],
        tmp_path,
        env={"AWS_LAMBDA_FUNCTION_NAME": "fn"},
        wait=False,
    )
    try:
        wait_for_port(port, daemon.proc)
        daemon.port = port  # the flag wins over the PORT the fixture set
        env = ok(daemon.invoke({"env": True}))
        assert env["AWS_LAMBDA_RUNTIME_API"] == f"127.0.0.1:{runtime_port}"
        assert env["_HANDLER"] == "fn.handler"
        (runtime,) = daemon.runtime_pids()
        with open(f"/proc/{runtime}/cmdline", "rb") as cmdline:
            argv = cmdline.read().decode().split("\0")
        assert not any(arg.startswith("--") for arg in argv), argv
    finally:
        assert daemon.stop() == 0
    assert "DEBUG" in daemon.stderr() + daemon.stdout()


def test_a_bad_emulator_address_is_one_line_and_exit_2(tmp_path: Path) -> None:
    daemon = spawn_daemon(
        [*PYTHON_RIC, "fn.handler", "--runtime-interface-emulator-address", "nowhere"],
        tmp_path,
        wait=False,
    )
    assert daemon.proc.wait(20) == 2
    assert daemon.stderr().strip().splitlines() == [
        "lambda-runtime-api-daemon: error: invalid --runtime-interface-emulator-address="
        "'nowhere': must be HOST:PORT"
    ]
    assert not wait_until_gone(daemon.token)
