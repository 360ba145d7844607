"""Drift alerts: the statistics on their own, then through the record's andon, once per episode."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta

import cv2
import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request, Response

from zerodefect.inference.imagestats import image_stats
from zerodefect.quality.alert_mqtt import AlertPublisher
from zerodefect.quality.andon import AndonConfig, Rules, deliver_due, evaluate_all
from zerodefect.quality.drift import check, ks_2samp, psi
from zerodefect.quality.models import Alert, Inspection

from .mosquitto import Subscriber, broker
from .people import client_for
from .servers import record_for_station, serve
from .test_edge import wait_for

T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
DEFAULTS = Rules()
# Good parts' scores: mean 0.2, sigma 0.05 (an anomaly model's passed parts, threshold 0.5).
MEAN, SIGMA = 0.2, 0.05
SHIFT_AT = 5000


def judge(reference: np.ndarray, values: np.ndarray):
    """The andon's default detectors on one series."""
    r = DEFAULTS
    return check(reference, values, r.drift_cusum_k, r.drift_cusum_h, r.drift_ewma_lambda, r.drift_ewma_l)


def test_psi_and_ks_tell_a_shift_from_noise() -> None:
    rng = np.random.default_rng(1)
    reference, same, shifted = (rng.normal(m, SIGMA, 1000) for m in (MEAN, MEAN, MEAN + SIGMA))
    assert psi(reference, same) < 0.05 and psi(reference, shifted) > 0.25
    d_same, p_same = ks_2samp(reference, same)
    d_shift, p_shift = ks_2samp(reference, shifted)
    assert p_same > 0.05 and p_shift < 1e-6 and d_shift > 0.3 > d_same
    # The same D and p-value as scipy's asymptotic test (scipy comes with the train extra).
    from scipy.stats import ks_2samp as scipy_ks

    ref = scipy_ks(reference, shifted, method="asymp")
    assert d_shift == pytest.approx(ref.statistic) and p_shift == pytest.approx(ref.pvalue, rel=0.5, abs=1e-9)
    ref = scipy_ks(reference, same, method="asymp")
    assert d_same == pytest.approx(ref.statistic) and p_same == pytest.approx(ref.pvalue, abs=0.05)
    with pytest.raises(ValueError, match="non-empty"):
        psi(reference, np.array([]))


@pytest.mark.parametrize("seed", range(3))
def test_a_1_sigma_score_shift_alarms_within_50_parts_and_5000_good_parts_do_not(seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference = rng.normal(MEAN, SIGMA, DEFAULTS.drift_reference_parts)
    steady = rng.normal(MEAN, SIGMA, SHIFT_AT)
    assert judge(reference, steady).first_alarm is None  # no false alarm in 5,000 parts
    shifted = np.concatenate([steady, rng.normal(MEAN + SIGMA, SIGMA, 200)])
    result = judge(reference, shifted)
    assert result.alarm and SHIFT_AT <= result.first_alarm < SHIFT_AT + 50
    assert result.since == result.first_alarm  # one run of alarms from the shift on: one episode
    assert result.shift_sigma > 0 and result.psi > 0


def frames(rng: np.random.Generator, n: int, gain: float = 1.0) -> np.ndarray:
    """Image statistics of n frames of one textured part under a light that flickers by 2 %,
    with sensor noise: `gain` 0.8 is a light that lost 20 %."""
    base = np.zeros((64, 64, 3), np.uint8)
    base[:] = 140
    cv2.circle(base, (32, 32), 16, (60, 60, 60), -1)
    cv2.rectangle(base, (4, 4), (20, 12), (220, 220, 220), -1)
    out = []
    for _ in range(n):
        light = gain * rng.normal(1.0, 0.02)
        noisy = base * light + rng.normal(0, 2, base.shape)
        out.append(image_stats(np.clip(noisy, 0, 255).astype(np.uint8)).brightness)
    return np.array(out)


def test_a_20_percent_darker_light_alarms_within_50_parts_and_5000_steady_frames_do_not() -> None:
    rng = np.random.default_rng(7)
    reference = frames(rng, DEFAULTS.drift_reference_parts)
    steady = frames(rng, SHIFT_AT)
    assert judge(reference, steady).first_alarm is None
    result = judge(reference, np.concatenate([steady, frames(rng, 100, gain=0.8)]))
    assert result.alarm and SHIFT_AT <= result.first_alarm < SHIFT_AT + 50
    assert result.first_alarm <= SHIFT_AT + 1 and result.ewma < -5  # 20 % is many flickers deep, downwards


def test_image_statistics_measure_light_contrast_and_focus() -> None:
    flat = image_stats(np.full((50, 70, 3), 100, np.uint8))
    assert (flat.brightness, flat.contrast, flat.sharpness) == (100, 0, 0)
    rng = np.random.default_rng(0)
    sharp = (rng.random((480, 640)) > 0.5).astype(np.uint8) * 200
    sharp = np.repeat(np.kron(sharp[:60, :80], np.ones((8, 8), np.uint8))[..., None], 3, axis=2)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 6)
    s, b = image_stats(sharp), image_stats(blurred)
    assert s.brightness == pytest.approx(b.brightness, abs=2)  # the same light...
    assert s.sharpness > 5 * b.sharpness and s.contrast > b.contrast  # ...out of focus
    darker = image_stats((sharp * 0.8).astype(np.uint8))
    assert darker.brightness == pytest.approx(0.8 * s.brightness, rel=0.01)


