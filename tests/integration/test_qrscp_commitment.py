"""Storage Commitment (PS3.4 Annex J) in the Q/R SCP: aiodicom on both sides over TCP.

The SCP answers the N-ACTION at once and reports which instances it holds in
an N-EVENT-REPORT: on the request's association while it lasts, else on one
it opens to the requestor (taking the SCP role). Interop with pynetdicom is in
tests/interop/test_nservice_interop.py.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from aiodicom import AE, Server, evt, sop_class
from aiodicom.qrscp import Archive, setup_ae
from aiodicom.testing import make_dataset

from .conftest import GUARD

pytestmark = pytest.mark.anyio

COMMITMENT = sop_class.StorageCommitmentPushModel
INSTANCE = sop_class.StorageCommitmentPushModelInstance
CT = sop_class.CTImageStorage
MR = sop_class.MRImageStorage


@asynccontextmanager
async def qrscp(
    path: Path, *, serve: bool = True, destinations: dict[str, tuple[str, int]] | None = None
) -> AsyncIterator[tuple[Archive, Server]]:
    archive = await Archive.open(path, ae_title="QRSCP", destinations=destinations)
    async with archive, anyio.create_task_group() as tg:
        if serve:
            await tg.start(archive.serve_commitments)
        ae = setup_ae(AE("QRSCP"), archive)
        ae.acse_timeout = ae.dimse_timeout = 5.0
        async with ae.start_server(("127.0.0.1", 0), evt_handlers=archive.handlers()) as srv:
            yield archive, srv
        tg.cancel_scope.cancel()


def modality(title: str = "MODALITY") -> AE:
    ae = AE(title)
    ae.add_requested_context(CT)
    ae.add_requested_context(COMMITMENT)
    ae.acse_timeout = ae.dimse_timeout = 5.0
    return ae


def request(transaction: str, refs: list[tuple[str, str]]) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction
    items = []
    with warnings.catch_warnings():  # (a test may send a UID that is none)
        warnings.simplefilter("ignore", UserWarning)
        for class_uid, instance_uid in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = class_uid
            item.ReferencedSOPInstanceUID = instance_uid
            items.append(item)
    info.ReferencedSOPSequence = Sequence(items)
    return info


class Reports:
    """An SCU's EVT_N_EVENT_REPORT handler: records and wakes."""

    def __init__(self) -> None:
        self.events: list[evt.Event] = []
        self.got = anyio.Event()

    def __call__(self, event: evt.Event) -> Any:
        self.events.append(event)
        self.got.set()
        return 0x0000, None


