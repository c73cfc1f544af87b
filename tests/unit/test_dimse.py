"""DIMSE command set codec, fragmentation and reassembly (PS3.7, PS3.8 Annex E).

The golden command sets are written by hand from PS3.7 Annex E (Table E.1-1)
and the Implicit VR Little Endian rules of PS3.5 7.1.3 / 6.2 (tag group and
element as little-endian 16-bit words, a 32-bit little-endian value length,
values padded to an even length: UI with a trailing NUL, AE/LO with a trailing
space); none was produced by :func:`aiodicom.dimse.encode_command`. The
P-DATA-TF layouts checked by the fragmentation tests are those of PS3.8 9.3.5
and Annex E.2 (message control header bit 0 command, bit 1 last fragment).
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import struct
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from aiodicom import dimse
from aiodicom.dimse import (
    COMMAND_ELEMENTS,
    DATASET_PRESENT,
    NO_DATASET,
    UNLIMITED_CHUNK,
    CommandField,
    Message,
    Reassembler,
    command_dataset,
    data_fragments,
    decode_command,
    encode_command,
    encode_echo_request,
    encode_pending_counts,
    encode_status_response,
    encode_store_request,
    file_fragments,
    fragment,
    fragment_parts,
    pending_counts_head,
    single_pdu,
)
from aiodicom.errors import DIMSEError, PDUError
from aiodicom.pdu import PDV, PDataTF, decode_pdu, split_p_data

INVALID_PARAMETER_VALUE = 6
UNEXPECTED_PARAMETER = 5
SERVICE_PROVIDER = 2

VERIFICATION = "1.2.840.10008.1.1"  # 17 characters: padded with one NUL
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"  # 25 characters
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"  # 27 characters
MPPS = "1.2.840.10008.3.1.2.3.3"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.10123"  # 31 characters


def element(elem: int, value: bytes) -> bytes:
    """One group 0000 element, Implicit VR LE, written out field by field."""
    return struct.pack("<HHL", 0x0000, elem, len(value)) + value


def with_group_length(body: bytes) -> bytes:
    return element(0x0000, struct.pack("<L", len(body))) + body


# ---------------------------------------------------------------------------
# 1. Golden bytes


# C-ECHO-RQ, PS3.7 Table 9.3-12: (0000,0000) UL, (0000,0002) UI, (0000,0100) US,
# (0000,0110) US, (0000,0800) US.
ECHO_RQ_FIELDS = {
    "AffectedSOPClassUID": VERIFICATION,
    "CommandField": 0x0030,
    "MessageID": 1,
    "CommandDataSetType": 0x0101,
}
ECHO_RQ_GOLDEN = (
    # (0000,0000) Command Group Length, UL, 4 bytes: 56 = 26 + 3 * 10
    b"\x00\x00\x00\x00"
    b"\x04\x00\x00\x00"
    b"\x38\x00\x00\x00"
    # (0000,0002) Affected SOP Class UID, 17 characters + NUL = 18 bytes
    b"\x00\x00\x02\x00"
    b"\x12\x00\x00\x00"
    b"1.2.840.10008.1.1\x00"
    # (0000,0100) Command Field = 0x0030 (C-ECHO-RQ)
    b"\x00\x00\x00\x01"
    b"\x02\x00\x00\x00"
    b"\x30\x00"
    # (0000,0110) Message ID = 1
    b"\x00\x00\x10\x01"
    b"\x02\x00\x00\x00"
    b"\x01\x00"
    # (0000,0800) Command Data Set Type = 0x0101 (no data set)
    b"\x00\x00\x00\x08"
    b"\x02\x00\x00\x00"
    b"\x01\x01"
)

# C-MOVE-RQ, PS3.7 Table 9.3-5, with an odd-length AE title (space padded).
MOVE_RQ_FIELDS = {
    "AffectedSOPClassUID": PATIENT_ROOT_MOVE,
    "CommandField": 0x0021,
    "MessageID": 7,
    "MoveDestination": "STORESCP1",
    "Priority": 2,
    "CommandDataSetType": 0x0001,
}
MOVE_RQ_GOLDEN = (
    # (0000,0000) UL: 94 = 36 + 10 + 10 + 18 + 10 + 10
    b"\x00\x00\x00\x00"
    b"\x04\x00\x00\x00"
    b"\x5e\x00\x00\x00"
    # (0000,0002) UI, 27 characters + NUL = 28 bytes
    b"\x00\x00\x02\x00"
    b"\x1c\x00\x00\x00"
    b"1.2.840.10008.5.1.4.1.2.1.2\x00"
    # (0000,0100) US 0x0021 C-MOVE-RQ
    b"\x00\x00\x00\x01"
    b"\x02\x00\x00\x00"
    b"\x21\x00"
    # (0000,0110) US Message ID 7
    b"\x00\x00\x10\x01"
    b"\x02\x00\x00\x00"
    b"\x07\x00"
    # (0000,0600) AE Move Destination, 9 characters + space = 10 bytes
    b"\x00\x00\x00\x06"
    b"\x0a\x00\x00\x00"
    b"STORESCP1 "
    # (0000,0700) US Priority 2 (LOW)
    b"\x00\x00\x00\x07"
    b"\x02\x00\x00\x00"
    b"\x02\x00"
    # (0000,0800) US Command Data Set Type 0x0001 (data set present)
    b"\x00\x00\x00\x08"
    b"\x02\x00\x00\x00"
    b"\x01\x00"
)

# C-STORE-RSP failure, PS3.7 Table 9.3-2, with Error Comment (LO, odd length,
# space padded) and Offending Element (AT: group, element as two LE words).
STORE_RSP_FIELDS = {
    "AffectedSOPClassUID": CT_IMAGE,
    "CommandField": 0x8001,
    "MessageIDBeingRespondedTo": 0x1234,
    "CommandDataSetType": 0x0101,
    "Status": 0xA900,
    "OffendingElement": [0x00100020],
    "ErrorComment": "Bad value",
    "AffectedSOPInstanceUID": "1.2.3.4",
}
STORE_RSP_GOLDEN = (
    # (0000,0000) UL: 120 = 34 + 4 * 10 + 12 + 18 + 16
    b"\x00\x00\x00\x00"
    b"\x04\x00\x00\x00"
    b"\x78\x00\x00\x00"
    # (0000,0002) UI, 25 characters + NUL = 26 bytes           -> 34
    b"\x00\x00\x02\x00"
    b"\x1a\x00\x00\x00"
    b"1.2.840.10008.5.1.4.1.1.2\x00"
    # (0000,0100) US 0x8001 C-STORE-RSP                        -> 10
    b"\x00\x00\x00\x01"
    b"\x02\x00\x00\x00"
    b"\x01\x80"
    # (0000,0120) US Message ID Being Responded To 0x1234      -> 10
    b"\x00\x00\x20\x01"
    b"\x02\x00\x00\x00"
    b"\x34\x12"
    # (0000,0800) US 0x0101                                    -> 10
    b"\x00\x00\x00\x08"
    b"\x02\x00\x00\x00"
    b"\x01\x01"
    # (0000,0900) US Status 0xA900                             -> 10
    b"\x00\x00\x00\x09"
    b"\x02\x00\x00\x00"
    b"\x00\xa9"
    # (0000,0901) AT Offending Element (0010,0020)             -> 12
    b"\x00\x00\x01\x09"
    b"\x04\x00\x00\x00"
    b"\x10\x00\x20\x00"
    # (0000,0902) LO Error Comment, 9 characters + space       -> 18
    b"\x00\x00\x02\x09"
    b"\x0a\x00\x00\x00"
    b"Bad value "
    # (0000,1000) UI Affected SOP Instance UID, 7 + NUL = 8    -> 16
    b"\x00\x00\x00\x10"
    b"\x08\x00\x00\x00"
    b"1.2.3.4\x00"
)

GOLDEN = [
    pytest.param(ECHO_RQ_FIELDS, ECHO_RQ_GOLDEN, id="C-ECHO-RQ"),
    pytest.param(MOVE_RQ_FIELDS, MOVE_RQ_GOLDEN, id="C-MOVE-RQ"),
    pytest.param(STORE_RSP_FIELDS, STORE_RSP_GOLDEN, id="C-STORE-RSP"),
]


def test_golden_group_lengths_are_the_byte_count_after_them() -> None:
    # A check of the hand-written goldens themselves, independent of aiodicom.
    for golden in (ECHO_RQ_GOLDEN, MOVE_RQ_GOLDEN, STORE_RSP_GOLDEN):
        assert golden[:8] == b"\x00\x00\x00\x00\x04\x00\x00\x00"
        assert struct.unpack_from("<L", golden, 8)[0] == len(golden) - 12
        assert len(golden) % 2 == 0


@pytest.mark.parametrize(("fields", "golden"), GOLDEN)
def test_encode_matches_golden(fields: dict[str, Any], golden: bytes) -> None:
    assert encode_command(fields) == golden


@pytest.mark.parametrize(("fields", "golden"), GOLDEN)
def test_decode_golden(fields: dict[str, Any], golden: bytes) -> None:
    expected = {"CommandGroupLength": len(golden) - 12, **fields}
    assert decode_command(golden) == expected
    # Any bytes-like object is accepted.
    assert decode_command(bytearray(golden)) == expected
    assert decode_command(memoryview(golden)) == expected


def test_encode_orders_by_tag_whatever_the_mapping_order() -> None:
    reordered = dict(reversed(list(ECHO_RQ_FIELDS.items())))
    assert encode_command(reordered) == ECHO_RQ_GOLDEN


def test_encode_skips_none_and_a_given_group_length() -> None:
    fields = {**ECHO_RQ_FIELDS, "Priority": None, "CommandGroupLength": 999}
    assert encode_command(fields) == ECHO_RQ_GOLDEN


def test_encode_rejects_a_non_command_keyword() -> None:
    with pytest.raises(DIMSEError):
        encode_command({**ECHO_RQ_FIELDS, "PatientName": "X"})


def test_even_length_padding() -> None:
    # PS3.5 6.2: UI padded with NUL, AE and LO with a space; even values as is.
    raw = encode_command({"CommandField": 1, "AffectedSOPInstanceUID": "1.2.3"})
    assert raw.endswith(element(0x1000, b"1.2.3\x00"))
    raw = encode_command({"CommandField": 1, "AffectedSOPInstanceUID": "1.2.34"})
    assert raw.endswith(element(0x1000, b"1.2.34"))
    raw = encode_command({"CommandField": 1, "MoveOriginatorApplicationEntityTitle": "A"})
    assert raw.endswith(element(0x1030, b"A "))
    raw = encode_command({"CommandField": 1, "ErrorComment": "abc"})
    assert raw.endswith(element(0x0902, b"abc "))


def test_element_table_matches_pydicom_dictionary() -> None:
    # Table E.1-1 keywords and VRs agree with pydicom's data dictionary.
    from pydicom.datadict import dictionary_keyword, dictionary_VR

    for elem, (keyword, vr) in COMMAND_ELEMENTS.items():
        assert dictionary_keyword(elem) == keyword
        assert dictionary_VR(elem) == vr


# ---------------------------------------------------------------------------
# 2. Round trips of every DIMSE-C and DIMSE-N request and response (PS3.7 9.3, 10.3)

REPRESENTATIVE: dict[str, dict[str, Any]] = {
    "C-STORE-RQ": {
        "CommandField": CommandField.C_STORE_RQ,
        "AffectedSOPClassUID": CT_IMAGE,
        "MessageID": 3,
        "Priority": 0,
        "CommandDataSetType": 0x0001,
        "AffectedSOPInstanceUID": INSTANCE,
        "MoveOriginatorApplicationEntityTitle": "MOVESCU",
        "MoveOriginatorMessageID": 12,
    },
    "C-STORE-RSP": {
        "CommandField": CommandField.C_STORE_RSP,
        "AffectedSOPClassUID": CT_IMAGE,
        "MessageIDBeingRespondedTo": 3,
        "CommandDataSetType": NO_DATASET,
        "Status": 0xB000,
        "AffectedSOPInstanceUID": INSTANCE,
        "OffendingElement": [0x00280010, 0x00280011],
        "ErrorComment": "Coercion of data elements",
    },
    "C-FIND-RQ": {
        "CommandField": CommandField.C_FIND_RQ,
        "AffectedSOPClassUID": PATIENT_ROOT_FIND,
        "MessageID": 65535,
        "Priority": 1,
        "CommandDataSetType": 0x0001,
    },
    "C-FIND-RSP": {
        "CommandField": CommandField.C_FIND_RSP,
        "AffectedSOPClassUID": PATIENT_ROOT_FIND,
        "MessageIDBeingRespondedTo": 65535,
        "CommandDataSetType": 0x0001,
        "Status": 0xFF00,
    },
    "C-GET-RQ": {
        "CommandField": CommandField.C_GET_RQ,
        "AffectedSOPClassUID": PATIENT_ROOT_GET,
        "MessageID": 4,
        "Priority": 2,
        "CommandDataSetType": 0x0001,
    },
    "C-GET-RSP": {
        "CommandField": CommandField.C_GET_RSP,
        "AffectedSOPClassUID": PATIENT_ROOT_GET,
        "MessageIDBeingRespondedTo": 4,
        "CommandDataSetType": NO_DATASET,
        "Status": 0xFF00,
        "NumberOfRemainingSuboperations": 10,
        "NumberOfCompletedSuboperations": 5,
        "NumberOfFailedSuboperations": 1,
        "NumberOfWarningSuboperations": 0,
    },
    "C-MOVE-RQ": {
        "CommandField": CommandField.C_MOVE_RQ,
        "AffectedSOPClassUID": PATIENT_ROOT_MOVE,
        "MessageID": 5,
        "Priority": 0,
        "CommandDataSetType": 0x0001,
        "MoveDestination": "STORE_SCP",
    },
    "C-MOVE-RSP": {
        "CommandField": CommandField.C_MOVE_RSP,
        "AffectedSOPClassUID": PATIENT_ROOT_MOVE,
        "MessageIDBeingRespondedTo": 5,
        "CommandDataSetType": 0x0001,
        "Status": 0xB000,
        "NumberOfRemainingSuboperations": 0,
        "NumberOfCompletedSuboperations": 65535,
        "NumberOfFailedSuboperations": 2,
        "NumberOfWarningSuboperations": 3,
        "ErrorComment": "Some sub-operations failed",
    },
    "C-ECHO-RQ": dict(ECHO_RQ_FIELDS),
    "C-ECHO-RSP": {
        "CommandField": CommandField.C_ECHO_RSP,
        "AffectedSOPClassUID": VERIFICATION,
        "MessageIDBeingRespondedTo": 1,
        "CommandDataSetType": NO_DATASET,
        "Status": 0x0000,
    },
    "C-CANCEL-RQ": {
        "CommandField": CommandField.C_CANCEL_RQ,
        "MessageIDBeingRespondedTo": 5,
        "CommandDataSetType": NO_DATASET,
    },
    "N-EVENT-REPORT-RQ": {
        "CommandField": CommandField.N_EVENT_REPORT_RQ,
        "AffectedSOPClassUID": STORAGE_COMMITMENT,
        "MessageID": 9,
        "CommandDataSetType": 0x0001,
        "AffectedSOPInstanceUID": STORAGE_COMMITMENT_INSTANCE,
        "EventTypeID": 2,
    },
    "N-EVENT-REPORT-RSP": {
        "CommandField": CommandField.N_EVENT_REPORT_RSP,
        "AffectedSOPClassUID": STORAGE_COMMITMENT,
        "MessageIDBeingRespondedTo": 9,
        "CommandDataSetType": NO_DATASET,
        "Status": 0x0000,
        "AffectedSOPInstanceUID": STORAGE_COMMITMENT_INSTANCE,
        "EventTypeID": 2,
    },
    "N-GET-RQ": {
        "CommandField": CommandField.N_GET_RQ,
        "RequestedSOPClassUID": PRINTER,
        "MessageID": 10,
        "CommandDataSetType": NO_DATASET,
        "RequestedSOPInstanceUID": PRINTER_INSTANCE,
        "AttributeIdentifierList": [Tag(0x2110, 0x0010), Tag(0x2110, 0x0020), 0x00080070],
    },
    "N-GET-RSP": {
        "CommandField": CommandField.N_GET_RSP,
        "AffectedSOPClassUID": PRINTER,
        "MessageIDBeingRespondedTo": 10,
        "CommandDataSetType": 0x0001,
        "Status": 0x0000,
        "AffectedSOPInstanceUID": PRINTER_INSTANCE,
    },
    "N-SET-RQ": {
        "CommandField": CommandField.N_SET_RQ,
        "RequestedSOPClassUID": MPPS,
        "MessageID": 11,
        "CommandDataSetType": 0x0001,
        "RequestedSOPInstanceUID": INSTANCE,
    },
    "N-SET-RSP": {
        "CommandField": CommandField.N_SET_RSP,
        "AffectedSOPClassUID": MPPS,
        "MessageIDBeingRespondedTo": 11,
        "CommandDataSetType": NO_DATASET,
        "Status": 0x0106,
        "AffectedSOPInstanceUID": INSTANCE,
        "AttributeIdentifierList": [0x00400252],
        "ErrorComment": "Invalid attribute value",
        "ErrorID": 0x0042,
    },
    "N-ACTION-RQ": {
        "CommandField": CommandField.N_ACTION_RQ,
        "RequestedSOPClassUID": STORAGE_COMMITMENT,
        "MessageID": 12,
        "CommandDataSetType": 0x0001,
        "RequestedSOPInstanceUID": STORAGE_COMMITMENT_INSTANCE,
        "ActionTypeID": 1,
    },
    "N-ACTION-RSP": {
        "CommandField": CommandField.N_ACTION_RSP,
        "AffectedSOPClassUID": STORAGE_COMMITMENT,
        "MessageIDBeingRespondedTo": 12,
        "CommandDataSetType": NO_DATASET,
        "Status": 0x0000,
        "AffectedSOPInstanceUID": STORAGE_COMMITMENT_INSTANCE,
        "ActionTypeID": 1,
    },
    "N-CREATE-RQ": {
        "CommandField": CommandField.N_CREATE_RQ,
        "AffectedSOPClassUID": MPPS,
        "MessageID": 13,
        "CommandDataSetType": 0x0001,
        "AffectedSOPInstanceUID": INSTANCE,
    },
    "N-CREATE-RSP": {
        "CommandField": CommandField.N_CREATE_RSP,
        "AffectedSOPClassUID": MPPS,
        "MessageIDBeingRespondedTo": 13,
        "CommandDataSetType": 0x0001,
        "Status": 0x0000,
        "AffectedSOPInstanceUID": INSTANCE,
    },
    "N-DELETE-RQ": {
        "CommandField": CommandField.N_DELETE_RQ,
        "RequestedSOPClassUID": FILM_SESSION,
        "MessageID": 14,
        "CommandDataSetType": NO_DATASET,
        "RequestedSOPInstanceUID": INSTANCE,
    },
    "N-DELETE-RSP": {
        "CommandField": CommandField.N_DELETE_RSP,
        "AffectedSOPClassUID": FILM_SESSION,
        "MessageIDBeingRespondedTo": 14,
        "CommandDataSetType": NO_DATASET,
        "Status": 0x0112,
        "AffectedSOPInstanceUID": INSTANCE,
        "OffendingElement": [Tag(0x0008, 0x1155)],
        "ErrorComment": "No such object instance",
    },
}
NAMES = sorted(REPRESENTATIVE)


def test_every_command_field_is_represented() -> None:
    values = {v for k, v in vars(CommandField).items() if k.isupper()}
    assert {f["CommandField"] for f in REPRESENTATIVE.values()} == values
    assert len(values) == 23


def normalized(fields: dict[str, Any]) -> dict[str, Any]:
    """What decode_command gives back: AT always a list, ints plain."""
    out: dict[str, Any] = {}
    for keyword, value in fields.items():
        vr = COMMAND_ELEMENTS[Tag(keyword).element][1]
        if vr == "AT":
            value = [int(Tag(v)) for v in (value if isinstance(value, list) else [value])]
        out[keyword] = value
    return out


def parse_elements(raw: bytes) -> list[tuple[int, int, bytes]]:
    """A minimal independent Implicit VR LE parser for structural checks."""
    out, pos = [], 0
    while pos < len(raw):
        group, elem, length = struct.unpack_from("<HHL", raw, pos)
        out.append((group, elem, raw[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    assert pos == len(raw)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name: str) -> None:
    fields = REPRESENTATIVE[name]
    raw = encode_command(fields)
    decoded = decode_command(raw)
    assert decoded.pop("CommandGroupLength") == len(raw) - 12
    assert decoded == normalized(fields)
    # The encoding itself: group 0000, group length first, ascending tags,
    # every value of even length (PS3.5 7.1, PS3.7 6.3.1).
    elems = parse_elements(raw)
    assert all(g == 0 for g, _, _ in elems)
    assert elems[0][1] == 0x0000
    assert [e for _, e, _ in elems] == sorted(e for _, e, _ in elems)
    assert all(len(v) % 2 == 0 for _, _, v in elems)
    assert len(elems) == len(fields) + 1


@pytest.mark.parametrize("name", NAMES)
def test_message_properties(name: str) -> None:
    fields = REPRESENTATIVE[name]
    msg = Message(context_id=1, command=decode_command(encode_command(fields)))
    assert msg.name == name
    assert msg.command_field == fields["CommandField"]
    assert msg.is_response == name.endswith("-RSP")
    # As documented: MessageID of a request, MessageIDBeingRespondedTo of a
    # response; so None for C-CANCEL-RQ, a request without a MessageID.
    key = "MessageIDBeingRespondedTo" if name.endswith("-RSP") else "MessageID"
    assert msg.message_id == fields.get(key)
    assert msg.has_dataset == (fields["CommandDataSetType"] != NO_DATASET)


def pydicom_dataset(fields: dict[str, Any]) -> Dataset:
    ds = Dataset()
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    return ds


def pydicom_encode(ds: Dataset) -> bytes:
    """pydicom's own Implicit VR LE encoding, with the group length computed."""

    def write(ds: Dataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = True
        write_dataset(fp, ds)
        return fp.getvalue()

    ds = copy.deepcopy(ds)
    if "CommandGroupLength" in ds:
        del ds.CommandGroupLength
    ds.CommandGroupLength = len(write(ds))
    return write(ds)


def pydicom_read(raw: bytes) -> Dataset:
    return read_dataset(DicomBytesIO(raw), is_implicit_VR=True, is_little_endian=True)


def plain(value: Any) -> Any:
    """pydicom element value -> the form decode_command gives."""
    if isinstance(value, MultiValue | list):
        return [plain(v) for v in value]
    if isinstance(value, BaseTag):
        return int(value)
    if isinstance(value, str):
        return str(value)
    return value


@pytest.mark.parametrize("name", NAMES)
def test_pydicom_encoding_is_identical_and_decodes(name: str) -> None:
    fields = REPRESENTATIVE[name]
    theirs = pydicom_encode(pydicom_dataset(fields))
    assert encode_command(fields) == theirs
    decoded = decode_command(theirs)
    assert decoded.pop("CommandGroupLength") == len(theirs) - 12
    assert decoded == normalized(fields)


@pytest.mark.parametrize("name", NAMES)
def test_pydicom_reads_our_encoding(name: str) -> None:
    fields = REPRESENTATIVE[name]
    raw = encode_command(fields)
    ds = pydicom_read(raw)
    assert ds.CommandGroupLength == len(raw) - 12
    del ds.CommandGroupLength
    assert sorted(elem.keyword for elem in ds) == sorted(fields)
    for keyword, value in normalized(fields).items():
        theirs = plain(ds[keyword].value)
        if COMMAND_ELEMENTS[Tag(keyword).element][1] == "AT" and not isinstance(theirs, list):
            theirs = [theirs]
        assert theirs == value, keyword


def test_pynetdicom_encode_msg_reassembles() -> None:
    # pynetdicom's own C-ECHO-RQ and C-STORE-RQ messages, fragmented by
    # pynetdicom, come out of the Reassembler as the same command and data.
    from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
    from pynetdicom.dimse_primitives import C_ECHO, C_STORE

    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = VERIFICATION
    echo_msg = C_ECHO_RQ()
    echo_msg.primitive_to_message(echo)

    store = C_STORE()
    store.MessageID = 3
    store.AffectedSOPClassUID = CT_IMAGE
    store.AffectedSOPInstanceUID = INSTANCE
    store.Priority = 0
    store.MoveOriginatorApplicationEntityTitle = "MOVESCU"
    store.MoveOriginatorMessageID = 12
    dataset = payload(3000)
    store.DataSet = io.BytesIO(dataset)
    store_msg = C_STORE_RQ()
    store_msg.primitive_to_message(store)

    r = Reassembler({1})
    results = []
    for msg, max_pdu in ((echo_msg, 16382), (store_msg, 1000)):
        for p_data in msg.encode_msg(1, max_pdu):
            for context_id, value in p_data.presentation_data_value_list:
                assert len(value) + 5 <= max_pdu  # value: control header + fragment
                pdv = PDV(
                    context_id=context_id,
                    is_command=bool(value[0] & 1),
                    is_last=bool(value[0] & 2),
                    data=value[1:],
                )
                out = r.feed(pdv)
                if out is not None:
                    results.append(out)
    echo_out, store_out = results
    assert echo_out.raw_command == ECHO_RQ_GOLDEN
    assert echo_out.command == {"CommandGroupLength": 56, **ECHO_RQ_FIELDS}
    assert echo_out.data is None
    fields = REPRESENTATIVE["C-STORE-RQ"]
    assert store_out.raw_command == encode_command({**fields, "CommandDataSetType": 0x0001})
    assert store_out.data == dataset


@pytest.mark.parametrize("max_pdu", [0, 1000, 16382])
def test_pynetdicom_decodes_our_fragments(max_pdu: int) -> None:
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.pdu_primitives import P_DATA

    fields = REPRESENTATIVE["C-STORE-RQ"]
    dataset = payload(2500)
    msg = DIMSEMessage()
    done = False
    for raw in fragment(5, encode_command(fields), dataset, max_pdu):
        pdu = decode_pdu(raw)
        assert isinstance(pdu, PDataTF)
        p_data = P_DATA()
        p_data.presentation_data_value_list = [
            [p.context_id, bytes([p.control_header]) + bytes(p.data)] for p in pdu.pdvs
        ]
        assert not done
        done = msg.decode_msg(p_data)
    assert done
    assert msg.context_id == 5
    cs = msg.command_set
    for keyword, value in fields.items():
        assert cs[keyword].value == value, keyword
    assert msg.data_set.getvalue() == dataset


# Hypothesis: random values of every element of Table E.1-1.

_uid_component = st.one_of(st.just("0"), st.integers(1, 10**12).map(str))
UIDS = (
    st.lists(_uid_component, min_size=2, max_size=12).map(".".join).filter(lambda s: len(s) <= 64)
)
US = st.integers(0, 0xFFFF)
AE = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=16)
LO = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;()-_",
    min_size=1,
    max_size=64,
).filter(lambda s: s.strip() == s and s != "")
AT = st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=6)
BY_VR = {"US": US, "UI": UIDS, "AE": AE, "LO": LO, "AT": AT}
OPTIONAL = [kw for kw, _ in COMMAND_ELEMENTS.values() if kw not in ("CommandGroupLength",)]


