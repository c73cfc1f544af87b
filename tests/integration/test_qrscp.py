"""The Query/Retrieve SCP application (``aiodicom.qrscp``).

The first part drives the archive's handlers directly with stand-in events
(no network): store, find, get, move, cancellation, streaming, atomic writes,
re-store replacement and refused identifiers. The second part serves the
archive on loopback and talks to it with aiodicom's SCU and with dcmtk's
findscu/getscu/movescu.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom import config, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    AllTransferSyntaxes,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from aiodicom import AE, build_role, evt, sop_class
from aiodicom.dsutils import encode_dataset, file_meta_for, part10_header
from aiodicom.qrscp import Archive, InstanceRecord, QRError, setup_ae
from aiodicom.testing import RecordingHandlers, free_port, make_dataset

from .conftest import GUARD

pytestmark = pytest.mark.anyio

SR_FIND = sop_class.StudyRootQueryRetrieveInformationModelFind
SR_GET = sop_class.StudyRootQueryRetrieveInformationModelGet
SR_MOVE = sop_class.StudyRootQueryRetrieveInformationModelMove
PR_FIND = sop_class.PatientRootQueryRetrieveInformationModelFind
PS_FIND = sop_class.PatientStudyOnlyQueryRetrieveInformationModelFind


# ---------------------------------------------------------------------------
# Stand-in events


@dataclass
class FakeContext:
    transfer_syntax: str
    context_id: int = 1
    abstract_syntax: str = ""


class FakeEvent:
    """What the handlers read of an :class:`aiodicom.evt.Event`."""

    def __init__(
        self,
        request: Dataset,
        *,
        identifier: Dataset | None = None,
        data: bytes | None = None,
        dataset_path: str | None = None,
        transfer_syntax: str = ExplicitVRLittleEndian,
        move_destination: str | None = None,
    ) -> None:
        self.request = request
        self._identifier = identifier
        self._data = data
        self.dataset_path = dataset_path
        self.context = FakeContext(transfer_syntax)
        self.move_destination = move_destination
        self.is_cancelled = False

    @property
    def identifier(self) -> Dataset:
        assert self._identifier is not None
        return self._identifier

    @property
    def file_meta(self) -> FileMetaDataset:
        return file_meta_for(
            self.request.AffectedSOPClassUID,
            self.request.AffectedSOPInstanceUID,
            self.context.transfer_syntax,
        )

    def encoded_dataset(self) -> bytes:
        assert self._data is not None
        return self._data


def store_event(ds: Dataset, ts: str = ExplicitVRLittleEndian) -> FakeEvent:
    rq = Dataset()
    rq.AffectedSOPClassUID = ds.SOPClassUID
    rq.AffectedSOPInstanceUID = ds.SOPInstanceUID
    return FakeEvent(rq, data=encode_dataset(ds, ts), transfer_syntax=ts)


def query_event(model: str, move_destination: str | None = None, **keys: Any) -> FakeEvent:
    rq = Dataset()
    rq.AffectedSOPClassUID = model
    ident = Dataset()
    for keyword, value in keys.items():
        setattr(ident, keyword, value)
    return FakeEvent(rq, identifier=ident, move_destination=move_destination)


def bad_uid(tag: int) -> DataElement:
    return DataElement(tag, "UI", "../../escape", validation_mode=config.IGNORE)


def code(status: Any) -> int:
    return int(status.Status) if isinstance(status, Dataset) else int(status)


async def collect(gen: Any) -> list[Any]:
    with anyio.fail_after(GUARD):
        return [item async for item in gen]


@asynccontextmanager
async def open_archive(path: Path, **kw: Any) -> AsyncIterator[Archive]:
    archive = await Archive.open(path, ae_title="QRSCP", **kw)
    async with archive:
        yield archive


def study(n_series: int = 2, per_series: int = 3, **patient: Any) -> list[Dataset]:
    """Instances of one study: ``n_series`` series (CT then MR...) of ``per_series``."""
    study_uid = generate_uid()
    out = []
    for s in range(n_series):
        series_uid = generate_uid()
        for i in range(per_series):
            out.append(
                make_dataset(
                    StudyInstanceUID=study_uid,
                    SeriesInstanceUID=series_uid,
                    Modality=("CT", "MR", "US")[s % 3],
                    SeriesNumber=s + 1,
                    InstanceNumber=i + 1,
                    StudyDate="20240115",
                    StudyTime="101500",
                    AccessionNumber="ACC1",
                    **patient,
                )
            )
    return out


def files_under(path: Path) -> list[Path]:
    return sorted(
        p for p in path.rglob("*") if p.is_file() and not p.name.startswith("index.sqlite")
    )


def rows(archive: Archive, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(archive.index_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Handlers on stand-in events


async def test_store_find_get_move(tmp_path: Path) -> None:
    async with open_archive(
        tmp_path / "store", destinations={"DEST": ("127.0.0.1", 11113)}
    ) as archive:
        instances = study(PatientID="P1", PatientName="Doe^John")
        for ds in instances:
            assert await archive.handle_store(store_event(ds)) == 0x0000
        stored = files_under(archive.directory / "objects")
        assert len(stored) == 6
        assert not list(archive.incoming.iterdir())
        study_uid = instances[0].StudyInstanceUID

        # C-FIND, Study Root STUDY level
        found = await collect(
            archive.handle_find(
                query_event(
                    SR_FIND,
                    QueryRetrieveLevel="STUDY",
                    StudyInstanceUID="",
                    PatientName="doe*",
                    ModalitiesInStudy="",
                    NumberOfStudyRelatedInstances="",
                    StudyDate="20240101-20240131",
                )
            )
        )
        assert [code(s) for s, _ in found] == [0xFF00]
        ident = found[0][1]
        assert ident.StudyInstanceUID == study_uid
        assert list(ident.ModalitiesInStudy) == ["CT", "MR"]
        assert ident.NumberOfStudyRelatedInstances == 6
        assert ident.QueryRetrieveLevel == "STUDY"

        # C-FIND, Patient Root IMAGE level
        series_uid = instances[3].SeriesInstanceUID
        found = await collect(
            archive.handle_find(
                query_event(
                    PR_FIND,
                    QueryRetrieveLevel="IMAGE",
                    PatientID="P1",
                    StudyInstanceUID=study_uid,
                    SeriesInstanceUID=series_uid,
                    SOPInstanceUID="",
                    InstanceNumber="",
                )
            )
        )
        assert sorted(int(i.InstanceNumber) for _, i in found) == [1, 2, 3]

        # C-GET at SERIES level: the count, then paths of Part 10 files
        items = await collect(
            archive.handle_get(
                query_event(
                    SR_GET,
                    QueryRetrieveLevel="SERIES",
                    StudyInstanceUID=study_uid,
                    SeriesInstanceUID=series_uid,
                )
            )
        )
        assert items[0] == 3
        paths = [p for _, p in items[1:]]
        assert all(s == 0xFF00 for s, _ in items[1:])
        assert all(isinstance(p, str) for p in paths)
        got = {str(dcmread(p).SOPInstanceUID) for p in paths}
        assert got == {str(ds.SOPInstanceUID) for ds in instances[3:]}

        # C-MOVE: destination (with contexts for what is stored), count, paths
        items = await collect(
            archive.handle_move(
                query_event(SR_MOVE, "DEST", QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid)
            )
        )
        host, port, options = items[0]
        assert (host, port) == ("127.0.0.1", 11113)
        [cx] = options["contexts"]
        assert cx.abstract_syntax == sop_class.CTImageStorage
        assert list(cx.transfer_syntax) == [ExplicitVRLittleEndian]
        assert items[1] == 6 and len(items) == 8

        # C-MOVE to an unknown destination
        items = await collect(
            archive.handle_move(
                query_event(
                    SR_MOVE, "NOWHERE", QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid
                )
            )
        )
        assert items == [(None, None)]


async def test_patient_study_only_and_patient_level(tmp_path: Path) -> None:
    async with open_archive(tmp_path) as archive:
        for ds in study(PatientID="P1", PatientName="A^B") + study(PatientID="P2"):
            assert await archive.handle_store(store_event(ds)) == 0
        found = await collect(
            archive.handle_find(
                query_event(
                    PS_FIND,
                    QueryRetrieveLevel="PATIENT",
                    PatientID="",
                    NumberOfPatientRelatedStudies="",
                )
            )
        )
        assert sorted(
            (str(i.PatientID), int(i.NumberOfPatientRelatedStudies)) for _, i in found
        ) == [
            ("P1", 1),
            ("P2", 1),
        ]
        found = await collect(
            archive.handle_find(
                query_event(
                    PS_FIND, QueryRetrieveLevel="STUDY", PatientID="P1", StudyInstanceUID=""
                )
            )
        )
        assert len(found) == 1


async def test_store_in_implicit_vr_and_spooled(tmp_path: Path) -> None:
    async with open_archive(tmp_path) as archive:
        ds = make_dataset()
        assert await archive.handle_store(store_event(ds, ImplicitVRLittleEndian)) == 0
        [(ts,)] = rows(archive, "SELECT transfer_syntax_uid FROM instance")
        assert ts == ImplicitVRLittleEndian
        # a spooled instance: a Part 10 file in the spool directory is moved into place
        ds2 = make_dataset()
        event = store_event(ds2)
        spool = archive.incoming / "aiodicom-spool.dcm"
        spool.write_bytes(part10_header(event.file_meta) + event.encoded_dataset())
        event.dataset_path = str(spool)
        event._data = None
        assert await archive.handle_store(event) == 0
        assert not spool.exists()
        assert len(files_under(archive.directory / "objects")) == 2
        [(path,)] = rows(
            archive, f"SELECT path FROM instance WHERE sop_instance_uid = '{ds2.SOPInstanceUID}'"
        )
        assert dcmread(archive.directory / path).SOPInstanceUID == ds2.SOPInstanceUID


async def test_restore_replaces(tmp_path: Path) -> None:
    async with open_archive(tmp_path) as archive:
        ds = make_dataset(PatientName="Old^Name", PatientID="OLD")
        assert await archive.handle_store(store_event(ds)) == 0
        ds.PatientName = "New^Name"
        ds.PatientID = "NEW"
        ds.SeriesInstanceUID = generate_uid()
        assert await archive.handle_store(store_event(ds)) == 0
        assert rows(archive, "SELECT COUNT(*) FROM instance") == [(1,)]
        assert rows(archive, "SELECT patient_id, patient_name FROM patient") == [
            ("NEW", "New^Name")
        ]
        assert rows(archive, "SELECT series_uid FROM series") == [(ds.SeriesInstanceUID,)]
        [path] = files_under(archive.directory / "objects")
        assert str(dcmread(path).PatientName) == "New^Name"


async def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_archive(tmp_path) as archive:

        def broken(tmp: str, final: Path) -> None:
            raise OSError("disk on fire")

        monkeypatch.setattr(Archive, "_replace", staticmethod(broken))
        status = await archive.handle_store(store_event(make_dataset()))
        assert 0xC000 <= status <= 0xCFFF
        assert files_under(archive.directory) == []
        assert rows(archive, "SELECT COUNT(*) FROM instance") == [(0,)]
        assert rows(archive, "SELECT COUNT(*) FROM patient") == [(0,)]

        # a re-store that fails keeps the old instance and its row intact
        monkeypatch.undo()
        ds = make_dataset(PatientName="Kept")
        assert await archive.handle_store(store_event(ds)) == 0
        monkeypatch.setattr(Archive, "_replace", staticmethod(broken))
        ds.PatientName = "Lost"
        assert await archive.handle_store(store_event(ds)) != 0
        [path] = files_under(archive.directory)
        assert str(dcmread(path).PatientName) == "Kept"
        assert rows(archive, "SELECT patient_name FROM patient") == [("Kept",)]


async def test_refused_instances(tmp_path: Path) -> None:
    async with open_archive(tmp_path) as archive:
        # an AffectedSOPInstanceUID that is not a UID never becomes a path
        ds = make_dataset()
        event = store_event(ds)
        event.request.add(bad_uid(0x00001000))
        assert await archive.handle_store(event) == 0xC211
        # nor does a data set's own SOP Instance UID
        ds = make_dataset()
        rq = store_event(ds).request
        ds.add(bad_uid(0x00080018))
        event = FakeEvent(rq, data=encode_dataset(ds, ExplicitVRLittleEndian))
        assert 0xC000 <= code(await archive.handle_store(event)) <= 0xCFFF
        # a data set without a Study Instance UID cannot be placed in the hierarchy
        ds = make_dataset()
        del ds.StudyInstanceUID
        assert 0xC000 <= code(await archive.handle_store(store_event(ds))) <= 0xCFFF
        # garbage data
        event = store_event(make_dataset())
        event._data = b"\xff" * 10
        refused = await archive.handle_store(event)
        assert 0xC000 <= code(refused) <= 0xCFFF
        assert refused.ErrorComment  # a refusal says why
        assert files_under(archive.directory) == []
        assert rows(archive, "SELECT COUNT(*) FROM instance") == [(0,)]


@pytest.mark.parametrize(
    ("model", "keys", "status"),
    [
        (SR_FIND, {"StudyInstanceUID": ""}, 0xA900),  # no level
        (SR_FIND, {"QueryRetrieveLevel": "PATIENT", "PatientID": ""}, 0xA900),
        (SR_FIND, {"QueryRetrieveLevel": "STUDY", "SOPInstanceUID": ""}, 0xA900),
        (PR_FIND, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}, 0xA900),
        (SR_FIND, {"QueryRetrieveLevel": "SERIES", "Modality": "CT"}, 0xA900),
        (SR_GET, {"QueryRetrieveLevel": "STUDY", "PatientID": "P1"}, 0xA900),
        (SR_MOVE, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2"}, 0xA900),
        (sop_class.CTImageStorage, {"QueryRetrieveLevel": "STUDY"}, 0xC000),
    ],
)
async def test_bad_identifiers(
    tmp_path: Path, model: str, keys: dict[str, str], status: int
) -> None:
    async with open_archive(tmp_path, destinations={"DEST": ("127.0.0.1", 1)}) as archive:
        if model == SR_GET:
            items = await collect(archive.handle_get(query_event(model, **keys)))
            assert items[0] == 0
            items = items[1:]
        elif model == SR_MOVE:
            items = await collect(archive.handle_move(query_event(model, "DEST", **keys)))
            assert items[0] == ("127.0.0.1", 1) and items[1] == 0
            items = items[2:]
        else:
            items = await collect(archive.handle_find(query_event(model, **keys)))
        [(st, ident)] = items
        assert code(st) == status and ident is None
        assert st.ErrorComment


async def test_unsupported_keys_answer_ff01(tmp_path: Path) -> None:
    async with open_archive(tmp_path) as archive:
        await archive.handle_store(store_event(make_dataset()))
        found = await collect(
            archive.handle_find(
                query_event(
                    SR_FIND,
                    QueryRetrieveLevel="STUDY",
                    StudyInstanceUID="",
                    PatientAge="",
                    RetrieveAETitle="",
                    SpecificCharacterSet="ISO_IR 100",
                )
            )
        )
        [(st, ident)] = found
        assert st == 0xFF01
        assert ident.PatientAge in (None, "")
        assert ident.RetrieveAETitle == "QRSCP"
        assert ident.SpecificCharacterSet == "ISO_IR 192"


async def test_find_cancelled_between_matches(tmp_path: Path) -> None:
    async with open_archive(tmp_path) as archive:
        await archive.add_records(
            InstanceRecord(f"1.2.3.{n}", "1.2", f"1.2.4.{n}", f"1.2.5.{n}", f"x/{n}.dcm")
            for n in range(20)
        )
        event = query_event(SR_FIND, QueryRetrieveLevel="STUDY", StudyInstanceUID="")
        out = []
        with anyio.fail_after(GUARD):
            async for status, _ident in archive.handle_find(event):
                out.append(status)
                if len(out) == 2:
                    event.is_cancelled = True
        assert out == [0xFF00, 0xFF00, 0xFE00]


async def test_get_cancelled_between_instances(tmp_path: Path) -> None:
    async with open_archive(tmp_path) as archive:
        await archive.add_records(
            InstanceRecord(f"1.2.3.{n}", "1.2", "1.2.4", "1.2.5", f"x/{n}.dcm") for n in range(10)
        )
        event = query_event(SR_GET, QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.4")
        out = []
        with anyio.fail_after(GUARD):
            async for item in archive.handle_get(event):
                out.append(item)
                if len(out) == 3:
                    event.is_cancelled = True
        assert out[0] == 10
        assert [s for s, _ in out[1:]] == [0xFF00, 0xFF00, 0xFE00]


async def test_matches_are_streamed(tmp_path: Path) -> None:
    async with open_archive(tmp_path) as archive:
        await archive.add_records(
            InstanceRecord(f"1.2.3.{n}", "1.2", "1.2.4", "1.2.5", f"x/{n}.dcm", patient_id="P")
            for n in range(10_000)
        )
        archive.batch_size = 100
        event = query_event(
            SR_FIND,
            QueryRetrieveLevel="IMAGE",
            StudyInstanceUID="1.2.4",
            SeriesInstanceUID="1.2.5",
            SOPInstanceUID="",
        )
        gen = archive.handle_find(event)
        with anyio.fail_after(GUARD):
            for _ in range(3):
                status, ident = await gen.__anext__()
                assert status == 0xFF00 and ident.SOPInstanceUID.startswith("1.2.3.")
            await gen.aclose()
        assert archive.rows_fetched == 100

        # the same for a retrieve: the count comes from COUNT(*), paths stream
        archive.rows_fetched = 0
        gen = archive.handle_get(
            query_event(SR_GET, QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.4")
        )
        with anyio.fail_after(GUARD):
            assert await gen.__anext__() == 10_000
            await gen.__anext__()
            await gen.aclose()
        assert archive.rows_fetched == 100

        # and all of them, in batches
        archive.rows_fetched = 0
        found = await collect(archive.handle_find(event))
        assert len(found) == 10_000 and archive.rows_fetched == 10_000


def indexed(archive: Archive, uid: str) -> InstanceRecord:
    """The record the index holds of instance ``uid``, read back from its tables."""
    names = [f.name for f in InstanceRecord.__dataclass_fields__.values()]
    columns = ", ".join({"patient_id": "st.patient_id"}.get(n, n) for n in names)
    [row] = rows(
        archive,
        f"SELECT {columns} FROM instance JOIN series USING (series_uid)"
        " JOIN study st USING (study_uid) JOIN patient p ON p.patient_id = st.patient_id"
        f" WHERE sop_instance_uid = '{uid}'",
    )
    return InstanceRecord(**dict(zip(names, row, strict=True)))


def tricky_instance(**kw: Any) -> Dataset:
    """An instance whose indexed attributes come after sequences of undefined
    length (nested), with a Latin-1 patient name."""
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class.CTImageStorage
    ref.ReferencedSOPInstanceUID = generate_uid()
    inner = Dataset()
    inner.ReferencedImageSequence = [ref]
    inner["ReferencedImageSequence"].is_undefined_length = True
    inner.is_undefined_length_sequence_item = True
    ds = make_dataset(
        SpecificCharacterSet="ISO_IR 100",
        AccessionNumber="ACC 9",
        StudyDate="20240115",
        StudyTime="101500",
        SeriesNumber=" 4",
        InstanceNumber="0012",
        **kw,
    )
    ds.ReferencedStudySequence = [inner]
    ds["ReferencedStudySequence"].is_undefined_length = True
    ds.SourceImageSequence = [ref]  # (0008,2112): a defined length one
    return ds


@pytest.mark.parametrize("name", ["Doe^Jane", "Müller^Jürgen"])
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
async def test_store_indexes_what_pydicom_reads(tmp_path: Path, name: str, ts: str) -> None:
    """Whichever way the archive reads the attributes it indexes (walking the
    received bytes, or pydicom where that cannot be sure), the index holds
    what pydicom reads of the instance."""
    async with open_archive(tmp_path) as archive:
        ds = tricky_instance(PatientName=name)
        event = store_event(ds, ts)
        assert await archive.handle_store(event) == 0
        uid = ds.SOPInstanceUID
        got = indexed(archive, uid)
        stored = dcmread(archive.directory / got.path)
        want = InstanceRecord.from_dataset(stored, path=got.path, transfer_syntax=ts, size=got.size)
        assert got == want
        assert got.patient_name == name and got.instance_number == "12"
        assert got.size == (archive.directory / got.path).stat().st_size


async def test_store_file_with_a_long_head_is_indexed_by_pydicom(tmp_path: Path) -> None:
    """A file whose indexed attributes lie past the head the archive reads
    of it (a 100 KB private element first) is indexed all the same."""
    ds = tricky_instance(PatientName="Long^Head")
    ds.add_new(0x00091010, "OB", b"\x01" * 100_000)  # private, before (0010,0010)
    ds.add_new(0x00090010, "LO", "PRIVATE")
    path = tmp_path / "long.dcm"
    ds.file_meta = file_meta_for(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    ds.save_as(path, enforce_file_format=True)
    async with open_archive(tmp_path / "archive") as archive:
        rec = await archive.store_file(path)
        assert rec.patient_name == "Long^Head" and rec.accession_number == "ACC 9"
        assert indexed(archive, ds.SOPInstanceUID) == rec
        # and one short enough is read from its head, to the same values
        short = tricky_instance(PatientName="Short^Head")
        short.file_meta = file_meta_for(
            short.SOPClassUID, short.SOPInstanceUID, ExplicitVRLittleEndian
        )
        short.save_as(tmp_path / "short.dcm", enforce_file_format=True)
        rec = await archive.store_file(tmp_path / "short.dcm")
        assert rec == InstanceRecord.from_dataset(
            dcmread(tmp_path / "short.dcm"),
            path=rec.path,
            transfer_syntax=ExplicitVRLittleEndian,
            size=rec.size,
        )


async def test_store_remakes_a_missing_object_directory(tmp_path: Path) -> None:
    async with open_archive(tmp_path) as archive:
        ds = make_dataset()
        assert await archive.handle_store(store_event(ds)) == 0
        [path] = files_under(archive.directory / "objects")
        path.unlink()
        path.parent.rmdir()  # its bucket directory, gone behind the archive's back
        assert await archive.handle_store(store_event(ds)) == 0
        assert files_under(archive.directory / "objects") == [path]
        assert dcmread(path).SOPInstanceUID == ds.SOPInstanceUID


async def test_store_file_and_pydicom_test_files(tmp_path: Path) -> None:
    async with open_archive(tmp_path) as archive:
        for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"):
            path = get_testdata_file(name)
            assert path is not None
            rec = await archive.store_file(path)
            assert (archive.directory / rec.path).read_bytes() == Path(path).read_bytes()
        assert rows(archive, "SELECT COUNT(*) FROM instance") == [(3,)]


# ---------------------------------------------------------------------------
# End to end: the archive served on loopback

DCMTK = all(os.path.exists(f"/usr/bin/{t}") for t in ("findscu", "getscu", "movescu"))
#: In CI (.ci/run sets it) a missing peer is a failure, not a skip.
SKIP_WITHOUT_DCMTK = not DCMTK and not os.environ.get("AIODICOM_REQUIRE_PEERS")
STORAGE = (
    sop_class.CTImageStorage,
    sop_class.MRImageStorage,
    sop_class.SecondaryCaptureImageStorage,
)
TEST_FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")


def _testdata(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None
    return str(path)


@asynccontextmanager
async def qr_server(
    path: Path, destinations: dict[str, tuple[str, int]] | None = None
) -> AsyncIterator[tuple[Archive, int]]:
    async with open_archive(path, destinations=destinations) as archive:
        ae = setup_ae(AE("QRSCP"), archive)
        ae.acse_timeout = ae.dimse_timeout = GUARD
        async with ae.start_server(("127.0.0.1", 0), evt_handlers=archive.handlers()) as server:
            yield archive, server.port


@asynccontextmanager
async def storage_scp() -> AsyncIterator[tuple[int, RecordingHandlers]]:
    """An aiodicom Storage SCP accepting every storage class in every transfer syntax."""
    ae = AE("DEST")
    for cx in sop_class.AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(AllTransferSyntaxes))
    recorder = RecordingHandlers()
    async with ae.start_server(("127.0.0.1", 0), evt_handlers=recorder.handlers) as server:
        yield server.port, recorder


def scu_ae() -> AE:
    ae = AE("QRSCU")
    ae.acse_timeout = ae.dimse_timeout = GUARD
    ae.add_requested_context(sop_class.Verification)
    for uid in STORAGE:
        ae.add_requested_context(uid)
    ae.add_requested_context(sop_class.SecondaryCaptureImageStorage, [JPEG2000])
    for uid in (SR_FIND, SR_GET, SR_MOVE, PR_FIND):
        ae.add_requested_context(uid)
    return ae


def q(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


async def responses(it: Any) -> list[tuple[int, Dataset | None]]:
    with anyio.fail_after(GUARD):
        return [(int(status.Status), ident) async for status, ident in it]


async def test_end_to_end_aiodicom(tmp_path: Path) -> None:
    async with (
        storage_scp() as (dest_port, dest),
        qr_server(tmp_path / "store", {"DEST": ("127.0.0.1", dest_port)}) as (archive, port),
    ):
        received: list[str] = []

        def on_store(event: evt.Event) -> int:
            received.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000

        roles = [build_role(uid, scu_role=True, scp_role=True) for uid in STORAGE]
        instances = study(PatientID="P1", PatientName="Doe^John")
        with anyio.fail_after(GUARD * 3):
            async with scu_ae().associate(
                "127.0.0.1",
                port,
                ae_title="QRSCP",
                ext_neg=roles,
                evt_handlers=[(evt.EVT_C_STORE, on_store)],
            ) as assoc:
                for ds in instances:
                    assert (await assoc.send_c_store(ds)).Status == 0
                for name in TEST_FILES:
                    assert (await assoc.send_c_store(_testdata(name))).Status == 0

                # C-FIND: every study, then matching on name, date range and modality
                found = await responses(
                    assoc.send_c_find(
                        q(QueryRetrieveLevel="STUDY", StudyInstanceUID="", ModalitiesInStudy=""),
                        SR_FIND,
                    )
                )
                assert [s for s, _ in found] == [0xFF00] * 4 + [0x0000]
                found = await responses(
                    assoc.send_c_find(
                        q(
                            QueryRetrieveLevel="STUDY",
                            StudyInstanceUID="",
                            PatientName="DOE^*",
                            StudyDate="20240101-",
                            ModalitiesInStudy="MR",
                            NumberOfStudyRelatedInstances="",
                        ),
                        SR_FIND,
                    )
                )
                [(_, ident), (final, _)] = found
                assert final == 0
                assert ident is not None
                assert ident.StudyInstanceUID == instances[0].StudyInstanceUID
                assert ident.NumberOfStudyRelatedInstances == 6
                # a refused identifier: the failure status comes back
                found = await responses(
                    assoc.send_c_find(q(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), PR_FIND)
                )
                assert [s for s, _ in found] == [0xA900]
                # leaving the block cancels the C-FIND; the association stays usable
                async with assoc.send_c_find(
                    q(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), SR_FIND
                ) as matches:
                    async for _status, _ident in matches:
                        break
                assert (await assoc.send_c_echo()).Status == 0

                # C-GET of one series
                series_uid = instances[0].SeriesInstanceUID
                got = await responses(
                    assoc.send_c_get(
                        q(
                            QueryRetrieveLevel="SERIES",
                            StudyInstanceUID=instances[0].StudyInstanceUID,
                            SeriesInstanceUID=series_uid,
                        ),
                        SR_GET,
                    )
                )
                assert got[-1][0] == 0x0000
                assert sorted(received) == sorted(str(d.SOPInstanceUID) for d in instances[:3])

                # C-MOVE of the study and of the JPEG 2000 instance to an aiodicom Storage SCP
                jpeg = dcmread(_testdata("JPEG2000.dcm"), stop_before_pixels=True)
                for study_uid in (instances[0].StudyInstanceUID, jpeg.StudyInstanceUID):
                    moved = await responses(
                        assoc.send_c_move(
                            q(QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid),
                            "DEST",
                            SR_MOVE,
                        )
                    )
                    assert moved[-1][0] == 0x0000, moved
                assert len(dest.stored) == 7
                stored_ts = {uid: ts for uid, ts, _, _ in dest.stored}
                assert stored_ts[str(jpeg.SOPInstanceUID)] == JPEG2000
                # an unknown destination
                moved = await responses(
                    assoc.send_c_move(
                        q(QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid),
                        "NOWHERE",
                        SR_MOVE,
                    )
                )
                assert moved[-1][0] == 0xA801
        assert len(files_under(archive.directory / "objects")) == 9


async def run_tool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(GUARD * 3):
        return await anyio.run_process(list(args), cwd=cwd, check=False)


@pytest.mark.interop
@pytest.mark.skipif(SKIP_WITHOUT_DCMTK, reason="dcmtk is not installed")
async def test_end_to_end_dcmtk(tmp_path: Path) -> None:
    movescu_port = free_port()
    async with (
        storage_scp() as (dest_port, dest),
        qr_server(
            tmp_path / "store",
            {"DEST": ("127.0.0.1", dest_port), "MOVESCU": ("127.0.0.1", movescu_port)},
        ) as (archive, port),
    ):
        for name in TEST_FILES:
            await archive.store_file(_testdata(name))
        instances = study(PatientID="P1", PatientName="Doe^John")
        for ds in instances:
            assert await archive.handle_store(store_event(ds)) == 0
        study_uid = str(instances[0].StudyInstanceUID)
        common = ["-aet", "DCMTK", "-aec", "QRSCP"]

        # findscu: responses extracted as rsp*.dcm files
        out = tmp_path / "find"
        out.mkdir()
        done = await run_tool(
            "/usr/bin/findscu", "-S", "-X", *common,
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}",
            "-k", "SeriesInstanceUID", "-k", "Modality", "-k", "NumberOfSeriesRelatedInstances",
            "127.0.0.1", str(port), cwd=out,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        series = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
        assert sorted(str(d.Modality) for d in series) == ["CT", "MR"]
        assert all(int(d.NumberOfSeriesRelatedInstances) == 3 for d in series)

        # findscu, Patient Root, wild card on the patient's name
        out = tmp_path / "find2"
        out.mkdir()
        done = await run_tool(
            "/usr/bin/findscu", "-P", "-X", *common,
            "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientName=*MR*", "-k", "PatientID",
            "127.0.0.1", str(port), cwd=out,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        [patient] = [dcmread(p) for p in out.glob("rsp*.dcm")]
        assert patient.PatientID == "4MR1"

        # getscu of the study
        out = tmp_path / "get"
        out.mkdir()
        done = await run_tool(
            "/usr/bin/getscu", "-S", *common, "-od", str(out),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        got = {str(dcmread(p).SOPInstanceUID) for p in out.iterdir()}
        assert got == {str(d.SOPInstanceUID) for d in instances}

        # movescu to itself (its own storage SCP) ...
        out = tmp_path / "move"
        out.mkdir()
        ct = dcmread(_testdata("CT_small.dcm"), stop_before_pixels=True)
        done = await run_tool(
            "/usr/bin/movescu", "-S", *common, "-aem", "MOVESCU",
            "--port", str(movescu_port), "-od", str(out),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ct.StudyInstanceUID}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        [moved] = list(out.iterdir())
        assert dcmread(moved).SOPInstanceUID == ct.SOPInstanceUID

        # ... and to an aiodicom Storage SCP, at IMAGE level
        done = await run_tool(
            "/usr/bin/movescu", "-S", *common, "-aem", "DEST",
            "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study_uid}",
            "-k", f"SeriesInstanceUID={instances[0].SeriesInstanceUID}",
            "-k", f"SOPInstanceUID={instances[0].SOPInstanceUID}\\{instances[1].SOPInstanceUID}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert sorted(uid for uid, *_ in dest.stored) == sorted(
            str(d.SOPInstanceUID) for d in instances[:2]
        )

        # an unknown move destination is refused
        done = await run_tool(
            "/usr/bin/movescu", "-S", *common, "-aem", "NOWHERE",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert b"MoveDestinationUnknown" in done.stderr + done.stdout


async def test_cli_qrscp(tmp_path: Path) -> None:
    config_file = tmp_path / "qr.toml"
    config_file.write_text('[destinations]\nDEST = "127.0.0.1:11113"\n')
    args = [sys.executable, "-m", "aiodicom", "qrscp", "-aet", "CLIQR", "--bind", "127.0.0.1"]
    args += ["-od", str(tmp_path / "store"), "--config", str(config_file)]
    args += ["--dest", "OTHER=127.0.0.1:11114", "0"]
    async with await anyio.open_process(args) as proc:
        try:
            assert proc.stdout is not None
            line = b""
            with anyio.fail_after(GUARD):
                while b"\n" not in line:
                    line += await proc.stdout.receive()
            text = line.decode()
            assert "CLIQR" in text and "2 move destination(s)" in text
            port = int(text.split("listening on 127.0.0.1:")[1].split(",")[0])
            with anyio.fail_after(GUARD):
                async with scu_ae().associate("127.0.0.1", port, ae_title="CLIQR") as assoc:
                    assert (await assoc.send_c_store(make_dataset())).Status == 0
                    found = await responses(
                        assoc.send_c_find(
                            q(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), SR_FIND
                        )
                    )
                    assert [s for s, _ in found] == [0xFF00, 0x0000]
        finally:
            proc.terminate()
            with anyio.fail_after(GUARD):
                await proc.wait()
    assert (tmp_path / "store" / "index.sqlite").exists()


def test_qrscp_config_errors(tmp_path: Path) -> None:
    from aiodicom.cli import main

    assert main(["qrscp", "-od", str(tmp_path), "--dest", "bad", "0"]) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("[destinations]\nX = 1\n")
    assert main(["qrscp", "-od", str(tmp_path), "--config", str(bad), "0"]) == 1


def test_qrerror_is_exception() -> None:
    assert isinstance(QRError(0xA900, "x"), Exception)


def _open_mode(directory: Path) -> int:
    """The mode open() gives a new file here (the umask's)."""
    probe = directory / "mode-probe"
    probe.write_bytes(b"")
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    return mode


async def test_spooled_instances_into_place_across_file_systems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance spooled on another file system (the AE's spool directory
    on a tmpfs, say) is stored, and so is one the CLI's get retrieves: each
    a whole file in place, no spool file left behind."""
    big = make_dataset(PixelData=bytes(17 << 20), Rows=2048, Columns=4352)  # over 16 MiB
    shm = Path("/dev/shm")
    other = shm.is_dir() and os.access(shm, os.W_OK)
    with tempfile.TemporaryDirectory(dir=shm if other else tmp_path) as spool:
        async with open_archive(tmp_path / "store") as archive:
            ae = setup_ae(AE("QRSCP"), archive)
            ae.acse_timeout = ae.dimse_timeout = GUARD
            ae.spool_directory = spool  # not the archive's file system (with /dev/shm)
            async with ae.start_server(("127.0.0.1", 0), evt_handlers=archive.handlers()) as srv:
                scu = scu_ae()
                with anyio.fail_after(GUARD):
                    async with scu.associate("127.0.0.1", srv.port, ae_title="QRSCP") as assoc:
                        assert (await assoc.send_c_store(big)).Status == 0
                assert os.listdir(spool) == []
                [(rel,)] = rows(archive, "SELECT path FROM instance")
                assert dcmread(archive.directory / rel).PixelData == big.PixelData
                # with the mode open() gives (the umask's), not the spool file's 0o600
                assert (archive.directory / rel).stat().st_mode & 0o777 == _open_mode(tmp_path)
                # aiodicom get: spooled under the output directory, renamed into
                # place, whatever the system's temporary directory
                monkeypatch.setenv("TMPDIR", spool)
                got = tmp_path / "got"
                cli = [sys.executable, "-m", "aiodicom", "get", "-S"]
                done = await run_tool(
                    *cli, "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={big.StudyInstanceUID}",
                    "-od", str(got), "127.0.0.1", str(srv.port),
                )  # fmt: skip
                assert done.returncode == 0, done.stderr
                assert [p.name for p in got.iterdir()] == [f"{big.SOPInstanceUID}.dcm"]
                retrieved = got / f"{big.SOPInstanceUID}.dcm"
                assert dcmread(retrieved).PixelData == big.PixelData
                assert retrieved.stat().st_mode & 0o777 == _open_mode(tmp_path)


def _instance_files(directory: Path, count: int) -> tuple[list[str], list[str]]:
    """``count`` small CT instances written to ``directory``: their paths,
    and their SOP Instance UIDs sorted."""
    files, uids = [], []
    for i in range(count):
        ds = make_dataset(InstanceNumber=i + 1)
        ds.save_as(directory / f"f{i}.dcm", enforce_file_format=True)
        files.append(str(directory / f"f{i}.dcm"))
        uids.append(str(ds.SOPInstanceUID))
    return files, sorted(uids)


def _ct_storage_ae() -> AE:
    """A storage SCP's AE for CT Image Storage, Explicit VR Little Endian."""
    ae = AE("STORESCP")
    ae.add_supported_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    return ae


async def test_cli_store_over_several_associations(tmp_path: Path) -> None:
    """``aiodicom store -j 3``: three associations at once, each taking the
    next file; every instance arrives once. The SCP holds each store until
    the three are open, so each one is used. A peer that is not there is an
    error message, not a traceback; ``-j 0`` is refused."""
    files, expected = _instance_files(tmp_path, 9)
    by_association: dict[int, list[str]] = {}
    all_open = anyio.Event()

    async def on_store(event: evt.Event) -> int:
        by_association.setdefault(id(event.assoc), []).append(str(event.dataset.SOPInstanceUID))
        if len(by_association) == 3:
            all_open.set()
        await all_open.wait()
        return 0x0000

    ae = _ct_storage_ae()
    cli = [sys.executable, "-m", "aiodicom", "store", "-q"]
    async with ae.start_server(("127.0.0.1", 0), evt_handlers=[(evt.EVT_C_STORE, on_store)]) as srv:
        done = await run_tool(*cli, "-j", "3", "127.0.0.1", str(srv.port), *files)
    assert done.returncode == 0, done.stderr
    assert b"sent 9 of 9 instances" in done.stdout
    assert len(by_association) == 3
    assert sorted(uid for uids in by_association.values() for uid in uids) == expected
    nobody = await run_tool(*cli, "-j", "3", "127.0.0.1", str(free_port()), *files)
    assert nobody.returncode == 1 and nobody.stderr.startswith(b"error:"), nobody.stderr
    refused = await run_tool(*cli, "-j", "0", "127.0.0.1", "11112", *files)
    assert refused.returncode == 2 and b"not a positive number" in refused.stderr


async def test_cli_store_goes_on_when_one_association_is_aborted(tmp_path: Path) -> None:
    """``aiodicom store -j 2``: the SCP aborts the association that brought
    the first instance; the other association sends every remaining file.
    That one instance is reported failed (exit 1, ``sent 5 of 6``), and no
    file is left unsent for want of an association: the one the aborted
    association had read ahead (send_c_stores) goes back to the others."""
    files, expected = _instance_files(tmp_path, 6)
    seen: list[str] = []
    associations: set[int] = set()
    both_open = anyio.Event()

    async def on_store(event: evt.Event) -> int:
        seen.append(str(event.dataset.SOPInstanceUID))
        associations.add(id(event.assoc))
        if len(associations) == 2:
            both_open.set()
        first = len(seen) == 1
        await both_open.wait()
        if first:
            await event.assoc.abort()
        return 0x0000

    ae = _ct_storage_ae()
    cli = [sys.executable, "-m", "aiodicom", "store", "-q", "-j", "2"]
    async with ae.start_server(("127.0.0.1", 0), evt_handlers=[(evt.EVT_C_STORE, on_store)]) as srv:
        done = await run_tool(*cli, "127.0.0.1", str(srv.port), *files)
    assert done.returncode == 1, done.stderr
    assert b"sent 5 of 6 instances" in done.stdout, (done.stdout, done.stderr)
    assert sorted(seen) == expected  # each file reached the SCP once


async def test_cli_find_get_move(tmp_path: Path) -> None:
    """``aiodicom find|get|move`` against the Q/R SCP, as a newcomer would run them."""
    files = [_testdata("CT_small.dcm"), _testdata("MR_small.dcm")]
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    async with (
        storage_scp() as (dest_port, dest),
        qr_server(tmp_path / "store", {"DEST": ("127.0.0.1", dest_port)}) as (_archive, port),
    ):
        cli = [sys.executable, "-m", "aiodicom"]
        where = ["127.0.0.1", str(port)]
        stored = await run_tool(*cli, "store", "-q", *where, *files)
        assert stored.returncode == 0, stored.stderr
        found = await run_tool(
            *cli, "find", "--json", "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", "StudyInstanceUID", "-k", "PatientName", *where,
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        lines = [json.loads(line) for line in found.stdout.decode().splitlines()]
        assert sorted(d["0020000D"]["Value"][0] for d in lines) == sorted(
            str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files
        )
        assert b"2 match(es), status 0x0000" in found.stderr
        got = await run_tool(
            *cli, "get", "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study_uid}", "-od", str(tmp_path / "got"), *where,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        (retrieved,) = (tmp_path / "got").iterdir()
        assert dcmread(retrieved) == dcmread(files[0])
        assert retrieved.stat().st_mode & 0o777 == _open_mode(tmp_path)  # not mkstemp's 0o600
        moved = await run_tool(
            *cli, "move", "-aem", "DEST", "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study_uid}", *where,
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        assert len(dest.stored) == 1
        unknown = await run_tool(
            *cli, "move", "-aem", "NOBODY", "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study_uid}", *where,
        )  # fmt: skip
        assert unknown.returncode == 1
        assert b"0xA801" in unknown.stderr
