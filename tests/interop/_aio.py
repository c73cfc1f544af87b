"""Async helpers shared by the interop test modules (aiodicom in-process, peers as processes)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (a peer subprocess, a wait on its events) off the loop."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `predicate` on the event loop until it is true; fail after `timeout` s.

    For state held by another process's handlers, which sends no event here.
    """
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
    assert predicate(), f"timed out after {timeout} s waiting for: {what}"


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """A hang guard on one test body."""
    with anyio.fail_after(seconds):
        yield
