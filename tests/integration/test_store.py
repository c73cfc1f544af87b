"""C-STORE end to end, aiodicom on both sides (in memory and over loopback TCP).

What lands is compared byte for byte with what was sent: the data set as it
sits in the file (for a path or file object) or as aiodicom encodes it (for a
Dataset). Interop with dcmtk and pynetdicom is in tests/interop.
"""

from __future__ import annotations

import errno
import io
import os
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from aiodicom import AE, Association, _nowait, evt, sop_class
from aiodicom.dimse import (
    DATASET_PRESENT,
    CommandField,
    decode_command,
    encode_command,
    fragment,
)
from aiodicom.dsutils import encode_dataset, file_meta_for, part10_header
from aiodicom.errors import NoAcceptedContext
from aiodicom.pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRQ,
    AReleaseRQ,
    PDataTF,
    PresentationContextRQ,
    decode_pdu,
    encode_p_data,
)
from aiodicom.pdu_primitives import (
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from aiodicom.testing import RecordingHandlers, make_dataset, memory_pair

from .conftest import (
    GUARD,
    RAW_IMPL_UID,
    RawPeer,
    Splices,
    can_evict,
    evict,
    make_scp_ae,
    make_scu_ae,
    raw_connection,
    running_server,
    write_part10,
)

pytestmark = pytest.mark.anyio

ALL_TS = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEG2000,
    RLELossless,
]
#: pydicom's bundled files, one per transfer syntax.
FILES = {
    "CT_small.dcm": ExplicitVRLittleEndian,
    "MR_small_bigendian.dcm": ExplicitVRBigEndian,
    "image_dfl.dcm": DeflatedExplicitVRLittleEndian,
    "JPEG2000.dcm": JPEG2000,
    "MR_small_RLE.dcm": RLELossless,
    "rtplan.dcm": ImplicitVRLittleEndian,
}
CLASSES = [
    sop_class.CTImageStorage,
    sop_class.MRImageStorage,
    sop_class.SecondaryCaptureImageStorage,
    sop_class.RTPlanStorage,
]


def storage_pair(
    scu_syntaxes: list[str] | None = None, scp_syntaxes: list[str] | None = None, **scp_attrs: Any
) -> tuple[AE, AE]:
    scu = make_scu_ae()
    scp = make_scp_ae(**scp_attrs)
    for uid in CLASSES:
        for ts in scu_syntaxes or ALL_TS:
            scu.add_requested_context(uid, ts)  # one context per syntax: any can be chosen
        scp.add_supported_context(uid, scp_syntaxes or ALL_TS)
    return scu, scp


@asynccontextmanager
async def store_pair(
    scu: AE, scp: AE, handlers: list[Any], transport: str
) -> AsyncIterator[Association]:
    """An association from ``scu`` to ``scp``, in memory or over loopback TCP."""
    if transport == "memory":
        async with memory_pair(scu, scp, scp_handlers=handlers) as assoc:
            yield assoc
    else:
        async with (
            running_server(scp, handlers) as server,
            scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc,
        ):
            yield assoc


def file_dataset_bytes(path: str | Path) -> bytes:
    """The data set of a Part 10 file exactly as stored (after the meta)."""
    raw = Path(path).read_bytes()
    ds = dcmread(path, stop_before_pixels=True)
    length = ds.file_meta.FileMetaInformationGroupLength
    data = raw[132 + 12 + length :]
    return data + b"\x00" if len(data) % 2 else data  # a deflated one is padded on the wire


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("form", ["path", "file", "dataset"])
async def test_store_each_transfer_syntax(name: str, form: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=rec.handlers) as assoc:
            if form == "path":
                status = await assoc.send_c_store(Path(path))
                expected = file_dataset_bytes(path)
            elif form == "file":
                with open(path, "rb") as f:
                    status = await assoc.send_c_store(f)
                expected = file_dataset_bytes(path)
            else:
                ds = dcmread(path)
                status = await assoc.send_c_store(ds)
                expected = encode_dataset(ds, FILES[name])
    assert status.Status == 0x0000
    ((uid, ts, data, spooled),) = rec.stored
    assert ts == FILES[name]
    assert data == expected
    assert not spooled
    assert uid == str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


async def test_received_dataset_and_file_meta() -> None:
    seen: list[tuple[Dataset, Any]] = []

    def on_store(event: evt.Event) -> int:
        seen.append((event.dataset, event.file_meta))
        return 0

    path = get_testdata_file("CT_small.dcm")
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            await assoc.send_c_store(path)
    ((ds, meta),) = seen
    source = dcmread(path)
    assert ds == source  # every element, pixel data included
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert meta.MediaStorageSOPClassUID == source.SOPClassUID


async def test_request_value_is_what_the_request_dataset_holds() -> None:
    """evt.request_value (the package's handlers' cheap read of a command
    field) gives what event.request gives, also for an Event built without
    the decoded command (by a user, say)."""
    seen: list[tuple[Any, ...]] = []
    keywords = ("AffectedSOPInstanceUID", "AffectedSOPClassUID", "MessageID", "Priority")

    def on_store(event: evt.Event) -> int:
        fast = tuple(evt.request_value(event, k) for k in keywords)
        slow = tuple(event.request.get(k) for k in keywords)
        bare = evt.Event(event.assoc, evt.EVT_C_STORE, _raw_request=event._raw_request)
        seen.append((fast, slow, tuple(evt.request_value(bare, k) for k in keywords)))
        return 0

    path = get_testdata_file("CT_small.dcm")
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            await assoc.send_c_store(path, msg_id=7)
    ((fast, slow, bare),) = seen
    source = dcmread(path, stop_before_pixels=True)
    assert fast == slow == bare == (source.SOPInstanceUID, source.SOPClassUID, 7, 2)
    assert evt.request_value(evt.Event(None, evt.EVT_C_STORE), "MessageID") is None  # type: ignore[arg-type]


async def test_dataset_without_meta_uses_its_encoding_or_first_accepted() -> None:
    rec = RecordingHandlers()
    scu, scp = storage_pair(scp_syntaxes=[ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    read_implicit = dcmread(get_testdata_file("rtplan.dcm"))
    del read_implicit.file_meta
    fresh = make_dataset()
    del fresh.file_meta
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=rec.handlers) as assoc:
            assert (await assoc.send_c_store(read_implicit)).Status == 0
            assert (await assoc.send_c_store(fresh)).Status == 0
    assert [ts for _, ts, _, _ in rec.stored] == [ImplicitVRLittleEndian, ExplicitVRLittleEndian]


async def test_no_accepted_context_for_the_files_syntax() -> None:
    scu, scp = storage_pair(scp_syntaxes=[ExplicitVRLittleEndian])
    rec = RecordingHandlers()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=rec.handlers) as assoc:
            with pytest.raises(NoAcceptedContext, match="JPEG 2000"):
                await assoc.send_c_store(get_testdata_file("JPEG2000.dcm"))
            ds = make_dataset(SOPClassUID=sop_class.UltrasoundImageStorage)
            with pytest.raises(NoAcceptedContext):
                await assoc.send_c_store(ds)
            with pytest.raises(TypeError):
                await assoc.send_c_store(42)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="priority"):
                await assoc.send_c_store(make_dataset(), priority=3)
            bare = Dataset()
            with pytest.raises(ValueError, match="SOP"):
                await assoc.send_c_store(bare)
            # none of it hurt the association
            assert (await assoc.send_c_store(make_dataset())).Status == 0
    assert len(rec.stored) == 1


