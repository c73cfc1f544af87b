"""C-FIND, C-GET and C-MOVE end to end, aiodicom on both sides.

Covers the SCU's response object (iteration, ``async with``, C-CANCEL on an
early exit, a bare ``break`` and a cancelled task), the SCP's handler
contract (async and sync generators, cancellation, failures mapped to the
service's statuses), the sub-operations of C-GET on the same association and
of C-MOVE over a new one (to a third AE and to the requesting AE itself), and
backpressure. Interop with dcmtk and pynetdicom is in tests/interop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from aiodicom import AE, Association, build_role, evt, sop_class
from aiodicom.dimse import COMMAND_NAMES, decode_command
from aiodicom.errors import NoAcceptedContext
from aiodicom.testing import make_dataset, memory_pair

from .conftest import GUARD, make_scp_ae, make_scu_ae, running_server

pytestmark = pytest.mark.anyio

FIND = sop_class.PatientRootQueryRetrieveInformationModelFind
GET = sop_class.PatientRootQueryRetrieveInformationModelGet
MOVE = sop_class.PatientRootQueryRetrieveInformationModelMove
CT = sop_class.CTImageStorage

DATA = [make_dataset(PatientID=f"P{i % 3}", InstanceNumber=i) for i in range(9)]


def query(patient_id: str = "P1") -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.PatientID = patient_id
    q.SOPInstanceUID = ""
    return q


def matches(q: Dataset) -> list[Dataset]:
    return [d for d in DATA if q.PatientID in ("", d.PatientID)]


def answer(ds: Dataset) -> Dataset:
    r = Dataset()
    r.QueryRetrieveLevel = "IMAGE"
    r.PatientID = ds.PatientID
    r.SOPInstanceUID = ds.SOPInstanceUID
    return r


class Archive:
    """SCP handlers over DATA that record what they saw."""

    def __init__(self, *, endless: bool = False, destinations: dict[str, Any] | None = None):
        self.endless = endless
        self.produced = 0
        self.cancelled: list[bool] = []
        self.closed = 0
        self.destinations = destinations or {}
        self.blocker: anyio.Event | None = None

    async def find(self, event: evt.Event) -> AsyncIterator[tuple[int, Dataset | None]]:
        try:
            items = matches(event.identifier)
            i = 0
            while self.endless or i < len(items):
                ds = items[i % len(items)]
                i += 1
                self.produced += 1
                yield 0xFF00, answer(ds)
                if self.blocker is not None and i == 2:
                    await self.blocker.wait()
        finally:
            self.closed += 1
            self.cancelled.append(event.is_cancelled)

    async def get(self, event: evt.Event) -> AsyncIterator[Any]:
        items = matches(event.identifier)
        yield len(items)
        try:
            for i, ds in enumerate(items):
                yield 0xFF00, ds
                if self.blocker is not None and i == 0:
                    await self.blocker.wait()
        finally:
            self.cancelled.append(event.is_cancelled)

    async def move(self, event: evt.Event) -> AsyncIterator[Any]:
        yield self.destinations.get(event.move_destination, (None, None))
        items = matches(event.identifier)
        yield len(items)
        for ds in items:
            yield 0xFF00, ds

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        return [
            (evt.EVT_C_FIND, self.find),
            (evt.EVT_C_GET, self.get),
            (evt.EVT_C_MOVE, self.move),
        ]


def qr_pair(*, storage_role: bool = True) -> tuple[AE, AE]:
    scu = make_scu_ae()
    scp = make_scp_ae()
    for model in (FIND, GET, MOVE):
        scu.add_requested_context(model)
        scp.add_supported_context(model)
    scu.add_requested_context(CT, ExplicitVRLittleEndian)
    scp.add_supported_context(CT, ExplicitVRLittleEndian, scu_role=True, scp_role=storage_role)
    return scu, scp


class Stored:
    def __init__(self, status: int = 0x0000) -> None:
        self.status = status
        self.uids: list[str] = []
        self.requests: list[Dataset] = []

    def __call__(self, event: evt.Event) -> int:
        self.uids.append(str(event.dataset.SOPInstanceUID))
        self.requests.append(event.request)
        return self.status


# ---------------------------------------------------------------------------
# C-FIND


async def test_find_all_matches_then_final() -> None:
    archive = Archive()
    scu, scp = qr_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=archive.handlers) as assoc:
            got = [(int(s.Status), i) async for s, i in assoc.send_c_find(query(), FIND)]
    assert [s for s, _ in got] == [0xFF00] * 3 + [0x0000]
    assert [i.SOPInstanceUID for _, i in got[:3]] == [d.SOPInstanceUID for d in matches(query())]
    assert got[-1][1] is None
    assert archive.cancelled == [False]


async def test_find_leaving_async_with_early_cancels_and_drains() -> None:
    archive = Archive(endless=True)
    scu, scp = qr_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=archive.handlers) as assoc:
            async with assoc.send_c_find(query(), FIND) as responses:
                async for status, _ in responses:
                    assert status.Status == 0xFF00
                    break
            assert (await assoc.send_c_echo()).Status == 0  # still usable
            archive.endless = False
            got = [int(s.Status) async for s, _ in assoc.send_c_find(query("P2"), FIND)]
    assert archive.cancelled[0] is True
    assert got == [0xFF00] * 3 + [0x0000]


async def test_find_bare_break_is_cancelled_before_the_next_operation() -> None:
    archive = Archive(endless=True)
    scu, scp = qr_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=archive.handlers) as assoc:
            async for _status, _identifier in assoc.send_c_find(query(), FIND):
                break
            assert (await assoc.send_c_echo()).Status == 0
    assert archive.cancelled == [True]
    assert archive.closed == 1


async def test_find_bare_break_is_cancelled_before_release() -> None:
    archive = Archive(endless=True)
    scu, scp = qr_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=archive.handlers) as assoc:
            responses = assoc.send_c_find(query(), FIND)
            async for _ in responses:
                break  # kept alive by the name: cancelled by the release
    assert assoc.is_released
    assert archive.cancelled == [True]


def unblock_on_cancel(archive: Archive) -> evt.EventHandlerType:
    """An SCP EVT_DIMSE_RECV handler letting the archive's handler go on once the
    C-CANCEL-RQ has arrived (it is routed right after this handler returns)."""

    def on_recv(event: evt.Event) -> None:
        if event.message.command_field == 0x0FFF and archive.blocker is not None:
            archive.blocker.set()

    return (evt.EVT_DIMSE_RECV, on_recv)


async def test_cancelling_the_iterating_task_sends_c_cancel() -> None:
    archive = Archive(endless=True)
    archive.blocker = anyio.Event()  # the SCP stops after 2 matches: the SCU waits
    scu, scp = qr_pair()
    seen: list[int] = []
    with anyio.fail_after(GUARD):
        async with memory_pair(
            scu, scp, scp_handlers=[*archive.handlers, unblock_on_cancel(archive)]
        ) as assoc:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:

                    async def iterate() -> None:
                        async for status, _ in assoc.send_c_find(query(), FIND):
                            seen.append(int(status.Status))

                    tg.start_soon(iterate)
                    await anyio.wait_all_tasks_blocked()  # waiting for the third
                    scope.cancel()
            assert (await assoc.send_c_echo()).Status == 0
    assert seen == [0xFF00, 0xFF00]
    assert archive.cancelled == [True]


async def test_sync_generator_and_plain_list_handlers() -> None:
    def find_sync(event: evt.Event) -> Iterator[tuple[int, Dataset]]:
        for ds in matches(event.identifier):
            yield 0xFF00, answer(ds)

    def find_list(event: evt.Event) -> list[tuple[int, Dataset]]:
        return [(0xFF00, answer(ds)) for ds in matches(event.identifier)]

    for handler in (find_sync, find_list):
        scu, scp = qr_pair()
        with anyio.fail_after(GUARD):
            async with memory_pair(scu, scp, scp_handlers=[(evt.EVT_C_FIND, handler)]) as assoc:
                got = [int(s.Status) async for s, _ in assoc.send_c_find(query(), FIND)]
        assert got == [0xFF00] * 3 + [0x0000]


async def _find_statuses(handler: Any) -> list[int]:
    scu, scp = qr_pair()
    handlers = [] if handler is None else [(evt.EVT_C_FIND, handler)]
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=handlers) as assoc:
            got = [int(s.Status) async for s, _ in assoc.send_c_find(query(), FIND)]
            assert (await assoc.send_c_echo()).Status == 0
    return got


async def test_find_handler_failures() -> None:
    async def raises(event: evt.Event) -> AsyncIterator[Any]:
        yield 0xFF00, answer(DATA[0])
        raise RuntimeError("boom")

    async def bad_item(event: evt.Event) -> AsyncIterator[Any]:
        yield "not a pair"

    async def bad_identifier(event: evt.Event) -> AsyncIterator[Any]:
        yield 0xFF00, "not a dataset"

    async def own_final(event: evt.Event) -> AsyncIterator[Any]:
        yield 0xFF00, answer(DATA[0])
        yield 0xA700, None

    async def raises_at_once(event: evt.Event) -> AsyncIterator[Any]:
        raise KeyError("x")
        yield  # pragma: no cover

    assert await _find_statuses(None) == [0xC311]
    assert await _find_statuses(raises) == [0xFF00, 0xC311]
    assert await _find_statuses(bad_item) == [0xC312]
    assert await _find_statuses(bad_identifier) == [0xC312]
    assert await _find_statuses(own_final) == [0xFF00, 0xA700]
    assert await _find_statuses(raises_at_once) == [0xC311]


async def test_slow_consumer_slows_the_handler() -> None:
    """Backpressure: an endless handler is not pulled far ahead of the consumer."""
    archive = Archive(endless=True)
    scu, scp = qr_pair()
    with anyio.fail_after(GUARD):
        async with (
            memory_pair(scu, scp, scp_handlers=archive.handlers) as assoc,
            assoc.send_c_find(query(), FIND) as responses,
        ):
            n = 0
            async for _ in responses:
                n += 1
                if n == 5:
                    break
            await anyio.wait_all_tasks_blocked()
            # consumed 5; at most the response backlog (256) and the
            # memory stream's 16 writes beyond that were produced
            assert archive.produced <= 5 + 256 + 16 + 8
    assert archive.cancelled == [True]


async def test_find_without_accepted_model_raises() -> None:
    scu, scp = qr_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp) as assoc:
            with pytest.raises(NoAcceptedContext):
                assoc.send_c_find(query(), sop_class.StudyRootQueryRetrieveInformationModelFind)
            with pytest.raises(TypeError):
                assoc.send_c_find("PatientID=1", FIND)  # type: ignore[arg-type]


async def test_concurrent_finds_with_a_window() -> None:
    from aiodicom.pdu_primitives import AsynchronousOperationsWindowNegotiation

    archive = Archive()
    scu, scp = qr_pair()
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 3
    window.maximum_number_operations_performed = 3
    results: dict[str, list[int]] = {}
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=archive.handlers, ext_neg=[window]) as assoc:

            async def one(pid: str) -> None:
                results[pid] = [int(s.Status) async for s, _ in assoc.send_c_find(query(pid), FIND)]

            async with anyio.create_task_group() as tg:
                for pid in ("P0", "P1", "P2"):
                    tg.start_soon(one, pid)
    assert results == {pid: [0xFF00] * 3 + [0x0000] for pid in ("P0", "P1", "P2")}


# ---------------------------------------------------------------------------
# C-GET


async def _get(scu: AE, scp: AE, archive: Archive, stored: Stored, **kwargs: Any) -> list[Dataset]:
    statuses: list[Dataset] = []
    with anyio.fail_after(GUARD):
        async with memory_pair(
            scu,
            scp,
            scp_handlers=archive.handlers,
            scu_handlers=[(evt.EVT_C_STORE, stored)],
            ext_neg=[build_role(CT, scp_role=True)],
        ) as assoc:
            async for status, identifier in assoc.send_c_get(query(), GET, **kwargs):
                statuses.append(status)
                if identifier is not None:
                    status.identifier = identifier  # type: ignore[attr-defined]
            assert (await assoc.send_c_echo()).Status == 0
    return statuses


def _counts(final: Dataset) -> tuple[int, int, int]:
    """A final C-GET/C-MOVE response's (completed, failed, warning) sub-operations."""
    return (
        final.NumberOfCompletedSuboperations,
        final.NumberOfFailedSuboperations,
        final.NumberOfWarningSuboperations,
    )


