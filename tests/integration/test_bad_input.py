"""Hostile or broken peers: what the server (and the client) answer, and that
they keep working afterwards."""

from __future__ import annotations

import resource
import struct
import sys
from typing import Any

import anyio
import pytest

from aiodicom import Association, evt
from aiodicom.dimse import NO_DATASET, CommandField, decode_command, encode_command
from aiodicom.errors import AssociationAborted, AssociationRejected, DicomNetworkError
from aiodicom.pdu import (
    PDV,
    AAbort,
    AAssociateRJ,
    AReleaseRQ,
    PDataTF,
    decode_pdu,
    encode,
    encode_p_data,
)

from .conftest import (
    GUARD,
    RawPeer,
    Recorder,
    blocking_socket,
    c_echo_rq_command,
    c_echo_rq_pdus,
    c_echo_rsp_pdus,
    echo_once,
    fake_scp,
    make_scp_ae,
    make_scu_ae,
    raw_associate,
    raw_connection,
    raw_release,
    rq_with_contexts,
    running_server,
    verification_ac,
    verification_rq,
)

pytestmark = pytest.mark.anyio


def _scp() -> object:
    # short ARTIM so that connections we leave open are closed quickly
    return make_scp_ae(acse_timeout=0.3)


async def _expect_abort_then_close(peer: RawPeer, source: int, reason: int | None = None) -> AAbort:
    """The server's answer is an A-ABORT, then it closes the connection (ARTIM)."""
    pdus = await peer.read_until_eof()
    aborts = [p for p in pdus if isinstance(p, AAbort)]
    assert aborts, f"no A-ABORT in {pdus!r}"
    assert isinstance(pdus[-1], AAbort), pdus
    abort = aborts[0]
    assert abort.source == source, abort
    if reason is not None:
        assert abort.reason == reason, abort
    return abort


# ---------------------------------------------------------------------------
# Before the association (Sta2)


async def test_garbage_before_association() -> None:
    rec = Recorder()
    async with running_server(_scp(), rec.handlers) as server:
        async with raw_connection(server.port) as peer:
            await peer.send(b"GET / HTTP/1.1\r\nHost: dicom\r\n\r\n")
            # Sta2 Evt19 -> AA-1: A-ABORT (service-user source, reason 0)
            await _expect_abort_then_close(peer, source=0, reason=0)
        await rec.wait_for("EVT_CONN_CLOSE")
        assert "EVT_REQUESTED" not in rec.names
        assert await echo_once(server.port) == 0


async def test_p_data_before_association() -> None:
    async with running_server(_scp()) as server:
        async with raw_connection(server.port) as peer:
            for pdu in c_echo_rq_pdus():
                await peer.send(pdu)
            await _expect_abort_then_close(peer, source=0, reason=0)  # Sta2 Evt10: AA-1
        assert await echo_once(server.port) == 0


async def test_release_rq_before_association() -> None:
    async with running_server(_scp()) as server:
        async with raw_connection(server.port) as peer:
            await peer.send(AReleaseRQ())
            await _expect_abort_then_close(peer, source=0, reason=0)  # Sta2 Evt12: AA-1
        assert await echo_once(server.port) == 0


async def test_protocol_version_2_is_rejected() -> None:
    rec = Recorder()
    async with running_server(_scp(), rec.handlers) as server:
        async with raw_connection(server.port) as peer:
            await peer.send(verification_rq(protocol_version=2))
            pdus = await peer.read_until_eof()
        assert pdus == [AAssociateRJ(result=1, source=2, reason=2)]
        await rec.wait_for("EVT_CONN_CLOSE")
        assert "EVT_ESTABLISHED" not in rec.names
        assert await echo_once(server.port) == 0


async def test_protocol_version_3_is_accepted() -> None:
    """Bit 0 set means version 1 is supported, whatever the other bits (PS3.8 9.3.2)."""
    async with running_server(_scp()) as server, raw_connection(server.port) as peer:
        await raw_associate(peer, verification_rq(protocol_version=3))
        await raw_release(peer)


async def test_the_ac_returns_the_rq_titles_as_received() -> None:
    """The A-ASSOCIATE-AC's called and calling AE title fields are sent
    "identical to the value received" in the RQ (PS3.8 Table 9-17): leading
    spaces too, which the titles themselves do not keep."""
    raw = bytearray(encode(verification_rq()))
    raw[10:42] = b"  TEST_SCP      " + b"   RAW_SCU      "
    async with running_server(_scp()) as server, raw_connection(server.port) as peer:
        await peer.send(bytes(raw))
        ac = await peer.read_raw()
        assert ac is not None and ac[0] == 0x02, ac
        assert ac[10:42] == raw[10:42]
        decoded = decode_pdu(ac)
        assert (decoded.called_ae_title, decoded.calling_ae_title) == ("TEST_SCP", "RAW_SCU")  # type: ignore[union-attr]
        await raw_release(peer)


