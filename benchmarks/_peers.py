"""Benchmark peers, each run as its own process by the bench_*.py scripts.

Servers print ``READY <port>`` once listening and serve until killed.
Clients print one JSON line of results. Every side sets TCP_NODELAY (aiodicom
and anyio do by default; pynetdicom gets it from an EVT_CONN_OPEN handler).

    python benchmarks/_peers.py aiodicom-scp [--uvloop]
    python benchmarks/_peers.py aiodicom-scu PORT --echoes N --cycles M [--uvloop]
    python benchmarks/_peers.py pynetdicom-scp
    python benchmarks/_peers.py pynetdicom-scu PORT --echoes N --cycles M
    python benchmarks/_peers.py raw-echo-server
    python benchmarks/_peers.py raw-echo-client PORT --echoes N

C-STORE (bench_store.py): the SCPs accept CT Image Storage and discard every
instance (status 0x0000, nothing written); the SCUs send every ``*.dcm`` file
of DIR, in name order, on one association, reading each from disk.

    python benchmarks/_peers.py aiodicom-store-scp [--uvloop] [--max-pdu N]
    python benchmarks/_peers.py aiodicom-store-scu PORT --dir DIR [--uvloop] [--max-pdu N]
        [--read-ahead [--eager]]
    python benchmarks/_peers.py pynetdicom-store-scp [--max-pdu N] [--pyn-chunked]
    python benchmarks/_peers.py pynetdicom-store-scu PORT --dir DIR [--max-pdu N] [--pyn-chunked]
    python benchmarks/_peers.py aiodicom-store-many PORT --dir DIR --associations K
    python benchmarks/_peers.py raw-store-scp [--uvloop]
    python benchmarks/_peers.py raw-store-scu PORT --dir DIR [--uvloop]

``aiodicom-store-many`` (bench_many.py) opens K associations at once, each
sending every file of DIR one store at a time; the store SCPs take up to
1,000 associations at once. ``raw-store-scu``/``-scp`` are the bound: the
same files, each sent as one message and answered, with nothing of DICOM.

C-FIND and C-GET (bench_qr.py): the find SCPs answer any Study Root C-FIND
with ``--matches N`` study-level matches made one at a time as they are sent
(a generator: nothing is built up front); the find SCUs send one C-FIND and
count the responses. The get SCPs answer any Study Root C-GET with every
``*.dcm`` file of DIR (aiodicom yields each file's path, pynetdicom a
``dcmread`` of it, as its handlers must); the get SCUs discard what they
receive (status 0x0000).

    python benchmarks/_peers.py aiodicom-find-scp --matches N [--uvloop]
    python benchmarks/_peers.py aiodicom-find-scu PORT [--uvloop]
    python benchmarks/_peers.py pynetdicom-find-scp --matches N
    python benchmarks/_peers.py pynetdicom-find-scu PORT
    python benchmarks/_peers.py aiodicom-get-scp --dir DIR [--uvloop]
    python benchmarks/_peers.py aiodicom-get-scu PORT [--uvloop]
    python benchmarks/_peers.py pynetdicom-get-scp --dir DIR
    python benchmarks/_peers.py pynetdicom-get-scu PORT

``--max-pdu 0`` (the default) keeps each library's own default maximum PDU.
The store SCPs leave on SIGTERM through SystemExit, so ``python -m cProfile -o``
gets to write its profile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"

_T = TypeVar("_T")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vm_hwm_mib() -> float:
    """Peak RSS of this program's own memory map (VmHWM).

    ru_maxrss also counts the parent's memory map that exec replaced (Linux
    folds the old map's high-water mark into it), so it is inflated when a
    big parent process starts us.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return _rss_mib()


def _emit(result: dict[str, Any]) -> None:
    result["peak_rss_mib"] = round(_rss_mib(), 1)
    result["vm_hwm_mib"] = round(_vm_hwm_mib(), 1)
    print(json.dumps(result), flush=True)


# -- aiodicom -----------------------------------------------------------------


