"""Helpers for testing code that uses aiodicom, with or without sockets.

``memory_pair`` runs an SCP in-process over anyio memory streams and yields the
SCU's association: no socket, no port::

    async with memory_pair(scu_ae, scp_ae, scp_handlers=handlers) as assoc:
        await assoc.send_c_echo()

``free_port`` gives a loopback port that was free a moment ago;
``RecordingHandlers`` records what an SCP's handlers saw; ``make_dataset``
builds a small valid instance. pytest fixtures built on these live in
:mod:`aiodicom.testing.fixtures` (``pytest_plugins = ["aiodicom.testing.fixtures"]``).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .. import evt
from ..ae import AE, _AssociateContext
from ..association import Association
from ..pdu_primitives import UserItem
from ..presentation import PresentationContext

__all__ = (
    "MemoryByteStream",
    "RecordingHandlers",
    "free_port",
    "make_dataset",
    "memory_pair",
    "stream_pair",
)


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory, bidirectional byte stream (see :func:`stream_pair`)."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._leftover = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = self._leftover
        if not data:
            try:
                data = await self._receive.receive()
            except anyio.EndOfStream:
                raise
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise anyio.EndOfStream from None
        self._leftover = data[max_bytes:]
        return data[:max_bytes]

    async def send(self, item: bytes) -> None:
        try:
            await self._send.send(bytes(item))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise anyio.BrokenResourceError from None

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def stream_pair(buffer: int = 16) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected in-memory byte streams (``buffer`` writes may be queued each way)."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](buffer or math.inf)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](buffer or math.inf)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)


def memory_pair(
    scu_ae: AE,
    scp_ae: AE,
    *,
    scp_handlers: Sequence[evt.EventHandlerType] | None = None,
    scu_handlers: Sequence[evt.EventHandlerType] | None = None,
    contexts: Sequence[PresentationContext] | None = None,
    ext_neg: Sequence[UserItem] | None = None,
    ae_title: str | None = None,
) -> _MemoryPair:
    """An association from ``scu_ae`` to ``scp_ae`` served in-process over memory streams.

    Use it as ``async with memory_pair(...) as assoc``. Leaving the block
    releases the association (or aborts it on an exception, which then
    propagates unchanged, as with :meth:`AE.associate`) and waits for the SCP
    side to finish.
    """
    client, server = stream_pair()

    async def connect() -> anyio.abc.ByteStream:
        return client

    scp = Association(
        scp_ae,
        server,
        requestor=False,
        handlers=evt.HandlerRegistry(scp_handlers),
        local_ae_title=scp_ae.ae_title,
        max_pdu=scp_ae.maximum_pdu_size,
        peer_address=("memory", 0),
    )
    ctx = _AssociateContext(
        scu_ae,
        connect,
        ("memory", 0),
        ae_title or scp_ae.ae_title,
        list(contexts if contexts is not None else scu_ae.requested_contexts),
        list(ext_neg or ()),
        evt.HandlerRegistry(scu_handlers),
        scu_ae.maximum_pdu_size,
    )
    return _MemoryPair(scp, ctx)


class _MemoryPair:
    """The async context manager :func:`memory_pair` returns."""

    def __init__(self, scp: Association, ctx: _AssociateContext) -> None:
        self._scp = scp
        self._ctx = ctx
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Association:
        tg = self._tg = anyio.create_task_group()
        await tg.__aenter__()
        tg.start_soon(self._scp._run_acceptor)
        try:
            return await self._ctx.__aenter__()
        except BaseException:
            await self._finish()
            raise

    async def _finish(self) -> None:
        assert self._tg is not None
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._scp._closed.wait()
        finally:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._ctx.__aexit__(exc_type, exc, tb)
        finally:
            await self._finish()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free when asked (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RecordingHandlers:
    """Handlers that record every event they see and answer with fixed statuses.

    ``handlers`` is the list to pass as ``evt_handlers``; ``events`` the
    recorded :class:`~aiodicom.evt.Event` objects in order.
    """

    def __init__(self, *, echo_status: int = 0x0000, store_status: int = 0x0000) -> None:
        self.events: list[evt.Event] = []
        self.echo_status = echo_status
        self.store_status = store_status
        #: For each C-STORE: (SOP Instance UID, transfer syntax, the data set bytes as
        #: received, whether it was spooled).
        self.stored: list[tuple[str, str, bytes, bool]] = []

    def _record(self, event: evt.Event) -> None:
        self.events.append(event)

    def _echo(self, event: evt.Event) -> int:
        self.events.append(event)
        return self.echo_status

    def _store(self, event: evt.Event) -> int:
        self.events.append(event)
        assert event.context is not None
        self.stored.append(
            (
                str(event.request.AffectedSOPInstanceUID),
                str(event.context.transfer_syntax),
                event.encoded_dataset(),
                event.dataset_path is not None,
            )
        )
        return self.store_status

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        """``evt_handlers`` for an AE or server."""
        notes = [
            evt.EVT_CONN_OPEN,
            evt.EVT_CONN_CLOSE,
            evt.EVT_REQUESTED,
            evt.EVT_ACCEPTED,
            evt.EVT_REJECTED,
            evt.EVT_ESTABLISHED,
            evt.EVT_RELEASED,
            evt.EVT_ABORTED,
        ]
        out: list[evt.EventHandlerType] = [(e, self._record) for e in notes]
        out.append((evt.EVT_C_ECHO, self._echo))
        out.append((evt.EVT_C_STORE, self._store))
        return out

    def of(self, kind: evt.EventType) -> list[evt.Event]:
        """The recorded events of one type."""
        return [e for e in self.events if e.event is kind]


def make_dataset(**elements: Any) -> Dataset:
    """A small valid CT Image instance with file meta; keywords override elements."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST0001"
    ds.Modality = "CT"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(32)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
