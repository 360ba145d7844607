"""Andon rules raise one alert per breach; webhooks are retried until they answer."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request, Response

from zerodefect.inference.wire import InspectionIn
from zerodefect.quality.andon import AndonConfig, Rules, deliver_due, evaluate_all, load_config
from zerodefect.quality.app import create_app
from zerodefect.quality.images import ImageStore
from zerodefect.quality.models import Alert, AlertDelivery, Inspection
from zerodefect.quality.schemas import ReviewIn
from zerodefect.quality.store import add_review, add_station, as_utc, record_inspection
from zerodefect.settings import get_settings

from .people import client_for
from .servers import serve

T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
_keys = itertools.count()


@pytest.fixture
def record(record_db: str, data_dir: Path):
    """The record service's app on SQLite and on PostgreSQL (record_db), its andon stopped."""
    app = create_app(get_settings())
    app.state.andon.stop()  # these tests evaluate by hand, at times they choose
    with app.state.sessions() as session:
        station, _ = add_station(session, "st-01", line="L1")
    return app, ImageStore(data_dir / "images")


def add_parts(app, images, verdicts: str, at: datetime) -> None:
    """One inspection per character: r = reject, p = pass, u = a pass whose code was not read."""
    with app.state.sessions() as session:
        from zerodefect.quality.models import Station

        station = session.query(Station).filter_by(name="st-01").one()
        for i, v in enumerate(verdicts):
            body = InspectionIn(
                key=f"k-andon-{next(_keys):06d}",
                serial=f"UNREAD-{next(_keys):08x}" if v == "u" else f"S{i}",
                captured_at=at + timedelta(seconds=i),
                model_name="m",
                model_version="1",
                threshold=0.5,
                verdict="reject" if v == "r" else "pass",
            )
            record_inspection(session, station, body, images)


def rules(**only) -> AndonConfig:
    off = {
        "ucl": False,
        "consecutive_defects": None,
        "false_reject_rate_above": None,
        "silent_seconds": None,
        "unread_rate_above": None,
    }
    return AndonConfig(defaults=Rules(**(off | only)))


def alerts(app) -> list[tuple[str, str]]:
    with app.state.sessions() as session:
        return [(a.rule, a.breach) for a in session.query(Alert).order_by(Alert.id)]


def test_consecutive_defects_fire_once_and_count_each_streak(record) -> None:
    app, images = record
    config = rules(consecutive_defects=5)
    add_parts(app, images, "pprrrr", T0)
    with app.state.sessions() as session:
        assert evaluate_all(session, config, T0) == []  # four in a row is not five
    add_parts(app, images, "r", T0)
    with app.state.sessions() as session:
        assert len(evaluate_all(session, config, T0)) == 1
    add_parts(app, images, "rr", T0)  # the same streak goes on: nothing new
    with app.state.sessions() as session:
        assert evaluate_all(session, config, T0) == []
        assert evaluate_all(session, config, T0) == []
    add_parts(app, images, "prrrrr", T0)  # a pass ends it; the next streak counts on the open alert
    with app.state.sessions() as session:
        assert evaluate_all(session, config, T0 + timedelta(minutes=1)) == []
        (alert,) = session.query(Alert).all()
        assert alert.occurrences == 2 and as_utc(alert.last_seen_at) == T0 + timedelta(minutes=1)
    # Ten quiet minutes clear it (the rule re-arms): the next streak is a new alert.
    add_parts(app, images, "prrrrr", T0)
    with app.state.sessions() as session:
        assert len(evaluate_all(session, config, T0 + timedelta(minutes=12))) == 1
    assert [rule for rule, _ in alerts(app)] == ["consecutive_defects"] * 2
    assert alerts(app)[0][1] != alerts(app)[1][1]


