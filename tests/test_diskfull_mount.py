"""A small tmpfs to fill up, for the tests of queues on a full disk (ENOSPC), and the
helpers that fill it and free it again. The other ``test_diskfull_*`` files use these."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SKIP_REASON = "needs root to mount a small tmpfs"
FILLER = "filler"


@contextlib.contextmanager
def mounted(tmp_path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``tmp_path/fs``, unmounted after (lazily when busy);
    skips the test when this process may not mount one."""
    where = tmp_path / "fs"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip(SKIP_REASON)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if "permission denied" in done.stderr.lower() or "only root" in done.stderr.lower() \
                or "not permitted" in done.stderr.lower():
            pytest.skip(SKIP_REASON)
        raise RuntimeError(f"mount failed: {done.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(where: Path, leave: int = 0) -> Path:
    """Write a file in ``where`` until the file system is full, then give back ``leave``
    bytes of it; return the file, to remove it (:func:`free`) when space is wanted."""
    filler = where / FILLER
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (1 << 16, 4096, 512, 1):
            chunk = b"\0" * block
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    os.truncate(filler, max(0, os.path.getsize(filler) - leave))
    return filler


def free(where: Path) -> None:
    """Remove what :func:`fill` wrote."""
    (where / FILLER).unlink(missing_ok=True)


def says_full(message: str) -> bool:
    """Whether an error message names the problem: no space left on the disk."""
    text = message.lower()
    return "no space" in text or "disk is full" in text or "disk full" in text


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted(tmp_path) as where:
        yield where


def test_a_filled_file_system_refuses_writes_and_takes_them_again_once_freed(
        small_fs: Path) -> None:
    fill(small_fs)
    with pytest.raises(OSError) as caught:
        (small_fs / "more").write_bytes(b"x" * 8192)
    assert caught.value.errno == errno.ENOSPC
    free(small_fs)
    (small_fs / "more").write_bytes(b"x" * 8192)
