"""A Redis list through redis-py: LPUSH to add, RPOP to take.

The server is one the suite started for the run (see ``redis_servers``);
its port comes in the parameters. Each child uses a list key of its own.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from measurements.contestants.base import GET_DEADLINE_S, Contestant, Unavailable, load

PIPELINE_SIZE = 100


class RedisList(Contestant):
    """``pipelined=False``: one round trip per put and per get.

    ``pipelined=True``: puts are sent 100 at a time in one pipeline (and the
    rest at the end of the phase); gets fetch with a pipeline of 100 RPOPs.
    """

    def __init__(self, pipelined: bool) -> None:
        self.redis = load("redis")
        self.pipelined = pipelined
        self._out: list[bytes] = []
        self._in: deque[bytes] = deque()

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        port = params.get("redis_port")
        if not port:
            raise Unavailable("no redis-server was started for this run")
        self.r: Any = self.redis.Redis(host="127.0.0.1", port=int(port))
        self.r.ping()
        self.key = f"measurements:{os.getpid()}:{time.monotonic_ns()}"

    def _send(self, items: Sequence[bytes]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for item in items:
            pipe.lpush(self.key, item)
        pipe.execute()

    def put(self, item: bytes) -> None:
        if not self.pipelined:
            self.r.lpush(self.key, item)
            return
        self._out.append(item)
        if len(self._out) >= PIPELINE_SIZE:
            self._send(self._out)
            self._out = []

    def put_many(self, items: Sequence[bytes]) -> None:
        if self.pipelined:
            self._send(items)
        else:
            self.r.lpush(self.key, *items)

    def _fetch(self, n: int) -> list[bytes]:
        if self.pipelined:
            pipe = self.r.pipeline(transaction=False)
            for _ in range(n):
                pipe.rpop(self.key)
            return [item for item in pipe.execute() if item is not None]
        got = self.r.rpop(self.key, n)
        return list(got) if got else []

    def _wait_one(self, deadline: float) -> bytes:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("no item arrived")
            got = self.r.brpop([self.key], timeout=1)
            if got:
                return bytes(got[1])

    def get(self) -> Any:
        if not self.pipelined:
            item = self.r.rpop(self.key)
            if item is None:
                item = self._wait_one(time.monotonic() + GET_DEADLINE_S)
            return item
        if not self._in:
            self._in.extend(self._fetch(PIPELINE_SIZE))
        if not self._in:
            return self._wait_one(time.monotonic() + GET_DEADLINE_S)
        return self._in.popleft()

    def get_many(self, n: int) -> list[Any]:
        deadline = time.monotonic() + GET_DEADLINE_S
        out: list[Any] = []
        while self._in and len(out) < n:
            out.append(self._in.popleft())
        while len(out) < n:
            got = self._fetch(n - len(out))
            if got:
                out.extend(got)
            else:
                out.append(self._wait_one(deadline))
        return out

    def flush(self) -> None:
        if self._out:
            self._send(self._out)
            self._out = []

    def close(self) -> None:
        self.flush()
        self.r.delete(self.key)
        self.r.close()