def test_an_hour_over_the_control_limit_fires_once(record) -> None:
    app, images = record
    config = rules(ucl=True, ucl_window_hours=12)
    for hour in range(4):  # 1 reject in 50 per hour...
        add_parts(app, images, "r" + "p" * 49, T0 + timedelta(hours=hour))
    add_parts(app, images, "r" * 10 + "p" * 40, T0 + timedelta(hours=4))  # ...then 10 in 50
    now = T0 + timedelta(hours=5)
    with app.state.sessions() as session:
        raised = evaluate_all(session, config, now)
        # p̄ = 14/250 = 0.056; UCL(n=50) = 0.056 + 3*sqrt(0.056*0.944/50) = 0.1536 < 0.2
        assert [(a.rule, a.breach) for a in raised] == [("ucl", "2026-11-25T10:00Z")]
        assert raised[0].value == pytest.approx(0.2) and raised[0].limit == pytest.approx(0.15355, abs=1e-4)
        assert evaluate_all(session, config, now) == []


def test_a_silent_station_fires_once_per_silence(record) -> None:
    app, images = record
    config = rules(silent_seconds=300)
    add_parts(app, images, "p", T0)
    with app.state.sessions() as session:
        from zerodefect.quality.models import Station

        seen = session.query(Station).one().last_seen_at
        seen = seen if seen.tzinfo else seen.replace(tzinfo=UTC)
        assert evaluate_all(session, config, seen + timedelta(seconds=299)) == []
        assert len(evaluate_all(session, config, seen + timedelta(seconds=301))) == 1
        assert evaluate_all(session, config, seen + timedelta(seconds=900)) == []


def test_a_failing_webhook_is_retried_until_it_answers(record) -> None:
    app, images = record
    received: list[dict] = []
    hook = FastAPI()

    @hook.post("/andon")
    async def andon(request: Request) -> Response:
        received.append(await request.json())
        return Response(status_code=500 if len(received) <= 2 else 200)

    with serve(hook) as hook_url:
        config = rules(consecutive_defects=3).model_copy(update={"webhooks": [f"{hook_url}/andon"]})
        add_parts(app, images, "rrr", T0)
        with app.state.sessions() as session, httpx.Client() as client:
            (alert,) = evaluate_all(session, config, T0)
            assert deliver_due(session, client, T0) == 0  # 500: retry in 2 s
            assert deliver_due(session, client, T0 + timedelta(seconds=1)) == 0  # not due yet
            assert deliver_due(session, client, T0 + timedelta(seconds=2)) == 0  # 500: retry in 4 s
            assert deliver_due(session, client, T0 + timedelta(seconds=6)) == 1
            assert deliver_due(session, client, T0 + timedelta(hours=1)) == 0  # delivered once only
            delivery = session.query(AlertDelivery).one()
            assert delivery.attempts == 3 and delivery.delivered_at is not None
    assert len(received) == 3
    assert {r["alert"]["id"] for r in received} == {alert.id}
    assert (
        received[0]["alert"]["rule"] == "consecutive_defects" and received[0]["alert"]["station"] == "st-01"
    )


def test_alerts_are_acknowledged_and_resolved_by_reviewers(record) -> None:
    app, images = record
    add_parts(app, images, "rrrrr", T0)
    with app.state.sessions() as session:
        (alert,) = evaluate_all(session, rules(consecutive_defects=5), T0)
    with serve(app) as url:
        viewer, reviewer = client_for(app, url, "viewer"), client_for(app, url, "reviewer")
        listed = viewer.get("/v1/alerts", params={"state": "open"}).json()
        assert [a["id"] for a in listed] == [alert.id]
        assert viewer.post(f"/v1/alerts/{alert.id}/acknowledge").status_code == 403
        acked = reviewer.post(f"/v1/alerts/{alert.id}/acknowledge")
        assert acked.status_code == 200 and acked.json()["acknowledged_by"] == "reviewer-1"
        assert reviewer.post(f"/v1/alerts/{alert.id}/acknowledge").status_code == 409
        assert reviewer.post(f"/v1/alerts/{alert.id}/resolve").json()["state"] == "resolved"
        assert viewer.get("/v1/alerts", params={"state": "open"}).json() == []
        assert reviewer.post("/v1/alerts/999/resolve").status_code == 404
        viewer.close()
        reviewer.close()


