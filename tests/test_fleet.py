"""`zerodefect fleet status`: every station, from the record: the model it serves, its last
part, its outbox backlog, its links, and its health."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from zerodefect.cli import app as cli
from zerodefect.cli.root import console
from zerodefect.edge.app import create_app as create_edge
from zerodefect.quality.fleet import fleet_status
from zerodefect.quality.store import add_station
from zerodefect.settings import get_settings

from .bundles import register
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


def test_canary_aliases_win_for_their_scope_and_rollbacks_step_back(data_dir: Path, bundles) -> None:
    import mlflow

    from zerodefect.inference.registry import UnknownModel, resolve_alias
    from zerodefect.quality.db import record_session
    from zerodefect.quality.promotions import add_promotion
    from zerodefect.training.registry import move_alias, rollback

    uri = "models:/fleet-model@champion"
    v1 = register(bundles["reject"], "fleet-model", "champion")
    v2 = register(bundles["pass"], "fleet-model", "challenger")
    v3 = register(bundles["pass"], "fleet-model", "challenger")
    # A canary for line L2, and one for a single station of line L1.
    move_alias("fleet-model", "champion-L2", v2)
    move_alias("fleet-model", "champion-st-09", v3)
    assert resolve_alias(uri, ("st-01", "L1")) == ("fleet-model", v1)
    assert resolve_alias(uri, ("st-05", "L2")) == ("fleet-model", v2)
    assert resolve_alias(uri, ("st-09", "L2")) == ("fleet-model", v3)  # the station's own wins
    with pytest.raises(UnknownModel, match="no alias 'nothing'"):
        resolve_alias("models:/fleet-model@nothing", ("st-01", "L1"))

    ended = rollback("fleet-model", canary="L2")
    assert (ended.alias, ended.from_version, ended.to_version) == ("champion-L2", v2, v1)
    assert resolve_alias(uri, ("st-05", "L2")) == ("fleet-model", v1)

    # Promotions move @champion step by step; rollbacks walk them back the same way.
    assert move_alias("fleet-model", "champion", v2) == v1
    assert move_alias("fleet-model", "champion", v3) == v2
    assert rollback("fleet-model").to_version == v2
    assert rollback("fleet-model").to_version == v1
    with pytest.raises(ValueError, match=f"v{v1} has no previous @champion"):
        rollback("fleet-model")

    # A version promoted before the registry kept `previous.champion`: the record knows.
    mlflow.MlflowClient().delete_model_version_tag("fleet-model", v2, "previous.champion")
    mlflow.MlflowClient().set_registered_model_alias("fleet-model", "champion", v2)
    with record_session(get_settings().record_database_url) as session:
        add_promotion(session, "fleet-model", v2, "champion", v1, "passed", None, "someone", [])
    assert rollback("fleet-model").to_version == v1
    assert mlflow.MlflowClient().get_model_version_by_alias("fleet-model", "champion").version == int(v1)
