"""File reads the kernel serves without blocking, or not at all (Linux).

Reading a file to send it is blocking work: a worker thread does it
(``anyio.to_thread``). The hop costs about 100 µs of latency, more than
reading a small file that is already in memory. Linux can tell the two
cases apart without waiting:

* ``openat2(2)`` with ``RESOLVE_CACHED`` opens a path only if every component
  is in the kernel's lookup cache and no revalidation or I/O is needed; else
  it fails at once with ``EAGAIN``.
* ``preadv2(2)`` with ``RWF_NOWAIT`` reads only what the page cache holds;
  else it fails at once with ``EAGAIN`` (or returns short).
* ``cachestat(2)`` (Linux 6.5) counts the pages of a file range the page
  cache holds, reading none: :func:`page_cached` tells whether a large file
  can be handed to ``sendfile(2)`` on the event loop without waiting.

:func:`read_cached` tries both on the calling (event loop) thread and gives
up, returning :data:`NOT_CACHED`, as soon as either would have to wait; the
caller then does the read in a worker thread as before. So this is the
io_uring pattern ("try non-blocking, punt to a worker") with no thread
involved when the data is hot, and the event loop is never blocked on a disk.
Where either call is missing (not Linux, an old kernel, a seccomp filter
that refuses ``openat2``) every read is :data:`NOT_CACHED`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import sys
from typing import Any, Final

__all__ = ("NOT_CACHED", "page_cached", "read_cached")

#: Returned when the read would have had to wait (or can't be tried here).
NOT_CACHED: Final = object()

# openat2 (Linux 5.6) has the number 437 on the architectures sharing the
# unified system call table; elsewhere (alpha, mips, ...) it differs: not tried.
_SYS_OPENAT2: Final = 437
_UNIFIED_TABLE: Final = frozenset(
    [
        "x86_64",
        "i386",
        "i686",
        "aarch64",
        "armv7l",
        "armv6l",
        "riscv64",
        "ppc64le",
        "ppc64",
        "s390x",
        "loongarch64",
    ]
)
_RESOLVE_CACHED: Final = 0x20
_AT_FDCWD: Final = -100
# O_NONBLOCK: no effect on a regular file, and opening a FIFO does not wait
# for a writer (what is not a regular file is then left to the worker).
_O_FLAGS: Final = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
# EAGAIN: would block; ENOSYS/EPERM/EINVAL: not available here (old kernel,
# seccomp, or RESOLVE_CACHED unknown). ENOENT and the like are real errors,
# but the worker-thread path raises them with the usual message: not here.


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


def _libc_syscall(*argtypes: Any) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's ``syscall()`` taking these arguments after the call's number;
    None where the numbers used here do not hold (not Linux, an architecture
    outside the unified table) or there is no libc to call."""
    if sys.platform != "linux" or platform.machine() not in _UNIFIED_TABLE:
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syscall  # a function object of its own
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_long
    call.argtypes = (ctypes.c_long, *argtypes)
    return call


def _find_syscall() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not hasattr(os, "preadv") or not hasattr(os, "RWF_NOWAIT"):
        return None
    return _libc_syscall(ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_OpenHow), ctypes.c_size_t)


_syscall = _find_syscall()
_HOW: Final = _OpenHow(_O_FLAGS, 0, _RESOLVE_CACHED)
_HOW_SIZE: Final = ctypes.sizeof(_OpenHow)


def _open_cached(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor for ``path``, or -1 if opening it would wait."""
    global _syscall
    call = _syscall
    if call is None:
        return -1
    name = os.fsencode(path)
    if b"\0" in name:
        return -1  # C would cut it there; open() in the worker raises ValueError
    fd: int = call(_SYS_OPENAT2, _AT_FDCWD, name, ctypes.byref(_HOW), _HOW_SIZE)
    if fd < 0 and ctypes.get_errno() in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
        _syscall = None  # not available here: stop trying
    return fd


def read_cached(path: str | os.PathLike[str], limit: int) -> bytearray | object | None:
    """The whole content of ``path`` if the kernel has all of it in memory.

    Returns the content (a new bytearray, the caller's); ``None`` if the
    file is larger than ``limit`` (the caller streams it); :data:`NOT_CACHED`
    if opening or reading it would have to wait for a disk (or a network
    file system), if it changed size while read, or on any error: the caller
    then reads it in a worker thread, which reports a real error as usual.
    """
    fd = _open_cached(path)
    if fd < 0:
        return NOT_CACHED
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return NOT_CACHED
        size = info.st_size
        if size > limit:
            return None
        buf = bytearray(size + 1)
        try:
            got = os.preadv(fd, (buf,), 0, os.RWF_NOWAIT)
        except OSError:  # EAGAIN: not (all) in the page cache
            return NOT_CACHED
        if got != size:  # short (partly cached) or grown
            return NOT_CACHED
        del buf[size]  # the byte that would have shown the file grew
        return buf
    except OSError:
        return NOT_CACHED
    finally:
        os.close(fd)


# cachestat (Linux 6.5) is 451 on the architectures of the unified table.
_SYS_CACHESTAT: Final = 451


class _CachestatRange(ctypes.Structure):
    _fields_ = (("off", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _Cachestat(ctypes.Structure):
    _fields_ = (
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    )


def _find_cachestat() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    return _libc_syscall(
        ctypes.c_int,
        ctypes.POINTER(_CachestatRange),
        ctypes.POINTER(_Cachestat),
        ctypes.c_uint,
    )


_cachestat = _find_cachestat()
_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def page_cached(fd: int, offset: int, length: int) -> bool:
    """True if the page cache holds every page of ``length`` bytes of the
    file ``fd`` from ``offset`` (read then, they need no disk).

    False if some page is missing, or where ``cachestat(2)`` is missing
    (not Linux, a kernel before 6.5, a seccomp filter): the caller reads
    the file the way that may wait, in a worker thread.
    """
    global _cachestat
    call = _cachestat
    if call is None or length <= 0:
        return call is not None
    span = _CachestatRange(offset, length)
    stat = _Cachestat()
    if call(_SYS_CACHESTAT, fd, ctypes.byref(span), ctypes.byref(stat), 0) < 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
            _cachestat = None  # not available here: stop trying
        return False
    first = offset // _PAGE
    last = (offset + length - 1) // _PAGE
    return bool(stat.nr_cache >= last - first + 1)
