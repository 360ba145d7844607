"""Ingest at plant rate: the record's batch endpoint, the forwarder's batches, and retention.

The record tests run on SQLite and on PostgreSQL (the `record_db` fixture), over real HTTP."""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from sqlalchemy import event, func, select

from zerodefect.edge.forwarder import Forwarder
from zerodefect.edge.outbox import Outbox
from zerodefect.quality.app import create_app
from zerodefect.quality.models import Inspection
from zerodefect.quality.store import add_station
from zerodefect.services import free_port
from zerodefect.settings import get_settings

from .servers import serve
from .test_record import part


@pytest.fixture
def record(record_db: str):
    """The record served on a loopback port, two stations' keys, and its transactions that
    inserted parts (one entry per commit: how many INSERT statements into inspections it ran)."""
    app = create_app(get_settings())
    with app.state.sessions() as session:
        _, key_a = add_station(session, "st-01", line="line-1")
        _, key_b = add_station(session, "st-02", line="line-1")
    commits: list[int] = []
    inserting: dict[int, int] = {}

    def executed(conn, _cursor, statement: str, *_args) -> None:
        # On PostgreSQL the rows go in by COPY on the driver's cursor (quality.store._insert),
        # after one query that numbers them: that query marks the inserting transaction.
        head = statement.lstrip().upper()
        if head.startswith("INSERT INTO INSPECTIONS") or "PG_GET_SERIAL_SEQUENCE('INSPECTIONS'" in head:
            inserting[id(conn)] = inserting.get(id(conn), 0) + 1

    def committed(conn) -> None:
        if id(conn) in inserting:
            commits.append(inserting.pop(id(conn)))

    event.listen(app.state.engine, "after_cursor_execute", executed)
    event.listen(app.state.engine, "commit", committed)
    with serve(app) as url:
        yield url, key_a, key_b, app, commits


def jpeg_of(gray: int) -> str:
    ok, data = cv2.imencode(".jpg", np.full((32, 32, 3), gray, np.uint8))
    assert ok
    return base64.b64encode(data.tobytes()).decode()


def jpeg() -> str:
    return jpeg_of(128)


def stored(app) -> int:
    with app.state.sessions() as session:
        return session.scalar(select(func.count()).select_from(Inspection))


def test_a_batch_is_one_transaction_with_one_outcome_per_item(record) -> None:
    url, key_a, key_b, app, commits = record
    items = [
        part("k-batch-0001", "S1"),
        part("k-batch-0002", "S2", "reject", image_b64=jpeg(), image_type="image/jpeg"),
        part("k-batch-0003", "S3", verdict="maybe"),  # not a verdict: refused alone
        part("k-batch-0004", "S4", image_b64="not base64!", image_type="image/jpeg"),
        "not a part",
        part("k-batch-0001", "S1"),  # the batch's own first item again: a replay of it
    ]
    before = len(commits)
    r = httpx.post(f"{url}/v1/inspections/batch", json={"items": items}, headers={"X-API-Key": key_a})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [o["status"] for o in body["items"]] == [201, 201, 422, 422, 422, 200]
    assert (body["created"], body["replayed"], body["refused"]) == (2, 1, 3)
    assert [o["key"] for o in body["items"]][:4] == [
        "k-batch-0001",
        "k-batch-0002",
        "k-batch-0003",
        "k-batch-0004",
    ]
    assert "verdict" in body["items"][2]["detail"] and "base64" in body["items"][3]["detail"]
    assert body["items"][5]["id"] == body["items"][0]["id"]
    assert len(commits) - before == 1  # the two new parts in one transaction
    assert stored(app) == 2

    # Delivered again (the forwarder lost the answer): the same rows, nothing new, no commit.
    before = len(commits)
    again = httpx.post(f"{url}/v1/inspections/batch", json={"items": items[:2]}, headers={"X-API-Key": key_a})
    assert [(o["status"], o["id"]) for o in again.json()["items"]] == [
        (200, body["items"][0]["id"]),
        (200, body["items"][1]["id"]),
    ]
    assert len(commits) == before and stored(app) == 2

    # A key reused for another part is a 409 for that item only; another station's same key is its own.
    r = httpx.post(
        f"{url}/v1/inspections/batch",
        json={"items": [part("k-batch-0001", "OTHER"), part("k-batch-0005", "S5")]},
        headers={"X-API-Key": key_a},
    )
    assert [o["status"] for o in r.json()["items"]] == [409, 201]
    r = httpx.post(
        f"{url}/v1/inspections/batch",
        json={"items": [part("k-batch-0001", "S1")]},
        headers={"X-API-Key": key_b},
    )
    assert [o["status"] for o in r.json()["items"]] == [201]
    assert stored(app) == 4


