"""How a blocked ``get`` or ``lease`` waits out an engine whose server cannot be reached
(:class:`~spoolq.errors.Unavailable`): it tries again every :data:`RETRY_INTERVAL`
seconds until its timeout, and says so in the log now and then."""

from __future__ import annotations

import logging
import math
import time

from .engines.base import take_may_have_removed

__all__ = ["RETRY_INTERVAL", "Outage"]

log = logging.getLogger("spoolq")

RETRY_INTERVAL = 1.0  # seconds between the tries of a call that waits for the server
_LOG_EVERY = 30.0  # seconds between the warnings of one queue handle


class Outage:
    """The warnings of one queue handle about calls waiting for its engine's server."""

    def __init__(self) -> None:
        self._logged = -math.inf

    def retry_at(self, queue: str, error: Exception, deadline: float | None) -> float | None:
        """When (monotonic) a call waiting until ``deadline`` that met ``error`` tries
        again, or None when the deadline has passed or ``error`` is that of a take whose
        records may be gone (it then raises ``error``: taking again would hide their
        loss). Logs ``error`` as a warning, unless this handle did less than 30 s ago."""
        now = time.monotonic()
        if (deadline is not None and now >= deadline) or take_may_have_removed(error):
            return None
        if now - self._logged >= _LOG_EVERY:
            self._logged = now
            log.warning("spoolq: queue %r: %s; waiting calls try again every %gs",
                        queue, error, RETRY_INTERVAL)
        return now + RETRY_INTERVAL if deadline is None else min(now + RETRY_INTERVAL, deadline)
