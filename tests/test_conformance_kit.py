"""The kit for engine authors: the conformance suite run the way docs/engines.md says, on
engines of one's own, and on deliberately broken engines, each of which it must catch;
and the errors of register_engine and of opening a registered engine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


KINDS = {"failure": "failed", "error": "error", "skipped": "skipped"}


def run_pytest(module: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                   dict[str, dict[str, str]]]:
    """Run pytest on ``module`` in a process of its own, as an engine author would; return
    the process and each test class's outcome per test (passed, failed, error, skipped)."""
    report = module.with_suffix(".xml")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(module), "-q", "-p", "no:cacheprovider",
         "-p", "no:randomly", f"--junitxml={report}", *args],
        check=False, capture_output=True, text=True, timeout=600, cwd=module.parent, env=ENV)
    outcomes: dict[str, dict[str, str]] = {}
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            kinds = [KINDS[child.tag] for child in case if child.tag in KINDS]
            cls = case.get("classname", "").rsplit(".", 1)[-1]
            outcomes.setdefault(cls, {})[case.get("name", "")] = (kinds[0] if kinds
                                                                   else "passed")
    return result, outcomes


def doc_blocks() -> list[str]:
    text = (ROOT / "docs" / "engines.md").read_text()
    section = text[text.index("## Writing your own engine"):]
    return re.findall(r"^```python\n(.*?)^```", section, re.DOTALL | re.MULTILINE)


# ---- the suite as docs/engines.md shows it ---------------------------------------------


def test_the_documented_conformance_module_runs_and_passes(tmp_path: Path) -> None:
    """The module docs/engines.md gives, copied as it is, collects the suite and passes."""
    module = tmp_path / "test_my_engine.py"
    module.write_text(doc_blocks()[1])
    result, outcomes = run_pytest(module)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = outcomes["TestMyEngine"]
    assert len(tests) > 30
    assert set(tests.values()) == {"passed"}, tests


def test_the_documented_engine_of_ones_own_passes_the_suite(tmp_path: Path) -> None:
    """The engine of docs/engines.md (a memory engine that logs appends), registered as
    shown there, passes the suite with ``persistent = False``; through a wrapper without
    ``peek_leased`` the optional tests skip, saying so."""
    (tmp_path / "audited.py").write_text(doc_blocks()[0])
    module = tmp_path / "test_audited.py"
    module.write_text(
        "import pytest\n"
        "from spoolq.testing import EngineConformance\n"
        "from audited import AuditedEngine\n\n\n"
        "class Plain:\n"
        "    name = 'plain'\n\n"
        "    def __init__(self, inner):\n"
        "        self._inner = inner\n\n"
        "    def __getattr__(self, attr):\n"
        "        if attr == 'peek_leased':\n"
        "            raise AttributeError(attr)\n"
        "        return getattr(self._inner, attr)\n\n\n"
        "class TestAudited(EngineConformance):\n"
        "    persistent = False\n\n"
        "    @pytest.fixture\n"
        "    def open_engine(self):\n"
        "        return AuditedEngine\n\n\n"
        "class TestPlain(EngineConformance):\n"
        "    persistent = False\n\n"
        "    @pytest.fixture\n"
        "    def open_engine(self):\n"
        "        return lambda: Plain(AuditedEngine())\n")
    result, outcomes = run_pytest(module, "-rs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert skipped(outcomes["TestAudited"]) == []
    plain = skipped(outcomes["TestPlain"])
    assert plain and all("peek_leased" in name for name in plain), plain
    assert "this engine cannot list leased records" in result.stdout


def skipped(outcomes: dict[str, str]) -> list[str]:
    """The tests skipped; AssertionError when one failed."""
    assert set(outcomes.values()) <= {"passed", "skipped"}, outcomes
    return sorted(name for name, outcome in outcomes.items() if outcome == "skipped")
