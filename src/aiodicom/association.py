"""The association: the thin async shell around the sans-IO Upper Layer.

Theory of operation
-------------------
One association is one transport stream, one :class:`~aiodicom.fsm.UpperLayer`
and one *reader* coroutine. The reader reads a whole PDU at a time (the 6-byte
header, checked against our maximum before the body is read), feeds it to the
Upper Layer and carries out the effects it returns: writing PDUs, closing the
transport and acting on indications. Writes go through one lock, so the
fragments of a DIMSE message are never interleaved with another's.

DIMSE requests we send wait on a :class:`_Pending` slot keyed by Message ID;
the reader fills the slot when the response arrives, so any number of tasks
may have operations in flight (up to the negotiated Asynchronous Operations
Window, enforced by a semaphore). Requests we receive are served in tasks of
the association's task group, so a slow handler never stalls the reader.

Nothing here polls or sleeps: every wait is on the stream, an event or a
deadline (ARTIM from the Upper Layer, the network timeout, the ACSE and DIMSE
timeouts), and the transport is always closed under a shield.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import inspect
import logging
import math
import os
import stat
import sys
import weakref
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Final, NamedTuple, cast

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import SocketAttribute
from pydicom.config import IGNORE as _IGNORE
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from . import evt
from ._nowait import NOT_CACHED, page_cached, read_cached
from ._nservice import N_EVENTS as _N_EVENT_NAMES
from ._nservice import reply_of, request_fields, response_for
from ._splice import AVAILABLE as _SPLICE_AVAILABLE
from ._splice import Outcome, SpliceJob
from ._spool import REUSED_WRITE_CALL, WRITE_BATCH, WRITE_CALL, Spares, Spool, fill_p_data
from ._transport import _FREE_REFS, AsyncioStream, _quickack, _take_free
from .dimse import (
    DATASET_PRESENT,
    NO_DATASET,
    CommandField,
    Message,
    Reassembler,
    command_dataset,
    data_chunk_size,
    decode_command,
    encode_command,
    encode_echo_request,
    encode_pending_counts,
    encode_status_response,
    encode_store_request,
    file_fragments,
    fragment,
    fragment_parts,
    pending_counts_head,
    single_pdu,
)
from .dimse_messages import MESSAGE_SPECS, check_command, error_comment, is_us, status_elements
from .dsutils import (
    Encoded,
    Part10Info,
    decode_dataset,
    encode_dataset,
    is_plain_uid,
    part10_header_for,
    probe_buffer,
    probe_part10,
    transfer_syntax_of,
)
from .errors import (
    AssociationAborted,
    AssociationRejected,
    DatasetMismatch,
    DicomNetworkError,
    DIMSEError,
    LocalProtocolError,
    NoAcceptedContext,
    PDUError,
)
from .fsm import (
    AbortIndication,
    Action,
    AssociateAccepted,
    AssociateIndication,
    AssociateRejected,
    CloseTransport,
    DataIndication,
    Effect,
    Event,
    Indicate,
    ReleaseConfirmation,
    ReleaseIndication,
    SendPDU,
    StartARTIM,
    State,
    UpperLayer,
)
from .pdu import (
    P_DATA_HEADER_SIZE,
    PDU,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    PresentationContextRQ,
    check_header,
    decode,
    encode,
    encode_p_data,
    pack_p_data_header,
    split_p_data,
    summary,
)
from .pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
    UserItem,
)
from .presentation import (
    ContextTuple,
    PresentationContext,
    negotiate_as_acceptor,
    negotiate_as_requestor,
    to_ac_items,
)

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from .ae import AE

__all__ = ("Association", "Responses", "ServiceUser", "StoreResult", "StoreSource")

LOGGER = logging.getLogger("aiodicom")

#: The EVT_N_* event that performs each N request.
N_EVENTS: Final[dict[int, evt.EventType]] = {
    field: getattr(evt, name) for field, name in _N_EVENT_NAMES.items()
}

VERIFICATION = UID("1.2.840.10008.1.1")
#: The most operations we perform or invoke at once when a peer asks for more
#: (or for an unlimited window, 0).
MAX_ASYNC_WINDOW = 64
_READ_SIZE = 65536
#: What the reader asks of an AsyncioStream: whatever one received chunk holds.
_WHOLE_CHUNKS = 1 << 62
#: Bytes read from a file per worker-thread call when sending it (three
#: blocks in memory at most). 1 MiB, not 4: the block is still in the CPU's
#: cache when it is written to the socket. A 64 MB file to storescp
#: (16 KiB PDUs, read and copied), medians of 4 interleaved runs: 1,066
#: against 864 MB/s; 512 KiB and 2 MiB fell between; by sendfile (PDUs of
#: 128 KiB or more) the two sizes are level.
_FILE_BLOCK = 1 << 20
#: Statuses of a pending C-FIND/C-GET/C-MOVE response (PS3.4 C.4).
_PENDING = frozenset((0xFF00, 0xFF01))
#: A C-FIND SCP yields to the event loop after this many responses.
_YIELD_EVERY = 16
#: States in which the reader may wait for the workers or a consumer.
_FLOWING = frozenset((State.STA6, State.STA7))
#: Responses received but not consumed past which the reader waits.
_STREAM_BACKLOG = 256
#: Associations that may splice a data set into its spool file at once, per
#: event loop (see Association._splice_rest). Each holds a worker thread
#: while its peer sends; past this many, data sets are read the usual way,
#: so peers that send slowly (or stall) never take the threads that file
#: work (anyio's default limiter) needs, nor more threads than this.
_SPLICE_THREADS = 16
_splice_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def _splice_limiter(loop: asyncio.AbstractEventLoop) -> anyio.CapacityLimiter:
    """``loop``'s limiter of splice threads."""
    limiter = _splice_limiters.get(loop)
    if limiter is None:
        limiter = _splice_limiters[loop] = anyio.CapacityLimiter(_SPLICE_THREADS)
    return limiter


