"""The ``aiodicom`` command line (also ``python -m aiodicom``).

Subcommands speak dcmtk's options where they overlap (``-aet``, ``-aec``,
``--max-pdu``, ``-d``/``-v``); the port is the last positional argument.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import anyio

from . import AE, evt, sop_class
from ._version import __version__
from .errors import AssociationAborted, AssociationRejected, DicomNetworkError

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    runner = {"echo": _echo, "echoscp": _echoscp}[args.command]
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
