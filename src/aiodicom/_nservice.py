"""The DIMSE-N services (PS3.7 chapter 10), without I/O.

What the :class:`~aiodicom.association.Association` needs to invoke and to
perform N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE and N-DELETE, kept
apart from it so that it can be tested value by value:

* :func:`request_fields`: the command set of a request, its arguments checked
  (a bad one raises ``ValueError``/``TypeError`` naming it, before anything is
  sent);
* :func:`reply_of`: how the invoker reads a response's data set (pynetdicom's
  rule: only a success or a warning carries one);
* :func:`response_for`: the response a performer sends for what its
  ``EVT_N_*`` handler returned, with the failure statuses PS3.7 Annex C gives
  when that answer cannot be sent as it is.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from .dimse import (
    DATASET_PRESENT,
    NO_DATASET,
    CommandField,
    encode_command,
    encode_status_response,
)
from .dimse_messages import (
    DATASET_FORBIDDEN,
    DATASET_REQUIRED,
    MESSAGE_SPECS,
    is_us,
    status_elements,
)
from .dsutils import decode_dataset, encode_dataset, is_plain_uid
from .status import SUCCESS, WARNING, code_to_category

LOGGER = logging.getLogger("aiodicom")

__all__ = ("N_EVENTS", "PROCESSING_FAILURE", "reply_of", "request_fields", "response_for")

#: PS3.7 C.4.2: the general failure of a DIMSE-N operation.
PROCESSING_FAILURE: Final = 0x0110

#: The intervention event that performs each N request, by name (the events
#: themselves live in :mod:`aiodicom.evt`, with the async shell).
N_EVENTS: Final[Mapping[int, str]] = {
    CommandField.N_EVENT_REPORT_RQ: "EVT_N_EVENT_REPORT",
    CommandField.N_GET_RQ: "EVT_N_GET",
    CommandField.N_SET_RQ: "EVT_N_SET",
    CommandField.N_ACTION_RQ: "EVT_N_ACTION",
    CommandField.N_CREATE_RQ: "EVT_N_CREATE",
    CommandField.N_DELETE_RQ: "EVT_N_DELETE",
}

#: The elements of a handler's status Dataset that may go into an N response
#: (PS3.7 Tables 10.3-2 to 10.3-12; Offending Element is a DIMSE-C element).
_STATUS_KEYWORDS: Final = ("Status", "ErrorComment", "ErrorID", "AttributeIdentifierList")

_REPLIES: Final = (SUCCESS, WARNING)

#: (0000,1000) Affected SOP Instance UID.
_AFFECTED_INSTANCE: Final = 0x00001000


def _uid(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str UID, not {type(value).__name__}")
    text = str(value)
    if not _valid_uid(text):
        raise ValueError(f"{name} {text!r} is not a valid UID")
    return text


@functools.lru_cache(maxsize=256)
def _valid_uid(text: str) -> bool:
    """PS3.5 9.1: 1 to 64 characters, digits and dots (SOP class UIDs repeat: cached)."""
    return 0 < len(text) <= 64 and is_plain_uid(text)


def _type_id(name: str, value: Any) -> int:
    if not is_us(value):
        raise ValueError(f"{name} must be an int from 0 to 65535, not {value!r}")
    return int(value)


def attribute_tags(identifiers: Iterable[Any] | None) -> list[BaseTag] | None:
    """An N-GET Attribute Identifier List as tags; ``None`` or empty asks for every attribute."""
    if identifiers is None:
        return None
    if isinstance(identifiers, (str, int)):
        raise TypeError("the attribute identifiers must be a list of tags (int, keyword, tuple)")
    tags: list[BaseTag] = []
    for item in identifiers:
        if type(item) is int and 0 <= item <= 0xFFFFFFFF:
            tags.append(BaseTag(item))
            continue
        try:
            tags.append(Tag(item))
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"{item!r} in the attribute identifiers is not a tag") from exc
    return tags or None


def request_fields(
    command_field: int,
    class_uid: Any,
    instance_uid: Any,
    *,
    has_dataset: bool,
    type_id: int | None = None,
    identifiers: Iterable[Any] | None = None,
) -> dict[str, Any]:
    """The command set of an N request (no Message ID), every argument checked.

    ``instance_uid`` may be ``None`` only for N-CREATE (the performer then
    assigns one). ``type_id`` is the Event Type ID of an N-EVENT-REPORT or the
    Action Type ID of an N-ACTION.
    """
    spec = MESSAGE_SPECS[command_field]
    fields: dict[str, Any] = {"CommandField": command_field}
    # PS3.7 10.3: N-EVENT-REPORT and N-CREATE name their object "Affected",
    # N-GET, N-SET, N-ACTION and N-DELETE "Requested".
    affected = command_field in (CommandField.N_EVENT_REPORT_RQ, CommandField.N_CREATE_RQ)
    prefix = "Affected" if affected else "Requested"
    fields[f"{prefix}SOPClassUID"] = _uid("the SOP Class UID", class_uid)
    if instance_uid is not None or command_field != CommandField.N_CREATE_RQ:
        fields[f"{prefix}SOPInstanceUID"] = _uid("the SOP Instance UID", instance_uid)
    if command_field == CommandField.N_EVENT_REPORT_RQ:
        fields["EventTypeID"] = _type_id("the event type", type_id)
    elif command_field == CommandField.N_ACTION_RQ:
        fields["ActionTypeID"] = _type_id("the action type", type_id)
    elif command_field == CommandField.N_GET_RQ:
        fields["AttributeIdentifierList"] = attribute_tags(identifiers)
    if has_dataset and spec.dataset == DATASET_FORBIDDEN:
        raise ValueError(f"{spec.name} carries no data set")
    if not has_dataset and spec.dataset == DATASET_REQUIRED:
        raise ValueError(f"{spec.name} needs a data set ({spec.dataset_name})")
    fields["CommandDataSetType"] = DATASET_PRESENT if has_dataset else NO_DATASET
    return fields


def reply_of(status: Dataset, data: bytes | None, transfer_syntax: str) -> Dataset | None:
    """The data set of an N response as the invoker returns it.

    ``None`` unless the status is a success or a warning; an empty Dataset
    when such a response has none. A data set that does not decode is logged
    and turns the status into 0x0110 (as pynetdicom does), so a caller never
    takes a reply it could not read for a success.
    """
    code = status.get("Status")
    try:
        category = code_to_category(code)
    except ValueError:
        return None
    if category not in _REPLIES:
        return None
    if not data:
        return Dataset()
    try:
        return decode_dataset(data, transfer_syntax)
    except Exception as exc:  # pydicom raises many types on garbage
        LOGGER.error("The data set of a response with status 0x%04X does not decode: %s", code, exc)
        status.Status = PROCESSING_FAILURE
        return None


def _status_fields(status: Any, allowed: frozenset[str]) -> dict[str, Any]:
    """The status elements a handler's answer gives: ``{}`` if it is no valid status."""
    if isinstance(status, Dataset):
        out = status_elements(status, (k for k in _STATUS_KEYWORDS if k in allowed))
        code = out.get("Status")
    else:
        out, code = {}, status
    if not is_us(code):
        return {}
    out["Status"] = code
    return out


