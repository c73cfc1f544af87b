"""Presentation context negotiation (PS3.8 9.3.2.2, 9.3.3.2) and SCP/SCU role
selection (PS3.7 D.3.3.4), both sides."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import UID

from aiodicom.pdu import (
    AAssociateAC,
    PresentationContextAC,
    PresentationContextRQ,
    decode_pdu,
    encode,
)
from aiodicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from aiodicom.presentation import (
    DEFAULT_TRANSFER_SYNTAXES,
    ContextTuple,
    PresentationContext,
    build_context,
    build_role,
    negotiate_as_acceptor,
    negotiate_as_requestor,
    to_ac_items,
)

VERIFICATION = UID("1.2.840.10008.1.1")
CT = UID("1.2.840.10008.5.1.4.1.1.2")
MR = UID("1.2.840.10008.5.1.4.1.1.4")
IMPLICIT = UID("1.2.840.10008.1.2")
EXPLICIT = UID("1.2.840.10008.1.2.1")
DEFLATED = UID("1.2.840.10008.1.2.1.99")
JPEG = UID("1.2.840.10008.1.2.4.50")


def rq(context_id: int, abstract: UID, *syntaxes: UID) -> PresentationContextRQ:
    return PresentationContextRQ(
        context_id=context_id, abstract_syntax=abstract, transfer_syntaxes=syntaxes
    )


def supported(
    abstract: UID, *syntaxes: UID, scu_role: bool | None = None, scp_role: bool | None = None
) -> PresentationContext:
    cx = build_context(abstract, list(syntaxes))
    cx.scu_role, cx.scp_role = scu_role, scp_role
    return cx


# ---------------------------------------------------------------------------
# Acceptor: transfer syntax and abstract syntax


def test_acceptor_picks_its_first_transfer_syntax_the_requestor_offered() -> None:
    requested = [rq(1, CT, IMPLICIT, EXPLICIT, JPEG)]
    # Our preference is Explicit, then Implicit: Explicit wins although the
    # requestor listed Implicit first.
    (cx,), roles = negotiate_as_acceptor(requested, [supported(CT, DEFLATED, EXPLICIT, IMPLICIT)])
    assert cx.result == 0 and cx.transfer_syntax == [EXPLICIT]
    assert cx.context_id == 1 and cx.abstract_syntax == CT
    assert roles == []
    (cx,), _ = negotiate_as_acceptor(requested, [supported(CT, JPEG, IMPLICIT)])
    assert cx.transfer_syntax == [JPEG]
    (cx,), _ = negotiate_as_acceptor([rq(1, CT, EXPLICIT)], [supported(CT, IMPLICIT, EXPLICIT)])
    assert cx.transfer_syntax == [EXPLICIT]


def test_abstract_syntax_not_supported_is_result_3() -> None:
    (cx,), roles = negotiate_as_acceptor([rq(1, MR, IMPLICIT)], [supported(CT, IMPLICIT)])
    assert cx.result == 3
    assert cx.transfer_syntax == []
    assert cx.status == "abstract-syntax-not-supported (provider rejection)"
    assert not cx.is_accepted
    assert roles == []


def test_no_common_transfer_syntax_is_result_4() -> None:
    (cx,), _ = negotiate_as_acceptor(
        [rq(1, CT, JPEG, DEFLATED)], [supported(CT, IMPLICIT, EXPLICIT)]
    )
    assert cx.result == 4
    assert cx.transfer_syntax == []
    assert cx.status == "transfer-syntaxes-not-supported (provider rejection)"


def test_every_context_answered_and_sorted_by_id() -> None:
    requested = [
        rq(7, VERIFICATION, IMPLICIT),
        rq(1, CT, JPEG),
        rq(5, MR, IMPLICIT),
        rq(3, CT, EXPLICIT, IMPLICIT),
        rq(9, CT, IMPLICIT),  # the same abstract syntax twice is fine
    ]
    results, _ = negotiate_as_acceptor(
        requested, [supported(CT, IMPLICIT, EXPLICIT), supported(VERIFICATION, IMPLICIT)]
    )
    assert [(cx.context_id, cx.result) for cx in results] == [
        (1, 4),
        (3, 0),
        (5, 3),
        (7, 0),
        (9, 0),
    ]
    assert results[1].transfer_syntax == [IMPLICIT]
    assert [cx.as_tuple() for cx in results if cx.is_accepted] == [
        ContextTuple(3, CT, IMPLICIT),
        ContextTuple(7, VERIFICATION, IMPLICIT),
        ContextTuple(9, CT, IMPLICIT),
    ]


def test_nothing_supported_rejects_everything() -> None:
    results, roles = negotiate_as_acceptor([rq(1, CT, IMPLICIT), rq(3, MR, IMPLICIT)], [])
    assert [cx.result for cx in results] == [3, 3]
    assert roles == []
    assert negotiate_as_acceptor([], [supported(CT, IMPLICIT)]) == ([], [])


# ---------------------------------------------------------------------------
# Acceptor: SCP/SCU role selection, PS3.7 D.3.3.4


def test_no_proposal_means_default_roles_and_no_reply() -> None:
    (cx,), roles = negotiate_as_acceptor(
        [rq(1, CT, IMPLICIT)], [supported(CT, IMPLICIT, scu_role=True, scp_role=True)]
    )
    # Default: the requestor is the SCU, so the acceptor is the SCP.
    assert (cx.as_scu, cx.as_scp) == (False, True)
    assert roles == []


@pytest.mark.parametrize(("scu_role", "scp_role"), [(None, None), (True, None), (None, False)])
@pytest.mark.parametrize("proposal", list(itertools.product([False, True], repeat=2)))
def test_acceptor_without_role_configuration_keeps_default_roles(
    proposal: tuple[bool, bool], scu_role: bool | None, scp_role: bool | None
) -> None:
    (cx,), roles = negotiate_as_acceptor(
        [rq(1, CT, IMPLICIT)],
        [supported(CT, IMPLICIT, scu_role=scu_role, scp_role=scp_role)],
        {CT: proposal},
    )
    assert cx.result == 0
    assert (cx.as_scu, cx.as_scp) == (False, True)
    assert roles == []


ROLE_MATRIX = [
    pytest.param(
        p_scu,
        p_scp,
        a_scu,
        a_scp,
        id=f"proposed{int(p_scu)}{int(p_scp)}-agreed{int(a_scu)}{int(a_scp)}",
    )
    for p_scu, p_scp, a_scu, a_scp in itertools.product([False, True], repeat=4)
]


@pytest.mark.parametrize(("p_scu", "p_scp", "a_scu", "a_scp"), ROLE_MATRIX)
def test_role_selection_matrix(p_scu: bool, p_scp: bool, a_scu: bool, a_scp: bool) -> None:
    """Each role of the requestor is what it proposed AND what the acceptor
    agrees to; a context with neither role left is rejected (user-rejection)."""
    (cx,), roles = negotiate_as_acceptor(
        [rq(1, CT, IMPLICIT)],
        [supported(CT, IMPLICIT, scu_role=a_scu, scp_role=a_scp)],
        {CT: (p_scu, p_scp)},
    )
    requestor_scu = p_scu and a_scu
    requestor_scp = p_scp and a_scp
    if not (requestor_scu or requestor_scp):
        assert cx.result == 1
        assert cx.status == "user-rejection"
        assert cx.transfer_syntax == []
        assert roles == []
        return
    assert cx.result == 0
    # The acceptor's roles are the mirror image of the requestor's.
    assert (cx.as_scu, cx.as_scp) == (requestor_scp, requestor_scu)
    (reply,) = roles
    assert reply == SCP_SCU_RoleSelectionNegotiation(
        sop_class_uid=CT, scu_role=requestor_scu, scp_role=requestor_scp
    )
    # The reply never grants a role that was not proposed.
    assert not (reply.scu_role and not p_scu)
    assert not (reply.scp_role and not p_scp)


def test_role_replies_only_for_accepted_contexts_one_per_sop_class_sorted() -> None:
    requested = [
        rq(1, MR, IMPLICIT),
        rq(3, CT, IMPLICIT),
        rq(5, CT, EXPLICIT),
        rq(7, VERIFICATION, JPEG),
    ]
    results, roles = negotiate_as_acceptor(
        requested,
        [
            supported(MR, IMPLICIT, scu_role=True, scp_role=True),
            supported(CT, IMPLICIT, EXPLICIT, scu_role=True, scp_role=True),
            supported(VERIFICATION, IMPLICIT, scu_role=True, scp_role=True),
        ],
        {MR: (True, True), CT: (False, True), VERIFICATION: (True, False)},
    )
    assert [cx.result for cx in results] == [0, 0, 0, 4]
    assert [(cx.as_scu, cx.as_scp) for cx in results[:3]] == [
        (True, True),
        (True, False),
        (True, False),
    ]
    assert [str(r.sop_class_uid) for r in roles] == sorted([str(CT), str(MR)])
    assert {r.sop_class_uid: (r.scu_role, r.scp_role) for r in roles} == {
        CT: (False, True),
        MR: (True, True),
    }


# ---------------------------------------------------------------------------
# Requestor


def requested_contexts() -> list[PresentationContext]:
    out = []
    for cid, abstract in [(1, VERIFICATION), (3, CT), (5, MR)]:
        cx = build_context(abstract)
        cx.context_id = cid
        out.append(cx)
    return out


def test_requestor_missing_answer_is_result_2() -> None:
    results = negotiate_as_requestor(
        requested_contexts(),
        [PresentationContextAC(context_id=1, result=0, transfer_syntax=IMPLICIT)],
    )
    assert [(cx.context_id, cx.result) for cx in results] == [(1, 0), (3, 2), (5, 2)]
    assert results[1].status == "no-reason (provider rejection)"
    assert results[0].transfer_syntax == [IMPLICIT]
    assert (results[0].as_scu, results[0].as_scp) == (True, False)  # default roles
    assert results[1].transfer_syntax == []


def test_requestor_takes_results_as_given_and_sorts() -> None:
    answers = [
        PresentationContextAC(context_id=5, result=3),
        PresentationContextAC(context_id=3, result=4),
        PresentationContextAC(context_id=1, result=0, transfer_syntax=EXPLICIT),
        PresentationContextAC(context_id=99, result=0, transfer_syntax=EXPLICIT),  # not ours
    ]
    requested = list(reversed(requested_contexts()))
    results = negotiate_as_requestor(requested, answers)
    assert [(cx.context_id, cx.result) for cx in results] == [(1, 0), (3, 4), (5, 3)]
    assert results[0].as_tuple() == ContextTuple(1, VERIFICATION, EXPLICIT)
    assert results[1].transfer_syntax == [] and results[2].transfer_syntax == []
    assert not results[1].as_scu and not results[1].as_scp


def test_requestor_refuses_a_transfer_syntax_it_never_offered() -> None:
    (cx, *_) = negotiate_as_requestor(
        requested_contexts(), [PresentationContextAC(context_id=1, result=0, transfer_syntax=JPEG)]
    )
    assert cx.result == 4 and cx.transfer_syntax == []
    (cx, *_) = negotiate_as_requestor(
        requested_contexts(), [PresentationContextAC(context_id=1, result=0, transfer_syntax=None)]
    )
    assert cx.result == 4


@pytest.mark.parametrize(
    ("proposed", "reply", "expected"),
    [
        ((True, True), (True, True), (True, True)),
        ((True, True), (True, False), (True, False)),
        ((True, True), (False, True), (False, True)),
        ((False, True), (False, True), (False, True)),
        ((False, True), (True, True), (False, True)),  # never more than proposed
        ((True, False), (True, True), (True, False)),
        ((True, True), None, (True, False)),  # no reply: default roles
        ((None, None), (True, True), (True, False)),  # nothing proposed: default
    ],
)
def test_requestor_roles_from_the_reply(
    proposed: tuple[bool | None, bool | None],
    reply: tuple[bool, bool] | None,
    expected: tuple[bool, bool],
) -> None:
    requested = requested_contexts()
    requested[1].scu_role, requested[1].scp_role = proposed
    results = negotiate_as_requestor(
        requested,
        [PresentationContextAC(context_id=3, result=0, transfer_syntax=IMPLICIT)],
        {CT: reply} if reply is not None else None,
    )
    cx = results[1]
    assert cx.context_id == 3 and cx.result == 0
    assert (cx.as_scu, cx.as_scp) == expected
    assert (cx.scu_role, cx.scp_role) == proposed


# ---------------------------------------------------------------------------
# Building contexts and roles


def test_build_context_defaults_and_dedupes() -> None:
    cx = build_context(CT)
    assert cx.abstract_syntax == CT
    assert cx.transfer_syntax == list(DEFAULT_TRANSFER_SYNTAXES) == [EXPLICIT, IMPLICIT]
    assert cx.context_id is None and cx.result is None and cx.status == "pending"
    assert build_context(str(CT), str(IMPLICIT)).transfer_syntax == [IMPLICIT]
    assert build_context(CT, [IMPLICIT, EXPLICIT, IMPLICIT]).transfer_syntax == [IMPLICIT, EXPLICIT]
    cx.add_transfer_syntax(IMPLICIT)
    cx.add_transfer_syntax(str(JPEG))
    assert cx.transfer_syntax == [EXPLICIT, IMPLICIT, JPEG]


@pytest.mark.parametrize(
    ("abstract", "syntaxes"),
    [
        ("", None),
        ("1.2.abc", None),
        ("1." + "2" * 70, None),
        (CT, []),
        (CT, ""),
        (CT, ["1.2..3"]),
    ],
)
def test_build_context_rejects_bad_uids(abstract: str, syntaxes: object) -> None:
    with pytest.raises(ValueError):
        build_context(abstract, syntaxes)  # type: ignore[arg-type]


def test_build_role() -> None:
    role = build_role(CT, scp_role=True)
    assert role == SCP_SCU_RoleSelectionNegotiation(sop_class_uid=CT, scu_role=False, scp_role=True)
    assert isinstance(role.sop_class_uid, UID)
    assert build_role(str(CT), scu_role=True) == SCP_SCU_RoleSelectionNegotiation(
        sop_class_uid=CT, scu_role=True, scp_role=False
    )
    with pytest.raises(ValueError):
        build_role("not a uid")


def test_to_ac_items() -> None:
    results, _ = negotiate_as_acceptor(
        [rq(1, CT, IMPLICIT), rq(3, MR, IMPLICIT)], [supported(CT, IMPLICIT)]
    )
    pending = PresentationContext(abstract_syntax=VERIFICATION, context_id=5)
    assert to_ac_items([*results, pending]) == (
        PresentationContextAC(context_id=1, result=0, transfer_syntax=IMPLICIT),
        PresentationContextAC(context_id=3, result=3),
        PresentationContextAC(context_id=5, result=2),
    )


# ---------------------------------------------------------------------------
# Both sides end to end, through the wire format

ABSTRACTS = [VERIFICATION, CT, MR, UID("1.2.840.10008.5.1.4.1.1.7")]
SYNTAXES = [IMPLICIT, EXPLICIT, DEFLATED, JPEG]
role_pairs = st.tuples(st.booleans(), st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    requested_specs=st.lists(
        st.tuples(
            st.sampled_from(ABSTRACTS),
            st.lists(st.sampled_from(SYNTAXES), min_size=1, max_size=4, unique=True),
        ),
        max_size=6,
    ),
    supported_specs=st.dictionaries(
        st.sampled_from(ABSTRACTS),
        st.tuples(
            st.lists(st.sampled_from(SYNTAXES), min_size=1, max_size=4, unique=True),
            st.none() | role_pairs,
        ),
    ),
    proposals=st.dictionaries(st.sampled_from(ABSTRACTS), role_pairs),
)
def test_both_sides_agree(
    requested_specs: list[tuple[UID, list[UID]]],
    supported_specs: dict[UID, tuple[list[UID], tuple[bool, bool] | None]],
    proposals: dict[UID, tuple[bool, bool]],
) -> None:
    # The requestor's contexts, with IDs 1, 3, 5, ... and its role proposals.
    ours: list[PresentationContext] = []
    for i, (abstract, syntaxes) in enumerate(requested_specs):
        cx = build_context(abstract, syntaxes)
        cx.context_id = 2 * i + 1
        if abstract in proposals:
            cx.scu_role, cx.scp_role = proposals[abstract]
        ours.append(cx)
    theirs = []
    for abstract, (syntaxes, config) in supported_specs.items():
        cx = build_context(abstract, syntaxes)
        if config is not None:
            cx.scu_role, cx.scp_role = config
        theirs.append(cx)
    wire_rq = [
        PresentationContextRQ(
            context_id=cx.context_id or 0,
            abstract_syntax=cx.abstract_syntax,
            transfer_syntaxes=tuple(cx.transfer_syntax),
        )
        for cx in ours
    ]
    # Acceptor side.
    acceptor_view, replies = negotiate_as_acceptor(wire_rq, theirs, proposals)
    assert [cx.context_id for cx in acceptor_view] == sorted(cx.context_id or 0 for cx in ours)
    by_abstract = {cx.abstract_syntax: cx for cx in theirs}
    for cx in acceptor_view:
        offered = next(r for r in wire_rq if r.context_id == cx.context_id)
        mine = by_abstract.get(cx.abstract_syntax)
        if mine is None:
            assert cx.result == 3
        elif not set(mine.transfer_syntax) & set(offered.transfer_syntaxes):
            assert cx.result == 4
        else:
            assert cx.result in (0, 1)
            first = next(ts for ts in mine.transfer_syntax if ts in offered.transfer_syntaxes)
            if cx.result == 0:
                assert cx.transfer_syntax == [first]
    # Through an A-ASSOCIATE-AC on the wire.
    ac = AAssociateAC(
        called_ae_title="SCP",
        calling_ae_title="SCU",
        presentation_contexts=to_ac_items(acceptor_view),
        user_information=tuple(replies),
    )
    decoded = decode_pdu(encode(ac))
    assert isinstance(decoded, AAssociateAC)
    reply_roles = {
        r.sop_class_uid: (bool(r.scu_role), bool(r.scp_role))
        for r in decoded.user_information
        if isinstance(r, SCP_SCU_RoleSelectionNegotiation)
    }
    requestor_view = negotiate_as_requestor(ours, decoded.presentation_contexts, reply_roles)
    assert len(requestor_view) == len(acceptor_view)
    for mine, peer in zip(requestor_view, acceptor_view, strict=True):
        assert (mine.context_id, mine.result) == (peer.context_id, peer.result)
        assert mine.transfer_syntax == peer.transfer_syntax
        if mine.result == 0:
            # The two sides agree on who is SCU and who is SCP.
            assert (mine.as_scu, mine.as_scp) == (peer.as_scp, peer.as_scu)
            assert mine.as_scu or mine.as_scp
