"""Waiting for a condition: poll it until it holds, fail naming it when it never does.

The bounds are generous on purpose (the machine may be loaded): a test asserts *that*
something happens, never how fast.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def describe(check: Callable[[], object]) -> str:
    """What ``check`` waits for, for a failure message: a lambda's source, else its name."""
    name = getattr(check, "__qualname__", None) or repr(check)
    if name.endswith("<lambda>"):
        try:
            return inspect.getsource(check).strip()
        except (OSError, TypeError):
            return name
    return name


Described = str | Callable[[], str] | None
"""What a wait is for: a text, or a callable giving it at the time of failure (so that it can
hold the logs of then), or None for the check's own description."""


def _failure(check: Callable[[], object], what: Described, timeout: float) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"not met within {timeout:g} s: {text or describe(check)}")


async def until(
    check: Callable[[], object],
    *,
    timeout: float = 30.0,
    what: Described = None,
    every: float = 0.1,
) -> Any:
    """Poll ``check`` (a plain or an async callable) until it returns something truthy, and
    return that.

    Fails with an :class:`AssertionError` naming ``what`` (a text, or a callable that gives
    it then; default: the check's source or name) when ``timeout`` seconds pass first;
    ``check`` is asked once more at the end.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(check, what, timeout)
        await asyncio.sleep(every)


def until_sync(
    check: Callable[[], object],
    *,
    timeout: float = 30.0,
    what: Described = None,
    every: float = 0.2,
) -> Any:
    """:func:`until` for code without an event loop (``check`` must be a plain callable)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise _failure(check, what, timeout)
        time.sleep(every)
    return value
