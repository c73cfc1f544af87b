"""The DIMSE-C and DIMSE-N messages of PS3.7: field tables, validation, typed messages.

Sans-IO. :mod:`aiodicom.dimse` turns a command set into ``{keyword: value}``
and back; this module knows what each of the 23 messages may and must carry:

* :data:`MESSAGE_SPECS` is the field table of every request and response
  (PS3.7 9.3 and 10.3 for the fields of each message, with the usage of each
  field from the service definitions of 9.1 and 10.1, and Annex C for the
  status-related fields): M mandatory, U user option, C conditional, plus
  the rule for the Command Data Set Type (a data set required, forbidden,
  optional, or present exactly when the status is Pending).
* :func:`check_command` validates a decoded command against that table. It
  runs on every received request (a response needs only its Status to be
  judged, and is given to its caller as it is), so it is a dictionary
  lookup per field.
* :class:`DIMSEMessage` and its 23 subclasses (:class:`CEchoRQ`,
  :class:`CStoreRSP`, :class:`NActionRSP`, ...) are typed, slotted views of a
  command; :meth:`DIMSEMessage.to_fields` gives the dictionary that
  :func:`aiodicom.dimse.encode_command` takes and
  :meth:`DIMSEMessage.from_fields` builds the right subclass from a decoded
  one, through the registry :data:`MESSAGE_TYPES`.

Two levels of checking. The default is what a receiver needs to process the
message safely and is deliberately tolerant of what real peers send: every
mandatory field present, each value of the right type and range (US
0-65535, UIDs made of digits and dots and at most 64 characters, AE titles
of 1-16 characters), Priority 0/1/2, the data set rule. ``strict=True`` adds
the finer points of PS3.5/PS3.7 that some peers get wrong: no leading zero
in a UID component, fields that the message's table does not list, Error
Comment longer than 64 characters, and the conditional fields that can be
checked from the command alone (Event/Action Type ID whenever an Event/Action
Reply follows, Number of Remaining Sub-operations in a Pending C-GET/C-MOVE
response).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, ClassVar, Final, Self

from pydicom.multival import MultiValue

from .dimse import COMMAND_ELEMENTS, DATASET_PRESENT, NO_DATASET, CommandField
from .errors import DIMSEError

__all__ = (
    "CONDITIONAL",
    "DATASET_FORBIDDEN",
    "DATASET_OPTIONAL",
    "DATASET_PENDING",
    "DATASET_REQUIRED",
    "FIELD_NAMES",
    "MANDATORY",
    "MESSAGE_SPECS",
    "MESSAGE_TYPES",
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_MEDIUM",
    "USER_OPTION",
    "CCancelRQ",
    "CEchoRQ",
    "CEchoRSP",
    "CFindRQ",
    "CFindRSP",
    "CGetRQ",
    "CGetRSP",
    "CMoveRQ",
    "CMoveRSP",
    "CStoreRQ",
    "CStoreRSP",
    "DIMSEMessage",
    "MessageSpec",
    "NActionRQ",
    "NActionRSP",
    "NCreateRQ",
    "NCreateRSP",
    "NDeleteRQ",
    "NDeleteRSP",
    "NEventReportRQ",
    "NEventReportRSP",
    "NGetRQ",
    "NGetRSP",
    "NSetRQ",
    "NSetRSP",
    "check_command",
    "error_comment",
    "field_label",
    "is_request",
    "is_response",
    "is_us",
    "message_name",
    "request_sop_class",
    "request_sop_instance",
    "response_field",
    "status_elements",
)

# ---------------------------------------------------------------------------
# The tables

#: Field usage codes (PS3.7 5: M mandatory, U user option, C conditional).
MANDATORY: Final = "M"
USER_OPTION: Final = "U"
CONDITIONAL: Final = "C"

#: Command Data Set Type rules.
DATASET_REQUIRED: Final = "required"
DATASET_FORBIDDEN: Final = "forbidden"
DATASET_OPTIONAL: Final = "optional"
#: A data set follows exactly when the status is Pending (C-FIND-RSP, 9.1.2.1.5).
DATASET_PENDING: Final = "pending"

#: Priority (0000,0700) values, PS3.7 E.1.
PRIORITY_MEDIUM: Final = 0x0000
PRIORITY_HIGH: Final = 0x0001
PRIORITY_LOW: Final = 0x0002

_PENDING_STATUSES: Final = frozenset((0xFF00, 0xFF01))
_SUBOP_RESPONSES: Final = frozenset((CommandField.C_GET_RSP, CommandField.C_MOVE_RSP))

#: The Message Field names of PS3.7 Table E.1-1, by keyword.
FIELD_NAMES: Final[Mapping[str, str]] = {
    "CommandGroupLength": "Command Group Length",
    "AffectedSOPClassUID": "Affected SOP Class UID",
    "RequestedSOPClassUID": "Requested SOP Class UID",
    "CommandField": "Command Field",
    "MessageID": "Message ID",
    "MessageIDBeingRespondedTo": "Message ID Being Responded To",
    "MoveDestination": "Move Destination",
    "Priority": "Priority",
    "CommandDataSetType": "Command Data Set Type",
    "Status": "Status",
    "OffendingElement": "Offending Element",
    "ErrorComment": "Error Comment",
    "ErrorID": "Error ID",
    "AffectedSOPInstanceUID": "Affected SOP Instance UID",
    "RequestedSOPInstanceUID": "Requested SOP Instance UID",
    "EventTypeID": "Event Type ID",
    "AttributeIdentifierList": "Attribute Identifier List",
    "ActionTypeID": "Action Type ID",
    "NumberOfRemainingSuboperations": "Number of Remaining Sub-operations",
    "NumberOfCompletedSuboperations": "Number of Completed Sub-operations",
    "NumberOfFailedSuboperations": "Number of Failed Sub-operations",
    "NumberOfWarningSuboperations": "Number of Warning Sub-operations",
    "MoveOriginatorApplicationEntityTitle": "Move Originator Application Entity Title",
    "MoveOriginatorMessageID": "Move Originator Message ID",
}

_TAGS: Final[dict[str, str]] = {
    kw: f"(0000,{elem:04X})" for elem, (kw, _) in COMMAND_ELEMENTS.items()
}
_VRS: Final[dict[str, str]] = {kw: vr for kw, vr in COMMAND_ELEMENTS.values()}
_LABELS: Final[dict[str, str]] = {kw: f"{FIELD_NAMES[kw]} {tag}" for kw, tag in _TAGS.items()}


def is_us(value: Any) -> bool:
    """True for what a US element may hold: an int (not a bool) from 0 to 65535."""
    return type(value) is int and 0 <= value <= 0xFFFF


def status_elements(status: Any, keywords: Iterable[str]) -> dict[str, Any]:
    """The ``keywords`` a handler's status Dataset has, as ``{keyword: value}``,
    its Error Comment made a valid LO (:func:`error_comment`); nothing else
    is checked."""
    out = {keyword: status[keyword].value for keyword in keywords if keyword in status}
    if "ErrorComment" in out:
        out["ErrorComment"] = error_comment(out["ErrorComment"])
    return out


def error_comment(value: Any) -> str:
    """A handler's Error Comment as the LO a command set can carry: one value
    (the values of a multi-valued one, which pydicom makes of a backslash,
    joined by spaces; a backslash left is a slash), of the default character
    repertoire (any other character a ``?``), at most 64 characters."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list | tuple | MultiValue):
        text = " ".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.replace("\\", "/")
    if not (text.isascii() and text.isprintable()):
        text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text[:64]