def _retrieve_pair(
    scu: AE, scp: AE, kind: evt.EventType, on_retrieve: Any, on_store: Any
) -> AbstractAsyncContextManager[Association]:
    """An in-memory association whose C-GET/C-MOVE (``kind``) ``on_retrieve``
    serves and whose C-STORE sub-operations (C-GET) ``on_store`` takes."""
    return memory_pair(
        scu,
        scp,
        scp_handlers=[(kind, on_retrieve)],
        scu_handlers=[(evt.EVT_C_STORE, on_store)],
        ext_neg=[build_role(CT, scp_role=True)],
    )


async def test_get_sub_operations_arrive_on_the_association() -> None:
    scu, scp = qr_pair()
    stored = Stored()
    statuses = await _get(scu, scp, Archive(), stored)
    expected = [d.SOPInstanceUID for d in matches(query())]
    assert stored.uids == expected
    assert [int(s.Status) for s in statuses] == [0xFF00] * 3 + [0x0000]
    assert [s.NumberOfRemainingSuboperations for s in statuses[:3]] == [2, 1, 0]
    assert [s.NumberOfCompletedSuboperations for s in statuses] == [1, 2, 3, 3]
    final = statuses[-1]
    assert "NumberOfRemainingSuboperations" not in final
    assert (final.NumberOfFailedSuboperations, final.NumberOfWarningSuboperations) == (0, 0)


