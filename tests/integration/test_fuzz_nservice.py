"""Damaged DIMSE-N requests against a live N-service SCP, over loopback.

N-GET, N-SET, N-ACTION, N-CREATE and N-DELETE requests (Print Management
and MPPS classes) whose command set or data set is damaged a seeded way per
case, on one association, to handlers that read all of what they receive.
Each request is answered with a DIMSE-N status, or (a command that cannot be
answered: no Message ID, not a command set) the association is aborted; the
server never sends an undecodable PDU and goes on serving new associations.
"""

from __future__ import annotations

import os
import random
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from aiodicom import evt, sop_class
from aiodicom.dimse import (
    DATASET_PRESENT,
    NO_DATASET,
    CommandField,
    decode_command,
    encode_command,
    fragment,
)
from aiodicom.dsutils import encode_dataset
from aiodicom.pdu import AAbort, PDataTF

from ._fuzz import PYDICOM_WARNINGS_PASS, damage, element_length_fields
from .conftest import (
    GUARD,
    RawPeer,
    echo_once,
    make_scp_ae,
    raw_associate,
    raw_connection,
    rq_with_contexts,
    running_server,
)

pytestmark = [pytest.mark.anyio, PYDICOM_WARNINGS_PASS]

CASES = int(os.environ.get("FUZZ_N_CASES", "400"))
FILM = sop_class.BasicFilmSession
PRINTER = sop_class.Printer
MPPS = sop_class.ModalityPerformedProcedureStep
MAX_PDU = 16384
CONTEXTS = {FILM: 1, PRINTER: 3, MPPS: 5}


def _read_all(ds: Dataset | None) -> None:
    """What a handler that uses every element does: convert each, nested too."""
    if ds is not None:
        ds.walk(lambda _ds, _elem: None)


def _handlers() -> list[Any]:
    def on_get(event: evt.Event) -> Any:
        ds = Dataset()
        ds.PrinterStatus = "NORMAL"
        ds.PrinterName = "FUZZ"
        return 0x0000, ds

    def on_set(event: evt.Event) -> Any:
        _read_all(event.modification_list)
        return 0x0000, None

    def on_create(event: evt.Event) -> Any:
        _read_all(event.attribute_list)
        return 0x0000, None

    def on_action(event: evt.Event) -> Any:
        _read_all(event.action_information)
        return 0x0000, None

    return [
        (evt.EVT_N_GET, on_get),
        (evt.EVT_N_SET, on_set),
        (evt.EVT_N_CREATE, on_create),
        (evt.EVT_N_ACTION, on_action),
        (evt.EVT_N_DELETE, lambda event: 0x0000),
    ]


def _data(rng: random.Random) -> bytes:
    ds = Dataset()
    ds.NumberOfCopies = "1"
    ds.PrintPriority = "MED"
    ds.MediumType = "BLUE FILM"
    ds.FilmSessionLabel = "fuzz"
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class.CTImageStorage
    item.ReferencedSOPInstanceUID = f"1.2.3.{rng.randrange(1000)}"
    ds.ReferencedImageSequence = [item]
    return encode_dataset(ds, ImplicitVRLittleEndian)


def _request(rng: random.Random, mid: int) -> tuple[int, bytes, bytes | None]:
    """A valid N request: (context ID, its command set, its data set)."""
    kind = rng.choice(["get", "set", "create", "action", "delete"])
    sop = PRINTER if kind == "get" else rng.choice([FILM, MPPS])
    instance = sop_class.PrinterInstance if kind == "get" else f"1.2.826.0.1.{mid}"
    command: dict[str, Any] = {"MessageID": mid}
    data: bytes | None = _data(rng)
    if kind == "get":
        command |= {"CommandField": CommandField.N_GET_RQ, "RequestedSOPClassUID": sop}
        command |= {"RequestedSOPInstanceUID": instance}
        command["AttributeIdentifierList"] = [0x21100010, 0x21100030]
        data = None
    elif kind == "set":
        command |= {"CommandField": CommandField.N_SET_RQ, "RequestedSOPClassUID": sop}
        command |= {"RequestedSOPInstanceUID": instance}
    elif kind == "create":
        command |= {"CommandField": CommandField.N_CREATE_RQ, "AffectedSOPClassUID": sop}
    elif kind == "action":
        command |= {"CommandField": CommandField.N_ACTION_RQ, "RequestedSOPClassUID": sop}
        command |= {"RequestedSOPInstanceUID": instance, "ActionTypeID": 1}
    else:
        command |= {"CommandField": CommandField.N_DELETE_RQ, "RequestedSOPClassUID": sop}
        command |= {"RequestedSOPInstanceUID": instance}
        data = None
    command["CommandDataSetType"] = NO_DATASET if data is None else DATASET_PRESENT
    return CONTEXTS[sop], encode_command(command), data