def field_label(keyword: str) -> str:
    """``'Affected SOP Instance UID (0000,1000)'`` for ``'AffectedSOPInstanceUID'``."""
    return _LABELS.get(keyword, repr(keyword))


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """The field table of one DIMSE message.

    ``fields`` maps each command field keyword the message may carry to its
    usage (:data:`MANDATORY`, :data:`USER_OPTION`, :data:`CONDITIONAL`);
    Command Field and Command Data Set Type are listed as mandatory, Command
    Group Length (always computed by the encoder) is left out. ``dataset`` is
    one of the ``DATASET_*`` rules and ``dataset_name`` the name the standard
    gives the data set (``'Data Set'``, ``'Identifier'``, ``'Action Reply'``).
    """

    name: str
    command_field: int
    fields: Mapping[str, str]
    dataset: str
    dataset_name: str = ""

    @property
    def mandatory(self) -> tuple[str, ...]:
        """The keywords of the mandatory fields, in table order."""
        return tuple(kw for kw, usage in self.fields.items() if usage == MANDATORY)

    @property
    def is_request(self) -> bool:
        """True for a request (bit 15 of the Command Field clear)."""
        return not self.command_field & 0x8000


def _spec(
    name: str, command_field: int, dataset: str, dataset_name: str = "", **usage: str
) -> MessageSpec:
    table = {"CommandField": MANDATORY, "CommandDataSetType": MANDATORY}
    table.update(usage)
    for keyword in table:
        assert keyword in _VRS, keyword
    return MessageSpec(name, command_field, table, dataset, dataset_name)


M, U, C = MANDATORY, USER_OPTION, CONDITIONAL
_F = CommandField

