"""TCP transport: anyio byte streams, with a lean one on the asyncio backend.

Everything above this module sees an :class:`anyio.abc.ByteStream`. On trio
(and any other anyio backend) that is anyio's own socket stream. On asyncio it
is :class:`AsyncioStream`, a small byte stream over an asyncio protocol:
anyio's asyncio socket stream yields a whole event-loop iteration after every
write and re-registers the socket with the selector on every read, which costs
about a third of the CPU of a C-ECHO round trip. This one writes straight to
the transport, parks the reader on a future only when no data is buffered, and
applies flow control both ways (reading pauses past 1 MiB buffered; writing
waits for the transport to drain).

Receiving is buffered (:class:`asyncio.BufferedProtocol`): the socket is read
into reusable buffers, and what arrived is handed on as memoryviews of them.
A stream opened with ``pdu_framing`` knows where the DICOM PDUs begin and end
(6-byte header, 4-byte big-endian length): it hands on whole PDUs only, and
reads a large one (a P-DATA-TF of a big data set) straight into a buffer of
its own size, so a PDU is never joined from pieces. A PDU longer than the
frame limit (see :meth:`AsyncioStream.set_frame_limit`) is passed on in
pieces as it arrives, without a buffer of its size: the reader refuses it
from its header.

Exceptions follow anyio's stream contract: ``EndOfStream`` at EOF,
``BrokenResourceError`` when the connection fails, ``ClosedResourceError``
after a local ``aclose()``.

A read that leaves a PDU incomplete asks the kernel to acknowledge what came
at once (``TCP_QUICKACK``): a peer that writes a PDU in pieces without
``TCP_NODELAY`` (dcmtk's tools by default) holds the next piece back until
the last is acknowledged (Nagle), and a delayed ACK would make that up to
40 ms per PDU.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

__all__ = ("AsyncioStream", "Listener", "connect", "listen")

_HIGH_WATER = 4 << 20
_LOW_WATER = 1 << 20
#: Corked writes are flushed at once past this many bytes.
_CORK_LIMIT = 1 << 18
#: Size of a receive buffer (at least); one with less free room than
#: ``_MIN_READ`` left is replaced before the next read.
_RECV_BUFFER = 256 << 10
_MIN_READ = 64 << 10
#: A PDU (header included) at least this long is read into a buffer it
#: starts at, and so are those after it, expected to be as long (the
#: P-DATA-TF PDUs of a data set are, but its last): a read ends where a PDU
#: of that length would, and takes several at most ``_LARGE_BUFFER`` bytes.
_LARGE_FRAME = 64 << 10
_LARGE_BUFFER = 1 << 20
#: Receive buffers kept per connection for reuse, in bytes at most.
_POOL_BYTES = 16 << 20
#: A connection that has received nothing for this many seconds (up to
#: twice as many) gives back its receive buffers: an idle association
#: holds none, whatever it received before (a large data set leaves up to
#: ``_POOL_BYTES``). The next read takes a new one.
_IDLE_TRIM = 1.0
_PDU_HEADER = 6
#: Seconds a closed connection has to send what it still holds, before a reset.
_CLOSE_GRACE = 1.0
#: A write at least this long goes to the socket itself (see AsyncioStream._send_direct).
_DIRECT_MIN = 256 << 10
#: send() flag: more follows at once (Linux; elsewhere a header may go alone).
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
#: The length field of a PDU header (bytes 2-5, big-endian).
_unpack_length = struct.Struct(">L").unpack_from
#: setsockopt() option: acknowledge now (Linux; elsewhere nothing is asked).
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _quickack(sock: Any) -> None:
    """Have the kernel send the ACK it would delay (see the module's docstring)."""
    if _TCP_QUICKACK is not None and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


def _take_free(pool: list[bytearray], size: int, refs: int) -> bytearray | None:
    """A buffer of ``pool`` of ``size`` bytes or more that nothing else references.

    A memoryview of a bytearray holds a reference to it, so a buffer with no
    more references than the pool's own (``refs``, as counted here) has no
    view left anywhere: its bytes may be overwritten. The buffer taken moves
    to the end of ``pool``: the first ones are those longest out of use.
    """
    for i, buf in enumerate(pool):
        if len(buf) >= size and sys.getrefcount(buf) <= refs:
            del pool[i]
            pool.append(buf)
            return buf
    return None


def _free_refs() -> int:
    """What :func:`_take_free` counts for a free buffer (-1: never reuse)."""
    if not hasattr(sys, "getrefcount"):  # pragma: no cover - not CPython
        return -1
    pool = [bytearray(1)]
    for refs in range(1, 16):
        if _take_free(pool, 1, refs) is not None:
            return refs
    return -1  # pragma: no cover


_FREE_REFS = _free_refs()


def _on_asyncio() -> bool:
    """True when running on anyio's asyncio backend (an asyncio loop runs)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Protocol(asyncio.BufferedProtocol):
    """Receives into reusable buffers, hands on what arrived, wakes the one reader;
    tracks write flow control.

    What arrived and was handed on lives in ``buf[:start]`` (and in earlier
    buffers) as memoryviews; ``buf[start:end]`` is held back: with framing on,
    the part of a PDU received so far (``frame`` is its length, header
    included, once its header is in; ``passthrough`` counts down the rest of
    a PDU over the limit, passed on as it comes).
    """

    def __init__(self, pdu_framing: bool = False) -> None:
        self.chunks: deque[memoryview] = deque()
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.eof = False
        self.lost = False
        self.exception: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.consumer: Callable[[memoryview], bytes | memoryview] | None = None
        #: Set by the stream while a burst of writes is open (see AsyncioStream.send).
        self.stream: AsyncioStream | None = None
        self.framed = pdu_framing
        #: PDUs longer than this (header included) are passed through in pieces.
        self.limit = _RECV_BUFFER
        self.buf = bytearray(0)
        self.start = 0
        self.end = 0
        self.frame = 0
        self.passthrough = 0
        #: Length of the last PDU if it was a large one (the next header is read alone).
        self.large = 0
        self.pool: list[bytearray] = []
        self.pool_bytes = 0
        #: Something was read since the idle timer last looked.
        self.read_lately = False
        #: The idle timer (see _IDLE_TRIM), while the connection holds buffers.
        self.idle_timer: asyncio.TimerHandle | None = None
        #: The connection's socket (for TCP_QUICKACK), if it has one.
        self.sock: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self.sock = transport.get_extra_info("socket")

    def _arm_idle_timer(self) -> None:
        self.idle_timer = asyncio.get_running_loop().call_later(_IDLE_TRIM, self._check_idle)

    def _check_idle(self) -> None:
        """The idle timer: give the buffers back if nothing was read since
        it last looked, else look again later."""
        self.idle_timer = None
        if self.lost:
            return
        if self.read_lately:
            self.read_lately = False
            self._arm_idle_timer()
            return
        if self.end == self.start and not self.frame and not self.passthrough:
            # Nothing is held back (the bytes handed on keep their own
            # buffers alive through their views, as long as they need them).
            self.buf = bytearray(0)
            self.start = self.end = 0
            self.large = 0
        self.pool = [buf for buf in self.pool if buf is self.buf]
        self.pool_bytes = sum(map(len, self.pool))
        if self.buf:
            # A PDU received in part (in a pooled buffer or one the pool had
            # no room for): look again, to give it back once it is handed on.
            self._arm_idle_timer()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _replace(self, size: int) -> None:
        """Read into another buffer of ``size`` bytes or more, with the held-back bytes."""
        size = max(size, _RECV_BUFFER)
        new = _take_free(self.pool, size, _FREE_REFS)
        if new is None:
            new = bytearray(size)
            if self.pool_bytes + size <= _POOL_BYTES:
                self.pool.append(new)
                self.pool_bytes += size
            if self.idle_timer is None and not self.lost:
                self._arm_idle_timer()
        held = self.end - self.start
        if held:
            new[:held] = memoryview(self.buf)[self.start : self.end]
        self.buf, self.start, self.end = new, 0, held

    def get_buffer(self, sizehint: int) -> memoryview:
        frame = self.frame
        if frame >= _LARGE_FRAME:
            expect = frame  # this PDU, and more of its length
        elif frame or not self.large or self.passthrough:
            buf = self.buf
            if len(buf) - self.end < _MIN_READ or self.start + frame > len(buf):
                self._replace(frame)
                buf = self.buf
            return memoryview(buf)[self.end :]
        else:
            expect = self.large  # after a large PDU, more of its length
        if self.start + expect > len(self.buf):
            self._replace(expect * max(1, _LARGE_BUFFER // expect))
        start = self.start
        stop = start + expect * ((len(self.buf) - start) // expect)
        return memoryview(self.buf)[self.end : stop]

    def buffer_updated(self, nbytes: int) -> None:
        self.read_lately = True
        stream = self.stream
        if stream is not None and not stream._corked:
            # What is written next answers what just arrived: it goes out at
            # once (unless earlier writes still wait for their flush: order).
            stream._burst = False
        start = self.start
        end = self.end = self.end + nbytes
        if not self.framed:
            self.start = end
            self._hand_on(memoryview(self.buf)[start:end])
            return
        buf, limit, large = self.buf, self.limit, self.large
        pos, frame, passthrough = start, self.frame, self.passthrough
        while True:
            if passthrough:
                take = min(passthrough, end - pos)
                pos += take
                passthrough -= take
                if passthrough:
                    break
            if not frame:
                if end - pos < _PDU_HEADER:
                    break
                frame = _PDU_HEADER + _unpack_length(buf, pos + 2)[0]
                if frame > limit:
                    passthrough, frame, large = frame, 0, 0
                    continue
            if end - pos < frame:
                break
            large = frame if frame >= _LARGE_FRAME else 0
            pos += frame
            frame = 0
        self.frame, self.passthrough, self.large = frame, passthrough, large
        if end > pos and not passthrough:
            _quickack(self.sock)  # the rest of a PDU is awaited
        if pos > start:
            self.start = pos
            self._hand_on(memoryview(buf)[start:pos])

    def _hand_on(self, data: memoryview) -> None:
        if self.consumer is not None and not self.chunks:
            rest = self.consumer(data)
            if not rest:
                return
            data = memoryview(rest)
        self.chunks.append(data)
        self.buffered += len(data)
        self._wake()
        if self.buffered > _HIGH_WATER and not self.reading_paused:
            assert self.transport is not None
            self.reading_paused = True
            self.transport.pause_reading()

    def _flush_held(self) -> None:
        """The connection ends: hand on a PDU received in part, as it is."""
        start, end = self.start, self.end
        if end > start:
            self.start, self.frame, self.passthrough = end, 0, 0
            self.chunks.append(memoryview(self.buf)[start:end])
            self.buffered += end - start

    def eof_received(self) -> bool:
        self._flush_held()
        self.eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._flush_held()
        # Nothing more arrives: the receive buffers go now (what was handed
        # on keeps its own buffer alive through its views), and so does the
        # consumer, a method of the association that holds this protocol:
        # without that cycle the association is freed as soon as it ends,
        # not by the cycle collector, which may come much later.
        self.consumer = None
        self.buf = bytearray(0)
        self.start = self.end = 0
        self.pool.clear()
        self.pool_bytes = 0
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self.eof = self.lost = True
        self.exception = exc
        self._wake()
        if self.stream is not None:
            self.stream._wake_direct()
            self.stream = None  # (it holds this protocol: no cycle left)
        drain = self.drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        if self.drain is None or self.drain.done():
            self.drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)


class AsyncioStream(anyio.abc.ByteStream):
    """An anyio byte stream over an asyncio transport (see the module docstring)."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False
        # The first write after something arrived goes straight out (a
        # response is not delayed). The writes that follow it before anything
        # else arrives (a burst of C-FIND responses, say) are joined and go
        # out together at the end of the event-loop iteration: one system
        # call, not one each. Only a corked write schedules that flush, so a
        # request/response exchange costs no extra loop iteration.
        self._corked: list[bytes] = []
        self._corked_size = 0
        self._burst = False
        #: The event loop this stream runs on.
        self.loop = loop = asyncio.get_running_loop()
        #: The loop's clock: time.monotonic itself where that is what it reads.
        self.clock: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        )
        protocol.stream = self
        # A large write goes to the socket directly (see _send_direct); not
        # on Windows, whose proactor loop has no add_writer().
        self._direct_ok = sys.platform != "win32" and transport.get_extra_info("socket") is not None
        #: While a direct write waits for room: makes what it still has to send
        #: (of the item, or of the file segment under way).
        self._direct_rest: Callable[[], bytes | memoryview] | None = None
        self._direct_waiter: asyncio.Future[None] | None = None
        #: While another reader has the connection (see detach_reading).
        self._on_close: Callable[[], None] | None = None

    def set_consumer(self, consumer: Callable[[memoryview], bytes | memoryview] | None) -> None:
        """Give arriving bytes to ``consumer`` first, while nothing is buffered.

        It is called synchronously from the event loop with the new bytes (a
        memoryview of a receive buffer: whole PDUs, with framing on) and
        returns what it did not consume, which :meth:`receive` then returns
        in order. It must not keep a view past the call unless it is content
        to pin that buffer. Once the connection is lost there is nothing more
        to consume: the consumer is not kept (it would only hold its owner).
        """
        self._protocol.consumer = None if self._protocol.lost else consumer

    def set_frame_limit(self, limit: int) -> None:
        """With framing on: PDUs up to ``limit`` bytes (header included) are
        handed on whole; longer ones in pieces, as they arrive.

        A whole PDU takes a buffer of its size, so ``limit`` must not exceed
        what the reader accepts (its maximum PDU length, plus the header).
        """
        self._protocol.limit = max(limit, _RECV_BUFFER)

    def detach_reading(self, on_close: Callable[[], None]) -> tuple[int, list[memoryview]] | None:
        """Stop reading the connection and give it to someone else for a while.

        Returns the socket's descriptor and every byte received but not yet
        returned by :meth:`receive`, as views of the receive buffers (in
        order: whole PDUs first, then the start of one, with framing on),
        which the new reader takes first;
        None (nothing changed) if the connection is closed or at its end.
        ``on_close`` is called if the stream is closed meanwhile (the other
        reader must let go of the socket). :meth:`attach_reading` gives it back.
        """
        protocol = self._protocol
        sock = self._transport.get_extra_info("socket")
        if self._closed or protocol.eof or protocol.lost or sock is None:
            return None
        if not protocol.reading_paused:
            protocol.reading_paused = True
            self._transport.pause_reading()
        # (Views of the receive buffers: none is reused while a view of it lives.)
        held = [*protocol.chunks, memoryview(protocol.buf)[protocol.start : protocol.end]]
        protocol.chunks.clear()
        protocol.buffered = 0
        protocol.start = protocol.end
        protocol.frame = protocol.passthrough = protocol.large = 0
        self._on_close = on_close
        return sock.fileno(), held

    def attach_reading(self, data: bytes | memoryview) -> None:
        """Read the connection again after :meth:`detach_reading`, ``data``
        first (bytes the other reader took and did not use: they are framed
        and handed on as if they had just arrived)."""
        self._on_close = None
        protocol = self._protocol
        if self._closed or protocol.lost:
            return
        view = memoryview(data).cast("B")
        while view:
            room = protocol.get_buffer(len(view))
            n = min(len(room), len(view))
            room[:n] = view[:n]
            view = view[n:]
            protocol.buffer_updated(n)
        if protocol.reading_paused and protocol.buffered < _HIGH_WATER:
            protocol.reading_paused = False
            self._transport.resume_reading()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return bytes(await self.receive_view(max_bytes))

    async def receive_view(self, max_bytes: int = 65536) -> memoryview:
        """:meth:`receive` without a copy: a view of a receive buffer.

        With framing on, what one call returns holds whole PDUs (unless it
        is cut by ``max_bytes``, or at the end of the stream).
        """
        protocol = self._protocol
        if not protocol.chunks:
            if self._closed:
                raise anyio.ClosedResourceError
            if not protocol.eof:
                waiter = protocol.waiter = self.loop.create_future()
                try:
                    await waiter
                finally:
                    protocol.waiter = None
            if not protocol.chunks:
                if self._closed:
                    raise anyio.ClosedResourceError
                if protocol.exception is not None:
                    raise anyio.BrokenResourceError from protocol.exception
                raise anyio.EndOfStream
        data = protocol.chunks.popleft()
        if len(data) > max_bytes:
            protocol.chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        protocol.buffered -= len(data)
        if protocol.reading_paused and protocol.buffered < _LOW_WATER:
            protocol.reading_paused = False
            self._transport.resume_reading()
        return data

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        protocol = self._protocol
        if protocol.lost or self._transport.is_closing():
            raise anyio.BrokenResourceError from protocol.exception
        if (
            len(item) >= _DIRECT_MIN
            and self._direct_ok
            and self._direct_rest is None
            and not self._corked
            and protocol.drain is None
            and not self._transport.get_write_buffer_size()
        ):
            await self._send_direct(item)
            return
        self._put(item)
        drain = protocol.drain
        if drain is not None:
            await drain
            if protocol.lost:
                raise anyio.BrokenResourceError from protocol.exception

    async def _send_direct(self, item: bytes) -> None:
        """Write a large item to the socket itself, waiting for room as needed.

        The transport (on Python < 3.12) copies what the socket does not take
        at once into a buffer of its own: for the blocks of a file being sent,
        that is nearly all of them, one more copy of every byte. Written here,
        a block is copied once, into the kernel. The transport's buffer is
        empty (the caller checked), so the order holds; a write that comes
        while this one waits first hands what is left of it to the transport
        (:meth:`_hand_over`), and so does a cancellation: as with any write
        on this stream, a write begun is queued whole, never cut.
        """
        view = memoryview(item).cast("B")
        with self._direct_socket() as sock:
            while True:
                try:
                    view = view[sock.send(view) :]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    self._transport.abort()
                    raise anyio.BrokenResourceError from exc
                if not view:
                    return
                if not await self._wait_for_room(sock, functools.partial(_same, view)):
                    break  # handed over to the transport: it sends the rest
        await self._drained()

    async def send_file(self, fd: int, segments: Sequence[tuple[bytes, int, int, bytes]]) -> None:
        """Write each segment: its prefix, ``length`` bytes of the file ``fd``
        from ``offset``, its suffix; the file's bytes by ``sendfile(2)``, which
        hands the socket the page cache's pages, copying none here.

        For a file the page cache holds (see :func:`aiodicom._nowait.page_cached`):
        ``sendfile`` reads it, on the event loop. A write that comes while
        this one waits for room, a cancellation or a close makes the rest of
        the segment under way (read from the file) go to the transport, so
        no segment is cut; the segments after it are then not sent, and this
        raises ``BrokenResourceError`` (or the cancellation).
        """
        if self._closed:
            raise anyio.ClosedResourceError
        protocol = self._protocol
        if protocol.lost or self._transport.is_closing():
            raise anyio.BrokenResourceError from protocol.exception
        self._write_corked()
        if (
            not self._direct_ok
            or self._direct_rest is not None
            or protocol.drain is not None
            or self._transport.get_write_buffer_size()
        ):
            # Something is queued ahead: this goes behind it, as bytes.
            for prefix, offset, length, suffix in segments:
                await self.send(prefix + _pread_all(fd, length, offset) + suffix)
            return
        with self._direct_socket() as sock:
            out = sock.fileno()
            by_sendfile = True  # until sendfile() says this file or socket can't
            for prefix, offset, length, suffix in segments:
                done = 0  # of the segment: prefix, then file bytes, then suffix
                total = len(prefix) + length + len(suffix)
                while done < total:
                    try:
                        if done < len(prefix):
                            done += sock.send(memoryview(prefix)[done:], _MSG_MORE)
                        elif done < len(prefix) + length:
                            at = done - len(prefix)
                            if by_sendfile:
                                sent = os.sendfile(out, fd, offset + at, length - at)
                            else:
                                piece = os.pread(fd, min(length - at, _PREAD_PIECE), offset + at)
                                sent = sock.send(piece) if piece else 0
                            if not sent:
                                raise _FileError(errno.EIO, "the file ended before its data set")
                            done += sent
                        else:
                            done += sock.send(memoryview(suffix)[done - len(prefix) - length :])
                        continue
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError as exc:
                        if by_sendfile and exc.errno in _NO_SENDFILE:
                            by_sendfile = False  # (a file system without it): read and send
                            continue
                        # Part of a segment may be out: the connection cannot go on.
                        self._transport.abort()
                        if isinstance(exc, _FileError) or exc.errno not in _SOCKET_ERRORS:
                            raise  # the file's (a read error): the caller reports it
                        raise anyio.BrokenResourceError from exc
                    rest = functools.partial(
                        _segment_rest, fd, prefix, offset, length, suffix, done
                    )
                    if not await self._wait_for_room(sock, rest):
                        await self._drained()
                        raise anyio.BrokenResourceError(
                            "another write came while a file was being sent"
                        )

    @contextlib.contextmanager
    def _direct_socket(self) -> Iterator[socket.socket]:
        """A duplicate of the connection's socket to write to and wait on.

        The loop is told to watch for room on it (the transport's own
        descriptor is the transport's to watch); it is closed when the write
        ends, as it would keep the connection open.
        """
        sock = socket.socket(fileno=os.dup(self._transport.get_extra_info("socket").fileno()))
        try:
            sock.setblocking(False)  # it is (the flag is shared): made sure
            yield sock
        finally:
            sock.close()

    async def _wait_for_room(
        self, sock: socket.socket, rest: Callable[[], bytes | memoryview]
    ) -> bool:
        """Wait until ``sock`` may take more; ``rest`` makes what is left to
        send, should it be handed to the transport meanwhile. False if it was
        (the caller stops); raises if the connection was lost."""
        self._direct_rest = rest
        waiter = self._direct_waiter = self.loop.create_future()
        # By descriptor: given the socket object, the selector formats its
        # repr (system calls) for the KeyError it raises on a first watch.
        fd = sock.fileno()
        self.loop.add_writer(fd, _wake_future, waiter)
        try:
            await waiter
        except BaseException:
            self._hand_over()
            raise
        finally:
            self.loop.remove_writer(fd)
            self._direct_waiter = None
        if self._direct_rest is None:
            return False
        self._direct_rest = None
        if self._protocol.lost:
            raise anyio.BrokenResourceError from self._protocol.exception
        return True

    async def _drained(self) -> None:
        """Wait, as :meth:`send` does, for the transport to drain."""
        protocol = self._protocol
        drain = protocol.drain
        if drain is not None:
            await drain
        if protocol.lost:
            raise anyio.BrokenResourceError from protocol.exception

    def _hand_over(self) -> None:
        """What a waiting direct write has left goes to the transport, ahead of
        anything written after it; the direct write then waits as any write."""
        rest, self._direct_rest = self._direct_rest, None
        if rest is not None:
            if not self._transport.is_closing():
                try:
                    data = rest()
                except OSError:
                    # The rest of a file segment is unreadable: what follows
                    # would be read as part of it. The connection ends here.
                    self._transport.abort()
                else:
                    self._transport.write(data)
            self._wake_direct()

    def _wake_direct(self) -> None:
        waiter = self._direct_waiter
        if waiter is not None:
            _wake_future(waiter)

    def can_send_now(self) -> bool:
        """True if :meth:`send_now` would not have to wait (no drain pending)."""
        protocol = self._protocol
        return not (
            self._closed
            or protocol.lost
            or self._direct_rest is not None
            or protocol.drain is not None
            or self._transport.is_closing()
        )

    def _put(self, item: bytes) -> None:
        """Queue ``item`` for the transport (see the cork comment in ``__init__``)."""
        if self._direct_rest is not None:
            self._hand_over()
        if not self._burst:
            self._burst = True
            if self._corked:  # what send_soon() left goes first, in the same write
                self._corked.append(item)
                self._write_corked()
            else:
                self._transport.write(item)
        else:
            self._cork(item)

    def _cork(self, item: bytes) -> None:
        """Hold ``item`` for the flush at the end of the loop iteration (or
        write what is held now, past :data:`_CORK_LIMIT`)."""
        if not self._corked:
            self.loop.call_soon(self._flush)
        self._corked.append(item)
        self._corked_size += len(item)
        if self._corked_size >= _CORK_LIMIT:
            self._write_corked()

    #: Write ``item`` without awaiting; only after :meth:`can_send_now` said yes.
    #: The bytes are queued exactly as :meth:`send` queues them; a peer that
    #: stops reading makes the next :meth:`send` wait, not this call.
    send_now = _put

    def send_soon(self, item: bytes) -> None:
        """:meth:`send_now`, but always corked: ``item`` goes out with the next
        write made in this event-loop iteration (in one system call with it),
        or on its own at the end of the iteration if none comes.

        For a message nobody waits on that is often followed at once by one
        somebody does (a pending C-GET response, then the next sub-operation's
        C-STORE request): both leave together, and the later one is not held.
        """
        if self._direct_rest is not None:
            self._hand_over()
        self._cork(item)

    def _flush(self) -> None:
        """End of the loop iteration: hand the corked writes to the transport.

        The next write opens a new burst (it goes out at once).
        """
        self._burst = False
        self._write_corked()

    def _write_corked(self) -> None:
        corked = self._corked
        if not corked:
            return
        data = corked[0] if len(corked) == 1 else b"".join(corked)
        corked.clear()
        self._corked_size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    async def send_eof(self) -> None:
        self._hand_over()
        self._flush()
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()  # (the other reader lets go of the socket)
        self._hand_over()
        self._flush()
        protocol = self._protocol
        protocol.chunks.clear()  # (never read now)
        protocol.buffered = 0
        transport = self._transport
        transport.close()  # unsent data (an A-ABORT, say) still goes out
        if transport.get_write_buffer_size():
            # ... unless the peer stopped reading: close() would wait for it
            # forever, so the connection is reset if it is not gone by then.
            self.loop.call_later(_CLOSE_GRACE, transport.abort)
        self._protocol._wake()
        await anyio.lowlevel.checkpoint()

    @property
    def framed(self) -> bool:
        """True if this stream hands on whole PDUs (and asks for TCP_QUICKACK itself)."""
        return self._protocol.framed

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock: socket.socket = self._transport.get_extra_info("socket")
        return {
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: sock.getsockname(),
            SocketAttribute.local_port: lambda: sock.getsockname()[1],
            SocketAttribute.remote_address: lambda: self._transport.get_extra_info("peername"),
            SocketAttribute.remote_port: lambda: self._transport.get_extra_info("peername")[1],
            SocketAttribute.raw_socket: lambda: sock,
        }


