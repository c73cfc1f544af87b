"""Work per small C-STORE on each side, counted: CPU instructions (callgrind)
and system calls (strace), numbers this machine's noise does not move.

    python benchmarks/bench_instructions.py                # 500 and 1,500 stores
    python benchmarks/bench_instructions.py --few 100 --many 300

Wall-clock rates on a shared VM swing by a third from run to run (see
bench_store.py's note); these counts repeat to within a fraction of a
percent. Each measured process runs twice, once for ``--few`` stores and
once for ``--many``, with its peer running natively; the difference of the
totals over the difference of the counts is the work of one store, without
start-up, association and exit. What they leave out: the kernel's share
of the work (the copies and protocol processing behind each system call),
and how fast the instructions run (an interpreter's run slower than
compiled C++'s), which is where aiodicom's remaining gap to dcmtk is.

Pairs: aiodicom SCU -> aiodicom SCP and dcmtk storescu -> storescp --ignore,
each side measured in turn. Needs valgrind and strace (apt-get install
valgrind strace) and dcmtk.

valgrind has no openat2(2): under it the aiodicom SCU's read of a hot file
would fall back to a worker thread, so the measured SCU opens files with
os.open instead (same flags; the rest of the path is unchanged).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_echo import ENV, PEERS, dcmtk_tool, free_port, server  # noqa: E402
from bench_store import make_instances, warm  # noqa: E402

#: The aiodicom store SCU, its openat2 call standing in by os.open (see above).
_SCU_UNDER_VALGRIND = """
import os, runpy, sys
from aiodicom import _nowait
def _open(nr, dirfd, name, how, size):
    try:
        return os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return -1
_nowait._syscall = _open
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

Counter = Callable[[list[str], Path], list[str]]


def callgrind(argv: list[str], out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]


def strace(argv: list[str], out: Path) -> list[str]:
    return ["strace", "-f", "-c", "-o", str(out), *argv]


def instructions(out: Path) -> int:
    match = re.search(r"^summary: (\d+)", out.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no callgrind summary in {out}")
    return int(match.group(1))


def syscalls(out: Path) -> int:
    """The calls column of strace -c's total line (% time, seconds, usecs/call, calls, ...)."""
    for line in reversed(out.read_text().splitlines()):
        fields = line.split()
        if fields and fields[-1] == "total":
            return int(fields[3])
    raise RuntimeError(f"no strace total in {out}")


def scu_argv(kind: str, port: int, directory: Path) -> list[str]:
    if kind == "aiodicom":
        peers = str(HERE / "_peers.py")
        return [sys.executable, "-c", _SCU_UNDER_VALGRIND, peers, "aiodicom-store-scu",
                str(port), "--dir", str(directory)]  # fmt: skip
    storescu = dcmtk_tool("storescu")
    assert storescu is not None
    return [storescu, "-aet", "BENCH_SCU", "-aec", "BENCH_SCP", "+sd", "127.0.0.1", str(port),
            str(directory)]  # fmt: skip


def scp_argv(kind: str, port: int) -> tuple[list[str], int | None]:
    """The SCP's command line and its port (None: it prints READY <port>)."""
    if kind == "aiodicom":
        return [*PEERS, "aiodicom-store-scp"], None
    storescp = dcmtk_tool("storescp")
    assert storescp is not None
    return [storescp, "--ignore", "-aet", "BENCH_SCP", str(port)], port


def measure_scu(kind: str, directory: Path, wrap: Counter, out: Path) -> None:
    warm(directory)
    argv, port = scp_argv(kind, free_port())
    with server(argv, port=port) as srv:
        subprocess.run(wrap(scu_argv(kind, srv.port, directory), out), env=ENV, check=True,
                       capture_output=True, timeout=3600)  # fmt: skip


def measure_scp(kind: str, directory: Path, wrap: Counter, out: Path) -> None:
    warm(directory)
    argv, port = scp_argv(kind, free_port())
    # storescp ends on SIGINT, the Python SCP on SIGTERM; the counter then writes its file.
    stop = signal.SIGINT if kind == "dcmtk" else signal.SIGTERM
    with server(wrap(argv, out), port=port, stop_signal=stop, start_timeout=120,
                stop_timeout=600) as srv:  # fmt: skip
        subprocess.run(scu_argv(kind, srv.port, directory), env=ENV, check=True,
                       capture_output=True, timeout=3600)  # fmt: skip


def per_store(
    measure: Callable[[str, Path, Counter, Path], None],
    kind: str,
    dirs: tuple[Path, Path],
    counts: tuple[int, int],
    wrap: Counter,
    read: Callable[[Path], int],
    tmp: Path,
) -> float:
    totals = []
    for directory in dirs:
        out = tmp / f"count-{len(totals)}.out"
        measure(kind, directory, wrap, out)
        totals.append(read(out))
    return (totals[1] - totals[0]) / (counts[1] - counts[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--few", type=int, default=500, help="stores in the first run")
    parser.add_argument("--many", type=int, default=1500, help="stores in the second run")
    args = parser.parse_args()
    missing = [t for t in ("valgrind", "strace") if shutil.which(t) is None]
    if missing or dcmtk_tool("storescu") is None or dcmtk_tool("storescp") is None:
        sys.exit(f"needs valgrind, strace and dcmtk (missing: {missing or 'dcmtk'})")
    with tempfile.TemporaryDirectory(prefix="aiodicom-bench-") as name:
        tmp = Path(name)
        few, many = tmp / "few", tmp / "many"
        size = make_instances(few, args.few, 64, 128, "F")
        make_instances(many, args.many, 64, 128, "M")
        rows = []
        for side, measure in (("SCU", measure_scu), ("SCP", measure_scp)):
            for kind in ("aiodicom", "dcmtk"):
                got = [
                    per_store(measure, kind, (few, many), (args.few, args.many), wrap, read, tmp)
                    for wrap, read in ((callgrind, instructions), (strace, syscalls))
                ]
                rows.append((side, kind, *got))
                print(f"{side} {kind}: {got[0]:,.0f} instructions, {got[1]:.1f} system calls",
                      file=sys.stderr, flush=True)  # fmt: skip
    names = {
        ("SCU", "aiodicom"): "aiodicom SCU (send_c_store(path))",
        ("SCU", "dcmtk"): "dcmtk storescu (+sd DIR)",
        ("SCP", "aiodicom"): "aiodicom SCP (handler returns 0x0000)",
        ("SCP", "dcmtk"): "dcmtk storescp --ignore",
    }
    print("| side | instructions per store | vs dcmtk | system calls per store | vs dcmtk |")
    print("|---|---:|---:|---:|---:|")
    for side, kind, instr, calls in rows:
        ref = next(r for r in rows if r[0] == side and r[1] == "dcmtk")
        print(f"| {names[side, kind]} | {instr / 1000:,.1f}k | {instr / ref[2]:.2f}x "
              f"| {calls:.1f} | {calls / ref[3]:.2f}x |")  # fmt: skip
    print()
    print(f"* {args.few:,} and {args.many:,} stores of {size:,}-byte CT instances (Explicit VR LE)"
          " from the page cache, one association, each side measured while its peer runs"
          " natively; per store = difference of the two runs' totals / "
          f"{args.many - args.few:,}.")  # fmt: skip
    print("* Instructions: user space only (valgrind's callgrind). System calls: strace -f -c."
          " Python " + sys.version.split()[0] + ".")  # fmt: skip


if __name__ == "__main__":
    main()
