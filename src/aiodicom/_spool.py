"""Spooling received data sets to disk, and reading files to send (the I/O side).

Blocking file work runs in anyio's worker threads (``anyio.to_thread``); the
event loop only hands over buffers. A :class:`Spool` is a Part 10 file under
construction: the preamble and File Meta Information first, then the data set
fragments as they arrive, so a completed spool is a file a handler can move
into its archive as it is. :meth:`Spool.discard` is synchronous on purpose:
it runs in ``finally`` blocks, under cancellation, where nothing can be
awaited.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import IO, Any, BinaryIO

import anyio
import anyio.to_thread
from pydicom.dataset import FileMetaDataset

from .dsutils import part10_header
from .pdu import P_DATA_HEADER_SIZE, pack_p_data_header

__all__ = ("Spool", "file_mode", "fill_p_data", "move_into", "write_new")

#: Spilled fragments are written to disk once this many bytes are held.
WRITE_BATCH = 4 << 20
#: ... by system calls of at most this many bytes each. A larger write()
#: makes Linux (6.x, ext4 and others with large folios) fill the page cache
#: with high-order folios, which come from the buddy allocator rather than
#: the per-CPU lists: where the memory is cold (not touched lately, or, in a
#: VM with free page reporting, given back to the host) that costs 3 to 10
#: times as much per byte. 64 KiB (order 4) still comes from the per-CPU lists.
WRITE_CALL = 64 << 10


class Spool:
    """A temporary Part 10 file receiving one data set."""

    __slots__ = ("_file", "data_offset", "error", "path", "size")

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self.path: str | None = None
        self.data_offset = 0
        self.size = 0
        #: The first write error (e.g. ENOSPC); later writes are skipped.
        self.error: OSError | None = None

    async def open(self, header: bytes | FileMetaDataset, directory: str | None) -> None:
        """Create the file and write its Part 10 header (given encoded, or as
        the File Meta Information to encode)."""
        if not isinstance(header, bytes):
            header = part10_header(header)

        def create() -> None:
            fd, path = tempfile.mkstemp(prefix="aiodicom-", suffix=".dcm", dir=directory)
            self.path = path
            self._file = os.fdopen(fd, "wb")
            self._file.write(header)

        try:
            await anyio.to_thread.run_sync(create)
        except OSError as exc:
            self.error = exc
        self.data_offset = len(header)

    async def write(self, chunks: list[Any]) -> None:
        """Append ``chunks`` (bytes-like); remember the first failure instead of raising."""
        size = sum(len(c) for c in chunks)
        self.size += size
        if self.error is not None or self._file is None:
            return
        file = self._file
        try:
            await anyio.to_thread.run_sync(_write_all, file, chunks)
        except OSError as exc:
            self.error = exc

    async def finish(self) -> None:
        """Flush and close the file (the data set is complete)."""
        file, self._file = self._file, None
        if file is None:
            return
        try:
            await anyio.to_thread.run_sync(file.close)
        except OSError as exc:
            self.error = self.error or exc

    async def delete(self) -> None:
        """:meth:`discard` in a worker thread (deleting a big file takes the
        kernel milliseconds, which the event loop need not wait); in this
        thread if a cancellation comes before the worker ran it."""
        if self.path is None and self._file is None:
            return
        try:
            await anyio.to_thread.run_sync(self.discard)
        finally:
            self.discard()  # (does nothing if the worker did it)

    def refuse(self, reason: str) -> None:
        """Write nothing: the data set of a request that will be refused
        (its later writes are skipped, as after a write error)."""
        self.error = OSError(errno.EINVAL, f"not spooled: {reason}")

    def discard(self) -> None:
        """Close and delete the file, if it is still there (synchronous, best effort)."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        path, self.path = self.path, None
        if path is not None:
            with contextlib.suppress(FileNotFoundError, OSError):
                os.unlink(path)


@functools.cache
def file_mode() -> int:
    """The mode ``open()`` gives a new file here: 0o666 less the umask.

    The temporary files this package writes (``mkstemp``) are 0o600; a file
    put into place for others to use (a received instance saved, an archive
    object) gets this mode instead, as dcmtk's and pynetdicom's tools give
    theirs. The umask is read once (from /proc on Linux, which leaves it
    alone; elsewhere by setting and restoring it).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def move_into(src: str, dst: str | os.PathLike[str], mode: int | None = None) -> None:
    """Rename the file ``src`` to ``dst``, replacing it (blocking: for a worker thread).

    Across file systems (EXDEV: a spool directory on a tmpfs, say) it is
    copied to a temporary file beside ``dst`` and that is renamed, so ``dst``
    is never seen half-written; ``src`` is deleted once ``dst`` is in place.
    ``mode``: the permissions ``dst`` gets (e.g. :func:`file_mode`).
    """
    if mode is not None:
        os.chmod(src, mode)
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    fd, tmp = tempfile.mkstemp(
        prefix=".incoming-", suffix=".dcm", dir=os.path.dirname(os.fspath(dst)) or "."
    )
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(src)


#: How write_new() opens its file: a new one (never one already there, nor
#: through a symbolic link), for writing.
_NEW_FILE = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_BINARY", 0)
)


def write_new(directory: str | os.PathLike[str], prefix: str, chunks: Sequence[Any]) -> str:
    """Write ``chunks`` (bytes-like) to a new file in ``directory``; its path
    (blocking: for a worker thread).

    The name is ``prefix``, 16 random hex digits and ``.dcm``, and the file
    is created with the mode ``open()`` gives (:func:`file_mode`), ready to
    be renamed into place as it is. What ``tempfile.mkstemp`` then
    ``os.fdopen`` and ``os.fchmod`` did in eight system calls and as many
    Python-level steps is here an ``open``, a ``writev`` per
    :data:`WRITE_CALL` bytes and a ``close``: for a small instance received
    that is most of the cost of saving it. On any failure (a full disk, a
    failing ``close`` on a network file system) the file is deleted and the
    error raised.
    """
    base = os.fspath(directory)
    for _ in range(100):
        path = os.path.join(base, f"{prefix}{os.urandom(8).hex()}.dcm")
        try:
            fd = os.open(path, _NEW_FILE, 0o666)
        except FileExistsError:  # pragma: no cover - 2**-64 per try
            continue
        break
    else:  # pragma: no cover
        raise FileExistsError(errno.EEXIST, "no free temporary file name", base)
    try:
        try:
            if hasattr(os, "writev"):
                _write_fd(fd, chunks)
            else:  # pragma: no cover - not on POSIX
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    while view:
                        view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


def _read_into(fp: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``fp`` as far as it goes; the bytes read (fewer: end of file)."""
    readinto = getattr(fp, "readinto", None)
    got, size = 0, len(view)
    while got < size:
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = fp.read(size - got)
            n = len(data)
            view[got : got + n] = data
        if not n:
            break
        got += n
    return got


