"""Damaged C-FIND and C-GET identifiers against the Query/Retrieve SCP, over
real loopback sockets.

The command set is valid; the identifier is a valid query damaged a
different, seeded way per case (bits flipped, cut short, bytes inserted, a
slice repeated, an element's length rewritten). The archive must answer
every request with statuses of the service (never an A-ABORT: the command
was fine), answer a C-ECHO on the same association afterwards, and still
give the same matches for the undamaged query at the end: a bad query
neither takes the server down nor touches the index.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aiodicom import AE, Server, association, sop_class
from aiodicom.dimse import (
    DATASET_PRESENT,
    NO_DATASET,
    CommandField,
    decode_command,
    encode_command,
    fragment,
)
from aiodicom.dsutils import encode_dataset
from aiodicom.pdu import AAbort, AAssociateRQ, PDataTF
from aiodicom.pdu_primitives import (
    SCP_SCU_RoleSelectionNegotiation,
)
from aiodicom.qrscp import Archive, setup_ae
from aiodicom.testing import make_dataset

from ._fuzz import PYDICOM_WARNINGS_PASS, damage, element_length_fields
from .conftest import (
    GUARD,
    RawPeer,
    raw_associate,
    raw_connection,
    raw_release,
    rq_with_contexts,
)

pytestmark = [pytest.mark.anyio, PYDICOM_WARNINGS_PASS]

CASES = int(os.environ.get("FUZZ_QR_CASES", "500"))
FIND = sop_class.StudyRootQueryRetrieveInformationModelFind
GET = sop_class.StudyRootQueryRetrieveInformationModelGet
MAX_PDU = 16384
#: PS3.4 C.4.1.1.4 and C.4.3.1.4: what a C-FIND-RSP and a C-GET-RSP may carry.
FIND_STATUSES = {0x0000, 0xFF00, 0xFF01, 0xFE00, 0xA700, 0xA900, 0x0122}
GET_STATUSES = {0x0000, 0xFF00, 0xFE00, 0xB000, 0xA701, 0xA702, 0xA900, 0x0122}


#: What the association answers when the handler raised: the archive must not.
HANDLER_RAISED = {0xC311, 0xC411, 0xC511}


def _is_allowed(status: int, allowed: set[int]) -> bool:
    if status in HANDLER_RAISED:
        return False
    return status in allowed or 0xC000 <= status <= 0xCFFF  # "unable to process"


def _query(level: str, **keys: Any) -> bytes:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return encode_dataset(ds, ImplicitVRLittleEndian)


def _damage(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Damage a data set; the characters that mean something in a query among what goes in."""
    return damage(
        data,
        rng,
        length_fields=element_length_fields,
        byteorder="little",
        inserts=(b"*", b"?", b"\\", b"-", b"'", b"%", b"_"),
        max_repeat=64,
    )


#: The contexts the tests propose: Verification, Find, Get, CT Storage.
_CONTEXTS = (
    (1, sop_class.Verification, ImplicitVRLittleEndian),
    (3, FIND, ImplicitVRLittleEndian),
    (5, GET, ImplicitVRLittleEndian),
    (7, sop_class.CTImageStorage, ExplicitVRLittleEndian),
)


def _rq() -> AAssociateRQ:
    """For C-FIND and C-GET: we take the SCP role for CT Storage (the sub-operations)."""
    role = SCP_SCU_RoleSelectionNegotiation(
        sop_class_uid=sop_class.CTImageStorage, scu_role=False, scp_role=True
    )
    return rq_with_contexts(*_CONTEXTS, called="QRSCP", calling="FUZZ", extra=(role,))


@asynccontextmanager
async def _serving(archive: Archive, rq: AAssociateRQ) -> AsyncIterator[tuple[Server, RawPeer]]:
    """The archive served on loopback, and a raw association to it made with ``rq``."""
    ae = setup_ae(AE("QRSCP"), archive)
    ae.acse_timeout = ae.dimse_timeout = GUARD
    async with (
        ae.start_server(("127.0.0.1", 0), evt_handlers=archive.handlers()) as server,
        raw_connection(server.port) as peer,
    ):
        await raw_associate(peer, rq)
        yield server, peer


