"""Association.send_c_stores: many instances, one on the wire at a time, the next read ahead.

aiodicom on both sides over loopback TCP; against dcmtk and pynetdicom in
tests/interop/test_store_interop.py.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from aiodicom import evt, sop_class
from aiodicom.association import Association, StoreResult
from aiodicom.dimse import encode_status_response
from aiodicom.dsutils import encode_dataset
from aiodicom.errors import AssociationAborted, DIMSEError, NoAcceptedContext
from aiodicom.pdu import encode_p_data
from aiodicom.testing import RecordingHandlers, make_dataset

from .conftest import GUARD, fake_scp, write_part10
from .test_fuzz_socket import _accept_all, _read_message
from .test_store import storage_pair, store_pair

pytestmark = pytest.mark.anyio


def _open_paths() -> set[str]:
    """What this process has open, by path (Linux)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return found


def _large(tmp_path: Path, name: str) -> tuple[Path, bytes]:
    """A Part 10 file over 1 MiB (send_c_store opens and streams it), and its data set."""
    ds = make_dataset()
    ds.PixelData = os.urandom(3 << 19)
    path = write_part10(tmp_path / name, ds, ExplicitVRLittleEndian)
    return path, encode_dataset(ds, ExplicitVRLittleEndian)


@pytest.mark.parametrize("eager", [False, True])
async def test_each_instance_in_order_and_what_cannot_be_sent_reported(
    tmp_path: Path, eager: bool
) -> None:
    first = make_dataset()
    in_file = make_dataset()
    path = write_part10(tmp_path / "a.dcm", in_file, ExplicitVRLittleEndian)
    as_object = make_dataset()
    file_object = io.BytesIO(
        write_part10(tmp_path / "b.dcm", as_object, ExplicitVRLittleEndian).read_bytes()
    )
    not_dicom = tmp_path / "not.dcm"
    not_dicom.write_bytes(b"not a DICOM file" * 64)
    unaccepted = make_dataset()
    unaccepted.SOPClassUID = sop_class.UltrasoundImageStorage
    no_uid = make_dataset()
    del no_uid.SOPInstanceUID
    last = make_dataset()
    sources: list[object] = [
        first,
        not_dicom,
        path,
        tmp_path / "missing.dcm",
        unaccepted,
        file_object,
        no_uid,
        42,
        last,
    ]
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    results: list[StoreResult] = []
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, rec.handlers, "tcp") as assoc:
            async for result in assoc.send_c_stores(sources, eager=eager):  # type: ignore[arg-type]
                results.append(result)
            assert (await assoc.send_c_echo()).Status == 0  # the association went on
    assert [r.source for r in results] == sources
    sent = [r.status is not None for r in results]
    assert sent == [True, False, True, False, False, True, False, False, True]
    assert all(r.status.Status == 0 for r in results if r.status is not None)
    assert all((r.status is None) == (r.error is not None) for r in results)
    assert isinstance(results[1].error, DIMSEError)
    assert isinstance(results[3].error, FileNotFoundError)
    assert isinstance(results[4].error, NoAcceptedContext)
    assert isinstance(results[6].error, ValueError)
    assert isinstance(results[7].error, TypeError)
    stored = [(uid, data) for uid, _, data, _ in rec.stored]
    assert stored == [
        (ds.SOPInstanceUID, encode_dataset(ds, ExplicitVRLittleEndian))
        for ds in (first, in_file, as_object, last)
    ]


@pytest.mark.parametrize("eager", [False, True])
async def test_the_next_instance_is_read_while_the_peer_handles_the_last(eager: bool) -> None:
    """The SCP's handler for each instance waits until the SCU has taken the
    next one from its source: without read-ahead that never happens (the next
    is taken once the response is in) and the guard ends the test."""
    datasets = [make_dataset() for _ in range(6)]
    index = {str(ds.SOPInstanceUID): i for i, ds in enumerate(datasets)}
    taken = [anyio.Event() for _ in datasets]
    handled: list[int] = []

    async def source() -> AsyncIterator[Dataset]:
        for i, ds in enumerate(datasets):
            taken[i].set()
            yield ds

    async def on_store(event: evt.Event) -> int:
        i = index[str(event.request.AffectedSOPInstanceUID)]
        if i + 1 < len(datasets):
            await taken[i + 1].wait()
        handled.append(i)
        return 0x0000

    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, [(evt.EVT_C_STORE, on_store)], "tcp") as assoc:
            results = [r async for r in assoc.send_c_stores(source(), eager=eager)]
    statuses = [int(r.status.Status) for r in results if r.status is not None]
    assert statuses == [0] * len(datasets)
    assert handled == list(range(len(datasets)))