async def test_unknown_items_in_the_associate_rq_are_skipped() -> None:
    """An A-ASSOCIATE-RQ carrying items of types the standard does not define
    (a top-level item, a presentation context sub-item) is served as if they
    were not there (PS3.8 9.3.1), over a real socket."""
    raw = bytearray(encode(verification_rq()))
    at = raw.index(b"\x20\x00", 74)  # the presentation context item
    length = int.from_bytes(raw[at + 2 : at + 4], "big")
    odd_sub = b"\x31\x00\x00\x03abc"
    raw[at + 4 + length : at + 4 + length] = odd_sub  # at its end
    raw[at + 2 : at + 4] = (length + len(odd_sub)).to_bytes(2, "big")
    raw[at:at] = b"\x60\x00\x00\x02zz"  # before it
    raw[2:6] = (len(raw) - 6).to_bytes(4, "big")
    async with running_server(_scp()) as server, raw_connection(server.port) as peer:
        await peer.send(bytes(raw))
        ac = await peer.read_pdu()
        assert type(ac).__name__ == "AAssociateAC", ac
        assert ac.presentation_contexts[0].result == 0  # type: ignore[union-attr]
        await peer.send(encode_p_data(1, 0x03, c_echo_rq_command(msg_id=3)))
        rsp = await peer.read_pdu()
        assert isinstance(rsp, PDataTF)
        assert struct.unpack("<H", _element(rsp.pdvs[0].data, 0x0900))[0] == 0
        await raw_release(peer)


# ---------------------------------------------------------------------------
# After the association (Sta6)


async def test_unknown_pdu_type_after_association() -> None:
    rec = Recorder()
    async with running_server(_scp(), rec.handlers) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
            await peer.send(b"\x99\x00\x00\x00\x00\x04\x00\x00\x00\x00")
            # Sta6 Evt19 -> AA-8: A-ABORT, service-provider, unrecognized PDU
            await _expect_abort_then_close(peer, source=2, reason=1)
        await rec.wait_for("EVT_ABORTED")
        assert await echo_once(server.port) == 0


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


@pytest.mark.parametrize("pdu_type", [0x04, 0x01])
async def test_huge_pdu_length_after_association(pdu_type: int) -> None:
    rec = Recorder()
    before = _maxrss_bytes()
    async with running_server(_scp(), rec.handlers) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
            await peer.send(bytes([pdu_type, 0]) + struct.pack(">L", 0xFFFFFFFF) + b"\x00" * 64)
            # invalid PDU parameter value, refused from the header alone
            await _expect_abort_then_close(peer, source=2, reason=6)
        await rec.wait_for("EVT_ABORTED")
        assert await echo_once(server.port) == 0
    assert _maxrss_bytes() - before < 100 * 1024 * 1024


