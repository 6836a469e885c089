"""The LMDB engine under hostile use: odd arguments, ids it gives out during a call."""

from __future__ import annotations

import select
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import lmdb
import pytest

from spoolq import FormatError
from spoolq.engines import Lease, LMDBEngine
from spoolq.engines._checks import MAX_OWNER_BYTES

from .test_lmdb_engine import as_earlier_format


def test_a_move_onto_its_own_queue_moves_each_record_once(tmp_path: Path) -> None:
    """A move of a queue's ids onto that queue gives the moved records new ids: an id
    among those asked for that the move itself gave out was moved a second time."""
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        first, second = eng.append("q", [b"a", b"b"], [1, 1], 1.0)
        # The move gives a the id 3 and b the id 4, which are asked for too.
        assert eng.move("q", "q", [first, second, second + 1, second + 2]) == 2
        assert [(r.id, r.data) for r in eng.peek("q", 5)] == [(3, b"a"), (4, b"b")]
        assert eng.counts("q") == (2, 0, 2, 2)
    finally:
        eng.close()


def test_ids_that_are_not_ints_are_skipped_by_release_and_refused_by_move(
        tmp_path: Path) -> None:
    """As ack does, and the other engines: release raised a bare struct.error. A move is
    refused, as on every engine: it skipped 2.0 here, where the memory engine moved record 2."""
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 1.0)
        (got,) = eng.take("q", 1, 1.0, Lease("o", 9.0))
        odd = [(1.5, 1), (float(got.id), 1)]
        assert eng.release("q", odd, "o", not_before=0.0, max_attempts=None) == []
        with pytest.raises(TypeError, match="a record id must be an int, not float"):
            eng.move("q", "r", [1.5, 2.0])
        assert eng.counts("q") == (1, 1, 2, 2)
        assert eng.release("q", [*odd, (got.id, 1)], "o", not_before=0.0,
                           max_attempts=None) == [got.id]
        assert eng.move("q", "r", [got.id]) == 1
        assert [r.data for r in eng.peek("q", 5)] == [b"b"]
    finally:
        eng.close()


def test_a_refused_read_only_open_leaves_the_lock_file_of_the_process_creating_the_queue(
        tmp_path: Path) -> None:
    """A reader waits a second for the process creating a queue in an empty file; refused
    after that, it removed the lock file that the creator, which had made it meanwhile,
    still used: a third process would then make another, and two writers work at once."""
    path = tmp_path / "q.lmdb"
    path.write_bytes(b"")
    lock = tmp_path / "q.lmdb-lock"
    # A creator stalled before its first commit (one whose fsync takes seconds, say).
    script = textwrap.dedent(f"""
        import sys
        import lmdb
        print("ready", flush=True)
        sys.stdin.readline()
        env = lmdb.Environment({str(path)!r}, subdir=False, max_dbs=8)
        print("open", flush=True)
        sys.stdin.readline()
        env.close()
        """)
    refused: list[BaseException] = []

    def read() -> None:
        with pytest.raises(FormatError) as caught:
            LMDBEngine(path, read_only=True)
        refused.append(caught.value)

    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as creator:
        assert creator.stdin is not None and creator.stdout is not None
        assert creator.stdout.readline().strip() == "ready"
        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.1)  # the reader waits for the empty file to fill
        creator.stdin.write("\n")
        creator.stdin.flush()
        assert creator.stdout.readline().strip() == "open"
        reader.join(30)
        assert len(refused) == 1
        assert lock.exists()
        creator.stdin.write("\n")
        creator.stdin.flush()
        assert creator.wait(30) == 0


def test_a_lease_owner_longer_than_every_engine_takes_is_refused_by_name(
        tmp_path: Path) -> None:
    """An owner's length is stored in 16 bits: a longer one raised a bare struct.error
    ("'H' format requires 0 <= number <= 65535"), which a server passed on as it was. The
    limit is now the one of every engine, and a longer owner leases nothing."""
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        eng.append("q", [b"a"], [1], 1.0)
        for owner in ("é" * (1 << 15), "o" * 65535, "o" * (MAX_OWNER_BYTES + 1)):
            with pytest.raises(ValueError, match=r"a lease owner must be at most 448 bytes "
                                                 r"of UTF-8.*nothing was changed"):
                eng.take("q", 1, 1.0, Lease(owner, 9.0))
        assert eng.counts("q") == (1, 0, 1, 1)
        (got,) = eng.take("q", 1, 1.0, Lease("o" * MAX_OWNER_BYTES, 9.0))
        assert eng.owners("q") == {"o" * MAX_OWNER_BYTES: 1}
        assert eng.ack("q", [(got.id, 1)], "o" * MAX_OWNER_BYTES) == [got.id]
    finally:
        eng.close()


def _lengthen_owners(path: Path, owner: str) -> None:
    """Give every lease of the file ``owner``, as a take of a version before the limit
    stored it: in a format 2 file, which has no index of its leases."""
    as_earlier_format(path, 2)
    env = lmdb.Environment(str(path), subdir=False, max_dbs=10)
    try:
        with env.begin(write=True) as txn:
            leased = env.open_db(b"leased", txn=txn)
            for key, value in list(txn.cursor(db=leased)):
                until, length = struct.unpack_from(">dH", value)
                data = owner.encode()
                txn.put(key, struct.pack(">dH", until, len(data)) + data + value[10 + length:],
                        db=leased)
    finally:
        env.close()