async def test_get_failed_sub_operations_are_listed() -> None:
    scu, scp = qr_pair()
    statuses = await _get(scu, scp, Archive(), Stored(status=0xA700))
    final = statuses[-1]
    assert final.Status == 0xA702  # every sub-operation failed
    assert final.NumberOfFailedSuboperations == 3
    expected = [d.SOPInstanceUID for d in matches(query())]
    assert list(final.identifier.FailedSOPInstanceUIDList) == expected  # type: ignore[attr-defined]


async def test_get_failed_sub_operations_from_files_are_listed(tmp_path: Path) -> None:
    """Instances yielded as paths: one that has no accepted context (an MR file
    on an association negotiated for CT) is listed in the final response's
    Failed SOP Instance UID List by the UID its file holds; one that cannot
    be read is counted, with no UID to list; a good one completes."""
    good = make_dataset(SOPClassUID=CT)
    other = make_dataset(SOPClassUID=sop_class.MRImageStorage)
    paths = []
    for name, ds in (("ct.dcm", good), ("mr.dcm", other)):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(tmp_path / name, enforce_file_format=True)
        paths.append(tmp_path / name)
    paths.append(tmp_path / "missing.dcm")

    async def get(event: evt.Event) -> AsyncIterator[Any]:
        yield len(paths)
        for path in paths:
            yield 0xFF00, path

    scu, scp = qr_pair()
    stored = Stored()
    with anyio.fail_after(GUARD):
        async with _retrieve_pair(scu, scp, evt.EVT_C_GET, get, stored) as assoc:
            responses = [item async for item in assoc.send_c_get(query(), GET)]
    final, identifier = responses[-1]
    assert final.Status == 0xB000  # some failed
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 2)
    assert stored.uids == [good.SOPInstanceUID]
    assert identifier is not None
    listed = identifier.FailedSOPInstanceUIDList  # one value: pydicom gives the str
    assert listed == other.SOPInstanceUID


