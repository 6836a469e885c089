"""SIGKILL at random moments of put_many, get_many, leases, dead letters, purge, zstd
dictionary training, file creation and two writers: after each kill the queue reopens
and holds exactly what the killed process confirmed, give or take its one unconfirmed
call, which applies whole or not at all.

The child writes an intent line before each call and a confirmation line after it,
straight to a file (``os.write``: nothing is buffered in the process), so the parent
knows what was confirmed and which call the kill interrupted. The workload is seeded:
a failure names its engine, seed and round.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from spoolq import SyncQueue

from .conftest import SHARED_ENGINES, queue_path

CHILD = textwrap.dedent("""
    import asyncio, os, random, sys, spoolq
    path, log, seed, tag, mode, compressor, max_attempts, ops = sys.argv[1:9]
    rng = random.Random(int(seed))
    max_attempts = int(max_attempts) or None
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    WORDS = ["alpha", "beta", "gamma", "delta", "order", "user", "price", "status"]

    def say(*parts):
        os.write(fd, (" ".join(map(str, parts)) + "\\n").encode())

    counter = 0

    def batch():
        global counter
        size = rng.choice([1, 3, 70, 700, 3000]) if "p" in ops else 0
        out = []
        for _ in range(size):
            counter += 1
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 30)))
            out.append({"k": f"{tag}-{counter}", "text": words, "n": counter})
        return out

    def choose():
        return rng.choice(ops)

    kwargs = dict(compressor=None if compressor == "-" else compressor,
                  max_attempts=max_attempts)

    def run_sync():
        q = spoolq.SyncQueue.create(path, **kwargs)
        say("open")
        held = []
        while True:
            op = choose()
            if op == "p":
                items = batch()
                say("p+", *[i["k"] for i in items])
                q.put_many(items)
                say("p")
            elif op == "g":
                n = rng.choice([1, 5, 200])
                say("g+", n)
                try:
                    got = q.get_many(n, block=False)
                except spoolq.Empty:
                    got = []
                say("g", *[i["k"] for i in got])
            elif op == "l":
                say("l+")
                try:
                    msgs = q.lease_many(rng.choice([1, 4, 50]), block=False, ttl=60)
                except spoolq.Empty:
                    msgs = []
                held += msgs
                say("l", *[m.item["k"] for m in msgs])
            elif op in "an" and held:
                rng.shuffle(held)
                k = rng.randrange(1, min(len(held), 20) + 1)
                msgs, held[:] = held[:k], held[k:]
                keys = [m.item["k"] for m in msgs]
                if op == "a":
                    say("a+", *keys)
                    q.ack(*msgs)
                    say("a", *keys)
                else:
                    say("n+", *keys)
                    q.nack(*msgs, delay=rng.choice([0.0, 0.0, 0.01, 0.05]))
                    say("n", *keys)
            elif op == "u":
                say("u+")
                q.purge()
                held.clear()
                say("u")

    async def run_async():
        q = await spoolq.Queue.create(path, calls_on_loop=mode == "async-loop", **kwargs)
        say("open")
        held = []
        while True:
            op = choose()
            if op == "p":
                items = batch()
                say("p+", *[i["k"] for i in items])
                await q.put_many(items)
                say("p")
            elif op == "g":
                n = rng.choice([1, 5, 200])
                say("g+", n)
                try:
                    got = await q.get_many(n, timeout=0.001)
                except (asyncio.QueueEmpty, spoolq.Empty):
                    got = []
                say("g", *[i["k"] for i in got])
            elif op == "l":
                say("l+")
                try:
                    msgs = [await q.lease(ttl=60, timeout=0.001)]
                except (asyncio.QueueEmpty, spoolq.Empty):
                    msgs = []
                held += msgs
                say("l", *[m.item["k"] for m in msgs])
            elif op in "an" and held:
                rng.shuffle(held)
                k = rng.randrange(1, min(len(held), 20) + 1)
                msgs, held[:] = held[:k], held[k:]
                keys = [m.item["k"] for m in msgs]
                if op == "a":
                    say("a+", *keys)
                    await q.ack(*msgs)
                    say("a", *keys)
                else:
                    say("n+", *keys)
                    await q.nack(*msgs, delay=rng.choice([0.0, 0.0, 0.01, 0.05]))
                    say("n", *keys)
            elif op == "u":
                say("u+")
                await q.purge()
                held.clear()
                say("u")

    if mode == "sync":
        run_sync()
    else:
        asyncio.run(run_async())
