"""A path such as ``link/../q.sqlite``, where ``link`` is a symbolic link to a directory,
names what the kernel finds there (the link target's parent), for every open of the file:
a writable one, a read-only one, and the new file a migrate makes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolq import SyncQueue

from .cli_support import run


@pytest.fixture
def linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The working directory holds ``link`` -> real/sub; ``link/..`` is ``real``."""
    real, here = tmp_path / "real", tmp_path / "here"
    (real / "sub").mkdir(parents=True)
    here.mkdir()
    (here / "link").symlink_to(real / "sub")
    monkeypatch.chdir(here)
    yield real


def test_a_read_only_open_finds_the_file_a_writable_open_made(linked: Path) -> None:
    with SyncQueue.create("link/../q.sqlite", name="jobs") as q:
        q.put_many([1, 2, 3])
    assert sorted(os.listdir(linked)) == ["q.sqlite", "sub"]  # as SQLite itself finds it
    with SyncQueue.create("link/../q.sqlite", name="jobs",
                          engine_options={"read_only": True}) as q:
        assert q.peek(5) == [1, 2, 3]
    info = run("info", "link/../q.sqlite")
    assert info.exit_code == 0, info.output
    assert "jobs" in info.stdout
    verify = run("verify", "link/../q.sqlite")
    assert verify.exit_code == 0, verify.output


def test_migrate_makes_the_new_file_where_the_path_leads(linked: Path, tmp_path: Path) -> None:
    with SyncQueue.create(str(tmp_path / "src.sqlite"), name="jobs") as q:
        q.put_many(["a", "b"])
    result = run("migrate", str(tmp_path / "src.sqlite"), "link/../dst.sqlite", "-q", "jobs")
    assert result.exit_code == 0, result.output
    assert (linked / "dst.sqlite").exists()
    assert not [n for n in os.listdir(linked) if n.endswith(".part")]
    with SyncQueue.create("link/../dst.sqlite", name="jobs",
                          engine_options={"read_only": True}) as q:
        assert q.peek(5) == ["a", "b"]
