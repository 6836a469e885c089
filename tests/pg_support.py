"""What the PostgreSQL test modules share: an engine on the test's own schema, and a
statement run on a connection of its own."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from spoolq.engines.postgres import PostgresEngine


@pytest.fixture
def engine(pg_url: str, pg_schema: str) -> Iterator[PostgresEngine]:
    eng = PostgresEngine(pg_url, schema=pg_schema)
    try:
        yield eng
    finally:
        eng.close()


def execute(url: str, statement: sql.Composable, *params: object) -> None:
    """Run ``statement`` in autocommit mode on a new connection to ``url``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params or None)