@pytest.mark.skipif(sys.platform != "linux", reason="lists open files in /proc/self/fd")
async def test_leaving_early_closes_the_file_read_ahead(tmp_path: Path) -> None:
    (one, data), (two, _) = _large(tmp_path, "1.dcm"), _large(tmp_path, "2.dcm")
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, rec.handlers, "tcp") as assoc:
            async with aclosing(assoc.send_c_stores([one, two])) as results:
                async for result in results:
                    assert result.source == one and result.status is not None
                    assert str(two) in _open_paths()  # read ahead: opened, not sent
                    break
            assert str(two) not in _open_paths()
            assert (await assoc.send_c_echo()).Status == 0  # nothing was left in flight
    assert [d for _, _, d, _ in rec.stored] == [data]


async def _stores_until_abort(
    sources: list[Any], abort_at: int, eager: bool, check: Callable[[Association], None]
) -> tuple[list[StoreResult], int]:
    """send_c_stores of ``sources`` into an SCP that aborts the association
    in the handler of instance ``abort_at`` (1-based): the results before
    the AssociationAborted raised, and how many instances the SCP saw;
    ``check`` looks at the SCU's association after the raise."""
    seen = 0

    async def on_store(event: evt.Event) -> int:
        nonlocal seen
        seen += 1
        if seen == abort_at:
            await event.assoc.abort()
        return 0x0000

    scu, scp = storage_pair()
    results: list[StoreResult] = []
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, [(evt.EVT_C_STORE, on_store)], "tcp") as assoc:
            with pytest.raises(AssociationAborted):
                async for result in assoc.send_c_stores(sources, eager=eager):
                    results.append(result)
            check(assoc)
    return results, seen


@pytest.mark.skipif(sys.platform != "linux", reason="lists open files in /proc/self/fd")
async def test_an_abort_ends_the_iteration_and_closes_the_file_read_ahead(
    tmp_path: Path,
) -> None:
    (one, _), (two, _) = _large(tmp_path, "1.dcm"), _large(tmp_path, "2.dcm")

    def closed(assoc: Association) -> None:
        assert str(one) not in _open_paths()
        assert str(two) not in _open_paths()

    results, _ = await _stores_until_abort([one, two], 1, False, closed)
    assert results == []


async def test_an_error_of_the_source_is_raised_after_the_instance_before_it() -> None:
    ds = make_dataset()

    async def source() -> AsyncIterator[Dataset]:
        yield ds
        raise RuntimeError("the listing failed")

    rec = RecordingHandlers()
    scu, scp = storage_pair()
    results: list[StoreResult] = []
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, rec.handlers, "tcp") as assoc:
            with pytest.raises(RuntimeError, match="the listing failed"):
                async for result in assoc.send_c_stores(source()):
                    results.append(result)
            assert (await assoc.send_c_echo()).Status == 0
    assert [(r.source, int(r.status.Status)) for r in results if r.status] == [(ds, 0)]
    assert [uid for uid, _, _, _ in rec.stored] == [ds.SOPInstanceUID]


async def test_a_wrong_priority_is_refused_before_anything_is_taken() -> None:
    taken: list[int] = []

    def source() -> Iterator[Dataset]:
        taken.append(1)
        yield make_dataset()

    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, [], "tcp") as assoc:
            with pytest.raises(ValueError, match="priority"):
                async for _ in assoc.send_c_stores(source(), priority=3):
                    pass
    assert taken == []


def _wire_log() -> tuple[list[str], list[evt.EventHandlerType]]:
    """The C-STORE requests an SCP received and the responses it sent, in
    order ("RQ", "RSP"), and the handlers that record them."""
    log: list[str] = []

    def received(event: evt.Event) -> None:
        if event.message.command_field == 0x0001:
            log.append("RQ")

    def sent(event: evt.Event) -> None:
        if event.message.command_field == 0x8001:
            log.append("RSP")

    return log, [(evt.EVT_DIMSE_RECV, received), (evt.EVT_DIMSE_SENT, sent)]


