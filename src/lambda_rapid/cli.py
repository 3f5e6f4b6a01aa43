"""Command-line entry points: parse the config, set up logging, run the daemon.

A bad setting ends the program with one line naming it and exit status 2. The daemon's
Invoke API socket is opened before the rest of the daemon is imported: from then on
clients can connect (the kernel queues them) instead of being refused while it starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from lambda_rapid.config import (
    ConfigError,
    DaemonConfig,
    ServerConfig,
    daemon_config,
    init_container_requested,
    program_path,
    server_config,
)
from lambda_rapid.credentials import protect
from lambda_rapid.sockets import listen_socket


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (it is a dependency on Linux), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(main)
    return uvloop.run(main)


# Signals that arrive while the daemon is still starting (its port is already open).
EARLY_SIGNALS: list[int] = []


def remember_signal(signum: int, frame: object) -> None:
    EARLY_SIGNALS.append(signum)


def fail(message: str, prog: str = "lambda-runtime-api-daemon") -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def daemon_main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if init_container_requested():
        copy_to_shared_volume()
    try:
        config = daemon_config(args)
        check_devnull()
    except ConfigError as error:
        fail(str(error))
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, remember_signal)
    try:
        invoke_socket = listen_socket(config.invoke_api_host, config.port, "INVOKE_API_HOST:PORT")
    except ConfigError as error:
        fail(str(error))
        return
    run_service(config, lambda: _serve(config, invoke_socket), "lambda-runtime-api-daemon")


def run_service(
    config: DaemonConfig | ServerConfig,
    main: Callable[[], Coroutine[Any, Any, int]],
    prog: str,
) -> None:
    """Set up logging, protect the credentials, run `main` and exit with its status."""
    from lambda_rapid.log import setup_logging

    setup_logging(config.log_level, config.structured_logging)
    protect(config.amqp, runtimes=isinstance(config, DaemonConfig))
    try:
        status = run(main())
    except ConfigError as error:
        fail(str(error), prog)
    except KeyboardInterrupt:
        status = 0
    raise SystemExit(status)


def copy_to_shared_volume() -> None:
    """As a Kubernetes init container: copy this executable to /tmp (a shared volume), exit 0."""
    source = program_path()
    target = os.path.join("/tmp", os.path.basename(source))
    try:
        shutil.copyfile(source, target)
        os.chmod(target, os.stat(source).st_mode & 0o7777)
    except OSError as error:
        print(
            f"lambda-runtime-api-daemon: error: cannot copy {source} to {target}: {error.strerror}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    raise SystemExit(0)


def check_devnull() -> None:
    """Runtimes get /dev/null as stdin: say so now rather than fail every invocation."""
    try:
        os.close(os.open(os.devnull, os.O_RDWR))
    except OSError as error:
        raise ConfigError(
            f"{os.devnull} cannot be opened ({error.strerror}): runtimes need it as their "
            "stdin; give the container a /dev with a null device"
        ) from None


async def _serve(config: DaemonConfig, invoke_socket: socket.socket) -> int:
    from lambda_rapid.daemon import Daemon  # imported after the socket opened: see above

    return await Daemon(config, invoke_socket).serve(EARLY_SIGNALS)


def server_main(argv: Sequence[str] | None = None) -> None:
    try:
        config = server_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        fail(str(error), "lambda-server")
        return
    run_service(config, lambda: _serve_server(config), "lambda-server")


async def _serve_server(config: ServerConfig) -> int:
    from lambda_rapid.lambda_server import LambdaServer

    return await LambdaServer(config).serve()


def frozen_main() -> None:
    """The single executable: named `lambda-server` it is the server, else the daemon."""
    if Path(sys.argv[0]).name == "lambda-server":
        server_main()
    else:
        daemon_main()
