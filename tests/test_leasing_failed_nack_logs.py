"""What ``leased()`` logs when its nack fails after the block raised: a closed queue
(whose close gave the lease back) is one line, not an error with a traceback."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from spoolq import Queue, SyncQueue


class _Boom(Exception):
    pass


def _nack_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "could not be nacked" in r.getMessage()]


def test_sync_leased_logs_a_closed_queue_in_one_line(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = os.fspath(tmp_path / "q.sqlite")
    q: SyncQueue[str] = SyncQueue.create(path)
    q.put("job")
    with caplog.at_level(logging.WARNING, "spoolq"), pytest.raises(_Boom), q.leased():
        q.close()
        raise _Boom
    [record] = _nack_records(caplog)
    assert record.exc_info is None
    assert "closed" in record.getMessage() and "lease back" in record.getMessage()
    with SyncQueue.create(path) as again:  # the close gave it back
        assert again.lease(block=False).attempts == 2


async def test_async_leased_logs_a_closed_queue_in_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    q: Queue[str] = await Queue.create(os.fspath(tmp_path / "q.sqlite"))
    await q.put("job")
    with caplog.at_level(logging.WARNING, "spoolq"), pytest.raises(_Boom):
        async with q.leased():
            await q.aclose()
            raise _Boom
    [record] = _nack_records(caplog)
    assert record.exc_info is None
    assert "closed" in record.getMessage()
