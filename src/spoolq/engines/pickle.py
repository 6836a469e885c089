"""The pickle engine: the whole queue file is one pickled dict, rewritten on every change.

The file (pickle protocol 5, format version 2) holds only dicts, lists, tuples,
str, bytes, int, float and None::

    {"meta": {"application": b"spoolq", "format_version": b"2"},
     "body": pickle.dumps({"meta": {"application": b"spoolq", "format_version": b"2", ...},
                           "next_id": 42,
                           "queues": {"default": [(id, data, raw_size, attempts, enqueued_at,
                                                   reason, lease_owner, visible_at), ...]}}),
     "crc32": zlib.crc32(body)}

Every byte is in the body, which the CRC covers, or must hold the one value written
there, so a flipped byte, a zeroed run or a cut is :class:`~spoolq.CorruptError` (or
:class:`~spoolq.FormatError` where it hits what names the file or its version), never
another queue. An earlier release reads ``meta["format_version"]`` first and refuses the
file. A file of version 1 (the body's dict itself, without a checksum) is read as it is
and rewritten as version 2 by the first change. The unpicklers refuse every global, so a
hostile file cannot name a class or a function to run: it is refused with
:class:`~spoolq.FormatError` before anything is built from it.

Costs: the engine holds every record in memory (it is a
:class:`~spoolq.engines.MemoryEngine` loaded from the file), and every call
that changes something rewrites the whole file: a temporary file in the same
directory, then ``os.replace``. Each put, take or ack therefore costs time
proportional to the queue's total size. It suits small queues (up to a few
thousand small items) that want one plain file and no dependency; pick sqlite
or lmdb for anything larger.

Crash safety: the replace is atomic, so a killed process leaves the old or
the new file, never half of one. With ``durability="fsync"`` the new file and
its directory are fsynced before a call returns, so the call survives power
loss. Without it (``"commit"``, ``"buffer"``) a power cut can lose the last
calls; most file systems (ext4's default ``auto_da_alloc``, btrfs) then still
leave the old or the new file, and a file left damaged fails its checksum and is
reported with :class:`~spoolq.CorruptError`, never read as an empty or another queue.

One process at a time: opening takes ``<path>.lock`` (an exclusive
``filelock``, which a forked child does not keep), and a second process gets
:class:`~spoolq.LockTimeout` at once.
A ``path`` that is a symbolic link stands for the file it points to: the lock
and the file written are the target's, so the link stays a link.
Handles in one process share one copy of the queue. ``read_only=True`` takes
no lock, loads the file as it is at that moment and never writes.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import pickle
import stat
import uuid
import zlib
from collections.abc import Callable, Sequence
from contextlib import suppress
from math import isnan
from typing import Any, TypeVar

from ..errors import CorruptError, EngineError, FormatError
from ._checks import as_meta_key, check_expire, checked_ids, checked_owner
from ._shared import SharedEngine, fsync_dir, lock_exclusively
from .base import (
    MAX_RAW_SIZE,
    Counts,
    Lease,
    LeasedRecord,
    StoredRecord,
    as_bytes,
    batch_given,
    checked_raw_size,
    checked_records,
    nothing_visible,
    refuse_nan,
)
from .base import as_queue_name as _name
from .base import as_text as _text
from .memory import MemoryEngine, RecordState

__all__ = ["PickleEngine"]

log = logging.getLogger("spoolq")

T = TypeVar("T")
_APPLICATION = b"spoolq"
_PROTOCOL = 5
_HEADER = b"\x80\x05"  # the PROTO opcode of protocol 5 opens every file this engine writes
_KEYS = {"meta", "next_id", "queues"}  # the body's keys; the whole file's at version 1
_TOP_KEYS = {"meta", "body", "crc32"}
# This engine's own layout version (the other engines share base.FORMAT_VERSION): 2 adds the
# checksum. A version 1 file is read as it is and rewritten as version 2 at its next change.
FORMAT_VERSION = 2
_VERSION = str(FORMAT_VERSION).encode()
_UNCHECKED_VERSION = b"1"
_TEMPORARY = "." + "[0-9a-f]" * 12 + ".tmp"  # the names _save writes to; nothing else is removed


class _RefusedGlobal(pickle.UnpicklingError):
    pass


def _str(value: str) -> str:
    """``value`` as a plain str: a pickled subclass (an enum of names) would name its class,
    which the unpickler refuses, so the file could never be read again."""
    return value if type(value) is str else str.__str__(value)


def _bytes(value: bytes) -> bytes:
    """``value`` as plain bytes (see :func:`_str`)."""
    return value if type(value) is bytes else bytes(memoryview(value))


class _DataOnlyPickler(pickle.Pickler):
    """Refuses to write anything but the plain types the unpickler reads back: the values
    are made plain on the way in, and this keeps a file from ever naming a class."""

    def reducer_override(self, obj: Any) -> Any:
        # Only called for objects of types that pickle does not write by itself.
        raise TypeError(f"a {type(obj).__name__} cannot be stored in a pickle queue file")


class _Refusing:
    """Builds only containers and scalars: every class and function lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal(f"persistent id {pid!r}")


