"""A long-lived connection that leases from many queues, whose leases run out and are
expired (to the dead letters, where nobody takes them again), does not make the server
remember every delivery it ever made: what it remembers stays about what is still out."""

from __future__ import annotations

import subprocess

from .test_ssoakpass_purged_leases import _Client, _port, _remembered, served  # noqa: F401

_QUEUES = 200
_ROUNDS = 4


def test_expired_leases_of_many_queues_are_forgotten(
        served: subprocess.Popen[str]) -> None:  # noqa: F811
    client = _Client(_port(served))
    try:
        _lease_and_expire(served, client)
    finally:
        client.close()


def _lease_and_expire(proc: subprocess.Popen[str], client: _Client) -> None:
    # Times on the client's clock, as the server never compares them with its own.
    t = 1_000_000.0
    for rnd in range(_ROUNDS):
        names = [f"tenant-{rnd}-{i}" for i in range(_QUEUES)]
        client.pipeline([{"op": "append", "queue": q, "records": [b"r"], "sizes": [1],
                          "now": t} for q in names])
        taken = client.pipeline([{"op": "take", "queue": q, "n": 1, "now": t + 1,
                                  "lease": ["me", t + 2], "max_attempts": 1} for q in names])
        assert all(len(r) == 6 for r in taken)
        held, holders, _ = _remembered(proc)
        # This round's leases are out; those of the rounds before ran out and went to
        # the dead letters: at most about twice what is out is remembered.
        assert held == holders <= 2 * _QUEUES + 64, (rnd, held)
        expired = client.pipeline([{"op": "expire", "queue": q, "now": t + 3,
                                    "max_attempts": 1} for q in names])
        assert expired == [1] * _QUEUES
        t += 10
    held, _, _ = _remembered(proc)
    assert held <= 2 * _QUEUES + 64, held
