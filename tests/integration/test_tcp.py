"""Associations over loopback TCP: C-ECHO, negotiation, events, logging and TLS."""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import logging
import os
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset

from aiodicom import build_context, build_role, evt, sop_class
from aiodicom.errors import (
    AssociationAborted,
    AssociationRejected,
    DicomNetworkError,
    NoAcceptedContext,
)
from aiodicom.pdu import AAssociateAC, AAssociateRQ, AReleaseRP, AReleaseRQ, PDataTF, encode
from aiodicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)

from .conftest import (
    GUARD,
    Recorder,
    echo_once,
    make_scp_ae,
    make_scu_ae,
    running_server,
    verification_rq,
)

pytestmark = pytest.mark.anyio

CT = sop_class.CTImageStorage
MR = sop_class.MRImageStorage


# ---------------------------------------------------------------------------
# C-ECHO and statuses


async def test_c_echo_success() -> None:
    seen: list[evt.Event] = []

    def on_echo(event: evt.Event) -> int:
        seen.append(event)
        return 0x0000

    async with running_server(handlers=[(evt.EVT_C_ECHO, on_echo)]) as server:
        assert server.port > 0
        ae = make_scu_ae()
        with anyio.fail_after(GUARD):
            async with ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc:
                assert assoc.is_established
                status = await assoc.send_c_echo()
                assert isinstance(status, Dataset)
                assert status.Status == 0x0000
                assert status.MessageIDBeingRespondedTo >= 1
        assert assoc.is_released
        assert not assoc.is_established
    assert len(seen) == 1
    assert seen[0].context is not None
    assert seen[0].context.abstract_syntax == sop_class.Verification
    assert seen[0].message_id == status.MessageIDBeingRespondedTo


async def test_c_echo_unbound_handler_default_success() -> None:
    async with running_server() as server:
        assert await echo_once(server.port) == 0x0000


async def test_handler_status_int() -> None:
    async with running_server(handlers=[(evt.EVT_C_ECHO, lambda e: 0x0110)]) as server:
        assert await echo_once(server.port) == 0x0110


async def test_handler_status_dataset_with_error_comment() -> None:
    def on_echo(event: evt.Event) -> Dataset:
        ds = Dataset()
        ds.Status = 0x0122
        ds.ErrorComment = "not today"
        return ds

    async with running_server(handlers=[(evt.EVT_C_ECHO, on_echo)]) as server:
        ae = make_scu_ae()
        with anyio.fail_after(GUARD):
            async with ae.associate("127.0.0.1", server.port) as assoc:
                status = await assoc.send_c_echo()
    assert status.Status == 0x0122
    assert status.ErrorComment == "not today"


async def test_async_handler_status() -> None:
    async def on_echo(event: evt.Event) -> int:
        await anyio.sleep(0)
        return 0x0211

    async with running_server(handlers=[(evt.EVT_C_ECHO, on_echo)]) as server:
        assert await echo_once(server.port) == 0x0211


async def test_handler_raises_gives_0110_and_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def on_echo(event: evt.Event) -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError("handler bug")

    async with running_server(handlers=[(evt.EVT_C_ECHO, on_echo)]) as server:
        ae = make_scu_ae()
        with anyio.fail_after(GUARD):
            async with ae.associate("127.0.0.1", server.port) as assoc:
                first = await assoc.send_c_echo()
                second = await assoc.send_c_echo()  # same association still usable
        assert first.Status == 0x0110
        assert second.Status == 0x0110
        # and a new association is served too
        assert await echo_once(server.port) == 0x0110
    assert calls == 3
    assert "handler bug" in caplog.text


async def test_no_accepted_context_for_verification() -> None:
    scp = make_scp_ae()
    scp.supported_contexts = []
    scp.add_supported_context(CT)
    scu = make_scu_ae()
    scu.add_requested_context(CT)
    async with running_server(scp) as server:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", server.port) as assoc:
                assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CT]
                assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [
                    sop_class.Verification
                ]
                with pytest.raises(NoAcceptedContext) as info:
                    await assoc.send_c_echo()
                assert isinstance(info.value, ValueError)
                assert isinstance(info.value, DicomNetworkError)
                assert assoc.is_established  # nothing was sent; still usable
        assert assoc.is_released


# ---------------------------------------------------------------------------
# Rejections


async def test_reject_called_ae_title() -> None:
    rec = Recorder()
    scp = make_scp_ae("RIGHT_SCP", require_called_aet=True)
    async with running_server(scp, rec.handlers) as server:
        with anyio.fail_after(GUARD), pytest.raises(AssociationRejected) as info:
            async with make_scu_ae().associate("127.0.0.1", server.port, ae_title="WRONG"):
                pytest.fail("should have been rejected")
        assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 7)
        await rec.wait_for("EVT_CONN_CLOSE")
        assert "EVT_REJECTED" in rec.names
        assert "EVT_ESTABLISHED" not in rec.names
        # the right title is accepted
        assert await echo_once(server.port, ae_title="RIGHT_SCP") == 0


