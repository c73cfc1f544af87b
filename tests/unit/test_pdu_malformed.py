"""Malformed PDUs: every violation is a PDUError with the A-ABORT reason of
PS3.8 Table 9-26 (1 unrecognized PDU, 5 unexpected PDU parameter, 6 invalid
PDU parameter value) and source 2 (service-provider), never another exception.
What the standard says to ignore (unknown item types, reserved bits) is ignored.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiodicom.errors import PDUError
from aiodicom.fsm import State, UpperLayer
from aiodicom.pdu import (
    MAX_ASSOCIATE_PDU,
    PDV,
    AAssociateAC,
    AAssociateRQ,
    PDataTF,
    PDUType,
    check_header,
    decode,
    decode_pdu,
    split_p_data,
)

UNRECOGNIZED_PDU = 1
UNEXPECTED_PARAMETER = 5
INVALID_PARAMETER_VALUE = 6

# Hand-written building blocks (PS3.8 Tables 9-11 to 9-19, D.1-1).
FIXED = (
    b"\x00\x01"  # protocol-version
    b"\x00\x00"  # reserved
    b"ANY-SCP         "  # called-AE-title
    b"ECHOSCU         " + b"\x00" * 32  # calling-AE-title  # reserved
)
APP = b"\x10\x00\x00\x151.2.840.10008.3.1.1.1"
ABSTRACT = b"\x30\x00\x00\x111.2.840.10008.1.1"
TS = b"\x40\x00\x00\x111.2.840.10008.1.2"
MAX_LEN = b"\x51\x00\x00\x04\x00\x00\x40\x00"
IMPL = b"\x52\x00\x00\x071.2.3.4"
CT = b"1.2.840.10008.5.1.4.1.1.2"  # 25 bytes
NON_ASCII_UID = "1.2.3.é".encode()  # 8 bytes, not ASCII


def item(item_type: int, value: bytes) -> bytes:
    return bytes([item_type, 0]) + struct.pack(">H", len(value)) + value


def ctx_rq(*subs: bytes, cid: int = 1) -> bytes:
    return item(0x20, bytes([cid, 0, 0, 0]) + b"".join(subs))


def ctx_ac(*subs: bytes, cid: int = 1, result: int = 0) -> bytes:
    return item(0x21, bytes([cid, 0, result, 0]) + b"".join(subs))


def user(*subs: bytes) -> bytes:
    return item(0x50, b"".join(subs))


def pdu(pdu_type: int, body: bytes) -> bytes:
    return bytes([pdu_type, 0]) + struct.pack(">L", len(body)) + body


def rq(*items: bytes) -> bytes:
    return pdu(1, FIXED + b"".join(items))


def ac(*items: bytes) -> bytes:
    return pdu(2, FIXED + b"".join(items))


def header(pdu_type: int, length: int) -> bytes:
    return bytes([pdu_type, 0]) + struct.pack(">L", length)


VALID_RQ = rq(APP, ctx_rq(ABSTRACT, TS), user(MAX_LEN, IMPL))
VALID_AC = ac(APP, ctx_ac(TS), ctx_ac(item(0x40, b""), cid=3, result=3), user(MAX_LEN, IMPL))


def assert_pdu_error(data: bytes, reason: int) -> PDUError:
    with pytest.raises(PDUError) as info:
        decode_pdu(data)
    assert info.value.reason == reason, str(info.value)
    assert info.value.source == 2
    return info.value


def test_the_building_blocks_are_valid() -> None:
    assert isinstance(decode_pdu(VALID_RQ), AAssociateRQ)
    assert isinstance(decode_pdu(VALID_AC), AAssociateAC)


# ---------------------------------------------------------------------------
# The PDU header


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x09, 0x10, 0x50, 0xFF])
def test_unknown_pdu_type_is_reason_1(pdu_type: int) -> None:
    with pytest.raises(PDUError) as info:
        check_header(header(pdu_type, 4), 262144)
    assert (info.value.source, info.value.reason) == (2, UNRECOGNIZED_PDU)
    with pytest.raises(PDUError) as info:
        decode(pdu_type, b"\x00\x00\x00\x00")
    assert (info.value.source, info.value.reason) == (2, UNRECOGNIZED_PDU)
    assert_pdu_error(pdu(pdu_type, b"\x00\x00\x00\x00"), UNRECOGNIZED_PDU)


@pytest.mark.parametrize("pdu_type", [1, 2, 3, 4, 5, 6, 7])
def test_length_0xffffffff_is_rejected_from_the_header_alone(pdu_type: int) -> None:
    # Only the 6 header bytes exist: the check must not need the body.
    with pytest.raises(PDUError) as info:
        check_header(header(pdu_type, 0xFFFFFFFF), max_pdu=262144)
    assert (info.value.source, info.value.reason) == (2, INVALID_PARAMETER_VALUE)
    assert_pdu_error(header(pdu_type, 0xFFFFFFFF), INVALID_PARAMETER_VALUE)


def test_p_data_length_limit_is_the_announced_maximum() -> None:
    assert check_header(header(4, 262144), max_pdu=262144) == (4, 262144)
    with pytest.raises(PDUError) as info:
        check_header(header(4, 262145), max_pdu=262144)
    assert info.value.reason == INVALID_PARAMETER_VALUE
    # max_pdu 0: no local limit.
    assert check_header(header(4, 0xFFFFFFFF), max_pdu=0) == (4, 0xFFFFFFFF)


def test_associate_length_limit() -> None:
    assert check_header(header(1, MAX_ASSOCIATE_PDU), max_pdu=16384) == (1, MAX_ASSOCIATE_PDU)
    for pdu_type in (1, 2):
        with pytest.raises(PDUError) as info:
            check_header(header(pdu_type, MAX_ASSOCIATE_PDU + 1), max_pdu=16384)
        assert info.value.reason == INVALID_PARAMETER_VALUE
        # Shorter than the 68 bytes of fixed fields.
        with pytest.raises(PDUError) as info:
            check_header(header(pdu_type, 67), max_pdu=0)
        assert info.value.reason == INVALID_PARAMETER_VALUE
        with pytest.raises(PDUError) as info:
            decode(pdu_type, FIXED[:67])
        assert info.value.reason == INVALID_PARAMETER_VALUE


@pytest.mark.parametrize("pdu_type", [3, 5, 6, 7])
@pytest.mark.parametrize("length", [0, 1, 3, 5, 6, 10, 0xFFFF])
def test_fixed_length_pdus_with_wrong_length(pdu_type: int, length: int) -> None:
    with pytest.raises(PDUError) as info:
        check_header(header(pdu_type, length), 0)
    assert (info.value.source, info.value.reason) == (2, INVALID_PARAMETER_VALUE)
    if length <= 10:
        assert_pdu_error(pdu(pdu_type, b"\x00" * length), INVALID_PARAMETER_VALUE)
        with pytest.raises(PDUError) as info:
            decode(pdu_type, b"\x00" * length)
        assert info.value.reason == INVALID_PARAMETER_VALUE


@pytest.mark.parametrize("length", [0, 1, 5])
def test_p_data_shorter_than_one_pdv_header(length: int) -> None:
    with pytest.raises(PDUError) as info:
        check_header(header(4, length), 0)
    assert info.value.reason == INVALID_PARAMETER_VALUE
    with pytest.raises(PDUError) as info:
        decode(4, b"\x00" * length)
    assert info.value.reason == INVALID_PARAMETER_VALUE


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x05\x00\x00\x00\x00",
        b"\x05\x00\x00\x00\x00\x04\x00\x00\x00",  # body one byte short
        b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00",  # one byte too many
        VALID_RQ[:-1],
        VALID_RQ + b"\x00",
    ],
    ids=["empty", "1-byte", "5-byte-header", "short-body", "long-body", "rq-short", "rq-long"],
)
def test_decode_pdu_length_mismatch(data: bytes) -> None:
    assert_pdu_error(data, INVALID_PARAMETER_VALUE)


# ---------------------------------------------------------------------------
# P-DATA-TF


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x00\x01\x03",  # PDV item-length 0
        b"\x00\x00\x00\x01\x01\x03",  # PDV item-length 1
        b"\x00\x00\x00\x08\x01\x03ab",  # item-length overruns the PDU
        b"\xff\xff\xff\xff\x01\x03ab",  # hugely
        b"\x00\x00\x00\x04\x01\x03ab\x00\x00\x00",  # truncated 2nd PDV header
        b"\x00\x00\x00\x04\x01\x03ab\x00\x00\x00\x05\x01\x02c",  # 2nd overruns
    ],
    ids=["len0", "len1", "overrun", "overrun-huge", "truncated-second", "second-overrun"],
)
def test_bad_pdv_item_length(body: bytes) -> None:
    assert_pdu_error(pdu(4, body), INVALID_PARAMETER_VALUE)


@pytest.mark.parametrize("mch", [0x04, 0x08, 0x10, 0x80, 0xFC, 0xFF, 0x07, 0x52])
def test_reserved_message_control_header_bits_are_not_checked(mch: int) -> None:
    """Bits 2-7 are "never checked by the receiver" (PS3.8 E.2): the PDV
    decodes, its command and last-fragment bits read from bits 0 and 1."""
    decoded = decode_pdu(pdu(4, b"\x00\x00\x00\x03\x01" + bytes([mch]) + b"x"))
    assert decoded == PDataTF(
        pdvs=(PDV(context_id=1, is_command=bool(mch & 1), is_last=bool(mch & 2), data=b"x"),)
    )
    assert split_p_data(memoryview(b"\x00\x00\x00\x03\x01" + bytes([mch]) + b"x")) == [
        (1, mch & 0x03, b"x")
    ]


# ---------------------------------------------------------------------------
# A-ASSOCIATE-RQ/AC items


MALFORMED_ASSOCIATE = [
    # Truncated items and lengths overrunning their parent.
    ("truncated-item-header", rq(APP, b"\x20\x00"), INVALID_PARAMETER_VALUE),
    ("truncated-item-header-3", rq(APP, b"\x50\x00\x00"), INVALID_PARAMETER_VALUE),
    ("app-context-overruns-pdu", rq(APP[:-3]), INVALID_PARAMETER_VALUE),
    ("item-length-ffff", rq(APP, b"\x50\x00\xff\xff" + MAX_LEN), INVALID_PARAMETER_VALUE),
    (
        "sub-item-overruns-context",
        rq(APP, ctx_rq(ABSTRACT, b"\x40\x00\x00\x201.2.840.10008.1.2"), user(MAX_LEN)),
        INVALID_PARAMETER_VALUE,
    ),
    (
        "sub-item-header-truncated-in-context",
        rq(APP, ctx_rq(ABSTRACT, TS, b"\x40\x00"), user(MAX_LEN)),
        INVALID_PARAMETER_VALUE,
    ),
    (
        "user-sub-item-overruns-user-info",
        rq(APP, ctx_rq(ABSTRACT, TS), user(b"\x51\x00\x00\x08\x00\x00\x40\x00")),
        INVALID_PARAMETER_VALUE,
    ),
    (
        "user-sub-item-header-truncated",
        rq(APP, ctx_rq(ABSTRACT, TS), user(MAX_LEN, b"\x52\x00")),
        INVALID_PARAMETER_VALUE,
    ),
    ("context-item-shorter-than-4", rq(APP, item(0x20, b"\x01\x00"), user(MAX_LEN)), 6),
    ("ac-context-item-shorter-than-4", ac(APP, item(0x21, b"\x01"), user(MAX_LEN)), 6),
    # Missing or empty mandatory parts.
    ("missing-application-context", rq(ctx_rq(ABSTRACT, TS), user(MAX_LEN)), 6),
    ("missing-application-context-ac", ac(ctx_ac(TS), user(MAX_LEN)), 6),
    ("empty-application-context", rq(item(0x10, b""), user(MAX_LEN)), 6),
    ("nul-application-context", rq(item(0x10, b"\x00\x00"), user(MAX_LEN)), 6),
    ("context-without-abstract-syntax", rq(APP, ctx_rq(TS), user(MAX_LEN)), 6),
    ("context-without-transfer-syntax", rq(APP, ctx_rq(ABSTRACT), user(MAX_LEN)), 6),
    ("context-empty", rq(APP, ctx_rq(), user(MAX_LEN)), 6),
    ("context-two-abstract-syntaxes", rq(APP, ctx_rq(ABSTRACT, ABSTRACT, TS), user(MAX_LEN)), 6),
    ("empty-abstract-syntax", rq(APP, ctx_rq(item(0x30, b""), TS), user(MAX_LEN)), 6),
    ("empty-transfer-syntax", rq(APP, ctx_rq(ABSTRACT, item(0x40, b"")), user(MAX_LEN)), 6),
    ("accepted-context-without-ts", ac(APP, ctx_ac(), user(MAX_LEN)), 6),
    ("accepted-context-empty-ts", ac(APP, ctx_ac(item(0x40, b"")), user(MAX_LEN)), 6),
    # Non-ASCII UIDs.
    ("non-ascii-application-context", rq(item(0x10, NON_ASCII_UID), user(MAX_LEN)), 6),
    (
        "non-ascii-abstract-syntax",
        rq(APP, ctx_rq(item(0x30, NON_ASCII_UID), TS), user(MAX_LEN)),
        6,
    ),
    (
        "non-ascii-transfer-syntax",
        rq(APP, ctx_rq(ABSTRACT, item(0x40, NON_ASCII_UID)), user(MAX_LEN)),
        6,
    ),
    (
        "non-ascii-accepted-transfer-syntax",
        ac(APP, ctx_ac(item(0x40, NON_ASCII_UID)), user(MAX_LEN)),
        6,
    ),
    ("non-ascii-implementation-class-uid", rq(APP, user(item(0x52, NON_ASCII_UID))), 6),
    (
        "non-ascii-role-selection-uid",
        rq(APP, user(item(0x54, b"\x00\x08" + NON_ASCII_UID + b"\x01\x00"))),
        6,
    ),
    (
        "non-ascii-extended-negotiation-uid",
        rq(APP, user(item(0x56, b"\x00\x08" + NON_ASCII_UID + b"\x01"))),
        6,
    ),
    (
        "non-ascii-related-general-sop-class",
        rq(
            APP,
            user(
                item(
                    0x57,
                    b"\x00\x19" + CT + b"\x00\x071.2.3.4\x00\x0a\x00\x08" + NON_ASCII_UID,
                )
            ),
        ),
        6,
    ),
    # Items of known types where they do not belong (reason 5, unexpected
    # parameter); items of unknown types are skipped (test_unknown_items_...).
    ("ac-context-item-in-rq", rq(APP, ctx_ac(TS), user(MAX_LEN)), 5),
    ("rq-context-item-in-ac", ac(APP, ctx_rq(ABSTRACT, TS), user(MAX_LEN)), 5),
    ("abstract-syntax-in-ac-context", ac(APP, ctx_ac(ABSTRACT, TS), user(MAX_LEN)), 5),
    ("user-item-in-rq-context", rq(APP, ctx_rq(ABSTRACT, TS, MAX_LEN), user(MAX_LEN)), 5),
    ("sub-item-at-the-top", rq(APP, TS, ctx_rq(ABSTRACT, TS), user(MAX_LEN)), 5),
    # Fixed-size user information sub-items of the wrong size.
    ("max-length-3-bytes", rq(APP, user(item(0x51, b"\x00\x40\x00"))), 6),
    ("max-length-5-bytes", rq(APP, user(item(0x51, b"\x00\x00\x40\x00\x00"))), 6),
    ("max-length-empty", rq(APP, user(item(0x51, b""))), 6),
    ("async-window-2-bytes", rq(APP, user(item(0x53, b"\x00\x01"))), 6),
    ("async-window-6-bytes", rq(APP, user(item(0x53, b"\x00\x01\x00\x01\x00\x00"))), 6),
    # Truncated variable-size user information sub-items.
    ("role-selection-no-roles", rq(APP, user(item(0x54, b"\x00\x19" + CT))), 6),
    ("role-selection-one-role", rq(APP, user(item(0x54, b"\x00\x19" + CT + b"\x01"))), 6),
    ("role-selection-uid-overruns", rq(APP, user(item(0x54, b"\x00\x30" + CT + b"\x01\x01"))), 6),
    ("role-selection-empty", rq(APP, user(item(0x54, b""))), 6),
    ("implementation-class-uid-empty", rq(APP, user(item(0x52, b""))), 6),
    ("extended-negotiation-empty", rq(APP, user(item(0x56, b""))), 6),
    ("common-extended-no-service-class", rq(APP, user(item(0x57, b"\x00\x19" + CT))), 6),
    (
        "common-extended-related-overruns",
        rq(APP, user(item(0x57, b"\x00\x19" + CT + b"\x00\x071.2.3.4\x00\x09\x00\x05"))),
        6,
    ),
    (
        "common-extended-related-uid-overruns",
        rq(
            APP,
            user(
                item(0x57, b"\x00\x19" + CT + b"\x00\x071.2.3.4\x00\x04\x00\x091."),
            ),
        ),
        6,
    ),
    ("user-identity-empty", rq(APP, user(item(0x58, b""))), 6),
    ("user-identity-no-primary-length", rq(APP, user(item(0x58, b"\x01\x00"))), 6),
    ("user-identity-primary-overruns", rq(APP, user(item(0x58, b"\x01\x00\x00\x09user"))), 6),
    (
        "user-identity-secondary-overruns",
        rq(APP, user(item(0x58, b"\x02\x00\x00\x04user\x00\x09pass"))),
        6,
    ),
    ("user-identity-ac-empty", ac(APP, user(item(0x59, b""))), 6),
    ("user-identity-ac-overruns", ac(APP, user(item(0x59, b"\x00\x05tok"))), 6),
]


@pytest.mark.parametrize(
    ("data", "reason"),
    [pytest.param(data, reason, id=name) for name, data, reason in MALFORMED_ASSOCIATE],
)
def test_malformed_associate(data: bytes, reason: int) -> None:
    assert_pdu_error(data, reason)
    # The same through check_header + decode, as the I/O shell does it.
    pdu_type, length = check_header(data[:6], 262144)
    with pytest.raises(PDUError) as info:
        decode(pdu_type, data[6 : 6 + length])
    assert (info.value.source, info.value.reason) == (2, reason)


def test_malformed_pdu_in_the_state_machine_is_evt19() -> None:
    """A body that does not decode makes receive_pdu an Evt19 (AA-8 in Sta6)."""
    ul = UpperLayer(requestor=True)
    ul.state = State.STA6
    data = {n: d for n, d, _ in MALFORMED_ASSOCIATE}["ac-context-item-in-rq"]
    effects = ul.receive_pdu(data[0], data[6:], now=0.0)
    assert ul.state is State.STA13
    abort = effects[0].pdu  # type: ignore[union-attr]
    assert (abort.source, abort.reason) == (2, UNEXPECTED_PARAMETER)


@pytest.mark.parametrize(
    ("with_unknown", "without"),
    [
        pytest.param(
            rq(APP, item(0x33, b"x"), ctx_rq(ABSTRACT, TS), item(0x60, b""), user(MAX_LEN)),
            rq(APP, ctx_rq(ABSTRACT, TS), user(MAX_LEN)),
            id="items-in-rq",
        ),
        pytest.param(
            ac(APP, item(0xFF, b"\x00" * 7), ctx_ac(TS), user(MAX_LEN)),
            ac(APP, ctx_ac(TS), user(MAX_LEN)),
            id="item-in-ac",
        ),
        pytest.param(
            rq(APP, ctx_rq(item(0x31, b""), ABSTRACT, TS, item(0x41, b"1.2")), user(MAX_LEN)),
            rq(APP, ctx_rq(ABSTRACT, TS), user(MAX_LEN)),
            id="sub-items-in-rq-context",
        ),
        pytest.param(
            ac(APP, ctx_ac(item(0x7F, b"zz"), TS), user(MAX_LEN)),
            ac(APP, ctx_ac(TS), user(MAX_LEN)),
            id="sub-item-in-ac-context",
        ),
    ],
)
def test_unknown_items_are_skipped(with_unknown: bytes, without: bytes) -> None:
    """ "Items of unrecognized types shall be ignored and skipped" (PS3.8 9.3.1)."""
    assert decode_pdu(with_unknown) == decode_pdu(without)


# ---------------------------------------------------------------------------
# Fuzzing: decode_pdu raises PDUError and nothing else

VALID_PDUS = [
    VALID_RQ,
    VALID_AC,
    rq(
        APP,
        ctx_rq(ABSTRACT, TS, TS, cid=3),
        user(
            MAX_LEN,
            IMPL,
            item(0x53, b"\x00\x01\x00\x01"),
            item(0x54, b"\x00\x19" + CT + b"\x01\x01"),
            item(0x55, b"AIODICOM"),
            item(0x56, b"\x00\x19" + CT + b"\x01\x02"),
            item(0x57, b"\x00\x19" + CT + b"\x00\x071.2.3.4\x00\x0b\x00\x091.2.3.4.5"),
            item(0x58, b"\x02\x01\x00\x04user\x00\x04pass"),
            item(0x7A, b"unknown"),
        ),
    ),
    ac(APP, ctx_ac(TS), user(MAX_LEN, item(0x59, b"\x00\x03tok"))),
    pdu(3, b"\x00\x01\x01\x01"),
    pdu(4, b"\x00\x00\x00\x04\x01\x03ab\x00\x00\x00\x02\x03\x00"),
    pdu(5, b"\x00\x00\x00\x00"),
    pdu(6, b"\x00\x00\x00\x00"),
    pdu(7, b"\x00\x00\x02\x06"),
]


def test_fuzz_corpus_is_valid() -> None:
    for data in VALID_PDUS:
        decode_pdu(data)


def _decode_everything(data: bytes) -> None:
    """Every entry point, each allowed to raise PDUError only."""
    try:
        decode_pdu(data)
    except PDUError as exc:
        assert exc.source == 2
        assert exc.reason in (1, 5, 6)
    try:
        decode_pdu(data, max_pdu=16384)
    except PDUError:
        pass
    if len(data) >= 6:
        try:
            check_header(data[:6], 262144)
        except PDUError:
            pass
        try:
            decode(data[0], data[6:])
        except PDUError as exc:
            assert exc.reason in (1, 5, 6)


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.binary(max_size=200))
@example(b"\x01\x00\x00\x00\x00\x44" + b"\xff" * 0x44)
@example(b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03")
def test_random_bytes_raise_only_pdu_error(data: bytes) -> None:
    _decode_everything(data)


@_FUZZ
@given(
    st.sampled_from([1, 2, 3, 4, 5, 6, 7, 0, 8, 0x10, 0xFF]),
    st.binary(max_size=300),
)
def test_random_bodies_with_consistent_header_raise_only_pdu_error(
    pdu_type: int, body: bytes
) -> None:
    if pdu_type in (1, 2):
        body = FIXED + body  # get past the fixed fields to the items
    _decode_everything(pdu(pdu_type, body))


@st.composite
def mutated_pdus(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID_PDUS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set16", "set32"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "set16" and len(data) >= pos + 2:
            data[pos : pos + 2] = draw(st.sampled_from([0, 1, 2, 3, 0x7FFF, 0xFFFF])).to_bytes(
                2, "big"
            )
        elif op == "set32" and len(data) >= pos + 4:
            data[pos : pos + 4] = draw(st.sampled_from([0, 1, 2, 5, 0xFFFFFFFF])).to_bytes(4, "big")
    if draw(st.booleans()) and len(data) >= 6:
        # Repair the PDU-length field so the body itself gets decoded.
        data[2:6] = struct.pack(">L", len(data) - 6)
    return bytes(data)


@_FUZZ
@given(mutated_pdus())
def test_mutated_pdus_raise_only_pdu_error(data: bytes) -> None:
    _decode_everything(data)


@_FUZZ
@given(
    mutated_pdus(), st.sampled_from([State.STA2, State.STA5, State.STA6, State.STA7, State.STA13])
)
def test_mutated_pdus_never_break_the_state_machine(data: bytes, state: State) -> None:
    """The shell's path: check_header, then receive_pdu; errors become Evt19."""
    ul = UpperLayer(requestor=state in (State.STA5, State.STA7))
    ul.state = state
    ul.request = decode_pdu(VALID_RQ)  # type: ignore[assignment]
    if len(data) < 6:
        return
    try:
        pdu_type, length = check_header(data[:6], 262144)
    except PDUError as exc:
        ul.receive_invalid(exc, now=1.0)
    else:
        ul.receive_pdu(pdu_type, data[6 : 6 + length], now=1.0)
    assert isinstance(ul.state, State)


