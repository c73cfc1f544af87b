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
import stat
import tempfile
from collections.abc import Sequence
from typing import IO, Any, BinaryIO

import anyio
import anyio.to_thread
from pydicom.dataset import FileMetaDataset

from .dsutils import part10_header
from .pdu import P_DATA_HEADER_SIZE, pack_p_data_header

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ("Spares", "Spool", "file_mode", "fill_p_data", "move_into", "write_new")

#: Spilled fragments are written to disk once this many bytes are held.
WRITE_BATCH = 4 << 20
#: ... by system calls of at most this many bytes each. A larger write()
#: makes Linux (6.x, ext4 and others with large folios) fill the page cache
#: with high-order folios, which come from the buddy allocator rather than
#: the per-CPU lists: where the memory is cold (not touched lately, or, in a
#: VM with free page reporting, given back to the host) that costs 3 to 10
#: times as much per byte. 64 KiB (order 4) still comes from the per-CPU lists.
WRITE_CALL = 64 << 10
#: ... or this many, over a spool file kept for reuse (see Spares): its
#: pages are there already, none is allocated, and fewer calls cost less.
REUSED_WRITE_CALL = 1 << 20


#: A spool file the handler left is kept for the association's next one if
#: it is at most this large (see :class:`Spares`) ...
SPARE_MAX = 256 << 20
#: ... and for this many seconds at most: an idle association holds none.
SPARE_IDLE = 2.0

#: How a kept spool file is opened again: for writing, never through a link.
_REOPEN = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)

#: (path, st_dev, st_ino) of a spool file set aside for reuse.
_Spare = tuple[str, int, int]


class Spares:
    """The spool file an association keeps for its next spooled data set.

    Writing a data set into a new file has the kernel allocate its page
    cache, and deleting the file frees it: on Linux that is about 40% of the
    cost of the write (and more where memory is cold). So a spool file the
    handler left behind is not deleted but set aside, and the next data set
    spooled on the association overwrites it (then truncates it to its own
    length), in pages already there.

    Only a file nobody else can see is kept: still a regular file under its
    name, with one link (the handler neither moved nor hard-linked it), the
    mode ``mkstemp`` gave it (0o600) and at most :data:`SPARE_MAX` bytes. It
    is renamed, so its old name is gone when the handler has returned, as if
    deleted. Before it is written again, a write lease (``F_SETLEASE``)
    checks that no descriptor or mapping of it is open anywhere (a handler
    that kept it open to read later); if one is, or leases are not available,
    it is deleted and a new file made. One file per association at most,
    deleted when the association ends or has spooled nothing for
    :data:`SPARE_IDLE` seconds (:attr:`expires`, which the association's
    timers watch): on a tmpfs its pages are memory.

    Used on the event loop; the file work happens in :class:`Spool`'s
    worker-thread calls.
    """

    __slots__ = ("_closed", "_settling", "_spare", "expires")

    def __init__(self) -> None:
        self._spare: _Spare | None = None
        self._closed = False
        #: Set once the file being set aside is kept or deleted.
        self._settling: anyio.Event | None = None
        #: When the file set aside is deleted if no spool took it (anyio's clock).
        self.expires: float | None = None

    async def set_aside(self, spool: Spool) -> bool:
        """Keep ``spool``'s finished file for the next spool if it may be
        (see :class:`Spares`); True if it was (``spool`` no longer has it)."""
        identity = spool._identity
        if (
            self._closed
            or self._spare is not None
            or self._settling is not None
            or identity is None
            or _SET_LEASE is None  # no lease could show it unheld: not kept
            or identity[0] in _NO_LEASES
        ):
            return False
        settled = self._settling = anyio.Event()
        try:
            spare = await anyio.to_thread.run_sync(spool._set_aside)
        finally:
            self._settling = None
            settled.set()
        if spare is None or self._closed:
            return False
        self._spare, spool.path = spare, None
        self.expires = anyio.current_time() + SPARE_IDLE
        return True

    async def take(self) -> _Spare | None:
        """The file set aside (waiting for one being set aside), now the
        caller's to reuse or delete."""
        if self._settling is not None:
            await self._settling.wait()
        return self._take()

    def _take(self) -> _Spare | None:
        spare, self._spare, self.expires = self._spare, None, None
        return spare

    async def expire(self) -> None:
        """Delete the file set aside if it has waited past :attr:`expires`."""
        if self.expires is not None and anyio.current_time() >= self.expires:
            await _delete(self._take())

    async def close(self) -> None:
        """Delete the file set aside (in a worker thread) and keep none from now on."""
        self._closed = True
        await _delete(self._take())


