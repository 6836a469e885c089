"""``spoolq bench``: rates of a throwaway queue, on every engine, never touching other queues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import spoolq
from spoolq.cli import ExitCode
from spoolq.cli.bench import MIN_ITEM_BYTES, make_items, run_bench
from spoolq.engines import open_engine

from .cli_support import run, run_json, run_process
from .servers import ServerProcess


def _sane(result: dict[str, object], items: int) -> None:
    assert result["items"] == items
    for key in ("put_per_second", "get_per_second", "ops_per_second", "put_seconds",
                "get_seconds"):
        assert isinstance(result[key], float) and result[key] > 0, key
    put_s, get_s = result["put_seconds"], result["get_seconds"]
    assert isinstance(put_s, float) and isinstance(get_s, float)
    assert result["ops_per_second"] == pytest.approx(2 * items / (put_s + get_s), rel=1e-3)


@pytest.mark.parametrize("engine", ["sqlite", "lmdb", "dbm", "pickle"])
def test_bench_in_a_folder_leaves_nothing_behind(tmp_path: Path, engine: str) -> None:
    result = run_json("bench", str(tmp_path), "--engine", engine, "-n", "200")
    _sane(result, 200)
    assert result["engine"] == engine and result["api"] == "SyncQueue"
    assert result["serializer"] == "cbor" and result["compressor"] == "zstd"
    assert result["raw_size_bytes"] > 0
    assert list(tmp_path.iterdir()) == []  # the throwaway queue is gone


def test_bench_batches_async_and_durabilities(tmp_path: Path) -> None:
    for n, args in ((300, ["--batch", "50"]), (300, ["--async"]),
                    (300, ["--async", "--batch", "25"]), (50, ["--durability", "fsync"]),
                    (300, ["--durability", "buffer"])):
        result = run_json("bench", str(tmp_path), "-n", str(n), *args)
        _sane(result, n)
        assert result["api"] == ("Queue (asyncio)" if "--async" in args else "SyncQueue")
        assert result["batch"] == (int(args[-1]) if "--batch" in args else 1)
    assert list(tmp_path.iterdir()) == []


def test_bench_producers_share_the_puts(tmp_path: Path) -> None:
    for args in (["--producers", "8"], ["--producers", "8", "--async"],
                 ["--producers", "3", "--batch", "7"]):
        result = run_json("bench", str(tmp_path), "-n", "200", "--durability", "fsync", *args)
        _sane(result, 200)  # every item put was got back
        assert result["producers"] == int(args[1])
    table = run("bench", ":memory:", "-n", "100", "--producers", "4")
    assert "4 threads putting" in table.stdout
    assert list(tmp_path.iterdir()) == []


def test_bench_reports_what_compression_saved() -> None:
    plain = run_json("bench", ":memory:", "-n", "300", "--size", "400", "--serializer",
                     "raw", "--compressor", "none")
    assert plain["engine"] == "memory"
    assert plain["compression_ratio_pct"] < 0  # headers only: nothing saved
    assert plain["raw_size_bytes"] == sum(len(b) for b in make_items(300, 400, raw=True))
    packed = run_json("bench", ":memory:", "-n", "300", "--size", "400")
    assert packed["compression_ratio_pct"] > 30  # words from a small vocabulary


def test_bench_items_have_the_size_asked_for() -> None:
    for size in (60, 100, 4096):
        assert {len(b) for b in make_items(50, size, raw=True)} == {size}
        assert {len(json.dumps(d, separators=(",", ":"))) for d in make_items(50, size)} \
            == {size}
    assert all(len(b) > 10 for b in make_items(5, 10, raw=True))  # the fields alone


def test_bench_refuses_sizes_below_the_smallest_item() -> None:
    assert max(len(b) for b in make_items(1000, 1, raw=True)) == MIN_ITEM_BYTES
    for size in ("5", str(MIN_ITEM_BYTES - 1)):
        result = run("bench", ":memory:", "-n", "10", "--size", size)
        assert result.exit_code == ExitCode.USAGE, result.output
        assert f"{size} is not in the range {MIN_ITEM_BYTES}<=" in result.stderr
    with pytest.raises(ValueError, match=f"at least {MIN_ITEM_BYTES}"):
        run_bench(":memory:", items=10, size=5)
    result = run("bench", ":memory:", "-n", "10", "--size", str(MIN_ITEM_BYTES))
    assert result.exit_code == 0, result.output
    assert f"items of {MIN_ITEM_BYTES} B as JSON" in result.stdout


def test_bench_table_for_people(tmp_path: Path) -> None:
    result = run("bench", str(tmp_path), "-n", "100")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "SyncQueue on the sqlite engine, durability commit, 100 items" in out
    for phase in ("put", "get", "put+get"):
        assert f"\n{phase} " in out
    assert "serialized" in out and ("saved" in out or "headers add" in out)


def test_bench_never_opens_an_existing_queue(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    with spoolq.SyncQueue.create(str(path)) as q:
        q.put("keep me")
    before = path.read_bytes()
    result = run("bench", str(path), "-n", "10")
    assert result.exit_code == 2 and "is a file" in result.output
    assert path.read_bytes() == before
    missing = run("bench", str(tmp_path / "nowhere"), "-n", "10")
    assert missing.exit_code == 2 and "missing" in missing.output
    engine_for_memory = run("bench", ":memory:", "--engine", "lmdb")
    assert engine_for_memory.exit_code == 2 and "--engine applies" in engine_for_memory.output
    bad = run("bench", ":memory:", "--compressor", "nope")
    assert bad.exit_code == 2


def test_bench_against_a_server_purges_its_queue(tmp_path: Path) -> None:
    path = str(tmp_path / "served.sqlite")
    with ServerProcess(path) as srv:
        proc = run_process("bench", srv.url, "-n", "200", "--batch", "20", "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        _sane(result, 200)
        assert result["engine"] == "remote"
    with spoolq.SyncQueue.create(path) as q:  # the server's file: bench's queue left empty
        engine = q._core.engine
        bench_queues = [name for name in engine.queues() if name.startswith("bench-")]
        assert bench_queues and all(engine.counts(name).ready == 0 for name in bench_queues)


def test_bench_against_postgres_purges_its_queue(pg_url: str, pg_schema: str) -> None:
    result = run_json("bench", pg_url, "--schema", pg_schema, "-n", "100", "--batch", "10")
    _sane(result, 100)
    assert result["engine"] == "postgres"
    engine = open_engine(pg_url, options={"schema": pg_schema})
    try:
        bench_queues = [name for name in engine.queues() if name.startswith("bench-")]
        assert bench_queues and all(engine.counts(name).ready == 0 for name in bench_queues)
    finally:
        engine.close()
    assert run("bench", ":memory:", "--schema", pg_schema).exit_code == 2
