"""Command line: run the suite and write the report.

    python -m measurements            # full run: larger N, 3 repeats
    python -m measurements --quick    # small N, 1 repeat, a smaller field
    python -m measurements --list     # what would run

Each contestant runs each workload in a child process of its own, forked
from a fork server (or, with ``--spawn``, started as ``python -m
measurements.run_one``), with a time limit; a crash, a time-out or a missing
library gives a row saying so and the suite goes on.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

from measurements import children, redis_servers, report
from measurements.spec import MEMORY_N_FACTOR, WORKLOADS, ContestantSpec, Workload, select

log = logging.getLogger("measurements")

DEFAULT_OUT = children.PACKAGE_DIR / "results"
REPO_ROOT = children.REPO_ROOT
DOCS_PAGE = REPO_ROOT / "docs" / "performance.md"

Results = dict[tuple[str, str], list[dict[str, Any]]]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m measurements",
        description="Benchmark spoolq against other Python queues.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small N, one repeat, fewer spoolq variants (about a minute)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per contestant and workload (default 3, quick 1)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="contestants whose name contains PATTERN (or matches a shell pattern); repeatable",
    )
    parser.add_argument(
        "--workload",
        action="append",
        metavar="NAME",
        choices=[w.name for w in WORKLOADS],
        help="workloads to run; repeatable",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every workload's N by this factor"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per child before it is killed (default 120, quick 20)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"directory for the results (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--tmpdir",
        type=Path,
        default=None,
        help="where the queue files go (default: the system temp directory)",
    )
    parser.add_argument(
        "--spawn",
        action="store_true",
        help="start every child as a fresh interpreter instead of forking it "
        "from a fork server (slower, shares nothing)",
    )
    parser.add_argument("--no-charts", action="store_true", help="do not draw PNG charts")
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help=f"also put the tables into {DOCS_PAGE.relative_to(REPO_ROOT)}",
    )
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis contestants")
    parser.add_argument(
        "--list", action="store_true", help="list contestants and workloads, run nothing"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log the run_one command that repeats each child by hand",
    )
    args = parser.parse_args(argv)
    args.command = " ".join(["python -m measurements", *argv])
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.timeout is None:
        args.timeout = 20.0 if args.quick else 120.0
    return args


def workload_n(workload: Workload, args: argparse.Namespace) -> int:
    base = workload.n_quick if args.quick else workload.n_full
    return max(1, int(base * args.scale))


def missing_modules(spec: ContestantSpec) -> list[str]:
    missing = []
    for module in spec.requires:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def _summary(outcome: dict[str, Any]) -> str:
    if outcome.get("status") != "ok":
        return f"{outcome.get('status')}: {outcome.get('message', '')}"
    seconds, rss = outcome["seconds"], outcome["peak_rss_mb"]
    extra = outcome.get("extra") or {}
    if "open_s" in extra:
        return (
            f"open {extra['open_s'] * 1000:.1f} ms, first get "
            f"{extra['first_get_s'] * 1000:.2f} ms, RSS +{extra['rss_growth_mb']:.1f} MB"
        )
    rate = outcome["ops"] / seconds if seconds else 0.0
    return f"{rate:,.0f} ops/s, {seconds:.2f} s, peak RSS {rss:.1f} MB"


def versions(specs: Sequence[ContestantSpec]) -> list[str]:
    names = sorted({d for s in specs for d in s.distributions})
    out = []
    for name in names:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return out


def redis_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "redis-server not found"
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip().split(" sha=")[0]


def header(
    args: argparse.Namespace,
    specs: Sequence[ContestantSpec],
    workloads: Sequence[Workload],
    elapsed: float,
) -> list[str]:
    mode = "quick" if args.quick else "full"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ns = ", ".join(f"{w.name} {workload_n(w, args):,}" for w in workloads)
    return [
        f"Run of {now}: `{args.command}` "
        f"({mode}, {args.repeat} repeat(s), medians; {elapsed:.0f} s in all).",
        "",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, {redis_version()}.",
        f"- N per workload (in-memory contestants run {MEMORY_N_FACTOR}x N outside --quick, "
        f"some slow peers are capped lower: see the N column): {ns}.",
        f"- Libraries: {', '.join(versions(specs))}.",
        "- Items: JSON-like dicts for contestants that take objects (serialization is "
        "timed), their JSON bytes for byte-only ones and JSON text for litequeue "
        "(encoded before the clock starts).",
    ]


class _Stop(Exception):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _check_installed(specs: Sequence[ContestantSpec], results: Results) -> set[str]:
    """Record a row for every contestant whose library cannot be imported."""
    skipped: set[str] = set()
    for spec in specs:
        missing = missing_modules(spec)
        if missing:
            status = "unavailable" if spec.spoolq else "not installed"
            hint = " (pip install -e . from the repository root)" if spec.spoolq else ""
            results[(spec.name, "all")].append(
                {"status": status, "message": f"cannot import {', '.join(missing)}{hint}"}
            )
            skipped.add(spec.name)
    return skipped


@dataclass
class Run:
    """What one run of the suite holds while it goes."""

    root: Path
    results: Results
    skipped: set[str]
    runner: children.Runner
    servers: dict[str, redis_servers.RedisServer] = field(default_factory=dict)
    #: Reopen: the filled queue of each contestant and the fill's outcome.
    filled: dict[str, tuple[Path, dict[str, Any]]] = field(default_factory=dict)

    def has_run(self, spec: ContestantSpec) -> bool:
        return any(name == spec.name and workload != "all" for name, workload in self.results)

    def not_run(self, spec: ContestantSpec, status: str, message: str) -> None:
        self.results[(spec.name, "all")].append({"status": status, "message": message})
        self.skipped.add(spec.name)


def _sync_tree(root: Path) -> None:
    """fsync every file under ``root``, as a queue that outlived a restart is on disk:
    otherwise the first fsync of the reopened queue also writes out the copy."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _run_reopen(
    spec: ContestantSpec, workload: Workload, params: dict[str, Any], timeout: float, run: Run
) -> dict[str, Any]:
    """Fill the queue once per contestant (in a child), then open a copy of it."""
    if spec.name not in run.filled:
        fill_dir = run.root / f"fill-{len(run.filled):03d}"
        fill_params = dict(params, tmpdir=str(fill_dir), phase="fill")
        run.filled[spec.name] = (
            fill_dir,
            run.runner.run(spec.name, workload.name, fill_params, timeout),
        )
    fill_dir, fill = run.filled[spec.name]
    if fill.get("status") != "ok":
        return {
            "status": fill.get("status", "error"),
            "n": params["n"],
            "message": f"fill: {fill.get('message', '')}",
        }
    shutil.copytree(fill_dir, params["tmpdir"])
    _sync_tree(Path(params["tmpdir"]))
    open_params = dict(params, phase="open", fill_seconds=fill["seconds"])
    return run.runner.run(spec.name, workload.name, open_params, timeout)


