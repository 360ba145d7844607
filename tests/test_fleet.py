"""`zerodefect fleet status`: every station, from the record: the model it serves, its last
part, its outbox backlog, its links, and its health."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from typer.testing import CliRunner

from zerodefect.cli import app as cli
from zerodefect.cli.root import console
from zerodefect.edge.app import create_app as create_edge
from zerodefect.quality.fleet import fleet_status
from zerodefect.quality.store import add_station

from .people import client_for
from .servers import record_for_station, serve
from .test_edge import png, post, station, wait_for


def test_fleet_status_lists_every_station_with_its_model_backlog_and_health(
    data_dir: Path, tmp_path: Path, bundles, monkeypatch
) -> None:
    record_app = record_for_station(monkeypatch)  # st-01 on line L1
    with record_app.state.sessions() as session:
        _, key2 = add_station(session, "st-02", line="L2")
        add_station(session, "st-03", line="L2")  # never heard from
    with serve(record_app) as record_url:
        config = station(tmp_path, str(bundles["pass"]), line="L1", record_url=record_url, status_seconds=0.2)
        with serve(create_edge(config)) as url:
            version = post(url, png(), serial="F-1", frame_id="f1").json()["model_version"]
            post(url, png(90), serial="F-2", frame_id="f2")

            def st01():
                with record_app.state.sessions() as session:
                    return next(r for r in fleet_status(session) if r.station == "st-01")

            wait_for(lambda: st01().last_part_at is not None and st01().outbox_pending == 0)
        # Another station reports parts the record refused, and its MQTT link down.
        headers = {"X-API-Key": key2}
        report = {
            "model_name": "m",
            "model_version": "7",
            "outbox_pending": 5,
            "outbox_dead": 3,
            "every_seconds": 30,
        }
        assert httpx.put(f"{record_url}/v1/station-status", json=report, headers=headers).status_code == 204
        link = {"link": "mqtt", "up": False, "since": datetime.now(UTC).isoformat(), "detail": "broker away"}
        assert httpx.put(f"{record_url}/v1/links/mqtt", json=link, headers=headers).status_code == 204
        bad = httpx.put(
            f"{record_url}/v1/station-status", json=report | {"outbox_pending": -1}, headers=headers
        )
        assert bad.status_code == 422 and "outbox_pending" in bad.text

        viewer = client_for(record_app, record_url, "viewer")
        listed = viewer.get("/v1/fleet").json()
        viewer.close()
    by_name = {row["station"]: row for row in listed}
    assert list(by_name) == ["st-01", "st-02", "st-03"]  # by line, then name
    one, two, three = by_name["st-01"], by_name["st-02"], by_name["st-03"]
    assert (one["model_version"], one["last_part_model_version"], one["outbox_pending"]) == (
        version,
        version,
        0,
    )
    assert (one["health"], one["reasons"]) == ("ok", [])
    assert two["health"] == "degraded" and two["links_down"] == ["mqtt"]
    assert two["reasons"] == ["3 parts refused by the record (dead in the outbox)", "link mqtt down"]
    assert (three["health"], three["model_version"], three["last_part_at"]) == ("silent", None, None)

    # A station whose reports stop is stale after three missed reports.
    with record_app.state.sessions() as session:
        later = fleet_status(session, now=datetime.fromisoformat(one["reported_at"]) + timedelta(seconds=1))
    assert next(r for r in later if r.station == "st-01").health == "stale"

    # The command line: a table, or JSON; exit code 1 while any station is not ok.
    monkeypatch.setattr(console, "width", 200)  # a plant's terminal, not CliRunner's 80 columns
    table = CliRunner().invoke(cli, ["fleet", "status"])
    assert table.exit_code == 1 and "degraded" in table.output and "silent" in table.output
    as_json = CliRunner().invoke(cli, ["fleet", "status", "--json"])
    assert as_json.exit_code == 1
    rows = [(r["station"], r["model_version"], r["outbox_dead"]) for r in json.loads(as_json.output)]
    assert rows == [("st-01", version, 0), ("st-02", "7", 3), ("st-03", None, None)]
