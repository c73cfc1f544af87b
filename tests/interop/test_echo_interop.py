"""Interop of the foundation (association negotiation + C-ECHO) with real peers.

aiodicom runs in the test process (asyncio backend); the peer -- dcmtk's
``echoscu``/``storescp`` or ``tests/peers/pynetdicom_peer.py`` -- runs as a
subprocess on 127.0.0.1. Both directions are covered:

- dcmtk ``echoscu``        -> aiodicom SCP
- aiodicom SCU             -> dcmtk ``storescp``
- pynetdicom SCU           -> aiodicom SCP   (user identity, role selection, abort)
- aiodicom SCU             -> pynetdicom SCP (user identity, roles, async ops, abort)

The aiodicom SCP must keep serving while the peer runs, so every blocking call
(a peer subprocess run to completion, a wait on the peer's JSON events) goes
through ``anyio.to_thread.run_sync``; every test body is bounded by
``anyio.fail_after`` and every subprocess by its own timeout.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from _aio import Changes, in_thread, wait_no_associations
from _aio import deadline as _deadline
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aiodicom import AE, Association, build_role, evt, sop_class
from aiodicom.errors import AssociationAborted, AssociationRejected
from aiodicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    UserIdentityNegotiation,
)

HOST = "127.0.0.1"
VERIFICATION = str(sop_class.Verification)
CT = str(sop_class.CTImageStorage)
MR = str(sop_class.MRImageStorage)
SC = str(sop_class.SecondaryCaptureImageStorage)
OUR_SYNTAXES = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)}

#: Bound on one test body (the peers have their own, shorter, timeouts).
TEST_DEADLINE = 45.0


def deadline(seconds: float = TEST_DEADLINE) -> Any:
    """A hang guard on one test body (this module's bound)."""
    return _deadline(seconds)


#: Bound on one wait for the SCP's side (a hang guard).
WAIT = 5.0


#: Bound on one peer subprocess run to completion.
PEER_TIMEOUT = 20.0

# --------------------------------------------------------------------------- helpers


def by_abstract(contexts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["abstract_syntax"]: c for c in contexts}


def one(events: list[dict[str, Any]], name: str, **match: Any) -> dict[str, Any]:
    found = [
        e for e in events if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, f"expected exactly one {name!r} {match} in {events}"
    return found[0]


@dataclass
class SCPLog:
    """What the aiodicom SCP's handlers saw."""

    requested: list[Association] = field(default_factory=list)
    accepted: list[Association] = field(default_factory=list)
    rejected: list[Association] = field(default_factory=list)
    released: list[Association] = field(default_factory=list)
    aborted: list[Association] = field(default_factory=list)
    echoes: list[dict[str, Any]] = field(default_factory=list)
    user_ids: list[dict[str, Any]] = field(default_factory=list)
    #: (result, source, reason) of every A-ASSOCIATE-RJ the SCP sent (EVT_PDU_SENT)
    rejections_sent: list[tuple[int, int, int]] = field(default_factory=list)
    #: Signalled after each record: what wait_until() awaits.
    changes: Changes = field(default_factory=Changes, repr=False, compare=False)

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self._recorder(self.requested)),
            (evt.EVT_ACCEPTED, self._recorder(self.accepted)),
            (evt.EVT_REJECTED, self._recorder(self.rejected)),
            (evt.EVT_RELEASED, self._recorder(self.released)),
            (evt.EVT_ABORTED, self._recorder(self.aborted)),
            (evt.EVT_PDU_SENT, self._on_pdu_sent),
        ]

    def _recorder(self, into: list[Association]) -> Callable[[evt.Event], None]:
        def record(event: evt.Event) -> None:
            into.append(event.assoc)
            self.changes.changed()

        return record

    async def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait until `predicate` holds, re-checked after each record (at most WAIT s)."""
        await self.changes.wait_until(predicate, what, WAIT)

    def _on_pdu_sent(self, event: evt.Event) -> None:
        pdu = event.pdu
        if type(pdu).__name__ == "AAssociateRJ":
            self.rejections_sent.append((pdu.result, pdu.source, pdu.reason))
            self.changes.changed()

    def record_echo(self, event: evt.Event) -> None:
        assert event.context is not None
        self.echoes.append(
            {
                "calling_ae": event.assoc.requestor.ae_title,
                "called_ae": event.assoc.acceptor.ae_title,
                "message_id": event.message_id,
                "abstract_syntax": str(event.context.abstract_syntax),
                "transfer_syntax": str(event.context.transfer_syntax),
            }
        )
        self.changes.changed()

    def echo_handler(self, status: int = 0x0000) -> Any:
        def on_echo(event: evt.Event) -> int:
            self.record_echo(event)
            return status

        return (evt.EVT_C_ECHO, on_echo)


def scp_ae(title: str = "AIOSCP") -> AE:
    ae = AE(ae_title=title)
    ae.add_supported_context(sop_class.Verification)
    ae.acse_timeout = 10.0
    return ae


def scu_ae(title: str = "AIOSCU") -> AE:
    ae = AE(ae_title=title)
    ae.add_requested_context(sop_class.Verification)
    ae.acse_timeout = 10.0
    ae.dimse_timeout = 10.0
    return ae


# =========================================================================== 1.
# dcmtk echoscu -> aiodicom SCP


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("pdu_args", "expected_max_pdu"),
    [((), 16384), (("-pdu", "4096"), 4096), (("--max-pdu", "131072"), 131072)],
    ids=["default-pdu", "pdu-4096", "max-pdu-131072"],
)
async def test_echoscu_to_aiodicom_scp_accepted(run_dcmtk, pdu_args, expected_max_pdu):
    log = SCPLog()
    ae = scp_ae("AIOSCP")
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*log.handlers(), log.echo_handler()]
        ) as server:
            cp = await in_thread(
                run_dcmtk,
                "echoscu",
                "-v",
                "-aet",
                "ECHOSCU",
                "-aec",
                "AIOSCP",
                *pdu_args,
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await log.wait_until(lambda: len(log.released) == 1, "EVT_RELEASED on the SCP")

    out = cp.stdout + cp.stderr
    assert "Received Echo Response (Success)" in out, cp.describe()
    assert "Releasing Association" in out, cp.describe()
    assert len(log.echoes) == 1, log.echoes
    echo = log.echoes[0]
    assert (echo["calling_ae"], echo["called_ae"]) == ("ECHOSCU", "AIOSCP")
    assert echo["abstract_syntax"] == VERIFICATION
    assert echo["transfer_syntax"] in OUR_SYNTAXES
    (assoc,) = log.accepted
    assert assoc.requestor.maximum_length == expected_max_pdu
    assert str(assoc.requestor.implementation_version_name).startswith("OFFIS_DCMTK")
    assert assoc.is_released and not assoc.is_aborted
    assert not log.aborted and not log.rejected


@pytest.mark.anyio
async def test_echoscu_repeat_5_to_aiodicom_scp(run_dcmtk):
    log = SCPLog()
    ae = scp_ae("AIOSCP")
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*log.handlers(), log.echo_handler()]
        ) as server:
            cp = await in_thread(
                run_dcmtk,
                "echoscu",
                "-v",
                "-aet",
                "ECHOSCU",
                "-aec",
                "AIOSCP",
                "--repeat",
                "5",
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await log.wait_until(lambda: len(log.released) == 1, "EVT_RELEASED on the SCP")

    out = cp.stdout + cp.stderr
    # --repeat repeats the C-ECHO within one association
    assert out.count("Received Echo Response (Success)") == 5, cp.describe()
    assert len(log.accepted) == 1
    assert [e["message_id"] for e in log.echoes] == [1, 2, 3, 4, 5], log.echoes
    assert not log.aborted


@pytest.mark.anyio
@pytest.mark.parametrize("handler", ["plain", "async"])
async def test_echoscu_repeat_to_aiodicom_scp_served_inline(run_dcmtk, handler):
    """A plain EVT_C_ECHO handler is answered inline (no worker task) on asyncio;
    an async one by a worker. No PDU-watching handler is bound here: it would
    turn the inline answer off."""
    served: list[str] = []
    released = anyio.Event()

    def record() -> None:
        task = asyncio.current_task()
        worker = task is not None and task.get_name().endswith("._worker")
        served.append("worker" if worker else "inline")

    def on_echo_plain(event: Any) -> int:
        record()
        return 0

    async def on_echo_async(event: Any) -> int:
        record()
        return 0

    on_echo = on_echo_plain if handler == "plain" else on_echo_async
    handlers = [(evt.EVT_C_ECHO, on_echo), (evt.EVT_RELEASED, lambda e: released.set())]
    ae = scp_ae("AIOSCP")
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers) as server:
            cp = await in_thread(
                run_dcmtk,
                "echoscu",
                "-aec",
                "AIOSCP",
                "--repeat",
                "20",
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await released.wait()
    assert served == [{"plain": "inline", "async": "worker"}[handler]] * 20


@pytest.mark.anyio
async def test_echoscu_abort_to_aiodicom_scp(run_dcmtk):
    """echoscu --abort: the echo succeeds, then an A-ABORT: the SCP sees EVT_ABORTED."""
    log = SCPLog()
    ae = scp_ae("AIOSCP")
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*log.handlers(), log.echo_handler()]
        ) as server:
            cp = await in_thread(
                run_dcmtk,
                "echoscu",
                "-v",
                "--abort",
                "-aec",
                "AIOSCP",
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await log.wait_until(lambda: len(log.aborted) == 1, "EVT_ABORTED on the SCP")
            await wait_no_associations(server, "association gone", WAIT)
    assert "Aborting Association" in cp.stdout + cp.stderr, cp.describe()
    assert len(log.echoes) == 1
    assert not log.released


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("configure", "echoscu_args", "reason", "reason_text"),
    [
        (
            lambda ae: setattr(ae, "require_called_aet", True),
            ("-aet", "ECHOSCU", "-aec", "WRONG_AET"),
            7,
            "Called AE Title Not Recognized",
        ),
        (
            lambda ae: setattr(ae, "require_calling_aet", ["ONLY_ME"]),
            ("-aet", "NOT_ME", "-aec", "AIOSCP"),
            3,
            "Calling AE Title Not Recognized",
        ),
    ],
    ids=["called-aet", "calling-aet"],
)
async def test_echoscu_rejected_by_aiodicom_scp(
    run_dcmtk,
    configure,
    echoscu_args,
    reason,
    reason_text,
):
    log = SCPLog()
    ae = scp_ae("AIOSCP")
    configure(ae)
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*log.handlers(), log.echo_handler()]
        ) as server:
            cp = await in_thread(
                run_dcmtk,
                "echoscu",
                "-v",
                *echoscu_args,
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
            await log.wait_until(lambda: len(log.rejected) == 1, "EVT_REJECTED on the SCP")
            await wait_no_associations(server, "rejected conn closed", WAIT)

    assert cp.returncode != 0, cp.describe()
    out = cp.stdout + cp.stderr
    assert "Association Rejected" in out, cp.describe()
    # dcmtk prints the A-ASSOCIATE-RJ's result, source and reason
    assert re.search(r"Result:\s+Rejected Permanent", out), cp.describe()
    assert re.search(r"Source:\s+Service User", out), cp.describe()
    assert reason_text.lower() in out.lower(), cp.describe()
    assert not log.echoes and not log.accepted
    assert log.rejected[0].is_rejected
    assert log.rejections_sent == [(1, 1, reason)]


@pytest.mark.anyio
async def test_echoscu_allowed_calling_aet_is_accepted(run_dcmtk):
    """The positive side of require_calling_aet / require_called_aet."""
    log = SCPLog()
    ae = scp_ae("AIOSCP")
    ae.require_called_aet = True
    ae.require_calling_aet = ["ONLY_ME"]
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*log.handlers(), log.echo_handler()]
        ) as server:
            cp = await in_thread(
                run_dcmtk,
                "echoscu",
                "-v",
                "-aet",
                "ONLY_ME",
                "-aec",
                "AIOSCP",
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
            await log.wait_until(lambda: len(log.released) == 1, "EVT_RELEASED on the SCP")
    assert cp.returncode == 0, cp.describe()
    assert [e["calling_ae"] for e in log.echoes] == ["ONLY_ME"]


@pytest.mark.anyio
async def test_echoscu_many_contexts_and_syntaxes_to_aiodicom_scp(run_dcmtk):
    """echoscu proposing 3 Verification contexts x 38 transfer syntaxes (compressed
    ones first): aiodicom accepts each with one of its own syntaxes."""
    log = SCPLog()
    ae = scp_ae("AIOSCP")
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*log.handlers(), log.echo_handler()]
        ) as server:
            cp = await in_thread(
                run_dcmtk,
                "echoscu",
                "-v",
                "-ppc",
                "3",
                "-pts",
                "38",
                "-aec",
                "AIOSCP",
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await log.wait_until(lambda: len(log.released) == 1, "EVT_RELEASED on the SCP")
    (assoc,) = log.accepted
    assert [c.context_id for c in assoc.accepted_contexts] == [1, 3, 5]
    for cx in assoc.accepted_contexts:
        assert str(cx.abstract_syntax) == VERIFICATION
        assert str(cx.transfer_syntax[0]) in OUR_SYNTAXES
    assert len(log.echoes) == 1
    assert "Received Echo Response (Success)" in cp.stdout + cp.stderr


@pytest.mark.anyio
async def test_echoscu_verification_not_supported_by_aiodicom_scp(run_dcmtk):
    """No Verification context on the SCP: the context is rejected (abstract syntax
    not supported) and echoscu fails without sending a C-ECHO."""
    log = SCPLog()
    ae = AE(ae_title="AIOSCP")
    ae.add_supported_context(CT)
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*log.handlers(), log.echo_handler()]
        ) as server:
            cp = await in_thread(
                run_dcmtk,
                "echoscu",
                "-v",
                "-aec",
                "AIOSCP",
                HOST,
                server.port,
                timeout=PEER_TIMEOUT,
            )
            await wait_no_associations(server, "association gone", WAIT)
    assert cp.returncode != 0, cp.describe()
    assert "No Acceptable Presentation Contexts" in cp.stdout + cp.stderr, cp.describe()
    assert not log.echoes
    (assoc,) = log.accepted
    assert assoc.accepted_contexts == []
    assert [(str(c.abstract_syntax), c.result) for c in assoc.rejected_contexts] == [
        (VERIFICATION, 3),
    ]


@pytest.mark.anyio
async def test_parallel_echoscu_to_aiodicom_scp(run_dcmtk):
    """Several echoscu processes at once: the SCP serves them concurrently."""
    log = SCPLog()
    ae = scp_ae("AIOSCP")
    n = 4
    results: list[Any] = []
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*log.handlers(), log.echo_handler()]
        ) as server:

            async def one_echoscu(i: int) -> None:
                results.append(
                    await in_thread(
                        run_dcmtk,
                        "echoscu",
                        "-aet",
                        f"ECHO{i}",
                        "-aec",
                        "AIOSCP",
                        "--repeat",
                        "3",
                        HOST,
                        server.port,
                        timeout=PEER_TIMEOUT,
                    )
                )

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one_echoscu, i)
            await log.wait_until(lambda: len(log.released) == n, f"{n} x EVT_RELEASED")
    assert [cp.returncode for cp in results] == [0] * n, "\n".join(map(str, results))
    assert sorted(e["calling_ae"] for e in log.echoes) == sorted(
        f"ECHO{i}" for i in range(n) for _ in range(3)
    )


# =========================================================================== 2.
# aiodicom SCU -> dcmtk storescp


@pytest.mark.anyio
async def test_aiodicom_scu_echo_to_dcmtk_storescp(dcmtk_storescp_factory):
    storescp = dcmtk_storescp_factory("-v")
    ae = scu_ae("AIOSCU")
    with deadline():
        async with ae.associate(HOST, storescp.port, ae_title=storescp.ae_title) as assoc:
            statuses = [int((await assoc.send_c_echo()).Status) for _ in range(4)]
            contexts = assoc.accepted_contexts
            peer = assoc.acceptor
        assert statuses == [0, 0, 0, 0]
        assert assoc.is_released and not assoc.is_aborted

        (cx,) = contexts
        assert str(cx.abstract_syntax) == VERIFICATION
        assert str(cx.transfer_syntax[0]) in OUR_SYNTAXES
        assert cx.as_scu and not cx.as_scp
        assert str(peer.implementation_version_name).startswith("OFFIS_DCMTK")
        assert peer.maximum_length == 16384  # storescp's default

        # storescp saw a clean release and keeps serving: a second association works
        await in_thread(_wait_text, storescp.process, "Association Release", 10.0)
        assert storescp.process.running, storescp.process.describe()
        async with ae.associate(HOST, storescp.port, ae_title=storescp.ae_title) as assoc2:
            assert int((await assoc2.send_c_echo()).Status) == 0
        assert assoc2.is_released
        await in_thread(_wait_text, storescp.process, "Association Release", 10.0, count=2)
    out = storescp.process.stdout + storescp.process.stderr
    assert out.count("Received Echo Request") == 5, storescp.process.describe()
    assert "Abort" not in out, storescp.process.describe()
    assert storescp.process.running


@pytest.mark.anyio
async def test_aiodicom_scu_concurrent_associations_to_dcmtk_storescp(dcmtk_storescp):
    ae = scu_ae("AIOSCU")
    statuses: list[int] = []

    async def one_association() -> None:
        async with ae.associate(
            HOST, dcmtk_storescp.port, ae_title=dcmtk_storescp.ae_title
        ) as assoc:
            for _ in range(3):
                statuses.append(int((await assoc.send_c_echo()).Status))

    with deadline():
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one_association)
    assert statuses == [0] * 12
    assert not ae.active_associations
    assert dcmtk_storescp.process.running


@pytest.mark.anyio
async def test_aiodicom_scu_rejected_by_dcmtk_storescp_refuse(dcmtk_storescp_factory):
    storescp = dcmtk_storescp_factory("--refuse")
    ae = scu_ae("AIOSCU")
    with deadline(), pytest.raises(AssociationRejected) as info:
        async with ae.associate(HOST, storescp.port, ae_title=storescp.ae_title):
            pytest.fail("storescp --refuse should have rejected the association")
    exc = info.value
    # rejected-permanent, service-user, no reason given
    assert (exc.result, exc.source, exc.reason) == (1, 1, 1)
    assert not ae.active_associations
    assert storescp.process.running


@pytest.mark.anyio
async def test_aiodicom_scu_small_max_pdu_to_dcmtk_storescp(dcmtk_storescp_factory):
    # storescp also receives at most 4096: both directions at the minimum dcmtk allows
    storescp = dcmtk_storescp_factory("-d", "-pdu", "4096")
    ae = scu_ae("AIOSCU")
    with deadline():
        async with ae.associate(
            HOST,
            storescp.port,
            ae_title=storescp.ae_title,
            max_pdu=4096,
        ) as assoc:
            statuses = [int((await assoc.send_c_echo()).Status) for _ in range(3)]
            assert assoc.acceptor.maximum_length == 4096
            assert assoc.requestor.maximum_length == 4096
        assert statuses == [0, 0, 0]
        assert assoc.is_released
        await in_thread(_wait_text, storescp.process, "Association Release", 10.0)
    out = storescp.process.stdout + storescp.process.stderr
    # dcmtk -d dumps the A-ASSOCIATE-RQ it received: our maximum length
    assert re.search(r"Their Max PDU Receive Size:\s+4096", out), storescp.process.describe()
    assert re.search(r"Our Implementation Class UID:", out), storescp.process.describe()
    assert AE().implementation_class_uid in out, storescp.process.describe()


def _wait_text(process: Any, text: str, timeout: float, count: int = 1) -> None:
    """Wait until `text` appeared `count` times on the process's stdout + stderr
    (blocking: run it in a thread). storescp --fork's children write late.
    Polled: that output is another process's, which sends no event here."""
    end = time.monotonic() + timeout
    while (process.stdout + process.stderr).count(text) < count:
        if time.monotonic() > end:
            pytest.fail(
                f"{text!r} not seen {count} times within {timeout} s\n{process.describe()}",
                pytrace=False,
            )
        time.sleep(0.02)


