"""The seven Upper Layer PDUs and their items: data classes and codec (PS3.8 9.3).

This module owns the wire format. Every PDU is a frozen, slotted dataclass; the
User Information sub-items are the classes of :mod:`aiodicom.pdu_primitives`.
:func:`encode` turns a PDU into bytes; :func:`check_header` validates a 6-byte
PDU header (refusing a length over the local limit before anything of that size
is read) and :func:`decode` turns a PDU body into a PDU object.

Theory of operation for decoding: nothing read from the wire is trusted. Every
length is checked against what remains of its enclosing structure before it is
used, and every violation raises :class:`~aiodicom.errors.PDUError` carrying the
A-ABORT reason PS3.8 Table 9-26 gives for it (1 unrecognized PDU, 5 unexpected
parameter: an item of a known type where it does not belong, 6 invalid
parameter value). What the standard says to ignore is ignored: items of
unrecognized types are skipped (9.3.1), and bits 2-7 of a PDV's message control
header are not checked (E.2). Unknown User Information sub-items are kept as
:class:`~aiodicom.pdu_primitives.UnknownUserItem`.

Sans-IO: no anyio, no sockets, no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from pydicom import config as _pydicom_config
from pydicom.uid import UID

from .errors import PDUError
from .pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownUserItem,
    UserIdentityNegotiation,
    UserItem,
)

__all__ = (
    "APPLICATION_CONTEXT_NAME",
    "PDU",
    "PDV",
    "P_DATA_HEADER_SIZE",
    "AAbort",
    "AAssociateAC",
    "AAssociateRJ",
    "AAssociateRQ",
    "AReleaseRP",
    "AReleaseRQ",
    "PDUType",
    "PDataTF",
    "PresentationContextAC",
    "PresentationContextRQ",
    "check_header",
    "decode",
    "decode_pdu",
    "encode",
    "encode_p_data",
    "pack_p_data_header",
    "summary",
)

#: The DICOM Application Context Name, PS3.7 Annex A.2.1.
APPLICATION_CONTEXT_NAME: Final = UID("1.2.840.10008.3.1.1.1")

#: Upper bound on an A-ASSOCIATE-RQ/AC PDU, whatever the local maximum PDU size
#: (which limits P-DATA-TF only, PS3.8 D.1). 128 presentation contexts with a
#: dozen transfer syntaxes each plus two 64 KiB user identity fields fit easily.
MAX_ASSOCIATE_PDU: Final = 1 << 20

_HEADER = struct.Struct(">BxL")
_ITEM = struct.Struct(">BxH")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">L")
_PDV_HEADER = struct.Struct(">LBB")
_PDATA_HEADER = struct.Struct(">BxLLBB")  # PDU header + one PDV header
_ABORT = struct.Struct(">BxLxxBB")
_RJ = struct.Struct(">BxLxBBB")
_ASSOC_FIXED = struct.Struct(">H2x16s16s32x")


class PDUType:
    """PDU type codes, PS3.8 Table 9-11."""

    A_ASSOCIATE_RQ: Final = 0x01
    A_ASSOCIATE_AC: Final = 0x02
    A_ASSOCIATE_RJ: Final = 0x03
    P_DATA_TF: Final = 0x04
    A_RELEASE_RQ: Final = 0x05
    A_RELEASE_RP: Final = 0x06
    A_ABORT: Final = 0x07


# ---------------------------------------------------------------------------
# Data classes


@dataclass(frozen=True, slots=True, kw_only=True)
class PresentationContextRQ:
    """Presentation Context item of an A-ASSOCIATE-RQ (0x20), PS3.8 9.3.2.2."""

    context_id: int
    """Odd integer 1-255, PS3.8 9.3.2.2."""
    abstract_syntax: UID
    """Abstract Syntax sub-item (0x30), PS3.8 9.3.2.2.1."""
    transfer_syntaxes: tuple[UID, ...]
    """Transfer Syntax sub-items (0x40), one or more, PS3.8 9.3.2.2.2."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PresentationContextAC:
    """Presentation Context item of an A-ASSOCIATE-AC (0x21), PS3.8 9.3.3.2.

    ``result``: 0 acceptance, 1 user-rejection, 2 no-reason (provider rejection),
    3 abstract-syntax-not-supported, 4 transfer-syntaxes-not-supported.
    """

    context_id: int
    result: int
    transfer_syntax: UID | None = None
    """Significant only when ``result`` is 0, PS3.8 9.3.3.2.1."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AAssociateRQ:
    """A-ASSOCIATE-RQ PDU (type 0x01), PS3.8 9.3.2."""

    protocol_version: int = 1
    """Bit 0 set: version 1 supported, PS3.8 9.3.2."""
    called_ae_title: str
    calling_ae_title: str
    application_context_name: UID = APPLICATION_CONTEXT_NAME
    presentation_contexts: tuple[PresentationContextRQ, ...] = ()
    user_information: tuple[UserItem, ...] = ()
    """User Information item (0x50) sub-items in order, PS3.8 9.3.2.3."""
    titles: bytes = field(default=b"", compare=False, repr=False)
    """A received PDU's called and calling AE title fields, the 32 bytes as
    they came (the titles above are stripped of their spaces)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AAssociateAC:
    """A-ASSOCIATE-AC PDU (type 0x02), PS3.8 9.3.3.

    The AE title fields are not significant but are returned as received.
    """

    protocol_version: int = 1
    called_ae_title: str
    calling_ae_title: str
    application_context_name: UID = APPLICATION_CONTEXT_NAME
    presentation_contexts: tuple[PresentationContextAC, ...] = ()
    user_information: tuple[UserItem, ...] = ()
    titles: bytes = field(default=b"", compare=False, repr=False)
    """The 32 bytes of the AE title fields to send instead of the titles
    above: the A-ASSOCIATE-RQ's, "identical to the value received" (PS3.8
    Table 9-17), leading spaces included; as received, in a decoded AC."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AAssociateRJ:
    """A-ASSOCIATE-RJ PDU (type 0x03), PS3.8 9.3.4.

    ``result`` 1 permanent / 2 transient; ``source`` 1 service-user,
    2 service-provider (ACSE), 3 service-provider (presentation); ``reason`` per
    source (see :class:`~aiodicom.errors.AssociationRejected`).
    """

    result: int
    source: int
    reason: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PDV:
    """Presentation Data Value item, PS3.8 9.3.5.1 and Annex E.2.

    The message control header is bit 0 (command 1 / data set 0) and bit 1
    (last fragment 1).
    """

    context_id: int
    is_command: bool
    is_last: bool
    data: bytes | memoryview = b""

    @property
    def control_header(self) -> int:
        """The message control header byte, PS3.8 E.2."""
        return (1 if self.is_command else 0) | (2 if self.is_last else 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class PDataTF:
    """P-DATA-TF PDU (type 0x04), PS3.8 9.3.5: one or more PDV items."""

    pdvs: tuple[PDV, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AReleaseRQ:
    """A-RELEASE-RQ PDU (type 0x05), PS3.8 9.3.6."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AReleaseRP:
    """A-RELEASE-RP PDU (type 0x06), PS3.8 9.3.7."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AAbort:
    """A-ABORT PDU (type 0x07), PS3.8 9.3.8.

    ``source`` 0 service-user, 2 service-provider; ``reason`` (provider only)
    0 not specified, 1 unrecognized PDU, 2 unexpected PDU, 4 unrecognized PDU
    parameter, 5 unexpected PDU parameter, 6 invalid PDU parameter value.
    """

    source: int = 0
    reason: int = 0


PDU = AAssociateRQ | AAssociateAC | AAssociateRJ | PDataTF | AReleaseRQ | AReleaseRP | AAbort

_FIXED_LENGTH: Final = {
    PDUType.A_ASSOCIATE_RJ: 4,
    PDUType.A_RELEASE_RQ: 4,
    PDUType.A_RELEASE_RP: 4,
    PDUType.A_ABORT: 4,
}

# ---------------------------------------------------------------------------
# Encoding


def _item(item_type: int, value: bytes, reserved: int = 0) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02X} value of {len(value)} bytes exceeds 65535")
    return bytes((item_type, reserved)) + _U16.pack(len(value)) + value


def _uid_bytes(uid: str | None, what: str) -> bytes:
    if not uid:
        raise ValueError(f"{what} is required")
    return str(uid).encode("ascii")


def _ae_bytes(title: str) -> bytes:
    raw = title.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"AE title {title!r} is longer than 16 characters")
    if not raw.strip(b" "):
        # "The value made of 16 spaces ... shall not be used" (PS3.8 Table 9-11)
        raise ValueError("an AE title may not be empty or all spaces")
    return raw.ljust(16, b" ")


def _lv(value: bytes) -> bytes:
    return _U16.pack(len(value)) + value


def _encode_user_item(item: UserItem) -> bytes:
    if isinstance(item, MaximumLengthNotification):
        return _item(0x51, _U32.pack(item.maximum_length_received))
    if isinstance(item, ImplementationClassUIDNotification):
        return _item(0x52, _uid_bytes(item.implementation_class_uid, "implementation class UID"))
    if isinstance(item, ImplementationVersionNameNotification):
        name = (item.implementation_version_name or "").encode("ascii")
        if not 1 <= len(name) <= 16:
            raise ValueError("implementation version name must be 1-16 characters")
        return _item(0x55, name)
    if isinstance(item, AsynchronousOperationsWindowNegotiation):
        return _item(
            0x53,
            _U16.pack(item.maximum_number_operations_invoked)
            + _U16.pack(item.maximum_number_operations_performed),
        )
    if isinstance(item, SCP_SCU_RoleSelectionNegotiation):
        uid = _uid_bytes(item.sop_class_uid, "role selection SOP class UID")
        return _item(0x54, _lv(uid) + bytes((int(bool(item.scu_role)), int(bool(item.scp_role)))))
    if isinstance(item, SOPClassExtendedNegotiation):
        uid = _uid_bytes(item.sop_class_uid, "extended negotiation SOP class UID")
        return _item(0x56, _lv(uid) + (item.service_class_application_information or b""))
    if isinstance(item, SOPClassCommonExtendedNegotiation):
        uid = _uid_bytes(item.sop_class_uid, "common extended negotiation SOP class UID")
        svc = _uid_bytes(item.service_class_uid, "service class UID")
        related = b"".join(
            _lv(_uid_bytes(u, "related general SOP class UID"))
            for u in item.related_general_sop_class_identification
        )
        return _item(0x57, _lv(uid) + _lv(svc) + _lv(related))
    if isinstance(item, UserIdentityNegotiation):
        if item.server_response is not None:
            return _item(0x59, _lv(item.server_response))
        if item.user_identity_type not in (1, 2, 3, 4, 5):
            raise ValueError("user identity type must be 1-5")
        primary = item.primary_field or b""
        if not primary:
            raise ValueError("user identity primary field is required")
        secondary = item.secondary_field or b""
        if item.user_identity_type == 2 and not secondary:
            raise ValueError("user identity type 2 needs a secondary field (passcode)")
        head = bytes((item.user_identity_type, int(item.positive_response_requested)))
        return _item(0x58, head + _lv(primary) + _lv(secondary))
    if isinstance(item, UnknownUserItem):
        return _item(item.item_type, item.data)
    raise TypeError(f"not a user information item: {item!r}")


def _encode_associate(pdu_type: int, pdu: AAssociateRQ | AAssociateAC) -> bytes:
    if isinstance(pdu, AAssociateAC) and len(pdu.titles) == 32:
        called, calling = pdu.titles[:16], pdu.titles[16:]
    else:
        called, calling = _ae_bytes(pdu.called_ae_title), _ae_bytes(pdu.calling_ae_title)
    parts = [
        _ASSOC_FIXED.pack(pdu.protocol_version, called, calling),
        _item(0x10, _uid_bytes(pdu.application_context_name, "application context name")),
    ]
    if isinstance(pdu, AAssociateRQ):
        for rq in pdu.presentation_contexts:
            subs = _item(0x30, _uid_bytes(rq.abstract_syntax, "abstract syntax")) + b"".join(
                _item(0x40, _uid_bytes(ts, "transfer syntax")) for ts in rq.transfer_syntaxes
            )
            parts.append(_item(0x20, bytes((rq.context_id, 0, 0, 0)) + subs))
    else:
        for ac in pdu.presentation_contexts:
            ts = str(ac.transfer_syntax or "").encode("ascii")
            parts.append(_item(0x21, bytes((ac.context_id, 0, ac.result, 0)) + _item(0x40, ts)))
    parts.append(_item(0x50, b"".join(_encode_user_item(i) for i in pdu.user_information)))
    body = b"".join(parts)
    return _HEADER.pack(pdu_type, len(body)) + body


#: The headers of a P-DATA-TF holding one PDV: what precedes its data.
P_DATA_HEADER_SIZE: Final = _PDATA_HEADER.size


def pack_p_data_header(
    buf: bytearray, offset: int, context_id: int, control_header: int, n: int
) -> None:
    """Write at ``offset`` the headers of a P-DATA-TF whose one PDV carries ``n``
    bytes (they follow, in place): a PDU built without copying its data."""
    _PDATA_HEADER.pack_into(
        buf, offset, PDUType.P_DATA_TF, n + 6, n + 2, context_id, control_header
    )


def encode_p_data(context_id: int, control_header: int, data: bytes | memoryview) -> bytes:
    """Encode a P-DATA-TF PDU holding one PDV: the hot path of data transfer."""
    n = len(data)
    return _PDATA_HEADER.pack(PDUType.P_DATA_TF, n + 6, n + 2, context_id, control_header) + data


def encode(pdu: PDU) -> bytes:
    """Encode any PDU to its wire form (header included)."""
    if isinstance(pdu, PDataTF):
        if len(pdu.pdvs) == 1:
            p = pdu.pdvs[0]
            return encode_p_data(p.context_id, p.control_header, p.data)
        body = b"".join(
            b"".join((_PDV_HEADER.pack(len(p.data) + 2, p.context_id, p.control_header), p.data))
            for p in pdu.pdvs
        )
        return _HEADER.pack(PDUType.P_DATA_TF, len(body)) + body
    if isinstance(pdu, AAbort):
        return _ABORT.pack(PDUType.A_ABORT, 4, pdu.source, pdu.reason)
    if isinstance(pdu, AReleaseRQ):
        return b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    if isinstance(pdu, AReleaseRP):
        return b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    if isinstance(pdu, AAssociateRJ):
        return _RJ.pack(PDUType.A_ASSOCIATE_RJ, 4, pdu.result, pdu.source, pdu.reason)
    if isinstance(pdu, AAssociateRQ):
        return _encode_associate(PDUType.A_ASSOCIATE_RQ, pdu)
    if isinstance(pdu, AAssociateAC):
        return _encode_associate(PDUType.A_ASSOCIATE_AC, pdu)
    raise TypeError(f"not a PDU: {pdu!r}")


# ---------------------------------------------------------------------------
# Decoding


def check_header(header: bytes | bytearray | memoryview, max_pdu: int) -> tuple[int, int]:
    """Validate a 6-byte PDU header and return ``(pdu_type, length)``.

    ``max_pdu`` is the local maximum P-DATA-TF length (0: no limit). Raises
    :class:`PDUError` for an unknown type (reason 1) or a length that is
    impossible for the type or over the limit (reason 6), before the body is
    read, so a hostile length never makes us allocate.
    """
    pdu_type, length = _HEADER.unpack(header)
    fixed = _FIXED_LENGTH.get(pdu_type)
    if fixed is not None:
        if length != fixed:
            raise PDUError(f"PDU type 0x{pdu_type:02X} has length {length}, expected {fixed}")
    elif pdu_type == PDUType.P_DATA_TF:
        if length < 6:
            raise PDUError(f"P-DATA-TF length {length} is too short for a PDV")
        if max_pdu and length > max_pdu:
            raise PDUError(
                f"P-DATA-TF length {length} exceeds the maximum PDU length {max_pdu} we announced"
            )
    elif pdu_type in (PDUType.A_ASSOCIATE_RQ, PDUType.A_ASSOCIATE_AC):
        if length < _ASSOC_FIXED.size:
            raise PDUError(f"A-ASSOCIATE PDU length {length} is shorter than its fixed fields")
        if length > max(MAX_ASSOCIATE_PDU, max_pdu):
            raise PDUError(f"A-ASSOCIATE PDU length {length} is unreasonably large")
    else:
        raise PDUError(f"unrecognized PDU type 0x{pdu_type:02X}", reason=1)
    return pdu_type, length


def _text_uid(raw: bytes | memoryview, what: str) -> UID:
    try:
        text = bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        raise PDUError(f"{what} is not ASCII") from None
    text = text.rstrip("\x00 ")
    if not text:
        raise PDUError(f"{what} is empty")
    # Peers do send slightly non-conformant UIDs; accept them without letting
    # pydicom's reading validation warn (or raise, if so configured) per UID.
    return UID(text, validation_mode=_pydicom_config.IGNORE)


class _Reader:
    """Bounds-checked cursor over a memoryview (aioquic's Buffer, minimal)."""

    __slots__ = ("buf", "end", "pos", "what")

    def __init__(self, buf: memoryview, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.what = what

    def need(self, n: int) -> None:
        if self.pos + n > self.end:
            raise PDUError(f"{self.what}: needs {n} more bytes, {self.end - self.pos} remain")

    def u8(self) -> int:
        self.need(1)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        self.need(2)
        (v,) = _U16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return int(v)

    def take(self, n: int) -> memoryview:
        self.need(n)
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def lv(self) -> memoryview:
        return self.take(self.u16())

    def rest(self) -> memoryview:
        v = self.buf[self.pos : self.end]
        self.pos = self.end
        return v

    def items(self) -> list[tuple[int, int, memoryview]]:
        """Split the rest into ``(type, reserved, value)`` items."""
        out = []
        while self.pos < self.end:
            self.need(4)
            item_type, length = _ITEM.unpack_from(self.buf, self.pos)
            reserved = self.buf[self.pos + 1]
            self.pos += 4
            out.append((item_type, reserved, self.take(length)))
        return out


def _decode_user_item(item_type: int, reserved: int, value: memoryview) -> UserItem:
    r = _Reader(value, f"user information sub-item 0x{item_type:02X}")
    if item_type == 0x51:
        if len(value) != 4:
            raise PDUError("maximum length sub-item must be 4 bytes")
        (n,) = _U32.unpack(value)
        return MaximumLengthNotification(maximum_length_received=n)
    if item_type == 0x52:
        return ImplementationClassUIDNotification(
            implementation_class_uid=_text_uid(value, "implementation class UID")
        )
    if item_type == 0x55:
        name = bytes(value).decode("ascii", "replace").rstrip("\x00 ")
        return ImplementationVersionNameNotification(implementation_version_name=name)
    if item_type == 0x53:
        if len(value) != 4:
            raise PDUError("asynchronous operations window sub-item must be 4 bytes")
        return AsynchronousOperationsWindowNegotiation(
            maximum_number_operations_invoked=r.u16(),
            maximum_number_operations_performed=r.u16(),
        )
    if item_type == 0x54:
        uid = _text_uid(r.lv(), "role selection SOP class UID")
        scu, scp = r.u8(), r.u8()
        return SCP_SCU_RoleSelectionNegotiation(
            sop_class_uid=uid, scu_role=bool(scu), scp_role=bool(scp)
        )
    if item_type == 0x56:
        uid = _text_uid(r.lv(), "extended negotiation SOP class UID")
        return SOPClassExtendedNegotiation(
            sop_class_uid=uid, service_class_application_information=bytes(r.rest())
        )
    if item_type == 0x57:
        uid = _text_uid(r.lv(), "common extended SOP class UID")
        svc = _text_uid(r.lv(), "service class UID")
        related: list[UID] = []
        if r.pos < r.end:
            rr = _Reader(r.lv(), "related general SOP class identification")
            while rr.pos < rr.end:
                related.append(_text_uid(rr.lv(), "related general SOP class UID"))
        return SOPClassCommonExtendedNegotiation(
            sop_class_uid=uid,
            service_class_uid=svc,
            related_general_sop_class_identification=related,
        )
    if item_type == 0x58:
        kind, positive = r.u8(), r.u8()
        primary = bytes(r.lv())
        secondary = bytes(r.lv()) if r.pos < r.end else b""
        return UserIdentityNegotiation(
            user_identity_type=kind,
            positive_response_requested=bool(positive),
            primary_field=primary,
            secondary_field=secondary or None,
        )
    if item_type == 0x59:
        return UserIdentityNegotiation(server_response=bytes(r.lv()))
    return UnknownUserItem(item_type=item_type, data=bytes(value))


#: The item types of an A-ASSOCIATE-RQ/AC and their sub-items (PS3.8 9.3.2,
#: 9.3.3, Annex D): one where it does not belong is an unexpected parameter
#: (A-ABORT reason 5); one of any other type is skipped (9.3.1).
_KNOWN_ITEMS: Final = frozenset((0x10, 0x20, 0x21, 0x30, 0x40, 0x50, *range(0x51, 0x5A)))


def _decode_associate(pdu_type: int, body: memoryview) -> AAssociateRQ | AAssociateAC:
    name = "A-ASSOCIATE-RQ" if pdu_type == PDUType.A_ASSOCIATE_RQ else "A-ASSOCIATE-AC"
    if len(body) < _ASSOC_FIXED.size:
        raise PDUError(f"{name} is shorter than its fixed fields")
    version, called, calling = _ASSOC_FIXED.unpack_from(body)
    r = _Reader(body[_ASSOC_FIXED.size :], name)
    app_context: UID | None = None
    rq_contexts: list[PresentationContextRQ] = []
    ac_contexts: list[PresentationContextAC] = []
    user_items: list[UserItem] = []
    for item_type, _reserved, value in r.items():
        if item_type == 0x10:
            app_context = _text_uid(value, "application context name")
        elif item_type == 0x20 and pdu_type == PDUType.A_ASSOCIATE_RQ:
            rq_contexts.append(_decode_context_rq(value))
        elif item_type == 0x21 and pdu_type == PDUType.A_ASSOCIATE_AC:
            ac_contexts.append(_decode_context_ac(value))
        elif item_type == 0x50:
            sub = _Reader(value, "user information item")
            user_items.extend(_decode_user_item(t, res, v) for t, res, v in sub.items())
        elif item_type in _KNOWN_ITEMS:
            raise PDUError(f"{name}: unexpected item type 0x{item_type:02X}", reason=5)
        # else: an item of an unrecognized type is ignored and skipped (PS3.8 9.3.1)
    if app_context is None:
        raise PDUError(f"{name} has no application context item", reason=6)
    if pdu_type == PDUType.A_ASSOCIATE_RQ and not (called.isascii() and calling.isascii()):
        # ISO 646 G0 only (PS3.8 Table 9-11); the acceptor echoes these in its
        # A-ASSOCIATE-AC, which could not be encoded. In an A-ASSOCIATE-AC
        # they are not tested (Table 9-17), hence latin-1 below.
        raise PDUError(f"{name}: AE title is not ASCII")
    called_title = called.decode("latin-1").strip(" \x00")
    calling_title = calling.decode("latin-1").strip(" \x00")
    if pdu_type == PDUType.A_ASSOCIATE_RQ:
        return AAssociateRQ(
            protocol_version=version,
            called_ae_title=called_title,
            calling_ae_title=calling_title,
            application_context_name=app_context,
            presentation_contexts=tuple(rq_contexts),
            user_information=tuple(user_items),
            titles=called + calling,
        )
    return AAssociateAC(
        protocol_version=version,
        called_ae_title=called_title,
        calling_ae_title=calling_title,
        application_context_name=app_context,
        presentation_contexts=tuple(ac_contexts),
        user_information=tuple(user_items),
        titles=called + calling,
    )


def _decode_context_rq(value: memoryview) -> PresentationContextRQ:
    if len(value) < 4:
        raise PDUError("presentation context item is too short")
    context_id = value[0]
    abstract: UID | None = None
    syntaxes: list[UID] = []
    for sub_type, _res, sub in _Reader(value[4:], "presentation context item").items():
        if sub_type == 0x30:
            if abstract is not None:
                raise PDUError(f"presentation context {context_id} has two abstract syntaxes")
            abstract = _text_uid(sub, "abstract syntax")
        elif sub_type == 0x40:
            syntaxes.append(_text_uid(sub, "transfer syntax"))
        elif sub_type in _KNOWN_ITEMS:
            raise PDUError(
                f"presentation context {context_id}: unexpected sub-item 0x{sub_type:02X}",
                reason=5,
            )
        # else: unrecognized, ignored and skipped (PS3.8 9.3.1)
    if abstract is None or not syntaxes:
        raise PDUError(f"presentation context {context_id} lacks its abstract or transfer syntax")
    return PresentationContextRQ(
        context_id=context_id, abstract_syntax=abstract, transfer_syntaxes=tuple(syntaxes)
    )


def _decode_context_ac(value: memoryview) -> PresentationContextAC:
    if len(value) < 4:
        raise PDUError("presentation context item is too short")
    context_id, result = value[0], value[2]
    ts: UID | None = None
    for sub_type, _res, sub in _Reader(value[4:], "presentation context item").items():
        if sub_type != 0x40:
            if sub_type in _KNOWN_ITEMS:
                raise PDUError(
                    f"presentation context {context_id}: unexpected sub-item 0x{sub_type:02X}",
                    reason=5,
                )
            continue  # unrecognized: ignored and skipped (PS3.8 9.3.1)
        # Significant only for an accepted context: otherwise not tested
        # (PS3.8 9.3.3.2).
        if result == 0:
            ts = _text_uid(sub, "transfer syntax")
    if result == 0 and ts is None:
        raise PDUError(f"accepted presentation context {context_id} has no transfer syntax")
    return PresentationContextAC(context_id=context_id, result=result, transfer_syntax=ts)


def split_p_data(body: memoryview) -> list[tuple[int, int, memoryview]]:
    """The PDV items of a P-DATA-TF body as ``(context ID, control header, data)``.

    The hot path of receiving (no PDV objects); checked exactly as
    :func:`decode` checks a P-DATA-TF, raising :class:`PDUError`.
    """
    items: list[tuple[int, int, memoryview]] = []
    pos, end = 0, len(body)
    unpack = _PDV_HEADER.unpack_from
    while pos < end:
        if end - pos < 6:
            raise PDUError("P-DATA-TF: truncated PDV item header")
        length, context_id, mch = unpack(body, pos)
        if length < 2 or pos + 4 + length > end:
            raise PDUError(f"P-DATA-TF: PDV item length {length} does not fit the PDU")
        # Bits 2-7 of the control header are never checked by the receiver
        # (PS3.8 E.2): only the last-fragment and command bits are kept.
        items.append((context_id, mch & 0x03, body[pos + 6 : pos + 4 + length]))
        pos += 4 + length
    if not items:
        raise PDUError("P-DATA-TF holds no PDV item")
    return items


def _decode_p_data(body: memoryview) -> PDataTF:
    return PDataTF(
        pdvs=tuple(
            PDV(context_id=cx, is_command=bool(mch & 1), is_last=bool(mch & 2), data=data)
            for cx, mch, data in split_p_data(body)
        )
    )


def decode(pdu_type: int, body: bytes | bytearray | memoryview) -> PDU:
    """Decode the body (what follows the 6-byte header) of a PDU of ``pdu_type``.

    P-DATA-TF PDVs hold memoryview slices of ``body``, not copies.
    """
    view = memoryview(body)
    if pdu_type == PDUType.P_DATA_TF:
        return _decode_p_data(view)
    if pdu_type in (PDUType.A_ASSOCIATE_RQ, PDUType.A_ASSOCIATE_AC):
        return _decode_associate(pdu_type, view)
    if pdu_type in _FIXED_LENGTH and len(view) != 4:
        raise PDUError(f"PDU type 0x{pdu_type:02X} must have a 4-byte body")
    if pdu_type == PDUType.A_ABORT:
        return AAbort(source=view[2], reason=view[3])
    if pdu_type == PDUType.A_RELEASE_RQ:
        return AReleaseRQ()
    if pdu_type == PDUType.A_RELEASE_RP:
        return AReleaseRP()
    if pdu_type == PDUType.A_ASSOCIATE_RJ:
        return AAssociateRJ(result=view[1], source=view[2], reason=view[3])
    raise PDUError(f"unrecognized PDU type 0x{pdu_type:02X}", reason=1)


def decode_pdu(data: bytes | bytearray | memoryview, max_pdu: int = 0) -> PDU:
    """Decode one whole PDU (header and body); a convenience for tests and tools."""
    view = memoryview(data)
    if len(view) < 6:
        raise PDUError("truncated PDU header")
    pdu_type, length = check_header(view[:6], max_pdu)
    if len(view) != 6 + length:
        raise PDUError(f"PDU length field says {length} bytes, {len(view) - 6} given")
    return decode(pdu_type, view[6:])


def _describe_items(items: tuple[UserItem, ...]) -> str:
    return ", ".join(type(i).__name__ for i in items)


def summary(pdu: PDU) -> str:
    """A one-line description of a PDU for DEBUG logs."""
    if isinstance(pdu, PDataTF):
        return "P-DATA-TF " + " ".join(
            f"[ctx {p.context_id} {'cmd' if p.is_command else 'data'}"
            f"{' last' if p.is_last else ''} {len(p.data)}B]"
            for p in pdu.pdvs
        )
    if isinstance(pdu, AAssociateRQ | AAssociateAC):
        kind = "A-ASSOCIATE-RQ" if isinstance(pdu, AAssociateRQ) else "A-ASSOCIATE-AC"
        items = _describe_items(pdu.user_information)
        return (
            f"{kind} called={pdu.called_ae_title!r} calling={pdu.calling_ae_title!r} "
            f"contexts={len(pdu.presentation_contexts)} user=[{items}]"
        )
    return repr(pdu)
