"""Interop of the Storage service (C-STORE) with real peers, both directions.

aiodicom runs in the test process (asyncio backend), except for the 1 GiB
tests where it runs as ``tests/peers/aiodicom_peer.py`` so that its peak RSS
can be measured alone; the peers -- dcmtk's ``storescu``/``storescp`` and
``tests/peers/pynetdicom_peer.py`` -- run as subprocesses on 127.0.0.1.

- dcmtk ``storescu``  -> aiodicom SCP     one file per transfer syntax; 200 on one association
- aiodicom SCU        -> dcmtk ``storescp`` per transfer syntax x (path, Dataset, file object); 200
- pynetdicom SCU      -> aiodicom SCP     every syntax on one association (streamed and re-encoded)
- aiodicom SCU        -> pynetdicom SCP   every syntax x (path, Dataset, file object); 200
- 1 GiB instance      aiodicom SCU (process) -> storescp; storescu -> aiodicom SCP (process)
- 20 associations at once, 8 rounds: aiodicom SCU (process) -> storescp --fork;
  20 storescu at once -> aiodicom SCP (process); peak RSS flat after round 1
- spooling of large data sets to ``event.dataset_path``; failure statuses; no accepted context

What lands on the other side is compared element by element with the source
(same tags, VRs and values; native and encapsulated Pixel Data byte for byte)
and, where the data set is sent as it is on disk and stored as received, byte
for byte. dcmtk's storescu rewrites what it sends in two documented ways (see
``_storage_data.DCMTK_SENDER_LENIENCY``); those are allowed when it is the
sender, never otherwise.

Every blocking call runs in a worker thread; every test body is bounded by
``anyio.fail_after`` and every subprocess by its own timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _aio import Changes, in_thread
from _aio import deadline as _deadline
from _storage_data import (
    ONE_PER_SYNTAX,
    OTHER_FILES,
    TEST_FILES,
    GiB,
    LargeInstance,
    MiB,
    assert_same_instance,
    bundled_file,
    dataset_bytes,
    dataset_digest,
    file_info,
    write_large_instance,
    write_small_instances,
)
from _tls import mutual_tls_context
from conftest import missing_peer, require_tool
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian as DEFLATED,
)
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from aiodicom import AE, _splice, evt, sop_class
from aiodicom._splice import Outcome
from aiodicom.errors import DicomNetworkError, DIMSEError, NoAcceptedContext

HOST = "127.0.0.1"
AIODICOM_PEER = Path(__file__).resolve().parents[1] / "peers" / "aiodicom_peer.py"

#: Bound on one test body (the peers have their own, shorter, timeouts).
TEST_DEADLINE = 60.0


def deadline(seconds: float = TEST_DEADLINE) -> Any:
    """A hang guard on one test body (this module's bound)."""
    return _deadline(seconds)


#: Bound on one peer subprocess run to completion.
PEER_TIMEOUT = 30.0
#: Bound on one 1 GiB transfer.
LARGE_TIMEOUT = 300.0
#: How much a 1 GiB transfer may raise aiodicom's peak RSS (API.md).
RSS_BUDGET_KIB = 64 * 1024

ALL_FILES = ONE_PER_SYNTAX + OTHER_FILES
N_SMALL = 200

#: storescu option that proposes (with -R) a file's own transfer syntax, each
#: in a context of its own, next to the uncompressed ones
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.70": "-xs",
}

#: every transfer syntax the aiodicom SCP accepts in these tests
SCP_SYNTAXES = list(dict.fromkeys(str(ts) for ts in TEST_FILES.values()))

# --------------------------------------------------------------------------- helpers


def write_part10(path: Path, meta: FileMetaDataset, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, meta, enforce_standard=True)
        f.write(data)


@dataclass
class Received:
    """One C-STORE as the aiodicom SCP's handler saw it."""

    message_id: int | None
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    priority: int | None
    move_originator: str | None
    meta: FileMetaDataset
    dataset: Dataset | None
    path: Path  # preamble + event.file_meta + event.encoded_dataset()
    calling_ae: str