#: PS3.7 C.4 and 10.1: the statuses an N service answers with.
N_STATUSES = {0x0000, 0x0001, 0x0107, 0x0116, 0xB600, 0xB602, 0xB603, 0xB604, 0xB605}
N_STATUSES |= set(range(0x0105, 0x0124)) | {0x0210, 0x0211, 0x0212, 0x0213}


async def _answer(peer: RawPeer, mid: int | None) -> int | None:
    """The status of the response (to ``mid``, if known: a damaged command's
    Message ID may be another); None when the server aborted instead."""
    parts: list[bytes] = []
    while True:
        pdu = await peer.read_pdu()
        if pdu is None or isinstance(pdu, AAbort):
            return None
        assert isinstance(pdu, PDataTF), f"the SCP sent {pdu!r}"
        for pdv in pdu.pdvs:
            if pdv.is_command:
                parts.append(bytes(pdv.data))
                if pdv.is_last:
                    rsp = decode_command(b"".join(parts))
                    parts = []
                    assert mid is None or rsp["MessageIDBeingRespondedTo"] == mid, rsp
                    if rsp["CommandDataSetType"] == NO_DATASET:
                        return int(rsp["Status"])
            elif pdv.is_last:  # the response's data set: it ends the message
                return int(rsp["Status"])


async def test_damaged_n_requests_get_n_statuses_or_an_abort() -> None:
    ae = make_scp_ae(acse_timeout=0.5, dimse_timeout=GUARD)
    for sop in CONTEXTS:
        ae.add_supported_context(sop, [ImplicitVRLittleEndian])
    outcomes: dict[str, int] = {}
    async with running_server(ae, _handlers()) as server:
        peer: RawPeer | None = None
        connection: Any = None
        seed = 0
        try:
            for seed in range(CASES + 1):
                rng = random.Random(seed)
                if peer is None:  # (re)associate after an abort
                    connection = raw_connection(server.port)
                    peer = await connection.__aenter__()
                    await raw_associate(
                        peer,
                        rq_with_contexts(
                            *((cid, sop, ImplicitVRLittleEndian) for sop, cid in CONTEXTS.items())
                        ),
                    )
                mid = seed + 1
                context_id, command, data = _request(rng, mid)
                what = "none"
                if seed:
                    if data is not None and rng.random() < 0.7:
                        what, data = damage(
                            data, rng, length_fields=element_length_fields, byteorder="little"
                        )
                        what = f"data {what}"
                    else:
                        what, command = damage(
                            command, rng, length_fields=element_length_fields, byteorder="little"
                        )
                        what = f"command {what}"
                where = f"seed {seed} ({what})"
                damaged_command = what.startswith("command")
                waiting = False
                try:
                    with anyio.fail_after(GUARD):
                        for raw in fragment(context_id, command, data, MAX_PDU):
                            await peer.send(raw)
                        # A damaged command may announce a data set that never
                        # comes (Command Data Set Type flipped): the server
                        # rightly waits for it. Nothing else may keep it waiting.
                        with anyio.move_on_after(1.0 if damaged_command else GUARD) as scope:
                            status = await _answer(peer, None if damaged_command else mid)
                        waiting = scope.cancelled_caught
                except Exception as exc:
                    raise AssertionError(f"{where}: {exc!r}") from exc
                assert not waiting or damaged_command, f"{where}: no answer"
                if seed == 0:
                    assert status == 0, where
                if waiting:
                    outcomes["waiting"] = outcomes.get("waiting", 0) + 1
                    await connection.__aexit__(None, None, None)
                    peer = None
                    continue
                if status is None:
                    assert what.startswith("command"), f"{where}: aborted for a data set"
                    outcomes["aborted"] = outcomes.get("aborted", 0) + 1
                    await connection.__aexit__(None, None, None)
                    peer = None
                    continue
                assert status in N_STATUSES or 0xC000 <= status <= 0xCFFF, f"{where}: {status:04X}"
                outcomes[f"0x{status:04X}"] = outcomes.get(f"0x{status:04X}", 0) + 1
        finally:
            if peer is not None:
                await connection.__aexit__(None, None, None)
        assert await echo_once(server.port) == 0
    assert len(outcomes) > 2, outcomes