async def test_reject_calling_ae_title() -> None:
    scp = make_scp_ae(require_calling_aet=["GOOD_SCU"])
    async with running_server(scp) as server:
        with anyio.fail_after(GUARD), pytest.raises(AssociationRejected) as info:
            async with make_scu_ae("BAD_SCU").associate("127.0.0.1", server.port):
                pytest.fail("should have been rejected")
        assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 3)
        assert await echo_once(server.port, make_scu_ae("GOOD_SCU")) == 0


async def test_maximum_associations() -> None:
    rec = Recorder()
    scp = make_scp_ae(maximum_associations=1)
    async with running_server(scp, rec.handlers) as server:
        scu = make_scu_ae()
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", server.port) as first:
                with pytest.raises(AssociationRejected) as info:
                    async with scu.associate("127.0.0.1", server.port):
                        pytest.fail("should have been rejected")
                assert (info.value.result, info.value.source, info.value.reason) == (2, 3, 2)
                assert (await first.send_c_echo()).Status == 0
            # the server has finished with the first association once it closed
            await rec.wait_for("EVT_RELEASED")
            await rec.wait_for("EVT_CONN_CLOSE", 2)  # the rejected one and the first
        assert await echo_once(server.port) == 0


# ---------------------------------------------------------------------------
# Extended negotiation


def _identity(kind: int, positive: bool = True) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.positive_response_requested = positive
    item.primary_field = b"alice" if kind in (1, 2) else b"opaque-assertion"
    if kind == 2:
        item.secondary_field = b"s3cret"
    return item


async def test_user_identity_accepted_with_server_response() -> None:
    seen: list[tuple[Any, Any, Any]] = []

    def on_user_id(event: evt.Event) -> tuple[bool, bytes]:
        seen.append((event.user_id_type, event.primary_field, event.secondary_field))
        return True, b"token"

    async with running_server(handlers=[(evt.EVT_USER_ID, on_user_id)]) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, ext_neg=[_identity(5)]
            ) as assoc:
                assert assoc.acceptor.user_identity is not None
                assert assoc.acceptor.user_identity.server_response == b"token"
                assert (await assoc.send_c_echo()).Status == 0
    assert seen == [(5, b"opaque-assertion", None)]


async def test_user_identity_username_password_empty_server_response() -> None:
    """PS3.7 D.3.3.7.2: for identity types 1 and 2 the server response is zero length."""
    seen: list[tuple[Any, Any, Any]] = []

    def on_user_id(event: evt.Event) -> tuple[bool, bytes]:
        seen.append((event.user_id_type, event.primary_field, event.secondary_field))
        return True, b"ignored"

    async with running_server(handlers=[(evt.EVT_USER_ID, on_user_id)]) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, ext_neg=[_identity(2)]
            ) as assoc:
                assert assoc.acceptor.user_identity is not None
                assert assoc.acceptor.user_identity.server_response == b""
    assert seen == [(2, b"alice", b"s3cret")]


async def test_user_identity_refused() -> None:
    rec = Recorder()
    handlers = [(evt.EVT_USER_ID, lambda e: (False, None)), *rec.handlers]
    async with running_server(handlers=handlers) as server:
        with anyio.fail_after(GUARD), pytest.raises(AssociationRejected) as info:
            async with make_scu_ae().associate("127.0.0.1", server.port, ext_neg=[_identity(2)]):
                pytest.fail("should have been rejected")
        assert (info.value.result, info.value.source, info.value.reason) == (2, 2, 1)
        await rec.wait_for("EVT_REJECTED")
        # without an identity the same server accepts
        assert await echo_once(server.port) == 0


@pytest.mark.parametrize(
    ("proposed", "supported", "requestor_roles", "acceptor_roles"),
    [
        # (scu, scp) proposed by the requestor / supported by the acceptor;
        # resulting (as_scu, as_scp) of each side.
        ((True, True), (True, True), (True, True), (True, True)),
        ((True, True), (False, True), (False, True), (True, False)),
        ((False, True), (True, True), (False, True), (True, False)),
    ],
)
async def test_role_selection(
    proposed: tuple[bool, bool],
    supported: tuple[bool, bool],
    requestor_roles: tuple[bool, bool],
    acceptor_roles: tuple[bool, bool],
) -> None:
    scp = make_scp_ae()
    scp.add_supported_context(CT, scu_role=supported[0], scp_role=supported[1])
    scp.add_supported_context(MR)  # no role answer: default roles
    scu = make_scu_ae()
    scu.add_requested_context(CT)
    scu.add_requested_context(MR)
    server_side: list[Any] = []

    def on_established(event: evt.Event) -> None:
        server_side.append(
            {cx.abstract_syntax: (cx.as_scu, cx.as_scp) for cx in event.assoc.accepted_contexts}
        )

    async with running_server(scp, [(evt.EVT_ESTABLISHED, on_established)]) as server:
        role = build_role(CT, scu_role=proposed[0], scp_role=proposed[1])
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", server.port, ext_neg=[role]) as assoc:
                ours = {
                    cx.abstract_syntax: (cx.as_scu, cx.as_scp) for cx in assoc.accepted_contexts
                }
                assert (await assoc.send_c_echo()).Status == 0
    assert ours[CT] == requestor_roles
    assert ours[MR] == (True, False)
    assert ours[sop_class.Verification] == (True, False)
    assert len(server_side) == 1
    assert server_side[0][CT] == acceptor_roles
    assert server_side[0][MR] == (False, True)
    assert server_side[0][sop_class.Verification] == (False, True)