class _FileError(OSError):
    """A file being sent ended early."""


#: What sendfile() fails with, having sent nothing, where it cannot be used.
_NO_SENDFILE = frozenset((errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP))
#: Bytes read a call when sendfile() cannot be used.
_PREAD_PIECE = 1 << 20
#: What sendfile() fails with when the connection (not the file) is at fault.
_SOCKET_ERRORS = frozenset(
    (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED)
)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes of the file ``fd`` from ``offset``; OSError if it ends first."""
    parts = []
    while length > 0:
        data = os.pread(fd, length, offset)
        if not data:
            raise _FileError(errno.EIO, "the file ended before its data set")
        parts.append(data)
        length -= len(data)
        offset += len(data)
    return b"".join(parts)


def _segment_rest(
    fd: int, prefix: bytes, offset: int, length: int, suffix: bytes, done: int
) -> bytes:
    """What is left of a :meth:`AsyncioStream.send_file` segment of which
    ``done`` bytes are sent: the rest of its prefix, file bytes and suffix."""
    start = max(0, done - len(prefix))
    body = _pread_all(fd, length - start, offset + start) if start < length else b""
    return prefix[done:] + body + suffix[max(0, done - len(prefix) - length) :]


def _same(view: memoryview) -> memoryview:
    return view


def _wake_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def connect(
    host: str,
    port: int,
    *,
    local_host: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    pdu_framing: bool = False,
) -> anyio.abc.ByteStream:
    """Open a TCP connection (TLS over it when ``ssl_context`` is given).

    ``pdu_framing``: on asyncio and without TLS, hand on whole DICOM PDUs
    (see the module docstring).
    """
    stream: anyio.abc.ByteStream
    if _on_asyncio():
        loop = asyncio.get_running_loop()
        framed = pdu_framing and ssl_context is None
        transport, protocol = await loop.create_connection(
            lambda: _Protocol(framed),
            host,
            port,
            local_addr=(local_host, 0) if local_host else None,
        )
        _nodelay(transport)
        stream = AsyncioStream(transport, protocol)
    else:
        stream = await anyio.connect_tcp(host, port, local_host=local_host)
    if ssl_context is not None:
        try:
            stream = await TLSStream.wrap(
                stream,
                server_side=False,
                hostname=host,
                ssl_context=ssl_context,
                standard_compatible=False,
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
    return stream


class Listener:
    """Listening sockets and their ``accept()``, on either backend."""

    def __init__(self, sockets: list[socket.socket] | None, anyio_listener: Any = None) -> None:
        self._sockets = sockets or []
        self._anyio = anyio_listener

    @property
    def sub_listeners(self) -> list[Any]:
        """One item per listening socket, for one accept loop each."""
        if self._anyio is not None:
            return list(getattr(self._anyio, "listeners", [self._anyio]))
        return list(self._sockets)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) of the first listening socket."""
        if self._anyio is not None:
            host = self._anyio.extra(SocketAttribute.local_address)
            port = self._anyio.extra(SocketAttribute.local_port)
            return (str(host[0]) if isinstance(host, tuple) else str(host), int(port))
        name = self._sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def accept(self, sub: Any, *, pdu_framing: bool = False) -> anyio.abc.ByteStream:
        """Accept one connection on ``sub`` (an item of :attr:`sub_listeners`).

        ``pdu_framing``: as for :func:`connect` (never with TLS over the stream).
        """
        if self._anyio is not None:
            stream: anyio.abc.ByteStream = await sub.accept()
            return stream
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(sub)
        try:
            transport, protocol = await loop.connect_accepted_socket(
                lambda: _Protocol(pdu_framing), conn
            )
        except BaseException:
            conn.close()
            raise
        _nodelay(transport)
        return AsyncioStream(transport, protocol)

    async def aclose(self) -> None:
        """Stop listening."""
        if self._anyio is not None:
            await self._anyio.aclose()
            return
        for sock in self._sockets:
            sock.close()


async def listen(host: str | None, port: int) -> Listener:
    """Listen on ``host``:``port`` (``None`` or ``""``: every interface)."""
    if not _on_asyncio():
        return Listener(None, await anyio.create_tcp_listener(local_host=host, local_port=port))
    infos = await anyio.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in infos:
            if (
                family == socket.AF_INET6
                and host is None
                and any(s.family == socket.AF_INET6 for s in sockets)
            ):
                continue
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                # Every family listens on the port the first one was given.
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return Listener(sockets)
