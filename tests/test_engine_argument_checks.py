"""Engines called directly with arguments of the wrong type or out of range: each refuses
them the way the SQLite engine does, naming what is wrong, and leaves the queue as it was."""

from __future__ import annotations

import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolq.engines import Engine, Lease, StoredRecord, SupportsPeekLeased
from spoolq.engines.base import RestoreRefused
from spoolq.errors import EngineError

from .test_engines_limits import _open

ALL = ["memory", "sqlite", "lmdb", "dbm", "pickle", "postgres"]
"""Engines that refuse a call of the tables below the same way. The PostgreSQL engine's
cases are skipped when no server is reachable, and fail then where SPOOLQ_REQUIRE_POSTGRES
is set (see ``pg_url`` in conftest)."""

Call = Callable[[Any], object]


def _state(eng: Engine) -> tuple[object, ...]:
    """What a call could change. A lease's end is rounded: the PostgreSQL engine reads it
    as the time left on the server's clock added to the caller's, a few µs apart (some ms
    on a loaded machine, across a rounding edge of 2 decimals)."""
    assert isinstance(eng, SupportsPeekLeased)
    leased = [(r.record, r.owner, round(r.until, 1)) for r in eng.peek_leased("q", 100)]
    return (eng.counts("q"), eng.peek("q", 100), leased, eng.owners("q"),
            eng.counts("q.dead"), eng.peek("q.dead", 100), eng.counts("r"), eng.peek("r", 100),
            sorted(eng.queues()), eng.get_meta("k"))


@pytest.fixture
def opened(tmp_path: Path,
           request: pytest.FixtureRequest) -> Iterator[Callable[[str], Engine]]:
    """Opens an engine of a kind holding queue "q": records 2 and 3 ready, 1 leased by
    "o" (attempts 1), and the metadata k = v. A PostgreSQL engine gets a schema of its own
    on the server of ``pg_url``."""
    engines: list[Engine] = []

    def open_kind(kind: str) -> Engine:
        if kind == "postgres":
            url, schema = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")
            from spoolq.engines.postgres import PostgresEngine  # psycopg: pg_url skips without

            eng: Engine = PostgresEngine(url, schema=schema)
        else:
            eng = _open(kind, tmp_path)
        engines.append(eng)
        eng.append("q", [b"a", b"b", b"c"], [1, 1, 1], 1.0)
        eng.take("q", 1, 2.0, Lease("o", 90.0))
        eng.set_meta("k", b"v")
        return eng

    yield open_kind
    for eng in engines:
        eng.close()


def _cases(*rows: tuple[str, Call, type[Exception], str, list[str]]) -> list[Any]:
    return [pytest.param(call, error, match, kind, id=f"{label}-{kind}")
            for label, call, error, match, kinds in rows for kind in kinds]


GONE = StoredRecord(1, b"a", 1, 0, 1.0)
NAN = float("nan")
SURROGATE = "q\ud800"
"""A str that cannot be written as UTF-8: no file, server or peer holds it."""


