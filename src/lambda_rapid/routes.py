"""The gateway's route grammar: GATEWAY_ROUTES entries parsed into `GatewayRoute`s.

A route is `METHOD /path/{param}/{greedy+}`, optionally followed by `=function` (the
Lambda Server's routes name the function they go to). The list is comma-separated, or
`@FILE`: a file with one route a line and `#` comments. A bad entry is a ValueError
saying what is wrong with it; the settings table turns it into a ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass

from lambda_rapid.names import is_function_name

GATEWAY_METHODS = ("ANY", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """One GATEWAY_ROUTES entry: `METHOD /path/{param}/{greedy+}`, optionally `=function`."""

    method: str
    path: str
    function: str | None = None

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"


def _check_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/'")
    segments = path[1:].split("/") if path != "/" else []
    for index, segment in enumerate(segments):
        if not segment:
            raise ValueError(f"path {path!r} has an empty segment")
        if segment.startswith("{") != segment.endswith("}"):
            raise ValueError(f"path {path!r}: {segment!r} is not a {{parameter}}")
        name = segment[1:-1].removesuffix("+") if segment.startswith("{") else None
        if name is not None and (not name or not all(c.isalnum() or c in "-_." for c in name)):
            raise ValueError(f"path {path!r}: bad parameter {segment!r}")
        if segment.endswith("+}") and index != len(segments) - 1:
            raise ValueError(f"path {path!r}: a greedy {segment} must be the last segment")


def parse_route(entry: str) -> GatewayRoute:
    """One route entry; ValueError naming what is wrong."""
    spec, equals, function = entry.partition("=")
    method, _, path = spec.strip().partition(" ")
    method, path, function = method.upper(), path.strip(), function.strip()
    if method not in GATEWAY_METHODS:
        raise ValueError(f"route {entry!r}: method must be one of " + ", ".join(GATEWAY_METHODS))
    _check_path(path)
    if equals and not is_function_name(function):
        raise ValueError(f"route {entry!r}: {function!r} is not a function name")
    return GatewayRoute(method, path, function if equals else None)


def parse_routes(text: str) -> tuple[GatewayRoute, ...] | None:
    """Comma-separated routes, or `@FILE`: a route file with one route a line (# comments)."""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as routes_file:
                lines = routes_file.read().splitlines()
        except OSError as error:
            raise ValueError(f"cannot read the route file: {error.strerror or error}") from None
        entries = [line.split("#", 1)[0] for line in lines]
    else:
        entries = text.split(",")
    return tuple(parse_route(entry) for entry in entries if entry.strip()) or None
