"""Percentiles, medians and the printed table."""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def secs(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds:.2f} s"


def ratio(ours: float, base: float) -> str:
    if math.isnan(ours) or math.isnan(base) or base == 0:
        return "n/a"
    return f"{ours / base:.2f}x"


_started = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr, with seconds since start (the table goes to stdout)."""
    print(f"[{time.monotonic() - _started:6.1f} s] {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    figure: str
    measure: str
    ours: str
    baseline: str
    ratio: str
    goal: str = ""
    verdict: str = ""


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: str, measure: str, ours: str, baseline: str = "", ratio: str = "",
            goal: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("met" if met else "NOT met")
        self.rows.append(Row(figure, measure, ours, baseline, ratio, goal, verdict))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        head = Row("#", "measure", "ours", "baseline (same run)", "ratio", "goal", "")
        rows = [head, *self.rows]
        cols = list(zip(*[(r.figure, r.measure, r.ours, r.baseline, r.ratio, r.goal, r.verdict)
                          for r in rows], strict=True))
        widths = [max(len(c) for c in col) for col in cols]
        lines = []
        for n, r in enumerate(rows):
            cells = (r.figure, r.measure, r.ours, r.baseline, r.ratio, r.goal, r.verdict)
            lines.append(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
            if n == 0:
                lines.append("-+-".join("-" * w for w in widths))
        if self.notes:
            lines.append("")
            lines.extend(self.notes)
        return "\n".join(lines)
