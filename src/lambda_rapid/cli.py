"""Command-line entry points: parse the config, set up logging, run the daemon.

A bad setting ends the program with one line naming it and exit status 2.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from lambda_rapid.config import (
    ConfigError,
    DaemonConfig,
    ServerConfig,
    daemon_config,
    server_config,
)
from lambda_rapid.log import setup_logging


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (it is a dependency on Linux), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def fail(message: str, prog: str = "lambda-runtime-api-daemon") -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def daemon_main(argv: Sequence[str] | None = None) -> None:
    try:
        config = daemon_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        fail(str(error))
        return
    setup_logging(config.log_level, config.structured_logging)
    try:
        status = run(_serve(config))
    except ConfigError as error:
        fail(str(error))
    except KeyboardInterrupt:
        status = 0
    raise SystemExit(status)


async def _serve(config: DaemonConfig) -> int:
    from lambda_rapid.daemon import Daemon  # imported here: start-up time counts

    return await Daemon(config).serve()


def server_main(argv: Sequence[str] | None = None) -> None:
    try:
        config = server_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        fail(str(error), "lambda-server")
        return
    setup_logging(config.log_level, config.structured_logging)
    try:
        status = run(_serve_server(config))
    except ConfigError as error:
        fail(str(error), "lambda-server")
    except KeyboardInterrupt:
        status = 0
    raise SystemExit(status)


async def _serve_server(config: ServerConfig) -> int:
    from lambda_rapid.lambda_server import LambdaServer

    return await LambdaServer(config).serve()
