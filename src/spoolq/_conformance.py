"""The conformance suite's shared part (:class:`ConformanceBase`) and its tests of the
optional ``peek_leased`` (:class:`PeekLeasedConformance`); :mod:`spoolq.testing` puts
them together with the tests every engine must pass. :class:`AppendTakeConformance`
tests the optional ``append_take``, for the test module of an engine that has it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .engines.base import Engine, Lease, LeasedRecord, SupportsPeekLeased, dead_queue_name

__all__ = ["AppendTakeConformance", "ConformanceBase", "Opener", "PeekLeasedConformance",
           "recs"]

Opener = Callable[[], Engine]


def recs(*values: int) -> list[bytes]:
    """The records the suite stores for ``values``."""
    return [b"r%d" % v for v in values]


class ConformanceBase:
    """Settings, fixtures and helpers of the conformance suite."""

    persistent = True
    NOW = 1_000_000.0
    CLOCK_SLACK = 1.0
    """Seconds a lease expiry read back may differ from the one given: an engine that
    keeps time on another clock (PostgreSQL's) converts it there and back."""

    @pytest.fixture
    def engine(self, open_engine: Opener) -> Iterator[Engine]:
        eng = open_engine()
        try:
            yield eng
        finally:
            eng.close()

    def _put(self, eng: Engine, *values: int, queue: str = "q") -> list[int]:
        data = recs(*values)
        return eng.append(queue, data, [len(d) * 2 for d in data], self.NOW)

    @staticmethod
    def _lister(engine: Engine) -> SupportsPeekLeased:
        if not isinstance(engine, SupportsPeekLeased):
            pytest.skip("this engine cannot list leased records")
        return engine

    def _leased(self, engine: Engine, queue: str = "q", n: int = 100,
                offset: int = 0) -> list[tuple[bytes, str]]:
        return [(lr.record.data, lr.owner)
                for lr in self._lister(engine).peek_leased(queue, n, offset)]


class AppendTakeConformance(ConformanceBase):
    """Tests of ``append_take``, which skip (saying so) on an engine without it. Not a
    part of ``EngineConformance``: an engine that has it adds them to its tests."""

    def _append_take(self, engine: Engine, values: tuple[int, ...], n: int,
                     lease: Lease | None = None) -> tuple[list[int], list[bytes]]:
        call = getattr(engine, "append_take", None)
        if call is None:
            pytest.skip("this engine has no append_take")
        data = recs(*values)
        ids, taken = call("q", data, [len(d) * 2 for d in data], self.NOW, n, lease)
        return ids, [r.data for r in taken]

    def test_append_take_takes_older_records_first(self, engine: Engine) -> None:
        old = self._put(engine, 1, 2)
        ids, taken = self._append_take(engine, (3, 4), 3)
        assert len(ids) == 2 and min(ids) > max(old) and ids == sorted(ids)
        assert taken == recs(1, 2, 3)
        assert [r.id for r in engine.peek("q", 10)] == ids[1:]
        assert engine.counts("q") == (1, 0, 2, 4)
        assert self._append_take(engine, (), 5) == ([], recs(4))

    def test_append_take_leases(self, engine: Engine) -> None:
        ids, taken = self._append_take(engine, (1, 2), 1, Lease("me", self.NOW + 30))
        assert taken == recs(1)
        assert engine.counts("q")[:2] == (1, 1)
        assert engine.owners("q") == {"me": 1}
        more, taken = self._append_take(engine, (3,), 0)
        assert len(more) == 1 and more[0] > ids[1] and taken == []
        assert [r.data for r in engine.peek("q", 10)] == recs(2, 3)


class PeekLeasedConformance(ConformanceBase):
    """Tests of ``peek_leased``, which skip (saying so) on an engine without it."""

    def test_peek_leased_lists_leases_in_fifo_order(self, engine: Engine) -> None:
        lister = self._lister(engine)
        ids = self._put(engine, 1, 2, 3, 4, 5)
        engine.take("q", 2, self.NOW, Lease("a", self.NOW + 30))
        engine.take("q", 1, self.NOW, Lease("b", self.NOW + 600))
        got = lister.peek_leased("q", 10)
        assert all(isinstance(lr, LeasedRecord) for lr in got)
        assert [(lr.record.id, lr.record.data, lr.owner) for lr in got] == [
            (ids[0], b"r1", "a"), (ids[1], b"r2", "a"), (ids[2], b"r3", "b")]
        assert [lr.until for lr in got] == pytest.approx(
            [self.NOW + 30, self.NOW + 30, self.NOW + 600], abs=self.CLOCK_SLACK)
        rec = got[0].record
        assert (rec.raw_size, rec.attempts, rec.enqueued_at, rec.reason) == (4, 1, self.NOW,
                                                                             None)
        assert [r.data for r in engine.peek("q", 10)] == recs(4, 5)
        assert engine.counts("q")[:2] == (2, 3)

    def test_peek_leased_attempts_and_expired_leases(self, engine: Engine) -> None:
        lister = self._lister(engine)
        self._put(engine, 1, 2)
        (rec,) = engine.take("q", 1, self.NOW, Lease("a", self.NOW + 30))
        engine.release("q", [(rec.id, 1)], "a", not_before=0.0, max_attempts=None)
        engine.take("q", 1, self.NOW, Lease("a", self.NOW + 30))
        engine.take("q", 1, self.NOW, Lease("b", self.NOW - 5))
        # A lease that ran out is still held until expire() releases it.
        got = lister.peek_leased("q", 10)
        assert [(lr.record.data, lr.record.attempts) for lr in got] == [(b"r1", 2), (b"r2", 1)]
        assert got[1].until == pytest.approx(self.NOW - 5, abs=self.CLOCK_SLACK)
        assert engine.expire("q", self.NOW) == 1
        assert self._leased(engine) == [(b"r1", "a")]

    def test_peek_leased_pages_with_n_and_offset(self, engine: Engine) -> None:
        lister = self._lister(engine)
        self._put(engine, 1, 2, 3, 4, 5, 6)
        engine.take("q", 5, self.NOW, Lease("a", self.NOW + 30))
        assert [d for d, _ in self._leased(engine, n=2)] == recs(1, 2)
        assert [d for d, _ in self._leased(engine, n=2, offset=2)] == recs(3, 4)
        assert [d for d, _ in self._leased(engine, n=10, offset=4)] == recs(5)
        assert self._leased(engine, n=10, offset=5) == []
        assert self._leased(engine, n=0) == []
        for n, offset in ((-1, 0), (1, -1)):
            with pytest.raises(ValueError):
                lister.peek_leased("q", n, offset)

    def test_peek_leased_leaves_out_what_is_not_leased(self, engine: Engine) -> None:
        lister = self._lister(engine)
        self._put(engine, 1, 2, 3, 4, 5)
        self._put(engine, 7, queue="other")
        a, b, c, d = engine.take("q", 4, self.NOW, Lease("a", self.NOW + 30))
        engine.take("other", 1, self.NOW, Lease("a", self.NOW + 30))
        assert engine.ack("q", [(a.id, 1)], "a") == [a.id]
        engine.release("q", [(b.id, 1)], "a", not_before=0.0, max_attempts=None)
        engine.release("q", [(c.id, 1)], "a", not_before=self.NOW + 60, max_attempts=None)
        engine.release("q", [(d.id, 1)], "a", not_before=0.0, max_attempts=1)
        assert self._leased(engine) == []
        assert self._leased(engine, "other") == [(b"r7", "a")]
        assert self._leased(engine, dead_queue_name("q")) == []
        assert self._leased(engine, "nothing-here") == []
        assert [r.data for r in engine.peek("q", 10)] == recs(2, 3, 5)
        engine.take("q", 1, self.NOW, Lease("b", self.NOW + 30))
        assert [lr.owner for lr in lister.peek_leased("q", 10)] == ["b"]

    def test_peek_leased_after_reopen(self, open_engine: Opener) -> None:
        eng = open_engine()
        try:
            self._lister(eng)
            self._put(eng, 1, 2)
            eng.take("q", 1, self.NOW, Lease("me", self.NOW + 30))
        finally:
            eng.close()
        eng = open_engine()
        try:
            assert self._leased(eng) == ([(b"r1", "me")] if self.persistent else [])
        finally:
            eng.close()