# =========================================================================== 3.
# pynetdicom SCU -> aiodicom SCP


@pytest.mark.anyio
async def test_pynetdicom_scu_echo_to_aiodicom_scp(run_pynetdicom_scu):
    log = SCPLog()
    ae = scp_ae("AIOSCP")
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*log.handlers(), log.echo_handler()]
        ) as server:
            cp, events = await in_thread(
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--called",
                "AIOSCP",
                "--calling",
                "PYSCU",
                "--echo",
                "3",
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await log.wait_until(lambda: len(log.released) == 1, "EVT_RELEASED on the SCP")

    assoc_ev = one(events, "association", status="accepted")
    assert assoc_ev["peer_implementation_class_uid"] == str(ae.implementation_class_uid)
    assert assoc_ev["peer_implementation_version_name"] == ae.implementation_version_name
    assert assoc_ev["peer_max_pdu"] == ae.maximum_pdu_size
    (cx,) = assoc_ev["contexts"]
    assert cx["abstract_syntax"] == VERIFICATION
    assert cx["transfer_syntax"] in OUR_SYNTAXES
    assert (cx["as_scu"], cx["as_scp"]) == (True, False)
    assert [(e["message_id"], e["status"]) for e in events if e["event"] == "c_echo"] == [
        (1, 0),
        (2, 0),
        (3, 0),
    ]
    assert [e["event"] for e in events][-2:] == ["released", "exit"]

    assert [(e["calling_ae"], e["message_id"]) for e in log.echoes] == [
        ("PYSCU", 1),
        ("PYSCU", 2),
        ("PYSCU", 3),
    ]
    (assoc,) = log.accepted
    assert str(assoc.requestor.implementation_version_name).startswith("PYNETDICOM")
    assert assoc.is_released and not log.aborted


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("identity", "expected", "server_response", "expected_response"),
    [
        ("username:alice", (1, b"alice", None, False), None, None),
        ("password:bob:s3cret", (2, b"bob", b"s3cret", False), None, None),
        # types 1/2 with a positive response requested: an empty server response
        ("username:carol:positive", (1, b"carol", None, True), None, ""),
        (
            "jwt:header.payload.sig:positive",
            (5, b"header.payload.sig", None, True),
            b"server-token",
            "server-token",
        ),
        ("kerberos:ticket:positive", (3, b"ticket", None, True), b"krb-reply", "krb-reply"),
        # no positive response requested: none sent, whatever the handler says
        ("saml:assertion", (4, b"assertion", None, False), b"ignored", None),
    ],
    ids=[
        "type1",
        "type2",
        "type1-positive",
        "type5-positive",
        "type3-positive",
        "type4-no-positive",
    ],
)
async def test_pynetdicom_scu_user_identity_to_aiodicom_scp(
    run_pynetdicom_scu,
    identity,
    expected,
    server_response,
    expected_response,
):
    log = SCPLog()

    def on_user_id(event: evt.Event) -> tuple[bool, bytes | None]:
        log.user_ids.append(
            {
                "type": event.user_id_type,
                "primary": event.primary_field,
                "secondary": event.secondary_field,
                "positive": event.assoc.requestor.user_identity.positive_response_requested,
            }
        )
        return True, server_response

    ae = scp_ae("AIOSCP")
    handlers = [*log.handlers(), log.echo_handler(), (evt.EVT_USER_ID, on_user_id)]
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers) as server:
            cp, events = await in_thread(
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--called",
                "AIOSCP",
                "--echo",
                "1",
                "--user-identity",
                identity,
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await log.wait_until(lambda: len(log.released) == 1, "EVT_RELEASED on the SCP")

    assert len(log.user_ids) == 1, log.user_ids
    seen = log.user_ids[0]
    id_type, primary, secondary, positive = expected
    assert seen["type"] == id_type
    assert bytes(seen["primary"]) == primary
    assert (bytes(seen["secondary"]) if seen["secondary"] else None) == secondary
    assert seen["positive"] is positive
    assoc_ev = one(events, "association", status="accepted")
    assert assoc_ev["user_identity_response"] == expected_response, assoc_ev
    assert one(events, "c_echo")["status"] == 0


@pytest.mark.anyio
async def test_pynetdicom_scu_user_identity_refused_by_aiodicom_scp(run_pynetdicom_scu):
    log = SCPLog()
    seen: list[tuple[int | None, bytes | None, bytes | None]] = []

    def on_user_id(event: evt.Event) -> tuple[bool, bytes | None]:
        seen.append((event.user_id_type, event.primary_field, event.secondary_field))
        return False, None

    ae = scp_ae("AIOSCP")
    handlers = [*log.handlers(), log.echo_handler(), (evt.EVT_USER_ID, on_user_id)]
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers) as server:
            cp, events = await in_thread(
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--called",
                "AIOSCP",
                "--echo",
                "1",
                "--user-identity",
                "password:mallory:hunter2",
                timeout=PEER_TIMEOUT,
            )
            await log.wait_until(lambda: len(log.rejected) == 1, "EVT_REJECTED on the SCP")

    assert cp.returncode == 1, cp.describe()
    rj = one(events, "association", status="rejected")
    # rejected-transient, ACSE service provider, no reason given (as pynetdicom does)
    assert (rj["result"], rj["source"], rj["reason"]) == (2, 2, 1), rj
    assert [(t, bytes(p), bytes(s)) for t, p, s in seen] == [(2, b"mallory", b"hunter2")]
    assert not log.accepted and not log.echoes
    assert log.rejections_sent == [(2, 2, 1)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("proposed", "bound", "expected"),
    [((5, 3), None, [3, 5]), ((0, 0), None, [64, 64]), ((5, 3), (2, 1), [2, 1])],
    ids=["capped-by-the-peer", "unlimited-capped-at-64", "by-evt-async-ops"],
)
async def test_pynetdicom_scu_async_ops_window_to_aiodicom_scp(
    run_pynetdicom_scu, proposed, bound, expected
):
    """pynetdicom proposes an Asynchronous Operations Window (PS3.7 D.3.3.3):
    the aiodicom SCP answers one, invoking at most what the requestor
    performs and performing at most what it invokes (or what EVT_ASYNC_OPS
    says), and the association serves echoes. An unlimited window (0) is
    answered with aiodicom's own limit, MAX_ASYNC_WINDOW (64)."""
    log = SCPLog()
    asked: list[tuple[int, int]] = []

    def on_async_ops(event: evt.Event) -> tuple[int, int]:
        asked.append((event.invoked, event.performed))
        assert bound is not None
        return bound

    handlers = [*log.handlers(), log.echo_handler()]
    if bound is not None:
        handlers.append((evt.EVT_ASYNC_OPS, on_async_ops))
    ae = scp_ae("AIOSCP")
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers) as server:
            cp, events = await in_thread(
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--called",
                "AIOSCP",
                "--echo",
                "2",
                "--async-ops",
                *map(str, proposed),
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await log.wait_until(lambda: len(log.released) == 1, "EVT_RELEASED on the SCP")
    assoc_ev = one(events, "association", status="accepted")
    assert assoc_ev["async_ops"] == expected
    assert [e["status"] for e in events if e["event"] == "c_echo"] == [0, 0]
    assert asked == ([tuple(proposed)] if bound is not None else [])
    (assoc,) = log.accepted
    assert assoc.requestor.asynchronous_operations == tuple(proposed)


@pytest.mark.anyio
async def test_pynetdicom_scu_role_selection_to_aiodicom_scp(run_pynetdicom_scu):
    log = SCPLog()
    ae = scp_ae("AIOSCP")
    ae.add_supported_context(CT, scu_role=True, scp_role=True)
    ae.add_supported_context(MR, scu_role=True, scp_role=True)
    ae.add_supported_context(SC)  # roles None: a proposal gets the default roles
    with deadline():
        async with ae.start_server(
            (HOST, 0), evt_handlers=[*log.handlers(), log.echo_handler()]
        ) as server:
            cp, events = await in_thread(
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--called",
                "AIOSCP",
                "--echo",
                "1",
                "--role",
                f"{CT}:1:1",
                "--role",
                f"{MR}:0:1",
                "--role",
                f"{SC}:1:1",
                timeout=PEER_TIMEOUT,
            )
            assert cp.returncode == 0, cp.describe()
            await log.wait_until(lambda: len(log.released) == 1, "EVT_RELEASED on the SCP")

    assoc_ev = one(events, "association", status="accepted")
    # the role selection items we returned: none for SC (default roles)
    assert sorted(assoc_ev["roles"], key=lambda r: r["sop_class_uid"]) == [
        {"sop_class_uid": CT, "scu_role": True, "scp_role": True},
        {"sop_class_uid": MR, "scu_role": False, "scp_role": True},
    ]
    theirs = {
        uid: (c["as_scu"], c["as_scp"]) for uid, c in by_abstract(assoc_ev["contexts"]).items()
    }
    assert theirs == {
        VERIFICATION: (True, False),
        CT: (True, True),
        MR: (False, True),
        SC: (True, False),  # default: the requestor is the SCU
    }
    (assoc,) = log.accepted
    ours = {str(c.abstract_syntax): (c.as_scu, c.as_scp) for c in assoc.accepted_contexts}
    # the acceptor's roles are the mirror of the requestor's
    assert ours == {uid: (scp, scu) for uid, (scu, scp) in theirs.items()}
    assert {str(uid) for uid in assoc.requestor.role_selection} == {CT, MR, SC}


@pytest.mark.anyio
async def test_pynetdicom_scu_aborted_by_aiodicom_scp_echo_handler(run_pynetdicom_scu):
    log = SCPLog()
    calls: list[int | None] = []

    async def abort_on_echo(event: evt.Event) -> int:
        calls.append(event.message_id)
        await event.assoc.abort()
        return 0x0000

    ae = scp_ae("AIOSCP")
    handlers = [*log.handlers(), (evt.EVT_C_ECHO, abort_on_echo)]
    with deadline():
        async with ae.start_server((HOST, 0), evt_handlers=handlers) as server:
            cp, events = await in_thread(
                # One echo, short timeouts: pynetdicom wakes the pending C-ECHO on the
                # A-ABORT (AA-3) before its reactor thread clears is_established, so
                # a second echo (or a release) may be attempted and wait a timeout.
                run_pynetdicom_scu,
                "--port",
                server.port,
                "--called",
                "AIOSCP",
                "--echo",
                "1",
                "--dimse-timeout",
                "5",
                "--acse-timeout",
                "5",
                timeout=PEER_TIMEOUT,
            )
            await log.wait_until(lambda: len(log.aborted) == 1, "EVT_ABORTED on the SCP")
            await wait_no_associations(server, "association gone", WAIT)

    assert cp.returncode == 2, cp.describe()
    assert calls == [1]
    one(events, "association", status="accepted")
    echo = one(events, "c_echo", message_id=1)
    assert echo["status"] is None  # no response: the association was aborted
    aborted = one(events, "aborted")
    assert (aborted["by"], aborted["source"]) == ("peer", 0), aborted
    assert not log.released


# =========================================================================== 4.
# aiodicom SCU -> pynetdicom SCP
#
# The pynetdicom SCP is started (blocking, before any aiodicom task runs) by the
# pynetdicom_scp fixture; waits on its JSON events run in a worker thread.


@pytest.mark.anyio
async def test_aiodicom_scu_echo_to_pynetdicom_scp(pynetdicom_scp):
    scp = pynetdicom_scp("--require-called-aet", ae_title="PYSCP")
    ae = scu_ae("AIOSCU")
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title="PYSCP") as assoc:
            statuses = [int((await assoc.send_c_echo()).Status) for _ in range(3)]
            (cx,) = assoc.accepted_contexts
            peer = assoc.acceptor
        assert assoc.is_released and not assoc.is_aborted
        await in_thread(scp.wait_for_event, "released")

    assert statuses == [0, 0, 0]
    assert str(cx.abstract_syntax) == VERIFICATION
    assert str(cx.transfer_syntax[0]) in OUR_SYNTAXES
    assert (cx.as_scu, cx.as_scp) == (True, False)
    assert str(peer.implementation_version_name).startswith("PYNETDICOM")
    assert peer.maximum_length == 16382  # pynetdicom's default

    rq = one(scp.events(), "requested")
    assert (rq["calling_ae"], rq["called_ae"]) == ("AIOSCU", "PYSCP")
    assert rq["implementation_class_uid"] == str(ae.implementation_class_uid)
    assert rq["implementation_version_name"] == ae.implementation_version_name
    assert rq["max_pdu"] == ae.maximum_pdu_size == 262_144
    assert rq["user_identity"] is None and rq["roles"] == []
    assert rq["async_ops"] == [1, 1]
    (rcx,) = rq["requested_contexts"]
    assert rcx["abstract_syntax"] == VERIFICATION
    assert rcx["transfer_syntaxes"] == [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]
    acc = one(scp.events(), "accepted")
    assert by_abstract(acc["contexts"])[VERIFICATION]["transfer_syntax"] == str(
        cx.transfer_syntax[0]
    )
    assert [e["message_id"] for e in scp.events("c_echo", calling_ae="AIOSCU")] == [1, 2, 3]
    assert not scp.events("aborted")


