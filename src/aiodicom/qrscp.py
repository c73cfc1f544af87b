"""A Query/Retrieve SCP: a file store with an embedded SQLite index.

:class:`Archive` owns a directory. Instances received with C-STORE are written
under ``DIR/objects/`` atomically (a spooled file is renamed into place;
otherwise the Part 10 header and the data set are written to a temporary file
that is then ``os.replace``\\ d) and indexed in ``DIR/index.sqlite`` (tables
``patient``, ``study``, ``series`` and ``instance``). C-FIND, C-GET and C-MOVE
are answered from the index for the Patient Root, Study Root and
Patient/Study Only information models (PS3.4 C.6). Every ``sqlite3`` call and
every file operation runs in a worker thread (``anyio.to_thread``); matches
are fetched in batches of :attr:`Archive.batch_size`, so a query with 100,000
matches never holds them all in memory.

Matching (PS3.4 C.2.2.2) is done in SQL with bound parameters; the same rules
are available as pure Python (:func:`match_value`) and their SQL translation
(:func:`sql_condition`):

* universal matching: an empty value (and, for any VR, the value ``*``);
* single value matching: exact and case-sensitive, except PN, which this
  implementation matches case-insensitively (:func:`str.lower` on both
  sides), with trailing empty name components ignored (``Doe^John^^`` is
  ``Doe^John``); for TM and DT a single value matches every stored value that
  begins with it (``1030`` matches ``103015.5``);
* wild card matching with ``*`` and ``?`` on AE, CS, LO, LT, PN, SH, ST, UC,
  UR and UT; on other VRs these characters are taken literally;
* range matching on DA, TM and DT: ``a-b``, ``-b``, ``a-``; an upper bound
  covers all of its precision (``-1800`` includes 18:00:59), empty stored
  values never match a range, and DT UTC offsets are ignored;
* list of UID matching and, generally, multiple values separated by ``\\``:
  an entity matches if any of the values matches;
* ModalitiesInStudy and SOPClassesInStudy match if any series (instance) of
  the study matches; the ``NumberOf...Related...`` keys are return keys only.

Requests are checked against the hierarchical model (PS3.4 C.4.1.2.1,
C.4.2.2.1, C.4.3.2.1): a missing or unknown Query/Retrieve Level, a key of a
level below the requested one, or a missing, universal, wild card or
multi-valued unique key of a level above is answered 0xA900 (Identifier does
not match SOP Class); a malformed matching value is answered 0xC001 (unable
to process). Keys the archive does not know are returned empty and the
matches are sent with 0xFF01 (one or more optional keys not supported).

Use it from code::

    archive = await Archive.open("./aiodicom-store", ae_title="QRSCP",
                                 destinations={"STORESCP": ("127.0.0.1", 11113)})
    ae = setup_ae(AE("QRSCP"), archive)
    async with anyio.create_task_group() as tg:
        await tg.start(archive.serve_commitments)   # Storage Commitment reports
        async with ae.start_server(("0.0.0.0", 11112), evt_handlers=archive.handlers()) as srv:
            await srv.serve_forever()

or as ``aiodicom qrscp -od DIR --dest STORESCP=127.0.0.1:11113 11112``.

It is also a Storage Commitment Push Model SCP (PS3.4 Annex J): an
N-ACTION asking it to commit to instances is answered at once, and the
result (the instances it holds, and those it does not with their failure
reasons) follows as an N-EVENT-REPORT, on the same association or, once that
is released, on one opened to the requestor (its AE title looked up in the
destinations).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import sqlite3
import struct
import tempfile
import threading
import tomllib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import anyio
import anyio.abc
import anyio.to_thread
from pydicom import config, dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import IS, PersonName

from . import evt, sop_class
from ._spool import file_mode, move_into, write_new
from .ae import AE
from .dimse import _new_dataset
from .dsutils import (
    Encoded,
    _new_uid,
    _scan,
    encoding_of,
    is_plain_uid,
    part10_header_for,
    probe_buffer,
)
from .errors import DicomNetworkError
from .presentation import ALL_TRANSFER_SYNTAXES, PresentationContext, build_context, build_role

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from .association import Association

__all__ = (
    "IMAGE",
    "LEVELS",
    "MODELS",
    "PATIENT",
    "PATIENT_ROOT",
    "PATIENT_STUDY_ONLY",
    "RANGE_VRS",
    "SERIES",
    "STUDY",
    "STUDY_ROOT",
    "UNIQUE_KEYS",
    "WILDCARD_VRS",
    "Archive",
    "Destination",
    "InformationModel",
    "InstanceRecord",
    "QRError",
    "Query",
    "Term",
    "build_identifier",
    "load_destinations",
    "match_value",
    "model_for",
    "normalize",
    "object_path",
    "parse_destination",
    "parse_terms",
    "plan_query",
    "setup_ae",
    "sql_condition",
)

LOGGER = logging.getLogger("aiodicom")

PATIENT: Final = "PATIENT"
STUDY: Final = "STUDY"
SERIES: Final = "SERIES"
IMAGE: Final = "IMAGE"
#: The entity levels, top down.
LEVELS: Final = (PATIENT, STUDY, SERIES, IMAGE)
_RANK: Final = {level: i for i, level in enumerate(LEVELS)}

#: A SOP Instance UID safe to use as a file name (PS3.5 9.1: digits and dots).
#: VRs on which ``*`` and ``?`` are wild cards (PS3.4 C.2.2.2.4).
WILDCARD_VRS: Final = frozenset(("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"))
#: VRs with range matching (PS3.4 C.2.2.2.5).
RANGE_VRS: Final = frozenset(("DA", "TM", "DT"))

_DA = r"\d{8}"
_TM = r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?"
_DT = r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?"
_VALUE_RE: Final = {"DA": re.compile(_DA), "TM": re.compile(_TM), "DT": re.compile(_DT)}
_RANGE_RE: Final = {
    vr: re.compile(f"(?P<lo>{pattern})?-(?P<hi>{pattern})?")
    for vr, pattern in (
        ("DA", _DA),
        ("TM", _TM),
        ("DT", _DT),
    )
}
_DT_OFFSET = re.compile(r"[+-]\d{4}$")


# ---------------------------------------------------------------------------
# Errors and statuses


class QRError(Exception):
    """A request the archive refuses: ``status`` is the DIMSE failure status to answer."""

    def __init__(self, status: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.offending = offending

    def as_status(self) -> Dataset:
        """The status as a Dataset with Status, ErrorComment and OffendingElement."""
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment[:64]
        if self.offending is not None:
            ds.OffendingElement = [self.offending]
        return ds


#: Identifier does not match SOP Class (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
IDENTIFIER_MISMATCH: Final = 0xA900
#: Unable to process: a matching value the archive cannot parse.
BAD_VALUE: Final = 0xC001
#: Unable to process: the index failed.
INDEX_FAILURE: Final = 0xC002


# ---------------------------------------------------------------------------
# Matching (pure)


class Term(NamedTuple):
    """One alternative of a parsed matching value.

    ``kind`` is ``"exact"``, ``"fold"`` (case-insensitive exact), ``"glob"``
    (``*``/``?`` wild cards), ``"fglob"`` (case-insensitive glob),
    ``"prefix"`` (the stored value begins with ``a``) or ``"range"``
    (``a`` <= stored, stored truncated to ``len(b)`` <= ``b``; either may be
    empty for an open end).
    """

    kind: str
    a: str
    b: str = ""


def normalize(vr: str, value: str) -> str:
    """A stored or queried value as the index keeps it.

    Surrounding spaces go; PN loses trailing empty components and groups; DA
    loses dots (``2020.01.31``), TM and DT colons; IS is written as an integer.
    """
    value = value.strip(" \x00")
    if vr == "PN":
        groups = [g.rstrip("^ ") for g in value.split("=")]
        return "=".join(groups).rstrip("=")
    if vr == "DA":
        return value.replace(".", "")
    if vr in ("TM", "DT"):
        return value.replace(":", "")
    if vr == "IS":
        try:
            return str(int(value))
        except ValueError:
            return value
    return value


def _strip_offset(vr: str, value: str) -> str:
    return _DT_OFFSET.sub("", value) if vr == "DT" and len(value) > 5 else value


def parse_terms(vr: str, value: str | None) -> list[Term] | None:
    """Parse a Key Attribute's matching value; ``None`` means universal matching.

    ``value`` is the DICOM string form, multiple values joined by ``\\``.
    Raises :class:`QRError` (0xC001) for a malformed DA/TM/DT value or range.
    """
    if value is None:
        return None
    terms: list[Term] = []
    for raw in value.split("\\"):
        text = raw.strip(" \x00")
        if text == "" and "\\" not in value:
            return None
        if text == "*":
            return None
        if vr in RANGE_VRS:
            text = text.replace(":", "") if vr != "DA" else text.replace(".", "")
            if "-" in text and not _VALUE_RE[vr].fullmatch(text):
                found = _RANGE_RE[vr].fullmatch(text)
                if found is None or (found["lo"] is None and found["hi"] is None):
                    raise QRError(BAD_VALUE, f"malformed {vr} range {text!r}")
                lo = _strip_offset(vr, found["lo"] or "")
                hi = _strip_offset(vr, found["hi"] or "")
                terms.append(Term("range", lo, hi))
                continue
            if not _VALUE_RE[vr].fullmatch(text):
                raise QRError(BAD_VALUE, f"malformed {vr} value {text!r}")
            text = _strip_offset(vr, text)
            terms.append(Term("exact" if vr == "DA" else "prefix", text))
            continue
        text = normalize(vr, text)
        if vr in WILDCARD_VRS and ("*" in text or "?" in text):
            terms.append(Term("fglob" if vr == "PN" else "glob", text))
        elif vr == "PN":
            terms.append(Term("fold", text))
        else:
            terms.append(Term("exact", text))
    return terms


def _fold(value: str | None) -> str | None:
    """Case folding for PN, the same in Python and in SQLite (``qr_fold``)."""
    return value.lower() if isinstance(value, str) else value


def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def _term_matches(term: Term, stored: str) -> bool:
    kind, a, b = term
    if kind == "exact":
        return stored == a
    if kind == "fold":
        return stored.lower() == a.lower()
    if kind == "glob":
        return _glob_regex(a).fullmatch(stored) is not None
    if kind == "fglob":
        return _glob_regex(a.lower()).fullmatch(stored.lower()) is not None
    if kind == "prefix":
        return stored[: len(a)] == a
    if kind == "range":
        if not stored:
            return False
        return (not a or stored >= a) and (not b or stored[: len(b)] <= b)
    raise ValueError(f"unknown term kind {kind!r}")


def match_value(vr: str, query: str | None, stored: str | Sequence[str]) -> bool:
    """Whether a stored value (normalized, see :func:`normalize`) matches a query value.

    ``stored`` may be a sequence of values (a multi-valued attribute such as
    ModalitiesInStudy): it matches if any of them does.
    """
    terms = parse_terms(vr, query)
    if terms is None:
        return True
    values = [stored] if isinstance(stored, str) else list(stored)
    if vr in ("TM", "DT"):
        values = [_strip_offset(vr, v) for v in values]
    return any(_term_matches(t, v) for t in terms for v in values)


def _glob_escape(pattern: str) -> str:
    # SQLite GLOB: '*' and '?' are DICOM's wild cards; '[' starts a class.
    return pattern.replace("[", "[[]")


def sql_condition(column: str, vr: str, query: str | None) -> tuple[str, list[Any]] | None:
    """The SQL condition (with ``?`` parameters) matching ``column`` against ``query``.

    ``column`` is an SQL expression chosen by the caller, never user input;
    every user value goes into the parameter list. ``None`` means universal
    matching (no condition). PN conditions use the ``qr_fold`` SQL function
    the archive registers on its connections.
    """
    terms = parse_terms(vr, query)
    if terms is None:
        return None
    parts: list[str] = []
    params: list[Any] = []
    for kind, a, b in terms:
        if kind == "exact":
            parts.append(f"{column} = ?")
            params.append(a)
        elif kind == "fold":
            parts.append(f"qr_fold({column}) = ?")
            params.append(a.lower())
        elif kind == "glob":
            parts.append(f"{column} GLOB ?")
            params.append(_glob_escape(a))
        elif kind == "fglob":
            parts.append(f"qr_fold({column}) GLOB ?")
            params.append(_glob_escape(a.lower()))
        elif kind == "prefix":
            parts.append(f"substr({column}, 1, ?) = ?")
            params += [len(a), a]
        else:  # range
            clause = [f"{column} <> ''"]
            if a:
                clause.append(f"{column} >= ?")
                params.append(a)
            if b:
                clause.append(f"substr({column}, 1, ?) <= ?")
                params += [len(b), b]
            parts.append("(" + " AND ".join(clause) + ")")
    return "(" + " OR ".join(parts) + ")", params


# ---------------------------------------------------------------------------
# Information models and keys


@dataclass(frozen=True, slots=True)
class InformationModel:
    """A Query/Retrieve information model: its levels and its three SOP classes."""

    name: str
    levels: tuple[str, ...]
    find: UID
    get: UID
    move: UID

    def level_of(self, entity: str) -> str | None:
        """The model's level holding ``entity``'s attributes, ``None`` if it has none.

        Patient attributes are STUDY level attributes in the Study Root model.
        """
        if entity in self.levels:
            return entity
        return self.levels[0] if entity == PATIENT else None


PATIENT_ROOT: Final = InformationModel(
    "Patient Root",
    (PATIENT, STUDY, SERIES, IMAGE),
    sop_class.PatientRootQueryRetrieveInformationModelFind,
    sop_class.PatientRootQueryRetrieveInformationModelGet,
    sop_class.PatientRootQueryRetrieveInformationModelMove,
)
STUDY_ROOT: Final = InformationModel(
    "Study Root",
    (STUDY, SERIES, IMAGE),
    sop_class.StudyRootQueryRetrieveInformationModelFind,
    sop_class.StudyRootQueryRetrieveInformationModelGet,
    sop_class.StudyRootQueryRetrieveInformationModelMove,
)
PATIENT_STUDY_ONLY: Final = InformationModel(
    "Patient/Study Only",
    (PATIENT, STUDY),
    sop_class.PatientStudyOnlyQueryRetrieveInformationModelFind,
    sop_class.PatientStudyOnlyQueryRetrieveInformationModelGet,
    sop_class.PatientStudyOnlyQueryRetrieveInformationModelMove,
)
#: The supported information models.
MODELS: Final = (PATIENT_ROOT, STUDY_ROOT, PATIENT_STUDY_ONLY)


def model_for(sop_class_uid: str) -> tuple[InformationModel, str]:
    """``(model, service)`` for a Q/R SOP Class UID; service is FIND, GET or MOVE.

    Raises :class:`QRError` (0xA900... as unable to process, 0xC000) for
    another UID.
    """
    uid = str(sop_class_uid)
    for model in MODELS:
        for service in ("find", "get", "move"):
            if getattr(model, service) == uid:
                return model, service.upper()
    raise QRError(0xC000, f"{uid} is not a supported Query/Retrieve SOP class")


_COLUMN: Final = "column"
_MULTI: Final = "multi"
_COUNT: Final = "count"


@dataclass(frozen=True, slots=True)
class _Key:
    entity: str
    keyword: str
    vr: str
    expr: str
    kind: str = _COLUMN
    #: For a multi-valued derived key: the EXISTS subquery, ``{}`` is the condition on ``x.v``.
    exists: str = ""


_KEY_LIST: Final = (
    _Key(PATIENT, "PatientID", "LO", "p.patient_id"),
    _Key(PATIENT, "PatientName", "PN", "p.patient_name"),
    _Key(PATIENT, "PatientBirthDate", "DA", "p.birth_date"),
    _Key(PATIENT, "PatientSex", "CS", "p.sex"),
    _Key(
        PATIENT,
        "NumberOfPatientRelatedStudies",
        "IS",
        "(SELECT COUNT(*) FROM study x WHERE x.patient_id = p.patient_id)",
        _COUNT,
    ),
    _Key(
        PATIENT,
        "NumberOfPatientRelatedSeries",
        "IS",
        "(SELECT COUNT(*) FROM series x JOIN study y ON y.study_uid = x.study_uid"
        " WHERE y.patient_id = p.patient_id)",
        _COUNT,
    ),
    _Key(
        PATIENT,
        "NumberOfPatientRelatedInstances",
        "IS",
        "(SELECT COUNT(*) FROM instance x JOIN series y ON y.series_uid = x.series_uid"
        " JOIN study z ON z.study_uid = y.study_uid WHERE z.patient_id = p.patient_id)",
        _COUNT,
    ),
    _Key(STUDY, "StudyInstanceUID", "UI", "st.study_uid"),
    _Key(STUDY, "StudyDate", "DA", "st.study_date"),
    _Key(STUDY, "StudyTime", "TM", "st.study_time"),
    _Key(STUDY, "AccessionNumber", "SH", "st.accession_number"),
    _Key(STUDY, "StudyID", "SH", "st.study_id"),
    _Key(STUDY, "StudyDescription", "LO", "st.study_description"),
    _Key(STUDY, "ReferringPhysicianName", "PN", "st.referring_physician_name"),
    _Key(
        STUDY,
        "ModalitiesInStudy",
        "CS",
        "(SELECT group_concat(DISTINCT x.modality) FROM series x"
        " WHERE x.study_uid = st.study_uid AND x.modality <> '')",
        _MULTI,
        "EXISTS (SELECT 1 FROM series x WHERE x.study_uid = st.study_uid AND {})",
    ),
    _Key(
        STUDY,
        "SOPClassesInStudy",
        "UI",
        "(SELECT group_concat(DISTINCT x.sop_class_uid) FROM instance x"
        " JOIN series y ON y.series_uid = x.series_uid WHERE y.study_uid = st.study_uid)",
        _MULTI,
        "EXISTS (SELECT 1 FROM instance x JOIN series y ON y.series_uid = x.series_uid"
        " WHERE y.study_uid = st.study_uid AND {})",
    ),
    _Key(
        STUDY,
        "NumberOfStudyRelatedSeries",
        "IS",
        "(SELECT COUNT(*) FROM series x WHERE x.study_uid = st.study_uid)",
        _COUNT,
    ),
    _Key(
        STUDY,
        "NumberOfStudyRelatedInstances",
        "IS",
        "(SELECT COUNT(*) FROM instance x JOIN series y ON y.series_uid = x.series_uid"
        " WHERE y.study_uid = st.study_uid)",
        _COUNT,
    ),
    _Key(SERIES, "SeriesInstanceUID", "UI", "se.series_uid"),
    _Key(SERIES, "Modality", "CS", "se.modality"),
    _Key(SERIES, "SeriesNumber", "IS", "se.series_number"),
    _Key(SERIES, "SeriesDescription", "LO", "se.series_description"),
    _Key(SERIES, "SeriesDate", "DA", "se.series_date"),
    _Key(SERIES, "SeriesTime", "TM", "se.series_time"),
    _Key(
        SERIES,
        "NumberOfSeriesRelatedInstances",
        "IS",
        "(SELECT COUNT(*) FROM instance x WHERE x.series_uid = se.series_uid)",
        _COUNT,
    ),
    _Key(IMAGE, "SOPInstanceUID", "UI", "i.sop_instance_uid"),
    _Key(IMAGE, "SOPClassUID", "UI", "i.sop_class_uid"),
    _Key(IMAGE, "InstanceNumber", "IS", "i.instance_number"),
    _Key(IMAGE, "ContentDate", "DA", "i.content_date"),
    _Key(IMAGE, "ContentTime", "TM", "i.content_time"),
    _Key(IMAGE, "AvailableTransferSyntaxUID", "UI", "i.transfer_syntax_uid"),
)
_KEYS: Final = {k.keyword: k for k in _KEY_LIST}
_KEYS_BY_TAG: Final = {int(tag_for_keyword(k.keyword) or 0): k for k in _KEY_LIST}
#: The unique key of each level (PS3.4 C.6).
UNIQUE_KEYS: Final = {
    PATIENT: "PatientID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    IMAGE: "SOPInstanceUID",
}
_TAG_QR_LEVEL: Final = 0x00080052
_TAG_CHARSET: Final = 0x00080005
_TAG_RETRIEVE_AET: Final = 0x00080054
_TAG_AVAILABILITY: Final = 0x00080056
_SPECIAL_TAGS: Final = frozenset(
    (_TAG_QR_LEVEL, _TAG_CHARSET, _TAG_RETRIEVE_AET, _TAG_AVAILABILITY)
)

_FROM: Final = {
    PATIENT: "patient p",
    STUDY: "study st JOIN patient p ON p.patient_id = st.patient_id",
    SERIES: "series se JOIN study st ON st.study_uid = se.study_uid"
    " JOIN patient p ON p.patient_id = st.patient_id",
    IMAGE: "instance i JOIN series se ON se.series_uid = i.series_uid"
    " JOIN study st ON st.study_uid = se.study_uid"
    " JOIN patient p ON p.patient_id = st.patient_id",
}


def _element_text(elem: DataElement) -> str | None:
    """A query element's value as DICOM text (``\\``-joined), ``None`` if empty."""
    value = elem.value
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        return None
    if isinstance(value, bytes | bytearray):
        return value.decode("ascii", "replace").strip(" \x00") or None
    if isinstance(value, DicomSequence):
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


