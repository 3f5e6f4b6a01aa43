"""Chaining one future's outcome into a new future, by callback (no task).

The hot paths answer HTTP requests from futures: ``chain`` is how a result becomes an
answer. The new future belongs to whoever receives it: cancelling it leaves the source
alone, so nobody can cancel an owner's internal future through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def chain(
    source: asyncio.Future[T],
    on_result: Callable[[T], R],
    on_error: Callable[[BaseException], R] | None = None,
) -> asyncio.Future[R]:
    """A new future resolved with `on_result(result)` once `source` is done.

    When `source` fails (or is cancelled), the new future gets `on_error(exception)` if
    `on_error` is given, else the same exception (or cancellation). An exception raised by
    either function goes to the new future.
    """
    target: asyncio.Future[R] = source.get_loop().create_future()

    def on_done(done: asyncio.Future[T]) -> None:
        if target.done():
            return
        error: BaseException | None
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        try:
            if error is None:
                value = on_result(done.result())
            elif on_error is not None:
                value = on_error(error)
            else:
                raise error
        except asyncio.CancelledError:
            target.cancel()
        except Exception as exc:  # noqa: BLE001 - handed to whoever awaits the target
            target.set_exception(exc)
        else:
            target.set_result(value)

    source.add_done_callback(on_done)
    return target
