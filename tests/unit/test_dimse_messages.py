"""The DIMSE message tables, validation and typed messages (PS3.7 9.3, 10.3).

The golden command sets are written by hand from PS3.7 Table E.1-1 and the
Implicit VR Little Endian layout of PS3.5 7.1.3 (group and element as
little-endian 16-bit words, a 32-bit little-endian length, UI values padded
with NUL and AE values with a space to an even length), Command Group Length
first; none was produced by the code under test.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom import dimse_messages as pnd_messages
from pynetdicom import dimse_primitives as pnd_primitives
from pynetdicom.pdu_primitives import P_DATA

from aiodicom import dimse_messages as dm
from aiodicom.dimse import NO_DATASET, CommandField, decode_command, encode_command
from aiodicom.dimse_messages import (
    MESSAGE_SPECS,
    MESSAGE_TYPES,
    CEchoRQ,
    CEchoRSP,
    CFindRSP,
    CStoreRQ,
    CStoreRSP,
    DIMSEMessage,
    NActionRSP,
    check_command,
    error_comment,
    field_label,
    is_us,
)
from aiodicom.errors import DIMSEError

CT = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.826.0.1.3680043.8.498.1"
COMMIT = "1.2.840.10008.1.20.1"
COMMIT_INSTANCE = "1.2.840.10008.1.20.1.1"
MPPS = "1.2.840.10008.3.1.2.3.3"
FIND = "1.2.840.10008.5.1.4.1.2.1.1"
GET = "1.2.840.10008.5.1.4.1.2.1.3"
MOVE = "1.2.840.10008.5.1.4.1.2.1.2"

#: One message of every type with every field it can carry set.
SAMPLES: dict[type[DIMSEMessage], dict[str, Any]] = {
    dm.CEchoRQ: {"MessageID": 1, "AffectedSOPClassUID": "1.2.840.10008.1.1"},
    dm.CEchoRSP: {
        "MessageIDBeingRespondedTo": 1,
        "Status": 0x0000,
        "AffectedSOPClassUID": "1.2.840.10008.1.1",
        "ErrorComment": "all fine",
    },
    dm.CStoreRQ: {
        "MessageID": 7,
        "AffectedSOPClassUID": CT,
        "AffectedSOPInstanceUID": INSTANCE,
        "Priority": 2,
        "MoveOriginatorApplicationEntityTitle": "MOVESCU",
        "MoveOriginatorMessageID": 3,
        "has_dataset": True,
    },
    dm.CStoreRSP: {
        "MessageIDBeingRespondedTo": 7,
        "Status": 0xA900,
        "AffectedSOPClassUID": CT,
        "AffectedSOPInstanceUID": INSTANCE,
        "OffendingElement": [0x00100010, 0x00100020],
        "ErrorComment": "bad patient",
    },
    dm.CFindRQ: {"MessageID": 9, "AffectedSOPClassUID": FIND, "Priority": 1},
    dm.CFindRSP: {
        "MessageIDBeingRespondedTo": 9,
        "Status": 0xFF00,
        "AffectedSOPClassUID": FIND,
        "has_dataset": True,
    },
    dm.CGetRQ: {"MessageID": 10, "AffectedSOPClassUID": GET, "Priority": 0},
    dm.CGetRSP: {
        "MessageIDBeingRespondedTo": 10,
        "Status": 0xB000,
        "AffectedSOPClassUID": GET,
        "NumberOfRemainingSuboperations": 0,
        "NumberOfCompletedSuboperations": 5,
        "NumberOfFailedSuboperations": 1,
        "NumberOfWarningSuboperations": 2,
        "OffendingElement": [0x0020000D],
        "ErrorComment": "one failed",
        "has_dataset": True,
    },
    dm.CMoveRQ: {
        "MessageID": 11,
        "AffectedSOPClassUID": MOVE,
        "Priority": 0,
        "MoveDestination": "STORESCP",
    },
    dm.CMoveRSP: {
        "MessageIDBeingRespondedTo": 11,
        "Status": 0xFF00,
        "AffectedSOPClassUID": MOVE,
        "NumberOfRemainingSuboperations": 4,
        "NumberOfCompletedSuboperations": 1,
        "NumberOfFailedSuboperations": 0,
        "NumberOfWarningSuboperations": 0,
        "OffendingElement": None,
        "ErrorComment": None,
    },
    dm.CCancelRQ: {"MessageIDBeingRespondedTo": 9},
    dm.NEventReportRQ: {
        "MessageID": 12,
        "AffectedSOPClassUID": COMMIT,
        "AffectedSOPInstanceUID": COMMIT_INSTANCE,
        "EventTypeID": 1,
        "has_dataset": True,
    },
    dm.NEventReportRSP: {
        "MessageIDBeingRespondedTo": 12,
        "Status": 0x0000,
        "AffectedSOPClassUID": COMMIT,
        "AffectedSOPInstanceUID": COMMIT_INSTANCE,
        "EventTypeID": 1,
        "ErrorComment": "ok",
        "ErrorID": 4,
    },
    dm.NGetRQ: {
        "MessageID": 13,
        "RequestedSOPClassUID": MPPS,
        "RequestedSOPInstanceUID": INSTANCE,
        "AttributeIdentifierList": [0x00400252, 0x00400253],
    },
    dm.NGetRSP: {
        "MessageIDBeingRespondedTo": 13,
        "Status": 0x0107,
        "AffectedSOPClassUID": MPPS,
        "AffectedSOPInstanceUID": INSTANCE,
        "AttributeIdentifierList": [0x00400252],
        "ErrorComment": "unknown attribute",
        "ErrorID": 17,
        "has_dataset": True,
    },
    dm.NSetRQ: {
        "MessageID": 14,
        "RequestedSOPClassUID": MPPS,
        "RequestedSOPInstanceUID": INSTANCE,
    },
    dm.NSetRSP: {
        "MessageIDBeingRespondedTo": 14,
        "Status": 0x0116,
        "AffectedSOPClassUID": MPPS,
        "AffectedSOPInstanceUID": INSTANCE,
        "AttributeIdentifierList": [0x00400252],
        "ErrorComment": "coerced",
        "ErrorID": 2,
        "has_dataset": True,
    },
    dm.NActionRQ: {
        "MessageID": 15,
        "RequestedSOPClassUID": COMMIT,
        "RequestedSOPInstanceUID": COMMIT_INSTANCE,
        "ActionTypeID": 1,
        "has_dataset": True,
    },
    dm.NActionRSP: {
        "MessageIDBeingRespondedTo": 15,
        "Status": 0x0000,
        "AffectedSOPClassUID": COMMIT,
        "AffectedSOPInstanceUID": COMMIT_INSTANCE,
        "ActionTypeID": 1,
        "ErrorComment": "done",
        "ErrorID": 0,
        "has_dataset": True,
    },
    dm.NCreateRQ: {
        "MessageID": 16,
        "AffectedSOPClassUID": MPPS,
        "AffectedSOPInstanceUID": INSTANCE,
        "has_dataset": True,
    },
    dm.NCreateRSP: {
        "MessageIDBeingRespondedTo": 16,
        "Status": 0x0000,
        "AffectedSOPClassUID": MPPS,
        "AffectedSOPInstanceUID": INSTANCE,
        "AttributeIdentifierList": [0x00080020],
        "ErrorComment": "created",
        "ErrorID": 1,
        "has_dataset": True,
    },
    dm.NDeleteRQ: {
        "MessageID": 17,
        "RequestedSOPClassUID": MPPS,
        "RequestedSOPInstanceUID": INSTANCE,
    },
    dm.NDeleteRSP: {
        "MessageIDBeingRespondedTo": 17,
        "Status": 0x0112,
        "AffectedSOPClassUID": MPPS,
        "AffectedSOPInstanceUID": INSTANCE,
        "ErrorComment": "gone",
        "ErrorID": 9,
    },
}

ALL_TYPES = list(SAMPLES)


def sample(cls: type[DIMSEMessage]) -> DIMSEMessage:
    return cls(**SAMPLES[cls])


def sample_fields(cls: type[DIMSEMessage]) -> dict[str, Any]:
    return decode_command(encode_command(sample(cls).to_fields()))


def test_the_registry_covers_the_23_messages() -> None:
    assert len(MESSAGE_TYPES) == 23
    assert set(MESSAGE_TYPES) == set(MESSAGE_SPECS) == set(dm._FAST)
    assert {cls for cls in MESSAGE_TYPES.values()} == set(SAMPLES)
    values = {v for k, v in vars(CommandField).items() if k.isupper()}
    assert set(MESSAGE_TYPES) == values
    for field, cls in MESSAGE_TYPES.items():
        assert cls.command_field == field
        assert cls.spec is MESSAGE_SPECS[field]
        assert cls.name == MESSAGE_SPECS[field].name
        assert not hasattr(sample(cls), "__dict__")


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.name)
def test_round_trip_through_the_codec(cls: type[DIMSEMessage]) -> None:
    message = sample(cls)
    message.validate()
    message.validate(strict=True)
    fields = message.to_fields()
    assert fields["CommandField"] == cls.command_field
    assert fields["CommandDataSetType"] == (0x0001 if message.has_dataset else NO_DATASET)
    decoded = decode_command(encode_command(fields))
    again = DIMSEMessage.from_fields(decoded)
    assert type(again) is cls
    assert again == message
    assert cls.from_fields(decoded) == message
    assert again.to_fields() == fields


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.name)
def test_attributes_are_the_fields_of_the_table(cls: type[DIMSEMessage]) -> None:
    spec = MESSAGE_SPECS[cls.command_field]
    assert set(cls._keywords) | {"CommandField", "CommandDataSetType"} == set(spec.fields)
    # Every field of the table is exercised by the sample (all set or None).
    assert set(SAMPLES[cls]) - {"has_dataset"} <= set(cls._keywords)


def test_from_fields_on_a_subclass_wants_that_message() -> None:
    fields = sample_fields(dm.CEchoRQ)
    with pytest.raises(DIMSEError, match="expected a C-STORE-RQ, got a C-ECHO-RQ"):
        CStoreRQ.from_fields(fields)
    assert isinstance(CEchoRQ.from_fields(fields), CEchoRQ)


def test_from_fields_drops_fields_the_message_does_not_define() -> None:
    fields = sample_fields(dm.CEchoRQ) | {"Priority": 0}
    assert DIMSEMessage.from_fields(fields) == CEchoRQ(MessageID=1)
    with pytest.raises(DIMSEError, match=r"C-ECHO-RQ: Priority \(0000,0700\) is not a field"):
        DIMSEMessage.from_fields(fields, strict=True)


def test_defaults() -> None:
    echo = CEchoRQ(MessageID=3)
    assert echo.to_fields() == {
        "CommandField": 0x0030,
        "CommandDataSetType": 0x0101,
        "MessageID": 3,
        "AffectedSOPClassUID": "1.2.840.10008.1.1",
    }
    store = CStoreRQ(MessageID=1, AffectedSOPClassUID=CT, AffectedSOPInstanceUID=INSTANCE)
    assert store.has_dataset and store.Priority == 0
    assert not CStoreRSP(MessageIDBeingRespondedTo=1, Status=0).has_dataset
    assert store.is_response is False
    assert CEchoRSP(MessageIDBeingRespondedTo=3).is_response


# ---------------------------------------------------------------------------
# Golden bytes


def _elem(element: int, value: bytes) -> bytes:
    return b"\x00\x00" + element.to_bytes(2, "little") + len(value).to_bytes(4, "little") + value


def test_golden_c_store_rq() -> None:
    body = (
        # (0000,0002) UI, 25 characters + NUL pad
        b"\x00\x00\x02\x00\x1a\x00\x00\x00"
        + b"1.2.840.10008.5.1.4.1.1.2\x00"
        # (0000,0100) Command Field 0001H
        + b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00"
        # (0000,0110) Message ID 7
        + b"\x00\x00\x10\x01\x02\x00\x00\x00\x07\x00"
        # (0000,0700) Priority MEDIUM
        + b"\x00\x00\x00\x07\x02\x00\x00\x00\x00\x00"
        # (0000,0800) Command Data Set Type 0001H (present)
        + b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x00"
        # (0000,1000) Affected SOP Instance UID, 7 characters + NUL pad
        + b"\x00\x00\x00\x10\x08\x00\x00\x00"
        + b"1.2.3.4\x00"
        # (0000,1030) Move Originator AE Title, 7 characters + space pad
        + b"\x00\x00\x30\x10\x08\x00\x00\x00"
        + b"MOVESCU "
        # (0000,1031) Move Originator Message ID 3
        + b"\x00\x00\x31\x10\x02\x00\x00\x00\x03\x00"
    )
    assert len(body) == 116
    golden = b"\x00\x00\x00\x00\x04\x00\x00\x00\x74\x00\x00\x00" + body
    message = CStoreRQ(
        MessageID=7,
        AffectedSOPClassUID=CT,
        AffectedSOPInstanceUID="1.2.3.4",
        Priority=0,
        MoveOriginatorApplicationEntityTitle="MOVESCU",
        MoveOriginatorMessageID=3,
    )
    assert encode_command(message.to_fields()) == golden
    assert DIMSEMessage.from_fields(decode_command(golden)) == message


def test_golden_n_action_rsp() -> None:
    body = (
        # (0000,0002) Affected SOP Class UID, 20 characters (even, no pad)
        b"\x00\x00\x02\x00\x14\x00\x00\x00"
        + b"1.2.840.10008.1.20.1"
        # (0000,0100) Command Field 8130H
        + b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x81"
        # (0000,0120) Message ID Being Responded To 5
        + b"\x00\x00\x20\x01\x02\x00\x00\x00\x05\x00"
        # (0000,0800) Command Data Set Type 0101H (no Action Reply)
        + b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01"
        # (0000,0900) Status 0000H
        + b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00"
        # (0000,1000) Affected SOP Instance UID, 22 characters
        + b"\x00\x00\x00\x10\x16\x00\x00\x00"
        + b"1.2.840.10008.1.20.1.1"
        # (0000,1008) Action Type ID 1
        + b"\x00\x00\x08\x10\x02\x00\x00\x00\x01\x00"
    )
    assert len(body) == 108
    golden = b"\x00\x00\x00\x00\x04\x00\x00\x00\x6c\x00\x00\x00" + body
    message = NActionRSP(
        MessageIDBeingRespondedTo=5,
        Status=0,
        AffectedSOPClassUID=COMMIT,
        AffectedSOPInstanceUID=COMMIT_INSTANCE,
        ActionTypeID=1,
    )
    assert encode_command(message.to_fields()) == golden
    assert DIMSEMessage.from_fields(decode_command(golden)) == message


def test_golden_c_echo_rq_is_what_the_layout_says() -> None:
    body = (
        _elem(0x0002, b"1.2.840.10008.1.1\x00")
        + _elem(0x0100, b"\x30\x00")
        + _elem(0x0110, b"\x01\x00")
        + _elem(0x0800, b"\x01\x01")
    )
    golden = _elem(0x0000, len(body).to_bytes(4, "little")) + body
    assert encode_command(CEchoRQ(MessageID=1).to_fields()) == golden
    check_command(decode_command(golden))


# ---------------------------------------------------------------------------
# Missing mandatory fields

MANDATORY_CASES = [
    pytest.param(cls, keyword, id=f"{cls.name}-{keyword}")
    for cls in ALL_TYPES
    for keyword in MESSAGE_SPECS[cls.command_field].mandatory
]


def test_the_mandatory_cases_are_many() -> None:
    assert len(MANDATORY_CASES) >= 80


@pytest.mark.parametrize(("cls", "keyword"), MANDATORY_CASES)
def test_each_missing_mandatory_field_is_named(cls: type[DIMSEMessage], keyword: str) -> None:
    fields = sample_fields(cls)
    check_command(fields)
    del fields[keyword]
    with pytest.raises(DIMSEError) as info:
        check_command(fields)
    text = str(info.value)
    assert field_label(keyword) in text
    if keyword != "CommandField":
        assert text == f"{cls.name}: required field {field_label(keyword)} is missing"
    # None counts as absent too
    fields[keyword] = None
    with pytest.raises(DIMSEError, match=r"missing|no Command Field"):
        check_command(fields)


def test_the_example_message_of_the_brief() -> None:
    fields = sample_fields(dm.CStoreRQ)
    del fields["AffectedSOPInstanceUID"]
    with pytest.raises(DIMSEError) as info:
        check_command(fields)
    assert str(info.value) == (
        "C-STORE-RQ: required field Affected SOP Instance UID (0000,1000) is missing"
    )


def test_usage_facts_of_the_standard() -> None:
    spec = {s.name: s for s in MESSAGE_SPECS.values()}
    assert spec["C-STORE-RSP"].fields["AffectedSOPInstanceUID"] == "U"
    assert spec["N-CREATE-RQ"].fields["AffectedSOPInstanceUID"] == "U"
    assert spec["N-CREATE-RSP"].fields["AffectedSOPInstanceUID"] == "C"
    assert spec["C-ECHO-RSP"].fields["ErrorComment"] == "C"
    assert spec["C-STORE-RQ"].dataset == "required"
    assert spec["C-ECHO-RQ"].dataset == spec["C-ECHO-RSP"].dataset == "forbidden"
    assert spec["N-GET-RSP"].dataset == "optional"
    assert spec["C-FIND-RSP"].dataset == "pending"
    assert spec["N-SET-RQ"].dataset == "required"
    for name in ("N-GET-RQ", "N-SET-RQ", "N-ACTION-RQ", "N-DELETE-RQ"):
        assert "RequestedSOPClassUID" in spec[name].fields
        assert "AffectedSOPClassUID" not in spec[name].fields
        assert spec[name.replace("RQ", "RSP")].fields["AffectedSOPClassUID"] == "U"
    assert spec["C-CANCEL-RQ"].mandatory == (
        "CommandField",
        "CommandDataSetType",
        "MessageIDBeingRespondedTo",
    )
    for s in MESSAGE_SPECS.values():
        assert s.is_request == (not s.command_field & 0x8000)
        if s.is_request:
            assert "Status" not in s.fields
        else:
            assert s.fields["Status"] == "M"
            assert s.fields["MessageIDBeingRespondedTo"] == "M"


# ---------------------------------------------------------------------------
# Bad values


def _store(**changes: Any) -> dict[str, Any]:
    fields = sample_fields(dm.CStoreRQ)
    fields.update(changes)
    return fields


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"MessageID": 70000}, r"Message ID \(0000,0110\) value 70000 is out of range"),
        ({"MessageID": -1}, "out of range"),
        ({"MessageID": "7"}, "must be an integer, not str"),
        ({"MessageID": True}, "must be an integer, not bool"),
        ({"MoveOriginatorMessageID": 1 << 16}, "out of range"),
        ({"Priority": 3}, r"Priority \(0000,0700\) value 3 is not LOW"),
        ({"AffectedSOPClassUID": "1.2.abc"}, "not a valid UID"),
        ({"AffectedSOPClassUID": "1..2"}, "not a valid UID"),
        ({"AffectedSOPClassUID": ".1.2"}, "not a valid UID"),
        ({"AffectedSOPClassUID": "1.2."}, "not a valid UID"),
        ({"AffectedSOPClassUID": ""}, "not a valid UID"),
        ({"AffectedSOPClassUID": 12}, "must be a str"),
        ({"AffectedSOPInstanceUID": "1." + "2" * 63}, "longer than 64"),
        ({"MoveOriginatorApplicationEntityTitle": ""}, "not a valid AE title"),
        ({"MoveOriginatorApplicationEntityTitle": "   "}, "not a valid AE title"),
        ({"MoveOriginatorApplicationEntityTitle": "A" * 17}, "not a valid AE title"),
        ({"MoveOriginatorApplicationEntityTitle": "A\\B"}, "not a valid AE title"),
        ({"MoveOriginatorApplicationEntityTitle": "A\nB"}, "not a valid AE title"),
        ({"CommandDataSetType": NO_DATASET}, "one is required"),
        ({"CommandDataSetType": 0x10000}, "out of range"),
        ({"CommandGroupLength": -4}, "out of range"),
        ({"Bogus": 1}, "'Bogus' is not a command set field"),
    ],
)
def test_bad_values_raise(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(DIMSEError, match=match):
        check_command(_store(**changes))


def test_a_uid_of_exactly_64_characters_is_fine() -> None:
    uid = "1." + "2" * 62
    assert len(uid) == 64
    check_command(_store(AffectedSOPInstanceUID=uid), strict=True)


def test_leading_zeros_in_uids_only_fail_strict() -> None:
    fields = _store(AffectedSOPInstanceUID="1.2.03.4")
    check_command(fields)
    with pytest.raises(DIMSEError, match="not a valid UID"):
        check_command(fields, strict=True)
    check_command(_store(AffectedSOPInstanceUID="1.0.3"), strict=True)


def test_ae_titles_with_inner_spaces_are_fine() -> None:
    check_command(_store(MoveOriginatorApplicationEntityTitle=" MY AE"), strict=True)
    check_command(_store(MoveOriginatorApplicationEntityTitle="A" * 16), strict=True)


def test_unknown_command_fields() -> None:
    with pytest.raises(DIMSEError, match=r"unknown Command Field \(0000,0100\) value 0x1234"):
        check_command({"CommandField": 0x1234, "CommandDataSetType": NO_DATASET})
    with pytest.raises(DIMSEError, match="unknown Command Field"):
        check_command({"CommandField": [1], "CommandDataSetType": NO_DATASET})
    with pytest.raises(DIMSEError, match="no Command Field"):
        check_command({"MessageID": 1})
    with pytest.raises(DIMSEError, match="no Command Field"):
        DIMSEMessage.from_fields({})


def test_a_value_that_is_no_int_is_caught_even_when_it_hashes_like_one() -> None:
    # True == 1 == C-STORE-RQ as a dict key, but it is not a US value.
    fields = _store(CommandField=True)
    with pytest.raises(DIMSEError, match=r"Command Field.*must be an integer"):
        check_command(fields)


def test_int_subclasses_are_accepted() -> None:
    from aiodicom.status import Status

    fields = sample_fields(dm.CStoreRSP) | {"Status": Status.DATASET_DOES_NOT_MATCH}
    check_command(fields)
    encoded = encode_command(
        CStoreRSP(MessageIDBeingRespondedTo=1, Status=Status.PENDING).to_fields()
    )
    assert decode_command(encoded)["Status"] == 0xFF00


@pytest.mark.parametrize(
    "cls",
    [cls for cls in ALL_TYPES if cls.spec.dataset == "forbidden"],
    ids=lambda c: c.name,
)
def test_a_data_set_where_none_is_allowed(cls: type[DIMSEMessage]) -> None:
    fields = sample_fields(cls) | {"CommandDataSetType": 0x0001}
    with pytest.raises(DIMSEError, match=rf"{cls.name}: Command Data Set Type \(0000,0800\)"):
        check_command(fields)
    message = cls(**(SAMPLES[cls] | {"has_dataset": True}))
    with pytest.raises(DIMSEError, match="announces a data set"):
        message.validate()


@pytest.mark.parametrize(
    "cls",
    [cls for cls in ALL_TYPES if cls.spec.dataset == "required"],
    ids=lambda c: c.name,
)
def test_no_data_set_where_one_is_required(cls: type[DIMSEMessage]) -> None:
    message = cls(**(SAMPLES[cls] | {"has_dataset": False}))
    with pytest.raises(DIMSEError, match=f"{cls.name}: .*one is required"):
        message.validate()


@pytest.mark.parametrize(
    "cls",
    [cls for cls in ALL_TYPES if cls.spec.dataset == "optional"],
    ids=lambda c: c.name,
)
def test_an_optional_data_set_may_be_either(cls: type[DIMSEMessage]) -> None:
    for has_dataset in (False, True):
        cls(**(SAMPLES[cls] | {"has_dataset": has_dataset})).validate()


def test_any_value_but_0101_announces_a_data_set() -> None:
    fields = _store(CommandDataSetType=0x0102)  # e.g. LEADTOOLS
    check_command(fields)
    assert DIMSEMessage.from_fields(fields).has_dataset
    assert DIMSEMessage.from_fields(fields).to_fields()["CommandDataSetType"] == 0x0001


@pytest.mark.parametrize(
    ("status", "has_dataset", "ok"),
    [
        (0xFF00, True, True),
        (0xFF01, True, True),
        (0xFF00, False, False),
        (0x0000, False, True),
        (0x0000, True, False),
        (0xFE00, True, False),
        (0xA700, False, True),
        (0xC000, True, False),
    ],
)
def test_c_find_rsp_carries_an_identifier_exactly_when_pending(
    status: int, has_dataset: bool, ok: bool
) -> None:
    message = CFindRSP(MessageIDBeingRespondedTo=1, Status=status, has_dataset=has_dataset)
    if ok:
        message.validate()
    else:
        with pytest.raises(DIMSEError, match="C-FIND-RSP: Command Data Set Type"):
            message.validate()


def test_strict_conditions() -> None:
    reply = NActionRSP(MessageIDBeingRespondedTo=1, Status=0, has_dataset=True)
    reply.validate()
    with pytest.raises(DIMSEError, match=r"conditional field Action Type ID \(0000,1008\)"):
        reply.validate(strict=True)
    NActionRSP(MessageIDBeingRespondedTo=1, Status=0).validate(strict=True)
    event = dm.NEventReportRSP(MessageIDBeingRespondedTo=1, Status=0, has_dataset=True)
    with pytest.raises(DIMSEError, match="Event Type ID"):
        event.validate(strict=True)
    pending = dm.CMoveRSP(MessageIDBeingRespondedTo=1, Status=0xFF00)
    pending.validate()
    with pytest.raises(DIMSEError, match="Number of Remaining Sub-operations"):
        pending.validate(strict=True)
    dm.CGetRSP(MessageIDBeingRespondedTo=1, Status=0).validate(strict=True)
    long_comment = CStoreRSP(MessageIDBeingRespondedTo=1, Status=0xC000, ErrorComment="x" * 65)
    long_comment.validate()
    with pytest.raises(DIMSEError, match="longer than 64"):
        long_comment.validate(strict=True)


def test_at_values() -> None:
    fields = sample_fields(dm.CStoreRSP)
    check_command(fields | {"OffendingElement": 0x00100010})
    with pytest.raises(DIMSEError, match="not an attribute tag"):
        check_command(fields | {"OffendingElement": [1 << 32]})
    with pytest.raises(DIMSEError, match="not an attribute tag"):
        check_command(fields | {"OffendingElement": ["PatientName"]})
    with pytest.raises(DIMSEError, match=r"Error Comment.*must be a str"):
        check_command(fields | {"ErrorComment": b"bytes"})


# ---------------------------------------------------------------------------
# Helpers


def test_helpers() -> None:
    assert dm.message_name(0x0001) == "C-STORE-RQ"
    assert dm.message_name(0x8130) == "N-ACTION-RSP"
    assert dm.message_name(0x1234) == "0x1234"
    assert dm.is_request(0x0FFF) and not dm.is_response(0x0FFF)
    assert dm.is_response(0x8001) and not dm.is_request(0x8001)
    assert not dm.is_request(0x1234) and not dm.is_response(0x9234)
    assert dm.response_field(0x0001) == 0x8001
    assert dm.response_field(0x0FFF) is None
    assert dm.response_field(0x8001) is None
    assert sum(dm.is_request(f) for f in MESSAGE_TYPES) == 12
    n_get = NActionRSP(MessageIDBeingRespondedTo=1, Status=0).to_fields()
    assert dm.request_sop_class(n_get) is None
    req = sample(dm.NGetRQ).to_fields()
    assert dm.request_sop_class(req) == MPPS
    assert dm.request_sop_instance(req) == INSTANCE
    store = sample(dm.CStoreRQ).to_fields()
    assert dm.request_sop_class(store) == CT
    assert dm.request_sop_instance(store) == INSTANCE
    assert field_label("MessageIDBeingRespondedTo") == "Message ID Being Responded To (0000,0120)"
    assert field_label("Nope") == "'Nope'"


def test_the_uid_cache_stays_bounded() -> None:
    for n in range(dm._SEEN_MAX + 10):
        check_command(_store(AffectedSOPInstanceUID=f"1.2.3.{n}"))
    assert len(dm._SEEN_OK) <= dm._SEEN_MAX


# ---------------------------------------------------------------------------
# Interoperability with pynetdicom's own DIMSE message classes


def _pynetdicom_command_bytes(message: Any) -> bytes:
    command = b""
    for pdata in message.encode_msg(1, 0):
        for _context, pdv in pdata.presentation_data_value_list:
            if pdv[0] & 1:
                command += pdv[1:]
    return command


def _primitive(kind: str, **values: Any) -> Any:
    primitive = getattr(pnd_primitives, kind)()
    for key, value in values.items():
        setattr(primitive, key, value)
    return primitive


PYNETDICOM_CASES = [
    pytest.param(
        "C_STORE",
        "C_STORE_RQ",
        {
            "MessageID": 7,
            "AffectedSOPClassUID": CT,
            "AffectedSOPInstanceUID": INSTANCE,
            "Priority": 1,
            "MoveOriginatorApplicationEntityTitle": "MOVESCU",
            "MoveOriginatorMessageID": 3,
            "DataSet": io.BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00"),
        },
        id="C-STORE-RQ",
    ),
    pytest.param(
        "C_STORE",
        "C_STORE_RSP",
        {
            "MessageIDBeingRespondedTo": 7,
            "AffectedSOPClassUID": CT,
            "AffectedSOPInstanceUID": INSTANCE,
            "Status": 0xC000,
            "OffendingElement": [0x00100010],
            "ErrorComment": "cannot parse",
        },
        id="C-STORE-RSP",
    ),
    pytest.param(
        "C_ECHO",
        "C_ECHO_RQ",
        {"MessageID": 1, "AffectedSOPClassUID": "1.2.840.10008.1.1"},
        id="C-ECHO-RQ",
    ),
    pytest.param(
        "C_FIND",
        "C_FIND_RSP",
        {
            "MessageIDBeingRespondedTo": 4,
            "AffectedSOPClassUID": FIND,
            "Status": 0xFF00,
            "Identifier": io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "),
        },
        id="C-FIND-RSP",
    ),
    pytest.param(
        "C_MOVE",
        "C_MOVE_RQ",
        {
            "MessageID": 11,
            "AffectedSOPClassUID": MOVE,
            "Priority": 2,
            "MoveDestination": "STORESCP",
            "Identifier": io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "),
        },
        id="C-MOVE-RQ",
    ),
    pytest.param(
        "C_GET",
        "C_GET_RSP",
        {
            "MessageIDBeingRespondedTo": 10,
            "AffectedSOPClassUID": GET,
            "Status": 0xFF00,
            "NumberOfRemainingSuboperations": 3,
            "NumberOfCompletedSuboperations": 1,
            "NumberOfFailedSuboperations": 0,
            "NumberOfWarningSuboperations": 0,
        },
        id="C-GET-RSP",
    ),
    pytest.param("C_CANCEL", "C_CANCEL_RQ", {"MessageIDBeingRespondedTo": 4}, id="C-CANCEL-RQ"),
    pytest.param(
        "N_ACTION",
        "N_ACTION_RQ",
        {
            "MessageID": 15,
            "RequestedSOPClassUID": COMMIT,
            "RequestedSOPInstanceUID": COMMIT_INSTANCE,
            "ActionTypeID": 1,
            "ActionInformation": io.BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00"),
        },
        id="N-ACTION-RQ",
    ),
    pytest.param(
        "N_ACTION",
        "N_ACTION_RSP",
        {
            "MessageIDBeingRespondedTo": 15,
            "AffectedSOPClassUID": COMMIT,
            "AffectedSOPInstanceUID": COMMIT_INSTANCE,
            "ActionTypeID": 1,
            "Status": 0x0000,
        },
        id="N-ACTION-RSP",
    ),
    pytest.param(
        "N_GET",
        "N_GET_RQ",
        {
            "MessageID": 13,
            "RequestedSOPClassUID": MPPS,
            "RequestedSOPInstanceUID": INSTANCE,
            "AttributeIdentifierList": [0x00400252, 0x00400253],
        },
        id="N-GET-RQ",
    ),
    pytest.param(
        "N_EVENT_REPORT",
        "N_EVENT_REPORT_RQ",
        {
            "MessageID": 12,
            "AffectedSOPClassUID": COMMIT,
            "AffectedSOPInstanceUID": COMMIT_INSTANCE,
            "EventTypeID": 2,
            "EventInformation": io.BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00"),
        },
        id="N-EVENT-REPORT-RQ",
    ),
    pytest.param(
        "N_CREATE",
        "N_CREATE_RSP",
        {
            "MessageIDBeingRespondedTo": 16,
            "AffectedSOPClassUID": MPPS,
            "AffectedSOPInstanceUID": INSTANCE,
            "Status": 0x0106,
            "ErrorComment": "bad value",
            "ErrorID": 3,
        },
        id="N-CREATE-RSP",
    ),
    pytest.param(
        "N_DELETE",
        "N_DELETE_RQ",
        {"MessageID": 17, "RequestedSOPClassUID": MPPS, "RequestedSOPInstanceUID": INSTANCE},
        id="N-DELETE-RQ",
    ),
]

_DATASET_PARAMETERS = {
    "DataSet",
    "Identifier",
    "ActionInformation",
    "EventInformation",
    "ActionReply",
    "EventReply",
    "AttributeList",
    "ModificationList",
}


@pytest.mark.parametrize(("primitive", "message", "values"), PYNETDICOM_CASES)
def test_pynetdicom_encodes_we_decode(primitive: str, message: str, values: dict[str, Any]) -> None:
    pnd_message = getattr(pnd_messages, message)()
    pnd_message.primitive_to_message(_primitive(primitive, **values))
    raw = _pynetdicom_command_bytes(pnd_message)
    decoded = DIMSEMessage.from_fields(decode_command(raw), strict=True)
    assert decoded.name == message.replace("_", "-")
    has_dataset = bool(set(values) & _DATASET_PARAMETERS)
    assert decoded.has_dataset is has_dataset
    for key, value in values.items():
        if key not in _DATASET_PARAMETERS:
            assert getattr(decoded, key) == value, key
    # The same bytes as ours, apart from CommandDataSetType's "present" value.
    assert encode_command(decoded.to_fields()) == raw


@pytest.mark.parametrize(("primitive", "message", "values"), PYNETDICOM_CASES)
def test_we_encode_pynetdicom_decodes(primitive: str, message: str, values: dict[str, Any]) -> None:
    cls = MESSAGE_TYPES[getattr(CommandField, message)]
    fields = {k: v for k, v in values.items() if k not in _DATASET_PARAMETERS}
    ours = cls(has_dataset=bool(set(values) & _DATASET_PARAMETERS), **fields)
    ours.validate(strict=True)
    pdvs = [[1, b"\x03" + encode_command(ours.to_fields())]]
    if ours.has_dataset:
        pdvs.append([1, b"\x02" + b"\x08\x00\x16\x00\x00\x00\x00\x00"])
    pdata = P_DATA()
    pdata.presentation_data_value_list = pdvs
    theirs = pnd_messages.DIMSEMessage()
    assert theirs.decode_msg(pdata)
    assert type(theirs).__name__ == message
    result = theirs.message_to_primitive()
    for key, value in fields.items():
        got = getattr(result, key)
        if isinstance(value, list) and not isinstance(got, list):
            got = [got]
        assert got == value, key


# ---------------------------------------------------------------------------
# The received request's check agrees with the general one

_TEXTS = st.one_of(
    st.from_regex(r"[0-9.]{0,70}", fullmatch=True),
    st.from_regex(r"[ -~]{0,20}", fullmatch=True),
    st.sampled_from(["1.2.840.10008.1.1", "1.2.3", "01.2", "1..2", "", " ", "STORESCU"]),
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ALL_TYPES), st.data())
def test_check_of_decoded_commands_agrees(cls: type[DIMSEMessage], data: st.DataObject) -> None:
    """``decoded=True`` (what a received command set goes through) raises
    exactly when the general check does, with the same message: fields
    dropped, texts of UIs and AE titles, priorities, data set types, statuses
    and Command Fields drawn at random, all through the codec."""
    fields = sample_fields(cls)
    for keyword in list(fields):
        if keyword != "CommandGroupLength" and data.draw(st.integers(0, 9)) == 0:
            del fields[keyword]
    for keyword in list(fields):
        vr = dm._VRS[keyword]
        if vr in ("UI", "AE") and data.draw(st.booleans()):
            fields[keyword] = data.draw(_TEXTS)
    if data.draw(st.booleans()):
        fields["Priority"] = data.draw(st.integers(0, 4))
    if data.draw(st.booleans()):
        fields["CommandDataSetType"] = data.draw(st.sampled_from([0x0000, 0x0001, 0x0101, 0xFEFE]))
    if data.draw(st.booleans()):
        fields["Status"] = data.draw(st.sampled_from([0x0000, 0xFF00, 0xFF01, 0xA700, 0xB000]))
    if data.draw(st.integers(0, 9)) == 0:
        fields["CommandField"] = data.draw(st.integers(0, 0xFFFF))
    try:
        raw = encode_command({k: v for k, v in fields.items() if k != "CommandGroupLength"})
    except (DIMSEError, ValueError, TypeError):
        return  # not encodable: nothing to receive
    try:
        decoded = decode_command(raw)
    except DIMSEError:
        return  # refused on decoding (no Command Field): never checked
    try:
        check_command(dict(decoded))
    except DIMSEError as exc:
        with pytest.raises(DIMSEError) as info:
            check_command(decoded, decoded=True)
        assert str(info.value) == str(exc)
    else:
        check_command(decoded, decoded=True)


# ---------------------------------------------------------------------------
# What a handler's status may put in a command set


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("disk full", "disk full"),
        ("c" * 80, "c" * 64),
        ("a\\b", "a/b"),  # a backslash would make two values of an LO
        (["a", "b"], "a b"),  # pydicom's two values of "a\\b"
        ("snow \u2603\x00", "snow ??"),  # outside the default repertoire
        (42, "42"),
    ],
)
def test_error_comment_is_one_lo_value(value: Any, expected: str) -> None:
    comment = error_comment(value)
    assert comment == expected
    check_command({"CommandField": 0x8001, "MessageIDBeingRespondedTo": 1,
                   "CommandDataSetType": 0x0101, "Status": 0xC001,
                   "ErrorComment": comment}, strict=True)  # fmt: skip


def test_is_us() -> None:
    assert is_us(0) and is_us(0xFFFF)
    assert not any(is_us(v) for v in (-1, 0x10000, True, 1.0, "1", None))
