"""Two Upper Layers talking to each other in memory (after h11's ConnectionPair).

A requestor and an acceptor :class:`~aiodicom.fsm.UpperLayer` exchange real
encoded PDU bytes: every ``SendPDU`` effect is encoded and appended to a byte
stream, which the other side reads the way an I/O shell does (6-byte header,
:func:`check_header`, body, ``receive_pdu``). ``CloseTransport`` ends the
stream: the peer reads what was sent before the close, then gets Evt17.
Nothing is delivered until the test says so, which lets PDUs cross.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydicom.uid import UID

from aiodicom.errors import LocalProtocolError, PDUError
from aiodicom.fsm import (
    AbortIndication,
    AssociateAccepted,
    AssociateIndication,
    AssociateRejected,
    CloseTransport,
    ConnectTransport,
    DataIndication,
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
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    PDataTF,
    PresentationContextRQ,
    check_header,
    encode,
    encode_p_data,
)
from aiodicom.pdu_primitives import (
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from aiodicom.presentation import build_context, negotiate_as_acceptor, to_ac_items

ARTIM = 30.0
MAX_PDU = 16384
VERIFICATION = UID("1.2.840.10008.1.1")
IMPLICIT_LE = UID("1.2.840.10008.1.2")


@dataclass
class Side:
    name: str
    ul: UpperLayer
    indications: list[object] = field(default_factory=list)
    #: Bytes written to the transport and not yet read by the peer.
    outgoing: bytearray = field(default_factory=bytearray)
    #: This side closed the transport (CloseTransport), after ``outgoing``.
    closed: bool = False
    #: This side has been told the transport closed (Evt17) or closed it.
    done: bool = False
    connect_requested: bool = False
    artim_running: bool = False

    @property
    def state(self) -> State:
        return self.ul.state

    def pop_indications(self) -> list[object]:
        out, self.indications = self.indications, []
        return out


class ConnectionPair:
    def __init__(self, artim_timeout: float | None = ARTIM) -> None:
        self.requestor = Side("requestor", UpperLayer(requestor=True, artim_timeout=artim_timeout))
        self.acceptor = Side("acceptor", UpperLayer(requestor=False, artim_timeout=artim_timeout))
        self.now = 0.0
        self.sent: list[tuple[str, bytes]] = []  # every PDU, for inspection

    def peer(self, side: Side) -> Side:
        return self.acceptor if side is self.requestor else self.requestor

    # -- carrying out effects ---------------------------------------------

    def handle(self, side: Side, effects: tuple[object, ...]) -> tuple[object, ...]:
        for effect in effects:
            if isinstance(effect, SendPDU):
                assert not side.closed, f"{side.name} sends after closing the transport"
                data = effect.pdu if isinstance(effect.pdu, bytes) else encode(effect.pdu)
                side.outgoing += data
                self.sent.append((side.name, data))
            elif isinstance(effect, Indicate):
                side.indications.append(effect.primitive)
            elif isinstance(effect, ConnectTransport):
                side.connect_requested = True
            elif isinstance(effect, CloseTransport):
                side.closed = side.done = True
            elif isinstance(effect, StartARTIM):
                side.artim_running = True
            elif isinstance(effect, StopARTIM):
                side.artim_running = False
            else:  # pragma: no cover
                raise AssertionError(f"unknown effect {effect!r}")
        if side.state is State.STA1:
            side.artim_running = False
        assert (side.ul.get_timer() is not None) == (
            side.artim_running and side.ul.artim_timeout is not None
        )
        return effects

    def do(self, side: Side, method: str, *args: object, **kwargs: object) -> tuple[object, ...]:
        return self.handle(side, getattr(side.ul, method)(*args, **kwargs))

    # -- the transport ----------------------------------------------------

    def connect(self) -> None:
        """The requestor's TRANSPORT CONNECT succeeds: Evt5 then Evt2."""
        assert self.requestor.connect_requested
        self.requestor.connect_requested = False
        self.do(self.acceptor, "transport_connected", now=self.now)
        self.do(self.requestor, "transport_connected", now=self.now)

    def deliver_one(self, sender: Side) -> bool:
        """Let the peer of ``sender`` read one PDU (or the close). False if idle."""
        receiver = self.peer(sender)
        if receiver.done:
            sender.outgoing.clear()  # nobody is reading any more
            return False
        buf = sender.outgoing
        if not buf:
            if sender.closed:
                receiver.done = True
                self.do(receiver, "transport_closed")
                return True
            return False
        assert len(buf) >= 6, "a PDU is written whole"
        header = bytes(buf[:6])
        try:
            pdu_type, length = check_header(header, MAX_PDU)
        except PDUError as exc:
            buf.clear()  # the shell stops reading after a bad header
            self.do(receiver, "receive_invalid", exc, now=self.now)
            return True
        body = bytes(buf[6 : 6 + length])
        assert len(body) == length
        del buf[: 6 + length]
        self.do(receiver, "receive_pdu", pdu_type, body, now=self.now)
        return True

    def deliver(self, sender: Side) -> None:
        while self.deliver_one(sender):
            pass

    def deliver_all(self) -> None:
        while self.deliver_one(self.requestor) or self.deliver_one(self.acceptor):
            pass

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for side in (self.requestor, self.acceptor):
            self.handle(side, side.ul.handle_timer(self.now))

    # -- a whole establishment --------------------------------------------

    def establish(self) -> AAssociateAC:
        self.do(self.requestor, "request_association", REQUEST)
        self.connect()
        self.deliver(self.requestor)
        (indication,) = self.acceptor.pop_indications()
        assert isinstance(indication, AssociateIndication)
        accept = make_accept(indication.request)
        self.do(self.acceptor, "accept", accept)
        self.deliver(self.acceptor)
        assert self.requestor.pop_indications() == [AssociateAccepted(accept)]
        assert self.requestor.state is State.STA6 and self.acceptor.state is State.STA6
        return accept


