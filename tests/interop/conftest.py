"""Interop harness: real DICOM peers (dcmtk's tools, tests/peers/pynetdicom_peer.py)
as subprocesses on 127.0.0.1, started from fixtures.

Nothing here imports aiodicom, so the harness works (and is self-checked by
test_peers_selfcheck.py) independently of the library under test.

Rules:

- A missing peer (dcmtk tool, pynetdicom) skips the test, or fails it when the
  environment has ``AIODICOM_REQUIRE_PEERS=1`` (CI sets it).
- Every wait has a deadline; every process started here is stopped at teardown
  (SIGTERM to its process group, SIGKILL after a grace period).
- Peers run with ``TCP_NODELAY=1`` in their environment (dcmtk and the
  pynetdicom peer both honour it).

Every test collected under tests/interop gets the ``interop`` marker.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

HOST = "127.0.0.1"
REQUIRE_PEERS_ENV = "AIODICOM_REQUIRE_PEERS"
DCMTK_DIR_ENV = "AIODICOM_DCMTK_DIR"
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
PEER_SCRIPT = REPO_ROOT / "tests" / "peers" / "pynetdicom_peer.py"

DEFAULT_READY_TIMEOUT = 20.0
DEFAULT_STOP_GRACE = 5.0


# --------------------------------------------------------------------------- markers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes minutes or gigabytes (1 GiB transfers); deselect with -m 'not slow'"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.interop)


# --------------------------------------------------------------------------- peer requirement


def peers_required() -> bool:
    return os.environ.get(REQUIRE_PEERS_ENV, "") == "1"


def missing_peer(message: str) -> NoReturn:
    """Skip, or fail when ``AIODICOM_REQUIRE_PEERS=1``."""
    if peers_required():
        pytest.fail(
            f"{message} ({REQUIRE_PEERS_ENV}=1: a missing peer is a failure)", pytrace=False
        )
    pytest.skip(message)


def _is_dcmtk(path: str) -> bool:
    try:
        cp = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            errors="replace",
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "$dcmtk:" in cp.stdout + cp.stderr


@functools.cache
def find_dcmtk_tool(name: str) -> str | None:
    """The path of dcmtk's `name`, or None.

    pynetdicom installs console scripts with dcmtk's names (``storescp``,
    ``echoscu``, ``storescu``, ``findscu``, ``getscu``, ``movescu``); where they
    come first on PATH (pyenv shims, venvs) ``shutil.which`` finds pynetdicom's.
    So every candidate on PATH is asked for ``--version`` and only one that
    answers ``$dcmtk: ...`` is taken. ``AIODICOM_DCMTK_DIR`` is tried first.
    """
    dirs: list[str] = []
    if os.environ.get(DCMTK_DIR_ENV):
        dirs.append(os.environ[DCMTK_DIR_ENV])
    dirs += [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    seen: set[str] = set()
    candidates: list[str] = []
    for d in dirs:
        cand = shutil.which(name, path=d)
        if cand is not None and os.path.realpath(cand) not in seen:
            seen.add(os.path.realpath(cand))
            candidates.append(cand)
    # dcmtk's tools are binaries; try those before scripts (shims, console
    # scripts), which are slow to ask and usually pynetdicom's.
    candidates.sort(key=_is_script)
    for cand in candidates:
        if _is_dcmtk(cand):
            return cand
    return None


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return True


def require_tool(name: str) -> str:
    """Path of the dcmtk tool `name`; skip/fail (see module doc) if absent."""
    path = find_dcmtk_tool(name)
    if path is None:
        missing_peer(f"dcmtk tool {name!r} not found on PATH (apt-get install dcmtk)")
    return path


def require_pynetdicom() -> ModuleType:
    """The pynetdicom module (>= 3); skip/fail (see module doc) if absent."""
    try:
        import pynetdicom
    except ImportError as exc:
        missing_peer(f"pynetdicom is not importable ({exc}); pip install 'pynetdicom>=3'")
    major = int(str(pynetdicom.__version__).split(".")[0])
    if major < 3:
        missing_peer(f"pynetdicom >= 3 needed, found {pynetdicom.__version__}")
    return pynetdicom


# --------------------------------------------------------------------------- ports, env


def free_port(host: str = HOST) -> int:
    """A currently free TCP port on `host` (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def peer_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ plus TCP_NODELAY=1 and PYTHONUNBUFFERED=1, plus `extra`."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def _tail(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


class PeerResult(subprocess.CompletedProcess):  # type: ignore[type-arg]
    """A CompletedProcess (text stdout/stderr) with describe() for assertion messages."""

    def describe(self) -> str:
        return (
            f"$ {' '.join(map(str, self.args))}\n-> exit {self.returncode}\n"
            f"--- stdout ---\n{_tail(self.stdout or '')}\n"
            f"--- stderr ---\n{_tail(self.stderr or '')}"
        )

    __str__ = describe


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> PeerResult:
    """Run to completion with a timeout; a timeout fails the test with the output so far."""
    argv = [str(a) for a in argv]
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=peer_env(env),
        cwd=cwd,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            if argv[0] == sys.executable:
                # a Python peer dumps every thread's stack on SIGUSR1
                # (pynetdicom_peer.py): show where it was stuck
                process.send_signal(signal.SIGUSR1)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(1.0)
            process.kill()
            out, err = process.communicate()
            pytest.fail(
                f"timed out after {timeout} s: {' '.join(argv)}\n--- stdout ---\n"
                f"{_tail(out or '')}\n--- stderr ---\n{_tail(err or '', 16000)}",
                pytrace=False,
            )
    return PeerResult(argv, process.returncode, out, err)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parse a JSON-lines file; a missing file is empty; a partial last line is ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # still being written
        if line.strip():
            events.append(json.loads(line))
    return events


def _matches(event: Mapping[str, Any], name: str | None, match: Mapping[str, Any]) -> bool:
    if name is not None and event.get("event") != name:
        return False
    return all(event.get(k) == v for k, v in match.items())


# --------------------------------------------------------------------------- processes


class PeerProcess:
    """A subprocess whose stdout/stderr are collected by reader threads.

    Start it with start(); wait for readiness with wait_for_line() or
    wait_for_port() (both bounded by a timeout and fail the test early if the
    process dies); stop() sends SIGTERM to its process group (it runs in a
    session of its own, so forked children such as ``storescp --fork``'s go
    too), then SIGKILL after `grace` seconds.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.env = peer_env(env)
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.ready_match: re.Match[str] | None = None

    # -- lifecycle

    def start(self) -> PeerProcess:
        assert self.proc is None, "already started"
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            env=self.env,
            cwd=self.cwd,
            start_new_session=(os.name == "posix"),
        )
        for stream_name in ("stdout", "stderr"):
            t = threading.Thread(
                target=self._reader,
                args=(stream_name, getattr(self.proc, stream_name)),
                name=f"{self.name}-{stream_name}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)
        return self

    def _reader(self, stream_name: str, stream: Any) -> None:
        try:
            for line in stream:
                with self._cond:
                    self._lines[stream_name].append(line)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            if os.name == "posix":
                os.killpg(self.proc.pid, sig)
            else:  # pragma: no cover
                self.proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float = DEFAULT_STOP_GRACE) -> int | None:
        """SIGTERM (process group), wait `grace` s, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:  # not reaped yet: the pid/pgid is still ours
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=grace)
        for t in self._threads:
            t.join(timeout=grace)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit by itself; fail the test on timeout."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{self.name} did not exit within {timeout} s\n{self.describe()}", pytrace=False
            )

    def __enter__(self) -> PeerProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- output

    @property
    def stdout(self) -> str:
        with self._cond:
            return "".join(self._lines["stdout"])

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self._lines["stderr"])

    def describe(self) -> str:
        return (
            f"[{self.name}] $ {' '.join(self.argv)}\n"
            f"pid {self.proc.pid if self.proc else None}, exit {self.returncode}\n"
            f"--- stdout ---\n{_tail(self.stdout)}\n--- stderr ---\n{_tail(self.stderr)}"
        )

    __str__ = describe

    # -- readiness (bounded waits; fine in a fixture, never in the library)

    def wait_for_line(
        self,
        pattern: str | re.Pattern[str],
        *,
        timeout: float = DEFAULT_READY_TIMEOUT,
        stream: str = "stdout",
    ) -> re.Match[str]:
        """Wait for a line of `stream` that re.search-matches `pattern`; return the match."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        checked = 0
        with self._cond:
            while True:
                lines = self._lines[stream]
                for line in lines[checked:]:
                    m = rx.search(line.rstrip("\r\n"))
                    if m:
                        return m
                checked = len(lines)
                if self.proc is None or self.proc.poll() is not None:
                    # dead: one last look after the readers drained the pipes
                    self._cond.wait(0.2)
                    if len(self._lines[stream]) == checked:
                        break
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
        state = "exited" if self.returncode is not None else "timed out"
        pytest.fail(
            f"{self.name} {state} before printing a line matching {rx.pattern!r} "
            f"(timeout {timeout} s)\n{self.describe()}",
            pytrace=False,
        )

    def wait_for_port(
        self,
        port: int,
        *,
        host: str = HOST,
        timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        """Wait until `host:port` accepts a TCP connection (short backoff, up to `timeout`)."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        last_error: OSError | None = None
        while True:
            if self.proc is None or self.proc.poll() is not None:
                pytest.fail(
                    f"{self.name} exited before listening on {host}:{port}\n{self.describe()}",
                    pytrace=False,
                )
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError as exc:
                last_error = exc
            if time.monotonic() + delay > deadline:
                pytest.fail(
                    f"{self.name} not listening on {host}:{port} after {timeout} s "
                    f"({last_error})\n{self.describe()}",
                    pytrace=False,
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class _Registry:
    """The processes a test started; all stopped at teardown, newest first."""

    def __init__(self) -> None:
        self.procs: list[PeerProcess] = []

    def start(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready_port: int | None = None,
        ready_line: str | None = None,
        timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> PeerProcess:
        p = PeerProcess(argv, name=name, env=env, cwd=cwd)
        self.procs.append(p)
        p.start()
        if ready_line is not None:
            p.ready_match = p.wait_for_line(ready_line, timeout=timeout)
        if ready_port is not None:
            p.wait_for_port(ready_port, timeout=timeout)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture
def _peer_registry() -> Iterator[_Registry]:
    reg = _Registry()
    yield reg
    reg.stop_all()


@pytest.fixture
def peer_process(_peer_registry: _Registry) -> Callable[..., PeerProcess]:
    """Factory: start(argv, *, name=None, env=None, cwd=None, ready_port=None,
    ready_line=None, timeout=20.0) -> PeerProcess, started and ready.

    `ready_port`: wait until 127.0.0.1:ready_port accepts a TCP connection.
    `ready_line`: wait for a stdout line matching this regex (the match is kept
    as .ready_match). Env gets TCP_NODELAY=1. Every process is stopped at
    teardown; a readiness timeout or an early exit fails the test with the
    process's output.
    """
    return _peer_registry.start


# --------------------------------------------------------------------------- dcmtk


class DcmtkStoreSCP:
    """A running dcmtk ``storescp``."""

    def __init__(self, process: PeerProcess, port: int, ae_title: str, output_dir: Path) -> None:
        self.process = process
        self.host = HOST
        self.port = port
        self.ae_title = ae_title
        self.output_dir = output_dir

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def files(self) -> list[Path]:
        """Received files (recursively under output_dir), sorted by path."""
        return sorted(p for p in self.output_dir.rglob("*") if p.is_file())

    def wait_for_files(self, count: int, *, timeout: float = 10.0) -> list[Path]:
        """Wait until storescp wrote at least `count` files; return them all.

        Polled: the files are another process's, which sends no event here.
        """
        deadline = time.monotonic() + timeout
        while True:
            files = self.files()
            if len(files) >= count:
                return files
            if time.monotonic() > deadline:
                pytest.fail(
                    f"storescp received {len(files)} files, expected {count} within "
                    f"{timeout} s\n{self.process.describe()}",
                    pytrace=False,
                )
            time.sleep(0.05)

    def __repr__(self) -> str:
        return f"<DcmtkStoreSCP {self.ae_title}@{self.host}:{self.port} -> {self.output_dir}>"


@pytest.fixture
def dcmtk_storescp_factory(
    _peer_registry: _Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., DcmtkStoreSCP]:
    """Factory: start(*extra_args, ae_title="STORESCP", fork=True, output_dir=None,
    env=None, timeout=20.0) -> DcmtkStoreSCP.

    Runs ``storescp -aet AE -od DIR +xa -dhl [--fork] *extra_args PORT`` on a
    free port with TCP_NODELAY=1, and waits until the port accepts connections.
    ``+xa`` accepts every transfer syntax storescp supports; ``--fork`` serves
    concurrent associations. extra_args e.g. ("-pdu", "131072"), ("--ignore",),
    ("--refuse",), ("--abort-after",), ("-pm",), ("-v",) / ("-d",).
    """
    tool = require_tool("storescp")

    def start(
        *extra_args: str,
        ae_title: str = "STORESCP",
        fork: bool = True,
        output_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> DcmtkStoreSCP:
        out = Path(output_dir) if output_dir is not None else tmp_path_factory.mktemp("storescp")
        out.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # free_port() can race with another process
            port = free_port()
            argv = [
                tool,
                "-aet",
                ae_title,
                "-od",
                str(out),
                "+xa",
                "-dhl",
                *(["--fork"] if fork else []),
                *extra_args,
                str(port),
            ]
            try:
                p = _peer_registry.start(
                    argv, name="storescp", env=env, ready_port=port, timeout=timeout
                )
            except pytest.fail.Exception:
                p = _peer_registry.procs[-1]
                p.stop()
                if "bind" in (p.stdout + p.stderr).lower():
                    continue
                raise
            return DcmtkStoreSCP(p, port, ae_title, out)
        pytest.fail("storescp: could not bind a free port in 3 attempts", pytrace=False)

    return start


@pytest.fixture
def dcmtk_storescp(dcmtk_storescp_factory: Callable[..., DcmtkStoreSCP]) -> DcmtkStoreSCP:
    """A ``storescp`` (AE STORESCP, --fork, +xa) on a free port, storing into a temp dir."""
    return dcmtk_storescp_factory()


@pytest.fixture
def run_dcmtk() -> Callable[..., PeerResult]:
    """run(tool, *args, timeout=30.0, env=None, cwd=None) -> PeerResult (a CompletedProcess
    with text stdout/stderr and .describe()). Env has TCP_NODELAY=1. A timeout fails the test.
    The exit code is NOT checked: assert on it.
    """

    def run(
        tool: str,
        *args: str | os.PathLike[str] | int,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> PeerResult:
        return run_command([require_tool(tool), *map(str, args)], timeout=timeout, env=env, cwd=cwd)

    return run


# --------------------------------------------------------------------------- dcmtk dcmqrscp


class DcmQRSCP:
    """A running dcmtk ``dcmqrscp`` with a config and a storage area of its own."""

    def __init__(
        self,
        process: PeerProcess,
        port: int,
        ae_title: str,
        storage_dir: Path,
        config_path: Path,
        move_destinations: Mapping[str, tuple[str, int]],
    ) -> None:
        self.process = process
        self.host = HOST
        self.port = port
        self.ae_title = ae_title
        self.storage_dir = storage_dir
        self.config_path = config_path
        self.move_destinations = dict(move_destinations)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def files(self) -> list[Path]:
        """The instances in the storage area (index.dat left out), sorted by path."""
        return sorted(
            p for p in self.storage_dir.iterdir() if p.is_file() and p.name != "index.dat"
        )

    def store(
        self, *paths: str | os.PathLike[str], calling_ae: str = "FILLER", timeout: float = 60.0
    ) -> PeerResult:
        """C-STORE files and folders (recursively) into it with dcmtk storescu;
        fails the test unless storescu succeeds."""
        cp = run_command(
            [
                require_tool("storescu"),
                "-aet",
                calling_ae,
                "-aec",
                self.ae_title,
                "+sd",
                "+r",
                HOST,
                str(self.port),
                *map(str, paths),
            ],
            timeout=timeout,
        )
        if cp.returncode != 0:
            pytest.fail(f"storescu into dcmqrscp failed\n{cp.describe()}", pytrace=False)
        return cp

    def __repr__(self) -> str:
        return f"<DcmQRSCP {self.ae_title}@{self.host}:{self.port} -> {self.storage_dir}>"


def dcmqrscp_config(
    port: int,
    ae_title: str,
    storage_dir: Path,
    move_destinations: Mapping[str, tuple[str, int]],
    max_pdu: int = 16384,
) -> str:
    """dcmqrscp.cfg text: one AE (read/write, any peer) over `storage_dir`, and
    the move destinations (AE title -> host, port) in the HostTable."""
    hosts = "\n".join(
        f"dest{i} = ({aet}, {host}, {dport})"
        for i, (aet, (host, dport)) in enumerate(move_destinations.items())
    )
    return (
        f"NetworkTCPPort  = {port}\n"
        f"MaxPDUSize      = {max_pdu}\n"
        "MaxAssociations = 16\n\n"
        f"HostTable BEGIN\n{hosts}\nHostTable END\n\n"
        "VendorTable BEGIN\nVendorTable END\n\n"
        "AETable BEGIN\n"
        f"{ae_title}  {storage_dir}  RW  (500, 1024mb)  ANY\n"
        "AETable END\n"
    )


@pytest.fixture
def dcmqrscp_factory(
    _peer_registry: _Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., DcmQRSCP]:
    """Factory: start(*extra_args, ae_title="DCMQRSCP", move_destinations={}, fill=(),
    env=None, timeout=20.0) -> DcmQRSCP.

    Writes ``dcmqrscp.cfg`` and a storage area under a fresh temp dir, runs
    ``dcmqrscp -c CFG -v *extra_args PORT`` on a free port and, if `fill` names
    files or folders, C-STOREs them into it with storescu. `move_destinations`
    ({AE title: (host, port)}) becomes the HostTable, so C-MOVE can reach them.

    dcmqrscp runs in its default mode, a child process per association:
    ``--single-process`` (dcmtk 3.6.7 as packaged by Debian) dies of SIGSEGV in
    ``DUL_DropAssociation`` (``strcmp``) right after its first association
    ends, whatever the peer.
    """
    tool = require_tool("dcmqrscp")

    def start(
        *extra_args: str,
        ae_title: str = "DCMQRSCP",
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        fill: Sequence[str | os.PathLike[str]] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> DcmQRSCP:
        base = tmp_path_factory.mktemp("dcmqrscp")
        storage = base / "storage"
        storage.mkdir()
        dests = dict(move_destinations or {})
        for _attempt in range(3):  # free_port() can race with another process
            port = free_port()
            cfg = base / "dcmqrscp.cfg"
            cfg.write_text(dcmqrscp_config(port, ae_title, storage, dests), encoding="ascii")
            argv = [tool, "-c", str(cfg), "-v", *extra_args, str(port)]
            try:
                p = _peer_registry.start(
                    argv, name="dcmqrscp", env=env, ready_port=port, timeout=timeout
                )
            except pytest.fail.Exception:
                p = _peer_registry.procs[-1]
                p.stop()
                if "bind" in (p.stdout + p.stderr).lower():
                    continue
                raise
            qr = DcmQRSCP(p, port, ae_title, storage, cfg, dests)
            if fill:
                qr.store(*fill)
            return qr
        pytest.fail("dcmqrscp: could not bind a free port in 3 attempts", pytrace=False)

    return start


# --------------------------------------------------------------------------- pynetdicom peer


class PynetdicomSCP:
    """A running ``pynetdicom_peer.py scp``; its events are JSON lines in out_path."""

    def __init__(self, process: PeerProcess, port: int, ae_title: str, out_path: Path) -> None:
        self.process = process
        self.host = HOST
        self.port = port
        self.ae_title = ae_title
        self.out_path = out_path

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Events written so far, optionally only those named `name` with fields == match."""
        return [e for e in read_jsonl(self.out_path) if _matches(e, name, match)]

    def wait_for_event(
        self,
        name: str,
        *,
        count: int = 1,
        timeout: float = 10.0,
        **match: Any,
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` events named `name` (fields == match) were written;
        return all of them. Fails the test on timeout or if the peer died.

        Polled: the events file is the peer process's, which sends no event here."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name, **match)
            if len(found) >= count:
                return found
            if not self.process.running or time.monotonic() > deadline:
                pytest.fail(
                    f"pynetdicom SCP: {len(found)} {name!r} events matching {match}, "
                    f"expected {count} within {timeout} s\nevents: {self.events()}\n"
                    f"{self.process.describe()}",
                    pytrace=False,
                )
            time.sleep(0.02)

    def stop(self) -> int | None:
        """Stop now (SIGTERM); the peer writes a final {"event": "shutdown"}."""
        return self.process.stop()

    def __repr__(self) -> str:
        return f"<PynetdicomSCP {self.ae_title}@{self.host}:{self.port}>"


@pytest.fixture
def pynetdicom_scp(
    _peer_registry: _Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., PynetdicomSCP]:
    """Factory: start(*args, ae_title="PYNETDICOM", env=None, timeout=20.0) -> PynetdicomSCP.

    Runs ``pynetdicom_peer.py scp --port 0 --ae-title AE --out FILE *args`` and
    waits for its ``READY <port>`` line. args are the script's scp options, e.g.
    "--require-called-aet", "--user-identity-response", "x", "--reject-user", "bob",
    "--role", "1.2.840.10008.5.1.4.1.1.2:1:1", "--accept-all-storage", "--max-pdu", "0".
    """
    require_pynetdicom()

    def start(
        *args: str,
        ae_title: str = "PYNETDICOM",
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> PynetdicomSCP:
        out = tmp_path_factory.mktemp("pynetdicom_scp") / "events.jsonl"
        argv = [
            sys.executable,
            str(PEER_SCRIPT),
            "scp",
            "--port",
            "0",
            "--ae-title",
            ae_title,
            "--out",
            str(out),
            *map(str, args),
        ]
        p = _peer_registry.start(
            argv, name="pynetdicom-scp", env=env, ready_line=r"^READY (\d+)$", timeout=timeout
        )
        assert p.ready_match is not None
        return PynetdicomSCP(p, int(p.ready_match.group(1)), ae_title, out)

    return start


@pytest.fixture
def run_pynetdicom_scu(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., tuple[PeerResult, list[dict[str, Any]]]]:
    """run(*args, timeout=60.0, env=None) -> (PeerResult, events).

    Runs ``pynetdicom_peer.py scu --out FILE *args`` to completion (args must
    include "--port", str(port); "--host" defaults to 127.0.0.1) and returns the
    CompletedProcess and its parsed JSON-lines events. Exit codes: 0 ok,
    1 rejected, 2 aborted / connection failed, 3 an operation failed.
    """
    return _pynetdicom_runner(tmp_path_factory, "scu")


@pytest.fixture
def run_pynetdicom_scu_many(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., tuple[PeerResult, list[dict[str, Any]]]]:
    """run(*args, timeout=60.0, env=None) -> (PeerResult, events) of
    ``pynetdicom_peer.py scu-many``: K associations at once (a thread each),
    each storing every ``--store`` file, R rounds; one ``round`` event a round."""
    return _pynetdicom_runner(tmp_path_factory, "scu-many")


@pytest.fixture
def run_pynetdicom_qrscu(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., tuple[PeerResult, list[dict[str, Any]]]]:
    """run(*args, timeout=60.0, env=None) -> (PeerResult, events).

    Runs ``pynetdicom_peer.py qrscu --out FILE *args`` (one C-FIND, C-GET or
    C-MOVE: "--port", port, "--service", "find", "--level", "STUDY", "-k",
    "PatientID=*", "--cancel-after", "2", "--echo-after", "--store-dir", DIR,
    ...) to completion. Exit codes as ``run_pynetdicom_scu``'s.
    """
    return _pynetdicom_runner(tmp_path_factory, "qrscu")


def _pynetdicom_runner(
    tmp_path_factory: pytest.TempPathFactory, role: str
) -> Callable[..., tuple[PeerResult, list[dict[str, Any]]]]:
    """run(*args, timeout=60.0, env=None) for ``pynetdicom_peer.py ROLE --out FILE *args``."""
    require_pynetdicom()

    def run(
        *args: str | os.PathLike[str] | int,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> tuple[PeerResult, list[dict[str, Any]]]:
        out = tmp_path_factory.mktemp(f"pynetdicom_{role}") / "events.jsonl"
        argv = [sys.executable, str(PEER_SCRIPT), role, "--out", str(out), *map(str, args)]
        cp = run_command(argv, timeout=timeout, env=env)
        return cp, read_jsonl(out)

    return run


# --------------------------------------------------------------------------- helpers as fixtures


@pytest.fixture(name="free_port")
def free_port_fixture() -> int:
    """A currently free TCP port on 127.0.0.1."""
    return free_port()


@pytest.fixture(name="require_tool")
def require_tool_fixture() -> Callable[[str], str]:
    """The require_tool(name) -> path function (skip/fail rule in the module doc)."""
    return require_tool


@pytest.fixture(name="require_pynetdicom")
def require_pynetdicom_fixture() -> Callable[[], ModuleType]:
    """The require_pynetdicom() -> module function (skip/fail rule in the module doc)."""
    return require_pynetdicom


@pytest.fixture
def dicom_testfile() -> Callable[[str], Path]:
    """name -> Path of one of pydicom's bundled test files (e.g. "CT_small.dcm")."""
    from pydicom.data import get_testdata_file

    def get(name: str) -> Path:
        path = get_testdata_file(name)
        if path is None:
            pytest.skip(f"pydicom test file {name!r} is not available offline")
        return Path(str(path))

    return get


@pytest.fixture
def anyio_backend() -> str:
    """Interop tests run aiodicom on asyncio (trio is covered by tests/integration)."""
    return "asyncio"


@pytest.fixture
def splice_jobs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The splice jobs (aiodicom._splice.SpliceJob) the in-process aiodicom
    SCP runs during the test, in order."""
    from aiodicom._splice import SpliceJob

    jobs: list[Any] = []
    real_run = SpliceJob.run

    def run(job: SpliceJob) -> None:
        jobs.append(job)
        real_run(job)

    monkeypatch.setattr(SpliceJob, "run", run)
    return jobs