_SPEC_LIST: Final = (
    # PS3.7 9.3.1 C-STORE: Tables 9.3-1, 9.3-2; service parameters Table 9.1-1.
    _spec(
        "C-STORE-RQ",
        _F.C_STORE_RQ,
        DATASET_REQUIRED,
        "Data Set",
        AffectedSOPClassUID=M,
        MessageID=M,
        Priority=M,
        AffectedSOPInstanceUID=M,
        MoveOriginatorApplicationEntityTitle=U,
        MoveOriginatorMessageID=U,
    ),
    _spec(
        "C-STORE-RSP",
        _F.C_STORE_RSP,
        DATASET_FORBIDDEN,
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        AffectedSOPInstanceUID=U,
        OffendingElement=C,
        ErrorComment=C,
    ),
    # PS3.7 9.3.2 C-FIND: Tables 9.3-3, 9.3-4 (C-CANCEL-FIND-RQ 9.3-5); Table 9.1-2.
    _spec(
        "C-FIND-RQ",
        _F.C_FIND_RQ,
        DATASET_REQUIRED,
        "Identifier",
        AffectedSOPClassUID=M,
        MessageID=M,
        Priority=M,
    ),
    _spec(
        "C-FIND-RSP",
        _F.C_FIND_RSP,
        DATASET_PENDING,
        "Identifier",
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        OffendingElement=C,
        ErrorComment=C,
    ),
    # PS3.7 9.3.3 C-GET: Tables 9.3-6, 9.3-7; Table 9.1-3.
    _spec(
        "C-GET-RQ",
        _F.C_GET_RQ,
        DATASET_REQUIRED,
        "Identifier",
        AffectedSOPClassUID=M,
        MessageID=M,
        Priority=M,
    ),
    _spec(
        "C-GET-RSP",
        _F.C_GET_RSP,
        DATASET_OPTIONAL,
        "Identifier",
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        NumberOfRemainingSuboperations=C,
        NumberOfCompletedSuboperations=C,
        NumberOfFailedSuboperations=C,
        NumberOfWarningSuboperations=C,
        OffendingElement=C,
        ErrorComment=C,
    ),
    # PS3.7 9.3.4 C-MOVE: Tables 9.3-9, 9.3-10; Table 9.1-4.
    _spec(
        "C-MOVE-RQ",
        _F.C_MOVE_RQ,
        DATASET_REQUIRED,
        "Identifier",
        AffectedSOPClassUID=M,
        MessageID=M,
        Priority=M,
        MoveDestination=M,
    ),
    _spec(
        "C-MOVE-RSP",
        _F.C_MOVE_RSP,
        DATASET_OPTIONAL,
        "Identifier",
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        NumberOfRemainingSuboperations=C,
        NumberOfCompletedSuboperations=C,
        NumberOfFailedSuboperations=C,
        NumberOfWarningSuboperations=C,
        OffendingElement=C,
        ErrorComment=C,
    ),
    # PS3.7 9.3.5 C-ECHO: Tables 9.3-12, 9.3-13; Table 9.1-5.
    _spec(
        "C-ECHO-RQ",
        _F.C_ECHO_RQ,
        DATASET_FORBIDDEN,
        AffectedSOPClassUID=M,
        MessageID=M,
    ),
    _spec(
        "C-ECHO-RSP",
        _F.C_ECHO_RSP,
        DATASET_FORBIDDEN,
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        ErrorComment=C,
    ),
    # PS3.7 9.3.2.3 / 9.3.3.3 / 9.3.4.3: C-CANCEL-FIND/GET/MOVE-RQ share 0FFFH.
    _spec(
        "C-CANCEL-RQ",
        _F.C_CANCEL_RQ,
        DATASET_FORBIDDEN,
        MessageIDBeingRespondedTo=M,
    ),
    # PS3.7 10.3.1 N-EVENT-REPORT: Tables 10.3-1, 10.3-2; Table 10.1-1.
    _spec(
        "N-EVENT-REPORT-RQ",
        _F.N_EVENT_REPORT_RQ,
        DATASET_OPTIONAL,
        "Event Information",
        AffectedSOPClassUID=M,
        MessageID=M,
        AffectedSOPInstanceUID=M,
        EventTypeID=M,
    ),
    _spec(
        "N-EVENT-REPORT-RSP",
        _F.N_EVENT_REPORT_RSP,
        DATASET_OPTIONAL,
        "Event Reply",
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        AffectedSOPInstanceUID=U,
        EventTypeID=C,
        ErrorComment=C,
        ErrorID=C,
    ),
    # PS3.7 10.3.2 N-GET: Tables 10.3-3, 10.3-4; Table 10.1-2.
    _spec(
        "N-GET-RQ",
        _F.N_GET_RQ,
        DATASET_FORBIDDEN,
        RequestedSOPClassUID=M,
        MessageID=M,
        RequestedSOPInstanceUID=M,
        AttributeIdentifierList=U,
    ),
    _spec(
        "N-GET-RSP",
        _F.N_GET_RSP,
        DATASET_OPTIONAL,
        "Attribute List",
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        AffectedSOPInstanceUID=U,
        AttributeIdentifierList=C,
        ErrorComment=C,
        ErrorID=C,
    ),
    # PS3.7 10.3.3 N-SET: Tables 10.3-5, 10.3-6; Table 10.1-3.
    _spec(
        "N-SET-RQ",
        _F.N_SET_RQ,
        DATASET_REQUIRED,
        "Modification List",
        RequestedSOPClassUID=M,
        MessageID=M,
        RequestedSOPInstanceUID=M,
    ),
    _spec(
        "N-SET-RSP",
        _F.N_SET_RSP,
        DATASET_OPTIONAL,
        "Attribute List",
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        AffectedSOPInstanceUID=U,
        AttributeIdentifierList=C,
        ErrorComment=C,
        ErrorID=C,
    ),
    # PS3.7 10.3.4 N-ACTION: Tables 10.3-7, 10.3-8; Table 10.1-4.
    _spec(
        "N-ACTION-RQ",
        _F.N_ACTION_RQ,
        DATASET_OPTIONAL,
        "Action Information",
        RequestedSOPClassUID=M,
        MessageID=M,
        RequestedSOPInstanceUID=M,
        ActionTypeID=M,
    ),
    _spec(
        "N-ACTION-RSP",
        _F.N_ACTION_RSP,
        DATASET_OPTIONAL,
        "Action Reply",
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        AffectedSOPInstanceUID=U,
        ActionTypeID=C,
        ErrorComment=C,
        ErrorID=C,
    ),
    # PS3.7 10.3.5 N-CREATE: Tables 10.3-9, 10.3-10; Table 10.1-5.
    _spec(
        "N-CREATE-RQ",
        _F.N_CREATE_RQ,
        DATASET_OPTIONAL,
        "Attribute List",
        AffectedSOPClassUID=M,
        MessageID=M,
        AffectedSOPInstanceUID=U,
    ),
    _spec(
        "N-CREATE-RSP",
        _F.N_CREATE_RSP,
        DATASET_OPTIONAL,
        "Attribute List",
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        AffectedSOPInstanceUID=C,
        AttributeIdentifierList=C,
        ErrorComment=C,
        ErrorID=C,
    ),
    # PS3.7 10.3.6 N-DELETE: Tables 10.3-11, 10.3-12; Table 10.1-6.
    _spec(
        "N-DELETE-RQ",
        _F.N_DELETE_RQ,
        DATASET_FORBIDDEN,
        RequestedSOPClassUID=M,
        MessageID=M,
        RequestedSOPInstanceUID=M,
    ),
    _spec(
        "N-DELETE-RSP",
        _F.N_DELETE_RSP,
        DATASET_FORBIDDEN,
        AffectedSOPClassUID=U,
        MessageIDBeingRespondedTo=M,
        Status=M,
        AffectedSOPInstanceUID=U,
        ErrorComment=C,
        ErrorID=C,
    ),
)
del M, U, C

