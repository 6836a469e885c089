"""Lease owners: which processes count as dead, and what happens to their leases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import spoolq
from spoolq import SyncQueue
from spoolq.engines import Lease, open_engine
from spoolq.owners import new_owner, owner_is_dead

LEASER = textwrap.dedent("""
    import sys, time, spoolq
    q = spoolq.SyncQueue.create(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        q.lease(ttl=3600)
    print("holding", flush=True)
    time.sleep(60)
""")


def start_leaser(path: str, n: int) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", LEASER, path, str(n)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "holding"
    return child


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def test_leases_of_a_killed_process_not_yet_waited_for_come_back(tmp_path: Path) -> None:
    """A worker killed while its parent is busy stays a zombie until the parent waits
    for it; it runs no more, so its leases come back at once."""
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
    child = start_leaser(path, 2)
    try:
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while process_state(child.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with SyncQueue.create(path) as q:
            assert q.stats["leased"] == 0
            msgs = q.lease_many(2, block=False)
            assert [(m.item, m.attempts) for m in msgs] == [("a", 2), ("b", 2)]
    finally:
        child.kill()
        child.wait(10)
        assert child.stdout is not None
        child.stdout.close()


def _check_as_other_user(owner: str) -> tuple[bool, bool]:
    """owner_is_dead(owner), and for the same pid with another start time (a new process
    under the dead owner's pid), as seen by a process of another user."""
    host, pid, start, rand = owner.split(":")
    started, _, namespace = start.partition("/")
    other = f"{host}:{pid}:{int(started) + 1}{'/' + namespace if namespace else ''}:{rand}"
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            with pytest.raises(PermissionError):
                os.kill(int(pid), 0)
            os.write(write, bytes([owner_is_dead(owner), owner_is_dead(other)]))
        finally:
            os._exit(0)
    os.close(write)
    try:
        got = os.read(read, 2)
    finally:
        os.close(read)
        os.waitpid(child, 0)
    assert len(got) == 2, "the checking process failed"
    return bool(got[0]), bool(got[1])


def test_a_reused_pid_of_another_user_does_not_keep_a_dead_owner_alive() -> None:
    """kill() answers EPERM for another user's process: the pid exists, but only its start
    time says whether it is the owner or a new process that got the dead owner's pid."""
    if os.geteuid() == 0:
        owner = new_owner()  # this root process, checked by a process of user nobody
        running, reused = _check_as_other_user(owner)
    else:
        with open("/proc/1/stat", "rb") as f:  # pid 1: root's, never this user's
            started = f.read().rsplit(b")", 1)[1].split()[19].decode()
        namespace = os.readlink("/proc/self/ns/pid")[5:-1]
        host = new_owner().split(":")[0]
        running = owner_is_dead(f"{host}:1:{started}/{namespace}:x")
        reused = owner_is_dead(f"{host}:1:{int(started) + 1}/{namespace}:x")
    assert (running, reused) == (False, True)


def test_an_owner_in_another_pid_namespace_with_the_same_host_name_is_not_dead(
        tmp_path: Path) -> None:
    """Containers that share the host's name (host networking) have their own pids: a
    live consumer in one must not lose its leases to a handle opened in another."""
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
        msg = q.lease(ttl=3600)
        script = textwrap.dedent("""
            import sys, spoolq
            with spoolq.SyncQueue.create(sys.argv[1]) as q:
                print(q.stats["leased"], q.lease(block=False).item)
        """)
        out = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc",
             sys.executable, "-c", script, path],
            check=False, capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["1", "b"]
        q.ack(msg)
        assert q.stats["leased"] == 0


@pytest.mark.parametrize("pid", ["99999999999999999999999", "\u00b2", "0", "-5", ""])
def test_owner_with_a_damaged_pid_is_not_dead_and_does_not_fail(pid: str) -> None:
    host = new_owner().split(":")[0]
    assert owner_is_dead(f"{host}:{pid}:0:x") is False


def test_owner_of_a_live_process_and_of_an_ended_one() -> None:
    child = subprocess.Popen([sys.executable, "-c",
                              "from spoolq.owners import new_owner; print(new_owner())"],
                             stdout=subprocess.PIPE, text=True)
    owner = child.communicate(timeout=10)[0].strip()
    assert owner_is_dead(owner)
    assert not owner_is_dead(new_owner())
    assert not owner_is_dead("elsewhere.invalid:1:0:remote")


def test_expired_leases_still_come_back_after_the_clock_is_set_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wall clock set back an hour (NTP step, manual change) must not stop a waiting
    consumer from returning leases that run out from then on."""
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path, poll_interval=0.01) as a, \
            SyncQueue.create(path, poll_interval=0.01) as b:
        a.put_many(["x", "y", "z"])
        held = a.lease(ttl=3600)
        assert b.get_nowait() == "y"  # b has looked for expired leases just now
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 3600)
        a.ack(held)
        short = a.lease(ttl=0.2)
        assert short.item == "z"
        started = time.monotonic()
        again = b.lease(timeout=1.5)
        assert (again.item, again.attempts) == ("z", 2)
        assert time.monotonic() - started < 1.0
        with pytest.raises(spoolq.LeaseError):
            a.ack(short)
        b.ack(again)
        assert b.stats["leased"] == 0 and b.stats["redelivered"] == 1


def _in_child(body: object) -> int:
    """Fork; run ``body()`` in the child and exit with its result (1 on an exception)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = body()  # type: ignore[operator]
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_forked_child_closing_its_parents_handle_leaves_the_parents_leases(
        tmp_path: Path) -> None:
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
        msg = q.lease(ttl=3600)

        def close_it() -> int:
            q.close()
            return 0

        assert _in_child(close_it) == 0
        with SyncQueue.create(path) as other:
            assert other.stats["leased"] == 1
        q.ack(msg)
        assert q.get_nowait() == "b"


def test_a_forked_child_settles_what_its_parent_leased(tmp_path: Path) -> None:
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b", "c"])
        first, second = q.lease_many(2, ttl=3600)

        def settle() -> int:
            q.ack(first)
            q.nack(second)
            return 0

        assert _in_child(settle) == 0
        again = q.lease(block=False)
        assert (again.item, again.attempts) == ("b", 2)
        q.ack(again)
        assert q.get_nowait() == "c"


LONG_LIVED_CHILD = textwrap.dedent("""
    import os, sys, time, spoolq
    q = spoolq.SyncQueue.create(sys.argv[1])
    if os.fork():
        os._exit(0)  # the parent goes, as a process that puts itself in the background
    msg = q.lease(ttl=3600)
    print(os.getpid(), msg.item, flush=True)
    time.sleep(60)
""")


def test_leases_of_a_child_that_outlives_its_parent_are_not_taken(tmp_path: Path) -> None:
    """A process that opened the queue and then forked into the background (the parent
    exits) leases under its own pid: its leases are not those of a dead process."""
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
    with subprocess.Popen([sys.executable, "-c", LONG_LIVED_CHILD, path],
                          stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        child_pid, item = parent.stdout.readline().split()
        try:
            assert parent.wait(10) == 0 and item == "a"
            with SyncQueue.create(path) as q:
                assert q.stats["leased"] == 1
                assert q.lease(block=False).item == "b"
        finally:
            os.kill(int(child_pid), signal.SIGKILL)


def test_a_failed_ack_leaves_the_handles_counts_right(tmp_path: Path) -> None:
    """An ack that raises because the lease ran out and another handle settled the item
    must not leave this handle counting the item as leased."""
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path, poll_interval=0.01) as a, \
            SyncQueue.create(path, poll_interval=0.01) as b:
        a.put_many(["x", "y"])
        first = a.lease(ttl=0.05)
        time.sleep(0.1)
        again = b.lease(timeout=1)
        assert (again.item, again.attempts) == ("x", 2)
        b.ack(again)
        with pytest.raises(spoolq.LeaseError):
            a.ack(first)
        stats = a.stats
        assert (stats["leased"], stats["count"], stats["acks"]) == (0, 1, 0)
        assert a.get_nowait() == "y"
        a.task_done()
        a.join()


def _lease_as(path: str, owner: str) -> None:
    eng = open_engine(path)
    try:
        now = time.time()
        assert len(eng.take("default", 1, now, Lease(owner, now + 3600))) == 1
    finally:
        eng.close()


def _owner_elsewhere(boot: str, machine: str) -> str:
    """An owner like this process's, with another boot and machine id, and the pid of a
    process that has ended here."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           check=True, capture_output=True, text=True)
    host, _pid, start, rand = new_owner().split(":")
    started, namespace, our_boot, our_machine = start.split("/")
    assert our_boot and our_machine, "this system tells its boot and machine ids"
    return (f"{host}:{child.stdout.strip()}:{started}/{namespace}/{boot or our_boot}/"
            f"{machine or our_machine}:{rand}")


def test_leases_of_another_machine_with_the_same_host_name_are_kept(tmp_path: Path) -> None:
    """Two machines named alike ("localhost", a cloned image) sharing a queue: a pid that
    does not run here may run there."""
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
    owner = _owner_elsewhere("0123456789ab", "ba9876543210")
    assert not owner_is_dead(owner)
    _lease_as(path, owner)
    with SyncQueue.create(path) as q:
        assert q.stats["leased"] == 1
        assert q.lease(block=False).item == "b"


def test_leases_of_an_earlier_boot_of_this_machine_come_back(tmp_path: Path) -> None:
    path = os.fspath(tmp_path / "q.sqlite")
    with SyncQueue.create(path) as q:
        q.put_many(["a", "b"])
    owner = _owner_elsewhere("0123456789ab", "")
    assert owner_is_dead(owner)
    _lease_as(path, owner)
    with SyncQueue.create(path) as q:
        assert q.stats["leased"] == 0
        assert [(m.item, m.attempts) for m in q.lease_many(2, block=False)] == [
            ("a", 2), ("b", 1)]


def test_spoolq_tells_the_owners_of_other_machines_with_this_host_name_apart() -> None:
    """`spoolq info --leases` showed such owners as running here."""
    from spoolq.cli._output import owner_state

    assert owner_state(new_owner()) == "running"
    assert owner_state(_owner_elsewhere("0123456789ab", "ba9876543210")) == "unknown"
    assert owner_state(_owner_elsewhere("0123456789ab", "")) == "gone"  # an earlier boot
    host, pid, start, rand = new_owner().split(":")
    started, _namespace, boot, machine = start.split("/")
    other_namespace = f"{host}:{pid}:{started}/1/{boot}/{machine}:{rand}"
    assert owner_state(other_namespace) == "unknown"


def test_a_ttl_or_delay_past_the_float_range_is_a_value_error(tmp_path: Path) -> None:
    with SyncQueue.create(tmp_path / "q.sqlite") as q:
        q.put("a")
        with pytest.raises(ValueError, match="ttl must be a finite number"):
            q.lease(ttl=10**400)
        msg = q.lease(ttl=30)
        with pytest.raises(ValueError, match="delay must be a finite number"):
            q.nack(msg, delay=10**400)
        with pytest.raises(ValueError, match="timeout must be a finite number"):
            q.get(timeout=10**400)
        q.ack(msg)
        assert q.qsize() == 0 and q.stats["leased"] == 0


def test_leases_that_run_out_into_the_dead_letters_are_not_counted_as_redelivered(
        tmp_path: Path) -> None:
    with SyncQueue.create(tmp_path / "q.sqlite", max_attempts=2, poll_interval=0.01) as q:
        q.put("job")
        q.lease(ttl=0.05)
        time.sleep(0.1)
        again = q.lease(timeout=5, ttl=0.05)  # the first lease ran out: delivered again
        assert again.attempts == 2 and q.stats["redelivered"] == 1
        time.sleep(0.1)
        with pytest.raises(spoolq.Empty):
            q.get(timeout=0.3)  # the second ran out at max_attempts: a dead letter
        assert q.stats["dead"] == 1
        assert q.stats["redelivered"] == 1
