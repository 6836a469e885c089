"""A timeout far beyond what the system's clocks and locks take (a blocked call's wait is
at most threading.TIMEOUT_MAX at a time) waits like no timeout: the calls return the item
put meanwhile, through a real server as on a local file."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolq import SyncQueue

from .servers import ServerProcess

HUGE = 1e12  # seconds: about 31,700 years


@pytest.fixture(params=["remote", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "q.sqlite")
        return
    with ServerProcess(str(tmp_path / "served.sqlite")) as server:
        yield f"{server.url}/q"


@pytest.mark.parametrize("call", ["get", "get_many", "lease", "lease_many"])
def test_a_huge_timeout_waits_for_the_item(url: str, call: str) -> None:
    with SyncQueue[Any].create(url) as q, SyncQueue[Any].create(url) as other:
        putter = threading.Timer(0.5, other.put, args=("late",))
        putter.start()
        try:
            args = (1,) if call in ("get_many", "lease_many") else ()
            got = getattr(q, call)(*args, timeout=HUGE)
        finally:
            putter.join()
        if call.startswith("lease"):
            messages = got if isinstance(got, list) else [got]
            assert [m.item for m in messages] == ["late"]
            q.ack(*messages)
        else:
            assert got == ("late" if call == "get" else ["late"])
        assert q.qsize() == 0
