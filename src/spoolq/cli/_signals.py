"""Ctrl-C held back while a write that must be counted finishes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["sigint_deferred"]


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold back a first Ctrl-C (SIGINT) until the ``with`` block ends, then raise
    KeyboardInterrupt; a second one raises at once.

    A transaction that a KeyboardInterrupt interrupts as it commits is stored, while
    the code after it, which counts what was stored, never runs. Outside the main
    thread, or while SIGINT does not raise KeyboardInterrupt, nothing is changed.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught = False

    def hold(signum: int, frame: FrameType | None) -> None:
        nonlocal caught
        if caught:  # asked twice: the user does not want to wait
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        caught = True

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    except BaseException as exc:
        if caught and not isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from exc  # the block failed: the Ctrl-C still counts
        raise
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt
