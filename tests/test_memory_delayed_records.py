"""The memory engine keeps records released with a delay apart, by the time they come due,
so a take reads none that is not due yet: with records nacked with a delay ahead of the
others, every take popped each of them off the queue's heap and pushed it back (16 ms a
take with 50,000 of them, and a list of them all each time)."""

from __future__ import annotations

import tracemalloc

from spoolq.engines import Lease, MemoryEngine


def _with_delayed(n: int) -> MemoryEngine:
    """An engine whose queue q holds ``n`` records released until 1e9, then 100 new ones."""
    mem = MemoryEngine()
    mem.append("q", [b"x"] * n, [1] * n, 0.0)
    taken = mem.take("q", n, 0.0, Lease("w", 100.0))
    assert mem.release("q", [(r.id, 1) for r in taken], "w", not_before=1e9,
                       max_attempts=None) == [r.id for r in taken]
    mem.append("q", [b"y"] * 100, [1] * 100, 0.0)
    return mem


def test_a_take_reads_no_delayed_record_that_is_not_due() -> None:
    mem = _with_delayed(50_000)
    tracemalloc.start()
    try:
        for lease in (Lease("v", 50.0), None):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            (got,) = mem.take("q", 1, 10.0, lease)
            # A list of the 50,000 delayed ids alone would be 400 KB.
            assert tracemalloc.get_traced_memory()[1] - before < 64 << 10
            assert got.data == b"y"
    finally:
        tracemalloc.stop()


def test_delayed_records_come_due_in_id_order_and_count_among_the_ready() -> None:
    mem = MemoryEngine()
    ids = mem.append("q", [b"a", b"b", b"c", b"d", b"e"], [1] * 5, 0.0)
    taken = mem.take("q", 4, 0.0, Lease("w", 100.0))
    assert mem.release("q", [(ids[0], 1), (ids[2], 1)], "w", not_before=30.0,
                       max_attempts=None) == [ids[0], ids[2]]
    assert mem.release("q", [(ids[1], 1)], "w", not_before=20.0,
                       max_attempts=None) == [ids[1]]
    assert mem.release("q", [(ids[3], 1)], "w", not_before=0.0,
                       max_attempts=None) == [ids[3]]
    assert len(taken) == 4
    assert mem.counts("q").ready == 5
    assert [r.id for r in mem.peek("q", 10)] == ids
    assert [r.id for r in mem.peek("q", 2, 2)] == ids[2:4]
    assert [r.id for r in mem.take("q", 10, 10.0, None)] == [ids[3], ids[4]]
    assert [r.id for r in mem.take("q", 10, 25.0, Lease("v", 100.0))] == [ids[1]]
    assert mem.counts("q").ready == 2
    # A take at an earlier time (a clock set back) does not see what is not due then.
    assert mem.take("q", 10, 5.0, None) == []
    assert mem.move("q", "r", [ids[2]]) == 1
    assert mem.counts("q").ready == 1
    assert [r.data for r in mem.peek("r", 10)] == [b"c"]
    assert [r.id for r in mem.take("q", 10, 30.0, None)] == [ids[0]]
    again = MemoryEngine.load(*_with_delayed(3).export())
    assert again.counts("q").ready == 103
    assert len(again.take("q", 200, 10.0, None)) == 100
    assert len(again.take("q", 200, 1e9, None)) == 3
