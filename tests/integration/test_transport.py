"""The asyncio transport's writes and reads, over a real loopback connection.

What is checked: a write that answers data just received goes to the socket
at once and schedules nothing; writes that follow it before anything else
arrives are joined into one transport write at the end of the loop
iteration, in order; ``send_now`` queues exactly as ``send`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from aiodicom._transport import AsyncioStream, connect

from .conftest import GUARD

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the transport under test exists only there


class _Spy:
    """Counts the loop's call_soon and the transport's write calls of one stream."""

    def __init__(self, stream: AsyncioStream) -> None:
        self.soon = 0
        self.writes: list[bytes] = []
        loop, transport = stream.loop, stream._transport
        spy = self

        class Loop:
            def call_soon(self, *args: Any) -> Any:
                spy.soon += 1
                return loop.call_soon(*args)

            def __getattr__(self, name: str) -> Any:
                return getattr(loop, name)

        real_write = transport.write

        def write(data: Any) -> None:
            spy.writes.append(bytes(data))
            real_write(data)

        stream.loop = Loop()  # type: ignore[assignment]
        transport.write = write  # type: ignore[method-assign]


@asynccontextmanager
async def pair(
    pdu_framing: bool = False, limit: int = 0
) -> AsyncIterator[tuple[AsyncioStream, asyncio.StreamReader, asyncio.StreamWriter]]:
    """Our stream connected to a plain asyncio peer (with PDU framing on, PDUs
    up to ``limit`` bytes handed on whole, if given)."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stream = await connect("127.0.0.1", port, pdu_framing=pdu_framing)
    assert isinstance(stream, AsyncioStream)
    if limit:
        stream.set_frame_limit(limit)
    reader, writer = await accepted.get()
    try:
        yield stream, reader, writer
    finally:
        await stream.aclose()
        writer.close()
        server.close()


async def _arrive(stream: AsyncioStream, writer: asyncio.StreamWriter) -> None:
    """The peer sends a little, and our side receives it (what we write next answers it)."""
    writer.write(b"go")
    await writer.drain()
    assert await stream.receive() == b"go"


async def test_an_answer_to_received_data_is_written_at_once_and_schedules_nothing() -> None:
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, writer):
            spy = _Spy(stream)
            for i in range(3):
                writer.write(b"rq%d" % i)
                await writer.drain()
                assert await stream.receive() == b"rq%d" % i
                assert stream.can_send_now()
                stream.send_now(b"rsp%d" % i)
                # written to the transport before anything else runs
                assert spy.writes[-1] == b"rsp%d" % i
                assert await reader.readexactly(4) == b"rsp%d" % i
            assert spy.soon == 0  # no flush callback, hence no extra loop iteration


async def test_a_burst_is_joined_into_one_write_in_order() -> None:
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, writer):
            spy = _Spy(stream)
            await _arrive(stream, writer)
            await stream.send(b"a")  # the first goes out at once
            stream.send_now(b"b")
            await stream.send(b"c")
            assert spy.writes == [b"a"] and spy.soon == 1  # one flush scheduled
            assert await reader.readexactly(3) == b"abc"
            assert spy.writes == [b"a", b"bc"]


async def test_a_later_burst_without_new_data_is_flushed_at_its_iteration_end() -> None:
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, _writer):
            spy = _Spy(stream)
            await stream.send(b"1")
            assert await reader.readexactly(1) == b"1"
            # Nothing arrived since: this write is corked, and flushed at the
            # end of the loop iteration, not later.
            await stream.send(b"2")
            assert spy.writes == [b"1"]
            await anyio.lowlevel.checkpoint()
            assert spy.writes == [b"1", b"2"]
            assert await reader.readexactly(1) == b"2"


async def test_send_soon_goes_out_with_the_next_write_in_one_call() -> None:
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, writer):
            spy = _Spy(stream)
            await _arrive(stream, writer)
            stream.send_soon(b"pending")
            assert spy.writes == [] and spy.soon == 1  # held, its flush scheduled
            stream.send_now(b"next")  # the answer to what arrived: out at once, after it
            assert spy.writes == [b"pendingnext"]
            await anyio.lowlevel.checkpoint()
            assert spy.writes == [b"pendingnext"]  # the flush finds nothing left
            assert await reader.readexactly(11) == b"pendingnext"