#: Command Field value -> the message's field table.
MESSAGE_SPECS: Final[Mapping[int, MessageSpec]] = {s.command_field: s for s in _SPEC_LIST}

# Hot-path views of the table: (name, mandatory keywords, allowed keywords, rule).
_FAST: Final[dict[int, tuple[str, tuple[str, ...], frozenset[str], str]]] = {
    s.command_field: (s.name, s.mandatory, frozenset(s.fields) | {"CommandGroupLength"}, s.dataset)
    for s in _SPEC_LIST
}


def message_name(command_field: int) -> str:
    """``'C-STORE-RQ'`` for 0x0001; ``'0x1234'`` for a value that is no message."""
    spec = MESSAGE_SPECS.get(command_field)
    return spec.name if spec is not None else f"0x{command_field:04X}"


def is_request(command_field: int) -> bool:
    """True if ``command_field`` is one of the 12 requests (C-CANCEL-RQ included)."""
    return command_field in _FAST and not command_field & 0x8000


def is_response(command_field: int) -> bool:
    """True if ``command_field`` is one of the 11 responses."""
    return command_field in _FAST and bool(command_field & 0x8000)


def response_field(command_field: int) -> int | None:
    """The Command Field of the response to a request; None for C-CANCEL-RQ."""
    if not is_request(command_field) or command_field == CommandField.C_CANCEL_RQ:
        return None
    return command_field | 0x8000


def request_sop_class(command: Mapping[str, Any]) -> str | None:
    """The SOP Class UID of a command: Affected, else Requested (N-GET/SET/ACTION/DELETE-RQ)."""
    uid = command.get("AffectedSOPClassUID")
    if uid is None:
        uid = command.get("RequestedSOPClassUID")
    return None if uid is None else str(uid)


def request_sop_instance(command: Mapping[str, Any]) -> str | None:
    """The SOP Instance UID of a command: Affected, else Requested."""
    uid = command.get("AffectedSOPInstanceUID")
    if uid is None:
        uid = command.get("RequestedSOPInstanceUID")
    return None if uid is None else str(uid)


# ---------------------------------------------------------------------------
# Validation

# PS3.5 9.1: components of digits separated by dots, no leading zero unless
# the component is "0", at most 64 characters. The lenient form allows the
# leading zeros that real-world UIDs sometimes carry.
_UID_LENIENT = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_STRICT = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
# AE (PS3.5 6.2): 16 characters of the default repertoire, no backslash or
# control character; leading and trailing spaces are not significant.
_AE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
# Values seen before: SOP Class UIDs and AE titles repeat on every message.
_SEEN_OK: dict[tuple[str, str], None] = {}
_SEEN_MAX: Final = 2048


def _fail(name: str, keyword: str, problem: str) -> DIMSEError:
    return DIMSEError(f"{name}: {field_label(keyword)} {problem}")


def _check_value(name: str, keyword: str, vr: str, value: Any, strict: bool) -> None:
    """Type and range of one field (the slow path; US is checked inline)."""
    if vr == "US" or vr == "UL":
        top = 0xFFFF if vr == "US" else 0xFFFFFFFF
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(name, keyword, f"must be an integer, not {type(value).__name__}")
        if not 0 <= value <= top:
            raise _fail(name, keyword, f"value {value} is out of range 0-{top}")
        return
    if vr == "UI" or vr == "AE":
        if not isinstance(value, str):
            raise _fail(name, keyword, f"must be a str, not {type(value).__name__}")
        if (vr, value) in _SEEN_OK and not strict:
            return
        if vr == "UI":
            if len(value) > 64:
                raise _fail(name, keyword, f"{value!r} is longer than 64 characters")
            if not (_UID_STRICT if strict else _UID_LENIENT).fullmatch(value):
                raise _fail(name, keyword, f"{value!r} is not a valid UID")
        elif not _AE.fullmatch(value) or not value.strip(" "):
            raise _fail(name, keyword, f"{value!r} is not a valid AE title (1-16 characters)")
        if len(_SEEN_OK) >= _SEEN_MAX:
            _SEEN_OK.clear()
        _SEEN_OK[(vr, value)] = None
        return
    if vr == "AT":
        tags = value if isinstance(value, list | tuple) else (value,)
        for tag in tags:
            if not isinstance(tag, int) or isinstance(tag, bool) or not 0 <= tag <= 0xFFFFFFFF:
                raise _fail(name, keyword, f"{tag!r} is not an attribute tag")
        return
    # LO: Error Comment.
    if not isinstance(value, str):
        raise _fail(name, keyword, f"must be a str, not {type(value).__name__}")
    if strict and len(value) > 64:
        raise _fail(name, keyword, "is longer than 64 characters")