@dataclass(slots=True)
class Query:
    """A checked request: what to match at which level and what to return.

    Built by :func:`plan_query`; :meth:`find_sql`, :meth:`retrieve_sql` and
    :meth:`count_sql` give its SQL.
    """

    model: InformationModel
    service: str
    level: str
    #: ``(key, matching value)`` for each key with a non-universal value.
    conditions: list[tuple[_Key, str]]
    #: The request's elements other than QueryRetrieveLevel, in order.
    requested: list[DataElement]
    #: Whether the request had keys the archive does not support (answered 0xFF01).
    unsupported: bool
    wants_charset: bool

    def _where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for key, value in self.conditions:
            if key.kind == _MULTI:
                cond = sql_condition(_multi_col(key), key.vr, value)
                if cond is None:
                    continue
                clauses.append(key.exists.format(cond[0]))
                params += cond[1]
            else:
                cond = sql_condition(key.expr, key.vr, value)
                if cond is None:
                    continue
                clauses.append(cond[0])
                params += cond[1]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def returned_keys(self) -> list[_Key]:
        """The archive's keys among the requested ones, in request order."""
        out = []
        for elem in self.requested:
            key = _KEYS_BY_TAG.get(int(elem.tag))
            if key is not None:
                out.append(key)
        return out

    def find_sql(self) -> tuple[str, list[Any]]:
        """``SELECT`` of the returned keys of the matching entities (one row each)."""
        keys = self.returned_keys()
        columns = [k.expr for k in keys] or ["1"]
        where, params = self._where()
        return f"SELECT {', '.join(columns)} FROM {_FROM[self.level]}{where}", params

    def retrieve_sql(self) -> tuple[str, list[Any]]:
        """``SELECT path`` of every instance under the matching entities."""
        where, params = self._where()
        return f"SELECT i.path FROM {_FROM[IMAGE]}{where}", params

    def pairs_sql(self, limit: int) -> tuple[str, list[Any]]:
        """The distinct (SOP Class UID, Transfer Syntax UID) of those instances."""
        where, params = self._where()
        sql = (
            f"SELECT DISTINCT i.sop_class_uid, i.transfer_syntax_uid FROM {_FROM[IMAGE]}{where}"
            f" LIMIT {int(limit)}"
        )
        return sql, params

    def count_sql(self) -> tuple[str, list[Any]]:
        """``SELECT COUNT(*)`` of the instances :meth:`retrieve_sql` gives."""
        where, params = self._where()
        return f"SELECT COUNT(*) FROM {_FROM[IMAGE]}{where}", params