async def test_send_soon_alone_goes_out_at_the_end_of_the_iteration() -> None:
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, writer):
            spy = _Spy(stream)
            await _arrive(stream, writer)
            stream.send_soon(b"pending")
            assert spy.writes == []
            await anyio.lowlevel.checkpoint()
            assert spy.writes == [b"pending"]
            assert await reader.readexactly(7) == b"pending"
            # and the next answer still goes out at once
            await _arrive(stream, writer)
            stream.send_now(b"rsp")
            assert spy.writes[-1] == b"rsp"


async def test_a_large_write_after_send_soon_keeps_the_order() -> None:
    big = bytes(range(256)) * (1 << 12)  # 1 MiB: over the direct-write size
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, _writer):
            stream.send_soon(b"first")
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.send, big)
                assert await reader.readexactly(5) == b"first"
                assert await reader.readexactly(len(big)) == big


# ---------------------------------------------------------------------------
# Receiving: buffered, with DICOM PDU framing


def _pdu(length: int, fill: int = 0x41) -> bytes:
    """A P-DATA-TF-looking PDU: its 6-byte header, then ``length`` bytes."""
    return b"\x04\x00" + length.to_bytes(4, "big") + bytes([fill]) * length


async def _write_in_pieces(writer: asyncio.StreamWriter, data: bytes, piece: int) -> None:
    for start in range(0, len(data), piece):
        writer.write(data[start : start + piece])
        await writer.drain()
        await anyio.sleep(0)  # let our side read each piece on its own


async def test_framing_hands_on_whole_pdus_however_they_arrive() -> None:
    small, large = _pdu(10, 1), _pdu(300_000, 2)
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True, limit=6 + 300_000) as (stream, _reader, writer):
            await _write_in_pieces(writer, small + large + small, 4093)
            got: list[bytes] = []
            while sum(map(len, got)) < 2 * len(small) + len(large):
                view = await stream.receive_view(1 << 62)
                got.append(bytes(view))
            # every chunk ends on a PDU boundary; the large one is in one chunk
            joined = b"".join(got)
            assert joined == small + large + small
            assert any(large in chunk for chunk in got)
            bounds = {0, len(small), len(small) + len(large), len(joined)}
            offsets = [sum(map(len, got[:i])) for i in range(len(got) + 1)]
            assert set(offsets) <= bounds


async def test_a_large_pdu_is_read_into_a_buffer_of_its_own() -> None:
    large = _pdu(300_000, 7)
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True, limit=6 + 300_000) as (stream, _reader, writer):
            await _write_in_pieces(writer, _pdu(100) + large, 65536)
            assert bytes(await stream.receive_view(1 << 62)) == _pdu(100)
            view = await stream.receive_view(1 << 62)
            assert bytes(view) == large
            # a view of one of the connection's receive buffers, not a join
            assert any(view.obj is buf for buf in stream._protocol.pool)


async def test_receive_buffers_are_reused_only_once_no_view_is_left() -> None:
    count, size = 64, 200_000
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True, limit=6 + size) as (stream, _reader, writer):
            held: memoryview | None = None
            kept = b""

            async def feed() -> None:
                for i in range(count):
                    writer.write(_pdu(size, i))
                    await writer.drain()

            async with anyio.create_task_group() as tg:
                tg.start_soon(feed)
                i = 0
                while i < count:
                    view = await stream.receive_view(1 << 62)
                    assert len(view) % (6 + size) == 0  # whole PDUs
                    for start in range(0, len(view), 6 + size):
                        pdu = view[start : start + 6 + size]
                        assert pdu[6] == i and pdu[-1] == i
                        if i == 10:
                            held, kept = pdu, bytes(pdu)  # viewed to the end
                        i += 1
                    del view, pdu
            protocol = stream._protocol
            assert held is not None and bytes(held) == kept  # never overwritten
            # a handful of buffers went round: far fewer than the PDUs received
            assert len(protocol.pool) <= 4
            assert protocol.pool_bytes <= 4 * (1 << 20) + (256 << 10)