async def test_raw_dataset_file_without_meta(tmp_path: Path) -> None:
    """A bare data set file (no preamble, no meta): its encoding is detected."""
    ds = make_dataset()
    raw = encode_dataset(ds, ImplicitVRLittleEndian)
    path = tmp_path / "bare.dcm"
    path.write_bytes(raw)
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=rec.handlers) as assoc:
            assert (await assoc.send_c_store(path)).Status == 0
            assert (await assoc.send_c_store(io.BytesIO(raw))).Status == 0
    assert [(u, t, d) for u, t, d, _ in rec.stored] == [
        (ds.SOPInstanceUID, ImplicitVRLittleEndian, raw)
    ] * 2


# ---------------------------------------------------------------------------
# Fragmentation: PDU sizes and file blocks


class _Unreadinto(io.BytesIO):
    """A binary file object without readinto (read() only)."""

    readinto = None  # type: ignore[assignment]


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Count the calls of ``owner.name`` (one list item a call)."""
    calls: list[int] = []
    real = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize(
    ("max_pdu", "size"),
    [
        (4096, size)
        for size in [
            *(0, 1, 4088, 4089, 4090, 4092, 2 * 4090, 3 * 4090, 3 * 4090 + 2),
            *(100_000, 100_001),
        ]
    ]
    # An odd PDV size: an odd data set filling its last PDU gets its pad byte
    # in a PDU of its own.
    + [(4095, size) for size in [1, 4088, 4089, 2 * 4089, 3 * 4089, 4 * 4089 - 1]],
)
@pytest.mark.parametrize(
    ("transport", "by_sendfile"), [("memory", False), ("tcp", False), ("tcp", True)]
)
async def test_fragment_boundaries(
    max_pdu: int,
    size: int,
    transport: str,
    by_sendfile: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SCP's maximum PDU is 4096 (4090 data bytes a PDV) or 4095 (4089);
    file blocks are 2 PDUs. ``by_sendfile``: a path's data set goes by
    sendfile(2) from the page cache (on asyncio), whatever the PDU size."""
    import aiodicom.association as association_module
    from aiodicom._transport import AsyncioStream, _on_asyncio

    chunk = max_pdu - 6
    monkeypatch.setattr(association_module, "_FILE_BLOCK", 2 * (chunk + 12))
    monkeypatch.setattr(association_module, "_INLINE_READ", 0)  # stream every file
    if by_sendfile:
        monkeypatch.setattr(association_module, "_SENDFILE_MIN_CHUNK", 0)
    else:
        monkeypatch.setattr(association_module, "page_cached", lambda fd, off, n: False)
    sent_files = _count_calls(monkeypatch, AsyncioStream, "send_file")
    meta = file_meta_for(sop_class.CTImageStorage, generate_uid(), ExplicitVRLittleEndian)
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = tmp_path / "x.dcm"
    path.write_bytes(part10_header(meta) + body)
    path.read_bytes()  # in the page cache
    rec = RecordingHandlers()
    scu, scp = storage_pair(maximum_pdu_size=max_pdu)
    seen: list[int] = []

    def on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, PDataTF):
            seen.append(len(event.pdu.pdvs[0].data))

    scp_handlers = [*rec.handlers, (evt.EVT_PDU_RECV, on_pdu)]
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, scp_handlers, transport) as assoc:
            assert (await assoc.send_c_store(path)).Status == 0
            assert (await assoc.send_c_store(io.BytesIO(path.read_bytes()))).Status == 0
            raw = path.read_bytes()
            assert (await assoc.send_c_store(_Unreadinto(raw))).Status == 0
    sent = body + b"\x00" if size % 2 else body  # an odd data set is padded to even length
    assert [d for _, _, d, _ in rec.stored] == [sent] * 3
    # (an empty data set is one empty PDV: no file to send)
    assert bool(sent_files) == (by_sendfile and bool(size) and _on_asyncio())
    assert max(seen) <= chunk
    # the command alone, then ceil(size / chunk) data fragments (one empty one for 0)
    per_message = 1 + max(1, -(-len(sent) // chunk))
    assert len(seen) == 3 * per_message


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # sendfile: the asyncio stream's
async def test_a_file_not_in_the_page_cache_is_read_in_a_worker_not_sent_by_sendfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiodicom.association as association_module
    from aiodicom._transport import AsyncioStream

    monkeypatch.setattr(association_module, "_INLINE_READ", 0)
    monkeypatch.setattr(association_module, "page_cached", lambda fd, offset, length: False)
    by_sendfile = _count_calls(monkeypatch, AsyncioStream, "send_file")
    meta = file_meta_for(sop_class.CTImageStorage, generate_uid(), ExplicitVRLittleEndian)
    body = bytes(range(256)) * 4096
    path = tmp_path / "x.dcm"
    path.write_bytes(part10_header(meta) + body)
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, rec.handlers, "tcp") as assoc:
            assert (await assoc.send_c_store(path)).Status == 0
    assert [d for _, _, d, _ in rec.stored] == [body]
    assert not by_sendfile


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # sendfile: the asyncio stream's
@pytest.mark.parametrize(
    ("max_pdu", "by_sendfile"),
    [(16384, False), (65536, False), (100_000, False), (131072, True), (None, True), (0, True)],
)
async def test_a_cached_file_goes_by_sendfile_only_in_pdus_of_128_kb_or_more(
    max_pdu: int | None, by_sendfile: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In smaller PDUs (dcmtk's and pynetdicom's 16 KB) a file in the page
    cache is read and copied, which costs both sides less than sendfile(2)
    there; in 128 KB PDUs or more (aiodicom's own default, None here; 0, no
    limit) it goes by sendfile. The data set arrives whole either way."""
    import aiodicom.association as association_module
    from aiodicom._transport import AsyncioStream

    monkeypatch.setattr(association_module, "_INLINE_READ", 0)
    sent_files = _count_calls(monkeypatch, AsyncioStream, "send_file")
    meta = file_meta_for(sop_class.CTImageStorage, generate_uid(), ExplicitVRLittleEndian)
    body = bytes(range(256)) * 2048
    path = tmp_path / "x.dcm"
    path.write_bytes(part10_header(meta) + body)
    path.read_bytes()  # in the page cache
    rec = RecordingHandlers()
    scu, scp = storage_pair(**({} if max_pdu is None else {"maximum_pdu_size": max_pdu}))
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, rec.handlers, "tcp") as assoc:
            assert (await assoc.send_c_store(path)).Status == 0
    assert [d for _, _, d, _ in rec.stored] == [body]
    assert bool(sent_files) == by_sendfile


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_file_sendfile_refuses_is_read_and_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sendfile(2) refuses a file (EINVAL: a file system without it): its
    bytes are read and sent instead, whole and in order; sendfile is not
    asked again for the rest of the block (here the whole file)."""
    import aiodicom.association as association_module

    monkeypatch.setattr(association_module, "_INLINE_READ", 0)
    monkeypatch.setattr(association_module, "_FILE_BLOCK", 4 << 20)  # one block a file
    meta = file_meta_for(sop_class.CTImageStorage, generate_uid(), ExplicitVRLittleEndian)
    body = bytes(range(251)) * 12_001  # odd: its pad byte too
    path = tmp_path / "x.dcm"
    path.write_bytes(part10_header(meta) + body)
    path.read_bytes()
    refused: list[int] = []

    def sendfile(out: int, fd: int, offset: int, count: int) -> int:
        refused.append(count)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", sendfile)
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, rec.handlers, "tcp") as assoc:
            assert (await assoc.send_c_store(path)).Status == 0
            assert (await assoc.send_c_store(path)).Status == 0
    assert [d for _, _, d, _ in rec.stored] == [body + b"\x00"] * 2
    assert len(refused) == 2  # asked once a block


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_file_that_shrinks_while_sent_by_sendfile_aborts_and_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sendfile(2) finds the end of the file before the size it had when
    opened: the PDU under way cannot be completed, so the association is
    aborted (closed: what follows would be read as part of that PDU) and the
    SCP stores nothing."""
    import aiodicom.association as association_module

    monkeypatch.setattr(association_module, "_INLINE_READ", 0)
    meta = file_meta_for(sop_class.CTImageStorage, generate_uid(), ExplicitVRLittleEndian)
    path = tmp_path / "x.dcm"
    path.write_bytes(part10_header(meta) + bytes(3 << 20))
    path.read_bytes()
    real = os.sendfile

    def sendfile(out: int, fd: int, offset: int, count: int) -> int:
        if offset >= 1 << 20:
            return 0  # the end of the file, 1 MiB in
        return real(out, fd, offset, min(count, (1 << 20) - offset))

    monkeypatch.setattr(os, "sendfile", sendfile)
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, rec.handlers, "tcp") as assoc:
            with pytest.raises(OSError, match="ended before its data set"):
                await assoc.send_c_store(path)
            assert assoc.is_aborted
    assert rec.stored == []


class _FailingFile(io.BytesIO):
    """A file whose reads fail past its first ``good`` bytes."""

    def __init__(self, data: bytes, good: int) -> None:
        super().__init__(data)
        self._good = good

    def readinto(self, buf: Any) -> int:
        if self.tell() >= self._good:
            raise OSError(errno.EIO, "medium error")
        return super().readinto(memoryview(buf)[: self._good - self.tell()])

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self._good:
            raise OSError(errno.EIO, "medium error")
        end = self._good if size is None or size < 0 else min(self._good, self.tell() + size)
        return super().read(end - self.tell())


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_a_read_error_while_streaming_aborts_and_raises_it(
    transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiodicom.association as association_module

    monkeypatch.setattr(association_module, "_FILE_BLOCK", 4 * 4102)
    monkeypatch.setattr(association_module, "_INLINE_READ", 0)
    meta = file_meta_for(sop_class.CTImageStorage, generate_uid(), ExplicitVRLittleEndian)
    raw = part10_header(meta) + bytes(200_000)
    rec = RecordingHandlers()
    scu, scp = storage_pair(maximum_pdu_size=4096)
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, rec.handlers, transport) as assoc:
            # past the first blocks: the command and some data went out
            with pytest.raises(OSError, match="medium error"):
                await assoc.send_c_store(_FailingFile(raw, 100_000))
            assert assoc.is_aborted
    assert rec.stored == []


# ---------------------------------------------------------------------------
# Spooling


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_a_spool_file_is_deleted_after_the_answer_off_the_event_loop(
    transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a big file costs the kernel milliseconds: the peer has its
    C-STORE-RSP first, and the event loop's thread does not wait for it."""
    import threading

    from aiodicom import _spool
    from aiodicom._spool import Spool

    order: list[str] = []
    real_discard, real_unlink, real_set_aside = Spool.discard, _spool._unlink, Spool._set_aside

    def where() -> str:
        on_loop = threading.current_thread() is threading.main_thread()
        return "on the loop" if on_loop else "in a worker"

    def discard(self: Spool) -> None:
        if self.path is not None:  # the call that deletes the file
            order.append(f"deleted {where()}")
        real_discard(self)

    def unlink(path: str) -> None:  # the file set aside, at the association's end
        if os.path.exists(path):
            order.append(f"deleted {where()}")
        real_unlink(path)

    def set_aside(self: Spool) -> Any:
        order.append(f"set aside {where()}")
        return real_set_aside(self)

    def on_sent(event: evt.Event) -> None:
        if event.message.command["CommandField"] == CommandField.C_STORE_RSP:
            order.append("answered")

    monkeypatch.setattr(Spool, "discard", discard)
    monkeypatch.setattr(Spool, "_set_aside", set_aside)
    monkeypatch.setattr(_spool, "_unlink", unlink)
    scu, scp = storage_pair(spool_threshold=10_000, maximum_pdu_size=4096)
    scp.spool_directory = str(tmp_path)
    handlers = [(evt.EVT_C_STORE, lambda event: 0), (evt.EVT_DIMSE_SENT, on_sent)]
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, handlers, transport) as assoc:
            assert (await assoc.send_c_store(get_testdata_file("CT_small.dcm"))).Status == 0
    # (kept for the association's next spooled data set until it ends)
    assert order == ["answered", "set aside in a worker", "deleted in a worker"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("transport", "max_pdu"),
    [
        ("memory", 4096),
        ("tcp", 4096),
        # The command and the whole data set in one PDU: the data set must
        # still reach the spool (it was once handed on without it).
        ("memory", 0),
        ("tcp", 0),
    ],
)
async def test_spooled_store(transport: str, max_pdu: int, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    seen: list[dict[str, Any]] = []

    def on_store(event: evt.Event) -> int:
        path = event.dataset_path
        assert path is not None
        seen.append(
            {
                "dir": os.path.dirname(path),
                "exists": os.path.exists(path),
                "part10": dcmread(path),
                "dataset": event.dataset,
                "encoded": event.encoded_dataset(),
            }
        )
        return 0

    source = get_testdata_file("CT_small.dcm")
    scu, scp = storage_pair(spool_threshold=10_000, maximum_pdu_size=max_pdu)
    scp.spool_directory = str(spool_dir)
    handlers = [(evt.EVT_C_STORE, on_store)]
    with anyio.fail_after(GUARD):
        if transport == "memory":
            async with memory_pair(scu, scp, scp_handlers=handlers) as assoc:
                assert (await assoc.send_c_store(source)).Status == 0
                assert (await assoc.send_c_store(source)).Status == 0
        else:
            async with (
                running_server(scp, handlers) as server,
                scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc,
            ):
                assert (await assoc.send_c_store(source)).Status == 0
                assert (await assoc.send_c_store(source)).Status == 0
    assert len(seen) == 2
    expected = dcmread(source)
    for item in seen:
        assert item["dir"] == str(spool_dir) and item["exists"]
        assert item["part10"] == expected
        assert item["part10"].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert item["dataset"] == expected
        assert item["encoded"] == file_dataset_bytes(source)
    assert list(spool_dir.iterdir()) == []  # deleted after the handler returned


async def test_spooled_file_moved_by_handler(tmp_path: Path) -> None:
    target = tmp_path / "kept.dcm"

    def on_store(event: evt.Event) -> int:
        assert event.dataset_path is not None
        os.replace(event.dataset_path, target)
        return 0

    scu, scp = storage_pair(spool_threshold=1000)
    scp.spool_directory = str(tmp_path)
    source = get_testdata_file("CT_small.dcm")
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            assert (await assoc.send_c_store(source)).Status == 0
    assert dcmread(target) == dcmread(source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.dcm"]


def _spooled_twice_source(tmp_path: Path) -> tuple[Path, Path]:
    """Two Part 10 files past a 1,000-byte threshold, the second shorter."""
    long, short = make_dataset(), make_dataset()
    long.PixelData, short.PixelData = bytes(range(256)) * 64, b"\x07" * 4000
    long["PixelData"].VR = short["PixelData"].VR = "OB"
    return (
        write_part10(tmp_path / "long.dcm", long, ExplicitVRLittleEndian),
        write_part10(tmp_path / "short.dcm", short, ExplicitVRLittleEndian),
    )


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_a_spool_file_left_by_the_handler_is_written_over_by_the_next(
    transport: str, tmp_path: Path
) -> None:
    """The next spooled data set of the association goes into the file the
    handler left (its pages reused), cut to its own length; the old name is
    gone once the handler has returned, and nothing is left at the end."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    long, short = _spooled_twice_source(tmp_path)
    seen: list[tuple[str, int, bytes]] = []
    gone: list[bool] = []

    def on_store(event: evt.Event) -> int:
        assert event.dataset_path is not None
        if seen:
            gone.append(not os.path.exists(seen[-1][0]))
        seen.append(
            (
                event.dataset_path,
                os.stat(event.dataset_path).st_ino,
                Path(event.dataset_path).read_bytes(),
            )
        )
        return 0

    scu, scp = storage_pair(spool_threshold=1000)
    scp.spool_directory = str(spool_dir)
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, [(evt.EVT_C_STORE, on_store)], transport) as assoc:
            for source in (long, short, long):
                assert (await assoc.send_c_store(source)).Status == 0
    assert [data for _, _, data in seen] == [x.read_bytes() for x in (long, short, long)]
    assert len({ino for _, ino, _ in seen}) == 1  # one file, written over twice
    assert len({path for path, _, _ in seen}) == 3 and gone == [True, True]
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_an_idle_association_keeps_no_spool_file(
    transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file set aside is deleted once the association has spooled nothing
    for SPARE_IDLE seconds, while it goes on (on a tmpfs its pages are
    memory); the next spooled data set then goes to a new file."""
    from aiodicom import _spool

    monkeypatch.setattr(_spool, "SPARE_IDLE", 0.05)
    deleted = anyio.Event()
    real_expire = _spool.Spares.expire

    async def expire(self: _spool.Spares) -> None:
        had = self.expires is not None
        await real_expire(self)
        if had and self.expires is None:
            deleted.set()

    monkeypatch.setattr(_spool.Spares, "expire", expire)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    long, short = _spooled_twice_source(tmp_path)
    seen: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        assert event.dataset_path is not None
        seen.append(Path(event.dataset_path).read_bytes())
        return 0

    scu, scp = storage_pair(spool_threshold=1000)
    scp.spool_directory = str(spool_dir)
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, [(evt.EVT_C_STORE, on_store)], transport) as assoc:
            assert (await assoc.send_c_store(long)).Status == 0
            await deleted.wait()  # by the association's timers, not its end
            assert list(spool_dir.iterdir()) == [] and assoc.is_established
            assert (await assoc.send_c_store(short)).Status == 0
    assert seen == [long.read_bytes(), short.read_bytes()]
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize("how", ["held open", "mapped", "hard link", "chmod", "moved"])
async def test_a_spool_file_the_handler_keeps_is_never_written_over(
    how: str, tmp_path: Path
) -> None:
    """A file the handler still holds (an open descriptor, a mapping, a
    second link), made readable to others or moved is not reused: the next
    data set goes to a new file and what the handler kept stays intact."""
    import mmap

    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    long, short = _spooled_twice_source(tmp_path)
    kept: list[Any] = []
    files: list[os.stat_result] = []

    def on_store(event: evt.Event) -> int:
        assert event.dataset_path is not None
        files.append(os.stat(event.dataset_path))
        if kept:
            return 0
        if how == "held open":
            kept.append(open(event.dataset_path, "rb"))  # noqa: SIM115 - read after return
        elif how == "mapped":
            with open(event.dataset_path, "rb") as f:
                kept.append(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
        elif how == "hard link":
            os.link(event.dataset_path, tmp_path / "linked.dcm")
            kept.append(tmp_path / "linked.dcm")
        elif how == "chmod":
            os.chmod(event.dataset_path, 0o644)
            kept.append(event.dataset_path)
        else:
            os.replace(event.dataset_path, tmp_path / "moved.dcm")
            kept.append(tmp_path / "moved.dcm")
        return 0

    scu, scp = storage_pair(spool_threshold=1000)
    scp.spool_directory = str(spool_dir)
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            assert (await assoc.send_c_store(long)).Status == 0
            assert (await assoc.send_c_store(short)).Status == 0
            [what] = kept
            if how == "held open":
                assert what.read() == long.read_bytes()
                what.close()
            elif how == "mapped":
                assert what[:] == long.read_bytes()
                what.close()
            elif how in ("hard link", "moved"):
                assert what.read_bytes() == long.read_bytes()
    if how == "chmod":  # (deleted: its inode number may come again; a reused one'd be 0o644)
        assert files[1].st_mode & 0o777 == 0o600
    else:
        assert files[0].st_ino != files[1].st_ino
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize("leases", ["none", "refused"])
async def test_without_leases_no_spool_file_is_reused(
    leases: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where it cannot be checked that nobody holds a spool file (no
    F_SETLEASE, or a file system refusing leases), none is reused: each data
    set goes to a new file, deleted after its handler, as before."""
    import errno
    import fcntl

    from aiodicom import _spool

    monkeypatch.setattr(_spool, "_NO_LEASES", set())
    if leases == "none":
        monkeypatch.setattr(_spool, "_SET_LEASE", None)
    else:
        real_fcntl = fcntl.fcntl

        def refuse(fd: int, cmd: int, arg: int = 0) -> Any:
            if cmd == fcntl.F_SETLEASE:
                raise OSError(errno.EINVAL, "no leases here")
            return real_fcntl(fd, cmd, arg)

        monkeypatch.setattr(fcntl, "fcntl", refuse)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    long, short = _spooled_twice_source(tmp_path)
    seen: list[tuple[str, bytes]] = []

    def on_store(event: evt.Event) -> int:
        assert event.dataset_path is not None
        seen.append((event.dataset_path, Path(event.dataset_path).read_bytes()))
        return 0

    set_aside: list[bool] = []
    real_set_aside = _spool.Spool._set_aside

    def counting(self: _spool.Spool) -> Any:
        spare = real_set_aside(self)
        set_aside.append(spare is not None)
        return spare

    monkeypatch.setattr(_spool.Spool, "_set_aside", counting)
    scu, scp = storage_pair(spool_threshold=1000)
    scp.spool_directory = str(spool_dir)
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            for source in (long, short, long, short):
                assert (await assoc.send_c_store(source)).Status == 0
    assert [data for _, data in seen] == [x.read_bytes() for x in (long, short, long, short)]
    # refused: the first file is set aside, then found not reusable, and
    # the file system is not tried again
    assert set_aside == ([] if leases == "none" else [True])
    assert list(spool_dir.iterdir()) == []


async def test_spool_failure_answers_out_of_resources(tmp_path: Path) -> None:
    rec = RecordingHandlers()
    scu, scp = storage_pair(spool_threshold=1000)
    scp.spool_directory = str(tmp_path / "does-not-exist")
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=rec.handlers) as assoc:
            assert (await assoc.send_c_store(get_testdata_file("CT_small.dcm"))).Status == 0xA700
            # the association goes on; a small instance is not spooled
            assert (await assoc.send_c_store(make_dataset())).Status == 0
    assert len(rec.stored) == 1


def store_rq_association(max_pdu: int = 16384) -> AAssociateRQ:
    return AAssociateRQ(
        protocol_version=1,
        called_ae_title="TEST_SCP",
        calling_ae_title="RAW_SCU",
        presentation_contexts=(
            PresentationContextRQ(
                context_id=1,
                abstract_syntax=sop_class.CTImageStorage,
                transfer_syntaxes=(ExplicitVRLittleEndian,),
            ),
        ),
        user_information=(
            MaximumLengthNotification(maximum_length_received=max_pdu),
            ImplementationClassUIDNotification(implementation_class_uid=RAW_IMPL_UID),
        ),
    )


def store_rq_command(msg_id: int = 1, uid: str = "1.2.3.4") -> bytes:
    return encode_command(
        {
            "CommandField": CommandField.C_STORE_RQ,
            "MessageID": msg_id,
            "AffectedSOPClassUID": sop_class.CTImageStorage,
            "Priority": 0,
            "CommandDataSetType": DATASET_PRESENT,
            "AffectedSOPInstanceUID": uid,
        }
    )


@asynccontextmanager
async def store_peer(scp: AE, handlers: list[Any]) -> AsyncIterator[RawPeer]:
    """A raw peer associated with ``scp`` (serving ``handlers``) on the
    context of store_rq_association()."""
    async with running_server(scp, handlers) as server, raw_connection(server.port) as peer:
        await peer.send(store_rq_association())
        await peer.read_pdu()
        yield peer


async def send_request(peer: RawPeer, command: bytes, data: bytes | None) -> None:
    """Send a message on context 1 in P-DATA-TF PDUs of at most 16 KiB."""
    for pdu in fragment(1, command, data, 16384):
        await peer.send(pdu)


@pytest.mark.parametrize("reused", [False, True], ids=["new file", "reused file"])
@pytest.mark.parametrize("how", ["abort", "close"])
async def test_abort_mid_transfer_leaves_no_spool_file(
    how: str, reused: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, splices: Splices
) -> None:
    """``reused``: a first instance is spooled and answered, so the one cut
    off is being written over the file it left (see Spares). The data set
    goes into the file by Spool.write or (asyncio, Linux) by a splice job."""
    from aiodicom._spool import Spool

    spooling = [anyio.Event()]
    splices.started = spooling[0]
    written_over: list[bool] = []
    real_open, real_write = Spool.open, Spool.write

    async def open_(self: Spool, *args: Any) -> None:
        await real_open(self, *args)
        assert self.path is not None and os.path.exists(self.path)
        written_over.append(self._reused)

    async def write(self: Spool, chunks: list[Any]) -> None:
        await real_write(self, chunks)
        spooling[0].set()

    monkeypatch.setattr(Spool, "open", open_)
    monkeypatch.setattr(Spool, "write", write)
    scp = make_scp_ae(spool_threshold=10_000)
    scp.add_supported_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    scp.spool_directory = str(tmp_path)
    ended = anyio.Event()
    calls: list[evt.Event] = []
    handlers = [
        (evt.EVT_C_STORE, lambda event: calls.append(event) or 0),
        (evt.EVT_CONN_CLOSE, lambda event: ended.set()),
    ]
    chunk = bytes(16378)
    with anyio.fail_after(GUARD):
        async with store_peer(scp, handlers) as peer:
            if reused:
                await send_request(peer, store_rq_command(), chunk * 2)
                await peer.read_pdu()  # its C-STORE-RSP
                spooling[0] = splices.started = anyio.Event()
            await send_request(peer, store_rq_command(2), None)
            # 16 KB fragments of a data set, none of them the last, until
            # the SCP has written some of it to its spool file
            with anyio.move_on_after(GUARD):
                while not spooling[0].is_set():
                    await peer.send(encode_p_data(1, 0x00, chunk))
                    await anyio.lowlevel.checkpoint()
            assert spooling[0].is_set()
            assert written_over[-1] is reused
            if how == "abort":
                await peer.send(AAbort(source=0, reason=0))
            else:
                await peer.aclose()
            await ended.wait()
    assert len(calls) == reused
    assert list(tmp_path.iterdir()) == []


async def test_a_request_queued_when_the_connection_drops_is_not_served() -> None:
    """Two C-STOREs arrive, the second queued behind the first's handler; the
    peer then drops the connection. The first handler finishes once the
    Upper Layer is back in Sta1, while the association is still ending (an
    EVT_FSM_TRANSITION handler holds the reader until then). The worker must
    not go on to the second request: its answer could never be sent."""
    seen: list[str] = []
    first_started = anyio.Event()
    closed = anyio.Event()
    first_done = anyio.Event()

    async def on_store(event: evt.Event) -> int:
        seen.append(str(event.request.AffectedSOPInstanceUID))
        if len(seen) == 1:
            first_started.set()
            await closed.wait()
            first_done.set()
        return 0x0000

    async def on_transition(event: evt.Event) -> None:
        if event.next_state == "Sta1":
            closed.set()
            await first_done.wait()

    scp = make_scp_ae()
    scp.add_supported_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    ended = anyio.Event()
    handlers = [
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_FSM_TRANSITION, on_transition),
        (evt.EVT_CONN_CLOSE, lambda event: ended.set()),
    ]
    data = encode_dataset(make_dataset(), ExplicitVRLittleEndian)
    with anyio.fail_after(GUARD):
        async with store_peer(scp, handlers) as peer:
            await send_request(peer, store_rq_command(1, "1.2.3.1"), data)
            await send_request(peer, store_rq_command(2, "1.2.3.2"), data)
            await first_started.wait()
            await peer.aclose()
            await ended.wait()
    assert seen == ["1.2.3.1"]


@pytest.mark.parametrize("finish", ["_finish_inline", "_finish_n"])
async def test_a_handler_finish_started_after_the_end_does_not_run_it(finish: str) -> None:
    """What a plain handler returned (a coroutine) is finished by a task of
    its own; a task that only starts once the association has ended closes
    the coroutine unrun and counts the request done (white box: the race
    needs the reader to end between the spawn and the task's first step)."""
    import inspect
    from types import SimpleNamespace

    scu, scp = make_scu_ae(), make_scp_ae()
    scu.add_requested_context(sop_class.Verification)
    scp.add_supported_context(sop_class.Verification)
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp) as assoc:
            pass
    assert assoc.state.value == 1  # Sta1: ended
    ran: list[bool] = []

    async def late() -> int:
        ran.append(True)
        return 0x0000

    coro = late()
    msg = SimpleNamespace(name="C-ECHO-RQ", message_id=1, spool=None)
    assoc._inflight = 1
    if finish == "_finish_inline":
        await assoc._finish_inline(msg, evt.EVT_C_ECHO, coro)  # type: ignore[arg-type]
    else:
        await assoc._finish_n(msg, evt.EVT_N_GET, (coro, False))  # type: ignore[arg-type]
    assert ran == [] and inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert assoc._inflight == 0


# ---------------------------------------------------------------------------
# Statuses


def garbage_file(tmp_path: Path) -> Path:
    """A Deflated Explicit VR LE file whose data set does not inflate."""
    meta = file_meta_for(sop_class.CTImageStorage, generate_uid(), DeflatedExplicitVRLittleEndian)
    path = tmp_path / "garbage.dcm"
    path.write_bytes(part10_header(meta) + b"\xff\xfe not deflate data \x00")
    return path


def raiser(exc: BaseException) -> Callable[[evt.Event], int]:
    def handler(event: evt.Event) -> int:
        raise exc

    return handler


def reads_dataset(event: evt.Event) -> int:
    event.dataset.PatientName  # noqa: B018 - decoding is the point
    return 0


@pytest.mark.parametrize(
    ("handler", "source", "status"),
    [
        (None, "ok", 0xC211),  # unbound: pynetdicom's default
        (raiser(RuntimeError("boom")), "ok", 0xC211),
        (raiser(OSError(errno.ENOSPC, "disk full")), "ok", 0xA700),
        (raiser(OSError(errno.EACCES, "denied")), "ok", 0xC211),
        (raiser(MemoryError()), "ok", 0xA700),
        (reads_dataset, "garbage", 0xC210),
        (lambda event: 0xB000, "ok", 0xB000),
        (lambda event: "nonsense", "ok", 0xC211),
    ],
)
@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_handler_failures_map_to_statuses(
    handler: Callable[[evt.Event], Any] | None,
    source: str,
    status: int,
    transport: str,
    tmp_path: Path,
) -> None:
    scu, scp = storage_pair()
    path = {
        "ok": Path(get_testdata_file("CT_small.dcm") or ""),
        "garbage": garbage_file(tmp_path),
    }[source]
    handlers = [] if handler is None else [(evt.EVT_C_STORE, handler)]
    with anyio.fail_after(GUARD):
        async with store_pair(scu, scp, handlers, transport) as assoc:
            rsp = await assoc.send_c_store(path, msg_id=4242)
            assert rsp.Status == status
            assert rsp.MessageIDBeingRespondedTo == 4242
            assert rsp.AffectedSOPClassUID == sop_class.CTImageStorage
            # the association goes on
            assert (await assoc.send_c_echo()).Status == 0


async def test_dataset_not_matching_the_command_answers_a900() -> None:
    """The command says CT Image Storage, the data set is an MR image (PS3.4 B.2.3)."""
    scp = make_scp_ae()
    scp.add_supported_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    ds = make_dataset(SOPClassUID=sop_class.MRImageStorage)
    data = encode_dataset(ds, ExplicitVRLittleEndian)
    with anyio.fail_after(GUARD):
        async with store_peer(scp, [(evt.EVT_C_STORE, reads_dataset)]) as peer:
            await send_request(peer, store_rq_command(5, ds.SOPInstanceUID), data)
            rsp = await peer.read_pdu()
    assert isinstance(rsp, PDataTF)
    command = decode_command(rsp.pdvs[0].data)
    assert command["Status"] == 0xA900
    assert command["MessageIDBeingRespondedTo"] == 5


@pytest.mark.parametrize(
    ("comment", "sent"),
    [("no room at the inn", "no room at the inn"), ("c" * 80, "c" * 64)],
    ids=["comment", "longer-than-an-LO-cut-to-64"],
)
async def test_status_dataset_with_comment(comment: str, sent: str) -> None:
    """The handler's Error Comment goes out; one longer than an LO allows, cut."""

    def on_store(event: evt.Event) -> Dataset:
        status = Dataset()
        status.Status = 0xC001
        with warnings.catch_warnings():  # pydicom warns on the length at once
            warnings.simplefilter("ignore")
            status.ErrorComment = comment
        return status

    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            rsp = await assoc.send_c_store(make_dataset())
    assert rsp.Status == 0xC001
    assert rsp.ErrorComment == sent


def _status_with(**elements: Any) -> Dataset:
    status = Dataset()
    with warnings.catch_warnings():  # pydicom warns at once on the bad ones
        warnings.simplefilter("ignore")
        for keyword, value in elements.items():
            setattr(status, keyword, value)
    return status


@pytest.mark.parametrize(
    ("answer", "status", "comment"),
    [
        (lambda: _status_with(Status=0xC001, ErrorComment="snow \u2603"), 0xC001, "snow ?"),
        (lambda: _status_with(Status=0xC001, ErrorComment="a\\b"), 0xC001, "a b"),
        (lambda: _status_with(Status=0x1FFFF), 0xC211, None),
        (lambda: _status_with(Status=0xC001, ErrorID=70000), 0xC001, None),
        (lambda: 0x10000, 0xC211, None),
        (lambda: -1, 0xC211, None),
    ],
    ids=["non-ascii-comment", "two-valued-comment", "status-out-of-range", "error-id-out-of-range",
         "int-out-of-range", "negative"],
)  # fmt: skip
async def test_status_values_that_do_not_encode_never_end_the_association(
    answer: Callable[[], Any], status: int, comment: str | None
) -> None:
    """What a handler answers is made to encode (or answered with the failure
    status); the association serves on. Over TCP: on asyncio a plain handler
    is answered inline, on trio by a worker."""
    scu, scp = storage_pair()
    async with running_server(scp, handlers=[(evt.EVT_C_STORE, lambda event: answer())]) as srv:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", srv.port) as assoc:
                rsp = await assoc.send_c_store(make_dataset())
                again = await assoc.send_c_store(make_dataset())
    assert rsp.Status == status == again.Status
    assert rsp.get("ErrorComment") == comment
    assert "ErrorID" not in rsp and "OffendingElement" not in rsp


async def test_response_fields() -> None:
    scu, scp = storage_pair()
    ds = make_dataset()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=RecordingHandlers().handlers) as assoc:
            rsp = await assoc.send_c_store(ds, msg_id=777)
    assert rsp.CommandField == 0x8001
    assert rsp.MessageIDBeingRespondedTo == 777
    assert rsp.AffectedSOPInstanceUID == ds.SOPInstanceUID
    assert rsp.AffectedSOPClassUID == ds.SOPClassUID


async def test_request_fields_reach_the_handler() -> None:
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=rec.handlers) as assoc:
            await assoc.send_c_store(
                make_dataset(), priority=1, originator_aet="MOVER", originator_id=9
            )
    (event,) = rec.of(evt.EVT_C_STORE)
    assert event.request.Priority == 1
    assert event.request.MoveOriginatorApplicationEntityTitle == "MOVER"
    assert event.request.MoveOriginatorMessageID == 9
    assert event.message_id == event.request.MessageID


async def test_both_command_encoders_announce_the_data_set_alike() -> None:
    """A C-STORE-RQ with Move Originator fields (general encoder) and one
    without (template) carry the same Command Data Set Type, field for field."""
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=rec.handlers) as assoc:
            await assoc.send_c_store(make_dataset(), priority=1)
            await assoc.send_c_store(
                make_dataset(), priority=1, originator_aet="MOVER", originator_id=9
            )
    plain, moved = (e.request for e in rec.of(evt.EVT_C_STORE))
    assert plain.CommandDataSetType == moved.CommandDataSetType == DATASET_PRESENT
    shared = ("CommandField", "AffectedSOPClassUID", "Priority", "CommandDataSetType")
    assert [plain[k].value for k in shared] == [moved[k].value for k in shared]