def check_command(
    command: Mapping[str, Any], *, strict: bool = False, decoded: bool = False
) -> None:
    """Check a decoded command set against the table of its message.

    ``command`` is ``{keyword: value}`` as :func:`aiodicom.dimse.decode_command`
    returns it (``None`` values count as absent). Raises
    :class:`~aiodicom.errors.DIMSEError` naming the message and the field,
    e.g. ``"C-STORE-RQ: required field Affected SOP Instance UID (0000,1000)
    is missing"``. See the module docstring for what ``strict`` adds.

    ``decoded``: ``command`` is exactly what ``decode_command`` returned, so
    each value already has its VR's type and range (a US is an int of two
    bytes, a UI a str) and only known keywords occur: of the values, only the
    text of the UIs and AE titles is checked (the received request's path).
    """
    if decoded and not strict:
        _check_decoded(command)
        return
    cf = command.get("CommandField")
    if cf is None:
        raise DIMSEError("command set has no Command Field (0000,0100)")
    try:
        name, mandatory, allowed, rule = _FAST[cf]
    except (KeyError, TypeError):
        shown = f"0x{cf:04X}" if isinstance(cf, int) else repr(cf)
        raise DIMSEError(f"unknown Command Field (0000,0100) value {shown}") from None
    for keyword in mandatory:
        if command.get(keyword) is None:
            raise DIMSEError(f"{name}: required field {field_label(keyword)} is missing")
    vrs = _VRS
    seen = _SEEN_OK
    for keyword, value in command.items():
        if value is None:
            continue
        vr = vrs.get(keyword)
        if vr == "US":
            if type(value) is not int or not 0 <= value <= 0xFFFF:
                _check_value(name, keyword, vr, value, strict)
        elif vr == "UI" or vr == "AE":
            if strict or type(value) is not str or (vr, value) not in seen:
                _check_value(name, keyword, vr, value, strict)
        elif vr is None:
            raise DIMSEError(f"{name}: {keyword!r} is not a command set field")
        else:
            _check_value(name, keyword, vr, value, strict)
        if strict and keyword not in allowed:
            raise DIMSEError(f"{name}: {field_label(keyword)} is not a field of this message")
    priority = command.get("Priority")
    if priority is not None and priority not in (0, 1, 2):
        raise _fail(name, "Priority", f"value {priority} is not LOW (2), MEDIUM (0) or HIGH (1)")
    has_dataset = _check_dataset_rule(name, rule, command)
    if strict:
        _check_conditions(name, cf, command, has_dataset)


#: The fields checked by their text when the command was decoded: (keyword, VR).
_TEXT_FIELDS: Final = frozenset(kw for kw, vr in _VRS.items() if vr in ("UI", "AE"))


#: Command Field -> its mandatory keywords as a set (one comparison checks them all).
_MANDATORY: Final = {cf: frozenset(spec[1]) for cf, spec in _FAST.items()}
#: The UIDs that differ from message to message: checked, not remembered in _SEEN_OK.
_INSTANCE_UIDS: Final = frozenset({"AffectedSOPInstanceUID", "RequestedSOPInstanceUID"})


def _check_decoded(command: Mapping[str, Any]) -> None:
    """:func:`check_command` of what :func:`~aiodicom.dimse.decode_command` returned."""
    cf = command["CommandField"]
    spec = _FAST.get(cf)
    if spec is None:
        check_command(command)  # raises: unknown Command Field
        return
    name, mandatory, _, rule = spec
    if not command.keys() >= _MANDATORY[cf]:
        for keyword in mandatory:  # the first missing, in table order
            if keyword not in command:
                raise DIMSEError(f"{name}: required field {field_label(keyword)} is missing")
    seen = _SEEN_OK
    vrs = _VRS
    try:
        for keyword in _TEXT_FIELDS.intersection(command):
            value = command[keyword]
            vr = vrs[keyword]
            if (vr, value) in seen:
                continue
            if keyword in _INSTANCE_UIDS and len(value) <= 64 and _UID_LENIENT.fullmatch(value):
                continue
            _check_value(name, keyword, vr, value, False)
    except DIMSEError:
        check_command(command)  # raises the first problem in the command's own order
        raise
    priority = command.get("Priority")
    if priority is not None and priority not in (0, 1, 2):
        raise _fail(name, "Priority", f"value {priority} is not LOW (2), MEDIUM (0) or HIGH (1)")
    _check_dataset_rule(name, rule, command)


def _check_dataset_rule(name: str, rule: str, command: Mapping[str, Any]) -> bool:
    """Whether the command announces a data set, checked against the message's rule."""
    has_dataset = command["CommandDataSetType"] != NO_DATASET
    if rule == DATASET_FORBIDDEN:
        if has_dataset:
            raise _fail(name, "CommandDataSetType", "announces a data set; this message has none")
    elif rule == DATASET_REQUIRED:
        if not has_dataset:
            raise _fail(name, "CommandDataSetType", "is 0x0101 (no data set); one is required")
    elif rule == DATASET_PENDING:
        pending = command.get("Status") in _PENDING_STATUSES
        if has_dataset and not pending:
            raise _fail(name, "CommandDataSetType", "announces an Identifier; status not Pending")
        if pending and not has_dataset:
            raise _fail(name, "CommandDataSetType", "is 0x0101 but a Pending response has one")
    return bool(has_dataset)


