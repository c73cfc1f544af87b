"""Data set encoding helpers on top of pydicom (sans-IO)."""

from __future__ import annotations

import zlib
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from ._version import __version__
from .errors import DIMSEError

__all__ = (
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "decode_dataset",
    "file_meta_for",
)

#: Our Implementation Class UID (PS3.7 D.3.3.2): a UUID-derived UID (PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = UID("2.25.217634072652467703769261908766645506195")
#: Our Implementation Version Name (at most 16 characters).
IMPLEMENTATION_VERSION_NAME = ("AIODICOM_" + __version__.replace(".", ""))[:16]


def decode_dataset(data: bytes, transfer_syntax: str | UID | None) -> Dataset:
    """Decode a data set received in ``transfer_syntax``."""
    ts = UID(str(transfer_syntax or ImplicitVRLittleEndian))
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise DIMSEError(f"deflated data set does not inflate: {exc}") from None
    implicit = ts == ImplicitVRLittleEndian
    little = ts != UID("1.2.840.10008.1.2.2")
    try:
        ds = read_dataset(BytesIO(data), implicit, little)
    except Exception as exc:  # pydicom raises many types on garbage
        raise DIMSEError(f"data set does not decode in {ts.name}: {exc}") from exc
    ds.set_original_encoding(implicit, little, None)
    return ds


def file_meta_for(
    sop_class_uid: str | None, sop_instance_uid: str | None, transfer_syntax: str
) -> FileMetaDataset:
    """File Meta Information for saving a received data set as Part 10 (PS3.10 7.1)."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    if sop_class_uid:
        meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    if sop_instance_uid:
        meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta
