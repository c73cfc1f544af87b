"""DIMSE-N services end to end, aiodicom on both sides over loopback TCP.

N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE and N-DELETE as invoker
(``send_n_*``) and performer (``EVT_N_*`` handlers), the statuses and data
sets of PS3.7 chapter 10 and what a handler's bad answer becomes. Interop with
pynetdicom and dcmtk is in tests/interop/test_nservice_interop.py.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from aiodicom import AE, Association, build_role, evt, sop_class
from aiodicom.dimse import NO_DATASET, CommandField, decode_command, encode_command, fragment
from aiodicom.errors import DIMSEError, NoAcceptedContext
from aiodicom.pdu import (
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextRQ,
)

from .conftest import (
    GUARD,
    RawPeer,
    fake_scp,
    raw_associate,
    raw_connection,
    raw_release,
    verification_ac,
    verification_rq,
)

pytestmark = pytest.mark.anyio

MPPS = sop_class.ModalityPerformedProcedureStep
COMMITMENT = sop_class.StorageCommitmentPushModel
COMMITMENT_INSTANCE = sop_class.StorageCommitmentPushModelInstance
FILM_SESSION = sop_class.BasicFilmSession
PRINT_META = sop_class.BasicGrayscalePrintManagementMeta
PRINTER = sop_class.Printer
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
INSTANCE = "1.2.826.0.1.3680043.9.9999.10.1"
ASSIGNED = "1.2.826.0.1.3680043.9.9999.10.2"


class Performer:
    """EVT_N_* handlers that record their events and answer from ``answers``.

    ``answers[kind]`` is what the handler returns (or an exception it raises);
    by default a success with a small data set built from the request.
    """

    def __init__(self) -> None:
        self.events: list[evt.Event] = []
        self.seen: list[dict[str, Any]] = []
        self.answers: dict[evt.EventType, Any] = {}

    def _answer(self, event: evt.Event) -> Any:
        self.events.append(event)
        # What the handler can read, read while the handler runs.
        seen: dict[str, Any] = {"kind": event.event.name, "request": event.request}
        for name in ("attribute_identifiers", "action_type", "event_type"):
            seen[name] = getattr(event, name)
        try:
            seen["dataset"] = event.dataset
        except AttributeError:
            seen["dataset"] = None
        self.seen.append(seen)
        answer = self.answers.get(event.event)
        if isinstance(answer, BaseException):
            raise answer
        if answer is not None:
            return answer
        reply = Dataset()
        reply.PatientID = "N-" + event.event.name
        return 0x0000, reply

    async def _async_answer(self, event: evt.Event) -> Any:
        await anyio.lowlevel.checkpoint()
        return self._answer(event)

    @property
    def handlers(self) -> list[evt.EventHandlerType]:
        kinds = (evt.EVT_N_GET, evt.EVT_N_SET, evt.EVT_N_CREATE, evt.EVT_N_DELETE)
        out: list[evt.EventHandlerType] = [(k, self._answer) for k in kinds]
        # Two of them async, to cover both kinds of handler.
        out.append((evt.EVT_N_ACTION, self._async_answer))
        out.append((evt.EVT_N_EVENT_REPORT, self._async_answer))
        return out


def scp_ae() -> AE:
    ae = AE("N_SCP")
    for uid in (MPPS, COMMITMENT, FILM_SESSION, PRINT_META, PRINTER):
        ae.add_supported_context(uid)
    ae.acse_timeout = ae.dimse_timeout = 5.0
    return ae


def scu_ae() -> AE:
    ae = AE("N_SCU")
    for uid in (MPPS, COMMITMENT, PRINT_META, PRINTER):
        ae.add_requested_context(uid)
    ae.acse_timeout = ae.dimse_timeout = 5.0
    return ae


@asynccontextmanager
async def n_pair(
    performer: Performer,
    *,
    scu_handlers: list[evt.EventHandlerType] | None = None,
    scp_handlers: list[evt.EventHandlerType] | None = None,
) -> AsyncIterator[Association]:
    handlers = performer.handlers + (scp_handlers or [])
    async with scp_ae().start_server(("127.0.0.1", 0), evt_handlers=handlers) as server:
        with anyio.fail_after(GUARD):
            async with scu_ae().associate(
                "127.0.0.1", server.port, ae_title="N_SCP", evt_handlers=scu_handlers
            ) as assoc:
                yield assoc


def person(**elements: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


# ---------------------------------------------------------------------------
# Each service, both sides


async def test_n_get_reads_the_attributes_asked_for() -> None:
    performer = Performer()
    performer.answers[evt.EVT_N_GET] = (
        0x0000,
        person(PrinterStatus="NORMAL", PrinterName="Film^One"),
    )
    async with n_pair(performer) as assoc:
        status, attrs = await assoc.send_n_get(
            [0x21100010, "PrinterName", (0x2110, 0x0020)], PRINTER, PRINTER_INSTANCE
        )
    assert status.Status == 0x0000
    assert status.AffectedSOPClassUID == PRINTER
    assert status.AffectedSOPInstanceUID == PRINTER_INSTANCE
    assert attrs is not None
    assert (attrs.PrinterStatus, attrs.PrinterName) == ("NORMAL", "Film^One")
    [seen] = performer.seen
    assert seen["attribute_identifiers"] == [Tag(0x21100010), Tag(0x21100030), Tag(0x21100020)]
    assert seen["request"].RequestedSOPClassUID == PRINTER
    assert seen["request"].RequestedSOPInstanceUID == PRINTER_INSTANCE
    assert seen["request"].CommandDataSetType == 0x0101
    assert seen["dataset"] is None


@pytest.mark.parametrize("identifiers", [None, []])
async def test_n_get_without_identifiers_asks_for_every_attribute(identifiers: Any) -> None:
    performer = Performer()
    async with n_pair(performer) as assoc:
        status, attrs = await assoc.send_n_get(identifiers, PRINTER, PRINTER_INSTANCE)
    assert status.Status == 0x0000
    assert attrs is not None and attrs.PatientID == "N-EVT_N_GET"
    assert performer.seen[0]["attribute_identifiers"] == []
    assert "AttributeIdentifierList" not in performer.seen[0]["request"]


async def test_n_set_sends_the_modification_list() -> None:
    performer = Performer()
    async with n_pair(performer) as assoc:
        status, attrs = await assoc.send_n_set(
            person(PerformedProcedureStepStatus="COMPLETED"), MPPS, INSTANCE
        )
    assert status.Status == 0x0000
    assert status.AffectedSOPInstanceUID == INSTANCE
    assert attrs is not None and attrs.PatientID == "N-EVT_N_SET"
    [seen] = performer.seen
    assert seen["dataset"].PerformedProcedureStepStatus == "COMPLETED"
    assert seen["request"].RequestedSOPClassUID == MPPS
    assert performer.events[0].modification_list is seen["dataset"]


async def test_n_action_carries_its_type_both_ways() -> None:
    performer = Performer()
    info = person(TransactionUID="1.2.3.4")
    info.ReferencedSOPSequence = Sequence(
        [person(ReferencedSOPClassUID=sop_class.CTImageStorage, ReferencedSOPInstanceUID="1.2.3")]
    )
    async with n_pair(performer) as assoc:
        status, reply = await assoc.send_n_action(info, 1, COMMITMENT, COMMITMENT_INSTANCE)
    assert status.Status == 0x0000
    assert status.ActionTypeID == 1
    assert status.AffectedSOPInstanceUID == COMMITMENT_INSTANCE
    assert reply is not None and reply.PatientID == "N-EVT_N_ACTION"
    [seen] = performer.seen
    assert seen["action_type"] == 1
    assert seen["dataset"].TransactionUID == "1.2.3.4"
    assert seen["dataset"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3"


async def test_n_action_without_information_has_no_data_set() -> None:
    performer = Performer()
    performer.answers[evt.EVT_N_ACTION] = (0x0000, None)
    async with n_pair(performer) as assoc:
        status, reply = await assoc.send_n_action(None, 7, COMMITMENT, COMMITMENT_INSTANCE)
    assert status.Status == 0x0000 and status.ActionTypeID == 7
    assert status.CommandDataSetType == 0x0101
    assert reply is not None and len(reply) == 0  # success without a reply: empty
    assert performer.seen[0]["dataset"] is None


async def test_n_create_with_its_own_instance_uid() -> None:
    performer = Performer()
    async with n_pair(performer) as assoc:
        status, attrs = await assoc.send_n_create(
            person(PerformedProcedureStepStatus="IN PROGRESS"), MPPS, INSTANCE
        )
    assert status.Status == 0x0000
    assert status.AffectedSOPInstanceUID == INSTANCE
    assert attrs is not None and attrs.PatientID == "N-EVT_N_CREATE"
    assert performer.seen[0]["request"].AffectedSOPInstanceUID == INSTANCE


async def test_n_create_gets_the_uid_the_performer_assigns() -> None:
    performer = Performer()
    answer = person(AffectedSOPInstanceUID=ASSIGNED, PerformedProcedureStepStatus="IN PROGRESS")
    performer.answers[evt.EVT_N_CREATE] = (0x0000, answer)
    async with n_pair(performer) as assoc:
        status, attrs = await assoc.send_n_create(person(PatientID="P1"), MPPS)
    assert status.Status == 0x0000
    assert status.AffectedSOPInstanceUID == ASSIGNED
    assert attrs is not None
    assert "AffectedSOPInstanceUID" not in attrs  # in the command set, not the data set
    assert attrs.PerformedProcedureStepStatus == "IN PROGRESS"
    assert "AffectedSOPInstanceUID" not in performer.seen[0]["request"]
    assert answer.AffectedSOPInstanceUID == ASSIGNED  # the handler's Dataset is untouched


async def test_n_create_success_that_names_no_instance_is_a_processing_failure() -> None:
    performer = Performer()
    async with n_pair(performer) as assoc:
        status, attrs = await assoc.send_n_create(person(PatientID="P1"), MPPS)
    assert status.Status == 0x0110
    assert "Affected SOP Instance UID" in status.ErrorComment
    assert attrs is None


@pytest.mark.parametrize("answer", [0x0000, (0x0000, None)])
async def test_n_delete_returns_the_status_only(answer: Any) -> None:
    performer = Performer()
    performer.answers[evt.EVT_N_DELETE] = answer
    async with n_pair(performer) as assoc:
        status = await assoc.send_n_delete(FILM_SESSION, INSTANCE, meta_uid=PRINT_META)
    assert isinstance(status, Dataset)
    assert status.Status == 0x0000
    assert status.AffectedSOPClassUID == FILM_SESSION
    assert status.AffectedSOPInstanceUID == INSTANCE
    assert performer.seen[0]["request"].RequestedSOPClassUID == FILM_SESSION


async def test_meta_uid_picks_the_meta_sop_class_context() -> None:
    performer = Performer()
    async with n_pair(performer) as assoc:
        status, _ = await assoc.send_n_create(
            person(NumberOfCopies=1), FILM_SESSION, INSTANCE, meta_uid=PRINT_META
        )
        with pytest.raises(NoAcceptedContext):
            await assoc.send_n_create(person(NumberOfCopies=1), FILM_SESSION, INSTANCE)
    assert status.Status == 0x0000
    event = performer.events[0]
    assert event.context is not None
    assert event.context.abstract_syntax == PRINT_META
    assert event.request.AffectedSOPClassUID == FILM_SESSION


async def test_storage_commitment_report_comes_back_on_the_same_association() -> None:
    """The Storage Commitment exchange (PS3.4 J.3): N-ACTION from the SCU, then
    the SCP's N-EVENT-REPORT to the SCU over the association the SCU requested."""
    performer = Performer()
    reports: list[evt.Event] = []
    reported = anyio.Event()
    send, receive = anyio.create_memory_object_stream[Association](1)

    def on_report(event: evt.Event) -> Any:
        reports.append(event)
        reported.set()
        return 0x0000, person(TransactionUID=event.event_information.TransactionUID)

    async def on_action(event: evt.Event) -> Any:
        await send.send(event.assoc)  # the SCP answers first, then reports
        return 0x0000, None

    with send, receive, anyio.fail_after(GUARD):
        await _commitment(performer, on_report, on_action, receive, reported)
    [report] = reports
    assert report.event_type == 1
    assert report.request.AffectedSOPClassUID == COMMITMENT
    assert report.request.AffectedSOPInstanceUID == COMMITMENT_INSTANCE
    assert report.event_information.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3"