class _DataOnlyUnpickler(_Refusing, pickle.Unpickler):
    """For the body, once its checksum holds."""


class _TopUnpickler(_Refusing, pickle._Unpickler):
    """For the top level, before a checksum is known: the C unpickler sizes its memo by the
    index an opcode names, so one damaged byte can make it allocate and clear gigabytes.
    This one (a dict memo) is slow, but at version 2 the top level is a few dozen opcodes;
    a version 1 file, until rewritten, loads 3 to 15 times slower than with the C one."""


def _record(value: object) -> RecordState | None:
    """``value`` as a record tuple when it has the right shape, else None."""
    if not isinstance(value, tuple) or len(value) != 8:
        return None
    ident, data, raw_size, attempts, enqueued_at, reason, owner, visible_at = value
    enqueued_at, visible_at = _time(enqueued_at), _time(visible_at)
    # Only values the engine takes on the way in: anything else is damage, however it came.
    if (type(ident) is int and ident > 0 and isinstance(data, bytes)
            and isinstance(raw_size, int) and 0 <= raw_size <= MAX_RAW_SIZE
            and isinstance(attempts, int) and attempts >= 0
            and enqueued_at is not None
            and (reason is None or isinstance(reason, str))
            and (owner is None or isinstance(owner, str))
            and visible_at is not None):
        # Plain values (a bool is an int to isinstance), as the engine hands them out.
        return (ident, data, int(raw_size), int(attempts), enqueued_at, reason, owner,
                visible_at)
    return None


def _time(value: object) -> float | None:
    """A time read from the file as a float; None when it is not one: not a number, NaN,
    or an int beyond every float (which no time the engine takes is)."""
    if not isinstance(value, (int, float)):
        return None
    try:
        time = float(value)
    except OverflowError:
        return None
    return None if isnan(time) else time


