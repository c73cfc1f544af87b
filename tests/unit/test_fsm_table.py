"""The PS3.8 state machine, one test per cell of Table 9-10 (13 states x 19 events).

The expected table below is typed in from PS3.8 Table 9-10 row by row (one
row per event, one column per state, "." for a blank cell); it deliberately
does not import :data:`aiodicom.fsm.TRANSITIONS`. The expected behaviour of
each action is typed in from PS3.8 Tables 9-6 to 9-9.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from aiodicom.errors import LocalProtocolError, PDUError
from aiodicom.fsm import (
    TRANSITIONS,
    AbortIndication,
    Action,
    AssociateAccepted,
    AssociateIndication,
    AssociateRejected,
    CloseTransport,
    ConnectTransport,
    DataIndication,
    Event,
    Indicate,
    ReleaseConfirmation,
    ReleaseIndication,
    SendPDU,
    StartARTIM,
    State,
    StopARTIM,
    UpperLayer,
)
from aiodicom.pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
)

# Table 9-10.   Sta: 1     2     3     4     5     6     7     8     9     10    11    12    13
_TABLE_9_10 = """
Evt1                 AE-1  .     .     .     .     .     .     .     .     .     .     .     .
Evt2                 .     .     .     AE-2  .     .     .     .     .     .     .     .     .
Evt3                 .     AA-1  AA-8  .     AE-3  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-6
Evt4                 .     AA-1  AA-8  .     AE-4  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-6
Evt5                 AE-5  .     .     .     .     .     .     .     .     .     .     .     .
Evt6                 .     AE-6  AA-8  .     AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-7
Evt7                 .     .     AE-7  .     .     .     .     .     .     .     .     .     .
Evt8                 .     .     AE-8  .     .     .     .     .     .     .     .     .     .
Evt9                 .     .     .     .     .     DT-1  .     AR-7  .     .     .     .     .
Evt10                .     AA-1  AA-8  .     AA-8  DT-2  AR-6  AA-8  AA-8  AA-8  AA-8  AA-8  AA-6
Evt11                .     .     .     .     .     AR-1  .     .     .     .     .     .     .
Evt12                .     AA-1  AA-8  .     AA-8  AR-2  AR-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-6
Evt13                .     AA-1  AA-8  .     AA-8  AA-8  AR-3  AA-8  AA-8  AR-10 AR-3  AA-8  AA-6
Evt14                .     .     .     .     .     .     .     AR-4  AR-9  .     .     AR-4  .
Evt15                .     .     AA-1  AA-2  AA-1  AA-1  AA-1  AA-1  AA-1  AA-1  AA-1  AA-1  .
Evt16                .     AA-2  AA-3  .     AA-3  AA-3  AA-3  AA-3  AA-3  AA-3  AA-3  AA-3  AA-2
Evt17                .     AA-5  AA-4  AA-4  AA-4  AA-4  AA-4  AA-4  AA-4  AA-4  AA-4  AA-4  AR-5
Evt18                .     AA-2  .     .     .     .     .     .     .     .     .     .     AA-2
Evt19                .     AA-1  AA-8  .     AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-8  AA-7
"""


def _parse_table() -> dict[tuple[int, int], str]:
    table: dict[tuple[int, int], str] = {}
    for line in _TABLE_9_10.strip().splitlines():
        evt, *cells = line.split()
        assert len(cells) == 13, line
        for sta, cell in enumerate(cells, start=1):
            if cell != ".":
                table[(sta, int(evt[3:]))] = cell
    return table


EXPECTED = _parse_table()

PDU_EVENTS = {3, 4, 6, 10, 12, 13, 16, 19}
LOCAL_USER_EVENTS = {1, 7, 8, 9, 11, 14, 15}
LOCAL_TRANSPORT_EVENTS = {2, 5}

NOW = 100.0
ARTIM = 30.0
OLD_DEADLINE = 42.0  # where the ARTIM deadline is when we put a machine in Sta2/Sta13

RQ = AAssociateRQ(
    called_ae_title="SCP",
    calling_ae_title="SCU",
    presentation_contexts=(
        PresentationContextRQ(
            context_id=1,
            abstract_syntax="1.2.840.10008.1.1",
            transfer_syntaxes=("1.2.840.10008.1.2",),
        ),
    ),
)
AC = AAssociateAC(
    called_ae_title="SCP",
    calling_ae_title="SCU",
    presentation_contexts=(
        PresentationContextAC(context_id=1, result=0, transfer_syntax="1.2.840.10008.1.2"),
    ),
)
RJ = AAssociateRJ(result=1, source=1, reason=7)
PDATA = PDataTF(pdvs=(PDV(context_id=1, is_command=True, is_last=True, data=b"\x00"),))
USER_ABORT = AAbort(source=0, reason=0)
PEER_ABORT = AAbort(source=2, reason=5)
BAD_PDU = PDUError("garbage", reason=4)

EVENT_ARGS: dict[int, object] = {
    1: RQ,
    2: None,
    3: AC,
    4: RJ,
    5: None,
    6: RQ,
    7: AC,
    8: RJ,
    9: PDATA,
    10: PDATA,
    11: None,
    12: AReleaseRQ(),
    13: AReleaseRP(),
    14: None,
    15: USER_ABORT,
    16: PEER_ABORT,
    17: None,
    18: None,
    19: BAD_PDU,
}

# The requestor states, for choosing ``requestor`` sensibly.
REQUESTOR_STATES = {1, 4, 5, 6, 7, 8, 9, 11, 13}


def make_machine(sta: int, evt: int | None = None, *, requestor: bool | None = None) -> UpperLayer:
    if requestor is None:
        requestor = sta in REQUESTOR_STATES and not (sta == 1 and evt == 5)
    ul = UpperLayer(requestor=requestor, artim_timeout=ARTIM)
    ul.state = State(sta)
    if requestor:
        ul.request = RQ
    if sta in (2, 13):
        # In Sta2 and Sta13 the ARTIM timer is running (AE-5, AE-8, AR-4, AA-1, AA-8).
        ul._artim_deadline = OLD_DEADLINE  # type: ignore[attr-defined]
    return ul


@dataclass
class Expect:
    """What an action does: next state, effect types in order, extra checks."""

    next_state: int | Callable[[UpperLayer], int]
    effects: list[type]
    timer: str = "keep"  # "keep", "start" (now + ARTIM), "none"
    check: Callable[[UpperLayer, int, object, tuple[object, ...]], None] = field(
        default=lambda ul, evt, arg, effects: None
    )


def _sent(effects: tuple[object, ...]) -> object:
    (send,) = [e for e in effects if isinstance(e, SendPDU)]
    return send.pdu


def _indicated(effects: tuple[object, ...]) -> object:
    (ind,) = [e for e in effects if isinstance(e, Indicate)]
    return ind.primitive


def _check_ae2(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    assert _sent(effects) is RQ


def _check_ae3(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    assert _indicated(effects) == AssociateAccepted(AC)


def _check_ae4(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    assert _indicated(effects) == AssociateRejected(RJ)


def _check_ae6(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    assert _indicated(effects) == AssociateIndication(RQ)


def _check_sent_arg(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    assert _sent(effects) is arg


def _check_data_indication(
    ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]
) -> None:
    assert _indicated(effects) == DataIndication(PDATA)


def _check_release_rq(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    assert _sent(effects) == AReleaseRQ()


def _check_release_rp(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    assert _sent(effects) == AReleaseRP()


def _check_release_ind(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    assert _indicated(effects) == ReleaseIndication(collision=False)


def _check_collision(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    assert _indicated(effects) == ReleaseIndication(collision=True)


def _check_release_conf(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    assert _indicated(effects) == ReleaseConfirmation()


def _check_aa1(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    # "Send A-ABORT PDU (service-user source)".
    sent = _sent(effects)
    assert isinstance(sent, AAbort)
    assert sent.source == 0
    if evt == 15:
        assert sent == USER_ABORT


def _check_aa3(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    ind = _indicated(effects)
    assert isinstance(ind, AbortIndication)
    assert (ind.source, ind.reason) == (PEER_ABORT.source, PEER_ABORT.reason)
    assert not ind.local


def _check_aa4(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    ind = _indicated(effects)
    assert isinstance(ind, AbortIndication)  # A-P-ABORT
    assert ind.source == 2
    assert ind.local


def _check_aa7(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    sent = _sent(effects)
    assert isinstance(sent, AAbort)
    # Service-provider abort: unexpected PDU (2) for a valid A-ASSOCIATE-RQ,
    # the decoding error's reason for an invalid PDU.
    assert sent == AAbort(source=2, reason=2 if evt == 6 else BAD_PDU.reason)


def _check_aa8(ul: UpperLayer, evt: int, arg: object, effects: tuple[object, ...]) -> None:
    reason = BAD_PDU.reason if evt == 19 else 2  # 2: unexpected PDU
    assert _sent(effects) == AAbort(source=2, reason=reason)
    ind = _indicated(effects)
    assert isinstance(ind, AbortIndication)  # A-P-ABORT
    assert (ind.source, ind.reason, ind.local) == (2, reason, True)


ACTIONS: dict[str, Expect] = {
    # Table 9-6
    "AE-1": Expect(4, [ConnectTransport]),
    "AE-2": Expect(5, [SendPDU], check=_check_ae2),
    "AE-3": Expect(6, [Indicate], check=_check_ae3),
    "AE-4": Expect(1, [Indicate, CloseTransport], timer="none", check=_check_ae4),
    "AE-5": Expect(2, [StartARTIM], timer="start"),
    "AE-6": Expect(3, [StopARTIM, Indicate], timer="none", check=_check_ae6),
    "AE-7": Expect(6, [SendPDU], check=_check_sent_arg),
    "AE-8": Expect(13, [SendPDU, StartARTIM], timer="start", check=_check_sent_arg),
    # Table 9-7
    "DT-1": Expect(6, [SendPDU], check=_check_sent_arg),
    "DT-2": Expect(6, [Indicate], check=_check_data_indication),
    # Table 9-8
    "AR-1": Expect(7, [SendPDU], check=_check_release_rq),
    "AR-2": Expect(8, [Indicate], check=_check_release_ind),
    "AR-3": Expect(1, [Indicate, CloseTransport], timer="none", check=_check_release_conf),
    "AR-4": Expect(13, [SendPDU, StartARTIM], timer="start", check=_check_release_rp),
    "AR-5": Expect(1, [StopARTIM], timer="none"),
    "AR-6": Expect(7, [Indicate], check=_check_data_indication),
    "AR-7": Expect(8, [SendPDU], check=_check_sent_arg),
    "AR-8": Expect(lambda ul: 9 if ul.requestor else 10, [Indicate], check=_check_collision),
    "AR-9": Expect(11, [SendPDU], check=_check_release_rp),
    "AR-10": Expect(12, [Indicate], check=_check_release_conf),
    # Table 9-9
    "AA-1": Expect(13, [SendPDU, StartARTIM], timer="start", check=_check_aa1),
    "AA-2": Expect(1, [StopARTIM, CloseTransport], timer="none"),
    "AA-3": Expect(1, [Indicate, CloseTransport], timer="none", check=_check_aa3),
    "AA-4": Expect(1, [Indicate], timer="none", check=_check_aa4),
    "AA-5": Expect(1, [StopARTIM], timer="none"),
    "AA-6": Expect(13, []),
    "AA-7": Expect(13, [SendPDU], check=_check_aa7),
    "AA-8": Expect(13, [SendPDU, Indicate, StartARTIM], timer="start", check=_check_aa8),
}

CELLS = [
    pytest.param(sta, evt, id=f"Sta{sta}-Evt{evt}") for sta in range(1, 14) for evt in range(1, 20)
]


def test_expected_table_shape() -> None:
    assert len(CELLS) == 13 * 19 == 247
    assert len(EXPECTED) == 123
    assert set(EXPECTED.values()) == set(ACTIONS) == {a.value for a in Action}


def test_transitions_is_exactly_the_standards_table() -> None:
    assert len(TRANSITIONS) == 123
    actual = {(int(s), int(e)): a.value for (s, e), a in TRANSITIONS.items()}
    assert actual == EXPECTED
    for (s, e), a in TRANSITIONS.items():
        assert isinstance(s, State) and isinstance(e, Event) and isinstance(a, Action)


def test_transitions_agrees_with_pynetdicom() -> None:
    """A third, independently written copy of Table 9-10."""
    import pynetdicom.fsm as fsm  # a test dependency: missing, this fails

    theirs = {
        (int(sta[3:]), int(evt[3:])): action for (evt, sta), action in fsm.TRANSITION_TABLE.items()
    }
    assert theirs == EXPECTED


def test_enums() -> None:
    assert [int(s) for s in State] == list(range(1, 14))
    assert [int(e) for e in Event] == list(range(1, 20))
    assert len(Action) == 28


@pytest.mark.parametrize(("sta", "evt"), CELLS)
def test_cell(sta: int, evt: int) -> None:
    ul = make_machine(sta, evt)
    seen: list[tuple[State, Event, Action, State]] = []
    ul.on_transition = lambda *args: seen.append(args)
    before_timer = ul.get_timer()
    arg = EVENT_ARGS[evt]
    cell = EXPECTED.get((sta, evt))

    if cell is None:
        if (evt == 17 and sta == 1) or (evt == 18 and sta not in (2, 13)):
            # Ignored: nothing left to do.
            assert ul.fire(Event(evt), arg, now=NOW) == ()
        else:
            # Local primitives not allowed now; PDUs/transport events where
            # there is no connection (Sta1, Sta4) are a bug in the shell.
            assert (
                evt in LOCAL_USER_EVENTS
                or evt in LOCAL_TRANSPORT_EVENTS
                or (evt in PDU_EVENTS and sta in (1, 4))
            )
            with pytest.raises(LocalProtocolError):
                ul.fire(Event(evt), arg, now=NOW)
        assert ul.state is State(sta)
        assert ul.get_timer() == before_timer
        assert seen == []
        return

    expect = ACTIONS[cell]
    effects = ul.fire(Event(evt), arg, now=NOW)
    next_state = expect.next_state(ul) if callable(expect.next_state) else expect.next_state
    assert ul.state is State(next_state)
    assert [type(e) for e in effects] == expect.effects
    expect.check(ul, evt, arg, effects)
    if expect.timer == "start":
        assert ul.get_timer() == NOW + ARTIM
    elif expect.timer == "none" or next_state == 1:
        assert ul.get_timer() is None
    else:
        assert ul.get_timer() == before_timer
    assert seen == [(State(sta), Event(evt), Action(cell), State(next_state))]


# ---------------------------------------------------------------------------
# Cells whose action depends on more than the cell


@pytest.mark.parametrize(("requestor", "next_state"), [(True, State.STA9), (False, State.STA10)])
def test_ar8_release_collision_depends_on_role(requestor: bool, next_state: State) -> None:
    ul = make_machine(7, requestor=requestor)
    effects = ul.fire(Event.EVT12, AReleaseRQ())
    assert ul.state is next_state
    assert effects == (Indicate(ReleaseIndication(collision=True)),)


@pytest.mark.parametrize("version", [0, 2, 0x8000, 0xFFFE])
def test_ae6_protocol_version_not_supported_is_rejected(version: int) -> None:
    """AE-6 "otherwise": A-ASSOCIATE-RJ (rejected-permanent, ACSE provider,
    protocol-version-not-supported), start ARTIM, Sta13."""
    ul = make_machine(2)
    rq = AAssociateRQ(protocol_version=version, called_ae_title="SCP", calling_ae_title="SCU")
    effects = ul.fire(Event.EVT6, rq, now=NOW)
    assert ul.state is State.STA13
    assert SendPDU(AAssociateRJ(result=1, source=2, reason=2)) in effects
    kinds = [type(e) for e in effects]
    assert kinds[0] is StopARTIM and kinds[-1] is StartARTIM
    assert kinds.index(SendPDU) < kinds.index(StartARTIM)
    assert AssociateIndication(rq) not in [getattr(e, "primitive", None) for e in effects]
    assert ul.get_timer() == NOW + ARTIM


@pytest.mark.parametrize("version", [1, 3, 0xFFFF])
def test_ae6_only_bit_0_of_the_protocol_version_is_tested(version: int) -> None:
    ul = make_machine(2)
    rq = AAssociateRQ(protocol_version=version, called_ae_title="SCP", calling_ae_title="SCU")
    assert ul.fire(Event.EVT6, rq, now=NOW) == (StopARTIM(), Indicate(AssociateIndication(rq)))
    assert ul.state is State.STA3


def test_aa1_local_abort_carries_the_users_reason() -> None:
    ul = make_machine(6)
    effects = ul.abort(source=0, reason=0, now=NOW)
    assert effects[0] == SendPDU(AAbort(source=0, reason=0))
    assert ul.state is State.STA13


def test_aa1_for_a_bad_pdu_in_sta2_is_a_service_user_abort() -> None:
    ul = make_machine(2)
    effects = ul.fire(Event.EVT19, PDUError("bad", reason=1), now=NOW)
    assert effects[0] == SendPDU(AAbort(source=0, reason=0))
    assert ul.state is State.STA13


@pytest.mark.parametrize("reason", [0, 1, 4, 5, 6])
def test_aa8_carries_the_decoding_errors_reason(reason: int) -> None:
    ul = make_machine(6)
    effects = ul.fire(Event.EVT19, PDUError("bad", reason=reason), now=NOW)
    assert effects[0] == SendPDU(AAbort(source=2, reason=reason))
    ind = effects[1].primitive  # type: ignore[union-attr]
    assert isinstance(ind, AbortIndication) and ind.reason == reason and "bad" in ind.detail


def test_aa3_user_and_provider_aborts() -> None:
    for source, reason in [(0, 0), (2, 0), (2, 1), (2, 6)]:
        ul = make_machine(6)
        effects = ul.fire(Event.EVT16, AAbort(source=source, reason=reason))
        assert effects == (Indicate(AbortIndication(source, reason)), CloseTransport())
        assert ul.state is State.STA1


# ---------------------------------------------------------------------------
# The convenience methods map onto the right events


def test_request_association_sets_request_and_is_requestor_only() -> None:
    ul = UpperLayer(requestor=True)
    assert ul.request_association(RQ) == (ConnectTransport(),)
    assert ul.request is RQ and ul.state is State.STA4
    assert ul.transport_connected() == (SendPDU(RQ),)
    assert ul.state is State.STA5
    with pytest.raises(LocalProtocolError):
        UpperLayer(requestor=False).request_association(RQ)
    # Not in Sta1: refused, and the request in progress is kept.
    other = AAssociateRQ(called_ae_title="X", calling_ae_title="Y")
    with pytest.raises(LocalProtocolError):
        ul.request_association(other)
    assert ul.request is RQ and ul.state is State.STA5


def test_transport_connected_is_evt5_for_the_acceptor() -> None:
    ul = UpperLayer(requestor=False, artim_timeout=ARTIM)
    assert ul.transport_connected(now=NOW) == (StartARTIM(),)
    assert ul.state is State.STA2
    assert ul.get_timer() == NOW + ARTIM


def test_abort_outside_an_association() -> None:
    for sta in (1, 13):
        ul = make_machine(sta)
        before = ul.get_timer()
        assert ul.abort() == ()
        assert ul.state is State(sta) and ul.get_timer() == before
    # Sta2: no A-ABORT is defined before the A-ASSOCIATE-RQ; just close.
    ul = make_machine(2)
    assert ul.abort() == (CloseTransport(),)
    assert ul.state is State.STA1 and ul.get_timer() is None
    # Sta4: AA-2.
    ul = make_machine(4)
    assert ul.abort() == (StopARTIM(), CloseTransport())
    assert ul.state is State.STA1


def test_can_send_data_and_properties() -> None:
    for sta in range(1, 14):
        ul = make_machine(sta)
        assert ul.can_send_data() is (sta in (6, 8))
        assert ul.is_established is (sta == 6)
        assert ul.is_closed is (sta == 1)


def test_send_data_accepts_encoded_bytes() -> None:
    ul = make_machine(6)
    wire = b"\x04\x00\x00\x00\x00\x07\x00\x00\x00\x03\x01\x03\x00"
    assert ul.send_data(wire) == (SendPDU(wire),)
    ul = make_machine(8)
    assert ul.send_data(wire) == (SendPDU(wire),)
    assert ul.state is State.STA8


def test_release_response_and_reject_methods() -> None:
    ul = make_machine(8)
    assert ul.release_response(now=NOW) == (SendPDU(AReleaseRP()), StartARTIM())
    assert ul.state is State.STA13 and ul.get_timer() == NOW + ARTIM
    ul = make_machine(3)
    assert ul.reject(RJ, now=NOW) == (SendPDU(RJ), StartARTIM())
    assert ul.state is State.STA13 and ul.get_timer() == NOW + ARTIM
    ul = make_machine(3)
    assert ul.accept(AC) == (SendPDU(AC),)
    assert ul.state is State.STA6
    with pytest.raises(LocalProtocolError):
        ul.accept(AC)
    with pytest.raises(LocalProtocolError):
        ul.release_response()


# ---------------------------------------------------------------------------
# The ARTIM timer (PS3.8 9.1.5): the caller passes the time in


def test_artim_starts_on_transport_connection_and_expires_in_sta2() -> None:
    ul = UpperLayer(requestor=False, artim_timeout=ARTIM)
    assert ul.get_timer() is None
    ul.transport_connected(now=10.0)  # AE-5
    assert ul.get_timer() == 10.0 + ARTIM
    assert ul.handle_timer(10.0) == ()
    assert ul.handle_timer(10.0 + ARTIM - 0.001) == ()
    assert ul.state is State.STA2 and ul.get_timer() == 10.0 + ARTIM
    # Evt18 in Sta2: AA-2, close the transport.
    assert ul.handle_timer(10.0 + ARTIM) == (StopARTIM(), CloseTransport())
    assert ul.state is State.STA1 and ul.get_timer() is None
    assert ul.handle_timer(1e9) == ()


def test_artim_stopped_by_the_associate_rq() -> None:
    ul = UpperLayer(requestor=False, artim_timeout=ARTIM)
    ul.transport_connected(now=0.0)
    ul.fire(Event.EVT6, RQ, now=5.0)  # AE-6: StopARTIM
    assert ul.state is State.STA3 and ul.get_timer() is None
    assert ul.handle_timer(1e9) == ()
    assert ul.state is State.STA3


def test_artim_expires_in_sta13() -> None:
    ul = UpperLayer(requestor=False, artim_timeout=ARTIM)
    ul.transport_connected(now=0.0)
    ul.fire(Event.EVT6, RQ, now=1.0)
    ul.reject(RJ, now=50.0)  # AE-8: start ARTIM
    assert ul.state is State.STA13 and ul.get_timer() == 50.0 + ARTIM
    assert ul.handle_timer(79.0) == ()
    assert ul.handle_timer(200.0) == (StopARTIM(), CloseTransport())
    assert ul.state is State.STA1 and ul.get_timer() is None


def test_artim_stopped_when_the_peer_closes_in_sta13() -> None:
    ul = make_machine(8)
    ul.release_response(now=0.0)  # AR-4
    assert ul.get_timer() == ARTIM
    assert ul.transport_closed() == (StopARTIM(),)  # AR-5
    assert ul.state is State.STA1 and ul.get_timer() is None
    assert ul.handle_timer(1e9) == ()


def test_artim_restarted_by_aa1() -> None:
    ul = UpperLayer(requestor=False, artim_timeout=ARTIM)
    ul.transport_connected(now=0.0)
    ul.fire(Event.EVT10, PDATA, now=10.0)  # AA-1 in Sta2: "start (or restart)"
    assert ul.state is State.STA13 and ul.get_timer() == 10.0 + ARTIM


def test_artim_timeout_none_never_sets_a_deadline() -> None:
    ul = UpperLayer(requestor=False, artim_timeout=None)
    ul.transport_connected(now=0.0)
    assert ul.state is State.STA2 and ul.get_timer() is None
    ul.fire(Event.EVT6, RQ)
    ul.reject(RJ, now=1.0)
    assert ul.state is State.STA13 and ul.get_timer() is None
    assert ul.handle_timer(1e12) == ()
    assert ul.state is State.STA13
    # Evt18 can still be fired explicitly.
    assert ul.fire(Event.EVT18) == (StopARTIM(), CloseTransport())
    assert ul.state is State.STA1


def test_handle_timer_without_deadline_does_nothing_in_every_state() -> None:
    for sta in range(1, 14):
        ul = UpperLayer(requestor=True)
        ul.state = State(sta)
        assert ul.handle_timer(1e9) == ()
        assert ul.state is State(sta)


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.name)
@pytest.mark.parametrize("watched", [False, True])
def test_data_notes_agree_with_the_table(state: State, watched: bool) -> None:
    """note_data_sent/received say True only where Evt9/Evt10 through the table
    change nothing: Sta6 (DT-1, DT-2), with nobody watching the transitions."""
    for note, event in (("note_data_sent", Event.EVT9), ("note_data_received", Event.EVT10)):
        seen: list[object] = []
        ul = UpperLayer(requestor=True, artim_timeout=ARTIM)
        ul.state = state
        if watched:
            ul.on_transition = lambda *args, seen=seen: seen.append(args)
        said = getattr(ul, note)()
        assert ul.state is state and seen == []  # a note changes nothing
        assert said == (state is State.STA6 and not watched)
        if said:
            # Through the table, the same event leaves everything as it was.
            action = TRANSITIONS[(state, event)]
            assert action is (Action.DT_1 if event is Event.EVT9 else Action.DT_2)
            timer = ul.get_timer()
            ul.fire(event, PDATA if event is Event.EVT10 else b"\x04", 1.0)
            assert ul.state is State.STA6 and ul.get_timer() == timer