async def test_truncated_pdu_then_close() -> None:
    rec = Recorder()
    async with running_server(_scp(), rec.handlers) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
            whole = c_echo_rq_pdus()[0]
            await peer.send(whole[: len(whole) // 2])
        # the connection closed mid-PDU: a provider abort on the server's side
        await rec.wait_for("EVT_ABORTED")
        await rec.wait_for("EVT_CONN_CLOSE")
        assert "EVT_RELEASED" not in rec.names
        assert await echo_once(server.port) == 0


async def test_close_without_release() -> None:
    rec = Recorder()
    async with running_server(_scp(), rec.handlers) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
        await rec.wait_for("EVT_ABORTED")
        await rec.wait_for("EVT_CONN_CLOSE")
        assert await echo_once(server.port) == 0


async def test_p_data_on_unaccepted_context() -> None:
    rec = Recorder()
    async with running_server(_scp(), rec.handlers) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
            for pdu in c_echo_rq_pdus(context_id=3):
                await peer.send(pdu)
            await _expect_abort_then_close(peer, source=2, reason=6)
        await rec.wait_for("EVT_ABORTED")
        assert await echo_once(server.port) == 0


async def test_data_set_fragment_where_command_expected() -> None:
    rec = Recorder()
    async with running_server(_scp(), rec.handlers) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
            await peer.send(encode_p_data(1, 0x02, b"\x08\x00\x18\x00\x00\x00\x00\x00"))
            await _expect_abort_then_close(peer, source=2)
        await rec.wait_for("EVT_ABORTED")
        assert await echo_once(server.port) == 0


async def test_malformed_command_set() -> None:
    async with running_server(_scp()) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
            # a "command" that is not group 0000 at all
            await peer.send(encode_p_data(1, 0x03, b"\x08\x00\x18\x00\x04\x00\x00\x00abcd"))
            await _expect_abort_then_close(peer, source=2)
        assert await echo_once(server.port) == 0


async def test_pipelined_requests_are_all_answered() -> None:
    """Many C-ECHO-RQ sent in one write (a peer ignoring the window) are still answered."""
    async with running_server(_scp()) as server, raw_connection(server.port) as peer:
        await raw_associate(peer)
        n = 50
        await peer.send(b"".join(c_echo_rq_pdus(msg_id=i)[0] for i in range(1, n + 1)))
        ids = set()
        for _ in range(n):
            pdu = await peer.read_pdu()
            assert isinstance(pdu, PDataTF)
            ids.add(struct.unpack("<H", _element(pdu.pdvs[0].data, 0x0120))[0])
        assert ids == set(range(1, n + 1))
        await raw_release(peer)


def _element(command: bytes | memoryview, elem: int) -> bytes:
    data = bytes(command)
    pos = 0
    while pos < len(data):
        group, element, length = struct.unpack_from("<HHL", data, pos)
        pos += 8
        if group == 0 and element == elem:
            return data[pos : pos + length]
        pos += length
    raise KeyError(hex(elem))


async def test_peer_that_stops_reading() -> None:
    """The peer pipelines thousands of C-ECHO-RQ and never reads the responses:
    the server's writes stall, it gives up after network_timeout and closes,
    and it goes on serving other peers meanwhile and afterwards."""
    rec = Recorder()
    scp = make_scp_ae(acse_timeout=0.5, network_timeout=0.5)
    async with running_server(scp, rec.handlers) as server:
        sock = blocking_socket(server.port, rcvbuf=4096, mss=536)
        try:
            await anyio.to_thread.run_sync(sock.sendall, encode(verification_rq()))
            header = await anyio.to_thread.run_sync(sock.recv, 6)
            assert header[0] == 0x02  # A-ASSOCIATE-AC (its body stays unread)
            await rec.wait_for("EVT_ESTABLISHED")
            burst = b"".join(c_echo_rq_pdus(msg_id=(i % 65535) + 1)[0] for i in range(3000))

            def send_burst() -> None:
                try:
                    sock.sendall(burst)
                except OSError:
                    pass  # the server closed on us: that is the point

            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, send_burst)
                # served meanwhile: the stuck peer does not block the server
                assert await echo_once(server.port) == 0
                await rec.wait_for("EVT_ABORTED")
                await rec.wait_for("EVT_CONN_CLOSE", 2)
            # the server closed: reading drains to EOF (or a reset), never hangs
            sock.settimeout(GUARD)

            def drain() -> None:
                try:
                    while sock.recv(1 << 20):
                        pass
                except (ConnectionResetError, BrokenPipeError):
                    pass

            await anyio.to_thread.run_sync(drain)
        finally:
            sock.close()
        assert await echo_once(server.port) == 0


async def test_idle_timeout_abort_that_cannot_be_written_still_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The network timeout of an idle association sends A-ABORT; when that
    write cannot go out (a peer that stopped reading, all the answers it was
    sent still in the buffers), the timer's task must not wait for it forever:
    after a grace the connection is closed, and the server serves on."""
    real_write = Association._write

    async def write(self: Association, data: Any, pdu: Any = None) -> None:
        if self.is_acceptor and isinstance(pdu, AAbort):
            await anyio.sleep_forever()  # stands in for a send that never gets room
        await real_write(self, data, pdu)

    monkeypatch.setattr(Association, "_write", write)
    rec = Recorder()
    scp = make_scp_ae(acse_timeout=0.5, network_timeout=0.3)
    async with running_server(scp, rec.handlers) as server:
        sock = blocking_socket(server.port)
        try:
            await anyio.to_thread.run_sync(sock.sendall, encode(verification_rq()))
            await rec.wait_for("EVT_ESTABLISHED")
            await rec.wait_for("EVT_ABORTED")  # the peer says nothing: idle, then closed
            await rec.wait_for("EVT_CONN_CLOSE")
        finally:
            sock.close()
        assert await echo_once(server.port) == 0


# ---------------------------------------------------------------------------
# The client facing a broken SCP


async def test_client_scp_answers_garbage() -> None:
    async def garbage(peer: RawPeer) -> None:
        await peer.read_pdu()
        await peer.send(b"\xde\xad\xbe\xef" * 8)
        got.append(await peer.read_pdu())  # the A-ABORT; then we close (AA-3)

    got: list[object] = []
    scu = make_scu_ae(acse_timeout=1.0)
    client_rec = Recorder()
    async with fake_scp(garbage) as port:
        with anyio.fail_after(GUARD), pytest.raises(DicomNetworkError) as info:
            async with scu.associate("127.0.0.1", port, evt_handlers=client_rec.handlers):
                pytest.fail("should not be established")
    assert isinstance(info.value, AssociationAborted)
    assert "EVT_ESTABLISHED" not in client_rec.names
    assert isinstance(got[0], AAbort) and got[0].source == 2  # AA-8: provider abort


async def test_client_scp_answers_garbage_and_keeps_socket_open() -> None:
    """PS3.8 AA-8 issues the A-P-ABORT indication at once: the user gets the
    error at once, without waiting out the ARTIM timer for a peer that sent
    garbage and keeps its socket open (an HTTP server with keep-alive, say)."""
    got: list[object] = []

    async def garbage(peer: RawPeer) -> None:
        await peer.read_pdu()
        await peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        got.append(await peer.read_pdu())
        # keep the connection open until the client is done (or the guard fires)
        with anyio.move_on_after(GUARD):
            await finished.wait()

    finished = anyio.Event()
    scu = make_scu_ae(acse_timeout=60.0)  # ARTIM far beyond the hang guard
    async with fake_scp(garbage) as port:
        try:
            with anyio.fail_after(GUARD / 2), pytest.raises(DicomNetworkError):
                async with scu.associate("127.0.0.1", port):
                    pytest.fail("should not be established")
        finally:
            finished.set()
    assert isinstance(got[0], AAbort) and got[0].source == 2


async def test_client_scp_rejects() -> None:
    async def rejecting(peer: RawPeer) -> None:
        await peer.read_pdu()
        await peer.send(AAssociateRJ(result=2, source=3, reason=1))
        await peer.read_until_eof()

    client_rec = Recorder()
    async with fake_scp(rejecting) as port:
        with anyio.fail_after(GUARD), pytest.raises(AssociationRejected) as info:
            async with make_scu_ae().associate("127.0.0.1", port, evt_handlers=client_rec.handlers):
                pytest.fail("should have been rejected")
    assert (info.value.result, info.value.source, info.value.reason) == (2, 3, 1)
    assert "EVT_REJECTED" in client_rec.names


async def test_client_scp_accepts_then_aborts() -> None:
    async def aborting(peer: RawPeer) -> None:
        rq = await peer.read_pdu()
        await peer.send(verification_ac(rq))
        assert isinstance(await peer.read_pdu(), PDataTF)
        await peer.send(AAbort(source=0, reason=0))
        await peer.read_until_eof()

    async with fake_scp(aborting) as port:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", port) as assoc:
                with pytest.raises(AssociationAborted) as info:
                    await assoc.send_c_echo()
    assert info.value.source == 0
    assert assoc.is_aborted


async def test_client_response_with_unknown_message_id_is_ignored() -> None:
    """A C-ECHO-RSP for a message ID we never sent is dropped; the real one counts."""

    async def scp(peer: RawPeer) -> None:
        rq = await peer.read_pdu()
        await peer.send(verification_ac(rq))
        request = await peer.read_pdu()
        assert isinstance(request, PDataTF)
        msg_id = struct.unpack("<H", _element(request.pdvs[0].data, 0x0110))[0]
        for responding_to, status in ((msg_id + 100, 0xC000), (msg_id, 0x0000)):
            rsp = encode_command(
                {
                    "CommandField": CommandField.C_ECHO_RSP,
                    "MessageIDBeingRespondedTo": responding_to,
                    "AffectedSOPClassUID": "1.2.840.10008.1.1",
                    "CommandDataSetType": NO_DATASET,
                    "Status": status,
                }
            )
            await peer.send(
                PDataTF(pdvs=(PDV(context_id=1, is_command=True, is_last=True, data=rsp),))
            )
        assert isinstance(await peer.read_pdu(), AReleaseRQ)
        await peer.send(b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        await peer.read_until_eof()

    async with fake_scp(scp) as port:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", port) as assoc:
                status = await assoc.send_c_echo()
    assert status.Status == 0
    assert assoc.is_released


async def test_c_echo_rq_command_helper_roundtrip() -> None:
    """Self-check of the raw helpers against a real server."""
    seen: list[int | None] = []
    handlers = [(evt.EVT_C_ECHO, lambda e: seen.append(e.message_id))]
    async with running_server(_scp(), handlers) as s, raw_connection(s.port) as peer:
        await raw_associate(peer)
        await peer.send(encode_p_data(1, 0x03, c_echo_rq_command(msg_id=7)))
        rsp = await peer.read_pdu()
        assert isinstance(rsp, PDataTF)
        assert struct.unpack("<H", _element(rsp.pdvs[0].data, 0x0120))[0] == 7
        await raw_release(peer)
    assert seen == [7]


# ---------------------------------------------------------------------------
# More protocol cases against the server


async def test_wrong_application_context_name_is_rejected() -> None:
    rq = verification_rq()
    bad = type(rq)(
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        application_context_name="1.2.3.4.5",
        presentation_contexts=rq.presentation_contexts,
        user_information=rq.user_information,
    )
    async with running_server(_scp()) as server:
        async with raw_connection(server.port) as peer:
            await peer.send(bad)
            rj = await peer.read_pdu()  # then we close, as a requestor does (AE-4)
        # rejected-permanent, service-user, application-context-name-not-supported
        assert rj == AAssociateRJ(result=1, source=1, reason=2)
        assert await echo_once(server.port) == 0


async def test_second_associate_rq_after_association() -> None:
    async with running_server(_scp()) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
            await peer.send(verification_rq())
            # Sta6 Evt6 -> AA-8: unexpected PDU
            assert await peer.read_pdu() == AAbort(source=2, reason=2)
        assert await echo_once(server.port) == 0


async def test_peer_abort_after_association() -> None:
    rec = Recorder()
    async with running_server(_scp(), rec.handlers) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
            await peer.send(AAbort(source=0, reason=0))
            # AA-3: the server closes at once and sends nothing
            assert await peer.read_until_eof() == []
        await rec.wait_for("EVT_ABORTED")
        assert "EVT_RELEASED" not in rec.names
        assert await echo_once(server.port) == 0


async def test_requestor_that_does_not_close_after_release() -> None:
    rec = Recorder()
    async with running_server(_scp(), rec.handlers) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(peer)
            await peer.send(AReleaseRQ())
            # A-RELEASE-RP, then (Sta13) the ARTIM timer closes the connection
            pdus = await peer.read_until_eof()
        assert [type(p).__name__ for p in pdus] == ["AReleaseRP"]
        await rec.wait_for("EVT_CONN_CLOSE")
        assert "EVT_RELEASED" in rec.names
        assert await echo_once(server.port) == 0


async def test_associate_rq_one_byte_at_a_time() -> None:
    async with running_server(_scp()) as server, raw_connection(server.port) as peer:
        data = encode(verification_rq())
        for i in range(len(data)):
            await peer.send(data[i : i + 1])
        ac = await peer.read_pdu()
        assert type(ac).__name__ == "AAssociateAC"
        await raw_release(peer)


@pytest.mark.parametrize("reserved", [0xFC, 0x04, 0x80])
async def test_reserved_control_header_bits_are_ignored(reserved: int) -> None:
    """Bits 2-7 of a PDV's message control header are never checked by the
    receiver (PS3.8 E.2): a C-ECHO-RQ whose control byte sets them, alone
    in its PDU or split over two, is answered."""
    command = c_echo_rq_command(msg_id=9)
    async with running_server(_scp()) as server, raw_connection(server.port) as peer:
        await raw_associate(peer)
        await peer.send(encode_p_data(1, 0x03 | reserved, command))
        await peer.send(encode_p_data(1, 0x01 | reserved, command[:20]))
        await peer.send(encode_p_data(1, 0x03 | reserved, command[20:]))
        for _ in range(2):
            rsp = await peer.read_pdu()
            assert isinstance(rsp, PDataTF)
            assert struct.unpack("<H", _element(rsp.pdvs[0].data, 0x0120))[0] == 9
            assert struct.unpack("<H", _element(rsp.pdvs[0].data, 0x0900))[0] == 0
        await raw_release(peer)


async def test_command_split_over_pdvs_and_pdus() -> None:
    """A command in several PDVs of one P-DATA-TF, then over two P-DATA-TFs."""
    command = c_echo_rq_command(msg_id=5)
    a, b, c = command[:10], command[10:30], command[30:]
    async with running_server(_scp()) as server, raw_connection(server.port) as peer:
        await raw_associate(peer)
        await peer.send(
            PDataTF(
                pdvs=(
                    PDV(context_id=1, is_command=True, is_last=False, data=a),
                    PDV(context_id=1, is_command=True, is_last=False, data=b),
                )
            )
        )
        await peer.send(encode_p_data(1, 0x03, c))
        rsp = await peer.read_pdu()
        assert isinstance(rsp, PDataTF)
        assert struct.unpack("<H", _element(rsp.pdvs[0].data, 0x0120))[0] == 5
        assert struct.unpack("<H", _element(rsp.pdvs[0].data, 0x0900))[0] == 0
        await raw_release(peer)


async def test_server_respects_peer_maximum_pdu_length() -> None:
    """We send PDUs no larger than the peer's maximum (PS3.8 D.1)."""
    async with running_server(_scp()) as server, raw_connection(server.port) as peer:
        await raw_associate(peer, verification_rq(max_pdu=32))
        for pdu in c_echo_rq_pdus(msg_id=3):
            await peer.send(pdu)
        pieces: list[bytes] = []
        while True:
            raw = await peer.read_raw()
            assert raw is not None and raw[0] == 0x04
            assert int.from_bytes(raw[2:6], "big") <= 32
            pdu = decode_pdu(raw)
            assert isinstance(pdu, PDataTF)
            for pdv in pdu.pdvs:
                assert pdv.is_command
                pieces.append(bytes(pdv.data))
            if pdu.pdvs[-1].is_last:
                break
        assert len(pieces) > 1
        command = b"".join(pieces)
        assert struct.unpack("<H", _element(command, 0x0120))[0] == 3
        await raw_release(peer)


async def test_response_without_status_is_a_typed_error() -> None:
    """A peer's C-ECHO-RSP lacking its Status: the caller gets DIMSEError, and
    the association goes on (the next operation and the release work)."""
    from aiodicom.errors import DIMSEError
    from aiodicom.pdu import AAssociateRQ, AReleaseRP, AReleaseRQ, PDataTF

    async def scp(peer: RawPeer) -> None:
        rq = await peer.read_pdu()
        assert isinstance(rq, AAssociateRQ)
        await peer.send(verification_ac(rq))
        for status in (None, 0x0000):  # the first without its Status
            pdu = await peer.read_pdu()
            assert isinstance(pdu, PDataTF)
            for raw in c_echo_rsp_pdus(pdu, status):
                await peer.send(raw)
        assert isinstance(await peer.read_pdu(), AReleaseRQ)
        await peer.send(AReleaseRP())
        await peer.read_until_eof()

    async with fake_scp(scp) as port:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", port, ae_title="TEST_SCP") as assoc:
                with pytest.raises(DIMSEError, match="Status"):
                    await assoc.send_c_echo()
                assert (await assoc.send_c_echo()).Status == 0
    assert assoc.is_released


async def test_a_second_request_of_an_id_in_use_is_refused_0210() -> None:
    """With an Asynchronous Operations Window of 2, a C-ECHO-RQ reusing the
    Message ID of one still being served is answered 0x0210 (duplicate
    invocation) at once; the first is answered when its handler returns, and
    the ID serves again afterwards."""
    from dataclasses import replace

    from aiodicom.pdu_primitives import AsynchronousOperationsWindowNegotiation

    release = anyio.Event()
    calls: list[int] = []

    async def held_echo(event: evt.Event) -> int:
        calls.append(event.message_id)
        if len(calls) == 1:
            await release.wait()
        return 0

    window = AsynchronousOperationsWindowNegotiation(
        maximum_number_operations_invoked=2, maximum_number_operations_performed=2
    )
    rq = verification_rq()
    rq = replace(rq, user_information=(*rq.user_information, window))

    def status_and_id(pdu: Any) -> tuple[int, int]:
        assert isinstance(pdu, PDataTF), pdu
        data = pdu.pdvs[0].data
        return struct.unpack("<H", _element(data, 0x0900))[0], struct.unpack(
            "<H", _element(data, 0x0120)
        )[0]

    async with (
        running_server(_scp(), [(evt.EVT_C_ECHO, held_echo)]) as server,
        raw_connection(server.port) as peer,
    ):
        await raw_associate(peer, rq)
        await peer.send(encode_p_data(1, 0x03, c_echo_rq_command(msg_id=7)))
        await peer.send(encode_p_data(1, 0x03, c_echo_rq_command(msg_id=7)))
        assert status_and_id(await peer.read_pdu()) == (0x0210, 7)
        release.set()
        assert status_and_id(await peer.read_pdu()) == (0x0000, 7)
        await peer.send(encode_p_data(1, 0x03, c_echo_rq_command(msg_id=7)))
        assert status_and_id(await peer.read_pdu()) == (0x0000, 7)
        await raw_release(peer)
    assert calls == [7, 7]


# ---------------------------------------------------------------------------
# Data sets over the spool threshold, and what must not be left on disk
# (found by tests/integration/test_fuzz_socket.py)


async def _echo_then_release(peer: RawPeer, msg_id: int) -> None:
    """The association still serves: a C-ECHO (context 1) is answered 0x0000; then release."""
    for raw in c_echo_rq_pdus(context_id=1, msg_id=msg_id):
        await peer.send(raw)
    echo = await peer.read_pdu()
    assert isinstance(echo, PDataTF)
    assert decode_command(bytes(echo.pdvs[0].data))["Status"] == 0
    await raw_release(peer)


def _spooling_scp(spool: Any) -> Any:
    """A Verification + CT Storage + Study Root C-FIND SCP spooling past 4 KiB into ``spool``."""
    from pydicom.uid import ExplicitVRLittleEndian

    from aiodicom import sop_class

    ae = _scp()
    ae.add_supported_context(sop_class.CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_supported_context(sop_class.StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(sop_class.BasicFilmSession)
    ae.spool_threshold = 4096
    ae.spool_directory = str(spool)
    return ae


async def _request_and_status(
    peer: RawPeer, context_id: int, fields: dict[str, Any], data: bytes
) -> dict[str, Any]:
    from aiodicom.dimse import DATASET_PRESENT, fragment

    command = encode_command({**fields, "CommandDataSetType": DATASET_PRESENT})
    for raw in fragment(context_id, command, data, 4096):
        await peer.send(raw)
    pdu = await peer.read_pdu()
    assert isinstance(pdu, PDataTF) and pdu.pdvs[-1].is_command, pdu
    return decode_command(b"".join(bytes(p.data) for p in pdu.pdvs))


async def test_a_spooled_store_refused_for_its_context_leaves_no_file(tmp_path: Any) -> None:
    """A C-STORE-RQ of an MR instance on a CT context is refused 0x0122 (its
    data set already spooled): the spool file is deleted, the association
    goes on. (The refusal paths used to leave it on disk for good.)"""
    from pydicom.uid import ExplicitVRLittleEndian

    from aiodicom import sop_class

    stored: list[Any] = []
    async with running_server(
        _spooling_scp(tmp_path), [(evt.EVT_C_STORE, lambda e: stored.append(e) or 0)]
    ) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(
                peer,
                rq_with_contexts(
                    (1, sop_class.Verification, "1.2.840.10008.1.2"),
                    (3, sop_class.CTImageStorage, ExplicitVRLittleEndian),
                ),
            )
            rsp = await _request_and_status(
                peer,
                3,
                {
                    "CommandField": CommandField.C_STORE_RQ,
                    "MessageID": 5,
                    "Priority": 0,
                    "AffectedSOPClassUID": sop_class.MRImageStorage,
                    "AffectedSOPInstanceUID": "1.2.3.4",
                },
                b"\x08\x00\x16\x00UI\x1a\x001.2.840.10008.5.1.4.1.1.4\x00" + bytes(20000),
            )
            assert rsp["Status"] == 0x0122 and rsp["MessageIDBeingRespondedTo"] == 5
            await _echo_then_release(peer, msg_id=6)
        with anyio.fail_after(GUARD):
            await server._until(lambda: not server.active_associations)
    assert not stored
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kind", "status"),
    [("C-FIND", 0xA700), ("N-CREATE", 0x0213)],
)
async def test_a_request_data_set_over_the_spool_threshold_is_refused_not_kept(
    tmp_path: Any, kind: str, status: int
) -> None:
    """Only a C-STORE-RQ data set is spooled. Any other request's over
    ae.spool_threshold is neither kept in memory nor written anywhere, and
    the request is refused out of resources (C-FIND 0xA700; N services
    0x0213, resource limitation); no handler runs, the association goes on.
    (It used to be spooled to a file nothing read or deleted.)"""
    from aiodicom import sop_class

    called: list[Any] = []
    handlers = [(evt.EVT_C_FIND, called.append), (evt.EVT_N_CREATE, called.append)]
    # Query/Retrieve Level, then 30,000 bytes of OB (Explicit VR Little Endian)
    identifier = b"\x08\x00\x52\x00CS\x06\x00STUDY " + b"\x11\x00\x10\x00OB\x00\x00"
    identifier += (30000).to_bytes(4, "little") + bytes(30000)
    if kind == "C-FIND":
        cid, sop = 3, sop_class.StudyRootQueryRetrieveInformationModelFind
        fields = {"CommandField": CommandField.C_FIND_RQ, "Priority": 0}
    else:
        cid, sop = 5, sop_class.BasicFilmSession
        fields = {"CommandField": CommandField.N_CREATE_RQ}
    async with (
        running_server(_spooling_scp(tmp_path), handlers) as server,
        raw_connection(server.port) as peer,
    ):
        await raw_associate(
            peer,
            rq_with_contexts(
                (1, sop_class.Verification, "1.2.840.10008.1.2"),
                (cid, sop, "1.2.840.10008.1.2.1"),
            ),
        )
        rsp = await _request_and_status(
            peer, cid, {**fields, "MessageID": 9, "AffectedSOPClassUID": sop}, identifier
        )
        assert rsp["Status"] == status and rsp["MessageIDBeingRespondedTo"] == 9
        assert not called
        await _echo_then_release(peer, msg_id=10)
    assert not list(tmp_path.iterdir())


def _raw_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A group 0000 command set from raw values, as a peer might send it (no checks)."""
    body = b""
    for elem, value in elements:
        value += b"\x00" * (len(value) % 2)
        body += struct.pack("<HHL", 0, elem, len(value)) + value
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


async def test_a_store_with_uids_that_do_not_encode_is_refused(tmp_path: Any) -> None:
    """A C-STORE-RQ whose UIDs are not ASCII (a flipped bit), with a data set
    past the spool threshold: refused 0xC210 naming the field, nothing
    spooled, no exception in the association (its SOP Class UID, which could
    not be encoded, is left out of the response), and the association goes
    on. (This ended the association's task with UnicodeEncodeError, and
    pydicom warned of the UIDs while the spool file's header was made.)"""
    from pydicom.uid import ExplicitVRLittleEndian

    from aiodicom import sop_class
    from aiodicom.dimse import fragment

    bad_class = sop_class.CTImageStorage.encode().replace(b".", b"\xae", 1)
    command = _raw_command(
        [
            (0x0002, bad_class),
            (0x0100, struct.pack("<H", CommandField.C_STORE_RQ)),
            (0x0110, struct.pack("<H", 3)),
            (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0)),  # a data set follows
            (0x1000, b"1.2.3\xb94"),
        ]
    )
    async with running_server(_spooling_scp(tmp_path)) as server:
        async with raw_connection(server.port) as peer:
            await raw_associate(
                peer,
                rq_with_contexts(
                    (1, sop_class.Verification, "1.2.840.10008.1.2"),
                    (3, sop_class.CTImageStorage, ExplicitVRLittleEndian),
                ),
            )
            for raw in fragment(3, command, bytes(20000), 4096):
                await peer.send(raw)
            pdu = await peer.read_pdu()
            assert isinstance(pdu, PDataTF)
            rsp = decode_command(bytes(pdu.pdvs[0].data))
            assert rsp["Status"] == 0xC210 and rsp["MessageIDBeingRespondedTo"] == 3
            assert "AffectedSOPClassUID" not in rsp
            assert "Affected SOP Class UID" in rsp["ErrorComment"], rsp
            await _echo_then_release(peer, msg_id=4)
        with anyio.fail_after(GUARD):
            await server._until(lambda: not server.active_associations)
    assert not list(tmp_path.iterdir())


async def test_a_peer_implementation_class_uid_is_taken_as_sent() -> None:
    """A non-conformant Implementation Class UID (a letter in it) is accepted
    without pydicom warning of it (the suite turns warnings into errors):
    some implementations send one, and the association must go on."""
    from dataclasses import replace as _replace

    from aiodicom.pdu_primitives import ImplementationClassUIDNotification

    rq = verification_rq()
    odd = tuple(
        ImplementationClassUIDNotification(implementation_class_uid="1.2.3.x4")
        if isinstance(i, ImplementationClassUIDNotification)
        else i
        for i in rq.user_information
    )
    async with running_server(_scp()) as server, raw_connection(server.port) as peer:
        await raw_associate(peer, _replace(rq, user_information=odd))
        await _echo_then_release(peer, msg_id=1)


async def test_a_response_data_set_over_the_spool_threshold_is_a_typed_error() -> None:
    """A C-FIND-RSP whose identifier is over the SCU's ae.spool_threshold: it
    is not kept (only a C-STORE-RQ data set is spooled), the C-FIND raises
    DIMSEError saying so, and the association goes on. (The identifier used
    to be spooled to a file nothing read or deleted, and the response came
    out without it.)"""
    from pydicom.dataset import Dataset

    from aiodicom import sop_class
    from aiodicom.errors import DIMSEError

    find = sop_class.StudyRootQueryRetrieveInformationModelFind

    async def on_find(event: evt.Event) -> Any:
        big = Dataset()
        big.QueryRetrieveLevel = "STUDY"
        big.StudyDescription = "x" * 60
        big.add_new(0x00091010, "OB", bytes(20000))
        yield 0xFF00, big

    scp = _scp()
    scp.add_supported_context(find)
    scu = make_scu_ae()
    scu.add_requested_context(find)
    scu.spool_threshold = 4096
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    async with running_server(scp, [(evt.EVT_C_FIND, on_find)]) as server:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc:
                with pytest.raises(DIMSEError, match="spool_threshold"):
                    async with assoc.send_c_find(query, find) as responses:
                        async for _ in responses:
                            pass
                assert (await assoc.send_c_echo()).Status == 0
    assert assoc.is_released


async def test_an_operation_after_the_peer_broke_the_association_says_why() -> None:
    """The peer answers a C-ECHO and then sends garbage: the association is
    aborted (A-ABORT, unrecognized PDU), and the next operation raises
    AssociationAborted naming that, on both backends. (On trio it raised
    LocalProtocolError, 'not established', the user's fault, when it started
    while the A-ABORT was being written.)"""
    from aiodicom.pdu import AAssociateRQ

    async def scp(peer: RawPeer) -> None:
        rq = await peer.read_pdu()
        assert isinstance(rq, AAssociateRQ)
        await peer.send(verification_ac(rq))
        pdu = await peer.read_pdu()
        assert isinstance(pdu, PDataTF)
        answer = b"".join(c_echo_rsp_pdus(pdu))
        await peer.send(answer + b"\x42\x00\x00\x00\x00\x00")  # then an unknown PDU type
        await peer.read_until_eof()

    async with fake_scp(scp) as port:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", port, ae_title="TEST_SCP") as assoc:
                assert (await assoc.send_c_echo()).Status == 0
                with pytest.raises(AssociationAborted, match="unrecognized PDU type 0x42"):
                    await assoc.send_c_echo()
    assert assoc.is_aborted


async def test_sop_extended_negotiation_echoing_a_peer_uid_is_taken_as_sent() -> None:
    """An EVT_SOP_EXTENDED handler that answers the peer's items as they came
    (the usual way) with a non-conformant SOP Class UID in them ('1.2.03',
    a leading zero): the A-ASSOCIATE-AC carries it back, without pydicom
    validating it again (a warning, or an error where warnings are errors,
    which ended the negotiation)."""
    from dataclasses import replace as _replace

    from aiodicom.pdu import AAssociateAC
    from aiodicom.pdu_primitives import SOPClassExtendedNegotiation

    rq = verification_rq()
    item = SOPClassExtendedNegotiation(
        sop_class_uid="1.2.03", service_class_application_information=b"\x01"
    )
    rq = _replace(rq, user_information=(*rq.user_information, item))
    seen: list[Any] = []

    def echo_back(event: evt.Event) -> Any:
        seen.append(dict(event.app_info or {}))
        return event.app_info

    async with (
        running_server(_scp(), [(evt.EVT_SOP_EXTENDED, echo_back)]) as server,
        raw_connection(server.port) as peer,
    ):
        ac = await raw_associate(peer, rq)
        assert isinstance(ac, AAssociateAC)
        back = [i for i in ac.user_information if isinstance(i, SOPClassExtendedNegotiation)]
        assert [(str(i.sop_class_uid), i.service_class_application_information) for i in back] == [
            ("1.2.03", b"\x01")
        ]
        await _echo_then_release(peer, msg_id=1)
    assert len(seen) == 1
