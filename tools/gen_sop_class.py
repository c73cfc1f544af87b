#!/usr/bin/env python3
"""Generate ``src/aiodicom/sop_class.py`` from pydicom's UID dictionary.

Usage (from the repository root)::

    python3 tools/gen_sop_class.py           # rewrite src/aiodicom/sop_class.py
    python3 tools/gen_sop_class.py --check   # exit 1 if the file is out of date
    python3 tools/gen_sop_class.py --stdout  # print instead of writing

The UIDs and their names come from ``pydicom._uid_dict.UID_dictionary``
(UID -> (name, type, info, retired, keyword)). The tables below hold only
what that dictionary cannot say:

* which service each non-storage SOP class belongs to (one presentation
  context list per service, named as in pynetdicom's ``presentation``);
* the names pynetdicom uses where they differ from pydicom's keyword (the
  pynetdicom name is the primary name; pydicom's keyword is exported too, as
  an alias);
* SOP classes newer than the installed pydicom's dictionary;
* the 120 SOP classes of ``StoragePresentationContexts`` (pynetdicom's
  selection, which follows DCMTK's storescu; it includes 14 retired classes).

Storage SOP classes are not listed: a storage SOP class is a current
(non-retired) SOP Class whose name contains "Storage", that is not defined
outside PS3 (DICOS, DICONDE) and that no other service below claims (Storage
Commitment, Media Storage, Non-Patient Object Storage).

Only pydicom is needed; pynetdicom is not imported (the unit tests compare
the result with it).
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from pathlib import Path
from typing import NamedTuple

import pydicom
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID

OUT = Path(__file__).resolve().parent.parent / "src" / "aiodicom" / "sop_class.py"
LINE_LENGTH = 100

#: UID -> name where pynetdicom's name differs from pydicom's keyword.
RENAMED: dict[str, str] = {
    "1.2.840.10008.5.1.4.31": "ModalityWorklistInformationFind",
    "1.2.840.10008.5.1.4.39.2": "ColorPaletteInformationModelFind",
    "1.2.840.10008.5.1.4.39.3": "ColorPaletteInformationModelMove",
    "1.2.840.10008.5.1.4.39.4": "ColorPaletteInformationModelGet",
    # pynetdicom keeps these misspellings ("Ophthlamic", "Stage", ...).
    "1.2.840.10008.5.1.4.1.1.11.3": "PseudoColorSoftcopyPresentationStageStorage",
    "1.2.840.10008.5.1.4.1.1.11.12": "VariableModalityLUTSoftcopyPresentationStageStorage",
    "1.2.840.10008.5.1.4.1.1.77.1.5.8": (
        "OphthlamicOpticalCoherenceTomographyBscanVolumeAnalysisStorage"
    ),
    "1.2.840.10008.5.1.4.1.1.481.20": "RoboticArmRadiationRecordStorage",
    "1.2.840.10008.5.1.4.34.10": "RTBrachyApplicationSetupDeliveryInstructionsStorage",
}

#: SOP classes missing from older pydicom dictionaries: UID -> (name, keyword).
#: Used only when the installed pydicom does not know the UID.
NEWER_THAN_PYDICOM: dict[str, tuple[str, str]] = {
    "1.2.840.10008.5.1.4.1.1.9.100.1": (
        "Waveform Presentation State Storage",
        "WaveformPresentationStateStorage",
    ),
    "1.2.840.10008.5.1.4.1.1.9.100.2": (
        "Waveform Acquisition Presentation State Storage",
        "WaveformAcquisitionPresentationStateStorage",
    ),
    "1.2.840.10008.5.1.4.1.1.66.7": (
        "Label Map Segmentation Storage",
        "LabelMapSegmentationStorage",
    ),
    "1.2.840.10008.5.1.4.1.1.66.8": (
        "Height Map Segmentation Storage",
        "HeightMapSegmentationStorage",
    ),
}

#: Well-known SOP instances exported by name (they belong to no context list).
INSTANCES: tuple[str, ...] = (
    "DisplaySystemInstance",
    "PrinterConfigurationRetrievalInstance",
    "PrinterInstance",
    "ProceduralEventLoggingInstance",
    "StorageCommitmentPushModelInstance",
    "StorageManagementInstance",
    "SubstanceAdministrationLoggingInstance",
    "UPSFilteredGlobalSubscriptionInstance",
    "UPSGlobalSubscriptionInstance",
)

#: Context list name -> (PS3.4 chapter, service, member names). Storage is derived.
SERVICES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ApplicationEventLoggingPresentationContexts": (
        "P",
        "Application Event Logging",
        ("ProceduralEventLogging", "SubstanceAdministrationLogging"),
    ),
    "BasicWorklistManagementPresentationContexts": (
        "K",
        "Basic Worklist Management",
        ("ModalityWorklistInformationFind",),
    ),
    "ColorPalettePresentationContexts": (
        "X",
        "Color Palette Query/Retrieve",
        (
            "ColorPaletteInformationModelFind",
            "ColorPaletteInformationModelMove",
            "ColorPaletteInformationModelGet",
        ),
    ),
    "DefinedProcedureProtocolPresentationContexts": (
        "HH",
        "Defined Procedure Protocol Query/Retrieve",
        (
            "DefinedProcedureProtocolInformationModelFind",
            "DefinedProcedureProtocolInformationModelMove",
            "DefinedProcedureProtocolInformationModelGet",
        ),
    ),
    "DisplaySystemPresentationContexts": (
        "EE",
        "Display System Management",
        ("DisplaySystem",),
    ),
    "HangingProtocolPresentationContexts": (
        "U",
        "Hanging Protocol Query/Retrieve",
        (
            "HangingProtocolInformationModelFind",
            "HangingProtocolInformationModelMove",
            "HangingProtocolInformationModelGet",
        ),
    ),
    "ImplantTemplatePresentationContexts": (
        "BB",
        "Implant Template Query/Retrieve",
        (
            "GenericImplantTemplateInformationModelFind",
            "GenericImplantTemplateInformationModelMove",
            "GenericImplantTemplateInformationModelGet",
            "ImplantAssemblyTemplateInformationModelFind",
            "ImplantAssemblyTemplateInformationModelMove",
            "ImplantAssemblyTemplateInformationModelGet",
            "ImplantTemplateGroupInformationModelFind",
            "ImplantTemplateGroupInformationModelMove",
            "ImplantTemplateGroupInformationModelGet",
        ),
    ),
    "InstanceAvailabilityPresentationContexts": (
        "R",
        "Instance Availability Notification",
        ("InstanceAvailabilityNotification",),
    ),
    "InventoryPresentationContexts": (
        "JJ",
        "Inventory Query/Retrieve",
        ("InventoryFind", "InventoryMove", "InventoryGet"),
    ),
    "MediaCreationManagementPresentationContexts": (
        "S",
        "Media Creation Management",
        ("MediaCreationManagement",),
    ),
    "MediaStoragePresentationContexts": (
        "I",
        "Media Storage",
        ("MediaStorageDirectoryStorage",),
    ),
    "NonPatientObjectPresentationContexts": (
        "GG",
        "Non-Patient Object Storage",
        (
            "HangingProtocolStorage",
            "ColorPaletteStorage",
            "GenericImplantTemplateStorage",
            "ImplantAssemblyTemplateStorage",
            "ImplantTemplateGroupStorage",
            "CTDefinedProcedureProtocolStorage",
            "ProtocolApprovalStorage",
            "XADefinedProcedureProtocolStorage",
            "InventoryStorage",
        ),
    ),
    "PrintManagementPresentationContexts": (
        "H",
        "Print Management",
        (
            "BasicFilmSession",
            "BasicFilmBox",
            "BasicGrayscaleImageBox",
            "BasicColorImageBox",
            "PrintJob",
            "BasicAnnotationBox",
            "Printer",
            "PrinterConfigurationRetrieval",
            "PresentationLUT",
            "BasicGrayscalePrintManagementMeta",
            "BasicColorPrintManagementMeta",
        ),
    ),
    "ProcedureStepPresentationContexts": (
        "F",
        "Modality Performed Procedure Step",
        (
            "ModalityPerformedProcedureStep",
            "ModalityPerformedProcedureStepRetrieve",
            "ModalityPerformedProcedureStepNotification",
        ),
    ),
    "ProtocolApprovalPresentationContexts": (
        "II",
        "Protocol Approval Query/Retrieve",
        (
            "ProtocolApprovalInformationModelFind",
            "ProtocolApprovalInformationModelMove",
            "ProtocolApprovalInformationModelGet",
        ),
    ),
    "QueryRetrievePresentationContexts": (
        "C",
        "Query/Retrieve",
        (
            "PatientRootQueryRetrieveInformationModelFind",
            "PatientRootQueryRetrieveInformationModelMove",
            "PatientRootQueryRetrieveInformationModelGet",
            "StudyRootQueryRetrieveInformationModelFind",
            "StudyRootQueryRetrieveInformationModelMove",
            "StudyRootQueryRetrieveInformationModelGet",
            "PatientStudyOnlyQueryRetrieveInformationModelFind",
            "PatientStudyOnlyQueryRetrieveInformationModelMove",
            "PatientStudyOnlyQueryRetrieveInformationModelGet",
            "CompositeInstanceRootRetrieveMove",
            "CompositeInstanceRootRetrieveGet",
            "CompositeInstanceRetrieveWithoutBulkDataGet",
            "RepositoryQuery",
        ),
    ),
    "RelevantPatientInformationPresentationContexts": (
        "Q",
        "Relevant Patient Information Query",
        (
            "GeneralRelevantPatientInformationQuery",
            "BreastImagingRelevantPatientInformationQuery",
            "CardiacRelevantPatientInformationQuery",
        ),
    ),
    "RTMachineVerificationPresentationContexts": (
        "DD",
        "RT Machine Verification",
        ("RTConventionalMachineVerification", "RTIonMachineVerification"),
    ),
    "StorageCommitmentPresentationContexts": (
        "J",
        "Storage Commitment",
        ("StorageCommitmentPushModel",),
    ),
    "StorageManagementPresentationContexts": (
        "KK",
        "Storage Management",
        ("InventoryCreation",),
    ),
    "SubstanceAdministrationPresentationContexts": (
        "V",
        "Substance Administration Query",
        ("ProductCharacteristicsQuery", "SubstanceApprovalQuery"),
    ),
    "UnifiedProcedurePresentationContexts": (
        "CC",
        "Unified Procedure Step",
        (
            "UnifiedProcedureStepPush",
            "UnifiedProcedureStepWatch",
            "UnifiedProcedureStepPull",
            "UnifiedProcedureStepEvent",
            "UnifiedProcedureStepQuery",
        ),
    ),
    "VerificationPresentationContexts": ("A", "Verification", ("Verification",)),
}

#: Other names for a context list: alias -> context list name.
LIST_ALIASES: dict[str, str] = {
    "ModalityPerformedPresentationContexts": "ProcedureStepPresentationContexts",
}

#: Not a storage SOP class although the name says "Storage": the services claiming
#: them are in SERVICES; these ``info`` values mark classes defined outside PS3.
FOREIGN_INFO = ("DICOS", "DICONDE")

#: The 120 SOP classes of StoragePresentationContexts (names as exported, or
#: pydicom's keyword for the retired ones, which aiodicom does not export).
STORAGE_SELECTION: tuple[str, ...] = (
    "AmbulatoryECGWaveformStorage",
    "ArterialPulseWaveformStorage",
    "AutorefractionMeasurementsStorage",
    "BasicStructuredDisplayStorage",
    "BasicTextSRStorage",
    "BasicVoiceAudioWaveformStorage",
    "BlendingSoftcopyPresentationStateStorage",
    "BreastTomosynthesisImageStorage",
    "CardiacElectrophysiologyWaveformStorage",
    "ChestCADSRStorage",
    "ColonCADSRStorage",
    "ColorSoftcopyPresentationStateStorage",
    "Comprehensive3DSRStorage",
    "ComprehensiveSRStorage",
    "ComputedRadiographyImageStorage",
    "CTImageStorage",
    "DeformableSpatialRegistrationStorage",
    "DigitalIntraOralXRayImageStorageForPresentation",
    "DigitalIntraOralXRayImageStorageForProcessing",
    "DigitalMammographyXRayImageStorageForPresentation",
    "DigitalMammographyXRayImageStorageForProcessing",
    "DigitalXRayImageStorageForPresentation",
    "DigitalXRayImageStorageForProcessing",
    "EncapsulatedCDAStorage",
    "EncapsulatedPDFStorage",
    "EnhancedCTImageStorage",
    "EnhancedMRColorImageStorage",
    "EnhancedMRImageStorage",
    "EnhancedPETImageStorage",
    "EnhancedSRStorage",
    "EnhancedUSVolumeStorage",
    "EnhancedXAImageStorage",
    "EnhancedXRFImageStorage",
    "GeneralAudioWaveformStorage",
    "GeneralECGWaveformStorage",
    "GrayscaleSoftcopyPresentationStateStorage",
    "HemodynamicWaveformStorage",
    "ImplantationPlanSRStorage",
    "IntraocularLensCalculationsStorage",
    "IntravascularOpticalCoherenceTomographyImageStorageForPresentation",
    "IntravascularOpticalCoherenceTomographyImageStorageForProcessing",
    "KeratometryMeasurementsStorage",
    "KeyObjectSelectionDocumentStorage",
    "LegacyConvertedEnhancedCTImageStorage",
    "LegacyConvertedEnhancedMRImageStorage",
    "LegacyConvertedEnhancedPETImageStorage",
    "LensometryMeasurementsStorage",
    "MacularGridThicknessAndVolumeReportStorage",
    "MammographyCADSRStorage",
    "MRImageStorage",
    "MRSpectroscopyStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameSingleBitSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage",
    "NuclearMedicineImageStorage",
    "OphthalmicAxialMeasurementsStorage",
    "OphthalmicPhotography16BitImageStorage",
    "OphthalmicPhotography8BitImageStorage",
    "OphthalmicThicknessMapStorage",
    "OphthalmicTomographyImageStorage",
    "OphthalmicVisualFieldStaticPerimetryMeasurementsStorage",
    "PositronEmissionTomographyImageStorage",
    "ProcedureLogStorage",
    "PseudoColorSoftcopyPresentationStageStorage",
    "RawDataStorage",
    "RealWorldValueMappingStorage",
    "RespiratoryWaveformStorage",
    "RTBeamsDeliveryInstructionStorage",
    "RTBeamsTreatmentRecordStorage",
    "RTBrachyTreatmentRecordStorage",
    "RTDoseStorage",
    "RTImageStorage",
    "RTIonBeamsTreatmentRecordStorage",
    "RTIonPlanStorage",
    "RTPlanStorage",
    "RTStructureSetStorage",
    "RTTreatmentSummaryRecordStorage",
    "SecondaryCaptureImageStorage",
    "SegmentationStorage",
    "SpatialFiducialsStorage",
    "SpatialRegistrationStorage",
    "SpectaclePrescriptionReportStorage",
    "StereometricRelationshipStorage",
    "SubjectiveRefractionMeasurementsStorage",
    "SurfaceScanMeshStorage",
    "SurfaceScanPointCloudStorage",
    "SurfaceSegmentationStorage",
    "TwelveLeadECGWaveformStorage",
    "UltrasoundImageStorage",
    "UltrasoundMultiFrameImageStorage",
    "VideoEndoscopicImageStorage",
    "VideoMicroscopicImageStorage",
    "VideoPhotographicImageStorage",
    "VisualAcuityMeasurementsStorage",
    "VLEndoscopicImageStorage",
    "VLMicroscopicImageStorage",
    "VLPhotographicImageStorage",
    "VLSlideCoordinatesMicroscopicImageStorage",
    "VLWholeSlideMicroscopyImageStorage",
    "XAXRFGrayscaleSoftcopyPresentationStateStorage",
    "XRay3DAngiographicImageStorage",
    "XRay3DCraniofacialImageStorage",
    "XRayAngiographicImageStorage",
    "XRayRadiationDoseSRStorage",
    "XRayRadiofluoroscopicImageStorage",
    # Retired, but still in use.
    "HardcopyColorImageStorage",
    "HardcopyGrayscaleImageStorage",
    "NuclearMedicineImageStorageRetired",
    "StandaloneCurveStorage",
    "StandaloneModalityLUTStorage",
    "StandaloneOverlayStorage",
    "StandalonePETCurveStorage",
    "StandaloneVOILUTStorage",
    "StoredPrintStorage",
    "UltrasoundImageStorageRetired",
    "UltrasoundMultiFrameImageStorageRetired",
    "VLImageStorageTrial",
    "VLMultiFrameImageStorageTrial",
    "XRayAngiographicBiPlaneImageStorage",
)

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts (odd IDs 1-255)


class Entry(NamedTuple):
    """One UID as the generator sees it (a row of pydicom's dictionary)."""

    uid: str
    name: str
    kind: str
    info: str
    retired: bool
    keyword: str


def _entries() -> dict[str, Entry]:
    """Every UID in pydicom's dictionary, plus the SOP classes newer than it."""
    out = {
        uid: Entry(uid, name, kind, info, bool(retired), kw)
        for uid, (name, kind, info, retired, kw) in UID_dictionary.items()
    }
    for uid, (name, kw) in NEWER_THAN_PYDICOM.items():
        if uid not in out:
            out[uid] = Entry(uid, name, "SOP Class", "", False, kw)
        elif out[uid].keyword != kw:
            sys.exit(f"{uid}: pydicom calls it {out[uid].keyword}, not {kw}")
    return out


def _name(e: Entry) -> str:
    """The exported name: pynetdicom's, which is pydicom's keyword but for RENAMED."""
    return RENAMED.get(e.uid, e.keyword)


def _by_uid(entries: list[Entry]) -> list[Entry]:
    """Sorted by UID as strings, the order of pynetdicom's context lists."""
    return sorted(entries, key=lambda e: e.uid)


def build() -> str:
    """The text of sop_class.py."""
    entries = _entries()
    by_keyword = {e.keyword: e for e in entries.values() if e.keyword}
    by_name = {_name(e): e for e in entries.values() if e.keyword}
    for uid, name in RENAMED.items():
        if uid not in entries:
            sys.exit(f"renamed UID {uid} ({name}) is not in pydicom's dictionary")
        if entries[uid].keyword == name:
            sys.exit(f"{name}: pydicom's keyword now matches; drop it from RENAMED")

    # Service groups, resolved to entries; retired SOP classes are allowed
    # (the Patient/Study Only Q/R models are retired but still in use).
    groups: dict[str, list[Entry]] = {}
    for list_name, (_, _, members) in SERVICES.items():
        resolved = [by_name[m] for m in members if m in by_name]
        if len(resolved) != len(members):
            sys.exit(f"{list_name}: unknown SOP class in {members}")
        if any(e.kind not in ("SOP Class", "Meta SOP Class") for e in resolved):
            sys.exit(f"{list_name}: not all SOP classes: {members}")
        if len(resolved) > MAX_CONTEXTS:
            sys.exit(f"{list_name} would not fit in one association")
        groups[list_name] = _by_uid(resolved)
    claimed = {e.uid for group in groups.values() for e in group}

    storage = _by_uid(
        [
            e
            for e in entries.values()
            if e.kind == "SOP Class"
            and "Storage" in e.name
            and not e.retired
            and not e.info.startswith(FOREIGN_INFO)
            and e.uid not in claimed
        ]
    )

    instances = [by_keyword.get(kw) for kw in INSTANCES]
    for kw, instance in zip(INSTANCES, instances, strict=True):
        if instance is None or instance.kind != "Well-known SOP Instance" or instance.retired:
            sys.exit(f"{kw} is not a current well-known SOP instance in pydicom")

    exported: dict[str, Entry] = {}
    for e in [*storage, *(e for e in instances if e), *(e for g in groups.values() for e in g)]:
        name = _name(e)
        if exported.setdefault(name, e) != e:
            sys.exit(f"{name} names both {exported[name].uid} and {e.uid}")
        if not name.isidentifier() or keyword.iskeyword(name) or not UID(e.uid).is_valid:
            sys.exit(f"bad name or UID: {name} = {e.uid}")
    aliases = {
        e.keyword: _name(e)
        for e in exported.values()
        if e.keyword != _name(e) and e.keyword not in exported
    }

    selection: list[tuple[Entry, bool]] = []  # (entry, exported?)
    for name in STORAGE_SELECTION:
        if name in exported:
            selection.append((exported[name], True))
        elif name in by_keyword and by_keyword[name].retired:
            selection.append((by_keyword[name], False))
        else:
            sys.exit(f"StoragePresentationContexts: unknown or non-retired {name}")
    if len({e.uid for e, _ in selection}) != 120:
        sys.exit("StoragePresentationContexts must hold 120 distinct SOP classes")
    selection.sort(key=lambda item: item[0].uid)

    list_names = sorted(
        [*SERVICES, *LIST_ALIASES, "AllStoragePresentationContexts", "StoragePresentationContexts"]
    )
    return _render(exported, aliases, storage, selection, groups, list_names)


def _all_key(name: str) -> tuple[int, list[str | int]]:
    """Ruff's RUF022 order: CONSTANTS, then CamelCase, then the rest; digits numerically."""
    group = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    parts = re.split(r"(\d+)", name)
    return group, [int(p) if p.isdigit() else p for p in parts]


def _assign(target: str, value: str) -> str:
    line = f"{target} = {value}"
    if len(line) <= LINE_LENGTH:
        return line
    head, _, arg = value.partition("(")
    return f"{target} = {head}(\n    {arg[:-1]}\n)"


def _tuple(target: str, items: list[str], comments: list[str] | None = None) -> list[str]:
    out = [f"{target} = ("]
    for i, item in enumerate(items):
        comment = f"  # {comments[i]}" if comments and comments[i] else ""
        out.append(f"    {item},{comment}")
    out.append(")")
    return out


def _render(
    exported: dict[str, Entry],
    aliases: dict[str, str],
    storage: list[Entry],
    selection: list[tuple[Entry, bool]],
    groups: dict[str, list[Entry]],
    list_names: list[str],
) -> str:
    names = sorted(exported, key=str.lower)
    all_names = sorted([*exported, *aliases, *list_names, "STORAGE_CLASSES"], key=_all_key)
    lines: list[str] = [
        "# Generated by tools/gen_sop_class.py from the UID dictionary of pydicom"
        f" {pydicom.__version__}",
        "# (pydicom._uid_dict.UID_dictionary). Do not edit by hand: change the generator",
        "# and run `python3 tools/gen_sop_class.py` from the repository root.",
        '"""SOP Class UIDs and pre-built presentation contexts.',
        "",
        "Every SOP Class UID pynetdicom's ``sop_class`` has, under the same names,",
        "as :class:`pydicom.uid.UID` values (and a few well-known SOP Instance",
        "UIDs, e.g. :data:`StorageCommitmentPushModelInstance`). Where pynetdicom's",
        "name differs from pydicom's keyword, pydicom's keyword is an alias, e.g.",
        ":data:`ModalityWorklistInformationModelFind` is",
        ":data:`ModalityWorklistInformationFind`.",
        "",
        ":data:`STORAGE_CLASSES` holds every Storage Service Class (PS3.4 Annex B)",
        "SOP class UID: the current SOP classes in pydicom's UID dictionary whose",
        'name contains "Storage", except those of Storage Commitment, Media Storage,',
        "Non-Patient Object Storage and the non-PS3 DICOS/DICONDE classes.",
        "",
        "The ``...PresentationContexts`` lists, named as in pynetdicom's",
        "``presentation`` module, hold one context per SOP class of a service, built",
        "with :func:`~aiodicom.presentation.build_context` (default transfer",
        "syntaxes), in the order of their UIDs as strings. Each access returns a",
        "*new* list of new contexts, so changing one (e.g. adding a transfer",
        "syntax) never changes what the next caller gets::",
        "",
        "    contexts = sop_class.StoragePresentationContexts  # a fresh copy",
        "    for cx in contexts:",
        "        cx.add_transfer_syntax(JPEG2000Lossless)",
        "",
        ":data:`StoragePresentationContexts` holds the 120 storage SOP classes",
        "pynetdicom proposes by default (following DCMTK's storescu, including 14",
        "retired ones), so that it fits in one association request (at most 128",
        "contexts) with room to spare; :data:`AllStoragePresentationContexts` holds",
        "every SOP class of :data:`STORAGE_CLASSES` and is for acceptors (a",
        "requestor can propose at most 128).",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import TYPE_CHECKING",
        "",
        "from pydicom.uid import UID",
        "",
        "from .presentation import PresentationContext, build_context",
        "",
        "__all__ = [",
        *(f'    "{n}",' for n in all_names),
        "]",
        "",
        "# SOP Class and well-known SOP Instance UIDs",
        "",
    ]
    lines += [_assign(f"{n}: UID", f'UID("{exported[n].uid}")') for n in names]
    lines += [
        "",
        "# Aliases: pydicom's keyword where pynetdicom's name differs (some of those are misspelt)",
        "",
    ]
    for alias in sorted(aliases, key=str.lower):
        line = f"{alias}: UID = {aliases[alias]}"
        if len(line) > LINE_LENGTH:
            line = f"{alias}: UID = (\n    {aliases[alias]}\n)"
        lines.append(line)
    lines += ["", "#: Every Storage Service Class SOP class UID, sorted as strings."]
    lines += _tuple("STORAGE_CLASSES: tuple[UID, ...]", [_name(e) for e in storage])
    lines += ["", "# The 120 SOP classes of StoragePresentationContexts."]
    lines += _tuple(
        "_STORAGE_SELECTION: tuple[UID, ...]",
        [_name(e) if ok else f'UID("{e.uid}")' for e, ok in selection],
        ["" if ok else f"{e.keyword} (retired)" for e, ok in selection],
    )
    members: dict[str, str | list[str]] = {
        "AllStoragePresentationContexts": "STORAGE_CLASSES",
        "StoragePresentationContexts": "_STORAGE_SELECTION",
    }
    for list_name, group in groups.items():
        members[list_name] = [_name(e) for e in group]
    for alias, target in LIST_ALIASES.items():
        members[alias] = members[target]
    lines += [
        "",
        "# Context list name -> the SOP classes it holds.",
        "_CONTEXTS: dict[str, tuple[UID, ...]] = {",
    ]
    for list_name in sorted(members):
        value = members[list_name]
        if isinstance(value, str):
            lines.append(f'    "{list_name}": {value},')
            continue
        joined = ", ".join(value) + ("," if len(value) == 1 else "")
        one_line = f'    "{list_name}": ({joined}),'
        if len(one_line) <= LINE_LENGTH:
            lines.append(one_line)
        else:
            lines.append(f'    "{list_name}": (')
            lines += [f"        {m}," for m in value]
            lines.append("    ),")
    lines += ["}", "", "# The context lists, declared for type checkers; see the module docstring."]
    docs = _list_docs()
    for list_name in list_names:
        lines.append(f"{list_name}: list[PresentationContext]")
        lines.append(f'"""{docs[list_name]}"""')
    lines += [
        "",
        "if not TYPE_CHECKING:  # hidden from type checkers, which would take any",
        "    # misspelt attribute for a context list",
        "",
        "    def __getattr__(name: str) -> list[PresentationContext]:",
        "        try:",
        "            uids = _CONTEXTS[name]",
        "        except KeyError:",
        '            msg = f"module {__name__!r} has no attribute {name!r}"',
        "            raise AttributeError(msg) from None",
        "        return [build_context(uid) for uid in uids]",
        "",
        "",
        "def __dir__() -> list[str]:",
        "    return sorted({*globals(), *_CONTEXTS})",
        "",
    ]
    return "\n".join(lines)


def _list_docs() -> dict[str, str]:
    docs = {
        name: f"{service} (PS3.4 Annex {annex})." for name, (annex, service, _) in SERVICES.items()
    }
    for alias, target in LIST_ALIASES.items():
        docs[alias] = f"The same as :data:`{target}`."
    docs["AllStoragePresentationContexts"] = (
        "Storage (PS3.4 Annex B): every SOP class of :data:`STORAGE_CLASSES`."
    )
    docs["StoragePresentationContexts"] = (
        "Storage (PS3.4 Annex B): 120 common SOP classes, as pynetdicom's."
    )
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    mode.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = parser.parse_args()
    text = build()
    if args.stdout:
        sys.stdout.write(text)
    elif args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date; run {sys.argv[0]}", file=sys.stderr)
            return 1
    else:
        OUT.write_text(text)
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
