"""The quality record service over real HTTP: keys, idempotency, images, filters, bad input.

Every test here runs twice: on SQLite and on PostgreSQL (the `record_db` fixture)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from zerodefect.quality.app import create_app
from zerodefect.quality.store import RecordError, add_station, rotate_station_key
from zerodefect.settings import get_settings

from .people import client_for
from .servers import serve


@pytest.fixture
def record(record_db: str):
    app = create_app(get_settings())
    with app.state.sessions() as session:
        _, key_a = add_station(session, "st-01", line="line-1")
        _, key_b = add_station(session, "st-02", line="line-1")
    with serve(app) as url:
        yield url, key_a, key_b, app


@pytest.fixture
def reader(record):
    url, _, _, app = record
    client = client_for(app, url, "viewer")
    yield client
    client.close()


def part(key: str, serial: str, verdict: str = "pass", minutes: int = 0, **extra) -> dict:
    body = {
        "key": key,
        "serial": serial,
        "batch": "B7",
        "camera": "cam0",
        "frame_id": "f1",
        "captured_at": (datetime(2026, 11, 24, 8, 0, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat(),
        "model_name": "elpv",
        "model_version": "3",
        "threshold": 0.31,
        "score": 0.9 if verdict == "reject" else 0.1,
        "verdict": verdict,
        "latency_ms": 6.5,
    }
    body.update(extra)
    return body


def test_keys_are_required_and_station_comes_from_the_key(record) -> None:
    url, key_a, key_b, _ = record
    assert httpx.post(f"{url}/v1/inspections", json=part("k-00000001", "S1")).status_code == 401
    r = httpx.post(f"{url}/v1/inspections", json=part("k-00000001", "S1"), headers={"X-API-Key": "zd_wrong"})
    assert r.status_code == 403 and r.json()["detail"] == "unknown API key"
    r = httpx.post(f"{url}/v1/inspections", json=part("k-00000001", "S1"), headers={"X-API-Key": key_b})
    assert r.status_code == 201 and r.json()["station"] == "st-02" and r.json()["line"] == "line-1"


def test_a_rotated_key_replaces_the_old_one(record) -> None:
    url, key_a, _, app = record
    with app.state.sessions() as session:
        new_key = rotate_station_key(session, "st-01")
    r = httpx.post(f"{url}/v1/inspections", json=part("k-rotated-1", "R1"), headers={"X-API-Key": key_a})
    assert r.status_code == 403
    r = httpx.post(f"{url}/v1/inspections", json=part("k-rotated-1", "R1"), headers={"X-API-Key": new_key})
    assert r.status_code == 201 and r.json()["station"] == "st-01"
    with app.state.sessions() as session, pytest.raises(RecordError, match="unknown station 'st-09'"):
        rotate_station_key(session, "st-09")


def test_idempotent_posts_images_and_filters(record, reader) -> None:
    url, key_a, key_b, app = record
    image = np.full((32, 48, 3), 90, np.uint8)
    png = cv2.imencode(".png", image)[1].tobytes()
    sha = hashlib.sha256(png).hexdigest()
    flagged = part(
        "k-reject-01",
        "S2",
        "reject",
        minutes=5,
        image_b64=base64.b64encode(png).decode(),
        image_type="image/png",
        image_sha256=sha,
        defects=[{"class_name": "crack", "score": 0.9, "box": [1, 2, 30, 20]}],
    )
    first = httpx.post(f"{url}/v1/inspections", json=flagged, headers={"X-API-Key": key_a})
    again = httpx.post(f"{url}/v1/inspections", json=flagged, headers={"X-API-Key": key_a})
    assert first.status_code == 201 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert first.json()["defects"] == [{"class_name": "crack", "score": 0.9, "box": [1.0, 2.0, 30.0, 20.0]}]
    stored = reader.get(first.json()["image_url"])
    assert stored.status_code == 200 and hashlib.sha256(stored.content).hexdigest() == sha
    for i in range(4):
        httpx.post(
            f"{url}/v1/inspections",
            json=part(f"k-pass-{i:04d}", f"P{i}", minutes=i),
            headers={"X-API-Key": key_b},
        )
    page = reader.get("/v1/inspections", params={"limit": 2}).json()
    assert page["total"] == 5 and [p["serial"] for p in page["items"]] == ["S2", "P3"]
    page2 = reader.get("/v1/inspections", params={"limit": 2, "offset": 2}).json()
    assert [p["serial"] for p in page2["items"]] == ["P2", "P1"]
    assert reader.get("/v1/inspections", params={"verdict": "reject"}).json()["total"] == 1
    assert reader.get("/v1/inspections", params={"station": "st-02"}).json()["total"] == 4
    httpx.post(
        f"{url}/v1/inspections", json=part("k-other-batch", "Q1", batch="B8"), headers={"X-API-Key": key_b}
    )
    assert reader.get("/v1/inspections", params={"batch": "B8"}).json()["total"] == 1
    assert reader.get("/v1/inspections", params={"batch": "B7"}).json()["total"] == 5
    assert reader.get("/v1/inspections", params={"serial": "P1"}).json()["items"][0]["station"] == "st-02"
    window = {"since": "2026-11-24T08:01:00+00:00", "until": "2026-11-24T08:03:00+00:00"}
    assert [p["serial"] for p in reader.get("/v1/inspections", params=window).json()["items"]] == [
        "P2",
        "P1",
    ]


def test_bad_input_is_a_4xx_with_a_reason(record, reader) -> None:
    url, key_a, _, _ = record
    headers = {"X-API-Key": key_a}
    cases = [
        part("short", "S"),  # key too short
        part("k-00000002", "S", verdict="maybe"),
        part("k-00000003", "S", captured_at="2026-11-24T08:00:00"),  # no time zone
        part("k-00000004", "S", image_b64="***", image_type="image/png"),
        part("k-00000005", "S", image_b64=base64.b64encode(b"x").decode()),  # no type
        part(
            "k-00000006",
            "S",
            image_b64=base64.b64encode(b"x").decode(),
            image_type="image/png",
            image_sha256="0" * 64,
        ),
        part("k-00000007", "S", defects=[{"class_name": "crack", "score": 0.5, "box": [5, 5, 1, 1]}]),
        part("k-00000008", "S", latency_ms=float("inf")),  # would break every later read
    ]
    for body in cases:
        # json.dumps writes Infinity as JSON's common extension does; the record must refuse it.
        raw = json.dumps(body).encode()
        r = httpx.post(
            f"{url}/v1/inspections", content=raw, headers={**headers, "content-type": "application/json"}
        )
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"]
    r = httpx.post(
        f"{url}/v1/inspections", content=b"{not json", headers={**headers, "content-type": "application/json"}
    )
    assert r.status_code == 422
    assert reader.get("/v1/inspections", params={"limit": 0}).status_code == 422
    assert reader.get("/v1/inspections/999").status_code == 404
    assert reader.get("/v1/images/../../etc/passwd").status_code == 404
    assert reader.get("/v1/inspections").json()["total"] == 0
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}


def test_roles_sessions_and_review_history(record) -> None:
    url, key_a, _, app = record
    for i, verdict in enumerate(["reject", "pass"]):
        body = part(f"k-review-{i}", f"R{i}", verdict=verdict)
        body["defects"] = [{"class_name": "crack", "score": 0.9}] if verdict == "reject" else []
        assert httpx.post(f"{url}/v1/inspections", json=body, headers={"X-API-Key": key_a}).status_code == 201
    # Nobody reads or reviews without logging in; a wrong password is a 401 with no hint.
    assert httpx.get(f"{url}/v1/inspections").status_code == 401
    wrong = httpx.post(f"{url}/v1/login", json={"username": "nobody", "password": "x" * 8})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong username or password"
    viewer = client_for(app, url, "viewer")
    reviewer = client_for(app, url, "reviewer")
    admin = client_for(app, url, "admin")
    rejected, passed = sorted(viewer.get("/v1/inspections").json()["items"], key=lambda r: r["serial"])
    verdict = {"decision": "confirmed", "label": "finger"}
    refused = viewer.post(f"/v1/inspections/{rejected['id']}/reviews", json=verdict)
    assert refused.status_code == 403 and "reviewer role" in refused.json()["detail"]
    # A forged request from another page has the cookie but not the session's CSRF token.
    forged = httpx.post(
        f"{url}/v1/inspections/{rejected['id']}/reviews", json=verdict, cookies=reviewer.cookies
    )
    assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    first = reviewer.post(f"/v1/inspections/{rejected['id']}/reviews", json=verdict)
    assert first.status_code == 201 and first.json()["label"] == "finger"
    second = reviewer.post(f"/v1/inspections/{rejected['id']}/reviews", json={"decision": "false_reject"})
    assert second.status_code == 201
    # The newest review is the part's; the first one stays in its history.
    row = viewer.get(f"/v1/inspections/{rejected['id']}").json()
    assert row["review_status"] == "false_reject"
    history = viewer.get(f"/v1/inspections/{rejected['id']}/reviews").json()
    assert [(h["decision"], h["label"], h["reviewer"]) for h in history] == [
        ("confirmed", "finger", "reviewer-1"),
        ("false_reject", None, "reviewer-1"),
    ]
    # Decisions must fit the verdict: a passed part is good or an escape with its class.
    assert (
        reviewer.post(f"/v1/inspections/{passed['id']}/reviews", json={"decision": "confirmed"}).status_code
        == 422
    )
    assert (
        reviewer.post(f"/v1/inspections/{passed['id']}/reviews", json={"decision": "escape"}).status_code
        == 422
    )
    escape = reviewer.post(
        f"/v1/inspections/{passed['id']}/reviews", json={"decision": "escape", "label": "crack"}
    )
    assert escape.status_code == 201
    # Boxes that fit the API's limits (200, class names of 100) but not the stored column: a
    # 4xx with the reason on both backends (PostgreSQL enforces a VARCHAR's length; it was a 500).
    box = {"class_name": "c" * 100, "score": 1, "box": [1.125, 2.125, 30.125, 20.125]}
    oversized = {"decision": "confirmed", "boxes": [box] * 200}
    refused = reviewer.post(f"/v1/inspections/{rejected['id']}/reviews", json=oversized)
    assert refused.status_code == 422 and "fewer boxes" in refused.json()["detail"], refused.text
    assert len(viewer.get(f"/v1/inspections/{rejected['id']}/reviews").json()) == 2
    # Only an admin adds people; a logged-out session is dead.
    new_user = {"username": "qa-2", "password": "long enough pw", "role": "reviewer"}
    assert reviewer.post("/v1/users", json=new_user).status_code == 403
    assert admin.post("/v1/users", json=new_user).status_code == 201
    assert admin.post("/v1/users", json=new_user).status_code == 409
    token = viewer.cookies.get("zd_session")
    assert viewer.post("/v1/logout").status_code == 204
    assert httpx.get(f"{url}/v1/inspections", cookies={"zd_session": token}).status_code == 401
    for client in (viewer, reviewer, admin):
        client.close()


def test_users_cli_creates_the_first_admin(record_db: str, monkeypatch) -> None:
    from typer.testing import CliRunner

    from zerodefect.cli import app as cli

    monkeypatch.setenv("ZD_ADMIN_PASSWORD", "first admin pw")
    ok = CliRunner().invoke(
        cli, ["users", "create", "boss", "--role", "admin", "--password-env", "ZD_ADMIN_PASSWORD"]
    )
    assert ok.exit_code == 0 and "role admin" in ok.output
    again = CliRunner().invoke(
        cli, ["users", "create", "boss", "--role", "admin", "--password-env", "ZD_ADMIN_PASSWORD"]
    )
    assert again.exit_code == 2 and "exists" in again.output
    bad = CliRunner().invoke(
        cli, ["users", "create", "x", "--role", "owner", "--password-env", "ZD_ADMIN_PASSWORD"]
    )
    assert bad.exit_code == 2 and "unknown role 'owner'" in bad.output
    # Stations from the command line follow the API's rules: a name PostgreSQL cannot store (it
    # crashed there) or with a space is a message, not a traceback.
    for name, problem in (("s" * 101, "at most 100 characters"), ("line 1", "should match pattern")):
        refused = CliRunner().invoke(cli, ["record", "add-station", name])
        assert refused.exit_code == 2 and problem in refused.output, refused.output
    added = CliRunner().invoke(cli, ["record", "add-station", "st-07", "--line", "line-2"])
    assert added.exit_code == 0 and "station st-07 created" in added.output
    record = create_app(get_settings())
    with serve(record) as url:
        answer = httpx.post(f"{url}/v1/login", json={"username": "boss", "password": "first admin pw"})
        assert answer.status_code == 200 and answer.json()["role"] == "admin"


def test_reviews_become_a_training_manifest(record, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from zerodefect.cli import app as cli
    from zerodefect.datasets.manifest import Manifest

    url, key_a, _, app = record

    def post_part(i: int, verdict: str, defects: list) -> int:
        png = cv2.imencode(".png", np.full((32, 48, 3), 40 + i, np.uint8))[1].tobytes()
        body = part(
            f"k-loop-{i:04d}",
            f"L{i}",
            verdict,
            image_b64=base64.b64encode(png).decode(),
            image_type="image/png",
            defects=defects,
        )
        answer = httpx.post(f"{url}/v1/inspections", json=body, headers={"X-API-Key": key_a})
        return answer.json()["id"]

    crack = [{"class_name": "crack", "score": 0.9, "box": [1, 2, 30, 20]}]
    false_reject, relabelled, escape, unreviewed = (
        post_part(0, "reject", crack),
        post_part(1, "reject", crack),
        post_part(2, "pass", []),
        post_part(3, "reject", crack),
    )
    reviewer = client_for(app, url, "reviewer")
    reviewer.post(f"/v1/inspections/{false_reject}/reviews", json={"decision": "false_reject"})
    reviewer.post(f"/v1/inspections/{relabelled}/reviews", json={"decision": "confirmed", "label": "finger"})
    redrawn = {
        "decision": "escape",
        "label": "crack",
        "boxes": [{"class_name": "crack", "score": 1, "box": [3, 3, 9, 9]}],
    }
    reviewer.post(f"/v1/inspections/{escape}/reviews", json=redrawn)
    reviewer.close()

    out = tmp_path / "reviews.jsonl"
    result = CliRunner().invoke(cli, ["datasets", "from-reviews", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = Manifest.read(out)
    rows = {s.meta["inspection_id"]: s for s in manifest.samples}
    assert set(rows) == {false_reject, relabelled, escape}  # the unreviewed part is not data yet
    assert unreviewed not in rows
    assert rows[false_reject].labels == ["good"] and rows[relabelled].labels == ["finger"]
    assert rows[escape].labels == ["crack"] and manifest.classes == ["good", "crack", "finger"]
    assert all(Path(s.path).is_file() and s.split == "train" for s in manifest.samples)

    boxes_out = tmp_path / "reviews-boxes.jsonl"
    result = CliRunner().invoke(
        cli, ["datasets", "from-reviews", "--out", str(boxes_out), "--task", "detection"]
    )
    assert result.exit_code == 0, result.output
    detections = Manifest.read(boxes_out)
    boxed = {s.meta["inspection_id"]: s for s in detections.samples}
    assert len(boxed[false_reject].boxes) == 0 and boxed[false_reject].labels == []
    assert boxed[escape].boxes.to_manifest(detections.classes) == [
        {"label": "crack", "box": [3.0, 3.0, 9.0, 9.0]}
    ]
    # A relabelled confirmation keeps the model's box under the reviewer's class.
    assert boxed[relabelled].boxes.to_manifest(detections.classes) == [
        {"label": "finger", "box": [1.0, 2.0, 30.0, 20.0]}
    ]


def test_admins_manage_stations_and_keys(record) -> None:
    url, _, _, app = record
    admin, reviewer = client_for(app, url, "admin"), client_for(app, url, "reviewer")
    assert reviewer.post("/v1/stations", json={"name": "st-09"}).status_code == 403
    created = admin.post("/v1/stations", json={"name": "st-09", "line": "line-2"})
    assert created.status_code == 201 and created.json()["api_key"].startswith("zd_")
    assert admin.post("/v1/stations", json={"name": "st-09"}).status_code == 409
    key = created.json()["api_key"]
    body = part("k-admin-0001", "A1")
    assert httpx.post(f"{url}/v1/inspections", json=body, headers={"X-API-Key": key}).status_code == 201
    new_key = admin.post("/v1/stations/st-09/rotate-key").json()["api_key"]
    body = part("k-admin-0002", "A2")
    assert httpx.post(f"{url}/v1/inspections", json=body, headers={"X-API-Key": key}).status_code == 403
    assert httpx.post(f"{url}/v1/inspections", json=body, headers={"X-API-Key": new_key}).status_code == 201
    assert admin.post("/v1/stations/nope/rotate-key").status_code == 404
    stations = {s["name"]: s for s in reviewer.get("/v1/stations").json()}
    assert stations["st-09"]["line"] == "line-2" and stations["st-09"]["last_seen_at"] is not None
    admin.close()
    reviewer.close()


def test_a_promotion_reason_fits_the_record_or_is_refused_first(record_db: str) -> None:
    from zerodefect.quality.db import record_session
    from zerodefect.quality.models import PROMOTION_REASON_MAX
    from zerodefect.quality.promotions import add_promotion, to_out
    from zerodefect.training.registry import promote

    longest = "r" * PROMOTION_REASON_MAX
    with record_session() as session:
        row = add_promotion(session, "elpv", "4", "champion", "3", "FORCED", longest, "qa", [])
        assert to_out(row).reason == longest
        # Longer: PostgreSQL refused the insert (SQLite kept it), and the audit copy of a FORCED
        # promotion was lost after the alias had moved. Now one named limit on both...
        with pytest.raises(ValueError, match=f"at most {PROMOTION_REASON_MAX} characters"):
            add_promotion(session, "elpv", "5", "champion", "4", "FORCED", longest + "r", "qa", [])
    # ...and the registry refuses it before it looks up or moves anything.
    with pytest.raises(ValueError, match="--reason takes at most"):
        promote("no-such-model", force=True, reason=longest + "r")
