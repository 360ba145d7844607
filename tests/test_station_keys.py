"""Idempotency keys belong to the station that posted them (issue 10, defect 2).

Station B must never get station A's record back by posting A's key, nor block A's later
reject by posting A's key first; a key reused for another part is a 409, never a success.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from zerodefect.edge.outbox import Outbox
from zerodefect.edge.station import PartMeta, idempotency_key
from zerodefect.quality.app import create_app
from zerodefect.quality.db import make_engine, migrate
from zerodefect.quality.store import add_station
from zerodefect.settings import get_settings

from .people import client_for
from .servers import serve
from .test_record import part


@pytest.fixture
def record(record_db: str):
    """The record on SQLite and on PostgreSQL (a unique violation ends a PostgreSQL transaction)."""
    app = create_app(get_settings())
    with app.state.sessions() as session:
        _, key_a = add_station(session, "st-01")
        _, key_b = add_station(session, "st-02")
    with serve(app) as url:
        yield url, key_a, key_b, app


def test_another_stations_key_neither_reads_nor_blocks_a_record(record) -> None:
    url, key_a, key_b, app = record
    a, b = {"X-API-Key": key_a}, {"X-API-Key": key_b}
    reject = part("k-frame-0001", "S1", "reject", defects=[{"class_name": "crack", "score": 0.9}])
    first = httpx.post(f"{url}/v1/inspections", json=reject, headers=a)
    assert first.status_code == 201
    # B posting A's key gets its own new row, never A's record.
    stolen = httpx.post(f"{url}/v1/inspections", json=part("k-frame-0001", "S1"), headers=b)
    assert stolen.status_code == 201 and stolen.json()["station"] == "st-02"
    assert stolen.json()["id"] != first.json()["id"] and stolen.json()["verdict"] == "pass"
    # B posting first with a fake pass does not make A's later reject a silent duplicate.
    fake = httpx.post(f"{url}/v1/inspections", json=part("k-frame-0002", "S2"), headers=b)
    assert fake.status_code == 201
    real = part("k-frame-0002", "S2", "reject", defects=[{"class_name": "crack", "score": 0.9}])
    late = httpx.post(f"{url}/v1/inspections", json=real, headers=a)
    assert (
        late.status_code == 201 and late.json()["station"] == "st-01" and late.json()["verdict"] == "reject"
    )
    # A's own retry is an idempotent replay of the same row.
    again = httpx.post(f"{url}/v1/inspections", json=real, headers=a)
    assert again.status_code == 200 and again.json()["id"] == late.json()["id"]
    # The same key with another part from the same station is refused with a reason.
    for changed in (
        part("k-frame-0002", "S2"),  # a pass instead of the reject
        {**real, "serial": "S3"},
        {**real, "defects": [{"class_name": "crack", "score": 0.8}]},
    ):
        conflict = httpx.post(f"{url}/v1/inspections", json=changed, headers=a)
        assert conflict.status_code == 409 and "k-frame-0002" in conflict.json()["detail"], conflict.text
    reader = client_for(app, url, "viewer")
    rejects = reader.get("/v1/inspections", params={"station": "st-01"}).json()["items"]
    reader.close()
    assert sorted((r["key"], r["verdict"]) for r in rejects) == [
        ("k-frame-0001", "reject"),
        ("k-frame-0002", "reject"),
    ]


def test_concurrent_deliveries_of_one_key_store_one_row(record) -> None:
    """A station's retries can race (a timeout, then the outbox's next try): one 201, the rest
    the same row as 200s. On PostgreSQL the losers wait on the unique index, then replay."""
    url, key_a, _, app = record
    body = part("k-race-0001", "RACE", "reject", defects=[{"class_name": "crack", "score": 0.9}])
    start = threading.Barrier(8)

    def deliver(_: int) -> httpx.Response:
        start.wait(timeout=30)
        return httpx.post(f"{url}/v1/inspections", json=body, headers={"X-API-Key": key_a}, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(deliver, range(8)))
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    reader = client_for(app, url, "viewer")
    assert reader.get("/v1/inspections", params={"serial": "RACE"}).json()["total"] == 1
    reader.close()


def test_the_migration_scopes_existing_keys_to_their_station(empty_db: str, monkeypatch) -> None:
    """On both backends: SQLite's unnamed unique constraint and PostgreSQL's inspections_key_key."""
    url = empty_db
    monkeypatch.setenv("ZD_RECORD_URL", url)
    get_settings.cache_clear()
    migrate(url, "0004")
    engine = make_engine(url)
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO stations (name, api_key_hash, created_at)"
                " VALUES ('st-01', 'h1', '2026-11-24 07:00:00.000000')"
            )
        )
        db.execute(
            text(
                "INSERT INTO inspections (key, station_id, serial, captured_at, received_at, model_name,"
                " model_version, threshold, verdict, failsafe) SELECT 'k-old-0001', id, 'OLD',"
                " '2026-11-24 08:00:00.000000', '2026-11-24 08:00:01.000000', 'm', '1', 0.5, 'reject',"
                " false FROM stations WHERE name = 'st-01'"
            )
        )
    engine.dispose()
    migrate(url)
    app = create_app(get_settings())
    with app.state.sessions() as session:
        _, key_b = add_station(session, "st-02")
    with serve(app) as base:
        taken = httpx.post(
            f"{base}/v1/inspections", json=part("k-old-0001", "NEW"), headers={"X-API-Key": key_b}
        )
        assert taken.status_code == 201 and taken.json()["station"] == "st-02"
        reader = client_for(app, base, "viewer")
        old = reader.get("/v1/inspections", params={"station": "st-01"}).json()["items"]
        reader.close()
    assert [(r["key"], r["serial"], r["verdict"]) for r in old] == [("k-old-0001", "OLD", "reject")]


def test_the_edge_key_of_a_frame_is_secret_to_its_outbox(tmp_path: Path) -> None:
    meta = PartMeta(serial="SN-1", station="st-01", camera="cam0", frame_id="f-17")
    first, other = Outbox(tmp_path / "a" / "outbox.db"), Outbox(tmp_path / "b" / "outbox.db")
    key = idempotency_key(meta, first.secret)
    first.close()
    reopened = Outbox(tmp_path / "a" / "outbox.db")
    # Stable for the station across restarts (a camera's retry maps to the same key)...
    assert idempotency_key(meta, reopened.secret) == key
    # ...but not computable from the frame's fields without the station's secret.
    assert idempotency_key(meta, other.secret) != key
    import hashlib

    public = f"{meta.station}|{meta.camera}|{meta.frame_id}|{meta.serial}"
    assert key != hashlib.sha256(public.encode()).hexdigest()[:40]
    reopened.close()
    other.close()
