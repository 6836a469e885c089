"""The conformance suite's tests of leases and of settling them: acks, releases, expiry,
attempts, delays and dead letters, and the times every call that stores one must refuse
(:class:`LeaseConformance`); :mod:`spoolq.testing` puts them together with the rest."""

from __future__ import annotations

import math

import pytest

from ._conformance import ConformanceBase, Opener, recs
from .engines.base import Engine, Lease, SupportsPeekLeased, dead_queue_name
from .errors import EngineError

__all__ = ["LeaseConformance"]


class LeaseConformance(ConformanceBase):
    """What every engine must do with leases."""

    def test_lease_hides_counts_attempts_and_ack_removes(self, engine: Engine) -> None:
        self._put(engine, 1, 2)
        (rec,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        assert rec.attempts == 1
        assert [r.data for r in engine.take("q", 5, self.NOW, Lease("you", self.NOW + 30))] \
            == recs(2)
        assert engine.ack("q", [(rec.id, 1)], "me") == [rec.id]
        assert engine.counts("q") .leased == 1
        assert engine.ack("q", [(rec.id, 1)], "me") == []

    def test_ack_refuses_other_owner_and_stale_attempts(self, engine: Engine) -> None:
        self._put(engine, 1)
        (rec,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        assert engine.ack("q", [(rec.id, 1)], "you") == []
        assert engine.ack("q", [(rec.id, 2)], "me") == []
        assert engine.ack("q", [(rec.id + 1000, 1)], "me") == []
        assert engine.counts("q").leased == 1

    def test_ack_of_a_mixed_batch_removes_only_what_is_held(self, engine: Engine) -> None:
        self._put(engine, 1, 2, 3)
        a, b, c = (r.id for r in engine.take("q", 3, self.NOW, Lease("me", self.NOW + 30)))
        assert engine.ack("q", [(a, 1), (b, 2), (c, 1), (c, 1)], "me") == [a, c]
        counts = engine.counts("q")
        assert (counts.ready, counts.leased) == (0, 1)
        assert engine.ack("q", [(b, 1)], "me") == [b]

    def test_release_refuses_other_owner_and_stale_attempts(self, engine: Engine) -> None:
        """A release, like an ack, settles only a lease its owner holds at those attempts;
        an expiry by owner releases only the owners named."""
        self._put(engine, 1)
        (rec,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        for delivery, owner in (((rec.id, 1), "you"), ((rec.id, 2), "me"),
                                ((rec.id + 1000, 1), "me")):
            assert engine.release("q", [delivery], owner, not_before=0.0,
                                  max_attempts=None) == []
            assert engine.release("q", [delivery], owner, not_before=0.0, max_attempts=1) == []
        assert engine.expire("q", self.NOW, owners=["you"], max_attempts=1) == 0
        assert engine.counts("q")[:2] == (0, 1)
        assert engine.owners("q") == {"me": 1}
        assert engine.counts(dead_queue_name("q")).ready == 0
        assert engine.ack("q", [(rec.id, 1)], "me") == [rec.id]

    def test_release_of_a_mixed_batch_releases_what_is_held(self, engine: Engine) -> None:
        """A release, like an ack, skips the deliveries no longer held and settles the
        others of its batch."""
        self._put(engine, 1, 2, 3)
        a, b, c = (r.id for r in engine.take("q", 3, self.NOW, Lease("me", self.NOW + 30)))
        assert engine.release("q", [(a, 1), (b, 2), (c, 1), (c, 1)], "me", not_before=0.0,
                              max_attempts=None) == [a, c]
        assert engine.counts("q")[:2] == (2, 1)
        assert engine.release("q", [(b, 1)], "me", not_before=0.0, max_attempts=None) == [b]
        assert [r.data for r in engine.take("q", 5, self.NOW, None)] == recs(1, 2, 3)

    def test_ack_and_release_leave_records_not_leased_alone(self, engine: Engine) -> None:
        """Only a leased record is settled: not a ready one, not a released one waiting for
        its delay, and not a lease of the same id in another queue."""
        ready_ids = self._put(engine, 1, 2, queue="q")
        self._put(engine, 3, 4, queue="other")
        (rec,) = engine.take("other", 1, self.NOW, Lease("me", self.NOW + 30))
        (delayed,) = engine.take("other", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.release("other", [(delayed.id, 1)], "me", not_before=self.NOW + 60,
                       max_attempts=None)
        for queue, ident in [("q", rec.id), ("other", delayed.id)] + [
                ("q", i) for i in ready_ids]:
            for attempts in (0, 1):
                assert engine.ack(queue, [(ident, attempts)], "me") == []
                assert engine.release(queue, [(ident, attempts)], "me", not_before=0.0,
                                      max_attempts=1) == []
        assert engine.counts("q")[:2] == (2, 0)
        assert engine.counts("other")[:2] == (1, 1)
        assert engine.queues().count(dead_queue_name("q")) == 0
        assert engine.counts(dead_queue_name("other")).ready == 0
        assert [r.data for r in engine.peek("q", 5)] == recs(1, 2)
        assert engine.ack("other", [(rec.id, 1)], "me") == [rec.id]

    def test_attempts_grow_with_each_delivery(self, engine: Engine) -> None:
        """Each lease counts one more attempt; an ack or release names the attempt it
        settles; ``max_attempts`` buries the record at that attempt, not before."""
        self._put(engine, 1)
        for attempt in (1, 2, 3):
            (rec,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
            assert rec.attempts == attempt
            assert engine.ack("q", [(rec.id, attempt - 1)], "me") == []
            assert engine.release("q", [(rec.id, attempt)], "me", not_before=0.0,
                                  max_attempts=3) == [rec.id]
            assert engine.counts(dead_queue_name("q")).ready == (attempt == 3)
        (dead,) = engine.peek(dead_queue_name("q"), 5)
        assert (dead.data, dead.attempts) == (b"r1", 3)
        assert engine.counts("q") == (0, 0, 0, 0)

    def test_expired_leases_keep_their_fifo_position(self, engine: Engine) -> None:
        """A lease that ran out, or whose owner died, gives its record back at its place,
        ahead of records appended after it."""
        self._put(engine, 1, 2, 3)
        engine.take("q", 1, self.NOW, Lease("a", self.NOW + 5))
        engine.take("q", 1, self.NOW, Lease("gone", self.NOW + 50))
        self._put(engine, 4)
        assert engine.expire("q", self.NOW + 6, owners=["gone"]) == 2
        got = engine.take("q", 5, self.NOW + 6, None)
        assert [(r.data, r.attempts) for r in got] == [(b"r1", 1), (b"r2", 1), (b"r3", 0),
                                                       (b"r4", 0)]

    def test_release_keeps_fifo_position(self, engine: Engine) -> None:
        self._put(engine, 1, 2, 3)
        (rec,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        released = engine.release("q", [(rec.id, 1)], "me", not_before=0.0, max_attempts=None)
        assert released == [rec.id]
        again = engine.take("q", 3, self.NOW, None)
        assert [r.data for r in again] == recs(1, 2, 3)
        assert again[0].attempts == 1

    def test_release_with_delay_hides_until_then(self, engine: Engine) -> None:
        self._put(engine, 1, 2)
        (rec,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.release("q", [(rec.id, 1)], "me", not_before=self.NOW + 10, max_attempts=None)
        assert [r.data for r in engine.take("q", 5, self.NOW, Lease("me", self.NOW + 30))] \
            == recs(2)
        assert [r.data for r in engine.take("q", 5, self.NOW + 11, None)] == recs(1)

    def test_released_delayed_and_new_records_interleave_by_id(self, engine: Engine) -> None:
        self._put(engine, 1, 2, 3, 4)
        held = engine.take("q", 3, self.NOW, Lease("me", self.NOW + 30))  # 1, 2, 3
        self._put(engine, 5, 6)
        engine.release("q", [(held[2].id, 1)], "me", not_before=0.0, max_attempts=None)
        engine.release("q", [(held[0].id, 1)], "me", not_before=self.NOW + 10,
                       max_attempts=None)
        assert [r.data for r in engine.peek("q", 10)] == recs(1, 3, 4, 5, 6)
        assert [r.data for r in engine.peek("q", 2, 1)] == recs(3, 4)
        assert engine.counts("q").ready == 5
        assert [r.data for r in engine.take("q", 1, self.NOW, None)] == recs(3)
        assert [r.data for r in engine.take("q", 2, self.NOW, None)] == recs(4, 5)
        engine.release("q", [(held[1].id, 1)], "me", not_before=0.0, max_attempts=None)
        self._put(engine, 7)
        assert [r.data for r in engine.take("q", 10, self.NOW, None)] == recs(2, 6, 7)
        assert [r.data for r in engine.take("q", 10, self.NOW + 11, None)] == recs(1)
        assert engine.counts("q") == (0, 0, 0, 0)

    def test_release_without_counting_undoes_the_attempt(self, engine: Engine) -> None:
        self._put(engine, 1)
        (rec,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.release("q", [(rec.id, 1)], "me", not_before=0.0, max_attempts=1,
                       count_attempt=False)
        (again,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        assert again.attempts == 1

    def test_max_attempts_moves_to_dead_letters_with_reason(self, engine: Engine) -> None:
        self._put(engine, 1, 2)
        (rec,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.release("q", [(rec.id, 1)], "me", not_before=0.0, max_attempts=1,
                       reason="boom")
        dead = engine.peek(dead_queue_name("q"), 10)
        assert [r.data for r in dead] == recs(1)
        assert dead[0].reason == "boom"
        assert dead[0].attempts == 1
        assert engine.counts("q") == (1, 0, 2, 4)
        assert engine.counts(dead_queue_name("q")).ready == 1

    def test_a_release_without_a_reason_is_buried_as_nacked(self, engine: Engine) -> None:
        self._put(engine, 1)
        (rec,) = engine.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        engine.release("q", [(rec.id, 1)], "me", not_before=0.0, max_attempts=1)
        (dead,) = engine.peek(dead_queue_name("q"), 10)
        assert dead.reason == "nacked"

    def test_expire_by_time_and_by_owner(self, engine: Engine) -> None:
        self._put(engine, 1, 2, 3)
        engine.take("q", 1, self.NOW, Lease("a", self.NOW + 5))
        engine.take("q", 1, self.NOW, Lease("b", self.NOW + 50))
        engine.take("q", 1, self.NOW, Lease("c", self.NOW + 50))
        assert engine.owners("q") == {"a": 1, "b": 1, "c": 1}
        assert engine.expire("q", self.NOW + 1) == 0
        assert engine.expire("q", self.NOW + 6) == 1
        assert engine.expire("q", self.NOW + 6, owners=["c"]) == 1
        assert engine.owners("q") == {"b": 1}
        got = engine.take("q", 5, self.NOW + 6, None)
        assert [(r.data, r.attempts) for r in got] == [(b"r1", 1), (b"r3", 1)]

    def test_expire_respects_max_attempts(self, engine: Engine) -> None:
        self._put(engine, 1)
        engine.take("q", 1, self.NOW, Lease("a", self.NOW + 5))
        assert engine.expire("q", self.NOW + 6, max_attempts=1) == 1
        assert engine.counts("q").ready == 0
        assert [r.data for r in engine.peek(dead_queue_name("q"), 5)] == recs(1)

    def test_dead_letters_of_one_expiry_keep_id_order(self, engine: Engine) -> None:
        self._put(engine, 1, 2, 3)
        engine.take("q", 1, self.NOW, Lease("gone", self.NOW + 50))  # r1: its owner died
        engine.take("q", 1, self.NOW, Lease("a", self.NOW + 5))  # r2: its lease runs out
        engine.take("q", 1, self.NOW, Lease("gone", self.NOW + 50))  # r3: its owner died
        assert engine.expire("q", self.NOW + 6, owners=["gone"], max_attempts=1) == 3
        dead = engine.peek(dead_queue_name("q"), 5)
        assert [(r.data, r.reason) for r in dead] == [
            (b"r1", "owner died"), (b"r2", "lease expired"), (b"r3", "owner died")]

    def test_dead_letters_of_one_release_keep_id_order(self, engine: Engine) -> None:
        """A release buries the records it sends to the dead letters in id order, as a
        move adds them, whatever order its deliveries name them in; deliveries that
        hold no lease (named twice, at other attempts) are skipped as usual."""
        self._put(engine, 9, queue=dead_queue_name("q"))
        self._put(engine, 1, 2, 3, 4)
        a, b, c, d = (r.id for r in engine.take("q", 4, self.NOW, Lease("me", self.NOW + 30)))
        # b and d go back once, so only they reach max_attempts=2 below.
        engine.release("q", [(d, 1), (b, 1)], "me", not_before=0.0, max_attempts=None)
        assert sorted(r.id for r in engine.take("q", 2, self.NOW,
                                                Lease("me", self.NOW + 30))) == [b, d]
        deliveries = [(d, 2), (c, 1), (b, 1), (b, 2), (d, 2), (a, 1)]
        released = engine.release("q", deliveries, "me", not_before=0.0, max_attempts=2,
                                  reason="why")
        assert sorted(released) == [a, b, c, d]
        dead = engine.peek(dead_queue_name("q"), 10)
        assert [(r.data, r.attempts) for r in dead] == [(b"r9", 0), (b"r2", 2), (b"r4", 2)]
        assert [r.id for r in dead] == sorted(r.id for r in dead)
        assert [r.reason for r in dead[1:]] == ["why", "why"]
        assert [r.data for r in engine.take("q", 5, self.NOW, None)] == recs(1, 3)

    def test_dead_letters_of_one_release_of_many_keep_id_order(self, engine: Engine) -> None:
        """So does a release of many deliveries, named from the last to the first."""
        self._put(engine, *range(300))
        taken = engine.take("q", 300, self.NOW, Lease("me", self.NOW + 30))
        deliveries = [(r.id, r.attempts) for r in reversed(taken)]
        engine.release("q", deliveries, "me", not_before=0.0, max_attempts=1)
        dead = engine.peek(dead_queue_name("q"), 300)
        assert [r.data for r in dead] == recs(*range(300))

    def test_dead_letters_of_one_expiry_of_many_keep_id_order(self, engine: Engine) -> None:
        """An expiry that ends many leases, of owners that died and leases that ran out
        taken in turns, buries them in id order too."""
        self._put(engine, *range(1100))
        for turn in range(11):
            owner, until = ("gone", self.NOW + 50) if turn % 2 else ("a", self.NOW + 5)
            engine.take("q", 100, self.NOW, Lease(owner, until))
        assert engine.expire("q", self.NOW + 6, owners=["gone"], max_attempts=1) == 1100
        dead = engine.peek(dead_queue_name("q"), 1100)
        assert [r.data for r in dead] == recs(*range(1100))
        assert [r.reason for r in dead[99:101]] == ["lease expired", "owner died"]

    # ---- infinite times ----------------------------------------------------------------
    # Infinite times are times: +inf is later than every finite time, and equal to itself.

    def test_a_take_at_infinity_takes_every_ready_record(self, engine: Engine) -> None:
        """A take at ``now=+inf`` takes every ready record in id order, those released
        to wait until a far time or until +inf too; leased records stay leased."""
        self._put(engine, 1, 2, 3, 4)
        a, b, c = engine.take("q", 3, self.NOW, Lease("me", self.NOW + 30))
        engine.release("q", [(b.id, 1)], "me", not_before=1e300, max_attempts=None)
        engine.release("q", [(c.id, 1)], "me", not_before=math.inf, max_attempts=None)
        assert [r.data for r in engine.take("q", 5, self.NOW + 1e9, None)] == recs(4)
        got = engine.take("q", 1, math.inf, None) + engine.take("q", 5, math.inf, None)
        assert [(r.data, r.attempts) for r in got] == [(b"r2", 1), (b"r3", 1)]
        assert engine.counts("q")[:2] == (0, 1)
        assert engine.ack("q", [(a.id, 1)], "me") == [a.id]

    def test_a_take_before_zero_sees_records_that_wait_for_no_time(self,
                                                                   engine: Engine) -> None:
        """A record put, or given back by an expiry, waits for no time: a take at a
        negative time or at -inf sees it."""
        self._put(engine, 1, 2)
        engine.take("q", 1, -math.inf, Lease("gone", math.inf))
        assert engine.expire("q", self.NOW, owners=["gone"]) == 1
        got = engine.take("q", 1, -1.0, None) + engine.take("q", 1, -math.inf, None)
        assert [(r.data, r.attempts) for r in got] == [(b"r1", 1), (b"r2", 0)]

    def test_a_lease_until_infinity_never_runs_out(self, engine: Engine) -> None:
        """A lease until ``+inf`` outlives an expiry at any finite time, as one by a
        dead owner's name ends it; an expiry at +inf ends it."""
        self._put(engine, 1, 2, 3)
        (forever,) = engine.take("q", 1, self.NOW, Lease("me", math.inf))
        engine.take("q", 1, self.NOW, Lease("you", self.NOW + 5))
        (gone,) = engine.take("q", 1, math.inf, Lease("gone", math.inf))
        assert gone.data == b"r3"
        assert engine.expire("q", self.NOW + 6, max_attempts=1) == 1
        for now in (self.NOW + 1e9, 1e300):
            assert engine.expire("q", now, owners=["other"], max_attempts=1) == 0
        assert engine.expire("q", 1e300, owners=["gone"]) == 1
        assert engine.owners("q") == {"me": 1}
        assert engine.counts("q")[:2] == (1, 1)
        assert engine.expire("q", math.inf) == 1
        again = engine.take("q", 5, self.NOW, None)
        assert [(r.id, r.data, r.attempts) for r in again] == [(forever.id, b"r1", 1),
                                                              (gone.id, b"r3", 1)]

    # ---- times that are not times ----------------------------------------------------
    # No comparison orders NaN: a record put, released or restored at NaN, or a lease
    # ending at NaN, would never come due. Every engine refuses them as SQLite does (its
    # columns cannot hold NaN). Infinite times are times, and stay allowed.

    def _store(self, eng: Engine) -> tuple[object, ...]:
        """What a refused call must leave as it was: the records, leases and counts of
        the queue and of its dead letters (a lease's end is left out: an engine on
        another clock reads it back a little different each time)."""
        dead = dead_queue_name("q")
        leased = ([(lr.record, lr.owner) for lr in eng.peek_leased("q", 100)]
                  if isinstance(eng, SupportsPeekLeased) else [])
        return (eng.counts("q"), eng.peek("q", 100), leased, eng.owners("q"),
                eng.counts(dead), eng.peek(dead, 100))

    def _unchanged(self, engine: Engine, open_engine: Opener, before: tuple[object, ...]
                   ) -> None:
        """The store is as ``before``, read by ``engine`` and, on a persistent engine, by
        another engine opened on the same store."""
        assert self._store(engine) == before
        if self.persistent:
            other = open_engine()
            try:
                assert self._store(other) == before
            finally:
                other.close()

    def test_an_append_at_a_nan_time_is_refused(self, engine: Engine,
                                                open_engine: Opener) -> None:
        """An append at ``now=NaN`` raises EngineError and stores nothing of its batch."""
        first = self._put(engine, 1)
        before = self._store(engine)
        data = recs(2, 3)
        with pytest.raises(EngineError):
            engine.append("q", data, [4, 4], math.nan)
        self._unchanged(engine, open_engine, before)
        assert self._put(engine, 4)[0] > first[0]
        assert [r.data for r in engine.take("q", 5, self.NOW, None)] == recs(1, 4)

    def test_a_lease_until_a_nan_time_is_refused(self, engine: Engine,
                                                 open_engine: Opener) -> None:
        """A take leasing until NaN raises EngineError and leases nothing: such a lease
        would never run out."""
        self._put(engine, 1, 2)
        before = self._store(engine)
        with pytest.raises(EngineError):
            engine.take("q", 2, self.NOW, Lease("me", math.nan))
        self._unchanged(engine, open_engine, before)
        assert [r.data for r in engine.take("q", 5, self.NOW, None)] == recs(1, 2)

    def test_a_take_at_a_nan_time_takes_nothing(self, engine: Engine,
                                                open_engine: Opener) -> None:
        """No record is ready at ``now=NaN``: a take, leasing or not, takes nothing and
        changes nothing (an expiry at NaN, likewise, ends no lease by time)."""
        self._put(engine, 1, 2)
        engine.take("q", 1, self.NOW, Lease("me", self.NOW + 5))
        before = self._store(engine)
        assert engine.take("q", 5, math.nan, None) == []
        assert engine.take("q", 5, math.nan, Lease("you", self.NOW + 30)) == []
        assert engine.take("q", 5, math.nan, Lease("you", math.nan)) == []
        assert engine.expire("q", math.nan) == 0
        self._unchanged(engine, open_engine, before)
        assert [r.data for r in engine.take("q", 5, self.NOW, None)] == recs(2)

    def test_a_release_until_a_nan_time_is_refused(self, engine: Engine,
                                                   open_engine: Opener) -> None:
        """A release with ``not_before=NaN`` of records that go back to the queue raises
        EngineError and settles nothing of its batch: they would never be ready again.
        (Records it buries as dead letters never wait for ``not_before``: whether a
        release that buries them all refuses NaN is left to the engine.)"""
        self._put(engine, 1, 2)
        held = [(r.id, r.attempts)
                for r in engine.take("q", 2, self.NOW, Lease("me", self.NOW + 30))]
        before = self._store(engine)
        for max_attempts in (None, 2):
            with pytest.raises(EngineError):
                engine.release("q", held, "me", not_before=math.nan,
                               max_attempts=max_attempts)
            self._unchanged(engine, open_engine, before)
        assert engine.ack("q", held, "me") == [i for i, _ in held]

    def test_a_restore_of_a_record_put_at_a_nan_time_is_refused(
            self, engine: Engine, open_engine: Opener) -> None:
        """A restore of a batch holding a record whose ``enqueued_at`` is NaN raises
        EngineError and restores none of the batch."""
        self._put(engine, 1, 2)
        taken = engine.take("q", 2, self.NOW, None)
        before = self._store(engine)
        with pytest.raises(EngineError):
            engine.restore("q", [taken[0], taken[1]._replace(enqueued_at=math.nan)])
        self._unchanged(engine, open_engine, before)
        engine.restore("q", taken)
        assert engine.peek("q", 5) == taken
