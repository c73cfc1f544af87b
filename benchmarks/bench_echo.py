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
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def server(argv: list[str], *, port: int | None = None) -> Iterator[int]:
    """Start a server process; yield its port (from READY or the given one)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV
    )
    try:
        if port is None:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"{argv} did not start: {line!r}")
            port = int(line.split()[1])
        else:
            _wait_port(port)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def run(args: argparse.Namespace) -> list[tuple[str, float | None, float | None, str]]:
    rows: list[tuple[str, float | None, float | None, str]] = []
    n_echo, n_cycle = args.echoes, args.cycles
    p_echo, p_cycle = args.pyn_echoes, args.pyn_cycles
    reps = args.repeat
    stalls = [0]

    def pair(scp: list[str], scu: list[str], echoes: int, cycles: int) -> tuple[float, float]:
        echo, cyc = [], []
        with server(PEERS + scp) as port:
            for _ in range(reps):
                res = client(
                    [
                        *PEERS,
                        scu[0],
                        str(port),
                        *scu[1:],
                        "--echoes",
                        str(echoes),
                        "--cycles",
                        str(cycles),
                    ]
                )
                echo.append(res.get("echo_per_s", float("nan")))
                cyc.append(res.get("cycles_per_s", float("nan")))
                stalls[0] += res.get("pynetdicom_stalls", 0)
        return best(echo), best(cyc)

    with server([*PEERS, "raw-echo-server"]) as port:
        raw = best(
            [
                client([*PEERS, "raw-echo-client", str(port), "--echoes", str(n_echo)])[
                    "echo_per_s"
                ]
                for _ in range(reps)
            ]
        )
    rows.append(("bare asyncio 16-byte echo (the bound)", None, raw, "2 processes"))

    e, c = pair(["aiodicom-scp"], ["aiodicom-scu"], n_echo, n_cycle)
    rows.append(("aiodicom <-> aiodicom (asyncio)", c, e, ""))
    try:
        import uvloop  # noqa: F401

        e, c = pair(["aiodicom-scp", "--uvloop"], ["aiodicom-scu", "--uvloop"], n_echo, n_cycle)
        rows.append(("aiodicom <-> aiodicom (uvloop)", c, e, ""))
    except ImportError:
        rows.append(("aiodicom <-> aiodicom (uvloop)", None, None, "uvloop not installed"))

    e, c = pair(["pynetdicom-scp"], ["pynetdicom-scu"], p_echo, p_cycle)
    rows.append(("pynetdicom <-> pynetdicom", c, e, "reference"))

    e, c = pair(["aiodicom-scp"], ["pynetdicom-scu"], p_echo, p_cycle)
    rows.append(("pynetdicom SCU -> aiodicom SCP", c, e, ""))
    e, c = pair(["pynetdicom-scp"], ["aiodicom-scu"], p_echo, p_cycle)
    rows.append(("aiodicom SCU -> pynetdicom SCP", c, e, ""))

    storescp, echoscu = dcmtk_tool("storescp"), dcmtk_tool("echoscu")
    if storescp and echoscu:
        port = free_port()
        with server([storescp, "--ignore", "-aet", "BENCH_SCP", str(port)], port=port):
            echo, cyc = [], []
            for _ in range(reps):
                res = client(
                    [
                        *PEERS,
                        "aiodicom-scu",
                        str(port),
                        "--echoes",
                        str(n_echo),
                        "--cycles",
                        str(n_cycle),
                    ]
                )
                echo.append(res["echo_per_s"])
                cyc.append(res["cycles_per_s"])
            rows.append(("aiodicom SCU -> dcmtk storescp", best(cyc), best(echo), ""))
            d_echo = best([dcmtk_echo_rate(echoscu, port, n_echo) for _ in range(reps)])
            d_cyc = dcmtk_cycle_rate(echoscu, port, args.dcmtk_cycles)
            rows.append(
                ("dcmtk echoscu -> dcmtk storescp", d_cyc, d_echo, "cycles: a process each")
            )
        with server([*PEERS, "aiodicom-scp"]) as port:
            d_echo = best([dcmtk_echo_rate(echoscu, port, n_echo) for _ in range(reps)])
            d_cyc = dcmtk_cycle_rate(echoscu, port, args.dcmtk_cycles)
            rows.append(("dcmtk echoscu -> aiodicom SCP", d_cyc, d_echo, "cycles: a process each"))
    else:
        rows.append(("dcmtk", None, None, "dcmtk not installed: apt-get install dcmtk"))
    if stalls[0]:
        rows.append(
            (f"(pynetdicom SCU lost {stalls[0]} response(s): pynetdicom#875)", None, None, "")
        )
    return rows


def table(rows: list[tuple[str, float | None, float | None, str]]) -> str:
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
