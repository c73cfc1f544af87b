"""Mutated byte streams against a live server, over real loopback sockets.

A valid exchange (A-ASSOCIATE-RQ, a C-STORE of a data set large enough to
be spooled, in several PDUs, a C-ECHO, A-RELEASE-RQ) is damaged in a
different, seeded way per case: bytes flipped, cut short, bytes inserted, a
slice repeated, a PDU length field rewritten. Whatever arrives, the server
must only ever send PDUs that decode, end every connection (an A-ABORT, a
release or a close once the peer has closed its side), keep no spool file
and no association behind, and go on serving a well-behaved peer. A
failing case is reproduced by its seed alone (it is in the message).
"""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aiodicom import evt, sop_class
from aiodicom.dimse import DATASET_PRESENT, CommandField, encode_command, fragment
from aiodicom.dsutils import encode_dataset
from aiodicom.pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AReleaseRQ,
    PresentationContextRQ,
    encode,
)
from aiodicom.testing import make_dataset

from .conftest import (
    GUARD,
    RAW_IMPL_UID,
    Recorder,
    echo_once,
    make_scp_ae,
    raw_connection,
    running_server,
)

pytestmark = pytest.mark.anyio

CASES = int(__import__("os").environ.get("FUZZ_CASES", "300"))
#: PDUs of the valid stream are at most this long, so a data set spans several.
MAX_PDU = 4096


def _valid_stream() -> bytes:
    """The undamaged exchange, as the bytes a requestor sends."""
    from aiodicom.pdu import AAssociateRQ
    from aiodicom.pdu_primitives import (
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
    )

    rq = AAssociateRQ(
        protocol_version=1,
        called_ae_title="TEST_SCP",
        calling_ae_title="FUZZ",
        presentation_contexts=(
            PresentationContextRQ(
                context_id=1,
                abstract_syntax=sop_class.Verification,
                transfer_syntaxes=(ImplicitVRLittleEndian,),
            ),
            PresentationContextRQ(
                context_id=3,
                abstract_syntax=sop_class.CTImageStorage,
                transfer_syntaxes=(ExplicitVRLittleEndian,),
            ),
        ),
        user_information=(
            MaximumLengthNotification(maximum_length_received=MAX_PDU),
            ImplementationClassUIDNotification(implementation_class_uid=RAW_IMPL_UID),
        ),
    )
    ds = make_dataset()
    ds.PixelData = bytes(range(256)) * 48  # 12 KiB: over the spool threshold below
    data = encode_dataset(ds, ExplicitVRLittleEndian)
    store = encode_command(
        {
            "CommandField": CommandField.C_STORE_RQ,
            "MessageID": 1,
            "Priority": 0,
            "AffectedSOPClassUID": sop_class.CTImageStorage,
            "AffectedSOPInstanceUID": str(ds.SOPInstanceUID),
            "CommandDataSetType": DATASET_PRESENT,
        }
    )
    echo = encode_command(
        {
            "CommandField": CommandField.C_ECHO_RQ,
            "MessageID": 2,
            "AffectedSOPClassUID": sop_class.Verification,
            "CommandDataSetType": 0x0101,
        }
    )
    return b"".join(
        [
            encode(rq),
            *fragment(3, store, data, MAX_PDU),
            *fragment(1, echo, None, MAX_PDU),
            encode(AReleaseRQ()),
        ]
    )


def _pdu_starts(stream: bytes) -> list[int]:
    starts, pos = [], 0
    while pos + 6 <= len(stream):
        starts.append(pos)
        pos += 6 + int.from_bytes(stream[pos + 2 : pos + 6], "big")
    return starts


