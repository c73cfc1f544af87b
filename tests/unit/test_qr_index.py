"""What the Q/R SCP indexes of a stored instance, read straight from its bytes.

``qrscp._encoded_text`` walks the element headers (``dsutils._scan``, which
steps over sequences of undefined length) instead of decoding with pydicom.
These tests hold it to pydicom's reading: the same values wherever it
answers, and no answer (so pydicom decides) wherever it cannot be sure.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from aiodicom import qrscp
from aiodicom.dsutils import _scan

ENCODINGS = {
    ImplicitVRLittleEndian: (True, True),
    ExplicitVRLittleEndian: (False, True),
    ExplicitVRBigEndian: (False, False),
}
UIDS = {
    "SOPInstanceUID": "1.2.3.4.5.6",
    "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
    "StudyInstanceUID": "1.2.3.4",
    "SeriesInstanceUID": "1.2.3.4.5",
}
#: The indexed attributes other than the UIDs: keyword -> VR.
TEXT_KEYS = {kw: vr for _, kw, vr, _ in qrscp._INDEXED if vr != "UI"}


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    implicit, little = ENCODINGS[transfer_syntax]
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return fp.getvalue()


def decode(data: bytes, transfer_syntax: str) -> Dataset:
    implicit, little = ENCODINGS[transfer_syntax]
    return read_dataset(BytesIO(data), implicit, little)


def item(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def sequence(items: list[Dataset], undefined: bool, items_undefined: bool) -> Sequence:
    seq = Sequence(items)
    for one in items:
        one.is_undefined_length_sequence_item = items_undefined
    return seq


def base_dataset(**values: Any) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old forms (DA with dots) are valid input here
        for keyword, value in {**UIDS, **values}.items():
            setattr(ds, keyword, value)
    return ds


def with_sequence(ds: Dataset, undefined: bool, items_undefined: bool, depth: int = 1) -> Dataset:
    """Put (0008,1140) Referenced Image Sequence in ``ds``: two items, the
    first with a sequence of its own, ``depth`` levels deep."""
    inner: Dataset = item(ReferencedSOPInstanceUID="1.2.3.9", ReferencedSOPClassUID="1.2.3.8")
    for _ in range(depth - 1):
        inner = item(
            ReferencedSOPClassUID="1.2.3.7",
            ReferencedImageSequence=sequence([inner], undefined, items_undefined),
        )
        inner["ReferencedImageSequence"].is_undefined_length = undefined
    ds.ReferencedImageSequence = sequence(
        [inner, item(ReferencedSOPInstanceUID="1.2.3.10")], undefined, items_undefined
    )
    ds["ReferencedImageSequence"].is_undefined_length = undefined
    return ds


def top_level_tags(ds: Dataset) -> set[int]:
    return {int(elem.tag) for elem in ds}


# ---------------------------------------------------------------------------
# dsutils._scan over sequences


@pytest.mark.parametrize("transfer_syntax", list(ENCODINGS))
@pytest.mark.parametrize("undefined", [True, False])
@pytest.mark.parametrize("items_undefined", [True, False])
@pytest.mark.parametrize("depth", [1, 3])
def test_scan_steps_over_sequences(
    transfer_syntax: str, undefined: bool, items_undefined: bool, depth: int
) -> None:
    ds = with_sequence(
        base_dataset(PatientID="AFTER", InstanceNumber="7"), undefined, items_undefined, depth
    )
    data = encode(ds, transfer_syntax)
    implicit, little = ENCODINGS[transfer_syntax]
    scanned = _scan(data, 0, implicit=implicit, little=little, sequences=depth)
    assert scanned is not None
    found, stop = scanned
    assert stop == len(data)
    assert set(found) == top_level_tags(ds)
    start, length, _ = found[0x00100020]  # PatientID, after the sequence
    assert data[start : start + length].rstrip(b" ") == b"AFTER"
    start, length, _ = found[0x00200013]
    assert data[start : start + length].rstrip(b" ") == b"7"
    if undefined:
        # without leave to walk sequences (or not deep enough), it cannot tell
        assert _scan(data, 0, implicit=implicit, little=little) is None
        if items_undefined:  # (items of defined length are stepped over whole)
            assert _scan(data, 0, implicit=implicit, little=little, sequences=depth - 1) is None


def test_scan_steps_over_un_of_undefined_length() -> None:
    """A UN of undefined length holds Implicit VR LE items (PS3.5 6.2.2)."""
    items = (
        b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # item, undefined length
        + b"\x08\x00\x55\x11\x04\x00\x00\x001.2\x00"  # (0008,1155) implicit VR
        + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"  # item delimitation
        + b"\xfe\xff\x00\xe0\x04\x00\x00\x00abcd"  # item, defined length
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # sequence delimitation
    )
    data = b"\x09\x00\x10\x10UN\x00\x00\xff\xff\xff\xff" + items + b"\x10\x00\x20\x00LO\x02\x00X "
    scanned = _scan(data, 0, implicit=False, little=True, sequences=2)
    assert scanned is not None
    assert set(scanned[0]) == {0x00091010, 0x00100020}
    assert scanned[0][0x00100020] == (len(data) - 2, 2, "LO")
    assert scanned[1] == len(data)
    # an OB (say) of undefined length is not walked over
    ob = data.replace(b"UN", b"OB", 1)
    assert _scan(ob, 0, implicit=False, little=True, sequences=2) is None


@pytest.mark.parametrize("transfer_syntax", list(ENCODINGS))
def test_scan_of_cut_or_damaged_sequences(transfer_syntax: str) -> None:
    """Cut anywhere, or with any byte of the sequence changed, the walk never
    raises: it answers None, or stops short, or steps over consistently."""
    ds = with_sequence(base_dataset(PatientID="AFTER"), True, True, depth=2)
    data = encode(ds, transfer_syntax)
    implicit, little = ENCODINGS[transfer_syntax]
    whole = top_level_tags(ds)
    for cut in range(len(data)):
        scanned = _scan(data[:cut], 0, implicit=implicit, little=little, sequences=4)
        if scanned is not None:
            assert set(scanned[0]) <= whole
            assert scanned[1] <= cut
    start = data.index(b"\xfe\xff" if little else b"\xff\xfe")
    for at in range(start, min(len(data), start + 120)):
        for value in (0x00, 0xFF, 0xE0, 0xDD, 0x0D):
            damaged = bytearray(data)
            damaged[at] = value
            _scan(bytes(damaged), 0, implicit=implicit, little=little, sequences=4)


def test_scan_refuses_nesting_past_its_levels() -> None:
    ds = with_sequence(base_dataset(), True, True, depth=5)
    data = encode(ds, ExplicitVRLittleEndian)
    assert _scan(data, 0, implicit=False, little=True, sequences=5) is not None
    assert _scan(data, 0, implicit=False, little=True, sequences=4) is None


# ---------------------------------------------------------------------------
# qrscp._encoded_text against pydicom


def pydicom_text(data: bytes, transfer_syntax: str) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid values it reads
        text = qrscp._dataset_text(decode(data, transfer_syntax))
        return {kw: text(kw, vr) for _, kw, vr, _ in qrscp._INDEXED}


def fast_text(data: bytes, transfer_syntax: str, **kw: Any) -> dict[str, str] | None:
    text = qrscp._encoded_text(data, transfer_syntax, **kw)
    if text is None:
        return None
    return {kw: text(kw, vr) for _, kw, vr, _ in qrscp._INDEXED}


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
#: Values that read alike either way, and values that must go to pydicom.
VALUES = {
    "IS": st.from_regex(r"\A ?[+-]?[0-9]{1,6} ?\Z"),
    "DA": st.from_regex(r"\A[0-9.]{0,10}\Z"),
    "TM": st.from_regex(r"\A[0-9:.]{0,12}\Z"),
    "CS": st.text(alphabet=st.sampled_from(" AZ09_\\"), max_size=8),
    "PN": st.text(alphabet=st.sampled_from(" A^=z\\.é\x1b"), max_size=14),
    "LO": st.text(alphabet=st.one_of(PRINTABLE, st.sampled_from("éÄ\x1b")), max_size=14),
    "SH": st.text(alphabet=st.one_of(PRINTABLE, st.sampled_from("é")), max_size=10),
}


@st.composite
def datasets(draw: st.DrawFn) -> tuple[Dataset, str]:
    ds = base_dataset()
    for keyword, vr in TEXT_KEYS.items():
        value = draw(st.one_of(st.none(), VALUES[vr]))
        if value is not None:
            ds.add(DataElement(keyword, vr, value, validation_mode=config.IGNORE))
    text = "".join(str(elem.value) for elem in ds)
    charset = draw(st.sampled_from([None, "ISO_IR 100", "ISO_IR 192", "ISO_IR 13"]))
    if charset is None and not text.isascii():
        charset = "ISO_IR 100"
    if charset is not None:
        ds.SpecificCharacterSet = charset
    kind = draw(st.sampled_from([None, (True, True), (True, False), (False, False)]))
    if kind is not None:
        with_sequence(ds, *kind)
    transfer_syntax = draw(st.sampled_from(list(ENCODINGS)))
    return ds, transfer_syntax


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_encoded_text_reads_what_pydicom_reads(case: tuple[Dataset, str]) -> None:
    ds, transfer_syntax = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = encode(ds, transfer_syntax)
    fast = fast_text(data, transfer_syntax)
    if fast is not None:
        assert fast == pydicom_text(data, transfer_syntax)
    raw_values = [elem.value for elem in ds if elem.keyword in TEXT_KEYS]
    plain = all(
        isinstance(v, str) and v.isascii() and "\\" not in v and "\x1b" not in v for v in raw_values
    )
    if plain and ds.get("SpecificCharacterSet") != "ISO_IR 13":
        assert fast is not None  # the fast path is taken where it can be


def test_encoded_text_of_a_plain_data_set() -> None:
    ds = with_sequence(
        base_dataset(
            PatientName="Doe^Jane^^",
            PatientID=" ID7 ",
            StudyDate="2020.01.31",
            StudyTime="10:20:30",
            InstanceNumber=" 0012",
            Modality="CT",
            SpecificCharacterSet="ISO_IR 100",
        ),
        True,
        True,
    )
    for transfer_syntax in ENCODINGS:
        fast = fast_text(encode(ds, transfer_syntax), transfer_syntax)
        assert fast is not None
        assert fast["PatientName"] == "Doe^Jane"
        assert fast["PatientID"] == "ID7"
        assert fast["StudyDate"] == "20200131"
        assert fast["StudyTime"] == "102030"
        assert fast["InstanceNumber"] == "12"
        assert fast["Modality"] == "CT"
        assert fast["SOPInstanceUID"] == UIDS["SOPInstanceUID"]
        assert fast["SeriesDescription"] == ""


@pytest.mark.parametrize(
    "change",
    [
        {"PatientName": "Müller^Hans", "SpecificCharacterSet": "ISO_IR 100"},
        {"PatientName": "Yamada^Tarou", "SpecificCharacterSet": "ISO_IR 13"},
        {"PatientName": "A\x1b$B^B", "SpecificCharacterSet": "ISO 2022 IR 87"},
        {"Modality": ["CT", "MR"]},
        {"PatientID": "A\\B"},
    ],
    ids=["latin-1", "ISO_IR 13", "escape", "two values", "backslash"],
)
def test_encoded_text_leaves_to_pydicom(change: dict[str, Any]) -> None:
    ds = base_dataset()
    for keyword, value in change.items():
        ds.add(DataElement(keyword, "CS" if keyword != "PatientName" else "PN", value))
        if keyword == "PatientID":
            ds[keyword].VR = "LO"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = encode(ds, ExplicitVRLittleEndian)
    assert qrscp._encoded_text(data, ExplicitVRLittleEndian) is None


def test_encoded_text_leaves_odd_encodings_to_pydicom() -> None:
    ds = base_dataset(PatientID="X")
    data = encode(ds, ExplicitVRLittleEndian)
    assert qrscp._encoded_text(data, ExplicitVRLittleEndian) is not None
    # deflated bytes are not a data set to walk
    assert qrscp._encoded_text(data, DeflatedExplicitVRLittleEndian) is None
    # an indexed attribute under another VR than its own
    lo = b"\x10\x00\x20\x00LO\x02\x00X "
    assert lo in data
    for other in (b"\x10\x00\x20\x00SH\x02\x00X ", b"\x10\x00\x20\x00UN\0\0\x02\0\0\0X "):
        assert qrscp._encoded_text(data.replace(lo, other), ExplicitVRLittleEndian) is None
    # nested deeper than the walk goes
    deep = with_sequence(base_dataset(), True, True, depth=qrscp._SEQUENCE_LEVELS + 1)
    assert qrscp._encoded_text(encode(deep, ImplicitVRLittleEndian), ImplicitVRLittleEndian) is None
    # only the head of a data set, which stops before the last indexed tag
    head = encode(base_dataset(PatientID="X"), ExplicitVRLittleEndian)
    for cut in (head.index(b"\x10\x00\x20\x00LO"), head.index(b"X")):
        assert qrscp._encoded_text(head[:cut], ExplicitVRLittleEndian, whole=False) is None
    assert qrscp._encoded_text(head, ExplicitVRLittleEndian, whole=False) is None
    longer = head + encode(Dataset({}), ExplicitVRLittleEndian)
    assert (
        qrscp._encoded_text(
            longer + b"\x28\x00\x10\x00US\x02\x00\x01\x00", ExplicitVRLittleEndian, whole=False
        )
        is not None
    )
