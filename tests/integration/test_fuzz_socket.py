"""Mutated byte streams against a live server, over real loopback sockets.

A valid exchange (A-ASSOCIATE-RQ, a C-STORE of a data set large enough to
be spooled, in several PDUs, a C-ECHO, A-RELEASE-RQ) is damaged in a
different, seeded way per case: bytes flipped, cut short, bytes inserted, a
slice repeated, a PDU length field rewritten. Whatever arrives, the server
must only ever send PDUs that decode, end every connection (an A-ABORT, a
release or a close once the peer has closed its side), keep no spool file
and no association behind, and go on serving a well-behaved peer. A
failing case is reproduced by its seed alone (it is in the message).
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aiodicom import evt, sop_class
from aiodicom._splice import Outcome
from aiodicom.dimse import DATASET_PRESENT, CommandField, encode_command, fragment
from aiodicom.dsutils import encode_dataset
from aiodicom.pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AReleaseRQ,
    PresentationContextRQ,
    encode,
)
from aiodicom.testing import make_dataset

from ._fuzz import KINDS, damage
from .conftest import (
    GUARD,
    RAW_IMPL_UID,
    RawPeer,
    Recorder,
    Splices,
    echo_once,
    fake_scp,
    make_scp_ae,
    raw_connection,
    rq_with_contexts,
    running_server,
)

pytestmark = pytest.mark.anyio

CASES = int(os.environ.get("FUZZ_CASES", "1000"))
CLIENT_CASES = int(os.environ.get("FUZZ_CLIENT_CASES", "500"))
#: PDUs of the valid stream are at most this long, so a data set spans several.
MAX_PDU = 4096


def _store_stream(pixel_data: bytes) -> tuple[bytes, int, int]:
    """An association (4 KiB PDUs), a C-STORE of a data set with
    ``pixel_data``, a C-ECHO and a release, as the bytes a requestor sends;
    and where the data set's PDUs from its third one on begin and end (past
    the 4,096-byte spool threshold of the tests below: those a splice takes)."""
    rq = rq_with_contexts(
        (1, sop_class.Verification, ImplicitVRLittleEndian),
        (3, sop_class.CTImageStorage, ExplicitVRLittleEndian),
        calling="FUZZ",
        max_pdu=MAX_PDU,
    )
    ds = make_dataset()
    ds.PixelData = pixel_data
    data = encode_dataset(ds, ExplicitVRLittleEndian)
    store = encode_command(
        {
            "CommandField": CommandField.C_STORE_RQ,
            "MessageID": 1,
            "Priority": 0,
            "AffectedSOPClassUID": sop_class.CTImageStorage,
            "AffectedSOPInstanceUID": str(ds.SOPInstanceUID),
            "CommandDataSetType": DATASET_PRESENT,
        }
    )
    echo = encode_command(
        {
            "CommandField": CommandField.C_ECHO_RQ,
            "MessageID": 2,
            "AffectedSOPClassUID": sop_class.Verification,
            "CommandDataSetType": 0x0101,
        }
    )
    head = encode(rq)
    pdus = [*fragment(3, store, data, MAX_PDU)]
    start = len(head) + sum(map(len, pdus[:3]))  # (the command, two data PDUs)
    end = len(head) + sum(map(len, pdus))
    stream = b"".join([head, *pdus, *fragment(1, echo, None, MAX_PDU), encode(AReleaseRQ())])
    return stream, start, end


def _valid_stream() -> bytes:
    """The undamaged exchange of the main test (a 12 KiB data set, spooled)."""
    return _store_stream(bytes(range(256)) * 48)[0]


def _pdu_length_fields(stream: bytes) -> list[int]:
    """Where the length field of each PDU of ``stream`` is."""
    fields, pos = [], 0
    while pos + 6 <= len(stream):
        fields.append(pos + 2)
        pos += 6 + int.from_bytes(stream[pos + 2 : pos + 6], "big")
    return fields


def _mutate(stream: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One damaged copy of ``stream`` and what was done to it."""
    return damage(stream, rng, length_fields=_pdu_length_fields, byteorder="big")