def test_andon_config_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "andon.yaml"
    bad.write_text("defaults: {consecutive_defects: 1}\n")
    with pytest.raises(ValueError, match="andon.yaml: invalid andon configuration"):
        load_config(bad)
    good = tmp_path / "ok.yaml"
    good.write_text("webhooks: [http://x/y]\nstations: {st-01: {consecutive_defects: 9}}\n")
    config = load_config(good)
    assert (
        config.rules_for("st-01").consecutive_defects == 9
        and config.rules_for("other").consecutive_defects == 5
    )


def test_a_streak_ended_between_evaluations_is_still_raised(record) -> None:
    app, images = record
    add_parts(app, images, "rrrrrp", T0)  # five rejects, then a pass, before anyone looked
    with app.state.sessions() as session:
        assert len(evaluate_all(session, rules(consecutive_defects=5), T0)) == 1
        assert evaluate_all(session, rules(consecutive_defects=5), T0) == []


def test_the_control_limit_ignores_unfinished_and_thin_hours(record) -> None:
    app, images = record
    config = rules(ucl=True, ucl_min_parts=20)
    for hour in range(4):
        add_parts(app, images, "r" + "p" * 49, T0 + timedelta(hours=hour))
    add_parts(app, images, "rr", T0 + timedelta(hours=4))  # 2 of 2 parts: far above any limit
    with app.state.sessions() as session:
        # During that hour: not finished. After it: finished but thin. Neither raises.
        assert evaluate_all(session, config, T0 + timedelta(hours=4, minutes=30)) == []
        assert evaluate_all(session, config, T0 + timedelta(hours=5, minutes=1)) == []


def test_a_false_reject_rate_alert_fires_once_per_episode(record) -> None:
    app, images = record
    config = rules(false_reject_rate_above=0.5, min_reviews=4)
    add_parts(app, images, "rrrrrr", T0)
    reviewer = add_reviewer(app)

    def review(decisions: str) -> None:
        with app.state.sessions() as session:
            rows = (
                session.query(Inspection).filter(Inspection.verdict == "reject").order_by(Inspection.id).all()
            )
            for row, d in zip(rows, decisions, strict=False):
                add_review(
                    session,
                    row.id,
                    reviewer(session),
                    ReviewIn(decision="false_reject" if d == "f" else "confirmed"),
                )

    review("fffccc")  # 3 of 6 false: not above 0.5
    now = datetime.now(UTC)
    with app.state.sessions() as session:
        assert evaluate_all(session, config, now) == []
    review("ffff")  # now 4 of 6 (the newest review of a part counts)
    with app.state.sessions() as session:
        assert len(evaluate_all(session, config, now)) == 1
        assert evaluate_all(session, config, now) == []  # the same episode
    review("cccccc")  # all confirmed: the episode clears...
    with app.state.sessions() as session:
        assert evaluate_all(session, config, now) == []
    review("ffffff")  # ...and a new one begins
    with app.state.sessions() as session:
        assert len(evaluate_all(session, config, now)) == 1
    assert [b for r, b in alerts(app)] == ["episode 1", "episode 2"]


def test_an_unread_code_rate_alert_fires_once_per_episode(record) -> None:
    """Parts whose code the station could not read (serial UNREAD-...) above 10 % of the last
    20: one alert per episode, none before 20 parts, and a new one after the rate came back."""
    app, images = record
    config = rules(unread_rate_above=0.1, unread_window_parts=20)
    add_parts(app, images, "uuu" + "p" * 10, T0)  # 3 of 13: too few parts to judge
    with app.state.sessions() as session:
        assert evaluate_all(session, config, T0) == []
    add_parts(app, images, "p" * 7, T0)  # 3 of the last 20 > 10 %
    with app.state.sessions() as session:
        raised = evaluate_all(session, config, T0)
        assert [(a.rule, a.value) for a in raised] == [("unread_rate", 0.15)]
        assert "3 of the last 20 parts had no readable code" in raised[0].message
        assert evaluate_all(session, config, T0) == []  # the same episode
    add_parts(app, images, "p" * 20, T0)  # back to 0: clears
    with app.state.sessions() as session:
        assert evaluate_all(session, config, T0) == []
    add_parts(app, images, "uu" + "p" * 16 + "u", T0)  # 3 of 20 again (2 would be 10 %, not above)
    with app.state.sessions() as session:
        assert len(evaluate_all(session, config, T0)) == 1
    assert [b for r, b in alerts(app)] == ["episode 1", "episode 2"]


