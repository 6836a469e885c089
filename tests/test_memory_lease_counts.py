"""The memory engine counts each owner's leases and keeps a time no lease ends before,
so owners() and an expire with nothing due read no record. tests/test_lmdb_lease_owners.py
checks its answers against the LMDB engine's through random changes; these check the
counts of an engine loaded from an export, and expire around the earliest end."""

from __future__ import annotations

import math

from spoolq.engines import Lease, MemoryEngine


def test_a_loaded_engine_counts_the_leases_it_holds() -> None:
    mem = MemoryEngine()
    mem.append("q", [b"a", b"b", b"c"], [1, 1, 1], 1.0)
    mem.take("q", 2, 1.0, Lease("w", 50.0))
    copy = MemoryEngine.load(*mem.export())
    assert copy.owners("q") == {"w": 2}
    assert copy.expire("q", 10.0) == 0
    assert copy.expire("q", 60.0) == 2
    assert copy.owners("q") == {}


def test_an_expire_ends_each_lease_once_its_end_comes_whatever_was_settled_before() -> None:
    mem = MemoryEngine()
    mem.append("q", [b"a", b"b", b"c", b"d"], [1] * 4, 1.0)
    (a,) = mem.take("q", 1, 1.0, Lease("w", 5.0))
    mem.take("q", 1, 1.0, Lease("v", 10.0))
    mem.take("q", 1, 1.0, Lease("w", 20.0))
    assert mem.ack("q", [(a.id, 1)], "w") == [a.id]  # the earliest end is gone
    assert mem.owners("q") == {"v": 1, "w": 1}
    assert mem.expire("q", 6.0) == 0
    assert mem.expire("q", 10.0) == 1  # b's end
    assert mem.owners("q") == {"w": 1}
    assert mem.expire("q", 19.0) == 0
    assert len(mem.take("q", 1, 1.0, Lease("u", -math.inf))) == 1  # ends before all
    assert mem.expire("q", -1e300) == 1
    assert mem.expire("q", 20.0) == 1  # c's end
    assert mem.owners("q") == {}
