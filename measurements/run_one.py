"""Run one contestant on one workload in this process and report on stdout.

Usage::

    python -m measurements.run_one CONTESTANT WORKLOAD PARAMS_JSON

PARAMS_JSON holds ``n``, ``tmpdir`` and, for Redis, ``redis_port``. The last
line written to stdout is ``@@result `` followed by a JSON object with
``status`` (``ok``, ``error`` or ``unavailable``), the measurement, the
process's peak RSS, and a message for anything but ``ok``.

The reopen workload opens a queue filled by another process (phase
``fill``), so that the measured process only pays for opening it: the suite
fills once and passes ``phase="open"``; by hand, a second child fills first.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from measurements.contestants.base import (
    AsyncContestant,
    Contestant,
    DirectAsync,
    PollingContestant,
    Unavailable,
)
from measurements.items import make_items
from measurements.spec import CONTESTANTS_BY_NAME, WORKLOADS_BY_NAME, ContestantSpec, Workload
from measurements.workloads import Measurement, run_async, run_sync

RESULT_MARK = "@@result "
FILL_CHUNK = 1_000
_PAGE = os.sysconf("SC_PAGE_SIZE")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(spec: ContestantSpec, want_async: bool) -> Contestant | AsyncContestant:
    module_name, class_name = spec.target.split(":")
    module = importlib.import_module(f"measurements.contestants.{module_name}")
    obj = getattr(module, class_name)(**spec.options)
    if want_async and isinstance(obj, Contestant):
        if not isinstance(obj, PollingContestant):
            raise TypeError(f"{spec.name} cannot run async workloads")
        return DirectAsync(obj)
    if not isinstance(obj, Contestant | AsyncContestant):
        raise TypeError(f"{spec.target} is not a contestant")
    return obj


def _run_throughput(
    spec: ContestantSpec, workload: Workload, params: Mapping[str, Any], tmpdir: Path
) -> Measurement:
    items = make_items(int(params["n"]), workload.item_size, spec.accepts)
    gc.collect()
    contestant = build(spec, want_async=workload.async_only)
    if isinstance(contestant, AsyncContestant):
        return asyncio.run(_async_throughput(contestant, workload, params, tmpdir, items))
    contestant.setup(tmpdir, params)
    return run_sync(workload.name, contestant, items)


async def _async_throughput(
    contestant: AsyncContestant,
    workload: Workload,
    params: Mapping[str, Any],
    tmpdir: Path,
    items: Sequence[Any],
) -> Measurement:
    await contestant.setup(tmpdir, params)
    return await run_async(workload.name, contestant, items)


def _fill(
    spec: ContestantSpec, workload: Workload, params: Mapping[str, Any], tmpdir: Path
) -> Measurement:
    n = int(params["n"])
    items = make_items(n, workload.item_size, spec.accepts)
    contestant = build(spec, want_async=False)
    t0 = time.perf_counter()
    if isinstance(contestant, AsyncContestant):
        asyncio.run(_async_fill(contestant, params, tmpdir, items))
    else:
        contestant.setup(tmpdir, params)
        for start in range(0, n, FILL_CHUNK):
            contestant.put_many(items[start : start + FILL_CHUNK])
        contestant.flush()
        contestant.close()
    return Measurement(n, time.perf_counter() - t0)


async def _async_fill(
    contestant: AsyncContestant, params: Mapping[str, Any], tmpdir: Path, items: Sequence[Any]
) -> None:
    await contestant.setup(tmpdir, params)
    for start in range(0, len(items), FILL_CHUNK):
        await contestant.put_many(items[start : start + FILL_CHUNK])
    await contestant.flush()
    await contestant.close()


class ChildFailed(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def _fill_in_child(spec: ContestantSpec, workload: Workload, params: Mapping[str, Any]) -> float:
    """Fill the queue in a fresh interpreter; the seconds it took."""
    command = [sys.executable, "-m", "measurements.run_one", spec.name, workload.name]
    proc = subprocess.run(
        [*command, json.dumps(dict(params, phase="fill"))],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    fill = parse_result(proc.stdout, proc.stderr)
    if fill["status"] != "ok":
        raise ChildFailed(fill["status"], f"fill: {fill.get('message', '')}")
    return float(fill["seconds"])


def _reopen(
    spec: ContestantSpec, workload: Workload, params: Mapping[str, Any], tmpdir: Path
) -> Measurement:
    """Open a queue filled by another process and get its first item.

    With ``phase="open"`` the queue under ``tmpdir`` is already filled (the
    suite fills it once and copies it for every repeat); without a phase a
    child process fills it first.
    """
    n = int(params["n"])
    if params.get("phase") == "open":
        fill_s = float(params.get("fill_seconds", 0.0))
    else:
        fill_s = _fill_in_child(spec, workload, params)
    expected = make_items(1, workload.item_size, spec.accepts)[0]
    contestant = build(spec, want_async=False)
    gc.collect()
    if isinstance(contestant, AsyncContestant):
        open_s, first_s, rss_growth, first = asyncio.run(_async_reopen(contestant, tmpdir, params))
    else:
        rss0 = current_rss_mb()
        t0 = time.perf_counter()
        contestant.setup(tmpdir, params)
        t1 = time.perf_counter()
        first = contestant.get()
        t2 = time.perf_counter()
        rss_growth = current_rss_mb() - rss0
        contestant.close()
        open_s, first_s = t1 - t0, t2 - t1
    if first != expected:
        raise AssertionError("the first item after reopen is not the first item put")
    return Measurement(
        n,
        open_s + first_s,
        extra={
            "open_s": open_s,
            "first_get_s": first_s,
            "rss_growth_mb": rss_growth,
            "fill_s": fill_s,
        },
    )


async def _async_reopen(
    contestant: AsyncContestant, tmpdir: Path, params: Mapping[str, Any]
) -> tuple[float, float, float, Any]:
    rss0 = current_rss_mb()
    t0 = time.perf_counter()
    await contestant.setup(tmpdir, params)
    t1 = time.perf_counter()
    first = await contestant.get()
    t2 = time.perf_counter()
    rss_growth = current_rss_mb() - rss0
    await contestant.close()
    return t1 - t0, t2 - t1, rss_growth, first


def parse_result(stdout: str, stderr: str) -> dict[str, Any]:
    """The result object a child printed, or an error describing why there is none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return result
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    return {"status": "error", "message": f"no result from child: {tail or 'no output'}"}


