"""Interop of the DIMSE-N services (PS3.7 chapter 10) with real peers, both directions.

- aiodicom SCU -> pynetdicom SCP (``tests/peers/pynetdicom_nservice_peer.py``):
  all six services, the statuses the peer gives, a Storage Commitment report
  the peer sends back on the same association;
- pynetdicom SCU -> aiodicom SCP: the same, the other way round;
- aiodicom SCU -> dcmtk ``dcmprscp`` (Print Management: N-GET of the printer,
  N-CREATE/N-SET/N-DELETE of film session and film box, N-SET of an image
  box, N-ACTION print); the image printed is compared with what dcmprscp stored;
- dcmtk ``dcmprscu`` -> aiodicom SCP: a print job as dcmtk sends it (the
  image received compared with the one printed), and an N-EVENT-REPORT the
  aiodicom SCP sends to dcmprscu while it prints.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from _aio import Changes, deadline, in_thread
from _print import SHUTDOWN_SOP_CLASS, image_pixels, write_config, write_image
from conftest import REPO_ROOT, read_jsonl, require_pynetdicom
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from aiodicom import AE, Association, evt, sop_class
from aiodicom.errors import AssociationRejected

HOST = "127.0.0.1"
PEER = REPO_ROOT / "tests" / "peers" / "pynetdicom_nservice_peer.py"
MPPS = sop_class.ModalityPerformedProcedureStep
COMMITMENT = sop_class.StorageCommitmentPushModel
COMMITMENT_INSTANCE = sop_class.StorageCommitmentPushModelInstance
PRINT_META = sop_class.BasicGrayscalePrintManagementMeta
FILM_SESSION = sop_class.BasicFilmSession
FILM_BOX = sop_class.BasicFilmBox
IMAGE_BOX = sop_class.BasicGrayscaleImageBox
PRINTER = sop_class.Printer
PRINTER_INSTANCE = sop_class.PrinterInstance
ROOT = "1.2.826.0.1.3680043.9.9999.40."
CT = "1.2.840.10008.5.1.4.1.1.2"

#: Bound on one test body (the peers have their own, shorter, timeouts).
TEST_DEADLINE = 60.0


def ds(**elements: Any) -> Dataset:
    out = Dataset()
    for keyword, value in elements.items():
        setattr(out, keyword, value)
    return out


def one(events: list[dict[str, Any]], name: str, **match: Any) -> dict[str, Any]:
    found = [
        e for e in events if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, f"expected exactly one {name!r} {match} in {events}"
    return found[0]


def commitment_request(transaction: str) -> Dataset:
    info = ds(TransactionUID=transaction)
    info.ReferencedSOPSequence = Sequence(
        [ds(ReferencedSOPClassUID=CT, ReferencedSOPInstanceUID=ROOT + "99")]
    )
    return info


# --------------------------------------------------------------------------- pynetdicom


@pytest.fixture
def pynetdicom_n_scp(peer_process, tmp_path):
    """start(*args) -> (port, events_path): the pynetdicom N-service SCP peer."""
    require_pynetdicom()

    def start(*args: str) -> tuple[int, Path]:
        out = tmp_path / "n_scp.jsonl"
        proc = peer_process(
            [sys.executable, PEER, "scp", "--port", "0", "--out", out, *args],
            name="pynetdicom-n-scp",
            ready_line=r"^READY (\d+)$",
        )
        assert proc.ready_match is not None
        return int(proc.ready_match.group(1)), out

    return start


def n_scu_ae() -> AE:
    ae = AE("AIO_NSCU")
    for uid in (MPPS, COMMITMENT, PRINT_META):
        ae.add_requested_context(uid)
    ae.acse_timeout = ae.dimse_timeout = 20.0
    return ae


@pytest.mark.anyio
async def test_aiodicom_scu_n_services_to_pynetdicom_scp(pynetdicom_n_scp):
    port, log = pynetdicom_n_scp()
    with deadline(TEST_DEADLINE):
        async with n_scu_ae().associate(HOST, port, ae_title="PYN_NSCP") as assoc:
            got_status, attrs = await assoc.send_n_get(
                ["PatientName", 0x00100020], MPPS, ROOT + "1"
            )
            _, all_attrs = await assoc.send_n_get(None, MPPS, ROOT + "2")
            created, created_attrs = await assoc.send_n_create(
                ds(PerformedProcedureStepStatus="IN PROGRESS", PatientID="C1"), MPPS
            )
            own, _ = await assoc.send_n_create(ds(PatientID="C2"), MPPS, ROOT + "3")
            set_status, set_attrs = await assoc.send_n_set(
                ds(PerformedProcedureStepStatus="COMPLETED"), MPPS, ROOT + "3"
            )
            action, reply = await assoc.send_n_action(
                commitment_request(ROOT + "4"), 1, COMMITMENT, COMMITMENT_INSTANCE
            )
            report, report_reply = await assoc.send_n_event_report(
                ds(PatientID="E1"), 7, MPPS, ROOT + "5"
            )
            deleted = await assoc.send_n_delete(FILM_SESSION, ROOT + "6", meta_uid=PRINT_META)
            # The peer's statuses other than success.
            missing, missing_attrs = await assoc.send_n_get(None, MPPS, ROOT + "112")
            # (pynetdicom aborts an N-DELETE of MPPS, which has none: Print has.)
            broken = await assoc.send_n_delete(FILM_SESSION, ROOT + "666", meta_uid=PRINT_META)
            warned, warned_attrs = await assoc.send_n_set(ds(PatientName="W"), MPPS, ROOT + "107")

    assert got_status.Status == 0x0000 and got_status.AffectedSOPInstanceUID == ROOT + "1"
    assert (str(attrs.PatientName), attrs.PatientID) == ("Peer^N", "NPEER")
    assert "PerformedProcedureStepStatus" not in attrs  # not asked for
    assert all_attrs.PerformedProcedureStepStatus == "IN PROGRESS"
    assert created.Status == 0x0000
    assert created.AffectedSOPInstanceUID == "1.2.826.0.1.3680043.9.9999.30.1"  # the peer's
    assert created_attrs.PatientID == "C1" and "AffectedSOPInstanceUID" not in created_attrs
    assert own.Status == 0x0000 and own.AffectedSOPInstanceUID == ROOT + "3"
    assert set_status.Status == 0x0000 and set_attrs.PerformedProcedureStepStatus == "COMPLETED"
    assert (action.Status, action.ActionTypeID) == (0x0000, 1)
    assert reply.TransactionUID == ROOT + "4"
    assert (report.Status, report.EventTypeID) == (0x0000, 7)
    assert report_reply.PatientID == "EVENT-ACK"
    assert deleted.Status == 0x0000 and deleted.AffectedSOPClassUID == FILM_SESSION
    assert (missing.Status, missing_attrs) == (0x0112, None)
    assert broken.Status == 0x0110
    assert warned.Status == 0x0107 and warned_attrs.PatientName == "W"
    assert [int(t) for t in _list(warned.AttributeIdentifierList)] == [0x00100010]

    events = read_jsonl(log)
    requests = [e for e in events if e["event"] == "n_request"]
    assert [e["kind"] for e in requests] == [
        "EVT_N_GET",
        "EVT_N_GET",
        "EVT_N_CREATE",
        "EVT_N_CREATE",
        "EVT_N_SET",
        "EVT_N_ACTION",
        "EVT_N_EVENT_REPORT",
        "EVT_N_DELETE",
        "EVT_N_GET",
        "EVT_N_DELETE",
        "EVT_N_SET",
    ]
    assert requests[0]["tags"] == ["00100010", "00100020"]
    assert requests[1]["tags"] == []
    assert "AffectedSOPInstanceUID" not in requests[2]
    assert requests[2]["dataset"] == {
        "PatientID": "C1",
        "PerformedProcedureStepStatus": "IN PROGRESS",
    }
    assert requests[3]["AffectedSOPInstanceUID"] == ROOT + "3"
    assert requests[5]["ActionTypeID"] == 1
    assert (
        requests[5]["dataset"]["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"]
        == ROOT + "99"
    )
    assert (requests[6]["EventTypeID"], requests[6]["AffectedSOPInstanceUID"]) == (7, ROOT + "5")
    assert requests[7]["context"] == PRINT_META
    assert requests[7]["RequestedSOPClassUID"] == FILM_SESSION


def _list(value: Any) -> list[Any]:
    """An AT value as a list: pydicom gives one tag (an int) bare."""
    return [value] if isinstance(value, int) else list(value)


@pytest.mark.anyio
async def test_storage_commitment_report_from_pynetdicom_on_the_same_association(
    pynetdicom_n_scp,
):
    port, log = pynetdicom_n_scp("--report-after-action")
    reports: list[evt.Event] = []
    reported = anyio.Event()

    def on_report(event: evt.Event) -> Any:
        reports.append(event)
        reported.set()
        return 0x0000, ds(TransactionUID=event.event_information.TransactionUID)

    with deadline(TEST_DEADLINE):
        async with n_scu_ae().associate(
            HOST, port, ae_title="PYN_NSCP", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
        ) as assoc:
            status, _ = await assoc.send_n_action(
                commitment_request(ROOT + "50"), 1, COMMITMENT, COMMITMENT_INSTANCE
            )
            assert status.Status == 0x0000
            await reported.wait()
        # The peer logs its report's status once its send_n_event_report() returned.
        await _wait_for_event(log, "report_sent")
    [report] = reports
    assert report.event_type == 1
    assert report.request.MessageID == 4242
    assert report.request.AffectedSOPClassUID == COMMITMENT
    assert report.request.AffectedSOPInstanceUID == COMMITMENT_INSTANCE
    info = report.event_information
    assert info.TransactionUID == ROOT + "50"
    assert info.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ROOT + "99"
    sent = one(read_jsonl(log), "report_sent")
    assert sent["status"]["Status"] == 0x0000 and sent["status"]["EventTypeID"] == 1
    assert sent["reply"] == {"TransactionUID": ROOT + "50"}


async def _wait_for_event(log: Path, name: str, timeout: float = 10.0) -> None:
    """Wait until the pynetdicom peer wrote event `name` to its JSONL `log`.

    Polled: that state is another process's, which sends no event here.
    """
    with anyio.fail_after(timeout):
        while not any(e.get("event") == name for e in read_jsonl(log)):
            await anyio.sleep(0.02)


class Performer:
    """aiodicom EVT_N_* handlers for the pynetdicom SCU's plan."""

    def __init__(self) -> None:
        self.events: list[evt.Event] = []
        self.datasets: list[Dataset | None] = []
        self.assigned = 0

    def _record(self, event: evt.Event) -> Dataset | None:
        self.events.append(event)
        try:
            data: Dataset | None = event.dataset
        except AttributeError:
            data = None
        self.datasets.append(data)
        return data

    def on_get(self, event: evt.Event) -> Any:
        self._record(event)
        if event.request.RequestedSOPInstanceUID.endswith(".112"):
            return 0x0112, None
        full = ds(
            PatientName="Aio^N", PatientID="NAIO", PerformedProcedureStepStatus="DISCONTINUED"
        )
        wanted = event.attribute_identifiers
        return 0x0000, (ds(**{full[t].keyword: full[t].value for t in wanted}) if wanted else full)

    def on_set(self, event: evt.Event) -> Any:
        data = self._record(event)
        if event.request.RequestedSOPInstanceUID.endswith(".107"):
            warning = ds(Status=0x0107)
            warning.AttributeIdentifierList = [0x00100010]
            return warning, data
        return 0x0000, data

    def on_create(self, event: evt.Event) -> Any:
        data = self._record(event) or Dataset()
        if "AffectedSOPInstanceUID" not in event.request:
            self.assigned += 1
            reply = ds(AffectedSOPInstanceUID=f"{ROOT}200.{self.assigned}")
            for elem in data:
                reply.add(elem)
            return 0x0000, reply
        return 0x0000, data

    async def on_action(self, event: evt.Event) -> Any:
        data = self._record(event)
        await anyio.lowlevel.checkpoint()
        return 0x0000, ds(TransactionUID=data.TransactionUID) if data is not None else None

    def on_event_report(self, event: evt.Event) -> Any:
        self._record(event)
        return 0x0000, ds(PatientID="AIO-ACK")

    def on_delete(self, event: evt.Event) -> Any:
        self._record(event)
        if event.request.RequestedSOPInstanceUID.endswith(".666"):
            raise RuntimeError("this handler fails on purpose")
        return 0x0000

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        return [
            (evt.EVT_N_GET, self.on_get),
            (evt.EVT_N_SET, self.on_set),
            (evt.EVT_N_CREATE, self.on_create),
            (evt.EVT_N_ACTION, self.on_action),
            (evt.EVT_N_EVENT_REPORT, self.on_event_report),
            (evt.EVT_N_DELETE, self.on_delete),
        ]