def _split(result: Any) -> tuple[Any, Any]:
    """``(status, data set)`` of a handler's answer; EVT_N_DELETE may give the status alone."""
    if isinstance(result, tuple):
        if len(result) == 2:
            return result[0], result[1]
        return None, None
    return result, None


def _response_fields(
    request: Mapping[str, Any],
    kind: str,
    result: Any,
    transfer_syntax: str,
    *,
    failed: bool = False,
) -> tuple[dict[str, Any], bytes | None]:
    """:func:`response_for`'s command set fields and encoded data set."""
    request_field = request["CommandField"]
    command_field = request_field | 0x8000
    spec = MESSAGE_SPECS[command_field]
    allowed = frozenset(spec.fields)
    class_uid = request.get("AffectedSOPClassUID") or request.get("RequestedSOPClassUID")
    instance_uid = request.get("AffectedSOPInstanceUID") or request.get("RequestedSOPInstanceUID")
    fields: dict[str, Any] = {
        "CommandField": command_field,
        "MessageIDBeingRespondedTo": request.get("MessageID"),
        "AffectedSOPClassUID": class_uid,
        "AffectedSOPInstanceUID": instance_uid,
        "CommandDataSetType": NO_DATASET,
    }
    if request_field == CommandField.N_ACTION_RQ:
        fields["ActionTypeID"] = request.get("ActionTypeID")
    elif request_field == CommandField.N_EVENT_REPORT_RQ:
        fields["EventTypeID"] = request.get("EventTypeID")

    def failure(comment: str) -> tuple[dict[str, Any], bytes | None]:
        LOGGER.error("%s: %s: answering 0x%04X", kind, comment, PROCESSING_FAILURE)
        fields["Status"] = PROCESSING_FAILURE
        fields["ErrorComment"] = comment[:64]
        return fields, None

    if failed:
        fields["Status"] = PROCESSING_FAILURE
        return fields, None
    status, reply = _split(result)
    status_fields = _status_fields(status, allowed)
    if not status_fields:
        LOGGER.error("%s: the handler answered %r", kind, result)
        return failure("the handler's answer is not a status")
    fields.update(status_fields)
    category = code_to_category(status_fields["Status"])
    if category not in _REPLIES or spec.dataset == DATASET_FORBIDDEN:
        if reply is not None and category in _REPLIES:
            LOGGER.warning("%s: a %s has no data set: not sent", kind, spec.name)
        return fields, None
    if reply is not None and not isinstance(reply, Dataset):
        return failure(f"the handler's data set is a {type(reply).__name__}, not a Dataset")
    if request_field == CommandField.N_CREATE_RQ and not instance_uid:
        # PS3.7 10.1.5.1.4: the performer names the instance it created.
        if reply is not None and reply.get("AffectedSOPInstanceUID"):
            fields["AffectedSOPInstanceUID"] = str(reply.AffectedSOPInstanceUID)
            # Sent in the command set, not in the data set; the handler's
            # own Dataset is left as it was (pydicom's copies share elements).
            rest = Dataset()
            for elem in reply:
                if elem.tag != _AFFECTED_INSTANCE:
                    rest.add(elem)
            reply = rest
        elif category == SUCCESS:
            return failure("no Affected SOP Instance UID for the created instance")
    if not reply:
        return fields, None
    try:
        data = encode_dataset(reply, transfer_syntax)
    except Exception as exc:  # pydicom raises many types on unencodable values
        return failure(f"the handler's data set cannot be encoded ({exc})")
    fields["CommandDataSetType"] = DATASET_PRESENT
    return fields, data