class _PickleStore:
    """The queue of one pickle file, in memory; see the module docstring."""

    name = "pickle"

    def __init__(self, path: str, *, read_only: bool, fsync: bool) -> None:
        self.path = path
        self.read_only = read_only
        self._fsync = fsync
        # Reached through a symbolic link, the file is the link's target: the lock must be the
        # one every other name of the file takes, and the replace must not turn the link into
        # a file of its own.
        self._file = os.path.realpath(path)
        self._directory = os.path.dirname(self._file)
        self._lock = None
        try:
            # Refused before the lock is taken, so no lock file is left beside what is refused.
            self._refuse_foreign()
            self._lock = None if read_only else lock_exclusively(self._file, self.name)
            if os.path.exists(self._file) or read_only:
                self._mem = self._read()
            else:
                self._mem = MemoryEngine.load(1, {"application": _APPLICATION,
                                                  "format_version": _VERSION}, {})
                self._save()
            if not read_only:
                self._remove_stale_temporaries()
        except BaseException as exc:
            self._unlock()
            if isinstance(exc, OSError):
                raise EngineError(f"{path}: cannot open the queue: {exc}") from exc
            raise

    # ---- the file -----------------------------------------------------------------------

    def _refuse_foreign(self) -> None:
        """FormatError when the path holds something plainly not a file of this engine."""
        if os.path.isdir(self._file):
            raise FormatError(f"{self.path} is a directory, not a spoolq queue file")
        try:
            with open(self._file, "rb") as f:
                head = f.read(len(_HEADER))
        except FileNotFoundError:
            return
        if head and not _HEADER.startswith(head):  # a shorter head is a truncated file: _read
            raise self._not_a_pickle()

    def _not_a_pickle(self) -> FormatError:
        return FormatError(f"{self.path} is not a spoolq queue file (not a pickle of protocol "
                           f"{_PROTOCOL})")

    def _read(self) -> MemoryEngine:
        try:
            with open(self._file, "rb") as f:
                blob = f.read()
        except FileNotFoundError as exc:
            raise FormatError(f"{self.path}: no such file") from exc
        except OSError as exc:
            raise EngineError(f"{self.path}: cannot read the queue file: {exc}") from exc
        if not blob:
            raise CorruptError(f"{self.path} is empty; this engine never writes an empty file "
                               "(remove it to start a new queue)")
        if _HEADER.startswith(blob):
            raise CorruptError(f"{self.path} is damaged: cut short after {len(blob)} bytes")
        if not blob.startswith(_HEADER):
            raise self._not_a_pickle()
        top = self._unpickle(blob, _TopUnpickler)
        del blob  # the body is a copy of most of it
        if self._version(top) == _UNCHECKED_VERSION:
            return MemoryEngine.load(*self._check(top))
        return MemoryEngine.load(*self._check(self._body(top)))

    def _unpickle(self, blob: bytes, unpickler: Callable[[io.BytesIO], Any]) -> object:
        stream = io.BytesIO(blob)
        try:
            obj = unpickler(stream).load()
        except _RefusedGlobal as exc:
            raise FormatError(f"{self.path} is not a spoolq queue file: it names {exc}, which "
                              "was refused unread") from exc
        except Exception as exc:
            # Unpickling damaged bytes fails with almost any exception type.
            raise CorruptError(f"{self.path} is damaged: {type(exc).__name__}: {exc}") from exc
        if stream.tell() != len(blob):
            raise CorruptError(f"{self.path} is damaged: {len(blob) - stream.tell()} bytes "
                               "follow the end of the pickle")
        return obj

    def _version(self, obj: object) -> bytes:
        """The file's format version, read before its layout is checked: another version may
        lay out the rest of the file differently."""
        meta = obj.get("meta") if isinstance(obj, dict) else None
        if not isinstance(meta, dict) or meta.get("application") != _APPLICATION:
            raise FormatError(f"{self.path} is a pickle file but not a spoolq queue file")
        version = meta.get("format_version")
        if version is None:  # every release wrote one
            raise CorruptError(f"{self.path} is damaged: its metadata holds no format version")
        if version not in (_VERSION, _UNCHECKED_VERSION):
            shown = version.decode(errors="replace") if isinstance(version, bytes) else version
            raise FormatError(f"{self.path} has format version {shown}; this spoolq reads "
                              f"version {FORMAT_VERSION} (and 1, which it rewrites as "
                              f"{FORMAT_VERSION})")
        return version  # type: ignore[no-any-return]

    def _body(self, top: Any) -> object:
        """The queue dict a version 2 file holds, once its checksum holds."""
        head = {"application": _APPLICATION, "format_version": _VERSION}
        if set(top) != _TOP_KEYS or top["meta"] != head:
            raise CorruptError(f"{self.path} is damaged: its top level is "
                               f"{sorted(map(str, top))} with metadata {top['meta']!r}")
        body, crc = top["body"], top["crc32"]
        if type(body) is not bytes or type(crc) is not int:
            raise CorruptError(f"{self.path} is damaged: its body or checksum is not one")
        if zlib.crc32(body) != crc:
            raise CorruptError(f"{self.path} is damaged: the checksum of its {len(body)}-byte "
                               f"body is {zlib.crc32(body):#010x}, the file says {crc:#010x}")
        obj = self._unpickle(body, _DataOnlyUnpickler)
        meta = obj.get("meta") if isinstance(obj, dict) else None
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in head.items()):
            raise CorruptError(f"{self.path} is damaged: its body is not of its version")
        return obj

    def _check(self, obj: Any) -> tuple[int, dict[str, bytes], dict[str, list[RecordState]]]:
        """The queue of a dict whose metadata names the application and a version read."""
        meta = obj["meta"]
        if set(obj) != _KEYS:
            raise CorruptError(f"{self.path} is damaged: its keys are {sorted(map(str, obj))}")
        next_id, queues = obj["next_id"], obj["queues"]
        damaged = CorruptError(f"{self.path} is damaged: its structure is not a spoolq queue's")
        if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in meta.items()):
            raise damaged
        if type(next_id) is not int or next_id < 1 or not isinstance(queues, dict):
            raise damaged
        checked: dict[str, list[RecordState]] = {}
        seen: set[int] = set()
        for name, records in queues.items():
            if not isinstance(name, str) or not isinstance(records, list):
                raise damaged
            rows = [_record(r) for r in records]
            good = [r for r in rows if r is not None]
            if len(good) != len(rows) or any(r[0] >= next_id for r in good):
                raise damaged
            for r in good:
                if r[0] in seen:  # one record's counts would be kept twice, and freed once
                    raise CorruptError(f"{self.path} is damaged: it holds record {r[0]} twice")
                seen.add(r[0])
            checked[name] = good
        return next_id, meta, checked

    def _save(self) -> None:
        upgrade = self._mem.get_meta("format_version") == _UNCHECKED_VERSION
        if upgrade:
            self._mem.set_meta("format_version", _VERSION)
        next_id, meta, queues = self._mem.export()
        out = io.BytesIO()
        _DataOnlyPickler(out, protocol=_PROTOCOL).dump(
            {"meta": meta, "next_id": next_id, "queues": queues})
        body = out.getvalue()
        del out
        top = {"meta": {"application": _APPLICATION, "format_version": meta["format_version"]},
               "body": body, "crc32": zlib.crc32(body)}
        tmp = f"{self._file}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            mode = stat.S_IMODE(os.stat(self._file).st_mode)
        except FileNotFoundError:
            mode = None
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            if mode is not None and hasattr(os, "fchmod"):
                # The new file takes the old one's place: it keeps the permissions the user
                # gave it (a queue of private data made 0o600 must not become readable).
                os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                # Straight into the file: the pickler writes the body as it is, not a copy.
                _DataOnlyPickler(f, protocol=_PROTOCOL).dump(top)
                if self._fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self._file)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        if self._fsync:
            fsync_dir(self._directory)
        if upgrade:
            log.info("spoolq: %s: rewrote the queue file of format version 1 as version %d, "
                     "which carries a checksum", self.path, FORMAT_VERSION)

    def _remove_stale_temporaries(self) -> None:
        # Left by a process killed while saving; safe to remove while we hold the lock.
        for leftover in glob.glob(glob.escape(self._file) + _TEMPORARY):
            with suppress(OSError):
                os.unlink(leftover)
                log.info("spoolq: removed %s, left by an interrupted save", leftover)

    def _write(self, what: str, change: Callable[[MemoryEngine], T]) -> T:
        """Apply ``change`` and save the file; on any failure go back to the file's contents."""
        try:
            result = change(self._mem)
            if result or what == "set_meta":
                self._save()
        except BaseException as exc:
            self._mem = self._read()
            if isinstance(exc, OSError):
                raise EngineError(f"{self.path}: {what} failed: {exc}") from exc
            raise
        return result

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    # ---- the engine protocol ------------------------------------------------------------

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if not batch_given(records, raw_sizes):
            return []
        # Checked before anything changes: a value the file cannot hold would make it unreadable.
        queue = _str(_name(queue))
        refuse_nan(self.path, "append", "now", now)
        data = [_bytes(as_bytes(r, "a record")) for r in records]
        sizes = [int(checked_raw_size(r)) for r in raw_sizes]
        return self._write("append", lambda m: m.append(queue, data, sizes, float(now)))

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        if lease is not None:
            lease = Lease(_str(checked_owner(lease.owner)), float(lease.until))
        if nothing_visible(self.path, now, lease):
            return []
        return self._write("take", lambda m: m.take(queue, n, now, lease))

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        queue = _str(_name(queue))
        records = [StoredRecord(int(r.id), _bytes(r.data), int(r.raw_size), int(r.attempts),
                                float(r.enqueued_at), None if r.reason is None else _str(r.reason))
                   for r in checked_records(records)]
        for rec in records:
            refuse_nan(self.path, "restore", f"the enqueue time of record {rec.id}",
                        rec.enqueued_at)

        def change(m: MemoryEngine) -> bool:
            m.restore(queue, records)
            return bool(records)

        self._write("restore", change)

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        return self._write("ack", lambda m: m.ack(queue, deliveries, owner))

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        reason = _str(_text(reason, "a reason"))
        refuse_nan(self.path, "release", "not_before", not_before)
        not_before = float(not_before)
        return self._write("release", lambda m: m.release(
            queue, deliveries, owner, not_before=not_before, max_attempts=max_attempts,
            count_attempt=count_attempt, reason=reason or "nacked"))

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        check_expire(now, owners, max_attempts)
        return self._write("expire", lambda m: m.expire(queue, now, owners=owners,
                                                        max_attempts=max_attempts))

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        return self._mem.peek(queue, n, offset)

    def peek_leased(self, queue: str, n: int, offset: int = 0) -> list[LeasedRecord]:
        return self._mem.peek_leased(queue, n, offset)

    def counts(self, queue: str) -> Counts:
        return self._mem.counts(queue)

    def owners(self, queue: str) -> dict[str, int]:
        return self._mem.owners(queue)

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        dst, chosen = _str(_name(dst)), checked_ids(ids)
        return self._write("move", lambda m: m.move(src, dst, chosen))

    def purge(self, queue: str) -> int:
        return self._write("purge", lambda m: m.purge(queue))

    def queues(self) -> list[str]:
        return self._mem.queues()

    def get_meta(self, key: str) -> bytes | None:
        return self._mem.get_meta(key)

    def set_meta(self, key: str, value: bytes) -> None:
        key = _str(as_meta_key(key))
        blob = _bytes(as_bytes(value, "a metadata value"))
        self._write("set_meta", lambda m: m.set_meta(key, blob))

    def close(self) -> None:
        self._unlock()


class PickleEngine(SharedEngine):
    """A queue file that is one pickled dict, rewritten on every change (see the module).

    ``fsync=True`` (what ``durability="fsync"`` picks) fsyncs the file and its
    directory before each changing call returns.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False,
                 read_only: bool = False) -> None:
        spath = os.fspath(path)
        super().__init__(spath, read_only=read_only,
                         opener=lambda: _PickleStore(spath, read_only=read_only, fsync=fsync),
                         flushes={"fsync": bool(fsync)})

