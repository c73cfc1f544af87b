"""Many associations at once into one SCP: aiodicom's SCP against pynetdicom's and dcmtk's.

The load is the same for every SCP: one aiodicom process (``_peers.py
aiodicom-store-many``) opens K associations at once, each storing the same
``--files`` small instances (~16 KB, CT Image Storage) one at a time, then
releasing. The SCPs discard what they receive (status 0x0000): aiodicom
(asyncio, one task per association), pynetdicom (a thread per association)
and dcmtk ``storescp --fork --ignore`` (a process per association). Each job
gets a fresh SCP; repetitions are interleaved and the best kept. Printed per
K: instances per second, the SCP's CPU per instance (its processes, the
children storescp forks included) and its peak RSS, the sum over its
processes sampled every 10 ms. Ratios are against pynetdicom.

    python benchmarks/bench_many.py            # K = 1, 16, 64, 256; 40 each; 2 repetitions
    python benchmarks/bench_many.py --quick    # K = 1, 16, 64; 20 each; 1 repetition
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_echo import PEERS, dcmtk_tool, free_port, server  # noqa: E402
from bench_store import (  # noqa: E402
    HwmSampler,
    make_instances,
    process_cpu_seconds,
    run_client,
    warm,
)

SCPS = ("aiodicom", "pynetdicom", "dcmtk")
LABELS = {
    "aiodicom": "aiodicom SCP (asyncio)",
    "pynetdicom": "pynetdicom SCP (threads)",
    "dcmtk": "dcmtk storescp --fork (processes)",
}
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads (its CPU clock, to the
    nanosecond), and of the children it has reaped (to the clock tick)."""
    fields = _stat_fields(pid)
    if fields is None:
        return float("nan")
    cutime, cstime = int(fields[13]), int(fields[14])
    return process_cpu_seconds(pid) + (cutime + cstime) / _TICKS


def _children(pid: int) -> list[int]:
    """Direct children of every thread of ``pid`` (/proc/PID/task/TID/children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return found


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants, summed, in MiB (NaN
    once the process is gone)."""
    if _stat_fields(pid) is None:
        return float("nan")
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        fields = _stat_fields(p)
        if fields is not None:
            total += int(fields[21]) * _PAGE_KIB  # rss, in pages
        todo += _children(p)
    return total / 1024


@dataclass
class Result:
    rate: float  # instances stored per second
    cpu_us: float  # SCP CPU per instance, µs
    rss_mib: float  # SCP peak RSS, all its processes
    lost: int = 0  # associations that failed (refused, timed out, aborted)


def scp_argv(scp: str, storescp: str | None) -> tuple[list[str], int | None]:
    """The SCP's command line, and its port if the command names it (dcmtk)."""
    if scp == "dcmtk":
        assert storescp is not None
        port = free_port()
        return [storescp, "--fork", "--ignore", "-aet", "BENCH_SCP", str(port)], port
    return [*PEERS, f"{scp}-store-scp"], None


def run_job(scp: str, k: int, files: Path, storescp: str | None) -> Result:
    argv, port = scp_argv(scp, storescp)
    warm(files)
    with server(argv, port=port) as srv:
        sampler = HwmSampler(srv.proc.pid, interval=0.01, measure=tree_rss_mib)
        sampler.start()
        cpu = tree_cpu_seconds(srv.proc.pid)
        client = [*PEERS, "aiodicom-store-many", str(srv.port), "--dir", str(files)]
        done = run_client([*client, "--associations", str(k)])
        cpu = tree_cpu_seconds(srv.proc.pid) - cpu
        sampler.stop.set()
        sampler.join()
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["failed"]:
        raise RuntimeError(f"{scp}, K={k}: {result['failed']} stores failed")
    stored = max(result["stored"], 1)
    rate = result["stored"] / result["seconds"]
    return Result(rate, cpu / stored * 1e6, sampler.peak, result["lost"])


def table(counts: list[int], scps: list[str], best: dict[tuple[str, int], Result]) -> str:
    lines = [
        "| K at once | SCP | instances/s | vs pynetdicom | SCP CPU µs/instance "
        "| SCP peak RSS MiB | vs pynetdicom | associations lost |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in counts:
        ref = best.get(("pynetdicom", k))
        for scp in scps:
            r = best.get((scp, k))
            if r is None:
                continue
            rate_x = f"{r.rate / ref.rate:.2f}x" if ref else "-"
            rss_x = f"{r.rss_mib / ref.rss_mib:.2f}x" if ref else "-"
            lines.append(
                f"| {k} | {LABELS[scp]} | {r.rate:,.0f} | {rate_x} | {r.cpu_us:,.0f} "
                f"| {r.rss_mib:,.1f} | {rss_x} | {r.lost or ''} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K = 1, 16, 64; 1 repetition")
    parser.add_argument("--counts", default="1,16,64,256", help="associations at once (K)")
    parser.add_argument("--files", type=int, default=40, help="instances each association stores")
    parser.add_argument("--repeat", type=int, default=2, help="runs per job (best is kept)")
    parser.add_argument("--only", default="", help="comma-separated SCPs (aiodicom,...)")
    args = parser.parse_args()
    if args.quick:
        args.counts, args.files, args.repeat = "1,16,64", 20, 1
    counts = [int(c) for c in args.counts.split(",")]
    storescp = dcmtk_tool("storescp")
    scps = [s for s in SCPS if (s != "dcmtk" or storescp) and (not args.only or s in args.only)]
    started = time.perf_counter()
    best: dict[tuple[str, int], Result] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp) / "small"
        size = make_instances(files, args.files, 64, 128, "s")
        for _ in range(args.repeat):
            for k in counts:
                for scp in scps:
                    r = run_job(scp, k, files, storescp)
                    old = best.get((scp, k))
                    best[(scp, k)] = Result(
                        max(r.rate, old.rate) if old else r.rate,
                        min(r.cpu_us, old.cpu_us) if old else r.cpu_us,
                        min(r.rss_mib, old.rss_mib) if old else r.rss_mib,
                        max(r.lost, old.lost) if old else r.lost,
                    )
                    lost = f", {r.lost} associations lost" if r.lost else ""
                    print(
                        f"  {scp:10s} K={k:4d}: {r.rate:8,.0f}/s{lost}", file=sys.stderr, flush=True
                    )
    print(table(counts, scps, best))
    print()
    print(
        f"* Each association stores {args.files} instances of {size:,} bytes, one at a time, "
        "sent by one aiodicom process (asyncio) for every SCP; K associations at once, "
        "all opened together."
    )
    print(
        "* instances/s: all K x files over the client's time from the first association "
        "request to the last release. SCP CPU: user + system of the SCP's process over the "
        "job, its threads and the children it reaped (storescp --fork: one per association). "
        "Peak RSS: the sum over the SCP's process and its children, sampled every 10 ms "
        "(a fresh SCP each job)."
    )
    print(
        "* pynetdicom's server listens with a backlog of 5 (socketserver's default): "
        "connections beyond it wait for SYN retries, part of what its rate shows at large K."
    )
    print(
        "* associations lost: not established or ended early (60 s ACSE/DIMSE/network "
        "timeouts on the client); instances/s and CPU count the stores that succeeded "
        "(the worst repetition's count is shown)."
    )
    cpus = len(os.sched_getaffinity(0))
    print(
        f"\n{cpus} CPUs, Python {sys.version.split()[0]}, best of {args.repeat} (interleaved); "
        f"{time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
