"""The PostgreSQL engine and times that are not times: what the conformance suite leaves
to each engine (an expiry at NaN), and the store after a refused call, read on the
server itself."""

from __future__ import annotations

import math
import os

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

import psycopg
from psycopg import sql

from spoolq import EngineError
from spoolq.engines import Lease
from spoolq.engines.postgres import PostgresEngine

from . import pg_support

engine = pg_support.engine  # the fixture: an engine on the test's own schema


def test_an_expiry_at_a_nan_time_expires_no_lease_by_time(engine: PostgresEngine) -> None:
    """As in the file engines: leases of a dead owner still go back, none runs out at a
    time that is not one. The engine failed the call ("interval out of range"), so a
    dead owner's leases stayed held."""
    engine.append("q", [b"a", b"b"], [1, 1], 1.0)
    engine.take("q", 1, 2.0, Lease("alive", 3.0))
    engine.take("q", 1, 2.0, Lease("dead", 3.0))
    assert engine.expire("q", math.nan) == 0
    assert engine.expire("q", math.nan, owners=["dead"]) == 1
    assert engine.counts("q")[:2] == (1, 1)
    assert engine.owners("q") == {"alive": 1}


def test_a_refused_append_uses_no_id_and_names_the_time(engine: PostgresEngine, pg_url: str,
                                                        pg_schema: str) -> None:
    """The refusal comes before the insert: no row, and no id of the identity used up."""
    assert engine.append("q", [b"a"], [1], 1.0) == [1]
    with pytest.raises(EngineError, match="append failed: now is NaN"):
        engine.append("q", [b"b"], [1], math.nan)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.records").format(
            sql.Identifier(pg_schema))).fetchone()
    assert row == (1,)
    assert engine.append("q", [b"c"], [1], 2.0) == [2]