def _check_conditions(name: str, cf: int, command: Mapping[str, Any], has_dataset: bool) -> None:
    """The conditional fields that the command alone decides (strict mode)."""
    required: str | None = None
    if has_dataset and cf == CommandField.N_EVENT_REPORT_RSP:
        required = "EventTypeID"  # PS3.7 10.1.1.1.4: with an Event Reply
    elif has_dataset and cf == CommandField.N_ACTION_RSP:
        required = "ActionTypeID"  # PS3.7 10.1.4.1.5: with an Action Reply
    elif cf in _SUBOP_RESPONSES and command.get("Status") in _PENDING_STATUSES:
        required = "NumberOfRemainingSuboperations"  # PS3.4 C.4.2.1.6, C.4.3.1.3
    if required is not None and command.get(required) is None:
        raise DIMSEError(f"{name}: conditional field {field_label(required)} is missing")


# ---------------------------------------------------------------------------
# Typed messages


@dataclass(slots=True, kw_only=True)
class DIMSEMessage:
    """Base of the typed DIMSE messages.

    Subclasses are slotted keyword-only dataclasses whose attributes are the
    command fields of their message under their DICOM keywords (``MessageID``,
    ``AffectedSOPClassUID``, ``Status``...); optional fields default to None.
    ``has_dataset`` says whether a data set follows the command (it sets the
    Command Data Set Type; the data set itself is not part of the message
    object). Nothing is checked on construction: call :meth:`validate`.
    """

    command_field: ClassVar[int] = -1
    name: ClassVar[str] = "DIMSE"
    spec: ClassVar[MessageSpec]
    _keywords: ClassVar[tuple[str, ...]] = ()

    has_dataset: bool = False

    @property
    def is_response(self) -> bool:
        """True for a response."""
        return bool(self.command_field & 0x8000)

    def to_fields(self) -> dict[str, Any]:
        """The command as ``{keyword: value}``, ready for :func:`~aiodicom.dimse.encode_command`.

        Command Field and Command Data Set Type are filled in (0x0001 when
        ``has_dataset``, else 0x0101); fields left as None are omitted.
        """
        out: dict[str, Any] = {
            "CommandField": self.command_field,
            "CommandDataSetType": DATASET_PRESENT if self.has_dataset else NO_DATASET,
        }
        for keyword in self._keywords:
            value = getattr(self, keyword)
            if value is not None:
                out[keyword] = value
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], *, strict: bool = False) -> Self:
        """Build the message of a decoded command, after :func:`check_command`.

        Called on :class:`DIMSEMessage` it returns whichever subclass the
        Command Field names (from :data:`MESSAGE_TYPES`); called on a subclass
        it also requires that message. Fields the message does not define are
        dropped (in the default, non-strict mode they are tolerated).
        """
        check_command(fields, strict=strict)
        target = MESSAGE_TYPES[fields["CommandField"]]
        if cls is not DIMSEMessage and target is not cls:
            raise DIMSEError(f"expected a {cls.name}, got a {target.name}")
        kwargs = {kw: fields[kw] for kw in target._keywords if fields.get(kw) is not None}
        message = target(has_dataset=fields["CommandDataSetType"] != NO_DATASET, **kwargs)
        return message  # type: ignore[return-value]

    def validate(self, *, strict: bool = False) -> None:
        """Raise :class:`~aiodicom.errors.DIMSEError` if the message breaks its table."""
        check_command(self.to_fields(), strict=strict)


# ---- DIMSE-C


@dataclass(slots=True, kw_only=True)
class CEchoRQ(DIMSEMessage):
    """C-ECHO-RQ, PS3.7 Table 9.3-12."""

    command_field: ClassVar[int] = CommandField.C_ECHO_RQ
    name: ClassVar[str] = "C-ECHO-RQ"

    MessageID: int
    AffectedSOPClassUID: str = "1.2.840.10008.1.1"


@dataclass(slots=True, kw_only=True)
class CEchoRSP(DIMSEMessage):
    """C-ECHO-RSP, PS3.7 Table 9.3-13."""

    command_field: ClassVar[int] = CommandField.C_ECHO_RSP
    name: ClassVar[str] = "C-ECHO-RSP"

    MessageIDBeingRespondedTo: int
    Status: int = 0x0000
    AffectedSOPClassUID: str | None = None
    ErrorComment: str | None = None


@dataclass(slots=True, kw_only=True)
class CStoreRQ(DIMSEMessage):
    """C-STORE-RQ, PS3.7 Table 9.3-1."""

    command_field: ClassVar[int] = CommandField.C_STORE_RQ
    name: ClassVar[str] = "C-STORE-RQ"

    MessageID: int
    AffectedSOPClassUID: str
    AffectedSOPInstanceUID: str
    Priority: int = PRIORITY_MEDIUM
    MoveOriginatorApplicationEntityTitle: str | None = None
    MoveOriginatorMessageID: int | None = None
    has_dataset: bool = True


@dataclass(slots=True, kw_only=True)
class CStoreRSP(DIMSEMessage):
    """C-STORE-RSP, PS3.7 Table 9.3-2."""

    command_field: ClassVar[int] = CommandField.C_STORE_RSP
    name: ClassVar[str] = "C-STORE-RSP"

    MessageIDBeingRespondedTo: int
    Status: int
    AffectedSOPClassUID: str | None = None
    AffectedSOPInstanceUID: str | None = None
    OffendingElement: list[int] | None = None
    ErrorComment: str | None = None


@dataclass(slots=True, kw_only=True)
class CFindRQ(DIMSEMessage):
    """C-FIND-RQ, PS3.7 Table 9.3-3."""

    command_field: ClassVar[int] = CommandField.C_FIND_RQ
    name: ClassVar[str] = "C-FIND-RQ"

    MessageID: int
    AffectedSOPClassUID: str
    Priority: int = PRIORITY_MEDIUM
    has_dataset: bool = True


