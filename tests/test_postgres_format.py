"""The postgres engine's format version: recorded in ``meta`` like every engine's, recorded
on open for a schema of an earlier release (which recorded only ``schema_version``),
checked on open, and shown by ``spoolq info``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

import spoolq

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from spoolq.engines import Lease
from spoolq.engines.postgres import PostgresEngine

from .cli_support import run, run_json
from .pg_support import execute, meta_reader_role


def _meta(url: str, schema: str) -> dict[str, bytes]:
    with psycopg.connect(url) as conn:
        return {key: bytes(value) for key, value in conn.execute(
            sql.SQL("SELECT key, value FROM {}.meta").format(sql.Identifier(schema)))}


def _rows(url: str, schema: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row of the records and counts tables, with the transaction that wrote it
    and where it lies: a row rewritten, even to the same values, shows."""
    ident = sql.Identifier(schema)
    with psycopg.connect(url) as conn:
        records = conn.execute(sql.SQL(
            "SELECT xmin::text, ctid::text, id, queue, leased, attempts, owner, data "
            "FROM {}.records ORDER BY queue, id").format(ident)).fetchall()
        counts = conn.execute(sql.SQL(
            "SELECT xmin::text, ctid::text, * FROM {}.counts ORDER BY queue, slot"
        ).format(ident)).fetchall()
    return records, counts


def _set_meta(url: str, schema: str, key: str, value: bytes | None) -> None:
    ident = sql.Identifier(schema)
    if value is None:
        execute(url, sql.SQL("DELETE FROM {}.meta WHERE key = %s").format(ident), key)
    else:
        execute(url, sql.SQL("UPDATE {}.meta SET value = %s WHERE key = %s").format(ident),
                value, key)


@pytest.fixture
def earlier(pg_url: str, pg_schema: str) -> Iterator[str]:
    """A schema as an earlier release left it: records ready, leased and dead, and a
    ``meta`` that records ``schema_version`` but no ``format_version``."""
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        now = time.time()
        eng.append("jobs", [b"a", b"b", b"c"], [1, 1, 1], now)
        leased = eng.take("jobs", 1, now, Lease("elsewhere.invalid:1:0:x", now + 3600))
        eng.release("jobs", [(leased[0].id, leased[0].attempts)], "elsewhere.invalid:1:0:x",
                    not_before=now, max_attempts=1)
        eng.take("jobs", 1, now, Lease("elsewhere.invalid:1:0:x", now + 3600))
    finally:
        eng.close()
    _set_meta(pg_url, pg_schema, "format_version", None)
    assert "format_version" not in _meta(pg_url, pg_schema)
    assert _meta(pg_url, pg_schema)["schema_version"] == b"1"
    yield pg_schema


# ---- a new schema --------------------------------------------------------------------------

def test_a_new_schema_records_its_format_version(pg_url: str, pg_schema: str) -> None:
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        assert eng.get_meta("format_version") == b"1"
    finally:
        eng.close()
    meta = _meta(pg_url, pg_schema)
    assert meta["format_version"] == b"1"
    # Releases that came before the format version read this key alone.
    assert meta["schema_version"] == b"1"


def test_info_shows_the_format_version(pg_url: str, pg_schema: str) -> None:
    PostgresEngine(pg_url, schema=pg_schema).close()
    report = run_json("info", pg_url, "--schema", pg_schema)
    assert (report["engine"], report["format_version"]) == ("postgres", "1")
    result = run("info", pg_url, "--schema", pg_schema)
    assert result.exit_code == 0, result.output
    assert "postgres engine, format version 1," in result.stdout


# ---- a schema of an earlier release ----------------------------------------------------------

def test_a_schema_of_an_earlier_release_gets_its_version_recorded_and_keeps_its_records(
        pg_url: str, earlier: str) -> None:
    before, meta = _rows(pg_url, earlier), _meta(pg_url, earlier)
    eng = PostgresEngine(pg_url, schema=earlier)
    try:
        assert _meta(pg_url, earlier) == {**meta, "format_version": b"1"}
        assert _rows(pg_url, earlier) == before  # no record or count rewritten
        assert eng.get_meta("format_version") == b"1"
        assert eng.counts("jobs")[:2] == (1, 1)
        assert [r.data for r in eng.peek("jobs", 5)] == [b"c"]
        assert [r.data for r in eng.peek("jobs.dead", 5)] == [b"a"]
        assert eng.append("jobs", [b"d"], [1], time.time())[0] > max(r[2] for r in before[0])
    finally:
        eng.close()
    assert run_json("info", pg_url, "--schema", earlier)["format_version"] == "1"


