"""Seeded damage for the fuzz tests (test_fuzz_socket, test_fuzz_qrscp)."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from typing import Literal

import pytest

#: For tests whose handlers read damaged values: pydicom warns of them (an
#: invalid UID, an unknown tag) and goes on, as in production; the suite's
#: warnings-are-errors setting would take another path.
PYDICOM_WARNINGS_PASS = pytest.mark.filterwarnings("ignore::UserWarning")

#: What :func:`damage` does, one per call.
KINDS = ("flip", "cut", "insert", "repeat", "length")


def damage(
    data: bytes,
    rng: random.Random,
    *,
    length_fields: Callable[[bytes], list[int]],
    byteorder: Literal["big", "little"],
    inserts: Sequence[bytes] = (),
    max_repeat: int = 3000,
) -> tuple[str, bytes]:
    """One damaged copy of ``data`` and the kind of damage: bits flipped, cut
    short, bytes inserted (random ones, or one of ``inserts``), a slice
    repeated in place, or one of the 4-byte length fields at the offsets
    ``length_fields(data)`` gives rewritten (0, tiny, all ones, random)."""
    out = bytearray(data)
    kind = rng.choice(KINDS)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == "cut":
        del out[rng.randrange(len(out)) :]
    elif kind == "insert":
        at = rng.randrange(len(out) + 1)
        out[at:at] = rng.choice([rng.randbytes(rng.randint(1, 64)), *inserts])
    elif kind == "repeat":
        at = rng.randrange(len(out))
        out[at:at] = out[at : at + rng.randint(1, max_repeat)]
    else:
        at = rng.choice(length_fields(data))
        value = rng.choice([0, 1, 3, 5, 0xFFFFFFFE, 0xFFFFFFFF, rng.randrange(1 << 32)])
        out[at : at + 4] = value.to_bytes(4, byteorder)
    return kind, bytes(out)


def element_length_fields(data: bytes) -> list[int]:
    """Where the length field of each top-level element of an Implicit VR
    Little Endian data set (or command set) is: for :func:`damage`."""
    fields, pos = [], 0
    while pos + 8 <= len(data):
        fields.append(pos + 4)
        length = struct.unpack_from("<L", data, pos + 4)[0]
        if length == 0xFFFFFFFF:
            break
        pos += 8 + length
    return fields