def _run_aiodicom_scp(
    args: argparse.Namespace, setup: Callable[[Any], None], handlers: list[Any]
) -> None:
    """Serve on a free port with an AE ``setup`` configures; print READY <port>."""
    import anyio

    from aiodicom import AE

    async def main() -> None:
        ae = AE("BENCH_SCP")
        setup(ae)
        async with ae.start_server(("127.0.0.1", 0), evt_handlers=handlers) as server:
            print(f"READY {server.port}", flush=True)
            # SIGTERM (how the benchmarks stop an SCP) ends the server cleanly.
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(server.serve_forever)
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        break

    anyio.run(main, backend_options={"use_uvloop": args.uvloop})


def aiodicom_scp(args: argparse.Namespace) -> None:
    from aiodicom import evt, sop_class

    def setup(ae: Any) -> None:
        ae.add_supported_context(sop_class.Verification)
        ae.maximum_associations = 1000

    _run_aiodicom_scp(args, setup, [(evt.EVT_C_ECHO, lambda event: 0x0000)])


def aiodicom_scu(args: argparse.Namespace) -> None:
    import anyio

    from aiodicom import AE, sop_class

    async def main() -> dict[str, Any]:
        ae = AE("BENCH_SCU")
        ae.add_requested_context(sop_class.Verification)
        out: dict[str, Any] = {}
        if args.echoes:
            async with ae.associate("127.0.0.1", args.port, ae_title="BENCH_SCP") as assoc:
                for _ in range(50):  # warm up
                    await assoc.send_c_echo()
                start = time.perf_counter()
                for _ in range(args.echoes):
                    status = await assoc.send_c_echo()
                    assert status.Status == 0
                out["echo_per_s"] = args.echoes / (time.perf_counter() - start)
        if args.cycles:
            start = time.perf_counter()
            for _ in range(args.cycles):
                async with ae.associate("127.0.0.1", args.port, ae_title="BENCH_SCP") as assoc:
                    await assoc.send_c_echo()
            out["cycles_per_s"] = args.cycles / (time.perf_counter() - start)
        return out

    _emit(anyio.run(main, backend_options={"use_uvloop": args.uvloop}))


# -- pynetdicom -----------------------------------------------------------------


def _serve_pynetdicom(ae: Any, handlers: list[Any]) -> None:
    """Serve with pynetdicom on a free port (TCP_NODELAY); print READY <port>; until killed."""
    from pynetdicom import evt

    all_handlers = [(evt.EVT_CONN_OPEN, _nodelay), *handlers]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=all_handlers)
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()


def _nodelay(event: Any) -> None:
    sock = event.assoc.dul.socket.socket
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _pyn_associate(ae: Any, port: int, called: str = "BENCH_SCP") -> Any:
    """A pynetdicom association to 127.0.0.1:``port`` with TCP_NODELAY, established."""
    from pynetdicom import evt

    assoc = ae.associate(
        "127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    assert assoc.is_established
    return assoc


def _pyn_rounds(
    assoc: Any, reconnect: Callable[[], Any], count: int, call: Callable[[Any, int], Any]
) -> tuple[float, int, Any]:
    """Make ``call(assoc, i)`` succeed for i in range(count), one at a time.

    pynetdicom sometimes loses a fast response: its association thread takes
    it as "unexpected" and the caller waits out the DIMSE timeout
    (pydicom/pynetdicom#875), and gets a status without Status. Such a stall
    is counted, its time left out, and the call made again on a new
    association (``reconnect()``); keep the DIMSE timeout short. A call
    returns the status; a success must be 0x0000. Returns (the seconds the
    calls took, the stalls, the association in use at the end).
    """
    stalls, stalled, i = 0, 0.0, 0
    start = time.perf_counter()
    while i < count:
        t0 = time.perf_counter()
        status = call(assoc, i)
        if "Status" in status:
            assert status.Status == 0, status
            i += 1
            continue
        stalls += 1
        stalled += time.perf_counter() - t0
        assoc = reconnect()
    return time.perf_counter() - start - stalled, stalls, assoc


def pynetdicom_scp(args: argparse.Namespace) -> None:
    from pynetdicom import AE, evt

    ae = AE(ae_title="BENCH_SCP")
    ae.add_supported_context(VERIFICATION)
    ae.maximum_associations = 1000
    _serve_pynetdicom(ae, [(evt.EVT_C_ECHO, lambda event: 0x0000)])


def pynetdicom_scu(args: argparse.Namespace) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="BENCH_SCU")
    ae.add_requested_context(VERIFICATION)
    out: dict[str, Any] = {}
    if args.echoes:
        ae.dimse_timeout = 2  # pynetdicom#875 stalls: see _pyn_rounds

        def reconnect() -> Any:
            return _pyn_associate(ae, args.port)

        assoc = reconnect()
        for _ in range(20):
            assoc.send_c_echo()
        seconds, stalls, assoc = _pyn_rounds(
            assoc, reconnect, args.echoes, lambda a, _i: a.send_c_echo()
        )
        out["echo_per_s"] = args.echoes / seconds
        out["pynetdicom_stalls"] = stalls
        assoc.release()
    if args.cycles:
        start = time.perf_counter()
        for _ in range(args.cycles):
            assoc = _pyn_associate(ae, args.port)
            assoc.send_c_echo()
            assoc.release()
        out["cycles_per_s"] = args.cycles / (time.perf_counter() - start)
    _emit(out)


