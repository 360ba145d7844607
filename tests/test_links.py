"""A station's link to the line (its PLC, its MQTT broker) that stays down becomes one andon
alert at the record, delivered to the webhook and to the MES's broker, and cleared when the
link is back; judging never waits for it."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import httpx
import yaml
from fastapi import FastAPI, Request

from zerodefect.edge.app import create_app as create_edge
from zerodefect.inference.wire import LinkStateIn
from zerodefect.quality.andon import AndonConfig, evaluate_all
from zerodefect.quality.models import Alert, Station, StationLink
from zerodefect.quality.store import record_link
from zerodefect.services import free_port
from zerodefect.settings import get_settings

from .mosquitto import Subscriber, broker
from .plcsims import ModbusPlcSim
from .servers import record_for_station, serve
from .test_andon import T0, record, rules  # noqa: F401  (record is a fixture)
from .test_edge import png, post, station, wait_for
from .test_plc import modbus_section

ONLY_LINKS = {
    "ucl": False,
    "consecutive_defects": None,
    "false_reject_rate_above": None,
    "silent_seconds": None,
    "unread_rate_above": None,
    "score_drift": False,
    "image_drift": False,
}


def collector() -> tuple[FastAPI, list[dict]]:
    app = FastAPI()
    got: list[dict] = []

    @app.post("/andon")
    async def andon(request: Request) -> dict:
        got.append(await request.json())
        return {"ok": True}

    return app, got


def links(app) -> list[tuple[str, bool]]:
    with app.state.sessions() as session:
        return [(row.link, row.up) for row in session.query(StationLink).order_by(StationLink.link)]


def link_alerts(app) -> list[Alert]:
    with app.state.sessions() as session:
        rows = session.query(Alert).filter_by(rule="link_down").order_by(Alert.id).all()
        session.expunge_all()
        return rows


def test_a_lost_plc_raises_one_alert_to_the_webhook_and_mqtt_and_clears_when_back(
    tmp_path: Path, data_dir: Path, bundles, monkeypatch
) -> None:
    (tmp_path / "broker").mkdir()
    hook, hooked = collector()
    plc = ModbusPlcSim(free_port())
    plc.start()
    with broker(tmp_path / "broker") as mosquitto, serve(hook) as hook_url:
        andon = {
            "webhooks": [f"{hook_url}/andon"],
            "mqtt": {
                "host": "127.0.0.1",
                "port": mosquitto.port,
                "site": "plant1",
                "reconnect_max_seconds": 1,
            },
            "interval_seconds": 0.1,
            "defaults": ONLY_LINKS | {"link_down_seconds": 1.0},
        }
        (tmp_path / "andon.yaml").write_text(yaml.safe_dump(andon))
        monkeypatch.setenv("ZD_ANDON_CONFIG", str(tmp_path / "andon.yaml"))
        get_settings.cache_clear()
        record_app = record_for_station(monkeypatch)
        mes = Subscriber(mosquitto.port, "zd/v1/plant1/L1/st-01/alert", client_id="zd-test-alerts")
        try:
            with serve(record_app) as record_url:
                config = station(
                    tmp_path,
                    str(bundles["reject"]),
                    line="L1",
                    record_url=record_url,
                    plc=modbus_section(plc.port),
                    mqtt={
                        "host": "127.0.0.1",
                        "port": mosquitto.port,
                        "site": "plant1",
                        "reconnect_max_seconds": 1,
                    },
                )
                with serve(create_edge(config)) as url:
                    wait_for(lambda: links(record_app) == [("mqtt", True), ("plc", True)])
                    plc.stop()
                    # Judging goes on at once; the record learns the link is down.
                    assert post(url, png(), serial="WHILE-DOWN").status_code == 200
                    wait_for(lambda: links(record_app) == [("mqtt", True), ("plc", False)])
                    # After link_down_seconds, one alert, to the webhook and to the broker.
                    wait_for(lambda: hooked and mes.messages)
                    alert = mes.json()[0]["alert"]
                    assert alert["rule"] == "link_down" and alert["station"] == "st-01"
                    assert alert["breach"].startswith("plc down since ") and "modbus" in alert["message"]
                    assert hooked[0]["alert"]["id"] == alert["id"]
                    plc.start()  # the PLC is back on the same port: the alert clears
                    wait_for(lambda: links(record_app) == [("mqtt", True), ("plc", True)])
                    wait_for(lambda: link_alerts(record_app)[0].cleared_at is not None)
                    rows = link_alerts(record_app)
                    assert len(rows) == 1 and rows[0].breach == alert["breach"]
                    assert len(hooked) == 1 and len({m["alert"]["id"] for m in mes.json()}) == 1
                    # The broker goes away: the station reports its MQTT link down, the alert
                    # reaches the webhook at once and the MES once the broker is back.
                    mosquitto.stop()
                    wait_for(lambda: len(hooked) == 2)
                    assert hooked[1]["alert"]["breach"].startswith("mqtt down since ")
                    mosquitto.start()
                    wait_for(lambda: len({m["alert"]["id"] for m in mes.json()}) == 2)
                    wait_for(lambda: all(row.cleared_at is not None for row in link_alerts(record_app)))
                    assert [a.breach.split()[0] for a in link_alerts(record_app)] == ["plc", "mqtt"]
        finally:
            mes.close()
            plc.close()


def test_link_reports_are_kept_in_order_and_alert_once_per_outage(record) -> None:  # noqa: F811
    app, _images = record
    config = AndonConfig.model_validate(
        rules().model_dump() | {"defaults": ONLY_LINKS | {"link_down_seconds": 30}}
    )

    def report(up: bool, since) -> None:
        with app.state.sessions() as session:
            st = session.query(Station).filter_by(name="st-01").one()
            record_link(session, st, LinkStateIn(link="plc", up=up, since=since, detail="modbus: refused"))

    def evaluate(at) -> list[str]:
        with app.state.sessions() as session:
            return [a.breach for a in evaluate_all(session, config, at)]

    report(False, T0)
    assert evaluate(T0 + timedelta(seconds=20)) == []  # a PLC restarting within the limit
    assert evaluate(T0 + timedelta(seconds=31)) == ["plc down since 2026-11-25T06:00:00+00:00"]
    assert evaluate(T0 + timedelta(minutes=10)) == []  # the same outage: raised once
    report(True, T0 - timedelta(seconds=5))  # an older report, arriving late: changes nothing
    assert links(app) == [("plc", False)]
    report(True, T0 + timedelta(minutes=11))
    assert evaluate(T0 + timedelta(minutes=12)) == []
    assert link_alerts(app)[0].cleared_at is not None
    report(False, T0 + timedelta(minutes=20))  # a second outage is a second alert
    assert evaluate(T0 + timedelta(minutes=21)) == ["plc down since 2026-11-25T06:20:00+00:00"]


def test_link_reports_need_a_station_key_and_agree_with_their_path(data_dir: Path, monkeypatch) -> None:
    app = record_for_station(monkeypatch)
    key = os.environ["ZD_RECORD_API_KEY"]
    body = {"link": "plc", "up": False, "since": "2026-11-25T06:00:00Z", "detail": "opcua: timeout"}
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.put("/v1/links/plc", json=body).status_code == 401
        assert client.put("/v1/links/plc", json=body, headers={"X-API-Key": "nope"}).status_code == 403
        answer = client.put("/v1/links/mqtt", json=body, headers={"X-API-Key": key})
        assert answer.status_code == 422 and "plc" in answer.json()["detail"]
        bad = client.put("/v1/links/PLC!", json=body | {"link": "PLC!"}, headers={"X-API-Key": key})
        assert bad.status_code == 422 and "link" in bad.text
        assert client.put("/v1/links/plc", json=body, headers={"X-API-Key": key}).status_code == 204
    assert links(app) == [("plc", False)]
