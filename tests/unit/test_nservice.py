"""The DIMSE-N helpers without I/O: requests, responses and replies (PS3.7 chapter 10).

Every command set built here is checked against the field tables
(``check_command(strict=True)``) and decoded by pynetdicom's own DIMSE code,
so neither our tables nor our codec are the only judge.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import dimse_messages as pnd_messages
from pynetdicom.pdu_primitives import P_DATA

from aiodicom._nservice import (
    N_EVENTS,
    attribute_tags,
    reply_of,
    request_fields,
    response_for,
)
from aiodicom.dimse import CommandField, decode_command, encode_command
from aiodicom.dimse_messages import check_command
from aiodicom.dsutils import decode_dataset, encode_dataset
from aiodicom.status import code_to_category

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
MPPS = "1.2.840.10008.3.1.2.3.3"
INSTANCE = "1.2.826.0.1.3680043.9.9999.20.1"
F = CommandField


def pynetdicom_reads(command: bytes, data: bytes | None = None) -> Any:
    """pynetdicom's primitive for a command set (and data set) we encoded."""
    pdvs = [[1, b"\x03" + command]]
    if data is not None:
        pdvs.append([1, b"\x02" + data])
    pdata = P_DATA()
    pdata.presentation_data_value_list = pdvs
    message = pnd_messages.DIMSEMessage()
    assert message.decode_msg(pdata)
    return message.message_to_primitive()


def ds(**elements: Any) -> Dataset:
    out = Dataset()
    for keyword, value in elements.items():
        setattr(out, keyword, value)
    return out


# ---------------------------------------------------------------------------
# Requests


