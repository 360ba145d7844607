"""Drift statistics for the andon: is a station still seeing what it saw when its model started?

Two kinds of series are watched per station (quality.andon's `score_drift` and `image_drift`
rules): the scores of the parts the model passed, and the image statistics the station sends
with every part (inference.imagestats: brightness, contrast, sharpness), which catch a failing
light or a dirty lens before the model's scores do.

The reference is the first `drift_reference_parts` parts a station judged with its current
model version (bundles carry their threshold, not their validation score distribution). The
parts after it are standardised against the reference's mean and standard deviation and run
through a two-sided CUSUM and an EWMA chart, the classic pair for a small sustained shift in
the mean; PSI on the reference's decile histogram and a two-sample KS test describe how far the
whole distribution moved, and go in the alert's message.

numpy only: the record's install (the `edge` extra) has no scipy, and these are a few lines
each (the KS p-value is the asymptotic Kolmogorov distribution, as scipy's `ks_2samp` gives for
large samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Smallest bin share in PSI: an empty bin would make log(0).
PSI_EPSILON = 1e-4


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `current` against `reference`, on the reference's quantile
    bins (each holds 1/bins of the reference). Below 0.1 is usually read as stable, above 0.25
    as a shift."""
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    if reference.size == 0 or current.size == 0:
        raise ValueError("PSI needs a non-empty reference and current sample")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1)
    actual = np.bincount(np.searchsorted(edges, current, side="right"), minlength=edges.size + 1)
    e = np.maximum(expected / reference.size, PSI_EPSILON)
    a = np.maximum(actual / current.size, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: (D, p-value). D is the largest gap between the two
    empirical CDFs; the p-value is the asymptotic one (Stephens' small-sample correction)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if a.size == 0 or b.size == 0:
        raise ValueError("KS needs two non-empty samples")
    points = np.concatenate([a, b])
    gap = np.abs(
        np.searchsorted(a, points, side="right") / a.size - np.searchsorted(b, points, side="right") / b.size
    )
    d = float(gap.max())
    en = np.sqrt(a.size * b.size / (a.size + b.size))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return d, 1.0
    j = np.arange(1, 101)
    p = 2 * np.sum((-1.0) ** (j - 1) * np.exp(-2 * j**2 * lam**2))
    return d, float(min(max(p, 0.0), 1.0))


def standardise(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`values` in reference standard deviations from the reference mean (a constant reference
    gets a tiny sigma floor, so any change at all stands out rather than dividing by zero)."""
    reference = np.asarray(reference, float)
    mean = reference.mean()
    sigma = max(float(reference.std(ddof=1)) if reference.size > 1 else 0.0, 1e-9 * max(1.0, abs(mean)))
    return (np.asarray(values, float) - mean) / sigma


def cusum(z: np.ndarray, k: float = 0.5) -> np.ndarray:
    """Two-sided tabular CUSUM of standardised values: the larger of the upper and lower sums at
    each part. A sustained shift of 2k sigma or more makes it grow by about (shift - k) per part;
    an alarm is a value at or above the decision interval h."""
    hi = lo = 0.0
    out = np.empty(len(z))
    for i, value in enumerate(z):
        hi = max(0.0, hi + value - k)
        lo = max(0.0, lo - value - k)
        out[i] = max(hi, lo)
    return out


def ewma(z: np.ndarray, lam: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """EWMA of standardised values and its control limit in sigmas per part, before the factor L
    (the exact, time-varying limit sqrt(lam / (2 - lam) * (1 - (1 - lam)^(2t))))."""
    out = np.empty(len(z))
    value = 0.0
    for i, x in enumerate(z):
        value = lam * x + (1 - lam) * value
        out[i] = value
    t = np.arange(1, len(z) + 1)
    return out, np.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * t)))


@dataclass(frozen=True)
class DriftCheck:
    """One series judged against its reference.

    `alarm` is True when the last part is out of control (CUSUM at or above h, or the EWMA
    beyond L times its limit); `since` is the index in `values` where that run of alarms
    began (the breach's name), and `first_alarm` the first alarmed index in the whole window."""

    alarm: bool
    since: int | None
    first_alarm: int | None
    cusum: float
    h: float
    ewma: float
    ewma_limit: float
    psi: float
    ks_d: float
    ks_p: float
    shift_sigma: float
    # The CUSUM at every part of the window, for the dashboard's chart against h.
    cusum_path: tuple[float, ...] = ()


def check(reference: np.ndarray, values: np.ndarray, k: float, h: float, lam: float, L: float) -> DriftCheck:
    """Judge `values` (in part order) against `reference` with CUSUM(k, h) and EWMA(lam, L)."""
    z = standardise(reference, values)
    s = cusum(z, k)
    e, limit = ewma(z, lam)
    alarmed = (s >= h) | (np.abs(e) > L * limit)
    hits = np.flatnonzero(alarmed)
    since = None
    if alarmed.size and alarmed[-1]:
        calm = np.flatnonzero(~alarmed)
        since = int(calm[-1] + 1) if calm.size else 0
    d, p = ks_2samp(reference, values)
    return DriftCheck(
        alarm=bool(alarmed.size and alarmed[-1]),
        since=since,
        first_alarm=int(hits[0]) if hits.size else None,
        cusum=float(s[-1]),
        h=h,
        ewma=float(e[-1]),
        ewma_limit=float(L * limit[-1]),
        psi=psi(reference, values),
        ks_d=d,
        ks_p=p,
        shift_sigma=float(z.mean()),
        cusum_path=tuple(float(v) for v in s),
    )