@st.composite
def command_fields(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(st.sets(st.sampled_from(OPTIONAL)))
    chosen.add("CommandField")
    out = {}
    for keyword in chosen:
        out[keyword] = draw(BY_VR[COMMAND_ELEMENTS[Tag(keyword).element][1]])
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_fields())
def test_round_trip_property(fields: dict[str, Any]) -> None:
    raw = encode_command(fields)
    decoded = decode_command(raw)
    assert decoded.pop("CommandGroupLength") == len(raw) - 12
    assert decoded == normalized(fields)
    assert len(raw) % 2 == 0
    # pydicom agrees on the encoding and reads the same values back.
    assert raw == pydicom_encode(pydicom_dataset(fields))
    ds = pydicom_read(raw)
    for keyword, value in normalized(fields).items():
        theirs = plain(ds[keyword].value)
        if isinstance(value, list) and not isinstance(theirs, list):
            theirs = [theirs]
        assert theirs == value, keyword


# Known layouts: a command set whose headers were seen before is read in one
# unpack; what it gives must be what the element walk gives.


@pytest.fixture
def fresh_layouts(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[Any]]:
    layouts: dict[int, list[Any]] = {}
    monkeypatch.setattr(dimse, "_LAYOUTS", layouts)
    monkeypatch.setattr(dimse, "_layout_count", 0)
    return layouts