async def test_sop_class_extended_negotiation() -> None:
    seen: list[dict[Any, bytes]] = []

    def on_sop_extended(event: evt.Event) -> dict[Any, bytes]:
        assert event.app_info is not None
        seen.append(dict(event.app_info))
        return {CT: b"\x01"}

    scp = make_scp_ae()
    scp.add_supported_context(CT)
    scu = make_scu_ae()
    scu.add_requested_context(CT)
    item = SOPClassExtendedNegotiation(
        sop_class_uid=CT, service_class_application_information=b"\x02\x00\x01"
    )
    async with running_server(scp, [(evt.EVT_SOP_EXTENDED, on_sop_extended)]) as server:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", server.port, ext_neg=[item]) as assoc:
                assert assoc.acceptor.sop_class_extended == {CT: b"\x01"}
    assert seen == [{CT: b"\x02\x00\x01"}]


async def test_sop_class_common_extended_negotiation() -> None:
    seen: list[dict[Any, Any]] = []

    def on_sop_common(event: evt.Event) -> dict[Any, Any]:
        assert event.items is not None
        seen.append(dict(event.items))
        return dict(event.items)

    scp = make_scp_ae()
    scp.add_supported_context(CT)
    scu = make_scu_ae()
    scu.add_requested_context(CT)
    item = SOPClassCommonExtendedNegotiation(
        sop_class_uid=sop_class.EnhancedCTImageStorage,
        service_class_uid="1.2.840.10008.4.2",
        related_general_sop_class_identification=[CT],
    )
    async with running_server(scp, [(evt.EVT_SOP_COMMON, on_sop_common)]) as server:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", server.port, ext_neg=[item]) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
    assert len(seen) == 1
    got = seen[0][sop_class.EnhancedCTImageStorage]
    assert got.service_class_uid == "1.2.840.10008.4.2"
    assert list(got.related_general_sop_class_identification) == [CT]


# ---------------------------------------------------------------------------
# Asynchronous operations window and concurrent operations


class _ConcurrencyProbe:
    """An EVT_C_ECHO handler recording the most requests it served at once.

    With ``gate`` > 1 each handler waits until ``gate`` requests are being
    served at the same time (proving they overlap), then lets them all go.
    """

    def __init__(self, gate: int = 0) -> None:
        self.current = 0
        self.max_seen = 0
        self.calls = 0
        self.gate = gate
        self._open: anyio.Event | None = None

    async def __call__(self, event: evt.Event) -> int:
        if self._open is None:
            self._open = anyio.Event()
        self.calls += 1
        self.current += 1
        self.max_seen = max(self.max_seen, self.current)
        try:
            if self.gate > 1:
                if self.current >= self.gate:
                    self._open.set()
                with anyio.fail_after(GUARD):
                    await self._open.wait()
            else:
                for _ in range(5):
                    await anyio.sleep(0.001)  # slow: gives overlap every chance
        finally:
            self.current -= 1
        return 0x0000


async def _concurrent_echoes(assoc: Any, n: int) -> list[int]:
    statuses: list[int] = []

    async def one() -> None:
        statuses.append(int((await assoc.send_c_echo()).Status))

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
    return statuses


async def test_async_ops_window_bound_handler_concurrent_echoes() -> None:
    probe = _ConcurrencyProbe(gate=5)
    seen: list[tuple[Any, Any]] = []

    def on_async_ops(event: evt.Event) -> tuple[int, int]:
        seen.append((event.invoked, event.performed))
        return 5, 5

    handlers = [(evt.EVT_C_ECHO, probe), (evt.EVT_ASYNC_OPS, on_async_ops)]
    async with running_server(handlers=handlers) as server:
        window = AsynchronousOperationsWindowNegotiation(5, 5)
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port, ext_neg=[window]) as assoc:
                assert assoc.acceptor.asynchronous_operations == (5, 5)
                assert assoc.max_async_invoked == 5
                statuses = await _concurrent_echoes(assoc, 20)
    assert seen == [(5, 5)]
    assert statuses == [0] * 20
    assert probe.calls == 20
    assert 1 < probe.max_seen <= 5


