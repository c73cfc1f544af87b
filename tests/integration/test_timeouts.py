"""ACSE, DIMSE, network and connection timeouts (all configured small)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest

from aiodicom import build_role, evt, sop_class
from aiodicom.errors import DicomNetworkError
from aiodicom.pdu import AAbort, AAssociateRQ

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


async def test_acse_timeout_peer_never_answers_associate_rq() -> None:
    got: list[object] = []

    async def silent(peer: RawPeer) -> None:
        got.append(await peer.read_pdu())  # the A-ASSOCIATE-RQ, never answered
        got.extend(await peer.read_until_eof())

    scu = make_scu_ae(acse_timeout=0.3)
    client_rec = Recorder()
    async with fake_scp(silent) as port:
        with anyio.fail_after(GUARD), pytest.raises(TimeoutError):
            async with scu.associate("127.0.0.1", port, evt_handlers=client_rec.handlers):
                pytest.fail("should have timed out")
    assert isinstance(got[0], AAssociateRQ)
    # the requestor gave up with an A-ABORT, then closed the connection
    assert got[1:] == [AAbort(source=0, reason=0)]
    assert "EVT_ESTABLISHED" not in client_rec.names
    assert client_rec.names[-1] == "EVT_CONN_CLOSE"


async def test_dimse_timeout_aborts_association() -> None:
    server_rec, client_rec = Recorder(), Recorder()
    calls = 0

    async def slow_echo(event: evt.Event) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(GUARD)  # the misbehaving peer: never answers in time
        return 0

    scu = make_scu_ae(dimse_timeout=0.3)
    async with running_server(handlers=[(evt.EVT_C_ECHO, slow_echo), *server_rec.handlers]) as srv:
        with anyio.fail_after(GUARD):
            async with scu.associate(
                "127.0.0.1", srv.port, evt_handlers=client_rec.handlers
            ) as assoc:
                with pytest.raises(TimeoutError):
                    await assoc.send_c_echo()
                assert assoc.is_aborted
                assert not assoc.is_established
                with pytest.raises((DicomNetworkError, TimeoutError)):
                    await assoc.send_c_echo()
            await server_rec.wait_for("EVT_ABORTED")
            await server_rec.wait_for("EVT_CONN_CLOSE")
        assert client_rec.count("EVT_ABORTED") == 1
        assert "EVT_RELEASED" not in client_rec.names + server_rec.names
        assert await echo_once(srv.port) == 0  # the server is fine


@pytest.mark.parametrize("idle", [0.0, 0.5])
async def test_dimse_timeout_after_a_request_answered_in_time(idle: float) -> None:
    """The timer of a request that follows another: at once (the watchdog
    is still armed by the first) and after more than dimse_timeout idle (it
    has stood down and the new request arms it)."""
    calls = 0

    async def second_is_slow(event: evt.Event) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            await anyio.sleep(GUARD)
        return 0

    scu = make_scu_ae(dimse_timeout=0.3)
    async with running_server(handlers=[(evt.EVT_C_ECHO, second_is_slow)]) as srv:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", srv.port) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
                await anyio.sleep(idle)
                started = anyio.current_time()
                with pytest.raises(TimeoutError):
                    await assoc.send_c_echo()
                assert anyio.current_time() - started >= 0.3
                assert assoc.is_aborted


async def test_requests_do_not_wake_the_timers() -> None:
    """A request arms the DIMSE timeout without waking the association's
    timer task (a loop iteration each): between requests the timers stand
    ready for the next one, and the task runs about once per dimse_timeout
    while requests come, not once per request."""
    scu = make_scu_ae(dimse_timeout=30, network_timeout=60)
    async with running_server() as srv:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", srv.port) as assoc:
                checks = 0
                check_timers = assoc._check_timers

                async def counted(now: float) -> None:
                    nonlocal checks
                    checks += 1
                    await check_timers(now)

                assoc._check_timers = counted  # type: ignore[method-assign]
                for _ in range(50):
                    assert (await assoc.send_c_echo()).Status == 0
                    # What the timer task sleeps until is no later than the
                    # deadline of a request sent now: that one needs no kick.
                    now = anyio.current_time()
                    assert assoc._deadlines(now) <= now + 30
                    assert assoc._watch_target <= now + 30
    assert checks <= 2, checks


async def test_network_timeout_idle_association_is_aborted() -> None:
    server_rec, client_rec = Recorder(), Recorder()
    scu = make_scu_ae(network_timeout=0.3)
    async with running_server(handlers=server_rec.handlers) as srv:
        with anyio.fail_after(GUARD):
            async with scu.associate(
                "127.0.0.1", srv.port, evt_handlers=client_rec.handlers
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
                # stay idle: nothing is sent either way
                await client_rec.wait_for("EVT_ABORTED")
                assert assoc.is_aborted
                with pytest.raises((DicomNetworkError, TimeoutError)):
                    await assoc.send_c_echo()
            await server_rec.wait_for("EVT_ABORTED")


async def test_network_timeout_on_server_side() -> None:
    server_rec, client_rec = Recorder(), Recorder()
    scp = make_scp_ae(network_timeout=0.3)
    async with running_server(scp, server_rec.handlers) as srv:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", srv.port, evt_handlers=client_rec.handlers
            ) as assoc:
                await client_rec.wait_for("EVT_ABORTED")
                with pytest.raises(DicomNetworkError):
                    await assoc.send_c_echo()
            await server_rec.wait_for("EVT_ABORTED")


async def test_network_timeout_not_while_responses_stream_out() -> None:
    """A C-FIND SCP streaming matches for longer than its network_timeout
    receives nothing all that time, but its writes go out: that is network
    activity, not an idle association (pynetdicom's SCP does not abort there
    either). The matches come 50 ms apart, ten times within the timeout;
    the stream lasts three times the timeout. (A peer that stops reading is
    still closed: test_peer_that_stops_reading.)"""
    from pydicom.dataset import Dataset

    from aiodicom import sop_class

    find = sop_class.StudyRootQueryRetrieveInformationModelFind
    count = 30

    async def on_find(event: evt.Event):  # type: ignore[no-untyped-def]
        for i in range(count):
            await anyio.sleep(0.05)  # a slow source of matches (a database, say)
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{i}"
            yield 0xFF00, match
        yield 0x0000, None

    server_rec = Recorder()
    scp = make_scp_ae(network_timeout=0.5)
    scp.add_supported_context(find)
    scu = make_scu_ae()
    scu.add_requested_context(find)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    with anyio.fail_after(GUARD):
        async with running_server(scp, [*server_rec.handlers, (evt.EVT_C_FIND, on_find)]) as srv:
            async with scu.associate("127.0.0.1", srv.port) as assoc:
                start = anyio.current_time()
                statuses = [int(s.Status) async for s, _ in assoc.send_c_find(query, find)]
                assert anyio.current_time() - start > 1.0  # twice the SCP's timeout
                assert statuses == [0xFF00] * count + [0x0000]
                assert (await assoc.send_c_echo()).Status == 0
            await server_rec.wait_for("EVT_RELEASED")
    assert "EVT_ABORTED" not in server_rec.names


@contextmanager
def _full_backlog() -> Iterator[int]:
    """A loopback listener with listen(0) whose accept queue is full; yields its port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            fillers.append(sock)
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