@dataclass
class StoreSCP:
    """Handlers of an in-process aiodicom Storage SCP: save and record every instance."""

    output_dir: Path
    status: int = 0x0000
    decode: bool = True
    raise_error: bool = False
    received: list[Received] = field(default_factory=list)
    accepted: list[Any] = field(default_factory=list)
    released: list[Any] = field(default_factory=list)
    aborted: list[Any] = field(default_factory=list)

    #: Bind a plain ``def`` handler (writes the file itself) instead of an ``async def``.
    plain: bool = False
    #: Per C-STORE, what ran the handler: "worker" (a worker task of the
    #: association), else "inline" (the transport's read callback or the
    #: reader task: the SCP's inline answer on asyncio).
    served_by: list[str] = field(default_factory=list)
    #: Signalled after each record: what wait_until() awaits.
    changes: Changes = field(default_factory=Changes, repr=False, compare=False)

    async def on_store(self, event: evt.Event) -> int:
        if self.raise_error:
            raise RuntimeError("handler failure on purpose")
        self.served_by.append(served_by())
        path = self._path_for(event)
        await in_thread(write_part10, path, event.file_meta, event.encoded_dataset())
        return self._record(event, path)

    def on_store_plain(self, event: evt.Event) -> int:
        if self.raise_error:
            raise RuntimeError("handler failure on purpose")
        self.served_by.append(served_by())
        path = self._path_for(event)
        write_part10(path, event.file_meta, event.encoded_dataset())
        return self._record(event, path)

    def _path_for(self, event: evt.Event) -> Path:
        seq = len(self.received) + 1
        return self.output_dir / f"{seq:06d}_{event.request.AffectedSOPInstanceUID}.dcm"

    def _record(self, event: evt.Event, path: Path) -> int:
        assert event.context is not None
        req = event.request
        self.received.append(
            Received(
                message_id=event.message_id,
                sop_class_uid=str(req.AffectedSOPClassUID),
                sop_instance_uid=str(req.AffectedSOPInstanceUID),
                transfer_syntax=str(event.context.transfer_syntax),
                priority=req.get("Priority"),
                move_originator=req.get("MoveOriginatorApplicationEntityTitle"),
                meta=event.file_meta,
                dataset=event.dataset if self.decode else None,
                path=path,
                calling_ae=event.assoc.requestor.ae_title,
            )
        )
        self.changes.changed()
        return self.status

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_C_STORE, self.on_store_plain if self.plain else self.on_store),
            (evt.EVT_ACCEPTED, self._recorder(self.accepted)),
            (evt.EVT_RELEASED, self._recorder(self.released)),
            (evt.EVT_ABORTED, self._recorder(self.aborted)),
        ]

    def _recorder(self, into: list[Any]) -> Callable[[evt.Event], None]:
        def record(event: evt.Event) -> None:
            into.append(event.assoc)
            self.changes.changed()

        return record

    async def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait until `predicate` holds, re-checked after each record (at most 10 s)."""
        await self.changes.wait_until(predicate, what, 10.0)


def served_by() -> str:
    """'worker' in a worker task of an association, 'inline' anywhere else."""
    task = asyncio.current_task()
    return "worker" if task is not None and task.get_name().endswith("._worker") else "inline"


def storage_scp_ae(title: str = "AIOSCP", syntaxes: list[str] | None = None) -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = 10.0
    ae.dimse_timeout = 20.0
    ae.add_supported_context(sop_class.Verification)
    for cx in sop_class.AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes or SCP_SYNTAXES)
    return ae


def storage_scu_ae(paths: list[Path], title: str = "AIOSCU") -> AE:
    """An SCU proposing one context per (SOP class, transfer syntax) of `paths`."""
    ae = AE(ae_title=title)
    ae.acse_timeout = 10.0
    ae.dimse_timeout = 20.0
    seen: set[tuple[str, str]] = set()
    for path in paths:
        cls, _uid, ts = file_info(path)
        if (cls, ts) not in seen:
            seen.add((cls, ts))
            ae.add_requested_context(cls, [ts])
    return ae


def check_received(
    rec: Received,
    source: Path,
    *,
    dcmtk_sender: bool = False,
    same_bytes: bool = False,
) -> None:
    """Compare what the aiodicom SCP got (raw file and decoded data set) with `source`."""
    cls, uid, ts = file_info(source)
    assert rec.sop_class_uid == cls, rec
    # rtplan.dcm's Media Storage SOP Instance UID differs from its SOP Instance
    # UID, and pynetdicom's streamed send takes the C-STORE-RQ's Affected SOP
    # Instance UID from the file meta; the data set itself is compared below.
    assert rec.sop_instance_uid in (uid, media_instance_uid(source)), rec
    assert rec.transfer_syntax == ts, f"{source.name}: received in {rec.transfer_syntax}, not {ts}"
    assert str(rec.meta.TransferSyntaxUID) == ts
    assert str(rec.meta.MediaStorageSOPClassUID) == cls
    assert str(rec.meta.MediaStorageSOPInstanceUID) == rec.sop_instance_uid
    assert_same_instance(source, rec.path, transfer_syntax=ts, dcmtk_sender=dcmtk_sender)
    if rec.dataset is not None:
        assert_same_instance(source, rec.dataset, dcmtk_sender=dcmtk_sender)
    if same_bytes:
        assert_same_bytes(rec.path, source)


def media_instance_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)


def assert_same_bytes(received: str | os.PathLike[str], source: Path) -> None:
    """The data set bytes of `received` are those of `source`; a Deflated data set
    of odd length (image_dfl.dcm's is 4303 bytes) may get the one trailing NULL
    byte PS3.5 A.5 asks for (pydicom's and dcmtk's writers add it)."""
    got, sent = dataset_bytes(received), dataset_bytes(source)
    if got == sent:
        return
    odd_deflated = file_info(source)[2] == DEFLATED and len(sent) % 2
    assert odd_deflated and got == sent + b"\x00", (
        f"{source.name}: data set bytes differ ({len(got)} received, {len(sent)} sent)"
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a peer's event file (none if it does not exist)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n") and line.strip()]


def status_of(rsp: Dataset) -> int:
    return int(rsp.Status)


# --------------------------------------------------------------------------- data fixtures


@pytest.fixture(scope="session")
def small_instances(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """N_SMALL small valid instances (distinct UIDs and pixel bytes) in one folder."""
    return write_small_instances(tmp_path_factory.mktemp("small") / "instances", N_SMALL)


@pytest.fixture(scope="session")
def large_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LargeInstance]:
    """One instance with > 1 GiB of Pixel Data, written in chunks (session scope;
    deleted at the end of the session, pytest keeps its temp dirs)."""
    base = tmp_path_factory.mktemp("large")
    free = shutil.disk_usage(base).free
    if free < 3 * GiB:
        missing_peer(
            f"needs 3 GiB free disk under {base} for the 1 GiB tests, has {free >> 20} MiB"
        )
    instance = write_large_instance(base / "large.dcm", GiB + 1)
    try:
        yield instance
    finally:
        instance.path.unlink(missing_ok=True)


@pytest.fixture
def medium_instances(tmp_path: Path) -> list[LargeInstance]:
    """Two 6 MiB instances (to spool with a 1 MiB threshold)."""
    return [write_large_instance(tmp_path / f"medium{i}.dcm", 6 * MiB, seed=i) for i in (1, 2)]


# --------------------------------------------------------------------------- Nagle
# dcmtk's tools leave TCP_NODELAY off unless their environment sets it (here:
# TCP_NODELAY=0, as on a machine that never heard of it) and write each PDU in
# pieces; each next piece waits for the ACK of the last. aiodicom asks for that
# ACK at once (TCP_QUICKACK) when a read leaves a PDU incomplete: without it a
# delayed ACK cost ~44 ms a store. The 200-instance tests run both ways with
# and without it, and check that aiodicom asks, each store.

NAGLE = {"TCP_NODELAY": "0"}


def _count_quickacks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import aiodicom._transport as transport_module

    asked: list[int] = []
    real = transport_module._quickack

    def quickack(sock: Any) -> None:
        asked.append(1)
        real(sock)

    monkeypatch.setattr(transport_module, "_quickack", quickack)
    return asked


# =========================================================================== 1.
# dcmtk storescu -> aiodicom SCP


@pytest.mark.anyio
@pytest.mark.parametrize("name", ALL_FILES)
async def test_storescu_to_aiodicom_scp(run_dcmtk, tmp_path, name):
    source = bundled_file(name)
    _cls, _uid, ts = file_info(source)
    scp = StoreSCP(tmp_path)
    ae = storage_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=scp.handlers()) as server:
            cp = await in_thread(
                run_dcmtk,
                "storescu",
                "-v",
                "-R",
                STORESCU_PROPOSE[ts],
                "-aet",
                "STORESCU",
                "-aec",
                "AIOSCP",
                HOST,
                server.port,
                source,
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await scp.wait_until(lambda: len(scp.released) == 1, "EVT_RELEASED on the SCP")
    assert "Received Store Response (Success)" in cp.stdout + cp.stderr, cp.describe()
    (rec,) = scp.received
    assert rec.calling_ae == "STORESCU"
    check_received(rec, source, dcmtk_sender=True)
    assert not scp.aborted


@pytest.mark.anyio
@pytest.mark.parametrize("nagle", [False, True])
@pytest.mark.parametrize("handler", ["async", "plain"])
async def test_storescu_200_instances_one_association_to_aiodicom_scp(
    run_dcmtk, tmp_path, small_instances, handler, nagle, monkeypatch
):
    """A plain handler: every store is answered inline (outside a task) on asyncio.
    ``nagle``: storescu with TCP_NODELAY off (see NAGLE)."""
    asked = _count_quickacks(monkeypatch)
    folder = small_instances[0].parent
    scp = StoreSCP(tmp_path, plain=handler == "plain")
    ae = storage_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=scp.handlers()) as server:
            cp = await in_thread(
                run_dcmtk,
                "storescu",
                "-R",
                "+sd",
                "+r",
                "-aec",
                "AIOSCP",
                HOST,
                server.port,
                folder,
                timeout=PEER_TIMEOUT,
                env=NAGLE if nagle else None,
            )
            assert cp.returncode == 0, cp.describe()
            await scp.wait_until(lambda: len(scp.released) == 1, "EVT_RELEASED on the SCP")
    if nagle:
        assert len(asked) >= N_SMALL  # a PDU of every store came in pieces
    assert len(scp.accepted) == 1, "one association"
    assert len(scp.received) == N_SMALL
    assert sorted(r.message_id for r in scp.received) == list(range(1, N_SMALL + 1))
    by_uid = {r.sop_instance_uid: r for r in scp.received}
    assert len(by_uid) == N_SMALL
    for source in small_instances:
        check_received(by_uid[file_info(source)[1]], source, dcmtk_sender=True)
    assert scp.served_by == [{"plain": "inline", "async": "worker"}[handler]] * N_SMALL


# =========================================================================== 2.
# aiodicom SCU -> dcmtk storescp


async def send_as(assoc: Any, source: Path, how: str, **kwargs: Any) -> Dataset:
    """send_c_store from a path, a decoded Dataset, or an open binary file."""
    if how == "path":
        return await assoc.send_c_store(source, **kwargs)
    if how == "str":
        return await assoc.send_c_store(str(source), **kwargs)
    if how == "dataset":
        ds = await in_thread(dcmread, source)
        return await assoc.send_c_store(ds, **kwargs)
    assert how == "fileobj"
    with open(source, "rb") as f:
        return await assoc.send_c_store(f, **kwargs)


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["path", "dataset", "fileobj"])
@pytest.mark.parametrize("name", ALL_FILES)
async def test_aiodicom_scu_to_storescp(dcmtk_storescp_factory, name, how):
    # +B: storescp writes the data set exactly as it arrived
    storescp = dcmtk_storescp_factory("+B", "-pdu", "131072", fork=False)
    source = bundled_file(name)
    _cls, _uid, ts = file_info(source)
    ae = storage_scu_ae([source])
    with deadline():
        async with ae.associate(HOST, storescp.port, ae_title=storescp.ae_title) as assoc:
            rsp = await send_as(assoc, source, how)
    assert status_of(rsp) == 0x0000, f"{rsp}\n{storescp.process.describe()}"
    (received,) = await in_thread(storescp.wait_for_files, 1)
    assert_same_instance(source, received, transfer_syntax=ts)
    if how != "dataset":  # sent from the file as it is
        assert_same_bytes(received, source)


@pytest.mark.anyio
@pytest.mark.parametrize("nagle", [False, True])
async def test_aiodicom_scu_200_instances_one_association_to_storescp(
    dcmtk_storescp_factory, small_instances, nagle, monkeypatch
):
    """``nagle``: storescp with TCP_NODELAY off (see NAGLE)."""
    asked = _count_quickacks(monkeypatch)
    storescp = dcmtk_storescp_factory("+B", fork=False, env=NAGLE if nagle else None)
    ae = storage_scu_ae(small_instances[:1])
    statuses = []
    with deadline():
        async with ae.associate(HOST, storescp.port, ae_title=storescp.ae_title) as assoc:
            for source in small_instances:
                statuses.append(status_of(await assoc.send_c_store(source)))
    assert statuses == [0] * N_SMALL
    if nagle:
        assert len(asked) >= N_SMALL  # every C-STORE-RSP came in pieces
    received = await in_thread(storescp.wait_for_files, N_SMALL)
    assert len(received) == N_SMALL
    by_uid = {file_info(p)[1]: p for p in received}
    for source in small_instances:
        got = by_uid[file_info(source)[1]]
        assert dataset_bytes(got) == dataset_bytes(source), source.name
        assert_same_instance(source, got, transfer_syntax=str(ExplicitVRLittleEndian))
    assert storescp.process.running


# =========================================================================== 3.
# pynetdicom SCU -> aiodicom SCP


@pytest.mark.anyio
@pytest.mark.parametrize("chunked", [True, False], ids=["from-file", "re-encoded"])
async def test_pynetdicom_scu_to_aiodicom_scp(run_pynetdicom_scu, tmp_path, chunked):
    sources = [bundled_file(n) for n in ALL_FILES]
    scp = StoreSCP(tmp_path)
    ae = storage_scp_ae()
    store_args = [a for s in sources for a in ("--store", s)]
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=scp.handlers()) as server:
            cp, events = await in_thread(
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--called",
                "AIOSCP",
                "--calling",
                "PYSCU",
                *store_args,
                *(["--chunked"] if chunked else []),
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, f"{cp.describe()}\n{events}"
            await scp.wait_until(lambda: len(scp.released) == 1, "EVT_RELEASED on the SCP")
    stores = [e for e in events if e["event"] == "c_store"]
    assert [e["status"] for e in stores] == [0] * len(sources), stores
    assert len(scp.received) == len(sources)
    for rec, source in zip(scp.received, sources, strict=True):
        # streamed from the file: the data set bytes arrive as they are on disk
        check_received(rec, source, same_bytes=chunked)


@pytest.mark.anyio
@pytest.mark.parametrize("handler", ["async", "plain"])
async def test_pynetdicom_scu_200_instances_one_association_to_aiodicom_scp(
    run_pynetdicom_scu, tmp_path, small_instances, handler
):
    """A plain handler: every store is answered inline (outside a task) on asyncio."""
    scp = StoreSCP(tmp_path, plain=handler == "plain")
    ae = storage_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=scp.handlers()) as server:
            cp, events = await in_thread(
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--called",
                "AIOSCP",
                "--store-dir",
                small_instances[0].parent,
                "--chunked",
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await scp.wait_until(lambda: len(scp.released) == 1, "EVT_RELEASED on the SCP")
    assert len(scp.accepted) == 1
    assert [e["status"] for e in events if e["event"] == "c_store"] == [0] * N_SMALL
    assert len(scp.received) == N_SMALL
    for rec, source in zip(scp.received, small_instances, strict=True):
        check_received(rec, source, same_bytes=True)
    assert scp.served_by == [{"plain": "inline", "async": "worker"}[handler]] * N_SMALL


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "raise_error", "expected"),
    [(0xB000, False, 0xB000), (0xA700, False, 0xA700), (0x0000, True, 0xC211)],
    ids=["warning-b000", "out-of-resources-a700", "handler-raises-c211"],
)
async def test_aiodicom_scp_handler_status_seen_by_pynetdicom(
    run_pynetdicom_scu, tmp_path, status, raise_error, expected
):
    scp = StoreSCP(tmp_path, status=status, raise_error=raise_error)
    ae = storage_scp_ae()
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=scp.handlers()) as server:
            cp, events = await in_thread(
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--store",
                bundled_file("CT_small.dcm"),
                "--store",
                bundled_file("MR_small.dcm"),
                timeout=PEER_TIMEOUT,
            )
            await scp.wait_until(lambda: len(scp.released) == 1, "EVT_RELEASED on the SCP")
    # a failure status does not end the association: both stores were answered
    stores = [e for e in events if e["event"] == "c_store"]
    assert [e["status"] for e in stores] == [expected, expected], f"{cp.describe()}\n{events}"
    assert events[-2]["event"] == "released", events
    assert not scp.aborted


# =========================================================================== 4.
# aiodicom SCU -> pynetdicom SCP


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["path", "str", "dataset", "fileobj"])
async def test_aiodicom_scu_to_pynetdicom_scp(pynetdicom_scp, tmp_path, how):
    out = tmp_path / "received"
    out.mkdir()
    scp = pynetdicom_scp("--accept-all-storage", "--output-dir", out, ae_title="PYSCP")
    sources = [bundled_file(n) for n in ALL_FILES]
    ae = storage_scu_ae(sources)
    statuses = []
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title="PYSCP") as assoc:
            for source in sources:
                statuses.append(status_of(await send_as(assoc, source, how)))
        events = await in_thread(scp.wait_for_event, "c_store", count=len(sources))
        await in_thread(scp.wait_for_event, "released")
    assert statuses == [0] * len(sources)
    assert len(events) == len(sources)
    for event, source in zip(events, sources, strict=True):
        cls, uid, ts = file_info(source)
        assert (event["sop_class_uid"], event["sop_instance_uid"]) == (cls, uid)
        assert event["transfer_syntax"] == ts, (source.name, event)
        assert event["calling_ae"] == "AIOSCU"
        assert_same_instance(source, event["stored"], transfer_syntax=ts)
        if how != "dataset":
            assert_same_bytes(event["stored"], source)


@pytest.mark.anyio
async def test_aiodicom_scu_200_instances_one_association_to_pynetdicom_scp(
    pynetdicom_scp, tmp_path, small_instances
):
    out = tmp_path / "received"
    out.mkdir()
    scp = pynetdicom_scp("--output-dir", out)
    ae = storage_scu_ae(small_instances[:1])
    statuses = []
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title=scp.ae_title) as assoc:
            for source in small_instances:
                statuses.append(status_of(await assoc.send_c_store(source)))
        events = await in_thread(scp.wait_for_event, "c_store", count=N_SMALL)
        await in_thread(scp.wait_for_event, "released")
    assert statuses == [0] * N_SMALL
    assert len(scp.events("accepted")) == 1
    assert [e["message_id"] for e in events] == list(range(1, N_SMALL + 1))
    for event, source in zip(events, small_instances, strict=True):
        assert dataset_bytes(event["stored"]) == dataset_bytes(source), source.name


def _with_a_bad_file(tmp_path: Path) -> tuple[list[Path], Path]:
    """Every bundled file (each transfer syntax) with a file that is not DICOM among them."""
    bad = tmp_path / "not-dicom.dcm"
    bad.write_bytes(b"not DICOM at all" * 64)
    sources = [bundled_file(n) for n in ALL_FILES]
    return [*sources[:2], bad, *sources[2:]], bad


async def _send_many(ae: AE, port: int, title: str, sources: list[Path], eager: bool) -> list[Any]:
    """send_c_stores over one association: each source's (source, status or error)."""
    with deadline():
        async with ae.associate(HOST, port, ae_title=title) as assoc:
            results = [r async for r in assoc.send_c_stores(sources, eager=eager)]
            assert status_of(await assoc.send_c_echo()) == 0x0000  # the association went on
    return results


@pytest.mark.anyio
@pytest.mark.parametrize("eager", [False, True])
async def test_aiodicom_scu_send_c_stores_to_storescp(dcmtk_storescp_factory, tmp_path, eager):
    """Every transfer syntax on one association by send_c_stores (one request
    at a time, the next file read ahead; eager: each sent as the response
    before it arrives): storescp writes each exactly as sent; the file that
    is not DICOM is reported and nothing is sent for it."""
    # +uf: files of their own for the bundled files that share a SOP Instance UID
    storescp = dcmtk_storescp_factory("+B", "+uf", fork=False)
    sources, bad = _with_a_bad_file(tmp_path)
    good = [s for s in sources if s != bad]
    ae = storage_scu_ae(good)
    ae.add_requested_context(sop_class.Verification)
    results = await _send_many(ae, storescp.port, storescp.ae_title, sources, eager)
    assert [r.source for r in results] == sources
    assert {r.source: r.status is None for r in results} == {s: s == bad for s in sources}
    assert [status_of(r.status) for r in results if r.status is not None] == [0] * len(good)
    assert isinstance(next(r.error for r in results if r.source == bad), DIMSEError)
    received = await in_thread(storescp.wait_for_files, len(good))
    by_key = {file_info(p)[1:]: p for p in received}  # (SOP Instance UID, transfer syntax)
    assert sorted(by_key) == sorted(file_info(s)[1:] for s in good)
    for source in good:
        got = by_key[file_info(source)[1:]]
        assert_same_instance(source, got, transfer_syntax=file_info(source)[2])
        assert_same_bytes(got, source)


@pytest.mark.anyio
@pytest.mark.parametrize("eager", [False, True])
async def test_aiodicom_scu_send_c_stores_to_pynetdicom_scp(pynetdicom_scp, tmp_path, eager):
    """As the storescp test, into pynetdicom's SCP: the requests arrive one
    after the other, message IDs 1, 2, ...; the file that is not DICOM takes none."""
    out = tmp_path / "received"
    out.mkdir()
    scp = pynetdicom_scp("--accept-all-storage", "--output-dir", out, ae_title="PYSCP")
    sources, bad = _with_a_bad_file(tmp_path)
    good = [s for s in sources if s != bad]
    ae = storage_scu_ae(good)
    ae.add_requested_context(sop_class.Verification)
    results = await _send_many(ae, scp.port, "PYSCP", sources, eager)
    events = await in_thread(scp.wait_for_event, "c_store", count=len(good))
    await in_thread(scp.wait_for_event, "released")
    assert [r.source for r in results] == sources
    assert [status_of(r.status) for r in results if r.status is not None] == [0] * len(good)
    assert isinstance(next(r.error for r in results if r.source == bad), DIMSEError)
    assert [e["message_id"] for e in events] == list(range(1, len(good) + 1))
    for event, source in zip(events, good, strict=True):
        cls, uid, ts = file_info(source)
        assert (event["sop_class_uid"], event["sop_instance_uid"], event["transfer_syntax"]) == (
            cls,
            uid,
            ts,
        )
        assert_same_instance(source, event["stored"], transfer_syntax=ts)
        assert_same_bytes(event["stored"], source)


def _cli_store(port: int, ae_title: str, folder: Path) -> subprocess.CompletedProcess[bytes]:
    """``aiodicom store -q -j 2`` of ``folder`` (each association by send_c_stores)."""
    argv = [sys.executable, "-m", "aiodicom", "store", "-q", "-j", "2", "-aec", ae_title]
    return subprocess.run([*argv, HOST, str(port), str(folder)], capture_output=True, timeout=120)


@pytest.mark.anyio
async def test_aiodicom_store_tool_to_storescp(dcmtk_storescp_factory, small_instances):
    """The `aiodicom store` tool over two associations into storescp --fork:
    every file once, as the file holds it."""
    storescp = dcmtk_storescp_factory("+B")
    done = await in_thread(_cli_store, storescp.port, storescp.ae_title, small_instances[0].parent)
    assert done.returncode == 0, done.stderr
    assert f"sent {N_SMALL} of {N_SMALL} instances".encode() in done.stdout
    received = await in_thread(storescp.wait_for_files, N_SMALL)
    by_uid = {file_info(p)[1]: p for p in received}
    assert sorted(by_uid) == sorted(file_info(p)[1] for p in small_instances)
    for source in small_instances:
        assert dataset_bytes(by_uid[file_info(source)[1]]) == dataset_bytes(source), source.name


@pytest.mark.anyio
async def test_aiodicom_store_tool_to_pynetdicom_scp(pynetdicom_scp, tmp_path, small_instances):
    """As into storescp, into pynetdicom's SCP: two associations, every file once."""
    out = tmp_path / "received"
    out.mkdir()
    scp = pynetdicom_scp("--output-dir", out)
    done = await in_thread(_cli_store, scp.port, scp.ae_title, small_instances[0].parent)
    assert done.returncode == 0, done.stderr
    assert f"sent {N_SMALL} of {N_SMALL} instances".encode() in done.stdout
    events = await in_thread(scp.wait_for_event, "c_store", count=N_SMALL)
    assert len(scp.events("accepted")) == 2
    by_uid = {e["sop_instance_uid"]: e["stored"] for e in events}
    assert sorted(by_uid) == sorted(file_info(p)[1] for p in small_instances)
    for source in small_instances:
        assert dataset_bytes(by_uid[file_info(source)[1]]) == dataset_bytes(source), source.name


@pytest.mark.anyio
async def test_aiodicom_scu_store_parameters_to_pynetdicom_scp(pynetdicom_scp):
    """msg_id, priority and the Move Originator reach the peer's C-STORE-RQ."""
    scp = pynetdicom_scp()
    source = bundled_file("CT_small.dcm")
    ae = storage_scu_ae([source])
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title=scp.ae_title) as assoc:
            rsp = await assoc.send_c_store(
                source, msg_id=4242, priority=1, originator_aet="MOVER", originator_id=17
            )
        (event,) = await in_thread(scp.wait_for_event, "c_store")
    assert status_of(rsp) == 0
    assert int(rsp.MessageIDBeingRespondedTo) == 4242
    assert str(rsp.AffectedSOPInstanceUID) == file_info(source)[1]
    assert (event["message_id"], event["priority"]) == (4242, 1)
    assert event["move_originator_ae"] == "MOVER"


async def cut_off_store(ae: AE, port: int, called: str, source: Path) -> None:
    """Store ``source`` and cancel the call once five P-DATA-TF PDUs went out
    (EVT_PDU_SENT): the message is cut off, so the association must be
    aborted and the next call must raise."""
    import anyio

    from aiodicom.errors import AssociationAborted
    from aiodicom.pdu import PDataTF

    scope = anyio.CancelScope()
    sent = 0

    async def on_sent(event: evt.Event) -> None:
        nonlocal sent
        if isinstance(event.pdu, PDataTF):
            sent += 1
            if sent == 5:
                scope.cancel()
                await anyio.sleep(0)  # delivered here, in the sending task

    async with ae.associate(
        HOST, port, ae_title=called, evt_handlers=[(evt.EVT_PDU_SENT, on_sent)]
    ) as assoc:
        with scope:
            await assoc.send_c_store(source)
        assert scope.cancelled_caught and sent == 5
        assert assoc.is_aborted
        with pytest.raises(AssociationAborted, match="cut off"):
            await assoc.send_c_store(source)


@pytest.mark.anyio
@pytest.mark.parametrize("way", ["sendfile", "read"])
@pytest.mark.parametrize("peer", ["storescp", "pynetdicom"])
async def test_aiodicom_scu_file_over_1_mib_to_peer(
    dcmtk_storescp_factory, pynetdicom_scp, tmp_path, medium_instances, monkeypatch, peer, way
):
    """Two 6 MiB files, in the peer's 16 KB PDUs, each way a file over 1 MiB
    goes: by sendfile(2) from the page cache (made to for PDUs this small),
    or (the cache reported cold) read in a worker thread in 4 MiB blocks
    written to the socket directly.
    The data sets the peer stored are the files' own, byte for byte."""
    import aiodicom.association as association_module
    from aiodicom._transport import AsyncioStream

    calls: dict[str, int] = {"send_file": 0, "_send_direct": 0}
    for name in calls:
        real = getattr(AsyncioStream, name)

        def counted(self: Any, *args: Any, _real: Any = real, _name: str = name) -> Any:
            calls[_name] += 1
            return _real(self, *args)

        monkeypatch.setattr(AsyncioStream, name, counted)
    if way == "read":
        monkeypatch.setattr(association_module, "page_cached", lambda fd, off, n: False)
    else:  # (in 16 KB PDUs only if told: by default, reading is faster)
        monkeypatch.setattr(association_module, "_SENDFILE_MIN_CHUNK", 0)
    sources = [m.path for m in medium_instances]
    for source in sources:
        source.read_bytes()  # in the page cache
    if peer == "storescp":
        storescp = dcmtk_storescp_factory("+B", fork=False)
        port, called = storescp.port, storescp.ae_title
    else:
        out = tmp_path / "received"
        out.mkdir()
        scp = pynetdicom_scp("--output-dir", out)
        port, called = scp.port, scp.ae_title
    ae = storage_scu_ae(sources)
    with deadline():
        async with ae.associate(HOST, port, ae_title=called) as assoc:
            for source in sources:
                assert status_of(await assoc.send_c_store(source)) == 0
        if peer == "storescp":
            received = await in_thread(storescp.wait_for_files, 2)
        else:
            events = await in_thread(scp.wait_for_event, "c_store", count=2)
            received = [Path(e["stored"]) for e in events]
    by_uid = {file_info(p)[1]: p for p in received}
    for m in medium_instances:
        got = by_uid[m.sop_instance_uid]
        assert dataset_digest(got) == (m.dataset_size, m.dataset_sha256), got
    if way == "sendfile":
        assert calls["send_file"] >= 2
    else:
        assert calls["send_file"] == 0 and calls["_send_direct"] >= 2


@pytest.mark.anyio
async def test_aiodicom_scu_cut_off_store_to_storescp(dcmtk_storescp_factory, medium_instances):
    """A store cancelled part way: storescp gets A-ABORT, not a command read as
    more data set, and goes on serving (single process): the next association
    stores an instance whole."""
    storescp = dcmtk_storescp_factory("+B", fork=False)
    big = medium_instances[0].path
    small = bundled_file("CT_small.dcm")
    with deadline():
        await cut_off_store(storage_scu_ae([big]), storescp.port, storescp.ae_title, big)
        ae = storage_scu_ae([small])
        async with ae.associate(HOST, storescp.port, ae_title=storescp.ae_title) as assoc:
            assert status_of(await assoc.send_c_store(small)) == 0
    received = await in_thread(storescp.wait_for_files, 1)
    assert [file_info(p)[1] for p in received] == [file_info(small)[1]]
    assert storescp.process.running


@pytest.mark.anyio
async def test_aiodicom_scu_cut_off_store_to_pynetdicom_scp(pynetdicom_scp, medium_instances):
    """As above against pynetdicom: it sees the abort and stores nothing."""
    scp = pynetdicom_scp()
    big = medium_instances[0].path
    with deadline():
        await cut_off_store(storage_scu_ae([big]), scp.port, scp.ae_title, big)
        await in_thread(scp.wait_for_event, "aborted")
    assert not scp.events("c_store")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "proposed"),
    [
        # read with Implicit VR LE: sent so although Explicit VR LE is proposed first
        ("MR_small_implicit.dcm", [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        # read with Explicit VR Big Endian, which is proposed too
        ("MR_small_bigendian.dcm", [ExplicitVRLittleEndian, ExplicitVRBigEndian]),
    ],
    ids=["implicit", "big-endian"],
)
async def test_aiodicom_scu_dataset_without_file_meta_keeps_its_encoding(
    pynetdicom_scp, tmp_path, name, proposed
):
    out = tmp_path / "received"
    out.mkdir()
    scp = pynetdicom_scp("--accept-all-storage", "--output-dir", out)
    source = bundled_file(name)
    cls, _uid, ts = file_info(source)
    ds = dcmread(source)
    del ds.file_meta
    ae = AE(ae_title="AIOSCU")
    for syntax in proposed:  # one context each, so each is accepted as it is
        ae.add_requested_context(cls, [syntax])
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title=scp.ae_title) as assoc:
            rsp = await assoc.send_c_store(ds)
        (event,) = await in_thread(scp.wait_for_event, "c_store")
    assert status_of(rsp) == 0
    assert event["transfer_syntax"] == ts
    assert_same_instance(source, event["stored"], transfer_syntax=ts)


# =========================================================================== 5.
# No accepted context


@pytest.mark.anyio
async def test_aiodicom_scu_no_accepted_context_for_compressed_file(dcmtk_storescp_factory):
    """storescp accepting only uncompressed syntaxes (+xe after the fixture's +xa):
    a JPEG 2000 file cannot be sent (it goes in its own syntax), and the
    association stays usable."""
    storescp = dcmtk_storescp_factory("+xe", fork=False)
    j2k = bundled_file("JPEG2000.dcm")
    ct = bundled_file("CT_small.dcm")
    ae = storage_scu_ae([j2k, ct])
    with deadline():
        async with ae.associate(HOST, storescp.port, ae_title=storescp.ae_title) as assoc:
            j2k_class = file_info(j2k)[0]
            assert not [
                cx for cx in assoc.accepted_contexts if str(cx.abstract_syntax) == j2k_class
            ], "storescp +xe accepted a JPEG 2000 context"
            with pytest.raises(NoAcceptedContext):
                await assoc.send_c_store(j2k)
            with pytest.raises(NoAcceptedContext):
                await assoc.send_c_store(dcmread(j2k))
            with open(j2k, "rb") as f, pytest.raises(NoAcceptedContext):
                await assoc.send_c_store(f)
            rsp = await assoc.send_c_store(ct)
    assert status_of(rsp) == 0
    (received,) = await in_thread(storescp.wait_for_files, 1)
    assert file_info(received)[1] == file_info(ct)[1]


