"""How the core turns taken records back into items: one by one or a batch at once,
with dictionaries trained by other handles, and records that cannot be decoded moved to
the dead letters instead of being handed out or lost.

:class:`Decoding` is a part of :class:`spoolq.core.QueueCore`, kept in its own module;
it works on the core's state under the core's lock, as the rest of the core does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ._holdings import UNWRITTEN
from .codec import Codec
from .engines import Counts, Engine, Lease, StoredRecord
from .errors import ConfigurationError, CorruptError, SerializationError
from .message import Taken
from .zdict import MissingDictionary, load_dictionaries

__all__ = ["NO_ITEM", "Decoding", "DictionaryElsewhere"]

log = logging.getLogger("spoolq")

# How long a record being set aside stays leased: should this process die meanwhile,
# its lease runs out and the record is delivered again.
_HOLD = 60.0

NO_ITEM: Any = object()
"""What :meth:`Decoding.decode_item` returns for a record set aside: no item."""


class DictionaryElsewhere(Exception):
    """Raised by :meth:`Decoding._decode_taken` with ``later``, having decoded and set
    aside nothing, when a record needs a zstd dictionary this handle has not loaded:
    reading the file's dictionaries is for the thread of ``later`` too."""


class Decoding:
    """Items from taken records; undecodable records go to the dead letters."""

    # Set up by QueueCore.__init__.
    engine: Engine
    codec: Codec
    name: str
    dead_name: str
    owner: str
    lock: threading.RLock
    counters: dict[str, int]
    # Defined by QueueCore and its other parts.
    _refresh_locked: Callable[..., Counts]
    _finished: Callable[[int], None]

    def _decode_one(self, rec: StoredRecord) -> Any:
        try:
            return self.codec.decode(rec.data, rec.id, raw_size=rec.raw_size)
        except MissingDictionary:
            return self._decode_with_new_dictionaries(rec)

    def _decode_with_new_dictionaries(self, rec: StoredRecord) -> Any:
        """Decode a record whose zstd dictionary another handle trained after this one
        opened the file: load the file's dictionaries, then decode."""
        with self.lock:
            load_dictionaries(self.engine, self.name, self.codec)
        return self.codec.decode(rec.data, rec.id, raw_size=rec.raw_size)

    def _decode_taken(self, recs: list[StoredRecord], leased: bool,
                      later: Callable[..., None] | None = None) -> list[Taken]:
        """Each record is decompressed once: a damaged one (or one too large for its raw
        size) is set aside with the error its first decoding raised. Only a record that
        needs a zstd dictionary this handle lacks is decoded again, once they are loaded
        (that error comes before anything is decompressed). With ``later`` (a worker
        thread's ``post``) the records are set aside through it, not on this thread, and
        the dictionaries are not read here: :class:`DictionaryElsewhere` instead."""
        items: list[Any]
        failures: dict[int, Exception]
        if len(recs) == 1:  # decode() costs less than the batch's set-up
            rec = recs[0]
            try:
                return [(rec, self.codec.decode(rec.data, rec.id, raw_size=rec.raw_size))]
            except (CorruptError, SerializationError, ConfigurationError) as exc:
                items, failures = [], {0: exc}
        else:
            items, failures = self.codec.decode_each(
                [rec.data for rec in recs], [rec.id for rec in recs],
                [rec.raw_size for rec in recs])
        if not failures:
            return list(zip(recs, items, strict=True))
        return self._set_aside_failed(recs, items, failures, leased, later)

    def decode_item(self, rec: StoredRecord) -> Any:
        """:meth:`_decode_taken` of one record a take removed, its item alone: NO_ITEM when
        the record went to the dead letters instead (a get's path, without the lists)."""
        try:
            return self.codec.decode(rec.data, rec.id, raw_size=rec.raw_size)
        except (CorruptError, SerializationError, ConfigurationError) as exc:
            taken = self._set_aside_failed([rec], [], {0: exc}, False, None)
        return taken[0][1] if taken else NO_ITEM

    def _set_aside_failed(self, recs: list[StoredRecord], items: list[Any],
                          failures: dict[int, Exception], leased: bool,
                          later: Callable[..., None] | None) -> list[Taken]:
        """The part of :meth:`_decode_taken` for a batch with ``failures`` (by index in
        ``recs``; ``items`` are the others' items, in order)."""
        if later is not None and any(isinstance(error, MissingDictionary)
                                     for error in failures.values()):
            raise DictionaryElsewhere(f"{len(recs)} records to decode elsewhere")
        taken: list[Taken] = []
        decoded = iter(items)
        reloaded = False
        failed: Exception | None = None
        for at, rec in enumerate(recs):
            try:
                if at not in failures:
                    taken.append((rec, next(decoded)))
                    continue
                error = failures[at]
                if not isinstance(error, MissingDictionary):
                    raise error
                if not reloaded:  # once loaded, a record still lacking its dictionary fails
                    reloaded = True
                    self._reload_dictionaries(error)
                taken.append((rec, self.codec.decode(rec.data, rec.id, raw_size=rec.raw_size)))
            except (CorruptError, SerializationError, ConfigurationError) as exc:
                # ConfigurationError: the record's compressor needs a package missing here.
                if later is not None:
                    later(self._bury, rec, leased, exc)
                    continue
                try:
                    self._bury(rec, leased, exc)
                except Exception as error:  # logged by _bury
                    failed = failed or error
        if failed is not None and not taken:
            raise failed
        # The items decoded left the file with the take: they reach the caller, whatever
        # became of the records that could not be set aside.
        return taken

    def _reload_dictionaries(self, missing: MissingDictionary) -> None:
        """Load the file's zstd dictionaries for a record that needs one this handle does
        not have. When they cannot be read, MissingDictionary naming why: the records this
        call took are set aside with it instead of being lost with an engine error."""
        try:
            with self.lock:
                load_dictionaries(self.engine, self.name, self.codec)
        except Exception as exc:
            raise MissingDictionary(f"{missing}, and the file's dictionaries could not be "
                                    f"read: {exc}") from exc

    def _bury(self, rec: StoredRecord, leased: bool, error: Exception) -> None:
        reason = f"cannot be decoded: {error}"
        with self.lock:
            if not leased:
                self.counters["gets"] -= 1  # never handed out, whatever becomes of it
            try:
                moved = self._release_dead(rec, reason) if leased \
                    else self._bury_removed(rec, reason)
            except Exception as exc:
                log.error("spoolq: queue %r: record %d %s; moving it to %r failed: %s%s",
                          self.name, rec.id, reason, self.dead_name, exc,
                          "; it comes back when its lease runs out" if leased else "")
                raise
            self._refresh_locked()
            if not moved:  # in the queue again, or another take has it: not finished here
                log.error("spoolq: queue %r: record %d %s; it is in the queue again, for "
                          "the take that meets it next to set aside", self.name, rec.id,
                          reason)
                return
            log.error("spoolq: queue %r: record %d %s; moved to %r", self.name, rec.id,
                      reason, self.dead_name)
            # under the lock: a put after that count read would be counted out instead
            self._finished(1)  # it never reaches a consumer, so no ack or task_done comes

    def _release_dead(self, rec: StoredRecord, reason: str) -> bool:
        """Move a record this handle leased to the dead letters; False when its lease is
        no longer held (it ran out, and the record went back to the queue)."""
        return bool(self.engine.release(self.name, [(rec.id, rec.attempts)], self.owner,
                                        not_before=0.0, max_attempts=1, reason=reason))

    def _bury_removed(self, rec: StoredRecord, reason: str) -> bool:
        """Set aside a record that a take removed, with its reason: an append takes no
        reason, so the record goes back to the head of its queue and is leased again to
        be released into the dead letters. A consumer of another handle that takes it in
        between sets it aside in turn, or decodes it when it has what this one lacks.
        A buffered put that was never written has no place to go back to: it is appended
        to the dead letters, without the reason. False when the record is not among the
        dead letters: an older record came back ahead of it meanwhile, or another
        consumer took it."""
        if rec.id == UNWRITTEN:
            self.engine.append(self.dead_name, [rec.data], [rec.raw_size], time.time())
            return True
        self.engine.restore(self.name, [rec._replace(attempts=max(rec.attempts - 1, 0))])
        now = time.time()
        again = self.engine.take(self.name, 1, now, Lease(self.owner, now + _HOLD))
        for other in again:
            if other.id == rec.id:
                return self._release_dead(other, reason)
            self.engine.release(self.name, [(other.id, other.attempts)], self.owner,
                                not_before=0.0, max_attempts=None, count_attempt=False)
        return False