# ---------------------------------------------------------------------------
# Many, concurrently, and a peer that ignores the window


async def test_many_instances_over_tcp() -> None:
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    datasets = [make_dataset() for _ in range(200)]
    with anyio.fail_after(GUARD * 3):
        async with (
            running_server(scp, rec.handlers) as server,
            scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc,
        ):
            for ds in datasets:
                assert (await assoc.send_c_store(ds)).Status == 0
    assert [u for u, _, _, _ in rec.stored] == [ds.SOPInstanceUID for ds in datasets]


async def test_concurrent_stores_with_a_window() -> None:
    from aiodicom.pdu_primitives import AsynchronousOperationsWindowNegotiation

    rec = RecordingHandlers()
    scu, scp = storage_pair()
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 4
    window.maximum_number_operations_performed = 4
    scp_handlers = [*rec.handlers, (evt.EVT_ASYNC_OPS, lambda event: (4, 4))]
    datasets = [make_dataset() for _ in range(20)]
    statuses: list[int] = []
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=scp_handlers, ext_neg=[window]) as assoc:
            assert assoc.max_async_invoked == 4

            async def send(ds: Dataset) -> None:
                statuses.append(int((await assoc.send_c_store(ds)).Status))

            async with anyio.create_task_group() as tg:
                for ds in datasets:
                    tg.start_soon(send, ds)
    assert statuses == [0] * 20
    assert sorted(u for u, _, _, _ in rec.stored) == sorted(ds.SOPInstanceUID for ds in datasets)