@pytest.mark.parametrize("service", ["get", "move"])
async def test_the_next_instance_is_taken_while_the_last_is_stored(service: str) -> None:
    """While the peer stores sub-operation k (C-GET: the SCU; C-MOVE: the
    destination), the SCP's handler has already been asked for instance
    k+1, never yet for k+2. The storing handler waits for that request:
    without the overlap it would wait for ever (the test fails on its guard)."""
    instances = [make_dataset() for _ in range(4)]
    uids = [ds.SOPInstanceUID for ds in instances]
    asked = [anyio.Event() for _ in instances]
    furthest: list[int] = []
    destination: list[Any] = []

    async def on_retrieve(event: evt.Event) -> AsyncIterator[Any]:
        if destination:
            yield destination[0]
        yield len(instances)
        for i, ds in enumerate(instances):
            asked[i].set()
            yield 0xFF00, ds

    async def on_store(event: evt.Event) -> int:
        k = uids.index(event.dataset.SOPInstanceUID)
        if k + 1 < len(instances):
            await asked[k + 1].wait()
        furthest.append(max(i for i, e in enumerate(asked) if e.is_set()))
        return 0x0000

    scu, scp = qr_pair()
    scp.add_requested_context(CT, ExplicitVRLittleEndian)
    dest_ae = make_scp_ae("DEST")
    dest_ae.add_supported_context(CT, ExplicitVRLittleEndian)
    with anyio.fail_after(GUARD):
        async with running_server(dest_ae, [(evt.EVT_C_STORE, on_store)]) as dest:
            kind = evt.EVT_C_GET
            if service == "move":
                kind = evt.EVT_C_MOVE
                destination.append(("127.0.0.1", dest.port))
            async with _retrieve_pair(scu, scp, kind, on_retrieve, on_store) as assoc:
                responses = (
                    assoc.send_c_get(query(), GET)
                    if service == "get"
                    else assoc.send_c_move(query(), "DEST", MOVE)
                )
                statuses = [int(s.Status) async for s, _ in responses]
    assert statuses == [0xFF00] * 4 + [0x0000]
    assert furthest == [1, 2, 3, 3]