def test_decoded_p_data_of_unknown_type_is_not_confused() -> None:
    assert decode(PDUType.P_DATA_TF, b"\x00\x00\x00\x02\x01\x00") == decode_pdu(
        pdu(4, b"\x00\x00\x00\x02\x01\x00")
    )
    assert isinstance(decode_pdu(pdu(4, b"\x00\x00\x00\x02\x01\x00")), PDataTF)


@pytest.mark.parametrize("field", ["called", "calling"])
def test_non_ascii_ae_title_in_associate_rq_is_invalid(field: str) -> None:
    """PS3.8 Table 9-11: AE titles are ISO 646 G0 characters. (The acceptor
    returns them in its A-ASSOCIATE-AC, which could not encode them.)"""
    fixed = bytearray(FIXED)
    start = 4 if field == "called" else 20
    fixed[start : start + 4] = "CAFÉ".encode("latin-1")
    assert_pdu_error(pdu(1, bytes(fixed) + APP + user(MAX_LEN)), INVALID_PARAMETER_VALUE)


def test_ae_titles_of_an_associate_ac_are_not_tested() -> None:
    """PS3.8 Table 9-17: returned as received, "not tested when received"."""
    fixed = bytearray(FIXED)
    fixed[4:8] = b"\xc9\xff\x00\x80"
    decoded = decode_pdu(pdu(2, bytes(fixed) + APP + user(MAX_LEN)))
    assert isinstance(decoded, AAssociateAC)
    assert decoded.called_ae_title.startswith("\xc9\xff")