def test_a_schema_of_an_earlier_release_opened_read_only_is_left_as_it_is(
        pg_url: str, earlier: str) -> None:
    """A read-only open writes nothing, and reports the version all the same: a schema
    that records none is of version 1."""
    before, meta = _rows(pg_url, earlier), _meta(pg_url, earlier)
    eng = PostgresEngine(pg_url, schema=earlier, read_only=True)
    try:
        assert eng.get_meta("format_version") == b"1"
        assert eng.get_meta("no such key") is None
        assert [r.data for r in eng.peek("jobs", 5)] == [b"c"]
    finally:
        eng.close()
    report = run_json("info", pg_url, "--schema", earlier)
    assert report["format_version"] == "1"
    assert report["queues"][0]["ready"] == 1
    assert (_rows(pg_url, earlier), _meta(pg_url, earlier)) == (before, meta)


def test_a_schema_of_an_earlier_release_opens_for_a_role_that_may_not_write_meta(
        pg_url: str, earlier: str, caplog: pytest.LogCaptureFixture) -> None:
    """Recording the version is a courtesy: an application granted SELECT on ``meta``
    alone opened such a schema before, and still does."""
    caplog.set_level(logging.INFO, logger="spoolq")
    with meta_reader_role(pg_url, earlier, f"{earlier}_app") as app_url:
        eng = PostgresEngine(app_url, schema=earlier)
        try:
            assert eng.get_meta("format_version") == b"1"
            eng.append("jobs", [b"d"], [1], time.time())
            assert [r.data for r in eng.peek("jobs", 5)] == [b"c", b"d"]
        finally:
            eng.close()
        assert "format_version" not in _meta(pg_url, earlier)
        assert "format version" in caplog.text


def test_a_schema_of_an_earlier_release_opens_in_a_read_only_session(
        pg_url: str, earlier: str) -> None:
    """A writable engine on a server that takes no writes (a standby) opened such a
    schema before, and failed only at its first write; it still does."""
    url = make_conninfo(pg_url, options="-c default_transaction_read_only=on")
    eng = PostgresEngine(url, schema=earlier)
    try:
        assert eng.get_meta("format_version") == b"1"
        assert [r.data for r in eng.peek("jobs", 5)] == [b"c"]
    finally:
        eng.close()
    assert "format_version" not in _meta(pg_url, earlier)


# ---- a schema of another version ------------------------------------------------------------

@pytest.mark.parametrize(("format_version", "schema_version"), [
    (b"2", b"1"),  # a later release that keeps the layout earlier releases read
    (b"2", b"2"),  # one that tells earlier releases too
    (b"10", None),
    (b"x", b"1"),
])
def test_a_schema_of_another_format_version_is_refused_and_left_alone(
        pg_url: str, pg_schema: str, format_version: bytes,
        schema_version: bytes | None) -> None:
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        eng.append("jobs", [b"a"], [1], time.time())
    finally:
        eng.close()
    _set_meta(pg_url, pg_schema, "format_version", format_version)
    _set_meta(pg_url, pg_schema, "schema_version", schema_version)
    before, meta = _rows(pg_url, pg_schema), _meta(pg_url, pg_schema)
    shown = format_version.decode()
    for read_only in (False, True):
        with pytest.raises(spoolq.FormatError,
                           match=f"has format version {shown}; this spoolq reads version 1$"):
            PostgresEngine(pg_url, schema=pg_schema, read_only=read_only)
    result = run("info", pg_url, "--schema", pg_schema)
    assert result.exit_code == 3
    assert f"format version {shown}" in result.output
    assert (_rows(pg_url, pg_schema), _meta(pg_url, pg_schema)) == (before, meta)


def test_a_schema_recording_neither_version_is_not_a_queue(pg_url: str, pg_schema: str) -> None:
    PostgresEngine(pg_url, schema=pg_schema).close()
    _set_meta(pg_url, pg_schema, "format_version", None)
    _set_meta(pg_url, pg_schema, "schema_version", None)
    with pytest.raises(spoolq.FormatError, match="not a spoolq queue"):
        PostgresEngine(pg_url, schema=pg_schema)
    assert "format_version" not in _meta(pg_url, pg_schema)