async def test_files_from_several_tasks_in_flight_over_tcp(tmp_path: Path) -> None:
    """As bench_store's windowed row: 8 tasks, window 8 invoked / 1 performed, files."""
    from aiodicom.pdu_primitives import AsynchronousOperationsWindowNegotiation

    expected: dict[str, bytes] = {}
    paths = []
    for i in range(60):
        ds = make_dataset()
        ds.PixelData = os.urandom(2 * (i + 1) * 100)
        data = encode_dataset(ds, ExplicitVRLittleEndian)
        meta = file_meta_for(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(part10_header(meta) + data)
        expected[str(ds.SOPInstanceUID)] = data
        paths.append(path)
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 8
    window.maximum_number_operations_performed = 1
    queue = iter(paths)
    statuses: list[int] = []
    with anyio.fail_after(GUARD):
        async with (
            running_server(scp, rec.handlers) as server,
            scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP", ext_neg=[window]) as assoc,
        ):
            assert assoc.max_async_invoked == 8

            async def sender() -> None:
                for path in queue:
                    statuses.append(int((await assoc.send_c_store(path)).Status))

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(sender)
    assert statuses == [0] * len(paths)
    assert {u: d for u, _, d, _ in rec.stored} == expected


async def test_peer_beyond_the_window_is_served_in_order() -> None:
    """A peer that sends 6 requests without waiting (window 1) gets 6 answers, in order."""
    scp = make_scp_ae()
    scp.add_supported_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    release = anyio.Event()
    order: list[str] = []

    async def on_store(event: evt.Event) -> int:
        await release.wait()
        order.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    uids = [f"1.2.3.{i}" for i in range(6)]
    with anyio.fail_after(GUARD):
        async with store_peer(scp, [(evt.EVT_C_STORE, on_store)]) as peer:
            for i, uid in enumerate(uids):
                await send_request(peer, store_rq_command(i + 1, uid), bytes(1000))
            release.set()
            answered = []
            while len(answered) < len(uids):
                raw = await peer.read_raw()
                assert raw is not None
                pdu = decode_pdu(raw)
                assert isinstance(pdu, PDataTF)
                answered.append(pdu)
    assert order == uids


async def test_a_request_arriving_while_a_spool_file_is_finished_waits_its_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that does not wait for answers: its second C-STORE arrives
    while the first one's spool file is being finished (in a worker
    thread). The second is handled after the first, not before it: the
    asyncio fast path leaves what arrives to the reader while the reader is
    busy with a PDU (it took the second ahead of the first before)."""
    from aiodicom import _spool

    scp = make_scp_ae()
    scp.add_supported_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    scp.spool_threshold = 500
    order: list[str] = []

    async def on_store(event: evt.Event) -> int:
        order.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    finishing, go = anyio.Event(), anyio.Event()
    finish = _spool.Spool.finish

    async def slow_finish(self: _spool.Spool) -> None:
        finishing.set()
        await go.wait()
        await finish(self)

    monkeypatch.setattr(_spool.Spool, "finish", slow_finish)
    with anyio.fail_after(GUARD):
        async with store_peer(scp, [(evt.EVT_C_STORE, on_store)]) as peer:
            # spooled: past the threshold
            await send_request(peer, store_rq_command(1, "1.2.3.1"), bytes(1000))
            await finishing.wait()
            # kept in memory: the fast path's kind
            await send_request(peer, store_rq_command(2, "1.2.3.2"), bytes(100))
            # The second request reaches the SCP while the first is held up
            # (a pause to let it arrive, not a wait for a state).
            await anyio.sleep(0.2)
            go.set()
            for _ in range(2):
                pdu = await peer.read_pdu()
                assert isinstance(pdu, PDataTF)
                assert decode_command(pdu.pdvs[0].data)["Status"] == 0
    assert order == ["1.2.3.1", "1.2.3.2"]


# ---------------------------------------------------------------------------
# Invalid command sets


async def _answer_to(command: dict[str, Any], data: bytes | None) -> list[Any]:
    """Send one raw request on a CT storage context; return what the SCP sent back."""
    scp = make_scp_ae()
    scp.add_supported_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    rec = RecordingHandlers()
    out: list[Any] = []
    with anyio.fail_after(GUARD):
        async with store_peer(scp, rec.handlers) as peer:
            await send_request(peer, encode_command(command), data)
            pdu = await peer.read_pdu()
            out.append(pdu)
            if isinstance(pdu, PDataTF):
                out.append(decode_command(pdu.pdvs[0].data))
    assert rec.stored == []
    return out


async def test_store_request_missing_a_required_field() -> None:
    command = {
        "CommandField": CommandField.C_STORE_RQ,
        "MessageID": 3,
        "AffectedSOPClassUID": sop_class.CTImageStorage,
        "Priority": 0,
        "CommandDataSetType": DATASET_PRESENT,
    }
    _, rsp = await _answer_to(command, bytes(10))
    assert rsp["Status"] == 0xC210
    assert rsp["MessageIDBeingRespondedTo"] == 3
    assert "Affected SOP Instance UID" in rsp["ErrorComment"]


async def test_unknown_command_field_is_unrecognized() -> None:
    command = {"CommandField": 0x0FFE, "MessageID": 4, "CommandDataSetType": 0x0101}
    _, rsp = await _answer_to(command, None)
    assert rsp["Status"] == 0x0211
    assert rsp["CommandField"] == 0x8FFE


async def test_request_without_message_id_aborts() -> None:
    command = {
        "CommandField": CommandField.C_ECHO_RQ,
        "AffectedSOPClassUID": sop_class.Verification,
        "CommandDataSetType": 0x0101,
    }
    (pdu,) = await _answer_to(command, None)
    assert isinstance(pdu, AAbort)
    assert (pdu.source, pdu.reason) == (2, 6)


# ---------------------------------------------------------------------------
# Reading the file to send: on the loop when the page cache has it, else in a worker


@pytest.mark.skipif(
    _nowait._syscall is None,
    reason="openat2/RWF_NOWAIT are Linux-only",
)
async def test_hot_file_is_sent_without_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyio.to_thread

    hops: list[str] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    ds = make_dataset()
    path = write_part10(tmp_path / "hot.dcm", ds, ExplicitVRLittleEndian)
    path.read_bytes()  # in the page cache
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=rec.handlers) as assoc:
            assert (await assoc.send_c_store(path)).Status == 0
            assert hops == []
            # a file the page cache does not hold (evicted) goes through a worker
            # (not on a file system that keeps its pages in memory: tmpfs)
            sent = 1
            if can_evict(tmp_path):
                evict(path)
                assert (await assoc.send_c_store(path)).Status == 0
                assert hops == ["_read_small"]
                sent = 2
            # a missing file: the worker's open raises the real error
            with pytest.raises(FileNotFoundError):
                await assoc.send_c_store(tmp_path / "missing.dcm")
    expected = encode_dataset(ds, ExplicitVRLittleEndian)
    assert [d for _, _, d, _ in rec.stored] == [expected] * sent


async def test_one_pdu_stores_are_written_without_awaiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """On asyncio a store that fits one P-DATA-TF goes out through ``_send_now``,
    whatever holds its data set: a path (read into memory), a file object, a Dataset."""
    taken: list[bool] = []
    real = Association._send_now

    def watch(self: Association, *args: Any, **kwargs: Any) -> bool:
        result = real(self, *args, **kwargs)
        if not self.is_acceptor:
            taken.append(result)
        return result

    monkeypatch.setattr(Association, "_send_now", watch)
    ds = make_dataset()
    path = write_part10(tmp_path / "one.dcm", ds, ExplicitVRLittleEndian)
    rec = RecordingHandlers()
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with (
            running_server(scp, rec.handlers) as server,
            scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc,
        ):
            assert (await assoc.send_c_store(path)).Status == 0
            with open(path, "rb") as f:
                assert (await assoc.send_c_store(f)).Status == 0
            assert (await assoc.send_c_store(ds)).Status == 0
    assert len(rec.stored) == 3
    assert taken == ([True] * 3 if anyio_backend == "asyncio" else [False] * 3)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_stores_over_asyncio_never_look_the_loop_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On asyncio the association keeps its loop and clock: neither side's hot
    path calls asyncio.get_running_loop() (before Python 3.12 each call is a
    getpid() system call). Counted from aiodicom's own code, both sides."""
    import asyncio

    real = asyncio.get_running_loop
    calls: list[str] = []

    def counting() -> asyncio.AbstractEventLoop:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("aiodicom"):
            calls.append(f"{caller}:{sys._getframe(1).f_code.co_name}")
        return real()

    ds = make_dataset()
    path = write_part10(tmp_path / "one.dcm", ds, ExplicitVRLittleEndian)
    scu, scp = storage_pair()
    with anyio.fail_after(GUARD):
        async with (
            running_server(scp, [(evt.EVT_C_STORE, lambda event: 0)]) as server,
            scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc,
        ):
            assert (await assoc.send_c_store(path)).Status == 0  # warm up
            monkeypatch.setattr(asyncio, "get_running_loop", counting)
            for _ in range(20):
                assert (await assoc.send_c_store(path)).Status == 0
            monkeypatch.undo()
    assert calls == []


