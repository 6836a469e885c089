"""``SyncQueue.close()`` called from a signal handler (a SIGTERM handler that shuts the
service down, say) while the same thread is blocked in a call of the queue: the call
cannot go on until the handler returns, so close() must not wait for it. The call then
raises QueueShutDown, and the items it held are back in the file."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spoolq import QueueShutDown, SyncQueue

from .conftest import queue_path

_LIMIT = 20.0


def _close_from_handler(q: SyncQueue[Any], call: Callable[[], Any]) -> float:
    """Run ``call`` in the main thread; 0.2 s later SIGALRM's handler closes ``q``.
    Return how long close() took; ``call`` must raise QueueShutDown."""
    took: list[float] = []

    def handler(*_: Any) -> None:
        start = time.monotonic()
        q.close()
        took.append(time.monotonic() - start)

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(QueueShutDown):
            call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(took) == 1
    return took[0]


@pytest.mark.parametrize("engine", ["sqlite", "lmdb"])
@pytest.mark.parametrize("call", ["get", "get_many", "lease", "put"])
def test_close_in_a_signal_handler_does_not_wait_for_the_call_it_interrupted(
        tmp_path: Path, engine: str, call: str) -> None:
    path = queue_path(tmp_path, engine)
    q = SyncQueue.create(path, maxsize=1)
    if call in ("get_many", "put"):
        q.put("first")  # get_many(3) holds it while it waits; put waits for room
    calls: dict[str, Callable[[], Any]] = {
        "get": lambda: q.get(timeout=_LIMIT),
        "get_many": lambda: q.get_many(3, timeout=_LIMIT),
        "lease": lambda: q.lease(timeout=_LIMIT, ttl=_LIMIT),
        "put": lambda: q.put("second", timeout=_LIMIT),
    }
    took = _close_from_handler(q, calls[call])
    assert took < 2.0, f"close() in the handler took {took:.1f} s"
    with SyncQueue.create(path) as again:
        expected = ["first"] if call in ("get_many", "put") else []
        assert again.get_many(None, timeout=0.2) == expected if expected else \
            again.qsize() == 0
        assert again.stats["leased"] == 0