def _multi_col(key: _Key) -> str:
    return "x.modality" if key.keyword == "ModalitiesInStudy" else "x.sop_class_uid"


def _is_single(vr: str, value: str | None) -> bool:
    if value is None or "\\" in value or value.strip() in ("", "*"):
        return False
    return not (vr in WILDCARD_VRS and ("*" in value or "?" in value))


def plan_query(identifier: Dataset, model: InformationModel, service: str) -> Query:
    """Check a C-FIND/C-GET/C-MOVE identifier against ``model`` and plan its query.

    ``service`` is ``"FIND"``, ``"GET"`` or ``"MOVE"``. Raises
    :class:`QRError`: 0xA900 when the identifier breaks the hierarchical
    model (PS3.4 C.4.1.2.1), 0xC001 for a malformed matching value.
    """
    raw_level = identifier.get("QueryRetrieveLevel")
    level = str(raw_level or "").strip().upper()
    if not level:
        raise QRError(IDENTIFIER_MISMATCH, "no Query/Retrieve Level", _TAG_QR_LEVEL)
    if level not in model.levels:
        raise QRError(
            IDENTIFIER_MISMATCH,
            f"level {level!r} is not in the {model.name} model",
            _TAG_QR_LEVEL,
        )
    rank = _RANK[level]
    conditions: list[tuple[_Key, str]] = []
    requested: list[DataElement] = []
    unsupported = False
    wants_charset = False
    values: dict[str, str | None] = {}
    for elem in identifier:
        tag = int(elem.tag)
        if tag == _TAG_QR_LEVEL or tag >> 16 in (0x0000, 0x0002) or tag & 0xFFFF == 0:
            continue
        if tag == _TAG_CHARSET:
            wants_charset = True
            continue
        requested.append(elem)
        if tag in _SPECIAL_TAGS:
            continue
        key = _KEYS_BY_TAG.get(tag)
        if key is None:
            unsupported = True
            continue
        key_level = model.level_of(key.entity)
        if key_level is None:
            raise QRError(
                IDENTIFIER_MISMATCH,
                f"{key.keyword} is not a key of the {model.name} model",
                tag,
            )
        if _RANK[key_level] > rank:
            raise QRError(IDENTIFIER_MISMATCH, f"{key.keyword} is below the {level} level", tag)
        text = _element_text(elem)
        values[key.keyword] = text
        if key.kind == _COUNT:
            if text is not None:
                unsupported = True  # return keys only: not matched
            continue
        if text is not None:
            parse_terms(key.vr, text)  # raises on malformed values
            conditions.append((key, text))
    for above in model.levels[: model.levels.index(level)]:
        keyword = UNIQUE_KEYS[above]
        vr = _KEYS[keyword].vr
        if not _is_single(vr, values.get(keyword)):
            raise QRError(
                IDENTIFIER_MISMATCH,
                f"{keyword} must have a single value above the {level} level",
                int(tag_for_keyword(keyword) or 0),
            )
    if service != "FIND":
        keyword = UNIQUE_KEYS[level]
        value = values.get(keyword)
        vr = _KEYS[keyword].vr
        if (
            value is None
            or value.strip() == "*"
            or (vr in WILDCARD_VRS and ("*" in value or "?" in value))
        ):
            raise QRError(
                IDENTIFIER_MISMATCH,
                f"a retrieve at the {level} level needs {keyword} values",
                int(tag_for_keyword(keyword) or 0),
            )
        # Only the unique keys select what is retrieved (PS3.4 C.4.2.2.1).
        unique = {UNIQUE_KEYS[lv] for lv in model.levels[: model.levels.index(level) + 1]}
        conditions = [(k, v) for k, v in conditions if k.keyword in unique]
    return Query(model, service, level, conditions, requested, unsupported, wants_charset)


