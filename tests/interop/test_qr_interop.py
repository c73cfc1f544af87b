"""Interop of Query/Retrieve (C-FIND, C-GET, C-MOVE, C-CANCEL) with real peers, both ways.

aiodicom runs in the test process (asyncio backend); the peers -- dcmtk's
``findscu``/``getscu``/``movescu``/``dcmqrscp``/``storescp`` and
``tests/peers/pynetdicom_peer.py`` (``scp --qr-dir`` / ``qrscu``) -- run as
subprocesses on 127.0.0.1. Two data sets (``_qr_data``): a generated tree
(3 patients x 2 studies x 2 series x 3 instances) and pydicom's bundled
``dicomdirtests`` files.

- dcmtk findscu/getscu/movescu -> aiodicom SCP (handlers over the tree, in
  memory) and -> the ``aiodicom qrscp`` application (filled by storescu)
- pynetdicom's SCU -> the ``aiodicom qrscp`` application: filled by its
  C-STORE, then C-FIND at every level, C-GET and C-MOVE
- aiodicom SCU -> dcmtk dcmqrscp (filled by storescu): C-FIND at every level
  of Study Root and Patient Root, C-GET, C-MOVE to an aiodicom storage SCP, to
  dcmtk storescp and to the requesting AE itself, C-CANCEL
- aiodicom SCU -> pynetdicom Q/R SCP: C-FIND/C-GET/C-MOVE; C-CANCEL by leaving
  ``async with`` early, by cancelling the iterating task and by a bare
  ``break``: pynetdicom's handler sees ``is_cancelled``, the association stays
  usable (a C-ECHO afterwards succeeds)
- pynetdicom SCU -> aiodicom SCP: C-FIND/C-GET/C-MOVE; pynetdicom cancels after
  N responses: aiodicom's handler sees ``event.is_cancelled``, the final status
  is 0xFE00

C-FIND results are compared with what ``_qr_data`` computes from the files
(the same unique keys, the requested values); retrieved instances with their
sources (the data set bytes where the instance is sent from its file, element
by element where a peer decodes and re-encodes it).

Every blocking call runs in a worker thread; every test body is bounded by
``anyio.fail_after`` and every subprocess by its own timeout. A handler that
must see a C-CANCEL stops after N responses and polls ``event.is_cancelled``
(bounded): that is the only way an SCP handler learns of it.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from _aio import Changes, in_thread
from _aio import deadline as _deadline
from _qr_data import (
    LEVEL_KEYS,
    LEVELS,
    STORAGE_CLASSES,
    UNIQUE,
    Instance,
    dicomdir_tree,
    expected_keys,
    find_identifiers,
    generate_tree,
    query,
    select_instances,
)
from _storage_data import assert_same_instance, dataset_bytes, dataset_diff
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aiodicom import AE, build_role, evt, sop_class

HOST = "127.0.0.1"
TEST_DEADLINE = 60.0


def deadline(seconds: float = TEST_DEADLINE) -> Any:
    """A hang guard on one test body (this module's bound)."""
    return _deadline(seconds)


PEER_TIMEOUT = 30.0
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

MODELS = {
    "study": {
        "find": sop_class.StudyRootQueryRetrieveInformationModelFind,
        "get": sop_class.StudyRootQueryRetrieveInformationModelGet,
        "move": sop_class.StudyRootQueryRetrieveInformationModelMove,
        "dcmtk": "-S",
    },
    "patient": {
        "find": sop_class.PatientRootQueryRetrieveInformationModelFind,
        "get": sop_class.PatientRootQueryRetrieveInformationModelGet,
        "move": sop_class.PatientRootQueryRetrieveInformationModelMove,
        "dcmtk": "-P",
    },
}
ALL_MODELS = [uid for m in MODELS.values() for k, uid in m.items() if k != "dcmtk"]

# --------------------------------------------------------------------------- helpers


def text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def check_matches(
    instances: list[Instance],
    ident: Dataset,
    responses: list[Dataset],
    *,
    strict: bool = True,
) -> None:
    """The responses are the expected entities, one each, with the requested values.

    `strict`: every requested key at or above the level is in every response
    (dcmqrscp leaves out keys it does not index, so not for it)."""
    level = str(ident.QueryRetrieveLevel)
    unique = UNIQUE[level]
    got = sorted(text(r.get(unique)) for r in responses)
    assert got == expected_keys(instances, ident), (
        f"{level} query {ident}\nreturned {got}\nexpected {expected_keys(instances, ident)}"
    )
    entity = {i.key(level): i for i in instances}
    allowed = {kw for lvl in LEVELS[: LEVELS.index(level) + 1] for kw in LEVEL_KEYS[lvl]}
    for rsp in responses:
        assert text(rsp.get("QueryRetrieveLevel")) == level
        inst = entity[text(rsp.get(unique))]
        for elem in ident:
            kw = elem.keyword
            if kw not in allowed:
                continue
            if kw not in rsp:
                assert not strict, f"{kw} missing from response\n{rsp}"
                continue
            assert text(rsp[kw].value) == inst.attrs[kw].strip(), f"{kw}: {rsp}\nvs {inst}"


def dcmtk_keys(ident: Dataset) -> list[str]:
    """findscu/getscu/movescu ``-k`` options for an identifier."""
    out = []
    for elem in ident:
        value = text(elem.value)
        out += ["-k", f"{elem.keyword}={value}" if value else elem.keyword]
    return out


def query_cases(instances: list[Instance]) -> list[tuple[str, Dataset]]:
    """(model, identifier) at every level of both models, valued from `instances`."""
    first = instances[0]
    a = first.attrs
    prefix = a["PatientName"][:3] + "*"
    date = a["StudyDate"]
    return [
        ("patient", query("PATIENT", PatientID="*", PatientName="", PatientSex="")),
        (
            "patient",
            query("STUDY", PatientID=a["PatientID"], StudyInstanceUID="", StudyDate="", StudyID=""),
        ),
        (
            "patient",
            query(
                "SERIES",
                PatientID=a["PatientID"],
                StudyInstanceUID=a["StudyInstanceUID"],
                SeriesInstanceUID="",
                Modality="",
                SeriesNumber="",
            ),
        ),
        (
            "patient",
            query(
                "IMAGE",
                PatientID=a["PatientID"],
                StudyInstanceUID=a["StudyInstanceUID"],
                SeriesInstanceUID=a["SeriesInstanceUID"],
                SOPInstanceUID="",
                InstanceNumber="",
            ),
        ),
        (
            "study",
            query(
                "STUDY",
                PatientName=prefix,
                PatientID="",
                StudyInstanceUID="",
                StudyDate="",
                AccessionNumber="",
                StudyDescription="",
            ),
        ),
        ("study", query("STUDY", StudyDate=f"{date}-{date}", StudyInstanceUID="", PatientID="")),
        (
            "study",
            query(
                "SERIES",
                StudyInstanceUID=a["StudyInstanceUID"],
                SeriesInstanceUID="",
                Modality="",
                SeriesNumber="",
            ),
        ),
        (
            "study",
            query(
                "IMAGE",
                StudyInstanceUID=a["StudyInstanceUID"],
                SeriesInstanceUID=a["SeriesInstanceUID"],
                SOPInstanceUID="",
                SOPClassUID="",
                InstanceNumber="",
            ),
        ),
    ]


CASE_IDS = [
    "patient-PATIENT",
    "patient-STUDY",
    "patient-SERIES",
    "patient-IMAGE",
    "study-STUDY-name",
    "study-STUDY-date",
    "study-SERIES",
    "study-IMAGE",
]


def retrieve_cases(instances: list[Instance]) -> dict[str, tuple[str, Dataset]]:
    """(model, identifier) of C-GET/C-MOVE at each level."""
    a = instances[0].attrs
    return {
        "PATIENT": ("patient", query("PATIENT", PatientID=a["PatientID"])),
        "STUDY": ("study", query("STUDY", StudyInstanceUID=a["StudyInstanceUID"])),
        "SERIES": (
            "study",
            query(
                "SERIES",
                StudyInstanceUID=a["StudyInstanceUID"],
                SeriesInstanceUID=a["SeriesInstanceUID"],
            ),
        ),
        "IMAGE": (
            "study",
            query(
                "IMAGE",
                StudyInstanceUID=a["StudyInstanceUID"],
                SeriesInstanceUID=a["SeriesInstanceUID"],
                SOPInstanceUID=a["SOPInstanceUID"],
            ),
        ),
    }


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> list[Instance]:
    return generate_tree(tmp_path_factory.mktemp("qr") / "tree")


@pytest.fixture(scope="session")
def dicomdir() -> list[Instance]:
    return dicomdir_tree()


@pytest.fixture(params=["tree", "dicomdir"])
def data(request: pytest.FixtureRequest) -> list[Instance]:
    return request.getfixturevalue(request.param)


def folder_of(instances: list[Instance]) -> list[Path]:
    return [i.path for i in instances]


# --------------------------------------------------------------------------- aiodicom sides


@dataclass
class Stored:
    """One C-STORE (a C-GET or C-MOVE sub-operation) as an aiodicom handler saw it."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    data: bytes
    message_id: int | None
    move_originator_ae: str | None
    move_originator_id: int | None
    calling_ae: str


@dataclass
class CancelWatch:
    """An SCU's side of a cancelled request: the C-CANCEL-RQs it sends and the
    final (not pending) responses it receives to Message ID ``msg_id``."""

    msg_id: int
    cancels: list[Dataset] = field(default_factory=list)
    finals: list[Dataset] = field(default_factory=list)

    def handlers(self) -> list[Any]:
        return [(evt.EVT_DIMSE_SENT, self._sent), (evt.EVT_DIMSE_RECV, self._received)]

    def _sent(self, event: evt.Event) -> None:
        if event.message.command.get("CommandField") == 0x0FFF:
            self.cancels.append(event.message.command)

    def _received(self, event: evt.Event) -> None:
        command = event.message.command
        final = command.get("Status") not in (None, 0xFF00, 0xFF01)
        if command.get("MessageIDBeingRespondedTo") == self.msg_id and final:
            self.finals.append(command)


@dataclass
class StoreRecorder:
    """EVT_C_STORE handler that keeps every instance (its data set bytes) in memory."""

    received: list[Stored] = field(default_factory=list)
    released: int = 0
    #: Signalled after each record: what wait_until() awaits.
    changes: Changes = field(default_factory=Changes, repr=False, compare=False)

    async def on_store(self, event: evt.Event) -> int:
        req = event.request
        assert event.context is not None
        self.received.append(
            Stored(
                sop_class_uid=str(req.AffectedSOPClassUID),
                sop_instance_uid=str(req.AffectedSOPInstanceUID),
                transfer_syntax=str(event.context.transfer_syntax),
                data=bytes(event.encoded_dataset()),
                message_id=event.message_id,
                move_originator_ae=text(req.get("MoveOriginatorApplicationEntityTitle")) or None,
                move_originator_id=req.get("MoveOriginatorMessageID"),
                calling_ae=event.assoc.requestor.ae_title,
            )
        )
        self.changes.changed()
        return 0x0000

    def on_released(self, event: evt.Event) -> None:
        self.released += 1
        self.changes.changed()

    async def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait until `predicate` holds, re-checked after each record (at most 10 s)."""
        await self.changes.wait_until(predicate, what, 10.0)

    def handlers(self) -> list[Any]:
        return [(evt.EVT_C_STORE, self.on_store), (evt.EVT_RELEASED, self.on_released)]

    def by_uid(self) -> dict[str, Stored]:
        return {s.sop_instance_uid: s for s in self.received}


def check_retrieved(
    received: dict[str, Stored], expected: list[Instance], *, same_bytes: bool = True
) -> None:
    """Exactly the expected instances arrived, each equal to its source."""
    assert sorted(received) == sorted(i.sop_instance_uid for i in expected)
    for inst in expected:
        got = received[inst.sop_instance_uid]
        assert got.sop_class_uid == inst.sop_class_uid
        if same_bytes and got.transfer_syntax == inst.transfer_syntax:
            assert got.data == dataset_bytes(inst.path), f"{inst.path}: data set bytes differ"
        else:
            diffs = dataset_diff(dcmread(inst.path), dcmread(_as_file(got)))
            if got.transfer_syntax == ImplicitVRLittleEndian != inst.transfer_syntax:
                # a private element sent in Implicit VR gets its VR from the
                # private dictionary when decoded (PS3.5 7.8.1: its VR is lost)
                diffs = [d for d in diffs if not _private_vr_diff(d)]
            assert not diffs, f"{inst.path} (received in {got.transfer_syntax}):\n" + "\n".join(
                diffs[:20]
            )


def _private_vr_diff(diff: str) -> bool:
    match = re.match(r"\(([0-9A-Fa-f]{4}),[0-9A-Fa-f]{4}\).*: VR \w\w != \w\w$", diff)
    return match is not None and int(match.group(1), 16) % 2 == 1


def _as_file(got: Stored) -> io.BytesIO:
    """A received instance as a Part 10 file (to decode it in its transfer syntax)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = got.sop_class_uid
    meta.MediaStorageSOPInstanceUID = got.sop_instance_uid
    meta.TransferSyntaxUID = got.transfer_syntax
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    buf.write(got.data)
    buf.seek(0)
    return buf


def check_files(files: list[Path], expected: list[Instance], *, same_bytes: bool = True) -> None:
    """Part 10 files a peer wrote are exactly the expected instances."""
    by_uid = {}
    for path in files:
        by_uid[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    assert sorted(by_uid) == sorted(i.sop_instance_uid for i in expected), files
    for inst in expected:
        path = by_uid[inst.sop_instance_uid]
        if same_bytes:
            assert dataset_bytes(path) == dataset_bytes(inst.path), f"{path} != {inst.path}"
        else:
            assert_same_instance(inst.path, path)


@dataclass
class QRHandlers:
    """An in-process aiodicom Q/R SCP over `instances` (in memory), recording
    every request. `hold_after`: after that many responses a handler waits
    (bounded) until ``event.is_cancelled``. `send`: sub-operations yield the
    file's path, or a decoded Dataset. `pace`: a pause before each match."""

    instances: list[Instance]
    destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    hold_after: int | None = None
    send: str = "path"
    #: Seconds before each C-FIND match (a slow source, a database say).
    pace: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)

    def _record(self, event: evt.Event, service: str) -> dict[str, Any]:
        rec = {
            "service": service,
            "calling_ae": event.assoc.requestor.ae_title,
            "message_id": event.message_id,
            "model": str(event.request.AffectedSOPClassUID),
            "identifier": event.identifier,
            "move_destination": event.move_destination,
            "sent": 0,
            "cancel_seen": False,
            "finished": False,
        }
        self.requests.append(rec)
        return rec

    async def _hold(self, event: evt.Event, rec: dict[str, Any]) -> None:
        if self.hold_after is not None and rec["sent"] == self.hold_after:
            with anyio.move_on_after(10):
                while not event.is_cancelled:
                    await anyio.sleep(0.005)
        if event.is_cancelled:
            rec["cancel_seen"] = True

    async def on_find(self, event: evt.Event) -> Any:
        rec = self._record(event, "find")
        for rsp in find_identifiers(self.instances, event.identifier):
            if self.pace:
                await anyio.sleep(self.pace)
            await self._hold(event, rec)
            if rec["cancel_seen"]:
                yield 0xFE00, None
                return
            yield 0xFF00, rsp
            rec["sent"] += 1
        rec["finished"] = True

    async def _sub_operations(self, event: evt.Event, rec: dict[str, Any]) -> Any:
        selected = select_instances(self.instances, event.identifier)
        rec["matches"] = [i.sop_instance_uid for i in selected]
        yield len(selected)
        for inst in selected:
            await self._hold(event, rec)
            if rec["cancel_seen"]:
                yield 0xFE00, None
                return
            item = inst.path if self.send == "path" else await in_thread(dcmread, inst.path)
            yield 0xFF00, item
            rec["sent"] += 1
        rec["finished"] = True

    async def on_get(self, event: evt.Event) -> Any:
        rec = self._record(event, "get")
        async for item in self._sub_operations(event, rec):
            yield item

    async def on_move(self, event: evt.Event) -> Any:
        rec = self._record(event, "move")
        dest = self.destinations.get(text(event.move_destination))
        if dest is None:
            yield None, None
            return
        yield dest
        async for item in self._sub_operations(event, rec):
            yield item

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
        ]


