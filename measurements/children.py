"""Start one child process per contestant and workload, with a time limit.

Two ways, same result:

- ``ForkRunner`` (the default) forks each child from a multiprocessing fork
  server that has imported the suite's own modules (and asyncio) once. A child
  costs a few milliseconds instead of a fresh interpreter's few hundred, which
  is what lets ``--quick`` run the whole field in about a minute. Peer
  libraries are still imported by each child itself.
- ``SpawnRunner`` (``--spawn``) starts ``python -m measurements.run_one`` for
  every child: slower, nothing shared at all.

A child that does not report within its time limit is killed with its whole
process group and reported as ``timeout``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from measurements import run_one
from measurements.run_one import parse_result

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


class Runner(Protocol):
    def run(
        self, contestant: str, workload: str, params: dict[str, Any], timeout: float
    ) -> dict[str, Any]: ...


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def _timed_out(params: dict[str, Any], timeout: float) -> dict[str, Any]:
    return {"status": "timeout", "n": params["n"], "message": f"killed after {timeout:.0f} s"}


class SpawnRunner:
    """A fresh ``python -m measurements.run_one`` per child."""

    def run(
        self, contestant: str, workload: str, params: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        command = [
            sys.executable,
            "-m",
            "measurements.run_one",
            contestant,
            workload,
            json.dumps(params),
        ]
        proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.communicate()
            return _timed_out(params, timeout)
        except BaseException:
            # The suite itself is interrupted: take the child down with it.
            _kill_group(proc.pid)
            proc.wait()
            raise
        result = parse_result(stdout, stderr)
        if proc.returncode != 0 and result.get("status") == "ok":
            result = {"status": "error", "message": f"child exited with {proc.returncode}"}
        result.setdefault("n", params["n"])
        return result


class ForkRunner:
    """Children forked from a fork server that has the suite imported."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["measurements.run_one"])

    def run(
        self, contestant: str, workload: str, params: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        log_path = Path(f"{params['tmpdir']}.log")
        receiver, sender = self.ctx.Pipe(duplex=False)
        argv = [contestant, workload, json.dumps(params)]
        process = self.ctx.Process(
            target=run_one.child_entry, args=(argv, sender, str(log_path)), daemon=False
        )
        process.start()
        sender.close()
        result: dict[str, Any] | None = None
        try:
            if receiver.poll(timeout):
                try:
                    result = receiver.recv()
                except EOFError:
                    process.join(5)
                    result = {
                        "status": "error",
                        "message": f"child died (exit code {process.exitcode}): "
                        f"{_tail(log_path) or 'no output'}",
                    }
            else:
                result = _timed_out(params, timeout)
        finally:
            # Also reached when the suite itself is interrupted (result is None).
            receiver.close()
            if result is None or result.get("status") == "timeout":
                _kill_group(process.pid or 0)
            process.join(5)
            if process.is_alive():
                _kill_group(process.pid or 0)
                process.join()
            process.close()
            log_path.unlink(missing_ok=True)
        result.setdefault("n", params["n"])
        return result