async def _delete(spare: _Spare | None) -> None:
    """Delete a file set aside, in a worker thread."""
    if spare is not None:
        deleted = False
        try:
            await anyio.to_thread.run_sync(_unlink, spare[0])
            deleted = True
        finally:
            if not deleted:
                _unlink(spare[0])  # cancelled before the worker ran: not left behind


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


#: F_SETLEASE (Linux); without it no spool file is kept.
_SET_LEASE: int | None = getattr(fcntl, "F_SETLEASE", None) if fcntl is not None else None
#: The devices (st_dev) whose file system refused a lease otherwise than
#: for an open file (EINVAL: no leases there; EACCES): no file is kept there.
_NO_LEASES: set[int] = set()


def _alone(fd: int, device: int) -> bool:
    """True if no other descriptor or mapping of ``fd``'s file is open, in
    this process or any: a write lease is granted only then (Linux)."""
    if _SET_LEASE is None:
        return False
    try:
        fcntl.fcntl(fd, _SET_LEASE, fcntl.F_WRLCK)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            _NO_LEASES.add(device)  # not "open elsewhere": no leases here
        return False
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _SET_LEASE, fcntl.F_UNLCK)
    return True


class Spool:
    """A temporary Part 10 file receiving one data set."""

    __slots__ = ("_file", "_identity", "_reused", "data_offset", "error", "path", "size")

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self.path: str | None = None
        self.data_offset = 0
        self.size = 0
        #: The first write error (e.g. ENOSPC); later writes are skipped.
        self.error: OSError | None = None
        #: (st_dev, st_ino) of the file, when it may be kept (see Spares).
        self._identity: tuple[int, int] | None = None
        #: Written over a kept file: truncated to its own length when finished.
        self._reused = False

    async def open(
        self,
        header: bytes | FileMetaDataset,
        directory: str | None,
        spares: Spares | None = None,
    ) -> None:
        """Create the file and write its Part 10 header (given encoded, or as
        the File Meta Information to encode). With ``spares``, the file the
        association set aside is written over if it may be (see :class:`Spares`)."""
        if not isinstance(header, bytes):
            header = part10_header(header)
        spare = await spares.take() if spares is not None else None
        begun = False

        def create() -> None:
            nonlocal begun
            begun = True
            if spare is None or not self._reuse(spare, directory):
                fd, path = tempfile.mkstemp(prefix="aiodicom-", suffix=".dcm", dir=directory)
                self.path = path
                self._file = os.fdopen(fd, "wb")
                if spares is not None:
                    info = os.fstat(fd)
                    self._identity = (info.st_dev, info.st_ino)
            assert self._file is not None
            self._file.write(header)
            self._file.flush()  # (the data set may go in through the descriptor: see fd)

        try:
            await anyio.to_thread.run_sync(create)
        except OSError as exc:
            self.error = exc
        finally:
            if spare is not None and not begun:
                _unlink(spare[0])  # cancelled before the worker ran: not left behind
        self.data_offset = len(header)

    def _reuse(self, spare: _Spare, directory: str | None) -> bool:
        """Open the set-aside file to write over (blocking); False if it may
        not be (it is then deleted, if it is still the one set aside)."""
        path, dev, ino = spare
        try:
            fd = os.open(path, _REOPEN)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != (dev, ino):
                os.close(fd)
                return False  # not the file set aside: not ours to delete
            wanted = directory if directory is not None else tempfile.gettempdir()
            if (
                not stat.S_ISREG(info.st_mode)
                or info.st_nlink != 1
                or not os.path.samefile(os.path.dirname(path), wanted)
                or not _alone(fd, dev)
            ):
                os.close(fd)
                _unlink(path)
                return False
        except OSError:
            os.close(fd)
            _unlink(path)
            return False
        self.path = path
        self._file = os.fdopen(fd, "wb")
        self._identity = (dev, ino)
        self._reused = True
        return True

    @property
    def fd(self) -> int | None:
        """The descriptor of the file being written (its position where the
        data set goes on), for writing to it directly; None if nothing is to
        be written (refused, failed, finished)."""
        if self.error is not None or self._file is None:
            return None
        return self._file.fileno()

    @property
    def reused(self) -> bool:
        """True if this is a kept file written over (see :class:`Spares`)."""
        return self._reused

    async def write(self, chunks: list[Any]) -> None:
        """Append ``chunks`` (bytes-like); remember the first failure instead of raising."""
        size = sum(len(c) for c in chunks)
        self.size += size
        if self.error is not None or self._file is None:
            return
        file = self._file
        call = REUSED_WRITE_CALL if self._reused else WRITE_CALL
        try:
            await anyio.to_thread.run_sync(_write_all, file, chunks, call)
        except OSError as exc:
            self.error = exc

    async def finish(self) -> None:
        """Flush and close the file (the data set is complete)."""
        file, self._file = self._file, None
        if file is None:
            return
        try:
            await anyio.to_thread.run_sync(_close, file, self._reused)
        except OSError as exc:
            self.error = self.error or exc

    async def delete(self, spares: Spares | None = None) -> None:
        """:meth:`discard` in a worker thread (deleting a big file takes the
        kernel milliseconds, which the event loop need not wait); in this
        thread if a cancellation comes before the worker ran it. With
        ``spares``, a file the handler left is set aside there instead, if
        it may be (see :class:`Spares`)."""
        if self.path is None and self._file is None:
            return
        try:
            if spares is not None and await spares.set_aside(self):
                return
            await anyio.to_thread.run_sync(self.discard)
        finally:
            self.discard()  # (does nothing if the worker did it, or the file was kept)

    def _set_aside(self) -> _Spare | None:
        """Rename a finished file nobody else has (see :class:`Spares`) to a
        new name, which is returned (blocking); None if it is not kept."""
        path, identity = self.path, self._identity
        if self._file is not None or path is None or identity is None:
            return None
        try:
            info = os.stat(path, follow_symlinks=False)
            if (
                (info.st_dev, info.st_ino) != identity
                or not stat.S_ISREG(info.st_mode)
                or info.st_nlink != 1
                or stat.S_IMODE(info.st_mode) != 0o600  # as mkstemp made it
                or info.st_size > SPARE_MAX
            ):
                return None
            new = os.path.join(os.path.dirname(path), f"aiodicom-{os.urandom(8).hex()}.dcm")
            os.rename(path, new)
        except OSError:
            return None
        self.path = new  # (what discard() deletes, should it come to that)
        return (new, *identity)

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


def _close(file: IO[bytes], truncate: bool) -> None:
    """Close a finished spool file; ``truncate``: cut what an earlier, longer
    data set left beyond this one (a kept file written over)."""
    try:
        if truncate:
            file.flush()
            fd = file.fileno()
            os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
    finally:
        file.close()


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


def _write_all(file: IO[bytes], chunks: list[Any], call: int = WRITE_CALL) -> None:
    """Append ``chunks`` to ``file`` (blocking: for a worker thread), each
    system call writing at most ``call`` bytes (writev() gathers smaller
    chunks up to that, :data:`_IOV_MAX` of them at most)."""
    if not hasattr(os, "writev"):  # pragma: no cover - not on POSIX
        file.writelines(chunks)
        return
    file.flush()  # what went through the file object (the header) first
    _write_fd(file.fileno(), chunks, call)


def _write_fd(fd: int, chunks: Sequence[Any], call: int = WRITE_CALL) -> None:
    """:func:`_write_all` on a file descriptor (POSIX)."""
    group: list[memoryview] = []
    room = call
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while view:
            piece, view = view[:room], view[room:]
            group.append(piece)
            room -= len(piece)
            if not room or len(group) == _IOV_MAX:
                _writev_all(fd, group)
                group, room = [], call
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
