"""PDU codec: golden bytes written from the standard's layouts, and round trips.

Every golden value below is written by hand from the field tables of PS3.8
section 9.3 (Tables 9-11 to 9-26), PS3.8 Annex D.1 and PS3.7 Annex D.3.3; none
of them was produced by calling :func:`aiodicom.pdu.encode`. Byte positions in
the comments are the 1-based "Item Bytes" of the standard's tables.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import UID

from aiodicom.pdu import (
    APPLICATION_CONTEXT_NAME,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUType,
    PresentationContextAC,
    PresentationContextRQ,
    check_header,
    decode,
    decode_pdu,
    encode,
    encode_p_data,
    summary,
)
from aiodicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownUserItem,
    UserIdentityNegotiation,
)

VERIFICATION = UID("1.2.840.10008.1.1")  # 17 characters
IMPLICIT_LE = UID("1.2.840.10008.1.2")  # 17 characters
EXPLICIT_LE = UID("1.2.840.10008.1.2.1")  # 19 characters
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")  # 25 characters
ENHANCED_CT = UID("1.2.840.10008.5.1.4.1.1.2.1")  # 27 characters
STORAGE_SERVICE = UID("1.2.840.10008.4.2")  # 17 characters
IMPL_UID = UID("1.2.3.4.5.6.7")  # 13 characters

# The fixed part shared by the A-ASSOCIATE-RQ and -AC golden PDUs after the
# 6-byte header: PS3.8 Table 9-11 (RQ) / Table 9-17 (AC), bytes 7-74.
FIXED_ANY_SCP_ECHOSCU = b"".join(
    [
        b"\x00\x01",  # 7-8   protocol-version: bit 0 set (version 1)
        b"\x00\x00",  # 9-10  reserved
        b"ANY-SCP         ",  # 11-26 called-AE-title, 16 chars, space padded
        b"ECHOSCU         ",  # 27-42 calling-AE-title, 16 chars, space padded
        b"\x00\x00\x00\x00\x00\x00\x00\x00",  # 43-74 reserved (32 bytes) ...
        b"\x00\x00\x00\x00\x00\x00\x00\x00",
        b"\x00\x00\x00\x00\x00\x00\x00\x00",
        b"\x00\x00\x00\x00\x00\x00\x00\x00",
    ]
)

# Application Context Item, PS3.8 Table 9-12.
APP_CONTEXT_ITEM = b"".join(
    [
        b"\x10",  # 1   item-type 10H
        b"\x00",  # 2   reserved
        b"\x00\x15",  # 3-4 item-length 21
        b"1.2.840.10008.3.1.1.1",  # 5-  application-context-name (PS3.7 A.2.1)
    ]
)

# User Information Item holding Maximum Length 16384 and the Implementation
# Class UID: PS3.8 Table 9-16, Table D.1-1; PS3.7 Table D.3-1.
USER_INFO_ITEM = b"".join(
    [
        b"\x50",  # 1   item-type 50H
        b"\x00",  # 2   reserved
        b"\x00\x19",  # 3-4 item-length 25 (8 + 17)
        # Maximum Length sub-item, Table D.1-1
        b"\x51",  # 1   item-type 51H
        b"\x00",  # 2   reserved
        b"\x00\x04",  # 3-4 item-length 4
        b"\x00\x00\x40\x00",  # 5-8 maximum-length-received 16384
        # Implementation Class UID sub-item, PS3.7 Table D.3-1
        b"\x52",  # 1   item-type 52H
        b"\x00",  # 2   reserved
        b"\x00\x0d",  # 3-4 item-length 13
        b"1.2.3.4.5.6.7",  # 5-  implementation-class-uid
    ]
)

USER_INFO = (
    MaximumLengthNotification(maximum_length_received=16384),
    ImplementationClassUIDNotification(implementation_class_uid=IMPL_UID),
)

GOLDEN_ASSOCIATE_RQ = b"".join(
    [
        # PS3.8 Table 9-11
        b"\x01",  # 1   PDU-type 01H
        b"\x00",  # 2   reserved
        b"\x00\x00\x00\xac",  # 3-6 PDU-length 172 = 68 + 25 + 50 + 29
        FIXED_ANY_SCP_ECHOSCU,  # 7-74
        APP_CONTEXT_ITEM,  # 75- variable items: 25 bytes
        # Presentation Context Item (RQ), Table 9-13: 50 bytes
        b"\x20",  # 1   item-type 20H
        b"\x00",  # 2   reserved
        b"\x00\x2e",  # 3-4 item-length 46 = 4 + 21 + 21
        b"\x01",  # 5   presentation-context-ID 1
        b"\x00",  # 6   reserved
        b"\x00",  # 7   reserved
        b"\x00",  # 8   reserved
        # Abstract Syntax Sub-Item, Table 9-14
        b"\x30",  # 1   item-type 30H
        b"\x00",  # 2   reserved
        b"\x00\x11",  # 3-4 item-length 17
        b"1.2.840.10008.1.1",  # 5-  abstract-syntax-name (Verification)
        # Transfer Syntax Sub-Item, Table 9-15
        b"\x40",  # 1   item-type 40H
        b"\x00",  # 2   reserved
        b"\x00\x11",  # 3-4 item-length 17
        b"1.2.840.10008.1.2",  # 5-  transfer-syntax-name (Implicit VR LE)
        USER_INFO_ITEM,  # 29 bytes
    ]
)

ASSOCIATE_RQ = AAssociateRQ(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(
        PresentationContextRQ(
            context_id=1, abstract_syntax=VERIFICATION, transfer_syntaxes=(IMPLICIT_LE,)
        ),
    ),
    user_information=USER_INFO,
)


def _ac_context(context_id: int, result: int) -> bytes:
    """A rejected Presentation Context Item (AC), Table 9-18, hand written."""
    return b"".join(
        [
            b"\x21",  # 1   item-type 21H
            b"\x00",  # 2   reserved
            b"\x00\x08",  # 3-4 item-length 8
            bytes([context_id]),  # 5   presentation-context-ID
            b"\x00",  # 6   reserved
            bytes([result]),  # 7   result/reason
            b"\x00",  # 8   reserved
            # Transfer Syntax Sub-Item, Table 9-19: not significant when the
            # result is not 0; aiodicom sends it empty.
            b"\x40\x00\x00\x00",
        ]
    )


GOLDEN_ASSOCIATE_AC = b"".join(
    [
        # PS3.8 Table 9-17
        b"\x02",  # 1   PDU-type 02H
        b"\x00",  # 2   reserved
        b"\x00\x00\x00\xc7",  # 3-6 PDU-length 199 = 68 + 25 + 29 + 4 * 12 + 29
        FIXED_ANY_SCP_ECHOSCU,  # 7-74 (titles returned as received)
        APP_CONTEXT_ITEM,
        # Presentation Context Item (AC), Table 9-18: accepted
        b"\x21",  # 1   item-type 21H
        b"\x00",  # 2   reserved
        b"\x00\x19",  # 3-4 item-length 25 = 4 + 21
        b"\x01",  # 5   presentation-context-ID 1
        b"\x00",  # 6   reserved
        b"\x00",  # 7   result/reason 0: acceptance
        b"\x00",  # 8   reserved
        b"\x40\x00\x00\x11",  # Transfer Syntax Sub-Item, Table 9-19, length 17
        b"1.2.840.10008.1.2",
        _ac_context(3, 1),  # user-rejection
        _ac_context(5, 2),  # no-reason (provider rejection)
        _ac_context(7, 3),  # abstract-syntax-not-supported
        _ac_context(9, 4),  # transfer-syntaxes-not-supported
        USER_INFO_ITEM,
    ]
)

ASSOCIATE_AC = AAssociateAC(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(
        PresentationContextAC(context_id=1, result=0, transfer_syntax=IMPLICIT_LE),
        PresentationContextAC(context_id=3, result=1),
        PresentationContextAC(context_id=5, result=2),
        PresentationContextAC(context_id=7, result=3),
        PresentationContextAC(context_id=9, result=4),
    ),
    user_information=USER_INFO,
)

# PS3.8 Table 9-21
GOLDEN_ASSOCIATE_RJ = b"".join(
    [
        b"\x03",  # 1   PDU-type 03H
        b"\x00",  # 2   reserved
        b"\x00\x00\x00\x04",  # 3-6 PDU-length 4
        b"\x00",  # 7   reserved
        b"\x01",  # 8   result: rejected-permanent
        b"\x01",  # 9   source: DICOM UL service-user
        b"\x07",  # 10  reason/diag.: called-AE-title-not-recognized
    ]
)

# PS3.8 Table 9-22 and Annex E.2: one PDV, a complete command.
GOLDEN_P_DATA_ONE = b"".join(
    [
        b"\x04",  # 1   PDU-type 04H
        b"\x00",  # 2   reserved
        b"\x00\x00\x00\x0a",  # 3-6 PDU-length 10
        # Presentation Data Value Item, Table 9-23
        b"\x00\x00\x00\x06",  # 1-4 item-length 6 (context ID + PDV data)
        b"\x01",  # 5   presentation-context-ID 1
        b"\x03",  # message control header: bit 0 command, bit 1 last
        b"\xde\xad\xbe\xef",  # the command fragment
    ]
)

# Two PDVs: a data set fragment that is not the last, then the last one.
GOLDEN_P_DATA_TWO = b"".join(
    [
        b"\x04",  # 1   PDU-type 04H
        b"\x00",  # 2   reserved
        b"\x00\x00\x00\x11",  # 3-6 PDU-length 17 = 8 + 9
        b"\x00\x00\x00\x04",  # item-length 4
        b"\x03",  # presentation-context-ID 3
        b"\x00",  # control header: data set, not last
        b"ab",
        b"\x00\x00\x00\x05",  # item-length 5
        b"\x03",  # presentation-context-ID 3
        b"\x02",  # control header: data set, last
        b"cde",
    ]
)

# PS3.8 Table 9-24
GOLDEN_RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# PS3.8 Table 9-25
GOLDEN_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# PS3.8 Table 9-26: bytes 7-8 reserved, 9 source, 10 reason/diag.
GOLDEN_ABORT_PROVIDER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
GOLDEN_ABORT_USER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"


GOLDEN_PDUS = [
    pytest.param(GOLDEN_ASSOCIATE_RQ, ASSOCIATE_RQ, id="A-ASSOCIATE-RQ"),
    pytest.param(GOLDEN_ASSOCIATE_AC, ASSOCIATE_AC, id="A-ASSOCIATE-AC"),
    pytest.param(
        GOLDEN_ASSOCIATE_RJ, AAssociateRJ(result=1, source=1, reason=7), id="A-ASSOCIATE-RJ"
    ),
    pytest.param(
        GOLDEN_P_DATA_ONE,
        PDataTF(pdvs=(PDV(context_id=1, is_command=True, is_last=True, data=b"\xde\xad\xbe\xef"),)),
        id="P-DATA-TF-one",
    ),
    pytest.param(
        GOLDEN_P_DATA_TWO,
        PDataTF(
            pdvs=(
                PDV(context_id=3, is_command=False, is_last=False, data=b"ab"),
                PDV(context_id=3, is_command=False, is_last=True, data=b"cde"),
            )
        ),
        id="P-DATA-TF-two",
    ),
    pytest.param(GOLDEN_RELEASE_RQ, AReleaseRQ(), id="A-RELEASE-RQ"),
    pytest.param(GOLDEN_RELEASE_RP, AReleaseRP(), id="A-RELEASE-RP"),
    pytest.param(GOLDEN_ABORT_PROVIDER, AAbort(source=2, reason=6), id="A-ABORT-provider"),
    pytest.param(GOLDEN_ABORT_USER, AAbort(), id="A-ABORT-user"),
]


def test_golden_lengths_are_self_consistent() -> None:
    """Sanity check of the hand-written goldens themselves."""
    for param in GOLDEN_PDUS:
        golden = param.values[0]
        (length,) = struct.unpack(">L", golden[2:6])
        assert length == len(golden) - 6, param.id
    assert len(FIXED_ANY_SCP_ECHOSCU) == 68


@pytest.mark.parametrize(("golden", "pdu"), GOLDEN_PDUS)
def test_encode_matches_golden(golden: bytes, pdu: object) -> None:
    assert encode(pdu) == golden  # type: ignore[arg-type]


@pytest.mark.parametrize(("golden", "pdu"), GOLDEN_PDUS)
def test_decode_matches_golden(golden: bytes, pdu: object) -> None:
    assert decode_pdu(golden) == pdu
    pdu_type, length = check_header(golden[:6], 262144)
    assert pdu_type == golden[0]
    assert length == len(golden) - 6
    assert decode(pdu_type, golden[6:]) == pdu


def test_p_data_control_header_bits() -> None:
    """PS3.8 E.2: bit 0 is command (1) / data set (0), bit 1 is last (1)."""
    cases = {(False, False): 0x00, (True, False): 0x01, (False, True): 0x02, (True, True): 0x03}
    for (is_command, is_last), mch in cases.items():
        pdv = PDV(context_id=5, is_command=is_command, is_last=is_last, data=b"x")
        assert pdv.control_header == mch
        wire = b"\x04\x00\x00\x00\x00\x07" + b"\x00\x00\x00\x03" + bytes([5, mch]) + b"x"
        assert encode(PDataTF(pdvs=(pdv,))) == wire
        assert encode_p_data(5, mch, b"x") == wire
        assert decode_pdu(wire) == PDataTF(pdvs=(pdv,))


def test_encode_p_data_accepts_memoryview_and_empty_fragment() -> None:
    assert encode_p_data(1, 2, memoryview(b"abc")) == (
        b"\x04\x00\x00\x00\x00\x09\x00\x00\x00\x05\x01\x02abc"
    )
    # An empty last fragment is a valid PDV (item-length 2).
    empty = b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x02"
    assert encode_p_data(1, 2, b"") == empty
    assert decode_pdu(empty) == PDataTF(pdvs=(PDV(context_id=1, is_command=False, is_last=True),))


def test_p_data_pdvs_are_views_of_the_body() -> None:
    body = bytearray(GOLDEN_P_DATA_TWO[6:])
    pdu = decode(PDUType.P_DATA_TF, body)
    assert isinstance(pdu, PDataTF)
    assert isinstance(pdu.pdvs[0].data, memoryview)
    body[6] = ord("z")  # the first PDV's first data byte
    assert bytes(pdu.pdvs[0].data) == b"zb"


def test_decode_accepts_bytes_bytearray_memoryview() -> None:
    for kind in (bytes, bytearray, memoryview):
        assert decode_pdu(kind(GOLDEN_ASSOCIATE_RQ)) == ASSOCIATE_RQ


# ---------------------------------------------------------------------------
# Decoding leniency the standard asks for


def test_reserved_fields_are_not_tested_on_receipt() -> None:
    """PS3.8 9.3.1: reserved fields "shall be sent with a value 00H but not tested"."""
    rq = bytearray(GOLDEN_ASSOCIATE_RQ)
    rq[1] = 0xFF  # PDU header reserved byte
    rq[8:10] = b"\xff\xff"  # bytes 9-10
    rq[42:74] = b"\xaa" * 32  # bytes 43-74
    rq[75] = 0xFF  # application context item reserved byte
    assert decode_pdu(bytes(rq)) == ASSOCIATE_RQ
    assert decode_pdu(b"\x05\xff\x00\x00\x00\x04\xff\xff\xff\xff") == AReleaseRQ()
    assert decode_pdu(b"\x06\x00\x00\x00\x00\x04\x01\x02\x03\x04") == AReleaseRP()
    assert decode_pdu(b"\x07\x00\x00\x00\x00\x04\xff\xff\x00\x00") == AAbort()
    assert decode_pdu(b"\x03\x00\x00\x00\x00\x04\xff\x02\x03\x01") == AAssociateRJ(
        result=2, source=3, reason=1
    )


def test_protocol_version_only_bit_0_matters_to_the_codec() -> None:
    rq = bytearray(GOLDEN_ASSOCIATE_RQ)
    rq[6:8] = b"\x00\x03"
    assert decode_pdu(bytes(rq)).protocol_version == 3  # type: ignore[union-attr]


def test_ae_titles_leading_and_trailing_spaces_not_significant() -> None:
    rq = bytearray(GOLDEN_ASSOCIATE_RQ)
    rq[10:26] = b"  ANY-SCP       "
    decoded = decode_pdu(bytes(rq))
    assert isinstance(decoded, AAssociateRQ)
    assert decoded.called_ae_title == "ANY-SCP"


def test_rejected_ac_context_transfer_syntax_is_not_tested() -> None:
    """PS3.8 Table 9-18: for result != 0 the transfer syntax is not significant."""
    item = (
        b"\x21\x00\x00\x0c"
        b"\x03\x00\x03\x00"
        b"\x40\x00\x00\x04"
        b"\xff\xfe\x00\x01"
    )  # garbage, not even ASCII
    body = FIXED_ANY_SCP_ECHOSCU + APP_CONTEXT_ITEM + item + USER_INFO_ITEM
    pdu = decode(PDUType.A_ASSOCIATE_AC, body)
    assert isinstance(pdu, AAssociateAC)
    assert pdu.presentation_contexts == (PresentationContextAC(context_id=3, result=3),)


def test_slightly_invalid_uids_from_the_peer_are_accepted_quietly() -> None:
    """A UID pydicom would warn about (leading zero component) decodes without a
    warning (pytest turns warnings into errors here) and unchanged."""
    odd = b"1.2.03"
    item = b"\x52\x00\x00\x06" + odd
    body = FIXED_ANY_SCP_ECHOSCU + APP_CONTEXT_ITEM + b"\x50\x00\x00\x0a" + item
    pdu = decode(PDUType.A_ASSOCIATE_RQ, body)
    assert isinstance(pdu, AAssociateRQ)
    assert pdu.user_information == (
        ImplementationClassUIDNotification(implementation_class_uid="1.2.03"),
    )


def test_multiple_transfer_syntaxes_keep_their_order() -> None:
    ctx = (
        b"\x20\x00\x00\x45"
        b"\x01\x00\x00\x00"
        b"\x30\x00\x00\x11"
        b"1.2.840.10008.1.1"
        b"\x40\x00\x00\x13"
        b"1.2.840.10008.1.2.1"
        b"\x40\x00\x00\x11"
        b"1.2.840.10008.1.2"
    )
    assert len(ctx) == 4 + 0x45
    body = FIXED_ANY_SCP_ECHOSCU + APP_CONTEXT_ITEM + ctx + USER_INFO_ITEM
    pdu = decode(PDUType.A_ASSOCIATE_RQ, body)
    assert isinstance(pdu, AAssociateRQ)
    (cx,) = pdu.presentation_contexts
    assert cx.transfer_syntaxes == (EXPLICIT_LE, IMPLICIT_LE)
    expected = AAssociateRQ(
        called_ae_title="ANY-SCP",
        calling_ae_title="ECHOSCU",
        presentation_contexts=(
            PresentationContextRQ(
                context_id=1,
                abstract_syntax=VERIFICATION,
                transfer_syntaxes=(EXPLICIT_LE, IMPLICIT_LE),
            ),
        ),
        user_information=USER_INFO,
    )
    assert encode(expected) == b"\x01\x00" + struct.pack(">L", len(body)) + body


# ---------------------------------------------------------------------------
# User Information sub-items, one golden each


def _rq_with_user_info(*sub_items: bytes) -> bytes:
    """The golden A-ASSOCIATE-RQ's fixed part and application context with a
    User Information item holding the given hand-written sub-items."""
    value = b"".join(sub_items)
    user = b"\x50\x00" + struct.pack(">H", len(value)) + value
    body = FIXED_ANY_SCP_ECHOSCU + APP_CONTEXT_ITEM + user
    return b"\x01\x00" + struct.pack(">L", len(body)) + body


SUB_ITEMS = [
    pytest.param(
        # PS3.8 Table D.1-1
        b"\x51\x00\x00\x04\x00\x01\x00\x00",  # maximum-length-received 65536
        MaximumLengthNotification(maximum_length_received=65536),
        id="0x51-max-length",
    ),
    pytest.param(
        b"\x51\x00\x00\x04\x00\x00\x00\x00",  # 0: no limit
        MaximumLengthNotification(maximum_length_received=0),
        id="0x51-unlimited",
    ),
    pytest.param(
        # PS3.7 Table D.3-1
        b"\x52\x00\x00\x0d1.2.3.4.5.6.7",
        ImplementationClassUIDNotification(implementation_class_uid=IMPL_UID),
        id="0x52-implementation-class-uid",
    ),
    pytest.param(
        # PS3.7 Table D.3-7: invoked (5-6), performed (7-8)
        b"\x53\x00\x00\x04\x00\x05\x00\x03",
        AsynchronousOperationsWindowNegotiation(
            maximum_number_operations_invoked=5, maximum_number_operations_performed=3
        ),
        id="0x53-async-ops-window",
    ),
    pytest.param(
        # PS3.7 Table D.3-9: UID-length (5-6), SOP class UID, SCU-role, SCP-role
        b"\x54\x00\x00\x1d\x00\x191.2.840.10008.5.1.4.1.1.2\x00\x01",
        SCP_SCU_RoleSelectionNegotiation(sop_class_uid=CT_IMAGE, scu_role=False, scp_role=True),
        id="0x54-role-selection",
    ),
    pytest.param(
        b"\x54\x00\x00\x1d\x00\x191.2.840.10008.5.1.4.1.1.2\x01\x01",
        SCP_SCU_RoleSelectionNegotiation(sop_class_uid=CT_IMAGE, scu_role=True, scp_role=True),
        id="0x54-role-selection-both",
    ),
    pytest.param(
        # PS3.7 Table D.3-3
        b"\x55\x00\x00\x08AIODICOM",
        ImplementationVersionNameNotification(implementation_version_name="AIODICOM"),
        id="0x55-implementation-version-name",
    ),
    pytest.param(
        # PS3.7 Table D.3-11: UID-length, SOP class UID, application information
        b"\x56\x00\x00\x1e\x00\x191.2.840.10008.5.1.4.1.1.2\x01\x00\x01",
        SOPClassExtendedNegotiation(
            sop_class_uid=CT_IMAGE, service_class_application_information=b"\x01\x00\x01"
        ),
        id="0x56-sop-class-extended",
    ),
    pytest.param(
        # PS3.7 Table D.3-12: byte 2 is the sub-item version (0); SOP class UID,
        # service class UID, related general SOP class identification (each
        # related UID itself length-prefixed, Table D.3-13).
        b"\x57\x00\x00\x4d"
        b"\x00\x19"
        b"1.2.840.10008.5.1.4.1.1.2"
        b"\x00\x11"
        b"1.2.840.10008.4.2"
        b"\x00\x1d"
        b"\x00\x1b"
        b"1.2.840.10008.5.1.4.1.1.2.1",
        SOPClassCommonExtendedNegotiation(
            sop_class_uid=CT_IMAGE,
            service_class_uid=STORAGE_SERVICE,
            related_general_sop_class_identification=[ENHANCED_CT],
        ),
        id="0x57-common-extended-one-related",
    ),
    pytest.param(
        b"\x57\x00\x00\x30\x00\x191.2.840.10008.5.1.4.1.1.2\x00\x111.2.840.10008.4.2\x00\x00",
        SOPClassCommonExtendedNegotiation(
            sop_class_uid=CT_IMAGE, service_class_uid=STORAGE_SERVICE
        ),
        id="0x57-common-extended-no-related",
    ),
    pytest.param(
        b"\x57\x00\x00\x50"
        b"\x00\x19"
        b"1.2.840.10008.5.1.4.1.1.2"
        b"\x00\x11"
        b"1.2.840.10008.4.2"
        b"\x00\x20"
        b"\x00\x09"
        b"1.2.3.4.5"
        b"\x00\x13"
        b"1.2.840.10008.1.2.1",
        SOPClassCommonExtendedNegotiation(
            sop_class_uid=CT_IMAGE,
            service_class_uid=STORAGE_SERVICE,
            related_general_sop_class_identification=[UID("1.2.3.4.5"), EXPLICIT_LE],
        ),
        id="0x57-common-extended-two-related",
    ),
    pytest.param(
        # PS3.7 Table D.3-14: type, positive-response-requested, primary-field
        # length and value, secondary-field length and value.
        b"\x58\x00\x00\x10\x02\x01\x00\x04user\x00\x06secret",
        UserIdentityNegotiation(
            user_identity_type=2,
            positive_response_requested=True,
            primary_field=b"user",
            secondary_field=b"secret",
        ),
        id="0x58-user-identity-rq-password",
    ),
    pytest.param(
        # Type 1 (username): the secondary-field-length is present and zero.
        b"\x58\x00\x00\x0a\x01\x00\x00\x04user\x00\x00",
        UserIdentityNegotiation(user_identity_type=1, primary_field=b"user"),
        id="0x58-user-identity-rq-username",
    ),
    pytest.param(
        # PS3.7 Table D.3-15: server-response-length, server-response
        b"\x59\x00\x00\x06\x00\x04tokn",
        UserIdentityNegotiation(server_response=b"tokn"),
        id="0x59-user-identity-ac",
    ),
    pytest.param(
        b"\x59\x00\x00\x02\x00\x00",
        UserIdentityNegotiation(server_response=b""),
        id="0x59-user-identity-ac-empty",
    ),
    pytest.param(
        # An unknown sub-item is kept as received (PS3.8 D.1).
        b"\x5f\x00\x00\x03\x01\x02\x03",
        UnknownUserItem(item_type=0x5F, data=b"\x01\x02\x03"),
        id="unknown-sub-item",
    ),
]


@pytest.mark.parametrize(("wire", "item"), SUB_ITEMS)
def test_user_information_sub_item_golden(wire: bytes, item: object) -> None:
    pdu = AAssociateRQ(
        called_ae_title="ANY-SCP",
        calling_ae_title="ECHOSCU",
        user_information=(item,),  # type: ignore[arg-type]
    )
    golden = _rq_with_user_info(wire)
    assert encode(pdu) == golden
    assert decode_pdu(golden) == pdu


def test_user_information_item_types() -> None:
    assert MaximumLengthNotification.item_type == 0x51
    assert ImplementationClassUIDNotification.item_type == 0x52
    assert AsynchronousOperationsWindowNegotiation.item_type == 0x53
    assert SCP_SCU_RoleSelectionNegotiation.item_type == 0x54
    assert ImplementationVersionNameNotification.item_type == 0x55
    assert SOPClassExtendedNegotiation.item_type == 0x56
    assert SOPClassCommonExtendedNegotiation.item_type == 0x57
    assert UserIdentityNegotiation(primary_field=b"u").item_type == 0x58
    assert UserIdentityNegotiation(server_response=b"").item_type == 0x59
    assert UnknownUserItem(item_type=0x77).item_type == 0x77


def test_all_sub_items_together_keep_their_order() -> None:
    wires = [p.values[0] for p in SUB_ITEMS]
    items = tuple(p.values[1] for p in SUB_ITEMS)
    golden = _rq_with_user_info(*wires)
    pdu = AAssociateRQ(
        called_ae_title="ANY-SCP", calling_ae_title="ECHOSCU", user_information=items
    )
    assert encode(pdu) == golden
    assert decode_pdu(golden) == pdu


def test_user_items_are_mutable_slotted_primitives() -> None:
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = b"u"
    item.secondary_field = b"p"
    with pytest.raises(AttributeError):
        item.secundary_field = b"typo"  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Encoder argument checking


@pytest.mark.parametrize(
    "item",
    [
        ImplementationClassUIDNotification(),
        ImplementationVersionNameNotification(),
        ImplementationVersionNameNotification(implementation_version_name="X" * 17),
        SCP_SCU_RoleSelectionNegotiation(scu_role=True),
        SOPClassExtendedNegotiation(),
        SOPClassCommonExtendedNegotiation(sop_class_uid=CT_IMAGE),
        UserIdentityNegotiation(user_identity_type=6, primary_field=b"x"),
        UserIdentityNegotiation(user_identity_type=1),
        UserIdentityNegotiation(user_identity_type=2, primary_field=b"user"),
    ],
    ids=repr,
)
def test_encoding_an_incomplete_user_item_is_a_value_error(item: object) -> None:
    pdu = AAssociateRQ(called_ae_title="A", calling_ae_title="B", user_information=(item,))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode(pdu)


def test_encoding_rejects_long_ae_title_and_missing_application_context() -> None:
    with pytest.raises(ValueError):
        encode(AAssociateRQ(called_ae_title="X" * 17, calling_ae_title="B"))
    with pytest.raises(ValueError):
        encode(AAssociateRQ(called_ae_title="A", calling_ae_title="B", application_context_name=""))  # type: ignore[arg-type]


def test_encoding_rejects_non_pdus_and_oversized_items() -> None:
    with pytest.raises(TypeError):
        encode(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode(
            AAssociateRQ(called_ae_title="A", calling_ae_title="B", user_information=(object(),))
        )  # type: ignore[arg-type]
    big = UnknownUserItem(item_type=0x70, data=b"\x00" * 0x10000)
    with pytest.raises(ValueError):
        encode(AAssociateRQ(called_ae_title="A", calling_ae_title="B", user_information=(big,)))


def test_defaults() -> None:
    rq = AAssociateRQ(called_ae_title="A", calling_ae_title="B")
    assert rq.protocol_version == 1
    assert rq.application_context_name == APPLICATION_CONTEXT_NAME == "1.2.840.10008.3.1.1.1"
    assert AAbort() == AAbort(source=0, reason=0)
    assert PDUType.A_ASSOCIATE_RQ == 1 and PDUType.A_ABORT == 7


def test_summary() -> None:
    text = summary(ASSOCIATE_RQ)
    assert text.startswith("A-ASSOCIATE-RQ")
    assert "'ANY-SCP'" in text and "'ECHOSCU'" in text and "contexts=1" in text
    assert "MaximumLengthNotification" in text
    assert summary(ASSOCIATE_AC).startswith("A-ASSOCIATE-AC")
    assert "contexts=5" in summary(ASSOCIATE_AC)
    pdata = decode_pdu(GOLDEN_P_DATA_TWO)
    assert summary(pdata) == "P-DATA-TF [ctx 3 data 2B] [ctx 3 data last 3B]"  # type: ignore[arg-type]
    assert summary(decode_pdu(GOLDEN_P_DATA_ONE)) == "P-DATA-TF [ctx 1 cmd last 4B]"  # type: ignore[arg-type]
    assert "AAbort" in summary(AAbort(source=2, reason=1))
    assert "AReleaseRQ" in summary(AReleaseRQ())


# ---------------------------------------------------------------------------
# An independent decoder: pynetdicom reads what we write


def test_pynetdicom_reads_our_associate_rq() -> None:
    import pynetdicom.pdu as pdus  # a test dependency: missing, this fails

    rq = pdus.A_ASSOCIATE_RQ()
    rq.decode(encode(ASSOCIATE_RQ))
    assert rq.called_ae_title == "ANY-SCP"
    assert rq.calling_ae_title == "ECHOSCU"
    assert rq.application_context_name == APPLICATION_CONTEXT_NAME
    (cx,) = rq.presentation_context
    assert cx.context_id == 1
    assert cx.abstract_syntax == VERIFICATION
    assert cx.transfer_syntax == [IMPLICIT_LE]


def test_pynetdicom_reads_our_associate_ac() -> None:
    import pynetdicom.pdu as pdus  # a test dependency: missing, this fails

    ac = pdus.A_ASSOCIATE_AC()
    ac.decode(encode(ASSOCIATE_AC))
    results = {cx.context_id: cx.result for cx in ac.presentation_context}
    assert results == {1: 0, 3: 1, 5: 2, 7: 3, 9: 4}
    accepted = next(cx for cx in ac.presentation_context if cx.context_id == 1)
    assert accepted.transfer_syntax == IMPLICIT_LE
    (max_length,) = (i for i in ac.user_information.user_data if i.item_type == 0x51)
    assert max_length.maximum_length_received == 16384


def test_we_read_pynetdicoms_associate_rq() -> None:
    import pynetdicom.pdu as pdus  # a test dependency: missing, this fails

    rq = pdus.A_ASSOCIATE_RQ()
    rq.decode(GOLDEN_ASSOCIATE_RQ)
    assert decode_pdu(rq.encode()) == ASSOCIATE_RQ


# ---------------------------------------------------------------------------
# Round trips with hypothesis

_AE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "\\")

ae_titles = st.text(alphabet=_AE_CHARS, min_size=1, max_size=16).map(str.strip).filter(bool)

uids = (
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=12)
    .map(lambda parts: "1.2." + ".".join(map(str, parts)))
    .filter(lambda s: len(s) <= 64)
    .map(UID)
)

context_ids = st.integers(min_value=0, max_value=127).map(lambda n: 2 * n + 1)
u8 = st.integers(min_value=0, max_value=255)
u16 = st.integers(min_value=0, max_value=0xFFFF)
small_bytes = st.binary(max_size=40)
nonempty_bytes = st.binary(min_size=1, max_size=40)

version_names = st.text(alphabet=_AE_CHARS, min_size=1, max_size=16).map(str.rstrip).filter(bool)

user_items = st.one_of(
    st.builds(MaximumLengthNotification, maximum_length_received=st.integers(0, 2**32 - 1)),
    st.builds(ImplementationClassUIDNotification, implementation_class_uid=uids),
    st.builds(ImplementationVersionNameNotification, implementation_version_name=version_names),
    st.builds(
        AsynchronousOperationsWindowNegotiation,
        maximum_number_operations_invoked=u16,
        maximum_number_operations_performed=u16,
    ),
    st.builds(
        SCP_SCU_RoleSelectionNegotiation,
        sop_class_uid=uids,
        scu_role=st.booleans(),
        scp_role=st.booleans(),
    ),
    st.builds(
        SOPClassExtendedNegotiation,
        sop_class_uid=uids,
        service_class_application_information=small_bytes,
    ),
    st.builds(
        SOPClassCommonExtendedNegotiation,
        sop_class_uid=uids,
        service_class_uid=uids,
        related_general_sop_class_identification=st.lists(uids, max_size=3),
    ),
    st.builds(
        UserIdentityNegotiation,
        user_identity_type=st.sampled_from([1, 3, 4, 5]),
        positive_response_requested=st.booleans(),
        primary_field=nonempty_bytes,
        secondary_field=st.none() | nonempty_bytes,
    ),
    st.builds(
        UserIdentityNegotiation,
        user_identity_type=st.just(2),
        positive_response_requested=st.booleans(),
        primary_field=nonempty_bytes,
        secondary_field=nonempty_bytes,
    ),
    st.builds(UserIdentityNegotiation, server_response=small_bytes),
    st.builds(
        UnknownUserItem,
        item_type=u8.filter(lambda t: not 0x51 <= t <= 0x59),
        data=small_bytes,
    ),
)

rq_contexts = st.builds(
    PresentationContextRQ,
    context_id=context_ids,
    abstract_syntax=uids,
    transfer_syntaxes=st.lists(uids, min_size=1, max_size=4).map(tuple),
)

ac_contexts = st.one_of(
    st.builds(
        PresentationContextAC, context_id=context_ids, result=st.just(0), transfer_syntax=uids
    ),
    st.builds(PresentationContextAC, context_id=context_ids, result=st.integers(1, 4)),
)

associate_rqs = st.builds(
    AAssociateRQ,
    protocol_version=u16,
    called_ae_title=ae_titles,
    calling_ae_title=ae_titles,
    application_context_name=st.just(APPLICATION_CONTEXT_NAME) | uids,
    presentation_contexts=st.lists(rq_contexts, max_size=4).map(tuple),
    user_information=st.lists(user_items, max_size=5).map(tuple),
)

associate_acs = st.builds(
    AAssociateAC,
    protocol_version=u16,
    called_ae_title=ae_titles,
    calling_ae_title=ae_titles,
    application_context_name=st.just(APPLICATION_CONTEXT_NAME) | uids,
    presentation_contexts=st.lists(ac_contexts, max_size=4).map(tuple),
    user_information=st.lists(user_items, max_size=5).map(tuple),
)

pdvs = st.builds(
    PDV,
    context_id=context_ids,
    is_command=st.booleans(),
    is_last=st.booleans(),
    data=st.binary(max_size=64),
)

all_pdus = st.one_of(
    associate_rqs,
    associate_acs,
    st.builds(AAssociateRJ, result=u8, source=u8, reason=u8),
    st.builds(PDataTF, pdvs=st.lists(pdvs, min_size=1, max_size=4).map(tuple)),
    st.just(AReleaseRQ()),
    st.just(AReleaseRP()),
    st.builds(AAbort, source=u8, reason=u8),
)

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(all_pdus)
def test_round_trip_any_pdu(pdu: object) -> None:
    wire = encode(pdu)  # type: ignore[arg-type]
    assert decode_pdu(wire) == pdu
    pdu_type, length = check_header(wire[:6], 0)
    assert length == len(wire) - 6
    assert decode(pdu_type, wire[6:]) == pdu
    # Encoding is deterministic and the decoded form re-encodes identically.
    assert encode(decode_pdu(wire)) == wire


@_SETTINGS
@given(user_items)
def test_round_trip_any_user_item(item: object) -> None:
    pdu = AAssociateRQ(called_ae_title="A", calling_ae_title="B", user_information=(item,))  # type: ignore[arg-type]
    decoded = decode_pdu(encode(pdu))
    assert isinstance(decoded, AAssociateRQ)
    assert decoded.user_information == (item,)


@_SETTINGS
@given(st.lists(pdvs, min_size=1, max_size=4))
def test_round_trip_p_data(pdv_list: list[PDV]) -> None:
    pdu = PDataTF(pdvs=tuple(pdv_list))
    wire = encode(pdu)
    assert decode_pdu(wire) == pdu
    if len(pdv_list) == 1:
        p = pdv_list[0]
        assert encode_p_data(p.context_id, p.control_header, p.data) == wire


def test_ac_titles_are_the_rq_fields_as_received() -> None:
    """A decoded PDU keeps its 32 AE title bytes (``titles``, not compared);
    an AC given them sends them as they are (PS3.8 Table 9-17), one without
    them pads its titles."""
    raw = bytearray(encode(ASSOCIATE_RQ))
    raw[10:42] = b" ANY-SCP        " + b"  ECHOSCU       "
    rq = decode_pdu(bytes(raw))
    assert isinstance(rq, AAssociateRQ)
    assert (rq.called_ae_title, rq.calling_ae_title) == ("ANY-SCP", "ECHOSCU")
    assert rq.titles == bytes(raw[10:42])
    assert rq == ASSOCIATE_RQ  # not part of equality
    echoed = replace(ASSOCIATE_AC, titles=rq.titles)
    assert encode(echoed)[10:42] == raw[10:42]
    assert encode(ASSOCIATE_AC)[10:42] == b"ANY-SCP         ECHOSCU         "
    again = decode_pdu(encode(echoed))
    assert isinstance(again, AAssociateAC) and again.titles == rq.titles


@pytest.mark.parametrize("title", ["", "   ", " " * 16])
def test_an_empty_ae_title_is_not_encoded(title: str) -> None:
    """16 spaces "shall not be used" (PS3.8 Tables 9-11 and 9-17)."""
    with pytest.raises(ValueError, match="empty or all spaces"):
        encode(replace(ASSOCIATE_RQ, called_ae_title=title))
    with pytest.raises(ValueError, match="empty or all spaces"):
        encode(replace(ASSOCIATE_AC, calling_ae_title=title))
