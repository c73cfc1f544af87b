"""Q/R matching (PS3.4 C.2.2.2), the hierarchical checks and the SQL of ``aiodicom.qrscp``.

Each matching case is checked twice: with the pure Python matcher and with
its SQL translation run by SQLite, so the two can never disagree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from aiodicom import qrscp, sop_class
from aiodicom.qrscp import (
    PATIENT_ROOT,
    PATIENT_STUDY_ONLY,
    STUDY_ROOT,
    InstanceRecord,
    QRError,
    Term,
    build_identifier,
    load_destinations,
    match_value,
    model_for,
    normalize,
    object_path,
    parse_destination,
    parse_terms,
    plan_query,
    sql_condition,
)

# (vr, query value, stored value, expected)
CASES: list[tuple[str, str | None, str, bool]] = [
    # universal matching
    ("LO", None, "anything", True),
    ("LO", "", "", True),
    ("PN", "*", "", True),
    ("LO", "*", "ABC", True),
    ("UI", "*", "1.2.3", True),
    ("DA", "", "20200101", True),
    # single value matching: exact, case-sensitive
    ("LO", "ABC", "ABC", True),
    ("LO", "ABC", "abc", False),
    ("LO", "ABC", "ABCD", False),
    ("CS", "CT", "MR", False),
    ("SH", "ACC1", "ACC1", True),
    ("UI", "1.2.3", "1.2.3", True),
    ("UI", "1.2.3", "1.2.30", False),
    ("IS", "01", "1", True),
    ("IS", "2", "1", False),
    # PN: case-insensitive, trailing empty components ignored
    ("PN", "doe^john", "Doe^John", True),
    ("PN", "Doe^John^^", "Doe^John", True),
    ("PN", "Doe", "Doe^John", False),
    # wild card matching
    ("LO", "AB*", "ABCD", True),
    ("LO", "*C", "ABC", True),
    ("LO", "A?C", "ABC", True),
    ("LO", "A?C", "ABBC", False),
    ("LO", "A*C", "AC", True),
    ("LO", "ab*", "ABC", False),
    ("PN", "do*", "Doe^John", True),
    ("PN", "*^JO?N", "Doe^John", True),
    ("PN", "smith*", "Doe^John", False),
    ("LO", "A[B]*", "A[B]C", True),
    ("LO", "A[B]*", "AB", False),
    ("CS", "C?", "CT", True),
    # no wild cards on UI or DA: literal
    ("UI", "1.2.*", "1.2.3", False),
    # range matching: DA
    ("DA", "20200101-20201231", "20200615", True),
    ("DA", "20200101-20201231", "20210101", False),
    ("DA", "20200101-20201231", "20200101", True),
    ("DA", "20200101-20201231", "20201231", True),
    ("DA", "-20200101", "20191231", True),
    ("DA", "-20200101", "20200102", False),
    ("DA", "20200101-", "20200101", True),
    ("DA", "20200102-", "20200101", False),
    ("DA", "20200101-", "", False),
    ("DA", "20200101", "20200101", True),
    ("DA", "2020.01.01", "20200101", True),
    ("DA", "20200101", "20200102", False),
    # range matching: TM (an upper bound covers its whole precision)
    ("TM", "1000-1200", "103015.5", True),
    ("TM", "1000-1200", "120059", True),
    ("TM", "1000-1200", "120100", False),
    ("TM", "1000-1200", "095959", False),
    ("TM", "-0930", "093000", True),
    ("TM", "0930-", "093000", True),
    ("TM", "10:30-11:00", "104500", True),
    ("TM", "1030", "103015", True),
    ("TM", "1030", "103115", False),
    # range matching: DT (UTC offsets ignored)
    ("DT", "20200101-20200102", "20200101120000", True),
    ("DT", "20200101-20200102", "20200103000000", False),
    ("DT", "20200101120000+0100-", "20200101130000", True),
    ("DT", "-20191231", "20200101", False),
    # list of UID matching and multiple values
    ("UI", "1.2.3\\1.2.4", "1.2.4", True),
    ("UI", "1.2.3\\1.2.4", "1.2.5", False),
    ("CS", "CT\\MR", "MR", True),
    ("CS", "CT\\MR", "US", False),
    ("DA", "20200101\\20200301-20200331", "20200315", True),
    # user values never reach the SQL text
    ("LO", "x' OR '1'='1", "y", False),
    ("LO", "x'; DROP TABLE t; --", "x'; DROP TABLE t; --", True),
]


@pytest.fixture(scope="module")
def memdb() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.create_function("qr_fold", 1, qrscp._fold, deterministic=True)
    conn.execute("CREATE TABLE t (v TEXT NOT NULL)")
    yield conn
    conn.close()


def sql_matches(conn: sqlite3.Connection, vr: str, query: str | None, stored: str) -> bool:
    conn.execute("DELETE FROM t")
    conn.execute("INSERT INTO t VALUES (?)", (stored,))
    cond = sql_condition("t.v", vr, query)
    if cond is None:
        return True
    sql, params = cond
    if query:
        for value in query.split("\\"):
            assert "'" not in value or value not in sql
    return bool(conn.execute(f"SELECT COUNT(*) FROM t WHERE {sql}", params).fetchone()[0])


@pytest.mark.parametrize(("vr", "query", "stored", "expected"), CASES)
def test_matching(
    memdb: sqlite3.Connection, vr: str, query: str | None, stored: str, expected: bool
) -> None:
    stored = normalize(vr, stored)
    assert match_value(vr, query, stored) is expected
    assert sql_matches(memdb, vr, query, stored) is expected


def test_table_survives_injection(memdb: sqlite3.Connection) -> None:
    sql_matches(memdb, "LO", "x'; DROP TABLE t; --", "y")
    assert memdb.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1


def test_universal_is_no_condition() -> None:
    assert sql_condition("c", "LO", None) is None
    assert sql_condition("c", "PN", "*") is None
    assert parse_terms("LO", "") is None


def test_multi_valued_stored_value() -> None:
    assert match_value("CS", "MR", ["CT", "MR"])
    assert not match_value("CS", "US", ["CT", "MR"])
    assert match_value("CS", "M?", ["CT", "MR"])


def test_terms() -> None:
    assert parse_terms("DA", "20200101-") == [Term("range", "20200101", "")]
    assert parse_terms("TM", "1030") == [Term("prefix", "1030")]
    assert parse_terms("PN", "Doe*") == [Term("fglob", "Doe*")]
    assert parse_terms("PN", "Doe") == [Term("fold", "Doe")]
    assert parse_terms("UI", "1.2\\1.3") == [Term("exact", "1.2"), Term("exact", "1.3")]


@pytest.mark.parametrize(
    ("vr", "value"),
    [("DA", "2020-01-01"), ("DA", "abc"), ("DA", "-"), ("TM", "1x30"), ("DT", "2020-x")],
)
def test_malformed_values(vr: str, value: str) -> None:
    with pytest.raises(QRError) as info:
        parse_terms(vr, value)
    assert info.value.status == 0xC001


def test_normalize() -> None:
    assert normalize("PN", "Doe^John^^^") == "Doe^John"
    assert normalize("PN", "Doe^John^^=Yamada^Taro==") == "Doe^John=Yamada^Taro"
    assert normalize("TM", "10:30:15") == "103015"
    assert normalize("IS", " 007 ") == "7"
    assert normalize("LO", " ABC ") == "ABC"


# ---------------------------------------------------------------------------
# Models and hierarchical checks


def ident(level: str | None, **keys: Any) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def refused(ds: Dataset, model: qrscp.InformationModel, service: str = "FIND") -> QRError:
    with pytest.raises(QRError) as info:
        plan_query(ds, model, service)
    return info.value


def test_model_for() -> None:
    assert model_for(sop_class.StudyRootQueryRetrieveInformationModelFind) == (STUDY_ROOT, "FIND")
    assert model_for(sop_class.PatientRootQueryRetrieveInformationModelMove) == (
        PATIENT_ROOT,
        "MOVE",
    )
    assert model_for(sop_class.PatientStudyOnlyQueryRetrieveInformationModelGet) == (
        PATIENT_STUDY_ONLY,
        "GET",
    )
    with pytest.raises(QRError) as info:
        model_for(sop_class.CTImageStorage)
    assert 0xC000 <= info.value.status <= 0xCFFF


def test_level_missing_or_wrong() -> None:
    err = refused(ident(None, PatientID=""), PATIENT_ROOT)
    assert (err.status, err.offending) == (0xA900, 0x00080052)
    err = refused(ident("", PatientID=""), PATIENT_ROOT)
    assert err.status == 0xA900
    err = refused(ident("PATIENT", PatientID=""), STUDY_ROOT)
    assert (err.status, err.offending) == (0xA900, 0x00080052)
    assert refused(ident("SERIES", PatientID="1"), PATIENT_STUDY_ONLY).status == 0xA900
    assert refused(ident("FRAME"), PATIENT_ROOT).status == 0xA900


def test_key_below_level() -> None:
    err = refused(ident("STUDY", StudyInstanceUID="", SOPInstanceUID=""), STUDY_ROOT)
    assert (err.status, err.offending) == (0xA900, 0x00080018)
    err = refused(ident("PATIENT", PatientID="", StudyDate=""), PATIENT_ROOT)
    assert err.offending == 0x00080020
    err = refused(ident("STUDY", PatientID="1", Modality=""), PATIENT_STUDY_ONLY)
    assert (err.status, err.offending) == (0xA900, 0x00080060)


def test_unique_keys_above() -> None:
    # Patient Root STUDY level needs one Patient ID
    assert refused(ident("STUDY", StudyInstanceUID=""), PATIENT_ROOT).offending == 0x00100020
    assert refused(ident("STUDY", PatientID="DO*"), PATIENT_ROOT).status == 0xA900
    assert refused(ident("STUDY", PatientID="A\\B"), PATIENT_ROOT).status == 0xA900
    plan_query(ident("STUDY", PatientID="A", StudyDate=""), PATIENT_ROOT, "FIND")
    # Study Root SERIES / IMAGE levels
    assert refused(ident("SERIES", Modality="CT"), STUDY_ROOT).offending == 0x0020000D
    err = refused(ident("IMAGE", StudyInstanceUID="1.2"), STUDY_ROOT)
    assert err.offending == 0x0020000E
    plan_query(ident("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.3"), STUDY_ROOT, "FIND")


def test_patient_keys_are_study_keys_in_study_root() -> None:
    q = plan_query(ident("STUDY", PatientName="DOE*", StudyInstanceUID=""), STUDY_ROOT, "FIND")
    assert [k.keyword for k, _ in q.conditions] == ["PatientName"]


def test_retrieve_needs_unique_keys_at_level() -> None:
    err = refused(ident("STUDY", PatientID="1"), STUDY_ROOT, "MOVE")
    assert (err.status, err.offending) == (0xA900, 0x0020000D)
    assert refused(ident("STUDY", StudyInstanceUID=""), STUDY_ROOT, "GET").status == 0xA900
    assert refused(ident("PATIENT", PatientID="A*"), PATIENT_ROOT, "GET").status == 0xA900
    q = plan_query(
        ident("SERIES", StudyInstanceUID="1.2", SeriesInstanceUID="1.3\\1.4", Modality="CT"),
        STUDY_ROOT,
        "GET",
    )
    # only unique keys select a retrieve
    assert [k.keyword for k, _ in q.conditions] == ["StudyInstanceUID", "SeriesInstanceUID"]


def test_malformed_value_is_unable_to_process() -> None:
    ds = ident("STUDY")
    ds.add(DataElement(0x00080020, "DA", "2020-01", validation_mode=config.IGNORE))
    err = refused(ds, STUDY_ROOT)
    assert err.status == 0xC001


def test_unsupported_keys() -> None:
    q = plan_query(ident("STUDY", StudyInstanceUID="", PatientAge=""), STUDY_ROOT, "FIND")
    assert q.unsupported
    q = plan_query(ident("STUDY", StudyInstanceUID=""), STUDY_ROOT, "FIND")
    assert not q.unsupported
    # count keys are return keys: a value in them is not matched
    q = plan_query(
        ident("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances="3"), STUDY_ROOT, "FIND"
    )
    assert q.unsupported and q.conditions == []


def test_status_dataset() -> None:
    ds = QRError(0xA900, "x" * 100, 0x00080052).as_status()
    assert ds.Status == 0xA900 and len(ds.ErrorComment) == 64
    assert ds.OffendingElement == 0x00080052


# ---------------------------------------------------------------------------
# SQL against a real index


def record(n: int, **kw: Any) -> InstanceRecord:
    base: dict[str, Any] = {
        "sop_instance_uid": f"1.2.3.{n}",
        "sop_class_uid": str(sop_class.CTImageStorage),
        "study_uid": "1.2.100",
        "series_uid": "1.2.200",
        "path": f"objects/x/{n}.dcm",
        "patient_id": "P1",
        "patient_name": "Doe^John",
        "modality": "CT",
        "study_date": "20200115",
        "instance_number": str(n),
    }
    base.update(kw)
    return InstanceRecord(**base)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = qrscp._connect(tmp_path / "index.sqlite", readonly=False)
    conn.executescript(qrscp._SCHEMA)
    for rec in [
        record(1),
        record(2),
        record(3, series_uid="1.2.201", modality="MR"),
        record(
            4,
            study_uid="1.2.101",
            series_uid="1.2.202",
            modality="US",
            study_date="20210301",
            patient_name="Müller^Hans",
            patient_id="P2",
        ),
    ]:
        qrscp._upsert(conn, rec)
    yield conn
    conn.close()


def run_find(conn: sqlite3.Connection, ds: Dataset, model: Any = STUDY_ROOT) -> list[Dataset]:
    q = plan_query(ds, model, "FIND")
    sql, params = q.find_sql()
    return [build_identifier(q, row, "QRSCP") for row in conn.execute(sql, params)]


def test_study_query_with_derived_keys(index: sqlite3.Connection) -> None:
    ds = ident(
        "STUDY",
        StudyInstanceUID="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedInstances="",
        NumberOfStudyRelatedSeries="",
        PatientName="",
    )
    found = sorted(run_find(index, ds), key=lambda d: str(d.StudyInstanceUID))
    assert [str(d.StudyInstanceUID) for d in found] == ["1.2.100", "1.2.101"]
    assert list(found[0].ModalitiesInStudy) == ["CT", "MR"]
    assert found[0].NumberOfStudyRelatedInstances == 3
    assert found[0].NumberOfStudyRelatedSeries == 2
    assert found[1].ModalitiesInStudy == "US"
    # the response holds exactly the requested keys plus the level (and charset for Müller)
    assert {e.keyword for e in found[0]} == {
        "QueryRetrieveLevel",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "NumberOfStudyRelatedSeries",
        "PatientName",
    }
    assert found[1].SpecificCharacterSet == "ISO_IR 192"
    assert str(found[1].PatientName) == "Müller^Hans"


def test_match_on_modalities_in_study(index: sqlite3.Connection) -> None:
    found = run_find(index, ident("STUDY", StudyInstanceUID="", ModalitiesInStudy="MR"))
    assert [str(d.StudyInstanceUID) for d in found] == ["1.2.100"]
    found = run_find(index, ident("STUDY", StudyInstanceUID="", ModalitiesInStudy="US\\MR"))
    assert len(found) == 2
    found = run_find(index, ident("STUDY", StudyInstanceUID="", ModalitiesInStudy="XA"))
    assert found == []


def test_date_range_and_pn(index: sqlite3.Connection) -> None:
    found = run_find(index, ident("STUDY", StudyInstanceUID="", StudyDate="20210101-"))
    assert [str(d.StudyInstanceUID) for d in found] == ["1.2.101"]
    assert found[0].StudyDate == "20210301"
    found = run_find(index, ident("STUDY", StudyInstanceUID="", PatientName="mül*"))
    assert [str(d.StudyInstanceUID) for d in found] == ["1.2.101"]


def test_patient_level(index: sqlite3.Connection) -> None:
    ds = ident(
        "PATIENT",
        PatientID="",
        PatientName="",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedInstances="",
        NumberOfPatientRelatedSeries="",
    )
    found = {str(d.PatientID): d for d in run_find(index, ds, PATIENT_ROOT)}
    assert set(found) == {"P1", "P2"}
    assert found["P1"].NumberOfPatientRelatedStudies == 1
    assert found["P1"].NumberOfPatientRelatedSeries == 2
    assert found["P1"].NumberOfPatientRelatedInstances == 3


def test_series_and_image_levels(index: sqlite3.Connection) -> None:
    ds = ident("SERIES", StudyInstanceUID="1.2.100", SeriesInstanceUID="", Modality="CT")
    found = run_find(index, ds)
    assert [str(d.SeriesInstanceUID) for d in found] == ["1.2.200"]
    ds = ident(
        "IMAGE",
        StudyInstanceUID="1.2.100",
        SeriesInstanceUID="1.2.200",
        SOPInstanceUID="",
        InstanceNumber="2",
        RetrieveAETitle="",
        SOPClassUID="",
        PatientAge="",
    )
    (match,) = run_find(index, ds)
    assert match.SOPInstanceUID == "1.2.3.2"
    assert match.RetrieveAETitle == "QRSCP"
    assert match.SOPClassUID == sop_class.CTImageStorage
    assert "PatientAge" in match and match.PatientAge in (None, "")
    assert match.QueryRetrieveLevel == "IMAGE"


def test_retrieve_sql(index: sqlite3.Connection) -> None:
    q = plan_query(ident("STUDY", StudyInstanceUID="1.2.100"), STUDY_ROOT, "MOVE")
    sql, params = q.retrieve_sql()
    paths = sorted(r[0] for r in index.execute(sql, params))
    assert paths == [f"objects/x/{n}.dcm" for n in (1, 2, 3)]
    assert index.execute(*q.count_sql()).fetchone()[0] == 3
    q = plan_query(ident("PATIENT", PatientID="P1\\P2"), PATIENT_ROOT, "GET")
    assert index.execute(*q.count_sql()).fetchone()[0] == 4
    q = plan_query(ident("STUDY", PatientID="P2", StudyInstanceUID="1.2.100"), PATIENT_ROOT, "GET")
    assert index.execute(*q.count_sql()).fetchone()[0] == 0


def test_restore_replaces_and_prunes(index: sqlite3.Connection) -> None:
    # instance 4 moves to patient P1's study: its old series, study and patient go
    qrscp._upsert(index, record(4, series_uid="1.2.201", modality="MR"))
    assert index.execute("SELECT COUNT(*) FROM instance").fetchone()[0] == 4
    assert index.execute("SELECT COUNT(*) FROM series").fetchone()[0] == 2
    assert [r[0] for r in index.execute("SELECT study_uid FROM study")] == ["1.2.100"]
    assert [r[0] for r in index.execute("SELECT patient_id FROM patient")] == ["P1"]


def test_object_path() -> None:
    path = object_path("1.2.840.1")
    assert path.startswith("objects/") and path.endswith("/1.2.840.1.dcm")
    for bad in ("../../etc/passwd", "1.2/3", "", "1." * 40, "1.2.x"):
        with pytest.raises(QRError):
            object_path(bad)


# ---------------------------------------------------------------------------
# Destinations


def test_parse_destination() -> None:
    assert parse_destination("STORESCP=127.0.0.1:11113") == ("STORESCP", ("127.0.0.1", 11113))
    assert parse_destination("V6=[::1]:104") == ("V6", ("::1", 104))
    for bad in ("NOPORT=host", "=h:1", "A=h:0", "A=h:x", "A", "A" * 17 + "=h:1"):
        with pytest.raises(ValueError):
            parse_destination(bad)


def test_load_destinations(tmp_path: Path) -> None:
    path = tmp_path / "qr.toml"
    path.write_text(
        '[destinations]\nSTORESCP = "127.0.0.1:11113"\nPACS = { host = "pacs", port = 104 }\n'
    )
    assert load_destinations(path) == {
        "STORESCP": ("127.0.0.1", 11113),
        "PACS": ("pacs", 104),
    }
    path.write_text('[destinations]\nBAD = "nowhere"\n')
    with pytest.raises(ValueError):
        load_destinations(path)
    path.write_text("[destinations\n")
    with pytest.raises(ValueError):
        load_destinations(path)


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("CS", ["CT"]),
        ("CS", ["CT", "MR"]),
        ("CS", "ISO_IR 192"),
        ("PN", "Müller^Hans"),
        ("PN", "Doe^John"),
        ("PN", None),
        ("LO", None),
        ("LO", "Ünïcode"),
        ("DA", "20230101"),
        ("DA", "20230101-20231231"),
        ("TM", "101010.5"),
        ("UI", "1.2.826.0.1.3680043.8.498.1"),
        ("AE", "QRSCP"),
        ("SH", "A00000001"),
        ("IS", "12"),
        ("IS", "0"),
        ("IS", None),
    ],
)
def test_text_elements_are_those_add_new_makes(vr: str, value: Any) -> None:
    """build_identifier makes its text elements without pydicom's conversion:
    each has the value, of the same type, that Dataset.add_new gives, and the
    two data sets encode alike (by aiodicom's encoder and, non-ASCII, pydicom's)."""
    from pydicom.tag import BaseTag

    from aiodicom.dsutils import encode_dataset
    from aiodicom.qrscp import _text_element

    tag = BaseTag(0x00100010 if vr == "PN" else 0x00080061)
    ref = Dataset()
    ref.add_new(tag, vr, value)
    ours = Dataset({tag: _text_element(tag, vr, value)})
    assert type(ours[tag].value) is type(ref[tag].value)
    assert ours[tag].value == ref[tag].value
    for ds in (ref, ours):
        ds.SpecificCharacterSet = "ISO_IR 192"  # (for the non-ASCII values)
    for ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
        assert encode_dataset(ours, ts) == encode_dataset(ref, ts)


def _all_keys_query(level: str, model: Any) -> Dataset:
    """A C-FIND identifier asking for every key the archive knows, the derived
    ones of ``level``, and a few it answers itself or leaves empty."""
    patient = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
    study = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID")
    study += ("StudyDescription", "ReferringPhysicianName")
    answered = ("RetrieveAETitle", "InstanceAvailability")
    unknown = ("PatientComments",)  # not a key the archive has: returned empty
    keywords = patient + answered + unknown + (() if level == "PATIENT" else study)
    keys: dict[str, Any] = dict.fromkeys(keywords, "")
    if level == "STUDY":
        keys["NumberOfStudyRelatedInstances"] = ""
        keys["NumberOfStudyRelatedSeries"] = ""
        keys["ModalitiesInStudy"] = ""
    if level == "PATIENT":
        keys["NumberOfPatientRelatedStudies"] = ""
        keys["NumberOfPatientRelatedInstances"] = ""
    if level in ("SERIES", "IMAGE"):
        keys.update(StudyInstanceUID="1.2.100", SeriesInstanceUID="", Modality="")
        keys.update(SeriesNumber="", SeriesDescription="", SeriesDate="", SeriesTime="")
    if level == "IMAGE":
        keys.update(SeriesInstanceUID="1.2.200", SOPInstanceUID="", SOPClassUID="")
        keys.update(InstanceNumber="", ContentDate="", ContentTime="")
    return ident(level, **keys)


@pytest.mark.parametrize(
    ("level", "charset"),
    [("PATIENT", False), ("STUDY", False), ("STUDY", True), ("SERIES", False), ("IMAGE", True)],
)
@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_identifiers_encoded_from_rows_are_those_of_the_datasets(
    index: sqlite3.Connection, level: str, charset: bool, ts: str
) -> None:
    """IdentifierEncoder gives, byte for byte, what encoding build_identifier's
    Dataset gives; it declines (None) only a row with a non-ASCII value."""
    from aiodicom.dsutils import encode_dataset
    from aiodicom.qrscp import IdentifierEncoder

    for n, kw in enumerate(
        [
            {"instance_number": "+5", "series_number": " 7", "patient_id": "P12"},
            {"instance_number": "0012", "study_description": "odd", "sex": "F"},
            {"modality": "MR", "series_uid": "1.2.203", "accession_number": "A1"},
        ],
        start=10,
    ):
        qrscp._upsert(index, record(n, **kw))
    # values as an index not written by this version might hold them
    index.execute("UPDATE instance SET instance_number = ' 9 ' WHERE sop_instance_uid = '1.2.3.2'")
    index.execute("UPDATE series SET series_number = '3 ' WHERE series_uid = '1.2.203'")
    model = qrscp.PATIENT_ROOT if level == "PATIENT" else STUDY_ROOT
    query_ds = _all_keys_query(level, model)
    if charset:
        query_ds.SpecificCharacterSet = "ISO_IR 192"
    q = plan_query(query_ds, model, "FIND")
    encoder = IdentifierEncoder(q, "QRSCP", ts)
    assert encoder.usable
    sql, params = q.find_sql()
    rows = list(index.execute(sql, params))
    encoded = 0
    for row in rows:
        ours = encoder.encode(row)
        if ours is None:
            assert not all(str(v).isascii() for v in row if v is not None), row
            continue
        encoded += 1
        assert ours == encode_dataset(build_identifier(q, row, "QRSCP"), ts), row
    assert encoded >= 1 and encoded >= len(rows) - 1


def test_identifier_encoder_declines_what_it_does_not_encode() -> None:
    """A sequence asked for, or a transfer syntax other than Implicit or
    Explicit VR Little Endian: not usable (build_identifier's Dataset goes)."""
    from aiodicom.qrscp import IdentifierEncoder

    q = plan_query(ident("STUDY", StudyInstanceUID=""), STUDY_ROOT, "FIND")
    assert IdentifierEncoder(q, "QRSCP", "1.2.840.10008.1.2.1").usable
    assert not IdentifierEncoder(q, "QRSCP", "1.2.840.10008.1.2.2").usable  # big endian
    assert not IdentifierEncoder(q, "QRSCP", "1.2.840.10008.1.2.1.99").usable  # deflated
    with_sequence = ident("STUDY", StudyInstanceUID="", ReferencedStudySequence=[])
    q = plan_query(with_sequence, STUDY_ROOT, "FIND")
    assert not IdentifierEncoder(q, "QRSCP", "1.2.840.10008.1.2.1").usable


def test_an_is_value_that_is_no_number_fails_alike(index: sqlite3.Connection) -> None:
    """An InstanceNumber in the index that is no number fails the match with
    the encoder as it does with build_identifier (the handler's error)."""
    from aiodicom.qrscp import IdentifierEncoder

    index.execute("UPDATE instance SET instance_number = 'abc' WHERE sop_instance_uid = '1.2.3.1'")
    query = ident("IMAGE", StudyInstanceUID="1.2.100", SeriesInstanceUID="1.2.200")
    query.SOPInstanceUID = "1.2.3.1"
    query.InstanceNumber = ""
    q = plan_query(query, STUDY_ROOT, "FIND")
    sql, params = q.find_sql()
    [row] = index.execute(sql, params)
    with pytest.raises(ValueError):
        build_identifier(q, row, "QRSCP")
    with pytest.raises(ValueError):
        IdentifierEncoder(q, "QRSCP", "1.2.840.10008.1.2.1").encode(row)
