"""Opening an LMDB queue file: refusing what is not one, creating a new one, and
upgrading a file of an earlier format to format 3 (format 1 has no ``delayed_ids``
index, formats 1 and 2 no ``lease_owners`` and no ``soonest`` in their queue rows)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lmdb

from ..errors import ConfigurationError, CorruptError, EngineError, FormatError
from . import _lmdbformat as fmt
from . import _lmdbwalk as walk
from ._lmdbowners import LeaseOwners, count_leases
from .base import FORMAT_VERSION

if TYPE_CHECKING:
    Txn = lmdb.Transaction[bytes]
    Db = lmdb._Database

__all__ = ["Layout", "check_options", "check_whole", "clear_stale_readers",
           "cover_after_commit", "cover_free_tail", "lock_held", "no_lock_file_left",
           "open_environment", "open_layout", "open_unlocked", "unusable"]

log = logging.getLogger("spoolq")

_APPLICATION = b"spoolq"
# Format 2 added the delayed_ids sub-database, format 3 lease_owners and soonest; a
# file of an earlier format is upgraded when opened for writing, and read as it is when
# opened read-only.
_FORMAT = b"3"
_FORMAT_1 = str(FORMAT_VERSION).encode()
_FORMAT_2 = b"2"
_KNOWN = (_FORMAT_1, _FORMAT_2, _FORMAT)

# An LMDB file starts with its meta page: a 16-byte page header, then the magic number.
_MAGIC = struct.Struct("<16xI")
_MAGIC_NUMBER = 0xBEEFC0DE


@dataclass(frozen=True, slots=True)
class Layout:
    """The sub-databases of an open queue file (see the lmdb engine's module docstring)."""

    meta: Db
    counters: Db
    queues: Db
    ready: Db
    delayed: Db
    leased: Db
    #: ``delayed_ids``; None for a format 1 file opened read-only.
    ids: Db | None
    #: ``lease_owners``; None for a file of format 1 or 2 opened read-only.
    owners: LeaseOwners | None


def check_options(map_size: object, max_readers: object) -> None:
    """ConfigurationError for a ``map_size`` or ``max_readers`` LMDB cannot open with."""
    if type(map_size) is not int or not 4096 <= map_size < 1 << 64:
        raise ConfigurationError(
            f"map_size must be an int from 4096 to 2**64 - 1, not {map_size!r}")
    # A process holds two reader slots at times (the lmdb binding keeps one for reuse),
    # so a new file with a single slot could not even be opened.
    if type(max_readers) is not int or max_readers < 2:
        raise ConfigurationError(f"max_readers must be an int >= 2, not {max_readers!r}")


_MEND_WAIT = 0.5  # seconds a reader waits for a live writer to lengthen a file (see check_whole)
_CREATING_WAIT = 1.0  # seconds a read-only open waits for a file being created to fill
_OPEN_TRIES = 40  # opens (of the environment, of its layout) while other processes grow its map


def _check_magic(path: str, read_only: bool) -> None:
    """FormatError for a file that is not an LMDB file at all, before LMDB opens it (and
    puts its lock file beside it). An empty or missing file becomes a queue, unless
    ``read_only``: then a file that stays empty for a second is refused too."""
    deadline = time.monotonic() + _CREATING_WAIT
    while True:
        try:
            with open(path, "rb") as f:
                head = f.read(_MAGIC.size)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise EngineError(f"{path}: cannot open the queue: {exc}") from exc
        if head or not read_only or time.monotonic() >= deadline:
            break
        time.sleep(0.005)  # the process creating the file may not have written it yet
    if not head and read_only:
        # LMDB itself would fail with "Bad file descriptor" here.
        raise FormatError(f"{path} is empty: not an LMDB file, so not a spoolq queue file "
                          "(opened for writing, it becomes a new queue)")
    if head and (len(head) < _MAGIC.size or _MAGIC.unpack(head)[0] != _MAGIC_NUMBER):
        raise FormatError(f"{path} is not an LMDB file, so not a spoolq queue file")


@contextlib.contextmanager
def no_lock_file_left(path: str) -> Iterator[None]:
    """Remove the ``-lock`` file that opening ``path`` created when the file is refused
    (FormatError, CorruptError): a file that is not a queue gets nothing put beside it. A
    lock file that was there before is another program's, and stays; so does one that a
    process holds (Linux tells), such as one creating the queue while this open waited."""
    lock_file = path + "-lock"
    had_lock_file = os.path.lexists(lock_file)
    try:
        yield
    except (FormatError, CorruptError):
        if not had_lock_file and not (sys.platform.startswith("linux") and lock_held(lock_file)):
            with contextlib.suppress(OSError):
                os.remove(lock_file)
        raise


def open_environment(path: str, *, read_only: bool, sync: bool, metasync: bool,
                     map_size: int, max_readers: int) -> lmdb.Environment:
    """The LMDB environment of queue file ``path``, checked to be whole; a missing or
    empty file becomes a new queue file unless ``read_only``."""
    if os.path.isdir(path):
        raise FormatError(f"{path} is a directory, not a spoolq LMDB queue file")
    if read_only and not os.path.exists(path):
        raise FormatError(f"{path}: no such file")
    _check_magic(path, read_only)
    lock_file = path + "-lock"
    try:
        mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None  # a new file, which gets LMDB's own mode as the lock file does
    had_lock_file = os.path.lexists(lock_file)

    def environment(lock: bool) -> lmdb.Environment:
        # Opening begins a transaction, which meets MDB_MAP_RESIZED when another process
        # grew the map after the size was read: opening again reads the grown size.
        for _ in range(_OPEN_TRIES - 1):
            with contextlib.suppress(lmdb.MapResizedError):
                return opened(lock)
        return opened(lock)

    def opened(lock: bool) -> lmdb.Environment:
        return lmdb.Environment(
            path, subdir=False, readonly=read_only, create=not read_only, sync=sync,
            metasync=metasync, map_size=map_size, max_readers=max_readers,
            max_dbs=len(fmt.DB_NAMES), lock=lock)

    try:
        try:
            env = environment(lock=True)
        except lmdb.ReadonlyError:
            # A reader in a read-only directory cannot create the lock file. No process
            # can write the file there either (a writer needs that lock file), so it is
            # safe to read without the lock.
            if not read_only or os.path.exists(path + "-lock"):
                raise
            env = environment(lock=False)
    except lmdb.Error as exc:
        raise fmt.translate(exc, path, "open") from exc
    if mode is not None and not had_lock_file:
        # Every process that opens the file writes its lock file: those the queue file's
        # mode lets write it (a group sharing a 0o660 queue) get to write the lock file too,
        # as SQLite gives its -wal and -shm files the mode of the database.
        with contextlib.suppress(OSError):
            os.chmod(lock_file, (mode & 0o666) | 0o600)
    try:
        check_whole(env, path, mend=not read_only)
        env.reader_check()  # frees reader slots of processes that died
        if not read_only:
            _create_layout(env, path)
    except lmdb.Error as exc:
        env.close()
        raise fmt.translate(exc, path, "open") from exc
    except BaseException:
        env.close()
        raise
    return env


def open_unlocked(path: str, map_size: int) -> lmdb.Environment:
    """The environment of ``path`` opened read-only without LMDB's lock (for a reader that
    cannot write the lock file, while no process holds it), checked to be whole."""
    try:
        env = lmdb.Environment(path, subdir=False, readonly=True, create=False, lock=False,
                               map_size=map_size, max_dbs=len(fmt.DB_NAMES))
    except lmdb.Error as exc:
        raise fmt.translate(exc, path, "open") from exc
    try:
        check_whole(env, path, mend=False)
    except BaseException:
        env.close()  # pages past the end would fault if read
        raise
    return env


def clear_stale_readers(env: lmdb.Environment, path: str) -> int:
    """Free the reader slots of processes that died inside a read transaction (killed
    with SIGKILL, say); return how many. Such a slot keeps the snapshot it read: until it
    is freed, LMDB reuses no page freed since, and the file grows by every write. Opening
    the file frees them too, but a process that keeps it open must do so itself."""
    try:
        cleared = env.reader_check()
    except lmdb.Error:
        return 0  # (an environment without LMDB's lock has no reader table)
    if cleared:
        log.info("spoolq: %s: freed %d reader slots of processes that died reading it",
                 path, cleared)
    return int(cleared)


def pages_end(env: lmdb.Environment) -> int:
    """Where the file's last page number ends, in bytes."""
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def cover_free_tail(env: lmdb.Environment, path: str) -> int:
    """Make the file reach the end of its last page number; return its size.

    LMDB counts in that number pages a transaction took and freed again, which it never
    writes: a commit may leave the file ending before them, free pages that no read
    touches. Another process (``spoolq info``, a second consumer) would take such a file
    for a truncated one. The file is lengthened under LMDB's write lock, as a writer
    growing it does, and never shortened.
    """
    size = os.path.getsize(path)
    if size >= pages_end(env):
        return size
    txn = env.begin(write=True)
    try:
        size, needed = os.path.getsize(path), pages_end(env)
        if size < needed:
            os.truncate(path, needed)
            size = needed
    finally:
        txn.abort()
    return size


def cover_after_commit(env: lmdb.Environment, path: str, what: str, covered: int,
                       psize: int) -> int:
    """After a commit (of ``what``), :func:`cover_free_tail` when the last page number
    reached ``covered``, the pages the file was last seen to hold; return what it holds
    now. Never raises: the commit stands, and a later one (or a writer's open) lengthens
    a file this could not."""
    why = "the map kept being resized"
    for _ in range(_OPEN_TRIES):
        try:
            if env.info()["last_pgno"] < covered:
                return covered
            return cover_free_tail(env, path) // psize
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # the size another process grew the map to
        except lmdb.Error as exc:
            why = str(exc)
            break
    log.warning("spoolq: %s: after %s, could not lengthen the file to its last page: %s",
                path, what, why)
    return covered


def check_whole(env: lmdb.Environment, path: str, *, mend: bool) -> None:
    """CorruptError for a file that ends before its last page: reading a page past the
    end would fault (SIGBUS). A writer killed between a commit and :func:`cover_free_tail`
    leaves such a file whole all the same: a handle that may write (``mend``) lengthens
    it; a reader waits a moment for a live writer to do so, then refuses it."""
    deadline = time.monotonic() + _MEND_WAIT
    while (size := os.path.getsize(path)) < (needed := pages_end(env)):
        if mend:
            cover_free_tail(env, path)
            log.info("spoolq: %s ended %d bytes before its last page, which is free; "
                     "lengthened it", path, needed - size)
            return
        if time.monotonic() >= deadline:
            raise CorruptError(
                f"{path} is truncated: {size} bytes, but its pages need {needed} (or a "
                "writer was killed as it committed, which opening it writable mends)")
        time.sleep(0.01)


def _create_layout(env: lmdb.Environment, path: str) -> None:
    """Create the sub-databases of a new queue file, growing the map as every write does
    when a small ``map_size`` cannot hold them."""
    for _ in range(16):
        try:
            with env.begin(write=True) as txn:
                # Checked inside the write transaction: two processes may create at once.
                if not txn.cursor().first():
                    dbs = {name: env.open_db(name, txn=txn) for name in fmt.DB_NAMES}
                    txn.put(b"application", _APPLICATION, db=dbs[b"meta"])
                    txn.put(b"format_version", _FORMAT, db=dbs[b"meta"])
                    log.debug("spoolq: created LMDB queue file %s", path)
            return
        except lmdb.MapFullError:
            # Seven sub-databases need a few pages: doubling from 4 KiB fits them in 4 tries.
            env.set_mapsize(env.info()["map_size"] * 2)
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # adopt the size another process grew the map to
    raise EngineError(f"{path}: the new queue file did not fit even in a map of "
                      f"{env.info()['map_size']} bytes")


def _wait_for_creator(env: lmdb.Environment) -> None:
    """Wait, while the file holds nothing at all, for the process creating it to commit its
    sub-databases (one transaction, within milliseconds); the caller then checks them."""
    deadline = time.monotonic() + _CREATING_WAIT
    while True:
        with env.begin() as txn:
            if txn.cursor().first() or time.monotonic() >= deadline:
                return
        time.sleep(0.005)


def open_layout(env: lmdb.Environment, path: str, read_only: bool,
                write: Callable[[str, Callable[[Txn], tuple[int, int]]], tuple[int, int]],
                ) -> Layout:
    """The sub-databases of ``env``, after checking it is a spoolq queue file of a known
    format; a file of an earlier format is upgraded first unless ``read_only``.
    ``write(what, body)`` runs ``body`` in a write transaction (the engine's, which grows
    the map). A map another process grew since ``env`` was opened is adopted."""
    for _ in range(_OPEN_TRIES):
        try:
            return _layout(env, path, read_only, write)
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # the size another process grew the map to
    raise EngineError(f"{path}: open failed: the map kept being resized")


def _layout(env: lmdb.Environment, path: str, read_only: bool,
            write: Callable[[str, Callable[[Txn], tuple[int, int]]], tuple[int, int]],
            ) -> Layout:
    """:func:`open_layout`, once: :class:`lmdb.MapResizedError` when another process grew
    the map since ``env`` was opened."""
    foreign = f"{path} is an LMDB file but not a spoolq queue file"
    try:
        if read_only:
            _wait_for_creator(env)
        with env.begin() as txn:
            if not all(txn.get(name) is not None for name in fmt.V1_DB_NAMES):
                raise FormatError(foreign)
        try:
            dbs = [env.open_db(name, create=False) for name in fmt.V1_DB_NAMES]
        except lmdb.IncompatibleError as exc:
            raise FormatError(foreign) from exc
        meta, counters, queues, ready, delayed, leased = dbs
        with env.begin() as txn:
            application = txn.get(b"application", db=meta)
            version = txn.get(b"format_version", db=meta)
    except lmdb.MapResizedError:
        raise  # the caller adopts the map another process grew, and opens it again
    except lmdb.Error as exc:
        raise fmt.translate(exc, path, "open") from exc
    if application != _APPLICATION:
        raise FormatError(foreign)
    if version not in _KNOWN:
        shown = "none" if version is None else version.decode(errors="replace")
        raise FormatError(f"{path} has format version {shown}; this spoolq reads versions "
                          f"{', '.join(v.decode() for v in _KNOWN[:-1])} and "
                          f"{_FORMAT.decode()}")
    if version != _FORMAT:
        if read_only:
            ids = None if version == _FORMAT_1 else _open_db(env, path, b"delayed_ids")
            return Layout(meta, counters, queues, ready, delayed, leased, ids, None)

        def upgrade(txn: Txn) -> tuple[int, int]:
            found = txn.get(b"format_version", db=meta)
            if found not in (_FORMAT_1, _FORMAT_2):
                return -1, -1  # another process upgraded it first
            delays = walk.index_delayed(txn, delayed, env.open_db(b"delayed_ids", txn=txn)) \
                if found == _FORMAT_1 else 0
            leases = count_leases(txn, leased,
                                  LeaseOwners(env.open_db(b"lease_owners", txn=txn)), queues,
                                  path)
            txn.put(b"format_version", _FORMAT, db=meta)
            return delays, leases

        delays, leases = write("upgrade", upgrade)
        if delays >= 0:
            log.info("spoolq: %s: upgraded from format %s to %s (%d delayed records indexed, "
                     "%d leases counted)", path, version.decode(), _FORMAT.decode(), delays,
                     leases)
    ids = _open_db(env, path, b"delayed_ids")
    owners = LeaseOwners(_open_db(env, path, b"lease_owners"))
    return Layout(meta, counters, queues, ready, delayed, leased, ids, owners)


def _open_db(env: lmdb.Environment, path: str, name: bytes) -> Db:
    """The existing sub-database ``name``; FormatError when the file lacks it."""
    try:
        return env.open_db(name, create=False)
    except lmdb.NotFoundError as exc:
        raise FormatError(f"{path} is a spoolq LMDB queue file without its {name.decode()} "
                          "sub-database") from exc
    except lmdb.MapResizedError:
        raise
    except lmdb.Error as exc:
        raise fmt.translate(exc, path, "open") from exc


def unusable(path: str, read_only: bool, cause: object) -> tuple[bool, str] | None:
    """Why LMDB (whose error is ``cause``) could not open the queue file or its ``-lock``
    file: (whether to read without LMDB's lock, as no process holds it; a message) or None."""
    lock, need = path + "-lock", "read" if read_only else "write"
    for name in (path, lock):
        try:
            os.close(os.open(name, os.O_RDONLY if read_only and name == path else os.O_RDWR))
        except OSError as err:
            why = err.strerror if os.path.lexists(name) else str(cause).rpartition(": ")[2]
            if name == path:
                return False, (f"{path} cannot be opened to {need} ({why}): this needs {need} "
                               "access to the file")
            alone, is_dir = read_only and not lock_held(lock), os.path.isdir(lock)
            wrong = f"{path}: its lock file {lock} " + (
                "is a directory" if is_dir else f"cannot be written ({why})")
            doing = "reading it while another process may have it open" if read_only else "writing"
            return alone, wrong if alone else wrong + (": remove it" if is_dir else (
                f": every process that opens the queue records itself there, so {doing} "
                "needs write access to it"))
    return None


def lock_held(lock: str) -> bool:
    """Whether a process may have the queue open (each holds a lock on ``lock``'s byte 0).
    Told on Linux only, whose ``struct flock`` this reads; elsewhere it may always be."""
    if not sys.platform.startswith("linux"):
        return True
    import fcntl
    try:  # struct flock: type, whence, start, len, pid
        with open(lock, "rb") as f:
            got = fcntl.fcntl(f, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 1, 0))
    except OSError as exc:  # none can without that file; else this cannot be told
        return not isinstance(exc, (FileNotFoundError, IsADirectoryError))
    return bool(struct.unpack_from("hhqqi", got)[0] != fcntl.F_UNLCK)
