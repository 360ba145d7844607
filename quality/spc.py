"""Statistical process control for defect rates: the p-chart.

Each subgroup (a station's parts in one hour or one shift) has n_i parts of which d_i were
rejected. The centre line is the pooled rate p̄ = Σd / Σn; each subgroup's 3-sigma limits are
p̄ ± 3·sqrt(p̄(1 − p̄)/n_i), clipped to [0, 1]. Limits vary with n_i, so a thin hour is not
flagged for a noise a full hour would absorb (Montgomery, Introduction to SQC, ch. 7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PPoint:
    """One subgroup on the chart."""

    label: str
    n: int
    defects: int
    p: float
    lcl: float
    ucl: float

    @property
    def above_ucl(self) -> bool:
        return self.p > self.ucl

    @property
    def below_lcl(self) -> bool:
        return self.p < self.lcl


@dataclass(frozen=True)
class PChart:
    center: float
    points: list[PPoint]


def p_chart(subgroups: list[tuple[str, int, int]], sigmas: float = 3.0) -> PChart:
    """A p-chart from (label, parts inspected, parts rejected) subgroups; empty ones are skipped."""
    used = [(label, n, d) for label, n, d in subgroups if n > 0]
    for label, n, d in used:
        if not 0 <= d <= n:
            raise ValueError(f"subgroup {label}: {d} defects among {n} parts")
    total = sum(n for _, n, _ in used)
    center = sum(d for _, _, d in used) / total if total else 0.0
    points = []
    for label, n, d in used:
        half = sigmas * math.sqrt(center * (1.0 - center) / n)
        points.append(PPoint(label, n, d, d / n, max(0.0, center - half), min(1.0, center + half)))
    return PChart(center, points)
