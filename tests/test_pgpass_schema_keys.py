"""The postgres engine opening a schema whose tables another program altered so that its
statements cannot run: a key or the records' identity gone is refused at open, naming
what is missing, rather than failing every put or take with a message about SQL."""

from __future__ import annotations

import os

import pytest

import spoolq

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

from psycopg import sql

from spoolq.engines.postgres import PostgresEngine

from . import pg_support
from .pg_support import execute

engine = pg_support.engine  # the fixture: an engine on the test's own schema


@pytest.mark.parametrize(("damage", "named"), [
    # Every put and take adds to a counter stripe with ON CONFLICT (queue, slot).
    ("ALTER TABLE {}.counts DROP CONSTRAINT counts_pkey", r"counts \(queue, slot\)"),
    # A restore of an id the queue holds was accepted: two records of one id.
    ("ALTER TABLE {}.records DROP CONSTRAINT records_pkey", r"records \(queue, id\)"),
    # set_meta upserts by key.
    ("ALTER TABLE {}.meta DROP CONSTRAINT meta_pkey", r"meta \(key\)"),
    # A unique key on other columns is no key of the queue.
    ("ALTER TABLE {0}.counts DROP CONSTRAINT counts_pkey; "
     "ALTER TABLE {0}.counts ADD UNIQUE (queue, slot, ready)", r"counts \(queue, slot\)"),
    # Every put failed: null value in column "id".
    ("ALTER TABLE {}.records ALTER COLUMN id DROP IDENTITY", "records.id"),
])
def test_a_schema_whose_keys_were_dropped_is_refused_at_open(
        engine: PostgresEngine, pg_url: str, pg_schema: str, damage: str, named: str) -> None:
    engine.append("q", [b"x"], [1], 1.0)
    for statement in damage.split("; "):
        execute(pg_url, sql.SQL(statement).format(sql.Identifier(pg_schema)))
    with pytest.raises(spoolq.FormatError, match=f"damaged: .*{named}"):
        PostgresEngine(pg_url, schema=pg_schema)
    with pytest.raises(spoolq.FormatError, match=f"damaged: .*{named}"):
        PostgresEngine(pg_url, schema=pg_schema, read_only=True)


def test_keys_of_other_names_or_a_unique_index_still_open(
        engine: PostgresEngine, pg_url: str, pg_schema: str) -> None:
    """What the statements need is a unique key on those columns, whatever its name or
    kind: a primary key recreated under another name, or a unique index, is one."""
    engine.append("q", [b"x"], [1], 1.0)
    for statement in ("ALTER TABLE {}.counts DROP CONSTRAINT counts_pkey",
                      "CREATE UNIQUE INDEX counts_key ON {}.counts (slot, queue)",
                      "ALTER TABLE {}.meta DROP CONSTRAINT meta_pkey",
                      "ALTER TABLE {}.meta ADD CONSTRAINT meta_key PRIMARY KEY (key)"):
        execute(pg_url, sql.SQL(statement).format(sql.Identifier(pg_schema)))
    again = PostgresEngine(pg_url, schema=pg_schema)
    try:
        again.append("q", [b"y"], [1], 2.0)
        again.set_meta("k", b"v")
        again.set_meta("k", b"w")
        assert again.get_meta("k") == b"w"
        assert [r.data for r in again.take("q", 5, 3.0, None)] == [b"x", b"y"]
        assert again.counts("q") == (0, 0, 0, 0)
    finally:
        again.close()


@pytest.mark.parametrize(("damage", "calls"), [
    ("ALTER TABLE {}.records DROP COLUMN reason", ("take",)),
    ("ALTER TABLE {}.counts DROP COLUMN raw_bytes", ("append", "take", "counts")),
    ("ALTER TABLE {}.counts DROP CONSTRAINT counts_pkey", ("append", "take")),
])
def test_tables_altered_while_a_queue_is_open_fail_its_calls_with_a_format_error(
        engine: PostgresEngine, pg_url: str, pg_schema: str, damage: str,
        calls: tuple[str, ...]) -> None:
    """As for tables dropped while open: a column or key gone is no failed statement
    (EngineError quoting SQL) but tables that are no longer a spoolq queue."""
    engine.append("q", [b"x"], [1], 1.0)
    execute(pg_url, sql.SQL(damage).format(sql.Identifier(pg_schema)))
    run = {"append": lambda: engine.append("q", [b"y"], [1], 2.0),
           "take": lambda: engine.take("q", 1, 3.0, None),
           "counts": lambda: engine.counts("q")}
    for call in calls:
        with pytest.raises(spoolq.FormatError, match="tables were altered"):
            run[call]()
