"""What `spoolq load` takes as a line: UTF-8 JSON, and blank lines of JSON's white space."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .cli_support import run


def _load(tmp_path: Path, content: bytes) -> tuple[int, str, str]:
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    path = str(tmp_path / "q.sqlite")
    result = run("load", path, str(source))
    return result.exit_code, result.output, path


@pytest.mark.parametrize("line", [b"{\x00}\x00", b'"\x00a\x00"', b"[\x001\x00]\x00"],
                         ids=["object", "string", "array"])
def test_a_line_holding_nul_bytes_is_refused_as_not_json(tmp_path: Path, line: bytes) -> None:
    # Given bytes with NULs, Python's parser guesses UTF-16 or UTF-32 and may read
    # another item than the line's text says, or give a message about another codec.
    status, output, path = _load(tmp_path, b'{"a": 1}\n' + line)
    assert status == 1
    assert "in.jsonl:2: not valid JSON" in output and "utf-16" not in output.lower()
    assert not os.path.exists(path)  # a file is checked through before the queue is made


def test_a_line_of_a_form_feed_is_not_blank(tmp_path: Path) -> None:
    status, output, _path = _load(tmp_path, b'{"a": 1}\n\x0c\n{"b": 2}\n')
    assert status == 1 and "in.jsonl:2: not valid JSON" in output


def test_lines_of_json_white_space_are_skipped_and_a_bom_is_read(tmp_path: Path) -> None:
    status, output, path = _load(tmp_path, b'\xef\xbb\xbf{"a": 1}\n \t\r\n\n{"b": 2}\r\n')
    assert status == 0, output
    peek = run("peek", path, "--json")
    assert peek.exit_code == 0
    assert '"a": 1' in peek.stdout and '"b": 2' in peek.stdout and "loaded 2" in output
