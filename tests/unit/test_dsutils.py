"""Data set helpers: the fast encoder agrees with pydicom byte for byte; probing files."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aiodicom.dsutils import (
    _encode_simple,
    _probe_with_pydicom,
    decode_dataset,
    encode_dataset,
    file_meta_for,
    part10_header,
    part10_header_for,
    probe_buffer,
    probe_part10,
)
from aiodicom.errors import DIMSEError


def pydicom_bytes(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = True
    write_dataset(fp, ds)
    return fp.getvalue()


def identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "Doe^John^^Dr"
    ds.PatientID = "ID1"  # odd length: padded with a space
    ds.StudyInstanceUID = "1.2.3.45"  # odd: padded with NUL
    ds.StudyDate = "20200101-20201231"
    ds.StudyTime = ""
    ds.ModalitiesInStudy = ["CT", "MR"]
    ds.NumberOfStudyRelatedInstances = 12
    ds.SliceThickness = "1.25"
    ds.Rows = 512
    ds.PixelSpacing = [0.5, 0.5]
    ds.RetrieveAETitle = "QRSCP"
    ds.StudyDescription = "A study"
    ds.InstitutionAddress = "somewhere"  # ST
    ds.add_new(0x00081190, "UR", "http://example.org/a")
    ds.add_new(0x00280106, "US", [1, 2, 3])
    ds.add_new(0x00181310, "US", None)
    ds.add_new(0x00189087, "FD", 1.5)
    ds.add_new(0x0018602C, "FD", [0.25, 4.0])
    ds.add_new(0x00209241, "FL", 2.5)
    ds.add_new(0x00186020, "SL", -7)
    ds.add_new(0x00280104, "SS", -3)
    ds.add_new(0x00280303, "CS", None)
    return ds


@pytest.mark.parametrize("implicit", [True, False])
def test_fast_encoder_matches_pydicom(implicit: bool) -> None:
    ds = identifier()
    fast = _encode_simple(ds, implicit)
    assert fast is not None
    assert fast == pydicom_bytes(ds, implicit)


_TEXT = st.text(alphabet="ABCXYZ019 .^-*?", max_size=16)
_VALUES = {
    "PatientName": _TEXT,
    "PatientID": _TEXT,
    "AccessionNumber": _TEXT,
    "StudyDescription": _TEXT,
    "Modality": st.sampled_from(["", "CT", "MR", "OT"]),
    "StudyInstanceUID": st.from_regex(r"1\.2(\.[1-9][0-9]{0,5}){0,6}", fullmatch=True),
    "Rows": st.integers(0, 0xFFFF),
    "InstanceNumber": st.integers(-(2**31), 2**31 - 1).map(str),
}


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional=_VALUES), st.booleans())
def test_fast_encoder_property(values: dict[str, object], implicit: bool) -> None:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    fast = _encode_simple(ds, implicit)
    assert fast is not None
    assert fast == pydicom_bytes(ds, implicit)


def test_fast_encoder_declines_what_it_does_not_handle() -> None:
    with_sequence = identifier()
    item = Dataset()
    item.CodeValue = "1"
    with_sequence.ProcedureCodeSequence = Sequence([item])
    non_ascii = identifier()
    non_ascii.PatientName = "Müller^Hans"
    charset = identifier()
    charset.SpecificCharacterSet = "ISO_IR 100"
    read = dcmread(get_testdata_file("CT_small.dcm"))  # raw elements
    for ds in (with_sequence, non_ascii, charset, read):
        assert _encode_simple(ds, False) is None
        # encode_dataset falls back on pydicom for them
        assert encode_dataset(ds, ExplicitVRLittleEndian) == pydicom_bytes(ds, False)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_encode_decode_round_trip(ts: str) -> None:
    ds = identifier()
    for elem in list(ds):
        if elem.value is None:
            del ds[elem.tag]  # decodes as "" (or []), not None
    del ds[0x00280104], ds[0x00280106]  # "US or SS": implicit VR cannot tell
    assert decode_dataset(encode_dataset(ds, ts), ts) == ds


#: pydicom's files for the probe: explicit LE, big endian, deflated, encapsulated, sequences.
PROBED_FILES = [
    "CT_small.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "rtplan.dcm",
]


def read_by_pydicom(path: str) -> tuple[str, str, str, int]:
    """pydicom's own reading, none of this package's code: the data set's SOP
    Class and Instance UIDs, the meta's Transfer Syntax UID, and where the
    data set starts (the file position after pydicom reads the meta)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(path, "rb") as fp:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        offset = fp.tell()
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(meta.TransferSyntaxUID), offset