""")


@dataclass
class Model:
    """What the queue file must hold, from the confirmed calls of every child."""

    alive: set[str] = field(default_factory=set)
    ever_leased: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)  # confirmed gets, acks and purges
    dead_hint: set[str] = field(default_factory=set)  # dead letters at the last drain

    def replay(self, lines: list[str]) -> tuple[str, list[str]] | None:
        """Apply the confirmed calls; return the interrupted one (its intent), if any."""
        pending: tuple[str, list[str]] | None = None
        for line in lines:
            op, *args = line.split()
            if op.endswith("+"):
                pending = (op[:-1], args)
                continue
            if op == "open":
                continue
            assert pending is not None and pending[0] == op, f"log out of order at {line!r}"
            intent, pending = pending, None
            if op == "p":
                self.alive.update(intent[1])
            elif op in "ga":
                assert set(args) <= self.alive, f"{op} delivered what was not alive: {line}"
                self.alive.difference_update(args)
                self.gone.update(args)
            elif op == "l":
                assert set(args) <= self.alive, f"lease delivered what was not alive: {line}"
                self.ever_leased.update(args)
            elif op == "u":
                self.gone |= self.alive - self.dead_hint
                self.alive &= self.dead_hint
        return pending


def _drain(path: str, compressor: str | None, max_attempts: int | None
           ) -> tuple[int, list[str], list[str]]:
    with SyncQueue.create(path, compressor=compressor, max_attempts=max_attempts) as q:
        size = q.qsize() + q.stats["leased"]
        got: list[str] = []
        while True:
            try:
                got += [i["k"] for i in q.get_many(None, timeout=0.2)]
            except queue.Empty:
                break
        dead = [i["k"] for i in q.peek(1_000_000, dead=True)]
        assert q.qsize() == 0 and q.stats["leased"] == 0
    return size, got, dead


def _check(model: Model, pending: tuple[str, list[str]] | None, size: int, got: list[str],
           dead: list[str], where: str) -> None:
    assert len(got) == len(set(got)), f"{where}: an item drained twice"
    assert len(dead) == len(set(dead)), f"{where}: a dead letter twice"
    assert not set(got) & set(dead), f"{where}: in the queue and in the dead letters"
    assert size == len(got), f"{where}: qsize + leased said {size}, a drain returned {len(got)}"
    held = set(got) | set(dead)
    assert not held & model.gone, f"{where}: confirmed gets/acks came back: " \
        f"{sorted(held & model.gone)[:5]}"
    assert set(dead) <= model.ever_leased | model.dead_hint, f"{where}: unleased item died"
    missing, extra = model.alive - held, held - model.alive
    op, args = pending or ("", [])
    if op == "p":
        assert not missing, f"{where}: confirmed puts lost: {sorted(missing)[:5]}"
        assert extra in (set(), set(args)), f"{where}: part of an unconfirmed put_many stored"
    elif op == "g":
        assert not extra, f"{where}: items never put: {sorted(extra)[:5]}"
        assert len(missing) <= int(args[0]), f"{where}: lost {len(missing)} (get of {args[0]})"
    elif op == "a":
        assert not extra, f"{where}: items never put: {sorted(extra)[:5]}"
        assert missing <= set(args), f"{where}: lost {sorted(missing - set(args))[:5]}"
        assert missing in (set(), set(args)), f"{where}: part of an ack applied"
    elif op == "u":
        assert not extra, f"{where}: items never put: {sorted(extra)[:5]}"
        assert missing in (set(), model.alive - model.dead_hint), f"{where}: part of a purge"
    else:
        assert not extra, f"{where}: items never put: {sorted(extra)[:5]}"
        assert not missing, f"{where}: lost {len(missing)}: {sorted(missing)[:5]}"
    model.alive = held
    model.dead_hint = set(dead)


def _spawn(path: str, log: Path, seed: int, tag: str, mode: str, compressor: str | None,
           max_attempts: int | None, ops: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, path, os.fspath(log), str(seed), tag,
                             mode, compressor or "-", str(max_attempts or 0), ops])


# How long a child may take to start and reach the line it is to be killed after: a loaded
# machine can take seconds to start Python; the wait ends as soon as the line is there.
_START = 30.0


def _wait_lines(log: Path, child: subprocess.Popen[bytes], lines: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and child.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= lines:
            return
        time.sleep(0.002)
    assert child.poll() is None, f"the child exited early ({child.returncode})"


def _lines(log: Path) -> list[str]:
    """The lines a child wrote: none when it was killed before it opened its log."""
    return log.read_text().splitlines() if log.exists() else []


def _kill(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(10)


def _rounds(tmp_path: Path, engine: str, seed: int, *, rounds: int, ops: str, mode: str = "sync",
            compressor: str | None = None, max_attempts: int | None = None,
            lines: tuple[int, int] = (5, 60)) -> None:
    path = queue_path(tmp_path, engine)
    rng = random.Random(seed)
    model = Model()
    for r in range(rounds):
        log = tmp_path / f"log{r}"
        child = _spawn(path, log, seed * 100 + r, f"r{r}", mode, compressor, max_attempts, ops)
        try:
            _wait_lines(log, child, rng.randrange(*lines), _START)
            time.sleep(rng.uniform(0, 0.01))
        finally:
            _kill(child)
        pending = model.replay(_lines(log))
        size, got, dead = _drain(path, compressor, max_attempts)
        _check(model, pending, size, got, dead, f"{engine} seed {seed} round {r} ({pending})")
        if got:  # the drain took them: put them back as the next round starts
            with SyncQueue.create(path, compressor=compressor, max_attempts=max_attempts) as q:
                q.put_many([{"k": k, "text": "back", "n": 0} for k in got])


@pytest.mark.parametrize("engine", SHARED_ENGINES)
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_during_large_put_many_and_get_many(tmp_path: Path, engine: str, seed: int) -> None:
    _rounds(tmp_path, engine, seed, rounds=4, ops="ppg")


@pytest.mark.parametrize("engine", SHARED_ENGINES)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_during_leases_acks_nacks_and_dead_letters(tmp_path: Path, engine: str,
                                                        mode: str) -> None:
    _rounds(tmp_path, engine, 7, rounds=5, ops="plllaannng", mode=mode, max_attempts=2,
            lines=(10, 120))


@pytest.mark.parametrize("seed", [4, 5])
def test_kill_during_async_calls_made_on_the_loop(tmp_path: Path, seed: int) -> None:
    """``calls_on_loop``: puts group-committed on the event loop, gets and leases taken
    there, acks and nacks on the worker."""
    _rounds(tmp_path, "sqlite", seed, rounds=5, ops="pppgllan", mode="async-loop",
            lines=(10, 120))


@pytest.mark.parametrize("engine", SHARED_ENGINES)
def test_kill_during_purge(tmp_path: Path, engine: str) -> None:
    _rounds(tmp_path, engine, 3, rounds=6, ops="ppguu", lines=(3, 30))


@pytest.mark.parametrize("engine", SHARED_ENGINES)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_while_a_zstd_dictionary_is_trained_and_stored(tmp_path: Path, engine: str,
                                                            mode: str) -> None:
    # 1000 samples train the dictionary: the first put_many of 3000, or a few smaller ones.
    _rounds(tmp_path, engine, 11, rounds=5, ops="pppg", mode=mode, compressor="zstd-dict",
            lines=(2, 9))


@pytest.mark.parametrize("engine", SHARED_ENGINES)
def test_kill_while_the_file_is_first_created(tmp_path: Path, engine: str) -> None:
    rng = random.Random(5)
    for r in range(6):
        path = queue_path(tmp_path / f"c{r}", engine)
        os.mkdir(os.path.dirname(path))
        log = tmp_path / f"log{r}"
        child = _spawn(path, log, r, f"r{r}", "sync", None, None, "p")
        try:
            # from before the import ends to a little after the file is created
            deadline = time.monotonic() + 2.0
            while (time.monotonic() < deadline and child.poll() is None
                   and not os.path.exists(path)):
                time.sleep(0.0005)
            time.sleep(rng.choice([0, 0, 0.0005, 0.002, 0.01]))
        finally:
            _kill(child)
        model = Model()
        pending = model.replay(_lines(log))
        size, got, dead = _drain(path, None, None)
        _check(model, pending, size, got, dead, f"{engine} round {r} ({pending})")


TWO = textwrap.dedent("""
    import os, sys, spoolq
    path, log, tag = sys.argv[1:4]
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    q = spoolq.SyncQueue.create(path)
    i = 0
    while True:
        keys = [f"{tag}-{i + j}" for j in range(1 + i % 97)]
        i += len(keys)
        os.write(fd, ("p+ " + " ".join(keys) + "\\n").encode())
        q.put_many([{"k": k} for k in keys])
        os.write(fd, b"p\\n")
        os.write(fd, b"g+\\n")
        try:
            got = q.get_many(7, block=False)
        except spoolq.Empty:
            got = []
        os.write(fd, ("g " + " ".join(i["k"] for i in got) + "\\n").encode())
