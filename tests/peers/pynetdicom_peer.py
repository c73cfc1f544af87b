#!/usr/bin/env python3
"""A pynetdicom 3 peer for aiodicom's interop tests, run as a subprocess.

    python tests/peers/pynetdicom_peer.py scp --port 0 --out events.jsonl
    python tests/peers/pynetdicom_peer.py scu --port 11112 --echo 3 --out events.jsonl
    python tests/peers/pynetdicom_peer.py scp --accept-all-storage --output-dir DIR
    python tests/peers/pynetdicom_peer.py scu --port 11112 --store-dir DIR --chunked
    python tests/peers/pynetdicom_peer.py scu-many --port 11112 --store F --associations 20

Both modes write one JSON object per line for every event of interest (to
``--out``, or to stdout).  The ``scp`` mode prints ``READY <port>`` (flushed)
on stdout once its socket listens, then serves until SIGTERM or SIGINT, and
exits 0.  The ``scu`` mode exits 0 if the association was accepted and every
operation succeeded, 1 if it was rejected, 2 if it was aborted (or the
connection failed), 3 if an operation failed.

Bytes values (user identity fields, server response) are written twice: as a
latin-1 decoded string under the field's name and as base64 under
``<name>_b64``.

With ``TCP_NODELAY=1`` in the environment, TCP_NODELAY is set on every
association socket from an ``EVT_CONN_OPEN`` handler: pynetdicom 3 has no
option for it, but the handler runs after connect()/accept() and before the
first PDU is sent, on both the requestor and the acceptor side.

Storage: the ``scp`` mode with ``--output-dir DIR`` writes every received
instance to DIR as a Part 10 file (128-byte preamble, "DICM", File Meta
Information built from the request and the context, then the data set bytes
exactly as received), named ``<seq>_<SOP Instance UID>.dcm``, and logs its path
as ``stored`` in the ``c_store`` event. ``--accept-all-storage`` accepts every
storage SOP class with every transfer syntax pynetdicom knows (compressed ones
included). The ``scu`` mode sends every ``--store FILE`` and every file under
``--store-dir DIR`` (recursively, sorted by path) on one association, proposing
one context per (SOP class, transfer syntax) found in the files, and logs one
``c_store`` event per file with its status. ``--chunked`` sends each file from
disk as it is (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``) instead of
decoding it with pydicom and re-encoding it.

Query/Retrieve: the ``scp`` mode with ``--qr-dir DIR`` (repeatable) also
serves C-FIND, C-GET and C-MOVE (Patient Root and Study Root) over the files
under DIR, matched by ``tests/interop/_qr_data.py``; handlers check
``event.is_cancelled`` before every response and answer 0xFE00 once it is
set. ``--hold-after N`` makes a handler stop after N pending responses (or
sub-operations) and wait up to ``--hold-timeout`` seconds for a C-CANCEL, so
that a cancel from the peer is seen for certain. C-MOVE destinations come
from ``--move-dest AET=HOST:PORT``; an unknown one is answered 0xA801. Each
request logs one ``c_find`` / ``c_get`` / ``c_move`` event (identifier,
matches, responses sent, ``cancelled``). The ``qrscu`` mode sends one C-FIND,
C-GET or C-MOVE (``--service``, ``--model``, ``--level``, ``-k KEY=VALUE``),
optionally sends a C-CANCEL after ``--cancel-after N`` responses, and logs
every response (``find_rsp`` / ``get_rsp`` / ``move_rsp``: status,
sub-operation counts, identifier) and, for C-GET, every C-STORE sub-operation
it receives (``c_store``; written to ``--store-dir`` if given).

The SCU modes keep pynetdicom's association thread from taking responses
meant for the send_*() call waiting on them (pynetdicom #875, see
``keep_reactor_off_responses``): without that, a fast SCP's response is now
and then lost and the call waits out the DIMSE timeout. A Python traceback of
every thread goes to stderr on SIGUSR1 (the harness sends it to a peer that
overran its timeout), and pynetdicom's warnings and errors go to stderr.

This script never imports aiodicom: it is the independent peer.
"""

from __future__ import annotations

import argparse
import base64
import faulthandler
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    StoragePresentationContexts,
    _config,
    build_role,
    evt,
)
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
import _qr_data as qr  # Q/R matching; no aiodicom in it
from _tls import mutual_tls_context

QR_MODELS = {
    "patient": (
        "1.2.840.10008.5.1.4.1.2.1.1",
        "1.2.840.10008.5.1.4.1.2.1.3",
        "1.2.840.10008.5.1.4.1.2.1.2",
    ),
    "study": (
        "1.2.840.10008.5.1.4.1.2.2.1",
        "1.2.840.10008.5.1.4.1.2.2.3",
        "1.2.840.10008.5.1.4.1.2.2.2",
    ),
}
QR_SERVICE_INDEX = {"find": 0, "get": 1, "move": 2}
#: --model nobulk: Composite Instance Retrieve Without Bulk Data, a C-GET model only.
QR_MODELS["nobulk"] = ("", "1.2.840.10008.5.1.4.1.2.5.3", "")

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_ABORTED = 2
EXIT_FAILED = 3

USER_ID_TYPES = {"username": 1, "password": 2, "kerberos": 3, "saml": 4, "jwt": 5}


# --------------------------------------------------------------------------- output


class EventWriter:
    """Thread-safe JSON-lines writer; every line is flushed at once."""

    def __init__(self, stream: TextIO, *, close: bool) -> None:
        self._stream = stream
        self._close = close
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, sort_keys=False, default=str)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._stream.flush()
            if self._close:
                self._stream.close()


