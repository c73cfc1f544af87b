#!/usr/bin/env python3
"""A pynetdicom 3 DIMSE-N peer for aiodicom's interop tests, run as a subprocess.

    python tests/peers/pynetdicom_nservice_peer.py scp --port 0 --out events.jsonl
    python tests/peers/pynetdicom_nservice_peer.py scu --port 11112 --plan plan.json

``scp`` serves N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE and N-DELETE
for Modality Performed Procedure Step, Storage Commitment Push Model and the
Basic Grayscale Print Management Meta SOP Class (and Basic Film Session and
Printer on their own), prints ``READY <port>`` once it listens and logs one
``n_request`` JSON line per request it gets. Its answers depend on the
requested SOP Instance UID's last component:

* ``.112``: 0x0112 (No such SOP Instance), no data set;
* ``.666``: the handler raises (pynetdicom answers 0x0110);
* ``.107``: 0x0107 (warning, attribute list error) naming (0010,0010), with
  the data set it would send on success;
* anything else: success. N-GET answers PatientName "Peer^N", PatientID
  "NPEER" and PerformedProcedureStepStatus "IN PROGRESS" (those asked for,
  or all); N-SET and N-CREATE echo their data set; an N-CREATE without a SOP
  Instance UID gets ``1.2.826.0.1.3680043.9.9999.30.<n>``; N-ACTION answers
  an Action Reply with the request's TransactionUID; N-EVENT-REPORT an Event
  Reply with PatientID "EVENT-ACK"; N-DELETE the status alone.

With ``--report-after-action``, a Storage Commitment N-ACTION is followed by
an N-EVENT-REPORT (event type 1, the action's TransactionUID and Referenced
SOP Sequence) sent to the requestor on the same association once the N-ACTION
response is out; its status is logged as ``report_sent``.

``scu`` associates, proposing a context for each SOP class the plan uses,
runs the plan (a JSON list of operations) in order and logs one ``n_response``
line per operation: its status elements and data set. Operations:
``{"op": "n_get"|"n_set"|"n_action"|"n_create"|"n_delete"|"n_event_report",
"class_uid", "instance_uid", "meta_uid", "tags", "dataset", "action_type",
"event_type"}`` and ``{"op": "wait_report", "timeout": s}``, which waits for
an N-EVENT-REPORT from the SCP (logged as ``n_event_report_received``, and
answered with 0x0000 and an Event Reply with the same TransactionUID). Data sets
are ``{keyword: value}``, a sequence a list of such objects.

Exit codes as pynetdicom_peer.py: 0 all fine, 1 rejected, 2 aborted, 3 an
operation raised. This script never imports aiodicom.
"""

from __future__ import annotations

import argparse
import faulthandler
import itertools
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pynetdicom_peer import (  # the shared harness pieces; no aiodicom in them
    EXIT_ABORTED,
    EXIT_OK,
    EXIT_REJECTED,
    identifier_dict,
    keep_reactor_off_responses,
    nodelay_wanted,
    open_writer,
    run_logged,
    set_nodelay,
)

MPPS = "1.2.840.10008.3.1.2.3.3"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
PRINT_META = "1.2.840.10008.5.1.1.9"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
PRINTER = "1.2.840.10008.5.1.1.16"
ASSIGNED_ROOT = "1.2.826.0.1.3680043.9.9999.30."


def to_dataset(value: dict[str, Any] | None) -> Dataset | None:
    if value is None:
        return None
    ds = Dataset()
    for keyword, item in value.items():
        if isinstance(item, list) and item and isinstance(item[0], dict):
            setattr(ds, keyword, [to_dataset(i) for i in item])
        else:
            setattr(ds, keyword, item)
    return ds


