"""The postgres engine given text its columns cannot hold (NUL), names and owners of other
types, deliveries of floats and times beyond every float: refused by name before anything
changes, or found to name nothing, as the SQLite engine finds them."""

from __future__ import annotations

import os
from typing import Any

import pytest

if not os.environ.get("SPOOLQ_REQUIRE_POSTGRES"):
    pytest.importorskip("psycopg", reason="psycopg is not installed (spoolq[postgres])")

from spoolq.engines import Lease, StoredRecord
from spoolq.engines.postgres import PostgresEngine

from . import pg_support

engine = pg_support.engine  # the fixture: an engine on the test's own schema


@pytest.fixture
def held(engine: PostgresEngine) -> PostgresEngine:
    """The engine holding queue "q": record 1 leased by "o" (attempts 1), 2 and 3 ready;
    the metadata k = v."""
    assert engine.append("q", [b"a", b"b", b"c"], [1, 1, 1], 1.0) == [1, 2, 3]
    engine.take("q", 1, 2.0, Lease("o", 90.0))
    engine.set_meta("k", b"v")
    return engine


def _state(eng: PostgresEngine) -> tuple[object, ...]:
    # PostgreSQL keeps times relative to its own clock: read back on a loaded machine they
    # move by a few ms, across a rounding edge of 2 decimals (90.0 came back as 90.01).
    leased = [(r.record, r.owner, round(r.until, 1)) for r in eng.peek_leased("q", 9)]
    return (eng.counts("q"), eng.peek("q", 9), leased, eng.counts("q.dead"),
            eng.peek("q.dead", 9), sorted(eng.queues()), eng.get_meta("k"))


@pytest.mark.parametrize("call, what", [
    (lambda e: e.take("q", 1, 5.0, Lease("a\0b", 90.0)), "a lease owner"),
    (lambda e: e.append("q\0", [b"x"], [1], 3.0), "a queue name"),
    (lambda e: e.move("q", "r\0"), "a queue name"),
    (lambda e: e.restore("q\0", [StoredRecord(1, b"a", 1, 0, 1.0)]), "a queue name"),
    (lambda e: e.restore("q", [StoredRecord(1, b"a", 1, 0, 1.0, "why\0")]), "a reason"),
    (lambda e: e.release("q", [(1, 1)], "o", not_before=0.0, max_attempts=1,
                         reason="why\0"), "a reason"),
    (lambda e: e.set_meta("k\0", b"w"), "a metadata key"),
], ids=["owner", "append-name", "move-destination", "restore-name", "restore-reason",
        "release-reason", "meta-key"])
def test_text_holding_nul_is_refused_by_name_and_changes_nothing(
        held: PostgresEngine, call: Any, what: str) -> None:
    """PostgreSQL's text holds no NUL: the call failed with an EngineError from the server
    (or, for a reason, only once a record was buried)."""
    before = _state(held)
    with pytest.raises(ValueError, match=f"{what} holding NUL cannot be stored by the "
                                         "PostgreSQL engine.*nothing was changed"):
        call(held)
    assert _state(held) == before


def test_names_owners_and_keys_holding_nul_name_nothing(held: PostgresEngine) -> None:
    before = _state(held)
    name = "q\0"
    assert held.counts(name) == (0, 0, 0, 0)
    assert held.peek(name, 5) == held.peek_leased(name, 5) == []
    assert held.owners(name) == {}
    assert held.take(name, 1, 5.0, None) == []
    assert held.ack(name, [(1, 1)], "o") == []
    assert held.release(name, [(1, 1)], "o", not_before=0.0, max_attempts=None) == []
    assert held.expire(name, 100.0) == 0
    assert held.move(name, "r") == 0
    assert held.purge(name) == 0
    assert held.ack("q", [(1, 1)], "o\0") == []
    assert held.release("q", [(1, 1)], "o\0", not_before=0.0, max_attempts=1) == []
    assert held.expire("q", 5.0, owners=["o\0"]) == 0
    assert held.get_meta("k\0") is None
    assert _state(held) == before


def test_a_metadata_key_of_another_type_finds_nothing(held: PostgresEngine) -> None:
    """As in the SQLite engine; PostgreSQL failed to compare text with bytea."""
    key: Any = b"k"
    assert held.get_meta(key) is None
    assert held.get_meta("k") == b"v"


def test_deliveries_of_floats_hold_no_lease(held: PostgresEngine) -> None:
    """As in the SQLite engine: (1.0, 1) is not the delivery (1, 1), which PostgreSQL
    found by casting the float."""
    before = _state(held)
    one: Any = 1.0
    assert held.ack("q", [(one, 1)], "o") == []
    assert held.ack("q", [(1, one)], "o") == []
    assert held.release("q", [(one, 1)], "o", not_before=0.0, max_attempts=1) == []
    assert _state(held) == before
    assert held.ack("q", [(1, 1)], "o") == [1]


def test_expire_at_an_int_beyond_every_float_is_a_time_all_the_same(
        held: PostgresEngine) -> None:
    """Taking the caller's clock from it failed with OverflowError."""
    assert held.expire("q", -10**400) == 0
    assert held.expire("r", 10**400) == 0
    assert held.expire("q", 10**400) == 1
    assert held.counts("q") == (3, 0, 3, 3)


def test_a_release_checks_its_reason_and_max_attempts_holding_no_delivery(
        held: PostgresEngine) -> None:
    """As in the SQLite engine, a release of no delivery refuses them all the same."""
    reason: Any = b"why"
    with pytest.raises(TypeError, match="a reason must be a str, not bytes"):
        held.release("q", [], "o", not_before=0.0, max_attempts=1, reason=reason)
    most: Any = 0.5
    with pytest.raises(TypeError, match="max_attempts must be an int, not float"):
        held.release("q", [], "o", not_before=0.0, max_attempts=most)
