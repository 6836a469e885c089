"""``spoolq verify`` compares the lease owners a store keeps (LMDB counts them apart from
the leased records) with the owners of the leased records it reads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lmdb
import pytest

import spoolq
from spoolq.cli import ExitCode
from spoolq.engines import Lease, open_engine

from .cli_support import run


def _leased_file(path: Path) -> None:
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(list(range(5)))
    eng = open_engine(path)
    try:
        eng.take("default", 2, time.time(), Lease("worker-a", time.time() + 600))
        eng.take("default", 1, time.time(), Lease("worker-b", time.time() + 600))
    finally:
        eng.close()


@pytest.mark.parametrize("suffix", [".sqlite", ".lmdb", ".dbm", ".pickle"])
def test_a_sound_file_with_leases_verifies(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"q{suffix}"
    _leased_file(path)
    result = run("verify", str(path), "--json")
    assert result.exit_code == ExitCode.OK, result.output
    (row,) = [q for q in json.loads(result.stdout)["queues"] if q["name"] == "default"]
    assert row["leased_read"] == 3


def test_lease_owner_counts_that_drifted_from_the_leased_records_are_reported(
        tmp_path: Path) -> None:
    path = tmp_path / "q.lmdb"
    _leased_file(path)
    env = lmdb.open(str(path), subdir=False, max_dbs=10)
    try:
        with env.begin(write=True) as txn:
            owners = env.open_db(b"lease_owners", txn=txn)
            (key,) = [k for k, _ in txn.cursor(db=owners) if k.endswith(b"worker-b")]
            txn.put(key, (7).to_bytes(8, "big"), db=owners)
    finally:
        env.close()
    result = run("verify", str(path), "--json")
    assert result.exit_code == ExitCode.PROBLEM, result.output
    assert any("the stored lease owners say 2 held by 'worker-a', 7 held by 'worker-b', "
               "the leased records were read as 2 held by 'worker-a', 1 held by 'worker-b'"
               in line for line in json.loads(result.stdout)["problems"])
