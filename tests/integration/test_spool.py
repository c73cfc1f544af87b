"""The file side of sending and receiving: a file read straight into
P-DATA-TF PDUs (fill_p_data), the spool's writes, and a spooled file moved
into place (move_into), across file systems too."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiodicom._spool import file_mode, fill_p_data, move_into, write_new
from aiodicom.pdu import P_DATA_HEADER_SIZE, PDataTF, decode_pdu

# ---------------------------------------------------------------------------
# fill_p_data


def _pdus(buf: bytearray, ends: list[int]) -> list[PDataTF]:
    out, start = [], 0
    for end in ends:
        pdu = decode_pdu(bytes(buf[start:end]))
        assert isinstance(pdu, PDataTF)
        out.append(pdu)
        start = end
    return out


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 250, 300, 301])
def test_fill_p_data_lays_out_pdus_around_the_data(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    fp = io.BytesIO(data)
    chunk, got = 100, b""
    while True:
        buf = bytearray(3 * (P_DATA_HEADER_SIZE + chunk))
        ends = fill_p_data(fp, buf, chunk, 7)
        for pdu in _pdus(buf, ends):
            (pdv,) = pdu.pdvs
            assert pdv.context_id == 7 and not pdv.is_command and not pdv.is_last
            assert 0 < len(pdv.data) <= chunk
            got += bytes(pdv.data)
        if not ends or ends[-1] < len(buf):
            break
    assert got == data


def test_fill_p_data_reads_short_reads_to_the_full_chunk() -> None:
    class Trickle(io.RawIOBase):
        """Returns at most 7 bytes a call, as a pipe or a socket file might."""

        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buf: Any) -> int:
            return self._data.readinto(memoryview(buf)[:7])

    buf = bytearray(2 * (P_DATA_HEADER_SIZE + 50))
    ends = fill_p_data(Trickle(bytes(120)), buf, 50, 1)  # type: ignore[arg-type]
    assert [len(p.pdvs[0].data) for p in _pdus(buf, ends)] == [50, 50]
    assert ends[-1] == len(buf)


def test_fill_p_data_reads_a_regular_file_with_one_call_a_block(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    data = bytes(i % 253 for i in range(1000))
    path = tmp_path / "f.bin"
    path.write_bytes(b"HEAD" + data)
    calls: list[int] = []
    real = os.preadv

    def preadv(fd: int, buffers: list[Any], offset: int) -> int:
        calls.append(len(buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    got = b""
    with open(path, "rb") as fp:
        assert fp.read(4) == b"HEAD"  # a buffered file, read ahead past here
        while True:
            buf = bytearray(4 * (P_DATA_HEADER_SIZE + 100))
            ends = fill_p_data(fp, buf, 100, 1)
            got += b"".join(bytes(p.pdvs[0].data) for p in _pdus(buf, ends))
            if not ends or ends[-1] < len(buf):
                break
        assert fp.read() == b""  # left at the end
    assert got == data
    assert calls == [4, 4, 4]  # 400 + 400 + 200 bytes


def test_fill_p_data_reads_a_pipe_as_it_comes() -> None:
    import os

    r, w = os.pipe()
    os.write(w, bytes(250))
    os.close(w)
    with open(r, "rb") as fp:  # no position: no preadv
        buf = bytearray(4 * (P_DATA_HEADER_SIZE + 100))
        ends = fill_p_data(fp, buf, 100, 1)
    assert [len(p.pdvs[0].data) for p in _pdus(buf, ends)] == [100, 100, 50]


# ---------------------------------------------------------------------------
# Spool.write


async def _open_spool(tmp_path: Any, spares: Any = None) -> Any:
    """A Spool for a CT instance, opened in ``tmp_path`` (with ``spares``, see Spares)."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from aiodicom import sop_class
    from aiodicom._spool import Spool
    from aiodicom.dsutils import file_meta_for

    meta = file_meta_for(sop_class.CTImageStorage, generate_uid(), ExplicitVRLittleEndian)
    spool = Spool()
    await spool.open(meta, str(tmp_path), spares)
    return spool


async def _spooled(tmp_path: Any, batches: list[list[Any]]) -> bytes:
    spool = await _open_spool(tmp_path)
    for chunks in batches:
        await spool.write(chunks)
    await spool.finish()
    assert spool.path is not None and spool.error is None
    with open(spool.path, "rb") as f:
        data = f.read()
    spool.discard()
    assert data[:128] == bytes(128) and data[128:132] == b"DICM"
    return data[spool.data_offset :]


@pytest.mark.anyio
async def test_a_kept_spool_file_taken_by_a_cancelled_open_is_deleted(tmp_path: Any) -> None:
    """The file an association set aside is deleted, not lost, when the
    open that took it is cancelled before its worker thread ran."""
    from aiodicom._spool import Spares

    spares = Spares()
    first = await _open_spool(tmp_path, spares)
    await first.write([b"data"])
    await first.finish()
    assert await spares.set_aside(first)
    assert len(list(tmp_path.iterdir())) == 1
    with anyio.CancelScope() as scope:
        scope.cancel()
        await _open_spool(tmp_path, spares)
    assert scope.cancelled_caught
    assert list(tmp_path.iterdir()) == []
    await spares.close()