async def _case(port: int, damaged: bytes, rng: random.Random, which: str) -> list[object]:
    """:func:`_send_and_drain` for one case, within the guard; a failure names ``which``."""
    try:
        with anyio.fail_after(GUARD):
            return await _send_and_drain(port, damaged, rng)
    except Exception as exc:
        raise AssertionError(f"{which}: {exc!r}") from exc


def _check_answer(pdus: list[object], where: str) -> None:
    """What a server may answer whatever it got: nothing (it closed), or an
    A-ASSOCIATE-AC, -RJ or A-ABORT first; once it aborted, nothing but
    A-ABORTs (PS3.8 Sta13: AA-7 answers each invalid PDU that still comes)."""
    if pdus:
        assert isinstance(pdus[0], AAssociateAC | AAssociateRJ | AAbort), where
    first = next((i for i, p in enumerate(pdus) if isinstance(p, AAbort)), len(pdus))
    assert all(isinstance(p, AAbort) for p in pdus[first:]), where


async def _send_and_drain(
    port: int, data: bytes, rng: random.Random, *, wait: bool = False
) -> list[object]:
    """Send ``data`` in random pieces, close our side, read every PDU until
    EOF. ``wait``: before closing, wait a moment for the server's answer to
    what follows the association (its side of the exchange goes on
    meanwhile: a splice needs the connection open)."""
    async with raw_connection(port) as peer:
        first: list[object] = []
        try:
            pos = 0
            while pos < len(data):
                step = rng.choice([1, 7, 100, 1500, 65536])
                await peer.stream.send(data[pos : pos + step])
                pos += step
            if wait:
                with anyio.move_on_after(0.05):
                    # (the A-ASSOCIATE-AC, undamaged; then the store's answer, or an abort)
                    while len(first) < 2 and (pdu := await peer.read_pdu()) is not None:
                        first.append(pdu)
            await peer.stream.send_eof()  # type: ignore[attr-defined]
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the server aborted and closed while we sent: read what it said
        return first + list(await peer.read_until_eof())  # every one must decode


async def test_mutated_streams_never_break_the_server(
    tmp_path: Path, anyio_backend: str, splices: Splices
) -> None:
    """On asyncio the data set's PDUs past the spool threshold are spliced
    (aiodicom._splice): the damage reaches the splicing thread too."""
    spool = tmp_path / "spool"
    spool.mkdir()
    stored: list[int] = []
    ae = make_scp_ae(acse_timeout=0.5, dimse_timeout=2.0)
    ae.add_supported_context(sop_class.CTImageStorage, [ExplicitVRLittleEndian])
    ae.spool_threshold = 4096
    ae.spool_directory = str(spool)

    def on_store(event: evt.Event) -> int:
        stored.append(0 if event.dataset_path is None else 1)
        return 0x0000

    valid = _valid_stream()
    rec = Recorder()
    kinds: dict[str, int] = {}
    answered = 0
    async with running_server(ae, [(evt.EVT_C_STORE, on_store), *rec.handlers]) as server:
        # The undamaged stream first, the peer's side left open until the
        # A-RELEASE-RP (its close before that is an abort, PS3.8 AA-4).
        async with raw_connection(server.port) as peer:
            await peer.stream.send(valid)
            with anyio.fail_after(GUARD):
                names = [type(await peer.read_pdu()).__name__ for _ in range(4)]
        assert names == ["AAssociateAC", "PDataTF", "PDataTF", "AReleaseRP"]
        assert stored == [1], "the valid store was not spooled and stored"
        if splices.expected(anyio_backend):
            assert splices.outcomes == [Outcome.LAST]
        for seed in range(1, CASES + 1):
            rng = random.Random(seed)
            kind, damaged = _mutate(valid, rng)
            kinds[kind] = kinds.get(kind, 0) + 1
            pdus = await _case(server.port, damaged, rng, f"seed {seed} ({kind})")
            where = f"seed {seed} ({kind}): {pdus!r}"
            answered += bool(pdus)
            _check_answer(pdus, where)
            # Once the server is done with the connection (its association's
            # tasks too, which may finish after EVT_CONN_CLOSE), nothing of it
            # may be left.
            await rec.wait_for("EVT_CONN_CLOSE", seed + 1)
            with anyio.fail_after(GUARD):
                await server._until(lambda: not server.active_associations)
            assert not list(spool.iterdir()), f"{where}: a spool file was left behind"
        assert await echo_once(server.port) == 0
        # Every connection ended, and its association with it.
        await rec.wait_for("EVT_CONN_CLOSE", CASES + 2)  # the valid case, the cases, the echo
        with anyio.fail_after(GUARD):
            await server._until(lambda: not server.active_associations)
        assert not server.active_associations
    assert not list(spool.iterdir()), "a spool file was left behind"
    assert set(kinds) == set(KINDS), kinds
    assert answered > CASES // 2, answered  # a cut inside the A-ASSOCIATE-RQ gets none