def qr_scp_ae(title: str = "AIOQR") -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = 10.0
    ae.dimse_timeout = 20.0
    ae.add_supported_context(sop_class.Verification)
    for uid in ALL_MODELS:
        ae.add_supported_context(uid)
    for uid in STORAGE_CLASSES:
        ae.add_supported_context(uid, SYNTAXES, scu_role=True, scp_role=True)
    return ae


def qr_scu_ae(title: str = "AIOSCU") -> AE:
    """Requests every Q/R model, Verification and (for C-GET) the storage classes."""
    ae = AE(ae_title=title)
    ae.acse_timeout = 10.0
    ae.dimse_timeout = 20.0
    ae.add_requested_context(sop_class.Verification)
    for uid in ALL_MODELS:
        ae.add_requested_context(uid)
    for uid in STORAGE_CLASSES:
        ae.add_requested_context(uid, SYNTAXES)
    return ae


def get_roles() -> list[Any]:
    return [build_role(uid, scp_role=True) for uid in STORAGE_CLASSES]


def storage_ae(title: str) -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = 10.0
    ae.dimse_timeout = 20.0
    ae.add_supported_context(sop_class.Verification)
    for uid in STORAGE_CLASSES:
        ae.add_supported_context(uid, SYNTAXES)
    return ae