REQUEST = AAssociateRQ(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(
        PresentationContextRQ(
            context_id=1, abstract_syntax=VERIFICATION, transfer_syntaxes=(IMPLICIT_LE,)
        ),
        PresentationContextRQ(
            context_id=3,
            abstract_syntax=UID("1.2.840.10008.5.1.4.1.1.2"),
            transfer_syntaxes=(IMPLICIT_LE,),
        ),
    ),
    user_information=(
        MaximumLengthNotification(maximum_length_received=MAX_PDU),
        ImplementationClassUIDNotification(implementation_class_uid=UID("1.2.3.4")),
    ),
)


def make_accept(request: AAssociateRQ) -> AAssociateAC:
    contexts, _roles = negotiate_as_acceptor(
        request.presentation_contexts, [build_context(VERIFICATION, IMPLICIT_LE)]
    )
    return AAssociateAC(
        called_ae_title=request.called_ae_title,
        calling_ae_title=request.calling_ae_title,
        presentation_contexts=to_ac_items(contexts),
        user_information=(MaximumLengthNotification(maximum_length_received=MAX_PDU),),
    )


def assert_both_closed(pair: ConnectionPair) -> None:
    assert pair.requestor.state is State.STA1
    assert pair.acceptor.state is State.STA1
    assert pair.requestor.ul.get_timer() is None
    assert pair.acceptor.ul.get_timer() is None
    assert pair.requestor.done and pair.acceptor.done


# ---------------------------------------------------------------------------


