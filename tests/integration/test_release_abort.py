"""Release, release collision and abort, from either side."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aiodicom import Association, Server, evt
from aiodicom.errors import AssociationAborted, DicomNetworkError
from aiodicom.pdu import AAbort, AReleaseRP, AReleaseRQ, PDataTF

from .conftest import (
    GUARD,
    RawPeer,
    Recorder,
    c_echo_rq_pdus,
    echo_once,
    fake_scp,
    make_scp_ae,
    make_scu_ae,
    raw_associate,
    raw_connection,
    running_server,
    verification_ac,
)

pytestmark = pytest.mark.anyio


async def test_client_release_both_sides_see_released() -> None:
    server_rec, client_rec = Recorder(), Recorder()
    async with running_server(handlers=server_rec.handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_rec.handlers
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
            assert assoc.is_released and not assoc.is_aborted
            await server_rec.wait_for("EVT_CONN_CLOSE")
    assert client_rec.count("EVT_RELEASED") == 1
    assert server_rec.count("EVT_RELEASED") == 1
    assert "EVT_ABORTED" not in client_rec.names + server_rec.names
    server_assoc = server_rec.events[0].assoc
    assert server_assoc.is_released and not server_assoc.is_aborted


async def test_explicit_release_inside_block() -> None:
    server_rec = Recorder()
    async with running_server(handlers=server_rec.handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                await assoc.release()
                assert assoc.is_released
                await assoc.release()  # a second release is a no-op
        await server_rec.wait_for("EVT_CONN_CLOSE")
    assert server_rec.count("EVT_RELEASED") == 1


async def test_code_after_release_inside_block_runs() -> None:
    """The association ending must not cancel the caller's code: after an
    explicit release, the rest of the block and what follows it still run."""
    ran: list[str] = []
    async with running_server() as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                await assoc.release()
                await anyio.sleep(0.01)  # a checkpoint after the association ended
                ran.append("block")
            ran.append("after")
    assert ran == ["block", "after"]


async def test_peer_abort_leaves_the_block_running() -> None:
    """An abort by the peer fails the calls on the association, not the caller's task."""

    async def on_echo(event: evt.Event) -> int:
        await event.assoc.abort()
        return 0

    ran: list[str] = []
    async with running_server(handlers=[(evt.EVT_C_ECHO, on_echo)]) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                with pytest.raises(AssociationAborted):
                    await assoc.send_c_echo()
                await anyio.sleep(0.01)
                assert assoc.is_aborted
                with pytest.raises(AssociationAborted):
                    await assoc.send_c_echo()
                ran.append("block")
            ran.append("after")
    assert ran == ["block", "after"]


async def test_server_releases_from_handler_pending_op_fails() -> None:
    """The EVT_C_ECHO handler releases the association before answering."""
    server_rec, client_rec = Recorder(), Recorder()

    first = True

    async def on_echo(event: evt.Event) -> int:
        nonlocal first
        if first:  # only the first association; later ones are served normally
            first = False
            await event.assoc.release()
        return 0x0000

    async with running_server(handlers=[(evt.EVT_C_ECHO, on_echo), *server_rec.handlers]) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_rec.handlers
            ) as assoc:
                with pytest.raises(DicomNetworkError):
                    await assoc.send_c_echo()
                await client_rec.wait_for("EVT_CONN_CLOSE")
                assert not assoc.is_established
                with pytest.raises(DicomNetworkError):
                    await assoc.send_c_echo()
            await server_rec.wait_for("EVT_CONN_CLOSE")
        assert client_rec.count("EVT_RELEASED") == 1
        assert server_rec.count("EVT_RELEASED") == 1
        assert "EVT_ABORTED" not in client_rec.names + server_rec.names
        assert await echo_once(server.port) == 0


