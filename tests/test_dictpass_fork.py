"""A process forked while another thread registers a zstd dictionary: the child's handle
keeps working (the thread that held the codec's lock does not exist in the child)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from spoolq.codec import Codec
from spoolq.zdict import SAMPLE_COUNT

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _trained() -> tuple[Codec, bytes]:
    rnd = random.Random(3)
    codec = Codec("cbor", "zstd-dict")
    for i in range(SAMPLE_COUNT):
        codec.encode({"event": rnd.choice(["click", "view", "buy"]),
                      "user": f"user-{rnd.randint(1, 90)}", "n": i})
    dictionary = codec.train()
    assert dictionary is not None
    return codec, dictionary


def _exited(pid: int, within: float) -> int | None:
    """The exit status of child ``pid``, or None (the child killed) if it has not exited
    within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_a_child_forked_while_a_thread_loads_dictionaries_can_use_its_codec() -> None:
    # A handle loads the file's dictionaries again whenever a record needs one it lacks;
    # a fork meanwhile left the codec's lock held for ever in the child.
    codec, dictionary = _trained()
    codec.add_dictionary(1, dictionary, activate=True)
    record = codec.encode({"event": "view", "user": "user-7", "n": -1})[0]
    stop = threading.Event()

    def reload() -> None:
        while not stop.is_set():
            codec.add_dictionary(1, dictionary)

    thread = threading.Thread(target=reload)
    thread.start()
    outcomes: list[int | None] = []
    try:
        for _ in range(20):
            time.sleep(0.005)
            pid = os.fork()
            if pid == 0:  # the child: register a dictionary, then decode with it
                try:
                    codec.add_dictionary(2, dictionary)
                    ok = codec.decode(record) == {"event": "view", "user": "user-7", "n": -1}
                    os._exit(0 if ok else 3)
                finally:
                    os._exit(4)
            outcomes.append(_exited(pid, 10.0))
            if outcomes[-1] != 0:
                break
    finally:
        stop.set()
        thread.join()
    assert outcomes == [0] * 20, "None: a child hung on the codec's lock"