@pytest.mark.anyio
async def test_aiodicom_scu_no_context_in_the_files_own_syntax(pynetdicom_scp):
    """Only Explicit VR LE accepted for MR: a big endian MR file is not converted,
    it raises NoAcceptedContext; NoAcceptedContext is also a ValueError."""
    scp = pynetdicom_scp("--accept-all-storage")
    mr_be = bundled_file("MR_small_bigendian.dcm")
    ae = AE(ae_title="AIOSCU")
    ae.add_requested_context(sop_class.MRImageStorage, [ExplicitVRLittleEndian])
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title=scp.ae_title) as assoc:
            with pytest.raises(NoAcceptedContext):
                await assoc.send_c_store(mr_be)
            with pytest.raises(ValueError):
                await assoc.send_c_store(str(mr_be))
            rsp = await assoc.send_c_store(bundled_file("MR_small.dcm"))
    assert status_of(rsp) == 0
    await in_thread(scp.wait_for_event, "released")
    assert len(scp.events("c_store")) == 1


# =========================================================================== 6.
# Spooling of large data sets (in-process SCP, 1 MiB threshold)


class ReleaseSeen:
    """An EVT_RELEASED handler recording each; :meth:`one` waits for the first."""

    def __init__(self) -> None:
        self.events: list[evt.Event] = []
        self._changes = Changes()

    def __call__(self, event: evt.Event) -> None:
        self.events.append(event)
        self._changes.changed()

    async def one(self) -> None:
        await self._changes.wait_until(lambda: len(self.events) == 1, "EVT_RELEASED on the SCP")


@pytest.mark.anyio
async def test_spooled_dataset_path_lifecycle(run_pynetdicom_scu, tmp_path, medium_instances):
    """Above ae.spool_threshold, event.dataset_path is a complete Part 10 file
    while the handler runs, decodable through event.dataset; it is deleted
    after the handler returns unless the handler moved it."""
    keep = tmp_path / "kept.dcm"
    seen: list[dict[str, Any]] = []

    async def on_store(event: evt.Event) -> int:
        path = event.dataset_path
        info: dict[str, Any] = {"path": path}
        if path is not None:
            info["exists"] = os.path.exists(path)
            with open(path, "rb") as f:
                info["dicm"] = f.read(132)[128:]
            info["digest"] = await in_thread(dataset_digest, path)
            ds = event.dataset
            info["uid"] = str(ds.SOPInstanceUID)
            info["pixels"] = len(ds.PixelData)
            info["meta_ts"] = str(event.file_meta.TransferSyntaxUID)
            if not seen:  # the first one is moved away
                await in_thread(shutil.move, path, keep)
        seen.append(info)
        return 0x0000

    on_released = ReleaseSeen()
    ae = storage_scp_ae()
    ae.spool_threshold = 1 * MiB
    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_RELEASED, on_released)]
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers) as server:
            cp, _events = await in_thread(
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--chunked",
                *[a for m in medium_instances for a in ("--store", m.path)],
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await on_released.one()
    assert len(seen) == 2
    for info, inst in zip(seen, medium_instances, strict=True):
        assert info["path"] is not None, "a 6 MiB data set was not spooled (threshold 1 MiB)"
        assert info["exists"] and info["dicm"] == b"DICM"
        assert info["digest"] == (inst.dataset_size, inst.dataset_sha256)
        assert info["uid"] == inst.sop_instance_uid
        assert info["pixels"] == inst.pixel_bytes
        assert info["meta_ts"] == str(ExplicitVRLittleEndian)
    assert keep.exists() and dataset_digest(keep) == (
        medium_instances[0].dataset_size,
        medium_instances[0].dataset_sha256,
    )
    assert not os.path.exists(seen[1]["path"]), "spool file left behind after the handler"


@pytest.mark.anyio
@pytest.mark.parametrize("peer", ["storescu", "pynetdicom"])
async def test_spool_files_reused_on_one_association(
    peer, run_dcmtk, run_pynetdicom_scu, tmp_path, splice_jobs
):
    """Three spooled instances from a real SCU on one association, the
    handler leaving each file: the second and third are written over the
    file the first left (one inode), each is byte for byte what was sent
    (the shorter after the longer cut to its length), each name is gone
    once its handler returned, and nothing is left when the peer releases.
    On Linux the rest of each data set past the threshold is spliced from
    the socket into the file (aiodicom._splice): each job ran to the last
    fragment, none handed back (the peer's PDUs are one PDV each)."""
    jobs = splice_jobs
    sizes = (6 * MiB, 2 * MiB, 4 * MiB)
    instances = [
        write_large_instance(tmp_path / f"reused{i}.dcm", size, seed=i)
        for i, size in enumerate(sizes)
    ]
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    seen: list[dict[str, Any]] = []

    async def on_store(event: evt.Event) -> int:
        path = event.dataset_path
        assert path is not None, "not spooled (threshold 1 MiB)"
        if seen:
            seen[-1]["gone"] = not os.path.exists(seen[-1]["path"])
        seen.append(
            {
                "path": path,
                "inode": os.stat(path).st_ino,
                "digest": await in_thread(dataset_digest, path),
                "uid": event.request.AffectedSOPInstanceUID,
            }
        )
        return 0x0000

    on_released = ReleaseSeen()
    ae = storage_scp_ae(syntaxes=[ExplicitVRLittleEndian])
    ae.spool_threshold = 1 * MiB
    ae.spool_directory = str(spool_dir)
    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_RELEASED, on_released)]
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers) as server:
            if peer == "storescu":
                files = [str(i.path) for i in instances]
                args = ["-aec", "AIOSCP", HOST, server.port, *files]
                cp = await in_thread(run_dcmtk, "storescu", *args, timeout=PEER_TIMEOUT)
            else:
                stores = [a for i in instances for a in ("--store", i.path)]
                cp, _events = await in_thread(
                    run_pynetdicom_scu, "--port", server.port, *stores, timeout=PEER_TIMEOUT
                )
            assert cp.returncode == 0, cp.describe()
            await on_released.one()
    assert [info["uid"] for info in seen] == [i.sop_instance_uid for i in instances]
    for info, inst in zip(seen, instances, strict=True):
        assert info["digest"] == (inst.dataset_size, inst.dataset_sha256), inst.path.name
    assert len({info["inode"] for info in seen}) == 1, seen
    assert [info.get("gone") for info in seen] == [True, True, None]
    assert list(spool_dir.iterdir()) == []
    if _splice.AVAILABLE:  # (this process runs asyncio: the SCP splices)
        assert [job.outcome for job in jobs] == [Outcome.LAST] * 3
        for job, size in zip(jobs, sizes, strict=True):
            assert size - 2 * MiB < job.received < size  # all but the first MiB or so


@pytest.mark.anyio
@pytest.mark.parametrize("peer", ["storescu", "pynetdicom"])
async def test_small_pdus_of_a_spooled_data_set_are_read_in_bulk(
    peer, run_dcmtk, run_pynetdicom_scu, tmp_path, splice_jobs
):
    """The aiodicom SCP announces a maximum PDU of 16 KiB, so a real SCU
    sends a 24 MiB data set in 16 KiB PDUs: past the spool threshold the
    splicing thread reads them several at a time into its buffer (not one
    splice each), and the spool file is byte for byte what was sent."""
    jobs = splice_jobs
    instance = write_large_instance(tmp_path / "bulk.dcm", 24 * MiB, seed=7)
    seen: list[tuple[int, str]] = []

    async def on_store(event: evt.Event) -> int:
        assert event.dataset_path is not None, "not spooled (threshold 1 MiB)"
        seen.append(await in_thread(dataset_digest, event.dataset_path))
        return 0x0000

    on_released = ReleaseSeen()
    ae = storage_scp_ae(syntaxes=[ExplicitVRLittleEndian])
    ae.spool_threshold = 1 * MiB
    ae.maximum_pdu_size = 16384
    ae.spool_directory = str(tmp_path)
    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_RELEASED, on_released)]
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers) as server:
            if peer == "storescu":
                args = ["-aec", "AIOSCP", HOST, server.port, str(instance.path)]
                cp = await in_thread(run_dcmtk, "storescu", *args, timeout=PEER_TIMEOUT)
            else:
                cp, _events = await in_thread(
                    run_pynetdicom_scu,
                    "--port",
                    server.port,
                    "--store",
                    instance.path,
                    timeout=PEER_TIMEOUT,
                )
            assert cp.returncode == 0, cp.describe()
            await on_released.one()
    assert seen == [(instance.dataset_size, instance.dataset_sha256)]
    if _splice.AVAILABLE:  # (this process runs asyncio: the SCP splices)
        assert [job.outcome for job in jobs] == [Outcome.LAST]
        assert jobs[0].received > 12 * MiB  # (past what the transport held)
        assert jobs[0]._buffer is not None  # its PDUs were read in bulk


# =========================================================================== 7.
# One instance over 1 GiB; aiodicom in a process of its own, its RSS measured


