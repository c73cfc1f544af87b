"""Data set encoding helpers on top of pydicom.

Sans-IO except :func:`probe_part10`, which reads from a file object it is
given (the shell runs it in a worker thread).
"""

from __future__ import annotations

import functools
import logging
import operator
import re
import struct
import zlib
from collections.abc import Callable, Container
from io import BytesIO
from typing import Any, BinaryIO, NamedTuple

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from ._version import __version__
from .errors import DIMSEError

__all__ = (
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "Part10Info",
    "decode_dataset",
    "encode_dataset",
    "encoding_of",
    "file_meta_for",
    "is_plain_uid",
    "part10_header",
    "probe_buffer",
    "probe_part10",
    "transfer_syntax_of",
)

LOGGER = logging.getLogger("aiodicom")

#: Our Implementation Class UID (PS3.7 D.3.3.2): a UUID-derived UID (PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = UID("2.25.217634072652467703769261908766645506195")
#: Our Implementation Version Name (at most 16 characters).
IMPLEMENTATION_VERSION_NAME = ("AIODICOM_" + __version__.replace(".", ""))[:16]


@functools.lru_cache(maxsize=64)
def _as_uid(transfer_syntax: str | None) -> UID:
    """A transfer syntax given as text as a UID (pydicom checks it: once per value)."""
    return UID(str(transfer_syntax or ImplicitVRLittleEndian))


def decode_dataset(data: bytes, transfer_syntax: str | UID | None) -> Dataset:
    """Decode a data set received in ``transfer_syntax``."""
    ts = transfer_syntax if type(transfer_syntax) is UID else _as_uid(transfer_syntax)
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise DIMSEError(f"deflated data set does not inflate: {exc}") from None
    implicit, little = encoding_of(ts)
    if little:
        fast = _decode_simple(data, implicit)
        if fast is not None:
            return fast
    try:
        ds = read_dataset(BytesIO(data), implicit, little)
    except Exception as exc:  # pydicom raises many types on garbage
        raise DIMSEError(f"data set does not decode in {ts.name}: {exc}") from exc
    ds.set_original_encoding(implicit, little, None)
    return ds


def _decode_simple(data: bytes, implicit: bool) -> Dataset | None:
    """A flat little endian data set as a Dataset of raw elements, without pydicom's reader.

    Like pydicom's reader it leaves every value raw, converted on first
    access; it only walks the element headers, which is most of the cost of a
    query identifier or response. A sequence, an undefined length or
    anything malformed returns ``None``: the caller then uses pydicom (which
    also reports the errors).
    """
    from .dimse import _new_dataset

    scanned = _scan(data, 0, implicit=implicit, little=True)
    if scanned is None:
        return None
    elements: dict[BaseTag, Any] = {}
    for number, (start, length, vr) in scanned[0].items():
        tag = BaseTag(number)
        if vr == "SQ":
            return None
        if implicit:
            is_sequence = _IMPLICIT_SQ.get(tag)
            if is_sequence is None:
                is_sequence = _sequence_in_dictionary(tag)
            if is_sequence:
                return None
        elements[tag] = RawDataElement(
            tag, vr, length, data[start : start + length], start, implicit, True, True, False
        )
    ds = _new_dataset(elements)
    charset = ds.get("SpecificCharacterSet") if 0x00080005 in elements else None
    ds.set_original_encoding(implicit, True, charset)
    return ds


_IMPLICIT_SQ: dict[BaseTag, bool] = {}


def _sequence_in_dictionary(tag: BaseTag) -> bool:
    """Whether an implicit VR element is a sequence by the dictionary (cached)."""
    try:
        found = dictionary_VR(tag) == "SQ"
    except KeyError:
        found = False  # private or unknown: pydicom reads it as UN too
    if len(_IMPLICIT_SQ) < 4096:
        _IMPLICIT_SQ[tag] = found
    return found


_PLAIN_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_plain_uid(text: str) -> bool:
    """True for a UID of digits and dots of at most 64 characters (PS3.5 9.1).

    What a received UID must be before it may name a file or a row.
    """
    return len(text) <= 64 and _PLAIN_UID.fullmatch(text) is not None


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