async def test_an_idle_connection_gives_its_receive_buffers_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection that has received nothing for a while holds no receive
    buffer (after large PDUs it held up to _POOL_BYTES of them); what it
    handed on stays readable, and it reads on into a new buffer. While data
    keeps coming, nothing is given back."""
    from aiodicom import _transport

    monkeypatch.setattr(_transport, "_IDLE_TRIM", 0.05)
    trimmed: list[tuple[int, int]] = []  # (pool bytes, buffer length) after each look
    looked = anyio.Event()
    check = _transport._Protocol._check_idle

    def spy(self: Any) -> None:
        check(self)
        trimmed.append((self.pool_bytes, len(self.buf)))
        if not self.pool_bytes and not self.buf:
            looked.set()

    monkeypatch.setattr(_transport._Protocol, "_check_idle", spy)
    size, count = 300_000, 12
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True, limit=6 + size) as (stream, _reader, writer):
            views: list[memoryview] = []
            for i in range(count):
                writer.write(_pdu(size, i))
            await writer.drain()
            while sum(map(len, views)) < count * (6 + size):
                views.append(await stream.receive_view(1 << 62))
            protocol = stream._protocol
            assert protocol.pool_bytes >= 1 << 20  # buffers of 1 MiB held for reuse
            await looked.wait()
            assert (protocol.pool, protocol.pool_bytes, len(protocol.buf)) == ([], 0, 0)
            # a look that found reads since the one before gave nothing back
            assert trimmed[0][0] and trimmed[0][1]
            joined = b"".join(views)
            assert joined == b"".join(_pdu(size, i) for i in range(count))
            writer.write(_pdu(10, 3))
            await writer.drain()
            assert bytes(await stream.receive_view(1 << 62)) == _pdu(10, 3)
            assert len(protocol.buf) == _transport._RECV_BUFFER


async def test_a_buffer_outside_the_pool_is_given_back_after_a_partial_pdu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A buffer the pool has no room for, holding part of a PDU when the
    idle timer looks, is still given back once the PDU is complete and the
    connection idle (the timer looked no more once the pool was empty)."""
    from aiodicom import _transport

    monkeypatch.setattr(_transport, "_IDLE_TRIM", 0.05)
    monkeypatch.setattr(_transport, "_POOL_BYTES", 0)  # no buffer is pooled
    looks: list[tuple[int, int]] = []  # (bytes held back, buffer length) after each look
    changed = anyio.Event()
    check = _transport._Protocol._check_idle

    def spy(self: Any) -> None:
        check(self)
        looks.append((self.end - self.start, len(self.buf)))
        changed.set()

    monkeypatch.setattr(_transport._Protocol, "_check_idle", spy)
    pdu = _pdu(100_000, 7)
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True, limit=len(pdu)) as (stream, _reader, writer):
            protocol = stream._protocol
            writer.write(pdu[:50_000])
            await writer.drain()
            # two looks found the part held: the first saw the read, the
            # second nothing read since
            while [held for held, _ in looks].count(50_000) < 2:
                changed = anyio.Event()
                await changed.wait()
            assert protocol.pool == [] and len(protocol.buf) >= 50_000
            writer.write(pdu[50_000:])
            await writer.drain()
            assert bytes(await stream.receive_view(1 << 62)) == pdu
            while looks[-1] != (0, 0):  # given back at a later look
                changed = anyio.Event()
                await changed.wait()
            assert (protocol.pool, len(protocol.buf)) == ([], 0)


async def test_a_pdu_over_the_limit_is_handed_on_in_pieces() -> None:
    header = b"\x04\x00" + (10 << 20).to_bytes(4, "big")
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True) as (stream, _reader, writer):
            writer.write(header + bytes(1000))
            await writer.drain()
            got = b""
            while len(got) < 1006:
                got += bytes(await stream.receive_view(1 << 62))
            assert got == header + bytes(1000)
            # no buffer of the announced size
            assert max(len(b) for b in stream._protocol.pool) < 1 << 20


async def test_a_partial_pdu_is_handed_on_at_the_end_of_the_stream() -> None:
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True) as (stream, _reader, writer):
            writer.write(_pdu(10) + b"\x04\x00\x00")
            writer.write_eof()
            await writer.drain()
            got = b""
            with pytest.raises(anyio.EndOfStream):
                while True:
                    got += await stream.receive()
            assert got == _pdu(10) + b"\x04\x00\x00"