async def collect(responses: Any) -> tuple[list[Dataset], list[Dataset], Dataset]:
    """(pending statuses, their identifiers, final status) of a C-FIND/GET/MOVE."""
    pending: list[Dataset] = []
    identifiers: list[Dataset] = []
    final = None
    async for status, identifier in responses:
        if int(status.Status) in (0xFF00, 0xFF01):
            pending.append(status)
            if identifier is not None:
                identifiers.append(identifier)
        else:
            assert final is None, "a response after the final one"
            final = status
    assert final is not None, "no final response"
    return pending, identifiers, final


def read_responses(directory: Path) -> list[Dataset]:
    """The responses findscu -X extracted (rsp0001.dcm, ...)."""
    return [dcmread(p) for p in sorted(directory.glob("rsp*.dcm"))]


# =========================================================================== 1.
# dcmtk findscu / getscu / movescu -> aiodicom SCP (in-process handlers)


@pytest.mark.anyio
@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
async def test_findscu_to_aiodicom_scp(run_dcmtk, tmp_path, data, case):
    model, ident = query_cases(data)[case]
    handlers = QRHandlers(data)
    ae = qr_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers.handlers()) as server:
            cp = await in_thread(
                run_dcmtk,
                "findscu",
                "-v",
                MODELS[model]["dcmtk"],
                "-aet",
                "FINDSCU",
                "-aec",
                "AIOQR",
                "-X",
                "-od",
                tmp_path,
                *dcmtk_keys(ident),
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
    assert cp.returncode == 0, cp.describe()
    assert "Received Final Find Response (Success)" in cp.stdout + cp.stderr, cp.describe()
    check_matches(data, ident, read_responses(tmp_path))
    (rec,) = handlers.requests
    assert rec["calling_ae"] == "FINDSCU"
    assert rec["model"] == MODELS[model]["find"]
    assert rec["finished"]


@pytest.mark.anyio
async def test_findscu_cancel_to_aiodicom_scp(run_dcmtk, tmp_path, tree):
    ident = query("IMAGE", PatientID="*", SOPInstanceUID="")
    handlers = QRHandlers(tree, hold_after=2)
    ae = qr_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers.handlers()) as server:
            cp = await in_thread(
                run_dcmtk,
                "findscu",
                "-v",
                "-S",
                "-aec",
                "AIOQR",
                "--cancel",
                "2",
                "-X",
                "-od",
                tmp_path,
                *dcmtk_keys(ident),
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0, cp.describe()
    assert "Sending Cancel Request" in out, cp.describe()
    assert re.search(r"Final Find Response \(Cancel", out), out
    assert len(read_responses(tmp_path)) == 2
    (rec,) = handlers.requests
    assert rec["cancel_seen"], "the aiodicom handler never saw event.is_cancelled"
    assert rec["sent"] == 2 and not rec["finished"]


@pytest.mark.anyio
@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
async def test_getscu_to_aiodicom_scp(run_dcmtk, tmp_path, data, level):
    model, ident = retrieve_cases(data)[level]
    expected = select_instances(data, ident)
    handlers = QRHandlers(data)
    ae = qr_scp_ae()
    out_dir = tmp_path / "got"
    out_dir.mkdir()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers.handlers()) as server:
            cp = await in_thread(
                run_dcmtk,
                "getscu",
                "-v",
                MODELS[model]["dcmtk"],
                "-aet",
                "GETSCU",
                "-aec",
                "AIOQR",
                "-od",
                out_dir,
                *dcmtk_keys(ident),
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
    assert cp.returncode == 0, cp.describe()
    out = cp.stdout + cp.stderr
    assert "Received C-GET Response (Success)" in out, cp.describe()
    assert re.search(rf"Number of Completed Suboperations\s*:\s*{len(expected)}\b", out), out
    check_files(sorted(out_dir.iterdir()), expected)
    (rec,) = handlers.requests
    assert rec["sent"] == len(expected) and rec["finished"]


@pytest.mark.anyio
async def test_getscu_to_aiodicom_scp_datasets(run_dcmtk, tmp_path, tree):
    """The handler yields decoded Datasets instead of paths: aiodicom encodes them."""
    _model, ident = retrieve_cases(tree)["STUDY"]
    expected = select_instances(tree, ident)
    handlers = QRHandlers(tree, send="dataset")
    ae = qr_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers.handlers()) as server:
            cp = await in_thread(
                run_dcmtk,
                "getscu",
                "-S",
                "-aec",
                "AIOQR",
                "-od",
                tmp_path,
                *dcmtk_keys(ident),
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
    assert cp.returncode == 0, cp.describe()
    check_files(sorted(tmp_path.iterdir()), expected, same_bytes=False)


@pytest.mark.anyio
@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
async def test_movescu_to_aiodicom_scp(run_dcmtk, dcmtk_storescp, tree, level):
    model, ident = retrieve_cases(tree)[level]
    expected = select_instances(tree, ident)
    handlers = QRHandlers(tree, destinations={"STORESCP": dcmtk_storescp.address})
    ae = qr_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers.handlers()) as server:
            cp = await in_thread(
                run_dcmtk,
                "movescu",
                "-v",
                MODELS[model]["dcmtk"],
                "-aet",
                "MOVESCU",
                "-aec",
                "AIOQR",
                "-aem",
                "STORESCP",
                *dcmtk_keys(ident),
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
    assert cp.returncode == 0, cp.describe()
    assert "Received Final Move Response (Success)" in cp.stdout + cp.stderr, cp.describe()
    files = await in_thread(dcmtk_storescp.wait_for_files, len(expected))
    check_files(files, expected)
    (rec,) = handlers.requests
    assert text(rec["move_destination"]) == "STORESCP"


@pytest.mark.anyio
async def test_movescu_unknown_destination_to_aiodicom_scp(run_dcmtk, tree):
    _model, ident = retrieve_cases(tree)["STUDY"]
    handlers = QRHandlers(tree, destinations={})
    ae = qr_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers.handlers()) as server:
            cp = await in_thread(
                run_dcmtk,
                "movescu",
                "-v",
                "-S",
                "-aec",
                "AIOQR",
                "-aem",
                "NOWHERE",
                *dcmtk_keys(ident),
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
    out = cp.stdout + cp.stderr
    assert cp.returncode != 0, cp.describe()
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in out, cp.describe()


@pytest.mark.anyio
async def test_movescu_cancel_to_aiodicom_scp(run_dcmtk, dcmtk_storescp, tree):
    _model, ident = retrieve_cases(tree)["PATIENT"]
    handlers = QRHandlers(tree, destinations={"STORESCP": dcmtk_storescp.address}, hold_after=2)
    ae = qr_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers.handlers()) as server:
            cp = await in_thread(
                run_dcmtk,
                "movescu",
                "-v",
                "-P",
                "-aec",
                "AIOQR",
                "-aem",
                "STORESCP",
                "--cancel",
                "2",
                *dcmtk_keys(ident),
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
    out = cp.stdout + cp.stderr
    assert "Sending Cancel Request" in out, cp.describe()
    assert re.search(r"Final Move Response \(.*Cancel", out), cp.describe()
    (rec,) = handlers.requests
    assert rec["cancel_seen"] and rec["sent"] == 2
    await in_thread(dcmtk_storescp.wait_for_files, 2)


# --------------------------------------------------------------------------- the qrscp app


@pytest.fixture
def aiodicom_qrscp(peer_process, tmp_path_factory, dcmtk_storescp, free_port):
    """``python -m aiodicom qrscp -od DIR --dest STORESCP=... -aet QRSCP 0``,
    filled with the generated tree by storescu."""
    store = tmp_path_factory.mktemp("qrscp")
    port = free_port
    proc = peer_process(
        [
            sys.executable,
            "-m",
            "aiodicom",
            "qrscp",
            "-od",
            store,
            "--dest",
            f"STORESCP={HOST}:{dcmtk_storescp.port}",
            "-aet",
            "QRSCP",
            port,
        ],
        name="aiodicom-qrscp",
        ready_port=port,
    )
    return proc, port, dcmtk_storescp


@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_dcmtk_tools_to_aiodicom_qrscp_find(aiodicom_qrscp, run_dcmtk, tmp_path, tree, case):
    _proc, port, _storescp = aiodicom_qrscp
    cp = run_dcmtk("storescu", "-aec", "QRSCP", "+sd", "+r", HOST, port, *folder_of(tree))
    assert cp.returncode == 0, cp.describe()
    model, ident = query_cases(tree)[case]
    cp = run_dcmtk(
        "findscu",
        "-v",
        MODELS[model]["dcmtk"],
        "-aec",
        "QRSCP",
        "-X",
        "-od",
        tmp_path,
        *dcmtk_keys(ident),
        HOST,
        port,
        timeout=PEER_TIMEOUT,
    )
    assert cp.returncode == 0, cp.describe()
    assert "Received Final Find Response (Success)" in cp.stdout + cp.stderr, cp.describe()
    check_matches(tree, ident, read_responses(tmp_path))


@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
def test_dcmtk_tools_to_aiodicom_qrscp_get_move(aiodicom_qrscp, run_dcmtk, tmp_path, tree, level):
    _proc, port, storescp = aiodicom_qrscp
    cp = run_dcmtk("storescu", "-aec", "QRSCP", "+sd", "+r", HOST, port, *folder_of(tree))
    assert cp.returncode == 0, cp.describe()
    model, ident = retrieve_cases(tree)[level]
    expected = select_instances(tree, ident)
    cp = run_dcmtk(
        "getscu",
        "-v",
        MODELS[model]["dcmtk"],
        "-aec",
        "QRSCP",
        "-od",
        tmp_path,
        *dcmtk_keys(ident),
        HOST,
        port,
        timeout=PEER_TIMEOUT,
    )
    assert cp.returncode == 0, cp.describe()
    check_files(sorted(tmp_path.iterdir()), expected)
    cp = run_dcmtk(
        "movescu",
        "-v",
        MODELS[model]["dcmtk"],
        "-aec",
        "QRSCP",
        "-aem",
        "STORESCP",
        *dcmtk_keys(ident),
        HOST,
        port,
        timeout=PEER_TIMEOUT,
    )
    assert cp.returncode == 0, cp.describe()
    assert "Received Final Move Response (Success)" in cp.stdout + cp.stderr, cp.describe()
    check_files(storescp.wait_for_files(len(expected)), expected)


@pytest.fixture
def pynetdicom_filled_qrscp(aiodicom_qrscp, run_pynetdicom_scu, tree):
    """The ``aiodicom qrscp`` application filled with the generated tree by
    pynetdicom's SCU (each file sent as it is: ``--chunked``); its port and
    the C-MOVE destination."""
    _proc, port, storescp = aiodicom_qrscp
    stores = [arg for path in folder_of(tree) for arg in ("--store", path)]
    cp, events = run_pynetdicom_scu("--port", port, "--called", "QRSCP", "--chunked", *stores)
    assert cp.returncode == 0, f"{cp.describe()}\n{events}"
    statuses = [e["status"] for e in events if e["event"] == "c_store"]
    assert statuses == [0x0000] * len(tree), events
    return port, storescp


@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_pynetdicom_to_aiodicom_qrscp_find(
    pynetdicom_filled_qrscp, run_pynetdicom_qrscu, tree, case
):
    port, _storescp = pynetdicom_filled_qrscp
    model, ident = query_cases(tree)[case]
    cp, events = run_pynetdicom_qrscu(
        "--port", port, "--called", "QRSCP", "--service", "find", "--model", model,
        *pyn_keys(ident),
    )  # fmt: skip
    assert cp.returncode == 0, f"{cp.describe()}\n{events}"
    rsps = [e for e in events if e["event"] == "find_rsp"]
    assert rsps[-1]["status"] == 0x0000, rsps[-1]
    assert {e["status"] for e in rsps[:-1]} <= {0xFF00, 0xFF01}, rsps
    check_matches(tree, ident, [pyn_identifier(e["identifier"]) for e in rsps[:-1]])


@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
def test_pynetdicom_to_aiodicom_qrscp_get_move(
    pynetdicom_filled_qrscp, run_pynetdicom_qrscu, tmp_path, tree, level
):
    port, storescp = pynetdicom_filled_qrscp
    model, ident = retrieve_cases(tree)[level]
    expected = select_instances(tree, ident)
    cp, events = run_pynetdicom_qrscu(
        "--port", port, "--called", "QRSCP", "--service", "get", "--model", model,
        "--store-dir", tmp_path, *pyn_keys(ident),
    )  # fmt: skip
    assert cp.returncode == 0, f"{cp.describe()}\n{events}"
    rsps = [e for e in events if e["event"] == "get_rsp"]
    assert rsps[-1]["status"] == 0x0000 and rsps[-1]["completed"] == len(expected), rsps[-1]
    assert [e["remaining"] for e in rsps[:-1]] == list(range(len(expected) - 1, -1, -1))
    check_files(sorted(tmp_path.iterdir()), expected)
    cp, events = run_pynetdicom_qrscu(
        "--port", port, "--called", "QRSCP", "--service", "move", "--model", model,
        "--move-dest", "STORESCP", *pyn_keys(ident),
    )  # fmt: skip
    assert cp.returncode == 0, f"{cp.describe()}\n{events}"
    rsps = [e for e in events if e["event"] == "move_rsp"]
    assert rsps[-1]["status"] == 0x0000 and rsps[-1]["completed"] == len(expected), rsps[-1]
    check_files(storescp.wait_for_files(len(expected)), expected)


# =========================================================================== 2.
# aiodicom SCU -> dcmtk dcmqrscp (filled by C-STORE)


@pytest.mark.anyio
@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
async def test_aiodicom_find_to_dcmqrscp(dcmqrscp_factory, data, case):
    qr = await in_thread(dcmqrscp_factory, fill=folder_of(data))
    model, ident = query_cases(data)[case]
    ae = qr_scu_ae()
    with deadline():
        async with ae.associate(HOST, qr.port, ae_title=qr.ae_title) as assoc:
            _pending, identifiers, final = await collect(
                assoc.send_c_find(ident, MODELS[model]["find"])
            )
    assert int(final.Status) == 0x0000, f"{final}\n{qr.process.describe()}"
    check_matches(data, ident, identifiers, strict=False)


@pytest.mark.anyio
async def test_aiodicom_find_cancel_to_dcmqrscp(dcmqrscp_factory, tree):
    """Leave ``async with`` after one match: C-CANCEL, drained, and the
    association stays usable."""
    qr = await in_thread(dcmqrscp_factory, fill=folder_of(tree))
    ident = query("IMAGE", StudyInstanceUID=tree[0].attrs["StudyInstanceUID"], SOPInstanceUID="")
    ident.SeriesInstanceUID = tree[0].attrs["SeriesInstanceUID"]
    watch = CancelWatch(41)
    ae = qr_scu_ae()
    with deadline():
        async with ae.associate(
            HOST, qr.port, ae_title=qr.ae_title, evt_handlers=watch.handlers()
        ) as assoc:
            seen = 0
            find = assoc.send_c_find(ident, MODELS["study"]["find"], msg_id=41)
            async with find as responses:
                async for status, _identifier in responses:
                    assert int(status.Status) in (0xFF00, 0xFF01)
                    seen += 1
                    break
                # (no checkpoint from here to the exit's decision to cancel)
                answered = [f["Status"] for f in watch.finals]
            assert seen == 1
            if answered:
                # dcmqrscp had answered in full, and the reader had taken its
                # final response, before the block was left: nothing to cancel
                assert answered == [0x0000] and watch.cancels == [], watch.cancels
            else:
                # the C-CANCEL went out for this request, and its final response
                # was drained (0xFE00, or 0x0000 if dcmqrscp had sent every match
                # before it read the C-CANCEL)
                assert [c.get("MessageIDBeingRespondedTo") for c in watch.cancels] == [41]
                assert [f["Status"] for f in watch.finals] in ([0xFE00], [0x0000]), watch.finals
            echo = await assoc.send_c_echo()
            assert int(echo.Status) == 0x0000
            _p, identifiers, final = await collect(
                assoc.send_c_find(ident, MODELS["study"]["find"])
            )
            assert int(final.Status) == 0x0000
            check_matches(tree, ident, identifiers, strict=False)


@pytest.mark.anyio
@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
async def test_aiodicom_get_from_dcmqrscp(dcmqrscp_factory, data, level):
    qr = await in_thread(dcmqrscp_factory, fill=folder_of(data))
    model, ident = retrieve_cases(data)[level]
    expected = select_instances(data, ident)
    rec = StoreRecorder()
    ae = qr_scu_ae()
    with deadline():
        async with ae.associate(
            HOST, qr.port, ae_title=qr.ae_title, evt_handlers=rec.handlers(), ext_neg=get_roles()
        ) as assoc:
            pending, _ids, final = await collect(assoc.send_c_get(ident, MODELS[model]["get"]))
    assert int(final.Status) == 0x0000, f"{final}\n{qr.process.describe()}"
    assert final.get("NumberOfCompletedSuboperations") in (None, len(expected)), final
    assert len(pending) <= len(expected)
    check_retrieved(rec.by_uid(), expected)


@pytest.mark.anyio
@pytest.mark.parametrize("level", ["STUDY", "IMAGE"])
async def test_aiodicom_move_from_dcmqrscp_to_aiodicom_scp(dcmqrscp_factory, tree, level):
    model, ident = retrieve_cases(tree)[level]
    expected = select_instances(tree, ident)
    rec = StoreRecorder()
    dest = storage_ae("AIOSTORE")
    ae = qr_scu_ae()
    with deadline():
        async with dest.start_server((HOST, 0), evt_handlers=rec.handlers()) as server:
            qr = await in_thread(
                dcmqrscp_factory,
                fill=folder_of(tree),
                move_destinations={"AIOSTORE": (HOST, server.port)},
            )
            async with ae.associate(HOST, qr.port, ae_title=qr.ae_title) as assoc:
                _p, _i, final = await collect(
                    assoc.send_c_move(ident, "AIOSTORE", MODELS[model]["move"], msg_id=321)
                )
            assert int(final.Status) == 0x0000, f"{final}\n{qr.process.describe()}"
            await rec.wait_until(lambda: rec.released >= 1, "the C-MOVE association released")
    check_retrieved(rec.by_uid(), expected)
    for stored in rec.received:
        assert stored.calling_ae == qr.ae_title
        assert stored.move_originator_ae == "AIOSCU"
        assert stored.move_originator_id == 321


@pytest.mark.anyio
async def test_aiodicom_move_from_dcmqrscp_to_storescp(dcmqrscp_factory, dcmtk_storescp, data):
    model, ident = retrieve_cases(data)["PATIENT"]
    expected = select_instances(data, ident)
    qr = await in_thread(
        dcmqrscp_factory,
        fill=folder_of(data),
        move_destinations={"STORESCP": dcmtk_storescp.address},
    )
    ae = qr_scu_ae()
    with deadline():
        async with ae.associate(HOST, qr.port, ae_title=qr.ae_title) as assoc:
            pending, _i, final = await collect(
                assoc.send_c_move(ident, "STORESCP", MODELS[model]["move"])
            )
    assert int(final.Status) == 0x0000, f"{final}\n{qr.process.describe()}"
    for status in pending:
        assert "NumberOfRemainingSuboperations" in status
    files = await in_thread(dcmtk_storescp.wait_for_files, len(expected))
    check_files(files, expected)


@pytest.mark.anyio
async def test_aiodicom_move_from_dcmqrscp_to_itself(dcmqrscp_factory, tree):
    """C-MOVE to the requesting AE: the caller runs the storage SCP; the moved
    instances carry the C-MOVE's Message ID and the caller's AE title."""
    model, ident = retrieve_cases(tree)["SERIES"]
    expected = select_instances(tree, ident)
    rec = StoreRecorder()
    ae = qr_scu_ae("AIOSELF")
    for uid in STORAGE_CLASSES:
        ae.add_supported_context(uid, SYNTAXES)
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=rec.handlers()) as server:
            qr = await in_thread(
                dcmqrscp_factory,
                fill=folder_of(tree),
                move_destinations={"AIOSELF": (HOST, server.port)},
            )
            async with ae.associate(HOST, qr.port, ae_title=qr.ae_title) as assoc:
                _p, _i, first = await collect(
                    assoc.send_c_move(ident, "AIOSELF", MODELS[model]["move"], msg_id=11)
                )
                _p, _i, second = await collect(
                    assoc.send_c_move(ident, "AIOSELF", MODELS[model]["move"], msg_id=12)
                )
            assert int(first.Status) == 0x0000 and int(second.Status) == 0x0000
            await rec.wait_until(lambda: rec.released >= 2, "both C-MOVE associations released")
    by_request: dict[int | None, dict[str, Stored]] = {}
    for stored in rec.received:
        assert stored.move_originator_ae == "AIOSELF"
        by_request.setdefault(stored.move_originator_id, {})[stored.sop_instance_uid] = stored
    assert sorted(by_request, key=str) == [11, 12]
    check_retrieved(by_request[11], expected)
    check_retrieved(by_request[12], expected)