def test_association_accepted() -> None:
    pair = ConnectionPair()
    assert pair.do(pair.requestor, "request_association", REQUEST) == (ConnectTransport(),)
    assert pair.requestor.state is State.STA4
    pair.connect()
    assert pair.acceptor.state is State.STA2
    assert pair.acceptor.ul.get_timer() == ARTIM
    assert pair.requestor.state is State.STA5
    pair.deliver(pair.requestor)
    assert pair.acceptor.state is State.STA3
    assert pair.acceptor.ul.get_timer() is None
    (indication,) = pair.acceptor.pop_indications()
    assert indication == AssociateIndication(REQUEST)  # decoded from the wire
    accept = make_accept(indication.request)  # type: ignore[attr-defined]
    assert [(cx.context_id, cx.result) for cx in accept.presentation_contexts] == [(1, 0), (3, 3)]
    pair.do(pair.acceptor, "accept", accept)
    assert pair.acceptor.state is State.STA6
    pair.deliver(pair.acceptor)
    assert pair.requestor.state is State.STA6
    assert pair.requestor.pop_indications() == [AssociateAccepted(accept)]
    assert [data[0] for _, data in pair.sent] == [0x01, 0x02]


def test_association_rejected() -> None:
    pair = ConnectionPair()
    pair.do(pair.requestor, "request_association", REQUEST)
    pair.connect()
    pair.deliver(pair.requestor)
    reject = AAssociateRJ(result=1, source=1, reason=7)
    pair.do(pair.acceptor, "reject", reject, now=pair.now)
    assert pair.acceptor.state is State.STA13
    assert pair.acceptor.ul.get_timer() == pair.now + ARTIM
    pair.deliver(pair.acceptor)
    # AE-4: confirmation (reject) and close; the acceptor sees the close (AR-5).
    assert pair.requestor.pop_indications() == [AssociateRejected(reject)]
    assert pair.requestor.state is State.STA1
    pair.deliver_all()
    assert_both_closed(pair)


def test_protocol_version_not_supported_is_rejected_by_the_provider() -> None:
    pair = ConnectionPair()
    request = AAssociateRQ(
        protocol_version=2,
        called_ae_title="ANY-SCP",
        calling_ae_title="ECHOSCU",
        presentation_contexts=REQUEST.presentation_contexts,
    )
    pair.do(pair.requestor, "request_association", request)
    pair.connect()
    pair.deliver(pair.requestor)
    assert pair.acceptor.state is State.STA13
    pair.deliver_all()
    assert pair.requestor.pop_indications() == [
        AssociateRejected(AAssociateRJ(result=1, source=2, reason=2))
    ]
    assert_both_closed(pair)


def test_data_transfer_both_ways() -> None:
    pair = ConnectionPair()
    pair.establish()
    command = PDataTF(pdvs=(PDV(context_id=1, is_command=True, is_last=True, data=b"\x01\x02"),))
    pair.do(pair.requestor, "send_data", command)
    pair.deliver_all()
    assert pair.acceptor.pop_indications() == [DataIndication(command)]
    # The acceptor answers with an already-encoded P-DATA-TF holding two PDVs.
    two = PDataTF(
        pdvs=(
            PDV(context_id=1, is_command=True, is_last=True, data=b"rsp"),
            PDV(context_id=1, is_command=False, is_last=False, data=b"d" * 100),
        )
    )
    pair.do(pair.acceptor, "send_data", encode(two))
    pair.do(pair.acceptor, "send_data", encode_p_data(1, 0x02, b"end"))
    pair.deliver_all()
    received = pair.requestor.pop_indications()
    assert received[0] == DataIndication(two)
    (pdv,) = received[1].pdu.pdvs  # type: ignore[attr-defined]
    assert (pdv.context_id, pdv.is_command, pdv.is_last, bytes(pdv.data)) == (
        1,
        False,
        True,
        b"end",
    )
    assert pair.requestor.state is State.STA6 and pair.acceptor.state is State.STA6


