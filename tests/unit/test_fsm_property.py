"""Property tests: random event sequences never break the Upper Layer.

Whatever the order of inputs, the machine raises nothing but
LocalProtocolError (and only for a blank cell of Table 9-10, changing
nothing), always sits in a valid State, keeps the ARTIM timer running exactly
in Sta2 and Sta13, and once it has sent an A-ABORT it stays in Sta13 or Sta1
until a new connection starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aiodicom.errors import LocalProtocolError, PDUError
from aiodicom.fsm import (
    TRANSITIONS,
    CloseTransport,
    ConnectTransport,
    Event,
    Indicate,
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
    decode_pdu,
    encode,
)

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
RQ_V0 = AAssociateRQ(protocol_version=0, called_ae_title="SCP", calling_ae_title="SCU")
AC = AAssociateAC(
    called_ae_title="SCP",
    calling_ae_title="SCU",
    presentation_contexts=(
        PresentationContextAC(context_id=1, result=0, transfer_syntax="1.2.840.10008.1.2"),
    ),
)
RJ = AAssociateRJ(result=2, source=3, reason=1)
PDATA = PDataTF(pdvs=(PDV(context_id=1, is_command=False, is_last=True, data=b"xyz"),))

# What the peer can send: encoded PDUs, and a few that do not decode.
PEER_PDUS: dict[str, bytes] = {
    "rq": encode(RQ),
    "rq-v0": encode(RQ_V0),
    "ac": encode(AC),
    "rj": encode(RJ),
    "pdata": encode(PDATA),
    "release-rq": encode(AReleaseRQ()),
    "release-rp": encode(AReleaseRP()),
    "abort-user": encode(AAbort(source=0, reason=0)),
    "abort-provider": encode(AAbort(source=2, reason=2)),
    "bad-pdv": b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x01\x01\x03",
    "bad-rq": b"\x01\x00\x00\x00\x00\x44" + b"\x00" * 0x44,  # no application context
    "bad-type": b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00",
}
_PDU_EVENT = {
    1: Event.EVT6,
    2: Event.EVT3,
    3: Event.EVT4,
    4: Event.EVT10,
    5: Event.EVT12,
    6: Event.EVT13,
    7: Event.EVT16,
}


def _peer_event(data: bytes) -> Event:
    try:
        decode_pdu(data)
    except PDUError:
        return Event.EVT19
    return _PDU_EVENT[data[0]]


PEER_EVENTS = {name: _peer_event(data) for name, data in PEER_PDUS.items()}

LOCAL_OPS = [
    "request",
    "connected",
    "accept",
    "reject",
    "send_data",
    "send_data_bytes",
    "release",
    "release_response",
    "abort",
    "closed",
    "timer",
    "invalid",
]
OPS = LOCAL_OPS + [f"recv:{name}" for name in PEER_PDUS]


def _event_of(ul: UpperLayer, op: str) -> Event | None:
    """The event an input will fire (None when it fires no table event)."""
    if op.startswith("recv:"):
        return PEER_EVENTS[op[5:]]
    return {
        "request": Event.EVT1,
        "connected": Event.EVT2 if ul.requestor else Event.EVT5,
        "accept": Event.EVT7,
        "reject": Event.EVT8,
        "send_data": Event.EVT9,
        "send_data_bytes": Event.EVT9,
        "release": Event.EVT11,
        "release_response": Event.EVT14,
        "abort": Event.EVT15,
        "closed": Event.EVT17,
        "invalid": Event.EVT19,
    }.get(op)


def apply(ul: UpperLayer, op: str, now: float) -> tuple[object, ...]:
    if op == "request":
        return ul.request_association(RQ)
    if op == "connected":
        return ul.transport_connected(now=now)
    if op == "accept":
        return ul.accept(AC)
    if op == "reject":
        return ul.reject(RJ, now=now)
    if op == "send_data":
        return ul.send_data(PDATA)
    if op == "send_data_bytes":
        return ul.send_data(encode(PDATA))
    if op == "release":
        return ul.release()
    if op == "release_response":
        return ul.release_response(now=now)
    if op == "abort":
        return ul.abort(now=now)
    if op == "closed":
        return ul.transport_closed()
    if op == "timer":
        return ul.handle_timer(now)
    if op == "invalid":
        return ul.receive_invalid(PDUError("garbage"), now=now)
    data = PEER_PDUS[op[5:]]
    return ul.receive_pdu(data[0], data[6:], now=now)


def _is_abort(effect: object) -> bool:
    if not isinstance(effect, SendPDU):
        return False
    pdu = effect.pdu
    return isinstance(pdu, AAbort) or (isinstance(pdu, bytes) and pdu[:1] == b"\x07")


@dataclass
class Tracker:
    """Checks the invariants after each input."""

    ul: UpperLayer
    aborted: bool = False

    def step(self, op: str, now: float) -> None:
        ul = self.ul
        before = (ul.state, ul.get_timer(), ul.request)
        event = _event_of(ul, op)
        try:
            effects = apply(ul, op, now)
        except LocalProtocolError:
            # Only a blank cell (or a request from the acceptor), and nothing changed.
            assert event is not None
            assert (before[0], event) not in TRANSITIONS or (op == "request" and not ul.requestor)
            assert (ul.state, ul.get_timer(), ul.request) == before
            return
        assert isinstance(ul.state, State)
        for effect in effects:
            assert isinstance(
                effect,
                SendPDU | Indicate | StartARTIM | StopARTIM | ConnectTransport | CloseTransport,
            )
            if isinstance(effect, SendPDU) and not isinstance(effect.pdu, bytes):
                encode(effect.pdu)  # everything sent can be encoded
        if before[0] is State.STA1 and ul.state is not State.STA1:
            self.aborted = False  # a new connection
        if any(_is_abort(e) for e in effects):
            self.aborted = True
        self.check()

    def check(self) -> None:
        ul = self.ul
        assert isinstance(ul.state, State)
        if self.aborted:
            assert ul.state in (State.STA13, State.STA1)
        if ul.artim_timeout is None:
            assert ul.get_timer() is None
        else:
            # ARTIM runs while waiting for an A-ASSOCIATE-RQ (Sta2) or for the
            # transport to close (Sta13), and at no other time.
            assert (ul.get_timer() is not None) == (ul.state in (State.STA2, State.STA13))


def _cell_kind(state: State, event: Event | None) -> str:
    action = TRANSITIONS.get((state, event)) if event is not None else None
    if action is None:
        return "blank"
    return "abort" if action.value.startswith("AA") else "progress"


def _draw_op(data: st.DataObject, ul: UpperLayer) -> str:
    """Mostly an input that makes progress (a non-abort cell of the table) so
    sequences get deep into the machine, sometimes an abort path, sometimes
    any input at all (blank cells included)."""
    mode = data.draw(st.sampled_from(["progress", "progress", "progress", "abort", "any"]))
    if mode != "any":
        kinds = [
            (
                op,
                ("abort" if ul.get_timer() is not None else "blank")
                if op == "timer"
                else _cell_kind(ul.state, _event_of(ul, op)),
            )
            for op in OPS
        ]
        choice = [op for op, kind in kinds if kind == mode] or [
            op for op, kind in kinds if kind != "blank"
        ]
        if choice:
            return data.draw(st.sampled_from(choice), label="op")
    return data.draw(st.sampled_from(OPS), label="op")


_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(
    requestor=st.booleans(),
    artim=st.sampled_from([30.0, 1.0, None]),
    n_steps=st.integers(min_value=0, max_value=40),
    data=st.data(),
)
def test_random_inputs_through_the_public_methods(
    requestor: bool, artim: float | None, n_steps: int, data: st.DataObject
) -> None:
    tracker = Tracker(UpperLayer(requestor=requestor, artim_timeout=artim))
    now = 0.0
    for _ in range(n_steps):
        op = _draw_op(data, tracker.ul)
        now += data.draw(st.integers(min_value=0, max_value=40), label="advance")
        tracker.step(op, now)


# Canonical arguments for firing raw events.
EVENT_ARGS: dict[Event, object] = {
    Event.EVT1: RQ,
    Event.EVT3: AC,
    Event.EVT4: RJ,
    Event.EVT6: RQ,
    Event.EVT7: AC,
    Event.EVT8: RJ,
    Event.EVT9: PDATA,
    Event.EVT10: PDATA,
    Event.EVT12: AReleaseRQ(),
    Event.EVT13: AReleaseRP(),
    Event.EVT15: AAbort(),
    Event.EVT16: AAbort(source=2, reason=1),
    Event.EVT19: PDUError("bad", reason=6),
}


@_SETTINGS
@given(requestor=st.booleans(), n_events=st.integers(0, 50), data=st.data())
def test_random_raw_events(requestor: bool, n_events: int, data: st.DataObject) -> None:
    """Every event of Table 9-10 in any order via ``fire``: only blank cells raise."""
    ul = UpperLayer(requestor=requestor)
    ul.request = RQ
    aborted = False
    for i in range(n_events):
        before = ul.state
        mode = data.draw(st.sampled_from(["progress", "progress", "progress", "abort", "any"]))
        cells = [e for e in Event if _cell_kind(before, e) == mode] or [
            e for e in Event if (before, e) in TRANSITIONS
        ]
        if mode == "any":
            cells = list(Event)
        event = data.draw(st.sampled_from(cells), label="event")
        try:
            effects = ul.fire(event, EVENT_ARGS.get(event), now=float(i))
        except LocalProtocolError:
            assert (before, event) not in TRANSITIONS
            assert ul.state is before
            continue
        if (before, event) not in TRANSITIONS:
            assert effects == ()
            assert event in (Event.EVT17, Event.EVT18)
        assert isinstance(ul.state, State)
        if before is State.STA1 and ul.state is not State.STA1:
            aborted = False
        if any(_is_abort(e) for e in effects):
            aborted = True
        if aborted:
            assert ul.state in (State.STA13, State.STA1)


class UpperLayerMachine(RuleBasedStateMachine):
    """The same properties as a hypothesis state machine over one association."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker: Tracker | None = None
        self.now = 0.0

    @precondition(lambda self: self.tracker is None)
    @rule(requestor=st.booleans(), artim=st.sampled_from([30.0, None]))
    def start(self, requestor: bool, artim: float | None) -> None:
        self.tracker = Tracker(UpperLayer(requestor=requestor, artim_timeout=artim))

    @precondition(lambda self: self.tracker is not None)
    @rule(data=st.data(), advance=st.integers(min_value=0, max_value=40))
    def step(self, data: st.DataObject, advance: int) -> None:
        assert self.tracker is not None
        self.now += advance
        self.tracker.step(_draw_op(data, self.tracker.ul), self.now)

    @invariant()
    def valid(self) -> None:
        if self.tracker is not None:
            self.tracker.check()


TestUpperLayerMachine = UpperLayerMachine.TestCase
TestUpperLayerMachine.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