def _run_jobs(
    args: argparse.Namespace, jobs: Sequence[tuple[ContestantSpec, Workload]], run: Run
) -> None:
    """Run every job ``args.repeat`` times, one round after the other."""
    total = len(jobs) * args.repeat
    done = 0
    for _round in range(args.repeat):
        for spec, workload in jobs:
            done += 1
            if spec.name in run.skipped:
                continue
            n = spec.n_for(workload, workload_n(workload, args), args.quick)
            tmpdir = run.root / f"{done:05d}"
            params: dict[str, Any] = {"n": n, "tmpdir": str(tmpdir)}
            if spec.redis:
                server = run.servers.get(spec.redis)
                if server is None:
                    run.not_run(spec, "unavailable", "redis-server could not be started")
                    continue
                params["redis_port"] = server.port
            t0 = time.monotonic()
            timeout = args.timeout * workload.timeout_factor
            if args.verbose:
                log.info(
                    "python -m measurements.run_one %r %s '%s'",
                    spec.name,
                    workload.name,
                    json.dumps(params),
                )
            if workload.reopen:
                outcome = _run_reopen(spec, workload, params, timeout, run)
            else:
                outcome = run.runner.run(spec.name, workload.name, params, timeout)
            shutil.rmtree(tmpdir, ignore_errors=True)
            log.info(
                "[%d/%d] %s | %s | N=%s: %s (%.1f s)",
                done,
                total,
                workload.name,
                spec.name,
                f"{n:,}",
                _summary(outcome),
                time.monotonic() - t0,
            )
            if outcome.get("status") == "unavailable":
                if not run.has_run(spec):
                    run.not_run(spec, "unavailable", str(outcome.get("message", "")))
                    continue
                # It ran before: the library changed under the run. An error here.
                outcome = dict(outcome, status="error")
            run.results[(spec.name, workload.name)].append(outcome)


def _list(
    specs: Sequence[ContestantSpec], workloads: Sequence[Workload], args: argparse.Namespace
) -> None:
    for w in workloads:
        print(f"workload  {w.name:<12} N={workload_n(w, args):<8,} {w.description}")
    for s in specs:
        runs = ", ".join(w.name for w in workloads if s.runs(w))
        print(f"{s.durability:<13} {s.name:<42} {runs}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    specs = select(args.only)
    if args.quick and not args.only:
        specs = [s for s in specs if s.quick]
    if args.no_redis:
        specs = [s for s in specs if s.redis is None]
    workloads = [w for w in WORKLOADS if not args.workload or w.name in args.workload]
    if args.list:
        _list(specs, workloads, args)
        return 0

    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    status = 0
    results: Results = defaultdict(list)
    skipped = _check_installed(specs, results)
    jobs = [(s, w) for w in workloads for s in specs if s.name not in skipped and s.runs(w)]
    log.info(
        "%d children to run (%d contestants, %d workloads, %d repeat(s))",
        len(jobs) * args.repeat,
        len({s.name for s, _ in jobs}),
        len(workloads),
        args.repeat,
    )
    runner = children.SpawnRunner() if args.spawn else children.ForkRunner()
    root = Path(tempfile.mkdtemp(prefix="measurements-", dir=args.tmpdir))
    run = Run(root, results, skipped, runner)
    try:
        for policy in sorted({s.redis for s, _ in jobs if s.redis}):
            server = redis_servers.start(policy, {srv.port for srv in run.servers.values()})
            if server is not None:
                run.servers[policy] = server
        _run_jobs(args, jobs, run)
    except (KeyboardInterrupt, _Stop):
        log.warning("interrupted: writing what was measured so far")
        status = 130
    finally:
        for server in run.servers.values():
            server.stop()
        shutil.rmtree(run.root, ignore_errors=True)

    elapsed = time.monotonic() - started
    rows = report.aggregate(results)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = header(args, specs, workloads, elapsed)
    report.write_markdown(args.out / "results.md", rows, lines)
    report.write_csv(args.out / "results.csv", rows)
    if args.update_docs:
        if report.update_docs(DOCS_PAGE, rows, lines):
            log.info("updated %s", DOCS_PAGE)
        else:
            log.warning("%s has no results markers: not updated", DOCS_PAGE)
    log.info("wrote %s and %s", args.out / "results.md", args.out / "results.csv")
    if not args.no_charts:
        for path in report.write_charts(args.out, rows):
            log.info("wrote %s", path)
    log.info("done in %.0f s", elapsed)
    return status


if __name__ == "__main__":
    sys.exit(main())
