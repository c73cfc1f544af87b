"""The asyncio transport's write corking, over a real loopback connection.

What is checked: a write that answers data just received goes to the socket
at once and schedules nothing; writes that follow it before anything else
arrives are joined into one transport write at the end of the loop
iteration, in order; ``send_now`` queues exactly as ``send`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
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
        loop, transport = stream._loop, stream._transport
        spy = self

        class Loop:
            def call_soon(self, *args: Any) -> Any:
                spy.soon += 1
                return loop.call_soon(*args)

        real_write = transport.write

        def write(data: Any) -> None:
            spy.writes.append(bytes(data))
            real_write(data)

        stream._loop = Loop()  # type: ignore[assignment]
        transport.write = write  # type: ignore[method-assign]


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[AsyncioStream, asyncio.StreamReader, asyncio.StreamWriter]]:
    """Our stream connected to a plain asyncio peer."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stream = await connect("127.0.0.1", port)
    assert isinstance(stream, AsyncioStream)
    reader, writer = await accepted.get()
    try:
        yield stream, reader, writer
    finally:
        await stream.aclose()
        writer.close()
        server.close()


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
            writer.write(b"go")
            await writer.drain()
            assert await stream.receive() == b"go"
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