async def test_get_handler_failing_after_two_instances_counts_both() -> None:
    """The handler raises when asked for its third instance (asked while the
    second is stored): the second is still counted, its pending response
    sent, then the final response is 0xC411."""
    instances = [make_dataset() for _ in range(3)]

    async def on_get(event: evt.Event) -> AsyncIterator[Any]:
        yield len(instances)
        for ds in instances[:2]:
            yield 0xFF00, ds
        raise RuntimeError("the archive went away")

    scu, scp = qr_pair()
    stored = Stored()
    with anyio.fail_after(GUARD):
        async with _retrieve_pair(scu, scp, evt.EVT_C_GET, on_get, stored) as assoc:
            statuses = [s async for s, _ in assoc.send_c_get(query(), GET)]
            assert (await assoc.send_c_echo()).Status == 0
    assert [int(s.Status) for s in statuses] == [0xFF00, 0xFF00, 0xC411]
    assert [s.NumberOfCompletedSuboperations for s in statuses] == [1, 2, 2]
    assert stored.uids == [ds.SOPInstanceUID for ds in instances[:2]]


async def test_get_warnings_give_b000() -> None:
    scu, scp = qr_pair()
    final = (await _get(scu, scp, Archive(), Stored(status=0xB000)))[-1]
    assert final.Status == 0xB000
    assert final.NumberOfWarningSuboperations == 3


async def test_get_without_the_storage_role_fails_each_sub_operation() -> None:
    scu, scp = qr_pair(storage_role=False)  # the SCP refuses the SCP role for CT
    stored = Stored()
    final = (await _get(scu, scp, Archive(), stored))[-1]
    assert stored.uids == []
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 3


async def test_get_cancelled_mid_way() -> None:
    archive = Archive()
    archive.blocker = anyio.Event()
    scu, scp = qr_pair()
    stored = Stored()
    statuses: list[int] = []
    with anyio.fail_after(GUARD):
        async with memory_pair(
            scu,
            scp,
            scp_handlers=[*archive.handlers, unblock_on_cancel(archive)],
            scu_handlers=[(evt.EVT_C_STORE, stored)],
            ext_neg=[build_role(CT, scp_role=True)],
        ) as assoc:
            async with assoc.send_c_get(query(), GET) as responses:
                async for status, _ in responses:
                    statuses.append(int(status.Status))
                    break
            assert (await assoc.send_c_echo()).Status == 0
    assert statuses == [0xFF00]
    assert archive.cancelled == [True]
    assert len(stored.uids) == 1