async def _commitment(
    performer: Performer,
    on_report: Any,
    on_action: Any,
    receive: Any,
    reported: anyio.Event,
) -> None:
    async with (
        anyio.create_task_group() as tg,
        n_pair(
            performer,
            scu_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
            scp_handlers=[(evt.EVT_N_ACTION, on_action)],
        ) as assoc,
    ):

        async def scp_reports() -> None:
            scp_side = await receive.receive()
            result = person(TransactionUID="1.2.3.4.5")
            result.ReferencedSOPSequence = Sequence(
                [
                    person(
                        ReferencedSOPClassUID=sop_class.CTImageStorage,
                        ReferencedSOPInstanceUID="1.2.3",
                    )
                ]
            )
            status, reply = await scp_side.send_n_event_report(
                result, 1, COMMITMENT, COMMITMENT_INSTANCE
            )
            assert status.Status == 0x0000 and status.EventTypeID == 1
            assert reply is not None and reply.TransactionUID == "1.2.3.4.5"

        tg.start_soon(scp_reports)
        status, _ = await assoc.send_n_action(
            person(TransactionUID="1.2.3.4.5"), 1, COMMITMENT, COMMITMENT_INSTANCE
        )
        assert status.Status == 0x0000
        await reported.wait()


async def test_the_requestor_may_send_n_event_report_too() -> None:
    """N-EVENT-REPORT is sent on a context of either role (MPPS Notification style)."""
    performer = Performer()
    async with n_pair(performer) as assoc:
        status, reply = await assoc.send_n_event_report(person(PatientID="E1"), 5, MPPS, INSTANCE)
    assert status.Status == 0x0000 and status.EventTypeID == 5
    assert reply is not None and reply.PatientID == "N-EVT_N_EVENT_REPORT"
    assert performer.seen[0]["event_type"] == 5
    assert performer.seen[0]["dataset"].PatientID == "E1"


