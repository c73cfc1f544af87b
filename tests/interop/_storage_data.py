"""Test data for the Storage interop tests: real files, generated instances, comparisons.

- :data:`TEST_FILES`: pydicom's bundled files by name, one or more per transfer
  syntax (each checked to parse with dcmtk's ``dcmdump`` and pydicom without a
  warning).
- :func:`write_small_instances`: N small valid instances in a directory.
- :func:`write_large_instance`: one multi-frame instance of any size, written
  in chunks (never held in memory); returns the size and SHA-256 of its data set.
- :func:`dataset_diff`: element-by-element comparison of two data sets.
- :func:`dataset_digest`: size and SHA-256 of the data set of a Part 10 file
  (everything after the File Meta Information), streamed.

Importing this module does not import aiodicom (the peers' scripts use it too).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

MiB = 1024 * 1024
GiB = 1024 * MiB

#: pydicom bundled file -> its transfer syntax (verified when the module is used)
TEST_FILES: dict[str, UID] = {
    "CT_small.dcm": ExplicitVRLittleEndian,
    "MR_small.dcm": ExplicitVRLittleEndian,
    "MR_small_implicit.dcm": ImplicitVRLittleEndian,
    "MR_small_bigendian.dcm": ExplicitVRBigEndian,
    "JPEG2000.dcm": JPEG2000,
    "MR_small_jp2klossless.dcm": JPEG2000Lossless,
    "MR_small_RLE.dcm": RLELossless,
    "image_dfl.dcm": DeflatedExplicitVRLittleEndian,
    "rtplan.dcm": ImplicitVRLittleEndian,
    "test-SR.dcm": ExplicitVRLittleEndian,  # Comprehensive SR
    "SC_rgb_jpeg_dcmtk.dcm": JPEGBaseline8Bit,
    "MR_small_jpeg_ls_lossless.dcm": JPEGLSLossless,
    "SC_rgb_jpeg_gdcm.dcm": JPEGLosslessSV1,
}

#: One file per distinct transfer syntax (the matrix of the per-TS tests)
ONE_PER_SYNTAX: list[str] = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
]

#: More kinds of content, same syntaxes as above
OTHER_FILES: list[str] = ["MR_small.dcm", "rtplan.dcm", "test-SR.dcm"]

UNCOMPRESSED = {
    str(ExplicitVRLittleEndian),
    str(ImplicitVRLittleEndian),
    str(ExplicitVRBigEndian),
}

#: Multi-frame Grayscale Word Secondary Capture Image Storage
MULTIFRAME_WORD_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")


def bundled_file(name: str) -> Path:
    """The path of a pydicom bundled file; FileNotFoundError if pydicom lacks it."""
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name!r} is not available offline")
    return Path(str(path))


def file_info(path: str | os.PathLike[str]) -> tuple[UID, UID, UID]:
    """(SOP Class UID, SOP Instance UID, Transfer Syntax UID) of a Part 10 file."""
    ds = dcmread(path, stop_before_pixels=True)
    return (
        UID(str(ds.SOPClassUID)),
        UID(str(ds.SOPInstanceUID)),
        UID(str(ds.file_meta.TransferSyntaxUID)),
    )


def copy_test_files(names: Iterable[str], directory: Path) -> list[Path]:
    """Copy bundled files into `directory` (for tools that send a folder)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        dst = directory / name
        shutil.copyfile(bundled_file(name), dst)
        out.append(dst)
    return out


# --------------------------------------------------------------------------- generators


def small_instance(index: int, **elements: Any) -> Dataset:
    """A small valid CT instance (4x4 16-bit) whose pixel bytes encode `index`."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = f"Test^Patient{index:05d}"
    ds.PatientID = f"P{index:05d}"
    ds.Modality = "CT"
    ds.InstanceNumber = index
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = struct.pack("<16H", *((index * 16 + i) & 0xFFFF for i in range(16)))
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_small_instances(directory: Path, count: int) -> list[Path]:
    """Write `count` small valid instances as Part 10 files (Explicit VR LE)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ds = small_instance(i)
        path = directory / f"inst{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class LargeInstance:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    file_size: int
    dataset_offset: int
    dataset_size: int
    dataset_sha256: str
    pixel_bytes: int


