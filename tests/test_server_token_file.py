"""``spoolq serve --token-file`` and ``python -m spoolq.server --token-file`` with a token
file that is not UTF-8 say so in one line (a setting to fix, as an empty token file is);
both ended in a UnicodeDecodeError traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import spoolq
from spoolq.server import read_token_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("command", "status"), [
    (["-m", "spoolq", "serve"], 2),
    (["-m", "spoolq.server"], 1),
])
def test_a_token_file_that_is_not_utf8_is_refused_in_one_line(
        tmp_path: Path, command: list[str], status: int) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(b"secret\xff\xfe\n")
    done = subprocess.run(
        [sys.executable, *command, str(tmp_path / "q.sqlite"), "--port", "0",
         "--token-file", str(token_file)],
        check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"{token_file}: the token file is not UTF-8" in done.stderr, done.stderr
    assert done.stdout == ""  # it never listened


def test_a_utf8_token_file_with_other_letters_serves(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("sécret ✓\n", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "spoolq.server", str(tmp_path / "q.sqlite"), "--port", "0",
         "--token-file", str(token_file)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.stdout is not None
    try:
        url = proc.stdout.readline().split()[-1]
        with spoolq.SyncQueue.create(f"{url}/jobs", token="sécret ✓") as q:
            q.put(1)
            assert q.get(timeout=5) == 1
        with pytest.raises(spoolq.AuthenticationError):
            spoolq.SyncQueue.create(f"{url}/jobs", token="sécret")
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stdout.close()


def test_a_byte_order_mark_is_not_part_of_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes("\ufeffsécret\r\n".encode())  # as Notepad saves it
    assert read_token_file(token_file) == "sécret"