async def test_async_ops_window_handler_narrows_window() -> None:
    probe = _ConcurrencyProbe(gate=2)
    handlers = [(evt.EVT_C_ECHO, probe), (evt.EVT_ASYNC_OPS, lambda e: (2, 2))]
    async with running_server(handlers=handlers) as server:
        window = AsynchronousOperationsWindowNegotiation(5, 5)
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port, ext_neg=[window]) as assoc:
                assert assoc.acceptor.asynchronous_operations == (2, 2)
                assert assoc.max_async_invoked == 2
                statuses = await _concurrent_echoes(assoc, 10)
    assert statuses == [0] * 10
    assert probe.max_seen == 2


async def test_async_ops_window_unbound_handler() -> None:
    probe = _ConcurrencyProbe()
    async with running_server(handlers=[(evt.EVT_C_ECHO, probe)]) as server:
        window = AsynchronousOperationsWindowNegotiation(5, 5)
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port, ext_neg=[window]) as assoc:
                invoked, performed = assoc.acceptor.asynchronous_operations
                # whatever the acceptor answers, it never exceeds the proposal
                assert 1 <= invoked <= 5 and 1 <= performed <= 5
                assert assoc.max_async_invoked == performed
                statuses = await _concurrent_echoes(assoc, 20)
    assert statuses == [0] * 20
    assert 1 <= probe.max_seen <= performed


async def test_default_window_serialises_concurrent_echoes() -> None:
    probe = _ConcurrencyProbe()
    async with running_server(handlers=[(evt.EVT_C_ECHO, probe)]) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                assert assoc.max_async_invoked == 1
                statuses = await _concurrent_echoes(assoc, 20)
    assert statuses == [0] * 20
    assert probe.calls == 20
    assert probe.max_seen == 1


# ---------------------------------------------------------------------------
# Events and logging


async def test_notification_event_order_both_sides() -> None:
    server_rec = Recorder()
    client_rec = Recorder()
    async with running_server(handlers=server_rec.handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_rec.handlers
            ) as assoc:
                await assoc.send_c_echo()
        await server_rec.wait_for("EVT_CONN_CLOSE")
    expected = [
        "EVT_CONN_OPEN",
        "EVT_REQUESTED",
        "EVT_ACCEPTED",
        "EVT_ESTABLISHED",
        "EVT_RELEASED",
        "EVT_CONN_CLOSE",
    ]
    assert client_rec.names == expected
    assert server_rec.names == expected
    for rec in (client_rec, server_rec):
        for event in rec.events:
            assert isinstance(event.timestamp, datetime.datetime)
    assert all(e.assoc is assoc for e in client_rec.events)
    server_assoc = server_rec.events[0].assoc
    assert server_assoc is not assoc
    assert all(e.assoc is server_assoc for e in server_rec.events)
    assert server_assoc.is_acceptor and assoc.is_requestor


async def test_fsm_events_for_a_message_in_several_pdus() -> None:
    """A small message the peer's maximum PDU length splits goes out in one
    write, each of its PDUs still a DT-1 (Evt9) that EVT_FSM_TRANSITION sees."""
    from aiodicom.testing import make_dataset

    scp = make_scp_ae()
    scp.maximum_pdu_size = 4096
    scp.add_supported_context(sop_class.CTImageStorage, "1.2.840.10008.1.2.1")
    scu = make_scu_ae()
    scu.add_requested_context(sop_class.CTImageStorage, "1.2.840.10008.1.2.1")
    received: list[evt.Event] = []
    transitions: list[evt.Event] = []
    ds = make_dataset(PixelData=bytes(10_000))
    handlers = [(evt.EVT_PDU_RECV, received.append), (evt.EVT_C_STORE, lambda event: 0)]
    async with running_server(scp, handlers) as server:
        with anyio.fail_after(GUARD):
            async with scu.associate(
                "127.0.0.1",
                server.port,
                ae_title="TEST_SCP",
                evt_handlers=[(evt.EVT_FSM_TRANSITION, transitions.append)],
            ) as assoc:
                assert (await assoc.send_c_store(ds)).Status == 0
    data_pdus = [e.pdu for e in received if isinstance(e.pdu, PDataTF)]
    assert len(data_pdus) == 4  # the command, then 10 KB of data set in three
    assert all(len(encode(p)) <= 4096 + 6 for p in data_pdus)
    assert [e.action for e in transitions].count("DT-1") == 4


