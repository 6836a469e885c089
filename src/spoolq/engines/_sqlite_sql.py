"""The statements the SQLite engine runs (the tables are in ``_sqlite_schema``).

All are parameterized; lists travel as JSON arrays through ``json_each``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "ACK_ANY", "ALLOCATE", "BUMP", "BURY_ROW", "CHUNK", "COLUMNS", "COUNTS", "DATA", "HELD",
    "HELD_IDS", "INSERT", "INSERT_NEXT", "INSERT_ROWS", "IN_JSON", "LEASED_LENGTHS",
    "LEASE_COPY", "LEASE_REMOVE", "MASK", "MAX_QNO", "MAX_REASON", "MOVE_ALL_IDS",
    "MOVE_ALL_SIZES", "MOVE_IDS", "MOVE_ROW", "MOVE_SIZES", "NEW_QUEUE", "READY", "READY_ROWS",
    "REMOVE_RANGE", "ROWS_PER_INSERT", "ROW_ROOM", "SHIFT", "TOP_QNO", "json_list",
]

# A record's row id is ``queue number << SHIFT | sequence``.
SHIFT = 40
MASK = (1 << SHIFT) - 1
MAX_QNO = (1 << (63 - SHIFT)) - 1  # the largest queue number: its ids stay below 2**63
CHUNK = 512  # ids a move or an expire reads at a time
# A row holds at most SQLite's length limit of bytes, all its columns together. A record
# may take all but ROW_ROOM of them; the rest holds the row's other columns (64 bytes at
# most), a lease's owner (448) and a dead letter's reason, kept to MAX_REASON bytes.
ROW_ROOM = 1024
MAX_REASON = 512


def json_list(values: Sequence[Any]) -> str:
    return json.dumps(list(values))


TOP_QNO = "SELECT coalesce(max(qno), 0) FROM spoolq_queues"
NEW_QUEUE = "INSERT INTO spoolq_queues (name, qno) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"
ALLOCATE = """UPDATE spoolq_queues SET last_seq = last_seq + ?1, ready = ready + ?1,
    stored_bytes = stored_bytes + ?2, raw_bytes = raw_bytes + ?3 WHERE name = ?4
    RETURNING last_seq"""
COUNTS = """UPDATE spoolq_queues SET ready = ready + ?, leased = leased + ?,
    stored_bytes = stored_bytes + ?, raw_bytes = raw_bytes + ? WHERE name = ?"""
INSERT = """INSERT INTO spoolq_records (id, enqueued_at, raw_size, data) VALUES (?, ?, ?, ?)"""
# One record: the sequence is bumped, then read back inside the INSERT, and the id comes
# from the cursor. A RETURNING clause costs a single put a sixth of its time.
BUMP = """UPDATE spoolq_queues SET last_seq = last_seq + 1, ready = ready + 1,
    stored_bytes = stored_bytes + ?, raw_bytes = raw_bytes + ? WHERE name = ?"""
INSERT_NEXT = """INSERT INTO spoolq_records (id, enqueued_at, raw_size, data)
    VALUES ((SELECT last_seq FROM spoolq_queues WHERE name = ?) | ?, ?, ?, ?)"""
# A batch goes in as multi-row INSERTs of these sizes, largest first: a third less time per
# row than executemany's one row per step, with a fixed handful of statements to cache.
ROWS_PER_INSERT = (64, 16, 4, 1)
INSERT_ROWS = {k: INSERT + ", (?, ?, ?, ?)" * (k - 1) for k in ROWS_PER_INSERT}
# A record is read as the bytes it holds whatever the type of its value: a file another
# program wrote into, or a damaged type byte, can hold text or a number there, which the
# codec then refuses as any damaged record (text that is not UTF-8 failed every take).
DATA = "coalesce(CAST(data AS BLOB), x'')"
COLUMNS = "id, " + DATA + ", raw_size, attempts, enqueued_at, reason"
READY = """SELECT id FROM spoolq_records WHERE id BETWEEN ? AND ? AND visible_at <= ?
    ORDER BY id LIMIT ?"""
# The queue's own ids (the full id less the queue's base, ?1): rows become records as
# they are.
READY_ROWS = """SELECT id - ?1, """ + DATA + """, raw_size, attempts, enqueued_at, reason
    FROM spoolq_records WHERE id BETWEEN ?1 AND ?2 AND visible_at <= ?3 ORDER BY id LIMIT ?4"""
# The first n ready rows are every ready row from the first one to the last one: deleting
# that range with the same filter removes exactly them (a quarter faster than a DELETE of
# the READY selection with RETURNING).
REMOVE_RANGE = "DELETE FROM spoolq_records WHERE id BETWEEN ? AND ? AND visible_at <= ?"
LEASE_COPY = """INSERT INTO spoolq_leased
    (id, owner, until, attempts, enqueued_at, raw_size, reason, data)
    SELECT id, ?, ?, attempts + 1, enqueued_at, raw_size, reason, data FROM spoolq_records
    WHERE id IN (""" + READY + ")"
# The same READY selection as LEASE_COPY: nothing in spoolq_records changed in between.
LEASE_REMOVE = ("DELETE FROM spoolq_records WHERE id IN (" + READY + ") "
                 "RETURNING id, " + DATA + ", raw_size, attempts + 1, enqueued_at, reason")
ACK_ANY = """DELETE FROM spoolq_leased WHERE owner = ?
    AND id IN (SELECT ? + value FROM json_each(?)) RETURNING id, attempts, length(data), raw_size"""
HELD = """SELECT id FROM spoolq_leased WHERE owner = ?
    AND (id, attempts) IN (SELECT ? + json_extract(value, '$[0]'), json_extract(value, '$[1]')
                           FROM json_each(?))"""
IN_JSON = "(SELECT value FROM json_each(?))"
# Any of the queue's ids (a base, then a JSON array of ids within the queue) it holds,
# ready or leased.
HELD_IDS = """SELECT id FROM spoolq_records WHERE id IN (SELECT ? + value FROM json_each(?))
    UNION ALL SELECT id FROM spoolq_leased WHERE id IN (SELECT ? + value FROM json_each(?))
    LIMIT 1"""

# Moving records copies each row inside SQLite, one statement per row, so no record passes
# through Python and a move of a whole queue needs no memory in proportion to it.
# The sizes come first (to reserve the new ids), then the ids, a chunk at a time.
MOVE_ALL_SIZES = """SELECT count(*), coalesce(sum(length(data)), 0), coalesce(sum(raw_size), 0)
    FROM spoolq_records WHERE id BETWEEN ? AND ?"""
MOVE_ALL_IDS = """SELECT id FROM spoolq_records WHERE id BETWEEN ? AND ? AND id > ?
    ORDER BY id LIMIT ?"""
MOVE_SIZES = """SELECT count(*), coalesce(sum(length(data)), 0), coalesce(sum(raw_size), 0)
    FROM spoolq_records WHERE id IN (SELECT ? + value FROM json_each(?))"""
MOVE_IDS = """SELECT id FROM spoolq_records WHERE id IN (SELECT ? + value FROM json_each(?))
    AND id > ? ORDER BY id LIMIT ?"""
MOVE_ROW = """INSERT INTO spoolq_records (id, enqueued_at, raw_size, data)
    SELECT ?, enqueued_at, raw_size, data FROM spoolq_records WHERE id = ?"""
LEASED_LENGTHS = """SELECT length(data), raw_size FROM spoolq_leased
    WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id"""
BURY_ROW = """INSERT INTO spoolq_records (id, attempts, enqueued_at, raw_size, reason, data)
    SELECT ?, attempts, enqueued_at, raw_size, ?, data FROM spoolq_leased WHERE id = ?"""
