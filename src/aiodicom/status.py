"""DIMSE status codes: PS3.7 Annex C and the service classes of PS3.4.

Sans-IO and standard library only. The facts follow the standard and are
organised as pynetdicom's ``status`` module organises them, so that a status
means the same thing on both sides of an interop test:

* :func:`code_to_category` gives the status class of PS3.7 Annex C:
  ``"Success"`` (0000), ``"Pending"`` (FF00, FF01), ``"Cancel"`` (FE00),
  ``"Warning"`` (0001, 0107, 0116, Bxxx) or ``"Failure"`` (everything else:
  01xx, 02xx, Axxx, Cxxx and any unrecognised code).
* One table per service (``STORAGE_STATUS``, ``QR_FIND_STATUS``...) maps each
  code to ``(category, description)``: the service's own codes, the general
  codes of Annex C, and ranges such as A700-A7FF or C000-CFFF expanded to
  every code they cover. :data:`SERVICE_STATUS` holds them by service name.
* :func:`describe` and :func:`format_status` turn a code into text.
* :class:`Status` names the common codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import Final

__all__ = (
    "APPLICATION_EVENT_LOGGING_STATUS",
    "CANCEL",
    "CATEGORIES",
    "FAILURE",
    "GENERAL_STATUS",
    "MEDIA_CREATION_STATUS",
    "MODALITY_WORKLIST_STATUS",
    "NON_PATIENT_STATUS",
    "PENDING",
    "PRINT_STATUS",
    "PROCEDURE_STEP_STATUS",
    "QR_FIND_STATUS",
    "QR_GET_STATUS",
    "QR_MOVE_STATUS",
    "RELEVANT_PATIENT_STATUS",
    "RT_MACHINE_VERIFICATION_STATUS",
    "SERVICE_STATUS",
    "STORAGE_COMMITMENT_STATUS",
    "STORAGE_MANAGEMENT_STATUS",
    "STORAGE_STATUS",
    "SUBSTANCE_ADMINISTRATION_STATUS",
    "SUCCESS",
    "UPS_STATUS",
    "VERIFICATION_STATUS",
    "WARNING",
    "Status",
    "StatusTable",
    "code_to_category",
    "describe",
    "format_status",
    "is_final",
    "is_pending",
)

SUCCESS: Final = "Success"
PENDING: Final = "Pending"
CANCEL: Final = "Cancel"
WARNING: Final = "Warning"
FAILURE: Final = "Failure"
#: The five status classes of PS3.7 Annex C.
CATEGORIES: Final = (SUCCESS, PENDING, CANCEL, WARNING, FAILURE)

#: code -> (category, description)
StatusTable = dict[int, tuple[str, str]]


def code_to_category(code: int) -> str:
    """The PS3.7 Annex C status class of ``code``.

    Success 0000; Pending FF00, FF01; Cancel FE00; Warning 0001, 0107, 0116
    and Bxxx; Failure for the rest (01xx, 02xx, Axxx, Cxxx and codes that no
    part of the standard assigns, which a status user must not take for a
    success). Raises ValueError for a value that is not a 16-bit code.
    """
    if type(code) is not int and (not isinstance(code, int) or isinstance(code, bool)):
        raise ValueError(f"a status code is an integer, not {type(code).__name__}")
    if not 0 <= code <= 0xFFFF:
        raise ValueError(f"status code {code} is out of range 0x0000-0xFFFF")
    if code == 0x0000:
        return SUCCESS
    if code == 0xFF00 or code == 0xFF01:
        return PENDING
    if code == 0xFE00:
        return CANCEL
    if code == 0x0001 or code == 0x0107 or code == 0x0116 or 0xB000 <= code <= 0xBFFF:
        return WARNING
    return FAILURE


def is_pending(code: int) -> bool:
    """True for FF00 and FF01: more responses follow."""
    return code == 0xFF00 or code == 0xFF01


def is_final(code: int) -> bool:
    """True for every status that ends an operation (not Pending)."""
    return not is_pending(code)


def _table(
    items: Mapping[int, tuple[str, str]] | None = None,
    *,
    ranges: Iterable[tuple[int, int, str, str]] = (),
    general: bool = True,
) -> StatusTable:
    """Ranges first, then the specific codes, then (unless told) the general ones."""
    out: StatusTable = {}
    for first, last, category, text in ranges:
        for code in range(first, last + 1):
            out[code] = (category, text)
    if items:
        out.update(items)
    if general:
        out.update(GENERAL_STATUS)
    return out


# PS3.7 Annex C: the statuses of no particular service (C.1-C.5).
GENERAL_STATUS: Final[StatusTable] = {
    0x0000: (SUCCESS, "Success"),
    0x0105: (FAILURE, "No Such Attribute"),
    0x0106: (FAILURE, "Invalid Attribute Value"),
    0x0107: (WARNING, "Attribute List Error"),
    0x0110: (FAILURE, "Processing Failure"),
    0x0111: (FAILURE, "Duplicate SOP Instance"),
    0x0112: (FAILURE, "No Such SOP Instance"),
    0x0113: (FAILURE, "No Such Event Type"),
    0x0114: (FAILURE, "No Such Argument"),
    0x0115: (FAILURE, "Invalid Argument Value"),
    0x0116: (WARNING, "Attribute Value Out of Range"),
    0x0117: (FAILURE, "Invalid Object Instance"),
    0x0118: (FAILURE, "No Such SOP Class"),
    0x0119: (FAILURE, "Class-Instance Conflict"),
    0x0120: (FAILURE, "Missing Attribute"),
    0x0121: (FAILURE, "Missing Attribute Value"),
    0x0122: (FAILURE, "Refused: SOP Class Not Supported"),
    0x0123: (FAILURE, "No Such Action"),
    0x0124: (FAILURE, "Refused: Not Authorized"),
    0x0210: (FAILURE, "Duplicate Invocation"),
    0x0211: (FAILURE, "Unrecognized Operation"),
    0x0212: (FAILURE, "Mistyped Argument"),
    0x0213: (FAILURE, "Resource Limitation"),
    0xFE00: (CANCEL, "Cancel"),
}

# PS3.4 Annex A: Verification uses the general codes only.
VERIFICATION_STATUS: Final[StatusTable] = dict(GENERAL_STATUS)

# PS3.4 B.2.3, Table B.2-1 (C-STORE). C210/C211 are in the Cxxx range that the
# standard leaves to the implementation; pynetdicom answers C211 when its
# C-STORE handler raises.
STORAGE_STATUS: Final[StatusTable] = _table(
    {
        0xB000: (WARNING, "Coercion of Data Elements"),
        0xB006: (WARNING, "Elements Discarded"),
        0xB007: (WARNING, "Data Set Does Not Match SOP Class"),
        0xC210: (FAILURE, "Cannot Understand: the data set could not be decoded"),
        0xC211: (FAILURE, "Cannot Understand: unable to process (handler failure)"),
    },
    ranges=(
        (0xA700, 0xA7FF, FAILURE, "Refused: Out of Resources"),
        (0xA900, 0xA9FF, FAILURE, "Error: Data Set Does Not Match SOP Class"),
        (0xC000, 0xCFFF, FAILURE, "Error: Cannot Understand"),
    ),
)

# PS3.4 C.4.1.1.4, Table C.4-1 (Query/Retrieve C-FIND), also used for Hanging
# Protocol (U.4.1), Color Palette (X), Implant Template (BB) and Defined
# Procedure Protocol (HH) queries; A710 and B001 from C.6.4 / C.4.1.
QR_FIND_STATUS: Final[StatusTable] = _table(
    {
        0xA700: (FAILURE, "Refused: Out of Resources"),
        0xA710: (FAILURE, "Invalid Prior Record Key"),
        0xA900: (FAILURE, "Identifier Does Not Match SOP Class"),
        0xB001: (WARNING, "Matching reached response limit; a subsequent request may return more"),
        0xFF00: (PENDING, "Matches are continuing: current match supplied"),
        0xFF01: (PENDING, "Matches are continuing: one or more Optional Keys not supported"),
    },
    ranges=((0xC000, 0xCFFF, FAILURE, "Unable to Process"),),
)
QR_FIND_STATUS.update(
    {
        0xFE00: (CANCEL, "Matching terminated due to Cancel request"),
        0x0000: (SUCCESS, "Matching is complete"),
    }
)

_RETRIEVE_COMMON: Final[StatusTable] = {
    0xA701: (FAILURE, "Refused: Out of Resources, unable to calculate number of matches"),
    0xA702: (FAILURE, "Refused: Out of Resources, unable to perform sub-operations"),
    0xA900: (FAILURE, "Identifier Does Not Match SOP Class"),
    # PS3.4 Y.4 (Composite Instance Root Retrieve, frame-level retrieve).
    0xAA00: (FAILURE, "None of the frames requested were found in the SOP Instance"),
    0xAA01: (FAILURE, "Unable to create new object for this SOP Class"),
    0xAA02: (FAILURE, "Unable to extract frames"),
    0xAA03: (FAILURE, "Time-based request received for a non-time-based original SOP Instance"),
    0xAA04: (FAILURE, "Invalid request"),
    0xFF00: (PENDING, "Sub-operations are continuing"),
}

# PS3.4 C.4.2.1.5, Table C.4-2 (C-MOVE).
QR_MOVE_STATUS: Final[StatusTable] = _table(
    {
        **_RETRIEVE_COMMON,
        0xA801: (FAILURE, "Refused: Move Destination unknown"),
        0xB000: (WARNING, "Sub-operations complete, one or more failures or warnings"),
    },
    ranges=((0xC000, 0xCFFF, FAILURE, "Unable to Process"),),
)
QR_MOVE_STATUS[0xFE00] = (CANCEL, "Sub-operations terminated due to Cancel indication")
QR_MOVE_STATUS[0x0000] = (SUCCESS, "Sub-operations complete, no failures")

# PS3.4 C.4.3.1.4, Table C.4-3 (C-GET).
QR_GET_STATUS: Final[StatusTable] = _table(
    {
        **_RETRIEVE_COMMON,
        0xB000: (WARNING, "Sub-operations complete, one or more failures or warnings"),
    },
    ranges=((0xC000, 0xCFFF, FAILURE, "Unable to Process"),),
)
QR_GET_STATUS[0xFE00] = (CANCEL, "Sub-operations terminated due to Cancel indication")
QR_GET_STATUS[0x0000] = (SUCCESS, "Sub-operations complete, no failures or warnings")

# PS3.4 K.4.1.1.4, Table K.4-1 (Basic Worklist Management C-FIND).
MODALITY_WORKLIST_STATUS: Final[StatusTable] = _table(
    {
        0xA700: (FAILURE, "Refused: Out of Resources"),
        0xA900: (FAILURE, "Identifier Does Not Match SOP Class"),
        0xFF00: (
            PENDING,
            "Matches are continuing: current match supplied, Optional Keys supported",
        ),
        0xFF01: (PENDING, "Matches are continuing: one or more Optional Keys not supported"),
    },
    ranges=((0xC000, 0xCFFF, FAILURE, "Unable to Process"),),
)

# PS3.4 Q.2.1.1.4 (Relevant Patient Information Query).
RELEVANT_PATIENT_STATUS: Final[StatusTable] = _table(
    {
        0xA700: (FAILURE, "Refused: Out of Resources"),
        0xA900: (FAILURE, "Identifier Does Not Match SOP Class"),
        0xC000: (FAILURE, "Unable to Process"),
        0xC100: (FAILURE, "More than one match found"),
        0xC200: (FAILURE, "Unable to support requested template"),
        0xFF00: (PENDING, "Current match is supplied"),
    }
)

# PS3.4 V.4.1.1.4 (Substance Administration Query).
SUBSTANCE_ADMINISTRATION_STATUS: Final[StatusTable] = _table(
    {
        0xA700: (FAILURE, "Refused: Out of Resources"),
        0xA900: (FAILURE, "Identifier Does Not Match SOP Class"),
        0xFF00: (
            PENDING,
            "Matches are continuing: current match supplied, Optional Keys supported",
        ),
        0xFF01: (PENDING, "Matches are continuing: one or more Optional Keys not supported"),
    },
    ranges=((0xC000, 0xCFFF, FAILURE, "Unable to Process"),),
)

# PS3.4 GG.4.2 (Non-Patient Object Storage).
NON_PATIENT_STATUS: Final[StatusTable] = _table(
    {
        0xA700: (FAILURE, "Refused: Out of Resources"),
        0xA900: (FAILURE, "Data Set Does Not Match SOP Class"),
        0xC000: (FAILURE, "Cannot Understand"),
    }
)

# PS3.4 F (Modality Performed Procedure Step and the other procedure steps).
PROCEDURE_STEP_STATUS: Final[StatusTable] = _table(
    {
        0x0001: (WARNING, "Requested optional Attributes are not supported"),
    }
)
# F.7.2.2: for an N-SET of a completed/discontinued step, 0110 carries this meaning.
PROCEDURE_STEP_STATUS[0x0110] = (
    FAILURE,
    "Processing Failure: Performed Procedure Step Object may no longer be updated",
)

# PS3.4 H (Print Management).
PRINT_STATUS: Final[StatusTable] = _table(
    {
        0xB600: (WARNING, "Memory allocation not supported"),
        0xB601: (WARNING, "Film session printing (collation) is not supported"),
        0xB602: (WARNING, "Film Session SOP Instance hierarchy has no Image Box (empty page)"),
        0xB603: (WARNING, "Film Box SOP Instance hierarchy has no Image Box (empty page)"),
        0xB604: (WARNING, "Image larger than the image box, the image has been demagnified"),
        0xB605: (
            WARNING,
            "Requested min or max density outside the printer's range; the printer's is used",
        ),
        0xB609: (WARNING, "Image larger than the image box, the image has been cropped to fit"),
        0xB60A: (
            WARNING,
            "Image or combined print image larger than the image box, it has been decimated",
        ),
        0xC600: (FAILURE, "Film Session SOP Instance hierarchy has no Film Box SOP Instances"),
        0xC601: (FAILURE, "Unable to create Print Job SOP Instance; print queue is full"),
        0xC602: (FAILURE, "Unable to create Print Job SOP Instance; print queue is full"),
        0xC603: (FAILURE, "Image size is larger than image box size"),
        0xC605: (FAILURE, "Insufficient memory in printer to store the image"),
        0xC613: (FAILURE, "Combined print image size is larger than the image box size"),
        0xC616: (
            FAILURE,
            "An existing film box has not been printed and N-ACTION at the film session"
            " level is not supported",
        ),
    }
)

# PS3.4 J (Storage Commitment): the general codes.
STORAGE_COMMITMENT_STATUS: Final[StatusTable] = dict(GENERAL_STATUS)

# PS3.4 KK (Storage Management).
STORAGE_MANAGEMENT_STATUS: Final[StatusTable] = _table(
    {
        0xB010: (
            WARNING,
            "Attribute list error: one or more Key Attributes are not supported for matching",
        ),
    }
)

# PS3.4 P (Application Event Logging).
APPLICATION_EVENT_LOGGING_STATUS: Final[StatusTable] = _table(
    {
        0xB101: (
            WARNING,
            "Synchronization Frame of Reference UID does not match the SCP's",
        ),
        0xB102: (WARNING, "Study Instance UID coercion; event logged under a different study"),
        0xB104: (WARNING, "IDs inconsistent in matching a current study; event logged"),
        0xC101: (FAILURE, "Procedural logging not available for specified Study Instance UID"),
        0xC102: (FAILURE, "Event Information does not match template"),
        0xC103: (FAILURE, "Cannot match event to a current study"),
        0xC104: (FAILURE, "IDs inconsistent in matching a current study; event not logged"),
        0xC10E: (
            FAILURE,
            "Operator not authorized to add entry to Medication Administration Record",
        ),
        0xC110: (
            FAILURE,
            "Patient cannot be identified from Patient ID (0010,0020) or Admission ID (0038,0010)",
        ),
        0xC111: (FAILURE, "Update of Medication Administration Record failed"),
    }
)

# PS3.4 S (Media Creation Management).
MEDIA_CREATION_STATUS: Final[StatusTable] = _table(
    {
        0x0001: (WARNING, "Requested optional Attributes are not supported"),
        0xA510: (FAILURE, "An Initiate Media Creation action was already received"),
        0xC201: (FAILURE, "Media creation request already completed"),
        0xC202: (FAILURE, "Media creation request already in progress; cannot be interrupted"),
        0xC203: (FAILURE, "Cancellation denied for unspecified reason"),
    }
)

# PS3.4 CC (Unified Procedure Step).
UPS_STATUS: Final[StatusTable] = _table(
    {
        0x0001: (WARNING, "Requested optional Attributes are not supported"),
        0xA700: (FAILURE, "Refused: Out of Resources"),
        0xA900: (FAILURE, "Identifier Does Not Match SOP Class"),
        0xB300: (WARNING, "The UPS was created with modifications"),
        0xB301: (WARNING, "Deletion Lock not granted"),
        0xB304: (WARNING, "The UPS is already in the requested state of CANCELED"),
        0xB305: (WARNING, "Coerced invalid values to valid values"),
        0xB306: (WARNING, "The UPS is already in the requested state of COMPLETED"),
        0xC300: (FAILURE, "The UPS may no longer be updated"),
        0xC301: (FAILURE, "The correct Transaction UID was not provided"),
        0xC302: (FAILURE, "The UPS is already IN PROGRESS"),
        0xC303: (FAILURE, "The UPS may only become SCHEDULED via N-CREATE, not N-SET or N-ACTION"),
        0xC304: (FAILURE, "The UPS has not met final state requirements for the state change"),
        0xC307: (
            FAILURE,
            "Specified SOP Instance UID does not exist or is not a UPS managed by this SCP",
        ),
        0xC308: (FAILURE, "Receiving AE-TITLE is Unknown to this SCP"),
        0xC309: (FAILURE, "The provided value of UPS State was not SCHEDULED"),
        0xC310: (FAILURE, "The UPS is not yet in the IN PROGRESS state"),
        0xC311: (FAILURE, "The UPS is already COMPLETED"),
        0xC312: (FAILURE, "The performer cannot be contacted"),
        0xC313: (FAILURE, "Performer chooses not to cancel"),
        0xC314: (FAILURE, "Specified action not appropriate for specified instance"),
        0xC315: (FAILURE, "SCP does not support Event Reports"),
        0xFF00: (
            PENDING,
            "Matches are continuing: current match supplied, Optional Keys supported",
        ),
        0xFF01: (PENDING, "Matches are continuing: one or more Optional Keys not supported"),
    },
    ranges=((0xC000, 0xCFFF, FAILURE, "Unable to Process"),),
)

# PS3.4 DD (RT Machine Verification).
RT_MACHINE_VERIFICATION_STATUS: Final[StatusTable] = _table(
    {
        0xC112: (FAILURE, "No such object instance: Machine Verification instance not found"),
        0xC221: (FAILURE, "Referenced Fraction Group Number does not exist in the plan"),
        0xC222: (FAILURE, "No beams exist within the referenced fraction group"),
        0xC223: (FAILURE, "SCU already verifying and cannot currently process this request"),
        0xC224: (FAILURE, "Referenced Beam Number not found within the Fraction Group"),
        0xC225: (FAILURE, "Referenced device or accessory not supported"),
        0xC226: (FAILURE, "Referenced device or accessory not found within the beam"),
        0xC227: (FAILURE, "No such object instance: Referenced RT Plan not found"),
    }
)

#: Service name -> its table. The Query/Retrieve tables also serve the other
#: C-FIND/C-GET/C-MOVE based services (Hanging Protocol, Color Palette,
#: Implant Template, Defined Procedure Protocol), listed under their names.
SERVICE_STATUS: Final[Mapping[str, StatusTable]] = {
    "general": GENERAL_STATUS,
    "verification": VERIFICATION_STATUS,
    "storage": STORAGE_STATUS,
    "qr_find": QR_FIND_STATUS,
    "qr_get": QR_GET_STATUS,
    "qr_move": QR_MOVE_STATUS,
    "hanging_protocol_find": QR_FIND_STATUS,
    "hanging_protocol_get": QR_GET_STATUS,
    "hanging_protocol_move": QR_MOVE_STATUS,
    "color_palette_find": QR_FIND_STATUS,
    "color_palette_get": QR_GET_STATUS,
    "color_palette_move": QR_MOVE_STATUS,
    "implant_template_find": QR_FIND_STATUS,
    "implant_template_get": QR_GET_STATUS,
    "implant_template_move": QR_MOVE_STATUS,
    "defined_procedure_protocol_find": QR_FIND_STATUS,
    "defined_procedure_protocol_get": QR_GET_STATUS,
    "defined_procedure_protocol_move": QR_MOVE_STATUS,
    "modality_worklist": MODALITY_WORKLIST_STATUS,
    "relevant_patient": RELEVANT_PATIENT_STATUS,
    "substance_administration": SUBSTANCE_ADMINISTRATION_STATUS,
    "non_patient": NON_PATIENT_STATUS,
    "procedure_step": PROCEDURE_STEP_STATUS,
    "print": PRINT_STATUS,
    "storage_commitment": STORAGE_COMMITMENT_STATUS,
    "storage_management": STORAGE_MANAGEMENT_STATUS,
    "application_event_logging": APPLICATION_EVENT_LOGGING_STATUS,
    "media_creation": MEDIA_CREATION_STATUS,
    "ups": UPS_STATUS,
    "rt_machine_verification": RT_MACHINE_VERIFICATION_STATUS,
}

# What a code means when no table names it, by category and range.
_FALLBACK: Final = (
    (0xA700, 0xA7FF, "Refused: Out of Resources"),
    (0xA900, 0xA9FF, "Data Set or Identifier Does Not Match SOP Class"),
    (0xC000, 0xCFFF, "Cannot Understand / Unable to Process"),
)


def describe(code: int, service: str | None = None) -> str:
    """A short description of ``code``, in the terms of ``service`` if given.

    ``service`` is a key of :data:`SERVICE_STATUS` (``"storage"``,
    ``"qr_find"``...); an unknown service name raises KeyError. Codes no table
    lists are described by their range or their category, e.g. ``"Warning"``.
    """
    category = code_to_category(code)
    table = GENERAL_STATUS if service is None else SERVICE_STATUS[service]
    entry = table.get(code)
    if entry is not None:
        return entry[1]
    if category == PENDING:
        return "Pending"
    for first, last, text in _FALLBACK:
        if first <= code <= last:
            return text
    return category


def format_status(code: int, service: str | None = None) -> str:
    """``'0xA700 Failure: Refused: Out of Resources'``, for logs and error messages."""
    category = code_to_category(code)
    text = describe(code, service)
    if text == category:
        return f"0x{code:04X} {category}"
    return f"0x{code:04X} {category}: {text}"


class Status(IntEnum):
    """Names of the common status codes (PS3.7 Annex C, PS3.4)."""

    SUCCESS = 0x0000
    #: Warning: requested optional Attributes are not supported (MPPS, UPS, media creation).
    OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001
    NO_SUCH_ATTRIBUTE = 0x0105
    INVALID_ATTRIBUTE_VALUE = 0x0106
    ATTRIBUTE_LIST_ERROR = 0x0107
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_INSTANCE = 0x0112
    NO_SUCH_EVENT_TYPE = 0x0113
    NO_SUCH_ARGUMENT = 0x0114
    INVALID_ARGUMENT_VALUE = 0x0115
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    INVALID_OBJECT_INSTANCE = 0x0117
    NO_SUCH_SOP_CLASS = 0x0118
    CLASS_INSTANCE_CONFLICT = 0x0119
    MISSING_ATTRIBUTE = 0x0120
    MISSING_ATTRIBUTE_VALUE = 0x0121
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NO_SUCH_ACTION = 0x0123
    NOT_AUTHORIZED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213
    OUT_OF_RESOURCES = 0xA700
    OUT_OF_RESOURCES_MATCHES = 0xA701
    OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702
    INVALID_PRIOR_RECORD_KEY = 0xA710
    MOVE_DESTINATION_UNKNOWN = 0xA801
    DATASET_DOES_NOT_MATCH = 0xA900
    IDENTIFIER_DOES_NOT_MATCH = 0xA900
    #: Storage warning; also C-GET/C-MOVE "sub-operations complete with failures".
    COERCION_OF_DATA_ELEMENTS = 0xB000
    SUBOPERATIONS_WARNING = 0xB000
    RESPONSE_LIMIT_REACHED = 0xB001
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_WARNING = 0xB007
    CANNOT_UNDERSTAND = 0xC000
    UNABLE_TO_PROCESS = 0xC000
    #: Implementation-specific C-STORE failures (the Cxxx range), as pynetdicom uses them.
    STORE_CANNOT_UNDERSTAND = 0xC210
    STORE_UNABLE_TO_PROCESS = 0xC211
    CANCEL = 0xFE00
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01

    @property
    def category(self) -> str:
        """The PS3.7 Annex C status class."""
        return code_to_category(int(self))
