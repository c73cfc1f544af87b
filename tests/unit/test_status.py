"""DIMSE status codes: PS3.7 Annex C categories and the PS3.4 service tables."""

from __future__ import annotations

import pytest
from pynetdicom import status as pnd_status

from aiodicom import status
from aiodicom.status import (
    CANCEL,
    FAILURE,
    PENDING,
    SERVICE_STATUS,
    SUCCESS,
    WARNING,
    Status,
    code_to_category,
    describe,
    format_status,
)


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (0x0000, SUCCESS),
        (0x0001, WARNING),
        (0x0002, FAILURE),
        (0x0105, FAILURE),
        (0x0106, FAILURE),
        (0x0107, WARNING),
        (0x0110, FAILURE),
        (0x0115, FAILURE),
        (0x0116, WARNING),
        (0x0117, FAILURE),
        (0x0124, FAILURE),
        (0x0210, FAILURE),
        (0x0213, FAILURE),
        (0x9FFF, FAILURE),
        (0xA000, FAILURE),
        (0xA700, FAILURE),
        (0xA7FF, FAILURE),
        (0xA801, FAILURE),
        (0xAFFF, FAILURE),
        (0xB000, WARNING),
        (0xB006, WARNING),
        (0xB007, WARNING),
        (0xBFFF, WARNING),
        (0xC000, FAILURE),
        (0xCFFF, FAILURE),
        (0xD000, FAILURE),
        (0xFDFF, FAILURE),
        (0xFE00, CANCEL),
        (0xFE01, FAILURE),
        (0xFEFF, FAILURE),
        (0xFF00, PENDING),
        (0xFF01, PENDING),
        (0xFF02, FAILURE),
        (0xFFFF, FAILURE),
    ],
)
def test_categories_of_boundary_codes(code: int, category: str) -> None:
    assert code_to_category(code) == category


@pytest.mark.parametrize("bad", [-1, 0x10000, "0", 1.0, None, True])
def test_code_to_category_rejects_non_codes(bad: object) -> None:
    with pytest.raises(ValueError):
        code_to_category(bad)  # type: ignore[arg-type]


def test_agrees_with_pynetdicom_where_pynetdicom_knows() -> None:
    for code in range(0x10000):
        theirs = pnd_status.code_to_category(code)
        if theirs != "Unknown":
            assert code_to_category(code) == theirs, hex(code)
        else:
            # pynetdicom says "Unknown"; PS3.7 leaves them unassigned: not a success.
            assert code_to_category(code) == FAILURE, hex(code)


