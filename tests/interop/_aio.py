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


class Changes:
    """Wakes whoever waits on state this process holds, each time it changes.

    The object recording what aiodicom's handlers saw calls :meth:`changed`
    after every change; :meth:`wait_until` awaits the next change and
    re-checks its predicate: no polling.
    """

    def __init__(self) -> None:
        self._changed: anyio.Event | None = None  # made by a waiter

    def changed(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_until(
        self, predicate: Callable[[], bool], what: str, timeout: float = 10.0
    ) -> None:
        """Wait until `predicate` is true, re-checked on each change; fail after `timeout` s."""
        with anyio.move_on_after(timeout):
            while not predicate():
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
        assert predicate(), f"timed out after {timeout} s waiting for: {what}"


async def wait_no_associations(server: Any, what: str, timeout: float = 10.0) -> None:
    """Wait until the aiodicom ``server.active_associations`` is empty; fail after `timeout` s.

    An association leaves that list after its EVT_CONN_CLOSE, so no handler
    can signal it: this waits as ``Server.shutdown()`` does, on the server's
    own signal that an association ended.
    """
    with anyio.move_on_after(timeout):
        await server._until(lambda: not server.active_associations)
    assert not server.active_associations, f"timed out after {timeout} s waiting for: {what}"


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """A hang guard on one test body."""
    with anyio.fail_after(seconds):
        yield
