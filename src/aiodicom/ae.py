"""The Application Entity: client (``associate``) and server (``start_server``/``serve``)."""

from __future__ import annotations

import errno
import functools
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream
from pydicom.uid import UID

from . import _transport, evt
from .association import Association
from .dsutils import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from .pdu_primitives import UserItem
from .presentation import PresentationContext, build_context

__all__ = ("AE", "ApplicationEntity", "Server")

LOGGER = logging.getLogger("aiodicom")

#: How long leaving ``async with ae.associate()`` by an exception waits for the
#: peer to close the connection after our A-ABORT, before closing it ourselves.
ABORT_GRACE = 1.0

#: Errors from accept() that mean "out of resources": log, back off, go on.
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


def validate_ae_title(title: str) -> str:
    """Return ``title`` stripped of spaces, or raise ValueError (PS3.5 AE VR)."""
    if isinstance(title, bytes):
        title = title.decode("ascii")
    if not isinstance(title, str):
        raise TypeError("an AE title is a str")
    stripped = title.strip(" ")
    if not 1 <= len(stripped) <= 16:
        raise ValueError(f"AE title {title!r} must be 1 to 16 characters (spaces excluded)")
    if any(c == "\\" or not (0x20 <= ord(c) < 0x7F) for c in stripped):
        raise ValueError(f"AE title {title!r} has a backslash, control or non-ASCII character")
    return stripped


def _context_list(contexts: Sequence[PresentationContext], what: str) -> list[PresentationContext]:
    out = []
    for cx in contexts:
        if not isinstance(cx, PresentationContext):
            raise TypeError(f"{what} must be PresentationContext items")
        out.append(cx)
    return out


def _syntaxes(transfer_syntax: str | UID | Sequence[str | UID] | None) -> set[UID] | None:
    """The transfer syntaxes named, or None for "all of them"."""
    if transfer_syntax is None:
        return None
    items = [transfer_syntax] if isinstance(transfer_syntax, str) else transfer_syntax
    return {UID(str(t)) for t in items}


def _drop_syntaxes(cx: PresentationContext, drop: set[UID] | None) -> bool:
    """Remove ``drop`` (all if None) from ``cx``; True if any transfer syntax is left."""
    cx.transfer_syntax = [] if drop is None else [t for t in cx.transfer_syntax if t not in drop]
    return bool(cx.transfer_syntax)


