"""C-STORE throughput and memory: aiodicom against pynetdicom and dcmtk.

Every row is measured in the same run, each peer in its own process on
127.0.0.1 with TCP_NODELAY on every side (dcmtk gets ``TCP_NODELAY=1``;
pynetdicom gets it from an EVT_CONN_OPEN handler; aiodicom sets it itself).
Prints one Markdown table; ratios are against pynetdicom<->pynetdicom and
against dcmtk<->dcmtk.

    python benchmarks/bench_store.py            # full run (about three minutes on 2 cores)
    python benchmarks/bench_store.py --quick    # smaller counts, one repetition

* small: 2,000 CT Image Storage instances of about 16 KB (Explicit VR Little
  Endian, 64x128 16-bit pixels), all on one association: instances/s.
* large: 4 instances of about 64 MB (4096x8192 16-bit pixels) on one
  association: MB/s (10^6 bytes of Part 10 file per second).

The instances are generated with pydicom into a temp dir as Part 10 files and
every SCU reads them from there (they sit in the page cache). The SCPs accept
and discard (dcmtk ``storescp --ignore``; aiodicom and pynetdicom handlers
return 0x0000 without writing anything), so the disk is not what is measured.
Each job gets a fresh SCP process so the peak RSS (VmHWM, read just before the
SCP is stopped) belongs to that job alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_echo import ENV, PEERS, Server, dcmtk_tool, free_port, server  # noqa: E402

DEFAULT_PDU = {"aiodicom": 262_144, "pynetdicom": 16_382, "dcmtk": 16_384}
PYN_REF = "pynetdicom <-> pynetdicom"
DCMTK_REF = "dcmtk storescu -> dcmtk storescp"
WINDOW = 8
WINDOWED = f"aiodicom <-> aiodicom (asyncio, {WINDOW} in flight)"
READ_AHEAD = "aiodicom <-> aiodicom ({loop}), send_c_stores: one in flight, the next read ahead"
EAGER = (
    "aiodicom <-> aiodicom ({loop}), send_c_stores(eager=True): the next sent as a response arrives"
)
DCMTK_WRITES = "dcmtk storescu -> dcmtk storescp -od +B (writes the files)"
AIODICOM_WRITES = "aiodicom <-> aiodicom (asyncio), SCP writes the files as storescp -od"
RAW_BOUND = "bare asyncio, no DICOM: each file awaited as one message (the bound)"
RAW_BOUND_UVLOOP = "bare uvloop, no DICOM: as the bound, under uvloop (its bound)"


# -- data -------------------------------------------------------------------------


def make_instances(directory: Path, count: int, rows: int, cols: int, tag: str) -> int:
    """Write ``count`` CT Image Storage Part 10 files; return the size of one."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.PatientName = "Bench^Store"
    ds.PatientID = "BENCH"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.SliceThickness = "1"
    pattern = os.urandom(4096)
    ds.PixelData = (pattern * (rows * cols * 2 // len(pattern) + 1))[: rows * cols * 2]
    ds["PixelData"].VR = "OW"
    size = 0
    for i in range(count):
        uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = uid
        ds.SOPInstanceUID = uid
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = ["0", "0", str(i)]
        path = directory / f"{tag}{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        size = path.stat().st_size
    return size


def warm(directory: Path) -> None:
    """Read every file of a set, so the page cache holds it when a run starts.

    Some machines page out what has not been touched for seconds (a VM whose
    host reclaims cold memory, e.g. with DAMON): files generated, or read by
    the runs before, may be back on disk, and a run would then time the disk.
    """
    for path in directory.iterdir():
        with path.open("rb", buffering=0) as f:
            while f.read(1 << 20):
                pass


# -- processes ----------------------------------------------------------------------


def vm_hwm_mib(pid: int) -> float:
    """Peak RSS (VmHWM) of a live process, in MiB; NaN once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")  # a zombie has no memory map left


class HwmSampler(threading.Thread):
    """Follow a process's VmHWM until it exits (for storescu, which can't report it).

    ``wait4``'s ru_maxrss is no use here: Linux folds the high-water mark of
    the memory map that exec replaced, the forking Python parent's, into it.
    ``measure``: what is followed instead (NaN once the process is gone).
    """

    def __init__(
        self,
        pid: int,
        interval: float = 0.005,
        measure: Callable[[int], float] = vm_hwm_mib,
    ) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self.measure = measure
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            value = self.measure(self.pid)
            if value != value:
                if self.peak:
                    return
            else:
                self.peak = max(self.peak, value)
            self.stop.wait(self.interval)


@dataclass
class Finished:
    stdout: str
    stderr: str
    seconds: float
    sampled_hwm_mib: float
    cpu_seconds: float  # user + system, the whole process


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a live process, all its threads (those gone too), in seconds.

    Linux's clock of a process's CPU time: clock ID ``(~pid << 3) | 2``
    (CPUCLOCK_SCHED, per process), what clock_getcpuclockid() returns.
    """
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:
        return float("nan")


def pin(pid: int, cpu: int | None) -> None:
    """Keep a process (its main thread, and the threads it starts) on one CPU."""
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


def run_client(argv: list[str], timeout: float = 900, cpu: int | None = None) -> Finished:
    """Run a client to its end: its output, wall time and sampled VmHWM (on ``cpu``, if given)."""
    with tempfile.TemporaryFile("w+") as err:
        # The children reaped meanwhile are this one alone (the SCP is reaped later).
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=ENV)
        pin(proc.pid, cpu)  # (a Python client is still starting: nothing to time yet)
        sampler = HwmSampler(proc.pid)
        sampler.start()
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            seconds = time.perf_counter() - start
            sampler.stop.set()
            sampler.join()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited with {proc.returncode}: {stderr[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Finished(out, stderr, seconds, sampler.peak, cpu)


# -- pairs --------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    instances: int
    nbytes: int
    scu_rss: float
    scp_rss: float
    stalls: int = 0
    whole_process: bool = False  # storescu: seconds is its wall time, start-up included
    #: CPU time (user + system) of each side during the job: the SCU's over its
    #: stores (storescu: the whole process, its base subtracted later), the
    #: SCP's over the SCU's run (association set-up and release included).
    scu_cpu: float = float("nan")
    scp_cpu: float = float("nan")
    #: Which round of the run it was measured in (every pair runs once a round).
    round: int = -1


@dataclass
class Pair:
    name: str
    scu: str  # aiodicom, pynetdicom, dcmtk
    scp: str
    uvloop: bool = False
    window: int = 1  # aiodicom SCU: tasks sharing the association / async ops window
    read_ahead: bool = False  # aiodicom SCU: one send_c_stores, not send_c_store each
    eager: bool = False  # aiodicom SCU: send_c_stores(eager=True)
    #: The SCP writes each instance to a file (dcmtk: storescp -od DIR +B instead of
    #: --ignore; aiodicom: what `aiodicom storescp -od DIR` does) instead of discarding it.
    scp_writes: bool = False
    #: (SCP's CPU, SCU's CPU): both processes pinned there; None: the scheduler's choice.
    cpus: tuple[int, int] | None = None
    small: list[Sample] = field(default_factory=list)
    large: list[Sample] = field(default_factory=list)
    error: str = ""


@dataclass
class Bench:
    args: argparse.Namespace
    storescu: str | None
    storescp: str | None
    storescu_base: float = float("inf")  # storescu start-up + association + 1 store + release
    storescu_base_cpu: float = float("inf")  # its CPU time
    storescu_start: float = 0.0  # storescu --version
    profile_dir: Path | None = None  # run the Python peers under cProfile
    #: Where SCPs that write put their files: a fresh directory per job, all kept
    #: until the end of the run (see written_dir).
    written: Path | None = None

    def peers(self, role: str) -> list[str]:
        if self.profile_dir is None:
            return [*PEERS, role]
        out = self.profile_dir / f"{role}.prof"
        return [sys.executable, "-m", "cProfile", "-o", str(out), *PEERS[1:], role]

    def pdu_args(self, tool: str) -> list[str]:
        if not self.args.max_pdu:
            return []
        return (
            ["-pdu", str(self.args.max_pdu)]
            if tool == "dcmtk"
            else [
                "--max-pdu",
                str(self.args.max_pdu),
            ]
        )

    def python_args(self, pair: Pair, lib: str) -> list[str]:
        extra = self.pdu_args(lib)
        if lib in ("aiodicom", "raw") and pair.uvloop:
            extra.append("--uvloop")
        if lib == "pynetdicom" and self.args.pyn_chunked:
            extra.append("--pyn-chunked")
        return extra

    @contextmanager
    def scp(self, pair: Pair) -> Iterator[Server]:
        with self._scp(pair) as srv:
            pin(srv.proc.pid, pair.cpus[0] if pair.cpus else None)
            yield srv

    @contextmanager
    def _scp(self, pair: Pair) -> Iterator[Server]:
        if pair.scp == "dcmtk":
            assert self.storescp is not None
            port = free_port()
            with self.written_dir() as out:
                where = ["-od", out, "+B"] if pair.scp_writes else ["--ignore"]
                argv = [self.storescp, *where, "-aet", "BENCH_SCP", *self.pdu_args("dcmtk")]
                with server([*argv, str(port)], port=port) as srv:
                    yield srv
        elif pair.scp_writes:
            with self.written_dir() as out:
                argv = [*self.peers(f"{pair.scp}-store-scp"), *self.python_args(pair, pair.scp)]
                with server([*argv, "--od", out]) as srv:
                    yield srv
        else:
            argv = [*self.peers(f"{pair.scp}-store-scp"), *self.python_args(pair, pair.scp)]
            with server(argv) as srv:
                yield srv

    @contextmanager
    def written_dir(self) -> Iterator[str]:
        """A new directory for an SCP to write into: deleted after the job if
        it holds a few (large) files, else left in place until the run ends.

        Deleting a job's many small files at once would slow the next job's:
        on an ext4 without a journal (as here) a new file skips every inode
        freed in the last seconds, reading each one's dtime, so creating 2,000
        files after 2,000 were deleted costs several times the CPU, and the
        job that happens to follow a writing one would pay for it. The large
        files go at once, so no gigabytes of them wait to be written back to
        disk while later jobs run.
        """
        assert self.written is not None
        out = tempfile.mkdtemp(dir=self.written)
        try:
            yield out
        finally:
            if len(os.listdir(out)) < 100:
                shutil.rmtree(out, ignore_errors=True)

    def storescu_argv(self, port: int, directory: Path) -> list[str]:
        assert self.storescu is not None
        return [
            self.storescu,
            "-aet",
            "BENCH_SCU",
            "-aec",
            "BENCH_SCP",
            *self.pdu_args("dcmtk"),
            "+sd",
            "127.0.0.1",
            str(port),
            str(directory),
        ]

    def measure_storescu_start(self) -> float:
        """Best wall time of ``storescu --version``: process start and exit alone."""
        assert self.storescu is not None
        return min(run_client([self.storescu, "--version"]).seconds for _ in range(5))

    def measure_storescu_base(self, directory: Path, runs: int = 2) -> float:
        """Best wall time of storescu sending one small instance to a fresh storescp."""
        pair = Pair("base", "dcmtk", "dcmtk")
        times = []
        for _ in range(runs):
            with self.scp(pair) as srv:
                done = run_client(self.storescu_argv(srv.port, directory))
            times.append(done.seconds)
            self.storescu_base_cpu = min(self.storescu_base_cpu, done.cpu_seconds)
        return min(times)

    def run(self, pair: Pair, directory: Path) -> Sample:
        with self.scp(pair) as srv:
            warm(directory)  # last thing before the client starts
            scp_cpu = process_cpu_seconds(srv.proc.pid)
            cpu = pair.cpus[1] if pair.cpus else None
            if pair.scu == "dcmtk":
                done = run_client(self.storescu_argv(srv.port, directory), cpu=cpu)
                files = [p for p in directory.iterdir() if p.suffix == ".dcm"]
                sample = Sample(
                    done.seconds,
                    len(files),
                    sum(p.stat().st_size for p in files),
                    done.sampled_hwm_mib,
                    float("nan"),
                    whole_process=True,
                    scu_cpu=done.cpu_seconds,
                )
            else:
                role = f"{pair.scu}-store-scu"
                argv = [*self.peers(role), str(srv.port), "--dir", str(directory)]
                how = ["--window", str(pair.window)] if pair.window > 1 else []
                if pair.read_ahead:
                    how.append("--read-ahead")
                if pair.eager:
                    how.append("--eager")
                done = run_client([*argv, *self.python_args(pair, pair.scu), *how], cpu=cpu)
                res = json.loads(done.stdout.strip().splitlines()[-1])
                sample = Sample(
                    res["seconds"],
                    res["instances"],
                    res["bytes"],
                    res["vm_hwm_mib"],
                    float("nan"),
                    int(res.get("pynetdicom_stalls", 0)),
                    scu_cpu=res.get("cpu_seconds", float("nan")),
                )
            sample.scp_cpu = process_cpu_seconds(srv.proc.pid) - scp_cpu
            sample.scp_rss = vm_hwm_mib(srv.proc.pid)
        return sample


#: Where the pinned rows put (SCP, SCU): what they are called after.
PINNINGS: dict[tuple[int, int], str] = {(0, 0): "both on CPU 0", (0, 1): "SCP on CPU 0, SCU on 1"}


def make_pairs(have_dcmtk: bool, have_uvloop: bool, pinned: bool = False) -> list[Pair]:
    pairs = [Pair("aiodicom <-> aiodicom (asyncio)", "aiodicom", "aiodicom")]
    if have_uvloop:
        pairs.append(Pair("aiodicom <-> aiodicom (uvloop)", "aiodicom", "aiodicom", True))
    for uvloop in (False, True) if have_uvloop else (False,):
        name = READ_AHEAD.format(loop="uvloop" if uvloop else "asyncio")
        pairs.append(Pair(name, "aiodicom", "aiodicom", uvloop, read_ahead=True))
    for uvloop in (False, True) if have_uvloop else (False,):
        name = EAGER.format(loop="uvloop" if uvloop else "asyncio")
        pairs.append(Pair(name, "aiodicom", "aiodicom", uvloop, read_ahead=True, eager=True))
    pairs.append(Pair(WINDOWED, "aiodicom", "aiodicom", window=WINDOW))
    pairs.append(Pair(PYN_REF, "pynetdicom", "pynetdicom"))
    pairs.append(Pair(RAW_BOUND, "raw", "raw"))
    if have_uvloop:
        pairs.append(Pair(RAW_BOUND_UVLOOP, "raw", "raw", True))
    if have_dcmtk:
        pairs.append(Pair(DCMTK_REF, "dcmtk", "dcmtk"))
        pairs.append(Pair(DCMTK_WRITES, "dcmtk", "dcmtk", scp_writes=True))
        pairs.append(Pair(AIODICOM_WRITES, "aiodicom", "aiodicom", scp_writes=True))
        pairs.append(Pair("aiodicom SCU -> dcmtk storescp", "aiodicom", "dcmtk"))
        pairs.append(Pair("dcmtk storescu -> aiodicom SCP", "dcmtk", "aiodicom"))
    pairs.append(Pair("aiodicom SCU -> pynetdicom SCP", "aiodicom", "pynetdicom"))
    pairs.append(Pair("pynetdicom SCU -> aiodicom SCP", "pynetdicom", "aiodicom"))
    if pinned:
        for cpus, where in PINNINGS.items():
            pairs.append(Pair(f"aiodicom <-> aiodicom (asyncio), {where}", "aiodicom",
                              "aiodicom", cpus=cpus))  # fmt: skip
            if have_dcmtk:
                pairs.append(Pair(dcmtk_ref(cpus), "dcmtk", "dcmtk", cpus=cpus))
    return pairs


def dcmtk_ref(cpus: tuple[int, int] | None) -> str:
    """The dcmtk row the others compare with: pinned alike, or not pinned."""
    return DCMTK_REF if cpus is None else f"{DCMTK_REF}, {PINNINGS[cpus]}"


def aiodicom_has_store() -> bool:
    """send_c_store is being written: skip the aiodicom rows until it exists."""
    probe = "import aiodicom.association as a; assert hasattr(a.Association, 'send_c_store')"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


# -- report -------------------------------------------------------------------------


def _best(samples: list[Sample], rate: Callable[[Sample], float]) -> float | None:
    return max(rate(s) for s in samples) if samples else None


def small_rate(s: Sample) -> float:
    return s.instances / s.seconds


def large_rate(s: Sample) -> float:
    return s.nbytes / s.seconds / 1e6


def _rss(samples: list[Sample]) -> str:
    if not samples:
        return "-"
    scu = max(s.scu_rss for s in samples)
    scp = max(s.scp_rss for s in samples)
    return f"{scu:,.0f} / {scp:,.0f}"


def _cpu(samples: list[Sample]) -> str:
    """CPU microseconds per instance, SCU + SCP, of the run that used the least."""
    done = [s for s in samples if not (math.isnan(s.scu_cpu) or math.isnan(s.scp_cpu))]
    if not done:
        return "-"
    best = min(done, key=lambda s: s.scu_cpu + s.scp_cpu)
    scu, scp = (1e6 * t / best.instances for t in (best.scu_cpu, best.scp_cpu))
    return f"{scu:,.0f} + {scp:,.0f} = {scu + scp:,.0f}"


def pdu_note(pair: Pair, max_pdu: int) -> str:
    """The SCP's maximum PDU, which bounds the P-DATA-TF PDUs of the stores."""
    if pair.scp == "raw":
        return "-"
    return f"{max_pdu or DEFAULT_PDU[pair.scp]:,}"


def table(pairs: list[Pair], max_pdu: int) -> str:
    by_name = {p.name: p for p in pairs}

    def ref(name: str, which: str, rate: Callable[[Sample], float]) -> float | None:
        pair = by_name.get(name)
        return _best(getattr(pair, which), rate) if pair else None

    rates = {"small": small_rate, "large": large_rate}

    def cells(pair: Pair, value: float | None, which: str, fmt: str) -> list[str]:
        if value is None:
            return ["-", "", ""]
        pyn = ref(PYN_REF, which, rates[which])
        dcm = ref(DCMTK_WRITES if pair.scp_writes else dcmtk_ref(pair.cpus), which, rates[which])
        return [
            format(value, fmt),
            f"{value / pyn:.2f}x" if pyn else "",
            f"{value / dcm:.2f}x" if dcm else "",
        ]

    lines = [
        "| pair | small inst/s | vs pynetdicom | vs dcmtk | large MB/s | vs pynetdicom "
        "| vs dcmtk | CPU µs/instance SCU + SCP, small "
        "| peak RSS MiB SCU / SCP, small | peak RSS MiB SCU / SCP, large "
        "| SCP max PDU | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in pairs:
        small = _best(p.small, small_rate)
        large = _best(p.large, large_rate)
        note = p.error
        stalls = sum(s.stalls for s in p.small + p.large)
        if stalls:
            note = f"{note} {stalls} pynetdicom stall(s) left out (pynetdicom#875)".strip()
        row = [
            p.name,
            *cells(p, small, "small", ",.0f"),
            *cells(p, large, "large", ",.0f"),
            _cpu(p.small),
            _rss(p.small),
            _rss(p.large),
            pdu_note(p, max_pdu),
            note,
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _paired(
    samples: list[Sample], ref: list[Sample], rate: Callable[[Sample], float]
) -> list[float]:
    """The ratio of each round's rate to the reference's in the same round."""
    by_round = {s.round: rate(s) for s in ref}
    return [rate(s) / by_round[s.round] for s in samples if s.round in by_round]


def _spread(values: list[float], fmt: str, unit: str = "") -> str:
    if not values:
        return "-"
    mid = statistics.median(values)
    return f"{mid:{fmt}}{unit} ({min(values):{fmt}} to {max(values):{fmt}})"


def round_table(pairs: list[Pair]) -> str:
    """Every aiodicom row against dcmtk round by round: the median over the
    rounds (and the range) of its rate, and of its rate divided by dcmtk's in
    the same round. One lucky run moves a best-of-N; it barely moves these."""
    by_name = {p.name: p for p in pairs}
    lines = [
        "| pair, against dcmtk in the same round | rounds | small inst/s, median (range) "
        "| small vs dcmtk, median (range) | large MB/s, median (range) "
        "| large vs dcmtk, median (range) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in pairs:
        if p.scu != "aiodicom" or p.scp != "aiodicom" or p.error:
            continue
        ref = by_name.get(DCMTK_WRITES if p.scp_writes else dcmtk_ref(p.cpus))
        if ref is None or ref.error:
            continue
        small = _paired(p.small, ref.small, small_rate)
        large = _paired(p.large, ref.large, large_rate)
        lines.append(
            f"| {p.name} | {max(len(small), len(large))} "
            f"| {_spread([small_rate(s) for s in p.small], ',.0f')} "
            f"| {_spread(small, '.2f', 'x')} "
            f"| {_spread([large_rate(s) for s in p.large], ',.0f')} "
            f"| {_spread(large, '.2f', 'x')} |"
        )
    return "\n".join(lines)


def profile(bench: Bench, data: Path, out: Path, uvloop: bool) -> None:
    """cProfile both aiodicom peers of one run per workload; print where time goes."""
    import pstats

    pair = Pair("aiodicom <-> aiodicom", "aiodicom", "aiodicom", uvloop and bench.args.uvloop)
    for which in ("small", "large"):
        bench.profile_dir = out / which
        bench.profile_dir.mkdir(parents=True, exist_ok=True)
        sample = bench.run(pair, data / which)
        print(f"## {which}: {sample.instances} instances in {sample.seconds:.2f} s (profiled)")
        for role in ("aiodicom-store-scu", "aiodicom-store-scp"):
            path = bench.profile_dir / f"{role}.prof"
            print(f"### {role}: {path}")
            stats = pstats.Stats(str(path))
            stats.sort_stats("tottime").print_stats(15)


# -- main ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 small, 1 large, 1 repetition")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds, each running every pair once (the main table keeps each pair's "
        "best; the table under it the median per round against dcmtk)",
    )
    parser.add_argument("--small", type=int, default=2000, help="number of ~16 KB instances")
    parser.add_argument("--large", type=int, default=4, help="number of ~64 MB instances")
    parser.add_argument("--large-mb", type=int, default=64, help="size of a large instance")
    parser.add_argument(
        "--max-pdu",
        type=int,
        default=0,
        help="force one maximum PDU on every side (dcmtk: 4096..131072); "
        "default: each tool's own (aiodicom 262144, pynetdicom 16382, dcmtk 16384)",
    )
    parser.add_argument(
        "--pyn-chunked",
        action="store_true",
        help="pynetdicom with STORE_SEND/RECV_CHUNKED_DATASET (no dcmread, spools to disk)",
    )
    parser.add_argument("--uvloop", action="store_true", help="--profile: run under uvloop")
    parser.add_argument("--no-aiodicom", action="store_true", help="skip the aiodicom rows")
    parser.add_argument(
        "--no-pinned", action="store_true", help="skip the rows pinned to CPUs 0 and 1"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated substrings: run only the matching pairs"
    )
    parser.add_argument("--tmpdir", default=None, help="where to generate the instances")
    parser.add_argument(
        "--written-dir",
        default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
        help="where SCPs that write put their files (default: /dev/shm, a tmpfs: the "
        "software is measured, not the disk)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="instead of the table: run aiodicom <-> aiodicom once (small, then large) with "
        "both peers under cProfile, write DIR/{small,large}/*.prof and print their top entries",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.small, args.large = 1, 200, 1
    if args.max_pdu and not 4096 <= args.max_pdu <= 131072:
        parser.error("--max-pdu: dcmtk accepts 4096..131072")

    started = time.perf_counter()
    storescu, storescp = dcmtk_tool("storescu"), dcmtk_tool("storescp")
    have_dcmtk = bool(storescu and storescp)
    try:
        import uvloop  # noqa: F401

        have_uvloop = True
    except ImportError:
        have_uvloop = False
    pinned = not args.no_pinned and {0, 1} <= os.sched_getaffinity(0)
    pairs = make_pairs(have_dcmtk, have_uvloop, pinned)
    skipped_aio = ""
    if args.no_aiodicom:
        skipped_aio = "--no-aiodicom"
    elif not aiodicom_has_store():
        skipped_aio = "aiodicom has no send_c_store yet"
    if skipped_aio:
        pairs = [p for p in pairs if "aiodicom" not in (p.scu, p.scp)]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        keep = {PYN_REF, DCMTK_REF}
        pairs = [p for p in pairs if p.name in keep or any(w in p.name for w in wanted)]

    with (
        tempfile.TemporaryDirectory(prefix="bench_store_", dir=args.tmpdir) as tmp,
        tempfile.TemporaryDirectory(prefix="bench_store_", dir=args.written_dir) as written,
    ):
        root = Path(tmp)
        t0 = time.perf_counter()
        small_size = make_instances(root / "small", args.small, 64, 128, "s")
        cols = 8192
        rows = max(1, args.large_mb * 2**20 // (2 * cols))
        large_size = make_instances(root / "large", args.large, rows, cols, "l")
        make_instances(root / "one", 1, 64, 128, "o")
        gen = time.perf_counter() - t0
        bench = Bench(args, storescu, storescp, written=Path(written))
        if args.profile:
            profile(bench, root, Path(args.profile), have_uvloop)
            return
        os.sync()  # write the new files back now, not while measuring
        if have_dcmtk:
            bench.storescu_start = bench.measure_storescu_start()

        for rnd in range(args.repeat):
            if have_dcmtk:  # measured in every round too, the best is subtracted
                base = bench.measure_storescu_base(root / "one")
                bench.storescu_base = min(bench.storescu_base, base)
            for pair in pairs:
                if pair.error:
                    continue
                try:
                    if args.small:  # storescu refuses an empty directory
                        pair.small.append(bench.run(pair, root / "small"))
                        pair.small[-1].round = rnd
                    # (see the notes on pinned rows and on the bound)
                    if args.large and not pair.cpus and pair.scu != "raw":
                        pair.large.append(bench.run(pair, root / "large"))
                        pair.large[-1].round = rnd
                except Exception as exc:  # keep the other rows
                    pair.error = f"failed: {str(exc).splitlines()[0][:120]}"
                    print(f"{pair.name}: {exc}", file=sys.stderr)

    for pair in pairs:
        for sample in pair.small + pair.large:
            if sample.whole_process:
                sample.seconds = max(sample.seconds - bench.storescu_base, 1e-9)
                sample.scu_cpu = max(sample.scu_cpu - bench.storescu_base_cpu, 0.0)
    print(table(pairs, args.max_pdu))
    if args.repeat > 1 and have_dcmtk:
        print()
        print(round_table(pairs))
    pdu = (
        f"forced to {args.max_pdu:,} bytes on every side"
        if args.max_pdu
        else "each tool's default (aiodicom 262,144; pynetdicom 16,382; dcmtk 16,384)"
    )
    chunked = (
        " (here with STORE_SEND/RECV_CHUNKED_DATASET: it sends the file's bytes undecoded and "
        "its SCP spools what it receives to a temp file)"
        if args.pyn_chunked
        else ""
    )
    notes = [
        f"small: {args.small:,} instances of {small_size:,} bytes; large: {args.large} of "
        f"{large_size:,} bytes ({rows}x{cols} 16-bit pixels); each set on one association; "
        f"CT Image Storage, Explicit VR Little Endian; generated in {gen:.1f} s.",
        f"Max PDU: {pdu}; the SCP's limit sets the size of the P-DATA-TF PDUs of the stores.",
        "SCUs read every instance from its file, in the page cache (every file of the set "
        "is read just before each run: this machine may page out what went unused for "
        "seconds): aiodicom send_c_store(path); "
        "dcmtk storescu +sd DIR (it scans the files' headers first, inside its timing); "
        "pynetdicom send_c_store(path), which is dcmread(path) and then encoding the data set "
        f"again{chunked}.",
        "SCPs discard: storescp --ignore; the aiodicom and pynetdicom handlers return 0x0000 "
        "without touching the data set. But an aiodicom SCP spools an instance over "
        "ae.spool_threshold (16 MiB) to a temp file as it arrives (its memory bound), so "
        "the large rows into aiodicom include that disk write, which storescp --ignore "
        f"never does: '{DCMTK_WRITES}' is the like-for-like dcmtk row (storescp writing "
        "each instance to disk as received, bit-preserving).",
        f"'{AIODICOM_WRITES}': the SCP saves every instance as `aiodicom storescp -od` does "
        "(a Part 10 file written in a worker thread, or the spool file renamed into place, "
        "before the response); its 'vs dcmtk' is against the dcmtk row that writes, as is "
        "that row's own. Both write into a fresh directory under "
        f"{args.written_dir or 'the temp dir'} "
        "(a tmpfs by default: the disk is not measured; on this machine's ext4, which has no "
        "journal, creating a file skips every inode freed in the last minutes, reading each, "
        "and the rate of a writing row depends on what was deleted before it).",
        "Python SCUs time from the first C-STORE-RQ to the last C-STORE-RSP on an "
        "established association. pynetdicom SCUs: a response lost to pynetdicom#875 "
        "(counted in the note) is waited out, left out of the time and the store resent on "
        "a new association.",
        f"Every other row sends one store at a time and waits for its response (as storescu "
        f"and pynetdicom do). '{WINDOWED}': {WINDOW} tasks call send_c_store on one "
        f"association, which proposes an Asynchronous Operations Window of {WINDOW} invoked "
        "operations (PS3.7 D.3.3.3); the aiodicom SCP accepts it and answers in order. "
        "dcmtk and pynetdicom don't negotiate the window, so they have no such row.",
        f"'{READ_AHEAD.format(loop='asyncio')}' (and uvloop): the same files on the wire "
        "exactly as the plain rows, one C-STORE at a time, each sent once the previous "
        "response is in, but given to one `async for result in assoc.send_c_stores(paths)`, "
        "which reads and probes the next file while the SCP handles the one just sent; the "
        "plain rows await send_c_store(path) for each file, so that work is on the round "
        "trip. storescu +sd reads every file's header before it sends the first.",
        f"'{EAGER.format(loop='asyncio')}' (and uvloop): send_c_stores(paths, eager=True): "
        "still one C-STORE at a time on the wire, but the next request is written from "
        "the transport's callback the moment the previous response is routed, before "
        "the loop over the results is woken for it (results come one behind), as "
        "storescu sends its next request as soon as it has read a response.",
        f"'{RAW_BOUND}': two Python processes on asyncio and nothing else (benchmarks/"
        "_peers.py raw-store-scu/-scp): the SCU opens, reads and closes each file on the "
        "event loop, writes it with a 6-byte header in one call and awaits a 200-byte "
        "answer in a coroutine, as `await send_c_store(path)` waits for its response. No "
        "DICOM is parsed or built on either side, so it is what any asyncio SCU/SCP pair "
        "sending one instance at a time can reach here: its 'vs dcmtk' is the ceiling of "
        "the aiodicom row's. Small instances only: a 64 MB file read whole and sent as "
        "one message measures Python's buffer copies, not what asyncio allows. "
        f"'{RAW_BOUND_UVLOOP}': the same two programs on uvloop's event loop, the ceiling "
        "of the aiodicom (uvloop) row.",
    ]
    if args.repeat > 1 and have_dcmtk:
        notes.append(
            "The second table: every aiodicom <-> aiodicom row, round by round against "
            "the dcmtk row the first table compares it with (each round runs every pair "
            "once, one after the other, so the two ran under the same conditions): the "
            "median and range over the rounds of its rate, and of its rate divided by "
            "dcmtk's in the same round. The first table's best of N favours whichever "
            "row had one lucky run; judge a margin of a few percent by the medians."
        )
    if have_dcmtk:
        notes.append(
            "storescu runs one process per job, timed whole, minus "
            f"{bench.storescu_base * 1000:.0f} ms: the best of {2 * args.repeat} interleaved "
            "runs of storescu sending 1 small instance (process start, association, 1 store, "
            f"release); its process start alone (storescu --version) is "
            f"{bench.storescu_start * 1000:.1f} ms, negligible against 2,000 stores."
        )
    if any(p.cpus for p in pairs):
        notes.append(
            "Pinned rows: each side kept on one CPU (sched_setaffinity), 'both on CPU 0' "
            "or 'SCP on CPU 0, SCU on 1', and compared with dcmtk pinned the same way. "
            "Unpinned, the scheduler puts the two sides on one CPU or on two as it goes, "
            "and one store at a time is far faster on one (no wake-up crosses CPUs): a "
            "run's rate depends on where it happened to land. The pinned rows show each "
            "case alone, for the small set only: pinned, a process's threads share its "
            "CPU, and the aiodicom SCP spools a large instance to disk from a worker "
            "thread, which would then take turns with its event loop."
        )
    notes.append(
        "CPU per instance: user + system time of each side while the small set went, "
        "divided by the instances (of the repetition that used the least in all): a "
        "Python SCU's over its stores (time.process_time()), storescu's over its whole "
        "process minus that of its 1-instance runs, an SCP's from its process CPU clock "
        "(all threads) across the SCU's run (association set-up and release included, "
        "for every SCP alike). It too depends on where the scheduler ran the two sides: "
        "on two CPUs each wake-up crosses CPUs, and both the rate and the CPU time of "
        "every side are worse than when they share one."
    )
    notes.append(
        "Peak RSS is VmHWM: Python SCUs report their own at the end, storescu's is sampled "
        "every 5 ms from /proc/PID/status, an SCP's is read there just before it is stopped; "
        "a fresh SCP process per job, storescp without --fork. TCP_NODELAY on every side."
    )
    print()
    for note in notes:
        print(f"* {note}")
    if skipped_aio:
        print(f"* aiodicom rows skipped: {skipped_aio}.")
    print(
        f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, best of {args.repeat} "
        f"(interleaved); {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