def _record_writev(
    monkeypatch: pytest.MonkeyPatch, measure: Callable[[list[Any]], int]
) -> list[int]:
    """os.writev as it is, recording ``measure(buffers)`` of each call."""
    import os

    seen: list[int] = []
    real = os.writev

    def writev(fd: int, buffers: list[Any]) -> int:
        seen.append(measure(buffers))
        return real(fd, buffers)

    monkeypatch.setattr(os, "writev", writev)
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_batch_is_written_with_one_writev(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_writev(monkeypatch, len)
    batch = [b"ab", memoryview(bytearray(b"cdef"))[1:3], b"", bytes(1000)]
    assert await _spooled(tmp_path, [batch, [b"xy"]]) == b"abde" + bytes(1000) + b"xy"
    assert calls == [3, 1]  # one call a batch (an empty chunk left out)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_no_write_call_is_longer_than_write_call(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large chunks are cut, small ones gathered: WRITE_CALL bytes a call, the last less."""
    import os

    from aiodicom._spool import WRITE_CALL

    sizes = _record_writev(monkeypatch, lambda buffers: sum(map(len, buffers)))
    batch = [os.urandom(n) for n in (WRITE_CALL + 100, 30_000, 5, 3 * WRITE_CALL - 7, 2)]
    total = sum(map(len, batch))
    assert await _spooled(tmp_path, [batch]) == b"".join(batch)
    assert sizes == [WRITE_CALL] * (total // WRITE_CALL) + [total % WRITE_CALL]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_reused_spool_file_is_written_in_larger_calls(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a kept file (its pages there already) the calls write up to
    REUSED_WRITE_CALL bytes; a new file gets WRITE_CALL ones. Both read back
    as written, the second cut to its length."""
    import os

    from aiodicom._spool import REUSED_WRITE_CALL, WRITE_CALL, Spares

    spares = Spares()
    sizes = _record_writev(monkeypatch, lambda buffers: sum(map(len, buffers)))
    first, second = os.urandom(3 * REUSED_WRITE_CALL), os.urandom(REUSED_WRITE_CALL + 10)
    written: list[bytes] = []
    for data in (first, second):
        spool = await _open_spool(tmp_path, spares)
        await spool.write([data])
        await spool.finish()
        with open(spool.path, "rb") as f:
            written.append(f.read()[spool.data_offset :])
        await spool.delete(spares)
    assert written == [first, second]
    new_calls = len(first) // WRITE_CALL
    assert sizes[:new_calls] == [WRITE_CALL] * new_calls
    assert sizes[new_calls:] == [REUSED_WRITE_CALL, 10]
    await spares.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_tiny_chunks_go_in_calls_of_at_most_iov_max_buffers(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer may send 1-byte PDVs: 64 KiB of them are more buffers than one
    writev() takes (IOV_MAX, 1024 on Linux: EINVAL past it)."""
    from aiodicom._spool import _IOV_MAX

    counts = _record_writev(monkeypatch, len)
    batch = [bytes([i % 256]) for i in range(3000)]
    assert await _spooled(tmp_path, [batch]) == b"".join(batch)
    assert max(counts) <= _IOV_MAX and sum(counts) == 3000


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_write_that_takes_nothing_is_an_error_not_a_loop(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    calls = 0

    def writev(fd: int, buffers: list[Any]) -> int:
        nonlocal calls
        calls += 1
        assert calls < 100, "the spool keeps calling writev()"
        return 0

    monkeypatch.setattr(os, "writev", writev)
    spool = await _open_spool(tmp_path)
    await spool.write([b"abcd"])
    assert isinstance(spool.error, OSError) and calls == 1
    spool.discard()
    assert not list(tmp_path.iterdir())


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_short_writes_go_on_where_they_stopped(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    real = os.writev

    def writev(fd: int, buffers: list[Any]) -> int:
        # at most 5 bytes a call, across buffers
        left, out = 5, []
        for b in buffers:
            out.append(memoryview(b)[:left])
            left -= len(out[-1])
            if not left:
                break
        return real(fd, out)

    monkeypatch.setattr(os, "writev", writev)
    batch = [bytes(range(7)), b"xyz", bytes(range(100, 113))]
    assert await _spooled(tmp_path, [batch]) == b"".join(batch)


# ---------------------------------------------------------------------------
# move_into: a spooled file into place, on the same file system or not


def _other_file_system(tmp_path: Path) -> Path | None:
    """/dev/shm when it is a file system other than ``tmp_path``'s (Linux: tmpfs)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        return shm
    return None


def _exdev_on_first_rename(monkeypatch: pytest.MonkeyPatch, src: Path) -> None:
    """os.replace of ``src`` fails as it does across file systems."""
    real = os.replace

    def replace(a: Any, b: Any) -> None:
        if os.fspath(a) == os.fspath(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(a, b)

    monkeypatch.setattr(os, "replace", replace)


def test_move_into_renames_on_one_file_system(tmp_path: Path) -> None:
    src, dst = tmp_path / "spool.dcm", tmp_path / "out" / "x.dcm"
    dst.parent.mkdir()
    src.write_bytes(b"data")
    ino = src.stat().st_ino
    move_into(str(src), dst)
    assert dst.read_bytes() == b"data" and dst.stat().st_ino == ino  # renamed, not copied
    assert not src.exists()


@pytest.mark.parametrize("how", ["another file system", "EXDEV"])
def test_move_into_copies_across_file_systems(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * 5000
    other = _other_file_system(tmp_path) if how == "another file system" else None
    with tempfile.TemporaryDirectory(dir=other or tmp_path) as spool_dir:
        src = Path(spool_dir) / "spool.dcm"
        src.write_bytes(data)
        if other is None:  # no second file system here: the rename fails as if there were
            _exdev_on_first_rename(monkeypatch, src)
        out = tmp_path / "out"
        out.mkdir()
        (out / "x.dcm").write_bytes(b"old")  # replaced
        move_into(str(src), out / "x.dcm")
        assert (out / "x.dcm").read_bytes() == data
        assert not src.exists()
        assert [p.name for p in out.iterdir()] == ["x.dcm"]  # no temporary file left


def test_move_into_a_failed_copy_leaves_the_target_and_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "spool.dcm"
    src.write_bytes(b"new data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.dcm").write_bytes(b"old")
    _exdev_on_first_rename(monkeypatch, src)

    def copyfile(a: Any, b: Any) -> None:
        Path(b).write_bytes(b"new")  # part of it, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    with pytest.raises(OSError) as exc:
        move_into(str(src), out / "x.dcm")
    assert exc.value.errno == errno.ENOSPC
    assert (out / "x.dcm").read_bytes() == b"old"
    assert [p.name for p in out.iterdir()] == ["x.dcm"]
    assert src.read_bytes() == b"new data"


def test_file_mode_is_what_open_gives(tmp_path: Path) -> None:
    """0o666 less the umask, read without changing it (as a file open() makes)."""
    old = os.umask(0o027)
    try:
        assert file_mode.__wrapped__() == 0o640
        (tmp_path / "made").write_bytes(b"")
        assert (tmp_path / "made").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert file_mode.__wrapped__() == 0o666 & ~old
    assert os.umask(old) == old  # left as it was


def test_move_into_gives_the_mode(tmp_path: Path) -> None:
    src = tmp_path / "spool.dcm"
    src.write_bytes(b"data")
    os.chmod(src, 0o600)
    move_into(str(src), tmp_path / "x.dcm", 0o644)
    assert (tmp_path / "x.dcm").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------
# write_new: a received instance written whole to a new file


def test_write_new_writes_the_chunks_with_the_mode_open_gives(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = write_new(tmp_path, ".incoming-", [b"head", memoryview(b"xdatax")[1:5], b""])
    finally:
        os.umask(old)
    made = Path(path)
    assert made.parent == tmp_path and made.name.startswith(".incoming-")
    assert made.suffix == ".dcm" and len(made.name) == len(".incoming-") + 16 + 4
    assert made.read_bytes() == b"headdata"
    assert made.stat().st_mode & 0o777 == 0o640


def test_write_new_never_reuses_a_name(tmp_path: Path) -> None:
    paths = {write_new(tmp_path, "in-", [b"x"]) for _ in range(200)}
    assert len(paths) == 200 and len(list(tmp_path.iterdir())) == 200


def test_write_new_never_writes_through_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that exists (a symbolic link an attacker planted, say) is skipped."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    names = iter([bytes(8), bytes(8), b"\x01" * 8])
    monkeypatch.setattr(os, "urandom", lambda n: next(names))
    (tmp_path / f"in-{bytes(8).hex()}.dcm").symlink_to(victim)
    path = write_new(tmp_path, "in-", [b"new"])
    assert path.endswith("in-" + "01" * 8 + ".dcm")
    assert Path(path).read_bytes() == b"new" and victim.read_bytes() == b"keep"


@pytest.mark.parametrize("fail", ["writev", "close"])
def test_write_new_deletes_its_file_when_a_write_or_close_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str
) -> None:
    real = getattr(os, fail)

    def failing(fd: int, *args: Any) -> Any:
        real(fd, *args)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, fail, failing)
    with pytest.raises(OSError) as info:
        write_new(tmp_path, "in-", [b"abc"])
    assert info.value.errno == errno.ENOSPC
    assert not list(tmp_path.iterdir())
