"""Shared helpers for the integration tests: AEs, servers, raw PDUs and raw peers.

Every test here runs on both anyio backends (asyncio and trio). Waits are on
events, handlers and sockets; ``anyio.fail_after`` is only ever a hang guard.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from pydicom.dataset import Dataset

from aiodicom import AE, Server, _nowait, evt, sop_class
from aiodicom.dimse import NO_DATASET, CommandField, decode_command, encode_command, fragment
from aiodicom.dsutils import encode_dataset, file_meta_for, part10_header
from aiodicom.pdu import (
    PDU,
    AAssociateAC,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    decode_pdu,
    encode,
)
from aiodicom.pdu_primitives import (
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)

#: Hang guard for any single wait in these tests (never reached when all is well).
GUARD = 10.0

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
VERIFICATION = sop_class.Verification
RAW_IMPL_UID = "1.2.826.0.1.3680043.9.9999.1"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---------------------------------------------------------------------------
# AEs and servers


def make_scp_ae(title: str = "TEST_SCP", **attrs: Any) -> AE:
    """A Verification SCP AE with short ACSE timeout (attrs override)."""
    ae = AE(title)
    ae.add_supported_context(VERIFICATION)
    ae.acse_timeout = 2.0
    for key, value in attrs.items():
        setattr(ae, key, value)
    return ae


def make_scu_ae(title: str = "TEST_SCU", **attrs: Any) -> AE:
    """A Verification SCU AE (attrs override)."""
    ae = AE(title)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = 5.0
    ae.dimse_timeout = 5.0
    for key, value in attrs.items():
        setattr(ae, key, value)
    return ae


@asynccontextmanager
async def running_server(
    ae: AE | None = None,
    handlers: Sequence[evt.EventHandlerType] | None = None,
    **kwargs: Any,
) -> AsyncIterator[Server]:
    """``ae.start_server`` on a free loopback port."""
    ae = ae or make_scp_ae()
    async with ae.start_server(("127.0.0.1", 0), evt_handlers=handlers, **kwargs) as server:
        yield server


async def echo_once(port: int, ae: AE | None = None, **kwargs: Any) -> int:
    """Open an association, C-ECHO once, release; return the status."""
    ae = ae or make_scu_ae()
    with anyio.fail_after(GUARD):
        async with ae.associate("127.0.0.1", port, **kwargs) as assoc:
            status = await assoc.send_c_echo()
    return int(status.Status)


class Recorder:
    """Records notification events (by name) and sets an anyio.Event per type."""

    NOTES = (
        evt.EVT_CONN_OPEN,
        evt.EVT_CONN_CLOSE,
        evt.EVT_REQUESTED,
        evt.EVT_ACCEPTED,
        evt.EVT_REJECTED,
        evt.EVT_ESTABLISHED,
        evt.EVT_RELEASED,
        evt.EVT_ABORTED,
    )

    def __init__(self) -> None:
        self.names: list[str] = []
        self.events: list[evt.Event] = []
        self._changed: anyio.Event | None = None

    def _record(self, event: evt.Event) -> None:
        self.names.append(event.event.name)
        self.events.append(event)
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        return [(e, self._record) for e in self.NOTES]

    async def wait_for(self, name: str, n: int = 1, timeout: float = GUARD) -> None:
        """Wait until ``name`` was recorded ``n`` times."""
        with anyio.fail_after(timeout):
            while self.count(name) < n:
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()

    def count(self, name: str) -> int:
        return self.names.count(name)


# ---------------------------------------------------------------------------
# Raw PDUs


def verification_rq(
    called: str = "TEST_SCP",
    calling: str = "RAW_SCU",
    *,
    protocol_version: int = 1,
    max_pdu: int = 16384,
    context_id: int = 1,
) -> AAssociateRQ:
    """An A-ASSOCIATE-RQ proposing Verification on ``context_id``."""
    return AAssociateRQ(
        protocol_version=protocol_version,
        called_ae_title=called,
        calling_ae_title=calling,
        presentation_contexts=(
            PresentationContextRQ(
                context_id=context_id,
                abstract_syntax=VERIFICATION,
                transfer_syntaxes=(EXPLICIT_LE, IMPLICIT_LE),
            ),
        ),
        user_information=(
            MaximumLengthNotification(maximum_length_received=max_pdu),
            ImplementationClassUIDNotification(implementation_class_uid=RAW_IMPL_UID),
        ),
    )


def rq_with_contexts(
    *contexts: tuple[int, str, str],
    called: str = "TEST_SCP",
    calling: str = "RAW_SCU",
    extra: Sequence[Any] = (),
    max_pdu: int = 16384,
) -> AAssociateRQ:
    """:func:`verification_rq`'s request with these ``(context ID, abstract
    syntax, transfer syntax)`` contexts instead, and ``extra`` user items."""
    rq = verification_rq(called, calling, max_pdu=max_pdu)
    return AAssociateRQ(
        protocol_version=1,
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        presentation_contexts=tuple(
            PresentationContextRQ(context_id=cid, abstract_syntax=sop, transfer_syntaxes=(ts,))
            for cid, sop, ts in contexts
        ),
        user_information=(*rq.user_information, *extra),
    )


def c_echo_rsp_pdus(request: PDataTF, status: int | None = 0x0000) -> list[bytes]:
    """A fake SCP's C-ECHO-RSP to the C-ECHO-RQ in ``request`` (one PDU);
    ``status`` None: without a Status, as a broken peer might answer."""
    command = decode_command(request.pdvs[0].data)
    fields = {
        "CommandField": CommandField.C_ECHO_RSP,
        "MessageIDBeingRespondedTo": command["MessageID"],
        "AffectedSOPClassUID": command["AffectedSOPClassUID"],
        "CommandDataSetType": NO_DATASET,
    }
    if status is not None:
        fields["Status"] = status
    return list(fragment(request.pdvs[0].context_id, encode_command(fields), None, 16384))


def verification_ac(rq: AAssociateRQ, max_pdu: int = 16384) -> AAssociateAC:
    """An A-ASSOCIATE-AC accepting every context of ``rq`` with Implicit VR LE,
    and granting every SCP/SCU role ``rq`` proposes."""
    roles = tuple(i for i in rq.user_information if isinstance(i, SCP_SCU_RoleSelectionNegotiation))
    return AAssociateAC(
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        presentation_contexts=tuple(
            PresentationContextAC(context_id=cx.context_id, result=0, transfer_syntax=IMPLICIT_LE)
            for cx in rq.presentation_contexts
        ),
        user_information=(
            MaximumLengthNotification(maximum_length_received=max_pdu),
            ImplementationClassUIDNotification(implementation_class_uid=RAW_IMPL_UID),
            *roles,
        ),
    )


def c_echo_rq_command(msg_id: int = 1) -> bytes:
    """The encoded command set of a C-ECHO-RQ."""
    return encode_command(
        {
            "CommandField": CommandField.C_ECHO_RQ,
            "MessageID": msg_id,
            "AffectedSOPClassUID": VERIFICATION,
            "CommandDataSetType": NO_DATASET,
        }
    )


def c_echo_rq_pdus(context_id: int = 1, msg_id: int = 1, max_pdu: int = 16384) -> list[bytes]:
    """A C-ECHO-RQ as encoded P-DATA-TF PDUs."""
    return list(fragment(context_id, c_echo_rq_command(msg_id), None, max_pdu))


# ---------------------------------------------------------------------------
# Raw streams


class RawPeer:
    """A raw byte stream with whole-PDU reads (bounded waits)."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False

    async def send(self, data: bytes | PDU) -> None:
        await self.stream.send(data if isinstance(data, bytes | bytearray) else encode(data))

    async def _fill(self, n: int) -> bool:
        while len(self.buffer) < n:
            try:
                chunk = await self.stream.receive()
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                self.eof = True
                return False
            self.buffer += chunk
        return True

    async def read_raw(self, timeout: float = GUARD) -> bytes | None:
        """One whole PDU as bytes, or None at EOF."""
        with anyio.fail_after(timeout):
            if not await self._fill(6):
                return None
            length = int.from_bytes(self.buffer[2:6], "big")
            if not await self._fill(6 + length):
                return None
            data = bytes(self.buffer[: 6 + length])
            del self.buffer[: 6 + length]
            return data

    async def read_pdu(self, timeout: float = GUARD) -> PDU | None:
        """One whole decoded PDU, or None at EOF."""
        raw = await self.read_raw(timeout)
        return None if raw is None else decode_pdu(raw)

    async def read_until_eof(self, timeout: float = GUARD) -> list[PDU]:
        """Every PDU until the peer closes (the EOF must come within ``timeout``)."""
        out: list[PDU] = []
        with anyio.fail_after(timeout):
            while True:
                pdu = await self.read_pdu(timeout)
                if pdu is None:
                    return out
                out.append(pdu)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()


@asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[RawPeer]:
    """A raw TCP connection to 127.0.0.1:``port``."""
    with anyio.fail_after(GUARD):
        stream = await anyio.connect_tcp("127.0.0.1", port)
    peer = RawPeer(stream)
    try:
        yield peer
    finally:
        await peer.aclose()


async def raw_associate(peer: RawPeer, rq: AAssociateRQ | None = None) -> AAssociateAC:
    """Send an A-ASSOCIATE-RQ for Verification and return the A-ASSOCIATE-AC."""
    await peer.send(rq or verification_rq())
    ac = await peer.read_pdu()
    assert isinstance(ac, AAssociateAC), ac
    assert ac.presentation_contexts[0].result == 0
    return ac


async def raw_release(peer: RawPeer) -> None:
    """Release as a well-behaved requestor: A-RELEASE-RQ, wait for the RP (AR-3)."""
    await peer.send(AReleaseRQ())
    while True:
        pdu = await peer.read_pdu()
        assert pdu is not None, "connection closed before the A-RELEASE-RP"
        if isinstance(pdu, AReleaseRP):
            return
        assert isinstance(pdu, PDataTF), pdu


@asynccontextmanager
async def fake_scp(
    behaviour: Callable[[RawPeer], Any],
) -> AsyncIterator[int]:
    """A one-connection raw TCP server running ``behaviour(peer)``; yields its port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    done = anyio.Event()

    async def serve(stream: anyio.abc.SocketStream) -> None:
        peer = RawPeer(stream)
        try:
            await behaviour(peer)
        finally:
            await peer.aclose()
            done.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve)
            try:
                yield port
                with anyio.fail_after(GUARD):
                    await done.wait()
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await listener.aclose()


def blocking_socket(port: int, rcvbuf: int | None = None, mss: int | None = None) -> socket.socket:
    """A connected plain socket (loopback connect completes in the kernel).

    A small ``rcvbuf`` and ``mss`` (set before connecting, so they are
    negotiated) keep the peer's send buffer small: on loopback the MSS is
    ~64 KiB and the sender's buffer autotunes to megabytes otherwise.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if mss is not None and hasattr(socket, "TCP_MAXSEG"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    sock.settimeout(GUARD)
    sock.connect(("127.0.0.1", port))
    return sock


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache (where the file system allows it).

    The kernel skips pages it is busy with (under writeback, locked): where
    ``cachestat(2)`` can tell (it reads no page, so starts no readahead), the
    eviction is repeated until no page of the file is left, for up to a second.
    """
    for _ in range(100):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            size = os.fstat(fd).st_size
            if not any(_nowait.page_cached(fd, at, 1) for at in range(0, size, 4096)):
                return
        finally:
            os.close(fd)
        time.sleep(0.01)


def can_evict(directory: Path) -> bool:
    """True if files under ``directory`` really leave the page cache when evicted.

    Probed on a file of its own: a RWF_NOWAIT read that misses starts
    readahead, which would bring the pages of the file under test back.
    """
    probe = directory / "evict-probe.bin"
    probe.write_bytes(os.urandom(64 * 1024))
    evict(probe)
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
        probe.unlink()
    return False


def write_part10(path: Path, ds: Dataset, transfer_syntax: str) -> Path:
    """Write ``ds`` to ``path`` as a Part 10 file in ``transfer_syntax``; return the path."""
    meta = file_meta_for(ds.SOPClassUID, ds.SOPInstanceUID, transfer_syntax)
    path.write_bytes(part10_header(meta) + encode_dataset(ds, transfer_syntax))
    return path


# ---------------------------------------------------------------------------
# The splice of spooled data sets (aiodicom._splice)


class Splices:
    """The splice jobs run in this test (a spy on SpliceJob.run); ``started``,
    if a test sets one, is set as each job starts."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []
        self.started: anyio.Event | None = None

    @staticmethod
    def expected(backend: Any) -> bool:
        """True if an SCP on ``backend`` (an ``anyio_backend`` value) splices:
        asyncio (uvloop's loop too), where splice(2) exists."""
        from aiodicom import association

        name = backend if isinstance(backend, str) else backend[0]
        return name == "asyncio" and association._SPLICE_AVAILABLE

    @property
    def outcomes(self) -> list[Any]:
        return [job.outcome for job in self.jobs]


@pytest.fixture
def splices(monkeypatch: pytest.MonkeyPatch) -> Splices:
    import anyio.from_thread

    from aiodicom._splice import SpliceJob

    spy = Splices()
    real = SpliceJob.run

    def run(job: SpliceJob) -> None:
        spy.jobs.append(job)
        if spy.started is not None:
            anyio.from_thread.run_sync(spy.started.set)
        real(job)

    monkeypatch.setattr(SpliceJob, "run", run)
    return spy