# ---------------------------------------------------------------------------
# The client's side: damaged answers from a peer SCP


#: How long the fake SCP waits for the client's next message before it
#: hangs up (a client waiting on a damaged answer then sees the close).
_PATIENCE = 0.15


async def _read_message(peer: Any) -> tuple[int, dict[str, Any]] | None:
    """The next whole DIMSE message the client sent: (context ID, command); None if none came."""
    from aiodicom.dimse import NO_DATASET, decode_command
    from aiodicom.pdu import PDataTF

    command_parts: list[bytes] = []
    command: dict[str, Any] | None = None
    while True:
        try:
            pdu = await peer.read_pdu(timeout=_PATIENCE)
        except TimeoutError:
            return None
        if not isinstance(pdu, PDataTF):
            return None
        for pdv in pdu.pdvs:
            if pdv.is_command:
                command_parts.append(bytes(pdv.data))
                if pdv.is_last:
                    command = decode_command(b"".join(command_parts))
                    if command["CommandDataSetType"] == NO_DATASET:
                        return pdv.context_id, command
            elif pdv.is_last and command is not None:
                return pdv.context_id, command


def _accept_all(rq: Any, *items: Any) -> bytes:
    """An A-ASSOCIATE-AC accepting every context of ``rq`` in its first
    transfer syntax, with our maximum PDU, implementation UID and ``items``."""
    from aiodicom.pdu import PresentationContextAC
    from aiodicom.pdu_primitives import (
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
    )

    return encode(
        AAssociateAC(
            called_ae_title=rq.called_ae_title,
            calling_ae_title=rq.calling_ae_title,
            presentation_contexts=tuple(
                PresentationContextAC(
                    context_id=cx.context_id, result=0, transfer_syntax=cx.transfer_syntaxes[0]
                )
                for cx in rq.presentation_contexts
            ),
            user_information=(
                MaximumLengthNotification(maximum_length_received=MAX_PDU),
                ImplementationClassUIDNotification(implementation_class_uid=RAW_IMPL_UID),
                *items,
            ),
        )
    )


async def _answer_damaged(
    peer: Any,
    respond: Any,
    reads: range,
    rng: random.Random,
    target: int,
    damage: list[str],
) -> None:
    """A fake SCP's steps after the A-ASSOCIATE-RQ: step 0 answers it; each
    step in ``reads`` first reads the client's next message, the last step
    its A-RELEASE-RQ; ``respond(step, last message read)`` gives the bytes of
    the step, damaged at step ``target``. A damage that cuts the answer
    short hangs up after it; so does this peer when the client goes quiet."""
    from aiodicom.pdu import AReleaseRQ

    got: tuple[int, dict[str, Any]] | None = None
    steps = reads.stop + 1
    for step in range(steps):
        if step in reads:
            got = await _read_message(peer)
            if got is None:
                return
        elif step == steps - 1:
            try:
                if not isinstance(await peer.read_pdu(timeout=_PATIENCE), AReleaseRQ):
                    return
            except TimeoutError:
                return
        data = respond(step, got)
        if step == target:
            kind, data = _mutate(data, rng)
            damage.append(kind)
        try:
            await peer.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        if damage == ["cut"]:
            return  # and hang up