_TS_FOR_ENCODING: dict[tuple[bool, bool], UID] = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): UID("1.2.840.10008.1.2.1"),
    (False, False): UID("1.2.840.10008.1.2.2"),
}


def encoding_of(transfer_syntax: str | UID) -> tuple[bool, bool]:
    """``(is_implicit_VR, is_little_endian)`` of a transfer syntax's data set encoding.

    Every transfer syntax other than Implicit VR Little Endian and Explicit VR
    Big Endian (the retired one) encodes its data set as Explicit VR Little
    Endian; the compressed ones encapsulate only the pixel data (PS3.5 A.4).
    """
    ts = str(transfer_syntax)
    return ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2"


def transfer_syntax_of(ds: Dataset) -> UID | None:
    """The transfer syntax ``ds`` was read with (or will be written in), if known.

    The file meta's Transfer Syntax UID if there is one, else the encoding the
    data set was decoded from, else ``None``.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(str(meta.TransferSyntaxUID))
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    return _TS_FOR_ENCODING.get((implicit, little))


def encode_dataset(ds: Dataset, transfer_syntax: str | UID) -> bytes:
    """Encode ``ds`` (without its file meta) for sending in ``transfer_syntax``.

    Deflated Explicit VR Little Endian is deflated here (PS3.5 A.5); for the
    encapsulated syntaxes the pixel data is written as it is, never
    re-compressed.
    """
    ts = transfer_syntax if type(transfer_syntax) is UID else _as_uid(transfer_syntax)
    implicit, little = encoding_of(ts)
    if little and ts != DeflatedExplicitVRLittleEndian:
        fast = _encode_simple(ds, implicit)
        if fast is not None:
            return fast
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    try:
        write_dataset(fp, ds)
    except Exception as exc:  # pydicom raises many types on bad values
        raise DIMSEError(f"the data set does not encode in {ts.name}: {exc}") from exc
    data = fp.getvalue()
    if ts == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
        if len(data) % 2:
            data += b"\x00"  # the deflated stream is padded to even length (PS3.5 A.5)
    return data


class Encoded(bytes):
    """A data set already encoded in the transfer syntax it goes out in.

    Internal: the Q/R SCP yields its C-FIND identifiers so (built straight
    from the index, see :class:`aiodicom.qrscp.IdentifierEncoder`), and the
    C-FIND service sends them as they are instead of encoding a Dataset.
    """

    __slots__ = ()


#: Text VRs encoded here directly (ASCII values only); padded with a space.
_TEXT_VRS = frozenset(
    ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT")
)
_BINARY = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d"}


_FIRST = operator.itemgetter(0)


def _encode_simple(ds: Dataset, implicit: bool) -> bytes | None:
    """Encode a flat data set of plain values (little endian) without pydicom's writer.

    Query identifiers and responses are small flat data sets; pydicom's
    general writer costs about a hundred microseconds for each, most of it
    checks this needs once. Anything unusual (a sequence, a raw element, a
    non-ASCII value, a Specific Character Set, a private or unknown VR, a
    value too long for its length field) returns ``None``: the caller then
    uses pydicom.
    """
    out: list[bytes] = []
    pack_tag = _TAG_LE.pack
    # Sorted as plain ints: pydicom's BaseTag compares in Python code.
    elements = [(int(tag), elem) for tag, elem in ds.items()]
    elements.sort(key=_FIRST)
    for tag, elem in elements:
        if tag == 0x00080005:  # Specific Character Set: pydicom encodes
            return None
        if not isinstance(elem, DataElement):
            return None  # a RawDataElement: pydicom knows how to re-encode it
        vr = elem.VR
        value = elem.value
        if vr in _TEXT_VRS or vr == "UI":
            if value is None or value == "":
                raw = b""
            else:
                if isinstance(value, str):  # one value (a UID is a str too)
                    text = str(value)
                else:
                    items = value if isinstance(value, MultiValue | list | tuple) else (value,)
                    text = "\\".join("" if v is None else str(v) for v in items)
                if not text.isascii():
                    return None
                raw = text.encode("ascii")
                if len(raw) % 2:
                    raw += b"\x00" if vr == "UI" else b" "
        elif vr in _BINARY:
            if value is None or value == "":
                raw = b""
            else:
                items = value if isinstance(value, MultiValue | list | tuple) else (value,)
                try:
                    raw = struct.pack(f"<{len(items)}{_BINARY[vr]}", *items)
                except (struct.error, TypeError):
                    return None
        else:
            return None
        group, element = tag >> 16, tag & 0xFFFF
        if implicit:
            out.append(pack_tag(group, element) + _U32LE.pack(len(raw)))
        elif vr in ("UC", "UR", "UT"):
            out.append(pack_tag(group, element) + vr.encode() + b"\x00\x00" + _U32LE.pack(len(raw)))
        else:
            if len(raw) > 0xFFFF:
                return None
            out.append(pack_tag(group, element) + vr.encode() + _U16LE.pack(len(raw)))
        out.append(raw)
    return b"".join(out)


def part10_header(meta: FileMetaDataset) -> bytes:
    """The 128-byte preamble, ``DICM`` and the encoded File Meta Information (PS3.10 7.1)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue()