def assert_same_dataset(ours: Dataset, walked: Dataset) -> None:
    assert list(ours._dict) == list(walked._dict)
    for tag, elem in walked._dict.items():
        mine = ours._dict[tag]
        assert type(mine) is type(elem), tag
        if isinstance(elem, RawDataElement):
            assert tuple(mine) == tuple(elem), tag
        else:
            assert (mine.tag, mine.VR, mine.value) == (elem.tag, elem.VR, elem.value)
    assert ours == walked


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_fields(), st.data())
def test_known_layout_reads_as_the_walk(fields: dict[str, Any], data: st.DataObject) -> None:
    dimse._LAYOUTS.clear()
    dimse._layout_count = 0
    raw = encode_command(fields)
    first = decode_command(raw)
    assert first == dimse._walk_command(raw)
    # Every set the generator makes has a layout (AT values included).
    eligible = True
    assert (dimse._find_layout(raw) is not None) == eligible
    # The same layout with other values: message IDs, status, UIDs of the
    # same length (the last digit changed), titles and comments alike.
    changed = dict(fields)
    for keyword, value in fields.items():
        vr = COMMAND_ELEMENTS[Tag(keyword).element][1]
        if vr == "US":
            changed[keyword] = data.draw(US)
        elif vr in ("UI", "AE", "LO"):
            last = "7" if value[-1] != "7" else "5"
            changed[keyword] = value[:-1] + last
        elif vr == "AT":  # as many tags, other values
            tags = value if isinstance(value, list) else [value]
            changed[keyword] = [(int(t) + 0x00010001) & 0xFFFFFFFF for t in tags]
    other = encode_command(changed)
    assert len(other) == len(raw)
    assert (
        decode_command(other)
        == dimse._walk_command(other)
        == {**normalized(changed), "CommandGroupLength": len(other) - 12}
    )
    assert_same_dataset(command_dataset(other), dimse._walk_dataset(other))
    assert_same_dataset(command_dataset(raw), dimse._walk_dataset(raw))
    # The layout decoding found, handed on (as a Message carries it).
    _, layout = dimse._decode_command(other)
    assert (layout is not None) == eligible
    assert_same_dataset(command_dataset(other, layout), dimse._walk_dataset(other))
    # Bytes, bytearray and memoryview read alike.
    walked = dimse._walk_command(other)
    assert decode_command(bytearray(other)) == decode_command(memoryview(other)) == walked