# =========================================================================== 3.
# aiodicom SCU -> pynetdicom Q/R SCP


@pytest.fixture
def qr_folders(tmp_path_factory, data):
    """The data set as symlinks in one folder (pynetdicom's --qr-dir walks it)."""
    base = tmp_path_factory.mktemp("qrdir")
    for n, inst in enumerate(data):
        (base / f"{n:04d}.dcm").symlink_to(inst.path)
    return base


@pytest.mark.anyio
@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
async def test_aiodicom_find_to_pynetdicom_scp(pynetdicom_scp, qr_folders, data, case):
    scp = await in_thread(pynetdicom_scp, "--qr-dir", str(qr_folders))
    model, ident = query_cases(data)[case]
    ae = qr_scu_ae()
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title=scp.ae_title) as assoc:
            _p, identifiers, final = await collect(
                assoc.send_c_find(ident, MODELS[model]["find"], msg_id=5)
            )
    assert int(final.Status) == 0x0000
    check_matches(data, ident, identifiers)
    (seen,) = await in_thread(scp.wait_for_event, "c_find")
    assert seen["message_id"] == 5 and seen["model"] == MODELS[model]["find"]
    assert seen["identifier"]["QueryRetrieveLevel"] == str(ident.QueryRetrieveLevel)
    assert not seen["cancelled"] and seen["sent"] == len(identifiers)