def part10_header_for(
    sop_class_uid: str | None, sop_instance_uid: str | None, transfer_syntax: str
) -> bytes:
    """:func:`part10_header` of :func:`file_meta_for` of the same arguments,
    without making a Dataset: the same bytes, encoded here directly when the
    three UIDs are present and ASCII (else by pydicom, which refuses a
    missing one, as :func:`part10_header` does)."""
    uids = (sop_class_uid, sop_instance_uid, transfer_syntax)
    if not all(isinstance(u, str) and u and u.isascii() for u in uids):
        return part10_header(file_meta_for(sop_class_uid, sop_instance_uid, transfer_syntax))
    header = _EXPLICIT[True].pack
    elements = [_META_VERSION]
    for elem, uid in zip((0x0002, 0x0003, 0x0010), uids, strict=True):
        raw = str(uid).encode("ascii")
        if len(raw) % 2:
            raw += b"\x00"
        elements += (header(2, elem, b"UI", len(raw)), raw)
    elements.append(_META_IMPLEMENTATION)
    body = b"".join(elements)
    return _META_PREFIX + _U32LE.pack(len(body)) + body


class Part10Info(NamedTuple):
    """What sending a DICOM file needs to know of it, without reading its data set."""

    sop_class_uid: UID
    sop_instance_uid: UID
    transfer_syntax: UID
    #: Where the data set starts in the file (after the File Meta Information).
    offset: int


def _stop_after_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 2


def _stop_after_sop_uids(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag > 0x00080018)


#: Explicit VR VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_SHORT_VRS = (
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
    b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
)  # fmt: skip
#: The VR code of an Explicit VR header -> (its name, whether a 4-byte length follows).
_VR_CODES: dict[bytes, tuple[str, bool]] = {
    code: (code.decode("ascii"), code in _LONG_VRS) for code in (*_LONG_VRS, *_SHORT_VRS)
}
_PROBE_HEAD = 8192


#: Element header structs by byte order: (tag, 16-bit length, 32-bit length).
_HEADERS = {
    True: (struct.Struct("<HH"), struct.Struct("<H"), struct.Struct("<L")),
    False: (struct.Struct(">HH"), struct.Struct(">H"), struct.Struct(">L")),
}
_TAG_LE, _U16LE, _U32LE = _HEADERS[True]


#: (group, element, VR, 16-bit length) of an Explicit VR element header;
#: (group, element, 32-bit length) of an Implicit VR one; by byte order.
_EXPLICIT = {True: struct.Struct("<HH2sH"), False: struct.Struct(">HH2sH")}
_IMPLICIT = {True: struct.Struct("<HHL"), False: struct.Struct(">HHL")}


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


