"""DIMSE messages: command set codec, fragmentation and reassembly (PS3.7, PS3.8 Annex E).

Sans-IO. The command set (group 0000) is always Implicit VR Little Endian with
the Command Group Length first (PS3.7 6.3.1). It is small and fixed, so it is
encoded and decoded here directly from a table of its elements rather than
through pydicom, which keeps the per-message cost to a few microseconds.

:class:`Message` is a decoded command plus its context ID and data set bytes.
:func:`fragment` turns a message into P-DATA-TF PDUs no larger than the peer's
maximum; :class:`Reassembler` turns received PDVs back into messages, checking
the fragment order and the presentation context (PS3.8 E.2) and raising
:class:`~aiodicom.errors.PDUError` on a violation so the caller aborts.
"""

from __future__ import annotations

import copy
import functools
import operator
import struct
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Final

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from .errors import DIMSEError, PDUError
from .pdu import P_DATA_HEADER_SIZE, PDV, pack_p_data_header

__all__ = (
    "COMMAND_ELEMENTS",
    "NO_DATASET",
    "CommandField",
    "Message",
    "Reassembler",
    "command_dataset",
    "data_chunk_size",
    "data_fragments",
    "decode_command",
    "encode_command",
    "file_fragments",
    "fragment",
    "single_pdu",
)

#: CommandDataSetType value meaning "no data set follows" (PS3.7 E.1).
NO_DATASET: Final = 0x0101
#: The value we send when a data set follows (any other value means present).
DATASET_PRESENT: Final = 0x0001
#: PDV payload size used when the peer announced no maximum (0).
UNLIMITED_CHUNK: Final = 1 << 20


class CommandField:
    """Command Field (0000,0100) values, PS3.7 E.1."""

    C_STORE_RQ: Final = 0x0001
    C_STORE_RSP: Final = 0x8001
    C_GET_RQ: Final = 0x0010
    C_GET_RSP: Final = 0x8010
    C_FIND_RQ: Final = 0x0020
    C_FIND_RSP: Final = 0x8020
    C_MOVE_RQ: Final = 0x0021
    C_MOVE_RSP: Final = 0x8021
    C_ECHO_RQ: Final = 0x0030
    C_ECHO_RSP: Final = 0x8030
    N_EVENT_REPORT_RQ: Final = 0x0100
    N_EVENT_REPORT_RSP: Final = 0x8100
    N_GET_RQ: Final = 0x0110
    N_GET_RSP: Final = 0x8110
    N_SET_RQ: Final = 0x0120
    N_SET_RSP: Final = 0x8120
    N_ACTION_RQ: Final = 0x0130
    N_ACTION_RSP: Final = 0x8130
    N_CREATE_RQ: Final = 0x0140
    N_CREATE_RSP: Final = 0x8140
    N_DELETE_RQ: Final = 0x0150
    N_DELETE_RSP: Final = 0x8150
    C_CANCEL_RQ: Final = 0x0FFF


COMMAND_NAMES: Final[Mapping[int, str]] = {
    v: k.replace("_RQ", "-RQ").replace("_RSP", "-RSP").replace("_", "-")
    for k, v in vars(CommandField).items()
    if k.isupper()
}

# (element number in group 0000) -> (keyword, VR), PS3.7 Annex E table E.1-1.
COMMAND_ELEMENTS: Final[Mapping[int, tuple[str, str]]] = {
    0x0000: ("CommandGroupLength", "UL"),
    0x0002: ("AffectedSOPClassUID", "UI"),
    0x0003: ("RequestedSOPClassUID", "UI"),
    0x0100: ("CommandField", "US"),
    0x0110: ("MessageID", "US"),
    0x0120: ("MessageIDBeingRespondedTo", "US"),
    0x0600: ("MoveDestination", "AE"),
    0x0700: ("Priority", "US"),
    0x0800: ("CommandDataSetType", "US"),
    0x0900: ("Status", "US"),
    0x0901: ("OffendingElement", "AT"),
    0x0902: ("ErrorComment", "LO"),
    0x0903: ("ErrorID", "US"),
    0x1000: ("AffectedSOPInstanceUID", "UI"),
    0x1001: ("RequestedSOPInstanceUID", "UI"),
    0x1002: ("EventTypeID", "US"),
    0x1005: ("AttributeIdentifierList", "AT"),
    0x1008: ("ActionTypeID", "US"),
    0x1020: ("NumberOfRemainingSuboperations", "US"),
    0x1021: ("NumberOfCompletedSuboperations", "US"),
    0x1022: ("NumberOfFailedSuboperations", "US"),
    0x1023: ("NumberOfWarningSuboperations", "US"),
    0x1030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x1031: ("MoveOriginatorMessageID", "US"),
}
_BY_KEYWORD: Final = {kw: (elem, vr) for elem, (kw, vr) in COMMAND_ELEMENTS.items()}

_ELEM_HEADER = struct.Struct("<HHL")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
_US_ELEMENT = struct.Struct("<HHLH")
_GROUP_LENGTH_HEADER = b"\x00\x00\x00\x00\x04\x00\x00\x00"
# keyword -> (element, VR, encoder of the whole element); the hot path is US
_ENCODERS: Final[dict[str, tuple[int, str]]] = dict(_BY_KEYWORD)


_AT_VALUE: Final = struct.Struct("<HH")


def _encode_value(vr: str, value: Any) -> bytes:
    if vr == "US":
        number = int(value)
        if not 0 <= number <= 0xFFFF:
            raise DIMSEError(f"US value {value!r} is out of range 0-65535")
        return _U16.pack(number)
    if vr == "UL":
        return _U32.pack(int(value))
    if vr == "AT":
        tags = [value] if isinstance(value, int | str) else value
        out = []
        for t in tags:
            # A tag as an int (BaseTag is one) needs no pydicom Tag() call;
            # compared as a plain int (BaseTag's comparisons are Python code).
            number = int(t) if type(t) is int or type(t) is BaseTag else -1
            tag = number if 0 <= number <= 0xFFFFFFFF else int(Tag(t))
            out.append(_AT_VALUE.pack(tag >> 16, tag & 0xFFFF))
        return b"".join(out)
    return _encode_text(vr, str(value))


