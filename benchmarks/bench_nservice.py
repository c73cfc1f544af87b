"""DIMSE-N round trips: aiodicom against pynetdicom and dcmtk's dcmprscp.

N-GET of the Printer SOP instance's status (Printer Status, Printer Status
Info) through the Basic Grayscale Print Management Meta SOP Class context,
one at a time on one established association: the service dcmtk's Print SCP
(``dcmprscp``) answers too. Every row is measured in the same run, each peer
in its own process on 127.0.0.1 with TCP_NODELAY on every side; the pairs
run round-robin, ``--repeat`` times, and the best of each is kept. Prints a
Markdown table; ratios against pynetdicom<->pynetdicom and against the
pynetdicom SCU -> dcmprscp row (dcmtk has no SCU that repeats an N-GET).

    python benchmarks/bench_nservice.py            # 2,000 N-GETs per row (1 minute)
    python benchmarks/bench_nservice.py --quick    # 300, one repetition
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "interop"))  # dcmprscp's config writer

from _print import write_config  # noqa: E402
from bench_echo import PEERS, client, dcmtk_tool, free_port, server  # noqa: E402

PYN_REF = "pynetdicom <-> pynetdicom"
DCMTK_REF = "pynetdicom SCU -> dcmtk dcmprscp"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngets", type=int, default=2000)
    parser.add_argument("--pyn-ngets", type=int, default=1000, help="for pynetdicom SCUs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.ngets, args.pyn_ngets, args.repeat = 300, 300, 1
    try:
        import uvloop  # noqa: F401

        have_uvloop = True
    except ImportError:
        have_uvloop = False
    dcmprscp = dcmtk_tool("dcmprscp")

    rates: dict[str, list[float]] = {}
    stalls = 0
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        scp = {
            "aiodicom": stack.enter_context(server([*PEERS, "aiodicom-nget-scp"])).port,
            "pynetdicom": stack.enter_context(server([*PEERS, "pynetdicom-nget-scp"])).port,
        }
        if have_uvloop:
            uv = stack.enter_context(server([*PEERS, "aiodicom-nget-scp", "--uvloop"]))
            scp["aiodicom-uvloop"] = uv.port
        called = {name: "BENCH_SCP" for name in scp}
        if dcmprscp:
            port = free_port()
            config = write_config(Path(tmp), scp_port=port)
            argv = [dcmprscp, "-c", str(config), "-p", "LOCALSCP"]
            scp["dcmtk"] = stack.enter_context(server(argv, port=port)).port
            called["dcmtk"] = "PRTSCP"
        pairs = [
            ("aiodicom <-> aiodicom (asyncio)", "aiodicom", "aiodicom", []),
            ("aiodicom <-> aiodicom (uvloop)", "aiodicom", "aiodicom-uvloop", ["--uvloop"]),
            (PYN_REF, "pynetdicom", "pynetdicom", []),
            ("aiodicom SCU -> pynetdicom SCP", "aiodicom", "pynetdicom", []),
            ("pynetdicom SCU -> aiodicom SCP", "pynetdicom", "aiodicom", []),
            ("aiodicom SCU -> dcmtk dcmprscp", "aiodicom", "dcmtk", []),
            (DCMTK_REF, "pynetdicom", "dcmtk", []),
        ]
        pairs = [p for p in pairs if p[2] in scp]
        for _ in range(args.repeat):
            for name, scu, target, extra in pairs:
                count = args.ngets if scu == "aiodicom" else args.pyn_ngets
                argv = [
                    *PEERS,
                    f"{scu}-nget-scu",
                    str(scp[target]),
                    "--ngets",
                    str(count),
                    "--called",
                    called[target],
                    *extra,
                ]
                result = client(argv)
                rates.setdefault(name, []).append(float(result["nget_per_s"]))
                stalls += int(result.get("pynetdicom_stalls", 0))

    pyn = max(rates.get(PYN_REF, [0.0])) or None
    dcm = max(rates.get(DCMTK_REF, [0.0])) or None
    print("| pair | N-GET/s | vs pynetdicom | vs pynetdicom -> dcmprscp |")
    print("|---|---:|---:|---:|")
    for name, values in rates.items():
        rate = max(values)
        vs_pyn = f"{rate / pyn:.2f}x" if pyn else "-"
        vs_dcm = f"{rate / dcm:.2f}x" if dcm else "-"
        print(f"| {name} | {rate:,.0f} | {vs_pyn} | {vs_dcm} |")
    print(
        f"\nbest of {args.repeat}; {args.ngets:,} N-GETs per aiodicom SCU run, "
        f"{args.pyn_ngets:,} per pynetdicom SCU run; pynetdicom #875 stalls left out "
        f"of the time: {stalls}."
        + ("" if dcmprscp else " dcmtk's dcmprscp is not installed: its rows are missing.")
    )


if __name__ == "__main__":
    main()