def rss_growth(events: list[dict[str, Any]], start: str) -> tuple[int, int, int]:
    """(baseline KiB, peak KiB, growth KiB) of the aiodicom peer's memory from its
    `start` event on: VmHWM (reset to the current RSS at `start`) against VmRSS at
    `start`. Not ru_maxrss: on Linux a child's ru_maxrss starts at its parent's
    RSS at fork (~90 MB under pytest), which would hide any smaller growth."""
    i = next(i for i, e in enumerate(events) if e["event"] == start)
    first = events[i]
    if first.get("vm_rss_kib") is None or not first.get("hwm_reset"):
        missing_peer("needs /proc/self/status and /proc/self/clear_refs (Linux) to measure RSS")
    base = first["vm_rss_kib"]
    peak = max(e["vm_hwm_kib"] for e in events[i:])
    return base, peak, peak - base


def start_aiodicom_scp_process(peer_process: Any, tmp_path: Path) -> tuple[Any, Path, int]:
    """``aiodicom_peer.py scp`` in a process of its own, saving what it receives:
    (the process, its JSON-lines event file, its port)."""
    out = tmp_path / "scp.jsonl"
    scp = peer_process(
        [
            sys.executable,
            AIODICOM_PEER,
            "scp",
            "--port",
            "0",
            "--ae-title",
            "AIOSCP",
            "--output-dir",
            tmp_path / "received",
            "--out",
            out,
        ],
        name="aiodicom-scp",
        ready_line=r"^READY (\d+)$",
    )
    assert scp.ready_match is not None
    return scp, out, int(scp.ready_match.group(1))


def check_large_received(scp: Any, out: Path, large_instance: LargeInstance, sender: str) -> None:
    """Stop the SCP process; the instance was spooled and stored byte for byte
    (checked first), and the process's RSS grew within its budget."""
    assert scp.stop() == 0, scp.describe()
    events = read_jsonl(out)
    (store,) = [e for e in events if e["event"] == "c_store"]
    assert store["sop_instance_uid"] == large_instance.sop_instance_uid
    assert store["spooled"] is True, store
    assert events[-1]["event"] == "shutdown", events
    check_large_copy(
        Path(store["stored"]),
        events,
        "ready",
        large_instance,
        f"{sender} -> aiodicom SCP",
        f"the data set aiodicom stored differs from the file {sender} sent",
    )


def check_large_copy(
    copy: Path,
    events: list[dict[str, Any]],
    start: str,
    large_instance: LargeInstance,
    label: str,
    mismatch: str,
) -> None:
    """``copy`` holds the 1 GiB instance's data set byte for byte (checked
    first, then deleted), and the aiodicom process whose ``events`` these are
    grew its RSS within its budget from its ``start`` event on."""
    try:
        assert dataset_digest(copy) == (
            large_instance.dataset_size,
            large_instance.dataset_sha256,
        ), mismatch
    finally:
        copy.unlink()
    base, peak, growth = rss_growth(events, start)
    print(f"{label}, {large_instance.dataset_size} B:")
    print(f"  RSS {base} KiB at {start!r}, peak {peak} KiB: +{growth} KiB; events: {events}")
    assert growth <= RSS_BUDGET_KIB, f"RSS grew by {growth} KiB ({label}, 1 GiB): {events}"


