"""aiodicom.testing.memory_pair: associations over memory streams, no socket."""

from __future__ import annotations

import anyio
import pytest

from aiodicom import evt
from aiodicom.errors import AssociationRejected
from aiodicom.testing import RecordingHandlers, memory_pair

from .conftest import GUARD, make_scp_ae, make_scu_ae

pytestmark = pytest.mark.anyio


async def test_memory_pair_c_echo() -> None:
    recorder = RecordingHandlers(echo_status=0x0000)
    with anyio.fail_after(GUARD):
        async with memory_pair(
            make_scu_ae(), make_scp_ae(), scp_handlers=recorder.handlers
        ) as assoc:
            assert assoc.is_established
            for _ in range(3):
                assert (await assoc.send_c_echo()).Status == 0x0000
    assert assoc.is_released
    assert len(recorder.of(evt.EVT_C_ECHO)) == 3
    names = [e.event.name for e in recorder.events if e.event is not evt.EVT_C_ECHO]
    assert names == [
        "EVT_CONN_OPEN",
        "EVT_REQUESTED",
        "EVT_ACCEPTED",
        "EVT_ESTABLISHED",
        "EVT_RELEASED",
        "EVT_CONN_CLOSE",
    ]


async def test_memory_pair_release_inside_block() -> None:
    """An explicit release inside the block: the block and what follows run on."""
    ran: list[str] = []
    with anyio.fail_after(GUARD):
        async with memory_pair(make_scu_ae(), make_scp_ae()) as assoc:
            assert (await assoc.send_c_echo()).Status == 0x0000
            await assoc.release()
            await anyio.sleep(0.01)
            ran.append("block")
        ran.append("after")
    assert ran == ["block", "after"] and assoc.is_released


async def test_memory_pair_handler_status() -> None:
    recorder = RecordingHandlers(echo_status=0x0110)
    with anyio.fail_after(GUARD):
        async with memory_pair(
            make_scu_ae(), make_scp_ae(), scp_handlers=recorder.handlers
        ) as assoc:
            assert (await assoc.send_c_echo()).Status == 0x0110


async def test_memory_pair_rejection() -> None:
    """As with ae.associate(), a rejection raises AssociationRejected on entry."""
    scp = make_scp_ae("MEM_SCP", require_called_aet=True)
    with anyio.fail_after(GUARD), pytest.raises(AssociationRejected) as info:
        async with memory_pair(make_scu_ae(), scp, ae_title="OTHER"):
            pytest.fail("should have been rejected")
    assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 7)


async def test_memory_pair_exception_aborts() -> None:
    """As with ae.associate(), an exception aborts and propagates unchanged."""
    recorder = RecordingHandlers()
    out = KeyError("out")
    with anyio.fail_after(GUARD), pytest.raises(KeyError) as info:
        async with memory_pair(
            make_scu_ae(), make_scp_ae(), scp_handlers=recorder.handlers
        ) as assoc:
            await assoc.send_c_echo()
            raise out
    assert info.value is out
    assert assoc.is_aborted
    assert len(recorder.of(evt.EVT_ABORTED)) == 1