def test_normal_release_by_the_requestor() -> None:
    pair = ConnectionPair()
    pair.establish()
    pair.do(pair.requestor, "release")
    assert pair.requestor.state is State.STA7
    with pytest.raises(LocalProtocolError):
        pair.do(pair.requestor, "send_data", encode_p_data(1, 3, b""))
    pair.deliver_all()
    assert pair.acceptor.state is State.STA8
    assert pair.acceptor.pop_indications() == [ReleaseIndication()]
    # Sta8: the acceptor may still send P-DATA (AR-7); the requestor gets it (AR-6).
    pair.do(pair.acceptor, "send_data", encode_p_data(1, 3, b"late"))
    pair.deliver_all()
    assert pair.requestor.state is State.STA7
    (late,) = pair.requestor.pop_indications()
    assert isinstance(late, DataIndication)
    pair.advance(1.0)
    pair.do(pair.acceptor, "release_response", now=pair.now)
    assert pair.acceptor.state is State.STA13
    assert pair.acceptor.ul.get_timer() == pair.now + ARTIM
    pair.deliver(pair.acceptor)
    # AR-3: confirmation and close.
    assert pair.requestor.pop_indications() == [ReleaseConfirmation()]
    assert pair.requestor.state is State.STA1
    pair.deliver_all()  # the acceptor reads the close: AR-5
    assert_both_closed(pair)
    assert [data[0] for _, data in pair.sent] == [1, 2, 5, 4, 6]


def test_normal_release_by_the_acceptor() -> None:
    pair = ConnectionPair()
    pair.establish()
    pair.do(pair.acceptor, "release")
    pair.deliver_all()
    assert pair.requestor.state is State.STA8
    assert pair.requestor.pop_indications() == [ReleaseIndication()]
    pair.do(pair.requestor, "release_response", now=pair.now)
    pair.deliver_all()
    assert pair.acceptor.pop_indications() == [ReleaseConfirmation()]
    assert_both_closed(pair)


def test_release_collision() -> None:
    pair = ConnectionPair()
    pair.establish()
    # Both A-RELEASE-RQs are on the wire before either is read.
    pair.do(pair.requestor, "release")
    pair.do(pair.acceptor, "release")
    assert pair.requestor.state is State.STA7 and pair.acceptor.state is State.STA7
    pair.deliver(pair.requestor)
    pair.deliver(pair.acceptor)
    # AR-8: the requestor side goes to Sta9, the acceptor side to Sta10.
    assert pair.requestor.state is State.STA9
    assert pair.acceptor.state is State.STA10
    assert pair.requestor.pop_indications() == [ReleaseIndication(collision=True)]
    assert pair.acceptor.pop_indications() == [ReleaseIndication(collision=True)]
    # Only the requestor-side user may answer first (Evt14 is blank in Sta10).
    with pytest.raises(LocalProtocolError):
        pair.do(pair.acceptor, "release_response")
    pair.do(pair.requestor, "release_response", now=pair.now)  # AR-9
    assert pair.requestor.state is State.STA11
    pair.deliver(pair.requestor)
    assert pair.acceptor.state is State.STA12  # AR-10
    assert pair.acceptor.pop_indications() == [ReleaseConfirmation()]
    pair.do(pair.acceptor, "release_response", now=pair.now)  # AR-4
    assert pair.acceptor.state is State.STA13
    pair.deliver(pair.acceptor)
    assert pair.requestor.state is State.STA1  # AR-3
    assert pair.requestor.pop_indications() == [ReleaseConfirmation()]
    pair.deliver_all()
    assert_both_closed(pair)
    assert [(who[0], data[0]) for who, data in pair.sent[2:]] == [
        ("r", 5),
        ("a", 5),
        ("r", 6),
        ("a", 6),
    ]


@pytest.mark.parametrize("who", ["requestor", "acceptor"])
def test_abort_from_either_side(who: str) -> None:
    pair = ConnectionPair()
    pair.establish()
    side = getattr(pair, who)
    other = pair.peer(side)
    pair.do(side, "abort", now=pair.now)  # AA-1
    assert side.state is State.STA13
    assert side.ul.get_timer() == pair.now + ARTIM
    pair.deliver(side)
    # AA-3: A-ABORT indication (service-user source) and close.
    assert other.pop_indications() == [AbortIndication(0, 0)]
    assert other.state is State.STA1
    pair.deliver_all()  # the aborting side reads the close: AR-5
    assert_both_closed(pair)
    assert side.pop_indications() == []