def open_writer(path: str | None) -> EventWriter:
    if path:
        return EventWriter(open(path, "a", encoding="utf-8"), close=True)
    return EventWriter(sys.stdout, close=False)


def bytes_fields(name: str, value: bytes | None) -> dict[str, Any]:
    if value is None:
        return {name: None, f"{name}_b64": None}
    value = bytes(value)
    return {name: value.decode("latin-1"), f"{name}_b64": base64.b64encode(value).decode("ascii")}


def parse_bool(text: str) -> bool | None:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "y", "t"):
        return True
    if t in ("0", "false", "no", "n", "f"):
        return False
    if t in ("", "none", "-", "null"):
        return None
    raise argparse.ArgumentTypeError(f"not a role value: {text!r} (use 1/0/none)")


def parse_role(text: str) -> tuple[str, bool | None, bool | None]:
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise argparse.ArgumentTypeError(f"--role wants SOPUID:SCU:SCP, got {text!r}")
    return parts[0], parse_bool(parts[1]), parse_bool(parts[2])


def parse_user_identity(text: str) -> UserIdentityNegotiation:
    """``TYPE:PRIMARY[:SECONDARY][:positive]``; TYPE is 1-5 or a name."""
    parts = text.split(":")
    if len(parts) < 2:
        raise argparse.ArgumentTypeError(
            "--user-identity wants TYPE:PRIMARY[:SECONDARY][:positive]"
        )
    positive = False
    if len(parts) >= 3 and parts[-1].lower() == "positive":
        positive = True
        parts = parts[:-1]
    kind = parts[0].lower()
    id_type = USER_ID_TYPES[kind] if kind in USER_ID_TYPES else int(kind)
    item = UserIdentityNegotiation()
    item.user_identity_type = id_type
    item.primary_field = parts[1].encode("utf-8")
    if len(parts) >= 3:
        item.secondary_field = ":".join(parts[2:]).encode("utf-8")
    elif id_type == 2:
        raise argparse.ArgumentTypeError("user identity type 2 needs a secondary field")
    item.positive_response_requested = positive
    return item


def role_items(assoc_user: Any) -> list[dict[str, Any]]:
    return [
        {"sop_class_uid": str(uid), "scu_role": item.scu_role, "scp_role": item.scp_role}
        for uid, item in assoc_user.role_selection.items()
    ]


