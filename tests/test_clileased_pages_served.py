"""Leased records listed page by page from a server whose replies hold one record each
(a small ``max_reply``): the records before each page, read again to find its place, do
not stop the listing, and none is shown twice."""

from __future__ import annotations

import os
import time
from pathlib import Path

from spoolq.cli._common import iter_leased_pages
from spoolq.engines import Lease
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import MIN_MAX_REPLY

from .servers import ThreadedServer


def test_leased_pages_of_replies_holding_one_record_each(tmp_path: Path) -> None:
    with ThreadedServer(os.fspath(tmp_path / "q.sqlite")) as srv:
        eng = RemoteEngine(f"{srv.url}/jobs", max_reply=MIN_MAX_REPLY)
        try:
            now = time.time()
            ids = eng.append("jobs", [bytes([65 + n]) * 600 for n in range(7)], [600] * 7,
                             now)
            held: list[int] = []
            while len(held) < 6:  # one record stays ready
                held += [r.id for r in eng.take("jobs", 6 - len(held), now,
                                                Lease("me", now + 60))]
            assert held == ids[:6]
            for chunk in (1, 2, 1000):
                pages = list(iter_leased_pages(eng, "jobs", chunk=chunk, expected=6))
                assert [lr.record.id for page in pages for lr in page] == held, chunk
                assert all(len(page) == 1 for page in pages)  # what one reply holds
            pages = list(iter_leased_pages(eng, "jobs", offset=2, limit=3, expected=4))
            assert [lr.record.id for page in pages for lr in page] == held[2:5]
        finally:
            eng.close()
