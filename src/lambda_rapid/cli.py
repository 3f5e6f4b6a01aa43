"""Command-line entry points: parse the config, set up logging, run the daemon.

A bad setting ends the program with one line naming it and exit status 2.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from lambda_rapid.config import (
    ConfigError,
    DaemonConfig,
    ServerConfig,
    daemon_config,
    server_config,
)
from lambda_rapid.daemon import Daemon
from lambda_rapid.lambda_server import LambdaServer
from lambda_rapid.log import setup_logging
from lambda_rapid.sample_events import render as render_sample_event


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
        status = asyncio.run(_serve(config))
    except ConfigError as error:
        fail(str(error))
    except KeyboardInterrupt:
        status = 0
    raise SystemExit(status)


async def _serve(config: DaemonConfig) -> int:
    return await Daemon(config).serve()


def server_main(argv: Sequence[str] | None = None) -> None:
    try:
        config = server_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        fail(str(error), "lambda-server")
        return
    setup_logging(config.log_level, config.structured_logging)
    try:
        status = asyncio.run(_serve_server(config))
    except ConfigError as error:
        fail(str(error), "lambda-server")
    except KeyboardInterrupt:
        status = 0
    raise SystemExit(status)


async def _serve_server(config: ServerConfig) -> int:
    return await LambdaServer(config).serve()


def events_main(argv: Sequence[str] | None = None) -> None:
    event = render_sample_event(sys.argv[1:] if argv is None else argv)
    try:
        print(event, flush=True)
    except BrokenPipeError:
        # The reader (e.g. `head`) left early; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