def test_message_ids_go_round_skipping_those_in_use_and_zero() -> None:
    from types import SimpleNamespace

    from aiodicom.errors import LocalProtocolError

    def allocate(state: SimpleNamespace) -> int:
        return Association._allocate_id(state, None)  # type: ignore[arg-type]

    state = SimpleNamespace(_next_id=0, _pending={})
    assert [allocate(state) for _ in range(3)] == [1, 2, 3]
    state = SimpleNamespace(_next_id=0xFFFE, _pending={0xFFFF: None, 1: None})
    assert allocate(state) == 2  # past 0xFFFF (in use), 0 (never) and 1 (in use)
    # Every other ID in use: the last one given comes round again once free.
    state = SimpleNamespace(_next_id=7, _pending={i: None for i in range(1, 0x10000) if i != 7})
    assert allocate(state) == 7
    state._pending[7] = None
    with pytest.raises(LocalProtocolError, match="every message ID is in use"):
        allocate(state)


@pytest.mark.parametrize(
    ("service", "kept"),
    [("store", {"ErrorComment", "OffendingElement"}), ("echo", {"ErrorComment"})],
)
async def test_dimse_c_responses_carry_only_their_own_status_fields(
    service: str, kept: set[str]
) -> None:
    """A handler's status Dataset may hold Error ID, Error Comment and
    Offending Element: the C-STORE-RSP and C-ECHO-RSP carry only the fields
    PS3.7 Tables 9.3-2 and 9.3-13 give them (Error ID is the DIMSE-N
    services'), and each response passes the strict field check."""
    from aiodicom.dimse_messages import check_command

    answer = _status_with(
        Status=0xC001, ErrorID=7, ErrorComment="nope", OffendingElement=[0x00100010]
    )
    sent: list[Dataset] = []
    scu, scp = storage_pair()
    scp.add_supported_context(sop_class.Verification)
    scu.add_requested_context(sop_class.Verification)
    handlers = [
        (evt.EVT_C_STORE, lambda event: answer),
        (evt.EVT_C_ECHO, lambda event: answer),
        (evt.EVT_DIMSE_SENT, lambda event: sent.append(event.message.command)),
    ]
    with anyio.fail_after(GUARD):
        async with memory_pair(scu, scp, scp_handlers=handlers) as assoc:
            if service == "store":
                rsp = await assoc.send_c_store(make_dataset())
            else:
                rsp = await assoc.send_c_echo()
    assert rsp.Status == 0xC001
    extra = {"ErrorID", "ErrorComment", "OffendingElement"}
    assert {e.keyword for e in rsp if e.keyword in extra} == kept
    (command,) = sent
    check_command(command, strict=True)