async def test_operations_in_flight_at_once_are_matched_by_message_id() -> None:
    performer = Performer()
    async with n_pair(performer) as assoc:
        results: dict[int, Any] = {}

        async def get(i: int) -> None:
            results[i] = await assoc.send_n_get(["PatientID"], MPPS, f"{INSTANCE}.{i}")

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(get, i)
    assert sorted(results) == list(range(8))
    for i, (status, _) in results.items():
        assert status.AffectedSOPInstanceUID == f"{INSTANCE}.{i}"


# ---------------------------------------------------------------------------
# Statuses and what a handler's answer becomes


async def test_failure_status_carries_no_data_set() -> None:
    performer = Performer()
    failure = Dataset()
    failure.Status = 0x0112  # No such SOP Instance
    failure.ErrorComment = "no such step"
    failure.ErrorID = 42
    failure.OffendingElement = [0x00100010]  # DIMSE-C only: not sent
    performer.answers[evt.EVT_N_SET] = (failure, person(PatientID="ignored"))
    async with n_pair(performer) as assoc:
        status, attrs = await assoc.send_n_set(person(PatientID="X"), MPPS, INSTANCE)
    assert status.Status == 0x0112
    assert status.ErrorComment == "no such step"
    assert status.ErrorID == 42
    assert "OffendingElement" not in status
    assert status.CommandDataSetType == 0x0101
    assert attrs is None


