"""The engine conformance suite, for spoolq's engines and for yours.

Subclass :class:`EngineConformance` in a pytest module and provide an
``open_engine`` fixture returning a callable that opens the engine under test
(each call opens the same storage again, so reopening can be checked)::

    import pytest
    from spoolq.testing import EngineConformance

    class TestMyEngine(EngineConformance):
        persistent = True          # records survive close() and reopen

        @pytest.fixture
        def open_engine(self, tmp_path):
            return lambda: MyEngine(tmp_path / "q.my")

Every test here states something every engine must do; the tests of optional
methods (``peek_leased``) skip, saying so, on an engine without them. It needs
pytest.
"""

from __future__ import annotations

from typing import Any

import pytest

from ._conformance import Opener, PeekLeasedConformance, recs
from ._conformance_leases import LeaseConformance
from .engines.base import Engine, Lease, SupportsPeekLeased, dead_queue_name

__all__ = ["EngineConformance"]

class EngineConformance(LeaseConformance, PeekLeasedConformance):
    """What every engine must do. Set ``persistent = False`` for in-memory engines."""

    def test_append_then_take_is_fifo(self, engine: Engine) -> None:
        ids = self._put(engine, 1, 2, 3)
        assert ids == sorted(ids) and len(set(ids)) == 3
        got = engine.take("q", 2, self.NOW, None)
        assert [r.data for r in got] == recs(1, 2)
        assert [r.id for r in got] == ids[:2]
        assert [r.data for r in engine.take("q", 10, self.NOW, None)] == recs(3)
        assert engine.take("q", 10, self.NOW, None) == []

    def test_ids_only_grow_and_are_never_reused(self, engine: Engine) -> None:
        first = self._put(engine, 1, 2)
        engine.take("q", 2, self.NOW, None)
        second = self._put(engine, 3)
        assert second[0] > max(first)
        engine.purge("q")
        assert self._put(engine, 4)[0] > second[0]

    def test_take_of_more_than_any_queue_holds_takes_what_is_ready(self,
                                                                   engine: Engine) -> None:
        """An ``n`` past any integer the storage holds (2**63 and up) is no error: like any
        ``n`` larger than the queue, it takes every ready record."""
        self._put(engine, 1, 2, 3)
        leased = engine.take("q", 2**63, self.NOW, Lease("me", self.NOW + 30))
        assert [r.data for r in leased] == recs(1, 2, 3)
        for rec in leased:
            engine.release("q", [(rec.id, 1)], "me", not_before=0.0, max_attempts=None)
        assert [r.data for r in engine.take("q", 2**64, self.NOW, None)] == recs(1, 2, 3)
        assert engine.take("q", 2**63, self.NOW, None) == []
        assert engine.counts("q") == (0, 0, 0, 0)

    def test_take_of_nothing_takes_nothing(self, engine: Engine) -> None:
        """``n=0`` takes no record, leased or not (a ``LIMIT 0`` is no missing limit)."""
        self._put(engine, 1, 2)
        assert engine.take("q", 0, self.NOW, None) == []
        assert engine.take("q", 0, self.NOW, Lease("me", self.NOW + 30)) == []
        assert engine.counts("q")[:2] == (2, 0)
        assert engine.owners("q") == {}

    def test_append_of_nothing_and_mismatched_sizes(self, engine: Engine) -> None:
        assert engine.append("q", [], [], self.NOW) == []
        with pytest.raises(ValueError):
            engine.append("q", recs(1, 2), [1], self.NOW)
        assert engine.counts("q").ready == 0

    def test_record_fields(self, engine: Engine) -> None:
        self._put(engine, 7)
        (rec,) = engine.take("q", 1, self.NOW + 5, None)
        assert rec.data == b"r7"
        assert rec.raw_size == 4
        assert rec.attempts == 0
        assert rec.enqueued_at == self.NOW

    def test_counts_track_records_and_bytes(self, engine: Engine) -> None:
        self._put(engine, 1, 22, 333)
        c = engine.counts("q")
        assert (c.ready, c.leased) == (3, 0)
        assert c.stored_bytes == len(b"r1r22r333")
        assert c.raw_bytes == 2 * c.stored_bytes
        engine.take("q", 1, self.NOW, Lease("me", self.NOW + 10))
        c = engine.counts("q")
        assert (c.ready, c.leased, c.stored_bytes) == (2, 1, len(b"r1r22r333"))
        engine.take("q", 1, self.NOW, None)
        c = engine.counts("q")
        assert (c.ready, c.leased, c.stored_bytes) == (1, 1, len(b"r1r333"))
        assert engine.counts("nothing-here") == (0, 0, 0, 0)

    def test_counts_follow_every_change(self, engine: Engine) -> None:
        """Counts and bytes of a queue and of its dead letters after each kind of change:
        lease, ack, release, expiry, burial, move, take, restore and purge."""
        dead = dead_queue_name("q")

        def counts(queue: str) -> tuple[int, ...]:
            return tuple(engine.counts(queue))

        self._put(engine, 1, 2, 3, 4)  # each record: 2 bytes stored, 4 raw
        assert counts("q") == (4, 0, 8, 16)
        a, b, c = engine.take("q", 3, self.NOW, Lease("me", self.NOW + 5))
        assert counts("q") == (1, 3, 8, 16)
        assert engine.ack("q", [(a.id, 1)], "me") == [a.id]
        assert counts("q") == (1, 2, 6, 12)
        engine.release("q", [(b.id, 1)], "me", not_before=0.0, max_attempts=None)
        assert counts("q") == (2, 1, 6, 12)
        assert engine.expire("q", self.NOW + 6) == 1  # c
        assert counts("q") == (3, 0, 6, 12)
        (b2,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        assert b2.id == b.id
        engine.release("q", [(b.id, 2)], "me", not_before=0.0, max_attempts=2)
        assert (counts("q"), counts(dead)) == ((2, 0, 4, 8), (1, 0, 2, 4))
        (c2,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 5))
        assert c2.id == c.id
        assert engine.expire("q", self.NOW + 6, max_attempts=2) == 1
        assert (counts("q"), counts(dead)) == ((1, 0, 2, 4), (2, 0, 4, 8))
        assert engine.move(dead, "q2") == 2
        assert (counts(dead), counts("q2")) == ((0, 0, 0, 0), (2, 0, 4, 8))
        (last,) = engine.peek("q", 1)
        assert engine.move("q", "q2", [last.id]) == 1
        assert (counts("q"), counts("q2")) == ((0, 0, 0, 0), (3, 0, 6, 12))
        taken = engine.take("q2", 2, self.NOW, None)
        assert counts("q2") == (1, 0, 2, 4)
        engine.restore("q2", taken)
        assert counts("q2") == (3, 0, 6, 12)
        assert engine.purge("q2") == 3
        assert counts("q2") == (0, 0, 0, 0)

    def test_named_queues_are_separate(self, engine: Engine) -> None:
        self._put(engine, 1, queue="a")
        self._put(engine, 2, queue="b")
        assert [r.data for r in engine.take("b", 5, self.NOW, None)] == recs(2)
        assert engine.counts("a").ready == 1
        assert set(engine.queues()) >= {"a", "b"}

    def _name_queues(self, engine: Engine) -> list[str]:
        """Store records in some queues and only read, take from or settle others; return
        the names :meth:`Engine.queues` must give from then on, sorted."""
        self._put(engine, 1, 2, queue="drained")
        engine.take("drained", 5, self.NOW, None)
        self._put(engine, 3, queue="purged")
        engine.purge("purged")
        self._put(engine, 4, 5, queue="kept")
        (rec,) = engine.take("kept", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.release("kept", [(rec.id, 1)], "me", not_before=0.0, max_attempts=1)
        self._put(engine, 6, queue="src")
        engine.move("src", "dst")
        # Names that never held a record: read, taken from, settled, purged, moved from.
        engine.take("taken", 1, self.NOW, None)
        engine.take("leased", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.counts("counted")
        engine.peek("peeked", 1)
        engine.owners("owned")
        engine.ack("acked", [(1, 1)], "me")
        engine.release("released", [(1, 1)], "me", not_before=0.0, max_attempts=1)
        engine.expire("expired", self.NOW + 60, owners=["me"], max_attempts=1)
        engine.purge("never-purged")
        engine.move("never-moved", "moved-nothing")
        engine.restore("restored-nothing", [])
        engine.append("appended-nothing", [], [], self.NOW)
        if isinstance(engine, SupportsPeekLeased):
            engine.peek_leased("peeked-leased", 1)
        return sorted(["drained", "purged", "kept", dead_queue_name("kept"), "src", "dst"])

    def test_queues_names_every_queue_records_were_stored_in(self, engine: Engine) -> None:
        """A queue is listed once records were stored in it (appended, moved there, buried
        there as dead letters, restored), and stays listed when drained or purged; a name
        that was only read, taken from, settled or purged is never listed."""
        expected = self._name_queues(engine)
        assert sorted(engine.queues()) == expected, engine.queues()

    def test_queues_are_the_same_after_reopen(self, open_engine: Opener) -> None:
        """A persistent engine lists the same queues after a reopen; a non-persistent one
        starts with none."""
        eng = open_engine()
        try:
            expected = self._name_queues(eng)
        finally:
            eng.close()
        eng = open_engine()
        try:
            assert sorted(eng.queues()) == (expected if self.persistent else []), eng.queues()
            assert eng.counts("drained") == (0, 0, 0, 0)
        finally:
            eng.close()

    def test_restore_puts_back_at_original_position(self, engine: Engine) -> None:
        self._put(engine, 1, 2, 3)
        taken = engine.take("q", 2, self.NOW, None)
        engine.restore("q", taken)
        assert [r.data for r in engine.take("q", 5, self.NOW, None)] == recs(1, 2, 3)
        assert engine.counts("q") == (0, 0, 0, 0)

    def test_restore_keeps_every_field(self, engine: Engine) -> None:
        """A restored record comes back as it was taken: data, sizes, attempts, time and
        a dead letter's reason."""
        self._put(engine, 1, 2)
        dead = dead_queue_name("q")
        (a,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.release("q", [(a.id, 1)], "me", not_before=0.0, max_attempts=1, reason="boom")
        (b,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.release("q", [(b.id, 1)], "me", not_before=0.0, max_attempts=None)
        for queue in ("q", dead):
            taken = engine.take(queue, 5, self.NOW, None)
            assert len(taken) == 1
            engine.restore(queue, taken)
            assert engine.peek(queue, 5) == taken
        assert (engine.peek(dead, 1)[0].reason, engine.peek("q", 1)[0].attempts) == ("boom", 1)

    def test_restore_of_an_id_the_queue_holds_is_refused(self, engine: Engine) -> None:
        """Restoring a record whose id the queue holds (ready, delayed or leased), or one
        given twice, raises ValueError and changes nothing."""
        self._put(engine, 1, 2, 3, 4)
        taken = engine.take("q", 1, self.NOW, None)  # r1
        (leased,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))  # r2
        (delayed,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))  # r3
        engine.release("q", [(delayed.id, 1)], "me", not_before=self.NOW + 60,
                       max_attempts=None)
        (ready,) = engine.peek("q", 1, 1)  # r4
        before = engine.counts("q")
        for batch in ([taken[0], taken[0]], [taken[0], leased], [delayed], [taken[0], ready]):
            with pytest.raises(ValueError):
                engine.restore("q", batch)
            assert engine.counts("q") == before
            assert [r.data for r in engine.peek("q", 10)] == recs(3, 4)
            assert self._ids(engine.peek("q", 10)) == self._ids([delayed, ready])
        engine.restore("q", taken)
        engine.ack("q", [(leased.id, 1)], "me")
        assert [r.data for r in engine.take("q", 10, self.NOW + 61, None)] == recs(1, 3, 4)
        assert engine.counts("q") == (0, 0, 0, 0)

    def test_restore_of_an_id_never_given_out_is_refused(self, engine: Engine) -> None:
        """Restoring a record under an id no append gave out raises ValueError and changes
        nothing: a later append would give that id out again."""
        self._put(engine, 1)
        (taken,) = engine.take("q", 1, self.NOW, None)
        for ident in (0, -1, taken.id + 1_000_000, 1 << 64):
            with pytest.raises(ValueError, match="never gave out"):
                engine.restore("q", [taken._replace(id=ident)])
            assert engine.counts("q") == (0, 0, 0, 0)
        self._put(engine, 2)
        engine.restore("q", [taken])
        assert [r.data for r in engine.take("q", 5, self.NOW, None)] == recs(1, 2)

    @staticmethod
    def _ids(records: list[Any]) -> list[int]:
        return [r.id for r in records]

    def test_peek_does_not_remove(self, engine: Engine) -> None:
        self._put(engine, 1, 2, 3)
        assert [r.data for r in engine.peek("q", 2)] == recs(1, 2)
        assert [r.data for r in engine.peek("q", 5, 1)] == recs(2, 3)
        assert engine.counts("q").ready == 3

    def test_peek_windows_beyond_64_bits(self, engine: Engine) -> None:
        """An n or offset past any integer a store keeps reads what any large one does;
        a negative one is refused with ValueError. (The checks of ``peek_leased`` run only
        on an engine that has it; those of ``peek`` run on every engine.)"""
        lists = isinstance(engine, SupportsPeekLeased)
        self._put(engine, 1, 2, 3)
        engine.take("q", 1, self.NOW, Lease("a", self.NOW + 30))
        huge = (2**63, 2**64, 10**30)
        for n in huge:
            assert [r.data for r in engine.peek("q", n)] == recs(2, 3)
            assert [r.data for r in engine.peek("q", n, 1)] == recs(3)
            if lists:
                assert [d for d, _ in self._leased(engine, n=n)] == recs(1)
        for offset in huge:
            assert engine.peek("q", 1, offset) == []
            assert engine.peek("q", offset, offset) == []
            if lists:
                assert self._leased(engine, n=offset, offset=offset) == []
        for n, offset in ((-1, 0), (1, -1)):
            with pytest.raises(ValueError):
                engine.peek("q", n, offset)
            if isinstance(engine, SupportsPeekLeased):
                with pytest.raises(ValueError):
                    engine.peek_leased("q", n, offset)

    def test_peek_page_by_page_is_peek_at_each_offset(self, open_engine: Opener,
                                                       engine: Engine) -> None:
        """Reading a queue page after page (as the CLI does) gives what each page's own
        offset gives, also when records are taken, added or released between pages by
        this engine or by another one on the same store."""
        other = open_engine() if self.persistent else engine  # in memory: a store each
        try:
            self._put(engine, *range(1, 31))
            paged = [r.data for at in range(0, 32, 4) for r in engine.peek("q", 4, at)]
            assert paged == recs(*range(1, 31))
            assert [r.data for r in engine.peek("q", 4, 0)] == recs(1, 2, 3, 4)
            assert [r.data for r in engine.peek("q", 4, 4)] == recs(5, 6, 7, 8)
            engine.take("q", 2, self.NOW, None)  # this engine changes the queue
            assert [r.data for r in engine.peek("q", 4, 8)] == recs(11, 12, 13, 14)
            assert [r.data for r in engine.peek("q", 4, 12)] == recs(15, 16, 17, 18)
            other.take("q", 3, self.NOW, None)  # so does another one
            assert [r.data for r in engine.peek("q", 4, 16)] == recs(22, 23, 24, 25)
            leased = other.take("q", 1, self.NOW, Lease("o", self.NOW + 60))
            assert [r.data for r in engine.peek("q", 2, 0)] == recs(7, 8)
            assert [r.data for r in engine.peek("q", 2, 2)] == recs(9, 10)
            other.release("q", [(leased[0].id, leased[0].attempts)], "o", not_before=0.0,
                          max_attempts=None)
            assert [r.data for r in engine.peek("q", 2, 4)] == recs(10, 11)
        finally:
            if other is not engine:
                other.close()

    def test_move_and_purge(self, engine: Engine) -> None:
        ids = self._put(engine, 1, 2, 3, queue="src")
        assert engine.move("src", "dst", [ids[1]]) == 1
        assert [r.data for r in engine.peek("dst", 5)] == recs(2)
        assert engine.move("src", "dst") == 2
        assert [r.data for r in engine.peek("dst", 5)] == recs(2, 1, 3)
        assert engine.counts("src").ready == 0
        assert engine.counts("dst").stored_bytes == len(b"r1r2r3")
        assert engine.purge("dst") == 3
        assert engine.counts("dst") == (0, 0, 0, 0)

    def test_moved_records_are_new_records(self, engine: Engine) -> None:
        """``move`` appends new records at the tail of ``dst``: ids above every id ``dst``
        gave out, no attempts and no reason (a requeued dead letter gets its deliveries
        afresh), the data, sizes and time of the original."""
        ids = self._put(engine, 1, 2)
        (rec,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.release("q", [(rec.id, 1)], "me", not_before=0.0, max_attempts=1, reason="boom")
        assert engine.move(dead_queue_name("q"), "q") == 1
        kept, moved = engine.peek("q", 5)
        assert kept.id == ids[1]
        assert moved.id > max(ids)
        assert (moved.data, moved.raw_size, moved.attempts, moved.enqueued_at, moved.reason) \
            == (b"r1", 4, 0, self.NOW, None)
        assert engine.counts(dead_queue_name("q")) == (0, 0, 0, 0)

    def test_move_leaves_leased_records(self, engine: Engine) -> None:
        """``move`` takes ready records only: a leased one stays with its owner."""
        self._put(engine, 1, 2, 3, queue="src")
        (rec,) = engine.take("src", 1, self.NOW, Lease("me", self.NOW + 30))
        assert engine.move("src", "dst", [rec.id]) == 0
        assert engine.move("src", "dst") == 2
        assert [r.data for r in engine.peek("dst", 5)] == recs(2, 3)
        assert engine.counts("src") == (0, 1, 2, 4)
        assert engine.owners("src") == {"me": 1}
        assert engine.ack("src", [(rec.id, 1)], "me") == [rec.id]

    def test_purge_removes_leased_records_too(self, engine: Engine) -> None:
        """``purge`` removes every record of the queue, leased and delayed ones too, and
        counts them all; their leases can no longer be settled."""
        self._put(engine, 1, 2, 3)
        (leased,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        (delayed,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.release("q", [(delayed.id, 1)], "me", not_before=self.NOW + 60,
                       max_attempts=None)
        assert engine.purge("q") == 3
        assert engine.counts("q") == (0, 0, 0, 0)
        assert engine.owners("q") == {}
        assert engine.peek("q", 5) == []
        assert engine.ack("q", [(leased.id, 1)], "me") == []
        assert engine.expire("q", self.NOW + 100) == 0
        assert engine.take("q", 5, self.NOW + 100, None) == []

    def test_metadata(self, engine: Engine) -> None:
        assert engine.get_meta("k") is None
        engine.set_meta("k", b"v1")
        engine.set_meta("k", b"v2")
        assert engine.get_meta("k") == b"v2"

    def test_close_twice_is_harmless(self, open_engine: Opener) -> None:
        eng = open_engine()
        eng.close()
        eng.close()

    def test_records_survive_reopen(self, open_engine: Opener) -> None:
        eng = open_engine()
        if not self.persistent:
            self._put(eng, 1)
            eng.close()
            fresh = open_engine()
            assert fresh.counts("q").ready == 0, "a non-persistent engine must start empty"
            fresh.close()
            return
        self._put(eng, 1, 2)
        eng.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        eng.set_meta("k", b"v")
        eng.close()
        eng = open_engine()
        try:
            assert eng.counts("q")[:2] == (1, 1)
            assert eng.get_meta("k") == b"v"
            assert eng.owners("q") == {"me": 1}
            assert [r.data for r in eng.peek("q", 5)] == recs(2)
            later = self._put(eng, 3)
            assert later[0] > 2
        finally:
            eng.close()

    def _reopened(self, eng: Engine, open_engine: Opener) -> Engine:
        """The store closed and opened again; a non-persistent engine's stays open (it
        keeps nothing across a reopen), so a test checks what it keeps while open."""
        if not self.persistent:
            return eng
        eng.close()
        return open_engine()

    def test_ids_are_not_reused_after_reopen(self, open_engine: Opener) -> None:
        """An id given out is never given out again, also when the queue was drained or
        purged before the store was closed (an engine that counts on from the highest id
        it still holds would give the same ids again)."""
        eng = open_engine()
        try:
            given = self._put(eng, 1, 2, 3) + self._put(eng, 4, queue="other")
            eng.take("q", 5, self.NOW, None)
            eng.purge("other")
            eng = self._reopened(eng, open_engine)
            assert self._put(eng, 5)[0] > max(given[:3])
            assert self._put(eng, 6, queue="other")[0] > given[3]
        finally:
            eng.close()

    def test_dead_letters_and_attempts_survive_reopen(self, open_engine: Opener) -> None:
        """A reopened store keeps what each record carries: a dead letter's reason,
        attempts, sizes and time; a lease's attempts; a delay."""
        eng = open_engine()
        try:
            self._put(eng, 1, 2, 3)
            a, b, c = eng.take("q", 3, self.NOW, Lease("me", self.NOW + 30))
            eng.release("q", [(a.id, 1)], "me", not_before=0.0, max_attempts=1, reason="boom")
            eng.release("q", [(b.id, 1)], "me", not_before=self.NOW + 60, max_attempts=None)
            eng = self._reopened(eng, open_engine)
            (dead,) = eng.peek(dead_queue_name("q"), 5)
            assert (dead.data, dead.raw_size, dead.attempts, dead.enqueued_at, dead.reason) \
                == (b"r1", 4, 1, self.NOW, "boom")
            assert eng.ack("q", [(c.id, 1)], "me") == [c.id]
            assert eng.take("q", 5, self.NOW, None) == []
            (again,) = eng.take("q", 5, self.NOW + 61, Lease("me", self.NOW + 90))
            assert (again.id, again.data, again.attempts, again.enqueued_at) == (
                b.id, b"r2", 2, self.NOW)
        finally:
            eng.close()

    def test_large_batch(self, engine: Engine) -> None:
        data = [bytes([i % 256]) * (i % 50 + 1) for i in range(2000)]
        engine.append("q", data, [len(d) for d in data], self.NOW)
        got: list[Any] = []
        while chunk := engine.take("q", 333, self.NOW, None):
            got += [r.data for r in chunk]
        assert got == data
