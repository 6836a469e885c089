"""An ack or a release (nack) of any number of messages through the Python client works,
whatever the server's ``--max-frame`` and the client's ``max_reply``: the client splits
the request both so that each reply of ids fits and so that each request fits in one
frame of the server. Real server subprocesses."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import spoolq
from spoolq.engines import Lease
from spoolq.engines.remote import RemoteEngine

from .servers import ServerProcess


@pytest.fixture(scope="module")
def small() -> Iterator[ServerProcess]:
    with ServerProcess(":memory:", "--max-frame", "65536") as srv:
        yield srv


@pytest.mark.parametrize("op", ["ack", "nack"])
def test_settling_20000_messages_in_one_call(small: ServerProcess, op: str) -> None:
    name = f"many_{op}"
    with spoolq.SyncQueue.create(f"{small.url}/{name}", name=name) as q:
        q.put_many(range(20000))
        q.flush()
        msgs: list[spoolq.Message] = []
        while len(msgs) < 20000:
            msgs += q.lease_many(20000, block=False)
        getattr(q, op)(*msgs)
        if op == "ack":
            assert q.qsize() == 0
        else:
            again: list[spoolq.Message] = []
            while len(again) < 20000:
                more = q.lease_many(20000, block=False)
                assert more, f"only {len(again)} messages came back"
                again += more
            assert sorted(m.item for m in again) == list(range(20000))
            q.ack(*again)
            assert q.qsize() == 0


@pytest.mark.parametrize("max_reply", [None, 1 << 26])
@pytest.mark.parametrize("op", ["ack", "release"])
def test_deliveries_of_large_ids_and_attempts_are_split_by_frame_size(
        small: ServerProcess, op: str, max_reply: int | None) -> None:
    """Ids and attempts of 9 bytes each make every delivery 19 bytes: as many as a reply
    holds ids for would be a request over twice the server's max_frame. None of these
    is leased, so each is answered as not found: an empty list, and nothing raised."""
    eng = RemoteEngine(small.url, **({} if max_reply is None else {"max_reply": max_reply}))
    try:
        deliveries = [((1 << 62) + k, (1 << 62) + k) for k in range(30000)]
        if op == "ack":
            assert eng.ack("q", deliveries, "owner") == []
        else:
            assert eng.release("q", deliveries, "owner", not_before=0.0, max_attempts=None,
                               reason="r" * 1000) == []
        # and real ones among them are settled
        eng.append("q", [b"a", b"b"], [1, 1], time.time())
        taken = eng.take("q", 2, time.time(), Lease("owner", time.time() + 60))
        real = [(r.id, r.attempts) for r in taken]
        if op == "ack":
            assert sorted(eng.ack("q", deliveries + real, "owner")) == sorted(i for i, _ in real)
            assert eng.counts("q").leased == 0 and eng.counts("q").ready == 0
        else:
            got = eng.release("q", deliveries + real, "owner", not_before=0.0,
                              max_attempts=None)
            assert sorted(got) == sorted(i for i, _ in real)
            assert eng.counts("q").ready == 2
            eng.purge("q")
    finally:
        eng.close()