async def test_pdu_and_fsm_events() -> None:
    def recorder(sink: list[evt.Event]) -> Any:
        return lambda event: sink.append(event)

    c_sent: list[evt.Event] = []
    c_recv: list[evt.Event] = []
    c_fsm: list[evt.Event] = []
    s_sent: list[evt.Event] = []
    s_recv: list[evt.Event] = []
    s_fsm: list[evt.Event] = []
    s_close = Recorder()
    server_handlers = [
        (evt.EVT_PDU_SENT, recorder(s_sent)),
        (evt.EVT_PDU_RECV, recorder(s_recv)),
        (evt.EVT_FSM_TRANSITION, recorder(s_fsm)),
        *s_close.handlers,
    ]
    client_handlers = [
        (evt.EVT_PDU_SENT, recorder(c_sent)),
        (evt.EVT_PDU_RECV, recorder(c_recv)),
        (evt.EVT_FSM_TRANSITION, recorder(c_fsm)),
    ]
    async with running_server(handlers=server_handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_handlers
            ) as assoc:
                await assoc.send_c_echo()
        await s_close.wait_for("EVT_CONN_CLOSE")

    def kinds(events: list[evt.Event]) -> list[type]:
        return [type(e.pdu) for e in events]

    assert kinds(c_sent) == [AAssociateRQ, PDataTF, AReleaseRQ]
    assert kinds(c_recv) == [AAssociateAC, PDataTF, AReleaseRP]
    assert kinds(s_recv) == [AAssociateRQ, PDataTF, AReleaseRQ]
    assert kinds(s_sent) == [AAssociateAC, PDataTF, AReleaseRP]
    assert c_sent[0].pdu.calling_ae_title == "TEST_SCU"
    assert s_sent[0].pdu.called_ae_title == "ANY-SCP"
    assert all(e.event is evt.EVT_PDU_SENT for e in c_sent + s_sent)
    assert all(e.event is evt.EVT_PDU_RECV for e in c_recv + s_recv)
    assert c_sent[1].pdu.pdvs[0].is_command

    def actions(events: list[evt.Event]) -> list[str | None]:
        return [e.action for e in events]

    assert actions(c_fsm) == ["AE-1", "AE-2", "AE-3", "DT-1", "DT-2", "AR-1", "AR-3"]
    assert actions(s_fsm) == ["AE-5", "AE-6", "AE-7", "DT-2", "DT-1", "AR-2", "AR-4", "AR-5"]
    for events in (c_fsm, s_fsm):
        assert events[0].current_state == "Sta1"
        assert events[-1].next_state == "Sta1"
        for before, after in itertools.pairwise(events):
            assert before.next_state == after.current_state
        assert all(e.fsm_event and e.fsm_event.startswith("Evt") for e in events)
    assert c_fsm[0].fsm_event == "Evt1" and c_fsm[0].next_state == "Sta4"
    assert s_fsm[1].fsm_event == "Evt6" and s_fsm[1].next_state == "Sta3"


async def test_debug_logging_of_pdus(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiodicom")
    async with running_server() as server:
        assert await echo_once(server.port) == 0
    debug = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("aiodicom") and r.levelno == logging.DEBUG
    ]
    text = "\n".join(debug)
    assert "A-ASSOCIATE-RQ" in text
    assert "A-ASSOCIATE-AC" in text
    assert "P-DATA-TF" in text
    assert any(m.startswith("->") for m in debug)
    assert any(m.startswith("<-") for m in debug)
    assert "AReleaseRQ" in text or "A-RELEASE-RQ" in text


# ---------------------------------------------------------------------------
# TLS


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost: (cert.pem, key.pem)."""
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            message = "neither the cryptography package nor the openssl CLI is available"
            if os.environ.get("AIODICOM_REQUIRE_PEERS") == "1":  # CI: a failure
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(key_path),
                "-out",
                str(cert_path),
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: the server presents a self-signed
    certificate, which the client trusts."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    return server_ctx, ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))


async def test_tls_c_echo(tmp_path: Path) -> None:
    server_ctx, client_ctx = _tls_contexts(tmp_path)
    rec = Recorder()
    async with running_server(handlers=rec.handlers, ssl_context=server_ctx) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, ssl_context=client_ctx
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
        await rec.wait_for("EVT_CONN_CLOSE")
        assert "EVT_RELEASED" in rec.names
        # a plain TCP client cannot associate with the TLS server ...
        with anyio.fail_after(GUARD), pytest.raises((DicomNetworkError, OSError, TimeoutError)):
            scu = make_scu_ae(acse_timeout=1.0)
            async with scu.associate("127.0.0.1", server.port):
                pass
        # ... and the server goes on serving TLS clients
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, ssl_context=client_ctx
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the framing transport's backend
async def test_tls_streams_are_not_pdu_framed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under TLS the bytes on the socket are TLS records, not PDUs: the asyncio
    transport must not frame them (plain connections are framed)."""
    from aiodicom import _transport

    framed: list[bool] = []
    real_init = _transport._Protocol.__init__

    def init(self: Any, pdu_framing: bool = False) -> None:
        framed.append(pdu_framing)
        real_init(self, pdu_framing)

    monkeypatch.setattr(_transport._Protocol, "__init__", init)
    server_ctx, client_ctx = _tls_contexts(tmp_path)
    async with running_server(ssl_context=server_ctx) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, ssl_context=client_ctx
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
    assert framed == [False, False]  # client and server side
    framed.clear()
    async with running_server() as server:
        with anyio.fail_after(GUARD):
            assert await echo_once(server.port) == 0
    assert framed == [True, True]


