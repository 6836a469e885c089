"""The requests of a connection that wait on the server's event loop for records: a
take that long-polls and a wait for a ready record. :class:`LongPolls` is a part of
:class:`spoolq.session.Session`, kept in its own module."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .protocol import Request, record_count

if TYPE_CHECKING:
    from .server import Server

__all__ = ["LongPolls"]


class LongPolls:
    """Long-polling takes and waits; each answers through ``_complete``."""

    # Set up by Session.__init__.
    server: Server
    loop: asyncio.AbstractEventLoop
    closed: bool
    _sleepers: set[asyncio.Future[bool]]

    if TYPE_CHECKING:  # Session's
        def _complete(self, req: Request, result: Any, error: BaseException | None,
                      cost: int = 0) -> None: ...

    async def _long_take(self, req: Request) -> None:
        a = req.args
        start = self.loop.time()
        deadline = start + a["wait"]
        result: Any = None
        try:
            while True:
                shift = self.loop.time() - start
                lease = a["lease"]
                args = {**a, "now": a["now"] + shift,
                        "lease": None if lease is None else [lease[0], lease[1] + shift]}
                result = await self.server.runner.run("take", args)
                remaining = deadline - self.loop.time()
                if record_count(result) or remaining <= 0 or self.closed or self.server.stopping:
                    break
                await self.server.wait_for(a["queue"], min(remaining, self.server.poll_interval),
                                           self._sleepers)
                if self.closed:
                    break
        except Exception as exc:
            self._complete(req, None, exc)
            return
        # The leases run from the time of the take that found the records, as its client
        # was told: that is when this connection's record of them (see _delivered) ends.
        a["now"], a["lease"] = args["now"], args["lease"]
        self._complete(req, result, None)

    async def _wait_ready(self, req: Request) -> None:
        queue_name = req.args["queue"]
        deadline = self.loop.time() + req.args["timeout"]
        try:
            while True:
                counts = await self.server.runner.run("counts", {"queue": queue_name})
                remaining = deadline - self.loop.time()
                if counts[0] > 0 or remaining <= 0 or self.closed or self.server.stopping:
                    ready = counts[0] > 0
                    break
                if await self.server.wait_for(queue_name,
                                              min(remaining, self.server.poll_interval),
                                              self._sleepers):
                    ready = True
                    break
        except Exception as exc:
            self._complete(req, None, exc)
            return
        self._complete(req, ready, None)