def status_dict(status: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in status:
        value = elem.value
        if elem.VR == "AT":
            values = value if isinstance(value, list) else [value]
            value = [f"{int(v):08X}" for v in values]
        elif elem.VR in ("US", "UL"):
            value = int(value)
        else:
            value = str(value)
        out[elem.keyword] = value
    return out


def request_dict(event: evt.Event) -> dict[str, Any]:
    req = event.request
    name = type(req).__name__
    out: dict[str, Any] = {
        "kind": event.event.name,
        "message_id": req.MessageID,
        "context": str(event.context.abstract_syntax),
    }
    for keyword in (
        "AffectedSOPClassUID",
        "AffectedSOPInstanceUID",
        "RequestedSOPClassUID",
        "RequestedSOPInstanceUID",
        "ActionTypeID",
        "EventTypeID",
    ):
        value = getattr(req, keyword, None)
        if value is not None:
            out[keyword] = value if isinstance(value, int) else str(value)
    if name == "N_GET":
        out["tags"] = [f"{int(t):08X}" for t in event.attribute_identifiers]
    data = event_data(event)
    if data is not None:
        out["dataset"] = identifier_dict(data)
    return out


#: The request parameter holding each N request's data set, and the Event
#: property that decodes it.
_EVENT_DATA = {
    "N_SET": ("ModificationList", "modification_list"),
    "N_CREATE": ("AttributeList", "attribute_list"),
    "N_ACTION": ("ActionInformation", "action_information"),
    "N_EVENT_REPORT": ("EventInformation", "event_information"),
}


def event_data(event: evt.Event) -> Dataset | None:
    """The data set of an N request, decoded; None if it has none."""
    names = _EVENT_DATA.get(type(event.request).__name__)
    if names is None or getattr(event.request, names[0], None) is None:
        return None
    return getattr(event, names[1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- SCP


class Performer:
    def __init__(self, args: argparse.Namespace, out: Any) -> None:
        self.args = args
        self.out = out
        self.assigned = itertools.count(1)

    def _special(self, instance: str | None, reply: Dataset | None) -> Any:
        last = (instance or "").rsplit(".", 1)[-1]
        if last == "112":
            return 0x0112, None
        if last == "666":
            raise RuntimeError("the peer's handler fails on purpose")
        if last == "107":
            status = Dataset()
            status.Status = 0x0107
            status.AttributeIdentifierList = [0x00100010]
            return status, reply
        return None

    def _log(self, event: evt.Event) -> dict[str, Any]:
        info = request_dict(event)
        self.out.write("n_request", **info)
        return info

    def on_get(self, event: evt.Event) -> Any:
        self._log(event)
        ds = Dataset()
        ds.PatientName = "Peer^N"
        ds.PatientID = "NPEER"
        ds.PerformedProcedureStepStatus = "IN PROGRESS"
        wanted = event.attribute_identifiers
        if wanted:
            kept = Dataset()
            for tag in wanted:
                if tag in ds:
                    kept[tag] = ds[tag]
            ds = kept
        special = self._special(str(event.request.RequestedSOPInstanceUID), ds)
        return special or (0x0000, ds)

    def on_set(self, event: evt.Event) -> Any:
        self._log(event)
        ds = event.modification_list
        return self._special(str(event.request.RequestedSOPInstanceUID), ds) or (0x0000, ds)

    def on_create(self, event: evt.Event) -> Any:
        self._log(event)
        instance = event.request.AffectedSOPInstanceUID
        ds = event_data(event) or Dataset()
        special = self._special(str(instance) if instance else None, ds)
        if special:
            return special
        if instance is None:
            ds.AffectedSOPInstanceUID = f"{ASSIGNED_ROOT}{next(self.assigned)}"
        return 0x0000, ds

    def on_action(self, event: evt.Event) -> Any:
        self._log(event)
        req = event.request
        info = event_data(event)
        special = self._special(str(req.RequestedSOPInstanceUID), None)
        if special:
            return special
        reply = Dataset()
        if info is not None and "TransactionUID" in info:
            reply.TransactionUID = info.TransactionUID
        if self.args.report_after_action and str(req.RequestedSOPClassUID) == COMMITMENT:
            threading.Thread(target=self._report, args=(event.assoc, info), daemon=True).start()
        return 0x0000, reply

    def _report(self, assoc: Any, info: Dataset | None) -> None:
        # From another thread: send_n_event_report() waits for the reactor to
        # pause, which it does once the N-ACTION response is sent.
        result = Dataset()
        if info is not None:
            result.TransactionUID = info.TransactionUID
            result.ReferencedSOPSequence = info.ReferencedSOPSequence
        try:
            status, reply = assoc.send_n_event_report(
                result, 1, COMMITMENT, COMMITMENT_INSTANCE, msg_id=4242
            )
        except Exception as exc:  # report, do not hide
            self.out.write("report_sent", error=f"{type(exc).__name__}: {exc}")
            return
        self.out.write("report_sent", status=status_dict(status), reply=identifier_dict(reply))

    def on_event_report(self, event: evt.Event) -> Any:
        self._log(event)
        reply = Dataset()
        reply.PatientID = "EVENT-ACK"
        special = self._special(str(event.request.AffectedSOPInstanceUID), reply)
        return special or (0x0000, reply)

    def on_delete(self, event: evt.Event) -> Any:
        self._log(event)
        special = self._special(str(event.request.RequestedSOPInstanceUID), None)
        return special[0] if special else 0x0000

    def handlers(self) -> list[Any]:
        out: list[Any] = [
            (evt.EVT_N_GET, self.on_get),
            (evt.EVT_N_SET, self.on_set),
            (evt.EVT_N_CREATE, self.on_create),
            (evt.EVT_N_ACTION, self.on_action),
            (evt.EVT_N_EVENT_REPORT, self.on_event_report),
            (evt.EVT_N_DELETE, self.on_delete),
        ]
        if nodelay_wanted():
            out.append((evt.EVT_CONN_OPEN, set_nodelay))
        return out


def run_scp(args: argparse.Namespace) -> int:
    out = open_writer(args.out)
    performer = Performer(args, out)
    ae = AE(ae_title=args.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in (MPPS, COMMITMENT, PRINT_META, FILM_SESSION, PRINTER):
        ae.add_supported_context(uid)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = ae.start_server((args.host, args.port), block=False, evt_handlers=performer.handlers())
    sys.stdout.write(f"READY {server.server_address[1]}\n")
    sys.stdout.flush()
    try:
        stop.wait()
    finally:
        server.shutdown()
        out.write("shutdown")
        out.close()
    return 0


# --------------------------------------------------------------------------- SCU


def run_scu(args: argparse.Namespace) -> int:
    return run_logged(args, _run_scu)


def _run_scu(args: argparse.Namespace, out: Any) -> int:
    plan = json.loads(Path(args.plan).read_text())
    ae = AE(ae_title=args.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for uid in dict.fromkeys(
        op.get("meta_uid") or op["class_uid"] for op in plan if "class_uid" in op
    ):
        ae.add_requested_context(uid)
    reports: list[dict[str, Any]] = []
    reported = threading.Condition()

    def on_report(event: evt.Event) -> Any:
        info = request_dict(event)
        out.write("n_event_report_received", **info)
        reply = Dataset()
        data = event_data(event)
        if data is not None and "TransactionUID" in data:
            reply.TransactionUID = data.TransactionUID
        with reported:
            reports.append(info)
            reported.notify_all()
        return 0x0000, reply

    handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, on_report)]
    if nodelay_wanted():
        handlers.append((evt.EVT_CONN_OPEN, set_nodelay))
    assoc = ae.associate(args.host, args.port, ae_title=args.called, evt_handlers=handlers)
    if assoc.is_rejected:
        out.write("association", status="rejected")
        return EXIT_REJECTED
    if not assoc.is_established:
        out.write("association", status="aborted")
        return EXIT_ABORTED
    keep_reactor_off_responses(assoc, serve_requests=True)
    out.write("association", status="accepted")
    # pynetdicom does not return an N-CREATE response's Affected SOP Instance
    # UID: it is read off the response as it arrives.
    responses: list[Any] = []
    assoc.bind(evt.EVT_DIMSE_RECV, lambda event: responses.append(event.message))

    waited = 0
    for index, op in enumerate(plan):
        kind = op["op"]
        if kind == "wait_report":
            seen = waited
            with reported:
                reported.wait_for(
                    lambda seen=seen: len(reports) > seen, timeout=op.get("timeout", 10)
                )
            waited = len(reports)
            continue
        cls, inst, meta = op["class_uid"], op.get("instance_uid"), op.get("meta_uid")
        ds = to_dataset(op.get("dataset"))
        mid = index + 1
        if kind == "n_get":
            status, reply = assoc.send_n_get(op.get("tags") or [], cls, inst, mid, meta)
        elif kind == "n_set":
            status, reply = assoc.send_n_set(ds, cls, inst, mid, meta)
        elif kind == "n_action":
            status, reply = assoc.send_n_action(ds, op["action_type"], cls, inst, mid, meta)
        elif kind == "n_create":
            status, reply = assoc.send_n_create(ds, cls, inst, mid, meta)
        elif kind == "n_event_report":
            status, reply = assoc.send_n_event_report(ds, op["event_type"], cls, inst, mid, meta)
        elif kind == "n_delete":
            status, reply = assoc.send_n_delete(cls, inst, mid, meta), None
        else:
            raise ValueError(f"unknown operation {kind!r}")
        fields = status_dict(status)
        # pynetdicom's status keeps only some of the response's elements (not
        # the Affected SOP Instance UID of N-CREATE, nor the type IDs): the
        # command set as it arrived is logged as well.
        answered = [
            m for m in responses if getattr(m.command_set, "MessageIDBeingRespondedTo", None) == mid
        ]
        command = status_dict(answered[-1].command_set) if answered else None
        out.write(
            "n_response",
            op=kind,
            message_id=mid,
            status=fields,
            command=command,
            reply=identifier_dict(reply),
        )
    if assoc.is_established:
        assoc.release()
        out.write("released")
        return EXIT_OK
    out.write("aborted")
    return EXIT_ABORTED


def main(argv: list[str] | None = None) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    scp = sub.add_parser("scp")
    scp.add_argument("--host", default="127.0.0.1")
    scp.add_argument("--port", type=int, default=0)
    scp.add_argument("--ae-title", default="PYN_NSCP")
    scp.add_argument("--out")
    scp.add_argument("--report-after-action", action="store_true")
    scu = sub.add_parser("scu")
    scu.add_argument("--host", default="127.0.0.1")
    scu.add_argument("--port", type=int, required=True)
    scu.add_argument("--calling", default="PYN_NSCU")
    scu.add_argument("--called", default="ANY-SCP")
    scu.add_argument("--plan", required=True)
    scu.add_argument("--out")
    args = p.parse_args(argv)
    return run_scp(args) if args.mode == "scp" else run_scu(args)


if __name__ == "__main__":
    sys.exit(main())