@pytest.mark.parametrize("call, error, match, kind", _cases(
    ("take-float-count", lambda e: e.take("q", 1.5, 5.0, None), TypeError,
     "n must be an int, not float", ALL),
    ("lease-float-count", lambda e: e.take("q", 1.5, 5.0, Lease("p", 90.0)), TypeError,
     "n must be an int, not float", ALL),
    ("take-str-count", lambda e: e.take("q", "1", 5.0, None), TypeError,
     "n must be an int, not str", ALL),
    ("take-infinite-count", lambda e: e.take("q", float("inf"), 5.0, None), TypeError,
     "n must be an int, not float", ALL),
    ("peek-float-count", lambda e: e.peek("q", 1.5), TypeError,
     "n must be an int, not float", ALL),
    ("peek-float-offset", lambda e: e.peek("q", 1, 0.5), TypeError,
     "offset must be an int, not float", ALL),
    ("peek-leased-float-count", lambda e: e.peek_leased("q", 1.5), TypeError,
     "n must be an int, not float", ALL),
    ("peek-str-count", lambda e: e.peek("q", "1"), TypeError,
     "n must be an int, not str", ALL),
    ("peek-str-offset", lambda e: e.peek("q", 1, "0"), TypeError,
     "offset must be an int, not str", ALL),
    ("peek-leased-float-offset", lambda e: e.peek_leased("q", 1, 0.5), TypeError,
     "offset must be an int, not float", ALL),
    ("release-str-max-attempts", lambda e: e.release(
        "q", [(1, 1)], "o", not_before=0.0, max_attempts="1"), TypeError,
     "max_attempts must be an int, not str", ALL),
    ("release-float-max-attempts", lambda e: e.release(
        "q", [(1, 1)], "o", not_before=0.0, max_attempts=0.5), TypeError,
     "max_attempts must be an int, not float", ALL),
    ("expire-str-max-attempts", lambda e: e.expire("q", 100.0, max_attempts="1"), TypeError,
     "max_attempts must be an int, not str", ALL),
    ("expire-float-max-attempts", lambda e: e.expire("q", 100.0, max_attempts=0.5),
     TypeError, "max_attempts must be an int, not float", ALL),
    ("append-text-time", lambda e: e.append("r", [b"x"], [1], "noon"), TypeError, "str",
     ALL),
    ("expire-text-time", lambda e: e.expire("q", "x"), TypeError,
     "now must be a number, not str", ALL),
    ("expire-text-time-no-lease", lambda e: e.expire("r", "x"), TypeError,
     "now must be a number, not str", ALL),
    ("expire-bytes-time-dead-letters", lambda e: e.expire("q.dead", b"1"), TypeError,
     "now must be a number, not bytes", ALL),
    ("expire-str-owners", lambda e: e.expire("q", 5.0, owners="o"), TypeError,
     "owners must be a sequence of str, not str", ALL),
    ("expire-str-owners-no-lease", lambda e: e.expire("r", 5.0, owners="o"), TypeError,
     "owners must be a sequence of str, not str", ALL),
    ("move-str-ids", lambda e: e.move("q", "r", ["2"]), TypeError,
     "a record id must be an int, not str", ALL),
    ("move-float-ids", lambda e: e.move("q", "r", [2.0, 3]), TypeError,
     "a record id must be an int, not float", ALL),
    ("move-float-ids-unknown-queue", lambda e: e.move("new", "r", [1.5]), TypeError,
     "a record id must be an int, not float", ALL),
    ("move-none-among-ids", lambda e: e.move("q", "q", [2, None]), TypeError,
     "a record id must be an int, not NoneType", ALL),
    ("move-str-as-ids", lambda e: e.move("q", "r", "23"), TypeError,
     "ids must be a sequence of ints, not str", ALL),
    ("move-bytes-as-ids", lambda e: e.move("q", "r", b"\x02"), TypeError,
     "ids must be a sequence of ints, not bytes", ALL),
    ("append-bytes-name", lambda e: e.append(b"q", [b"x"], [1], 3.0), TypeError,
     "a queue name must be a str, not bytes", ALL),
    ("append-batch-int-name", lambda e: e.append(7, [b"x", b"y"], [1, 1], 3.0), TypeError,
     "a queue name must be a str, not int", ALL),
    ("append-str-record", lambda e: e.append("r", ["x"], [1], 3.0), TypeError,
     "a record must be bytes, not str", ALL),
    ("append-int-record", lambda e: e.append("r", [5], [1], 3.0), TypeError,
     "a record must be bytes, not int", ALL),
    ("append-batch-str-record", lambda e: e.append("r", [b"x", "y"], [1, 1], 3.0),
     TypeError, "a record must be bytes, not str", ALL),
    ("append-float-raw-size", lambda e: e.append("r", [b"x"], [1.5], 3.0), TypeError,
     "a raw size must be an int, not float", ALL),
    ("append-batch-float-raw-size", lambda e: e.append("r", [b"x", b"y"], [1, 1.5], 3.0),
     TypeError, "a raw size must be an int, not float", ALL),
    ("restore-bytes-name", lambda e: e.restore(b"q", [GONE]), TypeError,
     "a queue name must be a str, not bytes", ALL),
    ("restore-bytes-reason", lambda e: e.restore("q", [GONE._replace(reason=b"why")]),
     TypeError, "a reason must be a str, not bytes", ALL),
    ("restore-str-data", lambda e: e.restore("q", [GONE._replace(data="a")]), TypeError,
     "a record must be bytes, not str", ALL),
    ("restore-str-id", lambda e: e.restore("q", [GONE._replace(id="1")]), TypeError,
     "a record id must be an int, not str", ALL),
    ("restore-text-time", lambda e: e.restore("q", [GONE._replace(enqueued_at="noon")]),
     ValueError, "noon", ALL),
    ("move-bytes-destination", lambda e: e.move("q", b"r"), TypeError,
     "a queue name must be a str, not bytes", ALL),
    ("release-bytes-reason", lambda e: e.release(
        "q", [(1, 1)], "o", not_before=0.0, max_attempts=1, reason=b"why"), TypeError,
     "a reason must be a str, not bytes", ALL),
    ("release-bytes-reason-kept", lambda e: e.release(
        "q", [(1, 1)], "o", not_before=0.0, max_attempts=None, reason=b"why"), TypeError,
     "a reason must be a str, not bytes", ALL),
    ("release-int-reason", lambda e: e.release(
        "q", [(1, 1)], "o", not_before=0.0, max_attempts=1, reason=5), TypeError,
     "a reason must be a str, not int", ALL),
    ("release-list-reason", lambda e: e.release(
        "q", [(1, 1)], "o", not_before=0.0, max_attempts=1, reason=["why"]), TypeError,
     "a reason must be a str, not list", ALL),
    ("lease-bytes-owner", lambda e: e.take("q", 1, 5.0, Lease(b"p", 90.0)), TypeError,
     "a lease owner must be a str, not bytes", ALL),
    ("lease-int-owner", lambda e: e.take("q", 1, 5.0, Lease(5, 90.0)), TypeError,
     "a lease owner must be a str, not int", ALL),
    ("lease-long-owner", lambda e: e.take("q", 1, 5.0, Lease("p" * 449, 90.0)), ValueError,
     "a lease owner must be at most 448 bytes of UTF-8, not 449 bytes; nothing was changed",
     ALL),
    ("lease-long-wide-owner", lambda e: e.take("q", 1, 5.0, Lease("é" * 225, 90.0)),
     ValueError, "at most 448 bytes of UTF-8, not 450 bytes", ALL),
    ("lease-huge-owner", lambda e: e.take("q", 1, 5.0, Lease("p" * 70_000, 90.0)),
     ValueError, "at most 448 bytes of UTF-8, not 70,000 bytes", ALL),
    ("lease-surrogate-owner", lambda e: e.take("q", 1, 5.0, Lease("\ud800", 90.0)),
     ValueError, "not one that cannot be written as UTF-8", ALL),
    ("lease-long-owner-unknown-queue", lambda e: e.take("new", 1, 5.0,
                                                        Lease("p" * 449, 90.0)),
     ValueError, "at most 448 bytes", ALL),
    ("lease-nan-end-zero-count", lambda e: e.take("q", 0, 5.0, Lease("p", NAN)),
     EngineError, "the lease's end is NaN", ALL),
    ("lease-nan-end-negative-count", lambda e: e.take("q", -1, 5.0, Lease("p", NAN)),
     EngineError, "the lease's end is NaN", ALL),
    ("append-surrogate-name", lambda e: e.append(SURROGATE, [b"x"], [1], 3.0), ValueError,
     "a queue name must be text that can be written as UTF-8", ALL),
    ("append-batch-surrogate-name", lambda e: e.append(SURROGATE, [b"x", b"y"], [1, 1], 3.0),
     ValueError, "a queue name must be text that can be written as UTF-8", ALL),
    ("restore-surrogate-name", lambda e: e.restore(SURROGATE, [GONE]), ValueError,
     "a queue name must be text that can be written as UTF-8", ALL),
    ("move-surrogate-destination", lambda e: e.move("q", SURROGATE), ValueError,
     "a queue name must be text that can be written as UTF-8", ALL),
    ("set-meta-bytes-key", lambda e: e.set_meta(b"k", b"w"), TypeError,
     "a metadata key must be a str, not bytes", ALL),
    ("set-meta-int-key", lambda e: e.set_meta(5, b"w"), TypeError,
     "a metadata key must be a str, not int", ALL),
    ("set-meta-surrogate-key", lambda e: e.set_meta("k\ud800", b"w"), ValueError,
     "a metadata key must be .*UTF-8.*not one that cannot be written as UTF-8; nothing was "
     "changed", ALL),
    ("set-meta-str-value", lambda e: e.set_meta("k", "w"), TypeError,
     "a metadata value must be bytes, not str", ALL),
    ("set-meta-int-value", lambda e: e.set_meta("k", 5), TypeError,
     "a metadata value must be bytes, not int", ALL),
))
def test_a_bad_argument_is_refused_by_name_and_changes_nothing(
        opened: Callable[[str], Engine], call: Call, error: type[Exception], match: str,
        kind: str) -> None:
    eng = opened(kind)
    before = _state(eng)
    with pytest.raises(error, match=match):
        call(eng)
    assert _state(eng) == before


