"""Test data for the Query/Retrieve interop tests: patient/study/series/instance
trees written as Part 10 files, and a small Q/R matching engine over them.

- :func:`generate_tree`: 3 patients x 2 studies x 2 series x 3 instances (by
  default) with realistic names, IDs, dates, modalities and descriptions and
  small pixel data, written to a directory.
- :func:`dicomdir_tree`: pydicom's bundled ``dicomdirtests`` instances (CR, CT
  and MR of three patients; local files in the wheel, DICOMDIRs excluded).
- :func:`find_identifiers`: the C-FIND matches of a query identifier at its
  Query/Retrieve Level, one response identifier per matching entity, computed
  lazily (a generator), with the query's keys filled in (PS3.4 C.2.2).
- :func:`select_instances`: the instances a C-GET/C-MOVE identifier selects.
- :func:`expected_keys`: what a test expects a C-FIND to return.

The matching is the subset of PS3.4 C.2.2.2 the tests use: universal (empty
value), single value, wild card (``*``, ``?``), list of UIDs (``\\``) and
date/time ranges (``A-B``, ``A-``, ``-B``). Keys below the query level are not
used for matching. Importing this module does not import aiodicom (the peer
scripts use it too).
"""

from __future__ import annotations

import fnmatch
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom.data
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