def add_reviewer(app):
    from .people import add_user

    name = add_user(app.state.sessions, "qa", "reviewer")

    def get(session):
        from zerodefect.quality.models import User

        return session.query(User).filter_by(username=name).one()

    return get


def test_a_webhook_url_must_be_a_url(tmp_path: Path) -> None:
    bad = tmp_path / "andon.yaml"
    bad.write_text("webhooks: ['http://host:80a/']\n")
    with pytest.raises(ValueError, match="invalid andon configuration"):
        load_config(bad)


def test_a_rule_is_one_function_in_the_registry(record, monkeypatch) -> None:
    """The evaluator raises what any registered rule returns, once per breach, and a rule
    called on its own only reports (it raises nothing)."""
    from zerodefect.quality.andon import RULES, Breach, consecutive_defects
    from zerodefect.quality.models import Station

    app, images = record
    add_parts(app, images, "rrrrr", T0)
    config = rules(consecutive_defects=5)
    with app.state.sessions() as session:
        station = session.query(Station).filter_by(name="st-01").one()
        found = consecutive_defects(session, station, config.rules_for("st-01"), T0)
        assert [b.message for b in found] == [
            f"5 rejects in a row (from inspection {found[0].name.split()[-1]})"
        ]
        assert alerts(app) == []
    monkeypatch.setitem(RULES, "shift_change", lambda *_: [Breach("at 06:00", "a new shift started")])
    with app.state.sessions() as session:
        assert sorted(a.rule for a in evaluate_all(session, config, T0)) == [
            "consecutive_defects",
            "shift_change",
        ]
        assert evaluate_all(session, config, T0) == []
    assert ("shift_change", "at 06:00") in alerts(app)


def test_the_drift_watch_reads_every_series_of_every_station_in_one_batch(record) -> None:
    """watch_stations (one UNION ALL, arrays on PostgreSQL) gives each series its reference (the
    first parts of the model version) and the recent parts after it, as the per-series reads
    did: checked against the values posted, on SQLite and PostgreSQL."""
    from zerodefect.inference.wire import ImageStatsIn
    from zerodefect.quality.andon import watch_stations
    from zerodefect.quality.drift import check
    from zerodefect.quality.models import Station

    app, images = record
    rnd = np.random.default_rng(5)
    scores, lights = rnd.uniform(0, 0.4, 60).round(6), rnd.normal(120, 3, 60)
    with app.state.sessions() as session:
        station = session.query(Station).filter_by(name="st-01").one()
        for i in range(60):
            verdict = "reject" if i % 7 == 3 else "pass"  # rejects are no score series part
            body = InspectionIn(
                key=f"k-drift-{i}",
                serial=f"S{i}",
                captured_at=T0 + timedelta(seconds=i),
                model_name="m",
                model_version="1",
                threshold=0.5,
                score=float(scores[i]),
                verdict=verdict,
                image_stats=ImageStatsIn(brightness=float(lights[i]), contrast=40.0, sharpness=900.0),
            )
            record_inspection(session, station, body, images)
        config = rules(drift_reference_parts=20, drift_window=25)
        watched = watch_stations(session, [station], lambda s: config.rules_for(s.name))
        passed = [i for i in range(60) if i % 7 != 3]
        (score,) = watched[station.id, "score_drift"]
        ids = session.query(Inspection.id).order_by(Inspection.id).all()
        assert score.recent_ids == [ids[i][0] for i in passed[20:][-25:]]
        r = config.rules_for("st-01")
        expected = check(
            scores[passed[:20]],
            scores[passed[20:][-25:]],
            r.drift_cusum_k,
            r.drift_cusum_h,
            r.drift_ewma_lambda,
            r.drift_ewma_l,
        )
        assert score.result.cusum_path == pytest.approx(expected.cusum_path, rel=1e-9)
        brightness, contrast, sharpness = watched[station.id, "image_drift"]
        assert [brightness.label, contrast.label, sharpness.label] == ["brightness", "contrast", "sharpness"]
        assert brightness.recent_ids == [i for (i,) in ids[20:][-25:]]
        expected = check(
            lights[:20],
            lights[20:][-25:],
            r.drift_cusum_k,
            r.drift_cusum_h,
            r.drift_ewma_lambda,
            r.drift_ewma_l,
        )
        assert brightness.result.cusum_path == pytest.approx(expected.cusum_path, rel=1e-9)