async def test_server_releases_from_its_own_task_next_op_fails() -> None:
    """A task of the test's own (not a handler) releases the server side."""
    server_rec, client_rec = Recorder(), Recorder()
    established: list[Association] = []
    ready = anyio.Event()

    def on_established(event: evt.Event) -> None:
        established.append(event.assoc)
        ready.set()

    handlers = [(evt.EVT_ESTABLISHED, on_established), *server_rec.handlers]
    async with running_server(handlers=handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_rec.handlers
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
                await ready.wait()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(established[0].release)
                    await client_rec.wait_for("EVT_RELEASED")
                assert established[0].is_released
                with pytest.raises(DicomNetworkError):
                    await assoc.send_c_echo()
            await server_rec.wait_for("EVT_CONN_CLOSE")
    assert client_rec.names[-2:] == ["EVT_RELEASED", "EVT_CONN_CLOSE"]
    assert "EVT_ABORTED" not in client_rec.names + server_rec.names


async def test_release_collision_requestor_side() -> None:
    """PS3.8 9.2.3 / Sta7 Evt12 (AR-8): the acceptor sends its own A-RELEASE-RQ
    in answer to ours. The requestor answers A-RELEASE-RP (AR-9, Sta11), then
    completes on the acceptor's A-RELEASE-RP (AR-3)."""
    seen: list[Any] = []
    fsm: list[str | None] = []

    async def acceptor(peer: RawPeer) -> None:
        rq = await peer.read_pdu()
        await peer.send(verification_ac(rq))
        pdu = await peer.read_pdu()
        assert isinstance(pdu, AReleaseRQ), pdu
        await peer.send(AReleaseRQ())  # collision
        seen.append(await peer.read_pdu())  # the requestor's A-RELEASE-RP
        await peer.send(AReleaseRP())
        seen.extend(await peer.read_until_eof())

    client_rec = Recorder()
    handlers = [*client_rec.handlers, (evt.EVT_FSM_TRANSITION, lambda e: fsm.append(e.action))]
    async with fake_scp(acceptor) as port:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", port, evt_handlers=handlers) as assoc:
                pass
    assert [type(p) for p in seen] == [AReleaseRP]
    assert assoc.is_released and not assoc.is_aborted
    assert "EVT_RELEASED" in client_rec.names and "EVT_ABORTED" not in client_rec.names
    assert fsm[-3:] == ["AR-8", "AR-9", "AR-3"]


async def test_release_collision_acceptor_side() -> None:
    """The server releases from a handler while the (raw) requestor releases too:
    Sta7 Evt12 (AR-8) -> Sta10, Evt13 (AR-10) -> Sta12, A-RELEASE-RP (AR-4) -> Sta13."""
    server_rec = Recorder()
    fsm: list[str | None] = []

    first = True

    async def on_echo(event: evt.Event) -> int:
        nonlocal first
        if first:  # only the first association; later ones are served normally
            first = False
            await event.assoc.release()
        return 0x0000

    handlers = [
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_FSM_TRANSITION, lambda e: fsm.append(e.action)),
        *server_rec.handlers,
    ]
    async with running_server(handlers=handlers) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
            for pdu in c_echo_rq_pdus():
                await peer.send(pdu)
            got = await peer.read_pdu()
            assert isinstance(got, AReleaseRQ), got
            await peer.send(AReleaseRQ())  # our release crosses the server's
            await peer.send(AReleaseRP())  # requestor side of a collision: AR-9
            rest = [await peer.read_pdu()]
            while isinstance(rest[-1], PDataTF):
                rest.append(await peer.read_pdu())
            # the acceptor's A-RELEASE-RP completes the release (AR-3): we close
        assert isinstance(rest[-1], AReleaseRP), rest
        await server_rec.wait_for("EVT_CONN_CLOSE")
        assert "EVT_RELEASED" in server_rec.names
        assert "EVT_ABORTED" not in server_rec.names
        assert [a for a in fsm if a in ("AR-8", "AR-10", "AR-4")] == ["AR-8", "AR-10", "AR-4"]
        assert await echo_once(server.port) == 0


async def test_client_abort_server_sees_aborted() -> None:
    server_rec, client_rec = Recorder(), Recorder()
    async with running_server(handlers=server_rec.handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_rec.handlers
            ) as assoc:
                await assoc.abort()
                assert assoc.is_aborted
                with pytest.raises(DicomNetworkError):
                    await assoc.send_c_echo()
            await server_rec.wait_for("EVT_ABORTED")
            await server_rec.wait_for("EVT_CONN_CLOSE")
        assert "EVT_RELEASED" not in server_rec.names
        assert client_rec.names[-2:] == ["EVT_ABORTED", "EVT_CONN_CLOSE"]
        assert await echo_once(server.port) == 0


