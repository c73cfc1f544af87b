"""Cancelling a request: before it goes out, while it goes out, after it went out.

A message cut off part way (a C-STORE whose data set was being written when
the caller's deadline expired) cannot be completed or withdrawn: the
association is aborted and later calls raise. A request cancelled while it
waits for its turn or for its response leaves the association usable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from aiodicom import AE, evt, sop_class
from aiodicom.errors import AssociationAborted
from aiodicom.testing import make_dataset

from .conftest import (
    GUARD,
    RawPeer,
    fake_scp,
    make_scp_ae,
    running_server,
    verification_ac,
    write_part10,
)

pytestmark = pytest.mark.anyio

P_DATA_TF, A_ABORT = 0x04, 0x07

#: Large enough that a peer reading 256 KiB every 10 ms takes seconds over it.
BIG = 48 << 20


def big_dataset() -> Any:
    ds = make_dataset(Rows=2048, Columns=BIG // 4096)
    ds.PixelData = bytes(BIG)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # what the fake SCP accepts
    return ds


def storage_scu() -> AE:
    ae = AE("TEST_SCU")
    ae.add_requested_context(sop_class.CTImageStorage, [ImplicitVRLittleEndian])
    ae.add_requested_context(sop_class.Verification)
    return ae


async def slow_reader(peer: RawPeer, received: list[Any]) -> None:
    """Accept the association, then read 256 KiB every 10 ms until the connection ends."""
    rq = await peer.read_pdu()
    await peer.send(verification_ac(rq))
    with anyio.fail_after(GUARD):
        while True:
            try:
                chunk = await peer.stream.receive(256 << 10)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                break
            peer.buffer += chunk
            await anyio.sleep(0.01)
    # What arrived, PDU by PDU (a P-DATA-TF cut by the close is left out).
    data = bytes(peer.buffer)
    while len(data) >= 6:
        length = int.from_bytes(data[2:6], "big")
        if len(data) < 6 + length:
            break
        received.append(data[0])
        data = data[6 + length :]


@pytest.mark.parametrize("source", ["path", "dataset"])
async def test_store_cancelled_mid_message_aborts(
    source: str, tmp_path: Path, anyio_backend: str
) -> None:
    """The deadline expires while the data set is being written: the
    association is aborted and the connection closed at once, and the next
    call raises AssociationAborted instead of sending a command the peer
    would read as more of the cut-off data set. On asyncio A-ABORT follows
    the PDUs already queued; on trio a cancelled write may have cut a PDU,
    so the connection closes without it."""
    ds = big_dataset()
    item: Any = ds
    if source == "path":
        item = write_part10(tmp_path / "big.dcm", ds, ImplicitVRLittleEndian)
    received: list[int] = []
    async with fake_scp(lambda peer: slow_reader(peer, received)) as port:
        with anyio.fail_after(GUARD):
            async with storage_scu().associate("127.0.0.1", port) as assoc:
                with anyio.move_on_after(0.3) as scope:
                    await assoc.send_c_store(item)
                assert scope.cancelled_caught
                # (A-ABORT waits _ABORT_GRACE at most for the stalled transport.)
                assert assoc.is_aborted and not assoc.is_established
                with pytest.raises(AssociationAborted, match="cut off"):
                    await assoc.send_c_echo()
    assert received[0] == P_DATA_TF
    if anyio_backend == "asyncio":
        assert received[-1] == A_ABORT
        assert set(received[:-1]) == {P_DATA_TF}
    else:
        assert set(received) == {P_DATA_TF}


async def test_cancel_while_waiting_for_the_response_keeps_the_association() -> None:
    """The request went out whole: cancelling the wait for its response leaves
    the association usable (the late response is dropped)."""

    async def slow_echo(event: evt.Event) -> int:
        await anyio.sleep(0.3)
        return 0

    async with running_server(handlers=[(evt.EVT_C_ECHO, slow_echo)]) as server:
        with anyio.fail_after(GUARD):
            async with storage_scu().associate("127.0.0.1", server.port) as assoc:
                with anyio.move_on_after(0.05) as scope:
                    await assoc.send_c_echo()
                assert scope.cancelled_caught
                assert assoc.is_established
                assert (await assoc.send_c_echo()).Status == 0
            assert assoc.is_released


async def test_cancel_while_waiting_for_the_window_keeps_the_association() -> None:
    """With the window full (1 invoked operation), a second request waits its
    turn; cancelling it there sends nothing and aborts nothing."""
    release, entered = anyio.Event(), anyio.Event()
    calls: list[int] = []

    async def held_echo(event: evt.Event) -> int:
        calls.append(event.request.MessageID)
        entered.set()
        await release.wait()
        return 0

    scp = make_scp_ae()
    async with running_server(scp, handlers=[(evt.EVT_C_ECHO, held_echo)]) as server:
        with anyio.fail_after(GUARD):
            async with storage_scu().associate("127.0.0.1", server.port) as assoc:
                async with anyio.create_task_group() as tg:
                    first: list[int] = []

                    async def echo() -> None:
                        first.append((await assoc.send_c_echo()).Status)

                    tg.start_soon(echo)
                    await entered.wait()  # the first request holds the window
                    with anyio.move_on_after(0.05) as scope:
                        await assoc.send_c_echo(msg_id=2)
                    assert scope.cancelled_caught and assoc.is_established
                    release.set()
                assert first == [0]
                assert (await assoc.send_c_echo(msg_id=3)).Status == 0
            # the cancelled request never went out: the SCP saw the other two
            assert len(calls) == 2 and 2 not in calls


@pytest.mark.parametrize("source", ["path", "path-by-sendfile", "dataset"])
async def test_cancel_lands_within_a_block_of_writes(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes that never wait (a transport that always has room) still yield
    every 4 MiB: a cancel requested while a 6 MiB data set goes out lands
    before its end and cuts it off. The SCU's writes go to a sink that never
    awaits, so the only checkpoints are the send path's own. A path is read
    in a worker thread, or (on asyncio, the file in the page cache) its
    PDUs go out by sendfile(2)."""
    import aiodicom.association as association_module

    ds = make_dataset(Rows=1024, Columns=3072)
    ds.PixelData = bytes(1024 * 3072 * 2)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    item: Any = ds
    if source.startswith("path"):
        item = write_part10(tmp_path / "six.dcm", ds, ImplicitVRLittleEndian)
    if source == "path":
        monkeypatch.setattr(association_module, "page_cached", lambda fd, off, n: False)
    elif source == "path-by-sendfile":  # (16 KB PDUs go by sendfile only if told)
        monkeypatch.setattr(association_module, "_SENDFILE_MIN_CHUNK", 0)
    scope = anyio.CancelScope()
    written = 0

    async def sink(data: bytes | memoryview, pdu: Any = None) -> None:
        nonlocal written
        written += len(data)
        if written > 5 * 16384:
            scope.cancel()  # no checkpoint here

    by_sendfile: list[int] = []

    async def file_sink(fd: int, segments: list[tuple[bytes, int, int, bytes]]) -> None:
        by_sendfile.append(len(segments))
        for prefix, _, length, suffix in segments:
            await sink(bytes(len(prefix) + length + len(suffix)))

    scp = make_scp_ae(maximum_pdu_size=16384)
    scp.add_supported_context(sop_class.CTImageStorage, [ImplicitVRLittleEndian])
    async with running_server(scp) as server:
        with anyio.fail_after(GUARD):
            async with storage_scu().associate("127.0.0.1", server.port) as assoc:
                monkeypatch.setattr(assoc, "_write", sink)
                monkeypatch.setattr(assoc, "_write_file", file_sink)
                with scope:
                    await assoc.send_c_store(item)
                assert scope.cancelled_caught
                assert assoc.is_aborted
    # The data set is 6 MiB; the cancel lands within 4 MiB of writes.
    assert written < 5 << 20
    from aiodicom._transport import _on_asyncio

    assert bool(by_sendfile) == (source == "path-by-sendfile" and _on_asyncio())