def _messages(write: bytes) -> tuple[list[str], int]:
    """The DIMSE messages whose command set one write carries, e.g.
    ``['C-GET-RSP FF00', 'C-STORE-RQ']``, and its number of PDUs (P-DATA-TF only)."""
    out, command, pos, pdus = [], b"", 0, 0
    while pos < len(write):
        assert write[pos] == 0x04, "not a P-DATA-TF"
        pdus += 1
        end = pos + 6 + int.from_bytes(write[pos + 2 : pos + 6], "big")
        item = pos + 6
        while item < end:
            length = int.from_bytes(write[item : item + 4], "big")
            header, data = write[item + 5], write[item + 6 : item + 4 + length]
            if header & 0x01:  # a command fragment
                command += data
                if header & 0x02:
                    fields = decode_command(command)
                    name = COMMAND_NAMES[fields["CommandField"]]
                    if "Status" in fields:
                        name += f" {fields['Status']:04X}"
                    out.append(name)
                    command = b""
            item += 4 + length
        pos = end
    return out, pdus


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the asyncio transport's writes
@pytest.mark.parametrize("max_pdu", [0, 4096], ids=["one-pdu", "fragmented"])
async def test_get_pending_response_leaves_with_the_next_sub_operation(
    max_pdu: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each pending C-GET-RSP goes in one write with the next C-STORE-RQ (all
    of its PDUs), not in one of its own. The last one leaves alone: the final
    response follows once the handler's task is done with it."""
    from asyncio.selector_events import _SelectorSocketTransport

    writes: list[tuple[Any, bytes]] = []
    real_write = _SelectorSocketTransport.write

    def write(self: Any, data: Any) -> None:
        writes.append((self, bytes(data)))
        real_write(self, data)

    monkeypatch.setattr(_SelectorSocketTransport, "write", write)
    instances = [make_dataset(PixelData=bytes(10_000)) for _ in range(3)]

    async def on_get(event: evt.Event) -> AsyncIterator[Any]:
        yield len(instances)
        for ds in instances:
            yield 0xFF00, ds

    scu, scp = qr_pair()
    if max_pdu:
        scu.maximum_pdu_size = max_pdu
    stored = Stored()
    statuses = []
    with anyio.fail_after(GUARD):
        async with (
            running_server(scp, [(evt.EVT_C_GET, on_get)]) as server,
            scu.associate(
                "127.0.0.1",
                server.port,
                ae_title="TEST_SCP",
                ext_neg=[build_role(CT, scp_role=True)],
                evt_handlers=[(evt.EVT_C_STORE, stored)],
            ) as assoc,
        ):
            async for status, _ in assoc.send_c_get(query(), GET):
                statuses.append(int(status.Status))
    assert statuses == [0xFF00] * 3 + [0x0000]
    assert stored.uids == [ds.SOPInstanceUID for ds in instances]
    scp_writes = [
        data
        for transport, data in writes
        if transport.get_extra_info("sockname")[1] == server.port and data[0] == 0x04
    ]
    parsed = [_messages(w) for w in scp_writes]
    assert [names for names, _ in parsed] == [
        ["C-STORE-RQ"],
        ["C-GET-RSP FF00", "C-STORE-RQ"],
        ["C-GET-RSP FF00", "C-STORE-RQ"],
        ["C-GET-RSP FF00"],
        ["C-GET-RSP 0000"],
    ]
    # The data set (10 KB) fits one PDU, or takes three of 4,096 bytes.
    per_store = 4 if max_pdu else 1
    assert [pdus for _, pdus in parsed] == [per_store, per_store + 1, per_store + 1, 1, 1]


async def test_get_handler_without_a_count() -> None:
    async def no_count(event: evt.Event) -> AsyncIterator[Any]:
        yield 0xFF00, DATA[0]

    scu, scp = qr_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=[(evt.EVT_C_GET, no_count)]) as assoc:
            got = [int(s.Status) async for s, _ in assoc.send_c_get(query(), GET)]
    assert got == [0xC413]


# ---------------------------------------------------------------------------
# C-MOVE


async def test_move_to_a_third_ae_and_to_the_requestor() -> None:
    dest_ae = make_scp_ae("DEST")
    dest_ae.add_supported_context(CT, ExplicitVRLittleEndian)
    at_dest = Stored()
    at_self = Stored()
    scu, scp = qr_pair()
    scp.add_requested_context(CT, ExplicitVRLittleEndian)
    self_ae = make_scp_ae("MOVESCU")
    self_ae.add_supported_context(CT, ExplicitVRLittleEndian)
    with anyio.fail_after(GUARD * 2):
        async with (
            running_server(dest_ae, [(evt.EVT_C_STORE, at_dest)]) as dest,
            running_server(self_ae, [(evt.EVT_C_STORE, at_self)]) as own,
        ):
            archive = Archive(
                destinations={"DEST": ("127.0.0.1", dest.port), "MOVESCU": ("127.0.0.1", own.port)}
            )
            async with memory_pair(scu, scp, scp_handlers=archive.handlers) as assoc:
                moved = [int(s.Status) async for s, _ in assoc.send_c_move(query(), "DEST", MOVE)]
                move_id = None
                responses = assoc.send_c_move(query("P2"), "MOVESCU", MOVE)
                async for status, _ in responses:
                    move_id = responses.message_id
                    last = status
    expected = [d.SOPInstanceUID for d in matches(query())]
    assert moved == [0xFF00] * 3 + [0x0000]
    assert at_dest.uids == expected
    assert at_self.uids == [d.SOPInstanceUID for d in matches(query("P2"))]
    assert last.Status == 0x0000 and last.NumberOfCompletedSuboperations == 3
    # the moved instances are tied back to the request
    for request in at_self.requests:
        assert request.MoveOriginatorApplicationEntityTitle == "TEST_SCU"
        assert request.MoveOriginatorMessageID == move_id