def build_identifier(query: Query, row: Sequence[Any], ae_title: str) -> Dataset:
    """The response identifier of one match: exactly the requested keys.

    ``row`` holds the values of :meth:`Query.returned_keys`, in order. The
    elements are what ``Dataset.add_new`` would make, built directly for the
    text VRs (see :func:`_text_element`), in a Dataset made as the DIMSE
    layer makes its own (:func:`aiodicom.dimse._new_dataset`): this runs once
    per match.
    """
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    values = iter(row)
    non_ascii = False
    for elem in query.requested:
        tag = elem.tag
        key = _KEYS_BY_TAG.get(tag)
        vr = elem.VR
        value: Any
        if key is not None:
            found = next(values)
            vr = key.vr
            if found is None or found == "":
                value = None
            elif key.kind == _COUNT:
                value = str(int(found))
            elif key.kind == _MULTI:
                value = sorted(str(found).split(","))
            else:
                value = str(found)
                non_ascii = non_ascii or not value.isascii()
        elif tag == _TAG_RETRIEVE_AET:
            value = ae_title
        elif tag == _TAG_AVAILABILITY:
            value = "ONLINE"
        elif vr == "SQ":
            value = []
        else:
            value = None
        if vr in _STR_VRS:
            elements[tag] = _text_element(tag, vr, value)
        else:
            elements[tag] = DataElement(tag, vr, value)
    if query.wants_charset or non_ascii:
        elements[_CHARSET_TAG] = _text_element(_CHARSET_TAG, "CS", "ISO_IR 192")
    elements[_LEVEL_TAG] = _text_element(_LEVEL_TAG, "CS", query.level)
    return _new_dataset(elements)


class IdentifierEncoder:
    """A query's response identifiers encoded straight from index rows.

    What ``encode_dataset(build_identifier(query, row, ae_title), ts)``
    gives, byte for byte, without a Dataset: every match of a query has the
    same elements, VRs and order, only the values change, so the element
    headers are made once. For a query with an element it does not encode (a
    sequence, a VR other than the text ones and UI) or a transfer syntax
    other than Implicit or Explicit VR Little Endian, :attr:`usable` is
    False; for a row with a non-ASCII value (which goes with a Specific
    Character Set) or a value too long for its length field, :meth:`encode`
    returns None. The caller builds the Dataset then.
    """

    __slots__ = ("_explicit", "_parts", "usable")

    def __init__(self, query: Query, ae_title: str, transfer_syntax: str) -> None:
        implicit, little = encoding_of(transfer_syntax)
        self.usable = little and transfer_syntax != DeflatedExplicitVRLittleEndian
        self._explicit = not implicit
        # By tag, as build_identifier's dict: a later element replaces an earlier.
        parts: dict[int, _Part] = {}
        column = 0
        for elem in query.requested:
            tag = int(elem.tag)
            key = _KEYS_BY_TAG.get(tag)
            if key is not None:
                parts[tag] = self._part(tag, key.vr, column, key.kind)
                column += 1
            elif tag == _TAG_RETRIEVE_AET:
                parts[tag] = self._part(tag, elem.VR, text=ae_title)
            elif tag == _TAG_AVAILABILITY:
                parts[tag] = self._part(tag, elem.VR, text="ONLINE")
            else:
                parts[tag] = self._part(tag, elem.VR)
        if query.wants_charset:
            parts[_TAG_CHARSET] = self._part(_TAG_CHARSET, "CS", text="ISO_IR 192")
        parts[_TAG_QR_LEVEL] = self._part(_TAG_QR_LEVEL, "CS", text=query.level)
        self._parts = [parts[tag] for tag in sorted(parts)]

    def _part(self, tag: int, vr: str, column: int = -1, kind: str = "", text: str = "") -> _Part:
        if vr not in _STR_VRS:
            self.usable = False
        head = _TAG_HEAD.pack(tag >> 16, tag & 0xFFFF)
        long = not self._explicit or vr in ("UC", "UR", "UT")
        if self._explicit:
            head += vr.encode("ascii") + (b"\x00\x00" if long else b"")
        if column >= 0 and vr == "IS" and kind not in (_COUNT, _MULTI):
            kind = "IS"  # made as pydicom's IS makes it (see encode)
        return _Part(head, b"\x00" if vr == "UI" else b" ", long, column, kind, text)

    def encode(self, row: Sequence[Any]) -> Encoded | None:
        """The identifier of the match ``row`` (see :func:`build_identifier`), or None."""
        out: list[bytes] = []
        for head, pad, long, column, kind, text in self._parts:
            if column >= 0:
                found = row[column]
                if found is None or found == "":
                    text = ""
                elif kind == _COUNT:
                    text = str(int(found))
                elif kind == _MULTI:
                    text = "\\".join(sorted(str(found).split(",")))
                else:
                    text = str(found)
                    if kind == "IS" and not text.isdigit():
                        # (whitespace stripped; a value that is no number raises, as there)
                        text = str(IS(text, validation_mode=config.IGNORE))
            if not text.isascii():
                return None
            raw = text.encode("ascii")
            if len(raw) % 2:
                raw += pad
            if long:
                out.append(head + _U32.pack(len(raw)))
            elif len(raw) > 0xFFFF:
                return None
            else:
                out.append(head + _U16.pack(len(raw)))
            out.append(raw)
        return Encoded(b"".join(out))


class _Part(NamedTuple):
    """An element of :class:`IdentifierEncoder`'s identifiers."""

    head: bytes  # its tag (and, explicit, its VR)
    pad: bytes
    long: bool  # a 4-byte length
    column: int  # of the row, or -1: the text given
    kind: str
    text: str


_TAG_HEAD = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")