def test_a_batch_itself_must_be_well_formed_and_authorised(record) -> None:
    url, key_a, _, _, _ = record
    endpoint = f"{url}/v1/inspections/batch"
    assert httpx.post(endpoint, json={"items": [part("k-batch-0001", "S1")]}).status_code == 401
    assert httpx.post(endpoint, json={"items": []}, headers={"X-API-Key": key_a}).status_code == 422
    assert (
        httpx.post(endpoint, json=[part("k-batch-0001", "S1")], headers={"X-API-Key": key_a}).status_code
        == 422
    )
    too_many = {"items": [part(f"k-many-{i:05d}", "S") for i in range(1001)]}
    r = httpx.post(endpoint, json=too_many, headers={"X-API-Key": key_a})
    assert r.status_code == 422 and "1000" in r.text


def sent_batches(client: httpx.Client) -> list[int]:
    """The sizes of the batches `client` posts, read from its real requests."""
    sizes: list[int] = []

    def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/batch"):
            sizes.append(request.content.count(b'"key"'))

    client.event_hooks["request"].append(count)
    return sizes


def test_the_forwarder_ships_batches_and_parks_a_refused_part_alone(record, tmp_path: Path) -> None:
    url, key_a, _, app, _ = record
    outbox = Outbox(tmp_path / "outbox.db")
    for i in range(25):
        payload = part(f"k-fwd-{i:05d}", f"S{i}", minutes=i)
        if i == 7:  # the station sent an image the record cannot read
            payload.update(image_b64=base64.b64encode(b"not a jpeg").decode(), image_type="image/jpeg")
        outbox.put(payload["key"], payload, {})
    forwarder = Forwarder(outbox, url, key_a, batch_size=10, batch_wait_ms=0)
    with httpx.Client(timeout=10) as client:
        sizes = sent_batches(client)
        delivered = sum(iter(lambda: forwarder.flush_once(client), 0))
    assert sizes == [10, 10, 5] and delivered == 24
    assert outbox.counts() == {"total": 25, "delivered": 24, "dead": 1, "pending": 0}
    with sqlite3.connect(outbox.path) as db:
        key, reason = db.execute("SELECT key, dead FROM outbox WHERE dead IS NOT NULL").fetchone()
    assert key == "k-fwd-00007" and reason.startswith("422: image_b64")
    assert stored(app) == 24 and forwarder.record_up
    outbox.close()


def test_the_forwarder_waits_for_a_batch_to_fill_but_not_past_a_full_one(record, tmp_path: Path) -> None:
    """With a wait far longer than the test, three results make a full batch of three and go at
    once, in one request: the wait ends when the batch is full, not when it runs out."""
    url, key_a, _, app, commits = record
    outbox = Outbox(tmp_path / "outbox.db")
    forwarder = Forwarder(outbox, url, key_a, batch_size=3, batch_wait_ms=600_000)
    before = len(commits)
    forwarder.start()
    try:
        for i in range(3):
            payload = part(f"k-fill-{i:05d}", f"S{i}")
            outbox.put(payload["key"], payload, {})
        deadline = time.monotonic() + 20
        while outbox.counts()["delivered"] < 3 and time.monotonic() < deadline:
            outbox.wakeup.wait(0.05)
    finally:
        forwarder.stop()
    assert outbox.counts()["delivered"] == 3 and stored(app) == 3
    assert len(commits) - before == 1  # one request, one transaction
    outbox.close()


