"""Deliveries that can hold no lease find nothing through the remote engine too, as on
the local engines (docs/engines.md), rather than failing the whole ack or release."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spoolq.engines import Lease
from spoolq.engines.remote import RemoteEngine

from .servers import ServerProcess

NOW = 1_000_000.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("served") / "q.sqlite"
    with ServerProcess(str(path)) as srv:
        yield srv


def _odd(a: int, b: int) -> list[tuple[object, object]]:
    return [("x", 1), (None, None), (float(b), 1), (b, 1.0), (str(a), 1), (2**70, 1),
            (a, -(2**64))]


@pytest.mark.parametrize("op", ["ack", "release"])
def test_odd_deliveries_find_nothing_and_the_good_ones_are_settled(
        server: ServerProcess, op: str) -> None:
    eng = RemoteEngine(server.url)
    queue = f"odd-{op}"
    try:
        a, b = eng.append(queue, [b"a", b"b"], [1, 1], NOW)
        eng.take(queue, 2, NOW, Lease("me", NOW + 30))
        assert eng.ack(queue, _odd(a, b), "me") == []  # type: ignore[arg-type]
        mixed = [*_odd(a, b), (b, 1)]
        if op == "ack":
            done = eng.ack(queue, mixed, "me")  # type: ignore[arg-type]
        else:
            done = eng.release(queue, mixed, "me",  # type: ignore[arg-type]
                               not_before=0.0, max_attempts=None)
        assert done == [b]
        assert eng.counts(queue)[:2] == ((1, 1) if op == "release" else (0, 1))
        nothing = eng.release(queue, _odd(a, b), "me",  # type: ignore[arg-type]
                              not_before=0.0, max_attempts=None)
        assert nothing == []
    finally:
        eng.close()


def test_a_release_of_nothing_checks_its_reason_and_max_attempts(
        server: ServerProcess) -> None:
    eng = RemoteEngine(server.url)
    try:
        with pytest.raises(TypeError):
            eng.release("odd", [("x", 1)], "me", not_before=0.0, max_attempts=None,
                        reason=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            eng.release("odd", [], "me", not_before=0.0, max_attempts="3")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            eng.release("odd", [], "me", not_before=0.0, max_attempts=None,
                        reason=b"r")  # type: ignore[arg-type]
    finally:
        eng.close()