async def test_warning_carries_its_data_set_and_attribute_list() -> None:
    performer = Performer()
    warning = Dataset()
    warning.Status = 0x0107  # Attribute list error
    warning.AttributeIdentifierList = [0x00100010, 0x00100020]
    performer.answers[evt.EVT_N_SET] = (warning, person(PatientID="kept"))
    async with n_pair(performer) as assoc:
        status, attrs = await assoc.send_n_set(person(PatientID="X"), MPPS, INSTANCE)
    assert status.Status == 0x0107
    assert list(status.AttributeIdentifierList) == [0x00100010, 0x00100020]
    assert attrs is not None and attrs.PatientID == "kept"


@pytest.mark.parametrize(
    "answer",
    [
        RuntimeError("handler bug"),
        "not a status",
        (0x10000, None),
        (0x0000, "not a Dataset"),
        (0x0000, None, "three items"),
    ],
    ids=["raises", "no-status", "out-of-range", "not-a-dataset", "three-items"],
)
async def test_bad_handler_answer_is_a_processing_failure_and_the_server_goes_on(
    answer: Any,
) -> None:
    performer = Performer()
    performer.answers[evt.EVT_N_GET] = answer
    async with n_pair(performer) as assoc:
        status, attrs = await assoc.send_n_get(["PatientID"], MPPS, INSTANCE)
        assert status.Status == 0x0110
        assert attrs is None
        # The association (and the server) go on serving.
        status, attrs = await assoc.send_n_set(person(PatientID="X"), MPPS, INSTANCE)
        assert status.Status == 0x0000


