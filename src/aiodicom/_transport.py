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

Exceptions follow anyio's stream contract: ``EndOfStream`` at EOF,
``BrokenResourceError`` when the connection fails, ``ClosedResourceError``
after a local ``aclose()``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable, Mapping
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


def _on_asyncio() -> bool:
    """True when running on anyio's asyncio backend (an asyncio loop runs)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Protocol(asyncio.Protocol):
    """Buffers what arrives and wakes the one reader; tracks write flow control."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.eof = False
        self.lost = False
        self.exception: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.consumer: Callable[[bytes], bytes] | None = None
        #: Set by the stream while a burst of writes is open (see AsyncioStream.send).
        self.stream: AsyncioStream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream._data_arrived()
        if self.consumer is not None and not self.chunks:
            data = self.consumer(data)
            if not data:
                return
        self.chunks.append(data)
        self.buffered += len(data)
        self._wake()
        if self.buffered > _HIGH_WATER and not self.reading_paused:
            assert self.transport is not None
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = self.lost = True
        self.exception = exc
        self._wake()
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
        self._loop = asyncio.get_running_loop()
        protocol.stream = self

    def set_consumer(self, consumer: Callable[[bytes], bytes] | None) -> None:
        """Give arriving bytes to ``consumer`` first, while nothing is buffered.

        It is called synchronously from the event loop with the new bytes and
        returns what it did not consume, which :meth:`receive` then returns
        in order.
        """
        self._protocol.consumer = consumer

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        if not protocol.chunks:
            if self._closed:
                raise anyio.ClosedResourceError
            if not protocol.eof:
                waiter = protocol.waiter = asyncio.get_running_loop().create_future()
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
        self._put(item)
        drain = protocol.drain
        if drain is not None:
            await drain
            if protocol.lost:
                raise anyio.BrokenResourceError from protocol.exception

    def can_send_now(self) -> bool:
        """True if :meth:`send_now` would not have to wait (no drain pending)."""
        protocol = self._protocol
        return not (
            self._closed
            or protocol.lost
            or protocol.drain is not None
            or self._transport.is_closing()
        )

    def send_now(self, item: bytes) -> None:
        """Write ``item`` without awaiting; only after :meth:`can_send_now` said yes.

        The bytes are queued exactly as :meth:`send` queues them; a peer that
        stops reading makes the next :meth:`send` wait, not this call.
        """
        self._put(item)

    def _data_arrived(self) -> None:
        """What is written next answers what just arrived: it goes out at once
        (unless earlier writes still wait for their flush, which keeps order)."""
        if not self._corked:
            self._burst = False

    def _put(self, item: bytes) -> None:
        if not self._burst:
            self._burst = True
            self._transport.write(item)
        else:
            if not self._corked:
                self._loop.call_soon(self._flush)
            self._corked.append(item)
            self._corked_size += len(item)
            if self._corked_size >= _CORK_LIMIT:
                self._write_corked()

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
        self._flush()
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._flush()
        transport = self._transport
        # A transport still holding unsent data belongs to a peer that stopped
        # reading: close() would wait for it forever, so abort instead.
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()
        self._protocol._wake()
        await anyio.lowlevel.checkpoint()

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
) -> anyio.abc.ByteStream:
    """Open a TCP connection (TLS over it when ``ssl_context`` is given)."""
    stream: anyio.abc.ByteStream
    if _on_asyncio():
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(
            _Protocol, host, port, local_addr=(local_host, 0) if local_host else None
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

    async def accept(self, sub: Any) -> anyio.abc.ByteStream:
        """Accept one connection on ``sub`` (an item of :attr:`sub_listeners`)."""
        if self._anyio is not None:
            stream: anyio.abc.ByteStream = await sub.accept()
            return stream
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(sub)
        try:
            transport, protocol = await loop.connect_accepted_socket(_Protocol, conn)
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
