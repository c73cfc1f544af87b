"""Reads served from the page cache without blocking (aiodicom._nowait)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from aiodicom import _nowait
from aiodicom._nowait import NOT_CACHED, read_cached

from .conftest import can_evict, evict

linux_only = pytest.mark.skipif(
    _nowait._syscall is None, reason="openat2/RWF_NOWAIT are Linux-only"
)


@linux_only
def test_hot_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "hot.bin"
    content = os.urandom(70_001)
    path.write_bytes(content)
    assert read_cached(path, 1 << 20) == content
    assert read_cached(str(path), 70_001) == content
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert read_cached(empty, 0) == b""


@linux_only
def test_larger_than_the_limit_is_left_to_stream(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 1001)
    assert read_cached(path, 1000) is None


def test_errors_are_left_to_the_worker_thread(tmp_path: Path) -> None:
    """A missing file, a directory, a NUL in the name: the worker-thread read
    raises the real error."""
    (tmp_path / "a").write_bytes(b"x")
    assert read_cached(tmp_path / "missing", 1 << 20) is NOT_CACHED
    assert read_cached(tmp_path, 1 << 20) is NOT_CACHED
    assert read_cached(f"{tmp_path}/a\0b", 1 << 20) is NOT_CACHED  # not a read of "a"


@linux_only
def test_what_is_not_a_regular_file_is_not_read_here(tmp_path: Path) -> None:
    """A FIFO without a writer (opening it must not wait), a device, a /proc file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_cached(fifo, 1 << 20) is NOT_CACHED
    assert read_cached("/dev/zero", 1 << 20) is NOT_CACHED
    # a /proc file says it is empty but is not: never taken as empty
    assert read_cached("/proc/self/status", 1 << 20) is NOT_CACHED


@linux_only
def test_a_file_not_in_the_page_cache_is_not_read_here(tmp_path: Path) -> None:
    if not can_evict(tmp_path):
        pytest.skip(f"the file system under {tmp_path} keeps the pages (tmpfs?)")
    path = tmp_path / "cold.bin"
    content = os.urandom(256 * 1024)
    path.write_bytes(content)
    evict(path)
    assert read_cached(path, 1 << 20) is NOT_CACHED
    with open(path, "rb") as f:  # what the worker thread does; the pages come back
        assert f.read() == content
    assert read_cached(path, 1 << 20) == content


def test_without_openat2_nothing_is_read_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "hot.bin"
    path.write_bytes(b"abc")
    monkeypatch.setattr(_nowait, "_syscall", None)
    assert read_cached(path, 1 << 20) is NOT_CACHED


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_refused_openat2_turns_the_fast_path_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seccomp filter answering EPERM (as some container runtimes do)."""
    import ctypes
    import errno

    path = tmp_path / "hot.bin"
    path.write_bytes(b"abc")
    calls: list[int] = []

    def refused(*args: object) -> int:
        calls.append(1)
        ctypes.set_errno(errno.EPERM)
        return -1

    monkeypatch.setattr(_nowait, "_syscall", refused)
    assert read_cached(path, 1 << 20) is NOT_CACHED
    assert read_cached(path, 1 << 20) is NOT_CACHED
    assert calls == [1]  # tried once, then no more