async def _cancel_find(assoc: Any, ident: Dataset, how: str) -> int:
    """Read two matches, then stop the C-FIND `how`; return the matches read."""
    model = MODELS["study"]["find"]
    seen = 0
    if how == "async-with":
        async with assoc.send_c_find(ident, model) as responses:
            async for _status, _identifier in responses:
                seen += 1
                if seen == 2:
                    break
    elif how == "task-cancel":
        with anyio.CancelScope() as scope:
            async for _status, _identifier in assoc.send_c_find(ident, model):
                seen += 1
                if seen == 2:
                    scope.cancel()
        assert scope.cancelled_caught
    else:
        assert how == "bare-break"
        async for _status, _identifier in assoc.send_c_find(ident, model):
            seen += 1
            if seen == 2:
                break
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["async-with", "task-cancel", "bare-break"])
async def test_aiodicom_find_cancel_to_pynetdicom_scp(pynetdicom_scp, qr_folders, data, how):
    scp = await in_thread(
        pynetdicom_scp, "--qr-dir", str(qr_folders), "--hold-after", "2", "--hold-timeout", "10"
    )
    ident = query("IMAGE", PatientID="*", SOPInstanceUID="")
    finals: list[int] = []

    def on_dimse_recv(event: evt.Event) -> None:
        msg = event.message
        status = msg.command.get("Status")
        if status is not None and status not in (0xFF00, 0xFF01):
            finals.append(int(status))

    ae = qr_scu_ae()
    with deadline(30):
        async with ae.associate(
            HOST,
            scp.port,
            ae_title=scp.ae_title,
            evt_handlers=[(evt.EVT_DIMSE_RECV, on_dimse_recv)],
        ) as assoc:
            assert await _cancel_find(assoc, ident, how) == 2
            echo = await assoc.send_c_echo()
            assert int(echo.Status) == 0x0000
            _p, identifiers, final = await collect(
                assoc.send_c_find(query("STUDY", PatientID="*"), MODELS["study"]["find"])
            )
            assert int(final.Status) == 0x0000 and identifiers
    events = await in_thread(scp.wait_for_event, "c_find", count=2)
    first = events[0]
    assert first["cancelled"], f"pynetdicom's handler did not see the C-CANCEL: {first}"
    assert first["sent"] == 2
    assert first["held_s"] is not None and first["held_s"] < 10
    assert finals[0] == 0xFE00, f"final statuses received: {[hex(s) for s in finals]}"
    assert scp.events("c_echo"), "the C-ECHO after the cancel reached pynetdicom"
    assert not scp.events("aborted")