async def test_without_framing_bytes_are_handed_on_as_they_arrive() -> None:
    with anyio.fail_after(GUARD):
        async with pair() as (stream, _reader, writer):
            writer.write(b"\x04\x00\x00")
            await writer.drain()
            assert await stream.receive() == b"\x04\x00\x00"


async def test_close_lets_queued_bytes_out_to_a_peer_that_reads() -> None:
    """aclose() with bytes still queued (an A-ABORT behind a slow reader, say)
    closes gracefully: a peer that reads within the grace gets every byte,
    then EOF, not a reset."""
    data = bytes(range(256)) * (32 << 12)  # 32 MiB: more than the socket buffers hold
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, _writer):
            stream.send_now(data)
            assert stream._transport.get_write_buffer_size()  # still queued
            await stream.aclose()
            got = await reader.read(-1)  # to EOF
    assert got == data


async def test_close_resets_a_peer_that_never_reads() -> None:
    """... and a peer that reads nothing gets the connection reset after the
    grace: the transport is not kept open forever for it."""
    with anyio.fail_after(GUARD):
        async with pair() as (stream, _reader, _writer):
            stream.send_now(bytes(32 << 20))
            protocol = stream._protocol
            lost = asyncio.Event()
            connection_lost = protocol.connection_lost

            def on_lost(exc: Exception | None) -> None:
                connection_lost(exc)
                lost.set()

            protocol.connection_lost = on_lost  # type: ignore[method-assign]
            await stream.aclose()
            assert not protocol.lost  # closing, bytes still queued
            await lost.wait()


# ---------------------------------------------------------------------------
# Large writes go to the socket itself (no copy into the transport's buffer)


def _pattern(size: int) -> bytes:
    return bytes(range(251)) * (size // 251) + bytes(size % 251)


async def _read_slowly(reader: asyncio.StreamReader, size: int) -> bytes:
    """Read ``size`` bytes in small pieces, yielding between them (a slow peer)."""
    got = bytearray()
    while len(got) < size:
        got += await reader.read(min(1 << 16, size - len(got)))
        await anyio.sleep(0)
    return bytes(got)


async def _start_until_waiting(
    tg: anyio.abc.TaskGroup, stream: AsyncioStream, send: Callable[[], Awaitable[None]]
) -> list[BaseException]:
    """Start ``send`` in ``tg``; return once the stream waits for room, with
    the list that gets the BrokenResourceError ``send`` may end with."""
    failed: list[BaseException] = []

    async def run() -> None:
        try:
            await send()
        except anyio.BrokenResourceError as exc:
            failed.append(exc)

    tg.start_soon(run)
    while stream._direct_rest is None:
        await anyio.lowlevel.checkpoint()
    return failed


async def test_a_large_write_goes_to_the_socket_not_the_transport_buffer() -> None:
    data = _pattern(24 << 20)  # more than the socket buffers hold: it must wait
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, _writer):
            spy = _Spy(stream)
            waits = 0
            real_add_writer = stream.loop.add_writer

            def add_writer(*args: Any) -> Any:
                nonlocal waits
                waits += 1
                return real_add_writer(*args)

            stream.loop.add_writer = add_writer  # type: ignore[method-assign]  # the spy's loop
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.send, data)
                got = await _read_slowly(reader, len(data))
            assert got == data
            assert waits > 0  # it did wait for room
            assert spy.writes == []  # and never went through the transport
            assert not stream._transport.get_write_buffer_size()
            await stream.send(b"after")  # the stream goes on as before
            assert await reader.readexactly(5) == b"after"


async def test_a_write_while_a_large_one_waits_comes_after_all_of_it() -> None:
    data = _pattern(24 << 20)
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, _writer):
            spy = _Spy(stream)
            done = anyio.Event()

            async def send_large() -> None:
                await stream.send(data)
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_large)
                while stream._direct_rest is None:  # it is waiting for room
                    await anyio.lowlevel.checkpoint()
                assert not stream.can_send_now()
                tg.start_soon(stream.send, b"next")  # e.g. an A-ABORT from the reader
                await anyio.lowlevel.checkpoint()
                # what the large write had left went to the transport first
                assert stream._direct_rest is None
                assert len(spy.writes) == 2 and spy.writes[1] == b"next"
                got = await _read_slowly(reader, len(data) + 4)
                await done.wait()
            assert got == data + b"next"