# -- N-GET ----------------------------------------------------------------------
# The Printer SOP instance's status, read through the Basic Grayscale Print
# Management Meta SOP Class context: what dcmtk's dcmprscp serves too.

PRINT_META = "1.2.840.10008.5.1.1.9"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
PRINTER_TAGS = [0x21100010, 0x21100020]  # Printer Status, Printer Status Info


def _printer_status() -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PrinterStatus = "NORMAL"
    ds.PrinterStatusInfo = "NORMAL"
    return ds


def aiodicom_nget_scp(args: argparse.Namespace) -> None:
    from aiodicom import evt

    status = _printer_status()

    def setup(ae: Any) -> None:
        ae.add_supported_context(PRINT_META)

    _run_aiodicom_scp(args, setup, [(evt.EVT_N_GET, lambda event: (0x0000, status))])


def aiodicom_nget_scu(args: argparse.Namespace) -> None:
    import anyio

    from aiodicom import AE

    async def main() -> dict[str, Any]:
        ae = AE("BENCH_SCU")
        ae.add_requested_context(PRINT_META)
        async with ae.associate("127.0.0.1", args.port, ae_title=args.called) as assoc:
            for _ in range(20):  # warm up
                await assoc.send_n_get(PRINTER_TAGS, PRINTER, PRINTER_INSTANCE, meta_uid=PRINT_META)
            start = time.perf_counter()
            for _ in range(args.ngets):
                status, attrs = await assoc.send_n_get(
                    PRINTER_TAGS, PRINTER, PRINTER_INSTANCE, meta_uid=PRINT_META
                )
                assert status.Status == 0 and attrs.PrinterStatus == "NORMAL", status
            return {"nget_per_s": args.ngets / (time.perf_counter() - start)}

    _emit(anyio.run(main, backend_options={"use_uvloop": args.uvloop}))


def pynetdicom_nget_scp(args: argparse.Namespace) -> None:
    from pynetdicom import AE, evt

    ae = AE(ae_title="BENCH_SCP")
    ae.add_supported_context(PRINT_META)
    status = _printer_status()
    _serve_pynetdicom(ae, [(evt.EVT_N_GET, lambda event: (0x0000, status))])


def pynetdicom_nget_scu(args: argparse.Namespace) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="BENCH_SCU")
    ae.add_requested_context(PRINT_META)
    ae.dimse_timeout = 2  # pynetdicom#875 stalls: see _pyn_rounds

    def reconnect() -> Any:
        return _pyn_associate(ae, args.port, args.called)

    def nget(assoc: Any, _i: int) -> Any:
        status, attrs = assoc.send_n_get(
            PRINTER_TAGS, PRINTER, PRINTER_INSTANCE, msg_id=1, meta_uid=PRINT_META
        )
        if "Status" in status and status.Status == 0:
            assert attrs.PrinterStatus == "NORMAL", attrs
        return status

    assoc = reconnect()
    for _ in range(20):
        nget(assoc, 0)
    seconds, stalls, assoc = _pyn_rounds(assoc, reconnect, args.ngets, nget)
    assoc.release()
    _emit({"nget_per_s": args.ngets / seconds, "pynetdicom_stalls": stalls})


