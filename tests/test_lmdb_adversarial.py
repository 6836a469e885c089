"""The LMDB engine under hostile use: odd arguments, ids it gives out during a call."""

from __future__ import annotations

from pathlib import Path

from spoolq.engines import LMDBEngine


def test_a_move_onto_its_own_queue_moves_each_record_once(tmp_path: Path) -> None:
    """A move of a queue's ids onto that queue gives the moved records new ids: an id
    among those asked for that the move itself gave out was moved a second time."""
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        first, second = eng.append("q", [b"a", b"b"], [1, 1], 1.0)
        # The move gives a the id 3 and b the id 4, which are asked for too.
        assert eng.move("q", "q", [first, second, second + 1, second + 2]) == 2
        assert [(r.id, r.data) for r in eng.peek("q", 5)] == [(3, b"a"), (4, b"b")]
        assert eng.counts("q") == (2, 0, 2, 2)
    finally:
        eng.close()
