"""Association cycles and C-ECHO round trips: aiodicom against pynetdicom and dcmtk.

Every column is measured in the same run, each peer in its own process on
127.0.0.1 with TCP_NODELAY on every side (dcmtk gets ``TCP_NODELAY=1``;
pynetdicom gets it from an EVT_CONN_OPEN handler; asyncio and anyio set it by
default). Prints one Markdown table; ratios are against pynetdicom<->pynetdicom.

    python benchmarks/bench_echo.py            # full run (about two minutes)
    python benchmarks/bench_echo.py --quick    # smaller counts

* association cycle: connect, A-ASSOCIATE, one C-ECHO, A-RELEASE, close.
* C-ECHO: round trips on one established association, one at a time.
* the bound: a bare asyncio echo of 16-byte messages between two processes,
  the most Python's event loop does per round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = [sys.executable, str(HERE / "_peers.py")]
ENV = {**os.environ, "TCP_NODELAY": "1", "PYTHONUNBUFFERED": "1"}


def dcmtk_tool(name: str) -> str | None:
    """The real dcmtk binary (pynetdicom installs look-alike scripts on PATH)."""
    candidates = [f"/usr/bin/{name}", shutil.which(name) or ""]
    for path in candidates:
        if not path or not os.access(path, os.X_OK):
            continue
        try:
            out = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in out.lower():
            return path
    return None


@dataclass
class Server:
    port: int
    proc: subprocess.Popen[str]


@contextmanager
def server(
    argv: list[str],
    *,
    port: int | None = None,
    stop_signal: int | None = None,
    start_timeout: float = 20.0,
    stop_timeout: float = 10.0,
) -> Iterator[Server]:
    """Start an SCP; yield it once it listens (READY line, or its port answers).

    ``stop_signal``: run it in a session of its own and stop it with that
    signal sent to the whole session (a wrapper such as valgrind or strace,
    and the SCP it runs), then wait for it to exit (the wrapper writes its
    counts then); without it, ``terminate()``.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=ENV, start_new_session=stop_signal is not None)  # fmt: skip
    try:
        if port is None:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"{argv} did not start: {line!r}")
            port = int(line.split()[1])
        else:
            _wait_listening(proc, port, start_timeout)
        yield Server(port, proc)
    finally:
        if stop_signal is None:
            proc.terminate()
        else:
            os.killpg(proc.pid, stop_signal)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            if stop_signal is None:
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_listening(proc: subprocess.Popen[str], port: int, timeout: float = 20.0) -> None:
    """Wait until ``port`` is in LISTEN state, without connecting to it.

    A probe connection would be an association attempt for storescp (which
    serves one at a time without --fork); /proc/net/tcp shows the listener.
    """
    want = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(want.strip()) and fields[3] == "0A":
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")


def client(argv: list[str]) -> dict[str, Any]:
    out = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{argv} failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def time_echoscu(echoscu: str, port: int, repeat: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [echoscu, "-aec", "BENCH_SCP", "--repeat", str(repeat), "127.0.0.1", str(port)],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=600,
    )
    return time.perf_counter() - start


def dcmtk_echo_rate(echoscu: str, port: int, echoes: int) -> float:
    """C-ECHO/s of ``echoscu --repeat``, process start-up subtracted."""
    base = min(time_echoscu(echoscu, port, 1) for _ in range(3))
    total = time_echoscu(echoscu, port, echoes + 1)
    return echoes / max(total - base, 1e-9)


def dcmtk_cycle_rate(echoscu: str, port: int, cycles: int) -> float:
    """Association cycles/s with one echoscu process per association."""
    start = time.perf_counter()
    for _ in range(cycles):
        time_echoscu(echoscu, port, 1)
    return cycles / (time.perf_counter() - start)


def best(values: list[float]) -> float:
    return max(values) if values else float("nan")


Row = tuple[str, float | None, float | None, str]