@pytest.mark.anyio
async def test_aiodicom_scu_small_max_pdu_to_pynetdicom_scp(pynetdicom_scp):
    scp = pynetdicom_scp("--max-pdu", "4096")
    ae = scu_ae("AIOSCU")
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title=scp.ae_title, max_pdu=4096) as assoc:
            assert int((await assoc.send_c_echo()).Status) == 0
            assert assoc.acceptor.maximum_length == 4096
        assert assoc.is_released
        await in_thread(scp.wait_for_event, "released")
    assert one(scp.events(), "requested")["max_pdu"] == 4096


def _identity(
    id_type: int, primary: bytes, secondary: bytes | None, positive: bool
) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = id_type
    item.primary_field = primary
    item.secondary_field = secondary
    item.positive_response_requested = positive
    return item


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("id_type", "primary", "secondary", "positive", "expected_response"),
    [
        (1, b"alice", None, False, None),
        (2, b"bob", b"s3cret", False, None),
        (2, b"bob", b"s3cret", True, None),  # pynetdicom answers types 1/2 with nothing
        (3, b"kerberos-ticket", None, True, b"welcome"),
        (4, b"<saml:Assertion/>", None, True, b"welcome"),
        (5, b"header.payload.sig", None, True, b"welcome"),
        (5, b"header.payload.sig", None, False, None),
    ],
    ids=[
        "type1",
        "type2",
        "type2-positive",
        "type3-positive",
        "type4-positive",
        "type5-positive",
        "type5-no-positive",
    ],
)
async def test_aiodicom_scu_user_identity_to_pynetdicom_scp(
    pynetdicom_scp,
    id_type,
    primary,
    secondary,
    positive,
    expected_response,
):
    scp = pynetdicom_scp("--user-identity-response", "welcome")
    ae = scu_ae("AIOSCU")
    item = _identity(id_type, primary, secondary, positive)
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title=scp.ae_title, ext_neg=[item]) as assoc:
            assert int((await assoc.send_c_echo()).Status) == 0
            response = assoc.acceptor.user_identity
        await in_thread(scp.wait_for_event, "released")

    if expected_response is None:
        assert response is None or not response.server_response, response
    else:
        assert response is not None
        assert response.server_response == expected_response
    # The secondary field is always on the wire (length 0 when absent):
    # pynetdicom reports an absent one as "".
    want_secondary = "" if secondary is None else secondary.decode("latin-1")
    sent = one(scp.events(), "requested")["user_identity"]
    assert (
        sent["type"],
        sent["primary"],
        sent["secondary"],
        sent["positive_response_requested"],
    ) == (
        id_type,
        primary.decode("latin-1"),
        want_secondary,
        positive,
    )
    uid = one(scp.events(), "user_id")
    assert (uid["type"], uid["primary"], uid["secondary"], uid["authorised"]) == (
        id_type,
        primary.decode("latin-1"),
        want_secondary,
        True,
    )


