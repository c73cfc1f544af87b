"""The ``aiodicom`` command line (also ``python -m aiodicom``).

Subcommands speak dcmtk's options where they overlap (``-aet``, ``-aec``,
``--max-pdu``, ``-d``/``-v``); the port is the last positional argument.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset
from pydicom.uid import UID

from . import AE, build_role, evt, sop_class
from ._spool import file_mode, move_into, write_new
from ._version import __version__
from .dsutils import Part10Info, is_plain_uid, part10_header_for, probe_part10
from .errors import AssociationAborted, AssociationRejected, DicomNetworkError, DIMSEError
from .presentation import ALL_TRANSFER_SYNTAXES, build_context

LOGGER = logging.getLogger("aiodicom")
#: -P/-S/-O as dcmtk's findscu/getscu/movescu: the information model, per service.
_MODELS = {
    "P": "PatientRoot",
    "S": "StudyRoot",
    "O": "PatientStudyOnly",
}

__all__ = ("main",)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    parser.add_argument("-d", "--debug", action="store_true", help="log at DEBUG (every PDU)")
    parser.add_argument("-aet", "--aetitle", default="AIODICOM", help="our AE title")
    parser.add_argument("--max-pdu", type=int, default=None, help="largest PDU we accept")
    parser.add_argument("-ta", "--acse-timeout", type=float, default=30.0, help="ACSE timeout (s)")
    parser.add_argument(
        "-td", "--dimse-timeout", type=float, default=30.0, help="DIMSE timeout (s)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiodicom", description="asyncio DICOM networking")
    parser.add_argument("--version", action="version", version=f"aiodicom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    echo = sub.add_parser("echo", help="send C-ECHO (Verification SCU)")
    _common(echo)
    echo.add_argument("-aec", "--call", default="ANY-SCP", help="the peer's AE title")
    echo.add_argument("-r", "--repeat", type=int, default=1, help="C-ECHOs to send")
    echo.add_argument("host")
    echo.add_argument("port", type=int)

    scp = sub.add_parser("echoscp", help="run a Verification SCP (answers C-ECHO)")
    _common(scp)
    scp.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    scp.add_argument(
        "--require-called-aet", action="store_true", help="reject a wrong called AE title"
    )
    scp.add_argument("port", type=int, nargs="?", default=11112, help="0 picks a free port")

    store = sub.add_parser("store", help="send DICOM files with C-STORE (Storage SCU)")
    _common(store)
    store.add_argument("-aec", "--call", default="ANY-SCP", help="the peer's AE title")
    store.add_argument(
        "--no-recurse", dest="recurse", action="store_false", help="do not descend into folders"
    )
    store.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    store.add_argument(
        "-j",
        "--associations",
        type=_positive,
        default=1,
        metavar="N",
        help="send over N associations at once, each taking the next file (default 1)",
    )
    store.add_argument("host")
    store.add_argument("port", type=int)
    store.add_argument("paths", nargs="+", metavar="PATH", help="files and folders to send")

    storescp = sub.add_parser("storescp", help="run a Storage SCP that writes what it receives")
    _common(storescp)
    storescp.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    storescp.add_argument(
        "-od", "--output-directory", default=".", help="where received instances are written"
    )
    storescp.add_argument(
        "--ignore", action="store_true", help="receive and discard (answer success)"
    )
    storescp.add_argument(
        "--require-called-aet", action="store_true", help="reject a wrong called AE title"
    )
    storescp.add_argument("port", type=int, nargs="?", default=11112, help="0 picks a free port")

    qrscp = sub.add_parser(
        "qrscp",
        help="run a Query/Retrieve SCP over a file store and its SQLite index",
        description="A Query/Retrieve SCP (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE) over a file"
        " store and an SQLite index, both under -od DIR. C-MOVE destinations come from"
        " --dest AET=HOST:PORT (repeatable) and from --config FILE, a TOML file with a"
        ' [destinations] table: AET = "host:port" (--dest wins).',
    )
    _common(qrscp)
    qrscp.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    qrscp.add_argument(
        "-od",
        "--output-directory",
        default="./aiodicom-store",
        help="the archive directory (default ./aiodicom-store)",
    )
    qrscp.add_argument(
        "--dest",
        action="append",
        default=[],
        metavar="AET=HOST:PORT",
        help="a C-MOVE destination (repeatable)",
    )
    qrscp.add_argument("--config", metavar="FILE", help="TOML file with a [destinations] table")
    qrscp.add_argument(
        "--require-called-aet", action="store_true", help="reject a wrong called AE title"
    )
    qrscp.add_argument("port", type=int, nargs="?", default=11112, help="0 picks a free port")
    for name, what in (
        ("find", "query with C-FIND (Query/Retrieve SCU)"),
        ("get", "retrieve with C-GET into -od DIR"),
        ("move", "have the SCP C-MOVE matches to -aem AET"),
    ):
        sp = sub.add_parser(name, help=what)
        _common(sp)
        sp.add_argument("-aec", "--call", default="ANY-SCP", help="the peer's AE title")
        model = sp.add_mutually_exclusive_group()
        model.add_argument("-P", dest="model", action="store_const", const="P", help="Patient Root")
        model.add_argument("-S", dest="model", action="store_const", const="S", help="Study Root")
        model.add_argument(
            "-O", dest="model", action="store_const", const="O", help="Patient/Study Only"
        )
        if name == "find":
            model.add_argument(
                "-W", dest="model", action="store_const", const="W", help="Modality Worklist"
            )
            sp.add_argument("--json", action="store_true", help="print each match as a JSON line")
        sp.add_argument(
            "-k",
            "--key",
            action="append",
            default=[],
            metavar="KEYWORD[=VALUE]",
            help="a query key (repeatable), e.g. -k QueryRetrieveLevel=STUDY -k PatientName=A*",
        )
        if name == "get":
            sp.add_argument("-od", "--output-directory", default=".", help="where to write")
        if name == "move":
            sp.add_argument("-aem", "--move", required=True, help="the destination AE title")
        sp.add_argument("host")
        sp.add_argument("port", type=int)
    return parser


def _setup(args: argparse.Namespace) -> AE:
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    ae = AE(args.aetitle)
    if args.max_pdu is not None:
        ae.maximum_pdu_size = args.max_pdu
    ae.acse_timeout = args.acse_timeout
    ae.dimse_timeout = args.dimse_timeout
    return ae


async def _echo(args: argparse.Namespace) -> int:
    ae = _setup(args)
    ae.add_requested_context(sop_class.Verification)
    failures = 0
    async with ae.associate(args.host, args.port, ae_title=args.call) as assoc:
        for _ in range(args.repeat):
            status = await assoc.send_c_echo()
            if status.Status != 0:
                failures += 1
            print(f"C-ECHO status 0x{int(status.Status):04X}")
    return 1 if failures else 0


async def _echoscp(args: argparse.Namespace) -> int:
    ae = _setup(args)
    ae.require_called_aet = args.require_called_aet
    ae.add_supported_context(sop_class.Verification)

    def on_echo(event: evt.Event) -> int:
        assert event.assoc is not None
        logging.getLogger("aiodicom").info("C-ECHO from %s", event.assoc.requestor.ae_title)
        return 0x0000

    async with ae.start_server(
        (args.bind, args.port), evt_handlers=[(evt.EVT_C_ECHO, on_echo)]
    ) as server:
        print(
            f"aiodicom echoscp {ae.ae_title!r} listening on {server.host}:{server.port}", flush=True
        )
        await server.serve_forever()
    return 0


def _storage_ae(args: argparse.Namespace) -> AE:
    """An SCP AE accepting Verification and every storage class in every transfer syntax."""
    ae = _setup(args)
    ae.require_called_aet = args.require_called_aet
    ae.add_supported_context(sop_class.Verification)
    for cx in sop_class.AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(ALL_TRANSFER_SYNTAXES))
    return ae


def _file_name(uid: object) -> str:
    text = str(uid or "")
    return f"{text}.dcm" if is_plain_uid(text) else ""


def _remove_empty_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _write_instance(
    directory: Path, name: str, header: bytes, data: bytes | None, spooled: str | None
) -> Path:
    """Write (or move) a received instance into place atomically; blocking."""
    target = directory / name
    if spooled is not None:
        move_into(spooled, target, file_mode())
        return target
    assert data is not None
    tmp = write_new(directory, ".incoming-", (header, data))  # with open()'s mode
    try:
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target


async def _save(event: evt.Event, directory: Path) -> int:
    """Write a received instance under ``directory`` as Part 10; its C-STORE status."""
    uid = evt.request_value(event, "AffectedSOPInstanceUID")
    name = _file_name(uid)
    if not name:
        LOGGER.error("Refusing SOP Instance UID %r as a file name", uid)
        return 0xC211
    assert event.context is not None
    # what part10_header(event.file_meta) makes, without the Datasets
    header = part10_header_for(
        evt.request_value(event, "AffectedSOPClassUID"), uid, str(event.context.transfer_syntax)
    )
    path = event.dataset_path
    data = None if path is not None else event.encoded_dataset()
    target = await anyio.to_thread.run_sync(_write_instance, directory, name, header, data, path)
    LOGGER.info("Stored %s", target)
    return 0x0000


async def _storescp(args: argparse.Namespace) -> int:
    ae = _storage_ae(args)
    directory = Path(args.output_directory)
    if not args.ignore:
        spool = directory / ".incoming"
        await anyio.to_thread.run_sync(lambda: spool.mkdir(parents=True, exist_ok=True))
        ae.spool_directory = str(spool)  # same file system: a spooled file is renamed into place

    async def on_store(event: evt.Event) -> int:
        if args.ignore:
            return 0x0000
        return await _save(event, directory)

    handlers = [(evt.EVT_C_ECHO, lambda event: 0x0000), (evt.EVT_C_STORE, on_store)]
    async with ae.start_server((args.bind, args.port), evt_handlers=handlers) as server:
        where = "discarding" if args.ignore else f"writing to {directory}"
        print(
            f"aiodicom storescp {ae.ae_title!r} listening on {server.host}:{server.port}, {where}",
            flush=True,
        )
        await server.serve_forever()
    return 0


async def _qrscp(args: argparse.Namespace) -> int:
    from .qrscp import Archive, Destination, load_destinations, parse_destination, setup_ae

    destinations: dict[str, Destination] = {}
    try:
        if args.config:
            destinations.update(await anyio.to_thread.run_sync(load_destinations, args.config))
        destinations.update(parse_destination(text) for text in args.dest)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ae = _setup(args)
    ae.require_called_aet = args.require_called_aet
    archive = await Archive.open(
        args.output_directory, ae_title=ae.ae_title, destinations=destinations
    )
    async with archive, anyio.create_task_group() as tg:
        await tg.start(archive.serve_commitments)  # Storage Commitment reports
        setup_ae(ae, archive)
        async with ae.start_server((args.bind, args.port), evt_handlers=archive.handlers()) as srv:
            print(
                f"aiodicom qrscp {ae.ae_title!r} listening on {srv.host}:{srv.port},"
                f" archive {archive.directory}, {len(destinations)} move destination(s)",
                flush=True,
            )
            await srv.serve_forever()
        tg.cancel_scope.cancel()
    return 0


def _collect(paths: Sequence[str], recurse: bool) -> list[Path]:
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            pattern = path.rglob("*") if recurse else path.glob("*")
            found.extend(sorted(p for p in pattern if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {name}")
    return found


def _probe_all(names: Sequence[str], recurse: bool) -> list[tuple[Path, Part10Info, int]]:
    out = []
    for path in _collect(names, recurse):
        try:
            with open(path, "rb") as f:
                out.append((path, probe_part10(f), os.fstat(f.fileno()).st_size))
        except (OSError, DIMSEError) as exc:
            LOGGER.warning("Skipping %s: %s", path, exc)
    return out


class _Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.done = 0
        self.bytes = 0
        self.started = time.monotonic()
        self.show = not quiet and sys.stderr.isatty()

    def step(self, size: int) -> None:
        self.done += 1
        self.bytes += size
        if not self.show:
            return
        width = 30
        filled = width * self.done // max(1, self.total)
        rate = self.bytes / max(1e-9, time.monotonic() - self.started) / 1e6
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {rate:.1f} MB/s"
        )
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


async def _store(args: argparse.Namespace) -> int:
    ae = _setup(args)
    files = await anyio.to_thread.run_sync(_probe_all, args.paths, args.recurse)
    if not files:
        print("error: nothing to send", file=sys.stderr)
        return 1
    pairs = sorted({(info.sop_class_uid, info.transfer_syntax) for _, info, _ in files})
    if len(pairs) > 128:
        print(
            f"error: {len(pairs)} SOP class/transfer syntax pairs need more than 128 contexts",
            file=sys.stderr,
        )
        return 1
    ae.requested_contexts = [build_context(UID(a), [UID(t)]) for a, t in pairs]
    failures = 0
    progress = _Progress(len(files), args.quiet)
    pending = collections.deque(files)  # each association takes the next file when free

    async def send_over_one() -> None:
        nonlocal failures
        # What this association took from the queue and has not reported yet:
        # the file whose result comes next, the one sent on its response
        # (eager), then the one send_c_stores read ahead.
        taken: collections.deque[tuple[Path, Part10Info, int]] = collections.deque()

        def take() -> Iterator[Path]:
            while pending:
                entry = pending.popleft()
                taken.append(entry)
                yield entry[0]

        async with ae.associate(args.host, args.port, ae_title=args.call) as assoc:
            while pending:
                try:
                    stores = assoc.send_c_stores(take(), eager=True)
                    async with contextlib.aclosing(stores) as results:
                        async for result in results:
                            path, _info, size = taken.popleft()
                            if result.status is None:  # e.g. NoAcceptedContext for this file
                                LOGGER.error("%s: %s", path, result.error)
                                failures += 1
                                continue
                            code = int(result.status.Status)
                            if code != 0:
                                failures += 1
                                LOGGER.warning("%s: status 0x%04X", path, code)
                            elif args.verbose:
                                print(f"{path}: stored", flush=True)
                            progress.step(size)
                except DicomNetworkError as exc:
                    if taken:  # the file in flight failed; the one read ahead goes back
                        # (with eager, the first one taken is the one in flight)
                        LOGGER.error("%s: %s", taken.popleft()[0], exc)
                        failures += 1
                        pending.extendleft(reversed(taken))
                        taken.clear()
                    if not assoc.is_established:
                        return  # this association has ended: the others take the rest

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(min(args.associations, len(files))):
                tg.start_soon(send_over_one)
    except BaseExceptionGroup as group:
        # An association that fails ends the others: reported as with one.
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        raise error from None
    failures += len(pending)  # left over when every association had ended
    print(f"sent {len(files) - failures} of {len(files)} instances", flush=True)
    return 1 if failures else 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _identifier(keys: Sequence[str]) -> Dataset:
    """A query identifier from ``-k Keyword=value`` items (no value: a return key)."""
    ds = Dataset()
    for item in keys:
        keyword, _, value = item.partition("=")
        keyword = keyword.strip()
        if not keyword_dict.get(keyword):
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        setattr(ds, keyword, value)
    if "QueryRetrieveLevel" not in ds:
        raise ValueError("give the level: -k QueryRetrieveLevel=PATIENT|STUDY|SERIES|IMAGE")
    return ds


def _model(command: str, letter: str | None) -> UID:
    if letter == "W":
        return sop_class.ModalityWorklistInformationFind
    root = _MODELS[letter or "S"]
    suffix = {"find": "Find", "get": "Get", "move": "Move"}[command]
    return UID(getattr(sop_class, f"{root}QueryRetrieveInformationModel{suffix}"))


def _print_match(identifier: Dataset, as_json: bool) -> None:
    if as_json:
        print(json.dumps(identifier.to_json_dict()), flush=True)
        return
    print("---")
    for elem in identifier:
        print(f"{elem.keyword or elem.tag}: {'' if elem.value is None else elem.value}")


async def _query(args: argparse.Namespace) -> int:
    """``aiodicom find|get|move``: one request, each response printed as it comes."""
    ae = _setup(args)
    query = _identifier(args.key)
    model = _model(args.command, args.model)
    ae.add_requested_context(model)
    ext_neg: list[Any] = []
    handlers: list[evt.EventHandlerType] = []
    received = 0
    incoming: Path | None = None
    if args.command == "get":
        # Accept back every storage class we can propose (at most 128 contexts).
        for uid in sop_class.STORAGE_CLASSES[:127]:
            ae.add_requested_context(uid, list(ALL_TRANSFER_SYNTAXES[:3]))
            ext_neg.append(build_role(uid, scp_role=True))
        directory = Path(args.output_directory)
        incoming = directory / ".incoming"
        await anyio.to_thread.run_sync(lambda: incoming.mkdir(parents=True, exist_ok=True))
        ae.spool_directory = str(incoming)  # same file system: a spooled file is renamed into place

        async def on_store(event: evt.Event) -> int:
            nonlocal received
            status = await _save(event, directory)
            received += status == 0x0000
            return status

        handlers.append((evt.EVT_C_STORE, on_store))
    final = 0
    matches = 0
    try:
        async with ae.associate(
            args.host, args.port, ae_title=args.call, ext_neg=ext_neg, evt_handlers=handlers
        ) as assoc:
            if args.command == "find":
                responses = assoc.send_c_find(query, model)
            elif args.command == "get":
                responses = assoc.send_c_get(query, model)
            else:
                responses = assoc.send_c_move(query, args.move, model)
            async with responses:
                async for status, identifier in responses:
                    code = int(status.Status)
                    if code in (0xFF00, 0xFF01):
                        if identifier is not None and args.command == "find":
                            matches += 1
                            _print_match(identifier, getattr(args, "json", False))
                        continue
                    final = code
    finally:
        if incoming is not None:  # gone if empty (an aborted transfer's spool file is deleted)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove_empty_dir, incoming)
    summary = f"status 0x{final:04X}"
    if args.command == "find":
        summary = f"{matches} match(es), {summary}"
    elif args.command == "get":
        summary = f"{received} instance(s) retrieved, {summary}"
    sys.stdout.flush()  # the matches first, then the summary
    print(summary, file=sys.stderr, flush=True)
    return 0 if final in (0x0000,) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    runner = {
        "echo": _echo,
        "echoscp": _echoscp,
        "store": _store,
        "storescp": _storescp,
        "qrscp": _qrscp,
        "find": _query,
        "get": _query,
        "move": _query,
    }[args.command]
    try:
        return anyio.run(runner, args)
    except KeyboardInterrupt:
        return 130
    except AssociationRejected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AssociationAborted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (DicomNetworkError, OSError, TimeoutError) as exc:
        print(f"error: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