@pytest.mark.parametrize("kind", ALL)
def test_bytes_like_records_are_stored_and_counted_as_their_bytes(
        opened: Callable[[str], Engine], kind: str) -> None:
    """A memoryview of 4-byte items counts 2 items but holds 8 bytes."""
    eng = opened(kind)
    wide = memoryview(array.array("i", [1, 2]))
    assert len(eng.append("r", [wide], [8], 3.0)) == 1
    assert len(eng.append("r", [bytearray(b"xy"), wide], [2, 8], 3.0)) == 2
    assert eng.counts("r") == (3, 0, 18, 18)
    assert [r.data for r in eng.take("r", 5, 3.0, None)] == [wide.tobytes(), b"xy",
                                                             wide.tobytes()]
    assert eng.counts("r") == (0, 0, 0, 0)
    eng.set_meta("m", bytearray(b"w"))
    assert eng.get_meta("m") == b"w"


@pytest.mark.parametrize("name", [b"q", SURROGATE], ids=["bytes", "surrogate"])
@pytest.mark.parametrize("kind", ALL)
def test_names_and_owners_of_another_type_find_nothing_where_only_read(
        opened: Callable[[str], Engine], kind: str, name: Any) -> None:
    """Reading, or settling leases in, a queue by a name that is not a str, or cannot be
    written as UTF-8 (SQLite and PostgreSQL failed to encode it), finds no queue, as a name
    never used does, and reading metadata by such a key finds none; an owner that is not a
    str holds no lease."""
    eng = opened(kind)
    assert isinstance(eng, SupportsPeekLeased)
    before = _state(eng)
    assert eng.counts(name) == (0, 0, 0, 0)
    assert eng.peek(name, 5) == []
    assert eng.peek_leased(name, 5) == []
    assert eng.owners(name) == {}
    assert eng.take(name, 1, 5.0, None) == []
    assert eng.ack(name, [(1, 1)], "o") == []
    assert eng.release(name, [(1, 1)], "o", not_before=0.0, max_attempts=None) == []
    assert eng.expire(name, 100.0) == 0
    assert eng.move(name, "r") == 0
    assert eng.move(name, "r", [1]) == 0
    assert eng.purge(name) == 0
    if kind != "lmdb":  # whose get_meta refuses a key its set_meta would (see engines.md)
        assert eng.get_meta(name) is None
    owner: Any = b"o"
    assert eng.ack("q", [(1, 1)], owner) == []
    assert eng.release("q", [(1, 1)], owner, not_before=0.0, max_attempts=None) == []
    assert eng.expire("q", 0.0, owners=[owner]) == 0
    assert _state(eng) == before