@pytest.mark.anyio
@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
async def test_aiodicom_get_from_pynetdicom_scp(pynetdicom_scp, qr_folders, data, level):
    scp = await in_thread(pynetdicom_scp, "--qr-dir", str(qr_folders))
    model, ident = retrieve_cases(data)[level]
    expected = select_instances(data, ident)
    rec = StoreRecorder()
    ae = qr_scu_ae()
    with deadline():
        async with ae.associate(
            HOST, scp.port, ae_title=scp.ae_title, evt_handlers=rec.handlers(), ext_neg=get_roles()
        ) as assoc:
            pending, _i, final = await collect(assoc.send_c_get(ident, MODELS[model]["get"]))
    assert int(final.Status) == 0x0000, final
    assert int(final.NumberOfCompletedSuboperations) == len(expected)
    assert [int(s.NumberOfRemainingSuboperations) for s in pending] == list(
        range(len(expected) - 1, -1, -1)
    )
    # pynetdicom decodes each file and encodes it again: compare elements
    check_retrieved(rec.by_uid(), expected, same_bytes=False)


@pytest.mark.anyio
async def test_aiodicom_get_cancel_to_pynetdicom_scp(pynetdicom_scp, qr_folders, data):
    scp = await in_thread(pynetdicom_scp, "--qr-dir", str(qr_folders), "--hold-after", "2")
    _model, ident = retrieve_cases(data)["PATIENT"]
    rec = StoreRecorder()
    finals: list[Dataset] = []

    def on_dimse_recv(event: evt.Event) -> None:
        status = event.message.command.get("Status")
        if status is not None and status not in (0xFF00, 0xFF01):
            finals.append(event.message.command)

    ae = qr_scu_ae()
    with deadline(30):
        async with ae.associate(
            HOST,
            scp.port,
            ae_title=scp.ae_title,
            evt_handlers=[*rec.handlers(), (evt.EVT_DIMSE_RECV, on_dimse_recv)],
            ext_neg=get_roles(),
        ) as assoc:
            pending = 0
            async with assoc.send_c_get(ident, MODELS["patient"]["get"]) as responses:
                async for status, _identifier in responses:
                    assert int(status.Status) == 0xFF00
                    pending += 1
                    if pending == 2:
                        break
            echo = await assoc.send_c_echo()
            assert int(echo.Status) == 0x0000
    (seen,) = await in_thread(scp.wait_for_event, "c_get")
    assert seen["cancelled"] and seen["sent"] == 2, seen
    assert len(rec.received) == 2
    final = next(c for c in finals if c.get("MessageIDBeingRespondedTo") is not None)
    assert final["Status"] == 0xFE00, final
    assert final.get("NumberOfCompletedSuboperations") == 2, final
    assert final.get("NumberOfRemainingSuboperations") in (
        None,
        len(select_instances(data, ident)) - 2,
    )


@pytest.mark.anyio
async def test_aiodicom_move_cancel_to_pynetdicom_scp(pynetdicom_scp, qr_folders, data):
    """aiodicom leaves a C-MOVE after 2 pending responses: the C-CANCEL reaches
    pynetdicom's handler, the final status is 0xFE00, 2 instances reached the
    destination, and the association goes on."""
    _model, ident = retrieve_cases(data)["PATIENT"]
    rec = StoreRecorder()
    watch = CancelWatch(31)
    dest = storage_ae("AIOSTORE")
    ae = qr_scu_ae()
    with deadline(30):
        async with dest.start_server((HOST, 0), evt_handlers=rec.handlers()) as server:
            scp = await in_thread(
                pynetdicom_scp,
                "--qr-dir",
                str(qr_folders),
                "--move-dest",
                f"AIOSTORE={HOST}:{server.port}",
                "--hold-after",
                "2",
            )
            async with ae.associate(
                HOST,
                scp.port,
                ae_title=scp.ae_title,
                evt_handlers=watch.handlers(),
            ) as assoc:
                pending = 0
                move = assoc.send_c_move(ident, "AIOSTORE", MODELS["patient"]["move"], msg_id=31)
                async with move as responses:
                    async for status, _identifier in responses:
                        assert int(status.Status) == 0xFF00
                        pending += 1
                        if pending == 2:
                            break
                echo = await assoc.send_c_echo()
                assert int(echo.Status) == 0x0000
            (seen,) = await in_thread(scp.wait_for_event, "c_move")
            await rec.wait_until(lambda: rec.released >= 1, "the C-MOVE association released")
    assert seen["cancelled"] and seen["sent"] == 2, seen
    assert [c.get("MessageIDBeingRespondedTo") for c in watch.cancels] == [31]
    assert len(rec.received) == 2
    final = next(c for c in watch.finals if c.get("MessageIDBeingRespondedTo") == 31)
    assert final["Status"] == 0xFE00, final
    assert final.get("NumberOfCompletedSuboperations") == 2, final