async def _client_outcome(scp: Any, run: Any, seed: int, damage: list[str], target: int) -> str:
    """Run the client ``run(port)`` against the fake SCP ``scp``: "completed",
    or the name of the typed error it raised (DicomNetworkError and its kinds,
    TimeoutError), never LocalProtocolError: the client never misuses the API
    here, so the peer's fault must not come out as the user's. Anything else
    fails the case, named by its seed and damage."""
    from aiodicom.errors import DicomNetworkError, LocalProtocolError

    async with fake_scp(scp) as port:
        try:
            with anyio.fail_after(GUARD):
                await run(port)
        except (DicomNetworkError, TimeoutError) as exc:
            assert not isinstance(exc, LocalProtocolError), f"seed {seed}: {exc!r}"
            return type(exc).__name__
        except Exception as exc:
            raise AssertionError(f"seed {seed} ({damage} at step {target}): {exc!r}") from exc
    return "completed"


def _answers(ac: bytes) -> Any:
    """The valid answers, one segment per step: given the A-ASSOCIATE-AC, a
    function of (step, context ID, command) giving the bytes of that step."""
    from pydicom.dataset import Dataset

    from aiodicom.dimse import NO_DATASET, fragment
    from aiodicom.pdu import AReleaseRP

    def respond(step: int, got: tuple[int, dict[str, Any]] | None) -> bytes:
        if step == 0:
            return ac
        if step == 3:
            return encode(AReleaseRP())
        assert got is not None
        context_id, command = got
        mid = command["MessageID"]
        base = {
            "MessageIDBeingRespondedTo": mid,
            "AffectedSOPClassUID": command["AffectedSOPClassUID"],
        }
        if step == 1:
            rsp = {**base, "CommandField": 0x8001, "CommandDataSetType": NO_DATASET, "Status": 0}
            rsp["AffectedSOPInstanceUID"] = command["AffectedSOPInstanceUID"]
            return b"".join(fragment(context_id, encode_command(rsp), None, MAX_PDU))
        out = []
        for i in range(2):
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{i}"
            match.PatientName = f"Fuzz^{i}"
            data = encode_dataset(match, ImplicitVRLittleEndian)
            rsp = {**base, "CommandField": 0x8020, "CommandDataSetType": 0x0000, "Status": 0xFF00}
            out += fragment(context_id, encode_command(rsp), data, MAX_PDU)
        final = {**base, "CommandField": 0x8020, "CommandDataSetType": NO_DATASET, "Status": 0}
        out += fragment(context_id, encode_command(final), None, MAX_PDU)
        return b"".join(out)

    return respond