def test_same_length_other_headers_is_walked(fresh_layouts: dict[int, list[Any]]) -> None:
    # Two UIDs of lengths 10 and 12, then 12 and 10: the same total length,
    # other element positions.
    a = encode_command(
        {
            "CommandField": 1,
            "AffectedSOPClassUID": "1.2.3.4.56",
            "AffectedSOPInstanceUID": "1.2.3.4.5.67",
        }
    )
    b = encode_command(
        {
            "CommandField": 1,
            "AffectedSOPClassUID": "1.2.3.4.5.67",
            "AffectedSOPInstanceUID": "1.2.3.4.56",
        }
    )
    assert len(a) == len(b)
    decode_command(a)
    assert dimse._find_layout(b) is None
    assert decode_command(b)["AffectedSOPClassUID"] == "1.2.3.4.5.67"
    assert decode_command(b)["AffectedSOPInstanceUID"] == "1.2.3.4.56"
    assert len(fresh_layouts[len(a)]) == 2
    assert command_dataset(b).AffectedSOPClassUID == "1.2.3.4.5.67"
    assert command_dataset(a).AffectedSOPClassUID == "1.2.3.4.56"


def test_layouts_are_bounded(fresh_layouts: dict[int, list[Any]]) -> None:
    # Layouts of their own: an instance UID and an error comment of each
    # pair of lengths.
    lengths = [(a, b) for a in range(2, 66, 2) for b in range(2, 66, 2)]
    sets = []
    for a, b in lengths[: dimse._MAX_LAYOUTS + 40]:
        fields = {
            "CommandField": 0x8001,
            "AffectedSOPInstanceUID": "1." + "2" * (a - 2) if a > 2 else "12",
            "ErrorComment": "x" * b,
        }
        raw = encode_command(fields)
        sets.append(raw)
        assert decode_command(raw) == dimse._walk_command(raw)
        assert sum(map(len, fresh_layouts.values())) <= dimse._MAX_LAYOUTS
    # Full, the cache started over: the layouts seen since are known (those
    # in use now), the first ones are not (until they come back).
    assert sum(map(len, fresh_layouts.values())) == 40
    assert dimse._find_layout(sets[-1]) is not None
    assert dimse._find_layout(sets[0]) is None
    assert command_dataset(sets[0]).ErrorComment == "x" * lengths[0][1]
    assert decode_command(sets[0]) == dimse._walk_command(sets[0])
    assert dimse._find_layout(sets[0]) is not None


@pytest.mark.parametrize(
    "raw",
    [
        # An element this table does not know (skipped by the walk).
        pytest.param(ECHO_RQ_GOLDEN + struct.pack("<HHL", 0, 0x5010, 2) + b"ab", id="unknown"),
    ],
)
def test_sets_without_a_layout(fresh_layouts: dict[int, list[Any]], raw: bytes) -> None:
    expected = dimse._walk_command(raw)
    assert decode_command(raw) == expected
    assert decode_command(raw) == expected
    assert not fresh_layouts
    assert_same_dataset(command_dataset(raw), dimse._walk_dataset(raw))


def test_sets_with_tags_have_a_layout(fresh_layouts: dict[int, list[Any]]) -> None:
    """An N-GET-RQ's Attribute Identifier List is read by its layout the second time."""

    def n_get(*tags: int) -> bytes:
        return encode_command(
            {
                "CommandField": 0x0110,
                "MessageID": 5,
                "RequestedSOPClassUID": "1.2.840.10008.5.1.1.16",
                "RequestedSOPInstanceUID": "1.2.840.10008.5.1.1.17",
                "CommandDataSetType": 0x0101,
                "AttributeIdentifierList": list(tags),
            }
        )

    first, second = n_get(0x21100010, 0x21100020), n_get(0x00100010, 0x7FE00010)
    assert decode_command(first)["AttributeIdentifierList"] == [0x21100010, 0x21100020]
    found = dimse._find_layout(second)
    assert found is not None
    decoded, layout = dimse._decode_command(second)
    assert layout is found[0]
    assert decoded == dimse._walk_command(second)
    assert decoded["AttributeIdentifierList"] == [0x00100010, 0x7FE00010]
    assert all(type(t) is BaseTag for t in decoded["AttributeIdentifierList"])
    assert_same_dataset(command_dataset(second, layout), dimse._walk_dataset(second))


def test_layout_of_an_element_met_twice(fresh_layouts: dict[int, list[Any]]) -> None:
    """The last value counts, as in the walk, by the layout too."""

    def twice(instance: str, comment: str) -> bytes:
        once = encode_command(
            {
                "CommandField": 0x8001,
                "Status": 0,
                "AffectedSOPInstanceUID": "1.2.3.4",
                "ErrorComment": "first",
            }
        )
        again = encode_command(
            {"AffectedSOPInstanceUID": instance, "ErrorComment": comment, "Status": 0x0107}
        )
        body = once[12:] + again[12:]
        return struct.pack("<HHLL", 0, 0, 4, len(body)) + body

    for raw in (twice("1.2.3.5", "other"), twice("1.2.3.6", "again")):
        expected = dimse._walk_command(raw)
        assert decode_command(raw) == expected
        assert expected["AffectedSOPInstanceUID"] in ("1.2.3.5", "1.2.3.6")
        assert expected["Status"] == 0x0107
        assert_same_dataset(command_dataset(raw), dimse._walk_dataset(raw))
    assert dimse._find_layout(raw) is not None
    assert command_dataset(raw).Status == 0x0107


@st.composite
def raw_command_sets(draw: st.DrawFn) -> bytes:
    """Element lists as a peer may send them: any order, elements repeated,
    unknown ones, values of any bytes (of a length each VR reads)."""
    elems = [*COMMAND_ELEMENTS, 0x5010, 0x0101]
    body = b""
    for elem in draw(st.lists(st.sampled_from(elems), max_size=10)):
        vr = COMMAND_ELEMENTS.get(elem, ("", "LO"))[1]
        size = {"US": st.just(2), "UL": st.just(4), "AT": st.sampled_from([4, 8])}.get(
            vr, st.integers(0, 20)
        )
        body += struct.pack("<HHL", 0, elem, n := draw(size)) + draw(
            st.binary(min_size=n, max_size=n)
        )
    return body


@settings(max_examples=300, deadline=None)
@given(raw_command_sets(), st.data())
def test_any_set_reads_as_the_walk_once_its_layout_is_known(
    raw: bytes, data: st.DataObject
) -> None:
    dimse._LAYOUTS.clear()
    dimse._layout_count = 0
    try:
        expected = dimse._walk_command(raw)
    except DIMSEError:
        with pytest.raises(DIMSEError):
            decode_command(raw)
        assert not dimse._LAYOUTS
        return
    assert decode_command(raw) == expected
    # The same headers, other values: by the layout if it has one.
    other = bytearray(raw)
    headers, pos = set(), 0  # where the element headers are: left as they are
    while pos + 8 <= len(raw):
        headers.update(range(pos, pos + 8))
        pos += 8 + struct.unpack_from("<L", raw, pos + 4)[0]
    for i in data.draw(st.lists(st.integers(0, max(0, len(raw) - 1)), max_size=8)):
        if raw and dimse._find_layout(raw) is not None and i not in headers:  # values only
            other[i] = data.draw(st.integers(0, 255))
    other_bytes = bytes(other)
    decoded, layout = dimse._decode_command(other_bytes)
    assert decoded == dimse._walk_command(other_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the random values it converts
        # (each comparison converts the raw elements it compares: a new walk each)
        assert_same_dataset(command_dataset(other_bytes), dimse._walk_dataset(other_bytes))
        assert_same_dataset(command_dataset(other_bytes, layout), dimse._walk_dataset(other_bytes))


def test_malformed_set_learns_nothing(fresh_layouts: dict[int, list[Any]]) -> None:
    with pytest.raises(DIMSEError):
        decode_command(ECHO_RQ_GOLDEN[:-1])
    with pytest.raises(DIMSEError):
        decode_command(struct.pack("<HHLH", 0, 0x0110, 2, 5))  # no Command Field
    assert not fresh_layouts


# ---------------------------------------------------------------------------
# 3. Malformed command sets

ECHO_BODY = ECHO_RQ_GOLDEN[12:]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\x00\x00\x01\x02\x00", id="truncated-header-6"),
        pytest.param(ECHO_RQ_GOLDEN + b"\x00\x00\x00", id="truncated-trailing-header"),
        pytest.param(ECHO_RQ_GOLDEN[:-1], id="last-value-overruns"),
        pytest.param(
            with_group_length(ECHO_BODY + struct.pack("<HHL", 0, 0x0902, 100) + b"abcd"),
            id="element-overruns",
        ),
        pytest.param(
            with_group_length(ECHO_BODY + struct.pack("<HHL", 0, 0x0902, 0xFFFFFFFF)),
            id="huge-length",
        ),
        pytest.param(
            ECHO_RQ_GOLDEN + struct.pack("<HHL", 0x0008, 0x0016, 4) + b"1.2\x00",
            id="group-0008",
        ),
        pytest.param(
            struct.pack("<HHL", 0x0002, 0x0000, 4) + b"\x00\x00\x00\x00" + ECHO_RQ_GOLDEN,
            id="group-0002-first",
        ),
        pytest.param(
            encode_command({"MessageID": 1, "CommandDataSetType": NO_DATASET}),
            id="no-command-field",
        ),
        pytest.param(with_group_length(element(0x0100, b"\x30\x00\x00")), id="odd-US-3"),
        pytest.param(with_group_length(element(0x0100, b"\x30")), id="odd-US-1"),
        pytest.param(
            with_group_length(element(0x0100, b"\x30\x00") + element(0x0110, b"\x01\x00\x02")),
            id="odd-US-message-id",
        ),
        pytest.param(element(0x0000, b"\x00\x00") + ECHO_BODY, id="UL-of-length-2"),
        pytest.param(
            with_group_length(element(0x0100, b"\x30\x00") + element(0x0901, b"\x10\x00")),
            id="AT-of-length-2",
        ),
        pytest.param(
            with_group_length(
                element(0x0100, b"\x30\x00") + element(0x1005, b"\x10\x00\x10\x00\x10\x00")
            ),
            id="AT-of-length-6",
        ),
    ],
)
def test_decode_malformed(raw: bytes) -> None:
    with pytest.raises(DIMSEError):
        decode_command(raw)


@pytest.mark.parametrize(
    ("elem", "value"),
    [(0x0100, b""), (0x0100, b"\x30\x00\x01\x00"), (0x0800, b"\x01\x01\x01\x01")],
)
def test_decode_rejects_us_of_vm_other_than_one(elem: int, value: bytes) -> None:
    body = {0x0100: b"\x30\x00", 0x0800: b"\x01\x01"}
    body[elem] = value
    raw = with_group_length(b"".join(element(e, v) for e, v in sorted(body.items())))
    with pytest.raises(DIMSEError):
        decode_command(raw)


def test_unknown_group_0000_elements_are_skipped() -> None:
    # Retired (0000,0001) Length to End, (0000,0010) Recognition Code,
    # (0000,5010) Message Set ID and an unassigned (0000,0FF0).
    body = (
        element(0x0001, struct.pack("<L", 1234))
        + element(0x0002, b"1.2.840.10008.1.1\x00")
        + element(0x0010, b"ACR-NEMA 2.0")
        + element(0x0100, b"\x30\x00")
        + element(0x0110, b"\x01\x00")
        + element(0x0800, b"\x01\x01")
        + element(0x0FF0, b"\xff" * 7)
        + element(0x5010, b"ABCD")
    )
    raw = with_group_length(body)
    assert decode_command(raw) == {"CommandGroupLength": len(body), **ECHO_RQ_FIELDS}


def test_decode_without_group_length() -> None:
    assert decode_command(ECHO_BODY) == ECHO_RQ_FIELDS


# ---------------------------------------------------------------------------
# 4. command_dataset


@pytest.mark.parametrize("name", NAMES)
def test_command_dataset_equals_pydicom(name: str) -> None:
    raw = encode_command(REPRESENTATIVE[name])
    theirs = pydicom_read(raw)
    del theirs.CommandGroupLength
    ours = command_dataset(raw)
    assert isinstance(ours, Dataset)
    assert "CommandGroupLength" not in ours
    assert ours == theirs
    assert theirs == ours
    assert [e.tag for e in ours] == [e.tag for e in theirs]
    for elem in theirs:
        assert ours[elem.tag].VR == elem.VR
        assert ours[elem.tag].value == elem.value


def test_command_dataset_status() -> None:
    ds = command_dataset(encode_command(REPRESENTATIVE["C-STORE-RSP"]))
    assert ds.Status == 0xB000
    assert isinstance(ds.Status, int)
    assert isinstance(ds["Status"], DataElement)
    assert ds["Status"].VR == "US"
    assert ds.MessageIDBeingRespondedTo == 3
    assert ds.AffectedSOPInstanceUID == INSTANCE
    assert ds.OffendingElement == [0x00280010, 0x00280011]
    assert ds.ErrorComment == "Coercion of data elements"
    no_status = command_dataset(ECHO_RQ_GOLDEN)
    assert "Status" not in no_status
    assert no_status.get("Status") is None


def test_command_dataset_results_are_independent() -> None:
    raw = encode_command(REPRESENTATIVE["C-FIND-RSP"])
    a, b = command_dataset(raw), command_dataset(raw)
    assert a is not b
    assert a == b
    # Each Dataset's containers are its own.
    for key, value in vars(a).items():
        if isinstance(value, dict | list | set):
            assert value is not vars(b)[key], key
    assert a._dict is not b._dict
    assert a._private_blocks is not b._private_blocks
    a.Status = 0x0000
    a.MessageIDBeingRespondedTo = 99
    a.ErrorComment = "changed"
    del a.AffectedSOPClassUID
    a._private_blocks["x"] = "y"
    a._pixel_id["x"] = 1
    assert b.Status == 0xFF00
    assert b.MessageIDBeingRespondedTo == 65535
    assert "ErrorComment" not in b
    assert b.AffectedSOPClassUID == PATIENT_ROOT_FIND
    # Later results and plain Datasets are not affected either.
    c = command_dataset(raw)
    assert c == b
    assert c._private_blocks == {} and c._pixel_id == {}
    assert Dataset()._private_blocks == {}


def test_command_dataset_state_is_that_of_a_new_dataset() -> None:
    ds = command_dataset(ECHO_RQ_GOLDEN)
    fresh = Dataset()
    ours = {k: v for k, v in vars(ds).items() if k != "_dict"}
    expected = {k: v for k, v in vars(fresh).items() if k != "_dict"}
    assert ours == expected


def test_command_dataset_json_and_str() -> None:
    raw = encode_command(REPRESENTATIVE["N-SET-RSP"])
    ds = command_dataset(raw)
    theirs = pydicom_read(raw)
    del theirs.CommandGroupLength
    assert json.loads(ds.to_json()) == json.loads(theirs.to_json())
    as_dict = ds.to_json_dict()
    assert as_dict["00000900"] == {"vr": "US", "Value": [0x0106]}
    assert as_dict["00001005"] == {"vr": "AT", "Value": ["00400252"]}
    text = str(ds)
    assert "Status" in text and "Error Comment" in text and "Invalid attribute value" in text
    assert str(ds) == str(theirs)
    assert repr(ds)


def test_command_dataset_pickle_and_deepcopy() -> None:
    raw = encode_command(REPRESENTATIVE["C-MOVE-RSP"])
    ds = command_dataset(raw)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone == ds
    assert clone.Status == 0xB000
    deep = copy.deepcopy(ds)
    assert deep == ds
    deep.NumberOfFailedSuboperations = 77
    assert ds.NumberOfFailedSuboperations == 2
    shallow = ds.copy()
    assert shallow == ds


def test_command_dataset_of_every_element() -> None:
    fields = {
        kw: {"US": 7, "UI": "1.2.3", "AE": "AE1", "LO": "comment", "AT": [0x00100010]}[vr]
        for _, (kw, vr) in COMMAND_ELEMENTS.items()
        if kw != "CommandGroupLength"
    }
    raw = encode_command(fields)
    theirs = pydicom_read(raw)
    del theirs.CommandGroupLength
    assert command_dataset(raw) == theirs
    assert len(command_dataset(raw)) == len(fields)


# ---------------------------------------------------------------------------
# 5. fragment

CONTEXT = 3
COMMAND = encode_command(REPRESENTATIVE["C-STORE-RQ"])


def split_pdus(pdus: list[bytes], max_pdu: int) -> list[PDV]:
    pdvs: list[PDV] = []
    for raw in pdus:
        assert raw[0] == 0x04
        length = struct.unpack_from(">L", raw, 2)[0]
        assert length == len(raw) - 6
        if max_pdu:
            assert length <= max_pdu
        pdu = decode_pdu(raw, max_pdu)
        assert isinstance(pdu, PDataTF)
        pdvs.extend(pdu.pdvs)
    return pdvs


def check_fragments(pdvs: list[PDV], command: bytes, dataset: bytes | None) -> None:
    assert all(p.context_id == CONTEXT for p in pdvs)
    cmd = [p for p in pdvs if p.is_command]
    data = [p for p in pdvs if not p.is_command]
    # All command fragments first, then the data set fragments (PS3.8 E.2).
    assert pdvs == cmd + data
    assert [p.is_last for p in cmd] == [False] * (len(cmd) - 1) + [True]
    assert b"".join(bytes(p.data) for p in cmd) == command
    if dataset is None:
        assert data == []
    else:
        assert data
        assert [p.is_last for p in data] == [False] * (len(data) - 1) + [True]
        assert b"".join(bytes(p.data) for p in data) == dataset
    # Only the last fragment may be empty (an empty data set).
    assert all(len(p.data) for p in cmd)
    assert all(len(p.data) for p in data[:-1])


def data_sizes(max_pdu: int) -> list[int]:
    m = max_pdu or UNLIMITED_CHUNK
    sizes = {0, 1, m - 12, m - 6, m - 5, m, 3 * m + 1, m - 12 - len(COMMAND)}
    sizes |= {m - 11 - len(COMMAND), m - 13 - len(COMMAND), m - 7, m + 1, 2 * m}
    return sorted(s for s in sizes if s >= 0)


_PATTERN = bytes(range(251))