async def test_unencodable_reply_is_a_processing_failure() -> None:
    performer = Performer()
    bad = Dataset()
    with warnings.catch_warnings():  # pydicom warns at once; aiodicom finds out encoding it
        warnings.simplefilter("ignore")
        bad.add_new(0x00280010, "US", "not a number")
    performer.answers[evt.EVT_N_GET] = (0x0000, bad)
    async with n_pair(performer) as assoc:
        status, attrs = await assoc.send_n_get(["Rows"], MPPS, INSTANCE)
    assert status.Status == 0x0110
    assert "cannot be encoded" in status.ErrorComment
    assert attrs is None


async def test_unbound_n_events_are_answered_processing_failure() -> None:
    async with scp_ae().start_server(("127.0.0.1", 0)) as server:
        with anyio.fail_after(GUARD):
            async with scu_ae().associate("127.0.0.1", server.port) as assoc:
                status, attrs = await assoc.send_n_get(None, PRINTER, PRINTER_INSTANCE)
                assert (status.Status, attrs) == (0x0110, None)
                status = await assoc.send_n_delete(MPPS, INSTANCE)
                assert status.Status == 0x0110
                status, _ = await assoc.send_n_action(None, 1, COMMITMENT, COMMITMENT_INSTANCE)
                assert status.Status == 0x0110


async def test_unknown_status_code_is_sent_without_a_data_set() -> None:
    performer = Performer()
    performer.answers[evt.EVT_N_ACTION] = (0xC123, person(PatientID="not sent"))
    async with n_pair(performer) as assoc:
        status, reply = await assoc.send_n_action(None, 1, COMMITMENT, COMMITMENT_INSTANCE)
    assert status.Status == 0xC123
    assert status.CommandDataSetType == 0x0101
    assert reply is None


# ---------------------------------------------------------------------------
# The invoker's arguments, checked before anything is sent


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda a: a.send_n_get(None, MPPS, "not a uid"), ValueError),
        (lambda a: a.send_n_get(None, MPPS, ""), ValueError),
        (lambda a: a.send_n_get(None, MPPS, "1." + "2" * 70), ValueError),
        (lambda a: a.send_n_get(None, MPPS, None), TypeError),
        (lambda a: a.send_n_get(["NotAKeyword"], MPPS, INSTANCE), ValueError),
        (lambda a: a.send_n_get(0x00100010, MPPS, INSTANCE), TypeError),
        (lambda a: a.send_n_set(None, MPPS, INSTANCE), ValueError),
        (lambda a: a.send_n_set({"PatientID": "X"}, MPPS, INSTANCE), TypeError),
        (lambda a: a.send_n_action(None, 0x10000, COMMITMENT, INSTANCE), ValueError),
        (lambda a: a.send_n_action(None, "1", COMMITMENT, INSTANCE), ValueError),
        (lambda a: a.send_n_event_report(None, -1, MPPS, INSTANCE), ValueError),
        (lambda a: a.send_n_delete("1.2.bad", INSTANCE), ValueError),
        (lambda a: a.send_n_get(None, sop_class.CTImageStorage, INSTANCE), NoAcceptedContext),
    ],
)
async def test_invalid_arguments_raise_and_send_nothing(call: Any, error: type) -> None:
    performer = Performer()
    async with n_pair(performer) as assoc:
        with pytest.raises(error):
            await call(assoc)
        # Nothing went out: the association is fine and the peer saw nothing.
        status, _ = await assoc.send_n_get(None, MPPS, INSTANCE)
        assert status.Status == 0x0000
    assert [s["kind"] for s in performer.seen] == ["EVT_N_GET"]
    assert performer.seen[0]["request"].RequestedSOPInstanceUID == INSTANCE