def context_dict(cx: Any) -> dict[str, Any]:
    return {
        "context_id": cx.context_id,
        "abstract_syntax": str(cx.abstract_syntax),
        "transfer_syntax": str(cx.transfer_syntax[0]) if cx.transfer_syntax else None,
        "as_scu": cx.as_scu,
        "as_scp": cx.as_scp,
    }


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: set TCP_NODELAY on the association's socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def get_nodelay(event: evt.Event) -> bool | None:
    """TCP_NODELAY as read back from the association's socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is None:
        return None
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def nodelay_wanted() -> bool:
    return os.environ.get("TCP_NODELAY", "") == "1"


# --------------------------------------------------------------------------- SCP


class _Cancel:
    """event.is_cancelled, latched: pynetdicom's is true once, then forgets the
    C-CANCEL (ServiceClass.is_cancelled deletes it from cancel_req)."""

    def __init__(self, event: evt.Event) -> None:
        self.event = event
        self.seen = False

    def __call__(self) -> bool:
        if not self.seen and self.event.is_cancelled:
            self.seen = True
        return self.seen


class SCP:
    def __init__(self, args: argparse.Namespace, out: EventWriter) -> None:
        self.args = args
        self.out = out
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stored = itertools.count(1)
        self.instances: list[qr.Instance] = []
        for folder in getattr(args, "qr_dir", []) or []:
            files = sorted(
                os.path.join(root, name) for root, _d, names in os.walk(folder) for name in names
            )
            self.instances += qr.index_files(f for f in files if _is_dicom(f))
        self.move_dests: dict[str, tuple[str, int]] = dict(getattr(args, "move_dest", []) or [])

    def assoc_id(self, assoc: Any) -> int:
        with self._lock:
            n = getattr(assoc, "_peer_assoc_id", None)
            if n is None:
                n = next(self._ids)
                assoc._peer_assoc_id = n
            return n

    def common(self, event: evt.Event) -> dict[str, Any]:
        assoc = event.assoc
        prim = assoc.requestor.primitive
        return {
            "assoc_id": self.assoc_id(assoc),
            "calling_ae": _title(getattr(prim, "calling_ae_title", None)),
            "called_ae": _title(getattr(prim, "called_ae_title", None)),
        }

    # Notification handlers -------------------------------------------------

    def on_conn_open(self, event: evt.Event) -> None:
        if nodelay_wanted():
            set_nodelay(event)
        self.out.write(
            "conn_open",
            assoc_id=self.assoc_id(event.assoc),
            address=list(event.address),  # type: ignore[attr-defined]
            tcp_nodelay=get_nodelay(event),
        )

    def on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor
        uid = rq.user_identity
        user_identity = None
        if uid is not None:
            user_identity = {
                "type": uid.user_identity_type,
                **bytes_fields("primary", uid.primary_field),
                **bytes_fields("secondary", uid.secondary_field),
                "positive_response_requested": bool(uid.positive_response_requested),
            }
        self.out.write(
            "requested",
            **self.common(event),
            max_pdu=rq.maximum_length,
            implementation_class_uid=str(rq.implementation_class_uid),
            implementation_version_name=rq.implementation_version_name,
            roles=role_items(rq),
            user_identity=user_identity,
            async_ops=list(rq.asynchronous_operations),
            requested_contexts=[
                {
                    "context_id": cx.context_id,
                    "abstract_syntax": str(cx.abstract_syntax),
                    "transfer_syntaxes": [str(ts) for ts in cx.transfer_syntax],
                }
                for cx in rq.requested_contexts
            ],
        )

    def on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        self.out.write(
            "accepted",
            **self.common(event),
            contexts=[context_dict(cx) for cx in assoc.accepted_contexts],
            rejected_contexts=[
                {
                    "context_id": cx.context_id,
                    "abstract_syntax": str(cx.abstract_syntax),
                    "result": cx.result,
                }
                for cx in assoc.rejected_contexts
            ],
            roles=role_items(assoc.acceptor),
        )

    def on_rejected(self, event: evt.Event) -> None:
        prim = event.assoc.acceptor.primitive
        self.out.write(
            "rejected",
            **self.common(event),
            result=getattr(prim, "result", None),
            source=getattr(prim, "result_source", None),
            reason=getattr(prim, "diagnostic", None),
        )

    def on_released(self, event: evt.Event) -> None:
        self.out.write("released", **self.common(event))

    def on_aborted(self, event: evt.Event) -> None:
        info = getattr(event.assoc, "_peer_abort", None) or {
            "source": None,
            "reason": None,
            "by": "local",
        }
        self.out.write("aborted", **self.common(event), **info)

    def on_pdu_recv(self, event: evt.Event) -> None:
        pdu = event.pdu  # type: ignore[attr-defined]
        if isinstance(pdu, A_ABORT_RQ):
            event.assoc._peer_abort = {
                "source": pdu.source,
                "reason": pdu.reason_diagnostic,
                "by": "peer",
            }

    def on_conn_close(self, event: evt.Event) -> None:
        self.out.write("conn_close", assoc_id=self.assoc_id(event.assoc))

    # Intervention handlers -------------------------------------------------

    def on_user_id(self, event: evt.Event) -> tuple[bool, bytes | None]:
        primary = bytes(event.primary_field)  # type: ignore[attr-defined]
        rejected = self.args.reject_user is not None and primary == self.args.reject_user.encode()
        response = None
        if self.args.user_identity_response is not None:
            response = self.args.user_identity_response.encode("utf-8")
        self.out.write(
            "user_id",
            **self.common(event),
            type=event.user_id_type,  # type: ignore[attr-defined]
            **bytes_fields("primary", primary),
            **bytes_fields("secondary", event.secondary_field),  # type: ignore[attr-defined]
            authorised=not rejected,
            **bytes_fields("response", None if rejected else response),
        )
        if rejected:
            return False, None
        return True, response

    def on_c_echo(self, event: evt.Event) -> int:
        self.out.write(
            "c_echo",
            **self.common(event),
            message_id=event.request.MessageID,
            context_id=event.context.context_id,
        )
        return 0x0000

    def on_c_store(self, event: evt.Event) -> int:
        req = event.request
        data = req.DataSet
        length = len(data.getbuffer()) if data is not None else None
        stored = None
        if self.args.recv_chunked:
            # The data set is in a Part 10 file pynetdicom wrote; keep it.
            spooled = event.dataset_path
            length = os.path.getsize(spooled)
            if self.args.output_dir:
                with self._lock:
                    seq = next(self._stored)
                uid = str(req.AffectedSOPInstanceUID)
                stored = os.path.join(self.args.output_dir, f"{seq:06d}_{uid}.dcm")
                shutil.move(spooled, stored)
        elif self.args.output_dir and data is not None:
            stored = self.store(event)
        self.out.write(
            "c_store",
            **self.common(event),
            message_id=req.MessageID,
            context_id=event.context.context_id,
            sop_class_uid=str(req.AffectedSOPClassUID),
            sop_instance_uid=str(req.AffectedSOPInstanceUID),
            transfer_syntax=str(event.context.transfer_syntax),
            priority=req.Priority,
            move_originator_ae=getattr(req, "MoveOriginatorApplicationEntityTitle", None),
            dataset_length=length,
            stored=stored,
        )
        return 0x0000

    def store(self, event: evt.Event) -> str:
        """Write the received data set as a Part 10 file; return its path."""
        req = event.request
        uid = str(req.AffectedSOPInstanceUID)
        with self._lock:
            seq = next(self._stored)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = req.AffectedSOPClassUID
        meta.MediaStorageSOPInstanceUID = req.AffectedSOPInstanceUID
        meta.TransferSyntaxUID = event.context.transfer_syntax
        meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
        ae_title = _title(event.assoc.requestor.ae_title)
        if ae_title:
            meta.SourceApplicationEntityTitle = ae_title
        path = os.path.join(self.args.output_dir, f"{seq:06d}_{uid}.dcm")
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            f.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(f, meta, enforce_standard=True)
            f.write(req.DataSet.getbuffer())
        os.replace(tmp, path)  # complete files only
        return path

    # Query/Retrieve --------------------------------------------------------

    def _hold(self, event: evt.Event, sent: int, cancel: _Cancel) -> float | None:
        """--hold-after: after that many responses wait (bounded) for a C-CANCEL."""
        if self.args.hold_after is None or sent != self.args.hold_after:
            return None
        started = time.monotonic()
        deadline = started + self.args.hold_timeout
        while not cancel() and time.monotonic() < deadline:
            time.sleep(0.005)
        return round(time.monotonic() - started, 3)

    def _qr_common(self, event: evt.Event, ident: Any) -> dict[str, Any]:
        return {
            **self.common(event),
            "message_id": event.request.MessageID,
            "model": str(event.request.AffectedSOPClassUID),
            "priority": event.request.Priority,
            "identifier": identifier_dict(ident),
        }

    def on_c_find(self, event: evt.Event) -> Any:
        ident = event.identifier
        info = self._qr_common(event, ident)
        sent, held, cancel = 0, None, _Cancel(event)
        for rsp in qr.find_identifiers(self.instances, ident):
            waited = self._hold(event, sent, cancel)
            held = waited if waited is not None else held
            if cancel():
                break
            yield 0xFF00, rsp
            sent += 1
        cancelled = cancel()
        self.out.write("c_find", **info, sent=sent, held_s=held, cancelled=cancelled)
        if cancelled:
            yield 0xFE00, None

    def _sub_operations(self, event: evt.Event, name: str, info: dict[str, Any]) -> Any:
        selected = qr.select_instances(self.instances, event.identifier)
        yield len(selected)
        sent, held, cancel = 0, None, _Cancel(event)
        for inst in selected:
            waited = self._hold(event, sent, cancel)
            held = waited if waited is not None else held
            if cancel():
                break
            yield 0xFF00, dcmread(inst.path)
            sent += 1
        cancelled = cancel()
        self.out.write(
            name,
            **info,
            matches=len(selected),
            sent=sent,
            held_s=held,
            cancelled=cancelled,
            sop_instance_uids=[i.sop_instance_uid for i in selected[:sent]],
        )
        if cancelled:
            yield 0xFE00, None

    def on_c_get(self, event: evt.Event) -> Any:
        info = self._qr_common(event, event.identifier)
        yield from self._sub_operations(event, "c_get", info)

    def on_c_move(self, event: evt.Event) -> Any:
        dest_ae = str(event.move_destination).strip()
        info = self._qr_common(event, event.identifier)
        info["move_destination"] = dest_ae
        dest = self.move_dests.get(dest_ae)
        if dest is None:
            self.out.write("c_move", **info, matches=None, sent=0, unknown_destination=True)
            yield None, None
            return
        kwargs = {"evt_handlers": [(evt.EVT_CONN_OPEN, set_nodelay)]} if nodelay_wanted() else {}
        yield dest[0], dest[1], kwargs
        yield from self._sub_operations(event, "c_move", info)

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_C_FIND, self.on_c_find),
            (evt.EVT_C_GET, self.on_c_get),
            (evt.EVT_C_MOVE, self.on_c_move),
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_PDU_RECV, self.on_pdu_recv),
            (evt.EVT_USER_ID, self.on_user_id),
            (evt.EVT_C_ECHO, self.on_c_echo),
            (evt.EVT_C_STORE, self.on_c_store),
        ]


def _is_dicom(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM" and os.path.basename(path) != "DICOMDIR"
    except OSError:
        return False


def identifier_dict(ds: Any) -> dict[str, Any] | None:
    """A data set as {keyword: str value} (empty values as ""), for the JSON log."""
    if ds is None:
        return None
    out: dict[str, Any] = {}
    for elem in ds:
        key = elem.keyword or str(elem.tag)
        if elem.VR == "SQ":
            out[key] = [identifier_dict(item) for item in elem.value]
        elif elem.value is None or elem.value == "":
            out[key] = ""
        elif elem.VM > 1:
            out[key] = [str(v) for v in elem.value]
        else:
            out[key] = str(elem.value)
    return out


def _title(title: Any) -> str | None:
    if isinstance(title, bytes):
        title = title.decode("ascii", "replace")
    return title.strip() if isinstance(title, str) else None


def tls_context(tls: list[str] | None, *, server: bool) -> ssl.SSLContext | None:
    """Mutual TLS (``--tls CERT KEY CA``), or None."""
    if tls is None:
        return None
    cert, key, ca = tls
    return mutual_tls_context(cert, key, ca, server=server)


def run_scp(args: argparse.Namespace) -> int:
    out = open_writer(args.out)
    scp = SCP(args, out)
    if args.recv_chunked:
        _config.STORE_RECV_CHUNKED_DATASET = True

    ae = AE(ae_title=args.ae_title)
    guard_requested_associations(ae)
    ae.require_called_aet = args.require_called_aet
    if args.require_calling_aet:
        ae.require_calling_aet = args.require_calling_aet
    if args.max_pdu is not None:
        ae.maximum_pdu_size = args.max_pdu
    ae.maximum_associations = args.max_associations
    ae.network_timeout = args.network_timeout
    ae.acse_timeout = args.acse_timeout
    ae.dimse_timeout = args.dimse_timeout

    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES[:])
    if args.accept_all_storage:
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES[:])
    else:
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)
    if args.qr_dir:
        for uids in QR_MODELS.values():
            for uid in uids:
                ae.add_supported_context(uid)
        # C-GET: accept the requestor's SCP role for the storage classes;
        # C-MOVE: the sub-association proposes them.
        classes = sorted({i.sop_class_uid for i in scp.instances} | set(qr.STORAGE_CLASSES))
        syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
        for uid in classes:
            ae.add_supported_context(uid, scu_role=True, scp_role=True)
            tss = sorted({i.transfer_syntax for i in scp.instances if i.sop_class_uid == uid})
            ae.add_requested_context(uid, list(dict.fromkeys([*tss, *syntaxes])))
    for uid, scu_role, scp_role in args.role:
        # Already supported abstract syntaxes keep their transfer syntaxes and
        # get the roles; new ones get the default transfer syntaxes.
        ae.add_supported_context(uid, scu_role=scu_role, scp_role=scp_role)

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # AE.make_server() binds and listens in the constructor (socketserver), so
    # READY is printed only once connections can be accepted. We run
    # serve_forever() ourselves (as start_server(block=False) would) to get a
    # short poll interval, so that SIGTERM stops the peer in ~50 ms, not 0.5 s.
    server = ae.make_server(
        (args.host, args.port),
        evt_handlers=scp.handlers(),
        server_class=ThreadedAssociationServer,
        ssl_context=tls_context(args.tls, server=True),
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="AcceptorServer",
        daemon=True,
    )
    thread.start()
    port = server.server_address[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()

    try:
        # The handler runs in this (main) thread: a lock wait is interrupted
        # by the signal, the handler sets the event, and the wait returns.
        stop.wait()
    finally:
        for assoc in ae.active_associations:
            assoc.abort()  # peers see an A-ABORT
        socketserver.BaseServer.shutdown(server)  # stop serve_forever, wait for it
        server.server_close()
        thread.join(timeout=5)
        out.write("shutdown")
        out.close()
    return 0


# --------------------------------------------------------------------------- SCU


def keep_reactor_off_responses(assoc: Any, *, serve_requests: bool = False) -> None:
    """Work around pynetdicom #875 on a requestor: responses go only to the send_*() waiting.

    pynetdicom's association thread takes any complete message off the DIMSE
    queue whenever it is not paused, to serve it as a request. Each send_*()
    pauses it and resumes it when done, but the next send_*() only checks a
    flag the thread sets before it blocks, which still reads "paused" when the
    thread has not yet woken from the previous pause. A response that arrives
    before the thread wakes (a fast SCP answers in well under a millisecond)
    is then taken by it ("Received unexpected C-STORE service message") and
    the send_*() waits for its response until the DIMSE timeout. The SCU
    modes are never asked to serve a request through that thread (C-GET's
    C-STORE sub-operations are handled inside send_c_get()), so it is kept
    from taking messages at all. With ``serve_requests`` (a requestor the
    peer sends requests to, such as an N-EVENT-REPORT) it may take a request
    but never a response. Nothing on the wire changes.
    """
    get_msg, peek_msg = assoc.dimse.get_msg, assoc.dimse.peek_msg

    def guarded(block: bool = False) -> Any:
        if threading.current_thread() is assoc:
            if not serve_requests:
                return None, None
            _cx, msg = peek_msg()
            if msg is None or getattr(msg, "MessageIDBeingRespondedTo", None) is not None:
                return None, None
        return get_msg(block)

    assoc.dimse.get_msg = guarded


def guard_requested_associations(ae: Any) -> None:
    """keep_reactor_off_responses() on every association ``ae`` requests.

    The SCP mode's C-MOVE sends its C-STORE sub-operations on an association
    pynetdicom requests itself (``ae.associate``), from the thread serving
    the C-MOVE: the same race, and the same guard.
    """
    associate = ae.associate

    def guarded(*args: Any, **kwargs: Any) -> Any:
        assoc = associate(*args, **kwargs)
        if assoc.is_established:
            keep_reactor_off_responses(assoc)
        return assoc

    ae.associate = guarded


def run_logged(args: argparse.Namespace, body: Any) -> int:
    """Run an SCU mode's ``body(args, out)``: an exception is logged as
    ``error`` (exit 3), the exit code as ``exit``."""
    out = open_writer(args.out)
    try:
        code = int(body(args, out))
    except Exception as exc:  # report, do not hide
        out.write("error", error=f"{type(exc).__name__}: {exc}")
        code = EXIT_FAILED
    out.write("exit", code=code)
    out.close()
    return code


def requestor_ae(args: argparse.Namespace) -> AE:
    """The AE of an SCU mode: ``--calling`` and the three timeouts."""
    ae = AE(ae_title=args.calling)
    ae.acse_timeout = args.acse_timeout
    ae.dimse_timeout = args.dimse_timeout
    ae.network_timeout = args.network_timeout
    return ae


def run_scu(args: argparse.Namespace) -> int:
    return run_logged(args, _run_scu)


def _run_scu(args: argparse.Namespace, out: EventWriter) -> int:
    ae = requestor_ae(args)
    if args.max_pdu is not None:
        ae.maximum_pdu_size = args.max_pdu

    # Requested contexts: Verification for --echo (or when nothing else is
    # asked), one context per (SOP class, transfer syntax) for --store, and
    # one per --role SOP class not otherwise requested.
    if args.chunked:
        _config.STORE_SEND_CHUNKED_DATASET = True
    paths = list(args.store)
    for folder in args.store_dir:
        paths += sorted(
            os.path.join(root, name) for root, _dirs, names in os.walk(folder) for name in names
        )
    stores = []
    for path in paths:
        head = dcmread(path, stop_before_pixels=True)
        ts = str(head.file_meta.TransferSyntaxUID)
        stores.append((path, str(head.SOPInstanceUID), str(head.SOPClassUID), ts))
    requested: list[tuple[str, list[str] | None]] = []
    seen: set[tuple[str, str | None]] = set()

    def want(uid: str, ts: str | None) -> None:
        if (uid, ts) not in seen:
            seen.add((uid, ts))
            requested.append((uid, [ts] if ts else None))

    if args.echo or not (stores or args.role):
        want(str(Verification), None)
    for _path, _ds, uid, ts in stores:
        want(uid, ts)
    for uid, _scu, _scp in args.role:
        if not any(u == uid for u, _ in seen):
            want(uid, None)
    for uid, tss in requested:
        if tss is None:
            ae.add_requested_context(uid)
        else:
            ae.add_requested_context(uid, tss)

    ext_neg: list[Any] = []
    for uid, scu_role, scp_role in args.role:
        ext_neg.append(build_role(uid, scu_role=bool(scu_role), scp_role=bool(scp_role)))
    if args.user_identity is not None:
        ext_neg.append(args.user_identity)
    if args.async_ops is not None:
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = args.async_ops[0]
        window.maximum_number_operations_performed = args.async_ops[1]
        ext_neg.append(window)

    abort_info: dict[str, Any] = {}

    def on_pdu_recv(event: evt.Event) -> None:
        pdu = event.pdu  # type: ignore[attr-defined]
        if isinstance(pdu, A_ABORT_RQ):
            abort_info.update(source=pdu.source, reason=pdu.reason_diagnostic, by="peer")

    def on_conn_open(event: evt.Event) -> None:
        if nodelay_wanted():
            set_nodelay(event)
        out.write(
            "conn_open",
            address=list(event.address),  # type: ignore[attr-defined]
            tcp_nodelay=get_nodelay(event),
        )

    handlers: list[Any] = [(evt.EVT_PDU_RECV, on_pdu_recv), (evt.EVT_CONN_OPEN, on_conn_open)]

    context = tls_context(args.tls, server=False)
    assoc = ae.associate(
        args.host,
        args.port,
        ae_title=args.called,
        ext_neg=ext_neg or None,
        evt_handlers=handlers,
        max_pdu=args.max_pdu if args.max_pdu is not None else ae.maximum_pdu_size,
        tls_args=None if context is None else (context, args.host),
    )

    if assoc.is_rejected:
        prim = assoc.acceptor.primitive
        out.write(
            "association",
            status="rejected",
            result=getattr(prim, "result", None),
            source=getattr(prim, "result_source", None),
            reason=getattr(prim, "diagnostic", None),
        )
        return EXIT_REJECTED
    if not assoc.is_established:
        out.write(
            "association",
            status="aborted",
            source=abort_info.get("source"),
            reason=abort_info.get("reason"),
            by=abort_info.get("by", "local"),
        )
        return EXIT_ABORTED
    keep_reactor_off_responses(assoc)

    acc = assoc.acceptor
    uid_rsp = acc.user_identity
    out.write(
        "association",
        status="accepted",
        calling_ae=args.calling,
        called_ae=args.called,
        peer_max_pdu=acc.maximum_length,
        peer_implementation_class_uid=str(acc.implementation_class_uid),
        peer_implementation_version_name=acc.implementation_version_name,
        **bytes_fields(
            "user_identity_response", uid_rsp.server_response if uid_rsp is not None else None
        ),
        roles=role_items(acc),
        async_ops=list(acc.asynchronous_operations),
        contexts=[context_dict(cx) for cx in assoc.accepted_contexts],
        rejected_contexts=[
            {
                "context_id": cx.context_id,
                "abstract_syntax": str(cx.abstract_syntax),
                "result": cx.result,
            }
            for cx in assoc.rejected_contexts
        ],
    )

    failed = False
    msg_id = itertools.count(1)

    def status_of(call: Any) -> tuple[int | None, str | None]:
        try:
            status = call()
        except Exception as exc:  # e.g. no accepted context: record, go on, release
            return None, f"{type(exc).__name__}: {exc}"
        return (int(status.Status) if "Status" in status else None), None

    for _ in range(args.echo):
        if not assoc.is_established:
            break
        mid = next(msg_id)
        code, error = status_of(lambda mid=mid: assoc.send_c_echo(msg_id=mid))
        out.write("c_echo", message_id=mid, status=code, **({"error": error} if error else {}))
        failed |= code != 0x0000
    for path, instance_uid, _uid, ts in stores:
        if not assoc.is_established:
            break
        mid = next(msg_id)
        # --chunked: pynetdicom streams the file from disk as it is; otherwise
        # it is decoded here and re-encoded by pynetdicom (one at a time).
        code, error = status_of(
            lambda path=path, mid=mid: assoc.send_c_store(
                path if args.chunked else dcmread(path), msg_id=mid
            )
        )
        out.write(
            "c_store",
            message_id=mid,
            file=str(path),
            sop_instance_uid=instance_uid,
            transfer_syntax=ts,
            status=code,
            **({"error": error} if error else {}),
        )
        failed |= code != 0x0000

    if assoc.is_established:
        assoc.release()
        if assoc.is_released:
            out.write("released")
            return EXIT_FAILED if failed else EXIT_OK
    out.write(
        "aborted",
        source=abort_info.get("source"),
        reason=abort_info.get("reason"),
        by=abort_info.get("by", "local"),
    )
    return EXIT_ABORTED


# --------------------------------------------------------------------------- many SCU


def run_scu_many(args: argparse.Namespace) -> int:
    return run_logged(args, _run_scu_many)


def _run_scu_many(args: argparse.Namespace, out: EventWriter) -> int:
    """``--associations K`` threads at once, each storing every ``--store``
    file (decoded, as pynetdicom's send_c_store does) on an association of
    its own, then releasing it; ``--rounds R`` times. One ``round`` event a
    round: the instances stored so far and how many stores failed."""
    ae = requestor_ae(args)
    datasets = [dcmread(path) for path in args.store]
    for uid, ts in sorted(
        {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    ):
        ae.add_requested_context(uid, [ts])
    handlers: list[Any] = []
    if nodelay_wanted():
        handlers.append((evt.EVT_CONN_OPEN, set_nodelay))
    lock = threading.Lock()
    counts = {"stored": 0, "failed": 0}

    def one() -> None:
        stored = 0
        try:
            assoc = ae.associate(args.host, args.port, ae_title=args.called, evt_handlers=handlers)
            if assoc.is_established:
                keep_reactor_off_responses(assoc)
                for ds in datasets:
                    status = assoc.send_c_store(ds)
                    if "Status" in status and status.Status == 0x0000:
                        stored += 1
                assoc.release()
        finally:
            with lock:
                counts["stored"] += stored
                counts["failed"] += len(datasets) - stored  # refused, or never sent

    for _round in range(args.rounds):
        threads = [threading.Thread(target=one) for _ in range(args.associations)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        out.write("round", instances=counts["stored"], failed=counts["failed"])
    return EXIT_FAILED if counts["failed"] else EXIT_OK


# --------------------------------------------------------------------------- Q/R SCU


def parse_key(text: str) -> tuple[str, str]:
    key, _sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"-k wants KEYWORD[=VALUE], got {text!r}")
    return key, value


def run_qrscu(args: argparse.Namespace) -> int:
    return run_logged(args, _run_qrscu)


def _run_qrscu(args: argparse.Namespace, out: EventWriter) -> int:
    model = QR_MODELS[args.model][QR_SERVICE_INDEX[args.service]]
    ae = requestor_ae(args)
    ae.add_requested_context(model)
    ae.add_requested_context(Verification)
    ext_neg: list[Any] = []
    if args.service == "get":
        for uid in qr.STORAGE_CLASSES:
            ae.add_requested_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
            ext_neg.append(build_role(uid, scp_role=True))

    ident = qr.query(args.level, **dict(args.key))
    stored = itertools.count(1)

    def on_store(event: evt.Event) -> int:
        req = event.request
        path = None
        if args.store_dir:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = req.AffectedSOPClassUID
            meta.MediaStorageSOPInstanceUID = req.AffectedSOPInstanceUID
            meta.TransferSyntaxUID = event.context.transfer_syntax
            meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
            path = os.path.join(
                args.store_dir, f"{next(stored):06d}_{req.AffectedSOPInstanceUID}.dcm"
            )
            with open(path, "wb") as f:
                f.write(b"\x00" * 128 + b"DICM")
                write_file_meta_info(f, meta, enforce_standard=True)
                f.write(req.DataSet.getbuffer())
        out.write(
            "c_store",
            message_id=req.MessageID,
            sop_class_uid=str(req.AffectedSOPClassUID),
            sop_instance_uid=str(req.AffectedSOPInstanceUID),
            transfer_syntax=str(event.context.transfer_syntax),
            move_originator_ae=getattr(req, "MoveOriginatorApplicationEntityTitle", None),
            move_originator_message_id=getattr(req, "MoveOriginatorMessageID", None),
            stored=path,
        )
        return 0x0000

    handlers: list[Any] = [(evt.EVT_C_STORE, on_store)]
    if nodelay_wanted():
        handlers.append((evt.EVT_CONN_OPEN, set_nodelay))
    assoc = ae.associate(
        args.host, args.port, ae_title=args.called, ext_neg=ext_neg or None, evt_handlers=handlers
    )
    if not assoc.is_established:
        out.write("association", status="rejected" if assoc.is_rejected else "aborted")
        return EXIT_REJECTED if assoc.is_rejected else EXIT_ABORTED
    keep_reactor_off_responses(assoc)
    out.write(
        "association",
        status="accepted",
        contexts=[context_dict(cx) for cx in assoc.accepted_contexts],
    )

    msg_id = 7
    if args.service == "find":
        responses = assoc.send_c_find(ident, model, msg_id=msg_id)
    elif args.service == "get":
        responses = assoc.send_c_get(ident, model, msg_id=msg_id)
    else:
        responses = assoc.send_c_move(ident, args.move_dest, model, msg_id=msg_id)
    final = None
    for count, (status, identifier) in enumerate(responses, 1):
        code = int(status.Status) if "Status" in status else None
        out.write(
            f"{args.service}_rsp",
            index=count - 1,
            status=code,
            remaining=status.get("NumberOfRemainingSuboperations"),
            completed=status.get("NumberOfCompletedSuboperations"),
            failed=status.get("NumberOfFailedSuboperations"),
            warning=status.get("NumberOfWarningSuboperations"),
            identifier=identifier_dict(identifier),
        )
        final = code
        if code is None:
            break
        pending = code in (0xFF00, 0xFF01)
        if args.cancel_after is not None and count == args.cancel_after and pending:
            assoc.send_c_cancel(msg_id, query_model=model)
            out.write("cancel_sent", after=count, message_id=msg_id)
    if args.echo_after and assoc.is_established:
        rsp = assoc.send_c_echo(msg_id=msg_id + 1)
        out.write("c_echo", status=int(rsp.Status) if "Status" in rsp else None)
    if assoc.is_established:
        assoc.release()
        out.write("released")
    else:
        out.write("aborted")
        return EXIT_ABORTED
    ok = {0x0000, 0xFE00} if args.cancel_after is not None else {0x0000}
    return EXIT_OK if final in ok else EXIT_FAILED


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    def tls_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--tls",
            nargs=3,
            metavar=("CERT", "KEY", "CA"),
            help="TLS with this certificate and key; the peer's must be signed by CA",
        )

    def timeouts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--acse-timeout", type=float, default=30.0)
        sp.add_argument("--dimse-timeout", type=float, default=30.0)
        sp.add_argument("--network-timeout", type=float, default=60.0)

    scp = sub.add_parser("scp", help="serve Verification and Storage")
    scp.add_argument("--host", default="127.0.0.1")
    scp.add_argument("--port", type=int, default=0, help="0 picks a free port")
    scp.add_argument("--ae-title", default="PYNETDICOM")
    scp.add_argument("--require-called-aet", action="store_true")
    scp.add_argument("--require-calling-aet", action="append", default=[], metavar="AET")
    scp.add_argument(
        "--user-identity-response",
        metavar="TEXT",
        help="EVT_USER_ID returns (True, TEXT utf-8) (sent for types 3-5 when asked)",
    )
    scp.add_argument("--reject-user", metavar="PRIMARY", help="EVT_USER_ID fails for this user")
    scp.add_argument(
        "--role",
        type=parse_role,
        action="append",
        default=[],
        metavar="SOPUID:SCU:SCP",
        help="add_supported_context(scu_role, scp_role)",
    )
    scp.add_argument(
        "--accept-all-storage",
        action="store_true",
        help="every storage class, every transfer syntax, unknown classes too",
    )
    scp.add_argument(
        "--output-dir",
        metavar="DIR",
        help="write received instances to DIR as Part 10 files (data set bytes as received)",
    )
    scp.add_argument("--max-pdu", type=int, default=None)
    scp.add_argument("--max-associations", type=int, default=64)
    scp.add_argument("--out", metavar="FILE", help="JSON lines (default stdout after READY)")
    scp.add_argument(
        "--qr-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="serve C-FIND/C-GET/C-MOVE over the DICOM files under DIR",
    )
    scp.add_argument(
        "--move-dest",
        type=parse_dest,
        action="append",
        default=[],
        metavar="AET=HOST:PORT",
        help="a C-MOVE destination",
    )
    scp.add_argument(
        "--hold-after",
        type=int,
        default=None,
        metavar="N",
        help="Q/R handlers: after N responses wait for a C-CANCEL (up to --hold-timeout)",
    )
    scp.add_argument("--hold-timeout", type=float, default=10.0)
    scp.add_argument(
        "--recv-chunked",
        action="store_true",
        help="receive C-STORE data sets into files (STORE_RECV_CHUNKED_DATASET)",
    )
    tls_option(scp)
    timeouts(scp)

    scu = sub.add_parser("scu", help="associate, echo and/or store, release")
    scu.add_argument("--host", default="127.0.0.1")
    scu.add_argument("--port", type=int, required=True)
    scu.add_argument("--called", default="ANY-SCP")
    scu.add_argument("--calling", default="PYNETDICOM_SCU")
    scu.add_argument("--echo", type=int, default=0, metavar="N")
    scu.add_argument(
        "--user-identity",
        type=parse_user_identity,
        default=None,
        metavar="TYPE:PRIMARY[:SECONDARY][:positive]",
    )
    scu.add_argument(
        "--role", type=parse_role, action="append", default=[], metavar="SOPUID:SCU:SCP"
    )
    scu.add_argument(
        "--async-ops",
        nargs=2,
        type=int,
        metavar=("INVOKED", "PERFORMED"),
        help="propose an Asynchronous Operations Window",
    )
    scu.add_argument("--store", action="append", default=[], metavar="FILE")
    scu.add_argument(
        "--store-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="send every file under DIR (recursively, sorted), after the --store files",
    )
    scu.add_argument(
        "--chunked",
        action="store_true",
        help="send each file from disk as it is instead of decoding and re-encoding it",
    )
    scu.add_argument("--max-pdu", type=int, default=None)
    scu.add_argument("--out", metavar="FILE")
    tls_option(scu)
    timeouts(scu)

    qrscu = sub.add_parser("qrscu", help="associate, one C-FIND/C-GET/C-MOVE, release")
    qrscu.add_argument("--host", default="127.0.0.1")
    qrscu.add_argument("--port", type=int, required=True)
    many = sub.add_parser(
        "scu-many", help="K associations at once, each storing every file; R rounds"
    )
    many.add_argument("--host", default="127.0.0.1")
    many.add_argument("--port", type=int, required=True)
    many.add_argument("--called", default="ANY-SCP")
    many.add_argument("--calling", default="PYNETDICOM_SCU")
    many.add_argument("--store", action="append", default=[], metavar="FILE", required=True)
    many.add_argument("--associations", type=int, default=1, metavar="K")
    many.add_argument("--rounds", type=int, default=1, metavar="R")
    many.add_argument("--out", metavar="FILE")
    timeouts(many)

    qrscu.add_argument("--called", default="ANY-SCP")
    qrscu.add_argument("--calling", default="PYNETDICOM_QR")
    qrscu.add_argument("--service", choices=["find", "get", "move"], required=True)
    qrscu.add_argument("--model", choices=sorted(QR_MODELS), default="study")
    qrscu.add_argument("--level", default="STUDY")
    qrscu.add_argument(
        "-k", "--key", type=parse_key, action="append", default=[], metavar="KEYWORD[=VALUE]"
    )
    qrscu.add_argument("--move-dest", default="", metavar="AET")
    qrscu.add_argument("--cancel-after", type=int, default=None, metavar="N")
    qrscu.add_argument("--echo-after", action="store_true", help="C-ECHO after the operation")
    qrscu.add_argument("--store-dir", metavar="DIR", help="C-GET: write received instances")
    qrscu.add_argument("--out", metavar="FILE")
    timeouts(qrscu)
    return p


def parse_dest(text: str) -> tuple[str, tuple[str, int]]:
    aet, sep, addr = text.partition("=")
    host, sep2, port = addr.rpartition(":")
    if not (aet and sep and sep2 and host and port.isdigit()):
        raise argparse.ArgumentTypeError(f"--move-dest wants AET=HOST:PORT, got {text!r}")
    return aet, (host, int(port))


def main(argv: list[str] | None = None) -> int:
    # the interop harness sends SIGUSR1 to a peer that overran its timeout,
    # before killing it: every thread's stack goes to stderr, into the failure
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # pynetdicom's warnings and errors (its logger has only a NullHandler)
    # go to stderr, which the harness shows when a test fails
    logging.basicConfig(level=logging.WARNING, format="pynetdicom peer %(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.mode == "scp":
        return run_scp(args)
    if args.mode == "qrscu":
        return run_qrscu(args)
    if args.mode == "scu-many":
        return run_scu_many(args)
    return run_scu(args)


if __name__ == "__main__":
    sys.exit(main())