async def test_eager_sends_the_next_before_the_result_is_yielded(anyio_backend: str) -> None:
    """With ``eager`` (on asyncio), the next request goes out as the response
    arrives: the loop sees result i only once instance i+1 has reached the
    SCP. Still one request at a time: the SCP receives each only after it
    answered the one before (its handler takes a moment, so an early request
    would be received first). On trio the next is sent as without ``eager``."""
    datasets = [make_dataset() for _ in range(5)]
    index = {str(ds.SOPInstanceUID): i for i, ds in enumerate(datasets)}
    arrived = [anyio.Event() for _ in datasets]
    log, log_handlers = _wire_log()

    async def on_store(event: evt.Event) -> int:
        arrived[index[str(event.request.AffectedSOPInstanceUID)]].set()
        await anyio.sleep(0.02)
        return 0x0000

    scu, scp = storage_pair()
    handlers = [(evt.EVT_C_STORE, on_store), *log_handlers]
    results: list[StoreResult] = []
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, handlers, "tcp") as assoc:
            async for result in assoc.send_c_stores(datasets, eager=True):
                i = len(results)
                results.append(result)
                if anyio_backend == "asyncio" and i + 1 < len(datasets):
                    await arrived[i + 1].wait()  # sent before this result came
    assert [r.source for r in results] == datasets
    assert all(r.status is not None and r.status.Status == 0 for r in results)
    assert log == ["RQ", "RSP"] * len(datasets)


async def test_eager_leaving_early_waits_for_the_one_in_flight() -> None:
    datasets = [make_dataset() for _ in range(4)]
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, rec.handlers, "tcp") as assoc:
            async with aclosing(assoc.send_c_stores(datasets, eager=True)) as results:
                async for result in results:
                    assert result.source is datasets[0]
                    break
            # Closing waited for the response to the one in flight (if any):
            # nothing is outstanding, the window's one place is free.
            assert not assoc._pending
            assert (await assoc.send_c_echo()).Status == 0
    stored = [uid for uid, _, _, _ in rec.stored]
    assert stored[0] == datasets[0].SOPInstanceUID
    assert stored in (
        [datasets[0].SOPInstanceUID],
        [datasets[0].SOPInstanceUID, datasets[1].SOPInstanceUID],
    )


async def test_eager_other_requests_from_the_loop_body() -> None:
    """A request made between results while the next store is in flight
    waits for the window's one place, which the response gives back as it
    arrives: no deadlock with the generator, suspended at its yield."""
    datasets = [make_dataset() for _ in range(5)]
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    echoes = []
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, rec.handlers, "tcp") as assoc:
            assert assoc.max_async_invoked == 1
            async for result in assoc.send_c_stores(datasets, eager=True):
                assert result.status is not None and result.status.Status == 0
                echoes.append(int((await assoc.send_c_echo()).Status))
    assert echoes == [0] * len(datasets)
    assert [uid for uid, _, _, _ in rec.stored] == [ds.SOPInstanceUID for ds in datasets]


async def test_eager_an_abort_ends_the_iteration() -> None:
    datasets = [make_dataset() for _ in range(4)]

    def nothing_pending(assoc: Association) -> None:
        assert not assoc._pending

    results, seen = await _stores_until_abort(datasets, 2, True, nothing_pending)
    assert [r.source for r in results] == datasets[:1]
    assert seen == 2


async def test_eager_a_response_with_a_wrong_message_id_times_out_cleanly() -> None:
    """A peer that answers the second request (sent eagerly, as the first
    response arrived) with a Message ID it was never sent: that response is
    dropped, the DIMSE timeout aborts, and the iteration raises TimeoutError
    after the first instance's result, with nothing left pending."""
    datasets = [make_dataset() for _ in range(3)]
    message_ids: list[int] = []

    async def scp(peer: Any) -> None:
        await peer.send(_accept_all(await peer.read_pdu()))
        for wrong in (False, True):
            got = await _read_message(peer)
            assert got is not None
            context_id, command = got
            message_ids.append(command["MessageID"])
            rsp = encode_status_response(
                0x8001,
                999 if wrong else command["MessageID"],
                command["AffectedSOPClassUID"],
                0x0000,
                command["AffectedSOPInstanceUID"],
            )
            await peer.send(encode_p_data(context_id, 0x03, rsp))
        await peer.read_until_eof()

    scu, _ = storage_pair()
    scu.dimse_timeout = 0.5
    results: list[StoreResult] = []
    async with fake_scp(scp) as port:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", port, ae_title="ANY_SCP") as assoc:
                with pytest.raises(TimeoutError):
                    async for result in assoc.send_c_stores(datasets, eager=True):
                        results.append(result)
                assert assoc.is_aborted
                assert not assoc._pending
    assert [r.source for r in results] == datasets[:1]
    assert message_ids == [1, 2]