async def test_mutated_answers_never_break_the_client() -> None:
    """An aiodicom SCU (C-STORE, C-FIND, release) against a peer SCP whose
    answers are damaged, one step of them per case, the same ways as above:
    the SCU either completes or raises one of the package's typed errors
    (DicomNetworkError and its kinds) or TimeoutError, never anything else,
    never hangs, and keeps no association behind."""
    from pydicom.dataset import Dataset

    from aiodicom import AE
    from aiodicom.pdu import AAssociateRQ

    find = sop_class.StudyRootQueryRetrieveInformationModelFind
    outcomes: dict[str, int] = {}
    for seed in range(CLIENT_CASES + 1):  # seed 0: undamaged
        rng = random.Random(seed)
        target = rng.randrange(4) if seed else -1
        damage: list[str] = []  # what was done, once it was

        async def scp(
            peer: Any, rng: random.Random = rng, target: int = target, damage: list[str] = damage
        ) -> None:
            rq = await peer.read_pdu()
            assert isinstance(rq, AAssociateRQ)
            respond = _answers(_accept_all(rq))
            await _answer_damaged(peer, respond, range(1, 3), rng, target, damage)

        ae = AE("FUZZ_SCU")
        ae.add_requested_context(sop_class.Verification, ImplicitVRLittleEndian)
        ae.add_requested_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(find, ImplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = 2.0
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""

        async def run(port: int, ae: AE = ae, query: Dataset = query) -> None:
            async with ae.associate("127.0.0.1", port, ae_title="TEST_SCP") as assoc:
                await assoc.send_c_store(make_dataset())
                async with assoc.send_c_find(query, find) as responses:
                    async for _ in responses:
                        pass

        outcome = await _client_outcome(scp, run, seed, damage, target)
        if seed == 0:
            assert outcome == "completed"
        assert not ae.active_associations, f"seed {seed}: an association is left"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("completed", 0) < CLIENT_CASES + 1, outcomes  # damage was noticed
    assert len(outcomes) > 2, outcomes


def _get_answers(ac: bytes, store_cx: int) -> Any:
    """A C-GET SCP's valid answers, one segment per step (as :func:`_answers`):
    the A-ASSOCIATE-AC; a C-STORE sub-operation (on context ``store_cx``); a
    pending C-GET-RSP and the second sub-operation; the final C-GET-RSP; the
    A-RELEASE-RP."""
    from aiodicom.dimse import NO_DATASET
    from aiodicom.pdu import AReleaseRP

    stores: list[tuple[str, bytes]] = []
    for i in range(2):
        ds = make_dataset()
        ds.InstanceNumber = i + 1
        stores.append((ds.SOPInstanceUID, encode_dataset(ds, ExplicitVRLittleEndian)))
    get: dict[str, Any] = {}  # the C-GET-RQ: (context ID, command)

    def sub_operation(i: int, store_cx: int) -> list[bytes]:
        uid, data = stores[i]
        rq = {
            "CommandField": int(CommandField.C_STORE_RQ),
            "MessageID": 100 + i,
            "AffectedSOPClassUID": sop_class.CTImageStorage,
            "AffectedSOPInstanceUID": uid,
            "Priority": 0,
            "CommandDataSetType": DATASET_PRESENT,
            "MoveOriginatorApplicationEntityTitle": None,
        }
        return list(fragment(store_cx, encode_command(rq), data, MAX_PDU))

    def get_rsp(status: int, remaining: int, completed: int) -> list[bytes]:
        context_id, command = get["rq"]
        rsp = {
            "CommandField": 0x8010,
            "MessageIDBeingRespondedTo": command["MessageID"],
            "AffectedSOPClassUID": command["AffectedSOPClassUID"],
            "CommandDataSetType": NO_DATASET,
            "Status": status,
            "NumberOfCompletedSuboperations": completed,
            "NumberOfFailedSuboperations": 0,
            "NumberOfWarningSuboperations": 0,
        }
        if remaining:
            rsp["NumberOfRemainingSuboperations"] = remaining
        return list(fragment(context_id, encode_command(rsp), None, MAX_PDU))

    def respond(step: int, got: tuple[int, dict[str, Any]] | None) -> bytes:
        if step == 0:
            return ac
        if step == 1:
            get["rq"] = got
            return b"".join(sub_operation(0, store_cx))
        if step == 2:
            return b"".join(get_rsp(0xFF00, 1, 1) + sub_operation(1, store_cx))
        if step == 3:
            return b"".join(get_rsp(0x0000, 0, 2))
        return encode(AReleaseRP())

    return respond


async def test_mutated_c_get_answers_never_break_the_client() -> None:
    """An aiodicom C-GET SCU against a peer SCP whose answers (two C-STORE
    sub-operations, pending and final C-GET-RSPs, the release) are damaged,
    one step per case: the SCU completes or raises one of the package's
    typed errors or TimeoutError, never anything else, never hangs, keeps no
    association, and its EVT_C_STORE handler sees only what decoded as a
    C-STORE-RQ with its data set."""
    from aiodicom import AE, build_role
    from aiodicom.pdu import AAssociateRQ
    from aiodicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

    get_model = sop_class.StudyRootQueryRetrieveInformationModelGet
    outcomes: dict[str, int] = {}
    for seed in range(CLIENT_CASES + 1):  # seed 0: undamaged
        rng = random.Random(seed)
        target = rng.randrange(5) if seed else -1
        damage: list[str] = []

        async def scp(
            peer: Any, rng: random.Random = rng, target: int = target, damage: list[str] = damage
        ) -> None:
            rq = await peer.read_pdu()
            assert isinstance(rq, AAssociateRQ)
            store_cx = next(
                cx.context_id
                for cx in rq.presentation_contexts
                if cx.abstract_syntax == sop_class.CTImageStorage
            )
            roles = SCP_SCU_RoleSelectionNegotiation(
                sop_class_uid=sop_class.CTImageStorage, scu_role=False, scp_role=True
            )
            respond = _get_answers(_accept_all(rq, roles), store_cx)
            # the C-GET-RQ, then each C-STORE-RSP
            await _answer_damaged(peer, respond, range(1, 4), rng, target, damage)

        stored: list[str] = []

        def on_store(event: evt.Event, stored: list[str] = stored) -> int:
            stored.append(event.request.AffectedSOPInstanceUID)
            event.encoded_dataset()  # (the data set itself may be damaged)
            return 0x0000

        ae = AE("FUZZ_SCU")
        ae.add_requested_context(get_model, ImplicitVRLittleEndian)
        ae.add_requested_context(sop_class.CTImageStorage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = 2.0
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = "1.2.3"
        statuses: list[int] = []

        async def run(
            port: int,
            ae: AE = ae,
            query: Dataset = query,
            on_store: Any = on_store,
            statuses: list[int] = statuses,
        ) -> None:
            async with (
                ae.associate(
                    "127.0.0.1",
                    port,
                    ae_title="TEST_SCP",
                    ext_neg=[build_role(sop_class.CTImageStorage, scp_role=True)],
                    evt_handlers=[(evt.EVT_C_STORE, on_store)],
                ) as assoc,
                assoc.send_c_get(query, get_model) as responses,
            ):
                async for status, _ in responses:
                    statuses.append(int(status.Status))

        outcome = await _client_outcome(scp, run, seed, damage, target)
        if seed == 0:
            assert outcome == "completed"
            assert statuses == [0xFF00, 0x0000]
            assert len(stored) == 2
        # Each damaged step holds one C-STORE-RQ at most, so a span repeated in
        # place may make it two: two requests, served one after the other (the
        # first has been answered when the second is taken up, so this is not
        # a duplicate invocation either), and each one stored.
        most = 3 if damage == ["repeat"] else 2
        assert len(stored) <= most, f"seed {seed} ({damage} at step {target}): {stored}"
        assert not ae.active_associations, f"seed {seed}: an association is left"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("completed", 0) < CLIENT_CASES + 1, outcomes  # damage was noticed
    assert len(outcomes) > 2, outcomes


# ---------------------------------------------------------------------------
# Negotiation: a damaged A-ASSOCIATE-RQ carrying every kind of item


def _rich_rq() -> bytes:
    """An A-ASSOCIATE-RQ with several contexts and every user information item."""
    from aiodicom.pdu import AAssociateRQ
    from aiodicom.pdu_primitives import (
        AsynchronousOperationsWindowNegotiation,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
        SCP_SCU_RoleSelectionNegotiation,
        SOPClassCommonExtendedNegotiation,
        SOPClassExtendedNegotiation,
        UserIdentityNegotiation,
    )

    syntaxes = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
    classes = (sop_class.Verification, sop_class.CTImageStorage, sop_class.MRImageStorage)
    return encode(
        AAssociateRQ(
            protocol_version=1,
            called_ae_title="TEST_SCP",
            calling_ae_title="FUZZ",
            presentation_contexts=tuple(
                PresentationContextRQ(
                    context_id=2 * i + 1, abstract_syntax=uid, transfer_syntaxes=syntaxes
                )
                for i, uid in enumerate(classes)
            ),
            user_information=(
                MaximumLengthNotification(maximum_length_received=MAX_PDU),
                ImplementationClassUIDNotification(implementation_class_uid=RAW_IMPL_UID),
                ImplementationVersionNameNotification(implementation_version_name="FUZZ_1"),
                AsynchronousOperationsWindowNegotiation(
                    maximum_number_operations_invoked=4, maximum_number_operations_performed=4
                ),
                SCP_SCU_RoleSelectionNegotiation(
                    sop_class_uid=sop_class.CTImageStorage, scu_role=True, scp_role=True
                ),
                SOPClassExtendedNegotiation(
                    sop_class_uid=sop_class.CTImageStorage,
                    service_class_application_information=b"\x01\x00\x01",
                ),
                SOPClassCommonExtendedNegotiation(
                    sop_class_uid=sop_class.CTImageStorage,
                    service_class_uid="1.2.840.10008.4.2",
                    related_general_sop_class_identification=[sop_class.MRImageStorage],
                ),
                UserIdentityNegotiation(
                    user_identity_type=2,
                    positive_response_requested=True,
                    primary_field=b"user",
                    secondary_field=b"secret",
                ),
            ),
        )
    )


async def test_mutated_association_requests_never_break_the_server() -> None:
    """Only the A-ASSOCIATE-RQ is damaged, one carrying every user information
    item, with handlers bound for each negotiation event: the server answers
    A-ASSOCIATE-AC, -RJ or A-ABORT (or closes), its handlers see only what
    decoded, and it goes on serving."""

    seen: dict[str, int] = {}

    def count(name: str, answer: object) -> object:
        def handler(event: evt.Event) -> object:
            seen[name] = seen.get(name, 0) + 1
            return answer

        return handler

    handlers = [
        (evt.EVT_USER_ID, count("user", (True, b"ok"))),
        (evt.EVT_SOP_EXTENDED, count("extended", {})),
        (evt.EVT_SOP_COMMON, count("common", {})),
        (evt.EVT_ASYNC_OPS, count("async", (2, 2))),
    ]
    ae = make_scp_ae(acse_timeout=0.5)
    ae.add_supported_context(sop_class.CTImageStorage, [ExplicitVRLittleEndian], scp_role=True)
    rq = _rich_rq()
    outcomes: dict[str, int] = {}
    async with running_server(ae, handlers) as server:
        for seed in range(CASES + 1):
            rng = random.Random(seed)
            kind, damaged = ("none", rq) if seed == 0 else _mutate(rq, rng)
            pdus = await _case(server.port, damaged, rng, f"seed {seed} ({kind})")
            where = f"seed {seed} ({kind}): {pdus!r}"
            assert len(pdus) <= 2, where
            _check_answer(pdus, where)
            if seed == 0:
                assert isinstance(pdus[0], AAssociateAC), where
                assert seen == {"user": 1, "extended": 1, "common": 1, "async": 1}, seen
            name = type(pdus[0]).__name__ if pdus else "closed"
            outcomes[name] = outcomes.get(name, 0) + 1
        assert await echo_once(server.port) == 0
    assert len(outcomes) >= 3, outcomes  # accepted, refused one way or another


# ---------------------------------------------------------------------------
# The same damage inside TLS (the stream the reader takes on every backend)


async def test_mutated_streams_over_tls_never_break_the_server(tmp_path: Path) -> None:
    """The first test's cases (one in 20), each on its own TLS connection: the
    TLS layer is sound, the DICOM bytes inside it damaged. On asyncio this is
    the reader for streams that are not PDU-framed (TLS), which the plain
    cases do not take; the same checks."""
    import ssl

    from .test_tcp import _self_signed

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    spool = tmp_path / "spool"
    spool.mkdir()
    ae = make_scp_ae(acse_timeout=0.2, dimse_timeout=2.0, network_timeout=0.2)
    ae.add_supported_context(sop_class.CTImageStorage, [ExplicitVRLittleEndian])
    ae.spool_threshold = 4096
    ae.spool_directory = str(spool)
    valid = _valid_stream()
    rec = Recorder()
    cases = max(1, CASES // 20)
    async with running_server(
        ae, [(evt.EVT_C_STORE, lambda e: 0x0000), *rec.handlers], ssl_context=server_ctx
    ) as server:
        for seed in range(1, cases + 1):
            rng = random.Random(seed)
            kind, damaged = _mutate(valid, rng)
            where = f"seed {seed} ({kind})"
            try:
                with anyio.fail_after(GUARD):
                    stream = await anyio.connect_tcp(
                        "127.0.0.1", server.port, tls=True, ssl_context=client_ctx
                    )
                    peer = RawPeer(stream)
                    try:
                        try:
                            await stream.send(damaged)
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                            pass
                        # (no half-close in TLS: a case cut short ends by the
                        # server's network_timeout, which aborts; after an
                        # A-ABORT we close, as a peer does)
                        pdus = []
                        while (pdu := await peer.read_pdu()) is not None:
                            pdus.append(pdu)
                            if isinstance(pdu, AAbort):
                                break
                    finally:
                        # (our side's TLS close may fail on what the server left)
                        with contextlib.suppress(OSError, anyio.BrokenResourceError):
                            await peer.aclose()
            except Exception as exc:
                raise AssertionError(f"{where}: {exc!r}") from exc
            _check_answer(pdus, where)
            await rec.wait_for("EVT_CONN_CLOSE", seed)
            with anyio.fail_after(GUARD):
                await server._until(lambda: not server.active_associations)
            assert not list(spool.iterdir()), f"{where}: a spool file was left behind"
    assert not list(spool.iterdir())


# ---------------------------------------------------------------------------
# Damage where the spool file's splice takes the stream (aiodicom._splice)

SPLICE_CASES = int(os.environ.get("FUZZ_SPLICE_CASES", "200"))


async def test_mutated_spliced_data_sets_never_break_the_server(
    tmp_path: Path, anyio_backend: str, splices: Splices
) -> None:
    """The damage falls in the data set's PDUs past the spool threshold,
    which on asyncio a worker thread splices into the spool file, and the
    peer keeps its side open a moment after sending (a splice needs an open
    connection). As for any damage: only decodable PDUs come back, every
    connection ends, no spool file, association or descriptor is left, and
    the server serves on. The splice takes some whole, hands some back and
    sees some cut off."""
    spool = tmp_path / "spool"
    spool.mkdir()
    ae = make_scp_ae(acse_timeout=0.5, dimse_timeout=2.0)
    ae.add_supported_context(sop_class.CTImageStorage, [ExplicitVRLittleEndian])
    ae.spool_threshold = 4096
    ae.spool_directory = str(spool)
    ae.network_timeout = 2.0
    valid, start, end = _store_stream(bytes(range(256)) * 160)  # 40 KiB
    rec = Recorder()
    fds = {int(n) for n in os.listdir("/proc/self/fd")}
    async with running_server(ae, [(evt.EVT_C_STORE, lambda event: 0), *rec.handlers]) as server:
        for seed in range(1, SPLICE_CASES + 1):
            rng = random.Random(seed)
            kind, damaged = damage(
                valid[start:end], rng, length_fields=_pdu_length_fields, byteorder="big"
            )
            stream = valid[:start] + damaged + valid[end:]
            where = f"seed {seed} ({kind})"
            try:
                with anyio.fail_after(GUARD):
                    pdus = await _send_and_drain(server.port, stream, rng, wait=True)
            except Exception as exc:
                raise AssertionError(f"{where}: {exc!r}") from exc
            _check_answer(pdus, f"{where}: {pdus!r}")
            await rec.wait_for("EVT_CONN_CLOSE", seed)
            with anyio.fail_after(GUARD):
                await server._until(lambda: not server.active_associations)
            assert not list(spool.iterdir()), f"{where}: a spool file was left behind"
        assert await echo_once(server.port) == 0
    assert not list(spool.iterdir())
    with anyio.fail_after(GUARD):  # (a thread stopped by a close lets go as it returns)
        while {int(n) for n in os.listdir("/proc/self/fd")} - fds:
            await anyio.sleep(0.01)
    if splices.expected(anyio_backend) and SPLICE_CASES >= 100:
        outcomes = set(splices.outcomes)
        assert {Outcome.LAST, Outcome.HANDED_BACK, Outcome.CLOSED} <= outcomes, outcomes