#: The attributes of each level that the tests query and return.
LEVEL_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "STUDY": (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "ReferringPhysicianName",
    ),
    "SERIES": ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription"),
    "IMAGE": ("SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}

#: Unique key of each level (PS3.4 C.6.1.1 / C.6.2.1)
UNIQUE: dict[str, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

KEYWORD_LEVEL: dict[str, str] = {kw: lvl for lvl, kws in LEVEL_KEYS.items() for kw in kws}

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"

#: The SOP classes of both data sets (the storage contexts a C-GET SCU asks for)
STORAGE_CLASSES = (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, CR_IMAGE_STORAGE)

DICOMDIR_TESTS = Path(pydicom.data.__file__).resolve().parent / "test_files" / "dicomdirtests"


@dataclass(frozen=True)
class Instance:
    """One Part 10 file of a tree and the Q/R attributes of its four levels."""

    path: Path
    attrs: Mapping[str, str]
    transfer_syntax: str

    @property
    def sop_class_uid(self) -> str:
        return self.attrs["SOPClassUID"]

    @property
    def sop_instance_uid(self) -> str:
        return self.attrs["SOPInstanceUID"]

    def key(self, level: str) -> str:
        """The unique key value of this instance's entity at `level`."""
        return self.attrs[UNIQUE[level]]


def instance_of(path: str | os.PathLike[str]) -> Instance:
    ds = dcmread(path, stop_before_pixels=True)
    attrs = {}
    for keywords in LEVEL_KEYS.values():
        for kw in keywords:
            value = ds.get(kw)
            attrs[kw] = "" if value is None else str(value)
    return Instance(Path(path), attrs, str(ds.file_meta.TransferSyntaxUID))


def index_files(paths: Iterable[str | os.PathLike[str]]) -> list[Instance]:
    return [instance_of(p) for p in paths]


# --------------------------------------------------------------------------- data sets

PATIENTS = [
    ("Smith^John", "QR0001", "19600312", "M"),
    ("Garcia^Maria^Elena", "QR0002", "19751124", "F"),
    ("Nguyen^Van", "QR0003", "19881005", "M"),
    ("Okafor^Adaeze", "QR0004", "19920217", "F"),
    ("Kowalski^Piotr", "QR0005", "19550730", "M"),
]

#: (Modality, SOP Class, StudyDescription, [SeriesDescription, ...])
STUDY_KINDS = [
    ("CT", CT_IMAGE_STORAGE, "CT CHEST W CONTRAST", ["AXIAL 5MM", "CORONAL MPR", "SAGITTAL MPR"]),
    ("MR", MR_IMAGE_STORAGE, "MR BRAIN WO CONTRAST", ["T1 AX", "T2 FLAIR", "DWI"]),
    ("CR", CR_IMAGE_STORAGE, "XR CHEST 2 VIEWS", ["PA", "LATERAL", "PORTABLE"]),
]


def _instance(
    patient: tuple[str, str, str, str],
    study: dict[str, str],
    series: dict[str, str],
    number: int,
    sop_class: str,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient
    for kw, value in study.items():
        setattr(ds, kw, value)
    for kw, value in series.items():
        setattr(ds, kw, value)
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    seed = hash((ds.SOPInstanceUID, number)) & 0xFFF
    ds.PixelData = struct.pack("<64H", *(((seed + i * 37) & 0xFFF) for i in range(64)))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def generate_tree(
    directory: Path,
    *,
    patients: int = 3,
    studies: int = 2,
    series: int = 2,
    instances: int = 3,
) -> list[Instance]:
    """Write a patients x studies x series x instances tree of Part 10 files
    (Explicit VR Little Endian, 8x8 12-bit pixels) under `directory`, one
    folder per patient/study/series; return the instances in tree order.

    Study k of a patient has StudyDate 2023-0(k+1)-1(p), modality CT, MR or CR
    in turn (so a date range, a modality or a wild-card name select a known
    subset)."""
    assert patients <= len(PATIENTS)
    out: list[Instance] = []
    for p in range(patients):
        patient = PATIENTS[p]
        for s in range(studies):
            modality, sop_class, study_desc, series_descs = STUDY_KINDS[(p + s) % len(STUDY_KINDS)]
            study = {
                "StudyInstanceUID": generate_uid(),
                "StudyDate": f"2023{s + 1:02d}1{p}",
                "StudyTime": f"{8 + s:02d}{15 * p:02d}00",
                "AccessionNumber": f"A{p + 1}{s + 1:03d}",
                "StudyID": f"{s + 1}",
                "StudyDescription": study_desc,
                "ReferringPhysicianName": "Welby^Marcus",
            }
            for r in range(series):
                series_attrs = {
                    "SeriesInstanceUID": generate_uid(),
                    "Modality": modality,
                    "SeriesNumber": str(r + 1),
                    "SeriesDescription": series_descs[r % len(series_descs)],
                }
                folder = directory / patient[1] / f"ST{s + 1}" / f"SE{r + 1}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(instances):
                    ds = _instance(patient, study, series_attrs, i + 1, sop_class)
                    path = folder / f"IM{i + 1:04d}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    attrs = {kw: str(ds.get(kw, "")) for kws in LEVEL_KEYS.values() for kw in kws}
                    out.append(Instance(path, attrs, str(ExplicitVRLittleEndian)))
    return out


def dicomdir_files() -> list[Path]:
    """pydicom's ``dicomdirtests`` instances (sorted; DICOMDIRs and READMEs left out)."""
    if not DICOMDIR_TESTS.is_dir():
        raise FileNotFoundError(f"pydicom's dicomdirtests are not at {DICOMDIR_TESTS}")
    out = []
    for root, _dirs, names in os.walk(DICOMDIR_TESTS):
        for name in names:
            if name.startswith(("DICOMDIR", "README")):  # DICOMDIR, DICOMDIR-bigEnd, ...
                continue
            out.append(Path(root) / name)
    return sorted(out)


def dicomdir_tree() -> list[Instance]:
    return index_files(dicomdir_files())


# --------------------------------------------------------------------------- matching


def _is_range_vr(keyword: str) -> bool:
    return dictionary_VR(keyword) in ("DA", "TM", "DT")


def match_value(keyword: str, query: str, value: str) -> bool:
    """PS3.4 C.2.2.2 matching of one attribute (the subset described above)."""
    query = query.strip()
    if query in ("", "*"):
        return True
    vr = dictionary_VR(keyword)
    if vr == "UI" and "\\" in query:
        return value in query.split("\\")
    if _is_range_vr(keyword) and "-" in query:
        low, _, high = query.partition("-")
        return (not low or value >= low) and (not high or value <= high)
    if "*" in query or "?" in query:
        return fnmatch.fnmatchcase(value, query)
    return value.strip() == query


def _query_keys(identifier: Dataset) -> dict[str, str]:
    keys = {}
    for elem in identifier:
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet", ""):
            continue
        keys[elem.keyword] = "" if elem.value is None else str(elem.value)
    return keys


def _levels_up_to(level: str) -> tuple[str, ...]:
    return LEVELS[: LEVELS.index(level) + 1]


def matching_instances(instances: Iterable[Instance], identifier: Dataset) -> Iterator[Instance]:
    """The instances that match every key at or above the identifier's level."""
    level = str(identifier.QueryRetrieveLevel).strip().upper()
    allowed = {kw for lvl in _levels_up_to(level) for kw in LEVEL_KEYS[lvl]}
    keys = {k: v for k, v in _query_keys(identifier).items() if k in allowed and v != ""}
    for inst in instances:
        if all(match_value(k, v, inst.attrs.get(k, "")) for k, v in keys.items()):
            yield inst


def response_identifier(inst: Instance, identifier: Dataset, level: str) -> Dataset:
    """The C-FIND response for `inst`'s entity: every key of the query, valued
    from the entity if the key belongs to its level or above, else empty."""
    allowed = {kw for lvl in _levels_up_to(level) for kw in LEVEL_KEYS[lvl]}
    rsp = Dataset()
    if "SpecificCharacterSet" in identifier:
        rsp.SpecificCharacterSet = identifier.SpecificCharacterSet
    rsp.QueryRetrieveLevel = level
    for elem in identifier:
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        value = inst.attrs.get(elem.keyword, "") if elem.keyword in allowed else ""
        rsp.add_new(elem.tag, elem.VR, value or None)
    rsp.add_new(
        tag_for_keyword(UNIQUE[level]), "UI" if level != "PATIENT" else "LO", inst.key(level)
    )
    return rsp


def find_identifiers(instances: Iterable[Instance], identifier: Dataset) -> Iterator[Dataset]:
    """C-FIND matches of `identifier`, one per entity at its level, lazily."""
    level = str(identifier.QueryRetrieveLevel).strip().upper()
    seen: set[str] = set()
    for inst in matching_instances(instances, identifier):
        key = inst.key(level)
        if key in seen:
            continue
        seen.add(key)
        yield response_identifier(inst, identifier, level)


def select_instances(instances: Iterable[Instance], identifier: Dataset) -> list[Instance]:
    """The instances a C-GET/C-MOVE identifier selects (its keys at or above its level)."""
    return list(matching_instances(instances, identifier))


def query(level: str, **keys: str) -> Dataset:
    """A query identifier: QueryRetrieveLevel plus `keys` (empty string = return key)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for kw, value in keys.items():
        tag = tag_for_keyword(kw)
        assert tag is not None, kw
        ds.add_new(tag, dictionary_VR(kw), value or None)
    return ds


def expected_keys(instances: Iterable[Instance], identifier: Dataset) -> list[str]:
    """The unique keys the query should return, sorted."""
    level = str(identifier.QueryRetrieveLevel).strip().upper()
    return sorted({i.key(level) for i in matching_instances(instances, identifier)})


def by_uid(instances: Iterable[Instance]) -> dict[str, Instance]:
    return {i.sop_instance_uid: i for i in instances}