def test_abort_while_the_requestor_waits_for_the_answer() -> None:
    pair = ConnectionPair()
    pair.do(pair.requestor, "request_association", REQUEST)
    pair.connect()
    pair.deliver(pair.requestor)
    pair.do(pair.acceptor, "abort", now=pair.now)  # Sta3: AA-1
    pair.deliver_all()
    assert pair.requestor.pop_indications() == [AbortIndication(0, 0)]
    assert_both_closed(pair)


def test_garbage_from_the_peer_is_a_provider_abort() -> None:
    pair = ConnectionPair()
    pair.establish()
    pair.requestor.outgoing += b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # no such PDU type
    pair.deliver(pair.requestor)
    assert pair.acceptor.state is State.STA13  # AA-8
    (local,) = pair.acceptor.pop_indications()
    assert isinstance(local, AbortIndication) and (local.source, local.reason) == (2, 1)
    pair.deliver_all()
    assert pair.requestor.pop_indications() == [AbortIndication(2, 1)]
    assert_both_closed(pair)


def test_unexpected_pdu_is_a_provider_abort() -> None:
    pair = ConnectionPair()
    pair.establish()
    pair.requestor.outgoing += encode(REQUEST)  # an A-ASSOCIATE-RQ in Sta6
    pair.deliver(pair.requestor)
    assert pair.acceptor.state is State.STA13
    pair.deliver_all()
    assert pair.requestor.pop_indications() == [AbortIndication(2, 2)]
    assert_both_closed(pair)


def test_artim_expiry_in_sta13_when_the_peer_never_closes() -> None:
    pair = ConnectionPair()
    pair.establish()
    pair.do(pair.requestor, "release")
    pair.deliver(pair.requestor)
    pair.do(pair.acceptor, "release_response", now=pair.now)
    assert pair.acceptor.state is State.STA13
    # The A-RELEASE-RP is never read and the requestor never closes.
    pair.advance(ARTIM - 1)
    assert pair.acceptor.state is State.STA13
    pair.advance(1)
    # Evt18 in Sta13: AA-2, the acceptor closes the transport itself.
    assert pair.acceptor.state is State.STA1 and pair.acceptor.closed
    # The requestor still reads the A-RELEASE-RP sent before the close.
    pair.deliver_all()
    assert pair.requestor.pop_indications() == [ReleaseConfirmation()]
    assert_both_closed(pair)


def test_artim_expiry_in_sta13_after_an_abort() -> None:
    pair = ConnectionPair()
    pair.establish()
    pair.do(pair.requestor, "abort", now=pair.now)
    pair.advance(ARTIM + 5)  # the acceptor never read the A-ABORT
    assert pair.requestor.state is State.STA1 and pair.requestor.closed
    pair.deliver_all()
    assert pair.acceptor.pop_indications() == [AbortIndication(0, 0)]
    assert_both_closed(pair)


def test_artim_expiry_in_sta2_when_no_request_comes() -> None:
    pair = ConnectionPair()
    pair.do(pair.requestor, "request_association", REQUEST)
    pair.connect()
    pair.requestor.outgoing.clear()  # the A-ASSOCIATE-RQ is lost
    pair.advance(ARTIM)
    assert pair.acceptor.state is State.STA1  # AA-2
    pair.deliver_all()
    # The requestor in Sta5 sees the transport close: A-P-ABORT (AA-4).
    (ind,) = pair.requestor.pop_indications()
    assert isinstance(ind, AbortIndication) and ind.source == 2 and ind.local
    assert_both_closed(pair)


def test_transport_lost_during_data_transfer() -> None:
    pair = ConnectionPair()
    pair.establish()
    pair.acceptor.closed = True  # the acceptor's host vanished
    pair.acceptor.done = True
    pair.acceptor.ul.state = State.STA1
    pair.deliver_all()
    (ind,) = pair.requestor.pop_indications()
    assert isinstance(ind, AbortIndication) and ind.local
    assert pair.requestor.state is State.STA1