@pytest.mark.anyio
async def test_aiodicom_scu_user_rejected_by_pynetdicom_scp(pynetdicom_scp):
    scp = pynetdicom_scp("--reject-user", "mallory")
    ae = scu_ae("AIOSCU")
    item = _identity(2, b"mallory", b"hunter2", False)
    with deadline():
        with pytest.raises(AssociationRejected) as info:
            async with ae.associate(HOST, scp.port, ae_title=scp.ae_title, ext_neg=[item]):
                pytest.fail("the association should have been rejected")
        await in_thread(scp.wait_for_event, "rejected")
    exc = info.value
    assert (exc.result, exc.source, exc.reason) == (2, 2, 1)
    uid = one(scp.events(), "user_id")
    assert (uid["type"], uid["primary"], uid["secondary"], uid["authorised"]) == (
        2,
        "mallory",
        "hunter2",
        False,
    )
    assert not scp.events("c_echo")
    assert not ae.active_associations


@pytest.mark.anyio
async def test_aiodicom_scu_wrong_called_aet_rejected_by_pynetdicom_scp(pynetdicom_scp):
    scp = pynetdicom_scp("--require-called-aet", ae_title="RIGHT")
    ae = scu_ae("AIOSCU")
    with deadline():
        with pytest.raises(AssociationRejected) as info:
            async with ae.associate(HOST, scp.port, ae_title="WRONG"):
                pytest.fail("the association should have been rejected")
        rj = (await in_thread(scp.wait_for_event, "rejected"))[0]
    exc = info.value
    # rejected-permanent, service-user, called AE title not recognised
    assert (exc.result, exc.source, exc.reason) == (1, 1, 7)
    assert (rj["called_ae"], rj["result"], rj["source"], rj["reason"]) == ("WRONG", 1, 1, 7)


