"""The note a reader prints for a queue that holds nothing but dead letters."""

from __future__ import annotations

from pathlib import Path

import pytest

import spoolq

from .cli_support import run


@pytest.mark.parametrize("command", [["peek"], ["dump"], ["peek", "--leased"]])
def test_a_queue_of_dead_letters_only_is_named_as_such(tmp_path: Path,
                                                       command: list[str]) -> None:
    path = str(tmp_path / "jobs.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs", max_attempts=1) as q:
        q.put("x")
        q.nack(q.lease())
    with spoolq.SyncQueue.create(path, name="other") as q:
        q.put("y")
    result = run(command[0], path, "-q", "jobs", *command[1:])
    assert result.exit_code == 0, result.output
    assert ("note: queue 'jobs' holds dead letters only (--dead shows them); queues with "
            "items: jobs (dead letters only), other") in result.stderr
    missing = run(command[0], path, "-q", "job", *command[1:])
    assert ("note: no queue 'job' holds items in this file (queues with items: "
            "jobs (dead letters only), other)") in missing.stderr
