"""The conformance suite's tests of leases and of settling them: acks, releases, expiry,
attempts, delays and dead letters (:class:`LeaseConformance`); :mod:`spoolq.testing`
puts them together with the rest."""

from __future__ import annotations

from ._conformance import ConformanceBase, recs
from .engines.base import Engine, Lease, dead_queue_name

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