@pytest.mark.parametrize(
    ("field", "kwargs", "expected"),
    [
        (
            F.N_EVENT_REPORT_RQ,
            {"type_id": 2, "has_dataset": True},
            {"AffectedSOPClassUID": MPPS, "AffectedSOPInstanceUID": INSTANCE, "EventTypeID": 2},
        ),
        (
            F.N_GET_RQ,
            {"identifiers": ["PatientID", 0x00100010], "has_dataset": False},
            {
                "RequestedSOPClassUID": MPPS,
                "RequestedSOPInstanceUID": INSTANCE,
                "AttributeIdentifierList": [Tag(0x00100020), Tag(0x00100010)],
            },
        ),
        (
            F.N_SET_RQ,
            {"has_dataset": True},
            {"RequestedSOPClassUID": MPPS, "RequestedSOPInstanceUID": INSTANCE},
        ),
        (
            F.N_ACTION_RQ,
            {"type_id": 0xFFFF, "has_dataset": False},
            {
                "RequestedSOPClassUID": MPPS,
                "RequestedSOPInstanceUID": INSTANCE,
                "ActionTypeID": 0xFFFF,
            },
        ),
        (
            F.N_CREATE_RQ,
            {"has_dataset": True},
            {"AffectedSOPClassUID": MPPS, "AffectedSOPInstanceUID": INSTANCE},
        ),
        (
            F.N_DELETE_RQ,
            {"has_dataset": False},
            {"RequestedSOPClassUID": MPPS, "RequestedSOPInstanceUID": INSTANCE},
        ),
    ],
    ids=lambda v: f"{v:04X}" if isinstance(v, int) else None,
)
def test_each_request_is_valid_and_pynetdicom_reads_it(
    field: int, kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    fields = request_fields(field, MPPS, INSTANCE, **kwargs)
    fields["MessageID"] = 9
    command = encode_command(fields)
    decoded = decode_command(command)
    check_command(decoded, strict=True)
    assert decoded["CommandDataSetType"] == (0x0001 if kwargs["has_dataset"] else 0x0101)
    theirs = pynetdicom_reads(command, b"" if kwargs["has_dataset"] else None)
    assert theirs.MessageID == 9
    for keyword, value in expected.items():
        got = getattr(theirs, keyword)
        assert (got if not isinstance(value, list) or isinstance(got, list) else [got]) == value


def test_n_create_without_an_instance_leaves_it_to_the_performer() -> None:
    fields = request_fields(F.N_CREATE_RQ, MPPS, None, has_dataset=False)
    assert "AffectedSOPInstanceUID" not in fields
    fields["MessageID"] = 1
    check_command(decode_command(encode_command(fields)), strict=True)


@pytest.mark.parametrize(
    ("field", "kwargs", "error", "match"),
    [
        (F.N_GET_RQ, {"has_dataset": True}, ValueError, "N-GET-RQ carries no data set"),
        (F.N_DELETE_RQ, {"has_dataset": True}, ValueError, "N-DELETE-RQ carries no data set"),
        (F.N_SET_RQ, {"has_dataset": False}, ValueError, "Modification List"),
        (F.N_ACTION_RQ, {"has_dataset": False}, ValueError, "action type"),
        (F.N_EVENT_REPORT_RQ, {"has_dataset": False, "type_id": True}, ValueError, "event type"),
        (F.N_GET_RQ, {"has_dataset": False, "identifiers": "PatientID"}, TypeError, "list"),
        (F.N_GET_RQ, {"has_dataset": False, "identifiers": [2**32]}, ValueError, "not a tag"),
    ],
)
def test_bad_requests_name_what_is_wrong(
    field: int, kwargs: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        request_fields(field, MPPS, INSTANCE, **kwargs)


@pytest.mark.parametrize("uid", ["", "1.2.x", "1." + "2" * 63, " 1.2"])
def test_bad_uids_are_refused(uid: str) -> None:
    with pytest.raises(ValueError, match="not a valid UID"):
        request_fields(F.N_DELETE_RQ, MPPS, uid, has_dataset=False)
    with pytest.raises(ValueError, match="not a valid UID"):
        request_fields(F.N_DELETE_RQ, uid, INSTANCE, has_dataset=False)


def test_attribute_tags() -> None:
    assert attribute_tags(None) is None
    assert attribute_tags([]) is None
    assert attribute_tags([(0x0010, 0x0020), "PatientName", Tag(8, 0x18)]) == [
        0x00100020,
        0x00100010,
        0x00080018,
    ]


# ---------------------------------------------------------------------------
# Responses


def request(field: int, **extra: Any) -> dict[str, Any]:
    affected = field in (F.N_EVENT_REPORT_RQ, F.N_CREATE_RQ)
    prefix = "Affected" if affected else "Requested"
    out = {
        "CommandField": field,
        "MessageID": 41,
        f"{prefix}SOPClassUID": MPPS,
        f"{prefix}SOPInstanceUID": INSTANCE,
        "CommandDataSetType": 0x0101,
    }
    if field == F.N_ACTION_RQ:
        out["ActionTypeID"] = 1
    elif field == F.N_EVENT_REPORT_RQ:
        out["EventTypeID"] = 1
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def respond(field: int, result: Any, *, failed: bool = False, **extra: Any) -> tuple[Any, Any]:
    """Our response, checked strictly, and what pynetdicom reads from it."""
    command, data = response_for(
        request(field, **extra), N_EVENTS[field], result, EXPLICIT_LE, failed=failed
    )
    decoded = decode_command(command)
    check_command(decoded, strict=True)
    assert (decoded["CommandDataSetType"] != 0x0101) is (data is not None)
    theirs = pynetdicom_reads(command, data)
    assert theirs.MessageIDBeingRespondedTo == 41
    return decoded, (None if data is None else decode_dataset(data, EXPLICIT_LE))


@pytest.mark.parametrize("field", sorted(N_EVENTS))
def test_every_response_names_its_object_and_request(field: int) -> None:
    result = 0x0000 if field == F.N_DELETE_RQ else (0x0000, ds(PatientID="R"))
    command, reply = respond(field, result)
    assert command["CommandField"] == field | 0x8000
    assert command["Status"] == 0x0000
    assert command["AffectedSOPClassUID"] == MPPS
    assert command["AffectedSOPInstanceUID"] == INSTANCE
    if field == F.N_DELETE_RQ:
        assert reply is None
    else:
        assert reply.PatientID == "R"


def test_type_ids_are_echoed() -> None:
    command, _ = respond(F.N_ACTION_RQ, (0x0000, None), ActionTypeID=3)
    assert command["ActionTypeID"] == 3
    command, _ = respond(F.N_EVENT_REPORT_RQ, (0x0000, None), EventTypeID=4)
    assert command["EventTypeID"] == 4


def test_n_create_takes_the_assigned_uid_from_the_reply() -> None:
    reply = ds(AffectedSOPInstanceUID="1.2.3.4", PatientID="P")
    command, sent = respond(F.N_CREATE_RQ, (0x0000, reply), AffectedSOPInstanceUID=None)
    assert command["AffectedSOPInstanceUID"] == "1.2.3.4"
    assert "AffectedSOPInstanceUID" not in sent and sent.PatientID == "P"
    assert reply.AffectedSOPInstanceUID == "1.2.3.4"  # not the handler's, a new one


def test_n_create_warning_without_an_assigned_uid_still_goes_out() -> None:
    command, sent = respond(F.N_CREATE_RQ, (0x0001, ds(PatientID="P")), AffectedSOPInstanceUID=None)
    assert command["Status"] == 0x0001
    assert "AffectedSOPInstanceUID" not in command
    assert sent.PatientID == "P"


@pytest.mark.parametrize(
    ("result", "comment"),
    [
        ("x", "is not a status"),
        (-1, "is not a status"),
        (True, "is not a status"),
        ((ds(ErrorComment="no Status"), None), "is not a status"),
        ((0x0000, ["not", "a", "Dataset"]), "not a Dataset"),
        ((1, 2, 3), "is not a status"),
    ],
)
def test_answers_that_cannot_go_out_become_0110(result: Any, comment: str) -> None:
    command, sent = respond(F.N_SET_RQ, result)
    assert command["Status"] == 0x0110
    assert comment in command["ErrorComment"]
    assert sent is None


def test_a_handler_that_failed_is_0110_without_comment() -> None:
    command, sent = respond(F.N_GET_RQ, None, failed=True)
    assert command["Status"] == 0x0110 and "ErrorComment" not in command and sent is None


def test_a_status_element_that_does_not_encode_is_0110() -> None:
    status = _status_ds(0xC001, None, 70000, None)  # an Error ID that is no US
    command, sent = respond(F.N_SET_RQ, (status, None))
    assert command["Status"] == 0x0110
    assert command["ErrorComment"] == "the handler's status does not encode"
    assert "ErrorID" not in command
    assert sent is None


def test_an_error_comment_outside_the_repertoire_is_made_one() -> None:
    status = ds(Status=0xC001, ErrorComment="snow \u2603")  # not in the default repertoire
    command, _ = respond(F.N_SET_RQ, (status, None))
    assert (command["Status"], command["ErrorComment"]) == (0xC001, "snow ?")


def test_a_long_error_comment_is_cut_to_64_characters() -> None:
    command, _ = respond(F.N_SET_RQ, (_status_ds(0xC001, "c" * 80, None, None), None))
    assert command["ErrorComment"] == "c" * 64


def test_an_error_comment_with_a_backslash_is_one_value() -> None:
    """pydicom makes two values of it; an LO has one: joined by a space (found by
    the property test below)."""
    command, _ = respond(F.N_SET_RQ, (_status_ds(0xC001, "disk\\full", None, None), None))
    assert command["ErrorComment"] == "disk full"


def test_status_dataset_elements_of_n_responses_only() -> None:
    status = ds(Status=0x0107, ErrorID=7, ErrorComment="bad attrs")
    status.AttributeIdentifierList = [0x00100010]
    status.OffendingElement = [0x00100020]  # a DIMSE-C element: dropped
    command, sent = respond(F.N_SET_RQ, (status, ds(PatientID="W")))
    assert command["Status"] == 0x0107
    assert (command["ErrorID"], command["ErrorComment"]) == (7, "bad attrs")
    assert command["AttributeIdentifierList"] in (0x00100010, [0x00100010])
    assert "OffendingElement" not in command
    assert sent.PatientID == "W"  # a warning keeps its data set


@pytest.mark.parametrize("code", [0x0112, 0xC000, 0xA700, 0xFF00])
def test_no_data_set_unless_success_or_warning(code: int) -> None:
    command, sent = respond(F.N_GET_RQ, (code, ds(PatientID="never")))
    assert command["Status"] == code and sent is None


def test_an_empty_reply_is_no_data_set() -> None:
    command, sent = respond(F.N_ACTION_RQ, (0x0000, Dataset()), ActionTypeID=1)
    assert command["CommandDataSetType"] == 0x0101 and sent is None


def test_each_transfer_syntax_encodes_the_reply() -> None:
    for ts in (EXPLICIT_LE, IMPLICIT_LE):
        _, data = response_for(
            request(F.N_GET_RQ), "EVT_N_GET", (0, ds(PatientID="T")), ts, failed=False
        )
        assert data == encode_dataset(ds(PatientID="T"), ts)


# ---------------------------------------------------------------------------
# What the invoker returns


def test_reply_of() -> None:
    data = encode_dataset(ds(PatientID="A"), EXPLICIT_LE)
    assert reply_of(ds(Status=0x0000), data, EXPLICIT_LE).PatientID == "A"
    assert reply_of(ds(Status=0xB000), data, EXPLICIT_LE).PatientID == "A"
    assert reply_of(ds(Status=0x0110), data, EXPLICIT_LE) is None
    assert reply_of(ds(Status=0x0000), None, EXPLICIT_LE) == Dataset()
    assert reply_of(Dataset(), data, EXPLICIT_LE) is None


def test_a_reply_that_does_not_decode_turns_the_success_into_0110() -> None:
    status = ds(Status=0x0000)
    deflated = "1.2.840.10008.1.2.1.99"
    assert reply_of(status, b"not deflate data", deflated) is None
    assert status.Status == 0x0110


# ---------------------------------------------------------------------------
# Whatever a handler returns, the response is a valid command set


_VALUES = st.one_of(
    st.none(),
    st.integers(-2, 0x1_0001),
    st.booleans(),
    st.text(max_size=80),
    st.binary(max_size=8),
    st.builds(
        ds,
        PatientID=st.text(alphabet=st.characters(codec="latin-1"), max_size=64),
    ),
)
_STATUS_DATASETS = st.builds(
    lambda status, comment, error_id, attrs: _status_ds(status, comment, error_id, attrs),
    st.one_of(st.none(), st.integers(0, 0xFFFF), st.integers(0x10000, 0x20000)),
    st.one_of(
        st.none(),
        st.text(max_size=100),
        st.text(alphabet=st.characters(codec="latin-1"), min_size=60, max_size=100),
    ),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
    st.one_of(st.none(), st.lists(st.integers(0, 0xFFFFFFFF), max_size=3)),
)


def _status_ds(status: Any, comment: Any, error_id: Any, attrs: Any) -> Dataset:
    out = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on values out of range
        if status is not None:
            out.add_new(0x00000900, "US", status)
        if comment is not None:
            out.add_new(0x00000902, "LO", comment)
        if error_id is not None:
            out.add_new(0x00000903, "US", error_id)
        if attrs is not None:
            out.add_new(0x00001005, "AT", attrs)
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(sorted(N_EVENTS)),
    status=st.one_of(_VALUES, _STATUS_DATASETS),
    reply=_VALUES,
    shape=st.sampled_from(["pair", "alone", "triple"]),
    with_instance=st.booleans(),
)
def test_any_handler_answer_gives_a_valid_response(
    field: int, status: Any, reply: Any, shape: str, with_instance: bool
) -> None:
    result = {"pair": (status, reply), "alone": status, "triple": (status, reply, None)}[shape]
    create_without = field == F.N_CREATE_RQ and not with_instance
    req = request(field, **({"AffectedSOPInstanceUID": None} if create_without else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        command, data = response_for(req, N_EVENTS[field], result, EXPLICIT_LE)
    decoded = decode_command(command)
    check_command(decoded, strict=True)
    assert decoded["CommandField"] == field | 0x8000
    assert decoded["MessageIDBeingRespondedTo"] == 41
    assert (decoded["CommandDataSetType"] != 0x0101) is (data is not None)
    if data is not None:
        assert code_to_category(decoded["Status"]) in ("Success", "Warning")
        decode_dataset(data, EXPLICIT_LE)
