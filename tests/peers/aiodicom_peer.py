#!/usr/bin/env python3
"""aiodicom as a separate process, for interop tests that measure its memory.

    python tests/peers/aiodicom_peer.py scp --port 0 --output-dir DIR --out events.jsonl
    python tests/peers/aiodicom_peer.py scu --port 11112 --called STORESCP --store FILE ...

Both modes write one JSON object per line (to ``--out``, or to stdout), each
with the process's memory so far, in KiB: ``rss_peak_kib``
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and, on Linux, ``vm_hwm_kib``
and ``vm_rss_kib`` (VmHWM, VmRSS of /proc/self/status). Measure with the
latter: on Linux ``ru_maxrss`` is at least the RSS the *parent* had when it
forked this process (the kernel carries the old memory's high-water mark over
exec), so under a 100 MB pytest it hides anything below that. At the baseline
event (``ready`` / ``start``) the VmHWM high-water mark is reset to the current
RSS (``5`` written to /proc/self/clear_refs; ``hwm_reset`` says if it worked),
so ``max(vm_hwm_kib) - vm_rss_kib at the baseline`` is what the transfer added.

``scp``: serves Verification and Storage (every storage SOP class in
``sop_class.AllStoragePresentationContexts``, plus any ``--sop-class``, with
every transfer syntax of ``--transfer-syntax`` or a built-in list including the
compressed ones) on 127.0.0.1. Once listening it writes a ``ready`` event and
prints ``READY <port>`` (flushed) on stdout, then serves until SIGTERM/SIGINT
and exits 0 after a ``shutdown`` event. With ``--output-dir DIR`` every
received instance is written to DIR as ``<seq>_<SOP Instance UID>.dcm``: a
spooled one (``event.dataset_path``, the data set passed
``--spool-threshold`` bytes) is moved there as it is; a small one is written as
preamble + ``event.file_meta`` + ``event.encoded_dataset()``. The handler
never decodes the data set, so memory stays independent of its size. Events:
``ready``, ``c_store`` (per instance: uids, transfer syntax, spooled, stored
path, size), ``released`` / ``aborted``, ``shutdown``. With ``--get-file FILE``
(repeatable) it also answers any C-GET with those files, in order, sent by
path (streamed from disk), and writes a ``c_get`` event after the last.

``scu``: associates with ``--host``:``--port`` proposing one context per (SOP
class, transfer syntax) of the ``--store`` files, sends each file by path
(streamed from disk by aiodicom), releases. Events: ``start`` (before the
association), ``association``, ``c_store`` (per file: status), ``released``,
``error``, ``exit``. Exit 0 if every store succeeded, 2 if the association
failed, 3 if a store failed. With ``--associations K`` and/or ``--rounds R``:
R rounds of K associations at once, each sending every file, with a
``round`` event (instances sent so far) after each instead of the
per-association and per-file events.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import threading
import time
from typing import Any, TextIO

import anyio
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from aiodicom import AE, evt, sop_class

EXIT_OK = 0
EXIT_ABORTED = 2
EXIT_FAILED = 3

ALL_SYNTAXES = [
    str(ts)
    for ts in (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        RLELossless,
    )
]


def memory() -> dict[str, int | None]:
    """ru_maxrss, and VmHWM / VmRSS from /proc/self/status (None elsewhere), KiB."""
    out: dict[str, int | None] = {
        "rss_peak_kib": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "vm_hwm_kib": None,
        "vm_rss_kib": None,
    }
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key = "vm_hwm_kib" if line.startswith("VmHWM") else "vm_rss_kib"
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


class EventWriter:
    """Thread-safe JSON-lines writer; every line flushed at once, with the peak RSS."""

    def __init__(self, stream: TextIO, *, close: bool) -> None:
        self._stream = stream
        self._close = close
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        record = {"event": event, **fields, **memory(), "time": time.time()}
        line = json.dumps(record, default=str)
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


# --------------------------------------------------------------------------- SCP


def _write_part10(path: str, meta: Any, data: bytes) -> None:
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, meta, enforce_standard=True)
        f.write(data)
    os.replace(tmp, path)


async def run_scp(args: argparse.Namespace) -> int:
    out = open_writer(args.out)
    ae = AE(ae_title=args.ae_title)
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    if args.max_pdu is not None:
        ae.maximum_pdu_size = args.max_pdu
    if args.spool_threshold is not None:
        ae.spool_threshold = args.spool_threshold
    syntaxes = args.transfer_syntax or ALL_SYNTAXES
    ae.add_supported_context(sop_class.Verification)
    classes = [str(cx.abstract_syntax) for cx in sop_class.AllStoragePresentationContexts]
    # --get-file: the peer's C-STORE sub-operations need the SCP role on them.
    roles = {"scu_role": True, "scp_role": True} if args.get_file else {}
    for uid in dict.fromkeys([*classes, *args.sop_class]):
        ae.add_supported_context(uid, syntaxes, **roles)
    if args.get_file:
        ae.add_supported_context(sop_class.StudyRootQueryRetrieveInformationModelGet)
        ae.add_supported_context(sop_class.PatientRootQueryRetrieveInformationModelGet)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)

    seq = 0

    async def on_store(event: evt.Event) -> int:
        nonlocal seq
        seq += 1
        req = event.request
        uid = str(req.AffectedSOPInstanceUID)
        spooled = event.dataset_path is not None
        stored = None
        size = None
        if args.output_dir:
            stored = os.path.join(args.output_dir, f"{seq:06d}_{uid}.dcm")
            if event.dataset_path is not None:
                await anyio.to_thread.run_sync(os.replace, event.dataset_path, stored)
            else:
                data = event.encoded_dataset()
                await anyio.to_thread.run_sync(_write_part10, stored, event.file_meta, data)
            size = os.path.getsize(stored)
        assert event.context is not None
        out.write(
            "c_store",
            message_id=event.message_id,
            sop_class_uid=str(req.AffectedSOPClassUID),
            sop_instance_uid=uid,
            transfer_syntax=str(event.context.transfer_syntax),
            spooled=spooled,
            stored=stored,
            file_size=size,
        )
        return 0x0000

    async def on_get(event: evt.Event) -> Any:
        yield len(args.get_file)
        for path in args.get_file:
            yield 0xFF00, path
        out.write("c_get", sent=len(args.get_file), cancelled=event.is_cancelled)

    handlers = [
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_C_GET, on_get),
        (evt.EVT_RELEASED, lambda e: out.write("released")),
        (evt.EVT_ABORTED, lambda e: out.write("aborted")),
    ]
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with ae.start_server((args.host, args.port), evt_handlers=handlers) as server:
            out.write("ready", port=server.port, hwm_reset=reset_peak())
            sys.stdout.write(f"READY {server.port}\n")
            sys.stdout.flush()
            async for _signum in signals:
                break
    out.write("shutdown")
    out.close()
    return EXIT_OK


# --------------------------------------------------------------------------- SCU


async def run_scu(args: argparse.Namespace) -> int:
    out = open_writer(args.out)
    try:
        with anyio.fail_after(args.timeout * 10):
            code = await _run_scu(args, out)
    except Exception as exc:  # report, do not hide
        out.write("error", error=f"{type(exc).__name__}: {exc}")
        code = EXIT_ABORTED
    out.write("exit", code=code)
    out.close()
    return code


async def _run_scu(args: argparse.Namespace, out: EventWriter) -> int:
    ae = AE(ae_title=args.calling)
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    if args.max_pdu is not None:
        ae.maximum_pdu_size = args.max_pdu
    files = []
    seen: set[tuple[str, str]] = set()
    for path in args.store:
        head = dcmread(path, stop_before_pixels=True)
        key = (str(head.SOPClassUID), str(head.file_meta.TransferSyntaxUID))
        files.append((path, str(head.SOPInstanceUID), key[1]))
        if key not in seen:
            seen.add(key)
            ae.add_requested_context(key[0], [key[1]])
    if not files:
        ae.add_requested_context(sop_class.Verification)
    out.write("start", files=len(files), hwm_reset=reset_peak())
    if args.associations > 1 or args.rounds > 1:
        return await _run_scu_many(args, ae, [path for path, _, _ in files], out)
    failed = False
    async with ae.associate(
        args.host, args.port, ae_title=args.called, max_pdu=args.max_pdu
    ) as assoc:
        out.write(
            "association",
            status="accepted",
            peer_max_pdu=assoc.acceptor.maximum_length,
            contexts=[
                [str(cx.abstract_syntax), str(cx.transfer_syntax[0])]
                for cx in assoc.accepted_contexts
            ],
        )
        for path, uid, ts in files:
            started = time.monotonic()
            rsp = await assoc.send_c_store(path)
            status = int(rsp.Status)
            failed |= status != 0
            out.write(
                "c_store",
                file=path,
                sop_instance_uid=uid,
                transfer_syntax=ts,
                status=status,
                seconds=round(time.monotonic() - started, 3),
            )
    out.write("released")
    return EXIT_FAILED if failed else EXIT_OK


async def _run_scu_many(
    args: argparse.Namespace, ae: AE, paths: list[str], out: EventWriter
) -> int:
    """``--rounds`` times: ``--associations`` associations at once, each
    sending every file and releasing; a ``round`` event after each (its
    memory is the process's after that many instances)."""
    failed = 0
    sent = 0

    async def one() -> None:
        nonlocal failed, sent
        async with ae.associate(
            args.host, args.port, ae_title=args.called, max_pdu=args.max_pdu
        ) as assoc:
            for path in paths:
                rsp = await assoc.send_c_store(path)
                sent += 1
                failed += int(rsp.Status) != 0

    for index in range(args.rounds):
        async with anyio.create_task_group() as tg:
            for _ in range(args.associations):
                tg.start_soon(one)
        out.write("round", index=index, instances=sent, failed=failed)
    return EXIT_FAILED if failed else EXIT_OK


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    scp = sub.add_parser("scp", help="serve Verification and Storage")
    scp.add_argument("--host", default="127.0.0.1")
    scp.add_argument("--port", type=int, default=0, help="0 picks a free port")
    scp.add_argument("--ae-title", default="AIODICOM")
    scp.add_argument("--output-dir", metavar="DIR")
    scp.add_argument("--spool-threshold", type=int, default=None, metavar="BYTES")
    scp.add_argument("--sop-class", action="append", default=[], metavar="UID")
    scp.add_argument("--transfer-syntax", action="append", default=[], metavar="UID")
    scp.add_argument("--max-pdu", type=int, default=None)
    scp.add_argument("--timeout", type=float, default=60.0, help="ACSE/DIMSE/network timeouts")
    scp.add_argument("--out", metavar="FILE", help="JSON lines (default stdout)")
    scp.add_argument(
        "--get-file",
        action="append",
        default=[],
        metavar="FILE",
        help="answer any C-GET (Study or Patient Root) with these files, in order",
    )

    scu = sub.add_parser("scu", help="associate, store files, release")
    scu.add_argument("--host", default="127.0.0.1")
    scu.add_argument("--port", type=int, required=True)
    scu.add_argument("--called", default="ANY-SCP")
    scu.add_argument("--calling", default="AIODICOM_SCU")
    scu.add_argument("--store", action="append", default=[], metavar="FILE")
    scu.add_argument("--max-pdu", type=int, default=None)
    scu.add_argument(
        "--timeout", type=float, default=60.0, help="ACSE/DIMSE/network timeouts (x10 overall)"
    )
    scu.add_argument(
        "--associations", type=int, default=1, help="this many at once, each sending every file"
    )
    scu.add_argument("--rounds", type=int, default=1, help="of --associations, one after another")
    scu.add_argument("--out", metavar="FILE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runner = run_scp if args.mode == "scp" else run_scu
    return anyio.run(runner, args)


if __name__ == "__main__":
    sys.exit(main())
