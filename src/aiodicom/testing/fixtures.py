"""pytest fixtures for code that uses aiodicom.

Enable them with ``pytest_plugins = ["aiodicom.testing.fixtures"]`` in a
``conftest.py``. Async fixtures need anyio's pytest plugin (installed with
anyio) and tests marked ``@pytest.mark.anyio``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .. import AE, Server, sop_class
from . import RecordingHandlers, free_port

__all__ = ("recording_scp", "unused_port")


@pytest.fixture
def unused_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    return free_port()


@pytest.fixture
async def recording_scp() -> AsyncIterator[tuple[Server, RecordingHandlers]]:
    """A Verification SCP on 127.0.0.1 (free port) whose handlers record events."""
    ae = AE("RECORDING_SCP")
    ae.add_supported_context(sop_class.Verification)
    recorder = RecordingHandlers()
    async with ae.start_server(("127.0.0.1", 0), evt_handlers=recorder.handlers) as server:
        yield server, recorder
