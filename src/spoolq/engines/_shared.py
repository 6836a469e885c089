"""What the file engines (lmdb, dbm, pickle) share: one store per file per process,
an exclusive lock for the single-process engines, and fsync helpers; and the refusal
of a NaN time, which every engine shares.

Several queue handles in one process often open the same file (one handle per
named queue). LMDB forbids opening one environment twice in a process, and the
dbm and pickle engines keep state in memory that two copies would overwrite,
so every handle on a file shares one store: :class:`SharedEngine` counts the
handles, serializes their calls with the store's lock and closes the store
with the last handle.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from filelock import FileLock, Timeout

from ..errors import ClosedError, ConfigurationError, EngineError, LockTimeout
from .base import (
    Counts,
    Engine,
    Lease,
    LeasedRecord,
    StoredRecord,
    SupportsPeekLeased,
    forks,
)

__all__ = ["SharedEngine", "Store", "check_directory", "fsync_dir", "fsync_file",
           "lock_exclusively"]

log = logging.getLogger("spoolq")


class Store(Engine, SupportsPeekLeased, Protocol):
    """What a shared store offers: the engine protocol and listing leased records."""


@dataclass(eq=False)
class _Entry:
    store: Store
    read_only: bool
    lock: threading.RLock
    flushes: dict[str, bool]
    handles: int = 1
    #: :func:`forks` when opened: an entry of another count is a parent process's.
    forks: int = 0
    #: Set, under ``lock``, when the last handle closed the store: a call that got the
    #: entry before that must not reach the closed store (a pickle store would write its
    #: file without holding the file's lock any more).
    closed: bool = False


_registry: dict[str, _Entry] = {}
_registry_lock = threading.Lock()


def _forget_after_fork() -> None:
    # A forked child must not use its parent's stores (LMDB environments and file locks
    # do not survive fork); it opens its own.
    _registry.clear()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_forget_after_fork)


def _flush_words(flushes: dict[str, bool]) -> str:
    return ", ".join(f"{k}={v}" for k, v in flushes.items())


def _acquire(key: str, read_only: bool, opener: Callable[[], Store],
             flushes: dict[str, bool]) -> _Entry:
    with _registry_lock:
        entry = _registry.get(key)
        if entry is not None:
            if entry.read_only and not read_only:
                raise EngineError(
                    f"{key} is open read-only in this process; close those handles before "
                    "opening it for writing")
            if not read_only and flushes != entry.flushes:
                # The handles share one store, which flushes one way: a handle asking for
                # fsync must not get less without a word.
                raise ConfigurationError(
                    f"{key} is already open in this process with {_flush_words(entry.flushes)}"
                    f"; this handle asks for {_flush_words(flushes)}. Handles of one file in "
                    "a process share its store: open them with the same durability")
            entry.handles += 1
            return entry
        # Opened under the registry lock so two threads cannot open the same file twice.
        entry = _Entry(opener(), read_only, threading.RLock(), dict(flushes), forks=forks())
        _registry[key] = entry
        return entry


_INHERITED: list[_Entry] = []
"""A parent process's stores that handles of this one let go of: kept, never closed."""


def _release(key: str, entry: _Entry) -> None:
    if entry.forks != forks():
        # A parent's store (an LMDB environment, a file whose lock the parent holds):
        # closing it here would act on the parent's behalf.
        _INHERITED.append(entry)
        return
    with _registry_lock:
        entry.handles -= 1
        if entry.handles > 0:
            return
        if _registry.get(key) is entry:
            del _registry[key]
        # Closed under the registry lock: a new open of the same file waits until the
        # store has let go of it (and of its file lock).
        with entry.lock:
            entry.closed = True
            entry.store.close()


class SharedEngine:
    """A handle on a store that every handle on the same file in this process shares.

    ``opener`` opens the store when no handle on ``path`` is open yet. A handle
    opened with ``read_only=True`` refuses every write, whatever the store.
    ``flushes`` are the store's flush settings (its durability): a writing handle
    asking for others than the open store's raises :class:`ConfigurationError`.
    """

    name: str

    def __init__(self, path: str, *, read_only: bool, opener: Callable[[], Store],
                 flushes: dict[str, bool]) -> None:
        self.path = path
        self.read_only = read_only
        self._key = os.path.realpath(path)
        self._opening = opener, dict(flushes)
        self._entry: _Entry | None = None
        self._take_share()
        assert self._entry is not None
        self.name = self._entry.store.name

    def _take_share(self) -> None:
        opener, flushes = self._opening
        entry = self._entry = _acquire(self._key, self.read_only, opener, flushes)
        # A handle dropped without close() still gives back its share (and, with the last
        # share, the file and its lock).
        self._release = weakref.finalize(self, _release, self._key, entry)

    def _open_entry(self) -> _Entry:
        entry = self._entry
        if entry is None:
            raise self._closed()
        if entry.forks != forks():
            # A child forked from the process that opened the file: the store is the
            # parent's, which a child must not use. It opens one of its own.
            self._release()
            self._take_share()
            assert self._entry is not None
            return self._entry
        return entry

    def _closed(self) -> ClosedError:
        return ClosedError(f"the {self.name} engine on {self.path} is closed")

    def _writable(self, what: str) -> _Entry:
        if self.read_only:
            raise EngineError(f"{self.path} was opened read-only; {what} would change it")
        return self._open_entry()

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        entry = self._writable("append")
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.append(queue, records, raw_sizes, now)

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        entry = self._writable("take")
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.take(queue, n, now, lease)

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        entry = self._writable("restore")
        with entry.lock:
            if entry.closed:
                raise self._closed()
            entry.store.restore(queue, records)

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        entry = self._writable("ack")
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.ack(queue, deliveries, owner)

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        entry = self._writable("release")
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.release(queue, deliveries, owner, not_before=not_before,
                                       max_attempts=max_attempts, count_attempt=count_attempt,
                                       reason=reason)

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        entry = self._writable("expire")
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.expire(queue, now, owners=owners, max_attempts=max_attempts)

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        entry = self._open_entry()
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.peek(queue, n, offset)

    def peek_leased(self, queue: str, n: int, offset: int = 0) -> list[LeasedRecord]:
        entry = self._open_entry()
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.peek_leased(queue, n, offset)

    def counts(self, queue: str) -> Counts:
        entry = self._open_entry()
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.counts(queue)

    def owners(self, queue: str) -> dict[str, int]:
        entry = self._open_entry()
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.owners(queue)

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        entry = self._writable("move")
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.move(src, dst, ids)

    def purge(self, queue: str) -> int:
        entry = self._writable("purge")
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.purge(queue)

    def queues(self) -> list[str]:
        entry = self._open_entry()
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.queues()

    def get_meta(self, key: str) -> bytes | None:
        entry = self._open_entry()
        with entry.lock:
            if entry.closed:
                raise self._closed()
            return entry.store.get_meta(key)

    def set_meta(self, key: str, value: bytes) -> None:
        entry = self._writable("set_meta")
        with entry.lock:
            if entry.closed:
                raise self._closed()
            entry.store.set_meta(key, value)

    def close(self) -> None:
        """Let go of the store; the last handle on a file closes it. A second call does nothing."""
        self._entry = None
        self._release()


def check_directory(path: str) -> None:
    """EngineError naming the directory when the one ``path`` is in does not exist: a
    queue file is created in an existing directory, never with its directories."""
    parent = os.path.dirname(os.path.realpath(path))  # "link/.." as the kernel takes it
    if not os.path.isdir(parent):
        raise EngineError(f"{path}: cannot open the queue: no directory {parent}")


def lock_exclusively(path: str, engine: str) -> FileLock:
    """Take the lock ``<path>.lock`` that keeps a single-process engine's file to one process;
    ``release()`` it when done. With filelock 4.3 or later (on Python 3.11 and later), a
    child forked from this process does not keep it: see docs/engines.md.

    Raises :class:`LockTimeout` at once when another process holds it.
    """
    check_directory(path)  # (filelock would create the missing directories)
    lock = FileLock(path + ".lock", timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout as exc:
        raise LockTimeout(
            f"{path} is in use by another process; the {engine} engine allows one process "
            "per file (use the sqlite or lmdb engine to share a queue between processes)"
        ) from exc
    except OSError as exc:
        verb = "open" if os.path.exists(path + ".lock") else "create"
        raise EngineError(f"{path}: cannot {verb} the lock file {path}.lock: {exc}") from exc
    return lock


def fsync_file(path: str) -> None:
    """Flush a file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flush a directory entry change (a create, rename or delete) to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        log.debug("spoolq: cannot open directory %s to fsync it", path)
        return
    try:
        os.fsync(fd)
    except OSError:
        # Some platforms and file systems cannot fsync a directory; the file fsyncs still hold.
        log.debug("spoolq: fsync of directory %s is not supported", path)
    finally:
        os.close(fd)