def payload(n: int) -> bytes:
    return (_PATTERN * (n // 251 + 1))[:n]


MAX_PDUS = [0, 4096, 16384, 16382, 6 + len(COMMAND), 7 + len(COMMAND), 4095, 16383, 257, 7]


@pytest.mark.parametrize("max_pdu", MAX_PDUS)
def test_fragment(max_pdu: int) -> None:
    for size in [*data_sizes(max_pdu), None]:
        dataset = None if size is None else payload(size)
        pdus = list(fragment(CONTEXT, COMMAND, dataset, max_pdu))
        pdvs = split_pdus(pdus, max_pdu)
        check_fragments(pdvs, COMMAND, dataset)
        limit = max_pdu or UNLIMITED_CHUNK
        if dataset is not None and len(COMMAND) + len(dataset) + 12 <= limit:
            # A small message: one PDU, command PDV then data set PDV.
            assert len(pdus) == 1
            assert [p.control_header for p in pdvs] == [0x03, 0x02]
        # Every PDU except the last of each part is full.
        if max_pdu and len(pdus) > 1:
            full = [p for p in pdvs if not p.is_last]
            assert all(len(p.data) == max_pdu - 6 for p in full)


@pytest.mark.parametrize("max_pdu", [0, 4096])
def test_fragment_accepts_memoryview(max_pdu: int) -> None:
    data = payload(10_000)
    pdus = list(fragment(CONTEXT, COMMAND, memoryview(data), max_pdu))
    check_fragments(split_pdus(pdus, max_pdu), COMMAND, data)


def test_small_message_layout() -> None:
    # PS3.8 9.3.5: PDU type 04, reserved, length; two PDV items each
    # (length, context ID, message control header, fragment).
    dataset = b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00"
    (pdu,) = fragment(CONTEXT, ECHO_RQ_GOLDEN, dataset, 16384)
    expected = (
        b"\x04\x00"
        + struct.pack(">L", len(ECHO_RQ_GOLDEN) + len(dataset) + 12)
        + struct.pack(">L", len(ECHO_RQ_GOLDEN) + 2)
        + bytes([CONTEXT, 0x03])
        + ECHO_RQ_GOLDEN
        + struct.pack(">L", len(dataset) + 2)
        + bytes([CONTEXT, 0x02])
        + dataset
    )
    assert pdu == expected


def test_command_only_layout() -> None:
    (pdu,) = fragment(1, ECHO_RQ_GOLDEN, None, 16384)
    assert pdu == (
        b"\x04\x00"
        + struct.pack(">L", len(ECHO_RQ_GOLDEN) + 6)
        + struct.pack(">L", len(ECHO_RQ_GOLDEN) + 2)
        + b"\x01\x03"
        + ECHO_RQ_GOLDEN
    )


def test_exact_fit_boundaries() -> None:
    # command + data set + 12 == max: one PDU; one more byte: split.
    max_pdu = 4096
    fit = payload(max_pdu - 12 - len(COMMAND))
    assert len(list(fragment(CONTEXT, COMMAND, fit, max_pdu))) == 1
    over = payload(max_pdu - 11 - len(COMMAND))
    pdus = list(fragment(CONTEXT, COMMAND, over, max_pdu))
    assert len(pdus) == 2
    check_fragments(split_pdus(pdus, max_pdu), COMMAND, over)
    # A command PDV exactly filling the PDU is not split.
    pdus = list(fragment(CONTEXT, COMMAND, None, 6 + len(COMMAND)))
    assert len(pdus) == 1
    pdus = list(fragment(CONTEXT, COMMAND, None, 5 + len(COMMAND)))
    assert len(pdus) == 2
    check_fragments(split_pdus(pdus, 5 + len(COMMAND)), COMMAND, None)


@pytest.mark.parametrize("max_pdu", [1, 2, 5, 6])
def test_fragment_max_pdu_too_small(max_pdu: int) -> None:
    with pytest.raises(ValueError):
        list(fragment(CONTEXT, COMMAND, b"1234", max_pdu))


@settings(max_examples=150, deadline=None)
@given(
    max_pdu=st.one_of(st.just(0), st.integers(7, 600)),
    command_size=st.integers(1, 300),
    data_size=st.one_of(st.none(), st.integers(0, 2000)),
)
def test_fragment_property(max_pdu: int, command_size: int, data_size: int | None) -> None:
    command = payload(command_size)[::-1]
    dataset = None if data_size is None else payload(data_size)
    pdus = list(fragment(CONTEXT, command, dataset, max_pdu))
    check_fragments(split_pdus(pdus, max_pdu), command, dataset)


@settings(max_examples=150, deadline=None)
@given(
    max_pdu=st.one_of(st.just(0), st.integers(7, 600)),
    command_size=st.integers(1, 300),
    data_size=st.one_of(st.none(), st.integers(0, 2000)),
)
def test_fragment_parts_join_to_fragment(
    max_pdu: int, command_size: int, data_size: int | None
) -> None:
    """The pieces to join make the same bytes as fragment()'s PDUs, each
    data set fragment a view of the data set itself (not a copy)."""
    command = payload(command_size)[::-1]
    dataset = None if data_size is None else payload(data_size)
    pdus = list(fragment(CONTEXT, command, dataset, max_pdu))
    parts, ends = fragment_parts(CONTEXT, command, dataset, max_pdu)
    joined = b"".join(parts)
    assert joined == b"".join(pdus)
    starts = [0, *ends[:-1]]
    assert [joined[a:b] for a, b in zip(starts, ends, strict=True)] == pdus
    if len(pdus) > 1 and dataset:
        views = [p for p in parts if isinstance(p, memoryview)]
        assert any(v.obj is dataset for v in views)


@pytest.mark.parametrize("max_pdu", [1, 2, 5, 6])
def test_fragment_parts_max_pdu_too_small(max_pdu: int) -> None:
    with pytest.raises(ValueError, match="leaves no room"):
        fragment_parts(CONTEXT, COMMAND, b"1234", max_pdu)


# ---------------------------------------------------------------------------
# 6. Reassembler


def pdvs_of(context_id: int, command: bytes, dataset: bytes | None, max_pdu: int) -> list[PDV]:
    out: list[PDV] = []
    for raw in fragment(context_id, command, dataset, max_pdu):
        pdu = decode_pdu(raw)
        assert isinstance(pdu, PDataTF)
        out.extend(pdu.pdvs)
    return out


def feed_all(r: Reassembler, pdvs: list[PDV]) -> list[Message]:
    out = []
    for pdv in pdvs:
        msg = r.feed(pdv)
        if msg is not None:
            out.append(msg)
    return out


def cmd_pdv(data: bytes, *, last: bool = True, context_id: int = 1) -> PDV:
    return PDV(context_id=context_id, is_command=True, is_last=last, data=data)


def data_pdv(data: bytes, *, last: bool = True, context_id: int = 1) -> PDV:
    return PDV(context_id=context_id, is_command=False, is_last=last, data=data)


@pytest.mark.parametrize("max_pdu", [0, 8, 64, 6 + len(COMMAND), 4096, 16383])
@pytest.mark.parametrize("size", [None, 0, 1, 100, 5000, 20_000])
def test_reassemble_fragments(max_pdu: int, size: int | None) -> None:
    dataset = None if size is None else payload(size)
    fields = dict(REPRESENTATIVE["C-STORE-RQ"])
    if dataset is None:
        fields["CommandDataSetType"] = NO_DATASET
    command = encode_command(fields)
    r = Reassembler({1, CONTEXT})
    pdvs = pdvs_of(CONTEXT, command, dataset, max_pdu)
    messages = []
    for i, pdv in enumerate(pdvs):
        msg = r.feed(pdv)
        if msg is not None:
            messages.append(msg)
            assert i == len(pdvs) - 1
        else:
            assert r.in_progress
    assert messages == [
        Message(
            context_id=CONTEXT,
            command=decode_command(command),
            data=dataset,
            raw_command=command,
        )
    ]
    assert not r.in_progress


def test_multi_fragment_command() -> None:
    command = encode_command(REPRESENTATIVE["C-MOVE-RSP"])
    pieces = [command[i : i + 10] for i in range(0, len(command), 10)]
    r = Reassembler([1])
    for piece in pieces[:-1]:
        assert r.feed(cmd_pdv(piece, last=False)) is None
        assert r.in_progress
    assert r.feed(cmd_pdv(pieces[-1])) is None  # a data set follows
    assert r.in_progress
    assert r.feed(data_pdv(b"ab", last=False)) is None
    assert r.in_progress
    msg = r.feed(data_pdv(b"cd"))
    assert msg is not None
    assert msg.command == decode_command(command)
    assert msg.raw_command == command
    assert msg.data == b"abcd"
    assert msg.name == "C-MOVE-RSP"
    assert not r.in_progress


def test_two_consecutive_messages() -> None:
    first = encode_command(REPRESENTATIVE["C-FIND-RQ"])
    second = encode_command(REPRESENTATIVE["C-ECHO-RQ"])
    third = encode_command(REPRESENTATIVE["C-FIND-RSP"])
    r = Reassembler(frozenset({1, 5}))
    pdvs = (
        pdvs_of(5, first, b"query", 0)
        + pdvs_of(1, second, None, 32)
        + pdvs_of(5, third, payload(300), 100)
    )
    messages = feed_all(r, pdvs)
    assert [(m.context_id, m.name, m.data) for m in messages] == [
        (5, "C-FIND-RQ", b"query"),
        (1, "C-ECHO-RQ", None),
        (5, "C-FIND-RSP", payload(300)),
    ]
    assert not r.in_progress


def test_in_progress_semantics() -> None:
    r = Reassembler({1})
    assert not r.in_progress
    # A command without a data set completes at once.
    assert r.feed(cmd_pdv(ECHO_RQ_GOLDEN)) is not None
    assert not r.in_progress
    # A partial command.
    assert r.feed(cmd_pdv(ECHO_RQ_GOLDEN[:20], last=False)) is None
    assert r.in_progress
    assert r.feed(cmd_pdv(ECHO_RQ_GOLDEN[20:])) is not None
    assert not r.in_progress
    # A complete command announcing a data set: still in progress.
    assert r.feed(cmd_pdv(MOVE_RQ_GOLDEN)) is None
    assert r.in_progress
    assert r.feed(data_pdv(b"", last=False)) is None
    assert r.in_progress
    msg = r.feed(data_pdv(b"xy"))
    assert msg is not None and msg.data == b"xy"
    assert not r.in_progress


def assert_pdu_error(exc: pytest.ExceptionInfo[PDUError], reason: int) -> None:
    assert exc.value.source == SERVICE_PROVIDER
    assert exc.value.reason == reason


def test_pdv_on_a_context_not_accepted() -> None:
    r = Reassembler({1, 3})
    with pytest.raises(PDUError) as exc:
        r.feed(cmd_pdv(ECHO_RQ_GOLDEN, context_id=5))
    assert_pdu_error(exc, INVALID_PARAMETER_VALUE)
    # Also for a data fragment of a message in progress.
    r = Reassembler({1, 3})
    r.feed(cmd_pdv(MOVE_RQ_GOLDEN))
    with pytest.raises(PDUError) as exc:
        r.feed(data_pdv(b"ab", context_id=7))
    assert_pdu_error(exc, INVALID_PARAMETER_VALUE)


def test_data_fragment_first() -> None:
    r = Reassembler({1})
    with pytest.raises(PDUError) as exc:
        r.feed(data_pdv(b"ab"))
    assert_pdu_error(exc, UNEXPECTED_PARAMETER)


def test_data_fragment_after_partial_command() -> None:
    r = Reassembler({1})
    r.feed(cmd_pdv(MOVE_RQ_GOLDEN[:10], last=False))
    with pytest.raises(PDUError) as exc:
        r.feed(data_pdv(b"ab"))
    assert_pdu_error(exc, UNEXPECTED_PARAMETER)


def test_command_fragment_while_data_set_in_progress() -> None:
    for started in (False, True):
        r = Reassembler({1})
        r.feed(cmd_pdv(MOVE_RQ_GOLDEN))
        if started:
            r.feed(data_pdv(b"ab", last=False))
        with pytest.raises(PDUError) as exc:
            r.feed(cmd_pdv(ECHO_RQ_GOLDEN))
        assert_pdu_error(exc, UNEXPECTED_PARAMETER)


def test_data_fragment_on_another_context() -> None:
    for started in (False, True):
        r = Reassembler({1, 3})
        r.feed(cmd_pdv(MOVE_RQ_GOLDEN, context_id=1))
        if started:
            r.feed(data_pdv(b"ab", last=False, context_id=1))
        with pytest.raises(PDUError) as exc:
            r.feed(data_pdv(b"cd", context_id=3))
        assert_pdu_error(exc, UNEXPECTED_PARAMETER)


def test_command_fragment_on_another_context() -> None:
    r = Reassembler({1, 3})
    r.feed(cmd_pdv(ECHO_RQ_GOLDEN[:20], last=False, context_id=1))
    with pytest.raises(PDUError) as exc:
        r.feed(cmd_pdv(ECHO_RQ_GOLDEN[20:], context_id=3))
    assert_pdu_error(exc, UNEXPECTED_PARAMETER)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x00\x00", id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(ECHO_RQ_GOLDEN[:-1], id="overrun"),
        pytest.param(ECHO_RQ_GOLDEN + struct.pack("<HHL", 8, 0x16, 0), id="group-0008"),
        pytest.param(with_group_length(element(0x0110, b"\x01\x00")), id="no-command-field"),
        pytest.param(with_group_length(element(0x0100, b"\x30\x00\x00")), id="odd-US"),
    ],
)
def test_malformed_command_set(raw: bytes) -> None:
    r = Reassembler({1})
    with pytest.raises(PDUError) as exc:
        r.feed(cmd_pdv(raw))
    assert_pdu_error(exc, INVALID_PARAMETER_VALUE)