def send_large_from_aiodicom_process(
    peer_process: Any, tmp_path: Path, port: int, called: str, large_instance: LargeInstance
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``aiodicom_peer.py scu`` in a process of its own sends the 1 GiB instance
    to ``port``: its events and its C-STORE event (status 0 checked)."""
    out = tmp_path / "scu.jsonl"
    p = peer_process(
        [
            sys.executable,
            AIODICOM_PEER,
            "scu",
            "--port",
            port,
            "--called",
            called,
            "--store",
            large_instance.path,
            "--out",
            out,
        ],
        name="aiodicom-scu",
    )
    code = p.wait_exit(LARGE_TIMEOUT)
    events = read_jsonl(out)
    assert code == 0, f"{p.describe()}\n{events}"
    (store,) = [e for e in events if e["event"] == "c_store"]
    assert store["status"] == 0, events
    return events, store


def check_large_sent(
    received: Path, events: list[dict[str, Any]], large_instance: LargeInstance, receiver: str
) -> None:
    """The data set ``receiver`` stored is the file's (checked first), and the
    sending aiodicom process's RSS grew within its budget."""
    check_large_copy(
        received,
        events,
        "start",
        large_instance,
        f"aiodicom SCU -> {receiver}",
        f"the data set {receiver} received differs from the file's",
    )


@pytest.mark.slow
@pytest.mark.timeout(LARGE_TIMEOUT + 120)
def test_large_instance_aiodicom_scu_process_to_storescp(
    dcmtk_storescp_factory, peer_process, tmp_path, large_instance
):
    storescp = dcmtk_storescp_factory("+B", "-pdu", "131072", fork=False)
    events, _store = send_large_from_aiodicom_process(
        peer_process, tmp_path, storescp.port, storescp.ae_title, large_instance
    )
    (received,) = storescp.wait_for_files(1, timeout=30)
    check_large_sent(received, events, large_instance, "storescp")


@pytest.mark.slow
@pytest.mark.timeout(LARGE_TIMEOUT + 120)
def test_large_instance_aiodicom_scu_process_to_pynetdicom_scp(
    pynetdicom_scp, peer_process, tmp_path, large_instance
):
    """The 1 GiB instance from the aiodicom SCU process to pynetdicom, which
    receives it into a file (STORE_RECV_CHUNKED_DATASET)."""
    received_dir = tmp_path / "received"
    received_dir.mkdir()
    scp = pynetdicom_scp("--recv-chunked", "--output-dir", received_dir, ae_title="PYSCP")
    events, _store = send_large_from_aiodicom_process(
        peer_process, tmp_path, scp.port, "PYSCP", large_instance
    )
    (stored,) = scp.wait_for_event("c_store")
    assert stored["sop_instance_uid"] == large_instance.sop_instance_uid
    check_large_sent(Path(stored["stored"]), events, large_instance, "pynetdicom")


@pytest.mark.slow
@pytest.mark.timeout(LARGE_TIMEOUT + 120)
def test_large_instance_storescu_to_aiodicom_scp_process(
    run_dcmtk, peer_process, tmp_path, large_instance
):
    scp, out, port = start_aiodicom_scp_process(peer_process, tmp_path)
    cp = run_dcmtk(
        "storescu",
        "-R",
        "-xe",
        "-pdu",
        "131072",
        "-aec",
        "AIOSCP",
        HOST,
        port,
        large_instance.path,
        timeout=LARGE_TIMEOUT,
    )
    assert cp.returncode == 0, f"{cp.describe()}\n{scp.describe()}"
    check_large_received(scp, out, large_instance, "storescu")


@pytest.mark.slow
@pytest.mark.timeout(LARGE_TIMEOUT + 120)
def test_large_instance_getscu_from_aiodicom_scp_process(
    run_dcmtk, peer_process, tmp_path, large_instance
):
    """dcmtk getscu retrieves the 1 GiB instance twice (two C-STORE
    sub-operations) from the aiodicom SCP process: the second file is
    opened while the first streams out, and the SCP's RSS still grows
    within its budget; what getscu wrote is the data set byte for byte."""
    out = tmp_path / "scp.jsonl"
    scp = peer_process(
        [
            sys.executable, AIODICOM_PEER, "scp", "--port", "0", "--ae-title", "AIOSCP",
            "--get-file", large_instance.path, "--get-file", large_instance.path, "--out", out,
        ],
        name="aiodicom-scp",
        ready_line=r"^READY (\d+)$",
    )  # fmt: skip
    assert scp.ready_match is not None
    got = tmp_path / "got"
    got.mkdir()
    cp = run_dcmtk(
        "getscu", "-v", "-S", "-aec", "AIOSCP", "-od", got,
        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3",
        HOST, int(scp.ready_match.group(1)),
        timeout=LARGE_TIMEOUT,
    )  # fmt: skip
    assert cp.returncode == 0, f"{cp.describe()}\n{scp.describe()}"
    assert "Number of Completed Suboperations : 2" in cp.stdout + cp.stderr, cp.describe()
    assert scp.stop() == 0, scp.describe()
    events = read_jsonl(out)
    (get,) = [e for e in events if e["event"] == "c_get"]
    assert get["sent"] == 2 and not get["cancelled"], events
    (copy,) = got.iterdir()  # the same instance twice: one file, written over
    check_large_copy(
        copy,
        events,
        "ready",
        large_instance,
        "getscu <- aiodicom SCP (C-GET, twice)",
        "the data set getscu received differs from the file aiodicom sent",
    )


# =========================================================================== 7b.
# Many associations at once, round after round; aiodicom in a process of its
# own: its peak RSS after the first round is what all the rounds need (its
# memory grows with the associations open at once, not with the instances).

#: Associations at once, small instances each, rounds one after another.
MANY_ASSOCIATIONS, MANY_FILES, MANY_ROUNDS = 20, 25, 8
#: How far the peak RSS may rise after the first round, with 7 times the
#: instances to go. An ended association, with its receive buffers, used to
#: wait for Python's cycle collector: over the 8 rounds the peak rose by
#: 10.8 MB (SCU) and 14.5 MB (SCP); now by 0.1 and 0.5 MB.
MANY_BUDGET_KIB = 3 * 1024


def peaks_after_first_round(hwm_kib: list[list[int]]) -> tuple[int, int]:
    """(peak VmHWM of the first round, of all the rounds), in KiB."""
    return max(hwm_kib[0]), max(max(r) for r in hwm_kib)


def _aiodicom_scu_many_rounds(
    port: int, called: str, peer_process: Any, tmp_path: Path, small_instances: list[Path]
) -> list[dict[str, Any]]:
    """Run the aiodicom SCU process: MANY_ASSOCIATIONS at once to ``port``,
    each storing MANY_FILES instances, MANY_ROUNDS rounds; check that every
    store succeeded and return its ``round`` events (with its VmHWM)."""
    out = tmp_path / "scu.jsonl"
    argv: list[Any] = [sys.executable, AIODICOM_PEER, "scu", "--port", port]
    argv += ["--called", called, "--out", out]
    argv += ["--associations", MANY_ASSOCIATIONS, "--rounds", MANY_ROUNDS]
    for path in small_instances[:MANY_FILES]:
        argv += ["--store", path]
    p = peer_process(argv, name="aiodicom-scu")
    code = p.wait_exit(PEER_TIMEOUT * 6)
    events = read_jsonl(out)
    assert code == 0, f"{p.describe()}\n{events[-3:]}"
    rounds = [e for e in events if e["event"] == "round"]
    assert [r["instances"] for r in rounds] == [
        MANY_ASSOCIATIONS * MANY_FILES * (i + 1) for i in range(MANY_ROUNDS)
    ]
    assert all(r["failed"] == 0 for r in rounds)
    return rounds


def test_aiodicom_scu_process_many_associations_at_once_to_storescp(
    dcmtk_storescp_factory, peer_process, tmp_path, small_instances
):
    """The aiodicom SCU process opens 20 associations at once to storescp
    (--fork), each storing 25 instances, 8 rounds: 4,000 stores, every one
    successful, and the process's peak RSS after the first round stays
    within MANY_BUDGET_KIB."""
    storescp = dcmtk_storescp_factory("--ignore")
    rounds = _aiodicom_scu_many_rounds(
        storescp.port, storescp.ae_title, peer_process, tmp_path, small_instances
    )
    first, peak = peaks_after_first_round([[r["vm_hwm_kib"]] for r in rounds])
    print(f"aiodicom SCU, {MANY_ASSOCIATIONS} associations at once: VmHWM {first} KiB after")
    print(f"  round 1, {peak} KiB after round {MANY_ROUNDS}: +{peak - first} KiB")
    assert peak - first <= MANY_BUDGET_KIB, [r["vm_hwm_kib"] for r in rounds]


def test_many_storescu_at_once_to_aiodicom_scp_process(peer_process, tmp_path, small_instances):
    """20 storescu processes at once, each storing 25 instances on its own
    association into the aiodicom SCP process (discarding them), 8 rounds:
    all 4,000 received, and the SCP's peak RSS after the first round stays
    within MANY_BUDGET_KIB."""
    storescu = require_tool("storescu")
    out = tmp_path / "scp.jsonl"
    argv: list[Any] = [sys.executable, AIODICOM_PEER, "scp", "--port", "0"]
    argv += ["--ae-title", "AIOSCP", "--out", out]
    scp = peer_process(
        argv,
        name="aiodicom-scp",
        ready_line=r"^READY (\d+)$",
    )
    assert scp.ready_match is not None
    port = scp.ready_match.group(1)
    files = [str(p) for p in small_instances[:MANY_FILES]]
    env = {**os.environ, "TCP_NODELAY": "1"}
    hwm: list[list[int]] = []
    seen = 0
    for _round in range(MANY_ROUNDS):
        senders = [
            subprocess.Popen(
                [storescu, "-aec", "AIOSCP", HOST, port, *files],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
            )
            for _ in range(MANY_ASSOCIATIONS)
        ]
        for sender in senders:
            output, _ = sender.communicate(timeout=PEER_TIMEOUT * 3)
            assert sender.returncode == 0, output.decode(errors="replace")
        stores = [e for e in read_jsonl(out) if e["event"] == "c_store"]
        assert len(stores) == seen + MANY_ASSOCIATIONS * MANY_FILES
        hwm.append([e["vm_hwm_kib"] for e in stores[seen:]])
        seen = len(stores)
    assert scp.stop() == 0, scp.describe()
    first, peak = peaks_after_first_round(hwm)
    print(f"aiodicom SCP, {MANY_ASSOCIATIONS} storescu at once: VmHWM {first} KiB after")
    print(f"  round 1, {peak} KiB after round {MANY_ROUNDS}: +{peak - first} KiB")
    assert peak - first <= MANY_BUDGET_KIB, [max(r) for r in hwm]


def test_aiodicom_scu_process_many_associations_at_once_to_pynetdicom_scp(
    pynetdicom_scp, peer_process, tmp_path, small_instances
):
    """As with storescp, into pynetdicom's SCP (a thread an association): the
    aiodicom SCU process opens 20 associations at once, each storing 25
    instances, 8 rounds; every store succeeds and the process's peak RSS
    after the first round stays within MANY_BUDGET_KIB."""
    scp = pynetdicom_scp("--accept-all-storage", ae_title="PYSCP")
    rounds = _aiodicom_scu_many_rounds(
        scp.port, scp.ae_title, peer_process, tmp_path, small_instances
    )
    stored = [e for e in read_jsonl(scp.out_path) if e["event"] == "c_store"]
    assert len(stored) == MANY_ASSOCIATIONS * MANY_FILES * MANY_ROUNDS
    first, peak = peaks_after_first_round([[r["vm_hwm_kib"]] for r in rounds])
    print(f"aiodicom SCU -> pynetdicom, {MANY_ASSOCIATIONS} associations at once: VmHWM")
    print(f"  {first} KiB after round 1, {peak} KiB after round {MANY_ROUNDS}: +{peak - first} KiB")
    assert peak - first <= MANY_BUDGET_KIB, [r["vm_hwm_kib"] for r in rounds]


def test_pynetdicom_many_associations_at_once_to_aiodicom_scp_process(
    peer_process, run_pynetdicom_scu_many, tmp_path, small_instances
):
    """pynetdicom opens 20 associations at once (a thread each), each storing
    25 instances into the aiodicom SCP process (discarding them), 8 rounds:
    all 4,000 received, and the SCP's peak RSS after the first round stays
    within MANY_BUDGET_KIB."""
    out = tmp_path / "scp.jsonl"
    argv: list[Any] = [sys.executable, AIODICOM_PEER, "scp", "--port", "0"]
    argv += ["--ae-title", "AIOSCP", "--out", out]
    scp = peer_process(argv, name="aiodicom-scp", ready_line=r"^READY (\d+)$")
    assert scp.ready_match is not None
    args: list[Any] = ["--port", scp.ready_match.group(1), "--called", "AIOSCP"]
    args += ["--associations", MANY_ASSOCIATIONS, "--rounds", MANY_ROUNDS]
    for path in small_instances[:MANY_FILES]:
        args += ["--store", path]
    cp, events = run_pynetdicom_scu_many(
        *args, timeout=PEER_TIMEOUT * 6, env={**os.environ, "TCP_NODELAY": "1"}
    )
    assert cp.returncode == 0, (cp, events[-3:])
    rounds = [e for e in events if e["event"] == "round"]
    per_round = MANY_ASSOCIATIONS * MANY_FILES
    assert [(r["instances"], r["failed"]) for r in rounds] == [
        (per_round * (i + 1), 0) for i in range(MANY_ROUNDS)
    ]
    assert scp.stop() == 0, scp.describe()
    # The rounds follow one another: the SCP logs a round's stores before the next's.
    hwm = [e["vm_hwm_kib"] for e in read_jsonl(out) if e["event"] == "c_store"]
    assert len(hwm) == per_round * MANY_ROUNDS
    first, peak = peaks_after_first_round(
        [hwm[i : i + per_round] for i in range(0, len(hwm), per_round)]
    )
    print(f"pynetdicom -> aiodicom SCP, {MANY_ASSOCIATIONS} associations at once: VmHWM")
    print(f"  {first} KiB after round 1, {peak} KiB after round {MANY_ROUNDS}: +{peak - first} KiB")
    assert peak - first <= MANY_BUDGET_KIB, [
        max(hwm[i : i + per_round]) for i in range(0, len(hwm), per_round)
    ]


# =========================================================================== 8.
# TLS (PS3.15 B.1, the Secure Transport Connection Profile), both directions,
# with each peer: mutual authentication, each side's certificate signed by the
# CA the other trusts (one self-signed certificate serves as all three here).


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cert.pem, key.pem): a self-signed RSA certificate for 127.0.0.1, made
    by the openssl CLI (dcmtk's TLS profiles accept RSA keys)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing_peer("the openssl CLI is needed to make a TLS certificate")
    base = tmp_path_factory.mktemp("tls")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def tls_contexts(cert: Path, key: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for mutual TLS with the one certificate."""
    return (
        mutual_tls_context(cert, key, cert, server=True),
        mutual_tls_context(cert, key, cert, server=False),
    )


def dcmtk_tls(cert: Path, key: Path) -> list[str]:
    """dcmtk's options: our key and certificate, the peer's trusted (+cf)."""
    return ["+tls", str(key), str(cert), "+cf", str(cert)]


@pytest.mark.anyio
async def test_storescu_tls_to_aiodicom_scp(run_dcmtk, tmp_path, tls_files):
    """storescu and echoscu over TLS into an aiodicom SCP that requires a client
    certificate; a plain TCP storescu is refused and the SCP goes on serving."""
    cert, key = tls_files
    server_ctx, _ = tls_contexts(cert, key)
    source = bundled_file("CT_small.dcm")
    _cls, _uid, ts = file_info(source)
    scp = StoreSCP(tmp_path)
    ae = storage_scp_ae()
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=scp.handlers(), ssl_context=server_ctx
        ) as server:
            cp = await in_thread(
                run_dcmtk,
                "storescu",
                "-v",
                *dcmtk_tls(cert, key),
                STORESCU_PROPOSE[ts],
                "-aec",
                "AIOSCP",
                HOST,
                server.port,
                source,
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await scp.wait_until(lambda: len(scp.released) == 1, "EVT_RELEASED on the SCP")
            plain = await in_thread(
                run_dcmtk, "storescu", "-aec", "AIOSCP", HOST, server.port, source, timeout=30
            )
            assert plain.returncode != 0, plain.describe()
            echo = await in_thread(
                run_dcmtk,
                "echoscu",
                "-v",
                *dcmtk_tls(cert, key),
                "-aec",
                "AIOSCP",
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
            assert echo.returncode == 0, echo.describe()
            await scp.wait_until(lambda: len(scp.released) == 2, "the second EVT_RELEASED")
    assert "Received Store Response (Success)" in cp.stdout + cp.stderr, cp.describe()
    assert "Received Echo Response (Success)" in echo.stdout + echo.stderr, echo.describe()
    (rec,) = scp.received  # the plain storescu stored nothing
    check_received(rec, source, dcmtk_sender=True)


@pytest.mark.anyio
async def test_aiodicom_scu_tls_to_storescp(dcmtk_storescp_factory, tls_files):
    """aiodicom SCU over TLS to storescp +tls (which requires our certificate):
    the instance arrives byte for byte; without TLS the association fails."""
    cert, key = tls_files
    _, client_ctx = tls_contexts(cert, key)
    storescp = dcmtk_storescp_factory("+B", *dcmtk_tls(cert, key), fork=False)
    source = bundled_file("CT_small.dcm")
    ae = storage_scu_ae([source])
    ae.add_requested_context(sop_class.Verification)
    with deadline():
        async with ae.associate(
            HOST, storescp.port, ae_title=storescp.ae_title, ssl_context=client_ctx
        ) as assoc:
            assert assoc.is_established
            rsp = await assoc.send_c_store(source)
            assert int((await assoc.send_c_echo()).Status) == 0
        with pytest.raises((DicomNetworkError, OSError)):  # plain TCP: no association
            async with storage_scu_ae([source]).associate(
                HOST, storescp.port, ae_title=storescp.ae_title
            ):
                pass
    assert status_of(rsp) == 0x0000, storescp.process.describe()
    (received,) = await in_thread(storescp.wait_for_files, 1)
    assert_same_bytes(received, source)
    assert_same_instance(source, received, transfer_syntax=file_info(source)[2])


@pytest.mark.anyio
async def test_pynetdicom_scu_tls_to_aiodicom_scp(run_pynetdicom_scu, tmp_path, tls_files):
    cert, key = tls_files
    server_ctx, _ = tls_contexts(cert, key)
    sources = [bundled_file("CT_small.dcm"), bundled_file("MR_small.dcm")]
    scp = StoreSCP(tmp_path)
    ae = storage_scp_ae()
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=scp.handlers(), ssl_context=server_ctx
        ) as server:
            cp, events = await in_thread(
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--called",
                "AIOSCP",
                "--tls",
                cert,
                key,
                cert,
                "--echo",
                "1",
                *[a for s in sources for a in ("--store", s)],
                "--chunked",
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, f"{cp.describe()}\n{events}"
            await scp.wait_until(lambda: len(scp.released) == 1, "EVT_RELEASED on the SCP")
    assert [e["status"] for e in events if e["event"] == "c_echo"] == [0], events
    assert [e["status"] for e in events if e["event"] == "c_store"] == [0, 0], events
    for rec, source in zip(scp.received, sources, strict=True):
        check_received(rec, source, same_bytes=True)


@pytest.mark.anyio
async def test_aiodicom_scu_tls_to_pynetdicom_scp(pynetdicom_scp, tmp_path, tls_files):
    cert, key = tls_files
    _, client_ctx = tls_contexts(cert, key)
    out = tmp_path / "received"
    out.mkdir()
    scp = pynetdicom_scp("--output-dir", out, "--tls", cert, key, cert, ae_title="PYSCP")
    sources = [bundled_file("CT_small.dcm"), bundled_file("MR_small.dcm")]
    ae = storage_scu_ae(sources)
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title="PYSCP", ssl_context=client_ctx) as assoc:
            statuses = [status_of(await assoc.send_c_store(s)) for s in sources]
        events = await in_thread(scp.wait_for_event, "c_store", count=len(sources))
        await in_thread(scp.wait_for_event, "released")
    assert statuses == [0, 0]
    for event, source in zip(events, sources, strict=True):
        assert_same_bytes(event["stored"], source)


# =========================================================================== 9.
# Aborts started by the peer, and failure statuses seen by storescu


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["--abort-during", "--abort-after"])
async def test_storescp_aborting_a_store_from_aiodicom(dcmtk_storescp_factory, when):
    """storescp aborts the association during, or after, the C-STORE-RQ (before
    its response): send_c_store raises AssociationAborted (no hang), the
    association is aborted, and the next one to a fresh storescp works."""
    from aiodicom.errors import AssociationAborted

    storescp = dcmtk_storescp_factory("+B", when, fork=False)
    source = bundled_file("CT_small.dcm")
    with deadline():
        ae = storage_scu_ae([source])
        with pytest.raises(AssociationAborted):
            async with ae.associate(HOST, storescp.port, ae_title=storescp.ae_title) as assoc:
                await assoc.send_c_store(source)
        assert assoc.is_aborted and not assoc.is_established
        again = dcmtk_storescp_factory("+B", fork=False)
        async with ae.associate(HOST, again.port, ae_title=again.ae_title) as assoc:
            assert status_of(await assoc.send_c_store(source)) == 0
    (received,) = await in_thread(again.wait_for_files, 1)
    assert_same_bytes(received, source)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "text"),
    [(0xA700, "Refused: OutOfResources"), (0xB000, "Warning: CoercionOfDataElements")],
)
async def test_storescu_sees_the_aiodicom_scp_status(run_dcmtk, tmp_path, status, text):
    """The handler's status reaches storescu as it was answered."""
    scp = StoreSCP(tmp_path, status=status)
    ae = storage_scp_ae()
    source = bundled_file("CT_small.dcm")
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=scp.handlers()) as server:
            cp = await in_thread(
                run_dcmtk, "storescu", "-v", "-aec", "AIOSCP", HOST, server.port, source,
                timeout=PEER_TIMEOUT,
            )  # fmt: skip
            await scp.wait_until(lambda: len(scp.released) == 1, "EVT_RELEASED on the SCP")
    out = cp.stdout + cp.stderr
    assert f"Received Store Response ({text})" in out, cp.describe()
    assert len(scp.received) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("positive", [True, False], ids=["rsp", "no-rsp"])
async def test_storescu_user_identity_to_aiodicom_scp(run_dcmtk, tmp_path, positive):
    """storescu -usr/-pwd (type 2, username and passcode): EVT_USER_ID sees the
    fields; with -rsp the positive response requested is sent back and
    storescu goes on to store."""
    seen: list[tuple[int, bytes, bytes | None, bool]] = []

    def on_user_id(event: evt.Event) -> tuple[bool, bytes | None]:
        requested = event.assoc.requestor.user_identity.positive_response_requested
        secondary = event.secondary_field
        seen.append((event.user_id_type, bytes(event.primary_field),
                     None if secondary is None else bytes(secondary), requested))  # fmt: skip
        return True, b"welcome" if requested else None

    scp = StoreSCP(tmp_path)
    ae = storage_scp_ae()
    source = bundled_file("CT_small.dcm")
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*scp.handlers(), (evt.EVT_USER_ID, on_user_id)]
        ) as server:
            cp = await in_thread(
                run_dcmtk,
                "storescu",
                "-d",
                "-usr",
                "alice",
                "-pwd",
                "s3cret",
                *(["-rsp"] if positive else []),
                "-aec",
                "AIOSCP",
                HOST,
                server.port,
                source,
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await scp.wait_until(lambda: len(scp.released) == 1, "EVT_RELEASED on the SCP")
    assert seen == [(2, b"alice", b"s3cret", positive)]
    assert len(scp.received) == 1
    if positive:
        assert "User Identity Negotiation Response" in cp.stdout + cp.stderr, cp.describe()


@pytest.mark.slow
@pytest.mark.timeout(LARGE_TIMEOUT + 120)
def test_large_instance_pynetdicom_scu_to_aiodicom_scp_process(
    run_pynetdicom_scu, peer_process, tmp_path, large_instance
):
    """The 1 GiB instance from pynetdicom (streamed from the file:
    STORE_SEND_CHUNKED_DATASET) into the aiodicom SCP process: spooled, the
    data set stored byte for byte, and the SCP's RSS within its budget."""
    scp, out, port = start_aiodicom_scp_process(peer_process, tmp_path)
    cp, events = run_pynetdicom_scu(
        "--port",
        port,
        "--called",
        "AIOSCP",
        "--store",
        large_instance.path,
        "--chunked",
        timeout=LARGE_TIMEOUT,
    )
    assert cp.returncode == 0, f"{cp.describe()}\n{events}\n{scp.describe()}"
    assert [e["status"] for e in events if e["event"] == "c_store"] == [0], events
    check_large_received(scp, out, large_instance, "pynetdicom")