async def _store_over_raw(rq: AAssociateRQ, command: bytes, rec: RecordingHandlers) -> int:
    """Associate with ``rq`` over a real socket, send one C-STORE-RQ of a CT
    data set on context 1; the response's status."""
    scp = make_scp_ae()
    scp.add_supported_context(
        sop_class.CTImageStorage, ExplicitVRLittleEndian, scu_role=True, scp_role=True
    )
    data = encode_dataset(make_dataset(), ExplicitVRLittleEndian)
    async with running_server(scp, rec.handlers) as server, raw_connection(server.port) as peer:
        await peer.send(rq)
        ac = await peer.read_pdu()
        assert isinstance(ac, AAssociateAC) and ac.presentation_contexts[0].result == 0, ac
        await send_request(peer, command, data)
        rsp = await peer.read_pdu()
        assert isinstance(rsp, PDataTF)
        response = decode_command(rsp.pdvs[0].data)
        await peer.send(AReleaseRQ())
        await peer.read_pdu()
    return int(response["Status"])


async def test_request_on_a_context_without_our_scp_role_is_refused_0122() -> None:
    """The requestor took the SCP role only for CT (role selection): a
    C-STORE-RQ it sends there is answered 0x0122 (SOP Class not supported,
    PS3.7 C.5.20), as pynetdicom answers, and the handler never runs."""
    rq = store_rq_association()
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = sop_class.CTImageStorage
    role.scu_role, role.scp_role = False, True
    rq = replace(rq, user_information=(*rq.user_information, role))
    rec = RecordingHandlers()
    assert await _store_over_raw(rq, store_rq_command(uid="1.2.3.4"), rec) == 0x0122
    assert rec.stored == []
    # the same request without the role item is stored
    rec = RecordingHandlers()
    assert await _store_over_raw(store_rq_association(), store_rq_command(uid="1.2.3.4"), rec) == 0
    assert len(rec.stored) == 1


async def test_request_for_another_sop_class_than_its_context_is_refused_0122() -> None:
    """An MR C-STORE-RQ on the CT context (PS3.4 Q.2.1.1.1: the abstract
    syntax names the SOP class) is answered 0x0122; the handler never runs."""
    mr = encode_command(
        {
            "CommandField": CommandField.C_STORE_RQ,
            "MessageID": 1,
            "AffectedSOPClassUID": sop_class.MRImageStorage,
            "Priority": 0,
            "CommandDataSetType": DATASET_PRESENT,
            "AffectedSOPInstanceUID": "1.2.3.4",
        }
    )
    rec = RecordingHandlers()
    assert await _store_over_raw(store_rq_association(), mr, rec) == 0x0122
    assert rec.stored == []