@pytest.mark.parametrize("name", PROBED_FILES)
def test_probe_agrees_with_pydicom(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    with open(path, "rb") as a, open(path, "rb") as b:
        info = probe_part10(a)
        assert info == _probe_with_pydicom(b)
    assert tuple(info) == read_by_pydicom(path)


@pytest.mark.parametrize("name", PROBED_FILES)
def test_probe_of_a_buffer_agrees_with_pydicom(name: str) -> None:
    """The whole file in memory (bytes, bytearray or memoryview): the same answer."""
    from aiodicom.dsutils import probe_buffer

    path = get_testdata_file(name)
    assert path is not None
    with open(path, "rb") as b:
        expected = _probe_with_pydicom(b)
    raw = Path(path).read_bytes()
    for buf in (raw, bytearray(raw), memoryview(raw)):
        assert probe_buffer(buf) == expected
    # a preamble that is not DICM: a bare data set, sniffed by pydicom
    ds = identifier()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    info = probe_buffer(bytearray(encode_dataset(ds, ImplicitVRLittleEndian)))
    assert (info.sop_instance_uid, info.offset) == ("1.2.3.4.5", 0)


def test_probe_bare_data_set() -> None:
    ds = identifier()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    info = probe_part10(io.BytesIO(encode_dataset(ds, ImplicitVRLittleEndian)))
    assert (info.sop_class_uid, info.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert info.transfer_syntax == ImplicitVRLittleEndian
    assert info.offset == 0


def pydicom_read(data: bytes, implicit: bool) -> Dataset:
    from pydicom.filereader import read_dataset

    return read_dataset(io.BytesIO(data), implicit, True)


@pytest.mark.parametrize("implicit", [True, False])
def test_fast_decoder_matches_pydicom(implicit: bool) -> None:
    from aiodicom.dsutils import _decode_simple

    ds = identifier()
    del ds[0x00280104], ds[0x00280106]
    data = pydicom_bytes(ds, implicit)
    fast = _decode_simple(data, implicit)
    assert fast is not None
    assert fast == pydicom_read(data, implicit)
    assert fast.original_encoding == (implicit, True)
    charset = identifier()
    charset.SpecificCharacterSet = "ISO_IR 100"
    charset.PatientName = "Müller^Hans"
    data = pydicom_bytes(charset, implicit)
    fast = _decode_simple(data, implicit)
    assert fast is not None and fast.PatientName == "Müller^Hans"


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "MR_small.dcm", "JPEG2000.dcm"])
def test_decode_of_real_files(name: str) -> None:
    """Files with sequences fall back on pydicom; either way the result is pydicom's."""
    path = get_testdata_file(name)
    assert path is not None
    with open(path, "rb") as f:
        info = probe_part10(f)
        f.seek(info.offset)
        data = f.read()
    implicit = info.transfer_syntax == ImplicitVRLittleEndian
    assert decode_dataset(data, info.transfer_syntax) == pydicom_read(data, implicit)


def test_fast_decoder_declines_sequences_and_garbage() -> None:
    from aiodicom.dsutils import _decode_simple

    ds = identifier()
    item = Dataset()
    item.CodeValue = "1"
    ds.ProcedureCodeSequence = Sequence([item])
    for implicit in (True, False):
        assert _decode_simple(pydicom_bytes(ds, implicit), implicit) is None
    assert _decode_simple(b"\x10\x00\x10\x00PN\xff\x00abc", False) is None  # overruns
    assert _decode_simple(b"\x10\x00\x10", False) is None  # truncated header


