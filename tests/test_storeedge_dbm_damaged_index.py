"""A dbm queue whose ``dbm.dumb`` index and its backup are both cut short (a copy that
stopped, a damaged disk) is refused, not opened at an older state with the records the
lost lines named dropped by a compaction. A process killed while writing the index
never damages the backup, and still opens."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import spoolq
from spoolq.errors import CorruptError


def _queue(path: str, n: int = 50) -> str:
    with spoolq.SyncQueue.create(path, engine="dbm") as q:
        q.put_many([{"i": i} for i in range(n)])
    [gen] = {name.split(".")[0] for name in os.listdir(path) if name.startswith("gen-")}
    if not os.path.exists(os.path.join(path, gen + ".bak")):
        pytest.skip("the dbm backend is not dbm.dumb")
    return os.path.join(path, gen)


def _cut(name: str, by: int) -> None:
    with open(name, "r+b") as f:
        f.truncate(os.path.getsize(name) - by)


def _snapshot(path: str) -> dict[str, bytes]:
    return {n: Path(path, n).read_bytes() for n in sorted(os.listdir(path))}


@pytest.mark.parametrize("by", [3, 45])
def test_index_and_backup_both_cut_short_are_refused(tmp_path: Path, by: int) -> None:
    path = str(tmp_path / "q.dbm")
    base = _queue(path)
    _cut(base + ".dir", by)
    _cut(base + ".bak", by)
    before = _snapshot(path)
    with pytest.raises(CorruptError, match="index"):
        spoolq.SyncQueue.create(path, engine="dbm")
    assert _snapshot(path) == before  # left as it is
    # Asked to, it opens at the last state the index still names.
    with spoolq.SyncQueue.create(path, engine="dbm", engine_options={"recover": True}) as q:
        assert q.qsize() in range(51)


def test_index_cut_short_with_a_whole_backup_still_opens(tmp_path: Path) -> None:
    path = str(tmp_path / "q.dbm")
    base = _queue(path)
    _cut(base + ".dir", 3)  # a killed rewrite of the index: the backup holds it all
    with spoolq.SyncQueue.create(path, engine="dbm") as q:
        assert q.qsize() == 50


def test_a_torn_last_line_after_a_whole_backup_still_opens(tmp_path: Path) -> None:
    path = str(tmp_path / "q.dbm")
    base = _queue(path)
    # A process killed while appending the line of a new key: the backup is an older,
    # whole index (from the last rewrite), the index one torn line longer.
    shutil.copy(base + ".dir", base + ".bak")
    with open(base + ".dir", "ab") as f:
        f.write(b"'m1.50', (266")
    with spoolq.SyncQueue.create(path, engine="dbm") as q:
        assert q.qsize() == 50
