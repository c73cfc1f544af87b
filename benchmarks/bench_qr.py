"""Query/Retrieve throughput and memory: C-FIND streaming, C-GET and C-MOVE,
aiodicom against pynetdicom (and dcmtk where it applies), and C-STORE into the
Q/R SCP application against dcmqrscp.

Every row is measured in the same run, each peer in its own process on
127.0.0.1 with TCP_NODELAY on every side, repetitions interleaved (best kept).
Prints one Markdown table; ratios are against pynetdicom<->pynetdicom for the
same workload.

    python benchmarks/bench_qr.py                       # 1,000 / 10,000 / 100,000 matches, 2 runs
    python benchmarks/bench_qr.py --quick               # 1,000 / 10,000 matches, 1 run
    python benchmarks/bench_qr.py --matches 10000 --get 1000 --repeat 3

* C-FIND: one Study Root C-FIND at STUDY level answered with N matches (8
  attributes each). The SCP handlers make each match when it is about to be
  sent (a generator), so the SCP's memory must not grow with N; the SCUs count
  the responses without keeping them. Rate: responses per second, from the
  C-FIND-RQ to the final response. Shown for several N to show that both
  sides' peak RSS stays flat.
* C-GET: one Study Root C-GET of N small CT instances (about 16 KB each,
  generated as Part 10 files): the aiodicom SCP yields each file's path (sent
  from disk), pynetdicom's a ``dcmread`` of it (what its C-GET handler must
  yield); the SCUs discard what they receive. Rate: instances per second.
* dcmtk rows: ``findscu``/``getscu`` run as one process per job, timed whole
  (process start, association, release included: minus the best time of the
  same tool against an SCP with 1 match / 1 instance); ``dcmqrscp`` (filled
  with the C-GET instances by storescu) answers an IMAGE-level C-FIND over them
  and the C-GET. dcmqrscp forks a child per association, so its RSS is not
  shown. ``aiodicom qrscp`` (the Q/R SCP application: SQLite index, file store)
  is filled and queried alike, its rows beside dcmqrscp's: the same data, the
  same tools, the same requests.
* C-STORE (the archives only): filling each archive with the C-GET set by
  ``storescu +sd``, timed whole, once.
* C-MOVE (the archives only): ``movescu`` asks each archive to move the C-GET
  study to one ``storescp --ignore``; timed whole minus the best of 3 C-MOVEs
  of a study the archive does not hold. Rate: instances per second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_echo import (  # noqa: E402
    ENV,
    PEERS,
    Server,
    _wait_listening,
    dcmtk_tool,
    free_port,
    server,
)
from bench_store import make_instances, run_client, vm_hwm_mib  # noqa: E402

PYN_REF = "pynetdicom <-> pynetdicom"
FIND_KEYS = [
    "-k",
    "QueryRetrieveLevel=STUDY",
    "-k",
    "PatientName=*",
    "-k",
    "PatientID",
    "-k",
    "StudyInstanceUID",
    "-k",
    "StudyDate",
    "-k",
    "StudyDescription",
    "-k",
    "AccessionNumber",
    "-k",
    "ModalitiesInStudy",
]


@dataclass
class Sample:
    rate: float
    count: int
    scu_rss: float
    scp_rss: float


@dataclass
class Pair:
    name: str
    scu: str  # aiodicom, pynetdicom, dcmtk
    scp: str  # aiodicom, pynetdicom, or an archive: dcmqrscp, qrscp
    uvloop: bool = False
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Workload:
    key: str  # "find-10000", "get-1000"
    service: str  # find, get
    count: int
    label: str


def dcmqrscp_config(port: int, storage: Path, dest_port: int | None) -> str:
    hosts = f"dest = ({DEST_AET}, 127.0.0.1, {dest_port})\n" if dest_port else ""
    return (
        f"NetworkTCPPort  = {port}\nMaxPDUSize      = 16384\nMaxAssociations = 16\n\n"
        f"HostTable BEGIN\n{hosts}HostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
        f"AETable BEGIN\nBENCH_SCP  {storage}  RW  (10, 1024mb)  ANY\nAETable END\n"
    )


#: The C-MOVE destination: storescp --ignore, one for the run.
DEST_AET = "BENCH_DEST"
#: A study no archive holds: a C-MOVE of it is the movescu baseline (no sub-operations).
NO_STUDY = "1.2.826.0.1.3680043.8.498.1"


#: SCPs that are archives, filled once with the C-GET set and queried at IMAGE level.
ARCHIVES = ("dcmqrscp", "qrscp")


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.findscu = dcmtk_tool("findscu")
        self.getscu = dcmtk_tool("getscu")
        self.storescu = dcmtk_tool("storescu")
        self.dcmqrscp = dcmtk_tool("dcmqrscp")
        self.movescu = dcmtk_tool("movescu")
        self.storescp = dcmtk_tool("storescp")
        self.dest: Server | None = None
        #: Each archive's filling: storescu's whole process, seconds and peak RSS MiB.
        self.fills: dict[str, tuple[float, float]] = {}
        self.move_checked: set[str] = set()
        self.get_dir = root / "get"
        self.one_dir = root / "one"
        self.study_uid = ""
        self.series_uid = ""
        self.dcmtk_base: dict[str, float] = {}
        self.archives: dict[str, Server] = {}

    # -- SCPs

    @contextmanager
    def scp(self, pair: Pair, work: Workload, count: int | None = None) -> Iterator[Server]:
        if pair.scp in ARCHIVES:
            yield self.archives[pair.scp]
            return
        role = f"{pair.scp}-{work.service}-scp"
        argv = [*PEERS, role]
        if work.service == "find":
            argv += ["--matches", str(work.count if count is None else count)]
        else:
            argv += ["--dir", str(self.one_dir if count == 1 else self.get_dir)]
        if pair.uvloop:
            argv.append("--uvloop")
        with server(argv) as srv:
            yield srv

    def start_archive(self, kind: str) -> None:
        """``kind`` (dcmqrscp or qrscp) over a storage area filled with the C-GET
        instances by storescu."""
        assert self.storescu
        storage = self.root / kind
        storage.mkdir()
        port = free_port()
        if kind == "dcmqrscp":
            assert self.dcmqrscp
            cfg = self.root / "dcmqrscp.cfg"
            cfg.write_text(dcmqrscp_config(port, storage, self.dest.port if self.dest else None))
            argv = [self.dcmqrscp, "-c", str(cfg), str(port)]
        else:
            argv = [sys.executable, "-m", "aiodicom", "qrscp", "-aet", "BENCH_SCP"]
            argv += ["-od", str(storage), str(port)]
            if self.dest:
                argv += ["--dest", f"{DEST_AET}=127.0.0.1:{self.dest.port}"]
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=ENV
        )
        self.archives[kind] = Server(port, proc)
        _wait_listening(proc, port)
        fill = [self.storescu, "-aec", "BENCH_SCP", "+sd", "127.0.0.1", str(port)]
        done = run_client([*fill, str(self.get_dir)], timeout=600)
        self.fills[kind] = (done.seconds, done.sampled_hwm_mib)

    def start_destination(self) -> None:
        """The C-MOVE destination of both archives: storescp, discarding."""
        assert self.storescp
        port = free_port()
        argv = [self.storescp, "--ignore", "-aet", DEST_AET, str(port)]
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=ENV
        )
        self.dest = Server(port, proc)
        _wait_listening(proc, port)

    def stop_archives(self) -> None:
        for srv in [*self.archives.values(), *([self.dest] if self.dest else [])]:
            srv.proc.terminate()
            srv.proc.wait(timeout=10)

    def check_move(self, pair: Pair, work: Workload, port: int) -> None:
        """Once per archive, untimed: the C-MOVE completes every sub-operation
        (movescu -d prints the final response's counts)."""
        if pair.scp in self.move_checked:
            return
        argv = self.dcmtk_argv(work, pair, port)
        done = run_client([argv[0], "-d", *argv[1:]])
        text = done.stdout + done.stderr
        want = f"Completed Suboperations       : {work.count}"
        if want not in text or "Failed Suboperations          : 0" not in text:
            raise RuntimeError(f"C-MOVE via {pair.scp} did not complete {work.count} instances")
        self.move_checked.add(pair.scp)

    # -- dcmtk clients

    def dcmtk_argv(
        self, work: Workload, pair: Pair, port: int, study: str | None = None
    ) -> list[str]:
        """The dcmtk tool's command line; C-GET/C-MOVE ask for ``study`` (default: the set's)."""
        if study is None:
            study = self.study_uid
        common = ["-S", "-aet", "BENCH_SCU", "-aec", "BENCH_SCP"]
        if work.service == "find":
            assert self.findscu
            keys = FIND_KEYS
            if pair.scp in ARCHIVES:  # an archive holds the C-GET series: IMAGE level
                keys = [
                    "-k",
                    "QueryRetrieveLevel=IMAGE",
                    "-k",
                    f"StudyInstanceUID={self.study_uid}",
                    "-k",
                    f"SeriesInstanceUID={self.series_uid}",
                    "-k",
                    "SOPInstanceUID",
                    "-k",
                    "InstanceNumber",
                ]
            return [self.findscu, *common, *keys, "127.0.0.1", str(port)]
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        if work.service == "move":
            assert self.movescu
            return [self.movescu, *common, "-aem", DEST_AET, *keys, "127.0.0.1", str(port)]
        assert self.getscu
        return [self.getscu, *common, "--ignore", *keys, "127.0.0.1", str(port)]

    def dcmtk_baseline(self, work: Workload, pair: Pair) -> float:
        """Best time of the dcmtk tool against an aiodicom SCP with 1 match / 1
        instance; for C-MOVE, against the same archive for a study it does not hold."""
        if work.service == "move":
            key = f"move-{pair.scp}"
            if key not in self.dcmtk_base:
                port = self.archives[pair.scp].port
                argv = self.dcmtk_argv(work, pair, port, study=NO_STUDY)
                self.dcmtk_base[key] = min(run_client(argv).seconds for _ in range(3))
            return self.dcmtk_base[key]
        key = work.service
        if key not in self.dcmtk_base:
            base_pair = Pair("base", "dcmtk", "aiodicom")
            times = []
            for _ in range(3):
                with self.scp(base_pair, work, count=1) as srv:
                    times.append(run_client(self.dcmtk_argv(work, base_pair, srv.port)).seconds)
            self.dcmtk_base[key] = min(times)
        return self.dcmtk_base[key]

    # -- one job

    def run(self, pair: Pair, work: Workload) -> Sample:
        with self.scp(pair, work) as srv:
            if pair.scu == "dcmtk":
                if work.service == "move":
                    self.check_move(pair, work, srv.port)
                base = self.dcmtk_baseline(work, pair)
                done = run_client(self.dcmtk_argv(work, pair, srv.port))
                seconds = max(done.seconds - base, 1e-9)
                sample = Sample(work.count / seconds, work.count, done.sampled_hwm_mib, 0.0)
            else:
                argv = [*PEERS, f"{pair.scu}-{work.service}-scu", str(srv.port)]
                if pair.uvloop:
                    argv.append("--uvloop")
                done = run_client(argv)
                res = json.loads(done.stdout.strip().splitlines()[-1])
                count = res["responses"] if work.service == "find" else res["instances"]
                if count != work.count:
                    raise RuntimeError(f"{count} {work.service} results, expected {work.count}")
                sample = Sample(count / res["seconds"], count, res["vm_hwm_mib"], 0.0)
            sample.scp_rss = vm_hwm_mib(srv.proc.pid) if pair.scp != "dcmqrscp" else float("nan")
        return sample


def make_pairs(service: str, have: dict[str, bool]) -> list[Pair]:
    pairs = [Pair("aiodicom <-> aiodicom (asyncio)", "aiodicom", "aiodicom")]
    if have["uvloop"]:
        pairs.append(Pair("aiodicom <-> aiodicom (uvloop)", "aiodicom", "aiodicom", True))
    pairs += [
        Pair(PYN_REF, "pynetdicom", "pynetdicom"),
        Pair("aiodicom SCU -> pynetdicom SCP", "aiodicom", "pynetdicom"),
        Pair("pynetdicom SCU -> aiodicom SCP", "pynetdicom", "aiodicom"),
    ]
    if service == "move":  # the archives only: the same tool, the same destination
        pairs = []
        if have["movescu"] and have["storescu"]:
            pairs.append(Pair("dcmtk movescu -> aiodicom qrscp", "dcmtk", "qrscp"))
            if have["dcmqrscp"]:
                pairs.append(Pair("dcmtk movescu -> dcmtk dcmqrscp", "dcmtk", "dcmqrscp"))
        return pairs
    tool = "findscu" if service == "find" else "getscu"
    if have[tool]:
        pairs.append(Pair(f"dcmtk {tool} -> aiodicom SCP", "dcmtk", "aiodicom"))
        if have["storescu"]:
            pairs.append(Pair(f"dcmtk {tool} -> aiodicom qrscp", "dcmtk", "qrscp"))
        if have["dcmqrscp"]:
            pairs.append(Pair(f"dcmtk {tool} -> dcmtk dcmqrscp", "dcmtk", "dcmqrscp"))
    return pairs


def table(rows: list[tuple[Workload, list[Pair]]]) -> str:
    lines = [
        "| workload | pair | rate | vs pynetdicom | peak RSS MiB SCU | peak RSS MiB SCP | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for work, pairs in rows:
        unit = "responses/s" if work.service == "find" else "instances/s"
        ref = next((p for p in pairs if p.name == PYN_REF), None)
        ref_rate = (
            max((s.rate for s in ref.samples.get(work.key, [])), default=None) if ref else None
        )
        for p in pairs:
            samples = p.samples.get(work.key, [])
            error = p.errors.get(work.key, "")
            if not samples and not error:
                continue
            if not samples:
                lines.append(f"| {work.label} | {p.name} | - | | - | - | {error} |")
                continue
            rate = max(s.rate for s in samples)
            ratio = f"{rate / ref_rate:.2f}x" if ref_rate else ""
            scu = max(s.scu_rss for s in samples)
            scp = max(s.scp_rss for s in samples)
            scp_text = "-" if scp != scp else f"{scp:,.1f}"
            note = error
            if p.scu == "dcmtk" and work.service == "store":
                note = (note + " whole process, one run (the archive's filling)").strip()
            elif p.scu == "dcmtk":
                base = "no-match" if work.service == "move" else "1-result"
                note = (note + f" whole process minus the {base} baseline").strip()
            if p.scp in ARCHIVES and work.service == "find":
                note = (note + "; IMAGE level over the C-GET series").strip("; ")
            lines.append(
                f"| {work.label} | {p.name} | {rate:,.0f} {unit} | {ratio} | {scu:,.1f} "
                f"| {scp_text} | {note} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 matches, 1 run")
    parser.add_argument(
        "--matches",
        default="1000,10000,100000",
        help="comma-separated C-FIND match counts (default 1000,10000,100000)",
    )
    parser.add_argument(
        "--get", type=int, default=1000, help="instances per C-GET and C-MOVE (0: skip both)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs per pair (best is kept)")
    parser.add_argument(
        "--pyn-max-matches",
        type=int,
        default=100_000,
        help="skip pynetdicom find rows above this many matches (it does ~1,000/s)",
    )
    parser.add_argument("--only", default="", help="comma-separated substrings of pair names")
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args()
    if args.quick:
        args.matches, args.repeat = "1000,10000", 1
    counts = [int(c) for c in args.matches.split(",") if c.strip()]

    started = time.perf_counter()
    have = {
        "findscu": bool(dcmtk_tool("findscu")),
        "getscu": bool(dcmtk_tool("getscu")),
        "dcmqrscp": bool(dcmtk_tool("dcmqrscp") and dcmtk_tool("storescu")),
        "storescu": bool(dcmtk_tool("storescu")),
        "movescu": bool(dcmtk_tool("movescu") and dcmtk_tool("storescp")),
    }
    try:
        import uvloop  # noqa: F401

        have["uvloop"] = True
    except ImportError:
        have["uvloop"] = False

    works = [Workload(f"find-{n}", "find", n, f"C-FIND {n:,} matches") for n in counts]
    if args.get:
        works.append(Workload(f"get-{args.get}", "get", args.get, f"C-GET {args.get:,} instances"))
        works.append(
            Workload(f"move-{args.get}", "move", args.get, f"C-MOVE {args.get:,} instances")
        )
    plan: list[tuple[Workload, list[Pair]]] = []
    for work in works:
        pairs = make_pairs(work.service, have)
        if work.service == "find":
            if work.count > args.pyn_max_matches:
                pairs = [p for p in pairs if "pynetdicom" not in (p.scu, p.scp)]
            if work.count != args.get:  # an archive holds the C-GET set: its size only
                pairs = [p for p in pairs if p.scp not in ARCHIVES]
        if args.only:
            wanted = [w.strip() for w in args.only.split(",") if w.strip()]
            pairs = [p for p in pairs if p.name == PYN_REF or any(w in p.name for w in wanted)]
        if pairs:
            plan.append((work, pairs))

    with tempfile.TemporaryDirectory(prefix="bench_qr_", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        bench = Bench(args, root)
        t0 = time.perf_counter()
        size = make_instances(bench.get_dir, max(args.get, 1), 64, 128, "g")
        make_instances(bench.one_dir, 1, 64, 128, "o")
        from pydicom import dcmread

        head = dcmread(next(bench.get_dir.iterdir()), stop_before_pixels=True)
        bench.study_uid, bench.series_uid = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)
        gen = time.perf_counter() - t0
        try:
            if any(w.service == "move" for w, _ps in plan):
                bench.start_destination()
            for kind in ARCHIVES:
                if any(p.scp == kind for _w, ps in plan for p in ps):
                    bench.start_archive(kind)
            for _ in range(args.repeat):
                for work, pairs in plan:
                    for pair in pairs:
                        if work.key in pair.errors:
                            continue
                        try:
                            pair.samples.setdefault(work.key, []).append(bench.run(pair, work))
                        except Exception as exc:  # keep the other rows
                            pair.errors[work.key] = f"failed: {str(exc).splitlines()[0][:120]}"
                            print(f"{pair.name} {work.label}: {exc}", file=sys.stderr)
        finally:
            bench.stop_archives()

    if bench.fills:  # each archive filled once by storescu: a row each, one run
        work = Workload(f"store-{args.get}", "store", args.get, f"C-STORE {args.get:,} instances")
        rows = []
        for kind, (seconds, hwm) in sorted(bench.fills.items(), key=lambda kv: kv[0] != "qrscp"):
            name = "aiodicom qrscp" if kind == "qrscp" else "dcmtk dcmqrscp"
            pair = Pair(f"dcmtk storescu -> {name}", "dcmtk", kind)
            pair.samples[work.key] = [Sample(work.count / seconds, work.count, hwm, float("nan"))]
            rows.append(pair)
        plan.append((work, rows))
    print(table(plan))
    print()
    notes = [
        "C-FIND: Study Root, STUDY level, 8 attributes per match, made lazily by the SCP "
        "handler (aiodicom: async generator; pynetdicom: generator); SCUs count responses.",
        f"C-GET: {args.get:,} CT instances of {size:,} bytes (64x128 16-bit, Explicit VR LE) "
        f"on one association, generated in {gen:.1f} s; aiodicom's SCP yields paths, "
        "pynetdicom's yields dcmread(path); SCUs discard (getscu --ignore).",
        "Python SCUs time from the request to the final response on an established "
        "association; findscu/getscu are timed whole minus the best of 3 runs against an "
        "aiodicom SCP with 1 result (process start, association, release).",
        "Peak RSS is VmHWM: Python SCUs report their own; findscu/getscu are sampled every "
        "5 ms; an SCP's is read from /proc/PID/status just before it is stopped (a fresh "
        "SCP process per job). TCP_NODELAY on every side; each library's default max PDU.",
        "Archives: 'aiodicom qrscp' (aiodicom's Q/R SCP application, SQLite index) and "
        "dcmqrscp are each filled once with the C-GET set by storescu, then asked by findscu "
        "at IMAGE level for its 1,000 instances (SOP Instance UID, Instance Number) and by "
        "getscu for the study; the qrscp's peak RSS includes the filling. dcmqrscp forks a "
        "child per association: its RSS is not shown.",
        "C-STORE (the archives only): the filling itself, storescu +sd over the C-GET set into "
        "each archive, timed whole (start-up, its header scan of every file, association), "
        "once (not repeated): the qrscp writes each instance to its file store and indexes it in "
        "SQLite before answering; dcmqrscp writes it and updates its index file.",
        f"C-MOVE: movescu asks each archive to move the study to {DEST_AET}, one storescp "
        "--ignore for the run (the archives open an association to it per C-MOVE); timed "
        "whole minus the best of 3 C-MOVEs of a study the archive does not hold. Each "
        "archive's first C-MOVE is checked, untimed, to complete every sub-operation.",
    ]
    if any(c > args.pyn_max_matches for c in counts):
        notes.append(f"pynetdicom rows above {args.pyn_max_matches:,} matches skipped.")
    for note in notes:
        print(f"* {note}")
    print(
        f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, best of {args.repeat} "
        f"(interleaved); {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