def test_walk_explicit_vr_codes() -> None:
    """Known VRs by the table (long ones with a 4-byte length); any other code
    declined: pydicom reads one with a 2-byte length or as an implicit VR
    header, by rules of its own, so the probe leaves such a file to it."""
    import struct

    from aiodicom.dsutils import _walk

    short = struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 4) + b"1.2\x00"
    long = struct.pack("<HH2sHL", 0x0009, 0x0010, b"OB", 0, 2) + b"ab"
    assert _walk(short + long, 0, implicit=False, little=True) == (
        [(0x00080016, "UI", 8, 4), (0x00090010, "OB", 24, 2)],
        26,
    )
    for bad in (b"\x00\x01", b"1A", b"  ", b"ZZ", b"aA"):
        garbage = struct.pack("<HH2sH", 0x0008, 0x0016, bad, 4) + b"1.2\x00"
        assert _walk(garbage, 0, implicit=False, little=True) is None
    # Big endian uses the same table.
    big = struct.pack(">HH2sH", 0x0008, 0x0016, b"UI", 4) + b"1.2\x00"
    assert _walk(big, 0, implicit=False, little=False) == ([(0x00080016, "UI", 8, 4)], 12)


_UIDS = st.from_regex(r"[1-9][0-9]{0,5}(\.(0|[1-9][0-9]{0,7})){1,7}", fullmatch=True)


@st.composite
def part10_files(draw: st.DrawFn) -> bytes:
    """Part 10 files as pydicom writes them: optional meta elements, a data set
    head with or without its SOP UIDs (which may differ from the meta's), in
    every encoding the probe reads itself or leaves to pydicom."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        JPEG2000Lossless,
    )

    ts = draw(
        st.sampled_from(
            [
                ExplicitVRLittleEndian,
                ImplicitVRLittleEndian,
                ExplicitVRBigEndian,
                DeflatedExplicitVRLittleEndian,
                JPEG2000Lossless,
            ]
        )
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = draw(_UIDS)
    meta.MediaStorageSOPInstanceUID = draw(_UIDS)
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = draw(_UIDS)
    if draw(st.booleans()):
        meta.ImplementationVersionName = draw(st.from_regex(r"[A-Z0-9_]{1,16}", fullmatch=True))
    if draw(st.booleans()):
        meta.SourceApplicationEntityTitle = draw(st.from_regex(r"[A-Z0-9]{1,16}", fullmatch=True))
    if draw(st.booleans()):
        meta.PrivateInformationCreatorUID = draw(_UIDS)
        meta.PrivateInformation = draw(st.binary(max_size=40))
    ds = Dataset()
    if draw(st.booleans()):
        ds.SpecificCharacterSet = "ISO_IR 100"
    if draw(st.booleans()):
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if draw(st.booleans()):
        ds.InstanceCreationDate = "20260101"
    if draw(st.booleans()):
        ds.SOPClassUID = draw(_UIDS)
    if draw(st.booleans()):
        ds.SOPInstanceUID = draw(_UIDS)
    ds.PatientName = draw(st.from_regex(r"[A-Za-z^]{0,20}", fullmatch=True))
    if draw(st.booleans()):
        ds.add_new(0x00091010, "OB", draw(st.binary(max_size=300)))
    ds.file_meta = meta
    fp = io.BytesIO()
    dcmwrite(fp, ds, enforce_file_format=True)
    return fp.getvalue()


@settings(max_examples=150, deadline=None)
@given(part10_files())
def test_probe_of_generated_files_agrees_with_pydicom(raw: bytes) -> None:
    """The fast probe (both its entry points) gives pydicom's answer, or declines
    it to pydicom: for every mix of meta elements, head elements and encodings."""
    from aiodicom.dsutils import probe_buffer

    try:
        expected = _probe_with_pydicom(io.BytesIO(raw))
    except Exception as exc:  # no SOP UIDs anywhere: both must refuse
        with pytest.raises(type(exc)):
            probe_buffer(raw)
        return
    for buf in (raw, bytearray(raw), memoryview(raw)):
        got = probe_buffer(buf)
        assert got == expected
        assert type(got.sop_instance_uid) is UID and type(got.transfer_syntax) is UID
    assert probe_part10(io.BytesIO(raw)) == expected


def _damaged(raw: bytes, draw: st.DrawFn) -> bytearray:
    """``raw`` cut short, or with up to 4 bytes of its head overwritten."""
    buf = bytearray(raw)
    if draw(st.booleans()):
        del buf[draw(st.integers(132, len(buf))) :]
    else:
        at = draw(st.integers(132, len(buf) - 1))
        buf[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
    return buf


def _file_opening_with_ob() -> bytes:
    """A Part 10 file whose data set opens with an OB element (Explicit VR LE):
    no SOP UIDs of its own, so the meta's are the answer."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import dcmwrite

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.add_new(0x00091010, "OB", b"")
    ds.PatientName = "A^B"
    ds.file_meta = meta
    out = DicomBytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("learned", [False, True], ids=["walked", "known-layout"])
