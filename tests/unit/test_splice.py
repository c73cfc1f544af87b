"""SpliceJob, byte for byte over real socket pairs and files: the fragments
go into the file at its position, in order; the job stops exactly at the end
of the last fragment's PDU, or hands back (unread past its 12 bytes of
headers) any PDU it does not take; the connection closing, a stall, stop()
and a failing file each end it as documented, and every descriptor it made
is released."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiodicom import _splice
from aiodicom._splice import Outcome, SpliceJob

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="splice(2) is Linux-only")

CTX = 3


def pdu(data: bytes, *, ctx: int = CTX, mch: int = 0x00) -> bytes:
    """A P-DATA-TF PDU of one PDV."""
    pdv = (2 + len(data)).to_bytes(4, "big") + bytes([ctx, mch]) + data
    return b"\x04\x00" + len(pdv).to_bytes(4, "big") + pdv


def fragments(total: int, size: int) -> list[bytes]:
    data = bytes((i * 7 + 3) % 256 for i in range(total))
    return [data[i : i + size] for i in range(0, total, size)]


def stream_of(parts: list[bytes]) -> bytes:
    """The PDUs of ``parts``, the last one marked last."""
    return b"".join(pdu(p, mch=0x02 if i == len(parts) - 1 else 0) for i, p in enumerate(parts))


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.setblocking(False)  # as the event loop's transport leaves it
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "spool", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"HEADER")
    yield fd
    os.close(fd)


def contents(fd: int) -> bytes:
    return os.pread(fd, 1 << 24, 0)


def feed(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send ``data`` from another thread (it may be more than the socket buffers)."""
    sender = threading.Thread(target=sock.sendall, args=(data,))
    sender.start()
    return sender


def run(job: SpliceJob) -> SpliceJob:
    before = open_fds()
    job.run()
    assert open_fds() <= before  # its duplicates and pipes are closed
    return job