async def test_shutdown_during_a_tls_handshake_closes_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops while a connection's TLS handshake is under way: the
    connection is closed (the client's handshake fails at once), not left
    open for the garbage collector, and nothing is served on it."""
    from anyio.streams.tls import TLSStream

    import aiodicom.ae as ae_module

    in_handshake = anyio.Event()

    class Watched:
        @staticmethod
        async def wrap(*args: Any, **kwargs: Any) -> TLSStream:
            in_handshake.set()
            return await TLSStream.wrap(*args, **kwargs)

    monkeypatch.setattr(ae_module, "TLSStream", Watched)
    server_ctx, client_ctx = _tls_contexts(tmp_path)
    rec = Recorder()
    with anyio.fail_after(GUARD):
        async with running_server(handlers=rec.handlers, ssl_context=server_ctx) as server:
            raw = await anyio.connect_tcp("127.0.0.1", server.port)
            await in_handshake.wait()
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError)):
            try:
                tls = await TLSStream.wrap(
                    raw, hostname="127.0.0.1", ssl_context=client_ctx, standard_compatible=False
                )
            except BaseException:
                await raw.aclose()
                raise
            try:
                await tls.send(encode(verification_rq()))
                await tls.receive()
            finally:
                await tls.aclose()
    assert rec.names == []


async def test_a_tls_handshake_ending_during_shutdown_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection's TLS handshake ends while shutdown() is still waiting for
    another association (its handler's clean-up): the connection is closed,
    not served (its A-ASSOCIATE-RQ gets no answer), and shutdown() returns
    once the other association has ended."""
    from anyio.streams.tls import TLSStream

    import aiodicom.ae as ae_module

    in_handshake, proceed = anyio.Event(), anyio.Event()

    class Held:
        @staticmethod
        async def wrap(*args: Any, **kwargs: Any) -> TLSStream:
            if not in_handshake.is_set():  # the first connection goes at once
                in_handshake.set()
                return await TLSStream.wrap(*args, **kwargs)
            await proceed.wait()
            return await TLSStream.wrap(*args, **kwargs)

    monkeypatch.setattr(ae_module, "TLSStream", Held)
    server_ctx, client_ctx = _tls_contexts(tmp_path)
    running, aborting, late_done = anyio.Event(), anyio.Event(), anyio.Event()
    answered: list[bytes] = []

    async def on_echo(event: evt.Event) -> int:
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):  # shutdown() waits for this
                aborting.set()
                await late_done.wait()
        return 0  # pragma: no cover - cancelled first

    async def first(port: int) -> None:
        with pytest.raises(DicomNetworkError):
            async with make_scu_ae().associate("127.0.0.1", port, ssl_context=client_ctx) as assoc:
                await assoc.send_c_echo()

    async def late(raw: anyio.abc.ByteStream) -> None:
        try:
            await aborting.wait()  # shutdown() has begun
            proceed.set()
            tls = await TLSStream.wrap(
                raw, hostname="127.0.0.1", ssl_context=client_ctx, standard_compatible=False
            )
            try:
                await tls.send(encode(verification_rq()))
                answered.append(await tls.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
            finally:
                await tls.aclose()
        finally:
            late_done.set()

    with anyio.fail_after(GUARD):
        async with (
            running_server(handlers=[(evt.EVT_C_ECHO, on_echo)], ssl_context=server_ctx) as server,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(first, server.port)
            await running.wait()
            raw = await anyio.connect_tcp("127.0.0.1", server.port)
            tg.start_soon(late, raw)
            await server.shutdown(grace=0)
    assert answered == []


async def test_tls_client_to_plain_server_fails_cleanly(tmp_path: Path) -> None:
    cert, _key = _self_signed(tmp_path)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    async with running_server() as server:
        with anyio.fail_after(GUARD), pytest.raises((DicomNetworkError, OSError, TimeoutError)):
            async with make_scu_ae(acse_timeout=1.0).associate(
                "127.0.0.1", server.port, ssl_context=client_ctx
            ):
                pass
        assert await echo_once(server.port) == 0


def _dimse_recorders() -> tuple[dict[str, list[evt.Event]], list[evt.EventHandlerType]]:
    sink: dict[str, list[evt.Event]] = {"sent": [], "recv": []}
    handlers: list[evt.EventHandlerType] = [
        (evt.EVT_DIMSE_SENT, lambda e: sink["sent"].append(e)),
        (evt.EVT_DIMSE_RECV, lambda e: sink["recv"].append(e)),
    ]
    return sink, handlers


async def test_dimse_recv_events() -> None:
    server_sink, server_handlers = _dimse_recorders()
    client_sink, client_handlers = _dimse_recorders()
    async with running_server(handlers=server_handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_handlers
            ) as assoc:
                await assoc.send_c_echo()
    assert len(server_sink["recv"]) == 1 and len(client_sink["recv"]) == 1
    assert server_sink["recv"][0].message is not None
    assert client_sink["recv"][0].message is not None


async def test_dimse_sent_events() -> None:
    """API.md lists EVT_DIMSE_SENT among the notification events."""
    server_sink, server_handlers = _dimse_recorders()
    client_sink, client_handlers = _dimse_recorders()
    async with running_server(handlers=server_handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_handlers
            ) as assoc:
                await assoc.send_c_echo()
    assert len(client_sink["sent"]) == 1  # the C-ECHO-RQ
    assert len(server_sink["sent"]) == 1  # the C-ECHO-RSP
    assert client_sink["sent"][0].message is not None


async def test_explicit_message_id() -> None:
    seen: list[int | None] = []
    handlers = [(evt.EVT_C_ECHO, lambda e: seen.append(e.message_id) or 0)]
    async with running_server(handlers=handlers) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                status = await assoc.send_c_echo(msg_id=4242)
                with pytest.raises(ValueError):
                    await assoc.send_c_echo(msg_id=70000)
    assert status.MessageIDBeingRespondedTo == 4242
    assert seen == [4242]


async def test_server_ae_title_and_contexts_override() -> None:
    scp = make_scp_ae("AE_TITLE", require_called_aet=True)
    scp.add_supported_context(CT)
    scu = make_scu_ae()
    scu.add_requested_context(CT)
    async with running_server(
        scp, ae_title="SERVER_TITLE", contexts=[build_context(sop_class.Verification)]
    ) as server:
        with anyio.fail_after(GUARD):
            with pytest.raises(AssociationRejected):
                async with scu.associate("127.0.0.1", server.port, ae_title="AE_TITLE"):
                    pass
            async with scu.associate("127.0.0.1", server.port, ae_title="SERVER_TITLE") as assoc:
                assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [
                    sop_class.Verification
                ]
                assert (await assoc.send_c_echo()).Status == 0


async def test_rejection_event_order_on_client() -> None:
    rec = Recorder()
    scp = make_scp_ae(require_calling_aet=["SOMEONE"])
    async with running_server(scp) as server:
        with anyio.fail_after(GUARD), pytest.raises(AssociationRejected):
            async with make_scu_ae().associate("127.0.0.1", server.port, evt_handlers=rec.handlers):
                pass
    assert rec.names == ["EVT_CONN_OPEN", "EVT_REQUESTED", "EVT_REJECTED", "EVT_CONN_CLOSE"]


# ---------------------------------------------------------------------------
# Using associations from several tasks


async def test_cancelled_operation_leaves_association_usable() -> None:
    gate = anyio.Event()
    entered = anyio.Event()
    calls = 0

    async def on_echo(event: evt.Event) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            with anyio.fail_after(GUARD):
                await gate.wait()
        return 0x0000

    async with running_server(handlers=[(evt.EVT_C_ECHO, on_echo)]) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                async with anyio.create_task_group() as tg:

                    async def first() -> None:
                        with anyio.CancelScope() as scope:
                            tg.start_soon(_cancel_when, entered, scope)
                            await assoc.send_c_echo(msg_id=1)
                        assert scope.cancelled_caught

                    tg.start_soon(first)
                await entered.wait()
                assert assoc.is_established
                gate.set()  # the late response to message 1 is dropped
                status = await assoc.send_c_echo(msg_id=2)
                assert status.MessageIDBeingRespondedTo == 2
                assert status.Status == 0
    assert calls == 2


async def _cancel_when(flag: anyio.Event, scope: anyio.CancelScope) -> None:
    await flag.wait()
    scope.cancel()


async def test_server_sends_c_echo_to_client_with_role_selection() -> None:
    """With both roles negotiated for Verification, the acceptor's task may
    invoke a C-ECHO on the requestor over the same association."""
    scp = make_scp_ae()
    scp.add_supported_context(sop_class.Verification, scu_role=True, scp_role=True)
    established: list[Any] = []
    ready = anyio.Event()

    def on_established(event: evt.Event) -> None:
        established.append(event.assoc)
        ready.set()

    client_seen: list[int | None] = []

    def client_on_echo(event: evt.Event) -> int:
        client_seen.append(event.message_id)
        return 0x0000

    role = build_role(sop_class.Verification, scu_role=True, scp_role=True)
    async with running_server(scp, [(evt.EVT_ESTABLISHED, on_established)]) as server:
        with anyio.fail_after(GUARD):
            async with make_scu_ae().associate(
                "127.0.0.1",
                server.port,
                ext_neg=[role],
                evt_handlers=[(evt.EVT_C_ECHO, client_on_echo)],
            ) as assoc:
                await ready.wait()
                server_assoc = established[0]
                assert [(cx.as_scu, cx.as_scp) for cx in server_assoc.accepted_contexts] == [
                    (True, True)
                ]
                # both directions at once
                results: list[int] = []

                async def from_server() -> None:
                    results.append(int((await server_assoc.send_c_echo()).Status))

                async def from_client() -> None:
                    results.append(int((await assoc.send_c_echo()).Status))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(from_server)
                    tg.start_soon(from_client)
    assert results == [0, 0]
    assert len(client_seen) == 1


async def test_serve_in_task_group_cancel_aborts_associations() -> None:
    """``server = await tg.start(ae.serve, ...)``; cancelling the serving task
    aborts the open associations (their peers see an A-ABORT)."""
    scp = make_scp_ae()
    client_rec = Recorder()
    server_scope = anyio.CancelScope()

    async def run_server(*, task_status: Any) -> None:
        with server_scope:
            await scp.serve(("127.0.0.1", 0), task_status=task_status)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            server = await tg.start(run_server)
            assert server.port > 0
            async with make_scu_ae().associate(
                "127.0.0.1", server.port, evt_handlers=client_rec.handlers
            ) as assoc:
                assert (await assoc.send_c_echo()).Status == 0
                assert len(scp.active_associations) == 1
                server_scope.cancel()
                await client_rec.wait_for("EVT_ABORTED")
                with pytest.raises(AssociationAborted):
                    await assoc.send_c_echo()
    assert scp.active_associations == []
    with anyio.fail_after(GUARD), pytest.raises(OSError):  # the listener is closed
        async with make_scu_ae().associate("127.0.0.1", server.port):
            pass


async def test_ae_active_associations() -> None:
    scu = make_scu_ae()
    async with running_server() as server:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", server.port) as assoc:
                assert scu.active_associations == [assoc]
                assert len(server.active_associations) == 1
        assert scu.active_associations == []


@pytest.mark.parametrize("msg_id", [0, 1, 0xFFFF])
async def test_every_message_id_gets_its_response(msg_id: int) -> None:
    """0 and 65535 are Message IDs like any other (PS3.7 E.1): the response is routed."""
    seen: list[int] = []

    def on_echo(event: evt.Event) -> int:
        seen.append(event.message_id)
        return 0

    with anyio.fail_after(GUARD):
        async with (
            running_server(make_scp_ae(), [(evt.EVT_C_ECHO, on_echo)]) as server,
            make_scu_ae().associate("127.0.0.1", server.port, ae_title="TEST_SCP") as assoc,
        ):
            rsp = await assoc.send_c_echo(msg_id=msg_id)
            assert rsp.Status == 0 and rsp.MessageIDBeingRespondedTo == msg_id
            assert (await assoc.send_c_echo()).Status == 0
    assert seen[0] == msg_id


async def test_a_pdu_received_in_pieces_is_acknowledged_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read that leaves a PDU incomplete asks for TCP_QUICKACK on the
    connection's socket, a whole PDU does not: a peer without TCP_NODELAY
    (dcmtk's tools by default) that writes a PDU in pieces holds each next
    piece until the last is acknowledged (Nagle), and a delayed ACK made that
    about 44 ms per C-STORE from storescu, which took 8.9 s for 200 stores."""
    import aiodicom._transport as transport_module
    import aiodicom.association as association_module
    from aiodicom.pdu import encode

    from .conftest import raw_connection, verification_rq

    asked: list[Any] = []
    pieces = anyio.Event()
    real = transport_module._quickack

    def quickack(sock: Any) -> None:
        asked.append(sock.getsockname()[1])
        pieces.set()
        real(sock)

    # the asyncio stream's protocol asks; on trio, the association's reader
    monkeypatch.setattr(transport_module, "_quickack", quickack)
    monkeypatch.setattr(association_module, "_quickack", quickack)
    scp = make_scp_ae()
    scp.add_supported_context(sop_class.Verification)
    async with running_server(scp) as server, raw_connection(server.port) as peer:
        rq = encode(verification_rq())
        await peer.send(rq)  # whole
        assert isinstance(await peer.read_pdu(), AAssociateAC)
        assert asked == []
        await peer.send(encode(AReleaseRQ())[:3])  # a header in part
        with anyio.fail_after(GUARD):
            await pieces.wait()
        await peer.send(encode(AReleaseRQ())[3:])
        assert isinstance(await peer.read_pdu(), AReleaseRP)
    assert asked == [server.port]  # once, on the connection's own socket


@pytest.mark.parametrize("end", ["release", "abort"])
async def test_an_ended_association_is_freed_without_the_cycle_collector(end: str) -> None:
    """Once an association has ended, its objects (with the receive buffers
    of its connection, 256 KB or more) are freed by reference counting
    alone, on both sides: none of it waits in a reference cycle for the
    cycle collector, which may come long after. A server taking many
    associations grew by their buffers meanwhile (to twice its size over
    8,000 stores on 160 associations, 20 at a time)."""
    import gc
    import weakref

    refs: list[weakref.ref[Any]] = []

    def on_open(event: evt.Event) -> None:
        refs.append(weakref.ref(event.assoc))

    handlers = [(evt.EVT_CONN_OPEN, on_open)]
    gc.collect()
    gc.disable()
    try:
        async with running_server(handlers=handlers) as server:
            with anyio.fail_after(GUARD):
                async with make_scu_ae().associate("127.0.0.1", server.port) as assoc:
                    refs.append(weakref.ref(assoc))
                    assert (await assoc.send_c_echo()).Status == 0
                    if end == "abort":
                        await assoc.abort()
                del assoc
                await server._until(
                    lambda: not server.active_associations
                )  # the server's association is gone
            assert len(refs) == 2
            assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()