@pytest.mark.anyio
async def test_aiodicom_move_from_pynetdicom_scp(pynetdicom_scp, qr_folders, data):
    _model, ident = retrieve_cases(data)["STUDY"]
    expected = select_instances(data, ident)
    rec = StoreRecorder()
    dest = storage_ae("AIOSTORE")
    ae = qr_scu_ae()
    with deadline():
        async with dest.start_server((HOST, 0), evt_handlers=rec.handlers()) as server:
            scp = await in_thread(
                pynetdicom_scp,
                "--qr-dir",
                str(qr_folders),
                "--move-dest",
                f"AIOSTORE={HOST}:{server.port}",
            )
            async with ae.associate(HOST, scp.port, ae_title=scp.ae_title) as assoc:
                _p, _i, final = await collect(
                    assoc.send_c_move(ident, "AIOSTORE", MODELS["study"]["move"], msg_id=77)
                )
                _p, _i, unknown = await collect(
                    assoc.send_c_move(ident, "NOWHERE", MODELS["study"]["move"])
                )
            assert int(final.Status) == 0x0000, final
            assert int(unknown.Status) == 0xA801, unknown
            await rec.wait_until(lambda: rec.released >= 1, "the C-MOVE association released")
    check_retrieved(rec.by_uid(), expected, same_bytes=False)
    for stored in rec.received:
        assert stored.move_originator_id == 77
        # PS3.4 C.4.2.2 / PS3.7 9.1.1.1: the AE that invoked the C-MOVE; pynetdicom
        # 3.0 puts its own AE title there (service_class.py: originator_aet=self.ae.ae_title)
        assert stored.move_originator_ae in ("AIOSCU", scp.ae_title)


# =========================================================================== 4.
# pynetdicom SCU -> aiodicom SCP


def pyn_keys(ident: Dataset) -> list[str]:
    out = []
    for elem in ident:
        if elem.keyword == "QueryRetrieveLevel":
            continue
        out += ["-k", f"{elem.keyword}={text(elem.value)}"]
    return ["--level", str(ident.QueryRetrieveLevel), *out]


def pyn_identifier(d: dict[str, Any]) -> Dataset:
    ds = Dataset()
    for kw, value in d.items():
        setattr(ds, kw, value)
    return ds


async def pyn_qrscu_to_aiodicom(
    run_pynetdicom_qrscu: Any,
    handlers: QRHandlers,
    *args: Any,
    ae: AE | None = None,
    returncode: int = 0,
) -> list[dict[str, Any]]:
    """Serve ``handlers`` on an aiodicom Q/R SCP (``qr_scp_ae()`` unless ``ae``
    is given), run pynetdicom's Q/R SCU against it with ``args``; its events.
    ``returncode``: the peer's exit code expected (3: a final status not 0x0000)."""
    ae = ae or qr_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers.handlers()) as server:
            cp, events = await in_thread(run_pynetdicom_qrscu, "--port", server.port, *args)
    assert cp.returncode == returncode, f"{cp.describe()}\n{events}"
    return events


@pytest.mark.anyio
@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
async def test_pynetdicom_find_to_aiodicom_scp(run_pynetdicom_qrscu, data, case):
    model, ident = query_cases(data)[case]
    handlers = QRHandlers(data)
    events = await pyn_qrscu_to_aiodicom(
        run_pynetdicom_qrscu,
        handlers,
        "--called",
        "AIOQR",
        "--service",
        "find",
        "--model",
        model,
        *pyn_keys(ident),
    )
    rsps = [e for e in events if e["event"] == "find_rsp"]
    assert rsps[-1]["status"] == 0x0000
    check_matches(data, ident, [pyn_identifier(e["identifier"]) for e in rsps[:-1]])


@pytest.mark.anyio
async def test_pynetdicom_find_outlasting_the_scp_network_timeout(run_pynetdicom_qrscu, tree):
    """The aiodicom SCP receives nothing while it streams matches to pynetdicom
    for over three times its network_timeout (0.5 s; a match every 50 ms): its
    writes are network activity, so it is not aborted as idle."""
    ident = query("IMAGE", PatientID="*", SOPInstanceUID="")
    handlers = QRHandlers(tree, pace=0.05)
    ae = qr_scp_ae()
    ae.network_timeout = 0.5
    events = await pyn_qrscu_to_aiodicom(
        run_pynetdicom_qrscu,
        handlers,
        "--service",
        "find",
        *pyn_keys(ident),
        ae=ae,
    )
    rsps = [e for e in events if e["event"] == "find_rsp"]
    assert [e["status"] for e in rsps] == [0xFF00] * len(tree) + [0x0000], rsps
    (rec,) = handlers.requests
    assert rec["finished"]


@pytest.mark.anyio
async def test_pynetdicom_find_cancel_to_aiodicom_scp(run_pynetdicom_qrscu, tree):
    ident = query("IMAGE", PatientID="*", SOPInstanceUID="")
    handlers = QRHandlers(tree, hold_after=2)
    events = await pyn_qrscu_to_aiodicom(
        run_pynetdicom_qrscu,
        handlers,
        "--service",
        "find",
        "--cancel-after",
        "2",
        "--echo-after",
        *pyn_keys(ident),
    )
    rsps = [e for e in events if e["event"] == "find_rsp"]
    assert [e["status"] for e in rsps] == [0xFF00, 0xFF00, 0xFE00], rsps
    assert [e["event"] for e in events if e["event"] in ("cancel_sent", "c_echo")] == [
        "cancel_sent",
        "c_echo",
    ]
    (rec,) = handlers.requests
    assert rec["cancel_seen"], "aiodicom's handler never saw event.is_cancelled"
    assert rec["sent"] == 2 and not rec["finished"]


@pytest.mark.anyio
@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
async def test_pynetdicom_get_to_aiodicom_scp(run_pynetdicom_qrscu, tmp_path, data, level):
    model, ident = retrieve_cases(data)[level]
    expected = select_instances(data, ident)
    handlers = QRHandlers(data)
    events = await pyn_qrscu_to_aiodicom(
        run_pynetdicom_qrscu,
        handlers,
        "--service",
        "get",
        "--model",
        model,
        "--store-dir",
        tmp_path,
        *pyn_keys(ident),
    )
    rsps = [e for e in events if e["event"] == "get_rsp"]
    assert rsps[-1]["status"] == 0x0000 and rsps[-1]["completed"] == len(expected), rsps[-1]
    assert [e["remaining"] for e in rsps[:-1]] == list(range(len(expected) - 1, -1, -1))
    check_files(sorted(tmp_path.iterdir()), expected)


@dataclass
class _UnreadableAmid(QRHandlers):
    """C-GET: the instances' files, with ``unreadable`` (not DICOM) after the first."""

    unreadable: Path | None = None

    async def on_get(self, event: evt.Event) -> Any:
        self._record(event, "get")
        yield len(self.instances) + 1
        for i, inst in enumerate(self.instances):
            if i == 1:
                yield 0xFF00, self.unreadable
            yield 0xFF00, inst.path


