"""Random operations on a SyncQueue compared with collections.deque as the oracle."""

from __future__ import annotations

import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spoolq
from spoolq import SyncQueue

from .conftest import ENGINE_SUFFIXES, queue_path

items = st.one_of(st.integers(), st.text(max_size=300), st.binary(max_size=300),
                  st.lists(st.integers(), max_size=5))
operations = st.lists(st.one_of(
    st.tuples(st.just("put"), items),
    st.tuples(st.just("put_many"), st.lists(items, max_size=8)),
    st.tuples(st.just("get"), st.none()),
    st.tuples(st.just("get_many"), st.integers(1, 6)),
    st.tuples(st.just("peek"), st.integers(1, 4)),
    st.tuples(st.just("lease_nack"), st.none()),
    st.tuples(st.just("reopen"), st.none()),
), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, engine=st.sampled_from(sorted(ENGINE_SUFFIXES)))
def test_queue_behaves_like_a_deque(ops: list[tuple[str, Any]], engine: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = queue_path(Path(tmp), engine)
        oracle: deque[Any] = deque()
        q: SyncQueue[Any] = SyncQueue.create(path)
        try:
            for op, arg in ops:
                if op == "put":
                    q.put(arg)
                    oracle.append(arg)
                elif op == "put_many":
                    q.put_many(arg)
                    oracle.extend(arg)
                elif op == "get":
                    if oracle:
                        assert q.get_nowait() == oracle.popleft()
                    else:
                        try:
                            q.get_nowait()
                        except spoolq.Empty:
                            pass
                        else:
                            raise AssertionError("get_nowait on an empty queue returned")
                elif op == "get_many":
                    if oracle:
                        want = [oracle.popleft() for _ in range(min(arg, len(oracle)))]
                        assert q.get_many(arg, block=False) == want
                elif op == "peek":
                    assert q.peek(arg) == list(oracle)[:arg]
                elif op == "lease_nack" and oracle:
                    msg = q.lease(block=False)
                    assert msg.item == oracle[0]
                    q.nack(msg)
                elif op == "reopen" and engine != "memory":
                    q.close()
                    q = SyncQueue.create(path)
                assert q.qsize() == len(oracle)
            assert q.get_many(None, block=False) == list(oracle) if oracle else q.empty()
        finally:
            q.close()
