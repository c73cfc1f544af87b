"""The DICOM Upper Layer state machine, PS3.8 section 9.2, as data.

This module owns the whole protocol state machine and nothing else. The state
transition table (PS3.8 Table 9-10) is the mapping :data:`TRANSITIONS` from
``(State, Event)`` to :class:`Action`; each action (PS3.8 Tables 9-6 to 9-9) is
a pure function of the machine's fixed facts and the event's argument that
returns the next state and a tuple of *effects* for the I/O shell to carry out:
send a PDU, issue an indication to the user, start or stop the ARTIM timer,
open or close the transport.

Theory of operation
-------------------
:class:`UpperLayer` is the whole sans-IO Upper Layer of one association: it
decodes PDUs (``receive_pdu``), turns local requests into PDUs (``send_*``),
runs them through the table and keeps the ARTIM deadline, with time passed in
by the caller (``now``) and read back with :meth:`UpperLayer.get_timer`. It
never reads a clock, sleeps or touches a socket.

A ``(state, event)`` pair missing from the table is handled the way the
standard implies, never by a leaking Python exception:

* an event caused by the *peer* (a PDU, the transport closing) cannot be blank
  in states 2, 3 and 5-13, where the table is complete; in states 1 and 4 there
  is no connection to receive from, so the shell calling it there is a bug in
  the shell: :class:`~aiodicom.errors.LocalProtocolError`;
* an event caused by the *local user* in a state that does not allow it (e.g.
  P-DATA before the association is established) raises
  :class:`~aiodicom.errors.LocalProtocolError` and changes nothing;
* Evt17 (transport closed) in Sta1, and Evt18 (ARTIM expired) outside Sta2 and
  Sta13, are ignored: there is nothing left to do.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from .errors import LocalProtocolError, PDUError
from .pdu import (
    PDU,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUType,
    decode,
)

__all__ = (
    "TRANSITIONS",
    "AbortIndication",
    "Action",
    "AssociateAccepted",
    "AssociateIndication",
    "AssociateRejected",
    "CloseTransport",
    "ConnectTransport",
    "DataIndication",
    "Effect",
    "Event",
    "Indicate",
    "ReleaseConfirmation",
    "ReleaseIndication",
    "SendPDU",
    "StartARTIM",
    "State",
    "StopARTIM",
    "UpperLayer",
)


class State(enum.IntEnum):
    """The states of PS3.8 Table 9-10 (Sta1 to Sta13)."""

    STA1 = 1  #: Idle
    STA2 = 2  #: Transport connection open (awaiting A-ASSOCIATE-RQ PDU)
    STA3 = 3  #: Awaiting local A-ASSOCIATE response primitive
    STA4 = 4  #: Awaiting transport connection opening to complete
    STA5 = 5  #: Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
    STA6 = 6  #: Association established and ready for data transfer
    STA7 = 7  #: Awaiting A-RELEASE-RP PDU
    STA8 = 8  #: Awaiting local A-RELEASE response primitive
    STA9 = 9  #: Release collision requestor side; awaiting A-RELEASE response
    STA10 = 10  #: Release collision acceptor side; awaiting A-RELEASE-RP PDU
    STA11 = 11  #: Release collision requestor side; awaiting A-RELEASE-RP PDU
    STA12 = 12  #: Release collision acceptor side; awaiting A-RELEASE response
    STA13 = 13  #: Awaiting transport connection close indication


class Event(enum.IntEnum):
    """The events of PS3.8 Table 9-10 (Evt1 to Evt19)."""

    EVT1 = 1  #: A-ASSOCIATE request (local user)
    EVT2 = 2  #: Transport connect confirmation (local transport service)
    EVT3 = 3  #: A-ASSOCIATE-AC PDU (received on transport connection)
    EVT4 = 4  #: A-ASSOCIATE-RJ PDU (received on transport connection)
    EVT5 = 5  #: Transport connection indication (local transport service)
    EVT6 = 6  #: A-ASSOCIATE-RQ PDU (received on transport connection)
    EVT7 = 7  #: A-ASSOCIATE response primitive (accept)
    EVT8 = 8  #: A-ASSOCIATE response primitive (reject)
    EVT9 = 9  #: P-DATA request primitive
    EVT10 = 10  #: P-DATA-TF PDU
    EVT11 = 11  #: A-RELEASE request primitive
    EVT12 = 12  #: A-RELEASE-RQ PDU (received on open transport connection)
    EVT13 = 13  #: A-RELEASE-RP PDU (received on transport connection)
    EVT14 = 14  #: A-RELEASE response primitive
    EVT15 = 15  #: A-ABORT request primitive
    EVT16 = 16  #: A-ABORT PDU (received on open transport connection)
    EVT17 = 17  #: Transport connection closed indication (local transport service)
    EVT18 = 18  #: ARTIM timer expired (Association reject/release timer)
    EVT19 = 19  #: Unrecognized or invalid PDU received


class Action(enum.Enum):
    """The actions of PS3.8 Tables 9-6 (AE), 9-7 (DT), 9-8 (AR), 9-9 (AA)."""

    AE_1 = "AE-1"
    AE_2 = "AE-2"
    AE_3 = "AE-3"
    AE_4 = "AE-4"
    AE_5 = "AE-5"
    AE_6 = "AE-6"
    AE_7 = "AE-7"
    AE_8 = "AE-8"
    DT_1 = "DT-1"
    DT_2 = "DT-2"
    AR_1 = "AR-1"
    AR_2 = "AR-2"
    AR_3 = "AR-3"
    AR_4 = "AR-4"
    AR_5 = "AR-5"
    AR_6 = "AR-6"
    AR_7 = "AR-7"
    AR_8 = "AR-8"
    AR_9 = "AR-9"
    AR_10 = "AR-10"
    AA_1 = "AA-1"
    AA_2 = "AA-2"
    AA_3 = "AA-3"
    AA_4 = "AA-4"
    AA_5 = "AA-5"
    AA_6 = "AA-6"
    AA_7 = "AA-7"
    AA_8 = "AA-8"


#: Events caused by the local user (primitives), as opposed to the peer.
LOCAL_EVENTS: Final = frozenset(
    {Event.EVT1, Event.EVT7, Event.EVT8, Event.EVT9, Event.EVT11, Event.EVT14, Event.EVT15}
)


def _table() -> dict[tuple[State, Event], Action]:
    S, E, A = State, Event, Action
    t: dict[tuple[State, Event], Action] = {
        (S.STA1, E.EVT1): A.AE_1,
        (S.STA4, E.EVT2): A.AE_2,
        (S.STA1, E.EVT5): A.AE_5,
        (S.STA2, E.EVT6): A.AE_6,
        (S.STA3, E.EVT7): A.AE_7,
        (S.STA3, E.EVT8): A.AE_8,
        (S.STA6, E.EVT9): A.DT_1,
        (S.STA8, E.EVT9): A.AR_7,
        (S.STA6, E.EVT11): A.AR_1,
        (S.STA8, E.EVT14): A.AR_4,
        (S.STA9, E.EVT14): A.AR_9,
        (S.STA12, E.EVT14): A.AR_4,
        (S.STA4, E.EVT15): A.AA_2,
        (S.STA2, E.EVT18): A.AA_2,
        (S.STA13, E.EVT18): A.AA_2,
        (S.STA2, E.EVT17): A.AA_5,
        (S.STA13, E.EVT17): A.AR_5,
        (S.STA2, E.EVT16): A.AA_2,
        (S.STA13, E.EVT16): A.AA_2,
    }
    connected = [S(i) for i in range(5, 13)]  # Sta5..Sta12
    for s in (S.STA3, *connected):
        t[(s, E.EVT15)] = A.AA_1
        t[(s, E.EVT16)] = A.AA_3
        t[(s, E.EVT17)] = A.AA_4
        for e in (E.EVT3, E.EVT4, E.EVT6, E.EVT10, E.EVT12, E.EVT13, E.EVT19):
            t[(s, e)] = A.AA_8
    t[(S.STA4, E.EVT17)] = A.AA_4
    # Sta2: any PDU but an A-ASSOCIATE-RQ (or an A-ABORT) is answered by AA-1.
    for e in (E.EVT3, E.EVT4, E.EVT10, E.EVT12, E.EVT13, E.EVT19):
        t[(S.STA2, e)] = A.AA_1
    # Sta13: PDUs are ignored, but an A-ASSOCIATE-RQ or garbage gets an A-ABORT.
    for e in (E.EVT3, E.EVT4, E.EVT10, E.EVT12, E.EVT13):
        t[(S.STA13, e)] = A.AA_6
    t[(S.STA13, E.EVT6)] = A.AA_7
    t[(S.STA13, E.EVT19)] = A.AA_7
    # The cells that are not abort paths.
    t[(S.STA5, E.EVT3)] = A.AE_3
    t[(S.STA5, E.EVT4)] = A.AE_4
    t[(S.STA6, E.EVT10)] = A.DT_2
    t[(S.STA7, E.EVT10)] = A.AR_6
    t[(S.STA6, E.EVT12)] = A.AR_2
    t[(S.STA7, E.EVT12)] = A.AR_8
    t[(S.STA7, E.EVT13)] = A.AR_3
    t[(S.STA10, E.EVT13)] = A.AR_10
    t[(S.STA11, E.EVT13)] = A.AR_3
    return t


#: PS3.8 Table 9-10: ``(state, event) -> action``.
TRANSITIONS: Final[Mapping[tuple[State, Event], Action]] = _table()


# ---------------------------------------------------------------------------
# Effects and indications


@dataclass(frozen=True, slots=True)
class SendPDU:
    """Write this PDU to the transport (``bytes`` when already encoded)."""

    pdu: PDU | bytes


@dataclass(frozen=True, slots=True)
class Indicate:
    """Issue this indication or confirmation primitive to the local user."""

    primitive: Indication


@dataclass(frozen=True, slots=True)
class StartARTIM:
    """Start (or restart) the ARTIM timer."""


@dataclass(frozen=True, slots=True)
class StopARTIM:
    """Stop the ARTIM timer."""


@dataclass(frozen=True, slots=True)
class ConnectTransport:
    """Issue a TRANSPORT CONNECT request to the local transport service."""


@dataclass(frozen=True, slots=True)
class CloseTransport:
    """Close the transport connection."""


@dataclass(frozen=True, slots=True)
class AssociateIndication:
    """A-ASSOCIATE indication: the peer asks for an association (AE-6)."""

    request: AAssociateRQ


@dataclass(frozen=True, slots=True)
class AssociateAccepted:
    """A-ASSOCIATE confirmation (accept) (AE-3)."""

    accept: AAssociateAC


@dataclass(frozen=True, slots=True)
class AssociateRejected:
    """A-ASSOCIATE confirmation (reject) (AE-4), or our own provider rejection."""

    reject: AAssociateRJ


@dataclass(frozen=True, slots=True)
class DataIndication:
    """P-DATA indication (DT-2, AR-6)."""

    pdu: PDataTF


@dataclass(frozen=True, slots=True)
class ReleaseIndication:
    """A-RELEASE indication (AR-2), or release collision (AR-8) when ``collision``."""

    collision: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseConfirmation:
    """A-RELEASE confirmation (AR-3, AR-10)."""


@dataclass(frozen=True, slots=True)
class AbortIndication:
    """A-ABORT (peer user, ``source`` 0) or A-P-ABORT (provider) indication.

    ``local`` is true when the abort was detected here (AA-4, AA-8) rather than
    announced by the peer's A-ABORT PDU (AA-3).
    """

    source: int
    reason: int
    local: bool = False
    detail: str = ""


Indication: TypeAlias = (
    AssociateIndication
    | AssociateAccepted
    | AssociateRejected
    | DataIndication
    | ReleaseIndication
    | ReleaseConfirmation
    | AbortIndication
)
Effect: TypeAlias = SendPDU | Indicate | StartARTIM | StopARTIM | ConnectTransport | CloseTransport

_START: Final = StartARTIM()
_STOP: Final = StopARTIM()
_CLOSE: Final = CloseTransport()


# ---------------------------------------------------------------------------
# The actions. ``arg`` is the event's PDU, primitive or error.

ActionResult: TypeAlias = tuple[State, tuple[Effect, ...]]


def _ae_1(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA4, (ConnectTransport(),)


def _ae_2(ul: UpperLayer, arg: object) -> ActionResult:
    assert ul.request is not None
    return State.STA5, (SendPDU(ul.request),)


def _ae_3(ul: UpperLayer, arg: object) -> ActionResult:
    assert isinstance(arg, AAssociateAC)
    return State.STA6, (Indicate(AssociateAccepted(arg)),)


def _ae_4(ul: UpperLayer, arg: object) -> ActionResult:
    assert isinstance(arg, AAssociateRJ)
    return State.STA1, (Indicate(AssociateRejected(arg)), _CLOSE)


def _ae_5(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA2, (_START,)


def _ae_6(ul: UpperLayer, arg: object) -> ActionResult:
    assert isinstance(arg, AAssociateRQ)
    if not arg.protocol_version & 1:
        # Not acceptable to the service provider: protocol version not
        # supported (rejected-permanent, source ACSE provider, reason 2).
        rj = AAssociateRJ(result=1, source=2, reason=2)
        return State.STA13, (_STOP, SendPDU(rj), Indicate(AssociateRejected(rj)), _START)
    return State.STA3, (_STOP, Indicate(AssociateIndication(arg)))


def _ae_7(ul: UpperLayer, arg: object) -> ActionResult:
    assert isinstance(arg, AAssociateAC)
    return State.STA6, (SendPDU(arg),)


def _ae_8(ul: UpperLayer, arg: object) -> ActionResult:
    assert isinstance(arg, AAssociateRJ)
    return State.STA13, (SendPDU(arg), _START)


def _dt_1(ul: UpperLayer, arg: object) -> ActionResult:
    assert isinstance(arg, PDataTF | bytes)
    return State.STA6, (SendPDU(arg),)


def _dt_2(ul: UpperLayer, arg: object) -> ActionResult:
    assert isinstance(arg, PDataTF)
    return State.STA6, (Indicate(DataIndication(arg)),)


def _ar_1(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA7, (SendPDU(AReleaseRQ()),)


def _ar_2(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA8, (Indicate(ReleaseIndication()),)


def _ar_3(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA1, (Indicate(ReleaseConfirmation()), _CLOSE)


def _ar_4(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA13, (SendPDU(AReleaseRP()), _START)


def _ar_5(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA1, (_STOP,)


def _ar_6(ul: UpperLayer, arg: object) -> ActionResult:
    assert isinstance(arg, PDataTF)
    return State.STA7, (Indicate(DataIndication(arg)),)


def _ar_7(ul: UpperLayer, arg: object) -> ActionResult:
    assert isinstance(arg, PDataTF | bytes)
    return State.STA8, (SendPDU(arg),)


def _ar_8(ul: UpperLayer, arg: object) -> ActionResult:
    nxt = State.STA9 if ul.requestor else State.STA10
    return nxt, (Indicate(ReleaseIndication(collision=True)),)


def _ar_9(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA11, (SendPDU(AReleaseRP()),)


def _ar_10(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA12, (Indicate(ReleaseConfirmation()),)


def _aa_1(ul: UpperLayer, arg: object) -> ActionResult:
    # Service-user source. A local A-ABORT request may give its reason; the
    # AA-1 paths driven by a bad PDU in Sta2 send source 0, reason 0.
    pdu = arg if isinstance(arg, AAbort) else AAbort(source=0, reason=0)
    return State.STA13, (SendPDU(pdu), _START)


def _aa_2(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA1, (_STOP, _CLOSE)


def _aa_3(ul: UpperLayer, arg: object) -> ActionResult:
    assert isinstance(arg, AAbort)
    return State.STA1, (Indicate(AbortIndication(arg.source, arg.reason)), _CLOSE)


def _aa_4(ul: UpperLayer, arg: object) -> ActionResult:
    # A-P-ABORT: the transport closed under us (PS3.8 7.4.2, reason 0).
    detail = "the transport connection closed unexpectedly"
    return State.STA1, (Indicate(AbortIndication(2, 0, local=True, detail=detail)),)


def _aa_5(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA1, (_STOP,)


def _aa_6(ul: UpperLayer, arg: object) -> ActionResult:
    return State.STA13, ()


def _aa_7(ul: UpperLayer, arg: object) -> ActionResult:
    reason = arg.reason if isinstance(arg, PDUError) else 2
    return State.STA13, (SendPDU(AAbort(source=2, reason=reason)),)


def _aa_8(ul: UpperLayer, arg: object) -> ActionResult:
    # A valid PDU in the wrong state is an unexpected PDU (reason 2); a
    # malformed one carries the reason its PDUError gives.
    if isinstance(arg, PDUError):
        reason, detail = arg.reason, str(arg)
    else:
        reason, detail = 2, f"unexpected {type(arg).__name__} in state {ul.state.name}"
    return State.STA13, (
        SendPDU(AAbort(source=2, reason=reason)),
        Indicate(AbortIndication(2, reason, local=True, detail=detail)),
        _START,
    )


ACTIONS: Final[Mapping[Action, Callable[[UpperLayer, object], ActionResult]]] = {
    Action.AE_1: _ae_1,
    Action.AE_2: _ae_2,
    Action.AE_3: _ae_3,
    Action.AE_4: _ae_4,
    Action.AE_5: _ae_5,
    Action.AE_6: _ae_6,
    Action.AE_7: _ae_7,
    Action.AE_8: _ae_8,
    Action.DT_1: _dt_1,
    Action.DT_2: _dt_2,
    Action.AR_1: _ar_1,
    Action.AR_2: _ar_2,
    Action.AR_3: _ar_3,
    Action.AR_4: _ar_4,
    Action.AR_5: _ar_5,
    Action.AR_6: _ar_6,
    Action.AR_7: _ar_7,
    Action.AR_8: _ar_8,
    Action.AR_9: _ar_9,
    Action.AR_10: _ar_10,
    Action.AA_1: _aa_1,
    Action.AA_2: _aa_2,
    Action.AA_3: _aa_3,
    Action.AA_4: _aa_4,
    Action.AA_5: _aa_5,
    Action.AA_6: _aa_6,
    Action.AA_7: _aa_7,
    Action.AA_8: _aa_8,
}

_PDU_EVENTS: Final = {
    PDUType.A_ASSOCIATE_RQ: Event.EVT6,
    PDUType.A_ASSOCIATE_AC: Event.EVT3,
    PDUType.A_ASSOCIATE_RJ: Event.EVT4,
    PDUType.P_DATA_TF: Event.EVT10,
    PDUType.A_RELEASE_RQ: Event.EVT12,
    PDUType.A_RELEASE_RP: Event.EVT13,
    PDUType.A_ABORT: Event.EVT16,
}


class UpperLayer:
    """The sans-IO Upper Layer of one association (one side of it).

    ``requestor`` is true for the association-requestor (the side that
    connects). ``artim_timeout`` (seconds, ``None`` for never) is how long the
    ARTIM timer runs. Every method that may start the timer takes ``now``, the
    caller's clock reading; :meth:`get_timer` gives the deadline and
    :meth:`handle_timer` is called once it has passed.

    Each input returns the tuple of effects the shell must carry out, in order.
    ``on_transition`` (if given) is called with ``(old, event, action, new)``
    after every transition, for EVT_FSM_TRANSITION and DEBUG logs.
    """

    __slots__ = (
        "_artim_deadline",
        "artim_timeout",
        "on_transition",
        "request",
        "requestor",
        "state",
    )

    def __init__(
        self,
        *,
        requestor: bool,
        artim_timeout: float | None = 30.0,
        on_transition: Callable[[State, Event, Action, State], None] | None = None,
    ) -> None:
        self.requestor = requestor
        self.state = State.STA1
        self.artim_timeout = artim_timeout
        self.request: AAssociateRQ | None = None
        self._artim_deadline: float | None = None
        self.on_transition = on_transition

    # -- the core -----------------------------------------------------------

    def fire(self, event: Event, arg: object = None, now: float = 0.0) -> tuple[Effect, ...]:
        """Run ``event`` through the table and return the effects.

        Raises :class:`LocalProtocolError` for a local event the current state
        does not allow (nothing changes). See the module docstring for the
        other blank cells.
        """
        old = self.state
        action = TRANSITIONS.get((old, event))
        if action is None:
            if event is Event.EVT17 and old is State.STA1:
                return ()
            if event is Event.EVT18:
                return ()
            raise LocalProtocolError(f"{event.name} is not valid in {old.name}")
        new, effects = ACTIONS[action](self, arg)
        self.state = new
        for effect in effects:
            if effect is _START:
                self._artim_deadline = (
                    None if self.artim_timeout is None else now + self.artim_timeout
                )
            elif effect is _STOP:
                self._artim_deadline = None
        if new is State.STA1:
            self._artim_deadline = None
        if self.on_transition is not None:
            self.on_transition(old, event, action, new)
        return effects

    # -- inputs from the local user and transport ---------------------------

    def request_association(self, request: AAssociateRQ) -> tuple[Effect, ...]:
        """Evt1: the local user asks for an association (requestor)."""
        if not self.requestor:
            raise LocalProtocolError("only the requestor sends an A-ASSOCIATE-RQ")
        if self.state is State.STA1:
            self.request = request
        return self.fire(Event.EVT1, request)

    def transport_connected(self, now: float = 0.0) -> tuple[Effect, ...]:
        """Evt2 (requestor: our connect completed) or Evt5 (acceptor: accepted)."""
        return self.fire(Event.EVT2 if self.requestor else Event.EVT5, None, now)

    def accept(self, accept: AAssociateAC) -> tuple[Effect, ...]:
        """Evt7: A-ASSOCIATE response primitive (accept)."""
        return self.fire(Event.EVT7, accept)

    def reject(self, reject: AAssociateRJ, now: float = 0.0) -> tuple[Effect, ...]:
        """Evt8: A-ASSOCIATE response primitive (reject)."""
        return self.fire(Event.EVT8, reject, now)

    def send_data(self, pdu: PDataTF | bytes) -> tuple[Effect, ...]:
        """Evt9: P-DATA request primitive (``bytes`` is an encoded P-DATA-TF)."""
        return self.fire(Event.EVT9, pdu)

    def note_data_sent(self) -> bool:
        """Evt9 in Sta6, for a caller that writes the P-DATA-TF itself.

        DT-1 keeps Sta6 and touches no timer, so when nobody watches the
        transitions there is nothing to do but say so: True. Otherwise (another
        state, or ``on_transition`` set) nothing changes and the answer is
        False: the caller then calls :meth:`send_data`, through the table.
        """
        return self.state is State.STA6 and self.on_transition is None

    def note_data_received(self) -> bool:
        """Evt10 in Sta6, for a caller that delivers the P-DATA indication itself.

        As :meth:`note_data_sent`, for DT-2: True when there is nothing to
        do; False (nothing changed) when the caller must fire Evt10 through
        the table.
        """
        return self.state is State.STA6 and self.on_transition is None

    def can_send_data(self) -> bool:
        """True in the states where P-DATA may be sent (Sta6, Sta8)."""
        return self.state is State.STA6 or self.state is State.STA8

    def release(self) -> tuple[Effect, ...]:
        """Evt11: A-RELEASE request primitive."""
        return self.fire(Event.EVT11)

    def release_response(self, now: float = 0.0) -> tuple[Effect, ...]:
        """Evt14: A-RELEASE response primitive."""
        return self.fire(Event.EVT14, None, now)

    def abort(self, source: int = 0, reason: int = 0, now: float = 0.0) -> tuple[Effect, ...]:
        """Evt15: A-ABORT request primitive.

        In Sta1 and Sta13 there is nothing to abort and nothing happens. In
        Sta2 (no association requested yet) no A-ABORT is defined: the
        transport is simply closed.
        """
        if self.state in (State.STA1, State.STA13):
            return ()
        if self.state is State.STA2:
            self.state = State.STA1
            self._artim_deadline = None
            return (_CLOSE,)
        return self.fire(Event.EVT15, AAbort(source=source, reason=reason), now)

    def transport_closed(self) -> tuple[Effect, ...]:
        """Evt17: the transport connection closed."""
        return self.fire(Event.EVT17)

    def receive_pdu(
        self, pdu_type: int, body: bytes | bytearray | memoryview, now: float = 0.0
    ) -> tuple[Effect, ...]:
        """Evt3/4/6/10/12/13/16, or Evt19 when ``body`` does not decode."""
        try:
            pdu = decode(pdu_type, body)
        except PDUError as exc:
            return self.receive_invalid(exc, now)
        return self.fire(_PDU_EVENTS[pdu_type], pdu, now)

    def receive_invalid(self, error: PDUError, now: float = 0.0) -> tuple[Effect, ...]:
        """Evt19: an unrecognized or invalid PDU (or PDU header) was received."""
        return self.fire(Event.EVT19, error, now)

    # -- the ARTIM timer ------------------------------------------------------

    def get_timer(self) -> float | None:
        """The ARTIM deadline, in the caller's clock, or ``None`` if not running."""
        return self._artim_deadline

    def handle_timer(self, now: float) -> tuple[Effect, ...]:
        """Evt18 if the ARTIM deadline has passed at ``now``; else nothing."""
        if self._artim_deadline is None or now < self._artim_deadline:
            return ()
        self._artim_deadline = None
        return self.fire(Event.EVT18, None, now)

    @property
    def is_established(self) -> bool:
        """True in Sta6 (data transfer)."""
        return self.state is State.STA6

    @property
    def is_closed(self) -> bool:
        """True in Sta1: nothing more will happen on this connection."""
        return self.state is State.STA1