#: A message with a data set up to this size is written in one call.
_COALESCE = 1 << 20
#: How long an A-ABORT may wait to go out before the connection is just closed.
_ABORT_GRACE = 1.0
#: A data set up to this size is read whole and sent from memory (0: never).
_INLINE_READ = 1 << 20
#: What a write on the stream raises when the connection fails; and with
#: OSError, what a failed write raises (send_file's OSError is the file's).
_CONNECTION_ERRORS: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError)
_STREAM_ERRORS: Final = (*_CONNECTION_ERRORS, OSError)
#: A file is sent by sendfile(2) only in PDVs of this many bytes or more (a
#: peer's maximum PDU of 128 KiB, 131,072 bytes, or more). sendfile costs two system calls a
#: PDU, and leaves each PDU's bytes in the page cache's pages, several
#: fragments a PDU, which the receiver then copies out of fragment by
#: fragment. With 16 KB PDUs (dcmtk's and pynetdicom's usual 16,384 and
#: 16,382) reading and copying beat it on both sides: to storescp over
#: loopback, 64 MB files, medians of 10 interleaved runs, reading gave 854
#: against 780 MB/s with storescp's CPU 24% lower and ours lower too; with
#: 64 KB PDUs 1,102 against 934 MB/s. With 128 KB PDUs the two are level,
#: and sendfile halves our CPU.
_SENDFILE_MIN_CHUNK = 131_000
#: OSError numbers that mean "out of resources" (answered 0xA700 by C-STORE).
_NO_RESOURCES = {errno.ENOSPC, errno.ENOMEM, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _encode_request(command: dict[str, Any] | Callable[[int], bytes], mid: int) -> bytes:
    """A request's command set with Message ID ``mid``: ``command`` is its
    fields without the ID, or a function of the ID that encodes it."""
    if callable(command):
        return command(mid)
    command["MessageID"] = mid
    return encode_command(command)


class _FileSource:
    """A data set to send from an open binary file, from ``offset`` to its end."""

    __slots__ = ("file", "offset")

    def __init__(self, file: BinaryIO, offset: int) -> None:
        self.file = file
        self.offset = offset


_Payload = bytes | memoryview | _FileSource | None


@dataclass(slots=True)
class _PreparedStore:
    """A C-STORE request ready to send (see ``Association._prepare_store``);
    ``owned``: the file it streams from that it opened (closed by :meth:`close`)."""

    context_id: int
    command: dict[str, Any] | Callable[[int], bytes]
    payload: _Payload
    owned: BinaryIO | None

    async def close(self) -> None:
        """Close the file opened to stream from, if any (in a worker, shielded)."""
        owned, self.owned = self.owned, None
        if owned is not None:
            await _close_in_worker(owned)


#: What :meth:`Association.send_c_store` sends: a data set, a file's path or a binary file.
StoreSource = Dataset | str | os.PathLike[str] | BinaryIO


class StoreResult(NamedTuple):
    """What became of one instance given to :meth:`Association.send_c_stores`."""

    #: The instance, as it was given.
    source: StoreSource
    #: The C-STORE response's command set (``.Status``), as
    #: :meth:`Association.send_c_store` returns it; None if it was not sent.
    status: Dataset | None
    #: Why it was not sent (nothing was sent for it), else None.
    error: Exception | None


#: Errors that keep one instance from being sent and leave the association
#: as it was: what send_c_store raises before it sends anything (a file that
#: can't be read or is not DICOM, no accepted context (a ValueError), a data
#: set that does not encode, a wrong type). A C-GET/C-MOVE sub-operation
#: failing so counts as failed, the others going on.
_NOT_SENT: Final = (OSError, ValueError, TypeError, DIMSEError)

#: The end of the instances given to send_c_stores.
_NO_MORE: Final = object()


def _taker(
    sources: Iterable[StoreSource] | AsyncIterable[StoreSource],
) -> Callable[[], Awaitable[object]]:
    """A coroutine function giving the next of ``sources``, or ``_NO_MORE``."""
    if isinstance(sources, AsyncIterable):
        items = aiter(sources)

        async def take_async() -> object:
            try:
                return await anext(items)
            except StopAsyncIteration:
                return _NO_MORE

        return take_async
    plain = iter(sources)

    async def take() -> object:
        return next(plain, _NO_MORE)

    return take


async def _close_in_worker(file: BinaryIO) -> None:
    """Close a file this package opened to send from (in a worker, shielded)."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(file.close)


#: A block of a file laid out as P-DATA-TF PDUs, and where each PDU ends.
_Block = tuple[bytearray, list[int]]


@dataclass(slots=True)
class ServiceUser:
    """One end of an association: what it said about itself in negotiation."""

    ae_title: str = ""
    address: str = ""
    port: int = 0
    maximum_length: int = 0
    implementation_class_uid: UID | None = None
    implementation_version_name: str | None = None
    user_identity: UserIdentityNegotiation | None = None
    role_selection: dict[UID, SCP_SCU_RoleSelectionNegotiation] = field(default_factory=dict)
    sop_class_extended: dict[UID, bytes] = field(default_factory=dict)
    sop_class_common_extended: dict[UID, SOPClassCommonExtendedNegotiation] = field(
        default_factory=dict
    )
    asynchronous_operations: tuple[int, int] = (1, 1)
    primitive: AAssociateRQ | AAssociateAC | None = None

    def _absorb(self, items: Sequence[UserItem]) -> None:
        for item in items:
            if isinstance(item, MaximumLengthNotification):
                self.maximum_length = item.maximum_length_received
            elif isinstance(item, ImplementationClassUIDNotification):
                self.implementation_class_uid = _peer_uid(item.implementation_class_uid)
            elif isinstance(item, ImplementationVersionNameNotification):
                self.implementation_version_name = item.implementation_version_name
            elif isinstance(item, AsynchronousOperationsWindowNegotiation):
                self.asynchronous_operations = (
                    item.maximum_number_operations_invoked,
                    item.maximum_number_operations_performed,
                )
            elif isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                self.role_selection[_peer_uid(item.sop_class_uid)] = item
            elif isinstance(item, SOPClassExtendedNegotiation):
                info = item.service_class_application_information or b""
                self.sop_class_extended[_peer_uid(item.sop_class_uid)] = info
            elif isinstance(item, SOPClassCommonExtendedNegotiation):
                self.sop_class_common_extended[_peer_uid(item.sop_class_uid)] = item
            elif isinstance(item, UserIdentityNegotiation):
                self.user_identity = item


class _Signal:
    """A one-shot event with one waiter, lighter than :class:`anyio.Event`.

    On asyncio the waiter parks on a bare future; on other backends on an
    :class:`anyio.Event`. Every DIMSE request waits on one of these for each
    response, so its cost is on the hot path.
    """

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | anyio.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is None:
            return
        self._waiter = None
        if isinstance(waiter, anyio.Event):
            waiter.set()
        elif not waiter.done():
            waiter.set_result(None)

    async def wait(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Wait until set. ``loop``: the running asyncio loop, if the caller knows it."""
        if self._flag:
            return
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                event = self._waiter = anyio.Event()
                await event.wait()
                return
        future: asyncio.Future[None] = loop.create_future()
        self._waiter = future
        try:
            await future
        finally:
            self._waiter = None


class _Pending:
    """The slot a DIMSE request waits on until its response (or responses) arrive.

    A single-response request gets ``response``. A C-FIND/C-GET/C-MOVE has a
    ``queue`` the reader appends to until the final (non-pending) response;
    ``done`` is the event its consumer waits on, renewed by the consumer.
    """

    __slots__ = (
        "chain",
        "context_id",
        "done",
        "error",
        "finished",
        "holds_place",
        "in_next",
        "message_id",
        "owner",
        "queue",
        "released",
        "response",
        "sent_at",
        "transfer_syntax",
    )

    def __init__(self, *, stream: bool = False) -> None:
        self.done = _Signal()
        self.response: Message | None = None
        self.error: BaseException | None = None
        self.sent_at = math.inf
        #: True once the final response arrived (or the association ended).
        self.finished = False
        self.queue: deque[Message] | None = deque() if stream else None
        self.message_id = 0
        self.context_id = 0
        self.transfer_syntax: UID | None = None
        self.owner: int | None = None  # the task that started a stream
        self.in_next = False  # a task is waiting in the stream's __anext__
        self.released = False  # the stream gave its window slot back
        #: Called as the response is routed, before ``done`` is set (it must not raise).
        self.chain: Callable[[], None] | None = None
        #: It holds a place in the invocation window, given back as the
        #: response is routed, or by the waiter if none comes (single-response).
        self.holds_place = False


class _NoLimit:
    """Stands in for the window semaphore when the window is unlimited."""

    value = 1

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def acquire(self) -> None:
        return None

    def acquire_nowait(self) -> None:
        return None

    def release(self) -> None:
        return None


def _window(size: int) -> anyio.Semaphore | _NoLimit:
    return _NoLimit() if size == 0 else anyio.Semaphore(size, fast_acquire=True)


class _TransportError(Exception):
    """Internal: the transport failed under a read or write."""


class Association:
    """An association with a peer AE, as requestor or acceptor.

    Made by :meth:`AE.associate` (requestor) or by a server (acceptor); users
    never construct one. While :attr:`is_established`, its ``send_*`` methods
    may be awaited from any task, concurrently.
    """

    def __init__(
        self,
        ae: AE,
        stream: anyio.abc.ByteStream,
        *,
        requestor: bool,
        handlers: evt.HandlerRegistry,
        local_ae_title: str,
        max_pdu: int,
        peer_address: tuple[str, int] = ("", 0),
        server: Any = None,
    ) -> None:
        self.ae = ae
        self.is_requestor = requestor
        self.mode = "requestor" if requestor else "acceptor"
        self.acse_timeout: float | None = ae.acse_timeout
        self.dimse_timeout: float | None = ae.dimse_timeout
        self.network_timeout: float | None = ae.network_timeout
        self.connection_timeout: float | None = ae.connection_timeout
        self.server = server
        local = ServiceUser(ae_title=local_ae_title, maximum_length=max_pdu)
        local.implementation_class_uid = UID(ae.implementation_class_uid)
        local.implementation_version_name = ae.implementation_version_name
        remote = ServiceUser(address=peer_address[0], port=peer_address[1])
        self.requestor, self.acceptor = (local, remote) if requestor else (remote, local)
        self._local, self._remote = local, remote
        self._handlers = handlers
        # The registry's own table: a dict lookup in C on every message.
        self._bound = handlers.bindings
        self._stream = stream
        # On asyncio: the loop, and its clock read without looking the loop
        # up (on asyncio before 3.12 every lookup is a getpid() system call).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] = _current_time
        if isinstance(stream, AsyncioStream):
            self._loop = stream.loop
            self._clock = stream.clock
        #: The socket to ask for TCP_QUICKACK on when a PDU arrives in part,
        #: unless the stream does it itself (the asyncio stream's framing).
        self._ack_sock: Any = None
        if not (isinstance(stream, AsyncioStream) and stream.framed):
            self._ack_sock = stream.extra(SocketAttribute.raw_socket, None)
        self._max_pdu = max_pdu
        self._ul = UpperLayer(
            requestor=requestor,
            artim_timeout=self.acse_timeout,
            on_transition=self._on_transition if evt.EVT_FSM_TRANSITION in handlers else None,
        )
        self._transitions: list[tuple[State, Event, Action, State]] = []
        self._rbuf: bytes | memoryview = b""  # received, not yet used from _rpos on
        self._rpos = 0
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._contexts: dict[int, PresentationContext] = {}
        self._context_tuples: dict[int, ContextTuple] = {}
        self._rejected: list[PresentationContext] = []
        self._reassembler = Reassembler(self._contexts, ae.spool_threshold)
        self._spool: Spool | None = None
        #: The spool file kept for the next spooled data set (see Spares).
        self._spares = Spares()
        #: The rest of a spooled data set may be spliced (see _splice_rest) ...
        self._splice_ok = False
        #: ... but not this one's (it came otherwise once).
        self._no_splice_for: Message | None = None
        #: The worker thread's job that has the connection, if one has (the
        #: network timeout is its to watch; it is stopped once data can no
        #: longer flow).
        self._splicing: SpliceJob | None = None
        #: The byte stream cannot be parsed any more (a framing error, or a
        #: PDU cut off): what comes is read and dropped until the end.
        self._stream_broken = False
        #: The reader is handling a PDU (see _read_loop).
        self._reader_busy = False
        self._serving: dict[int, evt.Event] = {}  # cancellable requests we serve, by ID
        self._serving_ids: set[int] = set()  # Message IDs of the requests being served
        self._stream_backlog = 0  # responses received, not yet consumed
        self._backlog_drained: anyio.Event | None = None
        self._abandoned: list[_Pending] = []  # streams dropped unfinished
        self._drained: anyio.Event | None = None
        self._invoke_window: anyio.Semaphore | _NoLimit = _window(1)
        self._established = anyio.Event()
        self._closed = anyio.Event()
        self._released = anyio.Event()
        self._idle: anyio.Event | None = None  # created only by a release waiting for it
        self._inflight = 0
        self._context_cache: dict[tuple[str, bool | None, int], PresentationContext] = {}
        self._store_context_cache: dict[tuple[str, str | None, int], PresentationContext] = {}
        #: Per intervention event: its handler and whether it is a plain def.
        self._plain: dict[evt.EventType, tuple[evt.Handler, bool]] = {}
        self._need_workers = 0  # workers to start (from the fast path, by a task)
        self._deferred_error: PDUError | None = None
        self._jobs: deque[Message] = deque()
        self._jobs_ready = anyio.Event()
        self._workers = 0
        self._idle_workers = 0
        self._max_workers = 1
        self._release_requested = False
        self._error: BaseException | None = None
        self._rejection: AssociationRejected | None = None
        self._was_released = False
        self._was_aborted = False
        self._tg: anyio.abc.TaskGroup | None = None
        #: One per task this association started (see _spawn): cancelled
        #: when it ends. A requestor's task group is entered in the user's
        #: task, so cancelling the group would cancel the user's code too.
        self._task_scopes: set[anyio.CancelScope] = set()
        #: Set when the last of those tasks ends, once the association has ended.
        self._tasks_ended: anyio.Event | None = None
        #: anyio task IDs of the tasks serving this association (Server.shutdown
        #: called from one of them does not wait for this association to end).
        self._task_ids: set[int] = set()
        self._send_started: float | None = None
        self._send_timed_out = False
        self._last_rx = 0.0
        #: When a write last went out: a peer reading a long stream of
        #: responses is not idle, though it sends nothing (network timeout).
        self._last_tx = 0.0
        self._watch_target = math.inf
        self._watch_kick = anyio.Event()
        #: When the latest request went out (see _deadlines: the standing check).
        self._last_invoked = -math.inf
        self._debug = LOGGER.isEnabledFor(logging.DEBUG)

    # ------------------------------------------------------------------
    # Public state

    @property
    def is_established(self) -> bool:
        """True while the association can carry DIMSE messages (Sta6)."""
        return self._ul.state is State.STA6

    @property
    def is_released(self) -> bool:
        """True once the association was released."""
        return self._was_released

    @property
    def is_aborted(self) -> bool:
        """True once the association was aborted (by either side or the provider)."""
        return self._was_aborted

    @property
    def is_rejected(self) -> bool:
        """True if the association request was rejected."""
        return self._rejection is not None

    @property
    def is_acceptor(self) -> bool:
        """True for the association acceptor."""
        return not self.is_requestor

    @property
    def accepted_contexts(self) -> list[PresentationContext]:
        """The accepted presentation contexts, by ID."""
        return [self._contexts[k] for k in sorted(self._contexts)]

    @property
    def rejected_contexts(self) -> list[PresentationContext]:
        """The rejected presentation contexts."""
        return list(self._rejected)

    @property
    def state(self) -> State:
        """The Upper Layer state (Sta1-Sta13)."""
        return self._ul.state

    @property
    def max_async_invoked(self) -> int:
        """How many of our requests may be outstanding at once (0: unlimited)."""
        return self._invoke_size

    _invoke_size = 1

    def bind(
        self, event: evt.EventType, handler: evt.Handler, args: Sequence[Any] | None = None
    ) -> None:
        """Bind ``handler`` to ``event`` on this association."""
        self._handlers.bind(event, handler, args)
        if event is evt.EVT_FSM_TRANSITION:
            self._ul.on_transition = self._on_transition

    def unbind(self, event: evt.EventType, handler: evt.Handler) -> None:
        """Unbind ``handler`` from ``event``."""
        self._handlers.unbind(event, handler)

    async def _notify(self, kind: evt.EventType) -> None:
        """Notify the handlers bound to ``kind``; build no Event when none are."""
        if kind in self._bound:
            await evt.notify(self._handlers, evt.Event(self, kind))

    def get_handlers(self, event: evt.EventType) -> list[tuple[evt.Handler, tuple[Any, ...]]]:
        """The handlers bound to ``event``."""
        return self._handlers.get(event)

    def __repr__(self) -> str:
        return (
            f"<Association {self.mode} {self.requestor.ae_title!r}->{self.acceptor.ae_title!r} "
            f"{self._ul.state.name}>"
        )

    # ------------------------------------------------------------------
    # Transport

    async def _write(self, data: bytes | memoryview, pdu: PDU | None = None) -> None:
        """Write one encoded PDU; the caller holds the send lock.

        The network timeout of a write is watched by the reader (see
        :meth:`_deadline`), so the hot path opens no cancel scope.
        """
        # A memoryview only ever goes to an AsyncioStream (see _send_block).
        await self._watched(self._stream.send(cast(bytes, data)), _STREAM_ERRORS)
        if self._debug or evt.EVT_PDU_SENT in self._bound:
            obj = pdu if pdu is not None else decode(data[0], memoryview(data)[6:])
            if self._debug:
                LOGGER.debug("-> %s", summary(obj))
            await evt.notify(self._handlers, evt.Event(self, evt.EVT_PDU_SENT, pdu=obj))

    async def _watched(
        self, send: Coroutine[Any, Any, None], errors: tuple[type[Exception], ...]
    ) -> None:
        """Await a write on the stream, watched by the network timeout (the
        reader's watchdog, see :meth:`_deadline`; no cancel scope on the hot
        path); ``errors`` mean the connection failed: _TransportError."""
        if self.network_timeout is not None:
            self._send_started = started = self._clock()
            self._kick(started + self.network_timeout)
        try:
            await send
        except errors as exc:
            if self._send_timed_out:
                raise _TransportError("network timeout: the peer stopped reading") from None
            raise _TransportError(str(exc) or type(exc).__name__) from exc
        finally:
            self._send_started = None
        self._last_tx = self._clock()

    async def _read_exact(self, n: int, started: bool = False) -> bytes | memoryview:
        """Exactly ``n`` bytes from the stream.

        Bytes read but not yet used stay in ``_rbuf`` from ``_rpos``. What
        one received chunk holds is returned as a memoryview of it (no copy);
        what spans chunks is joined once. ``started``: the bytes continue a
        PDU; waiting for the rest of one, TCP_QUICKACK is asked for once
        (see :mod:`aiodicom._transport`; the framed asyncio stream asks itself).
        """
        rbuf, rpos = self._rbuf, self._rpos
        avail = len(rbuf) - rpos
        if avail >= n:
            self._rpos = rpos + n
            return memoryview(rbuf)[rpos : rpos + n]
        parts: list[bytes | memoryview] = [memoryview(rbuf)[rpos:]] if avail else []
        need = n - avail
        self._rbuf, self._rpos = b"", 0
        stream = self._stream
        ack = self._ack_sock
        while need:
            if ack is not None and (started or parts):
                _quickack(ack)  # a PDU came in part: its sender may wait for our ACK
                ack = None
            # The asyncio stream hands over whole received chunks (no copy;
            # with its PDU framing, whole PDUs); anyio's socket streams
            # allocate what they are asked for.
            chunk: bytes | memoryview
            if type(stream) is AsyncioStream:
                chunk = await stream.receive_view(_WHOLE_CHUNKS)
            else:
                chunk = await stream.receive(max(_READ_SIZE, need))
            if len(chunk) > need:
                parts.append(memoryview(chunk)[:need])
                self._rbuf, self._rpos = chunk, need
                break
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    async def _read_pdu(self) -> tuple[int, bytes | memoryview]:
        """Read one PDU: the header, checked against our maximum, then the body."""
        pdu_type, length = check_header(await self._read_exact(6), self._max_pdu)
        return pdu_type, await self._read_exact(length, started=True)

    async def _close_transport(self) -> None:
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + 1.0):
            try:
                await self._stream.aclose()
            except Exception:  # pragma: no cover - closing a broken stream
                pass

    # ------------------------------------------------------------------
    # Effects

    def _on_transition(self, old: State, event: Event, action: Action, new: State) -> None:
        self._transitions.append((old, event, action, new))

    async def _apply(self, effects: tuple[Effect, ...]) -> None:
        """Carry out the Upper Layer's effects, in order."""
        if self._splicing is not None and self._ul.state not in _FLOWING:
            # Aborting or closing: the rest of a data set being spliced will
            # not be wanted. (Before an A-ABORT goes: the thread stops first.)
            self._splicing.stop()
        for effect in effects:
            if isinstance(effect, Indicate) and isinstance(effect.primitive, AbortIndication):
                # The association is over from now on (the Upper Layer's state
                # says so): an operation started while the A-ABORT below is
                # being written must fail with why, as every later one does.
                self._note_abort(effect.primitive)
        if self._transitions:
            await self._notify_transitions()
        for effect in effects:
            if isinstance(effect, SendPDU):
                pdu = effect.pdu
                if isinstance(pdu, bytes):
                    data, obj = pdu, None
                else:
                    data, obj = encode(pdu), pdu
                # If another writer is stuck on a peer that stopped reading,
                # the watchdog closes the transport and the lock is released.
                async with self._send_lock:
                    try:
                        await self._write(data, obj)
                    except _TransportError as exc:
                        await self._transport_failed(str(exc))
                        return
            elif isinstance(effect, Indicate):
                await self._indicate(effect.primitive)
            elif isinstance(effect, CloseTransport):
                await self._close_transport()
            elif isinstance(effect, StartARTIM):
                artim = self._ul.get_timer()
                if artim is not None:
                    self._kick(artim)

    async def _notify_transitions(self) -> None:
        pending, self._transitions = self._transitions, []
        for old, event, action, new in pending:
            await evt.notify(
                self._handlers,
                evt.Event(
                    self,
                    evt.EVT_FSM_TRANSITION,
                    current_state=f"Sta{old.value}",
                    fsm_event=f"Evt{event.value}",
                    action=action.value,
                    next_state=f"Sta{new.value}",
                ),
            )

    async def _transport_failed(self, why: str) -> None:
        """The stream broke: close it and tell the Upper Layer (Evt17)."""
        await self._close_transport()
        if self._error is None:
            self._error = AssociationAborted(2, 0, f"connection lost: {why}")
        await self._apply(self._ul.transport_closed())

    async def _indicate(self, primitive: object) -> None:
        if isinstance(primitive, DataIndication):
            await self._on_data(primitive)
        elif isinstance(primitive, AssociateIndication):
            await self._negotiate(primitive.request)
        elif isinstance(primitive, AssociateAccepted):
            await self._on_accepted(primitive.accept)
        elif isinstance(primitive, AssociateRejected):
            rj = primitive.reject
            self._rejection = AssociationRejected(rj.result, rj.source, rj.reason)
            self._error = self._rejection
            LOGGER.info("Association rejected: %s", self._rejection)
            await self._notify(evt.EVT_REJECTED)
            self._established.set()
        elif isinstance(primitive, ReleaseIndication):
            await self._on_release_indication(primitive.collision)
        elif isinstance(primitive, ReleaseConfirmation):
            if self._ul.state is State.STA12:
                # Release collision, acceptor side: now answer the peer (AR-4).
                await self._apply(self._ul.release_response(anyio.current_time()))
            self._mark_released()
        elif isinstance(primitive, AbortIndication):
            await self._on_abort(primitive)

    def _mark_released(self) -> None:
        if not self._was_released:
            self._was_released = True
            if self._error is None:
                self._error = DicomNetworkError("the association has been released")
            LOGGER.info("Association released")
        self._released.set()
        self._fail_pending()

    def _note_abort(self, ind: AbortIndication) -> None:
        """Record the abort as the association's error (a timeout's or an
        earlier abort's stays: it says more)."""
        if self._error is None or not isinstance(self._error, AssociationAborted | TimeoutError):
            self._error = AssociationAborted(ind.source, ind.reason, ind.detail or None)

    async def _on_abort(self, ind: AbortIndication) -> None:
        self._was_aborted = True
        self._note_abort(ind)
        if ind.local:
            LOGGER.warning("Association aborted: %s", ind.detail or "provider abort")
        else:
            LOGGER.info(
                "Association aborted by the peer (source %d, reason %d)", ind.source, ind.reason
            )
        self._established.set()
        self._fail_pending()

    def _fail_pending(self) -> None:
        error = self._error or AssociationAborted(2, 0, "the association ended")
        for pending in self._pending.values():
            if not pending.finished:
                pending.finished = True
                pending.error = error
                pending.done.set()
        drained = self._backlog_drained
        if drained is not None:
            self._backlog_drained = None
            drained.set()

    # ------------------------------------------------------------------
    # The reader

    # The timers. One watchdog task per association sleeps until the earliest
    # deadline and acts only if it has really passed; the hot path (every PDU
    # read or written, every request) opens no cancel scope and only moves
    # timestamps. Deadlines that move later need no wake-up: the watchdog
    # re-arms when it finds its target not yet reached.

    def _deadlines(self, now: float) -> float:
        """The earliest of: ARTIM, the network timeout of a write in progress
        or else of the last activity (data received, or a write that went
        out), the DIMSE timeout of the oldest request."""
        artim = self._ul.get_timer()
        deadline = math.inf if artim is None else artim
        net = self.network_timeout
        if net is not None and self._send_started is not None:
            # a write in progress: its own timer stands for the idle one
            deadline = min(deadline, self._send_started + net)
        elif (
            net is not None
            and artim is None
            and not self._ul.is_closed
            and self._splicing is None  # (else the splicing thread watches it)
        ):
            deadline = min(deadline, max(self._last_rx, self._last_tx) + net)
        dimse = self.dimse_timeout
        if dimse is not None:
            oldest = min(
                (p.sent_at for p in self._pending.values() if not p.finished), default=math.inf
            )
            if oldest == math.inf and self._last_invoked + dimse > now:
                # The standing check: with no request waiting, the watchdog
                # still wakes one DIMSE timeout after the latest request went
                # out. A request sent after it has a later deadline, so it
                # needs no wake-up to arm its timer (one each would cost a
                # loop iteration per request). An association that stops
                # making requests is left alone after that one wake-up.
                oldest = self._last_invoked
            deadline = min(deadline, oldest + dimse)
        if self._spares.expires is not None:
            deadline = min(deadline, self._spares.expires)
        return deadline

    async def _delete_spool(self, spool: Spool) -> None:
        """Delete a served or refused request's spool file, or set it aside for
        the next one (see Spares), the timers told when that expires."""
        await spool.delete(self._spares)
        if self._spares.expires is not None:
            self._kick(self._spares.expires)

    def _kick(self, deadline: float) -> None:
        """Wake the watchdog if ``deadline`` is earlier than what it sleeps for."""
        if deadline < self._watch_target:
            self._watch_kick.set()

    async def _watchdog(self) -> None:
        while not self._ul.is_closed:
            now = anyio.current_time()
            await self._check_timers(now)
            if self._ul.is_closed:
                return
            self._watch_target = self._deadlines(anyio.current_time())
            self._watch_kick = anyio.Event()
            with anyio.CancelScope(deadline=self._watch_target):
                await self._watch_kick.wait()

    async def _check_timers(self, now: float) -> None:
        if self._need_workers:
            self._start_workers()
        if self._spares.expires is not None and now >= self._spares.expires:
            await self._spares.expire()  # an idle association keeps no spool file
        error, self._deferred_error = self._deferred_error, None
        if error is not None:
            LOGGER.error("DIMSE protocol violation: %s", error)
            await self._apply(self._ul.receive_invalid(error, now))
            return
        artim = self._ul.get_timer()
        if artim is not None and now >= artim:
            if self._ul.state is State.STA2:
                LOGGER.warning("No A-ASSOCIATE-RQ within the ACSE timeout: closing the connection")
            await self._apply(self._ul.handle_timer(now))
            return
        net = self.network_timeout
        started = self._send_started
        if net is not None and started is not None and now >= started + net:
            # A write is stuck: the peer stopped reading. No A-ABORT can get
            # through, so close the connection; the writer sees it fail.
            LOGGER.error("Network timeout: the peer stopped reading for %s s; closing", net)
            self._timed_out(TimeoutError(f"the peer did not read for {net} s"))
            self._send_timed_out = True
            await self._close_transport()
            await self._apply(self._ul.transport_closed())
            return
        waiting = [(p.sent_at, mid) for mid, p in self._pending.items() if not p.finished]
        if self.dimse_timeout is not None and waiting:
            sent_at, mid = min(waiting)
            if now >= sent_at + self.dimse_timeout:
                LOGGER.error("DIMSE timeout: no response to message %d; aborting", mid)
                self._timed_out(TimeoutError(f"no response to message {mid} within dimse_timeout"))
                await self._abort_from_timer(now)
                return
        if (
            net is not None
            and artim is None
            and started is None
            and not self._ul.is_closed
            and self._splicing is None  # (the splicing thread watches it)
            and now >= max(self._last_rx, self._last_tx) + net
        ):
            await self._abort_idle(now, "nothing received or sent")

    async def _abort_idle(self, now: float, silence: str) -> None:
        """The network timeout passed with ``silence`` on the connection: abort."""
        net = self.network_timeout
        LOGGER.error("Network timeout: %s for %s s, aborting", silence, net)
        self._timed_out(TimeoutError(f"no data from the peer for {net} s"))
        await self._abort_from_timer(now)

    def _timed_out(self, error: TimeoutError) -> None:
        self._was_aborted = True
        if self._error is None or not isinstance(self._error, TimeoutError):
            self._error = error
        self._fail_pending()

    async def _abort_from_timer(self, now: float) -> None:
        if self._send_lock.locked():
            # A write is in progress and may be stuck on a peer that stopped
            # reading: the watchdog must not wait behind it. Close instead.
            await self._close_stuck()
            return
        if self._ul.state in (State.STA1, State.STA2, State.STA4, State.STA13):
            await self._close_transport()
            await self._apply(self._ul.abort(0, 0, now))
            if not self._ul.is_closed:
                await self._apply(self._ul.transport_closed())
            return
        # The A-ABORT waits for room like any write, and this task is the one
        # that would notice a write stuck on a peer that stopped reading (all
        # it was sent may still sit unread in the buffers): it gets a grace.
        with anyio.move_on_after(_ABORT_GRACE) as grace:
            await self._apply(self._ul.abort(0, 0, now))
        if grace.cancelled_caught:
            LOGGER.error("The A-ABORT could not be sent (the peer is not reading): closing")
            await self._close_stuck()

    async def _close_stuck(self) -> None:
        """Close the connection a write is stuck on (the timer's way out)."""
        self._send_timed_out = True
        await self._close_transport()
        if not self._ul.is_closed:
            await self._apply(self._ul.transport_closed())

    def _spawn(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start ``func(*args)`` in the association's task group, in a cancel
        scope of its own that is cancelled when the association ends."""
        assert self._tg is not None
        self._tg.start_soon(self._scoped, func, args, name=getattr(func, "__qualname__", None))

    async def _scoped(self, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        with anyio.CancelScope() as scope:
            if self._closed.is_set():
                scope.cancel()  # started as the association ended
            self._task_scopes.add(scope)
            task = anyio.get_current_task().id
            self._task_ids.add(task)
            try:
                await func(*args)
            finally:
                self._task_ids.discard(task)
                self._task_scopes.discard(scope)
                if not self._task_scopes and self._tasks_ended is not None:
                    self._tasks_ended.set()

    async def _run(self) -> None:
        """The reader: runs until the Upper Layer is back in Sta1."""
        try:
            await self._read_loop()
        except BaseException:
            # Cancelled (or a bug): abort under a shield, then let it propagate.
            with anyio.CancelScope(shield=True):
                await self._abort_now()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if not self._ul.is_closed:
                    await self._close_transport()
                    self._ul.state = State.STA1
                if self._error is None:
                    self._error = AssociationAborted(2, 0, "the association ended")
                self._fail_pending()
                self._discard_spools()
                await self._spares.close()
                self._established.set()
                self._released.set()
                self._closed.set()
                for scope in list(self._task_scopes):
                    scope.cancel()
                if self._task_scopes:
                    # The end is notified once every handler has returned
                    # (cancelled, its clean-up done), as in pynetdicom.
                    self._tasks_ended = anyio.Event()
                    await self._tasks_ended.wait()
                if self._was_aborted:
                    await self._notify(evt.EVT_ABORTED)
                elif self._was_released:
                    await self._notify(evt.EVT_RELEASED)
                await self._notify(evt.EVT_CONN_CLOSE)

    async def _read_loop(self) -> None:
        self._last_rx = self._clock()
        self._spawn(self._watchdog)
        # Every PDU is to be logged or notified: none may bypass the reader.
        pdus_watched = (
            self._debug or evt.EVT_PDU_RECV in self._bound or evt.EVT_FSM_TRANSITION in self._bound
        )
        # A data set being spooled may go from the socket into its file
        # without the reader (see _splice_rest).
        self._splice_ok = (
            _SPLICE_AVAILABLE and type(self._stream) is AsyncioStream and not pdus_watched
        )
        if isinstance(self._stream, AsyncioStream) and not (
            pdus_watched or evt.EVT_DIMSE_RECV in self._bound
        ):
            self._stream.set_consumer(self._consume)
        if isinstance(self._stream, AsyncioStream):
            # Whole PDUs up to our maximum (an A-ASSOCIATE-RQ may be longer:
            # past the limit a PDU comes in pieces, which the reader joins).
            self._stream.set_frame_limit(6 + self._max_pdu)
        while not self._ul.is_closed:
            try:
                if self._stream_broken:
                    await self._stream.receive()
                    continue
                pdu_type, body = await self._read_pdu()
            except PDUError as exc:
                LOGGER.error("Invalid PDU received: %s", exc)
                self._stream_broken = True
                await self._apply(self._ul.receive_invalid(exc, anyio.current_time()))
                continue
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ) as exc:
                if self._ul.state not in (State.STA1, State.STA13):
                    LOGGER.debug("Transport closed (%s)", type(exc).__name__)
                await self._close_transport()
                await self._apply(self._ul.transport_closed())
                continue
            now = self._last_rx = self._clock()
            if self._debug or evt.EVT_PDU_RECV in self._bound:
                await self._log_received(pdu_type, body)
            # While the reader handles a PDU (it may await: a spool file
            # written, a PDV of the same PDU still to feed), the fast path
            # leaves what arrives to it, so messages are routed in order.
            self._reader_busy = True
            await self._apply(self._ul.receive_pdu(pdu_type, body, now))
            self._reader_busy = False

    def _consume(self, data: memoryview) -> bytes | memoryview:
        """The asyncio fast path: handle whole P-DATA-TF PDUs as they arrive.

        Called synchronously by the transport's protocol with bytes nobody has
        buffered yet. In Sta6 a P-DATA-TF is always DT-2 (a P-DATA
        indication), so complete ones are run through the same table,
        reassembler and routing as the reader would, without waking the
        reader: the waiting task or a worker is the only one woken. Anything
        else (another PDU, a partial one, another state) is returned for the
        reader, in order. Work that needs a task (starting a worker, answering
        a protocol error) goes to the watchdog.
        """
        if (
            self._reader_busy
            or self._rpos < len(self._rbuf)
            or self._ul.state is not State.STA6
            or self._deferred_error
        ):
            return data
        pos, end = 0, len(data)
        now = -1.0
        view = memoryview(data)
        reassembler = self._reassembler
        while end - pos >= 6 and data[pos] == 0x04:
            length = int.from_bytes(data[pos + 2 : pos + 6], "big")
            if pos + 6 + length > end or length < 6 or (self._max_pdu and length > self._max_pdu):
                break
            if (
                reassembler.would_spill(length)
                or len(self._jobs) > self._max_workers
                or self._stream_backlog > _STREAM_BACKLOG
            ):
                # Spooling writes to disk and a backlog waits for the
                # workers: both need the reader, which can await.
                break
            body = view[pos + 6 : pos + 6 + length]
            if not self._ul.note_data_received():
                break  # the reader runs it through the table
            # The shapes nearly every PDU has in one step, else PDV by PDV.
            plain, msg = reassembler.feed_plain(body)
            if not plain:
                try:
                    items = split_p_data(body)
                except PDUError:
                    break  # the reader reports it
            if now < 0:
                now = self._clock()
            pos += 6 + length
            if plain:
                if msg is not None:
                    self._route(msg)
                continue
            for context_id, control_header, pdv_data in items:
                try:
                    msg = reassembler.feed_item(context_id, control_header, pdv_data)
                except PDUError as exc:
                    # Abort from a task; what follows a violation is moot.
                    self._deferred_error = exc
                    self._watch_kick.set()
                    return b""
                if msg is not None:
                    self._route(msg)
        if now >= 0:
            self._last_rx = now
        if self._need_workers:
            self._watch_kick.set()
        return data[pos:] if pos else data

    async def _log_received(self, pdu_type: int, body: bytes | memoryview) -> None:
        try:
            obj = decode(pdu_type, body)
        except PDUError:
            return
        if self._debug:
            LOGGER.debug("<- %s", summary(obj))
        await evt.notify(self._handlers, evt.Event(self, evt.EVT_PDU_RECV, pdu=obj))

    async def _abort_now(self, *, send: bool = True) -> None:
        """Abort under cancellation: send A-ABORT if we can and close at once.

        ``send=False``: close without it (the stream may hold part of a PDU).
        """
        if self._ul.is_closed:
            return
        if self._ul.state is not State.STA13:
            self._was_aborted = True
            if self._error is None:
                self._error = AssociationAborted(0, 0, "the association was aborted locally")
            effects = self._ul.abort(0, 0, anyio.current_time())
            for effect in effects:
                if send and isinstance(effect, SendPDU) and not isinstance(effect.pdu, bytes):
                    with anyio.move_on_after(_ABORT_GRACE):
                        try:
                            await self._write(encode(effect.pdu), effect.pdu)
                        except _TransportError:
                            pass
        await self._close_transport()
        self._ul.transport_closed()

    # ------------------------------------------------------------------
    # Acceptor: negotiation

    async def _run_acceptor(self) -> None:
        """Serve one incoming connection until it closes."""
        self._ul.transport_connected(anyio.current_time())
        await self._notify(evt.EVT_CONN_OPEN)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self._run()

    async def _negotiate(self, rq: AAssociateRQ) -> None:
        ae = self.ae
        self._remote.ae_title = rq.calling_ae_title
        self._remote.primitive = rq
        self._remote._absorb(rq.user_information)
        LOGGER.info(
            "Association requested by %r for %r (%d contexts)",
            rq.calling_ae_title,
            rq.called_ae_title,
            len(rq.presentation_contexts),
        )
        await self._notify(evt.EVT_REQUESTED)
        now = anyio.current_time

        reject: AAssociateRJ | None = None
        if ae.require_calling_aet and rq.calling_ae_title not in [
            t.strip() for t in ae.require_calling_aet
        ]:
            reject = AAssociateRJ(result=1, source=1, reason=3)
        if ae.require_called_aet and rq.called_ae_title != self._local.ae_title.strip():
            reject = AAssociateRJ(result=1, source=1, reason=7)
        if rq.application_context_name != "1.2.840.10008.3.1.1.1":
            reject = AAssociateRJ(result=1, source=1, reason=2)

        reply_items: list[UserItem] = []
        identity = self._remote.user_identity
        if reject is None and identity is not None:
            ok, response = await self._check_user_identity(identity)
            if not ok:
                LOGGER.info("User identity failed verification")
                reject = AAssociateRJ(result=2, source=2, reason=1)
            elif identity.positive_response_requested:
                if identity.user_identity_type in (3, 4, 5):
                    if response is not None:
                        reply_items.append(UserIdentityNegotiation(server_response=response))
                else:
                    reply_items.append(UserIdentityNegotiation(server_response=b""))

        if reject is None and self.server is not None and not self.server._admit(self):
            reject = AAssociateRJ(result=2, source=3, reason=2)

        if reject is not None:
            self._rejection = AssociationRejected(reject.result, reject.source, reject.reason)
            LOGGER.info("Rejecting association: %s", self._rejection)
            await self._apply(self._ul.reject(reject, now()))
            await self._notify(evt.EVT_REJECTED)
            return

        # Extended negotiation (answers from the intervention handlers).
        reply_items.extend(await self._check_sop_extended())
        await self._check_sop_common()
        async_reply = await self._check_async_ops()
        if async_reply is not None:
            reply_items.append(async_reply)

        roles = {
            uid: (bool(item.scu_role), bool(item.scp_role))
            for uid, item in self._remote.role_selection.items()
        }
        supported = self._supported_contexts()
        results, role_replies = negotiate_as_acceptor(rq.presentation_contexts, supported, roles)
        for cx in results:
            if cx.result == 0 and cx.context_id is not None:
                self._contexts[cx.context_id] = cx
            else:
                self._rejected.append(cx)
        self._remote_max_pdu = self._remote.maximum_length

        user_info: list[UserItem] = [
            MaximumLengthNotification(maximum_length_received=self._max_pdu),
            ImplementationClassUIDNotification(
                implementation_class_uid=self._local.implementation_class_uid
            ),
        ]
        user_info.extend(role_replies)
        if async_reply is not None:
            user_info.append(async_reply)
            reply_items.remove(async_reply)
        if self._local.implementation_version_name:
            user_info.append(
                ImplementationVersionNameNotification(
                    implementation_version_name=self._local.implementation_version_name
                )
            )
        user_info.extend(reply_items)
        ac = AAssociateAC(
            called_ae_title=rq.called_ae_title,
            calling_ae_title=rq.calling_ae_title,
            presentation_contexts=to_ac_items(results),
            user_information=tuple(user_info),
            titles=rq.titles,  # returned as received (PS3.8 Table 9-17)
        )
        self._local.primitive = ac
        self._local._absorb(user_info[2:])
        await self._apply(self._ul.accept(ac))
        if self._ul.state is State.STA6:
            LOGGER.info(
                "Association accepted: %d of %d contexts",
                len(self._contexts),
                len(rq.presentation_contexts),
            )
            await self._notify(evt.EVT_ACCEPTED)
            await self._notify(evt.EVT_ESTABLISHED)
            self._established.set()

    def _supported_contexts(self) -> list[PresentationContext]:
        if self.server is not None and self.server.contexts is not None:
            return list(self.server.contexts)
        return list(self.ae.supported_contexts)

    async def _intervene(self, event: evt.EventType, **attrs: Any) -> tuple[bool, Any]:
        """Call the handler bound to an intervention event: ``(bound, result)``."""
        bound = self._bound.get(event)
        if not bound:
            return False, None
        handler, args = bound[0]
        return True, await evt.call_handler(handler, evt.Event(self, event, **attrs), args)

    async def _check_user_identity(
        self, item: UserIdentityNegotiation
    ) -> tuple[bool, bytes | None]:
        try:
            bound, result = await self._intervene(
                evt.EVT_USER_ID,
                user_id_type=item.user_identity_type,
                primary_field=item.primary_field,
                secondary_field=item.secondary_field,
            )
        except Exception:
            LOGGER.exception("Exception in the handler bound to EVT_USER_ID")
            return False, None
        if not bound:
            return True, None
        ok, response = result
        return bool(ok), response

    async def _check_sop_extended(self) -> list[UserItem]:
        app_info = dict(self._remote.sop_class_extended)
        if not app_info:
            return []
        try:
            bound, result = await self._intervene(evt.EVT_SOP_EXTENDED, app_info=app_info)
        except Exception:
            LOGGER.exception("Exception in the handler bound to EVT_SOP_EXTENDED")
            return []
        if not bound or not result:
            return []
        return [
            SOPClassExtendedNegotiation(
                sop_class_uid=_peer_uid(uid), service_class_application_information=info
            )
            for uid, info in result.items()
            if info is not None
        ]

    async def _check_sop_common(self) -> None:
        items = dict(self._remote.sop_class_common_extended)
        if not items:
            return
        try:
            bound, result = await self._intervene(evt.EVT_SOP_COMMON, items=items)
        except Exception:
            LOGGER.exception("Exception in the handler bound to EVT_SOP_COMMON")
            return
        self._local.sop_class_common_extended = dict(result or {}) if bound else {}

    async def _check_async_ops(self) -> AsynchronousOperationsWindowNegotiation | None:
        proposal = self._remote.asynchronous_operations
        if proposal == (1, 1) and not any(
            isinstance(i, AsynchronousOperationsWindowNegotiation)
            for i in self._remote.primitive.user_information  # type: ignore[union-attr]
        ):
            return None
        invoked, performed = proposal
        try:
            bound, result = await self._intervene(
                evt.EVT_ASYNC_OPS, invoked=invoked, performed=performed
            )
        except Exception:
            LOGGER.exception("Exception in the handler bound to EVT_ASYNC_OPS")
            bound, result = True, (1, 1)
        if bound:
            our_invoked, our_performed = (int(v) for v in result)
        else:
            # We invoke at most what the requestor performs, and perform at
            # most what it invokes (PS3.7 D.3.3.3), within our own limit.
            our_invoked = _cap(performed)
            our_performed = _cap(invoked)
        self._set_windows(invoke=our_invoked, perform=our_performed)
        return AsynchronousOperationsWindowNegotiation(
            maximum_number_operations_invoked=our_invoked,
            maximum_number_operations_performed=our_performed,
        )

    def _set_windows(self, *, invoke: int, perform: int) -> None:
        """The negotiated windows: requests we may have outstanding, and
        requests we serve at once (0: unlimited, capped at MAX_ASYNC_WINDOW)."""
        self._invoke_size = invoke
        self._invoke_window = _window(invoke)
        self._max_workers = MAX_ASYNC_WINDOW if perform == 0 else perform

    # ------------------------------------------------------------------
    # Requestor: the request and the answer

    def _build_request(
        self,
        called_ae_title: str,
        contexts: Sequence[PresentationContext],
        ext_neg: Sequence[UserItem],
    ) -> AAssociateRQ:
        self._acceptor_title = called_ae_title
        self._remote.ae_title = called_ae_title
        roles = {
            UID(str(i.sop_class_uid)): i
            for i in ext_neg
            if isinstance(i, SCP_SCU_RoleSelectionNegotiation)
        }
        requested: list[PresentationContext] = []
        items: list[PresentationContextRQ] = []
        for n, cx in enumerate(contexts):
            cid = 2 * n + 1
            if cid > 255:
                raise ValueError("at most 128 presentation contexts may be requested")
            role = roles.get(cx.abstract_syntax)
            requested.append(
                PresentationContext(
                    abstract_syntax=cx.abstract_syntax,
                    transfer_syntax=list(cx.transfer_syntax),
                    context_id=cid,
                    scu_role=None if role is None else bool(role.scu_role),
                    scp_role=None if role is None else bool(role.scp_role),
                )
            )
            items.append(
                PresentationContextRQ(
                    context_id=cid,
                    abstract_syntax=cx.abstract_syntax,
                    transfer_syntaxes=tuple(cx.transfer_syntax),
                )
            )
        self._requested = requested
        user_info: list[UserItem] = [
            MaximumLengthNotification(maximum_length_received=self._max_pdu),
            ImplementationClassUIDNotification(
                implementation_class_uid=self._local.implementation_class_uid
            ),
        ]
        for item in ext_neg:
            if isinstance(item, AsynchronousOperationsWindowNegotiation):
                user_info.append(item)
        user_info.extend(roles.values())
        if self._local.implementation_version_name:
            user_info.append(
                ImplementationVersionNameNotification(
                    implementation_version_name=self._local.implementation_version_name
                )
            )
        for item in ext_neg:
            if isinstance(
                item,
                SOPClassExtendedNegotiation
                | SOPClassCommonExtendedNegotiation
                | UserIdentityNegotiation,
            ):
                user_info.append(item)
            elif not isinstance(
                item, AsynchronousOperationsWindowNegotiation | SCP_SCU_RoleSelectionNegotiation
            ):
                raise TypeError(f"{type(item).__name__} cannot be sent in ext_neg")
        rq = AAssociateRQ(
            called_ae_title=called_ae_title,
            calling_ae_title=self._local.ae_title,
            presentation_contexts=tuple(items),
            user_information=tuple(user_info),
        )
        self._local.primitive = rq
        self._local._absorb(user_info[2:])
        return rq

    async def _request(self, rq: AAssociateRQ) -> None:
        """Send the A-ASSOCIATE-RQ and wait for the answer (ACSE timeout)."""
        self._ul.request_association(rq)
        await self._notify(evt.EVT_CONN_OPEN)
        await self._apply(self._ul.transport_connected(anyio.current_time()))
        await self._notify(evt.EVT_REQUESTED)
        with anyio.move_on_after(self.acse_timeout) as scope:
            await self._established.wait()
        if scope.cancelled_caught:
            LOGGER.error("ACSE timeout waiting for the association response")
            self._error = TimeoutError("no answer to the association request within acse_timeout")
            await self.abort()
            raise TimeoutError("no answer to the association request within acse_timeout")
        if self._rejection is not None:
            raise self._rejection
        if self._ul.state is not State.STA6:
            raise self._error or AssociationAborted(2, 0, "association failed")

    async def _on_accepted(self, ac: AAssociateAC) -> None:
        self._remote.primitive = ac
        self._remote._absorb(ac.user_information)
        roles = {
            uid: (bool(item.scu_role), bool(item.scp_role))
            for uid, item in self._remote.role_selection.items()
        }
        for cx in negotiate_as_requestor(self._requested, ac.presentation_contexts, roles):
            if cx.result == 0 and cx.context_id is not None:
                self._contexts[cx.context_id] = cx
            else:
                self._rejected.append(cx)
        self._remote_max_pdu = self._remote.maximum_length
        # Our requests in flight: at most what the acceptor performs.
        if any(isinstance(i, AsynchronousOperationsWindowNegotiation) for i in ac.user_information):
            invoked, performed = self._remote.asynchronous_operations
            self._set_windows(invoke=performed, perform=invoked)
        LOGGER.info("Association accepted: %d contexts accepted", len(self._contexts))
        await self._notify(evt.EVT_ACCEPTED)
        await self._notify(evt.EVT_ESTABLISHED)
        self._established.set()

    _remote_max_pdu = 0
    _requested: list[PresentationContext] = []

    # ------------------------------------------------------------------
    # Release and abort

    async def release(self) -> None:
        """Release the association (A-RELEASE), waiting up to ``acse_timeout``.

        Our requests still in flight are answered first. On a timeout the
        association is aborted and :class:`TimeoutError` raised.
        """
        if self._ul.state is not State.STA6:
            if self._ul.state in (State.STA7, State.STA9, State.STA10, State.STA11, State.STA12):
                await self._released.wait()
            return
        await self._cancel_streams()
        if self._ul.state is not State.STA6:
            return
        LOGGER.info("Releasing association")
        await self._apply(self._ul.release())
        with anyio.move_on_after(self.acse_timeout) as scope:
            await self._released.wait()
        if scope.cancelled_caught:
            LOGGER.error("ACSE timeout waiting for the release response; aborting")
            await self.abort()
            raise TimeoutError("no A-RELEASE-RP within acse_timeout")
        # AR-3 closes the transport; wait for the reader to finish.
        await self._closed.wait()

    async def abort(self) -> None:
        """Abort the association (A-ABORT) and wait for the connection to close.

        The peer is expected to close the connection on receiving the A-ABORT;
        if it does not, the ARTIM timer (``acse_timeout``) closes it.
        """
        await self._abort(grace=None)

    async def _abort(self, grace: float | None) -> None:
        """Send A-ABORT (unless already aborting) and wait for the close.

        With ``grace``, wait at most that long for the peer to close before
        closing ourselves, as if the ARTIM timer had expired: used when the
        user leaves ``async with`` by an error and must get it back promptly.
        """
        with anyio.CancelScope(shield=True):
            if not self._ended():
                self._was_aborted = True
                if self._error is None:
                    self._error = AssociationAborted(0, 0, "the association was aborted locally")
                LOGGER.info("Aborting association")
                await self._apply(self._ul.abort(0, 0, anyio.current_time()))
                self._fail_pending()
            if grace is None:
                await self._closed.wait()
                return
            with anyio.move_on_after(grace):
                await self._closed.wait()
            if not self._closed.is_set():
                await self._close_transport()
                await self._closed.wait()

    async def _on_release_indication(self, collision: bool) -> None:
        self._release_requested = True
        if collision:
            if self._ul.state is State.STA9:
                # Requestor side of a collision: answer at once (AR-9).
                await self._apply(self._ul.release_response(anyio.current_time()))
            return  # acceptor side (Sta10) waits for the A-RELEASE-RP first
        if not self._inflight:
            await self._answer_release()
        else:
            self._spawn(self._answer_release)

    async def _answer_release(self) -> None:
        """Answer a peer's A-RELEASE-RQ once our own operations are done (AR-4)."""
        while self._inflight:
            self._idle = anyio.Event()
            await self._idle.wait()
        if self._ul.state is State.STA8:
            self._mark_released()
            await self._apply(self._ul.release_response(anyio.current_time()))

    # ------------------------------------------------------------------
    # DIMSE

    async def _on_data(self, ind: DataIndication) -> None:
        reassembler = self._reassembler
        for pdv in ind.pdu.pdvs:
            try:
                msg = reassembler.feed(pdv)
            except PDUError as exc:
                LOGGER.error("DIMSE protocol violation: %s", exc)
                await self._apply(self._ul.receive_invalid(exc, anyio.current_time()))
                return
            if reassembler.spilled:
                await self._spill(msg)
            if msg is not None:
                await self._take_message(msg)
        if (
            reassembler.spilling
            and self._splice_ok
            and self._spool is not None
            and self._spool.fd is not None
            and self._ul.state is State.STA6
            and reassembler.current is not self._no_splice_for
        ):
            # Between two PDUs of a data set being spooled: the rest of it
            # can go from the socket straight into the file (see _splice).
            msg = await self._splice_rest(self._spool)
            if msg is not None:
                await self._take_message(msg)

    async def _take_message(self, msg: Message) -> None:
        """Act on a message received whole; wait while the workers are behind."""
        await self._on_message(msg)
        # Backpressure: a peer that sends more requests than the
        # window lets us perform waits (TCP) until workers catch up.
        # Only while DIMSE messages flow: once aborting, the reader
        # must go on to see the connection close.
        while len(self._jobs) > self._max_workers and self._ul.state in _FLOWING:
            drained = self._drained = anyio.Event()
            await drained.wait()
        # ... and so does one whose responses nobody consumes yet.
        while self._stream_backlog > _STREAM_BACKLOG and self._ul.state in _FLOWING:
            drained = self._backlog_drained = anyio.Event()
            await drained.wait()

    def _stop_splice(self) -> None:
        """Stop the splice job that has the connection, if one has."""
        if self._splicing is not None:
            self._splicing.stop()

    async def _splice_rest(self, spool: Spool) -> Message | None:
        """Receive the rest of the data set being spooled in a worker thread,
        from the socket straight into ``spool``'s file (see :mod:`._splice`);
        the message if its last fragment came that way.

        The thread has the connection until then, or until a PDU it does not
        take (handed back to this reader, which parses it as always). The
        network timeout is its own to watch meanwhile. A close or an abort
        stops it; so does a cancellation (the thread then lets go of its
        copies of the descriptors on its own, at once).
        """
        stream = self._stream
        reassembler = self._reassembler
        current = reassembler.current
        fd = spool.fd
        assert isinstance(stream, AsyncioStream) and current is not None and fd is not None
        limiter = _splice_limiter(stream.loop)
        if limiter.available_tokens < 1:
            return None  # as many splice as may: this one is read the usual way
        unread = memoryview(self._rbuf)[self._rpos :]
        detached = stream.detach_reading(self._stop_splice)
        if detached is None:
            return None  # the connection is closing: the reader finds out
        sock_fd, held = detached
        self._rbuf, self._rpos = b"", 0
        first, reassembler.spilled = reassembler.spilled, []
        try:
            job = SpliceJob(
                sock_fd,
                fd,
                first=first,
                prefix=[unread, *held],
                context_id=current.context_id,
                max_pdu=self._max_pdu,
                timeout=self.network_timeout,
                call=REUSED_WRITE_CALL if spool.reused else WRITE_CALL,
            )
        except OSError as exc:  # out of descriptors, say: read on as usual
            LOGGER.debug("Not splicing the data set: %s", exc)
            reassembler.spilled = first
            stream.attach_reading(b"".join([unread, *held]))
            self._splice_ok = False
            return None
        self._splicing = job
        try:
            await anyio.to_thread.run_sync(job.run, abandon_on_cancel=True, limiter=limiter)
        except BaseException:
            job.stop()
            job.close()
            raise
        finally:
            self._splicing = None
        now = self._last_rx = self._clock()
        if self.network_timeout is not None:
            # The watchdog left the network timeout to the thread: armed again.
            self._kick(now + self.network_timeout)
        received = job.received + sum(map(len, first))
        spool.size += received
        if job.file_error is not None and spool.error is None:
            spool.error = job.file_error
        outcome = job.outcome
        LOGGER.debug(
            "Spliced %d bytes of %s's data set into %s (%s)",
            received,
            current.name,
            spool.path,
            outcome.value,
        )
        if outcome is Outcome.STOPPED:
            # Closed or aborted meanwhile: what comes now (until the peer
            # closes, in Sta13) is not parsed; the reader drains it.
            self._stream_broken = True
            stream.attach_reading(b"")
            return None
        if outcome is Outcome.TIMED_OUT:
            self._stream_broken = True  # (mid-PDU: nothing more is parsed)
            stream.attach_reading(b"")
            await self._abort_idle(now, "nothing received")
            return None
        if outcome is Outcome.CLOSED and job.socket_error is not None:
            LOGGER.debug("Connection failed while splicing: %s", job.socket_error)
        if not job.aligned:
            self._stream_broken = True  # the connection ended mid-PDU
        stream.attach_reading(job.leftover)
        msg = reassembler.received_elsewhere(job.received, outcome is Outcome.LAST)
        if outcome is Outcome.HANDED_BACK and msg is None:
            # Whatever came (it may be a protocol violation, or a sender that
            # packs PDUs otherwise), the rest of this data set is read the
            # usual way.
            self._no_splice_for = current
        if msg is not None:
            await spool.finish()
            msg.spool = spool
            self._spool = None
        return msg

    async def _spill(self, msg: Message | None) -> None:
        """Write the fragments the reassembler spilled to the message's spool file."""
        reassembler = self._reassembler
        spool = self._spool
        if spool is None:
            current = msg if msg is not None else reassembler.current
            assert current is not None
            cx = self._contexts[current.context_id]
            spool = self._spool = Spool()
            problem = (
                (_check_request(current) or self._context_refusal(current))
                if current.command_field == CommandField.C_STORE_RQ
                else "only a C-STORE-RQ data set is spooled"
            )
            if problem is not None:
                # It will be refused (see _serve) or fail (see _route) before
                # anything reads its data set, and its UIDs may not even
                # encode: none of it is kept, in memory or on disk.
                spool.refuse(str(problem))
                LOGGER.debug("Not keeping the data set of %s: %s", current.name, problem)
            else:
                command = current.command
                header = part10_header_for(
                    command.get("AffectedSOPClassUID"),
                    command.get("AffectedSOPInstanceUID"),
                    cx.transfer_syntax[0],
                )
                await spool.open(header, self.ae.spool_directory, self._spares)
                LOGGER.debug("Spooling %s data set to %s", current.name, spool.path)
        chunks = reassembler.spilled
        if spool.error is not None:
            reassembler.spilled = []  # nothing is written: nothing is held either
            chunks = []
        elif msg is None and sum(map(len, chunks)) < WRITE_BATCH:
            return  # batch small fragments into fewer worker-thread writes
        reassembler.spilled = []
        await spool.write(chunks)
        if msg is not None:
            await spool.finish()
            msg.spool = spool
            self._spool = None

    def _discard_spools(self) -> None:
        """Delete every spool file of a message that will not be served."""
        if self._spool is not None:
            self._spool.discard()
            self._spool = None
        for msg in self._jobs:
            if isinstance(msg.spool, Spool):
                msg.spool.discard()

    async def _on_message(self, msg: Message) -> None:
        if self._debug:
            LOGGER.debug("<- %s (context %d)", msg.name, msg.context_id)
        if evt.EVT_DIMSE_RECV in self._bound:
            await evt.notify(self._handlers, evt.Event(self, evt.EVT_DIMSE_RECV, message=msg))
        self._route(msg)
        if self._need_workers:
            self._start_workers()

    def _route(self, msg: Message) -> None:
        """Hand a complete message on, synchronously: a response to the task
        waiting on its Message ID, a request to the workers."""
        command = msg.command
        if command["CommandField"] & 0x8000:
            # Message ID 0 is a valid ID (a caller may choose it): no `or`.
            pending = self._pending.get(command.get("MessageIDBeingRespondedTo", -1))
            if pending is None or pending.finished:
                LOGGER.warning("Dropping %s for unknown message ID %s", msg.name, msg.message_id)
                return
            problem = None
            if "Status" not in command:
                # PS3.7: every response carries a Status. Without one the
                # operation cannot be judged: the caller gets a typed error.
                problem = f"{msg.name} without a Status (0000,0900)"
            elif msg.spooled:
                # Only a C-STORE-RQ data set is spooled; this one was not kept.
                problem = (
                    f"{msg.name}: its data set of {msg.data_size} bytes is over "
                    f"ae.spool_threshold ({self.ae.spool_threshold}) and was not kept"
                )
            if problem is not None:
                LOGGER.error("Message %s: %s", msg.message_id, problem)
                pending.error = DIMSEError(problem)
                pending.finished = True
                pending.done.set()
                return
            queue = pending.queue
            if queue is None:
                pending.response = msg
                pending.finished = True
                chain = pending.chain
                if chain is not None:
                    pending.chain = None
                    chain()
                # The operation is over: its place goes now, not when its
                # waiter next runs (which may be late: see send_c_stores).
                self._give_back_place(pending)
                pending.done.set()
                return
            queue.append(msg)
            self._stream_backlog += 1
            pending.sent_at = self._last_rx  # the DIMSE timeout runs between responses
            if command.get("Status") not in _PENDING:
                pending.finished = True
            pending.done.set()
            return
        if command["CommandField"] == CommandField.C_CANCEL_RQ:
            # PS3.7 9.3.2.3: cancel the operation it names, if we still serve it.
            event = self._serving.get(msg.command.get("MessageIDBeingRespondedTo", -1))
            if event is not None:
                LOGGER.info("C-CANCEL received for message %s", event.message_id)
                event.is_cancelled = True
            return
        if not self._jobs and not self._inflight and self._serve_inline(msg):
            return
        self._inflight += 1
        self._jobs.append(msg)
        waiting = len(self._jobs) - self._idle_workers
        if waiting > 0 and self._workers + self._need_workers < self._max_workers:
            # Workers are started as the window fills and then kept: starting
            # a task costs far more than waking one.
            self._need_workers += 1
        self._jobs_ready.set()

    def _start_workers(self) -> None:
        while self._need_workers:
            self._need_workers -= 1
            self._workers += 1
            self._spawn(self._worker)

    async def _worker(self) -> None:
        """Serve received requests, one at a time, until the association ends.

        There are at most as many workers as the negotiated window of
        operations we perform (1 unless the peer asked for more), so requests
        beyond the window wait their turn in order, and the reader is never
        the one running a handler.
        """
        jobs = self._jobs
        while True:
            while jobs:
                msg = jobs.popleft()
                drained = self._drained
                if drained is not None and len(jobs) <= self._max_workers:
                    self._drained = None
                    drained.set()
                if self._ended():
                    self._drop(msg)  # no answer could be sent: no handler is called
                    continue
                await self._serve(msg)
            ready = self._jobs_ready
            self._idle_workers += 1
            try:
                await ready.wait()
            finally:
                self._idle_workers -= 1
            if self._jobs_ready is ready:
                self._jobs_ready = anyio.Event()

    def _ended(self) -> bool:
        """True once nothing more can be sent here (Sta1, or Sta13 after an A-ABORT)."""
        state = self._ul.state
        return state is State.STA1 or state is State.STA13

    def _drop(self, msg: Message, result: Any = None) -> None:
        """Leave a received request unserved (the association has ended);
        ``result``: what its plain handler returned, closed if a coroutine."""
        LOGGER.debug("Not serving %s %s: the association has ended", msg.name, msg.message_id)
        if inspect.iscoroutine(result):
            result.close()
        if isinstance(msg.spool, Spool):
            msg.spool.discard()
        self._request_done()

    async def _serve(self, msg: Message) -> None:
        served = False
        try:
            problem = _check_request(msg)
            if problem is not None:
                await self._invalid_request(msg, problem)
            elif msg.spooled and msg.command_field != CommandField.C_STORE_RQ:
                LOGGER.error(
                    "Refusing %s: its data set of %d bytes is over ae.spool_threshold (%d)",
                    msg.name,
                    msg.data_size,
                    self.ae.spool_threshold,
                )
                status = _TOO_LARGE_STATUS.get(msg.command_field, 0x0213)
                await self._refuse(msg, status, comment="data set too large")
            elif (refusal := self._context_refusal(msg)) is not None:
                LOGGER.error("Refusing %s: %s", msg.name, refusal)
                await self._refuse(msg, 0x0122, comment=refusal[:64])
            elif (mid := msg.message_id or 0) in self._serving_ids:
                # Another request of this ID is being served (an asynchronous
                # operations window lets several run): duplicate invocation.
                LOGGER.error("Refusing %s: message ID %s is in use", msg.name, mid)
                await self._refuse(msg, 0x0210, comment="duplicate invocation")
            else:
                self._serving_ids.add(mid)
                served = True  # the service owns the message's spool file, if any
                try:
                    await self._serve_request(msg)
                finally:
                    self._serving_ids.discard(mid)
        except (DicomNetworkError, _TransportError, TimeoutError) as exc:
            # The association ended (aborted, timed out) before we could answer.
            LOGGER.debug("Could not answer %s: %s", msg.name, exc)
        finally:
            spool = msg.spool
            if not served and isinstance(spool, Spool):
                with anyio.CancelScope(shield=True):
                    await self._delete_spool(spool)  # refused: its data set is not needed
            self._request_done()

    async def _serve_request(self, msg: Message) -> None:
        """Serve a checked request by its Command Field."""
        field = msg.command_field
        if field == CommandField.C_STORE_RQ:
            await self._serve_c_store(msg)
        elif field == CommandField.C_ECHO_RQ:
            await self._serve_c_echo(msg)
        elif field == CommandField.C_FIND_RQ:
            await self._serve_c_find(msg)
        elif field in (CommandField.C_GET_RQ, CommandField.C_MOVE_RQ):
            await self._serve_retrieve(msg)
        elif field in N_EVENTS:
            await self._serve_n(msg, N_EVENTS[field])
        else:
            await self._refuse(msg, 0x0211)

    def _request_done(self) -> None:
        """One request fewer in flight; wake an A-RELEASE-RQ waiting for none (AR-4)."""
        self._inflight -= 1
        if self._inflight == 0 and self._idle is not None:
            self._idle.set()

    def _context_refusal(self, msg: Message) -> str | None:
        """Why a request cannot be served on its presentation context, if so.

        The context must give us the SCP role for its SOP class (an
        N-EVENT-REPORT comes from the SOP class's SCP: either role will do),
        and the request must be for that SOP class (PS3.4 Q.2.1.1.1: the
        abstract syntax names the SOP class), or for one in it when the
        context is for a Meta SOP Class (Print Management). Answered 0x0122,
        Refused: SOP Class not supported (PS3.7 C.5.20), as pynetdicom does.
        """
        cx = self._contexts[msg.context_id]
        command = msg.command
        if not cx.as_scp and msg.command_field != CommandField.N_EVENT_REPORT_RQ:
            return f"no SCP role on context {msg.context_id}"
        sop_class = command.get("AffectedSOPClassUID") or command.get("RequestedSOPClassUID")
        if sop_class != cx.abstract_syntax and cx.abstract_syntax not in _META_SOP_CLASSES:
            return f"{sop_class} is not the SOP class of context {msg.context_id}"
        return None

    async def _refuse(self, msg: Message, status: int, comment: str | None = None) -> None:
        """Answer a request we do not serve with a failure status."""
        if comment is None:
            LOGGER.warning("%s is not supported: answering 0x%04X", msg.name, status)
        fields = {
            "CommandField": msg.command_field | 0x8000,
            "MessageIDBeingRespondedTo": msg.message_id,
            "CommandDataSetType": NO_DATASET,
            "Status": status,
            "ErrorComment": None if comment is None else error_comment(comment),
        }
        sop = msg.command.get("AffectedSOPClassUID") or msg.command.get("RequestedSOPClassUID")
        if isinstance(sop, str) and is_plain_uid(sop):
            # (optional in a response: one that would not encode is left out)
            fields["AffectedSOPClassUID"] = sop
        await self._send_message(msg.context_id, encode_command(fields), None)

    async def _invalid_request(self, msg: Message, problem: DIMSEError) -> None:
        """A request whose command set breaks PS3.7: answer a failure, or abort.

        Without a usable Message ID there is nothing to answer: the
        association is aborted (A-ABORT, service-provider, invalid parameter).
        """
        LOGGER.error("Invalid request: %s", problem)
        if isinstance(msg.message_id, int) and 0 <= msg.message_id <= 0xFFFF:
            known = msg.command_field in MESSAGE_SPECS
            status = _INVALID_STATUS.get(msg.command_field, 0x0110) if known else 0x0211
            await self._refuse(msg, status, comment=str(problem)[:64])
            return
        await self._apply(
            self._ul.receive_invalid(
                PDUError(f"unanswerable request: {problem}", reason=6), anyio.current_time()
            )
        )

    def _context_tuple(self, context_id: int) -> ContextTuple:
        """``event.context`` of an accepted context (made once: contexts do not
        change once negotiated, and the tuple is immutable)."""
        found = self._context_tuples.get(context_id)
        if found is None:
            found = self._context_tuples[context_id] = self._contexts[context_id].as_tuple()
        return found

    def _event_for(self, kind: evt.EventType, msg: Message, **attrs: Any) -> evt.Event:
        return evt.Event(
            self,
            kind,
            context=self._context_tuple(msg.context_id),
            _raw_request=msg.raw_command,
            _command=msg.command,
            message_id=msg.command.get("MessageID"),  # a request's
            **attrs,
        )

    def _response_fields(self, msg: Message) -> dict[str, Any]:
        return {
            "CommandField": msg.command_field | 0x8000,
            "MessageIDBeingRespondedTo": msg.message_id,
            "AffectedSOPClassUID": msg.command.get("AffectedSOPClassUID"),
            "CommandDataSetType": NO_DATASET,
        }

    async def _start_handler(
        self, kind: evt.EventType, msg: Message, failure: int
    ) -> tuple[evt.Event, _HandlerItems | None, int]:
        """Call the handler of a C-FIND/C-GET/C-MOVE: its items, or a failure status."""
        cx = self._contexts[msg.context_id]
        event = self._event_for(
            kind,
            msg,
            _encoded=msg.data,
            _transfer_syntax=cx.transfer_syntax[0],
            move_destination=msg.command.get("MoveDestination"),
        )
        bound = self._bound.get(kind)
        if not bound:
            LOGGER.warning("No handler is bound to %s: answering 0x%04X", kind.name, failure)
            return event, None, failure
        handler, args = bound[0]
        assert msg.message_id is not None
        self._serving[msg.message_id] = event
        try:
            result = await evt.call_handler(handler, event, args)
            return event, _HandlerItems(result), 0
        except DIMSEError as exc:
            LOGGER.error("%s: the identifier cannot be decoded (%s)", kind.name, exc)
            return event, None, failure - 1
        except Exception:
            LOGGER.exception("Exception in the handler bound to %s", kind.name)
            return event, None, failure

    async def _serve_n(
        self, msg: Message, kind: evt.EventType, called: tuple[Any, bool] | None = None
    ) -> None:
        """Perform an N request (PS3.7 10.1): its ``EVT_N_*`` handler's answer.

        Any accepted context will do, for either role: which operations a SOP
        class has is the handler's business (it answers 0x0211 or 0x0112 for
        those it does not perform). No handler, or one that raises: 0x0110.
        ``called``: what :meth:`_n_call` gave, when the handler was called
        already (:meth:`_serve_inline`).
        """
        ts = self._contexts[msg.context_id].transfer_syntax[0]
        result, failed = self._n_call(msg, kind, ts, inline=False) if called is None else called
        if not failed and inspect.isawaitable(result):
            try:
                result = await result
            except Exception:
                LOGGER.exception("Exception in the handler bound to %s", kind.name)
                result, failed = None, True
        command, data = response_for(msg.command, kind.name, result, ts, failed=failed)
        await self._send_message(msg.context_id, command, data)

    def _n_call(
        self, msg: Message, kind: evt.EventType, ts: UID, *, inline: bool
    ) -> tuple[Any, bool]:
        """Call the ``EVT_N_*`` handler: ``(what it returned, failed)``; what
        it returned may be awaitable. ``ts``: the context's transfer syntax.
        ``inline``: called where no task runs."""
        bound = self._bound.get(kind)
        if not bound:
            LOGGER.warning("No handler is bound to %s: answering 0x0110", kind.name)
            return None, True
        handler, args = bound[0]
        event = self._event_for(kind, msg, _encoded=msg.data, _transfer_syntax=ts)
        try:
            return (_call_plain(handler, event, args) if inline else handler(event, *args)), False
        except Exception:
            LOGGER.exception("Exception in the handler bound to %s", kind.name)
            return None, True

    def _serve_n_inline(self, msg: Message, kind: evt.EventType) -> None:
        """:meth:`_serve_inline` for an N request (its handler is absent or plain)."""
        ts = self._contexts[msg.context_id].transfer_syntax[0]
        result, failed = self._n_call(msg, kind, ts, inline=True)
        if failed or not inspect.isawaitable(result):
            command, data = response_for(msg.command, kind.name, result, ts, failed=failed)
            # Nothing awaited since _can_send_now(): a plain handler cannot.
            if self._send_now(msg.context_id, command, data, checked=True):
                return
        # An awaitable to finish, or a response too big for one PDU.
        self._inflight += 1
        self._spawn(self._finish_n, msg, kind, (result, failed))

    async def _finish_n(self, msg: Message, kind: evt.EventType, called: tuple[Any, bool]) -> None:
        if self._ended():  # started after the association ended: nothing to answer
            self._drop(msg, called[0])
            return
        try:
            await self._serve_n(msg, kind, called)
        except (DicomNetworkError, _TransportError, TimeoutError) as exc:
            LOGGER.debug("Could not answer %s: %s", msg.name, exc)
        finally:
            self._request_done()

    async def _serve_c_find(self, msg: Message) -> None:
        """Query/Retrieve FIND SCP (PS3.4 C.4.1): a response per item the handler yields.

        Responses go out as the handler yields them (a slow peer slows the
        handler). A C-CANCEL stops pulling from the handler, which is closed,
        and is answered 0xFE00. Handler failures: 0xC311 (exception, or no
        handler), 0xC310 (the identifier does not decode), 0xC312 (a yielded
        item or identifier that cannot be sent).
        """
        cx = self._contexts[msg.context_id]
        base = self._response_fields(msg)
        event, items, failed = await self._start_handler(evt.EVT_C_FIND, msg, 0xC311)
        try:
            if items is None:
                final: dict[str, Any] = {"Status": failed}
            else:
                final = await self._find_responses(msg, event, items, base, cx.transfer_syntax[0])
        finally:
            if items is not None:
                await items.aclose()
            self._serving.pop(msg.message_id or 0, None)
        await self._send_message(msg.context_id, encode_command({**base, **final}), None)

    async def _find_responses(
        self, msg: Message, event: evt.Event, items: _HandlerItems, base: dict[str, Any], ts: UID
    ) -> dict[str, Any]:
        """Send the pending C-FIND responses; return the final response's fields.

        Writes seldom block (the transport buffers them), so the loop yields
        to the event loop every few responses: other associations, and the
        reader that would see a C-CANCEL, get their turn.
        """
        sent = 0
        commands: dict[int, bytes] = {}  # the pending responses' command sets, by Status
        while True:
            if event.is_cancelled:
                return {"Status": 0xFE00}
            sent += 1
            if not sent % _YIELD_EVERY:
                await anyio.lowlevel.checkpoint()
            try:
                got, item = await items.next()
            except DIMSEError as exc:
                LOGGER.error("C-FIND: the identifier cannot be decoded (%s)", exc)
                return {"Status": 0xC310}
            except Exception:
                LOGGER.exception("Exception in the handler bound to EVT_C_FIND")
                return {"Status": 0xC311}
            if not got:
                return {"Status": 0x0000}
            try:
                status, identifier = item
            except (TypeError, ValueError):
                LOGGER.error("EVT_C_FIND handler yielded %r, not (status, identifier)", item)
                return {"Status": 0xC312}
            fields = _status_fields(status, 0xC312, CommandField.C_FIND_RSP)
            if fields["Status"] not in _PENDING:
                return fields
            if event.is_cancelled:
                return {"Status": 0xFE00}
            try:
                data = identifier if type(identifier) is Encoded else encode_dataset(identifier, ts)
            except (DIMSEError, AttributeError, TypeError) as exc:
                LOGGER.error("C-FIND: the identifier cannot be encoded (%s)", exc)
                return {"Status": 0xC312}
            command = commands.get(fields["Status"]) if len(fields) == 1 else None
            if command is None:
                fields["CommandDataSetType"] = DATASET_PRESENT
                command = encode_command({**base, **fields})
                if len(fields) == 2:  # Status alone: the same for every such response
                    commands[fields["Status"]] = command
            await self._send_message(msg.context_id, command, data)

    async def _serve_retrieve(self, msg: Message) -> None:
        """Query/Retrieve GET and MOVE SCP (PS3.4 C.4.3, C.4.2).

        The handler yields (for C-MOVE first the destination's ``(host,
        port)``, or ``(None, None)``: 0xA801) the number of sub-operations,
        then ``(status, dataset)`` per instance, ``dataset`` a Dataset, a path
        or a binary file as :meth:`send_c_store` takes. Each instance is
        stored (C-GET: on this association; C-MOVE: on one association opened
        to the destination), and a pending response with the counts follows
        each. Failures: 0xC411/0xC511 (exception, or no handler), 0xC410/
        0xC510 (identifier does not decode), 0xC413/0xC513 (no number of
        sub-operations), 0xC514 (bad destination), 0xA801 (unknown or
        unreachable destination), 0xA702 (every sub-operation failed), 0xB000
        (some failed or had warnings); the final response lists the failed
        SOP Instance UIDs.
        """
        is_move = msg.command_field == CommandField.C_MOVE_RQ
        kind = evt.EVT_C_MOVE if is_move else evt.EVT_C_GET
        base = self._response_fields(msg)
        event, items, failed = await self._start_handler(kind, msg, 0xC511 if is_move else 0xC411)
        try:
            if items is None:
                final: dict[str, Any] = {"Status": failed}
            else:
                final = await self._retrieve(msg, event, items, base, is_move)
        finally:
            if items is not None:
                await items.aclose()
            self._serving.pop(msg.message_id or 0, None)
        identifier = final.pop("_identifier", None)
        data = None
        if identifier is not None:
            data = encode_dataset(identifier, self._contexts[msg.context_id].transfer_syntax[0])
            final["CommandDataSetType"] = DATASET_PRESENT
        await self._send_message(msg.context_id, encode_command({**base, **final}), data)

    async def _retrieve(
        self,
        msg: Message,
        event: evt.Event,
        items: _HandlerItems,
        base: dict[str, Any],
        is_move: bool,
    ) -> dict[str, Any]:
        """Run the sub-operations of a C-GET/C-MOVE; return the final response's fields."""
        name = "EVT_C_MOVE" if is_move else "EVT_C_GET"
        error_base = 0xC500 if is_move else 0xC400
        destination: tuple[str, int, dict[str, Any]] | None = None
        try:
            if is_move:
                got, first = await items.next()
                if not got:
                    return {"Status": error_base + 0x14}
                destination = _move_destination(first)
                if destination is None:
                    LOGGER.error("C-MOVE destination %r is unknown", event.move_destination)
                    return {"Status": 0xA801}
            got, count = await items.next()
        except DIMSEError as exc:
            LOGGER.error("%s: the identifier cannot be decoded (%s)", name, exc)
            return {"Status": error_base + 0x10}
        except (TypeError, ValueError) as exc:
            LOGGER.error("%s handler yielded an invalid destination: %s", name, exc)
            return {"Status": error_base + 0x14}
        except Exception:
            LOGGER.exception("Exception in the handler bound to %s", name)
            return {"Status": error_base + 0x11}
        remaining = _count(count) if got else None
        if remaining is None:
            LOGGER.error("%s handler did not yield the number of sub-operations first", name)
            return {"Status": error_base + 0x13}
        return await self._sub_operations(
            msg, event, items, base, _SubOperations(remaining), destination
        )

    def _move_association(
        self, host: str, port: int, ae_title: str, options: dict[str, Any]
    ) -> Any:
        """An association to a C-MOVE destination, proposing what API.md says."""
        contexts = options.pop("contexts", None)
        if contexts is None:
            contexts = self.ae.requested_contexts or _storage_contexts(self.ae)
        return self.ae.associate(host, port, ae_title=ae_title, contexts=contexts, **options)

    async def _sub_operations(
        self,
        msg: Message,
        event: evt.Event,
        items: _HandlerItems,
        base: dict[str, Any],
        counts: _SubOperations,
        destination: tuple[str, int, dict[str, Any]] | None,
    ) -> dict[str, Any]:
        """C-STORE each instance the handler yields (C-GET: on this
        association; C-MOVE: on one opened to ``destination``), a pending
        response after each; return the final response's fields.

        Two tasks: this one takes each instance from the handler and makes
        its request ready (the file opened, probed, a small one read whole;
        a Dataset is encoded in its turn), and hands it over; a sender
        stores it and answers. So the next instance is read while the peer
        stores the last one, and the handler always runs in the task that
        started it. What was taken in advance (an error included) is dealt
        with in turn, as if found then; no more than one instance is taken
        ahead.
        """
        is_move = msg.command_field == CommandField.C_MOVE_RQ
        # Where the instances go, once known (the C-MOVE sender sets it when
        # the destination's association is open): requests are made ready for it.
        target: list[Association | None] = [None if is_move else self]
        send, receive = anyio.create_memory_object_stream[_SubStep](0)
        # The final response's fields, or what the sender raised (re-raised here).
        outcome: dict[str, Any] | Exception | None = None

        store = functools.partial(self._store_sub_operations, msg, event, base, counts, receive)
        # The handler's next item, made ready for the target (what does not
        # change from one item to the next bound once).
        pull = functools.partial(
            self._pull_sub_operation,
            items,
            event.event.name,
            0xC500 if is_move else 0xC400,
            msg.command_field | 0x8000,
            # Composite Instance Retrieve Without Bulk Data (PS3.4 Z.1.2):
            # the instances go out without their bulk data elements.
            msg.command.get("AffectedSOPClassUID") == _WITHOUT_BULK_DATA,
            originator=self._remote.ae_title if is_move else None,
            originator_id=msg.message_id if is_move else None,
        )

        async def sender() -> None:
            nonlocal outcome
            try:
                with receive:
                    if destination is None:
                        final = await store()
                    else:
                        final = await self._move_sub_operations(
                            store, event, counts, destination, target
                        )
                outcome = final
            except Exception as exc:
                outcome = exc
            finally:
                # Done: what the handler is still being asked for is not needed.
                tg.cancel_scope.cancel()

        step: _SubStep | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            try:
                with send:
                    while not event.is_cancelled:
                        step = await pull(target[0])
                        await send.send(step)
                        kind, step = step.kind, None  # the sender's now
                        if kind == "end":
                            break
            except anyio.BrokenResourceError:
                pass  # the sender has finished
            finally:
                if step is not None:
                    await step.close()
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None
        return outcome

    async def _move_sub_operations(
        self,
        store: Callable[[Callable[[], Awaitable[Association]]], Awaitable[dict[str, Any]]],
        event: evt.Event,
        counts: _SubOperations,
        destination: tuple[str, int, dict[str, Any]],
        target: list[Association | None],
    ) -> dict[str, Any]:
        """The C-MOVE sender: ``store`` (:meth:`_store_sub_operations` with
        its other arguments bound) over an association to the destination,
        opened for the first instance to send, so a move of nothing (or a
        refusal) never needs it."""
        host, port, options = destination
        async with contextlib.AsyncExitStack() as stack:

            async def open_destination() -> Association:
                assoc: Association = await stack.enter_async_context(
                    self._move_association(host, port, str(event.move_destination or ""), options)
                )
                target[0] = assoc
                return assoc

            try:
                return await store(open_destination)
            except (OSError, AssociationRejected, AssociationAborted, TimeoutError) as exc:
                LOGGER.error("C-MOVE: association with %s:%s failed: %s", host, port, exc)
                if counts.started:
                    counts.failed += counts.remaining
                    counts.remaining = 0
                    return counts.final(0xA702)
                return {"Status": 0xA801, "ErrorComment": "no association with the destination"}

    async def _store_sub_operations(
        self,
        msg: Message,
        event: evt.Event,
        base: dict[str, Any],
        counts: _SubOperations,
        receive: MemoryObjectReceiveStream[_SubStep],
        open_destination: Callable[[], Awaitable[Association]] | None = None,
    ) -> dict[str, Any]:
        """The sender of :meth:`_sub_operations`: store each instance handed
        over, a pending response after each; the final response's fields."""
        store_to = None if open_destination is not None else self
        head = pending_counts_head({**base, "Status": 0xFF00})  # of each pending response
        while True:
            if event.is_cancelled:
                return counts.final(0xFE00)
            try:
                step = receive.receive_nowait()  # usually ready: no wait, no checkpoint
            except anyio.WouldBlock:
                try:
                    step = await receive.receive()
                except anyio.EndOfStream:
                    return counts.final(0xFE00)  # the taker saw the cancel first
            try:
                if step.kind != "store":
                    if step.fields is None:
                        return counts.final(None)  # by the counts
                    out = counts.final(step.fields["Status"])  # Remaining too, for a cancel
                    out.update(step.fields)
                    return out
                if event.is_cancelled:
                    return counts.final(0xFE00)
                counts.started = store_to is not None
                if step.unreadable:
                    counts.record(0xA702, await _instance_uid_of(step.dataset))
                else:
                    if store_to is None:
                        assert open_destination is not None
                        store_to = await open_destination()
                        counts.started = True
                    await self._store_sub_operation(event, counts, step, store_to)
            finally:
                await step.close()
            if step.unreadable:
                continue  # (no pending response for it)
            pending = counts.pending_command(head)
            # C-GET: corked, it leaves with the next sub-operation's C-STORE
            # request on this association (one write, not two) or at the end
            # of this loop iteration. C-MOVE stores over another association.
            if not self._send_now(msg.context_id, pending, None, soon=store_to is self):
                await self._send_message(msg.context_id, pending, None)

    async def _store_sub_operation(
        self, event: evt.Event, counts: _SubOperations, step: _SubStep, store_to: Association
    ) -> None:
        """Store one sub-operation's instance over ``store_to`` and count the outcome."""
        try:
            if step.prepared is None and step.error is None:
                await step.prepare(store_to)
            if step.error is not None:
                raise step.error
            assert step.prepared is not None
            rsp = await store_to._invoke(
                step.prepared.context_id, step.prepared.command, step.prepared.payload, None
            )
            command = rsp.command
            status = int(command["Status"])
            uid = command.get("AffectedSOPInstanceUID")  # U(=): may be left out
            if uid is None and status != 0x0000:
                uid = await _instance_uid_of(step.dataset)
            counts.record(status, uid)
        except _NOT_SENT as exc:
            LOGGER.error("%s sub-operation failed: %s", event.event.name, exc)
            counts.record(0xA702, await _instance_uid_of(step.dataset))

    async def _pull_sub_operation(
        self,
        items: _HandlerItems,
        name: str,
        error_base: int,
        response_field: int,
        without_bulk_data: bool,
        store_to: Association | None,
        *,
        originator: str | None,
        originator_id: int | None,
    ) -> _SubStep:
        """The handler's next C-GET/C-MOVE item, made ready to send on
        ``store_to`` (when known): see :class:`_SubStep`."""
        try:
            got, item = await items.next()
        except Exception:
            LOGGER.exception("Exception in the handler bound to %s", name)
            return _SubStep("end", {"Status": error_base + 0x11})
        if not got:
            return _SubStep("end")
        try:
            status, dataset = item
        except (TypeError, ValueError):
            LOGGER.error("%s handler yielded %r, not (status, dataset)", name, item)
            return _SubStep("end", {"Status": error_base + 0x11})
        fields = _status_fields(status, error_base + 0x11, response_field)
        if fields["Status"] not in _PENDING:
            return _SubStep("end", fields)
        step = _SubStep("store", None, dataset, originator, originator_id)
        if without_bulk_data:
            try:
                step.dataset = await anyio.to_thread.run_sync(_strip_bulk_data, dataset)
            except Exception as exc:
                LOGGER.error("%s: could not read an instance to send: %s", name, exc)
                step.unreadable = True
                return step
        if store_to is not None and not isinstance(step.dataset, Dataset):
            # A path or file is opened and probed ahead, a small one read
            # whole (up to _INLINE_READ more in memory). A Dataset is encoded
            # in its turn: encoded ahead, a large one would be held twice.
            await step.prepare(store_to)
        return step

    def _serve_inline(self, msg: Message) -> bool:
        """Answer a C-ECHO, an in-memory C-STORE or an N request at once, without a task.

        The asyncio fast path for the single-response services: when nothing
        else is queued or being served, the handler is absent or a plain
        ``def`` and the response can be written without waiting, the request
        is answered right where it was reassembled (often in the transport's
        read callback), so no worker has to be woken. Returns False, having
        done nothing, when any of that does not hold.
        """
        if msg.spooled:
            return False  # (see _serve)
        field = msg.command["CommandField"]
        n_kind = None
        if field == CommandField.C_ECHO_RQ:
            kind = evt.EVT_C_ECHO
        elif field == CommandField.C_STORE_RQ and msg.spool is None:
            kind = evt.EVT_C_STORE
        elif field in N_EVENTS:
            kind = n_kind = N_EVENTS[field]
        else:
            return False
        if not self._can_send_now():
            return False
        bound = self._bound.get(kind)
        if bound:
            handler = bound[0][0]
            plain = self._plain.get(kind)
            if plain is None or plain[0] is not handler:
                plain = self._plain[kind] = (handler, _is_plain(handler))
            if not plain[1]:
                return False
        if _check_request(msg) is not None or self._context_refusal(msg) is not None:
            return False
        if n_kind is not None:
            self._serve_n_inline(msg, n_kind)
            return True
        status: Any
        try:
            call = self._handler_call(kind, msg)
            status = call if isinstance(call, int) else _call_plain(*call)
        except Exception as exc:
            status = _handler_failure(kind, exc)
        if type(status) is not int and inspect.isawaitable(status):
            # A plain def that returned an awaitable: a task finishes it.
            self._inflight += 1
            self._spawn(self._finish_inline, msg, kind, status)
            return True
        command = self._response_command(msg, status)
        # Nothing awaited since _can_send_now() above: a plain handler cannot.
        if not self._send_now(msg.context_id, command, None, checked=True):
            # Only a response over _COALESCE bytes, or a peer whose maximum PDU
            # length holds no data, gets here.
            self._inflight += 1
            self._spawn(self._finish_inline, msg, kind, status)
        return True

    async def _finish_inline(self, msg: Message, kind: evt.EventType, status: Any) -> None:
        """Await what an inline handler returned, then answer (see :meth:`_serve_inline`)."""
        if self._ended():  # started after the association ended: nothing to answer
            self._drop(msg, status)
            return
        try:
            if inspect.isawaitable(status):
                try:
                    status = await status
                except Exception as exc:
                    status = _handler_failure(kind, exc)
            command = self._response_command(msg, status)
            await self._send_message(msg.context_id, command, None)
        except (DicomNetworkError, _TransportError, TimeoutError) as exc:
            LOGGER.debug("Could not answer %s: %s", msg.name, exc)
        finally:
            self._request_done()

    def _handler_call(
        self, kind: evt.EventType, msg: Message
    ) -> tuple[evt.Handler, evt.Event, tuple[Any, ...]] | int:
        """What answers a C-ECHO or C-STORE: its handler, event and arguments,
        or the status that answers it when no handler is bound."""
        bound = self._bound.get(kind)
        if not bound:
            if kind is evt.EVT_C_ECHO:
                return 0x0000
            LOGGER.warning("No handler is bound to EVT_C_STORE: answering 0xC211")
            return 0xC211
        handler, args = bound[0]
        event = self._event_for(kind, msg) if kind is evt.EVT_C_ECHO else self._store_event(msg)
        return handler, event, args

    def _response_command(self, msg: Message, status: Any) -> bytes:
        """The encoded response of a C-ECHO or C-STORE request with ``status``."""
        command = msg.command
        cf = command["CommandField"]
        if type(status) is int and 0 <= status <= 0xFFFF:
            sop_class = command.get("AffectedSOPClassUID", VERIFICATION)
            mid = command.get("MessageID")
            if type(sop_class) is str and type(mid) is int:
                if cf == CommandField.C_ECHO_RQ:
                    return encode_status_response(cf | 0x8000, mid, sop_class, status)
                instance = command.get("AffectedSOPInstanceUID")
                if type(instance) is str:
                    return encode_status_response(cf | 0x8000, mid, sop_class, status, instance)
        fields: dict[str, Any] = {
            "CommandField": msg.command_field | 0x8000,
            "MessageIDBeingRespondedTo": msg.message_id,
            "AffectedSOPClassUID": command.get("AffectedSOPClassUID", VERIFICATION),
            "CommandDataSetType": NO_DATASET,
        }
        if msg.command_field == CommandField.C_STORE_RQ:
            fields["AffectedSOPInstanceUID"] = command.get("AffectedSOPInstanceUID")
            fields.update(_status_fields(status, 0xC211, CommandField.C_STORE_RSP))
        else:
            fields.update(_status_fields(status, 0x0110, CommandField.C_ECHO_RSP))
        return encode_command(fields)

    def _store_event(self, msg: Message) -> evt.Event:
        spool = msg.spool if isinstance(msg.spool, Spool) else None
        return self._event_for(
            evt.EVT_C_STORE,
            msg,
            _encoded=msg.data,
            _transfer_syntax=self._contexts[msg.context_id].transfer_syntax[0],
            dataset_path=None if spool is None else spool.path,
            _data_offset=0 if spool is None else spool.data_offset,
        )

    async def _serve_c_store(self, msg: Message) -> None:
        """Storage SCP (PS3.4 Annex B): give the instance to EVT_C_STORE, answer its status."""
        spool = msg.spool if isinstance(msg.spool, Spool) else None
        status: Any
        try:
            if spool is not None and spool.error is not None:
                LOGGER.error("Could not spool a received data set: %s", spool.error)
                status = 0xA700
            else:
                try:
                    call = self._handler_call(evt.EVT_C_STORE, msg)
                    status = call if isinstance(call, int) else await evt.call_handler(*call)
                except Exception as exc:
                    status = _store_failure(exc)
            await self._send_message(msg.context_id, self._response_command(msg, status), None)
        except BaseException:
            if spool is not None:
                spool.discard()
            raise
        if spool is not None:
            await self._delete_spool(spool)  # once answered: the peer need not wait for it

    async def _serve_c_echo(self, msg: Message) -> None:
        status: Any
        try:
            call = self._handler_call(evt.EVT_C_ECHO, msg)
            status = call if isinstance(call, int) else await evt.call_handler(*call)
        except Exception as exc:
            status = _handler_failure(evt.EVT_C_ECHO, exc)
        await self._send_message(msg.context_id, self._response_command(msg, status), None)

    def _can_send_now(self) -> bool:
        """True if a message may be written without awaiting (see :meth:`_send_now`)."""
        stream = self._stream
        handlers = self._bound
        return (
            type(stream) is AsyncioStream
            and not self._send_lock.locked()
            and not self._debug
            and stream.can_send_now()
            and self._ul.can_send_data()
            and evt.EVT_PDU_SENT not in handlers
            and evt.EVT_DIMSE_SENT not in handlers
        )

    def _send_now(
        self,
        context_id: int,
        command: bytes,
        dataset: bytes | memoryview | None,
        *,
        checked: bool = False,
        soon: bool = False,
    ) -> bool:
        """Send a small message without awaiting, if nothing is in the way.

        The asyncio fast path: the send lock is free, the transport takes the
        bytes without waiting (no drain pending) and nobody watches the PDUs
        sent. The message goes in one write: one P-DATA-TF, or the several
        the peer's maximum PDU length makes of it. Returns False (nothing
        sent) otherwise; the caller then goes the general way,
        :meth:`_send_message`. ``checked``: the caller has just asked
        :meth:`_can_send_now`, with no await since. ``soon``: corked, to go
        out with the next write of this loop iteration (see
        :meth:`AsyncioStream.send_soon`).
        """
        if not (checked or self._can_send_now()):
            return False
        stream = self._stream
        assert isinstance(stream, AsyncioStream)
        size = len(command) + 6 if dataset is None else len(command) + len(dataset) + 12
        if size > _COALESCE:
            return False
        max_pdu = self._remote_max_pdu
        if max_pdu and size > max_pdu:
            if max_pdu <= 6:
                return False  # no room for data: _send_message says so
            data = self._joined_pdus(context_id, command, dataset)
        else:
            if dataset is None:
                data = encode_p_data(context_id, 0x03, command)
            else:
                data = single_pdu(context_id, command, dataset)
            self._data_sent(data)
        if soon:
            stream.send_soon(data)
        else:
            stream.send_now(data)
        self._last_tx = self._clock()
        return True

    def _joined_pdus(
        self, context_id: int, command: bytes, dataset: bytes | memoryview | None
    ) -> bytes:
        """A message's P-DATA-TF PDUs for the peer's maximum length, joined (the
        data set copied once), each told to the Upper Layer (Evt9) as sent."""
        parts, ends = fragment_parts(context_id, command, dataset, self._remote_max_pdu)
        data = b"".join(parts)
        if not self._ul.note_data_sent():
            start = 0
            for end in ends:
                self._data_sent(data[start:end])
                start = end
        return data

    async def _send_message(self, context_id: int, command: bytes, dataset: _Payload) -> None:
        """Send one DIMSE message, fragmented to the peer's maximum PDU length."""
        if isinstance(dataset, _FileSource):
            await self._send_streamed(context_id, command, dataset)
            return
        if self._send_now(context_id, command, dataset):
            return
        # A small message in several PDUs (a peer with a small maximum) goes
        # out in one write: one system call, not one per PDU.
        coalesce = (
            dataset is not None
            and len(dataset) <= _COALESCE
            and not self._debug
            and evt.EVT_PDU_SENT not in self._bound
        )
        failure: str | None = None
        begun = False  # a write of the message has started
        async with self._send_lock:
            try:
                unyielded = 0  # bytes written since the last checkpoint
                pdus: Iterable[bytes] = ()
                if not coalesce:
                    pdus = fragment(context_id, command, dataset, self._remote_max_pdu)
                for pdu in pdus:
                    self._data_sent(pdu)
                    if unyielded >= _FILE_BLOCK:
                        # As between the blocks of a file (see _send_blocks).
                        unyielded = 0
                        await anyio.lowlevel.checkpoint()
                    try:
                        begun = True
                        await self._write(pdu)
                    except _TransportError as exc:
                        failure = str(exc)
                        break
                    unyielded += len(pdu)
                if coalesce:
                    whole = self._joined_pdus(context_id, command, dataset)
                    try:
                        begun = True
                        await self._write(whole)
                    except _TransportError as exc:
                        failure = str(exc)
            except anyio.get_cancelled_exc_class():
                if begun:
                    await self._cut_off()
                raise
            if failure is None:
                if self._debug or evt.EVT_DIMSE_SENT in self._bound:
                    await self._message_sent(context_id, command, dataset)
                return
        await self._transport_failed(failure)
        raise self._error or AssociationAborted(2, 0, failure)

    async def _cut_off(self) -> None:
        """A send was cancelled part way through a message: abort, at once.

        The peer holds part of a message that nothing can complete or
        withdraw (PS3.8 has no way to), and the next message would be read
        as its continuation: the association cannot go on. Called with the
        send lock held, as the cancellation propagates. On the asyncio stream
        a write is queued whole before it waits, so PDUs are never cut and
        A-ABORT follows the last one (if the transport takes it within a
        second); a cancelled write on any other stream may have sent part of
        a PDU, after which A-ABORT could not be read: the connection is
        closed without it. Either way it closes at once.
        """
        with anyio.CancelScope(shield=True):
            if self._ul.is_closed:
                return
            LOGGER.warning("A message was cut off by a cancellation: aborting the association")
            if self._error is None:
                self._error = AssociationAborted(
                    0, 0, "aborted: a message was cut off by a cancellation"
                )
            await self._abort_now(send=type(self._stream) is AsyncioStream)

    async def _send_streamed(self, context_id: int, command: bytes, source: _FileSource) -> None:
        """Send a message whose data set is read from a file, block by block.

        A block is read (in a worker thread) straight into a buffer laid out
        as P-DATA-TF PDUs, their headers in place, so no byte of the data set
        is copied in this thread; the next block is read while this one is
        written. Memory holds three blocks at most, whatever the file's size.
        A read error after the command went out leaves a message the peer
        cannot complete: the association is aborted and the error raised.
        """
        max_pdu = self._remote_max_pdu
        if max_pdu and max_pdu - 6 < 1:
            raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
        # PDUs need not be as long as the peer allows: a block holds one at least.
        chunk = min(data_chunk_size(max_pdu), _FILE_BLOCK - P_DATA_HEADER_SIZE)
        slot = P_DATA_HEADER_SIZE + chunk
        size = slot * max(1, _FILE_BLOCK // slot)
        pool: list[bytearray] = []
        file = source.file

        async def read(send: MemoryObjectSendStream[_Block | OSError]) -> None:
            async with send:
                while True:
                    buf = _take_free(pool, size, _FREE_REFS)
                    if buf is None:
                        buf = bytearray(size)
                        if len(pool) < 3:
                            pool.append(buf)
                    item: _Block | OSError
                    try:
                        item = (
                            buf,
                            await anyio.to_thread.run_sync(
                                fill_p_data, file, buf, chunk, context_id
                            ),
                        )
                    except OSError as exc:
                        item = exc
                    try:
                        await send.send(item)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the sender gave up
                    if isinstance(item, OSError) or not item[1] or item[1][-1] < size:
                        return  # the end of the file

        by_sendfile = self._sendfile_ok(source, chunk)
        failure: str | None = None
        read_error: OSError | None = None
        try:
            async with self._send_lock:
                try:
                    if by_sendfile is not None:
                        await self._send_file_pages(
                            context_id, command, by_sendfile, chunk, max_pdu
                        )
                    else:
                        await self._send_file(context_id, command, read, chunk, max_pdu)
                except anyio.get_cancelled_exc_class():
                    await self._cut_off()
                    raise
        except _TransportError as exc:
            failure = str(exc)
        except OSError as exc:
            read_error = exc
        if read_error is not None:
            LOGGER.error("Reading the data set to send failed: %s", read_error)
            await self._abort(grace=None)
            raise read_error
        if failure is not None:
            await self._transport_failed(failure)
            raise self._error or AssociationAborted(2, 0, failure)

    def _sendfile_ok(self, source: _FileSource, chunk: int) -> tuple[int, int, int] | None:
        """``(descriptor, start, end)`` of a file to send by ``sendfile(2)``, or None.

        Only on the asyncio stream, with PDUs of ``_SENDFILE_MIN_CHUNK`` bytes or
        more (each costs two system calls), nobody watching the PDUs sent, and
        a regular file the page cache holds from its position to its end
        (``sendfile`` reads on the event loop: it must not wait for a disk).
        """
        if (
            type(self._stream) is not AsyncioStream
            or chunk < _SENDFILE_MIN_CHUNK
            or self._debug
            or evt.EVT_PDU_SENT in self._bound
            or not hasattr(os, "sendfile")
        ):
            return None
        file = source.file
        try:
            fd = file.fileno()
            start = file.tell()
            info = os.fstat(fd)
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
            return None
        if not stat.S_ISREG(info.st_mode) or not page_cached(fd, start, info.st_size - start):
            return None
        return fd, start, info.st_size

    async def _send_file_pages(
        self,
        context_id: int,
        command: bytes,
        span: tuple[int, int, int],
        chunk: int,
        max_pdu: int,
    ) -> None:
        """The locked part of :meth:`_send_streamed` by ``sendfile(2)``: the
        command, then the data set as the P-DATA-TF PDUs :func:`file_fragments`
        lays out, whose data the kernel takes from the page cache. The
        file's size when it was opened is what is sent (one that shrinks
        meanwhile is a read error)."""
        for pdu in fragment(context_id, command, None, max_pdu):
            await self._send_pdata(pdu)
        fd, start, end = span
        per_block = max(1, _FILE_BLOCK // (chunk + P_DATA_HEADER_SIZE))
        segments: list[tuple[bytes, int, int, bytes]] = []
        for segment in file_fragments(context_id, start, end, max_pdu):
            head, _, length, trailer = segment
            if not length:  # none of the file: an empty data set, or its pad byte alone
                if segments:
                    await self._write_file(fd, segments)
                    segments = []
                await self._send_pdata(head + trailer)
                continue
            self._data_sent(head)
            segments.append(segment)
            if len(segments) == per_block:
                await self._write_file(fd, segments)
                segments = []
                await anyio.lowlevel.checkpoint()  # as between blocks read
        if segments:
            await self._write_file(fd, segments)

    async def _write_file(self, fd: int, segments: list[tuple[bytes, int, int, bytes]]) -> None:
        """:meth:`_write` for PDUs whose data the stream sends from a file (an
        OSError from it is the file's: the caller reports it as a read error)."""
        stream = self._stream
        assert isinstance(stream, AsyncioStream)
        await self._watched(stream.send_file(fd, segments), _CONNECTION_ERRORS)

    async def _send_file(
        self,
        context_id: int,
        command: bytes,
        read: Callable[[MemoryObjectSendStream[_Block | OSError]], Coroutine[Any, Any, None]],
        chunk: int,
        max_pdu: int,
    ) -> None:
        """The locked part of :meth:`_send_streamed`: the command, then the blocks
        ``read`` lays out as it reads them in a task of its own."""
        for pdu in fragment(context_id, command, None, max_pdu):
            await self._send_pdata(pdu)
        send, receive = anyio.create_memory_object_stream[_Block | OSError](0)
        error: _TransportError | OSError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, send)
            try:
                await self._send_blocks(receive, context_id, chunk)
            except (_TransportError, OSError) as exc:
                error = exc  # raised out of the task group, not in a group
            finally:
                tg.cancel_scope.cancel()
                receive.close()
        if error is not None:
            raise error
        if self._debug or evt.EVT_DIMSE_SENT in self._bound:
            await self._message_sent(context_id, command, None)

    async def _send_blocks(
        self,
        receive: MemoryObjectReceiveStream[_Block | OSError],
        context_id: int,
        chunk: int,
    ) -> None:
        """Send the blocks a reader task lays out (see :meth:`_send_streamed`)."""
        held: _Block | None = None
        sent = 0  # data set bytes written
        # A full block goes out once the next one is read: only then is it
        # known whether it ends the data set.
        while True:
            item = await receive.receive()
            if isinstance(item, OSError):
                raise item
            buf, ends = item
            if held is not None:
                if not ends:
                    await self._send_last_block(held, sent, context_id, chunk)
                    return
                sent += await self._send_block(held)
                # Writes that never wait for a drain do not yield: yield here,
                # so other tasks run and a cancellation lands between blocks.
                await anyio.lowlevel.checkpoint()
            if not ends:  # an empty data set
                await self._send_pdata(encode_p_data(context_id, 0x02, b""))
                return
            if ends[-1] < len(buf):  # a short block: the file ends in it
                await self._send_last_block(item, sent, context_id, chunk)
                return
            held = item

    async def _send_last_block(self, block: _Block, sent: int, context_id: int, chunk: int) -> None:
        """Send the block that ends a data set: its last PDU is the last fragment,
        with the pad byte of an odd data set if it has room (PS3.5 A.5: a data
        set has even length; only a deflated one is stored without it);
        otherwise the pad byte follows as the last fragment, on its own."""
        buf, ends = block
        start = ends[-2] if len(ends) > 1 else 0
        n = ends[-1] - start - P_DATA_HEADER_SIZE
        odd = (sent + ends[-1] - P_DATA_HEADER_SIZE * len(ends)) % 2
        if odd and n < chunk:
            buf[ends[-1]] = 0
            n += 1
            ends[-1] += 1
            odd = 0
        pack_p_data_header(buf, start, context_id, 0x00 if odd else 0x02, n)
        await self._send_block(block)
        if odd:
            await self._send_pdata(encode_p_data(context_id, 0x02, b"\x00"))

    async def _send_block(self, block: _Block) -> int:
        """Write the PDUs laid out in a block; return the data set bytes they carry.

        One write for the block, or one per PDU when each is reported (debug
        log, EVT_PDU_SENT); a copy for a stream that might keep the view.
        """
        buf, ends = block
        view = memoryview(buf)
        ul = self._ul
        per_pdu = self._debug or evt.EVT_PDU_SENT in self._bound
        start = 0
        for end in ends:
            if not ul.note_data_sent():
                self._data_sent(bytes(view[start:end]))
            if per_pdu:
                await self._write(bytes(view[start:end]))
            start = end
        if not per_pdu:
            whole = view[:start]
            await self._write(whole if type(self._stream) is AsyncioStream else bytes(whole))
        return start - P_DATA_HEADER_SIZE * len(ends)

    def _data_sent(self, pdu: bytes) -> None:
        """Tell the Upper Layer a P-DATA-TF goes out (Evt9), if it still may."""
        ul = self._ul
        if ul.note_data_sent():
            return
        if not ul.can_send_data():
            raise self._error or AssociationAborted(2, 0, "association not established")
        ul.send_data(pdu)

    async def _send_pdata(self, pdu: bytes) -> None:
        """Write one P-DATA-TF of a message; the caller holds the send lock."""
        self._data_sent(pdu)
        await self._write(pdu)

    async def _message_sent(self, context_id: int, command: bytes, dataset: _Payload) -> None:
        msg = Message(
            context_id=context_id,
            command=decode_command(command),
            data=None if isinstance(dataset, _FileSource | None) else bytes(dataset),
            raw_command=command,
        )
        if self._debug:
            LOGGER.debug("-> %s (context %d)", msg.name, context_id)
        await evt.notify(self._handlers, evt.Event(self, evt.EVT_DIMSE_SENT, message=msg))

    def _check_usable(self) -> None:
        if self._ul.state is not State.STA6:
            raise self._error or LocalProtocolError("the association is not established")

    def _context_for(
        self, abstract_syntax: str, *, as_scu: bool | None = True
    ) -> PresentationContext:
        """The first accepted context for ``abstract_syntax`` in which we have
        the SCU role (``as_scu``), the SCP role (``not as_scu``) or either (None)."""
        # Contexts are only added during negotiation: their count keys the cache.
        key = (abstract_syntax, as_scu, len(self._contexts))
        found = self._context_cache.get(key)
        if found is not None:
            return found
        for cx in self.accepted_contexts:
            if cx.abstract_syntax == abstract_syntax and (
                as_scu is None or (cx.as_scu if as_scu else cx.as_scp)
            ):
                self._context_cache[key] = cx
                return cx
        role = "" if as_scu is None else f" with the {'SCU' if as_scu else 'SCP'} role"
        name = UID(abstract_syntax).name
        raise NoAcceptedContext(
            f"no accepted presentation context for {abstract_syntax} ({name}){role}"
        )

    def _allocate_id(self, msg_id: int | None) -> int:
        if msg_id is not None:
            if not 0 <= msg_id <= 0xFFFF:
                raise ValueError("msg_id must be 0-65535")
            if msg_id in self._pending:
                raise ValueError(f"message ID {msg_id} is already in use on this association")
            return msg_id
        # The next free ID after the last one given (0 skipped), round once.
        mid = last = self._next_id
        while True:
            mid = (mid + 1) & 0xFFFF
            if mid and mid not in self._pending:
                self._next_id = mid
                return mid
            if mid == last:
                raise LocalProtocolError("every message ID is in use")

    async def _invoke(
        self,
        context_id: int,
        command: dict[str, Any] | Callable[[int], bytes],
        dataset: _Payload,
        msg_id: int | None,
    ) -> Message:
        """Send a request and wait (``dimse_timeout``) for its single response.

        ``command``: the command set's fields without its Message ID, or a
        function of the Message ID that encodes the command set.
        """
        mid, pending = await self._send_request(context_id, command, dataset, msg_id)
        return await self._await_response(mid, pending)

    async def _send_request(
        self,
        context_id: int,
        command: dict[str, Any] | Callable[[int], bytes],
        dataset: _Payload,
        msg_id: int | None,
    ) -> tuple[int, _Pending]:
        """Take a place in the invocation window and send a single-response
        request; return its Message ID and the slot its response comes to.

        The place is held until :meth:`_await_response` for the slot returns
        (or raises); on an error here it is given back and nothing is left.
        """
        if self._abandoned:
            await self._reap_abandoned()
        self._check_usable()
        waited = await self._acquire_window()
        try:
            if waited:
                self._check_usable()  # it may have ended meanwhile
            mid = self._allocate_id(msg_id)
            encoded = _encode_request(command, mid)
            pending = _Pending()
            self._pending[mid] = pending
            try:
                await self._send_message(context_id, encoded, dataset)
            except BaseException:
                del self._pending[mid]
                raise
        except BaseException:
            self._invoke_window.release()
            raise
        pending.holds_place = True
        self._mark_sent(pending)
        return mid, pending

    async def _await_response(self, mid: int, pending: _Pending) -> Message:
        """Wait for the response to the request :meth:`_send_request` sent;
        the slot goes, and the window place if the response did not take it
        (or a chained request, see :meth:`_chain_store`), however this ends."""
        try:
            await pending.done.wait(self._loop)
        finally:
            if self._pending.get(mid) is pending:
                del self._pending[mid]
            self._give_back_place(pending)
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None
        return pending.response

    def _mark_sent(self, pending: _Pending) -> None:
        """A request's last PDU went out: its DIMSE timeout starts now."""
        pending.sent_at = self._last_invoked = now = self._clock()
        if self.dimse_timeout is not None:
            self._kick(now + self.dimse_timeout)

    def _give_back_place(self, pending: _Pending) -> None:
        """Give back the window place a single-response request holds, if it still does."""
        if pending.holds_place:
            pending.holds_place = False
            self._invoke_window.release()

    def _chain_store(
        self, current: _Pending, prepared: _PreparedStore, sent: list[tuple[int, _Pending]]
    ) -> None:
        """Send ``prepared`` now, where the response to ``current`` has just
        been routed, before anyone is woken for it (send_c_stores with
        ``eager``); append its Message ID and slot to ``sent``.

        The request takes over ``current``'s window place. It goes only if it
        can go without awaiting (a small data set, nothing in the way);
        otherwise nothing happens and the caller sends it as usual. Never raises.
        """
        if isinstance(prepared.payload, _FileSource) or not self._can_send_now():
            return
        try:
            mid = self._allocate_id(None)
            encoded = _encode_request(prepared.command, mid)
        except Exception:  # (the caller meets it again, where it can be reported)
            return
        pending = _Pending()
        self._pending[mid] = pending
        if not self._send_now(prepared.context_id, encoded, prepared.payload, checked=True):
            del self._pending[mid]
            return
        self._mark_sent(pending)
        pending.holds_place, current.holds_place = current.holds_place, False
        sent.append((mid, pending))

    async def send_c_echo(self, msg_id: int | None = None) -> Dataset:
        """Send a C-ECHO request (Verification, PS3.4 Annex A) and return the status.

        Returns the response's command set as a Dataset (``.Status`` is 0x0000
        on success). Raises :class:`NoAcceptedContext` if Verification was not
        accepted, :class:`TimeoutError` after ``dimse_timeout`` (the association
        is then aborted) and :class:`AssociationAborted` if the association ends
        first.
        """
        cx = self._context_for(VERIFICATION)
        assert cx.context_id is not None
        rsp = await self._invoke(cx.context_id, _ECHO_REQUEST, None, msg_id)
        return command_dataset(rsp.raw_command, rsp.layout)

    async def send_c_store(
        self,
        dataset: StoreSource,
        msg_id: int | None = None,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        """Send a C-STORE request (Storage, PS3.4 Annex B) and return the status.

        ``dataset`` is a pydicom ``Dataset``, the path of a DICOM file (Part
        10 with File Meta Information, or a bare data set), or a binary file
        object open at the start of one. A file is sent as it is, in its own
        transfer syntax, read in blocks as it goes out: memory does not grow
        with its size (on Linux, a large file the page cache holds goes out
        by ``sendfile``, never read into memory; a file object's position
        afterwards is unspecified). A ``Dataset`` is encoded in the transfer syntax of its
        file meta, else the one it was read with, else the first accepted for
        its SOP class. The context used must have been accepted for the SOP
        class in exactly that transfer syntax, or :class:`NoAcceptedContext`
        is raised. ``priority`` is 0 (medium), 1 (high) or 2 (low);
        ``originator_aet`` and ``originator_id`` are the Move Originator's AE
        title and message ID when storing as a C-MOVE sub-operation.

        Returns the response's command set as a Dataset (``.Status``).
        """
        rsp = await self._store(dataset, msg_id, priority, originator_aet, originator_id)
        return command_dataset(rsp.raw_command, rsp.layout)

    async def send_c_stores(
        self,
        datasets: Iterable[StoreSource] | AsyncIterable[StoreSource],
        priority: int = 2,
        *,
        eager: bool = False,
    ) -> AsyncGenerator[StoreResult, None]:
        """Send C-STORE requests for many instances, one after the other, and
        yield a :class:`StoreResult` for each, in order.

        ``datasets`` (an iterable or async iterable) gives what
        :meth:`send_c_store` takes: Datasets, paths or binary files. On the
        wire this is what awaiting ``send_c_store`` for each one in turn
        does: one request at a time, each sent once the previous one's
        response is in. The difference is read-ahead: the next instance is
        taken from ``datasets``, read (or opened) and probed while the peer
        handles the one just sent, so that work is off the round trip. One
        instance at most is held ahead.

        ``eager``: send the next instance the moment a response arrives,
        before its result is yielded (still one request at a time on the
        wire, as ``storescu`` sends). That takes the wake-up of this
        generator, and whatever the loop over it does with each result, off
        the round trip; the results then come one behind: when a result is
        yielded, the next instance is usually on its way already, and is sent
        (and stored) even if the loop stops there. Instances that must be
        streamed from their file (over about 1 MiB) go as without ``eager``,
        and so does everything on a backend other than asyncio (the request
        is written from the transport's callback, which trio does not have).

        An instance that cannot be sent (its file cannot be read or is not
        DICOM, no context was accepted for it, a Dataset that does not encode)
        is yielded with ``error`` set and nothing sent for it; the next one
        follows. Anything else ends the iteration by raising, as
        :meth:`send_c_store` would: the association aborted, a response timed
        out, an error raised by ``datasets`` itself. A plain iterable is read
        on the event loop: it must not block (list a large directory tree in
        a worker thread first, or give an async iterable).

        Leaving the loop early is safe between results: without ``eager`` no
        request is outstanding then; with it, closing the generator waits for
        the response to the one in flight. Close it, e.g. with
        ``contextlib.aclosing``, to have that (and the closing of a file
        opened ahead) happen at once.
        """
        if priority not in (0, 1, 2):
            raise ValueError("priority must be 0 (medium), 1 (high) or 2 (low)")
        take = _taker(datasets)
        # The instance read ahead: (source, prepared request or why not); at most one.
        ahead: list[tuple[object, _PreparedStore | Exception]] = []
        # The request sent whose result is still to be yielded: source,
        # request, Message ID and slot.
        flight: tuple[object, _PreparedStore, int, _Pending] | None = None

        async def read_ahead() -> None:
            # Raises nothing: an error is kept for its turn.
            try:
                source = await take()
            except Exception as exc:  # no instance: ``datasets`` itself failed
                ahead.append((_NO_MORE, exc))
                return
            if source is _NO_MORE:
                return
            try:
                item = cast(StoreSource, source)
                ahead.append((source, await self._prepare_store(item, priority)))
            except Exception as exc:
                ahead.append((source, exc))

        try:
            await read_ahead()
            while ahead or flight is not None:
                if flight is None:
                    source, prepared = ahead.pop()
                    if isinstance(prepared, Exception):
                        if source is _NO_MORE or not isinstance(prepared, _NOT_SENT):
                            raise prepared
                        yield StoreResult(cast(StoreSource, source), None, prepared)
                        await read_ahead()
                        continue
                    try:
                        mid, pending = await self._send_request(
                            prepared.context_id, prepared.command, prepared.payload, None
                        )
                    except BaseException:
                        await prepared.close()
                        raise
                    flight = (source, prepared, mid, pending)
                    await read_ahead()  # while the peer handles the request
                source, prepared, mid, pending = flight
                chained: list[tuple[int, _Pending]] = []
                if eager and ahead and isinstance(ahead[-1][1], _PreparedStore):
                    pending.chain = functools.partial(
                        self._chain_store, pending, ahead[-1][1], chained
                    )
                try:
                    rsp = await self._await_response(mid, pending)
                finally:
                    pending.chain = None
                    flight = None
                    if chained:  # the next one is on its way: it is in flight now
                        next_source, next_prepared = ahead.pop()
                        flight = (next_source, cast(_PreparedStore, next_prepared), *chained[0])
                    if prepared.owned is not None:
                        await prepared.close()
                status = command_dataset(rsp.raw_command, rsp.layout)
                yield StoreResult(cast(StoreSource, source), status, None)
                if chained:
                    await read_ahead()  # while the peer handles the one in flight
        finally:
            if flight is not None:
                # Left with a request in flight (eager): its response is
                # awaited, so that its place and slot go. Cancelled, they go
                # at once and the response, when it comes, is dropped.
                _, prepared, mid, pending = flight
                try:
                    with contextlib.suppress(Exception):
                        await self._await_response(mid, pending)
                finally:
                    await prepared.close()
            for _, left in ahead:
                if isinstance(left, _PreparedStore):
                    await left.close()

    async def _store(
        self,
        dataset: StoreSource,
        msg_id: int | None = None,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Message:
        """:meth:`send_c_store`, returning the response message itself."""
        prepared = await self._prepare_store(dataset, priority, originator_aet, originator_id)
        try:
            return await self._invoke(
                prepared.context_id, prepared.command, prepared.payload, msg_id
            )
        finally:
            if prepared.owned is not None:  # (a small file read whole owns none)
                await prepared.close()

    async def _prepare_store(
        self,
        dataset: StoreSource,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> _PreparedStore:
        """What a C-STORE request of ``dataset`` sends: its context, command
        and data set (read, or the file to stream it from). Raises what
        :meth:`send_c_store` raises before sending anything."""
        if priority not in (0, 1, 2):
            raise ValueError("priority must be 0 (medium), 1 (high) or 2 (low)")
        self._check_usable()
        owned: BinaryIO | None = None
        try:
            payload: _Payload
            if isinstance(dataset, Dataset):
                sop_class, sop_instance = _instance_uids(dataset)
                cx = self._store_context(sop_class, transfer_syntax_of(dataset))
                payload = encode_dataset(dataset, cx.transfer_syntax[0])
            else:
                if not isinstance(dataset, str | os.PathLike) and not hasattr(dataset, "read"):
                    raise TypeError(
                        "send_c_store() takes a Dataset, a path or a binary file object,"
                        f" not {type(dataset).__name__}"
                    )
                # One worker-thread call opens, probes and, for a small file,
                # reads the whole data set (then closes what it opened).
                whole: bytes | bytearray | None = None
                data: bytes | memoryview | None
                if isinstance(dataset, str | os.PathLike):
                    # Hot in the page cache: read here without blocking (and
                    # without a worker-thread round trip); else in a worker.
                    cached = read_cached(dataset, _INLINE_READ)
                    if cached is NOT_CACHED:
                        whole = await anyio.to_thread.run_sync(_read_small, dataset)
                    else:
                        whole = cast("bytearray | None", cached)
                if whole is not None:
                    # Probing is CPU work, not I/O: done here, where it does
                    # not contend with the worker thread for the GIL.
                    info = probe_buffer(whole)
                    data, owned = memoryview(whole)[info.offset :], None
                else:
                    source = cast("str | os.PathLike[str] | BinaryIO", dataset)
                    info, data, owned = await anyio.to_thread.run_sync(_prepare_file, source)
                sop_class, sop_instance = info.sop_class_uid, info.sop_instance_uid
                cx = self._store_context(sop_class, info.transfer_syntax)
                if data is not None:
                    payload = bytes(data) + b"\x00" if len(data) % 2 else data
                else:
                    fp = owned if owned is not None else cast(BinaryIO, dataset)
                    payload = _FileSource(fp, info.offset)
            assert cx.context_id is not None
            command: dict[str, Any] | Callable[[int], bytes]
            if (
                isinstance(sop_instance, str)
                and (originator_aet is None or type(originator_aet) is str)
                and (
                    originator_id is None
                    or (type(originator_id) is int and 0 <= originator_id <= 0xFFFF)
                )
            ):
                command = functools.partial(
                    encode_store_request,
                    sop_class=sop_class,
                    sop_instance=sop_instance,
                    priority=priority,
                    originator_aet=originator_aet,
                    originator_id=originator_id,
                )
            else:
                command = {
                    "CommandField": CommandField.C_STORE_RQ,
                    "AffectedSOPClassUID": sop_class,
                    "Priority": priority,
                    "CommandDataSetType": DATASET_PRESENT,
                    "AffectedSOPInstanceUID": sop_instance,
                    "MoveOriginatorApplicationEntityTitle": originator_aet,
                    "MoveOriginatorMessageID": originator_id,
                }
        except BaseException:
            if owned is not None:
                await _close_in_worker(owned)
            raise
        return _PreparedStore(cx.context_id, command, payload, owned)

    def send_c_find(
        self,
        dataset: Dataset,
        query_model: str | UID,
        msg_id: int | None = None,
        priority: int = 2,
    ) -> Responses:
        """Send a C-FIND request (PS3.4 C.4.1) with ``dataset`` as its identifier.

        Returns a :class:`Responses`: iterate it (``async for status,
        identifier in ...``) for each pending match and then the final status
        (with ``identifier`` None), or use it as an async context manager;
        leaving early sends C-CANCEL and drains to the final response.
        ``query_model`` is the SOP Class UID of the information model (e.g.
        ``sop_class.StudyRootQueryRetrieveInformationModelFind``).
        """
        return self._query(CommandField.C_FIND_RQ, dataset, query_model, msg_id, priority)

    def send_c_get(
        self,
        dataset: Dataset,
        query_model: str | UID,
        msg_id: int | None = None,
        priority: int = 2,
    ) -> Responses:
        """Send a C-GET request (PS3.4 C.4.3); like :meth:`send_c_find`.

        The C-STORE sub-operations arrive on this association and go to the
        EVT_C_STORE handler given to ``associate()`` (propose the storage
        contexts with the SCP role: ``build_role(uid, scp_role=True)``).
        Pending statuses carry the sub-operation counts; the final one the
        Failed SOP Instance UID List in its identifier, if any failed.
        """
        return self._query(CommandField.C_GET_RQ, dataset, query_model, msg_id, priority)

    def send_c_move(
        self,
        dataset: Dataset,
        move_aet: str,
        query_model: str | UID,
        msg_id: int | None = None,
        priority: int = 2,
    ) -> Responses:
        """Send a C-MOVE request (PS3.4 C.4.2): the SCP stores the matches at ``move_aet``.

        Like :meth:`send_c_find`; the sub-operations go over an association the
        SCP opens to ``move_aet`` (which may be this AE's own storage SCP).
        """
        return self._query(
            CommandField.C_MOVE_RQ, dataset, query_model, msg_id, priority, move_aet=move_aet
        )

    async def _n_invoke(
        self,
        command_field: int,
        class_uid: str | UID,
        instance_uid: str | UID | None,
        dataset: Dataset | None,
        msg_id: int | None,
        meta_uid: str | UID | None,
        *,
        type_id: int | None = None,
        identifiers: Sequence[Any] | None = None,
    ) -> tuple[Dataset, Dataset | None]:
        """Send an N request and wait for its response: ``(status, reply)``."""
        if dataset is not None and not isinstance(dataset, Dataset):
            raise TypeError(f"the data set must be a pydicom Dataset, not {type(dataset).__name__}")
        fields = request_fields(
            command_field,
            class_uid,
            instance_uid,
            has_dataset=dataset is not None,
            type_id=type_id,
            identifiers=identifiers,
        )
        # The context is the one negotiated for the SOP class, or for the
        # Meta SOP Class it belongs to (Print Management). An N-EVENT-REPORT
        # goes the other way (from the SOP class's SCP), so either role will do.
        as_scu = None if command_field == CommandField.N_EVENT_REPORT_RQ else True
        cx = self._context_for(str(meta_uid or class_uid), as_scu=as_scu)
        assert cx.context_id is not None
        ts = cx.transfer_syntax[0]
        data = None if dataset is None else encode_dataset(dataset, ts)
        rsp = await self._invoke(cx.context_id, fields, data, msg_id)
        if rsp.command_field != command_field | 0x8000:
            LOGGER.error("%s answered with %s", MESSAGE_SPECS[command_field].name, rsp.name)
            raise DIMSEError(f"{MESSAGE_SPECS[command_field].name} answered with {rsp.name}")
        status = command_dataset(rsp.raw_command, rsp.layout)
        return status, reply_of(status, rsp.data, ts)

    async def send_n_event_report(
        self,
        dataset: Dataset | None,
        event_type: int,
        class_uid: str | UID,
        instance_uid: str | UID,
        msg_id: int | None = None,
        meta_uid: str | UID | None = None,
    ) -> tuple[Dataset, Dataset | None]:
        """Send an N-EVENT-REPORT request (PS3.7 10.1.1): report event ``event_type``.

        ``dataset`` is the Event Information (or ``None``); ``class_uid`` and
        ``instance_uid`` name the object the event happened to. Usually sent
        by a SOP class's SCP (Storage Commitment, procedure steps, Print),
        on an association either side requested. Returns ``(status,
        event_reply)``: the response's command set as a Dataset, and the Event
        Reply when the status is a success or a warning (an empty Dataset if
        the peer sent none), else ``None``. ``meta_uid`` picks the context of
        a Meta SOP Class the SOP class was negotiated under. Raises like
        :meth:`send_c_echo`, and ``ValueError`` for an invalid argument.
        """
        return await self._n_invoke(
            CommandField.N_EVENT_REPORT_RQ,
            class_uid,
            instance_uid,
            dataset,
            msg_id,
            meta_uid,
            type_id=event_type,
        )

    async def send_n_get(
        self,
        identifier_list: Sequence[Any] | None,
        class_uid: str | UID,
        instance_uid: str | UID,
        msg_id: int | None = None,
        meta_uid: str | UID | None = None,
    ) -> tuple[Dataset, Dataset | None]:
        """Send an N-GET request (PS3.7 10.1.2): read attributes of a SOP instance.

        ``identifier_list`` holds the tags to read (ints, ``BaseTag``,
        keywords or ``(group, element)`` pairs); ``None`` or an empty list
        asks for every attribute. Returns ``(status, attribute_list)`` like
        :meth:`send_n_event_report`.
        """
        return await self._n_invoke(
            CommandField.N_GET_RQ,
            class_uid,
            instance_uid,
            None,
            msg_id,
            meta_uid,
            identifiers=identifier_list,
        )

    async def send_n_set(
        self,
        dataset: Dataset,
        class_uid: str | UID,
        instance_uid: str | UID,
        msg_id: int | None = None,
        meta_uid: str | UID | None = None,
    ) -> tuple[Dataset, Dataset | None]:
        """Send an N-SET request (PS3.7 10.1.3): modify attributes of a SOP instance.

        ``dataset`` is the Modification List. Returns ``(status,
        attribute_list)`` like :meth:`send_n_event_report`.
        """
        if dataset is None:
            raise ValueError("N-SET needs a data set (the Modification List)")
        return await self._n_invoke(
            CommandField.N_SET_RQ, class_uid, instance_uid, dataset, msg_id, meta_uid
        )

    async def send_n_action(
        self,
        dataset: Dataset | None,
        action_type: int,
        class_uid: str | UID,
        instance_uid: str | UID,
        msg_id: int | None = None,
        meta_uid: str | UID | None = None,
    ) -> tuple[Dataset, Dataset | None]:
        """Send an N-ACTION request (PS3.7 10.1.4): ask for action ``action_type``.

        ``dataset`` is the Action Information (or ``None``), e.g. the
        Referenced SOP Sequence of a Storage Commitment request (class
        ``StorageCommitmentPushModel``, instance
        ``StorageCommitmentPushModelInstance``, action type 1). Returns
        ``(status, action_reply)`` like :meth:`send_n_event_report`.
        """
        return await self._n_invoke(
            CommandField.N_ACTION_RQ,
            class_uid,
            instance_uid,
            dataset,
            msg_id,
            meta_uid,
            type_id=action_type,
        )

    async def send_n_create(
        self,
        dataset: Dataset | None,
        class_uid: str | UID,
        instance_uid: str | UID | None = None,
        msg_id: int | None = None,
        meta_uid: str | UID | None = None,
    ) -> tuple[Dataset, Dataset | None]:
        """Send an N-CREATE request (PS3.7 10.1.5): create a SOP instance.

        ``dataset`` is the Attribute List (or ``None``). Without
        ``instance_uid`` the SCP assigns one: it is
        ``status.AffectedSOPInstanceUID``. Returns ``(status,
        attribute_list)`` like :meth:`send_n_event_report`.
        """
        return await self._n_invoke(
            CommandField.N_CREATE_RQ, class_uid, instance_uid, dataset, msg_id, meta_uid
        )

    async def send_n_delete(
        self,
        class_uid: str | UID,
        instance_uid: str | UID,
        msg_id: int | None = None,
        meta_uid: str | UID | None = None,
    ) -> Dataset:
        """Send an N-DELETE request (PS3.7 10.1.6): delete a SOP instance.

        Returns the status only (the response's command set as a Dataset),
        as pynetdicom does.
        """
        status, _ = await self._n_invoke(
            CommandField.N_DELETE_RQ, class_uid, instance_uid, None, msg_id, meta_uid
        )
        return status

    def _query(
        self,
        command_field: int,
        dataset: Dataset,
        query_model: str | UID,
        msg_id: int | None,
        priority: int,
        move_aet: str | None = None,
    ) -> Responses:
        if priority not in (0, 1, 2):
            raise ValueError("priority must be 0 (medium), 1 (high) or 2 (low)")
        if not isinstance(dataset, Dataset):
            raise TypeError(
                f"the identifier must be a pydicom Dataset, not {type(dataset).__name__}"
            )
        model = UID(str(query_model))
        cx = self._context_for(model)
        assert cx.context_id is not None
        ts = cx.transfer_syntax[0]
        fields: dict[str, Any] = {
            "CommandField": command_field,
            "AffectedSOPClassUID": model,
            "Priority": priority,
            "CommandDataSetType": DATASET_PRESENT,
        }
        if move_aet is not None:
            fields["MoveDestination"] = move_aet
        return Responses(self, cx.context_id, ts, fields, encode_dataset(dataset, ts), msg_id)

    async def _start_stream(
        self, context_id: int, ts: UID, fields: dict[str, Any], data: bytes, msg_id: int | None
    ) -> _Pending:
        """Send a multi-response request; its slot keeps a window place until released."""
        await self._reap_abandoned()
        self._check_usable()
        await self._acquire_window()
        try:
            self._check_usable()
            mid = self._allocate_id(msg_id)
            fields["MessageID"] = mid
            pending = _Pending(stream=True)
            pending.message_id, pending.context_id, pending.transfer_syntax = mid, context_id, ts
            pending.owner = anyio.get_current_task().id
            self._pending[mid] = pending
            try:
                await self._send_message(context_id, encode_command(fields), data)
            except BaseException:
                del self._pending[mid]
                raise
        except BaseException:
            self._invoke_window.release()
            raise
        self._mark_sent(pending)
        return pending

    async def _acquire_window(self) -> bool:
        """Take a place in the invocation window; True if that meant waiting.

        If it is full and some places are held by streams this very task left
        unfinished (not being iterated), waiting would deadlock: those streams
        are cancelled first (as an abandoned iteration is).
        """
        window = self._invoke_window
        if window.value > 0:
            # A free place is taken without a checkpoint: a pending
            # cancellation is delivered at the wait for the response.
            window.acquire_nowait()
            return False
        if window.value == 0:
            me = anyio.get_current_task().id
            for pending in list(self._pending.values()):
                if pending.queue is not None and pending.owner == me and not pending.in_next:
                    LOGGER.info(
                        "Cancelling message %d, left unfinished by the task starting another",
                        pending.message_id,
                    )
                    with anyio.CancelScope(shield=True):
                        await self._cancel_stream(pending)
        await window.acquire()
        return True

    async def _next_response(self, pending: _Pending) -> Message:
        """The next response of a stream, in order, waiting for it if need be."""
        queue = pending.queue
        assert queue is not None
        while not queue:
            if pending.error is not None:
                raise pending.error
            pending.done = _Signal()
            await pending.done.wait()
        msg = queue.popleft()
        self._stream_backlog -= 1
        drained = self._backlog_drained
        if drained is not None and self._stream_backlog <= _STREAM_BACKLOG // 2:
            self._backlog_drained = None
            drained.set()
        return msg

    def _release_stream(self, pending: _Pending) -> None:
        """Forget a finished stream: its message ID and its window place."""
        if pending.released:
            return
        pending.released = True
        if self._pending.get(pending.message_id) is pending:
            del self._pending[pending.message_id]
        if pending.queue:
            self._stream_backlog -= len(pending.queue)
            pending.queue.clear()
        self._invoke_window.release()

    async def _cancel_stream(self, pending: _Pending) -> None:
        """Send C-CANCEL (unless the final response came) and drain to the final response.

        Run shielded by the callers. Responses that arrive are discarded; if
        the association ends first, that ends it too.
        """
        if pending.released:
            return
        try:
            if not pending.finished:
                LOGGER.info("Sending C-CANCEL for message %d", pending.message_id)
                command = encode_command(
                    {
                        "CommandField": CommandField.C_CANCEL_RQ,
                        "MessageIDBeingRespondedTo": pending.message_id,
                        "CommandDataSetType": NO_DATASET,
                    }
                )
                await self._send_message(pending.context_id, command, None)
            while True:
                msg = await self._next_response(pending)
                if msg.command.get("Status") not in _PENDING:
                    break
        except (DicomNetworkError, TimeoutError) as exc:
            LOGGER.debug("Cancelling message %d ended with %s", pending.message_id, exc)
        finally:
            self._release_stream(pending)

    def _abandon(self, pending: _Pending) -> None:
        """A stream's iterator was dropped unfinished: cancel it before the next operation."""
        if not pending.released and not self._ul.is_closed:
            self._abandoned.append(pending)

    async def _reap_abandoned(self) -> None:
        while self._abandoned:
            pending = self._abandoned.pop()
            with anyio.CancelScope(shield=True):
                await self._cancel_stream(pending)

    async def _cancel_streams(self) -> None:
        """Cancel every unfinished stream (before a release)."""
        await self._reap_abandoned()
        for pending in list(self._pending.values()):
            if pending.queue is not None and not pending.released:
                with anyio.CancelScope(shield=True):
                    await self._cancel_stream(pending)

    def _store_context(self, sop_class: UID, transfer_syntax: UID | None) -> PresentationContext:
        """The accepted SCU context for ``sop_class`` in ``transfer_syntax`` (any if None)."""
        key = (sop_class, transfer_syntax, len(self._contexts))
        found = self._store_context_cache.get(key)
        if found is not None:
            return found
        for cx in self.accepted_contexts:
            if (
                cx.abstract_syntax == sop_class
                and cx.as_scu
                and (transfer_syntax is None or cx.transfer_syntax[0] == transfer_syntax)
            ):
                if len(self._store_context_cache) < 1024:
                    self._store_context_cache[key] = cx
                return cx
        what = f"{sop_class} ({sop_class.name})"
        if transfer_syntax is not None:
            what += f" in {transfer_syntax.name}"
        raise NoAcceptedContext(f"no accepted presentation context for {what}")


#: A request other than C-STORE whose data set is over ae.spool_threshold
#: (not kept: see Association._spill) is refused out of resources: PS3.4
#: C.4.1.1.4 (C-FIND 0xA700), C.4.2.1.5 and C.4.3.1.4 (C-MOVE and C-GET
#: 0xA701, unable to calculate the number of matches); N services 0x0213,
#: resource limitation (PS3.7 C.5).
_TOO_LARGE_STATUS: dict[int, int] = {
    CommandField.C_FIND_RQ: 0xA700,
    CommandField.C_GET_RQ: 0xA701,
    CommandField.C_MOVE_RQ: 0xA701,
}

#: The failure status answering a request whose command set is invalid, per
#: service (Storage: cannot understand, PS3.4 B.2.3; Q/R: unable to process,
#: C.4.1.1.4); other requests get 0x0110 processing failure (PS3.7 C.4.2).
_INVALID_STATUS: dict[int, int] = {
    CommandField.C_STORE_RQ: 0xC210,
    CommandField.C_FIND_RQ: 0xC000,
    CommandField.C_GET_RQ: 0xC000,
    CommandField.C_MOVE_RQ: 0xC000,
}


#: Meta SOP Classes: a context for one serves the SOP classes it groups.
_META_SOP_CLASSES: Final = frozenset(
    (
        "1.2.840.10008.5.1.1.9",  # Basic Grayscale Print Management Meta
        "1.2.840.10008.5.1.1.9.1",  # Referenced Grayscale Print Management Meta (retired)
        "1.2.840.10008.5.1.1.18",  # Basic Color Print Management Meta
        "1.2.840.10008.5.1.1.18.1",  # Referenced Color Print Management Meta (retired)
        "1.2.840.10008.5.1.1.32",  # Pull Stored Print Management Meta (retired)
        "1.2.840.10008.5.1.4.32",  # General Purpose Worklist Management Meta (retired)
        "1.2.840.10008.3.1.2.1.4",  # Detached Patient Management Meta (retired)
        "1.2.840.10008.3.1.2.5.4",  # Detached Results Management Meta (retired)
        "1.2.840.10008.3.1.2.5.5",  # Detached Study Management Meta (retired)
    )
)


def _peer_uid(value: object) -> UID:
    """A UID a peer sent in its A-ASSOCIATE PDU, as it is: the PDU decoder
    accepted it (see :func:`aiodicom.pdu._text_uid`); pydicom is not to
    validate it again (a warning per association, or an error if so set)."""
    return value if isinstance(value, UID) else UID(str(value), validation_mode=_IGNORE)


def _check_request(msg: Message) -> DIMSEError | None:
    """The problem with a received request's command set, if any (PS3.7 9.3, 10.3)."""
    try:
        check_command(msg.command, decoded=True)
    except DIMSEError as exc:
        return exc
    return None


class _HandlerItems:
    """Pull items from what a C-FIND/C-GET/C-MOVE handler returned.

    An async generator (the usual), a sync generator or any iterable. A sync
    generator runs on the event loop thread: it must not block.
    """

    __slots__ = ("_agen", "_it")

    def __init__(self, result: Any) -> None:
        self._agen = result if hasattr(result, "__anext__") else None
        self._it = None if self._agen is not None else iter(result)

    async def next(self) -> tuple[bool, Any]:
        """``(True, item)``, or ``(False, None)`` once the handler is exhausted."""
        if self._agen is not None:
            try:
                return True, await self._agen.__anext__()
            except StopAsyncIteration:
                return False, None
        assert self._it is not None
        try:
            return True, next(self._it)
        except StopIteration:
            return False, None

    async def aclose(self) -> None:
        """Close the generator (its ``finally`` blocks run), shielded."""
        with anyio.CancelScope(shield=True):
            try:
                if self._agen is not None and hasattr(self._agen, "aclose"):
                    await self._agen.aclose()
                elif self._it is not None and hasattr(self._it, "close"):
                    self._it.close()
            except Exception:
                LOGGER.exception("Exception closing a handler's generator")


@dataclass(slots=True)
class _SubStep:
    """What a C-GET/C-MOVE handler gave next, taken in advance.

    ``kind`` "end": the sub-operations end, the final response has
    ``fields`` (its Status included; None: the status the counts call for).
    "store": ``dataset`` to send, ``prepared`` for sending, or the ``error``
    preparing it raised (raised again when its turn comes), or
    ``unreadable`` (its bulk data could not be stripped).
    """

    kind: str
    fields: dict[str, Any] | None = None
    dataset: Any = None
    originator: str | None = None
    originator_id: int | None = None
    prepared: _PreparedStore | None = None
    error: Exception | None = None
    unreadable: bool = False

    async def prepare(self, store_to: Association) -> None:
        """Make the request on ``store_to``; an error is kept for its turn."""
        try:
            self.prepared = await store_to._prepare_store(
                self.dataset, originator_aet=self.originator, originator_id=self.originator_id
            )
        except Exception as exc:
            self.error = exc

    async def close(self) -> None:
        if self.prepared is not None:
            await self.prepared.close()


class _SubOperations:
    """The sub-operation counts of a C-GET/C-MOVE (PS3.4 C.4.2.1.5, C.4.3.1.4)."""

    __slots__ = ("completed", "failed", "failed_uids", "remaining", "started", "warning")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.completed = 0
        self.failed = 0
        self.warning = 0
        self.failed_uids: list[str] = []
        self.started = False

    def record(self, status: int, uid: Any) -> None:
        """Count one sub-operation by the status of its C-STORE response."""
        self.remaining = max(0, self.remaining - 1)
        if status == 0x0000:
            self.completed += 1
        elif status == 0x0001 or (status & 0xF000) == 0xB000:
            self.warning += 1
        else:
            self.failed += 1
            if uid:
                self.failed_uids.append(str(uid))

    def pending_command(self, head: bytes) -> bytes:
        """A pending response's command set: ``head`` (its other fields, see
        :func:`encode_pending_counts`), then the counts :meth:`fields` gives."""
        return encode_pending_counts(
            head,
            min(self.remaining, 0xFFFF),
            min(self.completed, 0xFFFF),
            min(self.failed, 0xFFFF),
            min(self.warning, 0xFFFF),
        )

    def fields(self, *, pending: bool) -> dict[str, Any]:
        """The count elements of a response (Remaining only while pending or cancelled)."""
        out = {
            "NumberOfCompletedSuboperations": min(self.completed, 0xFFFF),
            "NumberOfFailedSuboperations": min(self.failed, 0xFFFF),
            "NumberOfWarningSuboperations": min(self.warning, 0xFFFF),
        }
        if pending:
            out["NumberOfRemainingSuboperations"] = min(self.remaining, 0xFFFF)
        return out

    def final(self, status: int | None) -> dict[str, Any]:
        """The final response: ``status`` if given, else the one the counts call for."""
        if status is None:
            if not self.failed and not self.warning:
                status = 0x0000
            elif not self.completed and not self.warning:
                status = 0xA702  # every sub-operation failed
            else:
                status = 0xB000  # some failed or had warnings
        out: dict[str, Any] = {"Status": status, **self.fields(pending=status == 0xFE00)}
        if self.failed_uids:
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = self.failed_uids
            out["_identifier"] = identifier
        return out


_WITHOUT_BULK_DATA = "1.2.840.10008.5.1.4.1.2.5.3"
#: Bulk data left out by Composite Instance Retrieve Without Bulk Data (PS3.4 Z.1.2.1).
_BULK_DATA = (
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelDataProviderURL",
    "SpectroscopyData",
    "EncapsulatedDocument",
)
#: Repeating groups (50xx,200C) Audio Sample Data, (50xx,3000) Curve Data,
#: (60xx,3000) Overlay Data.
_BULK_REPEATERS = ((0x5000, 0x200C), (0x5000, 0x3000), (0x6000, 0x3000))


def _strip_bulk_data(source: Any) -> Dataset:
    """A copy of an instance (Dataset, path or file) without its bulk data (blocking)."""
    from pydicom import dcmread

    ds = source if isinstance(source, Dataset) else dcmread(source, force=True)
    bulk = {BaseTag(tag_for_keyword(keyword) or 0) for keyword in _BULK_DATA}
    for group, element in _BULK_REPEATERS:
        bulk.update(BaseTag(((group + i) << 16) | element) for i in range(0, 0x20, 2))
    # A new Dataset around the same (unconverted) elements: the caller's is untouched.
    out = Dataset({tag: elem for tag, elem in ds.items() if tag not in bulk})
    if "file_meta" in ds.__dict__:
        out.file_meta = ds.file_meta
    implicit, little = ds.original_encoding
    if implicit is not None and little is not None:
        out.set_original_encoding(implicit, little, ds.original_character_set)
    return out


def _count(value: Any) -> int | None:
    """The number of sub-operations a handler yielded first, if it is one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _move_destination(item: Any) -> tuple[str, int, dict[str, Any]] | None:
    """``(host, port[, options])`` as a C-MOVE handler yields it; None if unknown."""
    if not isinstance(item, tuple | list) or len(item) not in (2, 3):
        raise TypeError(f"expected (host, port), got {item!r}")
    host, port = item[0], item[1]
    if host is None or port is None:
        return None
    options = dict(item[2]) if len(item) == 3 and item[2] else {}
    return str(host), int(port), options


def _storage_contexts(ae: AE) -> list[PresentationContext]:
    """The AE's supported storage contexts with the uncompressed syntaxes, at most 128."""
    from .presentation import DEFAULT_TRANSFER_SYNTAXES, build_context
    from .sop_class import STORAGE_CLASSES

    storage = set(STORAGE_CLASSES)
    out = [
        build_context(cx.abstract_syntax, list(DEFAULT_TRANSFER_SYNTAXES))
        for cx in ae.supported_contexts
        if cx.abstract_syntax in storage
    ]
    return out[:128]


async def _instance_uid_of(dataset: Any) -> str | None:
    """The SOP Instance UID of a failed sub-operation's instance, for the
    Failed SOP Instance UID List (PS3.4 C.4.2.1.4, C.4.3.1.3): a Dataset's, or
    a file's as its head gives it (read in a worker thread); None if it
    cannot be told (an open file object is left where it is)."""
    if isinstance(dataset, Dataset):
        uid = dataset.get("SOPInstanceUID")
        return None if uid is None else str(uid)
    if isinstance(dataset, str | os.PathLike):

        def probe() -> str | None:
            with open(dataset, "rb") as f:
                return probe_part10(f).sop_instance_uid or None

        try:
            return await anyio.to_thread.run_sync(probe)
        except Exception:  # unreadable or not DICOM: the count is all there is
            return None
    return None


def _instance_uids(ds: Dataset) -> tuple[UID, UID]:
    sop_class = ds.get("SOPClassUID")
    sop_instance = ds.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        raise ValueError("the data set to store has no SOP Class UID or SOP Instance UID")
    return UID(str(sop_class)), UID(str(sop_instance))


def _read_small(path: str | os.PathLike[str]) -> bytes | None:
    """The whole content of a file of up to ``_INLINE_READ`` bytes, in one read (blocking).

    ``None`` for a larger file (or one that changed size while read): the
    caller then streams it.
    """
    with open(path, "rb", buffering=0) as raw:
        size = os.fstat(raw.fileno()).st_size
        if size > _INLINE_READ:
            return None
        whole = raw.read(size + 1)
    return whole if whole is not None and len(whole) == size else None


def _prepare_file(
    source: str | os.PathLike[str] | BinaryIO,
) -> tuple[Part10Info, bytes | None, BinaryIO | None]:
    """Open (a path), probe, and for a file object read a small data set whole (blocking).

    Returns ``(info, data, opened)``: ``data`` is the whole data set when a
    file object holds at most ``_INLINE_READ`` bytes of it, else ``None`` and
    the file is left at the data set's start for streaming. A path gets here
    only when :func:`_read_small` found it large: it is always streamed.
    ``opened`` is the file this call opened (the caller closes it).
    """
    opened = open(source, "rb") if isinstance(source, str | os.PathLike) else None  # noqa: SIM115
    fp = opened if opened is not None else source
    assert not isinstance(fp, str | os.PathLike)
    try:
        info = probe_part10(fp)
        fp.seek(info.offset)
        if opened is None and _INLINE_READ:  # 0: stream every file
            data = fp.read(_INLINE_READ + 1)
            if len(data) <= _INLINE_READ:
                return info, data, None
            fp.seek(info.offset)
    except BaseException:
        if opened is not None:
            opened.close()
        raise
    return info, None, opened


def _store_failure(exc: Exception) -> int:
    """The Storage status for an exception out of the EVT_C_STORE handler (PS3.4 B.2.3)."""
    if isinstance(exc, DatasetMismatch):
        LOGGER.error("C-STORE: %s: answering 0xA900", exc)
        return 0xA900
    if isinstance(exc, DIMSEError):
        LOGGER.error("C-STORE: the data set cannot be decoded (%s): answering 0xC210", exc)
        return 0xC210
    if isinstance(exc, MemoryError):
        LOGGER.error("C-STORE handler ran out of memory: answering 0xA700", exc_info=exc)
        return 0xA700
    if isinstance(exc, OSError) and exc.errno in _NO_RESOURCES:
        LOGGER.error("C-STORE handler is out of resources: answering 0xA700", exc_info=exc)
        return 0xA700
    LOGGER.error("Exception in the handler bound to EVT_C_STORE: answering 0xC211", exc_info=exc)
    return 0xC211


def _handler_failure(kind: evt.EventType, exc: Exception) -> int:
    """The status answering a C-ECHO or C-STORE whose handler raised ``exc``."""
    if kind is evt.EVT_C_STORE:
        return _store_failure(exc)
    LOGGER.error("Exception in the handler bound to %s", kind.name, exc_info=exc)
    return 0x0110


def _is_plain(handler: Any) -> bool:
    """True if ``handler`` is not an ``async def`` (nor an object with one as ``__call__``)."""
    if inspect.iscoroutinefunction(handler):
        return False
    call = getattr(type(handler), "__call__", None)  # noqa: B004 - the class's, not the instance's
    return not (call is not None and inspect.iscoroutinefunction(call))


def _call_plain(handler: evt.Handler, event: evt.Event, args: tuple[Any, ...]) -> Any:
    """Call a plain handler where no task runs (an I/O callback of the event loop).

    sniffio, if anyio uses it, finds no task there: it is told it is asyncio
    for the duration of the call, so the handler may still use anyio.
    """
    sniffio = sys.modules.get("sniffio")
    local = getattr(sniffio, "thread_local", None)
    if local is None:
        return handler(event, *args)
    prior = getattr(local, "name", None)
    local.name = "asyncio"
    try:
        return handler(event, *args)
    finally:
        local.name = prior


class Responses:
    """The responses to a C-FIND, C-GET or C-MOVE request.

    Both an async iterator of ``(status, identifier)`` and an async context
    manager; made by :meth:`Association.send_c_find` and its siblings. The
    request is sent when iteration (or the ``async with`` block) starts.
    Each pending response gives its status (a Dataset: ``.Status``, and for
    C-GET/C-MOVE the sub-operation counts) and its identifier; the final
    response ends the iteration with ``(status, identifier_or_None)``.

    Leaving the ``async with`` block before the final response, cancelling
    the task that iterates, or dropping an unfinished iterator (a bare
    ``break``) sends C-CANCEL and drains the responses up to the final one,
    under a shield, so the association stays usable. A dropped iterator is
    cancelled before the association's next operation or its release.
    """

    __slots__ = (
        "__weakref__",
        "_assoc",
        "_context_id",
        "_data",
        "_done",
        "_fields",
        "_finalizer",
        "_msg_id",
        "_pending",
        "_ts",
    )

    def __init__(
        self,
        assoc: Association,
        context_id: int,
        transfer_syntax: UID,
        fields: dict[str, Any],
        data: bytes,
        msg_id: int | None,
    ) -> None:
        self._assoc = assoc
        self._context_id = context_id
        self._ts = transfer_syntax
        self._fields = fields
        self._data = data
        self._msg_id = msg_id
        self._pending: _Pending | None = None
        self._done = False
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def message_id(self) -> int | None:
        """The request's Message ID, once it was sent."""
        return None if self._pending is None else self._pending.message_id

    async def _start(self) -> _Pending:
        if self._pending is None:
            assoc = self._assoc
            self._pending = await assoc._start_stream(
                self._context_id, self._ts, self._fields, self._data, self._msg_id
            )
            self._finalizer = weakref.finalize(self, assoc._abandon, self._pending)
        return self._pending

    def _finish(self) -> None:
        self._done = True
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._pending is not None:
            self._assoc._release_stream(self._pending)

    def __aiter__(self) -> Responses:
        return self

    async def __anext__(self) -> tuple[Dataset, Dataset | None]:
        if self._done:
            raise StopAsyncIteration
        pending = await self._start()
        pending.in_next = True
        try:
            msg = await self._assoc._next_response(pending)
        except Exception:
            pending.in_next = False
            self._finish()  # the association ended: nothing to cancel
            raise
        except BaseException:
            pending.in_next = False
            await self.aclose()  # cancelled: C-CANCEL and drain, shielded
            raise
        pending.in_next = False
        status = command_dataset(msg.raw_command, msg.layout)
        if msg.command.get("Status") not in _PENDING:
            self._finish()
        identifier = None
        if msg.data is not None:
            identifier = decode_dataset(msg.data, self._ts)
        return status, identifier

    async def aclose(self) -> None:
        """Cancel the operation if it is not finished (C-CANCEL, then drain)."""
        if self._done:
            return
        self._done = True
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._pending is not None:
            with anyio.CancelScope(shield=True):
                await self._assoc._cancel_stream(self._pending)

    async def __aenter__(self) -> Responses:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "done" if self._done else "open" if self._pending else "not sent"
        return f"<Responses to message {self.message_id} ({state})>"


#: The C-ECHO-RQ command set of Verification, given its Message ID.
_ECHO_REQUEST: Callable[[int], bytes] = functools.partial(
    encode_echo_request, sop_class=VERIFICATION
)


def _current_time() -> float:
    """anyio.current_time(), without its backend lookup on asyncio."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return anyio.current_time()


def _cap(value: int) -> int:
    return MAX_ASYNC_WINDOW if value == 0 else min(value, MAX_ASYNC_WINDOW)


def _status_fields(status: Any, failure: int, response: int) -> dict[str, Any]:
    """The Status (and optional comment elements) of a handler's answer, for
    the response of Command Field ``response``.

    Only values that encode, and fields the response has (PS3.7 9.3: Error
    Comment and Offending Element, not Error ID, which is the DIMSE-N
    services'), go out: a Status that is no 16-bit code is answered
    ``failure``; an Error Comment is made a valid LO (:func:`error_comment`);
    an Offending Element that is no list of tags is left out (and logged).
    """
    if isinstance(status, Dataset):
        allowed = MESSAGE_SPECS[response].fields
        keywords = ("Status", "ErrorComment", "OffendingElement")
        out = status_elements(status, (k for k in keywords if k in allowed))
        if "OffendingElement" in out and not _are_tags(out["OffendingElement"]):
            LOGGER.error(
                "Handler status Offending Element %r: left out", out.pop("OffendingElement")
            )
        code = out.get("Status")
    else:
        out = {}
        try:
            code = int(status)
        except (TypeError, ValueError):
            code = None
    if not is_us(code):
        LOGGER.error("Handler returned an invalid status %r: answering 0x%04X", status, failure)
        code = failure
    out["Status"] = code
    return out


def _are_tags(value: Any) -> bool:
    values = [value] if isinstance(value, int) else value
    try:
        return all(isinstance(v, int) and 0 <= v <= 0xFFFFFFFF for v in values)
    except TypeError:
        return False