@pytest.mark.parametrize("settle", ["ack", "release", "expire"])
def test_a_lease_an_earlier_version_gave_a_longer_owner_is_still_settled_by_it(
        tmp_path: Path, settle: str) -> None:
    path = tmp_path / "q.lmdb"
    eng = LMDBEngine(path)
    try:
        eng.append("q", [b"a", b"b"], [1, 1], 1.0)
        held = [(r.id, r.attempts) for r in eng.take("q", 2, 1.0, Lease("me", 100.0))]
    finally:
        eng.close()
    owner = "é" * 30_000
    _lengthen_owners(path, owner)
    eng = LMDBEngine(path)
    try:
        assert eng.owners("q") == {owner: 2}
        assert [lr.owner for lr in eng.peek_leased("q", 5)] == [owner, owner]
        if settle == "ack":
            assert eng.ack("q", held, owner) == [1, 2]
            assert eng.counts("q") == (0, 0, 0, 0)
        elif settle == "release":
            assert eng.release("q", held, owner, not_before=0.0, max_attempts=None) == [1, 2]
            assert eng.counts("q") == (2, 0, 2, 2)
        else:
            assert eng.expire("q", 5.0, owners=[owner]) == 2
            assert eng.counts("q") == (2, 0, 2, 2)
        assert eng.owners("q") == {}
    finally:
        eng.close()


def test_a_queue_opened_through_a_symlink_shares_the_lock_of_the_file(tmp_path: Path) -> None:
    """LMDB keeps its lock beside the name it opens: a process opening the queue through a
    symlink wrote while another held the file's write lock, and one of the two commits
    was lost."""
    real, link = tmp_path / "q.lmdb", tmp_path / "link.lmdb"
    LMDBEngine(real).close()
    link.symlink_to(real)
    script = textwrap.dedent(f"""
        import sys
        from spoolq.engines import LMDBEngine
        eng = LMDBEngine({str(link)!r})
        print("opened", flush=True)
        sys.stdin.readline()
        eng.append("q", [b"a"], [1], 1.0)
        print("appended", flush=True)
        eng.close()
        """)
    env = lmdb.Environment(str(real), subdir=False, max_dbs=8)
    try:
        with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) as writer:
            assert writer.stdin is not None and writer.stdout is not None
            assert writer.stdout.readline().strip() == "opened"
            txn = env.begin(write=True)  # another process's write in progress
            writer.stdin.write("\n")
            writer.stdin.flush()
            waiting, _, _ = select.select([writer.stdout], [], [], 0.5)
            txn.abort()
            assert not waiting, "the append did not wait for the write in progress"
            assert writer.stdout.readline().strip() == "appended"
            assert writer.wait(30) == 0
    finally:
        env.close()
    assert not (tmp_path / "link.lmdb-lock").exists()
    eng = LMDBEngine(link)
    try:
        assert [r.data for r in eng.peek("q", 5)] == [b"a"]
    finally:
        eng.close()


@pytest.mark.parametrize("key", ["", "k" * 401, "é" * 201, "a\x00b"])
def test_a_metadata_key_the_protocol_refuses_is_refused_by_name(tmp_path: Path,
                                                                key: str) -> None:
    """An empty key, or one over LMDB's 511 bytes, failed with MDB_BAD_VALSIZE. Keys follow
    the rule the server applies (1 to 400 bytes of UTF-8, no NUL), so a key that works on
    a local file works through a server too."""
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        eng.set_meta("k", b"v")
        with pytest.raises(ValueError, match=r"a metadata key must be 1 to 400 bytes of "
                                             r"UTF-8 without NUL.*nothing was changed"):
            eng.set_meta(key, b"w")
        with pytest.raises(ValueError, match="a metadata key must be 1 to 400 bytes"):
            eng.get_meta(key)
        with pytest.raises(TypeError, match="a metadata key must be a str, not bytes"):
            eng.get_meta(b"k")  # type: ignore[arg-type]
        eng.set_meta("é" * 200, b"w")
        assert eng.get_meta("é" * 200) == b"w"
        assert eng.get_meta("k") == b"v"
    finally:
        eng.close()


@pytest.mark.parametrize("name", ["", "q" * 512, "é" * 256])
def test_a_queue_name_longer_than_a_key_is_refused_by_name(tmp_path: Path, name: str) -> None:
    """LMDB keys a queue by its name, of 1 to 511 bytes: an empty or longer name failed with
    MDB_BAD_VALSIZE. Reading such a queue finds it empty, as one never used."""
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        eng.append("q", [b"a"], [1], 1.0)
        with pytest.raises(ValueError, match=r"a queue name must be 1 to 511 bytes of UTF-8 "
                                             r"in an LMDB queue, not \d+; nothing was changed"):
            eng.append(name, [b"x"], [1], 1.0)
        with pytest.raises(ValueError, match="a queue name must be 1 to 511 bytes"):
            eng.move("q", name)
        (taken,) = eng.take("q", 1, 1.0, None)
        with pytest.raises(ValueError, match="a queue name must be 1 to 511 bytes"):
            eng.restore(name, [taken])
        eng.restore("q", [taken])
        assert eng.counts(name) == (0, 0, 0, 0)
        assert eng.peek(name, 5) == eng.take(name, 5, 1.0, None) == []
        assert eng.purge(name) == 0
        assert eng.queues() == ["q"]
        assert eng.counts("q") == (1, 0, 1, 1)
    finally:
        eng.close()


def test_a_new_queue_whose_dead_letter_name_would_be_too_long_is_refused(
        tmp_path: Path) -> None:
    """A queue of 510 bytes would have dead letters in a queue of 515, past LMDB's key
    limit: it is refused before anything is written (a queue of such a name already in a
    file: test_lmdbmove_names.py)."""
    name = "q" * 510
    eng = LMDBEngine(tmp_path / "q.lmdb")
    try:
        with pytest.raises(ValueError, match="510"):
            eng.append(name, [b"a"], [1], 1.0)
        assert eng.queues() == []
    finally:
        eng.close()
