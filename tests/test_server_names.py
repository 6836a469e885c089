"""Queue names a client sends: what no engine can hold is a BAD_REQUEST, answered before
the engine sees it, the same on every engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from spoolq.protocol import MAX_META_KEY_BYTES, MAX_QUEUE_BYTES, BadRequest, parse_request

from .servers import ServerProcess
from .test_server_doc_client import _ready

BAD_NAMES = ["", "a\x00b", "é" * 200, "x" * (MAX_QUEUE_BYTES + 1)]


@pytest.mark.parametrize("name", BAD_NAMES, ids=["empty", "nul", "long-utf8", "long"])
def test_a_queue_name_no_engine_holds_is_a_bad_request(name: str) -> None:
    with pytest.raises(BadRequest, match="queue"):
        parse_request(7, {"op": "counts", "queue": name})


def test_the_longest_name_and_its_dead_letters_are_accepted() -> None:
    longest = "q" * 255 + ".dead"
    assert len(longest.encode()) == MAX_QUEUE_BYTES
    assert parse_request(1, {"op": "counts", "queue": longest}).args["queue"] == longest


@pytest.mark.parametrize("name", BAD_NAMES, ids=["empty", "nul", "long-utf8", "long"])
@pytest.mark.parametrize("field", ["src", "dst"])
def test_a_move_naming_a_queue_no_engine_holds_is_a_bad_request(name: str, field: str) -> None:
    body = {"op": "move", "src": "q", "dst": "r", field: name}
    with pytest.raises(BadRequest, match="queue"):
        parse_request(7, body)


BAD_KEYS = ["", "a\x00b", "é" * 201, "k" * (MAX_META_KEY_BYTES + 1)]


@pytest.mark.parametrize("key", BAD_KEYS, ids=["empty", "nul", "long-utf8", "long"])
@pytest.mark.parametrize("op", ["get_meta", "set_meta"])
def test_a_meta_key_no_engine_holds_is_a_bad_request(key: str, op: str) -> None:
    with pytest.raises(BadRequest, match="'key'"):
        parse_request(7, {"op": op, "key": key, "value": b"v"})


def test_the_longest_meta_key_is_accepted() -> None:
    key = "k" * MAX_META_KEY_BYTES
    assert parse_request(1, {"op": "set_meta", "key": key, "value": b"v"}).args["key"] == key


@pytest.mark.parametrize("suffix", [".lmdb", ".sqlite", ".dbm"])
def test_every_engine_answers_a_bad_name_alike_and_keeps_serving(
        tmp_path: Path, suffix: str) -> None:
    with ServerProcess(str(tmp_path / f"store{suffix}")) as srv:
        c = _ready(srv.port)
        for ident, name in enumerate(BAD_NAMES, start=1):
            ftype, got, body = c.call(ident, "append", queue=name, records=[b"r"], sizes=[1],
                                      now=1.0)
            assert (ftype, got, body["code"]) == (4, ident, 10), body
        longest = "q" * 255 + ".dead"
        assert c.call(9, "append", queue=longest, records=[b"r"], sizes=[1], now=1.0) == (
            3, 9, [1])
        assert c.call(10, "counts", queue=longest) == (3, 10, [1, 0, 1, 1])
        c.close()
