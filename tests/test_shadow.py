"""Shadow mode: a challenger scores every part beside the serving model; its verdicts reach the
record apart and never the line, and the record compares the two on the same parts."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import select

from zerodefect.edge.app import create_app as create_edge
from zerodefect.quality.models import Inspection, ShadowVerdict
from zerodefect.settings import get_settings
from zerodefect.training.registry import shadow_rows

from .bundles import register
from .people import client_for
from .servers import record_for_station, serve
from .test_edge import png, post, station, wait_for

PARTS = 6


def test_the_challenger_is_recorded_apart_and_never_changes_the_line(
    data_dir: Path, tmp_path: Path, bundles, monkeypatch
) -> None:
    record_app = record_for_station(monkeypatch)
    with serve(record_app) as record_url:
        # The line's model rejects every part; the challenger would pass every part.
        config = station(tmp_path, str(bundles["reject"]), record_url=record_url, shadow=str(bundles["pass"]))
        with serve(create_edge(config)) as url:
            answers = [post(url, png(40 * i), serial=f"S-{i}", frame_id=f"f{i}").json() for i in range(PARTS)]
            serving = answers[0]["model_version"]
            shadow_version = httpx.get(f"{url}/readyz").json()["shadow"]["model_version"]
            assert shadow_version != serving
            assert {(a["verdict"], a["model_version"]) for a in answers} == {("reject", serving)}
            wait_for(
                lambda: _count(record_app, ShadowVerdict) == PARTS and _count(record_app, Inspection) == PARTS
            )
            metrics = httpx.get(f"{url}/metrics").text
            assert f'zd_shadow_verdicts_total{{agrees="false"}} {PARTS}.0' in metrics
            assert 'zd_verdicts_total{failsafe="false",verdict="reject"} 6.0' in metrics

        with record_app.state.sessions() as session:
            parts = session.scalars(select(Inspection).order_by(Inspection.id)).all()
            shadows = session.scalars(select(ShadowVerdict)).all()
            # The parts carry the line's verdict and model only; the challenger's are apart.
            assert {(p.verdict, p.model_version) for p in parts} == {("reject", serving)}
            assert {(s.verdict, s.model_version) for s in shadows} == {("pass", shadow_version)}
            assert {s.key for s in shadows} == {p.key for p in parts}
            ids = [p.id for p in parts]

        # Reviews say what the parts were: the first two good, the next two defective.
        reviewer = client_for(record_app, record_url, "reviewer")
        for row_id, decision in zip(
            ids, ("false_reject", "false_reject", "confirmed", "confirmed"), strict=False
        ):
            assert (
                reviewer.post(f"/v1/inspections/{row_id}/reviews", json={"decision": decision}).status_code
                == 201
            )
        report = reviewer.get("/v1/shadow-report", params={"model": "test-model", "version": shadow_version})
        assert report.status_code == 200, report.text
        assert report.json() | {"by_class": None} == {
            "model_name": "test-model",
            "challenger_version": shadow_version,
            "parts": PARTS,
            "disagreements": PARTS,
            "by_station": {"st-01": PARTS},
            "by_class": None,
            "reviewed": 4,
            "reviewed_defective": 2,
            "reviewed_good": 2,
            "serving_escapes": 0,
            "challenger_escapes": 2,  # it would have passed the two defective parts
            "serving_false_rejects": 2,
            "challenger_false_rejects": 0,
        }
        reviewer.close()
        # The promotion gate reads the same comparison: the challenger would let defects out.
        rows = {r.metric: r for r in shadow_rows("test-model", shadow_version, 0.005, get_settings())}
        escape, false_reject = rows["shadow_escape_rate"], rows["shadow_false_reject_rate"]
        assert (escape.challenger, escape.champion, escape.ok) == (1.0, 0.0, False)
        assert (false_reject.challenger, false_reject.champion, false_reject.ok) == (0.0, 1.0, True)

        # A resent batch is stored once; a bad item is refused with the reason.
        headers = {"X-API-Key": _station_key(monkeypatch)}
        item = {
            "key": shadows[0].key,
            "model_name": "test-model",
            "model_version": shadow_version,
            "verdict": "pass",
        }
        again = httpx.post(f"{record_url}/v1/shadow-verdicts", json={"items": [item]}, headers=headers)
        assert again.status_code == 200 and again.json() == {"received": 1, "stored": 0}
        bad = httpx.post(
            f"{record_url}/v1/shadow-verdicts", json={"items": [item | {"verdict": "maybe"}]}, headers=headers
        )
        assert bad.status_code == 422 and "verdict" in bad.text
        assert httpx.post(f"{record_url}/v1/shadow-verdicts", json={"items": [item]}).status_code == 401
    assert _count(record_app, ShadowVerdict) == PARTS


def _count(app, table) -> int:
    with app.state.sessions() as session:
        return len(session.scalars(select(table.id)).all())


def _station_key(monkeypatch) -> str:
    import os

    return os.environ["ZD_RECORD_API_KEY"]


def test_the_shadow_follows_its_alias_and_a_missing_one_never_stops_the_station(
    data_dir: Path, tmp_path: Path, bundles, monkeypatch
) -> None:
    record_app = record_for_station(monkeypatch)
    with serve(record_app) as record_url:
        # No @challenger yet: the station serves without a shadow, and says so.
        alone = station(
            tmp_path, str(bundles["reject"]), record_url=record_url, shadow="models:/shadowed@challenger"
        )
        with serve(create_edge(alone)) as url:
            assert post(url, png(), serial="A-1", frame_id="a1").json()["verdict"] == "reject"
            assert "shadow" not in httpx.get(f"{url}/readyz").json()

        first = register(bundles["pass"], "shadowed", "challenger")
        config = alone.model_copy(update={"model_poll_seconds": 0.1})
        with serve(create_edge(config)) as url:
            assert httpx.get(f"{url}/readyz").json()["shadow"]["model_version"] == first
            second = register(bundles["reject"], "shadowed", "challenger")
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["shadow"]["model_version"] == second)
            post(url, png(), serial="A-2", frame_id="a2")
            wait_for(lambda: _count(record_app, ShadowVerdict) == 1)
        with record_app.state.sessions() as session:
            versions = session.scalars(select(ShadowVerdict.model_version)).all()
    assert versions == [second]


def test_shadow_verdicts_waiting_for_the_record_outlive_a_station_restart(
    data_dir: Path, tmp_path: Path, bundles, monkeypatch
) -> None:
    """The record is away while the station scores parts and then stops: the challenger's
    verdicts wait in their file, and the restarted station delivers them once the record is up."""
    from zerodefect.services import free_port

    port = free_port()
    record_url = f"http://127.0.0.1:{port}"
    config = station(tmp_path, str(bundles["reject"]), record_url=record_url, shadow=str(bundles["pass"]))
    with serve(create_edge(config)) as url:
        for i in range(PARTS):
            assert post(url, png(40 * i), serial=f"S-{i}", frame_id=f"f{i}").status_code == 200
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["shadow"]["pending"] == PARTS)
    record_app = record_for_station(monkeypatch)
    with serve(record_app, port=port), serve(create_edge(config)):
        wait_for(
            lambda: _count(record_app, ShadowVerdict) == PARTS and _count(record_app, Inspection) == PARTS
        )
    with record_app.state.sessions() as session:
        parts = {p.key for p in session.scalars(select(Inspection))}
        shadows = session.scalars(select(ShadowVerdict)).all()
    assert {s.key for s in shadows} == parts and {s.verdict for s in shadows} == {"pass"}