def n_scp_ae() -> AE:
    ae = AE("AIO_NSCP")
    for uid in (MPPS, COMMITMENT, PRINT_META):
        ae.add_supported_context(uid)
    ae.acse_timeout = ae.dimse_timeout = 20.0
    return ae


def step(op: str, class_uid: str, instance_uid: str | None, **more: Any) -> dict[str, Any]:
    """One operation of the pynetdicom SCU's plan."""
    return {"op": op, "class_uid": class_uid, "instance_uid": instance_uid, **more}


def commitment_step(transaction: str, refs: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The plan's Storage Commitment N-ACTION (by default of one CT instance)."""
    if refs is None:
        refs = [{"ReferencedSOPClassUID": CT, "ReferencedSOPInstanceUID": ROOT + "99"}]
    dataset = {"TransactionUID": transaction, "ReferencedSOPSequence": refs}
    return step("n_action", COMMITMENT, COMMITMENT_INSTANCE, action_type=1, dataset=dataset)


def run_plan(port: int, plan: list[dict[str, Any]], tmp_path: Path, run_command: Any) -> Any:
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    out = tmp_path / "n_scu.jsonl"
    cp = run_command(
        [sys.executable, PEER, "scu", "--port", port, "--plan", plan_path, "--out", out],
        timeout=60.0,
    )
    return cp, read_jsonl(out)


@pytest.mark.anyio
async def test_pynetdicom_scu_n_services_to_aiodicom_scp(tmp_path):
    from conftest import run_command

    require_pynetdicom()
    plan = [
        step("n_get", MPPS, ROOT + "1", tags=[0x00100020]),
        step("n_get", MPPS, ROOT + "112"),
        step("n_create", MPPS, None, dataset={"PatientID": "C1"}),
        step("n_create", MPPS, ROOT + "3", dataset={"PatientID": "C2"}),
        step("n_set", MPPS, ROOT + "3", dataset={"PatientID": "S"}),
        step("n_set", MPPS, ROOT + "107", dataset={"PatientID": "W"}),
        commitment_step(ROOT + "4"),
        step("n_event_report", MPPS, ROOT + "5", event_type=3, dataset={"PatientID": "E"}),
        step("n_delete", FILM_SESSION, ROOT + "6", meta_uid=PRINT_META),
        step("n_delete", FILM_SESSION, ROOT + "666", meta_uid=PRINT_META),
    ]
    performer = Performer()
    with deadline(TEST_DEADLINE):
        async with n_scp_ae().start_server((HOST, 0), evt_handlers=performer.handlers) as server:
            cp, events = await in_thread(run_plan, server.port, plan, tmp_path, run_command)
    assert cp.returncode == 0, cp.describe()
    responses = [e for e in events if e["event"] == "n_response"]
    assert [r["op"] for r in responses] == [op["op"] for op in plan]
    status = [r["status"]["Status"] for r in responses]
    assert status == [0, 0x0112, 0, 0, 0, 0x0107, 0, 0, 0, 0x0110]
    get, missing, created, own, set_, warned, action, report, deleted, broken = responses
    assert get["reply"] == {"PatientID": "NAIO"}
    assert missing["reply"] is None
    assert created["command"]["AffectedSOPInstanceUID"] == ROOT + "200.1"
    assert created["reply"] == {"PatientID": "C1"}
    assert own["command"]["AffectedSOPInstanceUID"] == ROOT + "3"
    assert set_["reply"] == {"PatientID": "S"}
    assert warned["reply"] == {"PatientID": "W"}
    assert warned["status"]["AttributeIdentifierList"] == ["00100010"]
    assert action["command"]["ActionTypeID"] == 1 and action["reply"] == {
        "TransactionUID": ROOT + "4"
    }
    assert report["command"]["EventTypeID"] == 3 and report["reply"] == {"PatientID": "AIO-ACK"}
    assert deleted["command"]["AffectedSOPClassUID"] == FILM_SESSION
    assert broken["reply"] is None

    kinds = [e.event.name for e in performer.events]
    assert kinds == [
        "EVT_N_GET",
        "EVT_N_GET",
        "EVT_N_CREATE",
        "EVT_N_CREATE",
        "EVT_N_SET",
        "EVT_N_SET",
        "EVT_N_ACTION",
        "EVT_N_EVENT_REPORT",
        "EVT_N_DELETE",
        "EVT_N_DELETE",
    ]
    assert performer.events[0].attribute_identifiers == [0x00100020]
    assert performer.events[1].attribute_identifiers == []
    action_event = performer.events[6]
    assert action_event.action_type == 1
    assert action_event.action_information.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        ROOT + "99"
    )
    assert performer.events[7].event_type == 3
    for event in performer.events[8:]:
        assert event.context.abstract_syntax == PRINT_META
        assert event.request.RequestedSOPClassUID == FILM_SESSION


