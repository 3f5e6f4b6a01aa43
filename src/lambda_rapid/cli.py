"""Command-line entry points: parse the config, set up logging, run the daemon.

A bad setting ends the program with one line naming it and exit status 2. The daemon's
Invoke API socket is opened before the rest of the daemon is imported: from then on
clients can connect (the kernel queues them) instead of being refused while it starts.
When PORT and INVOKE_API_HOST come plainly from the environment (no flags), it is opened
before even the config is read, with nothing imported but the socket module.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

# typing.TYPE_CHECKING without importing typing (~5 ms before the socket opens).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence
    from typing import Any

    from lambda_rapid.config import DaemonConfig, ServerConfig
    from lambda_rapid.spawning import Prelaunched


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
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, remember_signal)
    early = None if os.environ.get("KUBERNETES_INIT_CONTAINER") else early_socket(args)
    from lambda_rapid.config import ConfigError, daemon_config, init_container_requested
    from lambda_rapid.credentials import seal
    from lambda_rapid.sockets import bind_slots, listen_socket, slot_addresses
    from lambda_rapid.spawning import prelaunch

    if init_container_requested():
        copy_to_shared_volume()
    try:
        config = daemon_config(args)
        check_devnull()
    except ConfigError as error:
        fail(str(error))
        return
    invoke_socket = early if early is not None and serves(early, config) else None
    if invoke_socket is None:
        if early is not None:
            early.close()
        try:
            invoke_socket = listen_socket(
                config.invoke_api_host, config.port, "INVOKE_API_HOST:PORT"
            )
        except ConfigError as error:
            fail(str(error))
            return
    try:
        slots = bind_slots(config)
    except ConfigError as error:
        fail(str(error))
        return
    # The first runtime starts now, while the rest of the daemon (logging included)
    # loads; after the process is sealed: the runtime must not inherit what sealing takes
    # away. A sealed process's /proc is closed to it before the password is masked there.
    seal(runtimes=True)
    prelaunched = prelaunch(config, slot_addresses(slots)[0])
    prepare_service(config)
    run_service(
        lambda: _serve(config, invoke_socket, slots, prelaunched), "lambda-runtime-api-daemon"
    )


def early_socket(args: Sequence[str]) -> socket.socket | None:
    """The Invoke API's listening socket from PORT and INVOKE_API_HOST in the environment
    (IPv4 literals and digits only), or None: then it is opened once the config is read,
    which also reports why it cannot be (as a setting error)."""
    if args and args[0].startswith("-"):
        return None  # flags may name another address
    host = os.environ.get("INVOKE_API_HOST", "0.0.0.0")
    port = os.environ.get("PORT", "8080")
    if not (port.isdigit() and 0 < int(port) < 65536 and is_ipv4(host)):
        return None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(1024)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


def serves(sock: socket.socket, config: DaemonConfig) -> bool:
    """Whether the socket opened early is the one the config asks for."""
    host, port = sock.getsockname()[:2]
    return bool(port == config.port and host == config.invoke_api_host)


def prepare_service(config: DaemonConfig | ServerConfig) -> None:
    """Set up logging and mask the broker password in /proc (once the process is sealed)."""
    from lambda_rapid.credentials import conceal_password
    from lambda_rapid.log import setup_logging

    setup_logging(config.log_level, config.structured_logging)
    conceal_password(config.amqp)


def run_service(main: Callable[[], Coroutine[Any, Any, int]], prog: str) -> None:
    """Run `main` and exit with its status."""
    from lambda_rapid.config import ConfigError

    try:
        status = run(main())
    except ConfigError as error:
        fail(str(error), prog)
    except KeyboardInterrupt:
        status = 0
    raise SystemExit(status)


def copy_to_shared_volume() -> None:
    """As a Kubernetes init container: copy this executable to /tmp (a shared volume), exit 0."""
    import shutil

    from lambda_rapid.config import program_path

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
    from lambda_rapid.config import ConfigError

    try:
        os.close(os.open(os.devnull, os.O_RDWR))
    except OSError as error:
        raise ConfigError(
            f"{os.devnull} cannot be opened ({error.strerror}): runtimes need it as their "
            "stdin; give the container a /dev with a null device"
        ) from None


async def _serve(
    config: DaemonConfig,
    invoke_socket: socket.socket,
    slots: list[socket.socket],
    prelaunched: Prelaunched | None,
) -> int:
    from lambda_rapid.daemon import Daemon  # imported after the socket opened: see above

    return await Daemon(config, invoke_socket, slots, prelaunched).serve(EARLY_SIGNALS)


def server_main(argv: Sequence[str] | None = None) -> None:
    from lambda_rapid.config import ConfigError, server_config

    try:
        config = server_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        fail(str(error), "lambda-server")
        return
    from lambda_rapid.credentials import seal

    seal(runtimes=False)
    prepare_service(config)
    run_service(lambda: _serve_server(config), "lambda-server")


async def _serve_server(config: ServerConfig) -> int:
    from lambda_rapid.lambda_server import LambdaServer

    return await LambdaServer(config).serve()


def frozen_main() -> None:
    """The single executable: named `lambda-server` it is the server, else the daemon."""
    from pathlib import Path

    if Path(sys.argv[0]).name == "lambda-server":
        server_main()
    else:
        daemon_main()