def test_a_flood_of_30_streaks_in_10_minutes_is_one_alert_counted_30_times_and_few_webhook_calls(
    record,
) -> None:
    """ISA-18.2 / EEMUA 191: "5 rejects in a row" 30 times in 10 minutes (one every 20 s, the
    andon evaluating and delivering after each) is one alert with count 30; a real webhook over
    loopback HTTP hears the raise at once and the count at most every update_interval_seconds
    (120 s: at most 6 calls in the 10 minutes), ending with 30."""
    app, images = record
    received: list[dict] = []
    hook = FastAPI()

    @hook.post("/andon")
    async def andon(request: Request) -> Response:
        received.append(await request.json())
        return Response(status_code=200)

    with serve(hook) as hook_url:
        config = rules(consecutive_defects=5).model_copy(update={"webhooks": [f"{hook_url}/andon"]})
        with httpx.Client() as client:
            for i in range(30):
                now = T0 + timedelta(seconds=20 * i)
                add_parts(app, images, "rrrrrp", now)
                with app.state.sessions() as session:
                    evaluate_all(session, config, now)
                    deliver_due(session, client, now)
            with app.state.sessions() as session:  # the last count goes out when its turn comes
                assert deliver_due(session, client, T0 + timedelta(minutes=10)) == 1
                assert deliver_due(session, client, T0 + timedelta(hours=1)) == 0
                (alert,) = session.query(Alert).all()
                assert alert.occurrences == 30 and alert.state == "open"
    counts = [r["alert"]["count"] for r in received]
    assert {r["alert"]["id"] for r in received} == {alert.id}
    assert counts[0] == 1 and counts[-1] == 30 and counts == sorted(counts)
    assert 2 <= len(received) <= 1 + 600 // 120


def test_an_acknowledged_alert_counts_quietly_and_re_arms_only_once_its_condition_cleared(record) -> None:
    app, images = record
    config = rules(consecutive_defects=3).model_copy(update={"webhooks": ["http://127.0.0.1:9/never-called"]})
    add_parts(app, images, "rrrp", T0)
    with app.state.sessions() as session:
        (alert,) = evaluate_all(session, config, T0)
        alert.state, alert.acknowledged_by = "acknowledged", "rita"
        session.commit()
    for minute in (1, 5):  # the station goes on breaching: counted, not announced, not raised
        add_parts(app, images, "rrrp", T0 + timedelta(minutes=minute))
        with app.state.sessions() as session:
            assert evaluate_all(session, config, T0 + timedelta(minutes=minute)) == []
    with app.state.sessions() as session:
        assert session.get(Alert, alert.id).occurrences == 3
        assert session.query(AlertDelivery).count() == 1  # the raise only
    # Ten minutes without a streak clear it; the next streak raises a new alert.
    add_parts(app, images, "rrrp", T0 + timedelta(minutes=16))
    with app.state.sessions() as session:
        (again,) = evaluate_all(session, config, T0 + timedelta(minutes=16))
        old = session.get(Alert, alert.id)
        assert again.id != alert.id and old.cleared_at is not None and old.state == "acknowledged"
