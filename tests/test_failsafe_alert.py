"""The fail-safe rate: an andon rule at the record (one alert per episode) and a gauge at the
station (zd_failsafe_rate), so a station whose budget does not suit its machine is seen."""

from __future__ import annotations

import itertools
from datetime import timedelta

from zerodefect.edge.metrics import EdgeMetrics
from zerodefect.inference.wire import InspectionIn
from zerodefect.quality.andon import evaluate_all
from zerodefect.quality.models import Station
from zerodefect.quality.store import record_inspection

from .test_andon import T0, alerts, record, rules  # noqa: F401  (record: the fixture)

_keys = itertools.count()


def add_parts(app, images, verdicts: str) -> None:
    """One part per character: f = the fail-safe reject, p = a judged pass."""
    with app.state.sessions() as session:
        station = session.query(Station).filter_by(name="st-01").one()
        for i, v in enumerate(verdicts):
            body = InspectionIn(
                key=f"k-failsafe-{next(_keys):06d}",
                serial=f"F{i}",
                captured_at=T0 + timedelta(seconds=i),
                model_name="m",
                model_version="1",
                threshold=0.5,
                score=None if v == "f" else 0.1,
                verdict="reject" if v == "f" else "pass",
                failsafe=v == "f",
            )
            record_inspection(session, station, body, images)


def test_a_failsafe_rate_alert_fires_once_per_episode(record) -> None:  # noqa: F811
    app, images = record
    config = rules(failsafe_rate_above=0.1, failsafe_window_parts=20)
    add_parts(app, images, "fff" + "p" * 10)  # 3 of 13: too few parts to judge
    with app.state.sessions() as session:
        assert evaluate_all(session, config, T0) == []
    add_parts(app, images, "p" * 7)  # 3 of the last 20 > 10 %
    with app.state.sessions() as session:
        raised = evaluate_all(session, config, T0)
        assert [(a.rule, a.value) for a in raised] == [("failsafe_rate", 0.15)]
        assert "3 of the last 20 parts got the fail-safe verdict" in raised[0].message
        assert evaluate_all(session, config, T0) == []  # the same episode
    add_parts(app, images, "p" * 20)  # back to 0: clears
    with app.state.sessions() as session:
        assert evaluate_all(session, config, T0) == []
    add_parts(app, images, "ff" + "p" * 17 + "f")  # 3 of 20 again
    with app.state.sessions() as session:
        assert len(evaluate_all(session, config, T0)) == 1
    assert [b for r, b in alerts(app)] == ["episode 1", "episode 2"]


def test_the_station_gauge_is_the_share_of_its_last_parts() -> None:
    metrics = EdgeMetrics(lambda: 0, lambda: 0, failsafe_window=10)
    gauge = "zd_failsafe_rate"
    assert metrics.registry.get_sample_value(gauge) == 0.0  # no part yet: no fail-safe
    for failsafe in [True, False, False, False]:
        metrics.observe({"verdict": "reject" if failsafe else "pass", "failsafe": failsafe}, 5.0, 1)
    assert metrics.registry.get_sample_value(gauge) == 0.25
    for _ in range(10):  # the window moves on: the old fail-safe is out of it
        metrics.observe({"verdict": "pass", "failsafe": False}, 5.0, 1)
    assert metrics.registry.get_sample_value(gauge) == 0.0
