"""An engine whose appends fail on demand, as a full disk makes a real one fail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import spoolq
from spoolq.engines import Engine


class FailingAppend:
    """Delegates to a real engine; the next ``failures`` appends raise an EngineError."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self.name = inner.name
        self.failures = 0

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if self.failures:
            self.failures -= 1
            raise spoolq.EngineError("no space left on device")
        return self._inner.append(queue, records, raw_sizes, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
