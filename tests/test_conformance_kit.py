"""The kit for engine authors: the conformance suite run the way docs/engines.md says, on
engines of one's own, and on deliberately broken engines, each of which it must catch;
and the errors of register_engine and of opening a registered engine."""

from __future__ import annotations

import heapq
import math
import os
import pickle
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.engines import ENGINES, Engine, Lease, MemoryEngine, StoredRecord, open_engine

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


KINDS = {"failure": "failed", "error": "error", "skipped": "skipped"}


def run_pytest(module: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                   dict[str, dict[str, str]]]:
    """Run pytest on ``module`` in a process of its own, as an engine author would; return
    the process and each test class's outcome per test (passed, failed, error, skipped)."""
    report = module.with_suffix(".xml")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(module), "-q", "-p", "no:cacheprovider",
         "-p", "no:randomly", f"--junitxml={report}", *args],
        check=False, capture_output=True, text=True, timeout=600, cwd=module.parent, env=ENV)
    outcomes: dict[str, dict[str, str]] = {}
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            kinds = [KINDS[child.tag] for child in case if child.tag in KINDS]
            cls = case.get("classname", "").rsplit(".", 1)[-1]
            outcomes.setdefault(cls, {})[case.get("name", "")] = (kinds[0] if kinds
                                                                   else "passed")
    return result, outcomes


def doc_blocks() -> list[str]:
    text = (ROOT / "docs" / "engines.md").read_text()
    section = text[text.index("## Writing your own engine"):]
    return re.findall(r"^```python\n(.*?)^```", section, re.DOTALL | re.MULTILINE)


# ---- the suite as docs/engines.md shows it ---------------------------------------------


def test_the_documented_conformance_module_runs_and_passes(tmp_path: Path) -> None:
    """The module docs/engines.md gives, copied as it is, collects the suite and passes."""
    module = tmp_path / "test_my_engine.py"
    module.write_text(doc_blocks()[1])
    result, outcomes = run_pytest(module)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = outcomes["TestMyEngine"]
    assert len(tests) > 30
    assert set(tests.values()) == {"passed"}, tests