async def _send(
    peer: RawPeer, context_id: int, command: dict[str, Any], data: bytes | None
) -> None:
    for raw in fragment(context_id, encode_command(command), data, MAX_PDU):
        await peer.send(raw)


async def _message(peer: RawPeer) -> tuple[int, dict[str, Any], bytes | None]:
    """The next whole DIMSE message the SCP sends: (context ID, command, data set bytes)."""
    command: dict[str, Any] | None = None
    parts: list[bytes] = []
    data: list[bytes] = []
    while True:
        pdu = await peer.read_pdu()
        assert isinstance(pdu, PDataTF), f"the SCP sent {pdu!r}"
        for pdv in pdu.pdvs:  # (a message ends its PDU: the SCP sends one at a time)
            if pdv.is_command:
                parts.append(bytes(pdv.data))
                if pdv.is_last:
                    command = decode_command(b"".join(parts))
                    if command["CommandDataSetType"] == NO_DATASET:
                        return pdv.context_id, command, None
            else:
                data.append(bytes(pdv.data))
                if pdv.is_last:
                    assert command is not None
                    return pdv.context_id, command, b"".join(data)


async def _request(
    peer: RawPeer, context_id: int, field: int, sop: str, mid: int, identifier: bytes
) -> tuple[list[int], int]:
    """Send a C-FIND/C-GET-RQ; answer C-STORE sub-operations; return its
    statuses and how many instances came."""
    command = {
        "CommandField": field,
        "MessageID": mid,
        "Priority": 0,
        "AffectedSOPClassUID": sop,
        "CommandDataSetType": DATASET_PRESENT,
    }
    await _send(peer, context_id, command, identifier)
    statuses, stored = [], 0
    while True:
        cx, rsp, _ = await _message(peer)
        if rsp["CommandField"] == CommandField.C_STORE_RQ:
            stored += 1
            answer = {
                "CommandField": CommandField.C_STORE_RSP,
                "MessageIDBeingRespondedTo": rsp["MessageID"],
                "AffectedSOPClassUID": rsp["AffectedSOPClassUID"],
                "AffectedSOPInstanceUID": rsp["AffectedSOPInstanceUID"],
                "CommandDataSetType": NO_DATASET,
                "Status": 0,
            }
            await _send(peer, cx, answer, None)
            continue
        assert rsp["MessageIDBeingRespondedTo"] == mid, rsp
        statuses.append(int(rsp["Status"]))
        if statuses[-1] not in (0xFF00, 0xFF01):
            return statuses, stored


async def _echo(peer: RawPeer, mid: int) -> int:
    command = {
        "CommandField": CommandField.C_ECHO_RQ,
        "MessageID": mid,
        "AffectedSOPClassUID": sop_class.Verification,
        "CommandDataSetType": NO_DATASET,
    }
    await _send(peer, 1, command, None)
    _, rsp, _ = await _message(peer)
    return int(rsp["Status"])