@pytest.mark.parametrize("other", ["1", 1.0], ids=["text", "float"])
@pytest.mark.parametrize("kind", ALL)
def test_deliveries_not_of_two_ints_hold_no_lease(opened: Callable[[str], Engine],
                                                  kind: str, other: Any) -> None:
    """Record 1 is leased by "o" at its first attempt: neither (1, "1") nor (1.0, 1) is
    that delivery (SQLite acked the first, comparing the attempts as SQL does; the memory,
    dbm and pickle engines acked (1.0, 1), returning the id 1.0, LMDB (1, 1.0))."""
    eng = opened(kind)
    before = _state(eng)
    assert eng.ack("q", [(1, other)], "o") == []
    assert eng.ack("q", [(other, 1)], "o") == []
    assert eng.ack("q", [(other, other)], "o") == []
    assert eng.release("q", [(1, other)], "o", not_before=0.0, max_attempts=None) == []
    assert eng.release("q", [(other, 1)], "o", not_before=0.0, max_attempts=1) == []
    assert eng.release("q", [(other, 1)], "o", not_before=0.0, max_attempts=None,
                       count_attempt=False) == []
    assert _state(eng) == before


@pytest.mark.parametrize("kind", ALL)
def test_deliveries_of_mixed_types_in_one_batch_settle_only_the_int_one(
        opened: Callable[[str], Engine], kind: str) -> None:
    """LMDB sorted the batch, which failed on an id given as text beside an int."""
    eng = opened(kind)
    odd: list[Any] = [(1.0, 1), ("1", 1), (1, "1"), (1, 1.0), (1.5, 1), (None, 1)]
    assert eng.release("q", [*odd, (1, 1)], "o", not_before=0.0, max_attempts=None,
                       count_attempt=False) == [1]
    (got,) = eng.take("q", 1, 5.0, Lease("o", 90.0))
    assert (got.id, got.attempts) == (1, 1)
    assert eng.ack("q", [*odd, (1, 1)], "o") == [1]
    assert eng.counts("q") == (2, 0, 2, 2)