@dataclass(slots=True, kw_only=True)
class CFindRSP(DIMSEMessage):
    """C-FIND-RSP, PS3.7 Table 9.3-4: ``has_dataset`` exactly when Pending."""

    command_field: ClassVar[int] = CommandField.C_FIND_RSP
    name: ClassVar[str] = "C-FIND-RSP"

    MessageIDBeingRespondedTo: int
    Status: int
    AffectedSOPClassUID: str | None = None
    OffendingElement: list[int] | None = None
    ErrorComment: str | None = None


@dataclass(slots=True, kw_only=True)
class CGetRQ(DIMSEMessage):
    """C-GET-RQ, PS3.7 Table 9.3-6."""

    command_field: ClassVar[int] = CommandField.C_GET_RQ
    name: ClassVar[str] = "C-GET-RQ"

    MessageID: int
    AffectedSOPClassUID: str
    Priority: int = PRIORITY_MEDIUM
    has_dataset: bool = True


@dataclass(slots=True, kw_only=True)
class CGetRSP(DIMSEMessage):
    """C-GET-RSP, PS3.7 Table 9.3-7."""

    command_field: ClassVar[int] = CommandField.C_GET_RSP
    name: ClassVar[str] = "C-GET-RSP"

    MessageIDBeingRespondedTo: int
    Status: int
    AffectedSOPClassUID: str | None = None
    NumberOfRemainingSuboperations: int | None = None
    NumberOfCompletedSuboperations: int | None = None
    NumberOfFailedSuboperations: int | None = None
    NumberOfWarningSuboperations: int | None = None
    OffendingElement: list[int] | None = None
    ErrorComment: str | None = None


@dataclass(slots=True, kw_only=True)
class CMoveRQ(DIMSEMessage):
    """C-MOVE-RQ, PS3.7 Table 9.3-9."""

    command_field: ClassVar[int] = CommandField.C_MOVE_RQ
    name: ClassVar[str] = "C-MOVE-RQ"

    MessageID: int
    AffectedSOPClassUID: str
    MoveDestination: str
    Priority: int = PRIORITY_MEDIUM
    has_dataset: bool = True


@dataclass(slots=True, kw_only=True)
class CMoveRSP(DIMSEMessage):
    """C-MOVE-RSP, PS3.7 Table 9.3-10."""

    command_field: ClassVar[int] = CommandField.C_MOVE_RSP
    name: ClassVar[str] = "C-MOVE-RSP"

    MessageIDBeingRespondedTo: int
    Status: int
    AffectedSOPClassUID: str | None = None
    NumberOfRemainingSuboperations: int | None = None
    NumberOfCompletedSuboperations: int | None = None
    NumberOfFailedSuboperations: int | None = None
    NumberOfWarningSuboperations: int | None = None
    OffendingElement: list[int] | None = None
    ErrorComment: str | None = None


@dataclass(slots=True, kw_only=True)
class CCancelRQ(DIMSEMessage):
    """C-CANCEL-RQ (C-CANCEL-FIND/GET/MOVE-RQ), PS3.7 Tables 9.3-5, 9.3-8, 9.3-11."""

    command_field: ClassVar[int] = CommandField.C_CANCEL_RQ
    name: ClassVar[str] = "C-CANCEL-RQ"

    MessageIDBeingRespondedTo: int


# ---- DIMSE-N


@dataclass(slots=True, kw_only=True)
class NEventReportRQ(DIMSEMessage):
    """N-EVENT-REPORT-RQ, PS3.7 Table 10.3-1 (data set: Event Information)."""

    command_field: ClassVar[int] = CommandField.N_EVENT_REPORT_RQ
    name: ClassVar[str] = "N-EVENT-REPORT-RQ"

    MessageID: int
    AffectedSOPClassUID: str
    AffectedSOPInstanceUID: str
    EventTypeID: int


@dataclass(slots=True, kw_only=True)
class NEventReportRSP(DIMSEMessage):
    """N-EVENT-REPORT-RSP, PS3.7 Table 10.3-2 (data set: Event Reply)."""

    command_field: ClassVar[int] = CommandField.N_EVENT_REPORT_RSP
    name: ClassVar[str] = "N-EVENT-REPORT-RSP"

    MessageIDBeingRespondedTo: int
    Status: int
    AffectedSOPClassUID: str | None = None
    AffectedSOPInstanceUID: str | None = None
    EventTypeID: int | None = None
    ErrorComment: str | None = None
    ErrorID: int | None = None


@dataclass(slots=True, kw_only=True)
class NGetRQ(DIMSEMessage):
    """N-GET-RQ, PS3.7 Table 10.3-3."""

    command_field: ClassVar[int] = CommandField.N_GET_RQ
    name: ClassVar[str] = "N-GET-RQ"

    MessageID: int
    RequestedSOPClassUID: str
    RequestedSOPInstanceUID: str
    AttributeIdentifierList: list[int] | None = None


@dataclass(slots=True, kw_only=True)
class NGetRSP(DIMSEMessage):
    """N-GET-RSP, PS3.7 Table 10.3-4 (data set: Attribute List)."""

    command_field: ClassVar[int] = CommandField.N_GET_RSP
    name: ClassVar[str] = "N-GET-RSP"

    MessageIDBeingRespondedTo: int
    Status: int
    AffectedSOPClassUID: str | None = None
    AffectedSOPInstanceUID: str | None = None
    AttributeIdentifierList: list[int] | None = None
    ErrorComment: str | None = None
    ErrorID: int | None = None


