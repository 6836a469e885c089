"""``info`` and the commands that list a file's queues tell the dead letters of a queue
``X`` (the queue ``X.dead``) from a queue that is merely named ``X.dead`` in a file that
has no queue ``X``: the dead letters of a queue no handle ever opened cannot exist."""

from __future__ import annotations

from pathlib import Path

import spoolq

from .cli_support import run, run_json


def _rows(path: str) -> dict[str, tuple[int, int, str | None]]:
    """``info --json``'s queues: name -> (ready, dead, serializer)."""
    return {q["name"]: (q["ready"], q["dead"], q["serializer"])
            for q in run_json("info", path)["queues"]}


def test_a_queue_named_like_dead_letters_is_a_queue_of_its_own(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, name="a.dead", serializer="json") as q:
        q.put_many([1, 2, 3])
    # Before, info showed a queue "a" (codec "?+?") with 3 dead letters.
    assert _rows(path) == {"a.dead": (3, 0, "json")}
    table = run("info", path)
    assert table.exit_code == 0, table.output
    assert "a.dead " in table.stdout and "?+?" not in table.stdout, table.stdout
    assert "json+zstd" in table.stdout


def test_such_a_queue_with_dead_letters_of_its_own(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, name="a.dead", max_attempts=1) as q:
        q.put_many(["x", "y"])
        q.nack(q.lease())
    assert _rows(path) == {"a.dead": (1, 1, "cbor")}
    assert [r["item"] for r in run_json("peek", path, "-q", "a.dead", "--dead")["records"]] \
        == ["x"]


def test_dead_letters_of_a_queue_are_still_its_dead_letters(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, name="a", max_attempts=1) as q:
        q.put_many(["x", "y"])
        q.nack(q.lease())
    with spoolq.SyncQueue.create(path, name="b.dead") as q:  # beside them, a user queue
        q.put("z")
    assert _rows(path) == {"a": (1, 1, "cbor"), "b.dead": (1, 0, "cbor")}
    # Consuming the dead letters by their queue's name, as docs/leases.md shows, leaves
    # them the dead letters of "a".
    with spoolq.SyncQueue.create(path, name="a.dead") as q:
        assert q.peek() == ["x"]
    assert _rows(path) == {"a": (1, 1, "cbor"), "b.dead": (1, 0, "cbor")}


def test_dead_letters_of_a_queue_that_never_held_a_record_in_this_file(
        tmp_path: Path) -> None:
    """A migrate copies a queue that has dead letters only: the copy never stores a
    record in the queue itself, only its settings."""
    src = str(tmp_path / "src.sqlite")
    with spoolq.SyncQueue.create(src, name="a", max_attempts=1) as q:
        q.put("x")
        q.nack(q.lease())
    dst = str(tmp_path / "dst.sqlite")
    migrated = run("migrate", src, dst)
    assert migrated.exit_code == 0, migrated.output
    assert _rows(dst) == {"a": (0, 1, "cbor")}


def test_the_other_listings_name_such_a_queue_too(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path, name="a.dead", serializer="json") as q:
        q.put("x")
    missing = run("peek", path, "-q", "nosuch")
    assert missing.exit_code == 0, missing.output
    assert "queues with items: a.dead)" in missing.stderr, missing.stderr
    checked = run_json("verify", path)
    assert [q["name"] for q in checked["queues"]] == ["a.dead", "a.dead.dead"]
    # migrate copies the queue with its settings: the copy reads back as a json queue.
    dst = str(tmp_path / "dst.sqlite")
    assert run("migrate", path, dst).exit_code == 0
    assert _rows(dst) == {"a.dead": (1, 0, "json")}