def pieces(data: bytes, size: int) -> list[bytes | memoryview]:
    """``data`` cut every ``size`` bytes, as bytes and memoryviews by turns."""
    out: list[bytes | memoryview] = []
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        out.append(piece if i // size % 2 else memoryview(piece))
    return out


def socket_rest(sock: socket.socket) -> bytes:
    """What the (non-blocking) socket holds now."""
    got = b""
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return got
        if not data:
            return got
        got += data


@pytest.mark.parametrize("size", [4096 * 3 + 5, 100_000], ids=["small PDUs", "large PDUs"])
@pytest.mark.parametrize("piece", [1, 5, 7, 4096, 1 << 20])
@pytest.mark.parametrize("split", [0, 1, 5, 6, 11, 12, 13, 4000, 10_000])
def test_fragments_go_into_the_file_from_the_prefix_then_the_socket(
    pair: tuple[socket.socket, socket.socket], spool: int, split: int, piece: int, size: int
) -> None:
    """Whatever part of the stream was received already (cut anywhere: in a
    header, in a fragment; given in pieces of any size), the file gets the
    fragments in order after what it held. Small PDUs are read several at a
    time: what the job read past the last one is its leftover, the rest is
    still on the socket. Large ones are spliced, and their headers read
    exactly: nothing past the last PDU is read."""
    a, b = pair
    parts = fragments(300_000, size)
    data = stream_of(parts)
    after = pdu(b"next command", mch=0x03)
    sender = feed(a, data[split:] + after)
    job = run(SpliceJob(b.fileno(), spool, prefix=pieces(data[:split], piece), context_id=CTX))
    sender.join()
    assert job.outcome is Outcome.LAST and job.aligned
    assert job.received == 300_000
    assert contents(spool) == b"HEADER" + b"".join(parts)
    assert job.leftover + socket_rest(b) == after
    if size >= _splice.SPLICE_MIN:
        assert job.leftover == b""


def test_what_follows_the_last_pdu_in_the_prefix_is_left_over(
    pair: tuple[socket.socket, socket.socket], spool: int
) -> None:
    _, b = pair
    parts = fragments(50_000, 10_000)
    after = pdu(b"next", mch=0x03) + b"\x07\x00"
    prefix = pieces(stream_of(parts) + after, 999)
    job = run(SpliceJob(b.fileno(), spool, prefix=prefix, context_id=CTX))
    assert (job.outcome, job.leftover, job.aligned) == (Outcome.LAST, after, True)
    assert contents(spool) == b"HEADER" + b"".join(parts)


def test_first_chunks_are_written_before_the_rest(
    pair: tuple[socket.socket, socket.socket], spool: int
) -> None:
    a, b = pair
    a.sendall(pdu(b"third", mch=0x02))
    job = run(SpliceJob(b.fileno(), spool, first=[b"first", memoryview(b"second")], context_id=CTX))
    assert job.outcome is Outcome.LAST
    assert job.received == 5  # (the first chunks were counted when they came)
    assert contents(spool) == b"HEADERfirstsecondthird"


def test_an_appending_file_is_written_without_splice(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """splice() into a file opened to append fails (EINVAL), as it does on
    file systems that cannot take it: the job reads the pipe and writes."""
    a, b = pair
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        parts = fragments(200_000, 30_000)
        sender = feed(a, stream_of(parts))
        job = run(SpliceJob(b.fileno(), fd, context_id=CTX))
        sender.join()
        assert job.outcome is Outcome.LAST and job.file_error is None
        assert (tmp_path / "log").read_bytes() == b"".join(parts)
    finally:
        os.close(fd)


SHORT_PDUS = {
    "A-ABORT": b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",
    "A-RELEASE-RQ": b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00",
    "P-DATA-TF shorter than a PDV header": b"\x04\x00\x00\x00\x00\x02\x00\x00",
}
ODD_PDUS = {
    "a command fragment": pdu(b"\x00" * 8, mch=0x01),
    "another context": pdu(b"x" * 8, ctx=CTX + 2),
    "reserved control bits": pdu(b"x" * 8, mch=0x04),
    "two PDVs": pdu(b"abc")[:2]
    + (len(pdu(b"abc")) - 6 + 9).to_bytes(4, "big")
    + pdu(b"abc")[6:]
    + (5).to_bytes(4, "big")
    + bytes([CTX, 0x02])
    + b"def",
    "a PDV longer than its PDU": b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x10\x03\x00" + b"x" * 2,
}


@pytest.mark.parametrize("name", [*SHORT_PDUS, *ODD_PDUS])
@pytest.mark.parametrize("in_prefix", [False, True])
def test_a_pdu_it_does_not_take_is_handed_back_unread(
    pair: tuple[socket.socket, socket.socket], spool: int, name: str, in_prefix: bool
) -> None:
    """After one fragment, a PDU of another kind or shape: the job stops at
    its start and gives back what it read of it and after it; the rest stays
    on the socket. (It never waits for more than a PDU header of 6 bytes
    before it knows the PDU's kind: a short PDU's sender may be waiting for
    an answer, and 12 bytes would never come.)"""
    a, b = pair
    odd = SHORT_PDUS.get(name) or ODD_PDUS[name]
    head = pdu(b"fragment one")
    if in_prefix:
        job = run(SpliceJob(b.fileno(), spool, prefix=pieces(head + odd, 5), context_id=CTX))
        assert job.leftover == odd
    else:
        a.sendall(head + odd)
        job = run(SpliceJob(b.fileno(), spool, context_id=CTX))
        # (read with the small fragment's PDU, or by its headers alone)
        assert job.leftover + socket_rest(b) == odd
    assert (job.outcome, job.aligned, job.received) == (Outcome.HANDED_BACK, True, 12)
    assert contents(spool) == b"HEADERfragment one"


def test_a_pdu_over_the_maximum_is_handed_back(
    pair: tuple[socket.socket, socket.socket], spool: int
) -> None:
    a, b = pair
    big = pdu(b"y" * 1000)
    a.sendall(pdu(b"z" * 994) + big)
    job = run(SpliceJob(b.fileno(), spool, context_id=CTX, max_pdu=1000))
    assert (job.outcome, job.received) == (Outcome.HANDED_BACK, 994)
    assert job.leftover + socket_rest(b) == big


@pytest.mark.parametrize("cut", [3, 6, 9, 12, 500])
def test_the_peer_closing_ends_the_job(
    pair: tuple[socket.socket, socket.socket], spool: int, cut: int
) -> None:
    """Closed inside a PDU's headers: what was read of them is given back
    (the reader finds the PDU short); after them, inside its fragment: not
    aligned (the reader parses nothing more)."""
    a, b = pair
    second = pdu(b"q" * 1000, mch=0x02)
    a.sendall(pdu(b"p" * 100) + second[:cut])
    a.shutdown(socket.SHUT_WR)
    job = run(SpliceJob(b.fileno(), spool, context_id=CTX))
    assert job.outcome is Outcome.CLOSED
    assert job.socket_error is None
    if cut < 12:
        assert (job.aligned, job.leftover) == (True, second[:cut])
    else:
        assert not job.aligned
    assert job.received == 100
    assert contents(spool).startswith(b"HEADER" + b"p" * 100)


def test_a_stall_times_out(pair: tuple[socket.socket, socket.socket], spool: int) -> None:
    a, b = pair
    a.sendall(pdu(b"r" * 100) + pdu(b"s" * 1000, mch=0x02)[:300])
    job = run(SpliceJob(b.fileno(), spool, context_id=CTX, timeout=0.05))
    assert (job.outcome, job.aligned, job.received) == (Outcome.TIMED_OUT, False, 100)


def test_stop_wakes_a_waiting_job(pair: tuple[socket.socket, socket.socket], spool: int) -> None:
    a, b = pair
    a.sendall(pdu(b"t" * 100))
    job = SpliceJob(b.fileno(), spool, context_id=CTX)
    runner = threading.Thread(target=job.run)
    before = open_fds()
    runner.start()
    while job.received < 100:  # (its first fragment is in; it waits for more)
        threading.Event().wait(0.001)
    job.stop()
    runner.join(10)
    assert not runner.is_alive()
    assert job.outcome is Outcome.STOPPED and not job.aligned
    assert open_fds() < before  # its own descriptors are gone


def test_a_job_closed_before_it_ran_never_runs(
    pair: tuple[socket.socket, socket.socket], spool: int
) -> None:
    a, b = pair
    before = open_fds()
    job = SpliceJob(b.fileno(), spool, context_id=CTX)
    assert len(open_fds() - before) == 4  # two duplicates and the stop pipe
    job.close()
    assert open_fds() == before
    a.sendall(pdu(b"u", mch=0x02))
    job.run()
    assert job.outcome is Outcome.STOPPED and job.received == 0
    assert contents(spool) == b"HEADER"
    job.stop()
    job.close()  # (both harmless now)


def test_the_descriptors_it_was_given_may_be_closed_while_it_runs(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """It works on duplicates: its owner closing the originals (an
    association ending) neither breaks it nor lets it use a reused number."""
    a, b = pair
    fd = os.open(tmp_path / "spool", os.O_RDWR | os.O_CREAT)
    job = SpliceJob(b.fileno(), fd, context_id=CTX)
    os.close(fd)
    b2 = b.detach()
    os.close(b2)
    a.sendall(pdu(b"v" * 5000, mch=0x02))
    assert run(job).outcome is Outcome.LAST
    assert (tmp_path / "spool").read_bytes() == b"v" * 5000


def test_a_write_error_drops_the_rest_and_keeps_in_step(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """/dev/full: the first write fails (ENOSPC); the fragments after it are
    received and dropped, so the job still ends after the last one."""
    a, b = pair
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        parts = fragments(100_000, 20_000)
        after = pdu(b"next", mch=0x03)
        sender = feed(a, stream_of(parts) + after)
        job = run(SpliceJob(b.fileno(), full, first=[b"held"], context_id=CTX))
        sender.join()
    finally:
        os.close(full)
    assert job.outcome is Outcome.LAST and job.received == 100_000
    assert job.file_error is not None and job.file_error.errno == 28  # ENOSPC
    assert job.leftover + socket_rest(b) == after


def test_the_pipe_asks_for_its_size() -> None:
    r, w = _splice._new_pipe()
    try:
        import fcntl

        assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) in (_splice.PIPE_SIZE, 65536)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("timeout", [float("inf")])
def test_a_timeout_past_what_poll_takes_waits_without_one(
    pair: tuple[socket.socket, socket.socket], spool: int, timeout: float
) -> None:
    a, b = pair
    a.sendall(pdu(b"w" * 10, mch=0x02))
    assert (
        run(SpliceJob(b.fileno(), spool, context_id=CTX, timeout=timeout)).outcome is Outcome.LAST
    )


@pytest.mark.parametrize(("value", "expected"), [("0", "False"), ("1", "True"), (None, "True")])
def test_aiodicom_splice_0_in_the_environment_turns_it_off(
    value: str | None, expected: str
) -> None:
    """Read once, at import (a fresh interpreter for each setting)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "AIODICOM_SPLICE"}
    if value is not None:
        env["AIODICOM_SPLICE"] = value
    out = subprocess.run(
        [sys.executable, "-c", "import aiodicom._splice as s; print(s.AVAILABLE)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == expected