@functools.lru_cache(maxsize=1024)
def _encode_text(vr: str, value: str) -> bytes:
    """UI/AE/LO/... values, padded to even length (UIDs repeat: cached)."""
    raw = value.encode("ascii") if vr in ("UI", "AE") else value.encode("latin-1")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


@functools.lru_cache(maxsize=256)
def _uid_element(elem: int, value: str) -> bytes:
    raw = _encode_text("UI", value)
    return _ELEM_HEADER.pack(0, elem, len(raw)) + raw


def encode_command(fields: Mapping[str, Any]) -> bytes:
    """Encode a command set given as ``{keyword: value}`` (``None`` values skipped).

    Elements are written in tag order after a computed Command Group Length.
    """
    parts: list[tuple[int, bytes]] = []
    for keyword, value in fields.items():
        if value is None or keyword == "CommandGroupLength":
            continue
        try:
            elem, vr = _ENCODERS[keyword]
        except KeyError:
            raise DIMSEError(f"{keyword!r} is not a command set element") from None
        if vr == "US" and type(value) is int and 0 <= value <= 0xFFFF:
            parts.append((elem, _US_ELEMENT.pack(0, elem, 2, value)))
            continue
        if vr == "UI" and elem <= 0x0003 and isinstance(value, str):
            # Affected/Requested SOP Class UID: they repeat, encoded once.
            parts.append((elem, _uid_element(elem, value)))
            continue
        raw = _encode_value(vr, value)
        parts.append((elem, _ELEM_HEADER.pack(0, elem, len(raw)) + raw))
    parts.sort()
    return _command_set([p for _, p in parts])


def _command_set(elements: Iterable[bytes]) -> bytes:
    """Encoded elements (in tag order) behind the Command Group Length they make."""
    body = b"".join(elements)
    return _GROUP_LENGTH_HEADER + _U32.pack(len(body)) + body


def _uid_value(uid: str) -> bytes:
    """A UID's value padded to even length, uncached (for instance UIDs: each is new)."""
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_status_response(
    command_field: int,
    message_id: int,
    sop_class: str,
    status: int,
    sop_instance: str | None = None,
    *,
    has_dataset: bool = False,
    type_id: int | None = None,
) -> bytes:
    """The command set of a response that carries only a Status, fast.

    Byte for byte what :func:`encode_command` makes of ``CommandField``,
    ``MessageIDBeingRespondedTo``, ``AffectedSOPClassUID``,
    ``CommandDataSetType`` (no data set, or one with ``has_dataset``),
    ``Status`` and, if given, ``AffectedSOPInstanceUID`` and the Event Type
    ID (N-EVENT-REPORT-RSP) or Action Type ID (N-ACTION-RSP) ``type_id``:
    the answer to every C-ECHO and C-STORE, and to most N requests.
    """
    body = _response_head(command_field, sop_class) + _RESPONSE_MIDDLE.pack(
        _MID_HEADER,
        message_id,
        _DATASET_STATUS_HEADER if has_dataset else _NO_DATASET_STATUS_HEADER,
        status,
    )
    if sop_instance is not None:
        raw = _uid_value(sop_instance)
        body += _ELEM_HEADER.pack(0, 0x1000, len(raw)) + raw
    if type_id is not None:
        element = 0x1002 if command_field == CommandField.N_EVENT_REPORT_RSP else 0x1008
        body += _US_ELEMENT.pack(0, element, 2, type_id)
    return _GROUP_LENGTH_HEADER + _U32.pack(len(body)) + body


@functools.lru_cache(maxsize=256)
def _response_head(command_field: int, sop_class: str) -> bytes:
    """The Affected SOP Class UID and Command Field elements of a response (they repeat)."""
    return _uid_element(0x0002, sop_class) + _US_ELEMENT.pack(0, 0x0100, 2, command_field)


#: What follows them in a status response: the Message ID Being Responded
#: To, Command Data Set Type (none) and Status, the constant parts as bytes.
_RESPONSE_MIDDLE: Final = struct.Struct("<8sH18sH")
_MID_HEADER: Final = _ELEM_HEADER.pack(0, 0x0120, 2)
_NO_DATASET_STATUS_HEADER: Final = _US_ELEMENT.pack(0, 0x0800, 2, NO_DATASET) + _ELEM_HEADER.pack(
    0, 0x0900, 2
)
_DATASET_STATUS_HEADER: Final = _US_ELEMENT.pack(0, 0x0800, 2, DATASET_PRESENT) + _ELEM_HEADER.pack(
    0, 0x0900, 2
)


def encode_echo_request(message_id: int, sop_class: str) -> bytes:
    """The command set of a C-ECHO-RQ, fast.

    Byte for byte what :func:`encode_command` makes of ``CommandField``
    (C-ECHO-RQ), ``MessageID``, ``AffectedSOPClassUID`` and
    ``CommandDataSetType`` (no data set).
    """
    return _command_set(
        (
            _uid_element(0x0002, sop_class),
            _ECHO_RQ_FIELD,
            _US_ELEMENT.pack(0, 0x0110, 2, message_id),
            _NO_DATASET_ELEMENT,
        )
    )


