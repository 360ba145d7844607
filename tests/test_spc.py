"""p-chart limits against values worked out by hand."""

from __future__ import annotations

import pytest

from zerodefect.quality.spc import p_chart


def test_p_chart_limits_match_hand_computed_values() -> None:
    # 29 rejects in 450 parts: p̄ = 0.064444; sigma_i = sqrt(p̄(1 - p̄) / n_i).
    chart = p_chart([("h1", 100, 5), ("h2", 100, 10), ("h3", 50, 10), ("h4", 200, 4), ("idle", 0, 0)])
    assert chart.center == pytest.approx(0.064444, abs=1e-6)
    assert [p.label for p in chart.points] == ["h1", "h2", "h3", "h4"]  # an idle hour has no point
    h1, h2, h3, h4 = chart.points
    # n = 100: 0.064444 ± 3 * 0.024554 -> [0 (clipped from -0.0092), 0.138107]
    assert (h1.lcl, h1.ucl) == (0.0, pytest.approx(0.138107, abs=1e-6))
    # n = 50: ± 0.104176 -> [0, 0.168620]; n = 200: ± 0.052088 -> [0.012357, 0.116532]
    assert h3.ucl == pytest.approx(0.168620, abs=1e-6)
    assert (h4.lcl, h4.ucl) == (pytest.approx(0.012357, abs=1e-6), pytest.approx(0.116532, abs=1e-6))
    assert h3.p == 0.2 and h3.above_ucl
    assert not h2.above_ucl and not h4.below_lcl


def test_p_chart_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="h1: 5 defects among 4 parts"):
        p_chart([("h1", 4, 5)])


def test_shifts_name_their_start_and_nights_belong_to_the_day_before() -> None:
    from datetime import UTC, datetime

    from zerodefect.quality.buckets import shift_label as _shift

    assert _shift(datetime(2026, 11, 25, 6, 0, tzinfo=UTC)) == "2026-11-25T06:00Z"
    assert _shift(datetime(2026, 11, 25, 21, 59, tzinfo=UTC)) == "2026-11-25T14:00Z"
    assert _shift(datetime(2026, 11, 25, 23, 30, tzinfo=UTC)) == "2026-11-25T22:00Z"
    assert _shift(datetime(2026, 11, 26, 5, 59, tzinfo=UTC)) == "2026-11-25T22:00Z"
