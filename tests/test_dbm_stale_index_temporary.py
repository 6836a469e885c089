"""The temporary index a process killed while repairing a ``dbm.dumb`` index leaves
(``gen-NNNNNN.dir.tmp``, named after the live generation) is removed by the next open that
holds the queue's lock, and left alone by a read-only open, which never writes."""

from __future__ import annotations

from pathlib import Path

from spoolq.engines import DBMEngine


def _live(path: Path) -> str:
    return (path / "CURRENT").read_text(encoding="ascii").split()[-1]


def _records(eng: DBMEngine) -> list[bytes]:
    return [r.data for r in eng.peek("q", 10)]


def test_temporary_index_of_the_live_generation_is_removed_by_a_writable_open(
        tmp_path: Path) -> None:
    path = tmp_path / "q.dbm"
    eng = DBMEngine(path)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 1.0)
    finally:
        eng.close()
    live = _live(path)
    before = sorted(p.name for p in path.iterdir())
    assert any(name.startswith(live + ".") for name in before)
    leftover = path / f"{live}.dir.tmp"
    # What a repair cut short leaves: the first lines of the index it was writing.
    leftover.write_bytes((path / f"{live}.dir").read_bytes()[:10])

    reader = DBMEngine(path, read_only=True)
    try:
        assert _records(reader) == [b"a", b"b"]
    finally:
        reader.close()
    assert leftover.exists()

    eng = DBMEngine(path)
    try:
        assert _records(eng) == [b"a", b"b"]
    finally:
        eng.close()
    assert not leftover.exists()
    assert _live(path) == live
    assert sorted(p.name for p in path.iterdir()) == before
    eng = DBMEngine(path)
    try:
        assert _records(eng) == [b"a", b"b"]
    finally:
        eng.close()