async def test_server_abort_from_handler() -> None:
    server_rec, client_rec = Recorder(), Recorder()

    first = True

    async def on_echo(event: evt.Event) -> int:
        nonlocal first
        if first:
            first = False
            await event.assoc.abort()
        return 0x0000

    handlers = [(evt.EVT_C_ECHO, on_echo), *server_rec.handlers]
    async with running_server(handlers=handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_rec.handlers
            ) as assoc:
                with pytest.raises(AssociationAborted) as info:
                    await assoc.send_c_echo()
                assert info.value.source == 0  # the peer service-user
                assert assoc.is_aborted
            await server_rec.wait_for("EVT_CONN_CLOSE")
        assert client_rec.count("EVT_ABORTED") == 1
        assert server_rec.count("EVT_ABORTED") == 1
        assert await echo_once(server.port) == 0


async def test_exception_in_block_aborts_and_propagates_unchanged() -> None:
    server_rec = Recorder()
    boom = RuntimeError("boom")
    async with running_server(handlers=server_rec.handlers) as server:
        with anyio.fail_after(GUARD):
            with pytest.raises(RuntimeError) as info:
                async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                    await assoc.send_c_echo()
                    raise boom
            assert info.value is boom
            assert assoc.is_aborted and not assoc.is_released
            await server_rec.wait_for("EVT_ABORTED")
        assert "EVT_RELEASED" not in server_rec.names


async def test_cancellation_in_block_aborts_and_propagates() -> None:
    server_rec = Recorder()
    after_sleep = False
    async with running_server(handlers=server_rec.handlers) as server:
        with anyio.fail_after(GUARD):
            with anyio.CancelScope() as scope:
                async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                    await assoc.send_c_echo()
                    scope.cancel()
                    await anyio.sleep_forever()
                    after_sleep = True
            assert scope.cancelled_caught  # the cancellation reached its scope
            assert not after_sleep
            assert assoc.is_aborted
            await server_rec.wait_for("EVT_ABORTED")


async def test_cancelled_task_in_block_aborts() -> None:
    """Cancelling a whole task (its task group) that sits inside the block."""
    server_rec = Recorder()
    inside = anyio.Event()
    holder: list[Association] = []

    async def client(port: int) -> None:
        async with make_scu_ae().associate("127.0.0.1", port) as assoc:
            holder.append(assoc)
            inside.set()
            await anyio.sleep_forever()

    async with running_server(handlers=server_rec.handlers) as server:
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client, server.port)
                await inside.wait()
                tg.cancel_scope.cancel()
            assert holder[0].is_aborted
            await server_rec.wait_for("EVT_ABORTED")


async def test_await_associate_is_a_type_error() -> None:
    rec = Recorder()
    async with running_server(handlers=rec.handlers) as server:
        with pytest.raises(TypeError):
            await make_scu_ae().associate("127.0.0.1", server.port)  # type: ignore[misc]
        assert rec.names == []  # no connection was made
        assert await echo_once(server.port) == 0


async def test_send_after_release_raises() -> None:
    async with running_server() as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                pass
        with pytest.raises(DicomNetworkError):
            await assoc.send_c_echo()


async def test_peer_abort_fails_pending_and_later_operations() -> None:
    async def acceptor(peer: RawPeer) -> None:
        rq = await peer.read_pdu()
        await peer.send(verification_ac(rq))
        assert isinstance(await peer.read_pdu(), PDataTF)  # the C-ECHO-RQ
        await peer.send(AAbort(source=2, reason=0))
        await peer.read_until_eof()

    client_rec = Recorder()
    async with fake_scp(acceptor) as port:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", port, evt_handlers=client_rec.handlers
            ) as assoc:
                with pytest.raises(AssociationAborted) as info:
                    await assoc.send_c_echo()
                assert info.value.source == 2
                await client_rec.wait_for("EVT_ABORTED")
                with pytest.raises(AssociationAborted):
                    await assoc.send_c_echo()
    assert assoc.is_aborted


async def test_release_while_operation_in_flight() -> None:
    """A release requested while our C-ECHO is outstanding: the acceptor answers
    the request first (AR-7 in Sta8), then the release; both succeed."""
    server_rec = Recorder()
    started = anyio.Event()
    proceed = anyio.Event()

    async def on_echo(event: evt.Event) -> int:
        started.set()
        with anyio.fail_after(GUARD):
            await proceed.wait()
        return 0x0000

    def on_release_rq(event: evt.Event) -> None:
        if isinstance(event.pdu, AReleaseRQ):
            proceed.set()  # the A-RELEASE-RQ has arrived while the handler waits

    handlers = [(evt.EVT_C_ECHO, on_echo), (evt.EVT_PDU_RECV, on_release_rq), *server_rec.handlers]
    statuses: list[int] = []
    async with running_server(handlers=handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:

                async def echo() -> None:
                    statuses.append(int((await assoc.send_c_echo()).Status))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(echo)
                    await started.wait()
                    await assoc.release()
                assert assoc.is_released and not assoc.is_aborted
            await server_rec.wait_for("EVT_CONN_CLOSE")
    assert statuses == [0]
    assert "EVT_RELEASED" in server_rec.names and "EVT_ABORTED" not in server_rec.names


async def test_server_shutdown_aborts_open_associations() -> None:
    client_rec = Recorder()
    scp = make_scp_ae()
    async with scp.start_server(("127.0.0.1", 0)) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_rec.handlers
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
                assert len(server.active_associations) == 1
                await server.shutdown(grace=0.1)
                await client_rec.wait_for("EVT_ABORTED")
                with pytest.raises(DicomNetworkError):
                    await assoc.send_c_echo()
            assert server.active_associations == []
    # the listener is closed: a new connection is refused
    with anyio.fail_after(GUARD), pytest.raises(OSError):
        async with make_scu_ae().associate("127.0.0.1", server.port):
            pass


@pytest.mark.parametrize("end", ["peer aborts", "peer closes"])
async def test_end_events_come_after_the_handlers_have_returned(end: str) -> None:
    """The peer aborts (or drops the connection) while a handler runs: the
    handler is cancelled, and EVT_ABORTED and EVT_CONN_CLOSE come only once it
    has ended (its clean-up done), as in pynetdicom, whose handlers run on
    the association's own thread. A handler of the end events can then
    release what the service handlers used."""
    order: list[str] = []
    running = anyio.Event()

    async def on_echo(event: evt.Event) -> int:
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()  # clean-up that takes a step
                order.append("handler ended")
        return 0  # pragma: no cover - cancelled first

    def note(event: evt.Event) -> None:
        order.append(event.event.name)

    closed = anyio.Event()
    handlers = [
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_ABORTED, note),
        (evt.EVT_CONN_CLOSE, note),
        (evt.EVT_CONN_CLOSE, lambda event: closed.set()),
    ]
    async with running_server(handlers=handlers) as server:
        with anyio.fail_after(GUARD):
            async with raw_connection(server.port) as peer:
                await raw_associate(peer)
                for pdu in c_echo_rq_pdus():
                    await peer.send(pdu)
                await running.wait()
                if end == "peer aborts":
                    await peer.send(AAbort(source=0, reason=0))
            await closed.wait()
    # (a connection lost is an A-P-ABORT: EVT_ABORTED too)
    assert order == ["handler ended", "EVT_ABORTED", "EVT_CONN_CLOSE"]


@pytest.mark.parametrize("where", [evt.EVT_C_ECHO, evt.EVT_CONN_CLOSE])
async def test_a_handler_can_shut_its_server_down(where: evt.EventType) -> None:
    """A handler (of a request, or of an association's end) calls
    ``server.shutdown()``: it returns once every other association has
    ended, without waiting for the handler's own (which ends after the
    handler), and the server stops; the other association is aborted."""
    servers: list[Server] = []
    returned = anyio.Event()

    async def stop(event: evt.Event) -> int:
        if not returned.is_set():
            await servers[0].shutdown(grace=0)
            returned.set()
        return 0x0000

    other_aborted = anyio.Event()
    async with running_server(handlers=[(where, stop)]) as server:
        servers.append(server)
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1",
                server.port,
                evt_handlers=[(evt.EVT_ABORTED, lambda e: other_aborted.set())],
            ) as other:
                async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                    if where is evt.EVT_C_ECHO:
                        with pytest.raises(DicomNetworkError):
                            await assoc.send_c_echo()
                await returned.wait()
                await other_aborted.wait()
                assert other.is_aborted
            await server.serve_forever()  # (returns at once: it has stopped)
    assert server.active_associations == []