@pytest.mark.parametrize("kind", ALL)
def test_a_delivery_given_as_bools_is_that_of_their_ints(opened: Callable[[str], Engine],
                                                          kind: str) -> None:
    """A bool is an int, here as among ids and raw sizes: (True, True) is the delivery
    (1, 1), and the id comes back as the int 1 (SQLite, LMDB and PostgreSQL held no lease
    for it)."""
    eng = opened(kind)
    yes: Any = True
    released = eng.release("q", [(yes, yes)], "o", not_before=0.0, max_attempts=None,
                           count_attempt=False)
    assert released == [1] and type(released[0]) is int
    (got,) = eng.take("q", 1, 5.0, Lease("o", 90.0))
    assert (got.id, got.attempts) == (1, 1)
    acked = eng.ack("q", [(yes, yes)], "o")
    assert acked == [1] and type(acked[0]) is int
    assert eng.counts("q") == (2, 0, 2, 2)


@pytest.mark.parametrize("kind", ALL)
def test_a_refused_append_to_a_new_queue_leaves_no_queue_behind(
        opened: Callable[[str], Engine], kind: str) -> None:
    """The memory engine made the queue before checking the raw size: queues() listed it."""
    eng = opened(kind)
    before = _state(eng)
    for sizes in ([-1], [1, -1]):
        with pytest.raises(ValueError, match="a raw size must be from 0"):
            eng.append("new", [b"x"] * len(sizes), sizes, 3.0)
    assert _state(eng) == before
    assert eng.counts("new") == (0, 0, 0, 0)


@pytest.mark.parametrize("kind", ALL)
def test_a_restore_of_an_id_the_queue_holds_is_refused_as_such(
        opened: Callable[[str], Engine], kind: str) -> None:
    """The server tells a give-back stored already (RestoreRefused) from other refusals."""
    eng = opened(kind)
    eng.append("q", [b"a", b"b"], [1, 1], 3.0)
    held = eng.take("q", 1, 4.0, None)
    before = _state(eng)
    with pytest.raises(RestoreRefused):
        eng.restore("q", [*held, *eng.peek("q", 1)])
    assert _state(eng) == before


@pytest.mark.parametrize("owner", ["o" * 448, "é" * 224, "€" * 149],
                         ids=["ascii", "2-byte", "3-byte"])
@pytest.mark.parametrize("kind", ALL)
def test_an_owner_of_the_longest_length_leases_and_settles(
        opened: Callable[[str], Engine], kind: str, owner: str) -> None:
    eng = opened(kind)
    (got,) = eng.take("q", 1, 5.0, Lease(owner, 90.0))
    assert eng.owners("q") == {"o": 1, owner: 1}
    assert eng.ack("q", [(got.id, got.attempts)], owner) == [got.id]


@pytest.mark.parametrize("kind", ALL)
def test_an_owner_too_long_to_lease_holds_no_lease(opened: Callable[[str], Engine],
                                                   kind: str) -> None:
    eng = opened(kind)
    before = _state(eng)
    for owner in ("o" * 449, "\ud800"):
        assert eng.ack("q", [(1, 1)], owner) == []
        assert eng.release("q", [(1, 1)], owner, not_before=0.0, max_attempts=1) == []
        assert eng.expire("q", 5.0, owners=[owner]) == 0
    assert _state(eng) == before