@pytest.mark.anyio
async def test_aiodicom_scu_role_selection_to_pynetdicom_scp(pynetdicom_scp):
    scp = pynetdicom_scp("--role", f"{CT}:1:1", "--role", f"{MR}:1:1")
    ae = scu_ae("AIOSCU")
    ae.add_requested_context(CT)
    ae.add_requested_context(MR)
    ae.add_requested_context(SC)  # no role item: default roles
    roles = [
        build_role(CT, scu_role=True, scp_role=True),
        build_role(MR, scu_role=False, scp_role=True),
    ]
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title=scp.ae_title, ext_neg=roles) as assoc:
            assert int((await assoc.send_c_echo()).Status) == 0
            ours = {str(c.abstract_syntax): (c.as_scu, c.as_scp) for c in assoc.accepted_contexts}
            reply = {
                str(uid): (item.scu_role, item.scp_role)
                for uid, item in assoc.acceptor.role_selection.items()
            }
        await in_thread(scp.wait_for_event, "released")

    assert ours == {
        VERIFICATION: (True, False),
        CT: (True, True),
        MR: (False, True),
        SC: (True, False),
    }
    assert reply == {CT: (True, True), MR: (False, True)}
    rq = one(scp.events(), "requested")
    assert sorted(rq["roles"], key=lambda r: r["sop_class_uid"]) == [
        {"sop_class_uid": CT, "scu_role": True, "scp_role": True},
        {"sop_class_uid": MR, "scu_role": False, "scp_role": True},
    ]
    acc = one(scp.events(), "accepted")
    theirs = {uid: (c["as_scu"], c["as_scp"]) for uid, c in by_abstract(acc["contexts"]).items()}
    # pynetdicom's roles are the mirror of ours
    assert theirs == {uid: (scp_, scu) for uid, (scu, scp_) in ours.items()}


