"""aiodicom.sop_class: SOP Class UIDs and pre-built presentation contexts.

pynetdicom is the reference for names, values and list contents; those tests
skip when it is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID

from aiodicom import sop_class
from aiodicom.presentation import DEFAULT_TRANSFER_SYNTAXES, PresentationContext

CONTEXT_LISTS = sorted(n for n in sop_class.__all__ if n.endswith("PresentationContexts"))
UID_NAMES = sorted(
    n for n in sop_class.__all__ if n not in CONTEXT_LISTS and n != "STORAGE_CLASSES"
)

#: pydicom's keyword -> pynetdicom's name, where they differ.
ALIASES = {
    "ColorPaletteQueryRetrieveInformationModelFind": "ColorPaletteInformationModelFind",
    "ColorPaletteQueryRetrieveInformationModelGet": "ColorPaletteInformationModelGet",
    "ColorPaletteQueryRetrieveInformationModelMove": "ColorPaletteInformationModelMove",
    "ModalityWorklistInformationModelFind": "ModalityWorklistInformationFind",
    "OphthalmicOpticalCoherenceTomographyBscanVolumeAnalysisStorage": (
        "OphthlamicOpticalCoherenceTomographyBscanVolumeAnalysisStorage"
    ),
    "PseudoColorSoftcopyPresentationStateStorage": "PseudoColorSoftcopyPresentationStageStorage",
    "RoboticRadiationRecordStorage": "RoboticArmRadiationRecordStorage",
    "RTBrachyApplicationSetupDeliveryInstructionStorage": (
        "RTBrachyApplicationSetupDeliveryInstructionsStorage"
    ),
    "VariableModalityLUTSoftcopyPresentationStateStorage": (
        "VariableModalityLUTSoftcopyPresentationStageStorage"
    ),
}

#: Context lists pynetdicom 3.0 does not have (it has the SOP class groups).
EXTRA_LISTS = {
    "InventoryPresentationContexts": {"InventoryFind", "InventoryGet", "InventoryMove"},
    "StorageManagementPresentationContexts": {"InventoryCreation"},
}


def abstract_syntaxes(contexts: list[PresentationContext]) -> list[str]:
    return [str(cx.abstract_syntax) for cx in contexts]


@pytest.fixture(scope="module")
def pynetdicom() -> ModuleType:
    import pynetdicom  # a test dependency, the reference: missing, this fails

    return pynetdicom


def pynetdicom_uid_names(module: ModuleType) -> dict[str, str]:
    return {
        name: str(value)
        for name in dir(module)
        if not name.startswith("_") and isinstance(value := getattr(module, name), str)
    }


# -- UID constants ------------------------------------------------------------------


def test_every_pynetdicom_sop_class_name_and_value(pynetdicom: ModuleType) -> None:
    from pynetdicom import sop_class as theirs

    expected = pynetdicom_uid_names(theirs)
    assert len(expected) > 250  # sanity: we really are looking at the UID constants
    for name, value in expected.items():
        assert getattr(sop_class, name, None) == value, name
    # Nothing else but pydicom's keywords for the few pynetdicom renamed.
    assert set(UID_NAMES) - set(expected) == set(ALIASES)


def test_constants_are_valid_pydicom_uids() -> None:
    for name in UID_NAMES:
        value = getattr(sop_class, name)
        assert type(value) is UID, name
        assert value.is_valid and len(value) <= 64, name


def test_names_are_pydicom_keywords_or_pynetdicom_renames() -> None:
    renamed = set(ALIASES.values())
    for name in UID_NAMES:
        entry = UID_dictionary.get(getattr(sop_class, name))
        if entry is None:  # newer than the installed pydicom
            assert name.endswith("Storage"), name
            continue
        keyword = entry[4]
        assert keyword == name or name in renamed, (name, keyword)


def test_aliases_are_the_same_uids() -> None:
    for alias, name in ALIASES.items():
        assert getattr(sop_class, alias) == getattr(sop_class, name)
        assert UID_dictionary[getattr(sop_class, alias)][4] == alias


def test_well_known_values() -> None:
    assert sop_class.Verification == "1.2.840.10008.1.1"
    assert sop_class.CTImageStorage == "1.2.840.10008.5.1.4.1.1.2"
    assert sop_class.StudyRootQueryRetrieveInformationModelFind == "1.2.840.10008.5.1.4.1.2.2.1"
    assert sop_class.StudyRootQueryRetrieveInformationModelMove == "1.2.840.10008.5.1.4.1.2.2.2"
    assert sop_class.StudyRootQueryRetrieveInformationModelGet == "1.2.840.10008.5.1.4.1.2.2.3"
    assert sop_class.PatientRootQueryRetrieveInformationModelFind == "1.2.840.10008.5.1.4.1.2.1.1"
    assert sop_class.ModalityWorklistInformationFind == "1.2.840.10008.5.1.4.31"
    assert sop_class.StorageCommitmentPushModel == "1.2.840.10008.1.20.1"
    assert sop_class.StorageCommitmentPushModelInstance == "1.2.840.10008.1.20.1.1"
    assert sop_class.ModalityPerformedProcedureStep == "1.2.840.10008.3.1.2.3.3"
    assert sop_class.UnifiedProcedureStepPush == "1.2.840.10008.5.1.4.34.6.1"


# -- Storage SOP classes ------------------------------------------------------------


def pydicom_storage_classes() -> set[str]:
    """Storage Service Class SOP classes in pydicom's dictionary, by the module's rule."""
    other_services = {
        cx.abstract_syntax
        for name in (
            "StorageCommitmentPresentationContexts",
            "MediaStoragePresentationContexts",
            "NonPatientObjectPresentationContexts",
        )
        for cx in getattr(sop_class, name)
    }
    return {
        uid
        for uid, (name, kind, info, retired, _) in UID_dictionary.items()
        if kind == "SOP Class"
        and "Storage" in name
        and not retired
        and not info.startswith(("DICOS", "DICONDE"))  # defined outside PS3
        and uid not in other_services
    }


def test_all_storage_has_every_storage_class_in_pydicom() -> None:
    ours = set(abstract_syntaxes(sop_class.AllStoragePresentationContexts))
    expected = pydicom_storage_classes()
    assert len(expected) > 150
    assert expected <= ours
    # The rest are SOP classes newer than the installed pydicom.
    assert all(uid not in UID_dictionary for uid in ours - expected)
    assert {UID(uid).name for uid in ours} >= {"CT Image Storage", "Enhanced SR Storage"}
    assert "Storage Commitment Push Model SOP Class" not in {UID(uid).name for uid in ours}


def test_storage_classes_tuple() -> None:
    classes = sop_class.STORAGE_CLASSES
    assert isinstance(classes, tuple)
    assert all(type(uid) is UID for uid in classes)
    assert len(set(classes)) == len(classes)
    assert list(classes) == abstract_syntaxes(sop_class.AllStoragePresentationContexts)
    assert list(classes) == sorted(classes)


def test_storage_selection() -> None:
    selection = abstract_syntaxes(sop_class.StoragePresentationContexts)
    assert len(selection) == len(set(selection)) == 120
    assert sop_class.CTImageStorage in selection
    # Its current SOP classes are storage ones; the rest are retired ones still in use.
    for uid in set(selection) - set(sop_class.STORAGE_CLASSES):
        assert UID_dictionary[uid][3] == "Retired", uid


# -- Context lists ------------------------------------------------------------------


def test_context_list_sizes() -> None:
    assert len(sop_class.StoragePresentationContexts) == 120
    assert len(sop_class.AllStoragePresentationContexts) == len(sop_class.STORAGE_CLASSES)
    assert len(sop_class.AllStoragePresentationContexts) > 128  # for acceptors only
    for name in CONTEXT_LISTS:
        contexts = getattr(sop_class, name)
        assert contexts, name
        if name != "AllStoragePresentationContexts":
            assert len(contexts) <= 128, name  # fits in one association request


def test_context_lists_hold_default_contexts() -> None:
    for name in CONTEXT_LISTS:
        contexts = getattr(sop_class, name)
        assert isinstance(contexts, list), name
        for cx in contexts:
            assert isinstance(cx, PresentationContext)
            assert type(cx.abstract_syntax) is UID
            assert cx.transfer_syntax == list(DEFAULT_TRANSFER_SYNTAXES)
            assert cx.context_id is None and cx.result is None
        uids = abstract_syntaxes(contexts)
        assert uids == sorted(set(uids)), name  # no duplicates, pynetdicom's order


def test_context_lists_match_pynetdicom(pynetdicom: ModuleType) -> None:
    from pynetdicom import presentation as theirs

    names = [n for n in dir(theirs) if n.endswith("PresentationContexts")]
    assert len(names) >= 20
    for name in names:
        assert abstract_syntaxes(getattr(sop_class, name)) == abstract_syntaxes(
            getattr(theirs, name)
        ), name
    assert set(CONTEXT_LISTS) - set(names) <= set(EXTRA_LISTS)


def test_extra_context_lists() -> None:
    for name, members in EXTRA_LISTS.items():
        expected = sorted(getattr(sop_class, m) for m in members)
        assert abstract_syntaxes(getattr(sop_class, name)) == expected


def test_short_lists() -> None:
    assert abstract_syntaxes(sop_class.VerificationPresentationContexts) == ["1.2.840.10008.1.1"]
    assert abstract_syntaxes(sop_class.BasicWorklistManagementPresentationContexts) == [
        "1.2.840.10008.5.1.4.31"
    ]
    assert abstract_syntaxes(sop_class.ModalityPerformedPresentationContexts) == (
        abstract_syntaxes(sop_class.ProcedureStepPresentationContexts)
    )
    qr = abstract_syntaxes(sop_class.QueryRetrievePresentationContexts)
    for model in ("StudyRoot", "PatientRoot"):
        for op in ("Find", "Move", "Get"):
            assert getattr(sop_class, f"{model}QueryRetrieveInformationModel{op}") in qr


def test_each_access_returns_fresh_contexts() -> None:
    first = sop_class.StoragePresentationContexts
    second = sop_class.StoragePresentationContexts
    assert first is not second
    assert all(a is not b for a, b in zip(first, second, strict=True))
    first[0].add_transfer_syntax("1.2.840.10008.1.2.4.50")
    first.clear()
    third = sop_class.StoragePresentationContexts
    assert len(third) == 120
    assert third[0].transfer_syntax == list(DEFAULT_TRANSFER_SYNTAXES)

    from aiodicom.sop_class import VerificationPresentationContexts as imported

    imported[0].transfer_syntax.clear()
    assert sop_class.VerificationPresentationContexts[0].transfer_syntax


def test_module_attributes() -> None:
    names = dir(sop_class)
    for name in sop_class.__all__:
        assert name in names, name
        getattr(sop_class, name)
    assert len(set(sop_class.__all__)) == len(sop_class.__all__)
    with pytest.raises(AttributeError, match="NoSuchPresentationContexts"):
        getattr(sop_class, "NoSuchPresentationContexts")  # noqa: B009
    with pytest.raises(ImportError):
        from aiodicom.sop_class import CTImageStorag  # type: ignore[attr-defined]  # noqa: F401


def test_does_not_import_pynetdicom() -> None:
    src = Path(sop_class.__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    code = (
        "import sys, aiodicom.sop_class as m; m.AllStoragePresentationContexts;"
        "sys.exit('pynetdicom' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