#: The fields :func:`encode_status_response` encodes (with one type ID at most).
_FAST_FIELDS: Final = frozenset(
    (
        "CommandField",
        "MessageIDBeingRespondedTo",
        "AffectedSOPClassUID",
        "AffectedSOPInstanceUID",
        "CommandDataSetType",
        "Status",
        "EventTypeID",
        "ActionTypeID",
    )
)


def _fast_response(fields: dict[str, Any]) -> bytes | None:
    """``fields`` encoded by the fast encoder, or None if it does not apply."""
    if not _FAST_FIELDS.issuperset(fields):
        return None
    sop_class = fields.get("AffectedSOPClassUID")
    instance = fields.get("AffectedSOPInstanceUID")
    mid = fields["MessageIDBeingRespondedTo"]
    type_id = fields.get("EventTypeID", fields.get("ActionTypeID"))
    if (
        type(sop_class) is not str
        or (instance is not None and type(instance) is not str)
        or not is_us(mid)
        or (type_id is not None and not is_us(type_id))
    ):
        return None
    return encode_status_response(
        fields["CommandField"],
        mid,
        sop_class,
        fields["Status"],
        instance,
        has_dataset=fields["CommandDataSetType"] != NO_DATASET,
        type_id=type_id,
    )


def response_for(
    request: Mapping[str, Any],
    kind: str,
    result: Any,
    transfer_syntax: str,
    *,
    failed: bool = False,
) -> tuple[bytes, bytes | None]:
    """The response to an N request, for what its handler returned.

    Returns the response's encoded command set and data set (or ``None``).
    ``failed``: the handler raised, is missing, or gave no answer: 0x0110. A
    status that is no 16-bit code, status elements that cannot be encoded, a
    data set that is no Dataset or cannot be encoded in the context's
    transfer syntax, and a successful N-CREATE that names no SOP Instance
    (neither in the request nor as the reply's Affected SOP Instance UID) are
    answered 0x0110 as well, with an Error Comment.
    """
    fields, data = _response_fields(request, kind, result, transfer_syntax, failed=failed)
    fast = _fast_response(fields)
    if fast is not None:
        return fast, data
    try:
        return encode_command(fields), data
    except Exception as exc:  # a status element the handler gave that does not encode
        LOGGER.error("%s: the handler's status does not encode (%s)", kind, exc)
        fields, _ = _response_fields(request, kind, None, transfer_syntax, failed=True)
        fields["ErrorComment"] = "the handler's status does not encode"
        return encode_command(fields), None
