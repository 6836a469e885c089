"""The code in README.md, docs/ and examples/ runs, so it cannot rot."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import spoolq

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for doc in DOCS:
        for n, match in enumerate(BLOCK.finditer(doc.read_text())):
            found.append((doc.name, n, match.group(1)))
    return found


@pytest.mark.parametrize(("doc", "n", "code"), _blocks(),
                         ids=[f"{d}-{n}" for d, n, _ in _blocks()])
def test_doc_code_runs(doc: str, n: int, code: str, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{doc}[{n}]", "exec"), {"__name__": "__doc_example__"})


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(example: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(example)], check=False, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_readme_starts_with_the_two_setup_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1: lines.index("```bash") + 3]
    assert block[0].startswith("pip install . && python examples/demo.py")
    assert block[1] == 'pip install -e ".[test]" && python -m pytest'
    ci = (ROOT / ".ci" / "run").read_text()
    assert block[1] in ci


def test_api_reference_covers_every_public_method() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    for cls in (spoolq.Queue, spoolq.SyncQueue):
        for name in dir(cls):
            if not name.startswith("_"):
                assert name in text, f"docs/api.md does not document {cls.__name__}.{name}"
    for name in spoolq.__all__:
        if isinstance(getattr(spoolq, name), type) and issubclass(getattr(spoolq, name),
                                                                  Exception):
            assert name in text, f"docs/api.md does not list {name}"


_ENGINE_LABELS = ("SQLite", "LMDB", "dbm", "pickle", "postgres", "remote")


def _engine_options(cls: type) -> set[str]:
    """The ``engine_options`` an engine class takes: its keyword-only parameters."""
    params = inspect.signature(cls).parameters.items()
    return {name for name, p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in {"read_only", "durability"}}


def test_the_engine_options_api_md_lists_are_those_each_engine_takes() -> None:
    from spoolq.engines import DBMEngine, LMDBEngine, PickleEngine, SQLiteEngine
    from spoolq.engines.postgres import PostgresEngine
    from spoolq.engines.remote import RemoteEngine

    api = (ROOT / "docs" / "api.md").read_text()
    row = next(line for line in api.splitlines() if line.startswith("| `engine_options`"))
    labels = "|".join(_ENGINE_LABELS)
    listed = {label: set(re.findall(r"`(\w+)`", text)) for label, text in re.findall(
        rf"\b({labels}): (.*?)(?=; (?:{labels}):|\); )", row)}
    postgres_md = (ROOT / "docs" / "postgres.md").read_text()
    settings = postgres_md[postgres_md.index("## Settings"):postgres_md.index("## Durability")]
    listed["postgres"] = set(re.findall(r"^\| `(\w+)` \|", settings, re.MULTILINE))
    engines = {"SQLite": SQLiteEngine, "LMDB": LMDBEngine, "dbm": DBMEngine,
               "pickle": PickleEngine, "postgres": PostgresEngine, "remote": RemoteEngine}
    assert {label: _engine_options(cls) for label, cls in engines.items()} == listed
