"""Receiving the rest of a spooled data set straight from the socket into its file.

A data set past ``ae.spool_threshold`` arrives as a run of P-DATA-TF PDUs,
each (from nearly every sender) one PDV holding the next fragment. Read the
usual way, every byte is copied out of the socket into a receive buffer and
then into the spool file's page cache, and every PDU costs the event loop a
few steps. Here a worker thread takes the connection over for the rest of
the data set: it reads each PDU's 12 bytes of headers, checks them, and
moves the fragment from the socket through a pipe into the file with
``splice(2)`` (Linux), which copies it once, in the kernel. Small PDUs
(fragments under :data:`SPLICE_MIN`) are read several at a time into a
buffer instead, and their fragments written together.

The job hands the connection back after the data set's last fragment, and
as soon as anything else comes: another kind of PDU (an A-ABORT, say), a
PDU with more than one PDV, one longer than our maximum, a command fragment
or a fragment on another presentation context. What it read and did not
take, from the start of that PDU on, is given back
(:attr:`SpliceJob.leftover`) for the reader to parse and judge as always.

Blocking, and no asyncio here: :meth:`SpliceJob.run` is for a worker thread,
and is tested over socket pairs byte for byte. :meth:`SpliceJob.stop` may be
called from any thread; :meth:`SpliceJob.close` releases a job that may
never have run.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import select
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from ._spool import WRITE_CALL, _write_fd

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ("AVAILABLE", "Outcome", "SpliceJob")

#: splice(2) exists here (Linux, Python 3.10+). ``AIODICOM_SPLICE=0`` in the
#: environment turns the whole path off (the data set is then read as any other).
AVAILABLE = hasattr(os, "splice") and os.environ.get("AIODICOM_SPLICE", "1") != "0"

#: The pipe a job moves the bytes through (it asks for this much room; the
#: kernel's default, 64 KiB, if it may not have it).
PIPE_SIZE = 1 << 20
#: A fragment this long or longer is spliced; shorter ones (a sender's
#: small PDUs) are read into a buffer, several PDUs a read, and written
#: together with one writev: per PDU, splice costs four system calls
#: (two header reads, two splices), which past a few tens of KiB is less
#: than the second copy, and below it more (at 16 KiB PDUs, 31 to 34 ms
#: of CPU per 64 MB against 21; at 256 KiB, 16.6 against 21.3).
SPLICE_MIN = 64 << 10
#: The buffer small PDUs are read into.
READ_BUFFER = 1 << 20
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
#: What splice() into a file fails with where the file system cannot take it.
_NO_FILE_SPLICE = frozenset((errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP))
#: (Not POLLPRI: urgent data a peer sent would wake every poll, a spin.)
_POLL_IN = select.POLLIN | select.POLLERR | select.POLLHUP
#: poll() takes a C int of milliseconds.
_POLL_MAX_MS = (1 << 31) - 1

_SET_PIPE_SIZE: int | None = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None

_T = TypeVar("_T")

_P_DATA_TF = 0x04
_PDU_HEADER = 6
_PDV_HEADER = 6


class Outcome(enum.Enum):
    """How a job ended."""

    #: The last fragment is in the file; the connection is at a PDU boundary.
    LAST = "last"
    #: A PDU it does not take came next; the connection is at its start,
    #: with what was read of it in :attr:`SpliceJob.leftover`.
    HANDED_BACK = "handed back"
    #: The peer closed the connection (or it failed, :attr:`SpliceJob.socket_error`).
    CLOSED = "closed"
    #: Nothing arrived for the timeout.
    TIMED_OUT = "timed out"
    #: :meth:`SpliceJob.stop` was called.
    STOPPED = "stopped"


class _End(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


class SpliceJob:
    """Receive data set fragments from a socket into a file (see the module docstring).

    ``sock_fd`` and ``file_fd`` are duplicated here, so the job never uses a
    descriptor number its owner closed (and the system gave to something
    else) while it ran; the file's position is shared with the owner's
    descriptor, and the fragments go at it. ``first`` is written before
    anything else (fragments received already, not yet written), then
    ``prefix``: what was received from the connection already, from a PDU
    boundary (bytes-like pieces, in order, used where they are: fragments
    are written from them), which is parsed before the socket is read.
    ``context_id``
    is the presentation context of the data set; ``max_pdu`` our maximum PDU
    length (0: none); ``timeout`` the seconds to wait for data at most
    (None: no limit). ``call``: bytes per write into the file at most
    (see :data:`aiodicom._spool.WRITE_CALL`).

    After :meth:`run`: :attr:`outcome`; :attr:`received` (fragment bytes
    taken off the connection, written or not); :attr:`leftover` (bytes read,
    from a PDU boundary on, that the reader must parse first); :attr:`aligned`
    (the leftover starts at a PDU boundary, and the connection's next byte
    follows it); :attr:`file_error` (the first write failure: the fragments
    after it are received and dropped, so the stream stays in step).
    """

    def __init__(
        self,
        sock_fd: int,
        file_fd: int,
        *,
        first: Sequence[Any] = (),
        prefix: Sequence[Any] = (),
        context_id: int,
        max_pdu: int = 0,
        timeout: float | None = None,
        call: int = WRITE_CALL,
    ) -> None:
        self._first = list(first)
        self._prefix = list(prefix)
        self._context_id = context_id
        self._max_pdu = max_pdu
        self._timeout_ms = (
            -1
            if timeout is None or not timeout * 1000 < _POLL_MAX_MS  # (inf, or past 24 days)
            else max(0, int(timeout * 1000))
        )
        self._call = call
        #: False once the file system refused splice(): the pipe is read and written.
        self._file_splice = True
        #: The last PDU was small: the next bytes are read into the buffer.
        self._small = False
        self._buffer: bytearray | None = None
        #: Fragments taken, to write together before the buffer is read into again.
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._stopped = False
        self._fds: list[int] = []
        try:
            self._sock = self._keep(os.dup(sock_fd))
            self._file = self._keep(os.dup(file_fd))
            self._stop_r, self._stop_w = (self._keep(fd) for fd in os.pipe())
            os.set_blocking(self._stop_r, False)
        except BaseException:
            self._release()
            raise
        self.outcome = Outcome.STOPPED
        self.received = 0
        self.leftover = b""
        self.aligned = False
        self.file_error: OSError | None = None
        self.socket_error: OSError | None = None

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def _release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the owner's side (any thread) --------------------------------

    def stop(self) -> None:
        """Make :meth:`run` return (:attr:`Outcome.STOPPED`) as soon as it can."""
        with self._lock:
            self._stopped = True
            if self._started and not self._closed:
                with contextlib.suppress(OSError):
                    os.write(self._stop_w, b"\0")

    def close(self) -> None:
        """Release the descriptors of a job that has not started (it never will);
        a running one releases them itself as it returns."""
        with self._lock:
            self._stopped = True
            if self._started or self._closed:
                return
            self._closed = True
        self._release()

    # -- the worker's side ----------------------------------------------

    def run(self) -> None:
        """Receive fragments until the data set's last one or a reason to stop (blocking)."""
        with self._lock:
            if self._closed or self._stopped:
                self._closed = True
                release = True
            else:
                self._started = True
                release = False
        if release:
            self._release()
            return
        pipe: tuple[int, int] | None = None
        try:
            self._poll = select.poll()
            self._poll.register(self._sock, _POLL_IN)
            self._poll.register(self._stop_r, select.POLLIN)
            self._write_views(self._first)
            self._first = []
            pipe = _new_pipe()
            self._receive(pipe)
        except _End as end:
            self.outcome = end.outcome
        finally:
            if self.outcome is not Outcome.STOPPED:
                self._flush()  # (fragments read into the buffer, not yet written)
            if pipe is not None:
                for fd in pipe:
                    os.close(fd)
            with self._lock:
                self._closed = True
            self._release()

    def _receive(self, pipe: tuple[int, int]) -> None:
        held = _Held(self._prefix)
        self._prefix = []
        while True:
            # The PDU header first, alone: a short PDU (an A-RELEASE-RQ, an
            # A-ABORT) has fewer bytes than the PDV header would need.
            head = self._take(held, _PDU_HEADER)
            length = int.from_bytes(head[2:6], "big")
            if (
                head[0] != _P_DATA_TF
                or length < _PDV_HEADER
                or (self._max_pdu and length > self._max_pdu)
            ):
                self._hand_back(head, held)
            pdv = self._take(held, _PDV_HEADER, head)
            pdv_length = int.from_bytes(pdv[0:4], "big")
            control = pdv[5]
            if (
                pdv_length != length - 4  # (one PDV, filling the PDU)
                or pdv[4] != self._context_id
                or control & 0xFD  # a command fragment, or reserved bits set
            ):
                self._hand_back(head + pdv, held)
            size = pdv_length - 2
            self._small = size < SPLICE_MIN
            left = self._take_views(held, size)
            while left and self._small:
                self._fill(held, None)  # (inside a fragment)
                left = self._take_views(held, left)
            if left:
                self._flush()
                self._splice_in(pipe, left)
            self.received += size
            if control & 0x02:
                self.outcome = Outcome.LAST
                self.leftover = held.rest()
                self.aligned = True
                return

    def _hand_back(self, read: bytes, held: _Held) -> None:
        self.leftover = read + held.rest()
        self.aligned = True
        raise _End(Outcome.HANDED_BACK)

    def _take(self, held: _Held, n: int, before: bytes = b"") -> bytes:
        """``n`` bytes: from what was received already as far as it goes,
        then from the socket. ``before``: what was read of the PDU already."""
        got = held.take(n)
        while len(got) < n and self._small:
            self._fill(held, before + got)
            got += held.take(n - len(got))
        while len(got) < n:
            try:
                data = self._from_socket(os.read, self._sock, n - len(got))
            except OSError as exc:
                self._ended(exc, before + got)
            if not data:
                self._ended(None, before + got)
            got += data
        return got

    def _take_views(self, held: _Held, size: int) -> int:
        """Take up to ``size`` fragment bytes from ``held`` (written later, by
        :meth:`_flush`); how many are still to come."""
        views = held.views(size)
        self._pending.extend(views)
        return size - sum(map(len, views))

    def _flush(self) -> None:
        """Write the fragments taken so far."""
        pending, self._pending = self._pending, []
        self._write_views(pending)

    def _fill(self, held: _Held, read: bytes | None) -> None:
        """Read what the socket has (waiting until it has something) into the
        buffer, for ``held`` to hold: called once all it held is taken.
        ``read``: what was read of the PDU under way, if the connection ends
        (see :meth:`_ended`)."""
        self._flush()  # (views of the buffer among them: it is read into again)
        if self._buffer is None:
            self._buffer = bytearray(READ_BUFFER)
        view = memoryview(self._buffer)
        try:
            n = self._from_socket(os.readv, self._sock, [view])
        except OSError as exc:
            self._ended(exc, read)
        if not n:
            self._ended(None, read)
        held.reset([view[:n]])

    def _from_socket(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)``, a read of the socket, once it has something to read
        (or a reason to stop). An OSError but EAGAIN is the caller's."""
        while True:
            self._check_stop()
            try:
                return call(*args)
            except (BlockingIOError, InterruptedError):
                self._wait()

    def _ended(self, exc: OSError | None, read: bytes | None) -> NoReturn:
        """The connection ended (``exc``: how it failed). ``read``: what was
        read of the PDU under way, given back for the reader to find short;
        None: it ended inside a fragment, past where a reader can follow."""
        self.socket_error = exc
        if read is None:
            self.aligned = False
        else:
            self.leftover = read
            self.aligned = True
        raise _End(Outcome.CLOSED)

    def _splice_in(self, pipe: tuple[int, int], size: int) -> None:
        """Move ``size`` bytes from the socket into the file, through ``pipe``."""
        pipe_r, pipe_w = pipe
        while size:
            try:
                n = self._from_socket(
                    os.splice, self._sock, pipe_w, min(size, PIPE_SIZE), None, None, _SPLICE_FLAGS
                )
            except OSError as exc:
                self._ended(exc, None)
            if not n:
                self._ended(None, None)
            size -= n
            self._drain(pipe_r, n)

    def _drain(self, pipe_r: int, n: int) -> None:
        """Move the ``n`` bytes in the pipe into the file (or drop them, after a write error)."""
        while n and self._file_splice and self.file_error is None:
            try:
                moved = os.splice(pipe_r, self._file, min(n, self._call))
            except OSError as exc:
                if exc.errno in _NO_FILE_SPLICE:
                    self._file_splice = False  # a file system without it: written below
                else:
                    self.file_error = exc
                break
            if not moved:
                self.file_error = OSError(errno.EIO, "the spool file took none of a write")
                break
            n -= moved
        while n:  # read out of the pipe: written, or dropped after a write error
            data = os.read(pipe_r, min(n, PIPE_SIZE))
            n -= len(data)
            self._write_views([data])

    def _write_views(self, views: Sequence[Any]) -> None:
        """Write ``views`` at the file's position (nothing after a write error)."""
        if self.file_error is None and views:
            try:
                _write_fd(self._file, views, self._call)
            except OSError as exc:
                self.file_error = exc

    def _check_stop(self) -> None:
        if self._stopped:
            self.aligned = False
            raise _End(Outcome.STOPPED)

    def _wait(self) -> None:
        """Wait until the socket has something (or the timeout, or stop())."""
        ready = self._poll.poll(self._timeout_ms)
        if not ready:
            self.aligned = False
            raise _End(Outcome.TIMED_OUT)
        if any(fd == self._stop_r for fd, _ in ready):
            self._check_stop()