class ReportTask:
    """Wakes the test each time the archive's report task is done with a request.

    What that task does after the last thing the test sees (counting the
    answer to its report, logging that it sent none) is awaited on this:
    its ``_report`` is wrapped to signal each end.
    """

    def __init__(self, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
        self._changed: anyio.Event | None = None
        report = archive._report

        async def report_then_wake(job: Any) -> None:
            try:
                await report(job)
            finally:
                if self._changed is not None:
                    self._changed.set()
                    self._changed = None

        monkeypatch.setattr(archive, "_report", report_then_wake)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate` holds, re-checked each time a request is done."""
        with anyio.fail_after(GUARD):
            while not predicate():
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()


def refs_of(ds: Dataset, keyword: str) -> list[tuple[str, ...]]:
    out = []
    for item in ds.get(keyword, []):
        entry = (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
        if "FailureReason" in item:
            entry += (f"{item.FailureReason:04X}",)
        out.append(entry)
    return out


async def test_report_on_the_same_association(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = [make_dataset(), make_dataset()]
    missing = make_dataset()
    reports = Reports()
    async with qrscp(tmp_path) as (archive, srv):
        report_task = ReportTask(archive, monkeypatch)
        with anyio.fail_after(GUARD):
            async with modality().associate(
                "127.0.0.1",
                srv.port,
                ae_title="QRSCP",
                evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports)],
            ) as assoc:
                for ds in stored:
                    assert (await assoc.send_c_store(ds)).Status == 0x0000
                refs = [(CT, ds.SOPInstanceUID) for ds in stored]
                refs += [(CT, missing.SOPInstanceUID), (MR, stored[0].SOPInstanceUID)]
                status, _ = await assoc.send_n_action(
                    request("1.2.3.4.1", refs), 1, COMMITMENT, INSTANCE
                )
                assert status.Status == 0x0000 and status.ActionTypeID == 1
                await reports.got.wait()
                # Counted once the SCP has the answer to its report.
                await report_task.until(lambda: archive.commitments_reported == 1)
    [report] = reports.events
    assert report.event_type == 2  # some instances failed
    assert report.request.AffectedSOPClassUID == COMMITMENT
    assert report.request.AffectedSOPInstanceUID == INSTANCE
    result = report.event_information
    assert result.TransactionUID == "1.2.3.4.1"
    assert refs_of(result, "ReferencedSOPSequence") == [(CT, ds.SOPInstanceUID) for ds in stored]
    assert refs_of(result, "FailedSOPSequence") == [
        (CT, missing.SOPInstanceUID, "0112"),  # no such object instance
        (MR, stored[0].SOPInstanceUID, "0119"),  # class / instance conflict
    ]
    assert archive.commitments_reported == 1


async def test_report_after_release_comes_on_a_new_association(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The requestor released first: the SCP opens an association to it (its
    AE title is a destination), proposing the SCP role for Storage Commitment."""
    stored = make_dataset()
    reports = Reports()
    listener = AE("MODALITY")
    listener.add_supported_context(COMMITMENT, scu_role=True, scp_role=True)
    roles: list[Any] = []

    def on_requested(event: evt.Event) -> None:
        roles.extend(event.assoc.requestor.role_selection.values())

    released = threading.Event()
    handlers = [(evt.EVT_N_EVENT_REPORT, reports), (evt.EVT_REQUESTED, on_requested)]
    async with listener.start_server(("127.0.0.1", 0), evt_handlers=handlers) as modality_srv:
        destinations = {"MODALITY": ("127.0.0.1", modality_srv.port)}
        async with qrscp(tmp_path, destinations=destinations) as (archive, srv):
            report_task = ReportTask(archive, monkeypatch)
            # The check of the instances (in a worker thread) waits for the release.
            lookup = archive._commit_lookup

            def after_release(references: Any) -> Any:
                assert released.wait(GUARD)
                return lookup(references)

            monkeypatch.setattr(archive, "_commit_lookup", after_release)
            with anyio.fail_after(GUARD):
                async with modality().associate("127.0.0.1", srv.port) as assoc:
                    assert (await assoc.send_c_store(stored)).Status == 0x0000
                    status, _ = await assoc.send_n_action(
                        request("1.2.3.4.2", [(CT, stored.SOPInstanceUID)]),
                        1,
                        COMMITMENT,
                        INSTANCE,
                    )
                    assert status.Status == 0x0000
                released.set()
                await reports.got.wait()
                await report_task.until(lambda: archive.commitments_reported == 1)
    [report] = reports.events
    assert report.assoc.requestor.ae_title == "QRSCP"  # an association the SCP requested
    assert [(r.scu_role, r.scp_role) for r in roles] == [(False, True)]
    assert report.event_type == 1  # all kept
    result = report.event_information
    assert refs_of(result, "ReferencedSOPSequence") == [(CT, stored.SOPInstanceUID)]
    assert "FailedSOPSequence" not in result
    assert archive.commitments_reported == 1


async def test_report_to_an_unknown_requestor_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Released before the report, and not a known destination: logged, nothing sent."""
    released = threading.Event()
    async with qrscp(tmp_path) as (archive, srv):
        report_task = ReportTask(archive, monkeypatch)
        lookup = archive._commit_lookup
        done = anyio.Event()

        def after_release(references: Any) -> Any:
            assert released.wait(GUARD)
            try:
                return lookup(references)
            finally:
                anyio.from_thread.run_sync(done.set)

        monkeypatch.setattr(archive, "_commit_lookup", after_release)
        with anyio.fail_after(GUARD):
            async with modality("STRANGER").associate("127.0.0.1", srv.port) as assoc:
                status, _ = await assoc.send_n_action(
                    request("1.2.3.4.6", [(CT, "1.2.3")]), 1, COMMITMENT, INSTANCE
                )
                assert status.Status == 0x0000
            released.set()
            await done.wait()
            await report_task.until(lambda: "no report sent" in caplog.text)
    assert "'STRANGER' is not a known destination" in caplog.text
    assert archive.commitments_reported == 0


@pytest.mark.parametrize(
    ("class_uid", "instance_uid", "action", "info", "code"),
    [
        (COMMITMENT, "1.2.3", 1, request("1.2.3.4.3", []), 0x0112),
        (COMMITMENT, INSTANCE, 2, request("1.2.3.4.3", []), 0x0123),
        (COMMITMENT, INSTANCE, 1, Dataset(), 0x0115),
        (COMMITMENT, INSTANCE, 1, request("1.2.3.4.3", []), 0x0115),
        (COMMITMENT, INSTANCE, 1, request("1.2.3.4.3", [(CT, "1.2.3"), (CT, "1.2.x")]), 0x0115),
        (
            COMMITMENT,
            INSTANCE,
            1,
            request("1.2.3.4.3", [("1.2.840.10008.5.1.4.1.1.2a", "1.2")]),
            0x0115,
        ),
    ],
    ids=[
        "other-instance",
        "other-action",
        "no-transaction",
        "no-references",
        "reference-not-a-uid",
        "reference-class-not-a-uid",
    ],
)
async def test_bad_requests_are_refused(
    tmp_path: Path, class_uid: str, instance_uid: str, action: int, info: Dataset, code: int
) -> None:
    async with qrscp(tmp_path) as (archive, srv):
        with anyio.fail_after(GUARD):
            async with modality().associate("127.0.0.1", srv.port) as assoc:
                status, _ = await assoc.send_n_action(info, action, class_uid, instance_uid)
    assert status.Status == code
    assert status.ErrorComment
    assert archive.commitments_reported == 0


async def test_refused_when_reports_are_not_served(tmp_path: Path) -> None:
    async with qrscp(tmp_path, serve=False) as (_archive, srv):
        with anyio.fail_after(GUARD):
            async with modality().associate("127.0.0.1", srv.port) as assoc:
                status, _ = await assoc.send_n_action(
                    request("1.2.3.4.4", [(CT, "1.2.3")]), 1, COMMITMENT, INSTANCE
                )
    assert status.Status == 0x0110
    assert "not being served" in status.ErrorComment


async def test_requests_not_reported_when_stopped_are_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping serve_commitments drops what it has not reported: each one is named."""
    started = anyio.Event()

    async def never(job: Any) -> None:
        started.set()
        await anyio.sleep_forever()

    async with qrscp(tmp_path) as (archive, srv):
        monkeypatch.setattr(archive, "_report", never)
        with anyio.fail_after(GUARD):
            async with modality().associate("127.0.0.1", srv.port) as assoc:
                for transaction in ("1.2.3.4.8", "1.2.3.4.9"):
                    status, _ = await assoc.send_n_action(
                        request(transaction, [(CT, "1.2.3")]), 1, COMMITMENT, INSTANCE
                    )
                    assert status.Status == 0x0000
            await started.wait()
    # Leaving qrscp() cancelled serve_commitments: the one under way, then the queued one.
    assert "Storage Commitment stopped before reporting 1.2.3.4.8, 1.2.3.4.9" in caplog.text