async def test_damaged_identifiers_get_statuses_not_aborts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = await Archive.open(tmp_path / "store", ae_title="QRSCP")
    async with archive:
        study_uid = "1.2.826.0.1.3680043.8.498.1"
        for series in range(2):
            for i in range(3):
                ds = make_dataset(
                    StudyInstanceUID=study_uid,
                    SeriesInstanceUID=f"{study_uid}.{series + 1}",
                    Modality=("CT", "MR")[series],
                    SeriesNumber=series + 1,
                    InstanceNumber=i + 1,
                    StudyDate="20240115",
                    PatientName="Doe^Jane",
                    PatientID="P1",
                )
                ds.SOPClassUID = sop_class.CTImageStorage
                ds.file_meta.MediaStorageSOPClassUID = sop_class.CTImageStorage
                path = tmp_path / f"in{series}{i}.dcm"
                ds.save_as(path, enforce_file_format=True)
                await archive.store_file(path)
        find = _query(
            "SERIES",
            PatientName="Doe*",
            StudyDate="20240101-20241231",
            StudyInstanceUID=study_uid,
            SeriesInstanceUID="",
            Modality="",
            SeriesDescription="*",
            NumberOfSeriesRelatedInstances="",
        )
        get = _query("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=f"{study_uid}.1")
        outcomes: dict[str, int] = {}
        async with _serving(archive, _rq()) as (server, peer):
            with anyio.fail_after(GUARD):
                baseline = await _request(peer, 3, CommandField.C_FIND_RQ, FIND, 1, find)
                got = await _request(peer, 5, CommandField.C_GET_RQ, GET, 2, get)
            assert baseline == ([0xFF00, 0xFF00, 0x0000], 0), baseline
            assert got == ([0xFF00] * 3 + [0x0000], 3), got  # a pending after each sub-operation
            mid = 3
            for seed in range(1, CASES + 1):
                rng = random.Random(seed)
                service = rng.choice(["find", "get"])
                kind, damaged = _damage(find if service == "find" else get, rng)
                where = f"seed {seed} ({service}, {kind})"
                try:
                    with anyio.fail_after(GUARD):
                        if service == "find":
                            statuses, _ = await _request(
                                peer, 3, CommandField.C_FIND_RQ, FIND, mid, damaged
                            )
                            allowed = FIND_STATUSES
                        else:
                            statuses, _ = await _request(
                                peer, 5, CommandField.C_GET_RQ, GET, mid, damaged
                            )
                            allowed = GET_STATUSES
                        echo = await _echo(peer, mid + 1)
                except Exception as exc:
                    raise AssertionError(f"{where}: {exc!r}") from exc
                mid += 2
                assert all(_is_allowed(s, allowed) for s in statuses), f"{where}: {statuses}"
                assert echo == 0, where
                final = statuses[-1]
                outcomes[f"{service} 0x{final:04X}"] = (
                    outcomes.get(f"{service} 0x{final:04X}", 0) + 1
                )
            # The undamaged query still finds the same: the index is whole.
            with anyio.fail_after(GUARD):
                again = await _request(peer, 3, CommandField.C_FIND_RQ, FIND, mid, find)
            assert again == baseline
            await raw_release(peer)
        assert not server.active_associations
    # the damage was noticed as often as not, and some damaged queries still matched
    failures = sum(n for k, n in outcomes.items() if not k.endswith("0x0000"))
    assert failures and failures < CASES, outcomes
    assert not [r.getMessage() for r in caplog.records if r.exc_info]


async def test_an_identifier_value_that_does_not_decode_is_refused_c000(tmp_path: Path) -> None:
    """A query key whose value pydicom cannot convert (Rows, US, 3 bytes long)
    is a refusal, 0xC000 'the identifier does not decode', like an identifier
    that does not parse at all; not a handler error (0xC311) with a traceback
    in the log, which it was when the element was first read inside the
    query planner."""
    identifier = _query("STUDY", StudyInstanceUID="") + struct.pack("<HHL", 0x0028, 0x0010, 3)
    identifier += b"\x01\x02\x03"
    archive = await Archive.open(tmp_path / "store", ae_title="QRSCP")
    async with archive, _serving(archive, _rq()) as (_, peer):
        with anyio.fail_after(GUARD):
            await _send(
                peer,
                3,
                {
                    "CommandField": CommandField.C_FIND_RQ,
                    "MessageID": 1,
                    "Priority": 0,
                    "AffectedSOPClassUID": FIND,
                    "CommandDataSetType": DATASET_PRESENT,
                },
                identifier,
            )
            _, rsp, _ = await _message(peer)
        assert rsp["Status"] == 0xC000, rsp
        assert "does not decode" in rsp["ErrorComment"], rsp
        await raw_release(peer)


# ---------------------------------------------------------------------------
# C-GET with an SCU that misbehaves during the sub-operations

#: How the raw SCU answers a C-STORE sub-operation (weights).
_ANSWERS = {
    "ok": 6,
    "fail": 2,  # 0xA700
    "warn": 1,  # 0xB000
    "no-status": 1,  # a C-STORE-RSP without a Status: a failed sub-operation
    "stray-then-ok": 1,  # a response for an unknown message ID, then the right one
    "cancel": 1,  # C-CANCEL of the C-GET, then the right response
    "abort": 1,  # A-ABORT
    "close": 1,  # the connection dropped
    "garbage": 1,  # a PDU of an unknown type: the SCP aborts
}


async def _misbehaving_get(
    peer: RawPeer, mid: int, identifier: bytes, rng: random.Random
) -> tuple[dict[str, int], dict[str, Any] | None]:
    """A C-GET whose C-STORE sub-operations are answered each a seeded way;
    the answers given, and the final C-GET-RSP (None: the association ended)."""
    await _send(
        peer,
        5,
        {
            "CommandField": CommandField.C_GET_RQ,
            "MessageID": mid,
            "Priority": 0,
            "AffectedSOPClassUID": GET,
            "CommandDataSetType": DATASET_PRESENT,
        },
        identifier,
    )
    given: dict[str, int] = {}
    while True:
        cx, rq, _ = await _message(peer)
        if rq["CommandField"] != CommandField.C_STORE_RQ:
            assert rq["MessageIDBeingRespondedTo"] == mid, rq
            if rq["Status"] in (0xFF00, 0xFF01):
                continue
            return given, rq
        answer = rng.choices(list(_ANSWERS), weights=list(_ANSWERS.values()))[0]
        given[answer] = given.get(answer, 0) + 1
        if answer == "abort":
            await peer.send(AAbort(source=0, reason=0))
            return given, None
        if answer == "close":
            return given, None
        if answer == "garbage":
            await peer.send(b"\x09\x00\x00\x00\x00\x02\x00\x00")
            # AA-1: the SCP sends an A-ABORT, then waits (Sta13) for us to close.
            while not isinstance(pdu := await peer.read_pdu(), AAbort):
                assert isinstance(pdu, PDataTF), pdu
            return given, None
        rsp: dict[str, Any] = {
            "CommandField": CommandField.C_STORE_RSP,
            "MessageIDBeingRespondedTo": rq["MessageID"],
            "AffectedSOPClassUID": rq["AffectedSOPClassUID"],
            "AffectedSOPInstanceUID": rq["AffectedSOPInstanceUID"],
            "CommandDataSetType": NO_DATASET,
            "Status": {"fail": 0xA700, "warn": 0xB000}.get(answer, 0x0000),
        }
        if answer == "no-status":
            del rsp["Status"]
        elif answer == "stray-then-ok":
            stray = {**rsp, "MessageIDBeingRespondedTo": (rq["MessageID"] + 1000) & 0xFFFF}
            await _send(peer, cx, stray, None)
        elif answer == "cancel":
            cancel = {
                "CommandField": CommandField.C_CANCEL_RQ,
                "MessageIDBeingRespondedTo": mid,
                "CommandDataSetType": NO_DATASET,
            }
            await _send(peer, 5, cancel, None)
        await _send(peer, cx, rsp, None)


def _open_files() -> list[str] | None:
    """What this process's file descriptors refer to, but the SQLite index's
    (SQLite holds a closed connection's descriptor while another connection
    of the process has locks on the file, and closes it later)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None  # not Linux: the check is left out
    out = []
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir itself used
        if "index.sqlite" not in target:
            out.append(target)
    return sorted(out)


@pytest.mark.parametrize("streamed", [False, True], ids=["read-whole", "streamed"])
async def test_a_misbehaving_c_get_scu_never_breaks_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    """Each case: a new association, a C-GET of 6 instances whose C-STORE
    sub-operations the SCU answers a seeded way (success, failure, warning,
    no Status, a stray response first, a C-CANCEL, an A-ABORT, a dropped
    connection, a bad PDU). Where the association goes on, the final
    response's counts are those of the answers given, then a C-ECHO works.
    At the end every association has ended, no file or socket is left open
    (``streamed`` makes every instance go out from an open file: each is
    closed, one read ahead of its turn included), and a clean C-GET still brings all 6."""
    opened: list[Any] = []  # every file opened to stream an instance from
    if streamed:
        monkeypatch.setattr(association, "_INLINE_READ", 0)
        prepare = association._prepare_file

        def tracked(source: Any) -> Any:
            info, data, fp = prepare(source)
            if fp is not None:
                opened.append(fp)  # (held: its closing is not left to the collector)
            return info, data, fp

        monkeypatch.setattr(association, "_prepare_file", tracked)
    archive = await Archive.open(tmp_path / "store", ae_title="QRSCP")
    study_uid = "1.2.826.0.1.3680043.8.498.2"
    for i in range(6):
        ds = make_dataset(StudyInstanceUID=study_uid, InstanceNumber=i + 1, PatientID="P1")
        path = tmp_path / f"in{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        await archive.store_file(path)
    get = _query("STUDY", StudyInstanceUID=study_uid)
    cases = max(CASES // 5, 20)
    ae = setup_ae(AE("QRSCP"), archive)
    ae.acse_timeout = ae.dimse_timeout = GUARD
    outcomes: dict[str, int] = {}

    async def all_ended(server: Server) -> None:
        with anyio.fail_after(GUARD):
            await server._until(lambda: not server.active_associations)

    async with (
        archive,
        ae.start_server(("127.0.0.1", 0), evt_handlers=archive.handlers()) as server,
    ):
        async with raw_connection(server.port) as peer:
            await raw_associate(peer, _rq())
            with anyio.fail_after(GUARD):
                assert await _request(peer, 5, CommandField.C_GET_RQ, GET, 1, get) == (
                    [0xFF00] * 6 + [0x0000],
                    6,
                )
            await raw_release(peer)
        await all_ended(server)
        files = _open_files()
        for seed in range(1, cases + 1):
            rng = random.Random(seed)
            where = f"seed {seed}"
            async with raw_connection(server.port) as peer:
                try:
                    with anyio.fail_after(GUARD):
                        await raw_associate(peer, _rq())
                        given, final = await _misbehaving_get(peer, 1, get, rng)
                        if final is not None:
                            echo = await _echo(peer, 2)
                            await raw_release(peer)
                except Exception as exc:
                    raise AssertionError(f"{where}: {exc!r}") from exc
            if final is None:
                outcomes["ended"] = outcomes.get("ended", 0) + 1
                continue
            assert echo == 0, where
            status = int(final["Status"])
            outcomes[f"0x{status:04X}"] = outcomes.get(f"0x{status:04X}", 0) + 1
            completed = final["NumberOfCompletedSuboperations"]
            failed = final["NumberOfFailedSuboperations"]
            warning = final["NumberOfWarningSuboperations"]
            if "cancel" in given:
                assert status in (0xFE00, 0x0000, 0xB000, 0xA702), f"{where}: {final}"
                remaining = final.get("NumberOfRemainingSuboperations") or 0
                assert completed + failed + warning + remaining == 6, f"{where}: {final}"
                continue
            assert failed == given.get("fail", 0) + given.get("no-status", 0), f"{where}: {given}"
            assert warning == given.get("warn", 0), f"{where}: {given}"
            assert completed == given.get("ok", 0) + given.get("stray-then-ok", 0), where
            expected = 0x0000 if failed + warning == 0 else 0xA702 if failed == 6 else 0xB000
            assert status == expected, f"{where}: {final} after {given}"
        async with raw_connection(server.port) as peer:
            await raw_associate(peer, _rq())
            with anyio.fail_after(GUARD):
                again = await _request(peer, 5, CommandField.C_GET_RQ, GET, 1, get)
            assert again == ([0xFF00] * 6 + [0x0000], 6)
            await raw_release(peer)
        await all_ended(server)
        if files is not None:
            assert _open_files() == files
    if streamed:
        assert len(opened) > cases and all(fp.closed for fp in opened)
    # every kind of ending was met
    assert {"ended", "0x0000", "0xB000", "0xFE00"} <= set(outcomes), outcomes


# ---------------------------------------------------------------------------
# C-STORE of damaged instances: the index and the files stay one


def _store_rq() -> AAssociateRQ:
    """For C-STORE: no role selection, we are the SCU."""
    return rq_with_contexts(*_CONTEXTS, called="QRSCP", calling="FUZZ")


async def test_damaged_instances_are_stored_whole_or_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """C-STORE-RQs with a valid command and a damaged data set (the same
    damage as above): each is answered a C-STORE status; the association
    goes on; at the end every file in the archive has its row in the index
    and every row its file, and nothing is left in the incoming directory."""
    import sqlite3

    from pydicom.uid import generate_uid

    ds = make_dataset(PatientName="Doe^Jane", PatientID="P1", StudyDate="20240115")
    ds.SOPClassUID = sop_class.CTImageStorage
    ds.ReferencedSeriesSequence = [Dataset()]
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()
    outcomes: dict[int, int] = {}
    archive = await Archive.open(tmp_path / "store", ae_title="QRSCP")
    async with archive:
        async with _serving(archive, _store_rq()) as (_, peer):
            for seed in range(CASES + 1):
                rng = random.Random(seed)
                uid = f"1.2.826.0.1.3680043.8.498.2.{seed}"
                ds.SOPInstanceUID = uid
                data = encode_dataset(ds, ExplicitVRLittleEndian)
                kind = "none"
                if seed:
                    kind, data = _damage(data, rng)
                command = {
                    "CommandField": CommandField.C_STORE_RQ,
                    "MessageID": seed + 1,
                    "Priority": 0,
                    "AffectedSOPClassUID": sop_class.CTImageStorage,
                    "AffectedSOPInstanceUID": uid,
                    "CommandDataSetType": DATASET_PRESENT,
                }
                where = f"seed {seed} ({kind})"
                try:
                    with anyio.fail_after(GUARD):
                        await _send(peer, 7, command, data)
                        _, rsp, _ = await _message(peer)
                except Exception as exc:
                    raise AssertionError(f"{where}: {exc!r}") from exc
                status = int(rsp["Status"])
                assert rsp["MessageIDBeingRespondedTo"] == seed + 1, where
                assert status == 0 or 0xA700 <= status <= 0xCFFF, f"{where}: 0x{status:04X}"
                if seed == 0:
                    assert status == 0
                outcomes[status] = outcomes.get(status, 0) + 1
            with anyio.fail_after(GUARD):
                assert await _echo(peer, CASES + 10) == 0
            await raw_release(peer)
        conn = sqlite3.connect(archive.index_path)
        try:
            indexed = {row[0] for row in conn.execute("SELECT path FROM instance")}
        finally:
            conn.close()
    on_disk = {
        p.relative_to(tmp_path / "store").as_posix()
        for p in (tmp_path / "store").rglob("*")
        if p.is_file() and not p.name.startswith("index.sqlite")
    }
    assert not list(archive.incoming.iterdir()), "a file was left half-way"
    assert on_disk == indexed
    assert 1 <= len(indexed) <= outcomes.get(0, 0), outcomes  # (a damaged UID may repeat one)
    assert len(outcomes) > 1, outcomes  # some damage was refused
    # every refusal was one: no handler error with its traceback in the log
    assert not [r.getMessage() for r in caplog.records if r.exc_info]


async def test_an_instance_pydicom_cannot_read_is_refused_c000(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A data set with an element of an unknown VR ('LM' for Patient ID) is
    refused 0xC000 'the data set does not decode', with nothing left in the
    archive; it was a handler error (0xC210, a traceback in the log) when
    pydicom raised while the index record was made."""
    ds = make_dataset(PatientName="Doe^Jane", PatientID="P1")
    ds.SOPClassUID = sop_class.CTImageStorage
    data = encode_dataset(ds, ExplicitVRLittleEndian)
    at = data.index(b"\x10\x00\x20\x00LO")
    data = data[: at + 4] + b"LM" + data[at + 6 :]
    archive = await Archive.open(tmp_path / "store", ae_title="QRSCP")
    async with archive, _serving(archive, _store_rq()) as (_, peer):
        command = {
            "CommandField": CommandField.C_STORE_RQ,
            "MessageID": 1,
            "Priority": 0,
            "AffectedSOPClassUID": sop_class.CTImageStorage,
            "AffectedSOPInstanceUID": str(ds.SOPInstanceUID),
            "CommandDataSetType": DATASET_PRESENT,
        }
        with anyio.fail_after(GUARD):
            await _send(peer, 7, command, data)
            _, rsp, _ = await _message(peer)
        assert rsp["Status"] == 0xC000, rsp
        assert "does not decode" in rsp["ErrorComment"], rsp
        await raw_release(peer)
    files = [p for p in (tmp_path / "store").rglob("*.dcm")]
    assert not files
    assert not [r.getMessage() for r in caplog.records if r.exc_info]
