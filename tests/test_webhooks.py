"""Signed webhooks (the record's andon alerts, the station's results), checked by the sample
receiver (zerodefect.webhooks.verify) behind real HTTP: a genuine request passes; a changed
body, an old timestamp or another secret do not."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from zerodefect.edge.app import create_app as create_edge
from zerodefect.quality.andon import AndonConfig, deliver_due, evaluate_all, load_config
from zerodefect.quality.models import AlertDelivery
from zerodefect.webhooks import DEFAULT_TOLERANCE_SECONDS, SignatureError, sign, verify

from .servers import serve
from .test_andon import T0, add_parts, record, rules  # noqa: F401  (record is a fixture)
from .test_edge import png, post, station, wait_for

SECRET = "whsec-test-2f9c1e"
# The first retry's back-off (zerodefect.backoff: 1 s * 2**1).
T_RETRY = timedelta(seconds=2)


def signed_config(url: str) -> AndonConfig:
    """The andon with one rule (3 rejects in a row) and one signed target."""
    return AndonConfig.model_validate(
        rules(consecutive_defects=3).model_dump()
        | {"webhooks": [{"url": url, "secret_env": "ZD_WEBHOOK_QMS_SECRET"}]}
    )


def receiver(secret: str, clock: list[float]) -> tuple[FastAPI, list[tuple[bytes, dict]]]:
    """A QMS endpoint as the README shows it: verify the raw body, then trust it. `clock[0]`
    shifts the receiver's clock (to replay a request later without waiting)."""
    app = FastAPI()
    accepted: list[tuple[bytes, dict]] = []

    @app.post("/hooks/zd")
    async def hook(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            verify(body, request.headers.get("X-ZD-Signature"), secret, now=time.time() + clock[0])
        except SignatureError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=401)
        accepted.append((body, dict(request.headers)))
        return JSONResponse({"ok": True})

    return app, accepted


def test_a_signed_alert_is_accepted_and_a_tampered_or_replayed_one_refused(record, monkeypatch) -> None:  # noqa: F811
    app, images = record
    monkeypatch.setenv("ZD_WEBHOOK_QMS_SECRET", SECRET)
    clock = [0.0]
    hook, accepted = receiver(SECRET, clock)
    with serve(hook) as hook_url:
        url = f"{hook_url}/hooks/zd"
        config = signed_config(url)
        add_parts(app, images, "rrr", T0)
        with app.state.sessions() as session, httpx.Client() as client:
            (alert,) = evaluate_all(session, config, T0)
            assert deliver_due(session, client, T0, config.webhook_secret_envs()) == 1
            delivery = session.query(AlertDelivery).one()
            assert delivery.delivered_at is not None and delivery.last_error is None
        (body, headers) = accepted[0]
        assert httpx.Response(200, content=body).json()["alert"]["id"] == alert.id
        assert headers["x-zd-signature"].startswith("t=") and ",v1=" in headers["x-zd-signature"]
        assert headers["x-zd-delivery"] == str(delivery.id)
        signed = {"X-ZD-Signature": headers["x-zd-signature"], "Content-Type": "application/json"}

        tampered = body.replace(b'"rule":"consecutive_defects"', b'"rule":"silent"')
        assert tampered != body
        refused = httpx.post(url, content=tampered, headers=signed)
        assert refused.status_code == 401 and "does not match" in refused.json()["detail"]

        clock[0] = DEFAULT_TOLERANCE_SECONDS + 1  # the same request, captured and sent again later
        replayed = httpx.post(url, content=body, headers=signed)
        assert replayed.status_code == 401 and "timestamp" in replayed.json()["detail"]
        clock[0] = 0.0

        forged = httpx.post(url, content=body, headers={"X-ZD-Signature": sign(body, "another-secret")})
        assert forged.status_code == 401
        unsigned = httpx.post(url, content=body)
        assert unsigned.status_code == 401 and "no X-ZD-Signature" in unsigned.json()["detail"]
    assert len(accepted) == 1


def test_a_signed_target_without_its_secret_is_retried_never_sent_unsigned(record, monkeypatch) -> None:  # noqa: F811
    app, images = record
    monkeypatch.delenv("ZD_WEBHOOK_QMS_SECRET", raising=False)
    hook, accepted = receiver(SECRET, [0.0])
    with serve(hook) as hook_url:
        config = signed_config(f"{hook_url}/hooks/zd")
        add_parts(app, images, "rrr", T0)
        with app.state.sessions() as session, httpx.Client() as client:
            evaluate_all(session, config, T0)
            assert deliver_due(session, client, T0, config.webhook_secret_envs()) == 0
            delivery = session.query(AlertDelivery).one()
            assert "ZD_WEBHOOK_QMS_SECRET" in delivery.last_error and delivery.delivered_at is None
            # Once the secret is there, the retry (after its back-off) goes out signed.
            monkeypatch.setenv("ZD_WEBHOOK_QMS_SECRET", SECRET)
            assert deliver_due(session, client, T0 + T_RETRY, config.webhook_secret_envs()) == 1
    assert len(accepted) == 1


def test_signed_webhooks_in_yaml(tmp_path) -> None:
    path = tmp_path / "andon.yaml"
    path.write_text(
        "webhooks:\n  - http://plain.example/hook\n  - {url: 'https://qms.example/zd', secret_env: ZD_QMS}\n"
    )
    config = load_config(path)
    assert config.targets() == ["http://plain.example/hook", "https://qms.example/zd"]
    assert config.webhook_secret_envs() == {"https://qms.example/zd": "ZD_QMS"}
    path.write_text("webhooks:\n  - {url: 'https://qms.example/zd', secret: inline}\n")
    with pytest.raises(ValueError, match="invalid andon configuration"):
        load_config(path)


def test_verify_refuses_what_it_cannot_read() -> None:
    body = b'{"alert":{}}'
    now = 1_800_000_000
    assert verify(body, sign(body, SECRET, now), SECRET, now=now) == now
    for header in ("", "v1=abc", "t=soon,v1=abc", f"t={now}"):
        with pytest.raises(SignatureError):
            verify(body, header, SECRET, now=now)


def test_each_result_goes_to_a_signed_webhook_once_even_when_it_fails_first(
    tmp_path, data_dir, bundles, monkeypatch
) -> None:
    monkeypatch.setenv("ZD_WEBHOOK_QMS_SECRET", SECRET)
    hook, accepted = receiver(SECRET, [0.0])
    answers = {"count": 0}

    @hook.middleware("http")
    async def down_at_first(request: Request, call_next):
        answers["count"] += 1
        if answers["count"] <= 2:  # the QMS is restarting: the station must retry
            return JSONResponse({"detail": "starting"}, status_code=503)
        return await call_next(request)

    with serve(hook) as hook_url:
        target = {"url": f"{hook_url}/hooks/zd", "secret_env": "ZD_WEBHOOK_QMS_SECRET"}
        config = station(tmp_path, str(bundles["reject"]), line="L1", webhooks=[target])
        with serve(create_edge(config)) as url:
            keys = {
                post(url, png(60 + i), serial=f"SN-{i}", frame_id=f"f{i}").json()["key"] for i in range(5)
            }
            wait_for(lambda: len(accepted) >= 5)
    results = [httpx.Response(200, content=body).json()["result"] for body, _ in accepted]
    assert sorted(r["key"] for r in results) == sorted(keys)  # each part once, after the retries
    assert {h["x-zd-delivery"] for _, h in accepted} == keys
    assert all(r["station"] == "st-01" and r["line"] == "L1" and "image_b64" not in r for r in results)
    assert answers["count"] == 7