async def test_move_unknown_and_unreachable_destinations() -> None:
    from aiodicom.testing import free_port

    scu, scp = qr_pair()
    scp.add_requested_context(CT, ExplicitVRLittleEndian)
    archive = Archive(destinations={"GONE": ("127.0.0.1", free_port())})
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=archive.handlers) as assoc:
            unknown = [int(s.Status) async for s, _ in assoc.send_c_move(query(), "NOBODY", MOVE)]
            gone = [int(s.Status) async for s, _ in assoc.send_c_move(query(), "GONE", MOVE)]
            assert (await assoc.send_c_echo()).Status == 0
    assert unknown == [0xA801]
    assert gone == [0xA801]


async def test_move_destination_aborting_midway() -> None:
    """The destination aborts the sub-operations' association while storing
    the second instance: the move ends with 0xA702, one completed and the
    other two failed (the one cut off and the one never sent), and the
    requestor's association goes on."""
    stored: list[str] = []

    async def on_store(event: evt.Event) -> int:
        stored.append(str(event.dataset.SOPInstanceUID))
        if len(stored) == 2:
            await event.assoc.abort()
        return 0x0000

    dest_ae = make_scp_ae("DEST")
    dest_ae.add_supported_context(CT, ExplicitVRLittleEndian)
    scu, scp = qr_pair()
    scp.add_requested_context(CT, ExplicitVRLittleEndian)
    with anyio.fail_after(GUARD):
        async with running_server(dest_ae, [(evt.EVT_C_STORE, on_store)]) as dest:
            archive = Archive(destinations={"DEST": ("127.0.0.1", dest.port)})
            async with memory_pair(scu, scp, scp_handlers=archive.handlers) as assoc:
                statuses = [s async for s, _ in assoc.send_c_move(query(), "DEST", MOVE)]
                assert (await assoc.send_c_echo()).Status == 0
    assert [int(s.Status) for s in statuses] == [0xFF00, 0xA702]
    assert _counts(statuses[-1]) == (1, 2, 0)
    assert stored == [d.SOPInstanceUID for d in matches(query())][:2]


async def test_get_without_bulk_data_strips_pixel_data() -> None:
    model = sop_class.CompositeInstanceRetrieveWithoutBulkDataGet
    scu, scp = qr_pair()
    scu.add_requested_context(model)
    scp.add_supported_context(model)
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0

    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.PatientID = "P1"
    with anyio.fail_after(GUARD):
        async with memory_pair(
            scu,
            scp,
            scp_handlers=Archive().handlers,
            scu_handlers=[(evt.EVT_C_STORE, on_store)],
            ext_neg=[build_role(CT, scp_role=True)],
        ) as assoc:
            got = [int(s.Status) async for s, _ in assoc.send_c_get(q, model)]
    assert got[-1] == 0x0000
    assert len(received) == 3
    assert all("PixelData" not in ds and ds.PatientID == "P1" for ds in received)
    assert all("PixelData" in ds for ds in DATA)  # the SCP's own instances are untouched


async def test_get_without_bulk_data_counts_an_unreadable_instance_failed(tmp_path: Path) -> None:
    """A yielded file that cannot be read to strip its bulk data fails its
    sub-operation (no C-STORE, no pending response for it) and the next one
    goes on: two stored, one failed, final warning 0xB000."""
    model = sop_class.CompositeInstanceRetrieveWithoutBulkDataGet
    scu, scp = qr_pair()
    scu.add_requested_context(model)
    scp.add_supported_context(model)
    garbage = tmp_path / "not-dicom.dcm"
    garbage.write_bytes(b"\xff" * 300)
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0

    def on_get(event: evt.Event) -> Iterator[Any]:
        yield 3
        yield 0xFF00, DATA[0]
        yield 0xFF00, str(garbage)
        yield 0xFF00, DATA[1]

    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    with anyio.fail_after(GUARD):
        async with _retrieve_pair(scu, scp, evt.EVT_C_GET, on_get, on_store) as assoc:
            statuses = [s async for s, _ in assoc.send_c_get(q, model)]
    assert [int(s.Status) for s in statuses] == [0xFF00, 0xFF00, 0xB000]
    assert _counts(statuses[-1]) == (2, 1, 0)
    assert [ds.SOPInstanceUID for ds in received] == [
        DATA[0].SOPInstanceUID,
        DATA[1].SOPInstanceUID,
    ]
    assert all("PixelData" not in ds for ds in received)


