"""How a blocked ``get`` or ``lease`` waits out an engine whose server cannot be reached
(:class:`~spoolq.errors.Unavailable`): it tries again every :data:`RETRY_INTERVAL`
seconds until its timeout, and says so in the log now and then."""

from __future__ import annotations

import logging
import math
import time

__all__ = ["RETRY_INTERVAL", "Outage"]

log = logging.getLogger("spoolq")

RETRY_INTERVAL = 1.0  # seconds between the tries of a call that waits for the server
_LOG_EVERY = 30.0  # seconds between the warnings of one queue handle


class Outage:
    """The warnings of one queue handle about calls waiting for its engine's server."""

    def __init__(self) -> None:
        self._logged = -math.inf

    def report(self, queue: str, error: Exception) -> None:
        """Log ``error`` as a warning, unless this handle did less than 30 s ago."""
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY:
            self._logged = now
            log.warning("spoolq: queue %r: %s; waiting calls try again every %gs",
                        queue, error, RETRY_INTERVAL)