def _mutate(stream: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One damaged copy of ``stream`` and what was done to it."""
    data = bytearray(stream)
    kind = rng.choice(["flip", "cut", "insert", "repeat", "length"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "cut":
        del data[rng.randrange(1, len(data)) :]
    elif kind == "insert":
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == "repeat":
        at = rng.randrange(len(data))
        data[at:at] = data[at : at + rng.randint(1, 3000)]
    else:
        at = rng.choice(_pdu_starts(stream))
        length = rng.choice([0, 1, 5, 0xFFFFFFFF, rng.randrange(1 << 32)])
        data[at + 2 : at + 6] = length.to_bytes(4, "big")
    return kind, bytes(data)


async def _send_and_drain(port: int, data: bytes, rng: random.Random) -> list[object]:
    """Send ``data`` in random pieces, close our side, read every PDU until EOF."""
    async with raw_connection(port) as peer:
        try:
            pos = 0
            while pos < len(data):
                step = rng.choice([1, 7, 100, 1500, 65536])
                await peer.stream.send(data[pos : pos + step])
                pos += step
            await peer.stream.send_eof()  # type: ignore[attr-defined]
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the server aborted and closed while we sent: read what it said
        return list(await peer.read_until_eof())  # every one must decode


async def test_mutated_streams_never_break_the_server(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    stored: list[int] = []
    ae = make_scp_ae(acse_timeout=0.5, dimse_timeout=2.0)
    ae.add_supported_context(sop_class.CTImageStorage, [ExplicitVRLittleEndian])
    ae.spool_threshold = 4096
    ae.spool_directory = str(spool)

    def on_store(event: evt.Event) -> int:
        stored.append(0 if event.dataset_path is None else 1)
        return 0x0000

    valid = _valid_stream()
    rec = Recorder()
    kinds: dict[str, int] = {}
    answered = 0
    async with running_server(ae, [(evt.EVT_C_STORE, on_store), *rec.handlers]) as server:
        # The undamaged stream first, the peer's side left open until the
        # A-RELEASE-RP (its close before that is an abort, PS3.8 AA-4).
        async with raw_connection(server.port) as peer:
            await peer.stream.send(valid)
            with anyio.fail_after(GUARD):
                names = [type(await peer.read_pdu()).__name__ for _ in range(4)]
        assert names == ["AAssociateAC", "PDataTF", "PDataTF", "AReleaseRP"]
        assert stored == [1], "the valid store was not spooled and stored"
        for seed in range(1, CASES + 1):
            rng = random.Random(seed)
            kind, damaged = _mutate(valid, rng)
            kinds[kind] = kinds.get(kind, 0) + 1
            try:
                with anyio.fail_after(GUARD):
                    pdus = await _send_and_drain(server.port, damaged, rng)
            except Exception as exc:
                raise AssertionError(f"seed {seed} ({kind}): {exc!r}") from exc
            where = f"seed {seed} ({kind}): {pdus!r}"
            if pdus:
                answered += 1
                assert isinstance(pdus[0], AAssociateAC | AAssociateRJ | AAbort), where
            # Once it aborted, the server sends nothing but A-ABORTs (PS3.8 Sta13:
            # AA-7 answers each invalid PDU that still comes with one).
            first = next((i for i, p in enumerate(pdus) if isinstance(p, AAbort)), len(pdus))
            assert all(isinstance(p, AAbort) for p in pdus[first:]), where
            # Once the server is done with the connection (its association's
            # tasks too, which may finish after EVT_CONN_CLOSE), nothing of it
            # may be left.
            await rec.wait_for("EVT_CONN_CLOSE", seed + 1)
            with anyio.fail_after(GUARD):
                await server._none_active.wait()
            assert not list(spool.iterdir()), f"{where}: a spool file was left behind"
        assert await echo_once(server.port) == 0
        # Every connection ended, and its association with it.
        await rec.wait_for("EVT_CONN_CLOSE", CASES + 2)  # the valid case, the cases, the echo
        with anyio.fail_after(GUARD):
            await server._none_active.wait()
        assert not server.active_associations
    assert not list(spool.iterdir()), "a spool file was left behind"
    assert set(kinds) == {"flip", "cut", "insert", "repeat", "length"}, kinds
    assert answered > CASES // 2, answered  # a cut inside the A-ASSOCIATE-RQ gets none