# The constant parts of part10_header_for's File Meta Information: the
# preamble, "DICM" and the Group Length's header; the Version (OB: the long
# header); the Implementation Class UID and Version Name.
_META_PREFIX = b"\x00" * 128 + b"DICM" + _EXPLICIT[True].pack(2, 0x0000, b"UL", 4)
_META_VERSION = _TAG_LE.pack(2, 0x0001) + b"OB\x00\x00" + _U32LE.pack(2) + b"\x00\x01"
_META_IMPLEMENTATION = b"".join(
    _EXPLICIT[True].pack(2, elem, vr, len(raw)) + raw
    for elem, vr, raw in (
        (0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
        (0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
    )
)


def _scan(
    buf: bytes | bytearray | memoryview,
    pos: int,
    *,
    implicit: bool,
    little: bool,
    until: int = 0xFFFFFFFF,
    wanted: Container[int] | None = None,
    since: int = 0,
    sequences: int = 0,
) -> tuple[dict[int, tuple[int, int, str | None]], int] | None:
    """Walk the top-level element headers of ``buf`` from ``pos`` while their
    tag is from ``since`` to ``until``: where the values of the ``wanted`` tags
    (``None``: every tag) are, and where the walk stopped.

    Returns ``{tag: (value start, value length, VR or None if implicit)}``
    and the position of the first element outside the range (or the end).
    ``None`` when it cannot tell (an undefined length, an item tag, an odd VR,
    a truncated element): the caller falls back on pydicom, which also reports
    the errors. ``sequences``: how many levels of sequences of undefined
    length to walk over instead (:func:`_skip_items`; such a value is
    reported with length ``0xFFFFFFFF``). One unpack per element header,
    nothing kept but the wanted: the probe of every file sent runs it twice.
    """
    end = len(buf)
    found: dict[int, tuple[int, int, str | None]] = {}
    if implicit:
        header = _IMPLICIT[little].unpack_from
        while pos < end:
            if end - pos < 8:
                return None
            group, elem, length = header(buf, pos)
            tag = (group << 16) | elem
            if tag > until or tag < since:
                return found, pos
            start = pos + 8
            if group == 0xFFFE:
                return None
            if length == 0xFFFFFFFF:
                after = _skip_items(buf, start, True, little, sequences - 1) if sequences else None
                if after is None:
                    return None
                if wanted is None or tag in wanted:
                    found[tag] = (start, length, None)
                pos = after
                continue
            if start + length > end:
                return None
            if wanted is None or tag in wanted:
                found[tag] = (start, length, None)
            pos = start + length
        return found, pos
    header = _EXPLICIT[little].unpack_from
    u32 = _HEADERS[little][2].unpack_from
    vr_codes = _VR_CODES
    while pos < end:
        if end - pos < 8:
            return None
        group, elem, code, length = header(buf, pos)
        tag = (group << 16) | elem
        if tag > until or tag < since:
            return found, pos
        if group == 0xFFFE:
            return None
        known = vr_codes.get(code)
        if known is None:
            # A VR this table does not know: pydicom reads it with a 2-byte
            # length, or as an implicit VR header, by rules of its own
            # (b"AA" <= code <= b"ZZ", and a setting). Let it.
            return None
        if known[1]:
            if end - pos < 12:
                return None
            length = u32(buf, pos + 8)[0]
            start = pos + 12
            if length == 0xFFFFFFFF:
                # A sequence (an SQ, or a UN holding Implicit VR LE, PS3.5 6.2.2).
                if not sequences or code not in (b"SQ", b"UN") or (code == b"UN" and not little):
                    return None
                after = _skip_items(buf, start, code == b"UN", little, sequences - 1)
                if after is None:
                    return None
                if wanted is None or tag in wanted:
                    found[tag] = (start, length, known[0])
                pos = after
                continue
        else:
            start = pos + 8
        if start + length > end:
            return None
        if wanted is None or tag in wanted:
            found[tag] = (start, length, known[0])
        pos = start + length
    return found, pos


def _skip_items(
    buf: bytes | bytearray | memoryview, pos: int, implicit: bool, little: bool, levels: int
) -> int | None:
    """Where a sequence of undefined length that starts at ``pos`` ends: just
    past its Sequence Delimitation Item. Items of defined length are stepped
    over; those of undefined length are walked by :func:`_scan` (with
    ``levels`` more levels of such sequences within) up to their Item
    Delimitation Item. ``None`` when it cannot tell (malformed, truncated,
    nested too deep)."""
    item = _IMPLICIT[little].unpack_from  # item tags have no VR in either encoding
    end = len(buf)
    while end - pos >= 8:
        group, elem, length = item(buf, pos)
        pos += 8
        if group != 0xFFFE:
            return None
        if elem == 0xE0DD:  # Sequence Delimitation Item
            return pos
        if elem != 0xE000:
            return None
        if length != 0xFFFFFFFF:
            pos += length
            continue
        # An item of undefined length: its elements, then an Item Delimitation Item.
        inner = _scan(
            buf,
            pos,
            implicit=implicit,
            little=little,
            until=0xFFFDFFFF,
            wanted=(),
            sequences=levels,
        )
        if inner is None:
            return None
        pos = inner[1]
        if end - pos < 8 or item(buf, pos)[:2] != (0xFFFE, 0xE00D):
            return None
        pos += 8
    return None


def _walk(
    buf: bytes | bytearray | memoryview,
    pos: int,
    *,
    implicit: bool,
    little: bool,
    until: int = 0xFFFFFFFF,
    since: int = 0,
) -> tuple[list[tuple[int, str | None, int, int]], int] | None:
    """Every element header :func:`_scan` walks: ``(tag, VR or None if implicit,
    value start, value length)`` and where it stopped (a tag met twice: its
    last value, at its first place)."""
    scanned = _scan(buf, pos, implicit=implicit, little=little, until=until, since=since)
    if scanned is None:
        return None
    found, stop = scanned
    return [(tag, vr, start, n) for tag, (start, n, vr) in found.items()], stop


#: What the probe reads: the meta's SOP Class and Instance and Transfer
#: Syntax UIDs, and the data set's SOP Class and Instance UIDs.
_META_WANTED = frozenset((0x00020002, 0x00020003, 0x00020010))
_HEAD_WANTED = frozenset((0x00080016, 0x00080018))


def _uid_at(
    buf: bytes | bytearray | memoryview, span: tuple[int, int, str | None] | None
) -> str | None:
    """The text of a UID value found by :func:`_scan` (``None`` if absent or empty)."""
    if span is None or not span[1]:
        return None
    start, length, _ = span
    return _uid_text(buf[start : start + length])


def _uid_text(raw: bytes | bytearray | memoryview) -> str | None:
    """The text of a UID value's bytes (``None`` if empty)."""
    # Latin-1, as pydicom decodes it: bytes outside ASCII (a broken file) read alike.
    text = str(raw, "latin-1").rstrip("\x00 ")
    if "\\" in text:
        raise _MultiValued  # more than one value: pydicom's path tells what is wrong
    return text or None


class _MultiValued(Exception):
    """A UID of more than one value, in a file to probe (the probe gives way to pydicom)."""


def _probe_fast(fp: BinaryIO) -> Part10Info | None:
    """The common case without pydicom: a Part 10 file whose meta and data set head are plain."""
    start = fp.tell()
    buf = fp.read(_PROBE_HEAD)
    return _probe_head(buf, base=start)


def _probe_head(buf: bytes | bytearray | memoryview, *, base: int = 0) -> Part10Info | None:
    """:func:`_probe_fast` on the head of a file (or all of it) read from ``base``."""
    try:
        return _walk_head(buf, base)
    except _MultiValued:
        return None


class _HeadLayout(NamedTuple):
    """The element headers of a file's head seen before, from its meta to
    the data set's SOP Instance UID, and the transfer syntax they were read in.

    Files of one source have the same head layout (their UIDs are the same
    lengths, their elements the same), so once a head is walked its layout
    is kept, and a head whose header bytes (and the tag after it) are the
    same is read in one unpack: equal headers mean equal element positions,
    so the values are where the walk would find them.
    """

    #: The head from byte 132: each header, and the value of each UID the
    #: probe reads, as bytes (other values skipped); the 4 tag bytes after.
    unpack: Callable[[bytes | bytearray | memoryview, int], tuple[bytes, ...]]
    #: Pick the headers out of what ``unpack`` gives, and the UIDs' values
    #: in the order of _HEAD_UIDS (an absent one: ``b""``).
    headers: Callable[[tuple[bytes, ...]], tuple[bytes, ...]]
    uids: Callable[[tuple[bytes, ...]], tuple[bytes, ...]]
    header_bytes: tuple[bytes, ...]
    #: The bytes ``unpack`` reads (the walk needs 8 after the last element).
    size: int
    #: The Transfer Syntax UID's value as it was, and as a UID.
    transfer_syntax_value: bytes
    transfer_syntax: UID
    #: Where the data set starts, from byte 0 of the head.
    meta_end: int


#: The UIDs a head layout reads: the meta's Transfer Syntax, SOP Class and
#: Instance UIDs, then the data set's SOP Class and Instance UIDs.
_HEAD_UIDS = (0x00020010, 0x00020002, 0x00020003, 0x00080016, 0x00080018)
#: The 12 bytes from 132 (the meta's group length element) -> head layouts.
_HEAD_LAYOUTS: dict[bytes, list[_HeadLayout]] = {}
_MAX_HEAD_LAYOUTS = 64
_head_layout_count = 0


def _head_by_layout(buf: bytes | bytearray | memoryview, base: int) -> Part10Info | None:
    """:func:`_walk_head` of a head of a known layout (``None``: not known)."""
    layouts = _HEAD_LAYOUTS.get(bytes(buf[132:144]))
    if layouts is None:
        return None
    end = len(buf)
    for layout in layouts:
        if layout.size > end:
            continue
        fields = layout.unpack(buf, 132)
        if layout.headers(fields) != layout.header_bytes:
            continue
        ts, meta_class, meta_instance, sop_class, sop_instance = layout.uids(fields)
        if ts != layout.transfer_syntax_value:
            continue  # another syntax (or its value padded otherwise): walk it
        # The data set's own UIDs, else the meta's (as the walk takes them).
        cls = _class_uid(sop_class) or _class_uid(meta_class)
        instance = _uid_text(sop_instance) or _uid_text(meta_instance)
        if cls is None or instance is None:
            return None
        meta_end = layout.meta_end
        if end - meta_end < 12 and _cut_long_header(buf, meta_end):
            return None
        return _new_info((cls, _new_uid(instance), layout.transfer_syntax, base + meta_end))
    return None


def _cut_long_header(buf: bytes | bytearray | memoryview, pos: int) -> bool:
    """True if ``buf`` ends inside the 4-byte length of an Explicit VR header at ``pos``.

    pydicom finds the end of the File Meta Information by reading the header
    of the element after it (as Explicit VR, whatever the data set's
    encoding), whole: cut short, the file is unreadable to it, so the probe
    must not answer either.
    """
    return 8 <= len(buf) - pos < 12 and bytes(buf[pos + 4 : pos + 6]) in _LONG_VRS


#: SOP Class UID values read by a head layout -> their UID (they repeat).
_CLASS_UIDS: dict[bytes, UID] = {}


def _class_uid(raw: bytes) -> UID | None:
    """The SOP Class UID of a value's bytes, as :func:`_walk_head` makes it."""
    uid = _CLASS_UIDS.get(raw)
    if uid is None:
        text = _uid_text(raw)
        uid = None if text is None else _known_uid(text)
        if uid is not None:
            if len(_CLASS_UIDS) >= 256:
                _CLASS_UIDS.clear()  # full: start over
            _CLASS_UIDS[raw] = uid
    return uid


def _learn_head(buf: bytes | bytearray | memoryview, ts: str, meta_end: int) -> None:
    """Keep the layout of a head :func:`_walk_head` read (meta and data set
    head Explicit VR Little Endian or Implicit VR Little Endian)."""
    global _head_layout_count
    if ts == DeflatedExplicitVRLittleEndian:
        return
    implicit, little = encoding_of(ts)
    if not little:
        return
    meta = _walk(buf, 132, implicit=False, little=True, since=0x00020000, until=0x0002FFFF)
    head = _walk(buf, meta_end, implicit=implicit, little=True, until=0x00080018)
    if meta is None or head is None or meta[1] != meta_end:
        return
    stop = head[1]
    if len(buf) - stop < 8:
        return  # the walk ended at the buffer's end, not at a later tag
    fmt = ["<"]
    header_at: list[int] = []
    uid_at = dict.fromkeys(_HEAD_UIDS, -1)
    pos = 132
    count = 0
    for tag, _, start, length in (*meta[0], *head[0]):
        if start - pos not in (8, 12):
            return  # a tag met twice: the walk's list is not the head's
        fmt.append(f"{start - pos}s")
        header_at.append(count)
        count += 1
        if tag in uid_at:
            fmt.append(f"{length}s")
            uid_at[tag] = count
            count += 1
        elif length:
            fmt.append(f"{length}x")
        pos = start + length
    if pos != stop:
        return
    fmt.append("4s4x")
    header_at.append(count)
    # A UID the head lacks reads as an empty field at the end ("0s": b"").
    fmt.append("0s")
    uids_at = [count + 1 if uid_at[t] < 0 else uid_at[t] for t in _HEAD_UIDS]
    unpack = struct.Struct("".join(fmt))
    fields = unpack.unpack_from(buf, 132)
    headers = operator.itemgetter(*header_at)
    pick = operator.itemgetter(*uids_at)
    layout = _HeadLayout(
        unpack.unpack_from, headers, pick, headers(fields), 132 + unpack.size,
        pick(fields)[0], _known_uid(ts), meta_end,
    )  # fmt: skip
    if _head_layout_count >= _MAX_HEAD_LAYOUTS:
        # Full: start over, so the layouts of the files sent now are learned.
        _HEAD_LAYOUTS.clear()
        _head_layout_count = 0
    _HEAD_LAYOUTS.setdefault(bytes(buf[132:144]), []).append(layout)
    _head_layout_count += 1


def _walk_head(buf: bytes | bytearray | memoryview, base: int) -> Part10Info | None:
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return None
    known = _head_by_layout(buf, base)
    if known is not None:
        return known
    # The meta is the group 0002 elements, as pydicom reads it: another group ends it.
    meta = _scan(
        buf, 132, implicit=False, little=True, since=0x00020000, until=0x0002FFFF,
        wanted=_META_WANTED,
    )  # fmt: skip
    if meta is None:
        return None
    spans, pos = meta
    ts = _uid_at(buf, spans.get(0x00020010))
    if ts is None or _cut_long_header(buf, pos):
        return None
    sop_class = sop_instance = None
    if ts != DeflatedExplicitVRLittleEndian:
        implicit, little = encoding_of(ts)
        head = _scan(
            buf, pos, implicit=implicit, little=little, until=0x00080018, wanted=_HEAD_WANTED
        )
        if head is None:
            return None  # a long or unusual head: let pydicom read it
        sop_class = _uid_at(buf, head[0].get(0x00080016))
        sop_instance = _uid_at(buf, head[0].get(0x00080018))
    # The data set's own UIDs, else the meta's.
    sop_class = sop_class or _uid_at(buf, spans.get(0x00020002))
    sop_instance = sop_instance or _uid_at(buf, spans.get(0x00020003))
    if not sop_class or not sop_instance:
        return None
    _learn_head(buf, ts, pos)
    return _new_info((_known_uid(sop_class), _new_uid(sop_instance), _known_uid(ts), base + pos))


def probe_buffer(buf: bytes | bytearray | memoryview) -> Part10Info:
    """:func:`probe_part10` of a whole file held in memory (CPU work only)."""
    info = _probe_head(buf)
    if info is not None:
        return info
    return _probe_with_pydicom(BytesIO(buf))


@functools.lru_cache(maxsize=256)
def _known_uid(text: str) -> UID:
    """A UID that repeats from file to file (SOP classes, transfer syntaxes): made once."""
    return UID(text)


def _new_uid(text: str) -> UID:
    """A UID read from a file, as is: pydicom's value check costs more than the rest
    of the probe, and what is sent is what the file holds either way.

    What ``UID(text, validation_mode=config.IGNORE)`` makes of a str, without
    its checks of the argument and the mode (a test keeps the two equal).
    """
    return _str_new(UID, text.strip())


_str_new = str.__new__
#: ``Part10Info`` from a tuple of its fields, without the named tuple's ``__new__``.
_new_info = functools.partial(tuple.__new__, Part10Info)


def probe_part10(fp: BinaryIO) -> Part10Info:
    """Read the File Meta Information of a DICOM file (or sniff a bare data set).

    ``fp`` is a binary file positioned at the start of the file; it is left
    at an unspecified position. Blocking: run it in a worker thread. The SOP
    Class and Instance UIDs are the data set's own, the meta's when the data
    set has none (or is deflated). A file without ``DICM`` is taken as a bare
    data set whose encoding pydicom detects. The common case is read with a
    small scanner of its own (a few microseconds); anything unusual goes
    through pydicom.
    """
    start = fp.tell()
    info = _probe_fast(fp)
    if info is not None:
        return info
    fp.seek(start)
    return _probe_with_pydicom(fp)


def _meta_end(meta: Dataset, position: int) -> int:
    """Where the data set starts: the end of the meta's last element, as
    pydicom's ``dcmread`` (and the fast probe) read it, whatever the group
    length says. ``position`` (the reader's) if the elements do not tell."""
    end = None
    for elem in meta._dict.values():
        if not isinstance(elem, RawDataElement) or elem.length == 0xFFFFFFFF:
            return position
        end = max(end or 0, elem.value_tell + elem.length)
    return position if end is None else end


def _probe_with_pydicom(fp: BinaryIO) -> Part10Info:
    start = fp.tell()
    head = fp.read(132)
    meta: Dataset | None = None
    offset = start
    if len(head) == 132 and head[128:132] == b"DICM":
        try:
            meta = read_dataset(fp, False, True, stop_when=_stop_after_meta)
        except Exception as exc:
            raise DIMSEError(f"unreadable File Meta Information: {exc}") from exc
        offset = _meta_end(meta, fp.tell())
    ts = None
    if meta is not None and "TransferSyntaxUID" in meta:
        ts = UID(str(meta.TransferSyntaxUID))
    sop_class: Any = None
    sop_instance: Any = None
    if ts is not None and ts != DeflatedExplicitVRLittleEndian:
        # The data set's own UIDs are what the command must name; they come
        # first in it, so only its head is read.
        implicit, little = encoding_of(ts)
        fp.seek(offset)
        try:
            head_ds = read_dataset(fp, implicit, little, stop_when=_stop_after_sop_uids)
            sop_class = head_ds.get("SOPClassUID")
            sop_instance = head_ds.get("SOPInstanceUID")
        except Exception:  # the meta's values below will do
            LOGGER.debug("could not read the head of the data set", exc_info=True)
    if meta is not None:
        sop_class = sop_class or meta.get("MediaStorageSOPClassUID")
        sop_instance = sop_instance or meta.get("MediaStorageSOPInstanceUID")
    if ts is None or not sop_class or not sop_instance:
        fp.seek(offset)
        try:
            ds = dcmread(
                fp,
                force=True,
                stop_before_pixels=True,
                specific_tags=[BaseTag(0x00080016), BaseTag(0x00080018)],
            )
        except Exception as exc:
            raise DIMSEError(f"not a DICOM file: {exc}") from exc
        if ts is None:
            found = ds.original_encoding
            ts = _TS_FOR_ENCODING.get((bool(found[0]), bool(found[1])), ImplicitVRLittleEndian)
        sop_class = sop_class or ds.get("SOPClassUID")
        sop_instance = sop_instance or ds.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        raise DIMSEError("the file has no SOP Class UID or SOP Instance UID")
    if not isinstance(sop_class, str) or not isinstance(sop_instance, str):
        raise DIMSEError("the file's SOP Class UID or SOP Instance UID has more than one value")
    return Part10Info(UID(sop_class), UID(sop_instance), ts, offset)