FIND_MODELS = [
    sop_class.PatientRootQueryRetrieveInformationModelFind,
    sop_class.StudyRootQueryRetrieveInformationModelFind,
    sop_class.PatientStudyOnlyQueryRetrieveInformationModelFind,
    sop_class.ModalityWorklistInformationFind,
    sop_class.GeneralRelevantPatientInformationQuery,
    sop_class.BreastImagingRelevantPatientInformationQuery,
    sop_class.CardiacRelevantPatientInformationQuery,
    sop_class.HangingProtocolInformationModelFind,
    sop_class.ColorPaletteQueryRetrieveInformationModelFind,
    sop_class.GenericImplantTemplateInformationModelFind,
    sop_class.ImplantAssemblyTemplateInformationModelFind,
    sop_class.ImplantTemplateGroupInformationModelFind,
    sop_class.DefinedProcedureProtocolInformationModelFind,
    sop_class.ProtocolApprovalInformationModelFind,
    sop_class.ProductCharacteristicsQuery,
    sop_class.SubstanceApprovalQuery,
    sop_class.InventoryFind,
]


@pytest.mark.parametrize("model", FIND_MODELS, ids=lambda uid: uid.name)
async def test_every_c_find_service(model: Any) -> None:
    """Each C-FIND based service of pynetdicom's list negotiates and answers."""
    seen: list[str] = []

    async def on_find(event: evt.Event) -> AsyncIterator[tuple[int, Dataset]]:
        seen.append(str(event.request.AffectedSOPClassUID))
        yield 0xFF00, answer(DATA[0])
        yield 0xFF01, answer(DATA[1])

    scu, scp = make_scu_ae(), make_scp_ae()
    scu.add_requested_context(model)
    scp.add_supported_context(model)
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=[(evt.EVT_C_FIND, on_find)]) as assoc:
            got = [int(s.Status) async for s, _ in assoc.send_c_find(query(), model)]
    assert got == [0xFF00, 0xFF01, 0x0000]
    assert seen == [model]


async def test_cancelled_get_final_response_has_the_counts() -> None:
    archive = Archive()
    archive.blocker = anyio.Event()
    scu, scp = qr_pair()
    finals: list[dict[str, Any]] = []

    def on_recv(event: evt.Event) -> None:
        command = event.message.command
        if command["CommandField"] == 0x8010 and command.get("Status") == 0xFE00:
            finals.append(command)

    with anyio.fail_after(GUARD):
        async with (
            memory_pair(
                scu,
                scp,
                scp_handlers=[*archive.handlers, unblock_on_cancel(archive)],
                scu_handlers=[(evt.EVT_C_STORE, Stored()), (evt.EVT_DIMSE_RECV, on_recv)],
                ext_neg=[build_role(CT, scp_role=True)],
            ) as assoc,
            assoc.send_c_get(query(), GET) as responses,
        ):
            async for _ in responses:
                break
    (final,) = finals
    assert final["NumberOfRemainingSuboperations"] == 2
    assert final["NumberOfCompletedSuboperations"] == 1
    assert (final["NumberOfFailedSuboperations"], final["NumberOfWarningSuboperations"]) == (0, 0)


async def test_dropped_association_closes_the_handler() -> None:
    """The SCU aborts mid-find: the SCP's generator is closed (its finally runs)."""
    archive = Archive(endless=True)
    scu, scp = qr_pair()
    closed = anyio.Event()

    def on_close(event: evt.Event) -> None:
        closed.set()

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            async with scp.start_server(
                ("127.0.0.1", 0),
                evt_handlers=[*archive.handlers, (evt.EVT_CONN_CLOSE, on_close)],
            ) as server:
                async with scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc:
                    async for _ in assoc.send_c_find(query(), FIND):
                        await assoc.abort()
                        break
                await closed.wait()
            tg.cancel_scope.cancel()
    assert archive.closed == 1
    assert archive.produced >= 1