@dataclass(slots=True, kw_only=True)
class NSetRQ(DIMSEMessage):
    """N-SET-RQ, PS3.7 Table 10.3-5 (data set: Modification List, required)."""

    command_field: ClassVar[int] = CommandField.N_SET_RQ
    name: ClassVar[str] = "N-SET-RQ"

    MessageID: int
    RequestedSOPClassUID: str
    RequestedSOPInstanceUID: str
    has_dataset: bool = True


@dataclass(slots=True, kw_only=True)
class NSetRSP(DIMSEMessage):
    """N-SET-RSP, PS3.7 Table 10.3-6 (data set: Attribute List)."""

    command_field: ClassVar[int] = CommandField.N_SET_RSP
    name: ClassVar[str] = "N-SET-RSP"

    MessageIDBeingRespondedTo: int
    Status: int
    AffectedSOPClassUID: str | None = None
    AffectedSOPInstanceUID: str | None = None
    AttributeIdentifierList: list[int] | None = None
    ErrorComment: str | None = None
    ErrorID: int | None = None


@dataclass(slots=True, kw_only=True)
class NActionRQ(DIMSEMessage):
    """N-ACTION-RQ, PS3.7 Table 10.3-7 (data set: Action Information)."""

    command_field: ClassVar[int] = CommandField.N_ACTION_RQ
    name: ClassVar[str] = "N-ACTION-RQ"

    MessageID: int
    RequestedSOPClassUID: str
    RequestedSOPInstanceUID: str
    ActionTypeID: int


@dataclass(slots=True, kw_only=True)
class NActionRSP(DIMSEMessage):
    """N-ACTION-RSP, PS3.7 Table 10.3-8 (data set: Action Reply)."""

    command_field: ClassVar[int] = CommandField.N_ACTION_RSP
    name: ClassVar[str] = "N-ACTION-RSP"

    MessageIDBeingRespondedTo: int
    Status: int
    AffectedSOPClassUID: str | None = None
    AffectedSOPInstanceUID: str | None = None
    ActionTypeID: int | None = None
    ErrorComment: str | None = None
    ErrorID: int | None = None


@dataclass(slots=True, kw_only=True)
class NCreateRQ(DIMSEMessage):
    """N-CREATE-RQ, PS3.7 Table 10.3-9 (data set: Attribute List)."""

    command_field: ClassVar[int] = CommandField.N_CREATE_RQ
    name: ClassVar[str] = "N-CREATE-RQ"

    MessageID: int
    AffectedSOPClassUID: str
    AffectedSOPInstanceUID: str | None = None


@dataclass(slots=True, kw_only=True)
class NCreateRSP(DIMSEMessage):
    """N-CREATE-RSP, PS3.7 Table 10.3-10 (data set: Attribute List)."""

    command_field: ClassVar[int] = CommandField.N_CREATE_RSP
    name: ClassVar[str] = "N-CREATE-RSP"

    MessageIDBeingRespondedTo: int
    Status: int
    AffectedSOPClassUID: str | None = None
    AffectedSOPInstanceUID: str | None = None
    AttributeIdentifierList: list[int] | None = None
    ErrorComment: str | None = None
    ErrorID: int | None = None


@dataclass(slots=True, kw_only=True)
class NDeleteRQ(DIMSEMessage):
    """N-DELETE-RQ, PS3.7 Table 10.3-11."""

    command_field: ClassVar[int] = CommandField.N_DELETE_RQ
    name: ClassVar[str] = "N-DELETE-RQ"

    MessageID: int
    RequestedSOPClassUID: str
    RequestedSOPInstanceUID: str


@dataclass(slots=True, kw_only=True)
class NDeleteRSP(DIMSEMessage):
    """N-DELETE-RSP, PS3.7 Table 10.3-12."""

    command_field: ClassVar[int] = CommandField.N_DELETE_RSP
    name: ClassVar[str] = "N-DELETE-RSP"

    MessageIDBeingRespondedTo: int
    Status: int
    AffectedSOPClassUID: str | None = None
    AffectedSOPInstanceUID: str | None = None
    ErrorComment: str | None = None
    ErrorID: int | None = None


_CLASSES: Final[tuple[type[DIMSEMessage], ...]] = (
    CStoreRQ,
    CStoreRSP,
    CFindRQ,
    CFindRSP,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CEchoRQ,
    CEchoRSP,
    CCancelRQ,
    NEventReportRQ,
    NEventReportRSP,
    NGetRQ,
    NGetRSP,
    NSetRQ,
    NSetRSP,
    NActionRQ,
    NActionRSP,
    NCreateRQ,
    NCreateRSP,
    NDeleteRQ,
    NDeleteRSP,
)

#: Command Field value -> the message class.
MESSAGE_TYPES: Final[dict[int, type[DIMSEMessage]]] = {}

for _cls in _CLASSES:
    _spec_of = MESSAGE_SPECS[_cls.command_field]
    assert _spec_of.name == _cls.name, _cls
    _cls.spec = _spec_of
    _cls._keywords = tuple(f.name for f in dataclass_fields(_cls) if f.name != "has_dataset")
    # The attributes are exactly the table's fields (less the two filled in).
    assert set(_cls._keywords) == set(_spec_of.fields) - {"CommandField", "CommandDataSetType"}
    MESSAGE_TYPES[_cls.command_field] = _cls
del _cls, _spec_of