@pytest.mark.anyio
async def test_pynetdicom_get_without_bulk_data_to_aiodicom_scp(
    run_pynetdicom_qrscu, tmp_path, tree
):
    """pynetdicom's C-GET in Composite Instance Retrieve Without Bulk Data: the
    aiodicom SCP sends each instance without its pixel data, and a file it
    cannot read between two instances fails that sub-operation alone (no
    C-STORE, no pending response), the C-GET ending 0xB000."""
    instances = [i for i in tree if "PixelData" in dcmread(i.path)][:2]
    assert len(instances) == 2
    unreadable = tmp_path / "not-dicom.dcm"
    unreadable.write_bytes(b"\xff" * 300)
    received = tmp_path / "received"
    received.mkdir()
    ae = qr_scp_ae()
    ae.add_supported_context(sop_class.CompositeInstanceRetrieveWithoutBulkDataGet)
    events = await pyn_qrscu_to_aiodicom(
        run_pynetdicom_qrscu,
        _UnreadableAmid(instances, unreadable=unreadable),
        "--service",
        "get",
        "--model",
        "nobulk",
        "--level",
        "IMAGE",
        "--store-dir",
        received,
        ae=ae,
        returncode=3,  # the peer's exit code for a final status other than success
    )
    rsps = [e for e in events if e["event"] == "get_rsp"]
    assert [e["status"] for e in rsps] == [0xFF00, 0xFF00, 0xB000], rsps
    assert [e["remaining"] for e in rsps[:-1]] == [2, 0]
    assert (rsps[-1]["completed"], rsps[-1]["failed"], rsps[-1]["warning"]) == (2, 1, 0)
    got = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, received.iterdir())}
    assert sorted(got) == sorted(i.sop_instance_uid for i in instances)
    for inst in instances:
        source, stored = dcmread(inst.path), got[inst.sop_instance_uid]
        assert "PixelData" not in stored
        del source.PixelData
        assert stored == source  # everything else, element by element


@pytest.mark.anyio
async def test_pynetdicom_get_cancel_to_aiodicom_scp(run_pynetdicom_qrscu, tmp_path, tree):
    _model, ident = retrieve_cases(tree)["PATIENT"]
    total = len(select_instances(tree, ident))
    handlers = QRHandlers(tree, hold_after=2)
    events = await pyn_qrscu_to_aiodicom(
        run_pynetdicom_qrscu,
        handlers,
        "--service",
        "get",
        "--model",
        "patient",
        "--cancel-after",
        "2",
        "--echo-after",
        "--store-dir",
        tmp_path,
        *pyn_keys(ident),
    )
    rsps = [e for e in events if e["event"] == "get_rsp"]
    assert [e["status"] for e in rsps] == [0xFF00, 0xFF00, 0xFE00], rsps
    # PS3.7 9.1.3.1.6: a Cancel response may contain Number of Remaining Sub-operations
    assert rsps[-1]["completed"] == 2 and rsps[-1]["remaining"] in (None, total - 2), rsps[-1]
    assert len(list(tmp_path.iterdir())) == 2
    (rec,) = handlers.requests
    assert rec["cancel_seen"] and rec["sent"] == 2


@pytest.mark.anyio
async def test_pynetdicom_move_to_aiodicom_scp(run_pynetdicom_qrscu, dcmtk_storescp, data):
    model, ident = retrieve_cases(data)["STUDY"]
    expected = select_instances(data, ident)
    handlers = QRHandlers(data, destinations={"STORESCP": dcmtk_storescp.address})
    events = await pyn_qrscu_to_aiodicom(
        run_pynetdicom_qrscu,
        handlers,
        "--service",
        "move",
        "--model",
        model,
        "--move-dest",
        "STORESCP",
        *pyn_keys(ident),
    )
    rsps = [e for e in events if e["event"] == "move_rsp"]
    assert rsps[-1]["status"] == 0x0000 and rsps[-1]["completed"] == len(expected), rsps[-1]
    files = await in_thread(dcmtk_storescp.wait_for_files, len(expected))
    check_files(files, expected)


@pytest.mark.anyio
async def test_pynetdicom_move_cancel_to_aiodicom_scp(run_pynetdicom_qrscu, dcmtk_storescp, tree):
    """pynetdicom cancels a C-MOVE after 2 pending responses: aiodicom's handler
    sees it, the final status is 0xFE00 with 2 completed, exactly 2 instances
    reached the destination, and the association goes on (C-ECHO)."""
    _model, ident = retrieve_cases(tree)["PATIENT"]
    total = len(select_instances(tree, ident))
    assert total > 2
    handlers = QRHandlers(tree, destinations={"STORESCP": dcmtk_storescp.address}, hold_after=2)
    events = await pyn_qrscu_to_aiodicom(
        run_pynetdicom_qrscu,
        handlers,
        "--service",
        "move",
        "--model",
        "patient",
        "--move-dest",
        "STORESCP",
        "--cancel-after",
        "2",
        "--echo-after",
        *pyn_keys(ident),
    )
    rsps = [e for e in events if e["event"] == "move_rsp"]
    assert [e["status"] for e in rsps] == [0xFF00, 0xFF00, 0xFE00], rsps
    assert rsps[-1]["completed"] == 2 and rsps[-1]["remaining"] in (None, total - 2), rsps[-1]
    assert [e["status"] for e in events if e["event"] == "c_echo"] == [0], events
    (rec,) = handlers.requests
    assert rec["cancel_seen"] and rec["sent"] == 2
    files = await in_thread(dcmtk_storescp.wait_for_files, 2)
    assert len(files) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("service", ["get", "move"])
async def test_aiodicom_retrieve_cancel_to_dcmqrscp(dcmqrscp_factory, tree, service):
    """aiodicom leaves a C-GET or C-MOVE from dcmqrscp after its first pending
    response: the C-CANCEL goes out for the request, the final response is
    drained (0xFE00, or 0x0000 if dcmqrscp had finished every sub-operation
    first: here it is 0xFE00 after 2), no more instances arrive than the final
    counts say, and the association goes on (C-ECHO)."""
    _model, ident = retrieve_cases(tree)["PATIENT"]
    total = len(select_instances(tree, ident))
    rec = StoreRecorder()
    watch = CancelWatch(51)
    dest = storage_ae("AIOSTORE")
    ae = qr_scu_ae()
    with deadline():
        async with dest.start_server((HOST, 0), evt_handlers=rec.handlers()) as server:
            qr = await in_thread(
                dcmqrscp_factory,
                fill=folder_of(tree),
                move_destinations={"AIOSTORE": (HOST, server.port)},
            )
            async with ae.associate(
                HOST,
                qr.port,
                ae_title=qr.ae_title,
                evt_handlers=[*watch.handlers(), *rec.handlers()],
                ext_neg=get_roles(),
            ) as assoc:
                if service == "get":
                    call = assoc.send_c_get(ident, MODELS["patient"]["get"], msg_id=51)
                else:
                    call = assoc.send_c_move(
                        ident, "AIOSTORE", MODELS["patient"]["move"], msg_id=51
                    )
                async with call as responses:
                    async for status, _identifier in responses:
                        assert int(status.Status) in (0xFF00, 0xFF01)
                        break
                    # (no checkpoint from here to the exit's decision to cancel)
                    answered = bool(watch.finals)
                # a C-CANCEL, unless the reader had taken the final response
                # before the block was left (dcmqrscp done: nothing to cancel)
                cancels = [c.get("MessageIDBeingRespondedTo") for c in watch.cancels]
                assert cancels == ([] if answered else [51]), (answered, cancels)
                (final,) = watch.finals
                assert final["Status"] in (0xFE00, 0x0000), final
                assert int((await assoc.send_c_echo()).Status) == 0
            if service == "move":
                await rec.wait_until(lambda: rec.released >= 1, "the C-MOVE association released")
    done = final.get("NumberOfCompletedSuboperations", 0) + final.get(
        "NumberOfWarningSuboperations", 0
    )
    assert len(rec.received) == done <= total
    if final["Status"] == 0xFE00:
        assert done < total
