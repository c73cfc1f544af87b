"""Presentation contexts and their negotiation (PS3.8 9.3.2.2, 9.3.3.2; PS3.7 D.3.3.4).

:func:`build_context` and :func:`build_role` make what users hand to the AE;
:func:`negotiate_as_acceptor` and :func:`negotiate_as_requestor` are the pure
negotiation functions the association runs. Sans-IO.

Roles: by default the requestor is the SCU and the acceptor the SCP of every
context. An SCP/SCU Role Selection item changes that (PS3.7 D.3.3.4): each side
may take a role only if the requestor proposed it and the acceptor agreed. A
context left with neither role is rejected (result 1, user-rejection).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from pydicom import config as _pydicom_config
from pydicom.uid import UID, AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .pdu import PresentationContextAC, PresentationContextRQ
from .pdu_primitives import SCP_SCU_RoleSelectionNegotiation

__all__ = (
    "ALL_TRANSFER_SYNTAXES",
    "DEFAULT_TRANSFER_SYNTAXES",
    "ContextTuple",
    "PresentationContext",
    "build_context",
    "build_role",
    "negotiate_as_acceptor",
    "negotiate_as_requestor",
)

#: The transfer syntaxes a context gets when none are given.
DEFAULT_TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Every transfer syntax pydicom knows, the defaults first: the order an
#: acceptor that takes anything should prefer (the acceptor picks the first of
#: its own list that the requestor proposed).
ALL_TRANSFER_SYNTAXES: tuple[UID, ...] = DEFAULT_TRANSFER_SYNTAXES + tuple(
    UID(ts) for ts in AllTransferSyntaxes if ts not in DEFAULT_TRANSFER_SYNTAXES
)

_RESULTS = {
    0: "acceptance",
    1: "user-rejection",
    2: "no-reason (provider rejection)",
    3: "abstract-syntax-not-supported (provider rejection)",
    4: "transfer-syntaxes-not-supported (provider rejection)",
}


class ContextTuple(NamedTuple):
    """An accepted context as handlers see it: ``event.context``."""

    context_id: int
    abstract_syntax: UID
    transfer_syntax: UID


@dataclass(slots=True)
class PresentationContext:
    """A presentation context, requested, supported or negotiated.

    As pynetdicom's: ``transfer_syntax`` is a list (one item once accepted);
    ``scu_role``/``scp_role`` are the role selection wanted (requested: what
    we propose; supported: how we answer a proposal; ``None`` leaves the
    default); ``as_scu``/``as_scp`` are the roles the local AE has after
    negotiation; ``result`` the PS3.8 result (0 accepted).
    """

    abstract_syntax: UID
    transfer_syntax: list[UID] = field(default_factory=list)
    context_id: int | None = None
    result: int | None = None
    scu_role: bool | None = None
    scp_role: bool | None = None
    as_scu: bool = False
    as_scp: bool = False

    @property
    def status(self) -> str:
        """The result as text, e.g. ``'acceptance'``."""
        return "pending" if self.result is None else _RESULTS.get(self.result, str(self.result))

    @property
    def is_accepted(self) -> bool:
        """True if the context was accepted (result 0)."""
        return self.result == 0

    def as_tuple(self) -> ContextTuple:
        """The ``(context_id, abstract_syntax, transfer_syntax)`` of an accepted context."""
        assert self.context_id is not None and self.transfer_syntax
        return ContextTuple(self.context_id, self.abstract_syntax, self.transfer_syntax[0])

    def add_transfer_syntax(self, syntax: str | UID) -> None:
        """Append a transfer syntax, if not already present."""
        uid = UID(str(syntax))
        if uid not in self.transfer_syntax:
            self.transfer_syntax.append(uid)


def _check_uid(value: str | UID, what: str) -> UID:
    # Validated here (ValueError); pydicom's own validation would only add a
    # warning (or raise its own error, depending on its global settings).
    uid = UID(str(value), validation_mode=_pydicom_config.IGNORE)
    if not uid or len(uid) > 64 or not uid.is_valid:
        raise ValueError(f"{what} {value!r} is not a valid UID")
    return uid


def build_context(
    abstract_syntax: str | UID,
    transfer_syntax: str | UID | Sequence[str | UID] | None = None,
) -> PresentationContext:
    """A presentation context for ``abstract_syntax`` with the given transfer syntaxes.

    ``transfer_syntax`` defaults to Explicit VR Little Endian then Implicit VR
    Little Endian.
    """
    abstract = _check_uid(abstract_syntax, "abstract syntax")
    if transfer_syntax is None:
        syntaxes = list(DEFAULT_TRANSFER_SYNTAXES)
    elif isinstance(transfer_syntax, str):
        syntaxes = [_check_uid(transfer_syntax, "transfer syntax")]
    else:
        syntaxes = []
        for ts in transfer_syntax:
            uid = _check_uid(ts, "transfer syntax")
            if uid not in syntaxes:
                syntaxes.append(uid)
    if not syntaxes:
        raise ValueError("a presentation context needs at least one transfer syntax")
    return PresentationContext(abstract_syntax=abstract, transfer_syntax=syntaxes)


def build_role(
    sop_class_uid: str | UID, scu_role: bool = False, scp_role: bool = False
) -> SCP_SCU_RoleSelectionNegotiation:
    """An SCP/SCU Role Selection item to pass in ``ext_neg`` (PS3.7 D.3.3.4).

    A C-GET SCU proposes ``scp_role=True`` for each storage SOP class it will
    receive instances of::

        ext_neg=[build_role(sop_class.CTImageStorage, scp_role=True)]
    """
    return SCP_SCU_RoleSelectionNegotiation(
        sop_class_uid=_check_uid(sop_class_uid, "SOP class UID"),
        scu_role=scu_role,
        scp_role=scp_role,
    )


def negotiate_as_acceptor(
    requested: Iterable[PresentationContextRQ],
    supported: Sequence[PresentationContext],
    roles: Mapping[UID, tuple[bool, bool]] | None = None,
) -> tuple[list[PresentationContext], list[SCP_SCU_RoleSelectionNegotiation]]:
    """Answer a requestor's presentation contexts.

    ``supported`` are the local AE's contexts; the acceptor's order of transfer
    syntaxes is its preference. ``roles`` maps SOP class UID to the requestor's
    proposed ``(scu_role, scp_role)``. Returns every context with its result
    (sorted by ID; ``as_scu``/``as_scp`` are the *acceptor's* roles) and the
    role selection items to return.
    """
    roles = roles or {}
    by_abstract = {cx.abstract_syntax: cx for cx in supported}
    results: list[PresentationContext] = []
    replies: dict[UID, SCP_SCU_RoleSelectionNegotiation] = {}
    for rq in requested:
        out = PresentationContext(abstract_syntax=rq.abstract_syntax, context_id=rq.context_id)
        ours = by_abstract.get(rq.abstract_syntax)
        if ours is None:
            out.result = 3
            results.append(out)
            continue
        chosen = next((ts for ts in ours.transfer_syntax if ts in rq.transfer_syntaxes), None)
        if chosen is None:
            out.result = 4
            results.append(out)
            continue
        out.transfer_syntax = [chosen]
        out.result = 0
        proposal = roles.get(rq.abstract_syntax)
        if proposal is None or ours.scu_role is None or ours.scp_role is None:
            out.as_scu, out.as_scp = False, True  # default roles
        else:
            req_scu = proposal[0] and ours.scu_role
            req_scp = proposal[1] and ours.scp_role
            out.as_scu, out.as_scp = req_scp, req_scu  # the mirror of the requestor's
            if not (req_scu or req_scp):
                out.result = 1
                out.transfer_syntax = []
            else:
                replies[rq.abstract_syntax] = SCP_SCU_RoleSelectionNegotiation(
                    sop_class_uid=rq.abstract_syntax, scu_role=req_scu, scp_role=req_scp
                )
        results.append(out)
    results.sort(key=lambda cx: cx.context_id or 0)
    return results, sorted(replies.values(), key=lambda r: str(r.sop_class_uid))


def to_ac_items(contexts: Iterable[PresentationContext]) -> tuple[PresentationContextAC, ...]:
    """The Presentation Context items (0x21) of an A-ASSOCIATE-AC."""
    return tuple(
        PresentationContextAC(
            context_id=cx.context_id or 0,
            result=cx.result if cx.result is not None else 2,
            transfer_syntax=cx.transfer_syntax[0] if cx.result == 0 else None,
        )
        for cx in contexts
    )


def negotiate_as_requestor(
    requested: Sequence[PresentationContext],
    results: Iterable[PresentationContextAC],
    roles: Mapping[UID, tuple[bool, bool]] | None = None,
) -> list[PresentationContext]:
    """Combine our requested contexts with the acceptor's results.

    ``requested`` carry context IDs and the roles we proposed; ``roles`` maps
    SOP class UID to the acceptor's role selection reply. A context the
    acceptor left out counts as rejected (result 2). The returned contexts'
    ``as_scu``/``as_scp`` are the *requestor's* roles.
    """
    roles = roles or {}
    answers = {ac.context_id: ac for ac in results}
    out: list[PresentationContext] = []
    for rq in requested:
        cx = PresentationContext(
            abstract_syntax=rq.abstract_syntax,
            context_id=rq.context_id,
            scu_role=rq.scu_role,
            scp_role=rq.scp_role,
        )
        ac = answers.get(rq.context_id or 0)
        if ac is None:
            cx.result = 2
        else:
            cx.result = ac.result
            if ac.result == 0 and ac.transfer_syntax is not None:
                if ac.transfer_syntax not in rq.transfer_syntax:
                    # The acceptor chose a syntax we never offered: unusable.
                    cx.result = 4
                else:
                    cx.transfer_syntax = [ac.transfer_syntax]
                    reply = roles.get(rq.abstract_syntax)
                    if reply is None or (rq.scu_role is None and rq.scp_role is None):
                        cx.as_scu, cx.as_scp = True, False
                    else:
                        cx.as_scu = bool(rq.scu_role) and reply[0]
                        cx.as_scp = bool(rq.scp_role) and reply[1]
            elif ac.result == 0:
                cx.result = 4
        out.append(cx)
    out.sort(key=lambda c: c.context_id or 0)
    return out