def test_the_documented_engine_of_ones_own_passes_the_suite(tmp_path: Path) -> None:
    """The engine of docs/engines.md (a memory engine that logs appends), registered as
    shown there, passes the suite with ``persistent = False``; through a wrapper without
    ``peek_leased`` the optional tests skip, saying so."""
    (tmp_path / "audited.py").write_text(doc_blocks()[0])
    module = tmp_path / "test_audited.py"
    module.write_text(
        "import pytest\n"
        "from spoolq.testing import EngineConformance\n"
        "from audited import AuditedEngine\n\n\n"
        "class Plain:\n"
        "    name = 'plain'\n\n"
        "    def __init__(self, inner):\n"
        "        self._inner = inner\n\n"
        "    def __getattr__(self, attr):\n"
        "        if attr == 'peek_leased':\n"
        "            raise AttributeError(attr)\n"
        "        return getattr(self._inner, attr)\n\n\n"
        "class TestAudited(EngineConformance):\n"
        "    persistent = False\n\n"
        "    @pytest.fixture\n"
        "    def open_engine(self):\n"
        "        return AuditedEngine\n\n\n"
        "class TestPlain(EngineConformance):\n"
        "    persistent = False\n\n"
        "    @pytest.fixture\n"
        "    def open_engine(self):\n"
        "        return lambda: Plain(AuditedEngine())\n")
    result, outcomes = run_pytest(module, "-rs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert skipped(outcomes["TestAudited"]) == []
    plain = skipped(outcomes["TestPlain"])
    assert plain and all("peek_leased" in name for name in plain), plain
    assert "this engine cannot list leased records" in result.stdout
    for name in REOPEN_TESTS:  # on an engine with persistent = False, within one store
        assert outcomes["TestAudited"][name] == "passed"


REOPEN_TESTS = ["test_dead_letters_and_attempts_survive_reopen",
                "test_ids_are_not_reused_after_reopen"]
"""Tests of what a store keeps across a reopen: an engine with ``persistent = False`` is
checked for it within one store."""


def skipped(outcomes: dict[str, str]) -> list[str]:
    """The tests skipped; AssertionError when one failed."""
    failed = {name for name, outcome in outcomes.items() if outcome not in ("passed",
                                                                          "skipped")}
    assert failed == set(), outcomes
    return sorted(name for name, outcome in outcomes.items() if outcome == "skipped")


# ---- engines of one's own, sound and broken --------------------------------------------


class Stored:
    """A persistent engine of one's own: the memory engine, pickled to a file when the
    last engine open on it closes, and loaded from it by the next open. Engines open at
    the same time share one store, as they would share a file."""

    name = "stored"
    _open: dict[str, list[Any]] = {}  # noqa: RUF012 - the stores open in this process

    def __init__(self, path: Path) -> None:
        self._path = str(path)
        held = self._open.get(self._path)
        if held is None:
            inner = MemoryEngine()
            if os.path.exists(self._path):
                with open(self._path, "rb") as f:
                    inner = MemoryEngine.load(*pickle.load(f))
            held = self._open[self._path] = [inner, 0]
        held[1] += 1
        self._inner: MemoryEngine = held[0]
        self._closed = False

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def save(self, state: Any) -> Any:
        return state

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        held = self._open[self._path]
        held[1] -= 1
        if held[1] == 0:
            del self._open[self._path]
            with open(self._path, "wb") as f:
                pickle.dump(self.save(self._inner.export()), f)


class StoredWithoutReasons(Stored):
    """Broken: the dead letters lose their reason in the file."""

    def save(self, state: Any) -> Any:
        next_id, meta, queues = state
        return next_id, meta, {name: [(*r[:5], None, *r[6:]) for r in records]
                               for name, records in queues.items()}


class StoredWithoutAttempts(Stored):
    """Broken: records lose their attempts in the file."""

    def save(self, state: Any) -> Any:
        next_id, meta, queues = state
        return next_id, meta, {name: [(*r[:3], 0, *r[4:]) for r in records]
                               for name, records in queues.items()}


class StoredCountingOnFromHighest(Stored):
    """Broken: after a reopen, ids count on from the highest id the file still holds."""

    def save(self, state: Any) -> Any:
        _, meta, queues = state
        held = [r[0] for records in queues.values() for r in records]
        return max(held, default=0) + 1, meta, queues


class ReleaseAllOrNothing(MemoryEngine):
    """Broken: a release of a batch of which one lease is no longer held releases none."""

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        q = self._queues.get(queue)
        if q is None or any(self._held(q, i, a, owner) is None for i, a in deliveries):
            return []
        return super().release(queue, deliveries, owner, not_before=not_before,
                               max_attempts=max_attempts, count_attempt=count_attempt,
                               reason=reason)


class NonAtomicAppend(MemoryEngine):
    """Broken: stores a batch record by record, and checks it only at the end."""

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        ids = [super(NonAtomicAppend, self).append(queue, [r], [s], now)[0]
               for r, s in zip(records, raw_sizes)]  # noqa: B905 - the bug
        if len(records) != len(raw_sizes):
            raise ValueError("records and raw_sizes differ in length")
        return ids


class NewestFirst(MemoryEngine):
    """Broken: takes the oldest records but hands them out newest first."""

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        return super().take(queue, n, now, lease)[::-1]


class LeasesNewestFirst(MemoryEngine):
    """Broken: a take that leases takes the newest ready records first."""

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        q = self._queues.get(queue)
        if lease is None or q is None:
            return super().take(queue, n, now, lease)
        q.fresh.reverse()
        try:
            return super().take(queue, n, now, lease)
        finally:
            q.fresh.reverse()


class ReleaseToTail(MemoryEngine):
    """Broken: a released record goes to the tail under a new id."""

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        done = super().release(queue, deliveries, owner, not_before=not_before,
                               max_attempts=max_attempts, count_attempt=count_attempt,
                               reason=reason)
        return self._to_tail(queue, done)

    def _to_tail(self, queue: str, ids: list[int]) -> list[int]:
        q = self._queues.get(queue)
        for ident in ids:
            if q is None or ident not in q.entries:
                continue
            waiting = [w for w in q.later if w[1] == ident]  # released with a delay
            if ident in q.back or waiting:
                entry = self._drop(q, ident)
                if waiting:
                    q.later.remove(waiting[0])
                    heapq.heapify(q.later)
                else:
                    q.back.remove(ident)
                    heapq.heapify(q.back)
                self._add(q, entry.data, entry.raw_size, entry.enqueued_at, entry.attempts)
        return ids


class ExpireToTail(ReleaseToTail):
    """Broken: a lease that ran out (or whose owner died) sends its record to the tail."""

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        return MemoryEngine.release(self, queue, deliveries, owner, not_before=not_before,
                                    max_attempts=max_attempts, count_attempt=count_attempt,
                                    reason=reason)

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        q = self._queues.get(queue)
        held = set() if q is None else {i for i, e in q.entries.items() if e.owner is not None}
        n = super().expire(queue, now, owners=owners, max_attempts=max_attempts)
        self._to_tail(queue, sorted(held))
        return n


class AckOfAnyOwner(MemoryEngine):
    """Broken: an ack settles a lease whoever holds it."""

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        done = []
        for d in deliveries:
            done += super().ack(queue, [d], self._holder(queue, d))
        return done

    def _holder(self, queue: str, delivery: tuple[int, int]) -> str:
        q = self._queues.get(queue)
        entry = None if q is None else q.entries.get(delivery[0])
        return entry.owner if entry is not None and entry.owner is not None else ""


class ReleaseOfAnyOwner(AckOfAnyOwner):
    """Broken: a release (a nack) gives back a lease whoever holds it."""

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        return MemoryEngine.ack(self, queue, deliveries, owner)

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        done = []
        for d in deliveries:
            done += super().release(queue, [d], self._holder(queue, d), not_before=not_before,
                                    max_attempts=max_attempts, count_attempt=count_attempt,
                                    reason=reason)
        return done


class AckOfReadyRecords(MemoryEngine):
    """Broken: an ack removes a record of that id whether it is leased or not."""

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        done = super().ack(queue, deliveries, owner)
        q = self._queues.get(queue)
        for ident, _ in deliveries:
            if q is not None and ident not in done and any(r.id == ident for r in q.fresh):
                rec = next(r for r in q.fresh if r.id == ident)
                q.fresh.remove(rec)
                q.stored_bytes -= len(rec.data)
                q.raw_bytes -= rec.raw_size
                done.append(ident)
        return done


class AckInAnyQueue(MemoryEngine):
    """Broken: an ack looks for the lease in every queue, not only the one named."""

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        done = []
        for name in list(self._queues):
            done += super().ack(name, deliveries, owner)
        return done


class RestoreOfAnyId(MemoryEngine):
    """Broken: restore takes records under ids the queue never gave out."""

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        top = max((r.id for r in records), default=0)
        self._next_id = max(self._next_id, top + 1)
        super().restore(queue, records)


class RestoreForgets(MemoryEngine):
    """Broken: a restored record loses its attempts and its reason."""

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        super().restore(queue, [r._replace(attempts=0, reason=None) for r in records])


class MoveKeepsDeliveries(MemoryEngine):
    """Broken: a moved record keeps its attempts and reason (a requeued dead letter is
    buried again at its next failure)."""

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        chosen = [r for r in self.peek(src, 1 << 30) if ids is None or r.id in ids]
        n = super().move(src, dst, ids)
        q = self._queues.get(dst)
        if q is not None and chosen:
            moved = list(q.fresh)[-len(chosen):]
            for rec, old in zip(moved, chosen, strict=True):
                q.fresh.remove(rec)
                q.fresh.append(rec._replace(attempts=old.attempts, reason=old.reason))
        return n


class ReadyCountsLeased(MemoryEngine):
    """Broken: counts the leased records among the ready."""

    def counts(self, queue: str) -> spoolq.engines.Counts:
        c = super().counts(queue)
        return c._replace(ready=c.ready + c.leased)


class AckKeepsBytes(MemoryEngine):
    """Broken: an ack leaves the record's bytes in the counts."""

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        q = self._queues.get(queue)
        before = None if q is None else (q.stored_bytes, q.raw_bytes)
        done = super().ack(queue, deliveries, owner)
        if q is not None and before is not None:
            q.stored_bytes, q.raw_bytes = before
        return done


class ExpireKeepsLeasedCount(MemoryEngine):
    """Broken: an expiry leaves the records it gives back counted as leased."""

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        n = super().expire(queue, now, owners=owners, max_attempts=max_attempts)
        if n:
            self._queues[queue].leased += n
        return n


class PurgeKeepsLeased(MemoryEngine):
    """Broken: a purge removes the ready records only; the leased stay."""

    def purge(self, queue: str) -> int:
        q = self._queues.get(queue)
        if q is None:
            return 0
        n = len(q.fresh) + len(q.back)
        for ident in list(q.back):
            self._drop(q, ident)
        q.back.clear()
        q.stored_bytes -= sum(len(r.data) for r in q.fresh)
        q.raw_bytes -= sum(r.raw_size for r in q.fresh)
        q.fresh.clear()
        return n


class DeadLettersWithoutBytes(MemoryEngine):
    """Broken: the dead-letter queue does not count the bytes of its records."""

    def counts(self, queue: str) -> spoolq.engines.Counts:
        c = super().counts(queue)
        return c._replace(stored_bytes=0, raw_bytes=0) if queue.endswith(".dead") else c


class MoveKeepsSourceBytes(MemoryEngine):
    """Broken: a move leaves the bytes it moved counted in the source."""

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        q = self._queues.get(src)
        before = None if q is None else (q.stored_bytes, q.raw_bytes)
        n = super().move(src, dst, ids)
        if q is not None and before is not None:
            q.stored_bytes, q.raw_bytes = before
        return n


class MoveOfLeased(MemoryEngine):
    """Broken: a move of every record takes the leased ones along."""

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        q = self._queues.get(src)
        if q is not None and ids is None:
            for ident, entry in list(q.entries.items()):
                if entry.owner is not None:
                    entry.owner = None
                    entry.visible_at = 0.0
                    q.leased -= 1
                    heapq.heappush(q.back, ident)
        return super().move(src, dst, ids)


class PeekRemoves(MemoryEngine):
    """Broken: a peek takes what it shows."""

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        got = super().peek(queue, n, offset)
        if offset == 0 and got:
            self.take(queue, len(got), float("inf"), None)
        return got


class DeadWithoutReason(MemoryEngine):
    """Broken: dead letters lose the reason they were buried for."""

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        return super().release(queue, deliveries, owner, not_before=not_before,
                               max_attempts=max_attempts, count_attempt=count_attempt,
                               reason="nacked")


class AttemptsStayAtOne(MemoryEngine):
    """Broken: every delivery counts as the first."""

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        got = super().take(queue, n, now, lease)
        if lease is None or not got:
            return got
        q = self._queues[queue]
        for rec in got:
            q.entries[rec.id].attempts = 1
        return [r._replace(attempts=1) for r in got]


class TakesAtNaN(MemoryEngine):
    """Broken: a take at a NaN time takes the ready records, as at the end of time."""

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        return super().take(queue, n, math.inf if math.isnan(now) else now, lease)


class TakesNothingAtInfinity(MemoryEngine):
    """Broken: a take at +inf takes nothing, as at a time the engine cannot hold."""

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        return [] if now == math.inf else super().take(queue, n, now, lease)


class LeaseUntilInfinityRunsOut(MemoryEngine):
    """Broken: a lease until +inf lasts a day, as if held to the longest lease it stores."""

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        if lease is not None and lease.until == math.inf:
            lease = lease._replace(until=min(now, 1e15) + 86400)
        return super().take(queue, n, now, lease)


class TakeOfNoneTakesAll(MemoryEngine):
    """Broken: a take of 0 records takes them all (a LIMIT of 0 read as no limit)."""

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        return super().take(queue, n or 1 << 62, now, lease)


class Plain:
    """An engine without ``peek_leased``: the optional tests skip, the others must still
    catch what the engine inside breaks."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        if attr == "peek_leased":
            raise AttributeError(attr)
        return getattr(self._inner, attr)


BROKEN: dict[str, tuple[Callable[[Path], Any], bool, str]] = {
    "NonAtomicAppend": (lambda _: NonAtomicAppend(), False,
                        "test_append_of_nothing_and_mismatched_sizes"),
    "NewestFirst": (lambda _: NewestFirst(), False, "test_append_then_take_is_fifo"),
    "LeasesNewestFirst": (lambda _: LeasesNewestFirst(), False,
                          "test_take_of_more_than_any_queue_holds_takes_what_is_ready"),
    "ReleaseToTail": (lambda _: ReleaseToTail(), False, "test_release_keeps_fifo_position"),
    "ExpireToTail": (lambda _: ExpireToTail(), False,
                     "test_expired_leases_keep_their_fifo_position"),
    "AckOfAnyOwner": (lambda _: AckOfAnyOwner(), False,
                      "test_ack_refuses_other_owner_and_stale_attempts"),
    "ReleaseOfAnyOwner": (lambda _: ReleaseOfAnyOwner(), False,
                          "test_release_refuses_other_owner_and_stale_attempts"),
    "AckOfReadyRecords": (lambda _: AckOfReadyRecords(), False,
                          "test_ack_and_release_leave_records_not_leased_alone"),
    "AckInAnyQueue": (lambda _: AckInAnyQueue(), False,
                      "test_ack_and_release_leave_records_not_leased_alone"),
    "RestoreOfAnyId": (lambda _: RestoreOfAnyId(), False,
                       "test_restore_of_an_id_never_given_out_is_refused"),
    "RestoreForgets": (lambda _: RestoreForgets(), False, "test_restore_keeps_every_field"),
    "MoveKeepsDeliveries": (lambda _: MoveKeepsDeliveries(), False,
                            "test_moved_records_are_new_records"),
    "ReadyCountsLeased": (lambda _: ReadyCountsLeased(), False,
                          "test_counts_track_records_and_bytes"),
    "AckKeepsBytes": (lambda _: AckKeepsBytes(), False, "test_counts_follow_every_change"),
    "ExpireKeepsLeasedCount": (lambda _: ExpireKeepsLeasedCount(), False,
                               "test_counts_follow_every_change"),
    "PurgeKeepsLeased": (lambda _: PurgeKeepsLeased(), False,
                         "test_purge_removes_leased_records_too"),
    "DeadLettersWithoutBytes": (lambda _: DeadLettersWithoutBytes(), False,
                                "test_counts_follow_every_change"),
    "MoveKeepsSourceBytes": (lambda _: MoveKeepsSourceBytes(), False,
                             "test_counts_follow_every_change"),
    "MoveOfLeased": (lambda _: MoveOfLeased(), False, "test_move_leaves_leased_records"),
    "PeekRemoves": (lambda _: PeekRemoves(), False, "test_peek_does_not_remove"),
    "DeadWithoutReason": (lambda _: DeadWithoutReason(), False,
                          "test_max_attempts_moves_to_dead_letters_with_reason"),
    "AttemptsStayAtOne": (lambda _: AttemptsStayAtOne(), False,
                          "test_attempts_grow_with_each_delivery"),
    "TakeOfNoneTakesAll": (lambda _: TakeOfNoneTakesAll(), False,
                           "test_take_of_nothing_takes_nothing"),
    "TakesAtNaN": (lambda _: TakesAtNaN(), False, "test_a_take_at_a_nan_time_takes_nothing"),
    "TakesNothingAtInfinity": (lambda _: TakesNothingAtInfinity(), False,
                               "test_a_take_at_infinity_takes_every_ready_record"),
    "LeaseUntilInfinityRunsOut": (lambda _: LeaseUntilInfinityRunsOut(), False,
                                  "test_a_lease_until_infinity_never_runs_out"),
    "StoredCountingOnFromHighest": (lambda d: StoredCountingOnFromHighest(d / "q.stored"),
                                    True, "test_ids_are_not_reused_after_reopen"),
    "ReleaseAllOrNothing": (lambda _: ReleaseAllOrNothing(), False,
                            "test_release_of_a_mixed_batch_releases_what_is_held"),
    "StoredWithoutReasons": (lambda d: StoredWithoutReasons(d / "q.stored"), True,
                             "test_dead_letters_and_attempts_survive_reopen"),
    "StoredWithoutAttempts": (lambda d: StoredWithoutAttempts(d / "q.stored"), True,
                              "test_dead_letters_and_attempts_survive_reopen"),
}
SOUND: dict[str, tuple[Callable[[Path], Any], bool]] = {
    "Memory": (lambda _: MemoryEngine(), False),
    "Stored": (lambda d: Stored(d / "q.stored"), True),
}
UNDER_TEST: dict[str, tuple[Callable[[Path], Any], bool]] = {
    **SOUND,
    **{name: (make, persistent) for name, (make, persistent, _) in BROKEN.items()},
}
UNDER_TEST.update({f"{name}Plain": (lambda d, make=make: Plain(make(d)), persistent)
                   for name, (make, persistent) in list(UNDER_TEST.items())})


def conformance_class(name: str) -> dict[str, Any]:
    """The body of a subclass of EngineConformance for the engine ``name``."""
    make, persistent = UNDER_TEST[name]

    @pytest.fixture
    def open_engine(self: Any, tmp_path: Path) -> Callable[[], Any]:
        return lambda: make(tmp_path)

    return {"persistent": persistent, "open_engine": open_engine}


SUITE = """
from spoolq.testing import EngineConformance
from tests.test_conformance_kit import UNDER_TEST, conformance_class

for name in UNDER_TEST:
    globals()["Test" + name] = type("Test" + name, (EngineConformance,), conformance_class(name))
"""


@pytest.fixture(scope="module")
def suite_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    module = tmp_path_factory.mktemp("kit") / "test_engines_under_test.py"
    module.write_text(SUITE)
    _, outcomes = run_pytest(module)
    assert outcomes, "the suite did not run"
    return outcomes


@pytest.mark.parametrize("name", [n + p for n in SOUND for p in ("", "Plain")])
def test_a_sound_engine_of_ones_own_passes(name: str,
                                           suite_outcomes: dict[str, dict[str, str]]) -> None:
    names = skipped(suite_outcomes[f"Test{name}"])
    assert any("peek_leased" in n for n in names) == name.endswith("Plain")
    assert not set(REOPEN_TESTS) & set(names)


@pytest.mark.parametrize("plain", ["", "Plain"], ids=["with-peek_leased", "without"])
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_the_suite_catches_a_broken_engine(name: str, plain: str,
                                           suite_outcomes: dict[str, dict[str, str]]) -> None:
    """Each broken engine fails the suite, with or without the optional ``peek_leased``,
    and fails the test that states the rule it breaks."""
    outcomes = suite_outcomes[f"Test{name}{plain}"]
    caught_by = BROKEN[name][2]
    assert outcomes.get(caught_by) == "failed", {t: o for t, o in outcomes.items()
                                                 if o != "passed"}


# ---- register_engine and opening an engine by name -------------------------------------


def open_memory(path: str, *, durability: str, read_only: bool = False,
                **options: Any) -> Engine:
    return MemoryEngine()


@pytest.fixture
def registry() -> Any:
    """Leaves the registry of engines as it found it."""
    before = dict(ENGINES)
    yield ENGINES
    ENGINES.clear()
    ENGINES.update(before)


@pytest.mark.parametrize("name", [5, None, b"mine", ""])
def test_register_engine_refuses_a_name_that_is_not_a_nonempty_string(
        registry: Any, name: Any) -> None:
    with pytest.raises(spoolq.ConfigurationError, match="engine name must be a non-empty"):
        spoolq.register_engine(name, open_memory)
    assert dict(registry) == dict(ENGINES) and name not in registry


@pytest.mark.parametrize("factory", [5, "memory", MemoryEngine()])
def test_register_engine_refuses_a_factory_that_is_not_callable(registry: Any,
                                                               factory: Any) -> None:
    with pytest.raises(spoolq.ConfigurationError,
                       match=r"the factory of engine 'mine' must be callable"):
        spoolq.register_engine("mine", factory)
    assert "mine" not in registry


def test_register_engine_refuses_to_replace_an_engine(registry: Any, tmp_path: Path) -> None:
    """A name that names an engine already (built in, or registered with another factory)
    is refused, saying how to replace it on purpose; registering the same factory again,
    or the same function defined again (a module or a notebook cell run again), is
    harmless."""
    sqlite = registry["sqlite"]
    with pytest.raises(spoolq.ConfigurationError,
                       match=r"an engine named 'sqlite' is registered already.*replace=True"):
        spoolq.register_engine("sqlite", open_memory)
    assert registry["sqlite"] is sqlite
    spoolq.register_engine("mine", open_memory)
    spoolq.register_engine("mine", open_memory)

    def other(path: str, **options: Any) -> Engine:
        return MemoryEngine()

    with pytest.raises(spoolq.ConfigurationError, match="'mine' is registered already"):
        spoolq.register_engine("mine", other)
    assert registry["mine"] is open_memory
    namespace: dict[str, Any] = {}
    for _ in range(2):  # the same code run twice defines two equal functions
        exec("from spoolq.engines import MemoryEngine\n"
             "def open_again(path, **options):\n    return MemoryEngine()\n", namespace)
        spoolq.register_engine("again", namespace["open_again"])
    assert registry["again"] is namespace["open_again"]
    spoolq.register_engine("mine", other, replace=True)
    assert registry["mine"] is other
    path = str(tmp_path / "q.sqlite")
    spoolq.register_engine("sqlite", open_memory, replace=True)
    with spoolq.SyncQueue.create(path, engine="sqlite") as q:
        q.put(1)
    assert not os.path.exists(path)


def test_a_factory_that_does_not_return_an_engine(registry: Any) -> None:
    """A factory that returns something that is not an engine fails the open with an
    error naming the engine and what is missing, not an AttributeError from inside."""

    class Half:
        name = "half"

        def append(self, *args: Any) -> list[int]:
            return []

        def close(self) -> None:
            self.closed = True

    half = Half()
    spoolq.register_engine("none", lambda path, **options: None)
    spoolq.register_engine("half", lambda path, **options: half)
    with pytest.raises(spoolq.ConfigurationError,
                       match=r"the factory of engine 'none' returned None, not an engine"):
        spoolq.SyncQueue.create("jobs", engine="none")
    with pytest.raises(spoolq.ConfigurationError,
                       match=r"the factory of engine 'half' returned a Half, which lacks "
                             r"take\(\), restore\(\), ack\(\)"):
        open_engine("jobs", "half")
    assert half.closed


def test_a_factory_that_does_not_take_the_documented_arguments(registry: Any) -> None:
    """A factory is called as ``factory(path, durability=..., read_only=...,
    **engine_options)``: one that cannot be is refused when registered, saying so."""

    class Bare(MemoryEngine):
        def __init__(self, path: str) -> None:
            super().__init__()

    with pytest.raises(spoolq.ConfigurationError,
                       match=r"the factory of engine 'bare' cannot be called as "
                             r"factory\(path, durability=\.\.\., read_only=\.\.\."):
        spoolq.register_engine("bare", Bare)
    assert "bare" not in registry

    class Taking(MemoryEngine):
        def __init__(self, path: str, *, durability: str, read_only: bool = False) -> None:
            super().__init__()

    spoolq.register_engine("taking", Taking)
    spoolq.register_engine("any", lambda *args, **kwargs: MemoryEngine())
    for name in ("taking", "any"):
        with spoolq.SyncQueue.create("jobs", engine=name) as q:
            q.put(1)
            assert q.get() == 1


def test_a_registered_engine_opens_by_name_with_its_options(registry: Any) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def factory(path: str, **kwargs: Any) -> Engine:
        seen.append((path, kwargs))
        return MemoryEngine()

    spoolq.register_engine("seen", factory)
    with spoolq.SyncQueue.create("jobs", engine="seen", engine_options={"level": 3}) as q:
        q.put("x")
    assert seen == [("jobs", {"durability": "commit", "read_only": False, "level": 3})]
    with pytest.raises(spoolq.ConfigurationError, match=r"no engine named 'unseen'.*seen"):
        spoolq.SyncQueue.create("jobs", engine="unseen")


def test_an_option_a_registered_engine_does_not_take(registry: Any) -> None:
    """An engine option the factory has no parameter for is a ConfigurationError naming
    it, as with the built-in engines, not a TypeError from the call."""

    def strict(path: str, *, durability: str, read_only: bool = False,
               level: int = 1) -> Engine:
        return MemoryEngine()

    spoolq.register_engine("strict", strict)
    with pytest.raises(spoolq.ConfigurationError, match="the strict engine takes no option "
                                                        "'levl'"):
        spoolq.SyncQueue.create("jobs", engine="strict", engine_options={"levl": 2})
    with spoolq.SyncQueue.create("jobs", engine="strict", engine_options={"level": 2}) as q:
        q.put(1)



def test_an_engine_instance_that_lacks_methods_is_named_with_them() -> None:
    """An object passed as ``engine=`` that lacks part of an engine is refused naming
    what it lacks; one that hands every method on through ``__getattr__`` (a wrapper, as
    ``Plain`` above) is an engine, on every Python version."""

    class Half:
        name = "half"

        def append(self, *args: Any) -> list[int]:
            return []

    with pytest.raises(spoolq.ConfigurationError,
                       match=r"not Half, which lacks take\(\), restore\(\), .*close\(\)$"):
        spoolq.SyncQueue.create("jobs", engine=Half())  # type: ignore[arg-type]
    with pytest.raises(spoolq.ConfigurationError, match=r"spoolq.Engine, not int$"):
        open_engine("jobs", 5)  # type: ignore[arg-type]
    inner = MemoryEngine()
    with spoolq.SyncQueue.create("jobs", engine=Plain(inner)) as q:  # type: ignore[arg-type]
        q.put(1)
    assert inner.counts("default").ready == 1


def test_an_empty_engine_name_is_no_engine(tmp_path: Path) -> None:
    """``engine=""`` names no engine: it is refused like any unknown name, not taken for
    None (pick by path)."""
    path = tmp_path / "jobs.sqlite"
    with pytest.raises(spoolq.ConfigurationError, match="no engine named '' is available"):
        spoolq.SyncQueue.create(str(path), engine="")
    assert not path.exists()
