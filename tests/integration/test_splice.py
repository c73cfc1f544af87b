"""The rest of a spooled data set spliced from the socket into its spool file
(asyncio, Linux): byte for byte what the usual path writes, handed back to
the reader for any PDU the splice does not take (and the protocol rules
still hold), and every way it can end early (the peer aborting, closing,
stalling; a violation; a shutdown) leaves no spool file and no descriptor
behind, with the server serving on. On trio the usual path runs, and the
same tests check it gives the same."""

from __future__ import annotations

import errno
import functools
import os
import resource
import signal
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from aiodicom import association, evt, sop_class
from aiodicom._splice import Outcome, SpliceJob
from aiodicom.dimse import decode_command
from aiodicom.pdu import PDV, AAbort, PDataTF, encode_p_data
from aiodicom.testing import make_dataset

from .conftest import (
    GUARD,
    RawPeer,
    Splices,
    echo_once,
    make_scp_ae,
    running_server,
    write_part10,
)
from .test_store import (
    file_dataset_bytes,
    send_request,
    storage_pair,
    store_peer,
    store_rq_association,
    store_rq_command,
)


@pytest.fixture(params=["asyncio", "uvloop", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """asyncio and trio, as every integration test, and uvloop's loop too:
    its transport pauses reading and gives its socket otherwise."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (the test extra has it)")
        return ("asyncio", {"use_uvloop": True})
    return request.param


CHUNK = 16378  # a 16 KiB PDU's fragment
THRESHOLD = 10_000


def fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def fd_names(numbers: set[int]) -> dict[int, str]:
    out = {}
    for n in numbers:
        try:
            out[n] = os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            pass
    return out


def pixel_source(tmp_path: Path, size: int) -> Path:
    ds = make_dataset()
    ds.PixelData = bytes((i * 13 + 5) % 256 for i in range(size))
    ds["PixelData"].VR = "OB"
    return write_part10(tmp_path / "big.dcm", ds, ExplicitVRLittleEndian)


def ct_scp(spool_directory: Path) -> Any:
    """A CT Image Storage SCP (Explicit VR LE) spooling past THRESHOLD into ``spool_directory``."""
    scp = make_scp_ae(spool_threshold=THRESHOLD)
    scp.add_supported_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
    scp.spool_directory = str(spool_directory)
    return scp


async def store_times(scu: Any, scp: Any, source: Path, times: int, handler: Any) -> list[int]:
    """Send ``source`` ``times`` times on one association over TCP to ``scp``
    serving ``handler``; the statuses."""
    statuses = []
    with anyio.fail_after(GUARD):
        async with (
            running_server(scp, [(evt.EVT_C_STORE, handler)]) as server,
            scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc,
        ):
            for _ in range(times):
                statuses.append(int((await assoc.send_c_store(source)).Status))
    return statuses


@pytest.mark.parametrize("enabled", [True, False], ids=["splice", "AIODICOM_SPLICE=0"])
@pytest.mark.parametrize("max_pdu", [4096, 65536])
async def test_a_spooled_data_set_is_spliced_byte_for_byte(
    anyio_backend: Any,
    splices: Splices,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    enabled: bool,
    max_pdu: int,
) -> None:
    """Three instances on one association (the second spool written over the
    file the first left, see Spares): the handler's file is the instance,
    byte for byte, whichever path received it."""
    if not enabled:
        monkeypatch.setattr(association, "_SPLICE_AVAILABLE", False)
    source = pixel_source(tmp_path, 700_001)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    got: list[tuple[bytes, Any]] = []

    def on_store(event: evt.Event) -> int:
        assert event.dataset_path is not None
        got.append((event.encoded_dataset(), dcmread(event.dataset_path)))
        return 0

    scu, scp = storage_pair(spool_threshold=THRESHOLD, maximum_pdu_size=max_pdu)
    scp.spool_directory = str(spool_dir)
    assert await store_times(scu, scp, source, 3, on_store) == [0] * 3
    assert len(got) == 3
    for encoded, part10 in got:
        assert encoded == file_dataset_bytes(source)
        assert part10 == dcmread(source)
    if enabled and splices.expected(anyio_backend):
        assert [job.outcome for job in splices.jobs] == [Outcome.LAST] * 3
        # all of each data set after the threshold (less a PDU or two) came that way
        assert all(700_000 - 2 * max_pdu - THRESHOLD <= j.received < 700_000 for j in splices.jobs)
    else:
        assert splices.jobs == []
    assert list(spool_dir.iterdir()) == []


async def _start_data_set(peer: Any, splices: Splices, backend: str, msg_id: int = 1) -> None:
    """Send a C-STORE-RQ and data set fragments past the threshold, none the
    last; on asyncio, until the splice has begun."""
    await send_request(peer, store_rq_command(msg_id), None)
    splices.started = anyio.Event()
    for _ in range(3):
        await peer.send(encode_p_data(1, 0x00, bytes(CHUNK)))
    if splices.expected(backend):
        await splices.started.wait()


@pytest.mark.parametrize("how", ["two PDVs", "a small last PDU"])
async def test_a_pdu_of_another_shape_is_read_the_usual_way(
    anyio_backend: Any, splices: Splices, tmp_path: Path, how: str
) -> None:
    """A sender that puts two fragments in one PDU: the splice hands the
    connection back at it, and the data set is complete and exact."""
    scp = ct_scp(tmp_path)
    got: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        got.append(event.encoded_dataset())
        return 0

    part = bytes(range(256)) * 40
    with anyio.fail_after(GUARD):
        async with store_peer(scp, [(evt.EVT_C_STORE, on_store)]) as peer:
            await _start_data_set(peer, splices, anyio_backend)
            await peer.send(encode_p_data(1, 0x00, part))  # spliced
            if how == "two PDVs":
                await peer.send(
                    PDataTF(
                        pdvs=(
                            PDV(context_id=1, is_command=False, is_last=False, data=part),
                            PDV(context_id=1, is_command=False, is_last=True, data=b"end!"),
                        )
                    )
                )
            else:
                await peer.send(encode_p_data(1, 0x02, b"end!"))
            rsp = await peer.read_pdu()
            assert isinstance(rsp, PDataTF)
            assert decode_command(rsp.pdvs[0].data)["Status"] == 0
    tail = part * 2 + b"end!" if how == "two PDVs" else part + b"end!"
    assert got == [bytes(3 * CHUNK) + tail]
    if splices.expected(anyio_backend):
        expected = Outcome.HANDED_BACK if how == "two PDVs" else Outcome.LAST
        assert [job.outcome for job in splices.jobs] == [expected]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "how", ["A-ABORT", "close mid-PDU", "another context", "command fragment", "stall"]
)
async def test_a_transfer_cut_off_while_spliced_leaves_nothing_behind(
    anyio_backend: Any, splices: Splices, tmp_path: Path, how: str
) -> None:
    """However the spliced data set ends early, the handler never runs, the
    spool file is gone, the SCP's thread and descriptors are released, and
    the server goes on serving. A fragment on another context or a command
    fragment inside a data set is the usual violation: the SCP aborts
    (source 2, reason 5 or 6); a stall past network_timeout aborts too."""
    scp = ct_scp(tmp_path)
    scp.network_timeout = 0.5 if how == "stall" else 30
    ended = anyio.Event()
    stored: list[Any] = []
    handlers = [
        (evt.EVT_C_STORE, lambda event: stored.append(event) or 0),
        (evt.EVT_CONN_CLOSE, lambda event: ended.set()),
    ]
    with anyio.fail_after(GUARD):
        async with store_peer(scp, handlers) as peer:
            # (taken with the server up: under uvloop, libuv keeps a
            # descriptor of its own from the loop's first stream on)
            before = fds()
            port = peer_port(peer)
            await _start_data_set(peer, splices, anyio_backend)
            if how == "A-ABORT":
                await peer.send(AAbort(source=0, reason=0))
            elif how == "close mid-PDU":
                await peer.send(encode_p_data(1, 0x00, bytes(CHUNK))[:5000])
                await peer.aclose()
            elif how == "another context":
                await peer.send(encode_p_data(3, 0x00, bytes(100)))
            elif how == "command fragment":
                await peer.send(encode_p_data(1, 0x01, bytes(100)))
            else:
                await peer.send(encode_p_data(1, 0x00, bytes(CHUNK))[:5000])
            if how in ("another context", "command fragment", "stall"):
                abort = await peer.read_pdu()
                assert isinstance(abort, AAbort)
                assert abort.source == (0 if how == "stall" else 2)
                await peer.aclose()
            await ended.wait()
            assert stored == []
            assert list(tmp_path.iterdir()) == []
            # the server serves on
            assert await echo_once(port) == 0
    if splices.expected(anyio_backend):
        assert len(splices.jobs) == 1
        expected = {
            "A-ABORT": Outcome.HANDED_BACK,
            "close mid-PDU": Outcome.CLOSED,
            "another context": Outcome.HANDED_BACK,
            "command fragment": Outcome.HANDED_BACK,
            "stall": Outcome.TIMED_OUT,
        }[how]
        assert splices.jobs[0].outcome is expected
    assert fds() <= before, fd_names(fds() - before)


def peer_port(peer: Any) -> int:
    return int(peer.stream.extra(anyio.abc.SocketAttribute.remote_port))


@pytest.mark.parametrize("how", ["shutdown", "cancel"])
async def test_a_server_closed_while_a_data_set_is_spliced_stops_the_splice(
    anyio_backend: Any, splices: Splices, tmp_path: Path, how: str
) -> None:
    """The peer stalls mid data set (no network timeout), and the server is
    shut down (its associations aborted) or its task group cancelled: the
    association ends at once with an A-ABORT, the thread lets go, and no
    spool file or descriptor is left."""
    scp = ct_scp(tmp_path)
    scp.network_timeout = None
    with anyio.fail_after(GUARD):
        with anyio.CancelScope() as scope:
            async with running_server(scp, []) as server:
                before = fds()  # (with the server up: see above)
                stream = await anyio.connect_tcp("127.0.0.1", server.port)
                peer = RawPeer(stream)
                await peer.send(store_rq_association())
                await peer.read_pdu()
                await _start_data_set(peer, splices, anyio_backend)
                await peer.send(encode_p_data(1, 0x00, bytes(CHUNK))[:5000])
                if how == "cancel":
                    scope.cancel()
                    await anyio.sleep_forever()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(functools.partial(server.shutdown, grace=0))
                    assert await peer.read_pdu() == AAbort(source=0, reason=0)
                    await peer.aclose()
        assert scope.cancelled_caught == (how == "cancel")
        if how == "cancel":
            assert await peer.read_until_eof() == [AAbort(source=0, reason=0)]
            await peer.aclose()
        while fds() - before:  # (the worker thread closes its copies as it returns)
            await anyio.sleep(0.01)
    if splices.expected(anyio_backend):
        assert [job.outcome for job in splices.jobs] == [Outcome.STOPPED]
    assert list(tmp_path.iterdir()) == []


async def test_past_the_thread_limit_data_sets_are_read_the_usual_way(
    anyio_backend: Any, splices: Splices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One splice thread allowed: while a first peer's data set holds it (the
    peer pauses mid data set), a second association's data set is read by its
    reader and stored; then the first completes through its thread."""
    monkeypatch.setattr(association, "_SPLICE_THREADS", 1)
    scp = ct_scp(tmp_path)
    got: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        got.append(event.encoded_dataset())
        return 0

    handlers = [(evt.EVT_C_STORE, on_store)]
    with anyio.fail_after(GUARD):
        async with running_server(scp, handlers) as server:
            peers = []
            for _ in range(2):
                stream = await anyio.connect_tcp("127.0.0.1", server.port)
                peers.append(RawPeer(stream))
                await peers[-1].send(store_rq_association())
                await peers[-1].read_pdu()
            first, second = peers
            await _start_data_set(first, splices, anyio_backend)
            await send_request(second, store_rq_command(), None)
            for i in range(4):
                await second.send(encode_p_data(1, 0x02 if i == 3 else 0x00, b"2" * CHUNK))
            assert isinstance(await second.read_pdu(), PDataTF)  # its C-STORE-RSP
            assert got == [b"2" * CHUNK * 4]
            await first.send(encode_p_data(1, 0x02, b"1" * CHUNK))
            assert isinstance(await first.read_pdu(), PDataTF)
            assert got[1] == bytes(3 * CHUNK) + b"1" * CHUNK
            for peer in peers:
                await peer.aclose()
    if splices.expected(anyio_backend):
        assert [job.outcome for job in splices.jobs] == [Outcome.LAST]
        # the first's fragments after the one that crossed the threshold
        assert splices.jobs[0].received == 3 * CHUNK


async def test_a_write_error_while_spliced_answers_out_of_resources(
    anyio_backend: Any, splices: Splices, tmp_path: Path
) -> None:
    """The spool file cannot grow past 200 KB (RLIMIT_FSIZE: writes past it
    fail with EFBIG, as on a full disk): the rest of the data set is received
    and dropped, the C-STORE is answered 0xA700 without the handler, no file
    is left and the association goes on."""
    source = pixel_source(tmp_path, 700_001)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    stored: list[Any] = []
    scu, scp = storage_pair(spool_threshold=THRESHOLD, maximum_pdu_size=16384)
    scp.spool_directory = str(spool_dir)
    handlers = [(evt.EVT_C_STORE, lambda event: stored.append(event) or 0)]
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with anyio.fail_after(GUARD):
            async with (
                running_server(scp, handlers) as server,
                scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc,
            ):
                resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, old_limit[1]))
                try:
                    assert (await assoc.send_c_store(source)).Status == 0xA700
                finally:
                    resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
                assert stored == []
                assert (await assoc.send_c_store(source)).Status == 0
    finally:
        signal.signal(signal.SIGXFSZ, old_signal)
    assert len(stored) == 1
    if splices.expected(anyio_backend):
        job = splices.jobs[0]
        assert job.outcome is Outcome.LAST
        assert job.file_error is not None and job.file_error.errno == errno.EFBIG
        assert [j.file_error for j in splices.jobs[1:]] == [None]
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize("then", ["answered", "handed back"])
async def test_the_network_timeout_is_armed_again_after_a_splice(
    anyio_backend: Any, splices: Splices, tmp_path: Path, then: str
) -> None:
    """While a thread splices, the network timeout is its own; once it has
    given the connection back, the association's timer watches again: a peer
    that goes silent after its spliced data set is answered, or in the
    middle of its data set once the thread handed back a PDU of two PDVs
    (nothing written then to arm the timer), is aborted; one that sends
    slowly but within the timeout is not."""
    scp = ct_scp(tmp_path)
    scp.network_timeout = 0.5
    pdv = PDV(context_id=1, is_command=False, is_last=False, data=bytes(100))
    with anyio.fail_after(GUARD):
        async with store_peer(scp, [(evt.EVT_C_STORE, lambda event: 0)]) as peer:
            await _start_data_set(peer, splices, anyio_backend)
            # A slow sender: the splice outlasts the timeout (which it keeps
            # from firing, each fragment coming within it).
            for _ in range(4):
                await anyio.sleep(0.2)
                await peer.send(encode_p_data(1, 0x00, bytes(CHUNK)))
            if then == "answered":
                await peer.send(encode_p_data(1, 0x02, bytes(CHUNK)))
                assert isinstance(await peer.read_pdu(), PDataTF)  # the C-STORE-RSP
            else:
                await peer.send(PDataTF(pdvs=(pdv, pdv)))
            # silence from here on
            assert isinstance(await peer.read_pdu(), AAbort)
    if splices.expected(anyio_backend):
        expected = Outcome.LAST if then == "answered" else Outcome.HANDED_BACK
        assert [job.outcome for job in splices.jobs] == [expected]
    assert list(tmp_path.iterdir()) == []


async def test_no_descriptor_for_a_splice_reads_the_usual_way(
    anyio_backend: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job cannot be made (EMFILE duplicating a descriptor): the data
    set is read by the reader, the fragments held for the spool file kept,
    byte for byte; the association splices no more."""
    made: list[int] = []

    def no_descriptors(*args: Any, **kwargs: Any) -> SpliceJob:
        made.append(1)
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(association, "SpliceJob", no_descriptors)
    source = pixel_source(tmp_path, 300_001)
    got: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        got.append(event.encoded_dataset())
        return 0

    scu, scp = storage_pair(spool_threshold=THRESHOLD, maximum_pdu_size=4096)
    scp.spool_directory = str(tmp_path)
    assert await store_times(scu, scp, source, 2, on_store) == [0] * 2
    assert got == [file_dataset_bytes(source)] * 2
    assert made == ([1] if Splices.expected(anyio_backend) else [])
