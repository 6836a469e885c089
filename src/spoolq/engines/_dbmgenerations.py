"""The dbm engine's files over time: opening a queue directory, one transaction per call
with its commit point, and compaction into a new generation (see :mod:`spoolq.engines.dbm`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from .._inchild import InChild
from ..errors import CorruptError, EngineError, FormatError
from . import _dbmfiles as files
from ._dbmstate import APPLICATION, State, decode_state, encode_state, trusted_state
from ._shared import lock_exclusively
from .base import FORMAT_VERSION

__all__ = ["Generations"]

log = logging.getLogger("spoolq")

_COMPACT_MIN = 1000  # dead keys tolerated before a rewrite, whatever the live count
_COMPACT_MIN_BYTES = 8 << 20  # bytes of replaced states tolerated, whatever the live size
_PADDED = 512  # what dbm.dumb takes at least for a value
_READER_TRIES = 20  # loads a read-only open tries while its writer keeps writing
_READER_PAUSE = 0.005  # seconds between them while the same generation is current

# A forked child never uses its parent's stores (the engines open their own), but it holds
# copies of them, which it closes or collects when it ends.
_stores: InChild[Generations] = InChild(lambda store: store._disown())


class Generations:
    """The files of one dbm queue directory and the state they commit; the engine's
    calls are built on :meth:`_transaction`."""

    name = "dbm"
    _state: State

    def __init__(self, path: str, *, read_only: bool, fsync: bool, recover: bool) -> None:
        # Absolute: dbm.dumb opens its files by name at every write, and a relative name
        # would reach a same-named queue (without its lock) once the process changed its
        # working directory.
        self.path = os.path.abspath(path)
        self.read_only = read_only
        self._fsync = fsync
        self._go_back = recover
        self._db: files.Database | None = None
        self._stale = False
        self._lock = None
        _stores.add(self)
        try:
            # Refused before the lock is taken, so no lock file is left beside what is refused.
            self._refuse_foreign()
            # The lock of the directory a symbolic link points to, which every name of it takes.
            self._lock = None if read_only else lock_exclusively(os.path.realpath(path),
                                                                 self.name)
            self._open()
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):
                raise EngineError(f"{path}: cannot open the queue: {exc}") from exc
            raise

    # ---- opening, committing, compacting ------------------------------------------------

    def _refuse_foreign(self) -> None:
        """FormatError when ``path`` is something other than a dbm queue or nothing."""
        path = self.path
        if not os.path.exists(path):
            foreign = files.foreign_database(path)
            if foreign:
                raise FormatError(f"{path} names a {foreign} database of another program, not "
                                  "a spoolq dbm queue (a dbm queue is a directory)")
        elif not os.path.isdir(path):
            raise FormatError(f"{path} is not a spoolq dbm queue (a dbm queue is a directory)")
        elif files.current(path) is None and not all(map(files.is_ours, os.listdir(path))):
            raise FormatError(f"{path} is a directory but not a spoolq dbm queue")

    def _open(self) -> None:
        path = self.path
        # A new queue reached through a symbolic link is made where the link points, so the
        # link stays a link (the directory replaces only what rename(2) lets it replace).
        real = os.path.realpath(path)
        if not self.read_only:
            files.remove_unfinished(real)
        generation = files.current(path) if os.path.isdir(path) else None
        if generation is None:
            if os.path.isdir(path) and os.listdir(path):
                raise CorruptError(f"{path}: {files.CURRENT} is missing")
            if self.read_only:
                raise FormatError(f"{path}: no such spoolq dbm queue")
            meta = {"application": APPLICATION, "format_version": str(FORMAT_VERSION).encode()}
            generation = files.make_queue_directory(real, State(meta=meta))
        if self.read_only:
            self._load_as_reader(generation)
            return
        self._load(generation)
        # Only once the live generation has loaded: when it cannot be, the generation a
        # compaction killed after switching left is the queue a moment before, and stays.
        # (A half-written newer one is replaced by the next compaction, which may have run
        # in _load: self._gen is the generation live now.)
        files.remove_other_generations(path, self._gen)

    def _load_as_reader(self, generation: str) -> None:
        """Load ``generation`` without the lock: its writer may compact it into a new one
        meanwhile, removing its files, or rewrite its index (at every commit) as it is read.
        A load that fails while ``CURRENT`` names another generation loads that one instead;
        one that fails in the current generation is tried again after a pause, so only an
        index that stays torn (a writer killed while writing it) is reported."""
        for _ in range(_READER_TRIES - 1):
            try:
                self._load(generation)
                return
            except (OSError, EngineError):
                db, self._db = self._db, None
                if db is not None:
                    with suppress(Exception):
                        db.close()
                live = files.current(self.path)
                if live is None:
                    raise
                if live == generation:
                    time.sleep(_READER_PAUSE)
                generation = live
        self._load(generation)

    def _load(self, generation: str, newest: int | None = None) -> None:
        """Open ``generation`` at its newest intact state, or the newest up to commit
        ``newest``; drop (by compacting) whatever no loaded state names."""
        files.repair_dumb(self.path, generation, read_only=self.read_only,
                          go_back=self._go_back)
        self._gen = generation
        self._db, self._backend = files.open_generation(self.path, generation,
                                                        "r" if self.read_only else "w")
        keys = list(self._db.keys())
        state = trusted_state(self._db.__getitem__, keys, where=f"{self.path}: {generation}",
                              path=self.path, go_back=self._go_back, newest=newest)
        self._state, self._committed, self._keys = state, encode_state(state), state.keys
        if len(keys) != state.keys and not self.read_only:
            log.info("spoolq: %s: dropping what an interrupted write left", self.path)
            self._compact()

    def _compact(self) -> None:
        """Copy the live records into a new generation and switch to it."""
        db = self._require_db()
        generation = f"gen-{int(self._gen[4:]) + 1:06d}"
        copied = files.write_compacted(self.path, generation, self._backend, db,
                                       decode_state(self._committed),
                                       files.mode_of(self.path, self._gen))
        files.set_current(self.path, generation)
        old_generation, self._db = self._gen, None
        db.close()
        files.remove_generation(self.path, old_generation)
        self._load(generation)
        log.info("spoolq: %s: compacted into %s (%d live records)", self.path, generation,
                 copied)

    def _require_db(self) -> files.Database:
        if self._db is None:
            raise EngineError(f"{self.path}: the database is not open")
        return self._db

    def _get(self, db: files.Database, key: bytes) -> bytes:
        return files.get(self.path, db, key)

    @contextmanager
    def _transaction(self, what: str) -> Iterator[State]:
        """One engine call: yields the state to change; set ``self._changed`` to commit it."""
        if self._stale:
            self._recover(what, failed=True)
        self._changed = False
        self._new_keys = 0
        self._written = 0
        try:
            yield self._state
            if self._changed:
                self._commit()
        except BaseException as exc:
            if self._new_keys or self._changed:
                self._stale = True  # the files may hold part of this call: reload before next
            if self._written:
                self._supersede(self._written, what)
            self._state = decode_state(self._committed)
            if isinstance(exc, OSError):
                raise EngineError(f"{self.path}: {what} failed: {exc}") from exc
            raise
        if self._changed and (self._keys - self._live() > max(self._live(), _COMPACT_MIN)
                              or self._state.waste > max(self._live_bytes(),
                                                         _COMPACT_MIN_BYTES)):
            try:
                self._compact()
            except BaseException as exc:
                # The call itself is committed; whatever compaction left, the next call
                # reloads from CURRENT before it starts.
                self._stale = True
                if not isinstance(exc, (OSError, EngineError)):
                    raise
                log.warning("spoolq: %s: compaction failed, will retry: %s", self.path, exc)

    def _recover(self, what: str, *, failed: bool = False) -> None:
        """Load the generation ``CURRENT`` names again. After a call that ``failed``, its
        state stays unloaded even when it reached the files (a dbm.dumb index append that
        failed is still in the index dbm.dumb writes at close, and a failed fsync came after
        the write): the call raised, so it must not have happened."""
        db, self._db = self._db, None
        newest = decode_state(self._committed).commit if failed else None
        generation = self._gen
        if db is not None:
            with suppress(Exception):
                db.close()
        try:
            live = files.current(self.path) or generation
            if self.read_only:
                self._load_as_reader(live)
            else:
                # A compaction that failed after naming its generation committed nothing new.
                self._load(live, newest if live == generation else None)
        except OSError as exc:
            raise EngineError(f"{self.path}: {what} failed: {exc}") from exc
        self._stale = False

    def _live(self) -> int:
        return 1 + sum(q.live() for q in self._state.queues.values())

    def _live_bytes(self) -> int:
        """About what a compaction copies: the records, each padded as dbm.dumb pads it,
        and the state. Replaced states and freed records of more than this are reclaimed:
        each state holds every record held aside, so with thousands of them the states
        fill the files, and large records taken fill them long before 1000 keys died."""
        return len(self._committed) + sum(q.stored + _PADDED * q.live()
                                          for q in self._state.queues.values())

    def _freed(self, size: int, records: int = 1) -> None:
        """Count ``records`` holding ``size`` bytes of data, which no state names any more,
        as waste: the bytes (not only the keys) of what was taken or acked decide when the
        files are compacted, or large records would pile up until a thousand keys died."""
        self._state.waste += size + _PADDED * records

    def _put(self, key: bytes, value: bytes) -> None:
        self._require_db()[key] = value
        self._new_keys += 1

    def _commit(self) -> None:
        st = self._state
        st.commit += 1
        st.keys = self._keys + self._new_keys + 1
        st.waste += len(self._committed)  # the state this one replaces
        blob = encode_state(st)
        self._require_db()[b"s%d" % st.commit] = blob  # the commit point
        self._written = st.commit
        if self._fsync:
            if self._backend != "dbm.dumb":  # dumb's sync rewrites the index; see the module
                sync = getattr(self._db, "sync", None)
                if sync is not None:
                    sync()
            files.sync_generation(self.path, self._gen)
        self._keys, self._committed = st.keys, blob

    def _supersede(self, failed: int, what: str) -> None:
        """Write the last committed state again, as commit ``failed + 1``: the state of
        call ``failed`` is in the files, but the call raised (its fsync failed), so no open
        may take it as committed. Done before the call raises, so a process killed later,
        before or while the next call drops that state, leaves no trace of the call.

        Not fsynced: the fsync is what failed. A power cut may still bring the call back.
        When this write fails too, the next call (or close) drops the state instead."""
        st = decode_state(self._committed)
        st.commit = failed + 1
        # Every key now in the generation: the committed ones, the failed call's records
        # and state, and this state.
        st.keys = self._keys + self._new_keys + 2
        st.waste += 2 * len(self._committed)  # it and the failed call's, about as large
        blob = encode_state(st)
        try:
            self._require_db()[b"s%d" % st.commit] = blob
        except Exception as exc:  # the call's own error is the one raised
            log.warning("spoolq: %s: %s failed and its state could not be undone in the "
                        "files (%s); the next call drops it", self.path, what, exc)
            return
        self._keys, self._committed = st.keys, blob

    def _disown(self) -> None:
        """Let go of the database in a forked child without writing a byte: ``dbm.dumb``
        writes its whole index from memory when closed or collected, and the child's copy
        is the index as it was at the fork, without what the parent wrote since."""
        db, self._db = self._db, None
        if db is not None and self._backend == "dbm.dumb":
            db._index = None  # type: ignore[attr-defined]  # close() then writes nothing

    def close(self) -> None:
        if self._stale and self._db is not None and not self.read_only:
            # Closing dbm.dumb writes its index as it holds it, with the keys of the call that
            # failed: drop them now, or the next open would take that call as committed.
            try:
                self._recover("close", failed=True)
            except Exception as exc:  # closing goes on; the files stay as they are
                log.warning("spoolq: %s: could not drop what a failed call wrote: %s",
                            self.path, exc)
        db, self._db = self._db, None
        lock, self._lock = self._lock, None
        try:
            if db is not None:
                db.close()
                if self._fsync and not self.read_only:
                    files.sync_generation(self.path, self._gen)
        finally:
            if lock is not None:
                lock.release()