@pytest.mark.parametrize(
    ("elem", "value"),
    [
        (0x0800, b"\x01\x01\x01\x01"),
        (0x0800, b""),
        (0x0100, b"\x30\x00\x01\x00"),
        (0x0100, b""),
    ],
)
def test_command_set_with_vm_other_than_one(elem: int, value: bytes) -> None:
    body = {0x0100: b"\x30\x00", 0x0110: b"\x01\x00", 0x0800: b"\x01\x01"}
    body[elem] = value
    raw = with_group_length(b"".join(element(e, v) for e, v in sorted(body.items())))
    r = Reassembler({1})
    with pytest.raises(PDUError) as exc:
        r.feed(cmd_pdv(raw))
    assert_pdu_error(exc, INVALID_PARAMETER_VALUE)


def test_data_fragment_after_a_command_without_data_set() -> None:
    r = Reassembler({1})
    msg = r.feed(cmd_pdv(ECHO_RQ_GOLDEN))
    assert msg is not None and not msg.has_dataset and msg.data is None
    with pytest.raises(PDUError) as exc:
        r.feed(data_pdv(b"\x08\x00\x18\x00\x00\x00\x00\x00"))
    assert_pdu_error(exc, UNEXPECTED_PARAMETER)


def test_any_data_set_type_other_than_0101_announces_a_data_set() -> None:
    # PS3.7 E.1: 0x0101 means no data set; any other value, one follows.
    for value in (0x0000, 0x0001, 0x0102, 0xFEFE):
        raw = encode_command({**ECHO_RQ_FIELDS, "CommandDataSetType": value})
        r = Reassembler({1})
        assert r.feed(cmd_pdv(raw)) is None
        assert r.in_progress
        msg = r.feed(data_pdv(b"zz"))
        assert msg is not None and msg.has_dataset and msg.data == b"zz"


def test_reassembler_copies_memoryview_payloads() -> None:
    # PDVs from decode_pdu hold views of the receive buffer; the message must
    # not change when that buffer is reused.
    buf = bytearray(b"".join(fragment(1, MOVE_RQ_GOLDEN, b"abcdef", 0)))
    pdu = decode_pdu(buf)
    assert isinstance(pdu, PDataTF)
    r = Reassembler({1})
    msgs = feed_all(r, list(pdu.pdvs))
    buf[:] = b"\x00" * len(buf)
    (msg,) = msgs
    assert msg.data == b"abcdef"
    assert msg.raw_command == MOVE_RQ_GOLDEN
    assert msg.command == decode_command(MOVE_RQ_GOLDEN)


def reassembler_state(r: Reassembler) -> dict[str, Any]:
    """Everything a Reassembler holds, with buffers as bytes (for comparing two)."""
    state: dict[str, Any] = {}
    for name in Reassembler.__slots__:
        value = getattr(r, name)
        if isinstance(value, list):
            value = [bytes(part) for part in value]
        state[name] = value
    return state


def general_feed(r: Reassembler, body: bytes) -> tuple[str, list[Message]]:
    """What the shell does without the fast path: split the PDU, then feed
    each PDV; ``('malformed', ...)`` or ``('violation', ...)`` on a PDUError."""
    try:
        items = split_p_data(memoryview(body))
    except PDUError:
        return "malformed", []
    out = []
    for context_id, mch, data in items:
        try:
            msg = r.feed_item(context_id, mch, data)
        except PDUError:
            return "violation", out
        if msg is not None:
            out.append(msg)
    return "ok", out


def pdv_item(context_id: int, mch: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, mch) + data


_PLAIN_COMMANDS = [
    encode_command(REPRESENTATIVE["C-STORE-RQ"]),
    encode_command(REPRESENTATIVE["C-STORE-RSP"]),
    encode_command(REPRESENTATIVE["C-ECHO-RQ"]),
    encode_store_request(7, CT_IMAGE, INSTANCE, 2),
    b"\x00\x00\x00\x00\x04\x00",  # a broken command set
]


@st.composite
def pdv_items(draw: st.DrawFn, mch: int | None = None, context_id: int | None = None) -> bytes:
    """One PDV item: a command set or data bytes, under any context and header."""
    if context_id is None:
        context_id = draw(st.sampled_from([1, 1, 1, 3, 5]))
    if mch is None:
        mch = draw(st.sampled_from([0, 1, 2, 3, 0x07, 0x82]))
    if mch & 1:
        data = draw(st.sampled_from(_PLAIN_COMMANDS))
        cut = draw(st.sampled_from([None, None, None, 4, 11]))
        data = data if cut is None else data[:cut]
    else:
        data = draw(st.binary(max_size=40))
    return pdv_item(context_id, mch, data)


@st.composite
def p_data_bodies(draw: st.DrawFn) -> bytes:
    """A P-DATA-TF body: mostly the shapes peers send, sometimes damaged."""
    shape = draw(st.sampled_from(["command", "message", "fragment", "last", "any"]))
    cx = draw(st.sampled_from([1, 1, 1, 3, 5]))
    if shape == "command":
        items = [draw(pdv_items(3, cx))]
    elif shape == "message":
        items = [draw(pdv_items(3, cx)), draw(pdv_items(2, draw(st.sampled_from([cx, cx, 3]))))]
    elif shape in ("fragment", "last"):
        items = [draw(pdv_items(0 if shape == "fragment" else 2, cx))]
    else:
        items = draw(st.lists(pdv_items(), min_size=1, max_size=3))
    body = b"".join(items)
    damage = draw(st.sampled_from([None, None, None, None, "cut", "pad", "length"]))
    if damage == "cut":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif damage == "pad":
        body += b"\x00" * draw(st.integers(1, 7))
    elif damage == "length":
        body = struct.pack(">L", draw(st.integers(0, 0xFFFFFFFF))) + body[4:]
    return body


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(p_data_bodies(), max_size=3),
    body=p_data_bodies(),
    threshold=st.sampled_from([0, 0, 10, 30, 100]),
)
def test_feed_plain_is_split_and_feed_item_or_nothing(
    before: list[bytes], body: bytes, threshold: int
) -> None:
    # From any state the PDUs before left (a message half received, a data
    # set spilling...), a body feed_plain takes gives what the general path
    # gives, message and state alike; one it declines leaves the state as it
    # was, for the general path to report any problem.
    plain, general = Reassembler({1, 3}, threshold), Reassembler({1, 3}, threshold)
    for earlier in before:
        if general_feed(general, earlier)[0] != "ok":
            # That association would be aborted: go on with a new one.
            plain, general = Reassembler({1, 3}, threshold), Reassembler({1, 3}, threshold)
            continue
        general_feed(plain, earlier)
        plain.spilled, general.spilled = [], []  # what the shell drains after each PDU
    state = reassembler_state(plain)
    taken, msg = plain.feed_plain(memoryview(body))
    if not taken:
        assert msg is None
        assert reassembler_state(plain) == state
        return
    outcome, messages = general_feed(general, body)
    assert outcome == "ok"
    assert messages == ([] if msg is None else [msg])
    if msg is not None:
        assert msg.data_size == messages[0].data_size
    assert reassembler_state(plain) == reassembler_state(general)


def test_feed_plain_takes_the_shapes_peers_send() -> None:
    # The shapes the fast path is for are taken, not declined.
    command = encode_store_request(7, CT_IMAGE, INSTANCE, 2)
    r = Reassembler({1})
    # a whole message in one PDU (aiodicom, small data sets)
    taken, msg = r.feed_plain(memoryview(pdv_item(1, 3, command) + pdv_item(1, 2, b"abcd")))
    assert taken and msg is not None and msg.data == b"abcd" and msg.data_size == 4
    # the command alone, then the data set in fragments (dcmtk, pynetdicom, large data sets)
    assert r.feed_plain(memoryview(pdv_item(1, 3, command))) == (True, None)
    assert r.feed_plain(memoryview(pdv_item(1, 0, b"ab"))) == (True, None)
    taken, msg = r.feed_plain(memoryview(pdv_item(1, 2, b"cd")))
    assert taken and msg is not None and msg.data == b"abcd"
    # a response without a data set
    rsp = encode_command(REPRESENTATIVE["C-STORE-RSP"])
    taken, msg = r.feed_plain(memoryview(pdv_item(1, 3, rsp)))
    assert taken and msg is not None and msg.raw_command == rsp
    # declined: what must spill, and a data set the command does not announce
    spilling = Reassembler({1}, spool_threshold=3)
    body = memoryview(pdv_item(1, 3, command) + pdv_item(1, 2, b"abcd"))
    assert spilling.feed_plain(body) == (False, None)
    assert r.feed_plain(memoryview(pdv_item(1, 3, rsp) + pdv_item(1, 2, b"ab"))) == (False, None)