async def test_a_cancelled_large_write_is_still_sent_whole() -> None:
    data = _pattern(24 << 20)
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, _writer):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stream.send, data)
                    while stream._direct_rest is None:
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()
            assert scope.cancelled_caught
            assert stream._transport.get_write_buffer_size()  # the rest, queued
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.send, b"!")
                got = await _read_slowly(reader, len(data) + 1)
    assert got == data + b"!"


async def test_a_large_write_to_a_peer_that_resets_fails_and_leaks_nothing() -> None:
    import os

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with anyio.fail_after(GUARD):
        async with pair() as (stream, _reader, writer):
            selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
            watched = len(selector.get_map())
            fds = open_fds()
            async with anyio.create_task_group() as tg:
                failed = await _start_until_waiting(
                    tg, stream, functools.partial(stream.send, _pattern(32 << 20))
                )
                writer.transport.abort()  # the peer resets the connection
            assert failed
            assert len(selector.get_map()) <= watched  # no writer left registered
            assert open_fds() <= fds  # the duplicate descriptor is closed


async def test_close_while_a_large_write_waits_lets_all_of_it_out() -> None:
    data = _pattern(24 << 20)
    with anyio.fail_after(GUARD):
        async with pair() as (stream, reader, _writer):
            outcome: list[BaseException | None] = []

            async def send_large() -> None:
                try:
                    await stream.send(data)
                except anyio.BrokenResourceError as exc:
                    outcome.append(exc)
                else:
                    outcome.append(None)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_large)
                while stream._direct_rest is None:
                    await anyio.lowlevel.checkpoint()
                await stream.aclose()
                got = await reader.read(-1)  # to EOF
    assert got == data
    assert len(outcome) == 1


# ---------------------------------------------------------------------------
# Sending a file by sendfile(2): segments of header, file bytes, trailer


@contextlib.contextmanager
def _file_segments(
    tmp_path: Any, size: int, piece: int = 1 << 20
) -> Iterator[tuple[int, list[tuple[bytes, int, int, bytes]], bytes]]:
    """A file of ``size`` bytes in the page cache, open: its descriptor, the
    segments over it (``piece`` bytes of it each, a numbered 4-byte prefix,
    a 1-byte suffix) and the bytes they make."""
    import os

    path = tmp_path / "f"
    data = _pattern(size)
    path.write_bytes(data)
    path.read_bytes()
    segments = [
        (b"H%03d" % i, start, min(piece, size - start), b"T")
        for i, start in enumerate(range(0, size, piece))
    ]
    wire = b"".join(p + data[o : o + n] + t for p, o, n, t in segments)
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd, segments, wire
    finally:
        os.close(fd)


def _whole_segments(got: bytes, segments: list[tuple[bytes, int, int, bytes]]) -> int:
    """How many whole segments ``got`` starts with (it must end at a segment's end)."""
    pos = 0
    for count, (prefix, _, length, suffix) in enumerate(segments):
        if pos == len(got):
            return count
        pos += len(prefix) + length + len(suffix)
    assert pos == len(got), "a segment was cut"
    return len(segments)


async def test_send_file_writes_the_segments_in_order_without_the_transport(tmp_path: Any) -> None:
    with anyio.fail_after(GUARD), _file_segments(tmp_path, 20 << 20) as (fd, segments, wire):
        async with pair() as (stream, reader, _writer):
            spy = _Spy(stream)
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.send_file, fd, segments)
                got = await _read_slowly(reader, len(wire))
            assert got == wire
            assert spy.writes == []