class _Held:
    """Bytes received already (bytes-like pieces, in order), taken from the front."""

    __slots__ = ("_pieces",)

    def __init__(self, pieces: Sequence[Any]) -> None:
        self._pieces: list[memoryview] = []
        self.reset(pieces)

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer if that is all there is)."""
        return b"".join(self.views(n))

    def views(self, n: int) -> list[memoryview]:
        """Up to ``n`` bytes, as views of the pieces."""
        out: list[memoryview] = []
        pieces = self._pieces
        while n and pieces:
            piece = pieces[-1]
            if len(piece) <= n:
                out.append(pieces.pop())
                n -= len(piece)
            else:
                out.append(piece[:n])
                pieces[-1] = piece[n:]
                n = 0
        return out

    def reset(self, pieces: Sequence[Any]) -> None:
        """Hold ``pieces`` (in order) instead."""
        self._pieces = [memoryview(p).cast("B") for p in reversed(pieces) if len(p)]

    def rest(self) -> bytes:
        """All that is left."""
        rest = b"".join(reversed(self._pieces))
        self._pieces = []
        return rest


def _new_pipe() -> tuple[int, int]:
    """A pipe of :data:`PIPE_SIZE` bytes if the system lets us have one."""
    pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC) if hasattr(os, "pipe2") else os.pipe()
    if _SET_PIPE_SIZE is not None:
        with contextlib.suppress(OSError):  # (past /proc/sys/fs/pipe-max-size)
            fcntl.fcntl(pipe_w, _SET_PIPE_SIZE, PIPE_SIZE)
    return pipe_r, pipe_w