# ---------------------------------------------------------------------------
# The fast status response encoder


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    command_field=st.sampled_from([0x8001, 0x8030, 0x8010, 0x8020, 0x8021]),
    message_id=st.integers(0, 0xFFFF),
    sop_class=st.from_regex(r"1\.2(\.[1-9][0-9]{0,5}){1,12}", fullmatch=True),
    status=st.integers(0, 0xFFFF),
    sop_instance=st.none() | st.from_regex(r"1\.2(\.[1-9][0-9]{0,5}){1,12}", fullmatch=True),
)
def test_status_response_equals_encode_command(
    command_field: int, message_id: int, sop_class: str, status: int, sop_instance: str | None
) -> None:
    fields = {
        "CommandField": command_field,
        "MessageIDBeingRespondedTo": message_id,
        "AffectedSOPClassUID": sop_class,
        "CommandDataSetType": NO_DATASET,
        "Status": status,
        "AffectedSOPInstanceUID": sop_instance,
    }
    fast = encode_status_response(command_field, message_id, sop_class, status, sop_instance)
    assert fast == encode_command(fields)
    assert decode_command(fast) == {k: v for k, v in fields.items() if v is not None} | {
        "CommandGroupLength": len(fast) - 12
    }


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    command_field=st.sampled_from([0x8100, 0x8110, 0x8120, 0x8130, 0x8140, 0x8150]),
    message_id=st.integers(0, 0xFFFF),
    sop_class=st.from_regex(r"1\.2(\.[1-9][0-9]{0,5}){1,12}", fullmatch=True),
    status=st.integers(0, 0xFFFF),
    sop_instance=st.none() | st.from_regex(r"1\.2(\.[1-9][0-9]{0,5}){1,12}", fullmatch=True),
    has_dataset=st.booleans(),
    type_id=st.none() | st.integers(0, 0xFFFF),
)
def test_n_status_response_equals_encode_command(
    command_field: int,
    message_id: int,
    sop_class: str,
    status: int,
    sop_instance: str | None,
    has_dataset: bool,
    type_id: int | None,
) -> None:
    """The fast encoder with a data set and an N-EVENT-REPORT/N-ACTION type ID."""
    type_keyword = {0x8100: "EventTypeID", 0x8130: "ActionTypeID"}.get(command_field)
    if type_keyword is None:
        type_id = None
    fields = {
        "CommandField": command_field,
        "MessageIDBeingRespondedTo": message_id,
        "AffectedSOPClassUID": sop_class,
        "CommandDataSetType": DATASET_PRESENT if has_dataset else NO_DATASET,
        "Status": status,
        "AffectedSOPInstanceUID": sop_instance,
    }
    if type_keyword is not None:
        fields[type_keyword] = type_id
    fast = encode_status_response(
        command_field,
        message_id,
        sop_class,
        status,
        sop_instance,
        has_dataset=has_dataset,
        type_id=type_id,
    )
    assert fast == encode_command(fields)


@settings(max_examples=200)
@given(
    message_id=st.integers(0, 0xFFFF),
    sop_class=st.sampled_from([VERIFICATION, CT_IMAGE])
    | st.from_regex(r"1\.2(\.[1-9][0-9]{0,5}){1,12}", fullmatch=True),
)
def test_echo_request_equals_encode_command(message_id: int, sop_class: str) -> None:
    fields = {
        "CommandField": CommandField.C_ECHO_RQ,
        "MessageID": message_id,
        "AffectedSOPClassUID": sop_class,
        "CommandDataSetType": NO_DATASET,
    }
    fast = encode_echo_request(message_id, sop_class)
    assert fast == encode_command(fields)
    assert decode_command(fast) == fields | {"CommandGroupLength": len(fast) - 12}


@settings(max_examples=200)
@given(
    message_id=st.integers(0, 0xFFFF),
    sop_class=st.sampled_from([CT_IMAGE, VERIFICATION]),
    sop_instance=st.from_regex(r"1\.2(\.[1-9][0-9]{0,5}){1,12}", fullmatch=True),
    priority=st.sampled_from([0, 1, 2]),
)
def test_store_request_equals_encode_command(
    message_id: int, sop_class: str, sop_instance: str, priority: int
) -> None:
    fields = {
        "CommandField": CommandField.C_STORE_RQ,
        "MessageID": message_id,
        "AffectedSOPClassUID": sop_class,
        "Priority": priority,
        "CommandDataSetType": DATASET_PRESENT,  # what send_c_store's other path sends
        "AffectedSOPInstanceUID": sop_instance,
    }
    fast = encode_store_request(message_id, sop_class, sop_instance, priority)
    assert fast == encode_command(fields)
    assert decode_command(fast) == fields | {"CommandGroupLength": len(fast) - 12}


@settings(max_examples=200)
@given(
    message_id=st.integers(0, 0xFFFF),
    sop_instance=st.from_regex(r"1\.2(\.[1-9][0-9]{0,5}){1,12}", fullmatch=True),
    originator_aet=st.none() | st.from_regex(r"[A-Z0-9_]{0,16}", fullmatch=True),
    originator_id=st.none() | st.integers(0, 0xFFFF),
)
def test_store_request_with_move_originator_equals_encode_command(
    message_id: int, sop_instance: str, originator_aet: str | None, originator_id: int | None
) -> None:
    fields = {
        "CommandField": CommandField.C_STORE_RQ,
        "MessageID": message_id,
        "AffectedSOPClassUID": CT_IMAGE,
        "Priority": 2,
        "CommandDataSetType": DATASET_PRESENT,
        "AffectedSOPInstanceUID": sop_instance,
        "MoveOriginatorApplicationEntityTitle": originator_aet,
        "MoveOriginatorMessageID": originator_id,
    }
    fast = encode_store_request(
        message_id, CT_IMAGE, sop_instance, 2, originator_aet, originator_id
    )
    assert fast == encode_command(fields)
    present = {k: v for k, v in fields.items() if v is not None}
    assert decode_command(fast) == present | {"CommandGroupLength": len(fast) - 12}


@settings(max_examples=200)
@given(
    command_field=st.sampled_from([CommandField.C_GET_RSP, CommandField.C_MOVE_RSP]),
    message_id=st.integers(0, 0xFFFF),
    counts=st.tuples(*[st.integers(0, 0xFFFF)] * 4),
)
def test_pending_counts_equal_encode_command(
    command_field: int, message_id: int, counts: tuple[int, int, int, int]
) -> None:
    base = {
        "CommandField": command_field,
        "MessageIDBeingRespondedTo": message_id,
        "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.2.2.3",
        "CommandDataSetType": NO_DATASET,
        "Status": 0xFF00,
    }
    remaining, completed, failed, warning = counts
    fields = base | {
        "NumberOfCompletedSuboperations": completed,
        "NumberOfFailedSuboperations": failed,
        "NumberOfWarningSuboperations": warning,
        "NumberOfRemainingSuboperations": remaining,
    }
    head = pending_counts_head(base)
    fast = encode_pending_counts(head, remaining, completed, failed, warning)
    assert fast == encode_command(fields)
    assert decode_command(fast) == fields | {"CommandGroupLength": len(fast) - 12}


def test_command_dataset_elements_are_pydicoms_raw_elements() -> None:
    """Elements built with tuple.__new__ are ordinary RawDataElements, converted on access."""
    raw = encode_echo_request(7, CT_IMAGE)
    ds = command_dataset(raw)
    elem = ds._dict[BaseTag(0x00000002)]
    assert type(elem) is RawDataElement
    assert elem == RawDataElement(
        BaseTag(0x00000002), None, 26, elem.value, 20, True, True, True, False
    )
    assert ds.AffectedSOPClassUID == CT_IMAGE and ds.MessageID == 7
    assert ds[0x00000002].VR == "UI"


def test_status_element_from_template_is_an_ordinary_element() -> None:
    """The Status built from a template behaves as pydicom's own, also when changed."""
    raw = encode_status_response(0x8001, 3, "1.2.840.10008.5.1.4.1.1.2", 0xB000)
    ds = command_dataset(raw)
    elem = ds[0x00000900]
    assert elem == DataElement(0x00000900, "US", 0xB000)
    assert elem.VR == "US" and elem.value == 0xB000 and elem.keyword == "Status"
    ds.Status = 0x0000
    assert ds.Status == 0 and ds[0x00000900].value == 0
    assert command_dataset(raw).Status == 0xB000  # a new element each time


@given(
    st.integers(1, 255),
    st.binary(min_size=2, max_size=300),
    st.binary(max_size=3000),
    st.sampled_from([0, 4096, 16384]),
    st.booleans(),
)
def test_single_pdu_is_what_fragment_makes(
    context_id: int, command: bytes, data: bytes, max_pdu: int, view: bool
) -> None:
    """The one-PDU form the asyncio fast path writes is byte for byte the
    first (and only) PDU of the general fragmenter, from bytes or a view."""
    if max_pdu and len(command) + len(data) + 12 > max_pdu:
        return  # does not fit one PDU: the fast path does not take it
    dataset = memoryview(data) if view else data
    pdus = list(fragment(context_id, command, dataset, max_pdu))
    assert pdus == [single_pdu(context_id, command, dataset)]
    pdu = decode_pdu(pdus[0])
    assert isinstance(pdu, PDataTF)
    assert [(p.context_id, p.control_header, bytes(p.data)) for p in pdu.pdvs] == [
        (context_id, 0x03, command),
        (context_id, 0x02, data),
    ]


@given(
    st.integers(1, 255),
    st.binary(max_size=3000),
    st.integers(0, 50),
    st.sampled_from([7, 8, 9, 64, 4096]),
)
def test_file_fragments_are_what_data_fragments_makes_of_the_padded_data(
    context_id: int, data: bytes, start: int, max_pdu: int
) -> None:
    """The PDUs sendfile(2) sends, joined with the file's bytes they point at,
    are byte for byte the fragmenter's PDUs of the data set padded to even
    length (the pad byte in the last PDU, or alone when it is full)."""
    file = bytes(start) + data  # the data set starts ``start`` bytes in
    padded = data + b"\x00" * (len(data) % 2)
    got = [
        head + file[offset : offset + length] + trailer
        for head, offset, length, trailer in file_fragments(context_id, start, len(file), max_pdu)
    ]
    assert got == list(data_fragments(context_id, padded, max_pdu, last=True))