@pytest.mark.parametrize("kind", ALL)
def test_move_by_int_ids_and_an_owner_given_in_a_tuple_or_set(
        opened: Callable[[str], Engine], kind: str) -> None:
    """The checks take every sequence the engines did: a tuple, a set, a range."""
    eng = opened(kind)
    assert eng.move("q", "r", (3,)) == 1
    assert eng.move("q", "r", range(2, 3)) == 1
    assert eng.expire("q", 5.0, owners={"o"}) == 1
    assert eng.move("q", "r", {1, 2, 3}) == 1
    assert [r.data for r in eng.peek("r", 5)] == [b"c", b"b", b"a"]
    assert eng.counts("q") == (0, 0, 0, 0)


@pytest.mark.parametrize("kind", ALL)
def test_ids_and_attempts_beyond_every_record_hold_nothing(opened: Callable[[str], Engine],
                                                           kind: str) -> None:
    """No record has an id or attempts that large (PostgreSQL failed the call: "bigint out
    of range")."""
    eng = opened(kind)
    before = _state(eng)
    for delivery in ((1 << 70, 1), (1, 1 << 40), (-1, 1), (1, -1)):
        assert eng.ack("q", [delivery], "o") == []
        assert eng.release("q", [delivery], "o", not_before=0.0, max_attempts=1) == []
    assert eng.move("q", "r", [1 << 70, -1]) == 0
    assert _state(eng) == before


@pytest.mark.parametrize("kind", ALL)
def test_bools_among_raw_sizes_and_ids_count_as_their_ints(opened: Callable[[str], Engine],
                                                           kind: str) -> None:
    """A bool is an int: True a raw size of 1 and the id 1 (PostgreSQL refused a list of
    them)."""
    eng = opened(kind)
    assert len(eng.append("r", [b"x", b"y"], [True, 1], 3.0)) == 2
    assert len(eng.append("r", [b"z"], [True], 3.0)) == 1
    assert eng.counts("r") == (3, 0, 3, 3)
    assert eng.expire("q", 100.0) == 1
    assert eng.move("q", "r", [True]) == 1
    assert [r.data for r in eng.peek("r", 5)] == [b"x", b"y", b"z", b"a"]


@pytest.mark.parametrize("kind", ALL)
def test_an_expire_at_an_int_beyond_every_float_is_at_an_end_of_time(
        opened: Callable[[str], Engine], kind: str) -> None:
    """-10**400 is before every lease's end and 10**400 after it (SQLite failed: "Python int
    too large to convert to SQLite INTEGER")."""
    eng = opened(kind)
    before = _state(eng)
    assert eng.expire("q", -10**400) == 0
    assert _state(eng) == before
    assert eng.expire("q", 10**400) == 1
    assert eng.counts("q") == (3, 0, 3, 3)
    assert [(r.id, r.attempts) for r in eng.take("q", 5, 5.0, None)] == [(1, 1), (2, 0), (3, 0)]


@pytest.mark.parametrize("kind", ALL)
def test_times_given_as_ints_beyond_64_bits_are_times(opened: Callable[[str], Engine],
                                                      kind: str) -> None:
    """2**70 is a time every engine orders, though SQLite binds no int that large: it
    failed every call given one."""
    eng = opened(kind)
    far = 1 << 70
    assert len(eng.append("r", [b"x"], [1], far)) == 1
    assert [r.enqueued_at for r in eng.peek("r", 5)] == [float(far)]
    (got,) = eng.take("q", 1, far, Lease("p", far))
    assert got.id == 2
    assert eng.owners("q") == {"o": 1, "p": 1}
    assert eng.expire("q", far) == 2
    (got,) = eng.take("q", 1, 5.0, Lease("p", 90.0))
    assert (got.id, got.attempts) == (1, 2)
    assert eng.release("q", [(1, 2)], "p", not_before=far, max_attempts=None) == [1]
    assert [r.id for r in eng.take("q", 5, -far, None)] == [2, 3]
    assert eng.take("q", 5, 10**6, None) == []
    assert [r.id for r in eng.take("q", 5, far, None)] == [1]