@pytest.mark.parametrize(
    ("table", "first", "last", "text"),
    [
        (status.STORAGE_STATUS, 0xA700, 0xA7FF, "Refused: Out of Resources"),
        (status.STORAGE_STATUS, 0xA900, 0xA9FF, "Error: Data Set Does Not Match SOP Class"),
        (status.QR_FIND_STATUS, 0xC000, 0xCFFF, "Unable to Process"),
        (status.QR_GET_STATUS, 0xC000, 0xCFFF, "Unable to Process"),
        (status.QR_MOVE_STATUS, 0xC000, 0xCFFF, "Unable to Process"),
        (status.MODALITY_WORKLIST_STATUS, 0xC000, 0xCFFF, "Unable to Process"),
        (status.SUBSTANCE_ADMINISTRATION_STATUS, 0xC000, 0xCFFF, "Unable to Process"),
    ],
)
def test_ranges_are_expanded(
    table: dict[int, tuple[str, str]], first: int, last: int, text: str
) -> None:
    for code in (first, first + 1, (first + last) // 2, last):
        category, description = table[code]
        assert category == FAILURE
        assert description == text or code in (0xA700, 0xA701, 0xA702)
    assert first - 1 not in table or table[first - 1][1] != text
    assert last + 1 not in table or table[last + 1][1] != text


def test_storage_cxxx_range_and_its_named_codes() -> None:
    assert status.STORAGE_STATUS[0xC123] == (FAILURE, "Error: Cannot Understand")
    assert status.STORAGE_STATUS[0xC210][0] == FAILURE
    assert "handler" in status.STORAGE_STATUS[0xC211][1]
    for code in (0xB000, 0xB006, 0xB007):
        assert status.STORAGE_STATUS[code][0] == WARNING
    assert 0xB001 not in status.STORAGE_STATUS


def test_query_retrieve_codes() -> None:
    find, get, move = status.QR_FIND_STATUS, status.QR_GET_STATUS, status.QR_MOVE_STATUS
    assert find[0xA700][0] == FAILURE
    assert find[0xFF00][0] == find[0xFF01][0] == PENDING
    assert find[0xFE00][0] == CANCEL
    for table in (get, move):
        assert table[0xA701][0] == table[0xA702][0] == FAILURE
        assert table[0xA900][0] == FAILURE
        assert table[0xB000][0] == WARNING
        assert table[0xFF00][0] == PENDING
        assert 0xFF01 not in table
    assert move[0xA801] == (FAILURE, "Refused: Move Destination unknown")
    assert 0xA801 not in get


def test_every_table_includes_the_general_codes_and_is_consistent() -> None:
    for name, table in SERVICE_STATUS.items():
        for code in status.GENERAL_STATUS:
            assert code in table, (name, hex(code))
        for code, (category, description) in table.items():
            assert 0 <= code <= 0xFFFF
            assert description, (name, hex(code))
            assert category == code_to_category(code), (name, hex(code))


def test_tables_know_at_least_what_pynetdicom_knows() -> None:
    pairs = {
        "general": pnd_status.GENERAL_STATUS,
        "storage": pnd_status.STORAGE_SERVICE_CLASS_STATUS,
        "qr_find": pnd_status.QR_FIND_SERVICE_CLASS_STATUS,
        "qr_get": pnd_status.QR_GET_SERVICE_CLASS_STATUS,
        "qr_move": pnd_status.QR_MOVE_SERVICE_CLASS_STATUS,
        "modality_worklist": pnd_status.MODALITY_WORKLIST_SERVICE_CLASS_STATUS,
        "relevant_patient": pnd_status.RELEVANT_PATIENT_SERVICE_CLASS_STATUS,
        "substance_administration": pnd_status.SUBSTANCE_ADMINISTRATION_SERVICE_CLASS_STATUS,
        "non_patient": pnd_status.NON_PATIENT_SERVICE_CLASS_STATUS,
        "procedure_step": pnd_status.PROCEDURE_STEP_STATUS,
        "print": pnd_status.PRINT_JOB_MANAGEMENT_SERVICE_CLASS_STATUS,
        "storage_commitment": pnd_status.STORAGE_COMMITMENT_SERVICE_CLASS_STATUS,
        "storage_management": pnd_status.STORAGE_MANAGEMENT_SERVICE_CLASS_STATUS,
        "application_event_logging": pnd_status.APPLICATION_EVENT_LOGGING_SERVICE_CLASS_STATUS,
        "media_creation": pnd_status.MEDIA_CREATION_MANAGEMENT_SERVICE_CLASS_STATUS,
        "ups": pnd_status.UNIFIED_PROCEDURE_STEP_SERVICE_CLASS_STATUS,
        "rt_machine_verification": pnd_status.RT_MACHINE_VERIFICATION_SERVICE_CLASS_STATUS,
    }
    for name, theirs in pairs.items():
        ours = SERVICE_STATUS[name]
        for code, (category, _) in theirs.items():
            assert code in ours, (name, hex(code))
            assert ours[code][0] == category, (name, hex(code))


def test_describe() -> None:
    assert describe(0x0000) == "Success"
    assert describe(0xA700, "storage") == "Refused: Out of Resources"
    assert describe(0xA7FE, "storage") == "Refused: Out of Resources"
    assert describe(0xA801, "qr_move") == "Refused: Move Destination unknown"
    assert describe(0xC001, "qr_find") == "Unable to Process"
    assert describe(0x0122) == "Refused: SOP Class Not Supported"
    # Not in the table asked for: by range, then by category.
    assert describe(0xA7FE) == "Refused: Out of Resources"
    assert describe(0xC5FF) == "Cannot Understand / Unable to Process"
    assert describe(0xB123) == "Warning"
    assert describe(0xD000) == "Failure"
    assert describe(0xFF01) == "Pending"
    assert describe(0xFF01, "qr_find").startswith("Matches are continuing")
    with pytest.raises(KeyError):
        describe(0, "no such service")


def test_format_status() -> None:
    assert format_status(0xA700, "storage") == "0xA700 Failure: Refused: Out of Resources"
    assert format_status(0xD000) == "0xD000 Failure"
    assert format_status(0x0000) == "0x0000 Success"
    assert format_status(0xFE00, "qr_move").startswith("0xFE00 Cancel: Sub-operations terminated")


def test_status_names() -> None:
    assert Status.SUCCESS == 0x0000
    assert Status.PENDING == 0xFF00
    assert Status.PENDING_WARNING == 0xFF01
    assert Status.CANCEL == 0xFE00
    assert Status.PROCESSING_FAILURE == 0x0110
    assert Status.UNRECOGNIZED_OPERATION == 0x0211
    assert Status.OUT_OF_RESOURCES == 0xA700
    assert Status.DATASET_DOES_NOT_MATCH == 0xA900
    assert Status.CANNOT_UNDERSTAND == 0xC000
    assert Status.STORE_CANNOT_UNDERSTAND == 0xC210
    assert Status.STORE_UNABLE_TO_PROCESS == 0xC211
    assert Status.MOVE_DESTINATION_UNKNOWN == 0xA801
    assert Status.PENDING.category == PENDING
    assert Status.COERCION_OF_DATA_ELEMENTS.category == WARNING
    assert code_to_category(Status.CANCEL) == CANCEL
    for member in Status:
        assert member.category in status.CATEGORIES
    # The names pynetdicom's Status defines mean the same codes here.
    for name in ("SUCCESS", "CANCEL", "PENDING", "MOVE_DESTINATION_UNKNOWN"):
        assert Status[name] == getattr(pnd_status.Status, name)


def test_pending_helpers() -> None:
    assert status.is_pending(0xFF00) and status.is_pending(0xFF01)
    assert not status.is_pending(0x0000)
    assert status.is_final(0xFE00) and not status.is_final(Status.PENDING)