# -- C-STORE --------------------------------------------------------------------


def _store_files(directory: str) -> list[str]:
    return sorted(e.path for e in os.scandir(directory) if e.name.endswith(".dcm"))


def _store_result(files: list[str], seconds: float, **extra: Any) -> dict[str, Any]:
    size = sum(os.path.getsize(f) for f in files)
    return {"instances": len(files), "bytes": size, "seconds": seconds, **extra}


def aiodicom_store_scp(args: argparse.Namespace) -> None:
    from aiodicom import evt, sop_class

    def setup(ae: Any) -> None:
        ae.add_supported_context(sop_class.CTImageStorage, [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
        ae.maximum_associations = 1000  # (bench_many: up to 256 at once)
        if args.max_pdu:
            ae.maximum_pdu_size = args.max_pdu
        if args.od:
            ae.spool_directory = args.od  # a spooled instance is renamed into place

    if args.od:
        from pathlib import Path

        from aiodicom.cli import _save  # what `aiodicom storescp -od` does with each

        out = Path(args.od)

        async def on_store(event: Any) -> int:
            return await _save(event, out)

        _run_aiodicom_scp(args, setup, [(evt.EVT_C_STORE, on_store)])
    else:
        _run_aiodicom_scp(args, setup, [(evt.EVT_C_STORE, lambda event: 0x0000)])


def aiodicom_store_scu(args: argparse.Namespace) -> None:
    """Send every file, awaiting send_c_store for each; ``--read-ahead``: by
    one send_c_stores over them all instead (``--eager``: with eager=True);
    ``--window N`` (N > 1): N tasks share the association, with an
    Asynchronous Operations Window of N invoked operations proposed (PS3.7
    D.3.3.3), so up to N C-STOREs are in flight at once."""
    import anyio

    from aiodicom import AE, sop_class
    from aiodicom.pdu_primitives import AsynchronousOperationsWindowNegotiation

    files = _store_files(args.dir)
    window = max(1, args.window)

    async def main() -> dict[str, Any]:
        ae = AE("BENCH_SCU")
        ae.add_requested_context(sop_class.CTImageStorage, [EXPLICIT_VR_LE])
        max_pdu = args.max_pdu or None
        ext_neg = []
        if window > 1:
            item = AsynchronousOperationsWindowNegotiation()
            item.maximum_number_operations_invoked = window
            item.maximum_number_operations_performed = 1
            ext_neg.append(item)
        async with ae.associate(
            "127.0.0.1", args.port, ae_title="BENCH_SCP", max_pdu=max_pdu, ext_neg=ext_neg
        ) as assoc:
            invoked = assoc.max_async_invoked
            queue = iter(files)

            async def sender() -> None:
                for path in queue:
                    status = await assoc.send_c_store(path)
                    assert status.Status == 0, status

            async def read_ahead() -> None:
                async for result in assoc.send_c_stores(files, eager=args.eager):
                    assert result.status is not None and result.status.Status == 0, result

            start, cpu = time.perf_counter(), time.process_time()
            if args.read_ahead:
                await read_ahead()
            else:
                async with anyio.create_task_group() as tg:
                    for _ in range(window):
                        tg.start_soon(sender)
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu
        return _store_result(files, seconds, window=invoked, cpu_seconds=cpu)

    _emit(anyio.run(main, backend_options={"use_uvloop": args.uvloop}))


def aiodicom_store_many(args: argparse.Namespace) -> None:
    """``--associations K`` associations at once, each sending every file of
    ``--dir`` one store at a time, then releasing (bench_many.py)."""
    import anyio

    from aiodicom import AE, sop_class

    files = _store_files(args.dir)
    k = max(1, args.associations)

    async def main() -> dict[str, Any]:
        from aiodicom.errors import DicomNetworkError

        ae = AE("BENCH_SCU")
        ae.add_requested_context(sop_class.CTImageStorage, [EXPLICIT_VR_LE])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        failed = stored = lost = 0

        async def one() -> None:
            nonlocal failed, stored, lost
            try:
                async with ae.associate("127.0.0.1", args.port, ae_title="BENCH_SCP") as assoc:
                    for path in files:
                        status = (await assoc.send_c_store(path)).Status
                        failed += status != 0
                        stored += status == 0
            except (DicomNetworkError, TimeoutError, OSError):
                lost += 1  # (an SCP that does not keep up: counted, not fatal)

        start, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(k):
                tg.start_soon(one)
        seconds = time.perf_counter() - start
        result = _store_result(files * k, seconds, cpu_seconds=time.process_time() - cpu)
        return {**result, "associations": k, "failed": failed, "stored": stored, "lost": lost}

    _emit(anyio.run(main, backend_options={"use_uvloop": args.uvloop}))


def _pyn_chunked(args: argparse.Namespace) -> None:
    if args.pyn_chunked:
        from pynetdicom import _config

        _config.STORE_SEND_CHUNKED_DATASET = True
        _config.STORE_RECV_CHUNKED_DATASET = True


def pynetdicom_store_scp(args: argparse.Namespace) -> None:
    from pynetdicom import AE, evt

    _pyn_chunked(args)
    ae = AE(ae_title="BENCH_SCP")
    ae.add_supported_context(CT_IMAGE_STORAGE, [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
    ae.maximum_associations = 1000  # (bench_many: up to 256 at once)
    if args.max_pdu:
        ae.maximum_pdu_size = args.max_pdu
    # Return success without touching event.dataset: nothing is decoded or written.
    _serve_pynetdicom(ae, [(evt.EVT_C_STORE, lambda event: 0x0000)])


def pynetdicom_store_scu(args: argparse.Namespace) -> None:
    from pynetdicom import AE

    _pyn_chunked(args)
    files = _store_files(args.dir)
    ae = AE(ae_title="BENCH_SCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])
    if args.max_pdu:
        ae.maximum_pdu_size = args.max_pdu
    # A lost response (pydicom/pynetdicom#875) waits out the DIMSE timeout:
    # keep it short, count it, leave its time out and resend on a new association.
    # Its timer runs while the data set is still going out: allow for the size.
    ae.dimse_timeout = 2 + max(os.path.getsize(f) for f in files) / 10e6

    def reconnect() -> Any:
        return _pyn_associate(ae, args.port)

    assoc = reconnect()
    cpu = time.process_time()
    # send_c_store(path) is dcmread(path) + send_c_store(dataset) unless
    # STORE_SEND_CHUNKED_DATASET is set (--pyn-chunked).
    seconds, stalls, assoc = _pyn_rounds(
        assoc, reconnect, len(files), lambda a, i: a.send_c_store(files[i])
    )
    cpu = time.process_time() - cpu  # (a stall's waiting costs no CPU)
    assoc.release()
    _emit(_store_result(files, seconds, pynetdicom_stalls=stalls, cpu_seconds=cpu))


# -- C-FIND / C-GET (bench_qr.py) ------------------------------------------------

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
DESCRIPTIONS = ["CT CHEST W CONTRAST", "MR BRAIN WO CONTRAST", "XR CHEST 2 VIEWS"]


def _find_query() -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "*"
    ds.PatientID = ""
    ds.StudyInstanceUID = ""
    ds.StudyDate = ""
    ds.StudyDescription = ""
    ds.AccessionNumber = ""
    ds.ModalitiesInStudy = ""
    return ds


def _match(i: int) -> Any:
    """The i-th study-level match, made when it is needed."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = f"Bench^Patient{i:06d}"
    ds.PatientID = f"B{i:07d}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{i + 1}"
    ds.StudyDate = f"2023{i % 12 + 1:02d}{i % 28 + 1:02d}"
    ds.StudyDescription = DESCRIPTIONS[i % 3]
    ds.AccessionNumber = f"A{i:08d}"
    ds.ModalitiesInStudy = ["CT", "MR", "CR"][i % 3]
    return ds


def _get_query() -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.3"
    return ds


def aiodicom_find_scp(args: argparse.Namespace) -> None:
    from aiodicom import evt, sop_class

    async def on_find(event: Any) -> Any:
        for i in range(args.matches):
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, _match(i)

    def setup(ae: Any) -> None:
        ae.add_supported_context(sop_class.StudyRootQueryRetrieveInformationModelFind)

    _run_aiodicom_scp(args, setup, [(evt.EVT_C_FIND, on_find)])


def aiodicom_find_scu(args: argparse.Namespace) -> None:
    import anyio

    from aiodicom import AE, sop_class

    async def main() -> dict[str, Any]:
        ae = AE("BENCH_SCU")
        ae.add_requested_context(sop_class.StudyRootQueryRetrieveInformationModelFind)
        query = _find_query()
        async with ae.associate("127.0.0.1", args.port, ae_title="BENCH_SCP") as assoc:
            count = 0
            start = time.perf_counter()
            async for status, identifier in assoc.send_c_find(
                query, sop_class.StudyRootQueryRetrieveInformationModelFind
            ):
                if status.Status in (0xFF00, 0xFF01):
                    assert identifier is not None
                    count += 1
                else:
                    assert status.Status == 0, status
            seconds = time.perf_counter() - start
        return {"responses": count, "seconds": seconds}

    _emit(anyio.run(main, backend_options={"use_uvloop": args.uvloop}))


def pynetdicom_find_scp(args: argparse.Namespace) -> None:
    from pynetdicom import AE, evt

    def on_find(event: Any) -> Any:
        for i in range(args.matches):
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, _match(i)

    ae = AE(ae_title="BENCH_SCP")
    ae.add_supported_context(STUDY_ROOT_FIND)
    _serve_pynetdicom(ae, [(evt.EVT_C_FIND, on_find)])


def pynetdicom_find_scu(args: argparse.Namespace) -> None:
    from pynetdicom import AE, evt

    ae = AE(ae_title="BENCH_SCU")
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.dimse_timeout = 60
    assoc = ae.associate(
        "127.0.0.1", args.port, ae_title="BENCH_SCP", evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    assert assoc.is_established
    count = 0
    start = time.perf_counter()
    for status, identifier in assoc.send_c_find(_find_query(), STUDY_ROOT_FIND):
        assert "Status" in status, "no response within the DIMSE timeout"
        if status.Status in (0xFF00, 0xFF01):
            assert identifier is not None
            count += 1
        else:
            assert status.Status == 0, status
    seconds = time.perf_counter() - start
    assoc.release()
    _emit({"responses": count, "seconds": seconds})


def aiodicom_get_scp(args: argparse.Namespace) -> None:
    from aiodicom import evt, sop_class

    files = _store_files(args.dir)

    async def on_get(event: Any) -> Any:
        yield len(files)
        for path in files:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, path

    def setup(ae: Any) -> None:
        ae.add_supported_context(sop_class.StudyRootQueryRetrieveInformationModelGet)
        ae.add_supported_context(
            sop_class.CTImageStorage, [EXPLICIT_VR_LE], scu_role=True, scp_role=True
        )

    _run_aiodicom_scp(args, setup, [(evt.EVT_C_GET, on_get)])


def aiodicom_get_scu(args: argparse.Namespace) -> None:
    import anyio

    from aiodicom import AE, build_role, evt, sop_class

    async def main() -> dict[str, Any]:
        ae = AE("BENCH_SCU")
        ae.add_requested_context(sop_class.StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(sop_class.CTImageStorage, [EXPLICIT_VR_LE])
        received = 0

        def on_store(event: Any) -> int:
            nonlocal received
            received += 1
            return 0x0000

        async with ae.associate(
            "127.0.0.1",
            args.port,
            ae_title="BENCH_SCP",
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
            ext_neg=[build_role(sop_class.CTImageStorage, scp_role=True)],
        ) as assoc:
            start = time.perf_counter()
            async for status, _identifier in assoc.send_c_get(
                _get_query(), sop_class.StudyRootQueryRetrieveInformationModelGet
            ):
                final = status
            seconds = time.perf_counter() - start
        assert final.Status == 0, final
        return {"instances": received, "seconds": seconds}

    _emit(anyio.run(main, backend_options={"use_uvloop": args.uvloop}))


def pynetdicom_get_scp(args: argparse.Namespace) -> None:
    from pydicom import dcmread
    from pynetdicom import AE, evt

    files = _store_files(args.dir)

    def on_get(event: Any) -> Any:
        yield len(files)
        for path in files:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, dcmread(path)

    ae = AE(ae_title="BENCH_SCP")
    ae.add_supported_context(STUDY_ROOT_GET)
    ae.add_supported_context(CT_IMAGE_STORAGE, [EXPLICIT_VR_LE], scu_role=True, scp_role=True)
    _serve_pynetdicom(ae, [(evt.EVT_C_GET, on_get)])


def pynetdicom_get_scu(args: argparse.Namespace) -> None:
    from pynetdicom import AE, build_role, evt

    ae = AE(ae_title="BENCH_SCU")
    ae.add_requested_context(STUDY_ROOT_GET)
    ae.add_requested_context(CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])
    ae.dimse_timeout = 60
    received = 0

    def on_store(event: Any) -> int:
        nonlocal received
        received += 1
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        args.port,
        ae_title="BENCH_SCP",
        ext_neg=[build_role(CT_IMAGE_STORAGE, scp_role=True)],
        evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    start = time.perf_counter()
    final = None
    for status, _identifier in assoc.send_c_get(_get_query(), STUDY_ROOT_GET):
        assert "Status" in status, "no response within the DIMSE timeout"
        final = status
    seconds = time.perf_counter() - start
    assoc.release()
    assert final is not None and final.Status == 0, final
    _emit({"instances": received, "seconds": seconds})


# -- the bound: a bare asyncio echo of 16-byte messages -------------------------


def raw_echo_server(args: argparse.Namespace) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def raw_echo_client(args: argparse.Namespace) -> None:
    async def main() -> dict[str, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        message = b"x" * 16
        for _ in range(100):
            writer.write(message)
            await reader.readexactly(16)
        start = time.perf_counter()
        for _ in range(args.echoes):
            writer.write(message)
            await reader.readexactly(16)
        writer.close()
        return {"echo_per_s": args.echoes / (time.perf_counter() - start)}

    _emit(asyncio.run(main()))


# -- the bound for C-STORE: a bare asyncio request/answer sized like one ------


#: The bare store pair's answer: about a C-STORE-RSP's P-DATA-TF PDU.
RAW_ANSWER = 200


def raw_store_scp(args: argparse.Namespace) -> None:
    """Answer every length-prefixed message (a 6-byte header as a PDU's: type,
    reserved, 4-byte length) with RAW_ANSWER bytes; no DICOM at all."""

    # (asyncio sets TCP_NODELAY on every TCP transport itself)
    class Answer(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buf = bytearray()

        def data_received(self, data: bytes) -> None:
            buf = self.buf
            buf += data
            while len(buf) >= 6:
                end = 6 + int.from_bytes(buf[2:6], "big")
                if len(buf) < end:
                    return
                del buf[:end]
                self.transport.write(bytes(RAW_ANSWER))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    _run_raw(main(), args.uvloop)


def raw_store_scu(args: argparse.Namespace) -> None:
    """Send every file of ``--dir`` as one message to raw-store-scp, awaiting
    each answer in a coroutine as ``await send_c_store(path)`` does: the file
    opened, read whole and closed on the event loop (no page-cache check), then
    written with its 6-byte header in one call. What an awaited store costs
    asyncio here with nothing of DICOM in it."""
    files = _store_files(args.dir)

    class Client(asyncio.Protocol):
        waiter: asyncio.Future[None] | None = None
        got = 0

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= RAW_ANSWER and self.waiter is not None:
                self.got -= RAW_ANSWER
                self.waiter.set_result(None)
                self.waiter = None

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_connection(Client, "127.0.0.1", args.port)

        async def store(path: str) -> None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                data = os.read(fd, size)
            finally:
                os.close(fd)
            assert len(data) == size, path
            client.waiter = waiter = loop.create_future()
            transport.write(b"\x04\x00" + len(data).to_bytes(4, "big") + data)
            await waiter

        start, cpu = time.perf_counter(), time.process_time()
        for path in files:
            await store(path)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        transport.close()
        return _store_result(files, seconds, cpu_seconds=cpu)

    _emit(_run_raw(main(), args.uvloop))


def _run_raw(main: Coroutine[Any, Any, _T], uvloop: bool) -> _T:
    """Run a raw role's ``main`` under asyncio's own event loop, or uvloop's."""
    if uvloop:
        import uvloop as uv

        return uv.run(main)
    return asyncio.run(main)


def _exit_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role")
    parser.add_argument("port", type=int, nargs="?", default=0)
    parser.add_argument("--echoes", type=int, default=0)
    parser.add_argument("--cycles", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--dir", help="store SCUs: send every *.dcm file of DIR")
    parser.add_argument("--max-pdu", type=int, default=0, help="0: the library's default")
    parser.add_argument("--pyn-chunked", action="store_true", help="pynetdicom chunked store")
    parser.add_argument("--od", default="", help="aiodicom store SCP: write each instance here")
    parser.add_argument("--window", type=int, default=1, help="aiodicom store SCU: tasks/window")
    parser.add_argument("--read-ahead", action="store_true", help="store SCU: send_c_stores")
    parser.add_argument("--eager", action="store_true", help="store SCU: send_c_stores(eager=True)")
    parser.add_argument("--associations", type=int, default=1, help="store-many: at once")
    parser.add_argument("--matches", type=int, default=0, help="find SCPs: matches per C-FIND")
    parser.add_argument("--ngets", type=int, default=0, help="N-GET SCUs: round trips")
    parser.add_argument("--called", default="BENCH_SCP", help="N-GET SCUs: called AE title")
    args = parser.parse_args(argv)
    roles = {
        "aiodicom-scp": aiodicom_scp,
        "aiodicom-scu": aiodicom_scu,
        "pynetdicom-scp": pynetdicom_scp,
        "pynetdicom-scu": pynetdicom_scu,
        "aiodicom-store-scp": aiodicom_store_scp,
        "aiodicom-store-scu": aiodicom_store_scu,
        "aiodicom-store-many": aiodicom_store_many,
        "pynetdicom-store-scp": pynetdicom_store_scp,
        "pynetdicom-store-scu": pynetdicom_store_scu,
        "aiodicom-find-scp": aiodicom_find_scp,
        "aiodicom-find-scu": aiodicom_find_scu,
        "pynetdicom-find-scp": pynetdicom_find_scp,
        "pynetdicom-find-scu": pynetdicom_find_scu,
        "aiodicom-get-scp": aiodicom_get_scp,
        "aiodicom-get-scu": aiodicom_get_scu,
        "pynetdicom-get-scp": pynetdicom_get_scp,
        "pynetdicom-get-scu": pynetdicom_get_scu,
        "aiodicom-nget-scp": aiodicom_nget_scp,
        "aiodicom-nget-scu": aiodicom_nget_scu,
        "pynetdicom-nget-scp": pynetdicom_nget_scp,
        "pynetdicom-nget-scu": pynetdicom_nget_scu,
        "raw-echo-server": raw_echo_server,
        "raw-echo-client": raw_echo_client,
        "raw-store-scp": raw_store_scp,
        "raw-store-scu": raw_store_scu,
    }
    if args.role.endswith(("-store-scp", "-find-scp", "-get-scp", "-nget-scp")):
        signal.signal(signal.SIGTERM, _exit_on_term)
    try:
        roles[args.role](args)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