#: VRs whose elements _text_element makes: pydicom keeps their values as
#: ``str``, or as the type _STR_TYPES makes of one.
_STR_VRS = frozenset(
    ("AE", "AS", "CS", "DA", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")
)
#: The value types made without pydicom's check of the text (a regular
#: expression a value, a fifth of a match's response each for UI and IS,
#: for a warning at most): a UI as the index holds it, an IS as pydicom
#: makes it otherwise.
_STR_TYPES: dict[str, Callable[[str], Any]] = {
    "PN": PersonName,
    "UI": _new_uid,
    "IS": functools.partial(IS, validation_mode=config.IGNORE),
}
_CHARSET_TAG = BaseTag(_TAG_CHARSET)
_LEVEL_TAG = BaseTag(_TAG_QR_LEVEL)


def _text_element(tag: BaseTag, vr: str, value: str | list[str] | None) -> DataElement:
    """The element ``Dataset.add_new(tag, vr, value)`` makes for a text VR, without
    pydicom's conversion and checks (most of a match's cost): of a list, one value
    is the value and several a MultiValue; a PN's value is a PersonName, a UI's a UID."""
    converted: Any = value
    if isinstance(value, list):
        converted = value[0] if len(value) == 1 else MultiValue(str, value)
    if isinstance(converted, str) and vr in _STR_TYPES:
        converted = _STR_TYPES[vr](converted)
    return DataElement(tag, vr, converted, already_converted=True, validation_mode=config.IGNORE)


# ---------------------------------------------------------------------------
# Destinations


class Destination(NamedTuple):
    """A C-MOVE destination's address."""

    host: str
    port: int


def _address(text: str) -> Destination:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return Destination(host.strip("[]"), int(port))


def parse_destination(text: str) -> tuple[str, Destination]:
    """Parse ``AET=HOST:PORT`` (as given to ``--dest``); IPv6 hosts in brackets."""
    aet, sep, address = text.partition("=")
    aet = aet.strip()
    if not sep or not aet or len(aet) > 16:
        raise ValueError(f"{text!r} is not AET=HOST:PORT")
    return aet, _address(address)


def load_destinations(path: str | os.PathLike[str]) -> dict[str, Destination]:
    """Read C-MOVE destinations from a TOML file (blocking).

    The file has a ``[destinations]`` table mapping each AE title to
    ``"host:port"`` or to an inline table ``{ host = "...", port = N }``::

        [destinations]
        STORESCP = "127.0.0.1:11113"
        PACS = { host = "pacs.example.org", port = 104 }

    Raises ``ValueError`` for a malformed file or entry.
    """
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None
    table = data.get("destinations", {})
    if not isinstance(table, dict):
        raise ValueError(f"{os.fspath(path)}: [destinations] is not a table")
    out: dict[str, Destination] = {}
    for aet, entry in table.items():
        if isinstance(entry, str):
            out[aet.strip()] = _address(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("port"), int) and entry.get("host"):
            out[aet.strip()] = Destination(str(entry["host"]), int(entry["port"]))
        else:
            raise ValueError(f"{os.fspath(path)}: bad destination {aet} = {entry!r}")
    return out


# ---------------------------------------------------------------------------
# The index


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the index keeps of one instance (values normalized, ``""`` when absent)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    path: str
    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    series_date: str = ""
    series_time: str = ""
    instance_number: str = ""
    content_date: str = ""
    content_time: str = ""
    transfer_syntax_uid: str = ""
    size: int = 0

    @classmethod
    def from_dataset(
        cls, ds: Dataset, *, path: str, transfer_syntax: str, size: int
    ) -> InstanceRecord:
        """The record of ``ds``; raises :class:`QRError` (0xC000) without valid UIDs."""
        return cls.from_text(
            _dataset_text(ds), path=path, transfer_syntax=transfer_syntax, size=size
        )

    @classmethod
    def from_text(
        cls, text: _Text, *, path: str, transfer_syntax: str, size: int
    ) -> InstanceRecord:
        """The record of the values ``text(keyword, VR)`` gives (normalized, ``""``
        if absent); raises :class:`QRError` (0xC000) without valid UIDs."""
        values: dict[str, Any] = {}
        for name, keyword, vr, _ in _INDEXED:
            value = text(keyword, vr)
            if vr == "UI" and not is_plain_uid(value):
                raise QRError(0xC000, f"the data set has no valid {keyword}")
            values[name] = value
        return cls(**values, path=path, transfer_syntax_uid=str(transfer_syntax), size=size)


#: The UIDs every instance must have, in the order they are checked.
_REQUIRED_UIDS: Final = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
#: What the index keeps of a data set, as (record field, keyword, VR, tag): the
#: column keys of the C-FIND table that the data set gives (the transfer
#: syntax comes from the association), the required UIDs first. One table,
#: so what is indexed is matched with the same VR.
_INDEXED: Final = tuple(
    sorted(
        (
            (k.expr.partition(".")[2], k.keyword, k.vr, int(tag_for_keyword(k.keyword) or 0))
            for k in _KEY_LIST
            if k.kind == _COLUMN and k.keyword != "AvailableTransferSyntaxUID"
        ),
        key=lambda f: _REQUIRED_UIDS.index(f[1]) if f[1] in _REQUIRED_UIDS else len(_REQUIRED_UIDS),
    )
)
#: ``text(keyword, VR)``: an indexed attribute's value as the index keeps it.
_Text = Callable[[str, str], str]


def _dataset_text(ds: Dataset) -> _Text:
    """:data:`_Text` of a pydicom Dataset."""

    def text(keyword: str, vr: str) -> str:
        value = ds.get(keyword)
        if value is None or value == "":
            return ""
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            value = "\\".join(str(v) for v in value)
        return normalize(vr, str(value))

    return text


#: The tag of each indexed keyword, its VR, and the last of them.
_INDEXED_TAGS: Final = {tag: (keyword, vr) for _, keyword, vr, tag in _INDEXED}
_LAST_INDEXED: Final = max(_INDEXED_TAGS)
_WANTED: Final = frozenset((*_INDEXED_TAGS, _CHARSET_TAG))
#: A value the encoded path reads as is: printable ASCII, one value (no
#: backslash). Anything else (another character set's bytes, escape
#: sequences, several values) is left to pydicom's decoding.
_PLAIN_VALUE: Final = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")
#: Character sets under which such a value reads as ASCII (ISO_IR 13, whose
#: G0 is JIS X 0201, and anything unknown go to pydicom).
_ASCII_CHARSETS: Final = frozenset(
    (
        b"",
        b"ISO_IR 6",
        b"ISO_IR 100",
        b"ISO_IR 101",
        b"ISO_IR 109",
        b"ISO_IR 110",
        b"ISO_IR 126",
        b"ISO_IR 127",
        b"ISO_IR 138",
        b"ISO_IR 144",
        b"ISO_IR 148",
        b"ISO_IR 166",
        b"ISO_IR 192",
        b"GB18030",
        b"GBK",
    )
)
#: How many levels of sequences of undefined length the encoded path walks over.
_SEQUENCE_LEVELS: Final = 8


def _encoded_text(
    data: bytes | bytearray | memoryview, transfer_syntax: str, *, whole: bool = True
) -> _Text | None:
    """:data:`_Text` read straight from an encoded data set, without pydicom:
    the element headers are walked up to the last indexed attribute.

    ``None`` where this cannot tell for certain what pydicom would read (a
    deflated data set, a malformed or unexpected element, a value that is not
    plain ASCII, a character set not listed); the caller then decodes with
    pydicom. ``whole``: ``data`` is the whole data set, not only its head.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return None
    implicit, little = encoding_of(transfer_syntax)
    scanned = _scan(
        data,
        0,
        implicit=implicit,
        little=little,
        until=_LAST_INDEXED,
        wanted=_WANTED,
        sequences=_SEQUENCE_LEVELS,
    )
    if scanned is None or (not whole and scanned[1] >= len(data)):
        return None
    values: dict[str, str] = {}
    plain = _PLAIN_VALUE.fullmatch
    for tag, (start, length, vr) in scanned[0].items():
        if length == 0xFFFFFFFF:
            return None
        raw = bytes(data[start : start + length]).strip(b" \x00")
        if tag == _CHARSET_TAG:
            if raw not in _ASCII_CHARSETS:
                return None
            continue
        keyword, expected = _INDEXED_TAGS[tag]
        if (vr is not None and vr != expected) or plain(raw) is None:
            return None
        values[keyword] = raw.decode("ascii")

    def text(keyword: str, vr: str) -> str:
        value = values.get(keyword)
        return normalize(vr, value) if value else ""

    return text


#: How much of a file's head :func:`_spooled_text` reads.
_HEAD_READ: Final = 64 << 10


def _spooled_text(path: str, transfer_syntax: str) -> _Text | None:
    """:func:`_encoded_text` of a Part 10 file's head (blocking; ``None``: use pydicom)."""
    with open(path, "rb") as f:
        head = f.read(_HEAD_READ)
    try:
        offset = probe_buffer(head).offset
    except Exception:  # whatever it is, pydicom reports it
        return None
    return _encoded_text(memoryview(head)[offset:], transfer_syntax, whole=len(head) < _HEAD_READ)


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS patient (
    patient_id TEXT PRIMARY KEY NOT NULL,
    patient_name TEXT NOT NULL DEFAULT '',
    birth_date TEXT NOT NULL DEFAULT '',
    sex TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS study (
    study_uid TEXT PRIMARY KEY NOT NULL,
    patient_id TEXT NOT NULL,
    study_date TEXT NOT NULL DEFAULT '',
    study_time TEXT NOT NULL DEFAULT '',
    accession_number TEXT NOT NULL DEFAULT '',
    study_id TEXT NOT NULL DEFAULT '',
    study_description TEXT NOT NULL DEFAULT '',
    referring_physician_name TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS study_patient ON study (patient_id);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY NOT NULL,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    series_number TEXT NOT NULL DEFAULT '',
    series_description TEXT NOT NULL DEFAULT '',
    series_date TEXT NOT NULL DEFAULT '',
    series_time TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS series_study ON series (study_uid);
CREATE TABLE IF NOT EXISTS instance (
    sop_instance_uid TEXT PRIMARY KEY NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    instance_number TEXT NOT NULL DEFAULT '',
    content_date TEXT NOT NULL DEFAULT '',
    content_time TEXT NOT NULL DEFAULT '',
    transfer_syntax_uid TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instance_series ON instance (series_uid);
"""

_RECORD_FIELDS: Final = tuple(f.name for f in fields(InstanceRecord))


def _upsert(conn: sqlite3.Connection, rec: InstanceRecord) -> None:
    """Insert or replace one instance and its parents, pruning emptied parents (blocking)."""
    old = conn.execute(
        "SELECT i.series_uid, se.study_uid, st.patient_id FROM instance i"
        " LEFT JOIN series se ON se.series_uid = i.series_uid"
        " LEFT JOIN study st ON st.study_uid = se.study_uid"
        " WHERE i.sop_instance_uid = ?",
        (rec.sop_instance_uid,),
    ).fetchone()
    conn.execute(
        "INSERT INTO patient (patient_id, patient_name, birth_date, sex) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (patient_id) DO UPDATE SET patient_name = excluded.patient_name,"
        " birth_date = excluded.birth_date, sex = excluded.sex",
        (rec.patient_id, rec.patient_name, rec.birth_date, rec.sex),
    )
    conn.execute(
        "INSERT INTO study (study_uid, patient_id, study_date, study_time, accession_number,"
        " study_id, study_description, referring_physician_name)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (study_uid) DO UPDATE SET"
        " patient_id = excluded.patient_id, study_date = excluded.study_date,"
        " study_time = excluded.study_time, accession_number = excluded.accession_number,"
        " study_id = excluded.study_id, study_description = excluded.study_description,"
        " referring_physician_name = excluded.referring_physician_name",
        (
            rec.study_uid,
            rec.patient_id,
            rec.study_date,
            rec.study_time,
            rec.accession_number,
            rec.study_id,
            rec.study_description,
            rec.referring_physician_name,
        ),
    )
    conn.execute(
        "INSERT INTO series (series_uid, study_uid, modality, series_number,"
        " series_description, series_date, series_time) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (series_uid) DO UPDATE SET study_uid = excluded.study_uid,"
        " modality = excluded.modality, series_number = excluded.series_number,"
        " series_description = excluded.series_description,"
        " series_date = excluded.series_date, series_time = excluded.series_time",
        (
            rec.series_uid,
            rec.study_uid,
            rec.modality,
            rec.series_number,
            rec.series_description,
            rec.series_date,
            rec.series_time,
        ),
    )
    conn.execute(
        "INSERT OR REPLACE INTO instance (sop_instance_uid, series_uid, sop_class_uid,"
        " instance_number, content_date, content_time, transfer_syntax_uid, path, size)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            rec.sop_instance_uid,
            rec.series_uid,
            rec.sop_class_uid,
            rec.instance_number,
            rec.content_date,
            rec.content_time,
            rec.transfer_syntax_uid,
            rec.path,
            rec.size,
        ),
    )
    if old is not None:
        series_uid, study_uid, patient_id = old
        conn.execute(
            "DELETE FROM series WHERE series_uid = ?"
            " AND NOT EXISTS (SELECT 1 FROM instance WHERE series_uid = ?)",
            (series_uid, series_uid),
        )
        conn.execute(
            "DELETE FROM study WHERE study_uid = ?"
            " AND NOT EXISTS (SELECT 1 FROM series WHERE study_uid = ?)",
            (study_uid, study_uid),
        )
        conn.execute(
            "DELETE FROM patient WHERE patient_id = ?"
            " AND NOT EXISTS (SELECT 1 FROM study WHERE patient_id = ?)",
            (patient_id, patient_id),
        )


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection with ``qr_fold`` registered (blocking)."""
    if readonly:
        conn = sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
        )
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.create_function("qr_fold", 1, _fold, deterministic=True)
    return conn


def object_path(sop_instance_uid: str) -> str:
    """Where an instance lives, relative to the archive directory.

    ``objects/<2 hex digits>/<SOP Instance UID>.dcm``; the UID must be valid.
    """
    if not is_plain_uid(sop_instance_uid):
        raise QRError(0xC000, f"{sop_instance_uid!r} is not a valid UID")
    bucket = hashlib.sha1(sop_instance_uid.encode("ascii")).hexdigest()[:2]
    return f"objects/{bucket}/{sop_instance_uid}.dcm"


# ---------------------------------------------------------------------------
# The archive


#: Storage Commitment requests waiting for :meth:`Archive.serve_commitments`.
_COMMITMENT_BACKLOG: Final = 64


@dataclass(slots=True)
class _Commitment:
    """A Storage Commitment request waiting for its report."""

    assoc: Association
    requestor: str
    transaction: str
    references: list[tuple[str, str]]


def _reference(class_uid: str, instance_uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = class_uid
    item.ReferencedSOPInstanceUID = instance_uid
    if reason is not None:
        item.FailureReason = reason
    return item


def _as_sent(ds: Dataset, tag: int) -> str:
    """A text value of ``ds`` as the peer sent it ("" if absent), without
    pydicom converting it: a UID that is none would have it warn (or raise,
    where warnings are errors), and the caller checks it anyway."""
    elem = ds.get_item(tag)
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00 ")
    return str(value or "")


def _touch(dataset: Dataset, elem: DataElement) -> None:
    """Nothing: :meth:`Dataset.walk` has converted ``elem`` to reach it."""


class Archive:
    """A DICOM file store under ``directory`` with its SQLite index, and Q/R handlers.

    Open it with ``await Archive.open(directory, ...)`` (or ``async with``)
    and close it with :meth:`aclose`. :meth:`handlers` gives the
    ``evt_handlers`` for a server; :func:`setup_ae` prepares the AE.
    """

    #: Rows fetched per worker-thread call while streaming matches.
    batch_size: int = 500

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        ae_title: str = "AIODICOM",
        destinations: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.ae_title = ae_title
        #: C-MOVE destinations by AE title.
        self.destinations: dict[str, Destination] = {
            aet: Destination(*addr) for aet, addr in (destinations or {}).items()
        }
        #: Rows fetched from the index by queries so far (for tests and statistics).
        self.rows_fetched = 0
        #: Storage Commitment reports sent and answered so far.
        self.commitments_reported = 0
        self._commitments: MemoryObjectSendStream[_Commitment] | None = None
        self._conn: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()

    @property
    def index_path(self) -> Path:
        """The SQLite index file."""
        return self.directory / "index.sqlite"

    @property
    def incoming(self) -> Path:
        """Where files are written before they are renamed into place (the spool directory)."""
        return self.directory / ".incoming"

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        ae_title: str = "AIODICOM",
        destinations: Mapping[str, tuple[str, int]] | None = None,
    ) -> Archive:
        """Create or open the archive in ``directory``."""
        archive = cls(directory, ae_title=ae_title, destinations=destinations)
        await anyio.to_thread.run_sync(archive._open)
        return archive

    def _open(self) -> None:
        self.incoming.mkdir(parents=True, exist_ok=True)
        (self.directory / "objects").mkdir(exist_ok=True)
        for stale in self.incoming.glob("*"):  # left by a crash: never indexed
            with contextlib.suppress(OSError):
                stale.unlink()
        conn = _connect(self.index_path, readonly=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def aclose(self) -> None:
        """Close the index."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(conn.close)

    async def __aenter__(self) -> Archive:
        if self._conn is None:
            await anyio.to_thread.run_sync(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- writing ----------------------------------------------------------

    def _writer(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the archive is not open")
        return self._conn

    async def add_records(self, records: Iterable[InstanceRecord]) -> None:
        """Index records directly, in one transaction (no files are written)."""

        def run() -> None:
            conn = self._writer()
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for rec in records:
                        _upsert(conn, rec)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

        await anyio.to_thread.run_sync(run)

    def _store_blocking(
        self, header: bytes, data: bytes | None, spooled: str | None, transfer_syntax: str
    ) -> InstanceRecord:
        """Put a received instance into place and index it, all or nothing (blocking)."""
        if spooled is not None:
            tmp = spooled
        else:
            assert data is not None
            tmp = write_new(self.incoming, "in-", (header, data))  # with open()'s mode
        try:
            if data is not None:
                text = _encoded_text(data, transfer_syntax)
                size = len(header) + len(data)
            else:
                text = _spooled_text(tmp, transfer_syntax)
                size = os.stat(tmp).st_size
            try:
                if text is None:  # pydicom reads it (its values on first use)
                    text = _dataset_text(dcmread(tmp, stop_before_pixels=True))
                rel = object_path(text("SOPInstanceUID", "UI"))
                rec = InstanceRecord.from_text(
                    text, path=rel, transfer_syntax=transfer_syntax, size=size
                )
            except (QRError, OSError, MemoryError):
                raise  # (a read error or no memory is not the data set's fault)
            except Exception as exc:  # pydicom's, of a damaged data set (an unknown VR...)
                detail = f"{type(exc).__name__}: {str(exc)[:160]}"
                raise QRError(0xC000, f"the data set does not decode: {detail}") from exc
            final = self.directory / rel
            conn = self._writer()
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    _upsert(conn, rec)
                    self._replace(tmp, final)
                    tmp = ""
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            return rec
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    @staticmethod
    def _replace(tmp: str, final: Path) -> None:
        """Rename the written file into place with the mode open() gives (not
        mkstemp's 0o600), copied first if it is on another file system (a seam
        for tests). Its directory is made the first time it is missing."""
        try:
            move_into(tmp, final, file_mode())
        except FileNotFoundError:
            if not os.path.exists(tmp):
                raise
            final.parent.mkdir(parents=True, exist_ok=True)
            move_into(tmp, final, file_mode())

    async def store_file(self, path: str | os.PathLike[str]) -> InstanceRecord:
        """Copy a Part 10 file into the archive and index it (the file is left alone)."""

        def copy() -> str:
            fd, tmp = tempfile.mkstemp(prefix="in-", suffix=".dcm", dir=self.incoming)
            try:
                with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                    while block := src.read(1 << 20):
                        out.write(block)
            except BaseException:
                os.unlink(tmp)
                raise
            return tmp

        def ts_of(tmp: str) -> str:
            meta = dcmread(tmp, stop_before_pixels=True).file_meta
            return str(meta.TransferSyntaxUID)

        tmp = await anyio.to_thread.run_sync(copy)
        try:
            ts = await anyio.to_thread.run_sync(ts_of, tmp)
        except BaseException:
            await anyio.to_thread.run_sync(os.unlink, tmp)
            raise
        return await anyio.to_thread.run_sync(self._store_blocking, b"", None, tmp, ts)

    # -- reading ----------------------------------------------------------

    async def rows(self, sql: str, params: Sequence[Any]) -> AsyncGenerator[tuple[Any, ...], None]:
        """Stream the rows of a query, :attr:`batch_size` per worker-thread call."""
        conn = await anyio.to_thread.run_sync(lambda: _connect(self.index_path, readonly=True))
        try:
            cursor = await anyio.to_thread.run_sync(conn.execute, sql, list(params))
            while True:
                batch = await anyio.to_thread.run_sync(cursor.fetchmany, self.batch_size)
                if not batch:
                    return
                self.rows_fetched += len(batch)
                for row in batch:
                    yield tuple(row)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(conn.close)

    async def scalar(self, sql: str, params: Sequence[Any]) -> Any:
        """The first column of the first row of a query."""

        def run() -> Any:
            conn = _connect(self.index_path, readonly=True)
            try:
                row = conn.execute(sql, list(params)).fetchone()
            finally:
                conn.close()
            return None if row is None else row[0]

        return await anyio.to_thread.run_sync(run)

    async def find(
        self, query: Query, transfer_syntax: str | None = None
    ) -> AsyncGenerator[Dataset | Encoded, None]:
        """The response identifiers of a C-FIND query, streamed: Datasets, or
        with ``transfer_syntax``, what :class:`IdentifierEncoder` makes of
        each match it can encode (already encoded in that transfer syntax)."""
        identifier = self._identifiers(query, transfer_syntax)
        rows = self.rows(*query.find_sql())
        try:
            async for row in rows:
                yield identifier(row)
        finally:
            await rows.aclose()

    def _identifiers(
        self, query: Query, transfer_syntax: str | None
    ) -> Callable[[Sequence[Any]], Dataset | Encoded]:
        """What makes the identifier of a match of ``query`` from its row (see :meth:`find`)."""
        ae_title = self.ae_title
        encoder = None
        if transfer_syntax is not None:
            encoder = IdentifierEncoder(query, ae_title, transfer_syntax)
        if encoder is None or not encoder.usable:
            return lambda row: build_identifier(query, row, ae_title)
        encode = encoder.encode

        def identifier(row: Sequence[Any]) -> Dataset | Encoded:
            encoded = encode(row)
            return encoded if encoded is not None else build_identifier(query, row, ae_title)

        return identifier

    async def retrieve(self, query: Query) -> tuple[int, AsyncGenerator[str, None]]:
        """The number of instances a C-GET/C-MOVE query selects, and their paths."""
        count = int(await self.scalar(*query.count_sql()) or 0)
        sql, params = query.retrieve_sql()

        async def paths() -> AsyncGenerator[str, None]:
            rows = self.rows(sql, params)
            sent = 0
            base = str(self.directory)
            join = os.path.join  # what Path's / does, for a relative path, without a Path
            try:
                async for (rel,) in rows:
                    if sent >= count:
                        return
                    sent += 1
                    yield join(base, rel)
            finally:
                await rows.aclose()

        return count, paths()

    # -- handlers ---------------------------------------------------------

    async def handle_echo(self, event: evt.Event) -> int:
        """EVT_C_ECHO: success."""
        return 0x0000

    async def handle_store(self, event: evt.Event) -> int | Dataset:
        """EVT_C_STORE: write the instance atomically and index it."""
        uid = str(evt.request_value(event, "AffectedSOPInstanceUID") or "")
        if not is_plain_uid(uid):
            LOGGER.error("Refusing SOP Instance UID %r", uid)
            return 0xC211
        assert event.context is not None
        spooled = event.dataset_path
        header = b""
        if spooled is None:  # part10_header(event.file_meta), without the Datasets
            sop_class = evt.request_value(event, "AffectedSOPClassUID")
            header = part10_header_for(sop_class, uid, str(event.context.transfer_syntax))
        data = None if spooled is not None else event.encoded_dataset()
        try:
            rec = await anyio.to_thread.run_sync(
                self._store_blocking, header, data, spooled, str(event.context.transfer_syntax)
            )
        except QRError as exc:
            LOGGER.error("Refusing instance %s: %s", uid, exc.comment)
            return exc.as_status()  # with its Error Comment
        except Exception:
            LOGGER.exception("Could not store instance %s", uid)
            return 0xC210
        if rec.sop_instance_uid != uid:
            LOGGER.warning(
                "Instance stored under its data set's SOP Instance UID %s, not %s",
                rec.sop_instance_uid,
                uid,
            )
        LOGGER.info("Stored %s", rec.path)
        return 0x0000

    def _plan(self, event: evt.Event, service: str) -> Query:
        sop_class = str(evt.request_value(event, "AffectedSOPClassUID") or "")
        model, found = model_for(sop_class)
        if found != service:
            raise QRError(0xC000, f"{sop_class!r} is not a {service} class")
        try:
            identifier = event.identifier
            # pydicom converts each element on first access: a value that
            # does not decode (a US of 3 bytes, say) fails here, as a refusal,
            # rather than inside plan_query as a handler error (0xC311).
            identifier.walk(_touch)
        except Exception as exc:
            raise QRError(0xC000, f"the identifier does not decode: {str(exc)[:200]}") from exc
        return plan_query(identifier, model, service)

    async def handle_find(self, event: evt.Event) -> AsyncIterator[tuple[Any, Dataset | None]]:
        """EVT_C_FIND: yield ``(0xFF00 or 0xFF01, identifier)`` per match."""
        async with contextlib.aclosing(self._find_items(event, None)) as items:
            async for status, identifier in items:
                assert not isinstance(identifier, Encoded)
                yield status, identifier

    def _handle_find_encoded(
        self, event: evt.Event
    ) -> AsyncGenerator[tuple[Any, Dataset | Encoded | None], None]:
        """:meth:`handle_find`, each identifier already encoded in the
        context's transfer syntax where :class:`IdentifierEncoder` can (the
        C-FIND service sends it as it is): what :meth:`handlers` binds."""
        assert event.context is not None
        return self._find_items(event, str(event.context.transfer_syntax))

    async def _find_items(
        self, event: evt.Event, transfer_syntax: str | None
    ) -> AsyncGenerator[tuple[Any, Dataset | Encoded | None], None]:
        try:
            query = self._plan(event, "FIND")
        except QRError as exc:
            LOGGER.warning("C-FIND refused: %s", exc.comment)
            yield exc.as_status(), None
            return
        pending = 0xFF01 if query.unsupported else 0xFF00
        identifier = self._identifiers(query, transfer_syntax)
        rows = self.rows(*query.find_sql())
        try:
            async for row in rows:
                if event.is_cancelled:
                    yield 0xFE00, None
                    return
                yield pending, identifier(row)
        except sqlite3.Error as exc:
            LOGGER.error("C-FIND failed: %s", exc)
            yield QRError(INDEX_FAILURE, f"index failure: {exc}").as_status(), None
        finally:
            await rows.aclose()

    async def _contexts_for(self, query: Query) -> list[PresentationContext] | None:
        """One context per (SOP class, transfer syntax) of the selected instances.

        ``None`` when there are more pairs than an association can propose
        (128): the library's default contexts are proposed then.
        """
        sql, params = query.pairs_sql(limit=129)
        pairs = [row async for row in self.rows(sql, params)]
        if not pairs or len(pairs) > 128:
            return None
        return [build_context(UID(a), [UID(t)]) for a, t in pairs]

    async def _retrieve(self, event: evt.Event, service: str) -> AsyncGenerator[Any, None]:
        """The C-GET/C-MOVE handler's items (for C-MOVE the destination comes first)."""
        destination: tuple[Any, ...] | None = None
        if service == "MOVE":
            aet = str(event.move_destination or "").strip()
            dest = self.destinations.get(aet)
            if dest is None:
                LOGGER.warning("C-MOVE to unknown destination %r", aet)
                yield None, None
                return
            destination = tuple(dest)
        try:
            query = self._plan(event, service)
            count, paths = await self.retrieve(query)
            if destination is not None:
                contexts = await self._contexts_for(query)
                if contexts is not None:
                    destination = (*destination, {"contexts": contexts})
        except (QRError, sqlite3.Error) as exc:
            error = exc if isinstance(exc, QRError) else QRError(INDEX_FAILURE, str(exc))
            LOGGER.warning("C-%s refused: %s", service, error.comment)
            if destination is not None:
                yield destination
            yield 0  # no sub-operations: the failure status is the final response
            yield error.as_status(), None
            return
        try:
            if destination is not None:
                yield destination
            yield count
            async for path in paths:
                if event.is_cancelled:
                    yield 0xFE00, None
                    return
                yield 0xFF00, path
        finally:
            await paths.aclose()

    def handle_get(self, event: evt.Event) -> AsyncGenerator[Any, None]:
        """EVT_C_GET: yield the number of instances, then ``(0xFF00, path)`` for each.

        A refused request yields 0 then the failure status (0xA900, 0xC0xx).
        """
        return self._retrieve(event, "GET")

    def handle_move(self, event: evt.Event) -> AsyncGenerator[Any, None]:
        """EVT_C_MOVE: yield the destination, the number of instances, then the paths.

        The destination is ``(host, port, {"contexts": [...]})`` proposing one
        context per SOP class and transfer syntax of the selected instances
        (so compressed files can be sent as they are), ``(host, port)`` when
        there are too many of them, or ``(None, None)`` for an AE title
        not in :attr:`destinations` (answered 0xA801).
        """
        return self._retrieve(event, "MOVE")

    # -- Storage Commitment (PS3.4 Annex J) ---------------------------------

    async def serve_commitments(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Send the results of Storage Commitment requests, until cancelled.

        Run it beside the server (``await tg.start(archive.serve_commitments)``):
        :meth:`handle_commitment` answers each N-ACTION at once and leaves
        the result to this task, which checks every referenced instance in
        the index and sends the N-EVENT-REPORT (PS3.4 J.3.3): on the
        association of the request while it lasts, else on one it opens to
        the requestor's AE title in :attr:`destinations`, taking the SCP role
        by role selection. Without it running, requests are refused (0x0110).
        """
        send, receive = anyio.create_memory_object_stream[_Commitment](_COMMITMENT_BACKLOG)
        self._commitments = send
        current: _Commitment | None = None
        try:
            task_status.started()
            async for current in receive:
                try:
                    await self._report(current)
                except Exception:
                    LOGGER.exception("Storage Commitment %s: no report sent", current.transaction)
                current = None
        finally:
            self._commitments = None
            send.close()
            # Stopped: the requests taken but not reported are logged.
            left = [] if current is None else [current.transaction]
            while True:
                try:
                    left.append(receive.receive_nowait().transaction)
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            receive.close()
            if left:
                LOGGER.warning("Storage Commitment stopped before reporting %s", ", ".join(left))

    async def handle_commitment(self, event: evt.Event) -> tuple[Any, Dataset | None]:
        """EVT_N_ACTION: take a Storage Commitment request (PS3.4 J.3.2).

        0x0000 once it is queued for :meth:`serve_commitments`; 0x0112 for an
        instance other than the well-known one, 0x0123 for an action other
        than 1 (Request Storage Commitment), 0x0115 (invalid argument value)
        for a request without a valid Transaction UID or with no Referenced
        SOP Sequence item (PS3.4 J.3.2.1.1 requires both), 0x0213 when too
        many are waiting.
        """
        try:
            job = self._commitment_job(event)
            if self._commitments is None:
                raise QRError(0x0110, "Storage Commitment is not being served")
            try:
                self._commitments.send_nowait(job)
            except anyio.WouldBlock:
                raise QRError(0x0213, "too many Storage Commitment requests waiting") from None
        except QRError as exc:
            return exc.as_status(), None
        LOGGER.info("Storage Commitment %s: %d instance(s)", job.transaction, len(job.references))
        return 0x0000, None

    def _commitment_job(self, event: evt.Event) -> _Commitment:
        """The request of an N-ACTION, checked (a refusal raises :class:`QRError`)."""
        request = event.request
        if request.get("RequestedSOPClassUID") != sop_class.StorageCommitmentPushModel:
            raise QRError(0x0118, "only Storage Commitment Push Model is served")
        if request.get("RequestedSOPInstanceUID") != sop_class.StorageCommitmentPushModelInstance:
            raise QRError(0x0112, "not the Storage Commitment Push Model SOP Instance")
        if event.action_type != 1:
            raise QRError(0x0123, f"no action type {event.action_type}")
        try:
            info = event.action_information
            transaction = _as_sent(info, 0x00081195)  # Transaction UID
            references = [
                (_as_sent(item, 0x00081150), _as_sent(item, 0x00081155))
                for item in info.get("ReferencedSOPSequence") or ()
            ]
        except Exception as exc:  # a data set pydicom cannot read
            raise QRError(0x0110, f"the Action Information does not decode: {exc}") from exc
        if not is_plain_uid(transaction) or not references:
            # (0x0120 Missing Attribute is not an N-ACTION status: PS3.7 10.1.4.1.10)
            raise QRError(
                0x0115, "a valid Transaction UID and a Referenced SOP Sequence item are required"
            )
        if not all(is_plain_uid(c) and is_plain_uid(i) for c, i in references):
            # The report names each reference as sent: one that is no UID could
            # not be put in it (nor be one the archive holds).
            raise QRError(0x0115, "a Referenced SOP Sequence item has an invalid UID")
        return _Commitment(event.assoc, event.assoc.requestor.ae_title, transaction, references)

    def _commit_lookup(
        self, references: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str, int | None]]:
        """Each reference with its failure reason (PS3.4 J.3.3.1.1), None if it is kept."""
        conn = _connect(self.index_path, readonly=True)
        try:
            out = []
            for class_uid, instance_uid in references:
                row = conn.execute(
                    "SELECT sop_class_uid, path FROM instance WHERE sop_instance_uid = ?",
                    (instance_uid,),
                ).fetchone()
                if row is None or not (self.directory / row[1]).is_file():
                    reason: int | None = 0x0112  # No such object instance
                elif row[0] != class_uid:
                    reason = 0x0119  # Class / Instance conflict
                else:
                    reason = None
                out.append((class_uid, instance_uid, reason))
            return out
        finally:
            conn.close()

    async def _report(self, job: _Commitment) -> None:
        """Check a request's instances and send its N-EVENT-REPORT."""
        checked = await anyio.to_thread.run_sync(self._commit_lookup, job.references)
        result = Dataset()
        result.TransactionUID = job.transaction
        kept = [_reference(c, i) for c, i, reason in checked if reason is None]
        failed = [_reference(c, i, reason) for c, i, reason in checked if reason is not None]
        if kept:
            result.ReferencedSOPSequence = DicomSequence(kept)
        if failed:
            result.FailedSOPSequence = DicomSequence(failed)
        event_type = 2 if failed else 1  # some failed / all kept
        commitment = sop_class.StorageCommitmentPushModel
        instance = sop_class.StorageCommitmentPushModelInstance
        if job.assoc.is_established:
            try:
                status, _ = await job.assoc.send_n_event_report(
                    result, event_type, commitment, instance
                )
            except (DicomNetworkError, TimeoutError) as exc:
                LOGGER.info("Storage Commitment %s: association gone (%s)", job.transaction, exc)
            else:
                self._reported(job, event_type, status, "on the request's association")
                return
        dest = self.destinations.get(job.requestor)
        if dest is None:
            LOGGER.warning(
                "Storage Commitment %s: %r is not a known destination: no report sent",
                job.transaction,
                job.requestor,
            )
            return
        ae = AE(self.ae_title)
        ae.add_requested_context(commitment)
        role = build_role(commitment, scu_role=False, scp_role=True)
        async with ae.associate(dest.host, dest.port, ae_title=job.requestor, ext_neg=[role]) as a:
            status, _ = await a.send_n_event_report(result, event_type, commitment, instance)
        self._reported(job, event_type, status, f"to {job.requestor} at {dest.host}:{dest.port}")

    def _reported(self, job: _Commitment, event_type: int, status: Dataset, where: str) -> None:
        self.commitments_reported += 1
        LOGGER.info(
            "Storage Commitment %s: event type %d sent %s, answered 0x%04X",
            job.transaction,
            event_type,
            where,
            status.get("Status", 0xFFFF),
        )

    def handlers(self) -> list[evt.EventHandlerType]:
        """``evt_handlers`` answering C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE and
        Storage Commitment's N-ACTION.

        The C-FIND handler bound yields most identifiers already encoded, for
        the C-FIND service only: a handler that looks at the identifiers (to
        filter or change them) wraps :meth:`handle_find`, which yields Datasets.
        """
        return [
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_FIND, self._handle_find_encoded),
            (evt.EVT_C_GET, self.handle_get),
            (evt.EVT_C_MOVE, self.handle_move),
            (evt.EVT_N_ACTION, self.handle_commitment),
        ]


def setup_ae(ae: AE, archive: Archive) -> AE:
    """Make ``ae`` a Q/R SCP for ``archive`` and return it.

    Supported contexts: Verification; every storage SOP class in every
    transfer syntax (Explicit VR Little Endian preferred), with both roles
    accepted in a role selection (so a C-GET requestor can take the SCP role
    for the instances we send back); FIND,
    GET and MOVE of the Patient Root, Study Root and Patient/Study Only
    models; Storage Commitment Push Model. Large incoming instances are spooled to the archive's
    ``.incoming`` directory (the same file system, so they are renamed into
    place).
    """
    ae.add_supported_context(sop_class.Verification)
    syntaxes = list(ALL_TRANSFER_SYNTAXES)  # the acceptor's preference: explicit VR first
    for cx in sop_class.AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes, scu_role=True, scp_role=True)
    for model in MODELS:
        for uid in (model.find, model.get, model.move):
            ae.add_supported_context(uid)
    ae.add_supported_context(sop_class.StorageCommitmentPushModel)
    ae.spool_directory = str(archive.incoming)
    return ae
