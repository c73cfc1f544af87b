"""The SCP's inline answers: C-ECHO and in-memory C-STORE served without a task.

On asyncio over TCP, a request whose handler is absent or a plain ``def`` is
answered where it was reassembled, when nothing else is queued. These tests
check that the fast path keeps the contract of the general one: statuses,
handler failures, a plain ``def`` that returns an awaitable, an object whose
``__call__`` is ``async``, anyio usable inside the handler, and order with
requests that are queued. On trio (and in memory) the general path runs the
same tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

import anyio
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from aiodicom import AE, evt, sop_class
from aiodicom.dimse import decode_command, fragment
from aiodicom.pdu import PDataTF, PresentationContextRQ
from aiodicom.testing import make_dataset

from .conftest import GUARD, make_scp_ae, make_scu_ae, raw_connection, running_server
from .test_store import store_rq_association, store_rq_command

pytestmark = pytest.mark.anyio


def storage_aes() -> tuple[AE, AE]:
    scu, scp = make_scu_ae(), make_scp_ae()
    scu.add_requested_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    scp.add_supported_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    return scu, scp


async def store_and_echo(scp_handlers: list[Any]) -> tuple[int, int]:
    """One C-STORE and one C-ECHO over TCP; their statuses."""
    scu, scp = storage_aes()
    with anyio.fail_after(GUARD):
        async with (
            running_server(scp, scp_handlers) as server,
            scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc,
        ):
            store = await assoc.send_c_store(make_dataset())
            echo = await assoc.send_c_echo()
    return int(store.Status), int(echo.Status)


async def test_plain_handlers_outside_a_task_on_asyncio(anyio_backend: str) -> None:
    """The fast path is taken on asyncio (no task runs the handler), not on trio."""
    tasks: list[object] = []

    def on_store(event: evt.Event) -> int:
        tasks.append(asyncio.current_task() if anyio_backend == "asyncio" else "trio")
        assert event.dataset.SOPClassUID == sop_class.CTImageStorage
        return 0xB000

    def on_echo(event: evt.Event) -> int:
        tasks.append(asyncio.current_task() if anyio_backend == "asyncio" else "trio")
        return 0

    statuses = await store_and_echo([(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo)])
    assert statuses == (0xB000, 0)
    if anyio_backend == "asyncio":
        assert tasks == [None, None]


async def test_async_handlers_run_in_a_task(anyio_backend: str) -> None:
    """An ``async def`` handler is never run on the inline path: it runs in a
    task (on asyncio, ``asyncio.current_task()`` is set; on trio every
    coroutine runs in one), and anyio works inside it."""
    tasks: list[object] = []

    def current() -> object:
        return asyncio.current_task() if anyio_backend == "asyncio" else anyio.get_current_task()

    async def on_store(event: evt.Event) -> int:
        tasks.append(current())
        await anyio.sleep(0)
        return 0

    async def on_echo(event: evt.Event) -> int:
        tasks.append(current())
        await anyio.sleep(0)
        return 0

    statuses = await store_and_echo([(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo)])
    assert statuses == (0, 0)
    assert len(tasks) == 2 and None not in tasks


async def test_plain_def_returning_an_awaitable(anyio_backend: str) -> None:
    async def later(status: int) -> int:
        await anyio.sleep(0)
        return status

    def on_store(event: evt.Event) -> Awaitable[int]:
        return later(0xB007)

    def on_echo(event: evt.Event) -> Awaitable[int]:
        return later(0x0000)

    statuses = await store_and_echo([(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo)])
    assert statuses == (0xB007, 0)


async def test_plain_def_returning_an_awaitable_that_raises(anyio_backend: str) -> None:
    async def fails() -> int:
        await anyio.sleep(0)
        raise RuntimeError("boom")

    statuses = await store_and_echo(
        [(evt.EVT_C_STORE, lambda event: fails()), (evt.EVT_C_ECHO, lambda event: fails())]
    )
    assert statuses == (0xC211, 0x0110)


async def test_object_with_async_call(anyio_backend: str) -> None:
    class Handler:
        def __init__(self) -> None:
            self.calls = 0

        async def __call__(self, event: evt.Event) -> int:
            self.calls += 1
            await anyio.sleep(0)
            return 0xB000 if event.event is evt.EVT_C_STORE else 0

    handler = Handler()
    statuses = await store_and_echo([(evt.EVT_C_STORE, handler), (evt.EVT_C_ECHO, handler)])
    assert statuses == (0xB000, 0)
    assert handler.calls == 2


async def test_plain_handlers_that_raise(anyio_backend: str) -> None:
    def boom(event: evt.Event) -> int:
        raise RuntimeError("boom")

    statuses = await store_and_echo([(evt.EVT_C_STORE, boom), (evt.EVT_C_ECHO, boom)])
    assert statuses == (0xC211, 0x0110)


async def test_anyio_usable_in_a_plain_handler(anyio_backend: str) -> None:
    seen: list[float] = []

    def on_echo(event: evt.Event) -> int:
        seen.append(anyio.current_time())
        anyio.Event().set()
        return 0

    def on_store(event: evt.Event) -> int:
        seen.append(anyio.current_time())
        return 0

    statuses = await store_and_echo([(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo)])
    assert statuses == (0, 0)
    assert len(seen) == 2


async def test_echo_queued_behind_a_slow_store_is_answered_after_it(anyio_backend: str) -> None:
    """A request that arrives while another is served waits its turn, in order."""
    scp = make_scp_ae()
    scp.add_supported_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    release = anyio.Event()
    order: list[str] = []

    async def on_store(event: evt.Event) -> int:
        await release.wait()
        order.append("store")
        return 0

    def on_echo(event: evt.Event) -> int:
        order.append("echo")
        return 0

    from aiodicom.dimse import NO_DATASET, CommandField, encode_command

    echo_rq = encode_command(
        {
            "CommandField": CommandField.C_ECHO_RQ,
            "MessageID": 2,
            "AffectedSOPClassUID": sop_class.Verification,
            "CommandDataSetType": NO_DATASET,
        }
    )
    with anyio.fail_after(GUARD):
        async with (
            running_server(scp, [(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo)]) as srv,
            raw_connection(srv.port) as peer,
        ):
            rq = store_rq_association()
            echo_cx = PresentationContextRQ(
                context_id=3,
                abstract_syntax=sop_class.Verification,
                transfer_syntaxes=(ExplicitVRLittleEndian,),
            )
            await peer.send(replace(rq, presentation_contexts=(*rq.presentation_contexts, echo_cx)))
            await peer.read_pdu()
            # Both requests in one write: the echo arrives with the store queued.
            store = fragment(1, store_rq_command(1, "1.2.3.1"), bytes(1000), 16384)
            await peer.send(b"".join([*store, *fragment(3, echo_rq, None, 16384)]))
            release.set()
            answers = []
            for _ in range(2):
                pdu = await peer.read_pdu()
                assert isinstance(pdu, PDataTF)
                answers.append(decode_command(pdu.pdvs[0].data)["MessageIDBeingRespondedTo"])
    assert order == ["store", "echo"]
    assert answers == [1, 2]
