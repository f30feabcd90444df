"""The bench's outputs: a printed table, a Markdown table and the JSON document."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._figure import Figure
from benchmarks._machine import load_average
from benchmarks._suites import SuiteOutcome

COLUMNS = ("name", "value", "min–max", "unit", "reference", "target", "met?")


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value == 0 or 0.01 <= abs(value) < 10_000:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.2e}"


def _met(figure: Figure) -> str:
    met = figure.met()
    return "" if met is None else ("yes" if met else "NO")


def rows(outcomes: Sequence[SuiteOutcome]) -> list[tuple[str, ...]]:
    """One row per figure (skipped ones say why), and one per failed or skipped suite."""
    table: list[tuple[str, ...]] = []
    for outcome in outcomes:
        if not outcome.ok:
            error = outcome.error.splitlines()[-1] if outcome.error else "failed"
            table.append((f"{outcome.name} (suite)", "FAILED", "", "", error, "", ""))
        if outcome.skipped:
            table.append((f"{outcome.name} (suite)", "skipped", "", "", outcome.skipped, "", ""))
        for f in outcome.figures:
            if f.skipped:
                table.append((f.name, "skipped", "", f.unit, f.note, f.target, ""))
                continue
            spread = f"{_number(f.low)}–{_number(f.high)}"
            table.append((f.name, _number(f.value), spread, f.unit, f.reference, f.target, _met(f)))
    return table


def text_table(outcomes: Sequence[SuiteOutcome]) -> str:
    """The table as aligned plain text."""
    body = rows(outcomes)
    widths = [max(len(r[i]) for r in [COLUMNS, *body]) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [COLUMNS, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(outcomes: Sequence[SuiteOutcome]) -> str:
    """The table as Markdown (for docs/benchmarks.md)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(COLUMNS), line(["---"] * len(COLUMNS))]
    out += [line(row) for row in rows(outcomes)]
    return "\n".join(out)


def document(
    outcomes: Sequence[SuiteOutcome], *, machine: dict[str, Any], command: str, seconds: float
) -> dict[str, Any]:
    """The JSON document: the run, the machine, each suite's status, every figure."""
    return {
        "command": command,
        "seconds": round(seconds, 3),
        "machine": machine,
        "load_average_after": load_average(),
        "suites": {o.name: o.as_dict() for o in outcomes},
        "figures": [f.as_dict() for o in outcomes for f in o.figures],
    }


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as strict JSON (no NaN), creating parent directories."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (in details, too) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