def _write_all(file: IO[bytes], chunks: list[Any]) -> None:
    """Append ``chunks`` to ``file`` (blocking: for a worker thread), each
    system call writing at most :data:`WRITE_CALL` bytes (writev() gathers
    smaller chunks up to that, :data:`_IOV_MAX` of them at most)."""
    if not hasattr(os, "writev"):  # pragma: no cover - not on POSIX
        file.writelines(chunks)
        return
    file.flush()  # what went through the file object (the header) first
    _write_fd(file.fileno(), chunks)


def _write_fd(fd: int, chunks: Sequence[Any]) -> None:
    """:func:`_write_all` on a file descriptor (POSIX)."""
    group: list[memoryview] = []
    room = WRITE_CALL
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while view:
            piece, view = view[:room], view[room:]
            group.append(piece)
            room -= len(piece)
            if not room or len(group) == _IOV_MAX:
                _writev_all(fd, group)
                group, room = [], WRITE_CALL
    if group:
        _writev_all(fd, group)


def _writev_all(fd: int, views: list[memoryview]) -> None:
    """Write all of ``views`` to ``fd``, going on after a short write (rare on a file)."""
    while views:
        n = os.writev(fd, views)
        if not n:  # no progress and no error: it would go on forever
            raise OSError(errno.EIO, "the spool file took none of a write")
        while n and views:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0


#: At most this many buffers a preadv() or writev() call (Linux's IOV_MAX).
_IOV_MAX = 1024


def _scatter_read(fp: BinaryIO, views: list[memoryview]) -> int:
    """Fill ``views`` in order from ``fp``'s position with one preadv() call (a
    few for many views), then move ``fp`` past what was read; the bytes read.

    0 for a file object without a file descriptor or position (a BytesIO, a
    pipe) or where preadv() does not exist: the caller reads on as usual.
    """
    if not hasattr(os, "preadv"):  # pragma: no cover - not on Linux/BSD
        return 0
    try:
        fd, start = fp.fileno(), fp.tell()
    except (OSError, ValueError, AttributeError):
        return 0
    got = 0
    for first in range(0, len(views), _IOV_MAX):
        group = views[first : first + _IOV_MAX]
        try:
            n = os.preadv(fd, group, start + got)
        except OSError as exc:
            if exc.errno in (errno.ESPIPE, errno.EINVAL, errno.EOPNOTSUPP):
                break  # not a file preadv() can read
            raise
        got += n
        if n < sum(len(v) for v in group):
            break
    if got:
        fp.seek(start + got)
    return got


def fill_p_data(fp: BinaryIO, buf: bytearray, chunk: int, context_id: int) -> list[int]:
    """Read ``fp`` into ``buf`` laid out as P-DATA-TF PDUs (blocking: for a worker thread).

    Each PDU is its headers, then up to ``chunk`` bytes of the file read in
    place after them (one PDV, not the last fragment); ``buf`` holds a whole
    number of them. Returns the end offset of each PDU written: fewer than
    ``buf`` holds, or an empty last one, only at the end of the file. A
    regular file is read with one system call for the whole block (not one
    per PDU, each handing the GIL over twice).
    """
    view = memoryview(buf)
    slot = P_DATA_HEADER_SIZE + chunk
    count = len(buf) // slot
    got = _scatter_read(
        fp, [view[i * slot + P_DATA_HEADER_SIZE : (i + 1) * slot] for i in range(count)]
    )
    ends: list[int] = []
    for i in range(count):
        data = i * slot + P_DATA_HEADER_SIZE
        n = min(chunk, max(0, got - i * chunk))
        if n < chunk:  # where the scatter read stopped (or there was none): read on
            n += _read_into(fp, view[data + n : data + chunk])
        if not n:
            break
        pack_p_data_header(buf, i * slot, context_id, 0x00, n)
        ends.append(data + n)
        if n < chunk:
            break
    return ends