# =========================================================================== 5.
# Asynchronous Operations Window against pynetdicom


@pytest.mark.anyio
async def test_aiodicom_scu_async_ops_window_concurrent_echoes_to_pynetdicom(pynetdicom_scp):
    scp = pynetdicom_scp()
    ae = scu_ae("AIOSCU")
    window = AsynchronousOperationsWindowNegotiation(
        maximum_number_operations_invoked=5,
        maximum_number_operations_performed=5,
    )
    n = 8
    statuses: dict[int, int] = {}
    with deadline():
        async with ae.associate(HOST, scp.port, ae_title=scp.ae_title, ext_neg=[window]) as assoc:
            # pynetdicom performs one operation at a time
            assert assoc.max_async_invoked == 1
            assert assoc.acceptor.asynchronous_operations == (1, 1)

            async def echo(i: int) -> None:
                statuses[i] = int((await assoc.send_c_echo()).Status)

            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(echo, i)
        assert assoc.is_released
        await in_thread(scp.wait_for_event, "released")

    assert statuses == dict.fromkeys(range(n), 0)
    rq = one(scp.events(), "requested")
    assert rq["async_ops"] == [5, 5]
    ids = [e["message_id"] for e in scp.events("c_echo")]
    assert sorted(ids) == list(range(1, n + 1)), ids


# =========================================================================== 6.
# Abort interop (the pynetdicom SCU side is in section 3)


class _Boom(Exception):
    pass


@pytest.mark.anyio
async def test_aiodicom_scu_exception_aborts_pynetdicom_scp(pynetdicom_scp):
    scp = pynetdicom_scp()
    ae = scu_ae("AIOSCU")
    with deadline():
        with pytest.raises(_Boom):
            async with ae.associate(HOST, scp.port, ae_title=scp.ae_title) as assoc:
                assert int((await assoc.send_c_echo()).Status) == 0
                raise _Boom
        assert assoc.is_aborted and not assoc.is_released
        (aborted,) = await in_thread(scp.wait_for_event, "aborted")
        await in_thread(scp.wait_for_event, "conn_close")
    assert (aborted["by"], aborted["source"]) == ("peer", 0), aborted
    assert aborted["calling_ae"] == "AIOSCU"
    assert not scp.events("released")
    assert len(scp.events("c_echo")) == 1
    assert not ae.active_associations
    # a later send on the aborted association fails
    with pytest.raises(AssociationAborted):
        await assoc.send_c_echo()