def write_large_instance(
    path: Path,
    min_pixel_bytes: int,
    *,
    chunk_size: int = 8 * MiB,
    seed: int = 1234,
) -> LargeInstance:
    """Write a Multi-frame Grayscale Word SC instance (Explicit VR LE) with at
    least `min_pixel_bytes` of Pixel Data (512x512 16-bit frames), streamed.

    Everything but Pixel Data is written by pydicom; then the OW Pixel Data
    element header and the value in `chunk_size` chunks of a pseudo-random
    block, each chunk stamped with its index (so a lost, repeated or
    reordered chunk changes the hash). Memory use is one chunk.
    """
    frame = 512 * 512 * 2
    frames = max(1, -(-min_pixel_bytes // frame))
    pixel_bytes = frames * frame
    ds = Dataset()
    ds.SOPClassUID = MULTIFRAME_WORD_SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Large^Instance"
    ds.PatientID = "LARGE0001"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 10.0
    ds.Rows = 512
    ds.Columns = 512
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta

    head = io.BytesIO()
    dcmwrite(head, ds, enforce_file_format=True)
    head_bytes = head.getvalue()
    offset = dataset_offset_of(head_bytes)
    sha = hashlib.sha256()
    block = random.Random(seed).randbytes(chunk_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head_bytes)
        sha.update(head_bytes[offset:])
        # (7FE0,0010) OW, 2 reserved bytes, 4-byte length
        header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
        f.write(header)
        sha.update(header)
        left = pixel_bytes
        index = 0
        while left:
            n = min(left, chunk_size)
            chunk = struct.pack("<Q", index) + block[8:n] if n >= 8 else block[:n]
            f.write(chunk)
            sha.update(chunk)
            left -= n
            index += 1
    size = path.stat().st_size
    return LargeInstance(
        path=path,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        file_size=size,
        dataset_offset=offset,
        dataset_size=size - offset,
        dataset_sha256=sha.hexdigest(),
        pixel_bytes=pixel_bytes,
    )


# --------------------------------------------------------------------------- raw data set bytes


def dataset_offset_of(head: bytes) -> int:
    """Offset of the data set in a Part 10 file whose first bytes are `head`
    (preamble, "DICM", then the group 0002 elements, Explicit VR LE)."""
    if len(head) < 132 or head[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    pos = 132
    while pos + 8 <= len(head):
        group, _elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            return pos
        vr = head[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            (length,) = struct.unpack_from("<I", head, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            pos += 8 + length
    if pos == len(head):
        return pos
    raise ValueError("file meta information runs past the bytes given")


def dataset_offset(path: str | os.PathLike[str]) -> int:
    """Offset of the data set (after the File Meta Information) in a Part 10 file."""
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    return dataset_offset_of(head)


def dataset_digest(path: str | os.PathLike[str], chunk_size: int = 8 * MiB) -> tuple[int, str]:
    """(size, SHA-256 hex) of the data set bytes of a Part 10 file, streamed."""
    offset = dataset_offset(path)
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(chunk_size):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def dataset_bytes(path: str | os.PathLike[str]) -> bytes:
    """The data set bytes of a (small) Part 10 file."""
    data = Path(path).read_bytes()
    return data[dataset_offset_of(data) :]


# --------------------------------------------------------------------------- comparison


def _value_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


#: What dcmtk's storescu changes in what it sends (seen dcmtk -> dcmtk too):
#: it drops (FFFC,FFFC) Data Set Trailing Padding, and writes encapsulated
#: Pixel Data that a file has as OW with VR OB (PS3.5 A.4: encapsulated is OB).
DCMTK_SENDER_LENIENCY: dict[str, Any] = {
    "ignore": {0xFFFCFFFC},
    "vr_aliases": {(0x7FE00010, "OW", "OB")},
}


def dataset_diff(
    expected: Dataset,
    actual: Dataset,
    where: str = "",
    *,
    ignore: Collection[int] = (),
    vr_aliases: Collection[tuple[int, str, str]] = (),
) -> list[str]:
    """Differences between two data sets, element by element (file meta excluded):
    same tags, same VR, same values (bytes values, e.g. native or encapsulated
    Pixel Data, compared exactly), sequences item by item. `ignore`: tags
    (top level) not compared; `vr_aliases`: (tag, expected VR, actual VR)
    accepted as the same."""
    diffs: list[str] = []
    exp_tags = {t for t in expected.keys() if t.group != 0x0002 and t not in ignore}  # noqa: SIM118
    act_tags = {t for t in actual.keys() if t.group != 0x0002 and t not in ignore}  # noqa: SIM118
    for tag in sorted(exp_tags - act_tags):
        diffs.append(f"{where}{tag} {expected[tag].keyword or ''}: missing")
    for tag in sorted(act_tags - exp_tags):
        diffs.append(f"{where}{tag} {actual[tag].keyword or ''}: unexpected")
    for tag in sorted(exp_tags & act_tags):
        e, a = expected[tag], actual[tag]
        name = f"{where}{tag} {e.keyword or ''}".rstrip()
        if e.VR != a.VR and (int(tag), e.VR, a.VR) not in vr_aliases:
            diffs.append(f"{name}: VR {e.VR} != {a.VR}")
            continue
        if e.VR == "SQ":
            if len(e.value) != len(a.value):
                diffs.append(f"{name}: {len(e.value)} items != {len(a.value)}")
                continue
            for i, (ei, ai) in enumerate(zip(e.value, a.value, strict=True)):
                diffs.extend(dataset_diff(ei, ai, f"{name}[{i}]."))
            continue
        if e.value != a.value:
            diffs.append(f"{name}: {_value_repr(e.value)} != {_value_repr(a.value)}")
    return diffs


def assert_same_instance(
    expected: Dataset | str | os.PathLike[str],
    actual: Dataset | str | os.PathLike[str],
    *,
    transfer_syntax: str | None = None,
    dcmtk_sender: bool = False,
) -> None:
    """Assert two instances have the same data set elements (and, if given, that
    `actual` is a file in `transfer_syntax`). `dcmtk_sender`: allow what dcmtk's
    storescu changes (:data:`DCMTK_SENDER_LENIENCY`)."""
    exp = expected if isinstance(expected, Dataset) else dcmread(expected)
    act = actual if isinstance(actual, Dataset) else dcmread(actual)
    if transfer_syntax is not None:
        got = str(act.file_meta.TransferSyntaxUID)
        assert got == str(transfer_syntax), f"{actual}: transfer syntax {got} != {transfer_syntax}"
    diffs = dataset_diff(exp, act, **(DCMTK_SENDER_LENIENCY if dcmtk_sender else {}))
    assert not diffs, f"{len(diffs)} differences ({expected} vs {actual}):\n" + "\n".join(
        diffs[:40]
    )