_keys = itertools.count()


def post(client: httpx.Client, key: str, scores: np.ndarray, brightness: np.ndarray) -> None:
    """Passed parts as a station posts them, with their score and image statistics."""
    for score, light in zip(scores, brightness, strict=True):
        n = next(_keys)
        body = {
            "key": f"k-drift-{n:06d}",
            "serial": f"S{n}",
            "captured_at": (T0 + timedelta(seconds=n)).isoformat(),
            "model_name": "m",
            "model_version": "1",
            "threshold": 0.5,
            "score": round(float(score), 6),
            "verdict": "pass",
            "image_stats": {"brightness": round(float(light), 3), "contrast": 40.0, "sharpness": 900.0},
        }
        answer = client.post("/v1/inspections", json=body, headers={"X-API-Key": key})
        assert answer.status_code == 201, answer.text


def test_drift_alerts_are_raised_once_through_the_record_and_reach_the_webhook_and_mqtt(
    monkeypatch, data_dir, tmp_path
) -> None:
    app = record_for_station(monkeypatch)
    app.state.andon.stop()  # evaluated by hand, after each batch of parts
    key = os.environ["ZD_RECORD_API_KEY"]
    received: list[dict] = []
    hook = FastAPI()

    @hook.post("/andon")
    async def andon(request: Request) -> Response:
        received.append(await request.json())
        return Response(status_code=200)

    rng = np.random.default_rng(3)
    n_ref, steady, batch = 100, 200, 10
    (tmp_path / "broker").mkdir()
    with (
        serve(app) as url,
        serve(hook) as hook_url,
        httpx.Client(base_url=url) as client,
        broker(tmp_path / "broker") as mosquitto,
    ):
        only_drift = Rules(
            ucl=False,
            consecutive_defects=None,
            false_reject_rate_above=None,
            silent_seconds=None,
            drift_reference_parts=n_ref,
            drift_window=100,
        )
        config = AndonConfig(
            defaults=only_drift,
            webhooks=[f"{hook_url}/andon"],
            mqtt={"host": "127.0.0.1", "port": mosquitto.port, "site": "plant1"},
        )
        mes = Subscriber(mosquitto.port, "zd/v1/plant1/L1/st-01/alert", client_id="zd-test-drift")
        publisher = AlertPublisher(config.mqtt)
        publisher.start()
        wait_for(publisher.client.is_connected)
        post(client, key, rng.normal(MEAN, SIGMA, n_ref + steady), rng.normal(140, 2.8, n_ref + steady))
        with app.state.sessions() as session:
            assert evaluate_all(session, config) == []
        # Scores shift by 1 sigma; 10 parts later the light loses 20 %.
        fired: dict[str, int] = {}
        for posted in range(0, 100, batch):
            light = 140 * (0.8 if posted >= 10 else 1.0)
            post(client, key, rng.normal(MEAN + SIGMA, SIGMA, batch), rng.normal(light, 2.8, batch))
            with app.state.sessions() as session:
                for alert in evaluate_all(session, config):
                    assert alert.breach.split()[0] not in fired, "raised twice"
                    fired[alert.breach.split()[0]] = posted + batch
        assert fired["score"] <= 50 and fired["brightness"] - 10 <= 50, fired
        with app.state.sessions() as session:
            rows = session.query(Alert).order_by(Alert.id).all()
            assert sorted((a.rule, a.breach.split()[0]) for a in rows) == [
                ("image_drift", "brightness"),
                ("score_drift", "score"),
            ]
            first = session.get(Inspection, int(rows[0].breach.split()[-1]))
            assert first.serial.startswith("S") and all(a.cleared_at is None for a in rows)
            # Each alert to the webhook and to the broker, once.
            assert deliver_due(session, client, publisher=publisher) == 4
            assert deliver_due(session, client, publisher=publisher) == 0
        publisher.stop()
        wait_for(lambda: len(mes.messages) == 2)
        mes.close()
        assert sorted(m["alert"]["breach"].split()[0] for m in mes.json()) == ["brightness", "score"]
        # The dashboard charts each series' CUSUM against h, as the andon judged it.
        app.state.andon.config = config
        viewer = client_for(app, url, "viewer")
        page = viewer.get("/dashboard").text
        viewer.close()
        assert page.count('data-chart="limit"') == 4 and "score CUSUM: st-01" in page
        assert 'class="point out"' in page and 'class="limit"' in page
        # The light is fixed and the scores come back: both episodes clear, nothing new is raised.
        post(client, key, rng.normal(MEAN, SIGMA, 100), rng.normal(140, 2.8, 100))
        with app.state.sessions() as session:
            assert evaluate_all(session, config) == []
            assert all(a.cleared_at is not None for a in session.query(Alert))
        # Image statistics the record could not chart are refused with the field named.
        bad = {"brightness": -1, "contrast": 1, "sharpness": 1}
        answer = client.post(
            "/v1/inspections",
            json={
                "key": "k-drift-bad-stats",
                "serial": "S",
                "captured_at": T0.isoformat(),
                "model_name": "m",
                "model_version": "1",
                "threshold": 0.5,
                "verdict": "pass",
                "image_stats": bad,
            },
            headers={"X-API-Key": key},
        )
        assert answer.status_code == 422 and "brightness" in answer.text
    assert sorted(r["alert"]["rule"] for r in received) == ["image_drift", "score_drift"]
    assert "drifted" in received[0]["alert"]["message"]