def main(argv: Sequence[str]) -> dict[str, Any]:
    name, workload_name, raw_params = argv
    spec = CONTESTANTS_BY_NAME[name]
    workload = WORKLOADS_BY_NAME[workload_name]
    params: dict[str, Any] = json.loads(raw_params)
    tmpdir = Path(params["tmpdir"])
    tmpdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"n": params["n"], "base_rss_mb": current_rss_mb()}
    try:
        if params.get("phase") == "fill":
            m = _fill(spec, workload, params, tmpdir)
        elif workload.reopen:
            m = _reopen(spec, workload, params, tmpdir)
        else:
            m = _run_throughput(spec, workload, params, tmpdir)
    except Unavailable as exc:
        result.update(status="unavailable", message=str(exc))
    except ChildFailed as exc:
        result.update(status=exc.status, message=str(exc))
    except Exception as exc:  # every failure becomes an error row
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        result.update(status="error", message=f"{type(exc).__name__}: {exc}{where}")
    else:
        result.update(
            status="ok",
            ops=m.ops,
            seconds=m.seconds,
            put_seconds=m.put_seconds,
            get_seconds=m.get_seconds,
            extra=m.extra,
        )
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def child_entry(argv: Sequence[str], conn: Connection, log_path: str) -> None:
    """Entry point of a child forked by the suite: report through ``conn``, then leave.

    The child leads a process group of its own, so that the suite can kill it
    together with the process that fills a queue for the reopen workload.
    Its output goes to ``log_path``.
    """
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    outcome = main(argv)
    conn.send(outcome)
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    outcome = main(sys.argv[1:])
    sys.stdout.write(RESULT_MARK + json.dumps(outcome) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave at once: a consumer thread stuck after an error must not hold us.
    os._exit(0)