async def test_connection_timeout() -> None:
    client_rec = Recorder()
    scu = make_scu_ae(connection_timeout=0.3, acse_timeout=0.3)
    with _full_backlog() as port, anyio.fail_after(GUARD), pytest.raises(TimeoutError):
        async with scu.associate("127.0.0.1", port, evt_handlers=client_rec.handlers):
            pytest.fail("should have timed out")
    if "EVT_CONN_OPEN" in client_rec.names:  # pragma: no cover - kernel dependent
        pytest.skip("this kernel completed a connect to a listener with a full backlog")
    assert client_rec.names == []


async def test_connection_refused_is_oserror() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with anyio.fail_after(GUARD), pytest.raises(OSError):
        async with make_scu_ae().associate("127.0.0.1", port):
            pytest.fail("should not connect")


async def test_silent_peer_closed_after_acse_timeout() -> None:
    server_rec = Recorder()
    scp = make_scp_ae(acse_timeout=0.3)
    async with running_server(scp, server_rec.handlers) as srv:
        async with raw_connection(srv.port) as peer:
            # nothing sent: the ARTIM timer closes the connection, sending nothing
            assert await peer.read_until_eof() == []
        await server_rec.wait_for("EVT_CONN_CLOSE")
        assert "EVT_REQUESTED" not in server_rec.names
        assert await echo_once(srv.port) == 0


