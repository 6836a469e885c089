"""How the SQLite engine moves ready records to the tail of another queue (or of their
own) as new records. :class:`Moving` is a mixin of
:class:`~spoolq.engines.sqlite.SQLiteEngine`; the move is one write transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import EngineError
from . import _sqlite_sql as sql
from ._checks import checked_ids
from ._sqlite_sql import CHUNK, MASK, SHIFT, json_list
from .base import as_queue_name

__all__ = ["Moving"]

R = TypeVar("R")


class Moving:
    """``move``, for :class:`SQLiteEngine`."""

    if TYPE_CHECKING:
        path: str

        def _txn(self, what: str, body: Callable[..., R], *args: Any) -> R: ...

        def _find_qno(self, conn: sqlite3.Connection, queue: str) -> int | None: ...

        def _allocate(self, conn: sqlite3.Connection, queue: str, n: int, stored: int,
                      raw: int) -> tuple[int, int]: ...

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        return self._txn("move", self._move, src, as_queue_name(dst), checked_ids(ids))

    def _move(self, conn: sqlite3.Connection, src: str, dst: str,
              ids: Sequence[int] | None) -> int:
        qno = self._find_qno(conn, src)
        if qno is None:
            return 0
        lo, hi = qno << SHIFT, (qno << SHIFT) | MASK
        chosen: tuple[Any, ...]
        if ids is None:
            sizes, select, chosen = sql.MOVE_ALL_SIZES, sql.MOVE_ALL_IDS, (lo, hi)
        else:
            sizes, select = sql.MOVE_SIZES, sql.MOVE_IDS
            chosen = (lo, json_list(sorted({i for i in ids if 0 < i <= MASK})))
        n, stored, raw = conn.execute(sizes, chosen).fetchone()
        if not n:
            return 0
        base, last = self._allocate(conn, dst, n, stored, raw)
        new_id = base | (last - n + 1)
        # Rows are moved in id order, a chunk at a time. The new rows (in dst, which may be
        # src) get ids above every old one, so the first `left` rows still chosen are old.
        after, left = lo - 1, n
        while left:
            chunk = [r[0] for r in conn.execute(select, (*chosen, after, min(left, CHUNK)))]
            if not chunk:
                raise EngineError(f"{self.path}: a move counted {n} records but found "
                                  f"{n - left}")
            conn.executemany(sql.MOVE_ROW, zip(range(new_id, new_id + len(chunk)), chunk,
                                                strict=True))
            conn.execute("DELETE FROM spoolq_records WHERE id IN " + sql.IN_JSON,
                         (json_list(chunk),))
            new_id += len(chunk)
            left -= len(chunk)
            after = chunk[-1]
        conn.execute(sql.COUNTS, (-n, 0, -stored, -raw, src))
        return int(n)