def test_the_forwarder_backs_off_a_whole_batch_while_the_record_is_down(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    for i in range(4):
        outbox.put(f"k-down-{i:05d}", part(f"k-down-{i:05d}", "S"), {})
    forwarder = Forwarder(outbox, f"http://127.0.0.1:{free_port()}", "key", batch_size=10)
    before = time.time()
    with httpx.Client(timeout=5) as client:
        assert forwarder.flush_once(client) == 0
    with sqlite3.connect(outbox.path) as db:
        rows = db.execute("SELECT attempts, next_try FROM outbox").fetchall()
    assert all(attempts == 1 and next_try >= before + 0.25 for attempts, next_try in rows)
    assert forwarder.record_up is False and outbox.counts()["pending"] == 4
    assert outbox.due() == []  # nothing due again before its back-off
    outbox.close()


def test_the_station_config_bounds_the_batch(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from zerodefect.edge.config import StationConfig

    config = StationConfig(station="st-01", model="bundle")
    assert (config.record_batch_size, config.record_batch_wait_ms) == (200, 50.0)
    with pytest.raises(ValidationError, match="record_batch_size"):
        StationConfig(station="st-01", model="bundle", record_batch_size=1001)


def test_concurrent_batches_with_one_key_store_it_once(record) -> None:
    """Two deliveries of the same batch at once (a forwarder retrying while its first request is
    still in flight): one row per key, every item answered 201 or 200 with the same id."""
    url, key_a, _, app, _ = record
    items = [part(f"k-race-{i:05d}", f"S{i}") for i in range(20)]
    answers: list[dict] = []

    def deliver() -> None:
        answers.append(
            httpx.post(
                f"{url}/v1/inspections/batch", json={"items": items}, headers={"X-API-Key": key_a}, timeout=30
            ).json()
        )

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 4 and stored(app) == 20
    for position in range(20):
        outcomes = {(a["items"][position]["status"], a["items"][position]["id"]) for a in answers}
        assert {status for status, _ in outcomes} <= {200, 201}
        assert len({row_id for _, row_id in outcomes}) == 1


def test_a_key_stored_by_another_delivery_mid_batch_is_judged_a_replay(record) -> None:
    """The race the batch's one-by-one fallback is for, made deterministic: between the batch
    looking its keys up and inserting them, another request commits one of them. The insert
    (COPY on PostgreSQL, INSERT on SQLite) fails on the unique key as a whole, and each item is
    then stored alone: the raced key is a replay (200, the winner's id), the others are new."""
    url, key_a, _, app, _ = record
    items = [part(f"k-mid-{i:05d}", f"S{i}") for i in range(5)]
    raced: list[dict] = []
    racing = threading.Lock()  # held from the first insert on: the racing request's own
    # insert passes through this hook too, and must not race again

    def race(conn, _cursor, statement: str, *_args) -> None:
        head = statement.lstrip().upper()
        marks = ("INSERT INTO INSPECTIONS", "PG_GET_SERIAL_SEQUENCE('INSPECTIONS'")
        if any(mark in head for mark in marks) and racing.acquire(blocking=False):
            raced.append(
                httpx.post(
                    f"{url}/v1/inspections", json=items[2], headers={"X-API-Key": key_a}, timeout=30
                ).json()
            )

    event.listen(app.state.engine, "before_cursor_execute", race)
    try:
        r = httpx.post(
            f"{url}/v1/inspections/batch", json={"items": items}, headers={"X-API-Key": key_a}, timeout=60
        )
    finally:
        event.remove(app.state.engine, "before_cursor_execute", race)
    assert r.status_code == 200, r.text
    outcomes = r.json()["items"]
    assert len(raced) == 1 and "id" in raced[0], raced
    assert [o["status"] for o in outcomes] == [201, 201, 200, 201, 201]
    assert outcomes[2]["id"] == raced[0]["id"]
    assert stored(app) == 5


def test_the_forwarder_posts_one_by_one_to_a_record_without_the_batch_endpoint(
    record_db: str, tmp_path: Path
) -> None:
    """A record from before batching (its app without POST /v1/inspections/batch, so it answers
    404 or 405 there): the forwarder says so in the log, falls back to one result per request,
    and delivers everything."""
    app = create_app(get_settings())
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/v1/inspections/batch"]
    with app.state.sessions() as session:
        _, key = add_station(session, "st-old", line="line-1")
    outbox = Outbox(tmp_path / "outbox.db")
    for i in range(6):
        payload = part(f"k-old-{i:05d}", f"S{i}")
        outbox.put(payload["key"], payload, {})
    with serve(app) as url:
        forwarder = Forwarder(outbox, url, key, batch_size=4, batch_wait_ms=0)
        with httpx.Client(timeout=10) as client:
            sizes = sent_batches(client)
            delivered = sum(iter(lambda: forwarder.flush_once(client), 0))
    assert sizes == [4] and forwarder.batch_size == 1  # one refused batch, then single posts
    assert delivered == 6 and outbox.counts()["delivered"] == 6 and stored(app) == 6
    outbox.close()


def test_prune_deletes_old_parts_in_short_transactions_and_keeps_shared_images(record) -> None:
    from typer.testing import CliRunner

    from zerodefect.cli import app as cli
    from zerodefect.quality.auth import create_user
    from zerodefect.quality.models import Defect, Review

    url, key_a, _, app, _ = record
    now = datetime.now(UTC)
    shared, own = jpeg(), jpeg_of(200)
    old = [
        part("k-old-00001", "O1", captured_at=(now - timedelta(days=100)).isoformat()),
        part(
            "k-old-00002",
            "O2",
            "reject",
            image_b64=own,
            image_type="image/jpeg",
            defects=[{"class_name": "crack", "score": 0.9}],
            captured_at=(now - timedelta(days=95)).isoformat(),
        ),
        part(
            "k-old-00003",
            "O3",
            "reject",
            image_b64=shared,
            image_type="image/jpeg",
            captured_at=(now - timedelta(days=91)).isoformat(),
        ),
    ]
    new = [
        part("k-new-00001", "N1", captured_at=(now - timedelta(days=89)).isoformat()),
        part(
            "k-new-00002",
            "N2",
            "reject",
            image_b64=shared,
            image_type="image/jpeg",
            captured_at=(now - timedelta(days=1)).isoformat(),
        ),
    ]
    r = httpx.post(f"{url}/v1/inspections/batch", json={"items": old + new}, headers={"X-API-Key": key_a})
    assert [o["status"] for o in r.json()["items"]] == [201] * 5
    ids = [o["id"] for o in r.json()["items"]]
    images = app.state.images
    with app.state.sessions() as session:
        user = create_user(session, "rita", "a long enough password", "reviewer")
        session.add(Review(inspection_id=ids[1], user_id=user.id, decision="confirmed", created_at=now))
        session.commit()
        own_sha, shared_sha = (session.get(Inspection, i).image_sha256 for i in ids[1:3])
    assert images.find(own_sha) and images.find(shared_sha)

    runner = CliRunner()
    dry = runner.invoke(cli, ["record", "prune", "--older-than", "90d", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would delete 3 parts" in dry.output and "2 of them with an image" in dry.output
    assert stored(app) == 5

    done = runner.invoke(cli, ["record", "prune", "--older-than", "90d", "--batch", "2"])
    assert done.exit_code == 0, done.output
    assert "deleted 3 parts" in done.output and "2 transactions" in done.output
    with app.state.sessions() as session:
        assert sorted(session.scalars(select(Inspection.serial))) == ["N1", "N2"]
        assert session.scalar(select(func.count()).select_from(Defect)) == 0
        assert session.scalar(select(func.count()).select_from(Review)) == 0
    assert images.find(own_sha) is None  # its part is gone and no other part names it
    assert images.find(shared_sha) is not None  # a part that stays still shows it

    bad = runner.invoke(cli, ["record", "prune", "--older-than", "90"])
    assert bad.exit_code != 0 and "90d" in bad.output