@pytest.mark.anyio
async def test_aiodicom_scp_reports_storage_commitment_to_pynetdicom_scu(tmp_path):
    """The SCP answers the N-ACTION, then sends the N-EVENT-REPORT on the same association."""
    from conftest import run_command

    require_pynetdicom()
    plan = [
        commitment_step(ROOT + "60"),
        {"op": "wait_report", "timeout": 20},
    ]
    send, receive = anyio.create_memory_object_stream[tuple[Association, Dataset]](1)
    results: list[tuple[Dataset, Dataset | None]] = []

    async def on_action(event: evt.Event) -> Any:
        await send.send((event.assoc, event.action_information))
        return 0x0000, None

    async def report() -> None:
        assoc, info = await receive.receive()
        result = ds(TransactionUID=info.TransactionUID)
        result.ReferencedSOPSequence = info.ReferencedSOPSequence
        results.append(await assoc.send_n_event_report(result, 1, COMMITMENT, COMMITMENT_INSTANCE))

    with send, receive, deadline(TEST_DEADLINE):
        async with (
            n_scp_ae().start_server(
                (HOST, 0), evt_handlers=[(evt.EVT_N_ACTION, on_action)]
            ) as server,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(report)
            cp, events = await in_thread(run_plan, server.port, plan, tmp_path, run_command)
    assert cp.returncode == 0, cp.describe()
    assert one(events, "n_response", op="n_action")["status"]["Status"] == 0x0000
    received = one(events, "n_event_report_received")
    assert received["EventTypeID"] == 1
    assert received["AffectedSOPClassUID"] == COMMITMENT
    assert received["AffectedSOPInstanceUID"] == COMMITMENT_INSTANCE
    assert received["dataset"]["TransactionUID"] == ROOT + "60"
    assert received["dataset"]["ReferencedSOPSequence"] == [
        {"ReferencedSOPClassUID": CT, "ReferencedSOPInstanceUID": ROOT + "99"}
    ]
    [(status, reply)] = results
    assert (status.Status, status.EventTypeID) == (0x0000, 1)
    assert reply is not None and reply.TransactionUID == ROOT + "60"


# --------------------------------------------------------------------------- dcmtk print


@pytest.fixture
def dcmprscp(peer_process, tmp_path, free_port, require_tool):
    """A running dcmtk ``dcmprscp`` (AE PRTSCP); returns (port, its work directory)."""
    work = tmp_path / "dcmprscp"
    config = write_config(work, scp_port=free_port)
    peer_process(
        [require_tool("dcmprscp"), "-v", "-c", config, "-p", "LOCALSCP"],
        name="dcmprscp",
        ready_port=free_port,
    )
    return free_port, work


def _print_ae() -> AE:
    ae = AE("AIO_PRINTSCU")
    ae.add_requested_context(PRINT_META)
    ae.acse_timeout = ae.dimse_timeout = 20.0
    return ae


@pytest.mark.anyio
async def test_aiodicom_scu_prints_to_dcmprscp(dcmprscp):
    port, work = dcmprscp
    with deadline(TEST_DEADLINE):
        async with _print_ae().associate(HOST, port, ae_title="PRTSCP") as assoc:
            printer, printer_attrs = await assoc.send_n_get(
                [0x21100010, 0x21100020], PRINTER, PRINTER_INSTANCE, meta_uid=PRINT_META
            )
            # dcmprscp knows only those two attributes of the printer.
            unknown, unknown_attrs = await assoc.send_n_get(
                ["PrinterName"], PRINTER, PRINTER_INSTANCE, meta_uid=PRINT_META
            )
            session, session_attrs = await assoc.send_n_create(
                ds(
                    NumberOfCopies=1,
                    PrintPriority="MED",
                    MediumType="PAPER",
                    FilmSessionLabel="aio",
                ),
                FILM_SESSION,
                meta_uid=PRINT_META,
            )
            session_uid = session.AffectedSOPInstanceUID
            modified, modified_attrs = await assoc.send_n_set(
                ds(NumberOfCopies=2, PrintPriority="HIGH"),
                FILM_SESSION,
                session_uid,
                meta_uid=PRINT_META,
            )
            box = ds(
                ImageDisplayFormat="STANDARD\\1,1",
                FilmOrientation="PORTRAIT",
                FilmSizeID="8INX10IN",
            )
            box.ReferencedFilmSessionSequence = Sequence(
                [ds(ReferencedSOPClassUID=FILM_SESSION, ReferencedSOPInstanceUID=session_uid)]
            )
            film_box, box_attrs = await assoc.send_n_create(box, FILM_BOX, meta_uid=PRINT_META)
            [image_box] = box_attrs.ReferencedImageBoxSequence
            image = ds(
                SamplesPerPixel=1,
                PhotometricInterpretation="MONOCHROME2",
                Rows=64,
                Columns=64,
                PixelAspectRatio=[1, 1],
                BitsAllocated=8,
                BitsStored=8,
                HighBit=7,
                PixelRepresentation=0,
            )
            image.PixelData = image_pixels()
            content = ds(ImageBoxPosition=1)
            content.BasicGrayscaleImageSequence = Sequence([image])
            image_set, _ = await assoc.send_n_set(
                content,
                image_box.ReferencedSOPClassUID,
                image_box.ReferencedSOPInstanceUID,
                meta_uid=PRINT_META,
            )
            printed, _ = await assoc.send_n_action(
                None, 1, FILM_BOX, film_box.AffectedSOPInstanceUID, meta_uid=PRINT_META
            )
            box_deleted = await assoc.send_n_delete(
                FILM_BOX, film_box.AffectedSOPInstanceUID, meta_uid=PRINT_META
            )
            session_deleted = await assoc.send_n_delete(
                FILM_SESSION, session_uid, meta_uid=PRINT_META
            )
        # dcmprscp exits when proposed DCMTK's private shutdown SOP class.
        stopper = AE("AIO_PRINTSCU")
        stopper.add_requested_context(SHUTDOWN_SOP_CLASS)
        with pytest.raises(AssociationRejected):
            async with stopper.associate(HOST, port, ae_title="PRTSCP"):
                pass

    assert printer.Status == 0x0000
    assert (printer_attrs.PrinterStatus, printer_attrs.PrinterStatusInfo) == ("NORMAL", "NORMAL")
    assert (unknown.Status, unknown_attrs) == (0x0105, None)  # No such attribute
    assert session.Status == 0x0000 and session_uid
    assert session_attrs.NumberOfCopies == 1 and session_attrs.FilmSessionLabel == "aio"
    assert modified.Status == 0x0000 and modified_attrs.NumberOfCopies == 2
    assert film_box.Status == 0x0000 and film_box.AffectedSOPInstanceUID
    assert image_box.ReferencedSOPClassUID == IMAGE_BOX
    assert image_set.Status == 0x0000
    assert printed.Status == 0x0000
    assert box_deleted.Status == 0x0000 and session_deleted.Status == 0x0000
    # What dcmprscp stored of the print job: the image, pixel for pixel.
    [stored] = sorted((work / "database").glob("HG_*.dcm"))
    hardcopy = dcmread(stored)
    assert (hardcopy.Rows, hardcopy.Columns) == (64, 64)
    assert hardcopy.PixelData == image_pixels()


class PrintSCP:
    """aiodicom Print SCP handlers, enough for dcmtk's dcmprscu."""

    def __init__(self, *, report: bool = False) -> None:
        self.report = report
        self.requests: list[tuple[str, str]] = []  # (event, SOP class)
        self.images: list[Dataset] = []
        self.reports: list[Dataset] = []
        self.sessions: list[Dataset | None] = []

    def _note(self, event: evt.Event) -> str:
        request = event.request
        cls = request.get("AffectedSOPClassUID") or request.get("RequestedSOPClassUID")
        self.requests.append((event.event.name, str(cls)))
        return str(cls)

    def on_get(self, event: evt.Event) -> Any:
        if self._note(event) != PRINTER:
            return 0x0112, None
        return 0x0000, ds(PrinterStatus="NORMAL", PrinterStatusInfo="NORMAL", PrinterName="AIO")

    def on_create(self, event: evt.Event) -> Any:
        cls = self._note(event)
        try:
            attrs = event.attribute_list
        except AttributeError:
            attrs = Dataset()
        reply = ds(AffectedSOPInstanceUID=generate_uid())
        if cls == FILM_SESSION:
            self.sessions.append(attrs)
        elif cls == FILM_BOX:
            reply.ImageDisplayFormat = attrs.ImageDisplayFormat
            reply.ReferencedImageBoxSequence = Sequence(
                [ds(ReferencedSOPClassUID=IMAGE_BOX, ReferencedSOPInstanceUID=generate_uid())]
            )
        else:
            return 0x0118, None  # No such SOP class
        return 0x0000, reply

    def on_set(self, event: evt.Event) -> Any:
        if self._note(event) == IMAGE_BOX:
            self.images.append(event.modification_list.BasicGrayscaleImageSequence[0])
        return 0x0000, Dataset()

    async def on_action(self, event: evt.Event) -> Any:
        self._note(event)
        if self.report:
            # Printer status to the print SCU before the print job is answered.
            status, _ = await event.assoc.send_n_event_report(
                None, 1, PRINTER, PRINTER_INSTANCE, meta_uid=PRINT_META
            )
            self.reports.append(status)
        return 0x0000, None

    def on_delete(self, event: evt.Event) -> Any:
        self._note(event)
        return 0x0000

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        return [
            (evt.EVT_N_GET, self.on_get),
            (evt.EVT_N_CREATE, self.on_create),
            (evt.EVT_N_SET, self.on_set),
            (evt.EVT_N_ACTION, self.on_action),
            (evt.EVT_N_DELETE, self.on_delete),
        ]


@pytest.mark.anyio
@pytest.mark.parametrize("report", [False, True], ids=["plain", "with-event-report"])
async def test_dcmprscu_prints_to_aiodicom_scp(tmp_path, run_dcmtk, report):
    scp = PrintSCP(report=report)
    ae = AE("AIO_PRINT")
    ae.add_supported_context(PRINT_META)
    ae.acse_timeout = ae.dimse_timeout = 20.0
    with deadline(TEST_DEADLINE):
        async with ae.start_server((HOST, 0), evt_handlers=scp.handlers) as server:
            config = write_config(tmp_path, printer_port=server.port)
            image = write_image(tmp_path / "image.dcm")
            spooled = await in_thread(run_dcmtk, "dcmpsprt", "-c", config, "-p", "REMOTE", image)
            assert spooled.returncode == 0, spooled.describe()
            [job] = sorted((tmp_path / "database").glob("SP_*.dcm"))
            cp = await in_thread(
                run_dcmtk, "dcmprscu", "-v", "-c", config, "-p", "REMOTE", "--copies", "3", job
            )
    # dcmprscu exits 0 whatever happened: its errors are "E:" lines.
    errors = [line for line in (cp.stdout + cp.stderr).splitlines() if re.match(r"^E:", line)]
    assert cp.returncode == 0 and not errors, cp.describe()
    assert scp.requests == [
        ("EVT_N_GET", PRINTER),
        ("EVT_N_CREATE", FILM_SESSION),
        ("EVT_N_CREATE", FILM_BOX),
        ("EVT_N_SET", IMAGE_BOX),
        ("EVT_N_ACTION", FILM_BOX),
        ("EVT_N_DELETE", FILM_BOX),
        ("EVT_N_DELETE", FILM_SESSION),
    ]
    assert scp.sessions[0].NumberOfCopies == 3
    # dcmpsprt renders the image for the printer (scaled, 12 bits): the
    # hardcopy it keeps is what dcmprscu sends, pixel for pixel.
    [hardcopy_file] = sorted((tmp_path / "database").glob("HG_*.dcm"))
    hardcopy = dcmread(hardcopy_file)
    [received] = scp.images
    assert (received.Rows, received.Columns) == (hardcopy.Rows, hardcopy.Columns)
    assert received.BitsStored == hardcopy.BitsStored
    assert received.PixelData == hardcopy.PixelData
    if report:
        [status] = scp.reports
        assert (status.Status, status.EventTypeID) == (0x0000, 1)
    else:
        assert scp.reports == []


# --------------------------------------------------------------------------- the Q/R SCP


@pytest.mark.anyio
async def test_pynetdicom_scu_storage_commitment_with_aiodicom_qrscp(tmp_path):
    """A pynetdicom modality asks the aiodicom Q/R SCP to commit to what it
    stored; the result comes back on the same association."""
    from conftest import run_command

    from aiodicom.qrscp import Archive, setup_ae
    from aiodicom.testing import make_dataset

    require_pynetdicom()
    stored = [make_dataset(), make_dataset()]
    missing = ROOT + "404"
    refs = [
        {"ReferencedSOPClassUID": CT, "ReferencedSOPInstanceUID": ds.SOPInstanceUID}
        for ds in stored
    ]
    refs.append({"ReferencedSOPClassUID": CT, "ReferencedSOPInstanceUID": missing})
    plan = [
        commitment_step(ROOT + "70", refs),
        {"op": "wait_report", "timeout": 20},
    ]
    archive = await Archive.open(tmp_path / "store", ae_title="QRSCP")
    # The report task counts a report once it has the answer: it signals each request done.
    reports_done = Changes()
    report = archive._report

    async def report_then_signal(job: Any) -> None:
        try:
            await report(job)
        finally:
            reports_done.changed()

    archive._report = report_then_signal
    with deadline(TEST_DEADLINE):
        async with archive, anyio.create_task_group() as tg:
            await tg.start(archive.serve_commitments)
            ae = setup_ae(AE("QRSCP"), archive)
            async with ae.start_server((HOST, 0), evt_handlers=archive.handlers()) as server:
                scu = AE("AIO_STORE")
                scu.add_requested_context(CT)
                async with scu.associate(HOST, server.port) as assoc:
                    for ds in stored:
                        assert (await assoc.send_c_store(ds)).Status == 0x0000
                cp, events = await in_thread(run_plan, server.port, plan, tmp_path, run_command)
                # counted once the report's answer is in
                await reports_done.wait_until(
                    lambda: archive.commitments_reported >= 1 or cp.returncode != 0,
                    "the report's answer counted",
                    10,
                )
            tg.cancel_scope.cancel()
    assert cp.returncode == 0, cp.describe()
    assert one(events, "n_response", op="n_action")["status"]["Status"] == 0x0000
    received = one(events, "n_event_report_received")
    assert received["EventTypeID"] == 2  # one instance is missing
    assert received["AffectedSOPInstanceUID"] == COMMITMENT_INSTANCE
    result = received["dataset"]
    assert result["TransactionUID"] == ROOT + "70"
    assert result["ReferencedSOPSequence"] == refs[:2]
    assert result["FailedSOPSequence"] == [
        {"ReferencedSOPClassUID": CT, "ReferencedSOPInstanceUID": missing, "FailureReason": "274"}
    ]
    assert archive.commitments_reported == 1