async def test_a_write_while_send_file_waits_follows_the_segment_under_way(tmp_path: Any) -> None:
    with anyio.fail_after(GUARD), _file_segments(tmp_path, 20 << 20) as (fd, segments, wire):
        async with pair() as (stream, reader, _writer):
            async with anyio.create_task_group() as tg:
                failed = await _start_until_waiting(
                    tg, stream, functools.partial(stream.send_file, fd, segments)
                )

                async def other_write() -> None:  # e.g. an A-ABORT from the reader
                    with contextlib.suppress(anyio.BrokenResourceError):
                        await stream.send(b"ABORT")

                tg.start_soon(other_write)
                await anyio.lowlevel.checkpoint()
                await stream.aclose()
                got = await reader.read(-1)
            assert got.endswith(b"ABORT")
            count = _whole_segments(got[:-5], segments)
            assert 0 < count < len(segments)
            assert got[:-5] == wire[: len(got) - 5]
            assert failed  # the rest of the file was not sent: the caller is told


async def test_a_cancelled_send_file_completes_the_segment_under_way(tmp_path: Any) -> None:
    with anyio.fail_after(GUARD), _file_segments(tmp_path, 20 << 20) as (fd, segments, wire):
        async with pair() as (stream, reader, _writer):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stream.send_file, fd, segments)
                    while stream._direct_rest is None:
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()
            assert scope.cancelled_caught
            await stream.aclose()
            got = await reader.read(-1)
            assert 0 < _whole_segments(got, segments) < len(segments)
            assert got == wire[: len(got)]


async def test_send_file_to_a_peer_that_resets_fails_and_leaks_nothing(tmp_path: Any) -> None:
    import os

    with anyio.fail_after(GUARD), _file_segments(tmp_path, 32 << 20) as (fd, segments, _):
        async with pair() as (stream, _reader, writer):
            selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
            watched = len(selector.get_map())
            fds = len(os.listdir("/proc/self/fd"))
            async with anyio.create_task_group() as tg:
                failed = await _start_until_waiting(
                    tg, stream, functools.partial(stream.send_file, fd, segments)
                )
                writer.transport.abort()
            assert failed
            assert len(selector.get_map()) <= watched
            assert len(os.listdir("/proc/self/fd")) <= fds


async def test_send_file_behind_queued_bytes_keeps_the_order(tmp_path: Any) -> None:
    first = _pattern(16 << 20)
    with anyio.fail_after(GUARD), _file_segments(tmp_path, 3 << 20) as (fd, segments, wire):
        async with pair() as (stream, reader, _writer):
            stream.send_now(first)  # queued in the transport: the socket is full
            assert stream._transport.get_write_buffer_size()
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.send_file, fd, segments)
                got = await _read_slowly(reader, len(first) + len(wire))
            assert got == first + wire