@pytest.mark.parametrize("keep", [8, 9, 10, 11])
def test_probe_of_file_cut_in_first_data_set_header(learned: bool, keep: int) -> None:
    """Cut inside the 4-byte length of the data set's first (OB) element header:
    pydicom cannot find the meta's end and the probe does not answer either."""
    from aiodicom import dsutils

    raw = _file_opening_with_ob()
    _forget_heads()
    info = probe_buffer(raw)
    assert info == _pydicom_or_error(raw)
    assert bool(dsutils._HEAD_LAYOUTS)  # learned from the whole file
    if not learned:
        _forget_heads()
    cut = raw[: info.offset + keep]
    assert _pydicom_or_error(cut) is DIMSEError
    assert _probe_or_error(cut) is DIMSEError


@settings(max_examples=150, deadline=None)
@given(part10_files(), st.data())
def test_probe_of_damaged_files(raw: bytes, data: st.DataObject) -> None:
    """A truncated or overwritten head: the fast probe gives pydicom's answer
    or raises as pydicom does; it never makes up an answer of its own."""
    from aiodicom.dsutils import probe_buffer

    buf = _damaged(raw, data.draw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of what the damage made invalid
        try:
            expected = _probe_with_pydicom(io.BytesIO(bytes(buf)))
        except Exception as exc:
            with pytest.raises(type(exc)):
                probe_buffer(buf)
            return
        assert probe_buffer(buf) == expected


def test_probe_of_a_meta_element_with_a_lowercase_vr() -> None:
    """Found by test_probe_of_damaged_files: a meta element header whose VR
    was overwritten with b"aA". pydicom reads that header as Implicit VR (a
    4-byte length, which puts the data set past the file's end); the probe
    took it as a short VR and answered a data set offset of its own. Now it
    leaves the file to pydicom and gives pydicom's answer."""
    from aiodicom.dsutils import probe_buffer

    raw = bytearray(
        bytes(128) + b"DICM\x02\x00\x00\x00UL\x04\x00\x8a\x00\x00\x00"
        b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01"
        b"\x02\x00\x02\x00UI\x08\x001.1.1.1\x00"
        b"\x02\x00\x03\x00UI&\x001.1.1.1.1.1.1.1.10000.1000000.1000000\x00"
        b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"
        b"\x02\x00\x12\x00UI\x04\x001.1\x00\x02\x00\x13\x00SH\x0e\x00PYDICOM 3.0.2 "
        b"\x08\x00\x18\x00UI&\x001.1.1.1.1.1.1.1.10000.1000000.1000000\x00"
        b"\x10\x00\x10\x00PN\x00\x00"
    )
    raw[262:266] = b"\x00\x00aA"  # (0002,0013) SH -> (0002,0000) "aA"
    _forget_heads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _probe_with_pydicom(io.BytesIO(bytes(raw)))
        assert expected.offset > len(raw)  # pydicom's reading, as it is
        assert probe_buffer(raw) == expected


@given(st.from_regex(r" ?[0-9.]{0,64}[ \x00]?", fullmatch=True))
def test_new_uid_is_pydicoms_uid(text: str) -> None:
    from pydicom import config

    from aiodicom.dsutils import _new_uid

    made = _new_uid(text)
    expected = UID(text, validation_mode=config.IGNORE)
    assert type(made) is UID and made == expected
    assert (made.is_transfer_syntax, made.name) == (expected.is_transfer_syntax, expected.name)


def _part10(**elements: str) -> bytearray:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import dcmwrite

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PatientName = "Doe^John"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fp = io.BytesIO()
    dcmwrite(fp, ds, enforce_file_format=True)
    return bytearray(fp.getvalue())


def test_probe_meta_ends_at_another_group() -> None:
    """An element of group 0000 where the meta should start ends the meta, as
    in pydicom: no transfer syntax, so no answer from the meta's UIDs."""
    from aiodicom.errors import DIMSEError

    buf = _part10()
    buf[132:136] = b"\x00\x00\x00\\"  # (0002,0000) made (0000,5C00)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DIMSEError):
            _probe_with_pydicom(io.BytesIO(bytes(buf)))
        with pytest.raises(DIMSEError):
            probe_buffer(buf)


def test_probe_refuses_a_multi_valued_sop_instance_uid() -> None:
    from aiodicom.errors import DIMSEError

    buf = _part10(SOPInstanceUID="1.2.3\\4.5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for probe in (probe_buffer, lambda b: _probe_with_pydicom(io.BytesIO(bytes(b)))):
            with pytest.raises(DIMSEError, match="more than one value"):
                probe(buf)


# Known head layouts: a file whose head has the headers of one probed before
# is read in one unpack; what that gives must be what the walk (and pydicom)
# gives, for a sibling file, a damaged one, or one of another syntax.


def _forget_heads() -> None:
    from aiodicom import dsutils

    dsutils._HEAD_LAYOUTS.clear()
    dsutils._head_layout_count = 0


def _sibling(raw: bytes, draw: st.DrawFn) -> bytearray:
    """``raw`` with UIDs' digits changed (lengths kept) but for the transfer
    syntax's: a file of the same layout and other values."""
    buf = bytearray(raw)
    ts = raw.index(b"\x02\x00\x10\x00UI")
    ts_value = range(ts, ts + 8 + int.from_bytes(raw[ts + 6 : ts + 8], "little"))
    for match in re.finditer(rb"(?<=[0-9]\.)[0-9]+(?=[.\x00]|$)", raw):
        if match.start() not in ts_value and draw(st.booleans()):
            start, end = match.span()
            digits = draw(st.from_regex(rf"[1-9][0-9]{{{end - start - 1}}}", fullmatch=True))
            buf[start:end] = digits.encode()
    return buf


def _probe_or_error(buf: bytes | bytearray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return probe_buffer(buf)
        except Exception as exc:
            return type(exc)


def _pydicom_or_error(buf: bytes | bytearray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _probe_with_pydicom(io.BytesIO(bytes(buf)))
        except Exception as exc:
            return type(exc)


@settings(max_examples=150, deadline=None)
@given(part10_files(), st.data())
def test_known_head_layout_reads_as_pydicom(raw: bytes, data: st.DataObject) -> None:
    from pydicom.uid import ExplicitVRBigEndian

    from aiodicom import dsutils

    _forget_heads()
    first = _probe_or_error(raw)
    assert first == _pydicom_or_error(raw)
    learned = bool(dsutils._HEAD_LAYOUTS)
    if isinstance(first, dsutils.Part10Info) and first.transfer_syntax in (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    ):
        assert learned  # the walk read it: its layout is kept
    for buf in (bytearray(raw), _sibling(raw, data.draw)):
        if learned and isinstance(first, dsutils.Part10Info):
            assert dsutils._head_by_layout(buf, 0) is not None
        assert _probe_or_error(buf) == _pydicom_or_error(buf)
    # Damage after the layout is known: pydicom's answer or its error still.
    buf = _damaged(raw, data.draw)
    assert _probe_or_error(buf) == _pydicom_or_error(buf)
    # The same headers in another syntax of the same length: big endian.
    swapped = bytes(raw).replace(ExplicitVRLittleEndian.encode(), ExplicitVRBigEndian.encode())
    assert _probe_or_error(swapped) == _pydicom_or_error(swapped)


def test_head_layouts_are_bounded() -> None:
    from aiodicom import dsutils

    _forget_heads()
    first = None
    for n in range(dsutils._MAX_HEAD_LAYOUTS + 10):
        uid = "1.2." + "3" * (2 * (n % 30) + 1)
        buf = _part10(SOPInstanceUID=uid, ImageType="XX" * (n // 30 + 1))
        first = first or buf
        expected = _pydicom_or_error(buf)
        assert probe_buffer(buf) == expected
        assert probe_buffer(buf) == expected  # by its layout
        assert dsutils._head_by_layout(buf, 0) == expected
        assert sum(map(len, dsutils._HEAD_LAYOUTS.values())) <= dsutils._MAX_HEAD_LAYOUTS
    # Full, the cache started over: the first layout is read by the walk again.
    assert sum(map(len, dsutils._HEAD_LAYOUTS.values())) == 10
    assert dsutils._head_by_layout(first, 0) is None
    assert probe_buffer(first) == _pydicom_or_error(first)
    _forget_heads()


def test_head_layout_of_a_tag_met_twice_is_not_kept() -> None:
    """Two SOP Instance UIDs: the walk keeps the last; no layout is kept."""
    from aiodicom import dsutils

    _forget_heads()
    buf = _part10(SOPInstanceUID="1.2.3.4")
    head = buf.index(b"\x08\x00\x18\x00UI")
    element = bytes(buf[head : head + 16])
    again = element.replace(b"1.2.3.4", b"9.8.7.6")
    buf[head + 16 : head + 16] = again
    info = probe_buffer(buf)
    assert info.sop_instance_uid == "9.8.7.6"
    assert not dsutils._HEAD_LAYOUTS


def test_head_layout_is_of_its_transfer_syntax() -> None:
    """The same header bytes under another syntax of the same length (Explicit
    VR Big Endian) read otherwise: the data set's head is not where the
    layout of the little endian file says, and the meta's UIDs are taken."""
    from pydicom.uid import ExplicitVRBigEndian

    from aiodicom import dsutils

    _forget_heads()
    little = bytes(_part10())
    little = little.replace(b"1.2.3.4\x00", b"9.8.7.6\x00", 1)  # the meta's instance UID
    assert probe_buffer(little).sop_instance_uid == "1.2.3.4"
    assert dsutils._head_by_layout(little, 0) is not None
    big = little.replace(ExplicitVRLittleEndian.encode(), ExplicitVRBigEndian.encode())
    assert dsutils._head_by_layout(big, 0) is None
    assert probe_buffer(big) == _pydicom_or_error(big)
    assert probe_buffer(big).sop_instance_uid == "9.8.7.6"
    _forget_heads()


# ---------------------------------------------------------------------------
# part10_header_for: the Part 10 header without a Dataset


_UIDS = st.from_regex(r"[12](\.[1-9][0-9]{0,8}){1,10}", fullmatch=True).filter(
    lambda uid: len(uid) <= 64
)


@settings(max_examples=200)
@given(
    sop_class=_UIDS,
    sop_instance=_UIDS,
    transfer_syntax=st.sampled_from(
        ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", "1.2.3"]
    ),
)
def test_part10_header_for_is_pydicoms_header(
    sop_class: str, sop_instance: str, transfer_syntax: str
) -> None:
    made = part10_header_for(sop_class, sop_instance, transfer_syntax)
    assert made == part10_header(file_meta_for(sop_class, sop_instance, transfer_syntax))
    # and pydicom reads it back as that File Meta Information
    meta = dcmread(io.BytesIO(made)).file_meta
    assert meta.MediaStorageSOPClassUID == sop_class
    assert meta.MediaStorageSOPInstanceUID == sop_instance
    assert meta.TransferSyntaxUID == transfer_syntax
    assert meta.FileMetaInformationGroupLength == len(made) - 132 - 12


@pytest.mark.parametrize(
    "sop_class, sop_instance", [(None, "1.2.3"), ("1.2.3", None), ("", "1.2.3"), ("1.2.3", "")]
)
def test_part10_header_for_refuses_a_missing_uid_as_pydicom_does(
    sop_class: str | None, sop_instance: str | None
) -> None:
    with pytest.raises(Exception) as ours:
        part10_header_for(sop_class, sop_instance, "1.2.840.10008.1.2.1")
    with pytest.raises(Exception) as theirs:
        part10_header(file_meta_for(sop_class, sop_instance, "1.2.840.10008.1.2.1"))
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)
