"""Turn the children's results into rows, a Markdown report, a CSV file and charts."""

from __future__ import annotations

import csv
import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from measurements.spec import (
    CONTESTANTS_BY_NAME,
    DURABILITY_CLASSES,
    WORKLOADS,
    WORKLOADS_BY_NAME,
    reference_for,
)

log = logging.getLogger("measurements")

_CLASS_ORDER = {name: i for i, name in enumerate(DURABILITY_CLASSES)}
_WORKLOAD_ORDER = {w.name: i for i, w in enumerate(WORKLOADS)}
_CLASS_COLOURS = {
    "fsync per op": "#1f77b4",
    "write per op": "#2ca02c",
    "batch": "#ff7f0e",
    "memory": "#7f7f7f",
    "on-close": "#9467bd",
}


@dataclass
class Row:
    """One contestant on one workload, over all repeats."""

    contestant: str
    workload: str
    status: str
    n: int | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    ratio: float | None = None

    @property
    def durability(self) -> str:
        return CONTESTANTS_BY_NAME[self.contestant].durability

    @property
    def is_reference(self) -> bool:
        return CONTESTANTS_BY_NAME[self.contestant].reference

    @property
    def reopen(self) -> bool:
        return self.workload in WORKLOADS_BY_NAME and WORKLOADS_BY_NAME[self.workload].reopen

    def _median(self, values: Iterable[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    @property
    def ops_per_s(self) -> float | None:
        return self._median(r["ops"] / r["seconds"] for r in self.runs if r["seconds"] > 0)

    def _phase_rate(self, key: str) -> float | None:
        n = self.n or 0
        return self._median(n / r[key] if r.get(key) else None for r in self.runs)

    @property
    def put_per_s(self) -> float | None:
        return self._phase_rate("put_seconds")

    @property
    def get_per_s(self) -> float | None:
        return self._phase_rate("get_seconds")

    @property
    def peak_rss_mb(self) -> float | None:
        values = [r["peak_rss_mb"] for r in self.runs if r.get("peak_rss_mb") is not None]
        return max(values) if values else None

    @property
    def base_rss_mb(self) -> float | None:
        return self._median(r.get("base_rss_mb") for r in self.runs)

    def _extra(self, key: str) -> float | None:
        return self._median(r.get("extra", {}).get(key) for r in self.runs)

    @property
    def open_ms(self) -> float | None:
        v = self._extra("open_s")
        return None if v is None else v * 1000

    @property
    def first_get_ms(self) -> float | None:
        v = self._extra("first_get_s")
        return None if v is None else v * 1000

    @property
    def reopen_ms(self) -> float | None:
        v = self._median(r["seconds"] for r in self.runs)
        return None if v is None else v * 1000

    @property
    def rss_growth_mb(self) -> float | None:
        return self._extra("rss_growth_mb")


def aggregate(results: dict[tuple[str, str], list[dict[str, Any]]]) -> list[Row]:
    """One row per (contestant, workload): medians over the successful runs."""
    rows: list[Row] = []
    for (contestant, workload), outcomes in results.items():
        ok = [o for o in outcomes if o.get("status") == "ok"]
        if ok:
            failed = len(outcomes) - len(ok)
            note = ""
            if failed:
                last_message = outcomes[-1].get("message", "")
                note = f"{failed} of {len(outcomes)} runs failed: {last_message}"
            rows.append(Row(contestant, workload, "ok", ok[0].get("n"), ok, note))
        else:
            last = outcomes[-1]
            rows.append(
                Row(
                    contestant,
                    workload,
                    str(last.get("status", "error")),
                    last.get("n"),
                    message=str(last.get("message", "")),
                )
            )
    _set_ratios(rows)
    rows.sort(key=_sort_key)
    return rows


def _sort_key(row: Row) -> tuple[int, int, float, str]:
    speed = row.ops_per_s or 0.0
    if row.reopen:
        speed = -(row.reopen_ms or float("inf"))
    return (
        _WORKLOAD_ORDER.get(row.workload, len(_WORKLOAD_ORDER)),
        _CLASS_ORDER.get(row.durability, len(_CLASS_ORDER)),
        -speed,
        row.contestant,
    )


def _set_ratios(rows: list[Row]) -> None:
    by_key = {(r.contestant, r.workload): r for r in rows if r.status == "ok"}
    for row in rows:
        if row.status != "ok":
            continue
        ref_spec = reference_for(row.durability)
        ref = by_key.get((ref_spec.name, row.workload)) if ref_spec else None
        if ref is None:
            continue
        if row.reopen:
            if ref.reopen_ms and row.reopen_ms:
                row.ratio = ref.reopen_ms / row.reopen_ms
        elif ref.ops_per_s and row.ops_per_s:
            row.ratio = row.ops_per_s / ref.ops_per_s


# --- formatting -------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _ratio(row: Row) -> str:
    if row.ratio is None:
        return "—"
    text = f"{row.ratio:.2f}"
    return f"**{text}** (ref)" if row.is_reference else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_tables(rows: Sequence[Row]) -> str:
    """The throughput table, the reopen table and the list of what did not run."""
    out: list[str] = []
    out.append("### Throughput\n")
    out.append("| workload | contestant | class | N | ops/s | ratio | peak RSS MB | note |")
    out.append("|---|---|---|---:|---:|---:|---:|---|")
    failed: list[Row] = []
    for row in rows:
        if row.reopen:
            continue
        if row.status != "ok":
            if row.status in ("error", "timeout"):
                out.append(
                    f"| {row.workload} | {row.contestant} | {row.durability} | {_num(row.n)} "
                    f"| {row.status} | — | — | {_cell(row.message[:120])} |"
                )
            else:
                failed.append(row)
            continue
        out.append(
            f"| {row.workload} | {row.contestant} | {row.durability} | {_num(row.n)} "
            f"| {_num(row.ops_per_s)} | {_ratio(row)} | {_num(row.peak_rss_mb, 1)} "
            f"| {_cell(row.message[:120])} |"
        )
    reopen = [r for r in rows if r.reopen]
    if reopen:
        out.append("\n### Reopen\n")
        out.append(
            "| contestant | class | N | open ms | first get ms | RSS growth MB "
            "| peak RSS MB | ratio | note |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for row in reopen:
            if row.status == "ok":
                out.append(
                    f"| {row.contestant} | {row.durability} | {_num(row.n)} "
                    f"| {_num(row.open_ms, 1)} | {_num(row.first_get_ms, 2)} "
                    f"| {_num(row.rss_growth_mb, 1)} "
                    f"| {_num(row.peak_rss_mb, 1)} | {_ratio(row)} | {_cell(row.message[:120])} |"
                )
            elif row.status in ("error", "timeout"):
                out.append(
                    f"| {row.contestant} | {row.durability} | {_num(row.n)} | {row.status} "
                    f"| — | — | — | — | {_cell(row.message[:120])} |"
                )
            else:
                failed.append(row)
    if failed:
        out.append("\n### Not run\n")
        out.append("| contestant | class | status | reason |")
        out.append("|---|---|---|---|")
        seen: set[str] = set()
        for row in sorted(failed, key=lambda r: r.contestant):
            if row.contestant in seen:
                continue
            seen.add(row.contestant)
            out.append(
                f"| {row.contestant} | {row.durability} | {row.status} "
                f"| {_cell(row.message[:160])} |"
            )
    return "\n".join(out) + "\n"


_RATIO_NOTE = (
    "Only ratios within one run mean anything: the machine is shared and noisy. "
    "`ratio` is this row's ops/s divided by the reference row of the same "
    "durability class on the same workload (for reopen: the reference's "
    "open + first get time divided by this row's), so above 1 is faster.\n"
)

DOCS_START = "<!-- measurements:results:start -->"
DOCS_END = "<!-- measurements:results:end -->"


def write_markdown(path: Path, rows: Sequence[Row], header: Sequence[str]) -> None:
    lines = ["# spoolq measurements", "", *header, "", _RATIO_NOTE, markdown_tables(rows)]
    lines.append("### Durability classes\n")
    for name, meaning in DURABILITY_CLASSES.items():
        ref = reference_for(name)
        ref_text = f" Reference: {ref.name}." if ref else ""
        lines.append(f"- **{name}**: {meaning}.{ref_text}")
    lines.append("")
    path.write_text("\n".join(lines))


def update_docs(path: Path, rows: Sequence[Row], header: Sequence[str]) -> bool:
    """Replace the results between the two markers of ``path``; False if they are missing."""
    try:
        text = path.read_text()
    except OSError:
        return False
    start, end = text.find(DOCS_START), text.find(DOCS_END)
    if start < 0 or end < start:
        return False
    block = "\n".join([DOCS_START, "", *header, "", _RATIO_NOTE, markdown_tables(rows)])
    path.write_text(text[:start] + block + "\n" + text[end:])
    return True


CSV_FIELDS = (
    "workload",
    "contestant",
    "durability",
    "status",
    "n",
    "ops_per_s",
    "ratio",
    "put_per_s",
    "get_per_s",
    "peak_rss_mb",
    "base_rss_mb",
    "open_ms",
    "first_get_ms",
    "rss_growth_mb",
    "runs_ops_per_s",
    "message",
)


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.6g}"

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for row in rows:
            runs = ";".join(f"{r['ops'] / r['seconds']:.6g}" for r in row.runs if r.get("seconds"))
            writer.writerow(
                [
                    row.workload,
                    row.contestant,
                    row.durability,
                    row.status,
                    "" if row.n is None else row.n,
                    fmt(row.ops_per_s),
                    fmt(row.ratio),
                    fmt(row.put_per_s),
                    fmt(row.get_per_s),
                    fmt(row.peak_rss_mb),
                    fmt(row.base_rss_mb),
                    fmt(row.open_ms),
                    fmt(row.first_get_ms),
                    fmt(row.rss_growth_mb),
                    runs,
                    row.message,
                ]
            )


def write_charts(directory: Path, rows: Sequence[Row]) -> list[Path]:
    """One bar chart per workload; nothing (and a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        log.info("matplotlib is not installed: no charts (pip install matplotlib)")
        return []
    written: list[Path] = []
    for workload in WORKLOADS:
        ok = [r for r in rows if r.workload == workload.name and r.status == "ok"]
        if not ok:
            continue
        if workload.reopen:
            ok.sort(key=lambda r: -(r.reopen_ms or 0))
            values = [r.reopen_ms or 0 for r in ok]
            xlabel = "open + first get, ms (log scale, shorter is better)"
        else:
            ok.sort(key=lambda r: r.ops_per_s or 0)
            values = [r.ops_per_s or 0 for r in ok]
            xlabel = "operations per second (log scale, longer is better)"
        fig, ax = plt.subplots(figsize=(10, 0.28 * len(ok) + 1.6))
        colours = [_CLASS_COLOURS.get(r.durability, "#000000") for r in ok]
        ax.barh([r.contestant for r in ok], values, color=colours)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(f"{workload.name}: {workload.description}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(
            handles=[Patch(color=c, label=k) for k, c in _CLASS_COLOURS.items()],
            fontsize=7,
            loc="lower right",
        )
        fig.tight_layout()
        target = directory / f"{workload.name}.png"
        fig.savefig(target, dpi=110)
        plt.close(fig)
        written.append(target)
    return written