def test_page_cached_tells_a_file_read_from_one_dropped(tmp_path: Any) -> None:
    import os

    from aiodicom import _nowait

    path = tmp_path / "f"
    path.write_bytes(_pattern(8 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert not _nowait.page_cached(fd, 0, 8 << 20)
        # The kernel may drop a page again at any time (a machine running
        # DAMON reclaim, say): read up to three times until all are there.
        for _ in range(3):
            os.pread(fd, 8 << 20, 0)
            if _nowait.page_cached(fd, 0, 8 << 20):
                break
        else:
            raise AssertionError("page_cached() never saw the file read whole")
        assert _nowait.page_cached(fd, 4096, 10)
    finally:
        os.close(fd)


async def test_a_lost_connection_lets_go_of_its_buffers_and_consumer() -> None:
    """Once the connection is lost the protocol keeps none of its receive
    buffers (what it handed on stays readable: its views hold their own),
    nor the consumer, nor the stream; a consumer set after that (an
    association that starts reading late) is not kept either: each would
    hold the association in a reference cycle."""
    from aiodicom._transport import _Protocol

    protocol = _Protocol(pdu_framing=False)
    stream = AsyncioStream(asyncio.Transport(), protocol)
    stream.set_consumer(lambda view: view)
    view = protocol.get_buffer(-1)
    view[:5] = b"hello"
    protocol.buffer_updated(5)  # handed on to the consumer, which gives it back
    assert protocol.pool and len(protocol.buf)
    protocol.connection_lost(None)
    assert (protocol.consumer, protocol.stream, protocol.pool, len(protocol.buf)) == (
        None,
        None,
        [],
        0,
    )
    assert bytes(await stream.receive_view()) == b"hello"
    stream.set_consumer(lambda view: view)
    assert protocol.consumer is None


# ---------------------------------------------------------------------------
# Lending the connection to another reader (detach_reading / attach_reading),
# on asyncio's loop and on uvloop's (whose transport pauses reading otherwise)

_LOOPS = pytest.mark.parametrize(
    "anyio_backend",
    ["asyncio", pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")],
)


async def _until_buffered(stream: AsyncioStream, size: int) -> None:
    """Wait until the stream holds ``size`` bytes received and not yet returned
    (handed on, or a PDU begun)."""
    protocol = stream._protocol
    while protocol.buffered + protocol.end - protocol.start < size:
        await anyio.sleep(0.001)


@_LOOPS
async def test_detach_hands_over_what_arrived_and_stops_reading() -> None:
    """What arrived and was not returned (whole PDUs, and the start of one)
    is handed over in order; what comes after stays in the socket for the
    other reader; given back, bytes are framed as if they had just arrived,
    and reading goes on."""
    one, two, three = _pdu(100, 1), _pdu(5000, 2), _pdu(300, 3)
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True) as (stream, _reader, writer):
            writer.write(one + two + three[:50])
            await writer.drain()
            assert bytes(await stream.receive_view(len(one))) == one
            await _until_buffered(stream, len(two) + 50)
            closed: list[bool] = []
            detached = stream.detach_reading(lambda: closed.append(True))
            assert detached is not None
            fd, held = detached
            assert b"".join(held) == two + three[:50]
            writer.write(three[50:])
            await writer.drain()
            await anyio.sleep(0.05)  # (the loop's turns, in which a reading transport reads)
            protocol = stream._protocol
            assert (protocol.buffered, protocol.end - protocol.start) == (0, 0)
            rest = b""
            while len(rest) < len(three) - 50:  # (the other reader's socket reads)
                with contextlib.suppress(BlockingIOError):
                    rest += os.read(fd, 1 << 16)
                await anyio.sleep(0.001)
            assert rest == three[50:]
            # given back: the middle of PDU two onwards, then more arrives
            stream.attach_reading(two[3000:] + three[:10])
            writer.write(three[10:] + one)
            await writer.drain()
            got = b""
            while len(got) < len(two) - 3000 + len(three) + len(one):
                got += bytes(await stream.receive_view(1 << 62))
            assert got == two[3000:] + three + one
            assert closed == []


@_LOOPS
async def test_detach_takes_all_past_the_high_water_and_attach_keeps_the_pause() -> None:
    """A peer sent more than 4 MiB, and reading paused (flow control): all of
    it is handed over. Given back whole, it stays paused until the stream is
    read below the low water, and then everything else arrives, in order."""
    pdus = [_pdu(65_000, i % 251) for i in range(100)]  # 6.5 MB
    data = b"".join(pdus)
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True) as (stream, _reader, writer):
            writer.write(data)
            protocol = stream._protocol
            while not protocol.reading_paused:
                await anyio.sleep(0.001)
            detached = stream.detach_reading(lambda: None)
            assert detached is not None
            _fd, held = detached
            taken = b"".join(held)
            assert len(taken) > 4 << 20 and data.startswith(taken)
            stream.attach_reading(taken)
            assert protocol.reading_paused
            got = b""
            while len(got) < len(data):
                got += bytes(await stream.receive_view(1 << 62))
            assert got == data
            assert not protocol.reading_paused


@_LOOPS
async def test_closing_a_detached_stream_tells_the_other_reader() -> None:
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True) as (stream, _reader, _writer):
            closed: list[bool] = []
            assert stream.detach_reading(lambda: closed.append(True)) is not None
            await stream.aclose()
            assert closed == [True]
            stream.attach_reading(b"late")  # (a closed stream takes nothing back)
            assert stream._protocol.buffered == 0
            assert stream.detach_reading(lambda: None) is None


@_LOOPS
async def test_given_back_empty_a_stream_reads_again() -> None:
    with anyio.fail_after(GUARD):
        async with pair(pdu_framing=True) as (stream, _reader, writer):
            assert stream.detach_reading(lambda: None) is not None
            stream.attach_reading(b"")
            writer.write(_pdu(10))
            await writer.drain()
            assert bytes(await stream.receive_view(1 << 62)) == _pdu(10)