async def test_an_scp_role_context_serves_the_peer_not_us() -> None:
    """An N request needs a context where we are the SCU of the SOP class."""
    ae = AE("N_SCU")
    ae.add_requested_context(MPPS)
    ae.acse_timeout = ae.dimse_timeout = 5.0
    performer = Performer()
    server_ae = scp_ae()
    server_ae.add_supported_context(MPPS, scu_role=True, scp_role=True)
    async with server_ae.start_server(("127.0.0.1", 0), evt_handlers=performer.handlers) as srv:
        with anyio.fail_after(GUARD):
            async with ae.associate(
                "127.0.0.1",
                srv.port,
                ext_neg=[build_role(MPPS, scu_role=False, scp_role=True)],
            ) as assoc:
                with pytest.raises(NoAcceptedContext, match="SCU role"):
                    await assoc.send_n_get(None, MPPS, INSTANCE)


# ---------------------------------------------------------------------------
# A peer that breaks the rules


async def test_a_response_of_another_kind_raises_dimse_error() -> None:
    """An N-GET answered by an N-SET-RSP with its Message ID: a typed error, not a reply."""

    async def scp(peer: RawPeer) -> None:
        rq = await peer.read_pdu()
        assert isinstance(rq, AAssociateRQ)
        await peer.send(verification_ac(rq))
        pdu = await peer.read_pdu()
        assert isinstance(pdu, PDataTF)
        command = decode_command(pdu.pdvs[0].data)
        assert command["CommandField"] == CommandField.N_GET_RQ
        fields = {
            "CommandField": CommandField.N_SET_RSP,
            "MessageIDBeingRespondedTo": command["MessageID"],
            "CommandDataSetType": NO_DATASET,
            "Status": 0x0000,
        }
        for raw in fragment(pdu.pdvs[0].context_id, encode_command(fields), None, 16384):
            await peer.send(raw)
        assert isinstance(await peer.read_pdu(), AReleaseRQ)
        await peer.send(AReleaseRP())
        await peer.read_until_eof()

    async with fake_scp(scp) as port:
        with anyio.fail_after(GUARD):
            async with scu_ae().associate("127.0.0.1", port) as assoc:
                with pytest.raises(DIMSEError, match="N-GET-RQ answered with N-SET-RSP"):
                    await assoc.send_n_get(None, MPPS, INSTANCE)


def mpps_rq(transfer_syntax: str) -> AAssociateRQ:
    """A raw peer's A-ASSOCIATE-RQ proposing MPPS (context 1) in ``transfer_syntax``."""
    return dataclasses.replace(
        verification_rq(),
        presentation_contexts=(
            PresentationContextRQ(
                context_id=1, abstract_syntax=MPPS, transfer_syntaxes=(transfer_syntax,)
            ),
        ),
    )


async def test_a_request_data_set_that_does_not_decode_is_0110_and_the_server_goes_on() -> None:
    """The handler reads event.dataset, which raises DIMSEError: 0x0110, the server serves on."""
    performer = Performer()
    ae = AE("N_SCP")
    ae.add_supported_context(MPPS, ["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1"])
    async with ae.start_server(("127.0.0.1", 0), evt_handlers=performer.handlers) as srv:
        async with raw_connection(srv.port) as peer:
            await raw_associate(peer, mpps_rq("1.2.840.10008.1.2.1.99"))  # deflated
            command = encode_command(
                {
                    "CommandField": CommandField.N_SET_RQ,
                    "MessageID": 3,
                    "RequestedSOPClassUID": MPPS,
                    "RequestedSOPInstanceUID": INSTANCE,
                    "CommandDataSetType": 0x0001,
                }
            )
            for raw in fragment(1, command, b"not deflate data", 16384):
                await peer.send(raw)
            pdu = await peer.read_pdu()
            assert isinstance(pdu, PDataTF)
            response = decode_command(pdu.pdvs[0].data)
            assert response["CommandField"] == CommandField.N_SET_RSP
            assert (response["MessageIDBeingRespondedTo"], response["Status"]) == (3, 0x0110)
            await raw_release(peer)
        # ... and the server still serves a well-behaved peer.
        with anyio.fail_after(GUARD):
            async with scu_ae().associate("127.0.0.1", srv.port) as assoc:
                status, _ = await assoc.send_n_set(person(PatientID="OK"), MPPS, INSTANCE)
        assert status.Status == 0x0000
    assert [s["kind"] for s in performer.seen] == ["EVT_N_SET"]