""")


def _two_logs(log: Path) -> tuple[set[str], set[str], set[str], bool]:
    """Confirmed puts, confirmed gets, the unconfirmed put, whether a get was unconfirmed."""
    puts: set[str] = set()
    gets: set[str] = set()
    pending: list[str] = []
    for line in _lines(log):
        op, *args = line.split()
        if op.endswith("+"):
            pending = [op, *args]
        elif op == "p":
            puts.update(pending[1:])
            pending = []
        else:
            gets.update(args)
            pending = []
    return puts, gets, set(pending[1:]) if pending[:1] == ["p+"] else set(), \
        pending[:1] == ["g+"]


@pytest.mark.parametrize("engine", SHARED_ENGINES)
def test_two_writers_one_killed_the_other_goes_on(tmp_path: Path, engine: str) -> None:
    path = queue_path(tmp_path, engine)
    SyncQueue.create(path).close()
    rng = random.Random(9)
    for r in range(3):
        logs = [tmp_path / f"a{r}", tmp_path / f"b{r}"]
        children = [subprocess.Popen([sys.executable, "-c", TWO, path, os.fspath(log),
                                      f"{name}{r}"]) for name, log in zip("ab", logs, strict=True)]
        try:
            _wait_lines(logs[0], children[0], rng.randrange(20, 200), _START)
            _wait_lines(logs[1], children[1], 10, _START)
            _kill(children[0])
            before = len(_lines(logs[1]))
            _wait_lines(logs[1], children[1], before + 100, _START)
        finally:
            for child in children:
                if child.poll() is None:
                    _kill(child)
        puts: set[str] = set()
        gets: set[str] = set()
        loose: list[set[str]] = []
        unconfirmed_gets = 0
        for log in logs:
            p, g, half, getting = _two_logs(log)
            puts |= p
            gets |= g
            loose.append(half)
            unconfirmed_gets += getting
        size, got, dead = _drain(path, None, None)
        where = f"{engine} round {r}"
        assert not dead and size == len(got) == len(set(got)), where
        assert not set(got) & gets, f"{where}: an item got twice"
        extra = set(got) - puts
        for half in loose:
            assert half & extra in (set(), half), f"{where}: part of a put_many stored"
            extra -= half
        assert not extra, f"{where}: items never put: {sorted(extra)[:5]}"
        assert len(puts - gets - set(got)) <= 7 * unconfirmed_gets, f"{where}: puts lost"