def encode_store_request(
    message_id: int,
    sop_class: str,
    sop_instance: str,
    priority: int,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> bytes:
    """The command set of a C-STORE-RQ, fast.

    Byte for byte what :func:`encode_command` makes of ``CommandField``
    (C-STORE-RQ), ``MessageID``, ``AffectedSOPClassUID``, ``Priority``,
    ``CommandDataSetType`` (a data set follows), ``AffectedSOPInstanceUID``
    and, unless None, ``MoveOriginatorApplicationEntityTitle`` and
    ``MoveOriginatorMessageID`` (a C-MOVE sub-operation's; the caller checks
    that the ID is a US). The instance UID is not cached (each is new).
    """
    instance = _uid_value(sop_instance)
    elements = [
        _uid_element(0x0002, sop_class),
        _STORE_RQ_FIELD,
        _US_ELEMENT.pack(0, 0x0110, 2, message_id),
        _US_ELEMENT.pack(0, 0x0700, 2, priority),
        _DATASET_PRESENT_ELEMENT,
        _ELEM_HEADER.pack(0, 0x1000, len(instance)),
        instance,
    ]
    if originator_aet is not None:
        raw = _encode_text("AE", originator_aet)
        elements += (_ELEM_HEADER.pack(0, 0x1030, len(raw)), raw)
    if originator_id is not None:
        elements.append(_US_ELEMENT.pack(0, 0x1031, 2, originator_id))
    return _command_set(elements)


def pending_counts_head(fields: Mapping[str, Any]) -> bytes:
    """What :func:`encode_pending_counts` puts before the counts: ``fields``
    (a pending C-GET/C-MOVE response's others, Status included) encoded as
    :func:`encode_command` encodes them, without the Command Group Length.
    Each must come before the counts, (0000,1020)-(0000,1023), in tag order."""
    return encode_command(fields)[len(_GROUP_LENGTH_HEADER) + _U32.size :]


def encode_pending_counts(
    head: bytes, remaining: int, completed: int, failed: int, warning: int
) -> bytes:
    """A pending C-GET/C-MOVE response's command set, fast.

    ``head`` is :func:`pending_counts_head` of its other fields; the four
    counts (0000,1020)-(0000,1023) follow it. Byte for byte what
    :func:`encode_command` makes of all the fields together.
    """
    body = head + _COUNTS.pack(
        _REMAINING_HEADER,
        remaining,
        _COMPLETED_HEADER,
        completed,
        _FAILED_HEADER,
        failed,
        _WARNING_HEADER,
        warning,
    )
    return _GROUP_LENGTH_HEADER + _U32.pack(len(body)) + body


_COUNTS: Final = struct.Struct("<8sH8sH8sH8sH")
_REMAINING_HEADER: Final = _ELEM_HEADER.pack(0, 0x1020, 2)
_COMPLETED_HEADER: Final = _ELEM_HEADER.pack(0, 0x1021, 2)
_FAILED_HEADER: Final = _ELEM_HEADER.pack(0, 0x1022, 2)
_WARNING_HEADER: Final = _ELEM_HEADER.pack(0, 0x1023, 2)


#: Elements the fast encoders above use whole.
_ECHO_RQ_FIELD: Final = _US_ELEMENT.pack(0, 0x0100, 2, 0x0030)
_STORE_RQ_FIELD: Final = _US_ELEMENT.pack(0, 0x0100, 2, 0x0001)
_NO_DATASET_ELEMENT: Final = _US_ELEMENT.pack(0, 0x0800, 2, NO_DATASET)
_DATASET_PRESENT_ELEMENT: Final = _US_ELEMENT.pack(0, 0x0800, 2, DATASET_PRESENT)


def _decode_value(vr: str, raw: bytes | memoryview) -> Any:
    if vr == "US":
        # Every US element of a command set has VM 1 (PS3.7 Table E.1-1).
        if len(raw) != 2:
            raise DIMSEError(f"US command element of length {len(raw)}, expected 2")
        return _U16.unpack(raw)[0]
    if vr == "UL":
        if len(raw) != 4:
            raise DIMSEError(f"UL value of length {len(raw)}")
        return _U32.unpack(raw)[0]
    if vr == "AT":
        if len(raw) % 4:
            raise DIMSEError(f"AT value of length {len(raw)}")
        return [BaseTag((g << 16) | e) for g, e in struct.iter_unpack("<HH", raw)]
    text = bytes(raw).decode("latin-1")
    return text.rstrip("\x00 ") if vr != "LO" else text.rstrip(" \x00")


_DECODED_UIDS: dict[bytes, str] = {}

#: How decode_command reads each element: (keyword, kind) with kind 0 for a
#: US, 1 for a UL, 2 for the UIDs that repeat from message to message (the
#: Affected/Requested SOP Class UID, decoded once), 3 for anything else.
_US, _UL, _REPEATED_UID, _OTHER = 0, 1, 2, 3
_DECODING: Final[dict[int, tuple[str, int]]] = {
    elem: (
        kw,
        _US if vr == "US" else _UL if vr == "UL" else _REPEATED_UID if elem <= 0x0003 else _OTHER,
    )
    for elem, (kw, vr) in COMMAND_ELEMENTS.items()
}


def _element_error(data: bytes | bytearray | memoryview, pos: int, end: int) -> DIMSEError:
    """What is wrong with the element header at ``pos`` (decode_command's slow path)."""
    if end - pos < 8:
        return DIMSEError("command set: truncated element header")
    group, elem, _ = _ELEM_HEADER.unpack_from(data, pos)
    if group != 0:
        return DIMSEError(f"command set holds an element of group 0x{group:04X}")
    return DIMSEError(f"command set: element (0000,{elem:04X}) overruns the set")


@dataclass(frozen=True, slots=True)
class _Layout:
    """The layout of one command set seen before: its element headers, in order.

    A peer sends the same kind of command with the same elements and lengths
    message after message (only values differ), so once a set is decoded its
    layout is kept, and a set of the same length whose headers are the same
    bytes is read in one ``struct`` unpack. Equal headers and total length
    mean equal element positions, so the result is what the element walk
    gives. Only sets the walk reads without a special case have a layout:
    every element known, a US of 2 bytes, a UL of 4, an AT a multiple of 4.
    """

    #: 8-byte header, value, 8-byte header, value...: US and UL values as
    #: ints, the others as bytes.
    decode: Callable[[bytes | bytearray | memoryview], tuple[Any, ...]]
    #: The same with every value as bytes (for :func:`command_dataset`).
    raw: Callable[[bytes | bytearray | memoryview], tuple[Any, ...]]
    headers: tuple[bytes, ...]
    keys: tuple[str, ...]
    #: The values unpacked as bytes, to convert: (keyword, True for a UID that
    #: repeats (decoded once, cached), False for other text, None for an AT).
    texts: tuple[tuple[str, bool | None], ...]
    #: For command_dataset, of the elements but the Command Group Length: a
    #: function picking their values out of what ``raw`` unpacks, their
    #: tags, lengths and value offsets, and where the (last) Status is among
    #: them (-1: none).
    pick: Callable[[tuple[Any, ...]], tuple[bytes, ...]]
    tags: tuple[BaseTag, ...]
    lengths: tuple[int, ...]
    tells: tuple[int, ...]
    status: int


#: Command set length -> the layouts of that length seen; at most
#: _MAX_LAYOUTS in all (when full, the cache starts over).
_LAYOUTS: dict[int, list[_Layout]] = {}
_MAX_LAYOUTS: Final = 128
_layout_count = 0


def _find_layout(
    data: bytes | bytearray | memoryview, *, raw: bool = False
) -> tuple[_Layout, tuple[Any, ...]] | None:
    """The known layout ``data`` has, with ``data`` unpacked by it (``raw``:
    every value as bytes)."""
    layouts = _LAYOUTS.get(len(data))
    if layouts is not None:
        for layout in layouts:
            fields = layout.raw(data) if raw else layout.decode(data)
            if fields[0::2] == layout.headers:
                return layout, fields
    return None


def _repeated_uid(raw: bytes) -> str:
    """A UID value that repeats from message to message (a SOP Class UID), decoded once."""
    text = _DECODED_UIDS.get(raw)
    if text is None:
        text = raw.decode("latin-1").rstrip("\x00 ")
        if len(_DECODED_UIDS) >= 1024:
            _DECODED_UIDS.clear()  # full: start over (bounded, never stale)
        _DECODED_UIDS[raw] = text
    return text


def _learn_layout(data: bytes | bytearray | memoryview) -> None:
    """Keep the layout of a command set :func:`decode_command` walked without error."""
    global _layout_count
    decode_fmt, raw_fmt = ["<"], ["<"]
    headers: list[bytes] = []
    keys: list[str] = []
    texts: list[tuple[str, bool | None]] = []
    # For command_dataset, of every element but the Command Group Length:
    # where its value is in what ``raw`` unpacks, its tag, length, offset.
    values: list[int] = []
    tags: list[BaseTag] = []
    lengths: list[int] = []
    tells: list[int] = []
    pos, end = 0, len(data)
    while pos < end:
        _, elem, length = _ELEM_HEADER.unpack_from(data, pos)
        known = COMMAND_ELEMENTS.get(elem)
        if known is None:
            return
        keyword, vr = known
        if vr == "US":
            if length != 2:
                return
            decode_fmt.append("8sH")
        elif vr == "UL":
            if length != 4:
                return
            decode_fmt.append("8sL")
        else:
            if vr == "AT" and length % 4:
                return
            decode_fmt.append(f"8s{length}s")
            repeats = None if vr == "AT" else _DECODING[elem][1] == _REPEATED_UID
            text = (keyword, repeats)
            if text not in texts:  # an element met twice: its last value, once
                texts.append(text)
        raw_fmt.append(f"8s{length}s")
        if elem:  # not the Command Group Length
            values.append(2 * len(keys) + 1)
            tags.append(_GROUP_0000_TAGS[elem])
            lengths.append(length)
            tells.append(pos + 8)
        headers.append(bytes(data[pos : pos + 8]))
        keys.append(keyword)
        pos += 8 + length
    if not values:
        return
    pick = operator.itemgetter(*values) if len(values) > 1 else lambda f: (f[values[0]],)
    layout = _Layout(
        struct.Struct("".join(decode_fmt)).unpack_from,
        struct.Struct("".join(raw_fmt)).unpack_from,
        tuple(headers), tuple(keys), tuple(texts), pick,
        tuple(tags), tuple(lengths), tuple(tells),
        max((i for i, tag in enumerate(tags) if tag == _STATUS_TAG), default=-1),
    )  # fmt: skip
    if _layout_count >= _MAX_LAYOUTS:
        # Full: start over, so the layouts in use now are learned again (a
        # peer sending ever new layouts cannot keep the others out for good).
        _LAYOUTS.clear()
        _layout_count = 0
    _LAYOUTS.setdefault(end, []).append(layout)
    _layout_count += 1


def decode_command(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode an Implicit VR Little Endian command set to ``{keyword: value}``.

    Raises :class:`DIMSEError` if it is not a well-formed group 0000 set;
    unknown group 0000 elements (retired ones) are skipped.
    """
    return _decode_command(data)[0]


def _decode_command(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], _Layout | None]:
    """:func:`decode_command`, with the layout it was read by (None: walked)."""
    found = _find_layout(data)
    if found is not None:
        layout, fields = found
        out = dict(zip(layout.keys, fields[1::2], strict=True))
        for key, repeats in layout.texts:
            raw: bytes = out[key]
            if repeats:
                out[key] = _repeated_uid(raw)
            elif repeats is None:  # tags (AT)
                out[key] = _decode_value("AT", raw)
            else:
                out[key] = raw.decode("latin-1").rstrip("\x00 ")
        return out, layout
    out = _walk_command(data)
    _learn_layout(data)
    return out, None


def _walk_command(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """:func:`decode_command` element by element."""
    out: dict[str, Any] = {}
    pos, end = 0, len(data)
    unpack_header = _ELEM_HEADER.unpack_from
    decoding = _DECODING
    bytes_in = type(data) is bytes  # a slice is bytes: hashable, for _repeated_uid
    while pos < end:
        try:
            group, elem, length = unpack_header(data, pos)
        except struct.error:
            raise _element_error(data, pos, end) from None
        start = pos + 8
        pos = start + length
        if group or pos > end:
            raise _element_error(data, start - 8, end)
        spec = decoding.get(elem)
        if spec is None:
            continue
        key, kind = spec
        if kind == _US and length == 2:
            out[key] = data[start] | (data[start + 1] << 8)
        elif kind == _REPEATED_UID and bytes_in:
            out[key] = _repeated_uid(data[start:pos])  # type: ignore[arg-type]  # bytes
        elif kind == _UL and length == 4:
            out[key] = int.from_bytes(data[start:pos], "little")
        else:
            out[key] = _decode_value(COMMAND_ELEMENTS[elem][1], memoryview(data)[start:pos])
    if "CommandField" not in out:
        raise DIMSEError("command set has no Command Field (0000,0100)")
    return out


def _dataset_factory() -> Callable[[dict[BaseTag, DataElement | RawDataElement]], Dataset]:
    """A fast way to make a Dataset around ready elements.

    ``Dataset.__init__`` sets a dozen attributes through pydicom's checked
    ``__setattr__``; for the response of every DIMSE operation that is most of
    the cost of the status. A template's instance dictionary is copied instead
    (fresh containers for its mutable values). If pydicom's Dataset does not
    look as expected, the plain constructor is used.
    """
    template = Dataset()
    state = dict(template.__dict__)
    if "_dict" not in state or not isinstance(state["_dict"], dict):
        return Dataset
    # The keys of the mutable values, and callables returning fresh copies.
    keys = [k for k, v in state.items() if isinstance(v, dict | list | set) and k != "_dict"]
    fresh = [
        state[k].copy
        if type(state[k]) in (dict, list, set)
        else functools.partial(copy.copy, state[k])
        for k in keys
    ]
    new = object.__new__
    call = operator.call

    def make(elements: dict[BaseTag, DataElement | RawDataElement]) -> Dataset:
        ds: Dataset = new(Dataset)
        d = ds.__dict__
        d.update(state)
        d.update(zip(keys, map(call, fresh), strict=True))
        d["_dict"] = elements
        return ds

    return make


_new_dataset = _dataset_factory()


def _us_element_factory() -> Callable[[BaseTag, int], DataElement]:
    """A fast way to make a US DataElement (the Status of every response).

    ``DataElement.__init__`` validates and converts its value; for a US
    value from a command set that is known to be an int in range, a
    template's instance dictionary is copied instead. If pydicom's
    DataElement does not look as expected, the constructor is used.
    """
    try:
        template = DataElement(BaseTag(0x00000900), "US", 0)
        state = dict(template.__dict__)
    except (AttributeError, TypeError):  # pragma: no cover - a DataElement with slots
        state = {}
    new = object.__new__

    def make(tag: BaseTag, value: int) -> DataElement:
        elem: DataElement = new(DataElement)
        d = elem.__dict__
        d.update(state)
        d["tag"] = tag
        d["_value"] = value
        return elem

    if state.get("_value") == 0 and state.get("VR") == "US":
        probe = make(BaseTag(0x00000900), 0xB000)
        if probe == DataElement(BaseTag(0x00000900), "US", 0xB000):
            return make
    return lambda tag, value: DataElement(tag, "US", value)  # pragma: no cover


_new_us_element = _us_element_factory()


def _raw_element_factory() -> Callable[[tuple[Any, ...]], RawDataElement]:
    """``RawDataElement`` from a tuple of its fields, fast.

    It is a named tuple: ``tuple.__new__`` skips its Python-level ``__new__``.
    If pydicom's RawDataElement is not one of 9 fields, its constructor is used.
    """
    if issubclass(RawDataElement, tuple) and len(getattr(RawDataElement, "_fields", ())) == 9:
        return functools.partial(tuple.__new__, RawDataElement)
    return lambda fields: RawDataElement(*fields)  # pragma: no cover


_new_raw_element = _raw_element_factory()


#: The tags of the command set elements (tags are immutable: shared).
_GROUP_0000_TAGS: Final = {elem: BaseTag(elem) for elem in COMMAND_ELEMENTS}


def command_dataset(raw: bytes, layout: _Layout | None = None) -> Dataset:
    """An encoded command set as a pydicom Dataset, as pynetdicom returns it.

    The elements are left raw (pydicom converts each on first access), so a
    caller that reads only ``.Status`` pays for one element. The Command Group
    Length is dropped. ``layout``: :attr:`Message.layout` of the message
    ``raw`` is the command set of, if it has one.
    """
    if layout is not None:
        return _layout_dataset(layout, layout.pick(layout.raw(raw)))
    found = _find_layout(raw, raw=True)
    if found is not None:
        return _layout_dataset(found[0], found[0].pick(found[1]))
    return _walk_dataset(raw)


def _walk_dataset(raw: bytes) -> Dataset:
    """:func:`command_dataset` element by element."""
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    pos, end = 0, len(raw)
    unpack_header = _ELEM_HEADER.unpack_from
    tags = _GROUP_0000_TAGS
    new_raw = _new_raw_element
    while pos + 8 <= end:
        group, elem, length = unpack_header(raw, pos)
        pos += 8
        if elem == 0x0900 and length == 2:
            # Nearly every caller reads .Status: convert it now, cheaply.
            tag = tags[0x0900]
            elements[tag] = _new_us_element(tag, raw[pos] | (raw[pos + 1] << 8))
        elif elem:
            tag = tags[elem] if group == 0 and elem in tags else BaseTag((group << 16) | elem)
            elements[tag] = new_raw(
                (tag, None, length, raw[pos : pos + length], pos, True, True, True, False)
            )
        pos += length
    return _new_dataset(elements)


_STATUS_TAG: Final = _GROUP_0000_TAGS[0x0900]


#: Endless: shared by every call of _layout_dataset (zip takes what it needs).
_NONES, _TRUES, _FALSES = repeat(None), repeat(True), repeat(False)


def _layout_dataset(layout: _Layout, values: tuple[bytes, ...]) -> Dataset:
    """:func:`command_dataset` of a set of a known layout, from the values
    ``layout.pick`` picked."""
    true = _TRUES
    elements: dict[BaseTag, DataElement | RawDataElement] = dict(
        zip(
            layout.tags,
            map(
                _new_raw_element,
                zip(layout.tags, _NONES, layout.lengths, values, layout.tells,
                    true, true, true, _FALSES, strict=False),
            ),
            strict=True,
        )
    )  # fmt: skip
    if layout.status >= 0:
        # Nearly every caller reads .Status: convert it now, cheaply (a
        # layout's US is 2 bytes long).
        value = values[layout.status]
        elements[_STATUS_TAG] = _new_us_element(_STATUS_TAG, value[0] | (value[1] << 8))
    return _new_dataset(elements)


@dataclass(slots=True)
class Message:
    """A DIMSE message: its command set, context and (encoded) data set."""

    context_id: int
    command: dict[str, Any]
    data: bytes | None = None
    raw_command: bytes = b""
    #: True when the data set was spilled to the caller (see :class:`Reassembler`).
    spooled: bool = False
    #: The data set's length in bytes (also when spooled).
    data_size: int = field(default=0, compare=False)
    #: Where the shell put a spooled data set (opaque here).
    spool: Any = field(default=None, compare=False)
    #: The layout ``raw_command`` was decoded by, if any (for :func:`command_dataset`).
    layout: _Layout | None = field(default=None, compare=False, repr=False)

    @property
    def command_field(self) -> int:
        """The Command Field (0000,0100)."""
        return int(self.command["CommandField"])

    @property
    def name(self) -> str:
        """E.g. ``'C-ECHO-RQ'``."""
        return COMMAND_NAMES.get(self.command_field, f"0x{self.command_field:04X}")

    @property
    def is_response(self) -> bool:
        """True for a response (bit 15 of the command field set)."""
        return bool(self.command_field & 0x8000)

    @property
    def message_id(self) -> int | None:
        """MessageID for a request, MessageIDBeingRespondedTo for a response."""
        key = "MessageIDBeingRespondedTo" if self.is_response else "MessageID"
        value = self.command.get(key)
        return None if value is None else int(value)

    @property
    def has_dataset(self) -> bool:
        """True if the command says a data set follows."""
        return int(self.command.get("CommandDataSetType", NO_DATASET)) != NO_DATASET


def fragment(
    context_id: int,
    command: bytes,
    dataset: bytes | memoryview | None,
    max_pdu: int,
) -> Iterator[bytes]:
    """Encode a message as P-DATA-TF PDUs, each no larger than ``max_pdu``.

    ``max_pdu`` is the peer's maximum PDU length (the P-DATA-TF length field
    value, PS3.8 D.1); 0 means no limit. A small message goes out in a single
    PDU holding the command PDV and the data set PDV. Data set chunks are
    memoryview slices: the data set is copied once, into the PDU. A maximum
    too small to carry any data raises ValueError at once.
    """
    if max_pdu and max_pdu - 6 < 1:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
    return _fragments(context_id, command, dataset, max_pdu)


def _fragments(
    context_id: int,
    command: bytes,
    dataset: bytes | memoryview | None,
    max_pdu: int,
) -> Iterator[bytes]:
    """The generator behind :func:`fragment`."""
    if _fits_one_pdu(command, dataset, max_pdu):
        assert dataset is not None
        yield single_pdu(context_id, command, dataset)
        return
    for header, piece in _message_pieces(context_id, command, dataset, data_chunk_size(max_pdu)):
        yield header + piece


def fragment_parts(
    context_id: int, command: bytes, dataset: bytes | memoryview | None, max_pdu: int
) -> tuple[list[bytes | memoryview], list[int]]:
    """:func:`fragment`'s PDUs as pieces to join once: each PDU's 12 header
    bytes, then its fragment (a memoryview slice of ``command`` or
    ``dataset``, not a copy); and the offset in the joined bytes where each
    PDU ends. ``b"".join`` of the pieces is ``b"".join(fragment(...))``, with
    the data set copied once; like :func:`fragment`, a maximum too small to
    carry any data raises ValueError.
    """
    chunk = data_chunk_size(max_pdu)
    if chunk < 1:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
    if _fits_one_pdu(command, dataset, max_pdu):
        assert dataset is not None
        whole = single_pdu(context_id, command, dataset)
        return [whole], [len(whole)]
    parts: list[bytes | memoryview] = []
    ends: list[int] = []
    end = 0
    for header, piece in _message_pieces(context_id, command, dataset, chunk):
        parts += (header, piece)
        end += len(header) + len(piece)
        ends.append(end)
    return parts, ends


def _fits_one_pdu(command: bytes, dataset: bytes | memoryview | None, max_pdu: int) -> bool:
    """True if the message goes in one P-DATA-TF holding both PDVs (:func:`single_pdu`)."""
    return dataset is not None and len(command) + len(dataset) + 12 <= (max_pdu or UNLIMITED_CHUNK)


def _message_pieces(
    context_id: int, command: bytes, dataset: bytes | memoryview | None, chunk: int
) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """The PDUs of a message in one PDV each: the command's fragments, then the data set's."""
    yield from _pieces(context_id, command, chunk, 0x01, 0x03, 0)
    if dataset is not None:
        yield from _pieces(context_id, dataset, chunk, 0x00, 0x02, 1)


def _pieces(
    context_id: int, data: bytes | memoryview, chunk: int, control: int, last: int, least: int
) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """``data`` as P-DATA-TF PDUs of one PDV each, as (the PDU's 12 header bytes,
    a view of its fragment): message control header ``control``, ``last`` on
    the last fragment; ``least`` fragments at least (1: an empty ``data`` is
    one empty fragment; 0: nothing)."""
    view = memoryview(data)
    n = len(view)
    pack = _COMMAND_PDV_HEADER.pack
    for start in range(0, max(n, least), chunk):
        piece = view[start : start + chunk]
        m = len(piece)
        yield pack(0x04, m + 6, m + 2, context_id, last if start + chunk >= n else control), piece


_COMMAND_PDV_HEADER: Final = struct.Struct(">BxLLBB")
#: A PDV item's header: item length, presentation context ID, message control header.
_PDV_ITEM: Final = struct.Struct(">LBB")


def single_pdu(context_id: int, command: bytes, dataset: bytes | memoryview) -> bytes:
    """A message in one P-DATA-TF: the command PDV, then the data set PDV (both last fragments).

    The caller has checked that the peer's maximum PDU length allows it.
    """
    n, m = len(command), len(dataset)
    return b"".join(
        (
            _COMMAND_PDV_HEADER.pack(0x04, n + m + 12, n + 2, context_id, 0x03),
            command,
            _PDV_ITEM.pack(m + 2, context_id, 0x02),
            dataset,
        )
    )


def data_chunk_size(max_pdu: int) -> int:
    """The largest data set fragment a P-DATA-TF of ``max_pdu`` (0: no limit) carries."""
    return (max_pdu - 6) if max_pdu else UNLIMITED_CHUNK


def data_fragments(
    context_id: int, data: bytes | memoryview, max_pdu: int, *, last: bool
) -> Iterator[bytes]:
    """Data set P-DATA-TF PDUs for one block of a data set sent in blocks.

    The last PDU of the block carries the last-fragment bit only if ``last``;
    so a data set read from a file block by block goes out as if it were
    fragmented whole. An empty last block gives one empty last fragment.
    """
    chunk = data_chunk_size(max_pdu)
    if chunk < 1:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
    for header, piece in _pieces(context_id, data, chunk, 0x00, 0x02 if last else 0x00, int(last)):
        yield header + piece


def file_fragments(
    context_id: int, start: int, end: int, max_pdu: int
) -> Iterator[tuple[bytes, int, int, bytes]]:
    """The data set P-DATA-TF PDUs of bytes ``start`` to ``end`` of a file,
    with the file's bytes left where they are (for ``sendfile``).

    Each PDU is ``(headers, offset, length, trailer)``: its 12 header bytes,
    then ``length`` bytes of the file from ``offset``, then ``trailer`` (the
    pad byte of an odd data set, PS3.5 A.5, or nothing). Joined, they are
    what :func:`data_fragments` makes of those bytes padded to even length:
    the pad byte rides in the last PDU if it has room, else it goes alone as
    the last fragment; an empty data set is one empty last fragment.
    """
    chunk = data_chunk_size(max_pdu)
    if chunk < 1:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
    padded = end - start + (end - start) % 2
    header = bytearray(P_DATA_HEADER_SIZE)
    for first in range(0, max(padded, 1), chunk):
        n = min(chunk, padded - first)
        final = first + chunk >= padded
        pack_p_data_header(header, 0, context_id, 0x02 if final else 0x00, n)
        offset = start + first
        from_file = max(0, min(n, end - offset))
        yield bytes(header), offset, from_file, b"\x00" * (n - from_file)


class Reassembler:
    """Rebuild DIMSE messages from PDVs (PS3.8 Annex E, PS3.7 6.3.1).

    Rules enforced, each violation a :class:`PDUError` (A-ABORT source 2):
    the context ID must be one that was accepted (reason 6); a message starts
    with command fragments; a data set fragment arrives only after the last
    command fragment of a command that announces a data set; all fragments of
    a message share its context ID; a new command starts only once the
    previous message is complete (reason 5, unexpected parameter).

    Spilling: once the data set of the message being received grows past
    ``spool_threshold`` bytes (0: never), its fragments are no longer kept
    here. What was held so far and every later fragment is appended to
    :attr:`spilled`, which the caller drains after each :meth:`feed` (it
    writes them to a file: no I/O happens here), and the completed message
    comes out with ``data=None`` and ``spooled=True``. Memory then holds no
    more than one PDU of the data set.
    """

    __slots__ = (
        "_command_parts",
        "_context",
        "_current",
        "_data_parts",
        "_data_size",
        "_expect",
        "accepted",
        "spilled",
        "spilling",
        "spool_threshold",
    )

    def __init__(self, accepted: Collection[int], spool_threshold: int = 0) -> None:
        self.accepted = accepted
        self.spool_threshold = spool_threshold
        self._current: Message | None = None
        self._command_parts: list[bytes | memoryview] = []
        self._data_parts: list[bytes | memoryview] = []
        self._data_size = 0
        self._expect = "command"
        self._context = 0
        self.spilling = False
        self.spilled: list[bytes | memoryview] = []

    @property
    def in_progress(self) -> bool:
        """True while a message has been started but not completed."""
        return self._expect != "command" or bool(self._command_parts)

    @property
    def current(self) -> Message | None:
        """The message whose data set is being received, if any."""
        return self._current

    def would_spill(self, incoming: int) -> bool:
        """True if a PDU of ``incoming`` bytes could start or continue spilling.

        Between messages too: a PDU may hold a whole command and a data set
        past the threshold.
        """
        return self.spool_threshold > 0 and (
            self.spilling or self._data_size + incoming > self.spool_threshold
        )

    def feed(self, pdv: PDV) -> Message | None:
        """Take one PDV; return the message it completes, if any."""
        return self.feed_item(pdv.context_id, pdv.control_header, pdv.data)

    def feed_plain(self, body: memoryview) -> tuple[bool, Message | None]:
        """Take a P-DATA-TF body in one step if it has one of the shapes
        nearly every PDU has; ``(False, None)`` (nothing taken, nothing
        changed) otherwise.

        The shapes: a whole command, alone or followed by its whole data set
        (how aiodicom and many peers send a small message); one fragment of a
        data set being received (how a large data set arrives, and a data set
        sent apart from its command). Whatever could break a rule or must
        spill is left out, so ``(True, message)`` is exactly what
        :func:`~aiodicom.pdu.split_p_data` and :meth:`feed_item` give (the
        message the PDU completes, or None), and ``(False, None)`` sends the
        caller there, where a problem is reported as usual.
        """
        end = len(body)
        if end < 6:
            return False, None
        length, context_id, mch = _PDV_ITEM.unpack_from(body, 0)
        stop = 4 + length
        if length < 2 or stop > end:
            return False, None
        if self._expect == "command":
            # A whole command, then (maybe) the whole data set it announces.
            if mch != 0x03 or self._command_parts or context_id not in self.accepted:
                return False, None
            if stop == end:
                data = None
            elif end - stop >= 6:
                length, data_context, mch = _PDV_ITEM.unpack_from(body, stop)
                if (
                    mch != 0x02
                    or data_context != context_id
                    or length < 2
                    or stop + 4 + length != end
                    or (self.spool_threshold and length - 2 > self.spool_threshold)
                ):
                    return False, None
                data = body[stop + 6 : end]
            else:
                return False, None
            try:
                msg = self._command_message(context_id, bytes(body[6:stop]))
            except PDUError:
                return False, None  # malformed: the general path reports it
            announces = msg.has_dataset
            if data is not None and not announces:
                return False, None  # a data set the command does not announce
            self._context = context_id
            if not announces:
                return True, msg
            if data is None:
                self._receive_data_of(msg)
                return True, None
            msg.data = bytes(data)
            msg.data_size = len(data)
            return True, msg
        # One fragment of the data set being received.
        current = self._current
        if (
            stop != end
            or mch & 0xFD
            or current is None
            or context_id != current.context_id
            # (spilling already: past the threshold too)
            or (self.spool_threshold and self._data_size + length - 2 > self.spool_threshold)
        ):
            return False, None
        return True, self.feed_item(context_id, mch, body[6:end])

    @staticmethod
    def _command_message(context_id: int, raw: bytes) -> Message:
        """The message a whole command set starts (PDUError if it is malformed)."""
        try:
            command, layout = _decode_command(raw)
        except DIMSEError as exc:
            raise PDUError(f"malformed command set: {exc}") from None
        return Message(context_id=context_id, command=command, raw_command=raw, layout=layout)

    def _receive_data_of(self, msg: Message) -> None:
        """``msg`` announces a data set: its fragments come next."""
        self._current = msg
        self._expect = "data"
        self._data_size = 0

    def feed_item(
        self, context_id: int, control_header: int, data: bytes | memoryview
    ) -> Message | None:
        """:meth:`feed` for a PDV given as its parts (see :func:`aiodicom.pdu.split_p_data`)."""
        if context_id not in self.accepted:
            raise PDUError(f"PDV on presentation context {context_id}, which was not accepted")
        is_command = control_header & 1
        is_last = control_header & 2
        if self._expect == "command":
            if not is_command:
                raise PDUError("data set fragment received where a command was expected", reason=5)
            if self._command_parts and self._context != context_id:
                raise PDUError("command fragments on different presentation contexts", reason=5)
            self._context = context_id
            if is_last and not self._command_parts:
                raw = bytes(data)
            else:
                self._command_parts.append(data)
                if not is_last:
                    return None
                raw = b"".join(self._command_parts)
                self._command_parts = []
            msg = self._command_message(context_id, raw)
            if msg.has_dataset:
                self._receive_data_of(msg)
                return None
            return msg
        # expecting data set fragments
        current = self._current
        assert current is not None
        msg = current
        if is_command:
            raise PDUError("command fragment received inside a data set", reason=5)
        if context_id != msg.context_id:
            raise PDUError("data set fragment on another presentation context", reason=5)
        self._data_size += len(data)
        if self.spilling:
            self.spilled.append(data)
        elif self.spool_threshold and self._data_size > self.spool_threshold:
            self.spilling = True
            self.spilled.extend(self._data_parts)
            self.spilled.append(data)
            self._data_parts = []
        else:
            self._data_parts.append(data)
        if not is_last:
            return None
        return self._complete(msg)

    def received_elsewhere(self, size: int, last: bool) -> Message | None:
        """Fragments of the data set being spilled, ``size`` bytes in all,
        were received (and written) by the caller itself, checked as
        :meth:`feed_item` would (context, order, no command fragment);
        ``last``: the last one among them. Returns the message if it is complete."""
        msg = self._current
        if not self.spilling or msg is None:
            raise RuntimeError("no data set is being spilled")
        self._data_size += size
        return self._complete(msg) if last else None

    def _complete(self, msg: Message) -> Message:
        """The last fragment of ``msg``'s data set is in: the message, and on to the next."""
        if self.spilling:
            msg.spooled = True
            self.spilling = False
        else:
            parts = self._data_parts
            msg.data = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        msg.data_size = self._data_size
        self._current = None
        self._data_parts = []
        self._data_size = 0
        self._expect = "command"
        return msg