def _abort_sent_flag() -> tuple[anyio.Event, evt.EventHandlerType]:
    """An event set when the association has sent an A-ABORT, and its handler."""
    flag = anyio.Event()

    def on_sent(event: evt.Event) -> None:
        if isinstance(event.pdu, AAbort):
            flag.set()

    return flag, (evt.EVT_PDU_SENT, on_sent)


async def test_network_timeout_while_handler_runs_server_side(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server's network timeout fires while an EVT_C_ECHO handler runs; the
    handler's late answer cannot be sent. That must end only this association,
    quietly: no internal error escapes the association's task group."""
    aborted, on_sent = _abort_sent_flag()
    calls = 0

    async def on_echo(event: evt.Event) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            with anyio.fail_after(GUARD):
                await aborted.wait()
        return 0

    rec = Recorder()
    scp = make_scp_ae(network_timeout=0.3, acse_timeout=0.5)
    handlers = [(evt.EVT_C_ECHO, on_echo), on_sent, *rec.handlers]
    async with running_server(scp, handlers) as srv:
        async with raw_connection(srv.port) as peer:
            await raw_associate(peer)
            for pdu in c_echo_rq_pdus():
                await peer.send(pdu)
            # idle beyond network_timeout: A-ABORT, then closed by ARTIM
            assert await peer.read_until_eof() == [AAbort(source=0, reason=0)]
        await rec.wait_for("EVT_CONN_CLOSE")
        assert await echo_once(srv.port) == 0
    crashes = [r for r in caplog.records if r.getMessage().startswith("Unexpected error")]
    assert crashes == []


async def test_network_timeout_while_handler_runs_client_side() -> None:
    """The same on the requestor: the SCP sends a C-ECHO-RQ to the SCU, the
    SCU's network timeout fires while its handler runs. Leaving the block must
    not raise an ExceptionGroup out of the library's internal task."""
    aborted, on_sent = _abort_sent_flag()
    answering = anyio.Event()

    async def on_echo(event: evt.Event) -> int:
        with anyio.fail_after(GUARD):
            await aborted.wait()
        answering.set()  # no checkpoint from here to the attempt to send the answer
        return 0

    async def scp(peer: RawPeer) -> None:
        rq = await peer.read_pdu()
        await peer.send(verification_ac(rq))
        for pdu in c_echo_rq_pdus(msg_id=99):
            await peer.send(pdu)
        await peer.read_until_eof()  # the A-ABORT, then the client's ARTIM close

    scu = make_scu_ae(network_timeout=0.3, acse_timeout=0.5)
    # the SCP role for Verification, which the fake SCP grants: it sends the C-ECHO-RQ
    roles = [build_role(sop_class.Verification, scu_role=True, scp_role=True)]
    async with fake_scp(scp) as port:
        with anyio.fail_after(GUARD):
            try:
                async with scu.associate(
                    "127.0.0.1",
                    port,
                    evt_handlers=[(evt.EVT_C_ECHO, on_echo), on_sent],
                    ext_neg=roles,
                ) as assoc:
                    await answering.wait()
            except (DicomNetworkError, TimeoutError):
                pass  # a plain error about the aborted association is fine
    assert assoc.is_aborted


async def test_acse_timeout_on_release() -> None:
    """The peer never answers our A-RELEASE-RQ: after acse_timeout the
    association is aborted and leaving the block raises TimeoutError."""
    got: list[object] = []

    async def deaf_to_release(peer: RawPeer) -> None:
        rq = await peer.read_pdu()
        await peer.send(verification_ac(rq))
        got.extend(await peer.read_until_eof())

    scu = make_scu_ae(acse_timeout=0.3)
    client_rec = Recorder()
    async with fake_scp(deaf_to_release) as port:
        with anyio.fail_after(GUARD), pytest.raises(TimeoutError):
            async with scu.associate("127.0.0.1", port, evt_handlers=client_rec.handlers) as assoc:
                pass
    assert [type(p).__name__ for p in got] == ["AReleaseRQ", "AAbort"]
    assert assoc.is_aborted and not assoc.is_released
    assert client_rec.names[-2:] == ["EVT_ABORTED", "EVT_CONN_CLOSE"]