def run(args: argparse.Namespace) -> list[Row]:
    """Start every server once, then run the pairs round-robin, ``repeat`` times.

    Interleaving the repetitions spreads a noisy stretch of the machine over
    all pairs instead of one; the best of each pair's runs is reported.
    """
    n_echo, n_cycle = args.echoes, args.cycles
    p_echo, p_cycle = args.pyn_echoes, args.pyn_cycles
    storescp, echoscu = dcmtk_tool("storescp"), dcmtk_tool("echoscu")
    try:
        import uvloop  # noqa: F401

        have_uvloop = True
    except ImportError:
        have_uvloop = False

    results: dict[str, tuple[list[float], list[float]]] = {}
    stalls = 0
    with ExitStack() as stack:
        raw_port = stack.enter_context(server([*PEERS, "raw-echo-server"])).port
        aio_port = stack.enter_context(server([*PEERS, "aiodicom-scp"])).port
        uv_port = (
            stack.enter_context(server([*PEERS, "aiodicom-scp", "--uvloop"])).port
            if have_uvloop
            else 0
        )
        pyn_port = stack.enter_context(server([*PEERS, "pynetdicom-scp"])).port
        dcm_port = 0
        if storescp and echoscu:
            dcm_port = free_port()
            stack.enter_context(
                server([storescp, "--ignore", "-aet", "BENCH_SCP", str(dcm_port)], port=dcm_port)
            )

        def peer(role: str, port: int, echoes: int, cycles: int, *extra: str) -> dict[str, Any]:
            argv = [*PEERS, role, str(port), *extra, "--echoes", str(echoes)]
            return client([*argv, "--cycles", str(cycles)])

        jobs: list[tuple[str, Any]] = [
            (
                "bare asyncio 16-byte echo (the bound)",
                lambda: client([*PEERS, "raw-echo-client", str(raw_port), "--echoes", str(n_echo)]),
            ),
            (
                "aiodicom <-> aiodicom (asyncio)",
                lambda: peer("aiodicom-scu", aio_port, n_echo, n_cycle),
            ),
        ]
        if have_uvloop:
            jobs.append(
                (
                    "aiodicom <-> aiodicom (uvloop)",
                    lambda: peer("aiodicom-scu", uv_port, n_echo, n_cycle, "--uvloop"),
                )
            )
        jobs += [
            (
                "pynetdicom <-> pynetdicom",
                lambda: peer("pynetdicom-scu", pyn_port, p_echo, p_cycle),
            ),
            (
                "pynetdicom SCU -> aiodicom SCP",
                lambda: peer("pynetdicom-scu", aio_port, p_echo, p_cycle),
            ),
            (
                "aiodicom SCU -> pynetdicom SCP",
                lambda: peer("aiodicom-scu", pyn_port, p_echo, p_cycle),
            ),
        ]
        if dcm_port:
            assert echoscu is not None
            jobs += [
                (
                    "aiodicom SCU -> dcmtk storescp",
                    lambda: peer("aiodicom-scu", dcm_port, n_echo, n_cycle),
                ),
                (
                    "dcmtk echoscu -> dcmtk storescp",
                    lambda: {
                        "echo_per_s": dcmtk_echo_rate(echoscu, dcm_port, n_echo),
                        "cycles_per_s": dcmtk_cycle_rate(echoscu, dcm_port, args.dcmtk_cycles),
                    },
                ),
                (
                    "dcmtk echoscu -> aiodicom SCP",
                    lambda: {
                        "echo_per_s": dcmtk_echo_rate(echoscu, aio_port, n_echo),
                        "cycles_per_s": dcmtk_cycle_rate(echoscu, aio_port, args.dcmtk_cycles),
                    },
                ),
            ]
        for _ in range(args.repeat):
            for name, job in jobs:
                res = job()
                echo, cyc = results.setdefault(name, ([], []))
                echo.append(res.get("echo_per_s", float("nan")))
                cyc.append(res.get("cycles_per_s", float("nan")))
                stalls += int(res.get("pynetdicom_stalls", 0))

    notes = {
        "bare asyncio 16-byte echo (the bound)": "2 processes",
        "pynetdicom <-> pynetdicom": "reference",
        "dcmtk echoscu -> dcmtk storescp": "cycles: a process each",
        "dcmtk echoscu -> aiodicom SCP": "cycles: a process each",
    }
    rows: list[Row] = []
    for name, (echo, cyc) in results.items():
        c = best(cyc)
        rows.append((name, None if c != c else c, best(echo), notes.get(name, "")))
    if not have_uvloop:
        rows.append(("aiodicom <-> aiodicom (uvloop)", None, None, "uvloop not installed"))
    if not dcm_port:
        rows.append(("dcmtk", None, None, "dcmtk not installed: apt-get install dcmtk"))
    if stalls:
        rows.append((f"(pynetdicom SCU lost {stalls} response(s): pynetdicom#875)", None, None, ""))
    return rows


def table(rows: list[Row]) -> str:
    ref = next(r for r in rows if r[0].startswith("pynetdicom <-> pynetdicom"))
    bound = rows[0][2]

    def fmt(value: float | None, base: float | None) -> tuple[str, str]:
        if value is None or value != value:
            return "-", ""
        ratio = f"{value / base:.1f}x" if base else ""
        return f"{value:,.0f}", ratio

    lines = [
        "| pair | assoc cycles/s | vs pynetdicom | C-ECHO/s | vs pynetdicom | vs bound | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, cyc, echo, note in rows:
        c, cr = fmt(cyc, ref[1])
        e, er = fmt(echo, ref[2])
        vb = f"{echo / bound:.2f}" if echo and bound and echo == echo else ""
        lines.append(f"| {name} | {c} | {cr} | {e} | {er} | {vb} | {note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--repeat", type=int, default=3, help="runs per pair (best is kept)")
    parser.add_argument("--echoes", type=int, default=20000)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--pyn-echoes", type=int, default=1000)
    parser.add_argument("--pyn-cycles", type=int, default=100)
    parser.add_argument("--dcmtk-cycles", type=int, default=100)
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.echoes, args.cycles = 1, 3000, 200
        args.pyn_echoes, args.pyn_cycles, args.dcmtk_cycles = 300, 30, 30
    started = time.perf_counter()
    rows = run(args)
    print(table(rows))
    print(
        f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, best of {args.repeat}; "
        f"{time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