_MISSING = [
    (CommandField.N_GET_RQ, "RequestedSOPInstanceUID", "Requested SOP Instance UID"),
    (CommandField.N_SET_RQ, "RequestedSOPClassUID", "Requested SOP Class UID"),
    (CommandField.N_ACTION_RQ, "ActionTypeID", "Action Type ID"),
    (CommandField.N_EVENT_REPORT_RQ, "EventTypeID", "Event Type ID"),
    (CommandField.N_CREATE_RQ, "AffectedSOPClassUID", "Affected SOP Class UID"),
    (CommandField.N_DELETE_RQ, "RequestedSOPInstanceUID", "Requested SOP Instance UID"),
]


def _n_request(field: int, without: str) -> tuple[dict[str, Any], bytes | None]:
    affected = field in (CommandField.N_EVENT_REPORT_RQ, CommandField.N_CREATE_RQ)
    prefix = "Affected" if affected else "Requested"
    fields: dict[str, Any] = {
        "CommandField": field,
        "MessageID": 21,
        f"{prefix}SOPClassUID": MPPS,
        f"{prefix}SOPInstanceUID": INSTANCE,
        "CommandDataSetType": NO_DATASET,
    }
    if field == CommandField.N_ACTION_RQ:
        fields["ActionTypeID"] = 1
    if field == CommandField.N_EVENT_REPORT_RQ:
        fields["EventTypeID"] = 1
    data = None
    if field == CommandField.N_SET_RQ:
        fields["CommandDataSetType"] = 0x0001
        data = b"\x10\x00\x20\x00LO\x02\x00X "
    del fields[without]
    return fields, data


@pytest.mark.parametrize(("field", "without", "name"), _MISSING)
async def test_n_request_missing_a_mandatory_field_is_0110_naming_it(
    field: int, without: str, name: str
) -> None:
    """PS3.7 10.3: the performer answers 0x0110 with an Error Comment; no handler runs."""
    performer = Performer()
    server = scp_ae().start_server(("127.0.0.1", 0), evt_handlers=performer.handlers)
    async with server as srv, raw_connection(srv.port) as peer:
        await raw_associate(peer, mpps_rq("1.2.840.10008.1.2"))
        fields, data = _n_request(field, without)
        for raw in fragment(1, encode_command(fields), data, 16384):
            await peer.send(raw)
        pdu = await peer.read_pdu()
        assert isinstance(pdu, PDataTF)
        response = decode_command(pdu.pdvs[0].data)
        assert response["CommandField"] == field | 0x8000
        assert (response["MessageIDBeingRespondedTo"], response["Status"]) == (21, 0x0110)
        assert name in response["ErrorComment"]
        await raw_release(peer)
    assert performer.seen == []


async def test_plain_handler_returning_an_awaitable_and_a_reply_bigger_than_a_pdu() -> None:
    """The inline path's two ways out: an awaitable to finish in a task, and a
    reply that needs several P-DATA-TF PDUs (the SCU's maximum is 16 KB)."""
    performer = Performer()
    big = person(EncapsulatedDocument=b"x" * 100_000)

    async def later() -> Any:
        await anyio.lowlevel.checkpoint()
        return 0x0000, big

    performer.answers[evt.EVT_N_GET] = (0x0000, big)
    server_ae = scp_ae()
    handlers = [*performer.handlers, (evt.EVT_N_DELETE, lambda event: later())]
    scu = scu_ae()
    scu.maximum_pdu_size = 16384
    async with server_ae.start_server(("127.0.0.1", 0), evt_handlers=handlers) as srv:
        with anyio.fail_after(GUARD):
            async with scu.associate("127.0.0.1", srv.port) as assoc:
                status, attrs = await assoc.send_n_get(["EncapsulatedDocument"], MPPS, INSTANCE)
                deleted = await assoc.send_n_delete(MPPS, INSTANCE)
                status2, attrs2 = await assoc.send_n_get(None, MPPS, INSTANCE)
    assert status.Status == 0x0000 and attrs is not None
    assert attrs.EncapsulatedDocument == b"x" * 100_000
    assert deleted.Status == 0x0000  # the coroutine's status; N-DELETE sends no data set
    assert status2.Status == 0x0000 and attrs2 is not None
    assert len(attrs2.EncapsulatedDocument) == 100_000