class AE:
    """A DICOM Application Entity: both a client (SCU) and a server (SCP).

    ``ae_title`` is 1-16 characters of the default repertoire (no backslash or
    control characters). Attributes follow pynetdicom's ApplicationEntity.
    """

    def __init__(self, ae_title: str = "AIODICOM") -> None:
        self._ae_title = validate_ae_title(ae_title)
        self.acse_timeout: float | None = 30.0
        self.dimse_timeout: float | None = 30.0
        #: Seconds without network activity (nothing received, no write going
        #: out) before an association is aborted; a write that cannot go out
        #: for as long (a peer that stopped reading) closes the connection.
        self.network_timeout: float | None = 60.0
        self.connection_timeout: float | None = 10.0
        self.maximum_associations = 64
        self.maximum_pdu_size = 262_144
        self.require_called_aet = False
        self.require_calling_aet: list[str] = []
        self.implementation_class_uid: UID = IMPLEMENTATION_CLASS_UID
        self.implementation_version_name: str | None = IMPLEMENTATION_VERSION_NAME
        #: Received C-STORE data sets larger than this many bytes are spooled
        #: to a temporary file as they arrive (``event.dataset_path``); 0: never.
        #: It is also the largest data set any other message may bring, as
        #: only C-STORE-RQ data sets are spooled: a larger one is not kept,
        #: the request is refused out of resources (C-FIND 0xA700, C-GET and
        #: C-MOVE 0xA701, N services 0x0213) and a response fails its
        #: operation with DIMSEError. With 0 there is no such limit either.
        #: On asyncio under Linux, once a data set is being spooled the rest
        #: of it goes from the socket into the file by ``splice(2)``, in a
        #: worker thread (see docs/architecture.md; ``AIODICOM_SPLICE=0`` in
        #: the environment turns that off).
        self.spool_threshold = 16 * 1024 * 1024
        #: Where spool files go (``None``: the system's temporary directory).
        #: The file at ``event.dataset_path`` is the handler's to move away
        #: (``os.replace``) or read until it returns; then its name is gone.
        #: One the handler left is reused for the association's next spooled
        #: data set, unless it is linked, open or mapped anywhere, or its
        #: mode was changed; it is deleted when the association ends or has
        #: spooled nothing for 2 s.
        self.spool_directory: str | None = None
        self._requested: list[PresentationContext] = []
        self._supported: dict[UID, PresentationContext] = {}
        self._servers: list[Server] = []
        self._client_associations: list[Association] = []

    # -- identity -------------------------------------------------------------

    @property
    def ae_title(self) -> str:
        """This AE's title."""
        return self._ae_title

    @ae_title.setter
    def ae_title(self, value: str) -> None:
        self._ae_title = validate_ae_title(value)

    @property
    def active_associations(self) -> list[Association]:
        """Every association of this AE now open, as requestor or acceptor."""
        out = list(self._client_associations)
        for server in self._servers:
            out.extend(server.active_associations)
        return out

    # -- contexts -------------------------------------------------------------

    @property
    def requested_contexts(self) -> list[PresentationContext]:
        """The contexts proposed by :meth:`associate` when none are given (at most 128)."""
        return list(self._requested)

    @requested_contexts.setter
    def requested_contexts(self, contexts: Sequence[PresentationContext]) -> None:
        self._requested = []
        for cx in _context_list(contexts, "requested_contexts"):
            self.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)

    def add_requested_context(
        self,
        abstract_syntax: str | UID,
        transfer_syntax: str | UID | Sequence[str | UID] | None = None,
    ) -> None:
        """Add a context to propose. The same abstract syntax may be added again
        with other transfer syntaxes (a separate context); at most 128."""
        if len(self._requested) >= 128:
            raise ValueError("at most 128 presentation contexts may be requested")
        self._requested.append(build_context(abstract_syntax, transfer_syntax))

    def remove_requested_context(
        self,
        abstract_syntax: str | UID,
        transfer_syntax: str | UID | Sequence[str | UID] | None = None,
    ) -> None:
        """Remove the contexts for ``abstract_syntax`` (or only those transfer syntaxes)."""
        uid = UID(str(abstract_syntax))
        drop = _syntaxes(transfer_syntax)
        self._requested = [
            cx for cx in self._requested if cx.abstract_syntax != uid or _drop_syntaxes(cx, drop)
        ]

    @property
    def supported_contexts(self) -> list[PresentationContext]:
        """The contexts a server accepts, one per abstract syntax."""
        return sorted(self._supported.values(), key=lambda cx: str(cx.abstract_syntax))

    @supported_contexts.setter
    def supported_contexts(self, contexts: Sequence[PresentationContext]) -> None:
        self._supported = {}
        for cx in _context_list(contexts, "supported_contexts"):
            self.add_supported_context(
                cx.abstract_syntax, cx.transfer_syntax, cx.scu_role, cx.scp_role
            )

    def add_supported_context(
        self,
        abstract_syntax: str | UID,
        transfer_syntax: str | UID | Sequence[str | UID] | None = None,
        scu_role: bool | None = None,
        scp_role: bool | None = None,
    ) -> None:
        """Accept ``abstract_syntax`` with these transfer syntaxes (merged with
        any already supported) and answer a role selection as given."""
        cx = build_context(abstract_syntax, transfer_syntax)
        existing = self._supported.get(cx.abstract_syntax)
        if existing is not None:
            for ts in cx.transfer_syntax:
                existing.add_transfer_syntax(ts)
            cx = existing
        cx.scu_role = scu_role
        cx.scp_role = scp_role
        self._supported[cx.abstract_syntax] = cx

    def remove_supported_context(
        self,
        abstract_syntax: str | UID,
        transfer_syntax: str | UID | Sequence[str | UID] | None = None,
    ) -> None:
        """Stop supporting ``abstract_syntax`` (or only those transfer syntaxes)."""
        uid = UID(str(abstract_syntax))
        cx = self._supported.get(uid)
        if cx is not None and not _drop_syntaxes(cx, _syntaxes(transfer_syntax)):
            del self._supported[uid]

    # -- client ---------------------------------------------------------------

    def associate(
        self,
        host: str,
        port: int,
        *,
        ae_title: str = "ANY-SCP",
        contexts: Sequence[PresentationContext] | None = None,
        ext_neg: Sequence[UserItem] | None = None,
        evt_handlers: Sequence[evt.EventHandlerType] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_pdu: int | None = None,
        bind_address: str | tuple[str, int] | None = None,
    ) -> _AssociateContext:
        """Request an association with the AE at ``host``:``port``.

        Use it as ``async with ae.associate(...) as assoc``. Leaving the block
        normally releases the association; leaving it by an exception or a
        cancellation aborts it. Raises :class:`AssociationRejected` when the
        peer rejects, ``OSError`` when the connection fails, ``TimeoutError``
        after ``connection_timeout`` / ``acse_timeout``.
        """
        called = validate_ae_title(ae_title)
        cxs = _context_list(contexts if contexts is not None else self._requested, "contexts")
        if not cxs:
            raise ValueError("no presentation contexts to request: add_requested_context() first")
        if len(cxs) > 128:
            raise ValueError("at most 128 presentation contexts may be requested")
        local_host = (
            bind_address
            if isinstance(bind_address, str)
            else (bind_address[0] if bind_address else None)
        )

        async def connect() -> anyio.abc.ByteStream:
            with anyio.fail_after(self.connection_timeout):
                return await _transport.connect(
                    host,
                    port,
                    local_host=local_host or None,
                    ssl_context=ssl_context,
                    pdu_framing=True,
                )

        return _AssociateContext(
            self,
            connect,
            (host, port),
            called,
            cxs,
            list(ext_neg or ()),
            evt.HandlerRegistry(evt_handlers),
            self.maximum_pdu_size if max_pdu is None else max_pdu,
        )

    # -- server ---------------------------------------------------------------

    def start_server(
        self,
        address: tuple[str, int],
        *,
        evt_handlers: Sequence[evt.EventHandlerType] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ae_title: str | None = None,
        contexts: Sequence[PresentationContext] | None = None,
    ) -> _ServerContext:
        """Listen on ``address`` (``(host, port)``; port 0 picks a free one).

        Use it as ``async with ae.start_server(...) as server``; leaving the
        block shuts the server down (:meth:`Server.shutdown`).
        """
        return _ServerContext(self, address, evt_handlers, ssl_context, ae_title, contexts)

    async def serve(
        self,
        address: tuple[str, int],
        *,
        evt_handlers: Sequence[evt.EventHandlerType] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ae_title: str | None = None,
        contexts: Sequence[PresentationContext] | None = None,
        task_status: anyio.abc.TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve associations on ``address`` until cancelled or shut down.

        Start it with ``server = await task_group.start(ae.serve, address)``.

        Resource handling: every association is a task of this server's task
        group; :attr:`AE.maximum_associations` bounds how many are served at
        once (the next is rejected, transient, local-limit-exceeded), and each
        connection is bounded in time by the ACSE, network and DIMSE timeouts.
        When ``accept()`` fails for lack of resources (EMFILE, ENFILE, ENOMEM,
        ENOBUFS) the error is logged and accepting resumes after a short pause.

        Error handling: a handler that raises is logged and answered with the
        service's failure status; a protocol error from a peer aborts only
        that association. Cancelling this task aborts every open association
        (their peers see an A-ABORT) and closes the listener.
        """
        listener = await _transport.listen(address[0] or None, address[1])
        await self._serve_on(
            listener, evt_handlers, ssl_context, ae_title, contexts, task_status=task_status
        )

    async def _serve_on(
        self,
        listener: _transport.Listener,
        evt_handlers: Sequence[evt.EventHandlerType] | None,
        ssl_context: ssl.SSLContext | None,
        ae_title: str | None,
        contexts: Sequence[PresentationContext] | None,
        *,
        task_status: anyio.abc.TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            title = validate_ae_title(ae_title) if ae_title is not None else None
            cxs = None if contexts is None else _context_list(contexts, "contexts")
            server = Server(
                self, listener, evt.HandlerRegistry(evt_handlers), ssl_context, title, cxs
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            raise
        self._servers.append(server)
        try:
            async with anyio.create_task_group() as tg:
                server._tg = tg
                for sub in listener.sub_listeners:
                    tg.start_soon(server._accept_loop, sub)
                task_status.started(server)
                await server._stopped.wait()
                tg.cancel_scope.cancel()
        finally:
            self._servers.remove(server)
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    def __repr__(self) -> str:
        return f"<AE {self.ae_title!r}>"


#: pynetdicom's name for the class.
ApplicationEntity = AE


class _AssociateContext:
    """The async context manager :meth:`AE.associate` returns."""

    def __init__(
        self,
        ae: AE,
        connect: Callable[[], Awaitable[anyio.abc.ByteStream]],
        peer: tuple[str, int],
        called: str,
        contexts: list[PresentationContext],
        ext_neg: list[UserItem],
        handlers: evt.HandlerRegistry,
        max_pdu: int,
    ) -> None:
        self._ae = ae
        self._connect = connect
        self._peer = peer
        self._called = called
        self._contexts = contexts
        self._ext_neg = ext_neg
        self._handlers = handlers
        self._max_pdu = max_pdu
        self._tg: anyio.abc.TaskGroup | None = None
        self._assoc: Association | None = None

    def __await__(self) -> Any:
        raise TypeError("use 'async with ae.associate(...) as assoc': associations are scoped")

    async def __aenter__(self) -> Association:
        ae = self._ae
        stream = await self._connect()
        assoc = Association(
            ae,
            stream,
            requestor=True,
            handlers=self._handlers,
            local_ae_title=ae.ae_title,
            max_pdu=self._max_pdu,
            peer_address=self._peer,
        )
        try:
            rq = assoc._build_request(self._called, self._contexts, self._ext_neg)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        tg = anyio.create_task_group()
        await tg.__aenter__()
        assoc._tg = tg
        self._tg, self._assoc = tg, assoc
        ae._client_associations.append(assoc)
        tg.start_soon(assoc._run)
        try:
            await assoc._request(rq)
        except BaseException as exc:
            await self._finish(exc)
            raise
        return assoc

    async def _finish(self, exc: BaseException | None) -> None:
        """Release (``exc`` is None) or abort under a shield, then end the task group."""
        assoc, tg = self._assoc, self._tg
        assert assoc is not None and tg is not None
        try:
            with anyio.CancelScope(shield=True):
                if exc is None:
                    await assoc.release()
                else:
                    await assoc._abort(grace=ABORT_GRACE)
        finally:
            if assoc in self._ae._client_associations:
                self._ae._client_associations.remove(assoc)
            if not assoc._closed.is_set():
                tg.cancel_scope.cancel()
            # (else the reader is ending, its tasks with it: cancelled now, one
            # that was just ending would end as cancelled, and asyncio keeps
            # the frames of that CancelledError, with the association, in a
            # reference cycle: the association would wait for the collector)
            await tg.__aexit__(None, None, None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._finish(exc)


class Server:
    """A running DICOM server: see :meth:`AE.start_server` and :meth:`AE.serve`."""

    def __init__(
        self,
        ae: AE,
        listener: _transport.Listener,
        handlers: evt.HandlerRegistry,
        ssl_context: ssl.SSLContext | None,
        ae_title: str | None,
        contexts: list[PresentationContext] | None,
    ) -> None:
        self.ae = ae
        self._listener = listener
        self.handlers = handlers
        self.ssl_context = ssl_context
        self.ae_title = ae_title or ae.ae_title
        self.contexts = contexts
        self._tg: anyio.abc.TaskGroup | None = None
        self._stopped = anyio.Event()
        self._accepting = True
        self._accept_scope = anyio.CancelScope()
        self._associations: list[Association] = []
        self._admitted: set[int] = set()
        #: Set (and replaced) when an association ends or a shutdown() starts.
        self._change = anyio.Event()
        #: Associations a shutdown() was called from (by one of their
        #: handlers): shutdown() does not wait for those, which end after it.
        self._exempt: set[int] = set()
        self.host, self.port = listener.address

    @property
    def active_associations(self) -> list[Association]:
        """The associations being served now (negotiating or established)."""
        return list(self._associations)

    def _admit(self, assoc: Association) -> bool:
        """Count ``assoc`` against ``maximum_associations``; False if over."""
        if len(self._admitted) >= self.ae.maximum_associations:
            return False
        self._admitted.add(id(assoc))
        return True

    async def serve_forever(self) -> None:
        """Wait until the server is shut down."""
        await self._stopped.wait()

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting now; give open associations ``grace`` seconds, then abort them.

        Returns once every association has ended (its handlers returned, its
        end events notified), but for the one whose handler calls this,
        which is aborted and ends once that handler returns.
        """
        self._accepting = False
        self._accept_scope.cancel()
        task = anyio.get_current_task().id
        self._exempt.update(id(a) for a in self._associations if task in a._task_ids)
        self._changed()  # (another shutdown() waiting need not wait for these)
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(grace):
                await self._until(self._only_exempt_left)
            # (none is added from now on: _handle serves nothing once not accepting)
            async with anyio.create_task_group() as tg:
                for assoc in list(self._associations):
                    tg.start_soon(assoc.abort)
            await self._until(self._only_exempt_left)
        self._stopped.set()

    def _changed(self) -> None:
        change, self._change = self._change, anyio.Event()
        change.set()

    def _only_exempt_left(self) -> bool:
        """Every association left is one a shutdown() was called from."""
        return all(id(a) in self._exempt for a in self._associations)

    async def _until(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()``, checked again each time an association ends
        (or a shutdown() starts); ``_until(lambda: not server._associations)``
        waits until none is served."""
        while not done():
            await self._change.wait()

    async def _accept_loop(self, listener: Any) -> None:
        with self._accept_scope:
            while self._accepting:
                try:
                    stream = await self._listener.accept(
                        listener, pdu_framing=self.ssl_context is None
                    )
                except OSError as exc:
                    if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                        LOGGER.error("accept() failed (%s); pausing before accepting again", exc)
                        await anyio.sleep(0.1)
                        continue
                    raise
                assert self._tg is not None
                self._tg.start_soon(self._handle, stream)

    async def _handle(self, raw: anyio.abc.ByteStream) -> None:
        stream: anyio.abc.ByteStream = raw
        try:
            peer = raw.extra(SocketAttribute.remote_address)
        except Exception:  # pragma: no cover
            peer = ("", 0)
        if self.ssl_context is not None:
            try:
                with anyio.fail_after(self.ae.acse_timeout):
                    stream = await TLSStream.wrap(
                        raw,
                        server_side=True,
                        ssl_context=self.ssl_context,
                        standard_compatible=False,
                    )
            except (
                TimeoutError,
                ssl.SSLError,
                OSError,
                anyio.BrokenResourceError,
                anyio.EndOfStream,
            ) as exc:
                LOGGER.warning("TLS handshake with %s failed: %s", peer, exc)
                with anyio.CancelScope(shield=True):
                    await raw.aclose()
                return
            except BaseException:  # cancelled (the server stops): not left open
                with anyio.CancelScope(shield=True):
                    await raw.aclose()
                raise
        if not self._accepting:  # shut down meanwhile: nothing new is served
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            return
        assoc = Association(
            self.ae,
            stream,
            requestor=False,
            handlers=self.handlers.copy(),
            local_ae_title=self.ae_title,
            max_pdu=self.ae.maximum_pdu_size,
            peer_address=(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0),
            server=self,
        )
        self._associations.append(assoc)
        assoc._task_ids.add(anyio.get_current_task().id)  # (its end events run here)
        try:
            await assoc._run_acceptor()
        except Exception:
            LOGGER.exception("Unexpected error serving %s", assoc)
        finally:
            self._associations.remove(assoc)
            self._admitted.discard(id(assoc))
            self._changed()

    def __repr__(self) -> str:
        return f"<Server {self.ae_title!r} on {self.host}:{self.port}>"


class _ServerContext:
    """The async context manager :meth:`AE.start_server` returns."""

    def __init__(
        self,
        ae: AE,
        address: tuple[str, int],
        handlers: Sequence[evt.EventHandlerType] | None,
        ssl_context: ssl.SSLContext | None,
        ae_title: str | None,
        contexts: Sequence[PresentationContext] | None,
    ) -> None:
        self._args = (ae, address, handlers, ssl_context, ae_title, contexts)
        self._tg: anyio.abc.TaskGroup | None = None
        self._server: Server | None = None

    async def __aenter__(self) -> Server:
        ae, address, handlers, ssl_context, ae_title, contexts = self._args
        # Bind first, outside any task group, so a bind error is a plain OSError.
        listener = await _transport.listen(address[0] or None, address[1])
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            self._server = await tg.start(
                functools.partial(ae._serve_on, listener, handlers, ssl_context, ae_title, contexts)
            )
        except BaseException as exc:
            tg.cancel_scope.cancel()
            await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self._server

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None and self._server is not None
        if exc is None:
            with anyio.CancelScope(shield=True):
                await self._server.shutdown()
        else:
            self._server._accepting = False
            self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(exc_type, exc, tb)
