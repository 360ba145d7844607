"""Crafted and careless input over real HTTP: image bombs and broken images, impossible capture
times and control characters, bodies streamed past their limit. Each gets a 4xx with a reason,
never a 500, never a big allocation, and never a part stuck in the outbox."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from zerodefect.edge.app import create_app as create_edge
from zerodefect.edge.outbox import Outbox
from zerodefect.quality.app import create_app as create_record
from zerodefect.quality.store import add_station
from zerodefect.settings import get_settings

from .bundles import REJECT_ALL, make_bundle
from .corpus import corpus, png_bomb
from .people import client_for
from .servers import serve
from .test_edge import KEY, png, post, station, wait_for
from .test_record import part

MB = 1024 * 1024


def rss_mb() -> float:
    """This process's resident memory now (the servers under test run in it). The tests' malloc
    keeps what it frees (settings.tune_malloc), so a big allocation shows here afterwards."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "reject", REJECT_ALL)


@pytest.fixture
def record(data_dir: Path):
    app = create_record(get_settings())
    with app.state.sessions() as session:
        _, key = add_station(session, "st-01")
    with serve(app) as url:
        yield url, key, app


def test_the_station_refuses_every_malformed_image_with_a_4xx(tmp_path: Path, data_dir: Path, bundle) -> None:
    config = station(tmp_path, str(bundle), max_request_bytes=2 * MB, max_pixels=4_000_000)
    cases = corpus()
    with serve(create_edge(config)) as url:
        before = rss_mb()
        for i, case in enumerate(cases):
            answer = post(url, case.data, case.declared, frame_id=f"c{i}")
            assert answer.status_code == case.status, (case.name, answer.text)
            if case.status != 200:
                assert case.reason in answer.json()["detail"], (case.name, answer.text)
        grown = rss_mb() - before
        assert post(url, png(), frame_id="after").status_code == 200
        outbox = httpx.get(f"{url}/readyz").json()["outbox"]
    # Each bomb decoded would cost 1.2 GB or more; refusing them all costs next to nothing.
    assert grown < 150, f"the bombs cost {grown:.0f} MB"
    assert outbox["total"] == sum(c.status == 200 for c in cases) + 1


def test_the_record_checks_the_images_it_stores_and_draws(record, data_dir: Path) -> None:
    url, key, app = record
    headers = {"X-API-Key": key}
    before = rss_mb()
    for i, case in enumerate(corpus()):
        body = part(f"k-image-{i:04d}", f"IMG-{i}", "reject", image_type=case.declared or None)
        body["image_b64"] = base64.b64encode(case.data).decode()
        answer = httpx.post(f"{url}/v1/inspections", json=body, headers=headers, timeout=30)
        expected = {200: 201, 413: 413}.get(case.status, 422)
        assert answer.status_code == expected, (case.name, answer.text)
        if expected != 201 and case.declared in ("image/jpeg", "image/png"):
            assert case.reason in answer.json()["detail"], (case.name, answer.text)
    assert rss_mb() - before < 150
    # A part stored by an older version whose image is random bytes, then a bomb: its overlay
    # is a 422 that names the inspection, never a 500 showing a server path.
    body = part("k-overlay-01", "OV-1", "reject", image_type="image/png")
    body |= {
        "image_b64": base64.b64encode(png()).decode(),
        "defects": [{"class_name": "crack", "score": 0.9, "box": [2, 2, 20, 20]}],
    }
    stored = httpx.post(f"{url}/v1/inspections", json=body, headers=headers).json()
    reader = client_for(app, url)
    assert reader.get(stored["overlay_url"]).status_code == 200
    path = app.state.images.find(stored["image_sha256"])
    for garbage, reason in (
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "corrupt"),
        (png_bomb(), "20000x20000"),
    ):
        path.write_bytes(garbage)
        overlay = reader.get(stored["overlay_url"])
        assert overlay.status_code == 422, overlay.text
        detail = overlay.json()["detail"]
        assert f"inspection {stored['id']}" in detail and reason in detail
        assert str(data_dir) not in detail and path.name not in detail
    reader.close()


def test_capture_times_and_text_are_checked_at_the_station_and_the_record(
    tmp_path: Path, record, bundle
) -> None:
    url, key, _ = record
    now = datetime.now(UTC)
    refused = {
        "year 0001 at +14:00": {"captured_at": "0001-01-01T00:00:00+14:00"},
        "year 9999": {"captured_at": "9999-12-31T23:59:59+00:00"},
        "two days ahead": {"captured_at": (now + timedelta(days=2)).isoformat()},
        "NUL in the serial": {"serial": "SN\x00-1"},
        "escape in the batch": {"batch": "B\x1b[31m"},
        "C1 control in the camera": {"camera": "cam\x85"},
    }
    config = station(tmp_path, str(bundle))
    with serve(create_edge(config)) as edge:
        for name, fields in refused.items():
            answer = post(edge, png(), frame_id=name, **fields)
            assert answer.status_code == 422, (name, answer.text)
            assert "detail" in answer.json(), name
        assert "from the station clock" in post(edge, png(), captured_at="9999-12-31T23:59:59+00:00").text
        ok = post(
            edge, png(), frame_id="ok", captured_at=(now - timedelta(hours=3)).isoformat(), serial="SN-é"
        )
        assert ok.status_code == 200, ok.text
        assert httpx.get(f"{edge}/readyz").json()["outbox"]["total"] == 1

    headers = {"X-API-Key": key, "content-type": "application/json"}
    record_refused = {
        "year 0001 at +14:00": {"captured_at": "0001-01-01T00:00:00+14:00"},
        "year 9999": {"captured_at": "9999-12-31T23:59:59+00:00"},
        "before 2000": {"captured_at": "1999-12-31T23:59:59+00:00"},
        "two days ahead": {"captured_at": (now + timedelta(days=2)).isoformat()},
        "NUL in the serial": {"serial": "SN\x00-1"},
        "lone surrogate in the frame id": {"frame_id": "f\ud800"},
        "escape in a defect class": {"defects": [{"class_name": "crack\x1b", "score": 0.5}]},
    }
    for i, (name, fields) in enumerate(record_refused.items()):
        # json.dumps escapes a lone surrogate as \ud800, as a careless client's encoder would.
        raw = json.dumps(part(f"k-refused-{i}", "S") | fields).encode()
        answer = httpx.post(f"{url}/v1/inspections", content=raw, headers=headers)
        assert answer.status_code == 422, (name, answer.text)
    # A part that waited out a long outage in an outbox is still welcome.
    late = part("k-late-0001", "S", captured_at=(now - timedelta(days=30)).isoformat())
    assert httpx.post(f"{url}/v1/inspections", json=late, headers={"X-API-Key": key}).status_code == 201
    # A query over an impossible time is a 422, not an overflow.
    viewer = client_for(record[2], url)
    assert viewer.get("/v1/inspections", params={"since": "0001-01-01T00:00:00+14:00"}).status_code == 422
    viewer.close()


def test_a_part_the_record_refuses_goes_dead_at_once_with_an_alert(
    tmp_path: Path, record, bundle, monkeypatch, caplog
) -> None:
    """Parts accepted by an older station (before it checked times and text) sit in its
    outbox; the record refuses them with a 422, and they must not be retried for ever."""
    url, key, _ = record
    monkeypatch.setenv("ZD_RECORD_API_KEY", key)
    config = station(tmp_path, str(bundle), record_url=url)
    outbox = Outbox(config.outbox)
    stuck = {
        "k-stuck-0001": part("k-stuck-0001", "S1", captured_at="0001-01-01T00:00:00+14:00"),
        "k-stuck-0002": part("k-stuck-0002", "S\x002"),
    }
    for key_, payload in [*stuck.items(), ("k-fine-00001", part("k-fine-00001", "S3"))]:
        outbox.put(key_, payload, {"key": key_})
    outbox.close()
    caplog.set_level(logging.ERROR, logger="zerodefect.edge.forwarder")
    with serve(create_edge(config)) as edge:
        wait_for(lambda: httpx.get(f"{edge}/readyz").json()["outbox"]["pending"] == 0, timeout=20)
        ready = httpx.get(f"{edge}/readyz").json()
        metrics = httpx.get(f"{edge}/metrics").text
    assert ready["outbox"] == {"total": 3, "delivered": 1, "dead": 2, "pending": 0}
    assert ready["record_reachable"] is True
    assert "zd_outbox_dead 2.0" in metrics and 'zd_record_refusals_total{status="422"} 2.0' in metrics
    with sqlite3.connect(config.outbox) as db:
        rows = db.execute("SELECT key, attempts, dead FROM outbox WHERE dead IS NOT NULL").fetchall()
    assert {k for k, _, _ in rows} == set(stuck) and all(attempts == 1 for _, attempts, _ in rows)
    assert all(reason.startswith("422") for _, _, reason in rows)
    alerts = [r for r in caplog.records if r.levelno == logging.ERROR and "ALERT" in r.getMessage()]
    assert {k for k in stuck if any(k in r.getMessage() for r in alerts)} == set(stuck)


def stream(
    sent: list[int], head: bytes = b"", total: int = 200 * MB, chunk: int = 64 * 1024
) -> Iterator[bytes]:
    """A chunked body of `total` bytes, made as it is sent; `sent` counts what the server took."""
    yield head
    while sent[0] < total:
        sent[0] += chunk
        yield b"0" * chunk


def test_bodies_are_limited_as_they_stream(tmp_path: Path, record, bundle) -> None:
    url, _, _ = record
    config = station(tmp_path, str(bundle), max_request_bytes=1 * MB)
    form = (
        b'--zd\r\nContent-Disposition: form-data; name="serial"\r\n\r\nSN-1\r\n'
        b'--zd\r\nContent-Disposition: form-data; name="station"\r\n\r\nst-01\r\n'
        b'--zd\r\nContent-Disposition: form-data; name="image"; filename="p.png"\r\n'
        b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n"
    )
    with serve(create_edge(config)) as edge:
        before = rss_mb()
        cases = [
            (f"{url}/v1/login", {"content-type": "application/json"}, b"", 413, "65536-byte limit"),
            (
                f"{edge}/v1/inspect",
                {"content-type": "multipart/form-data; boundary=zd", "X-API-Key": KEY},
                form,
                413,
                f"{MB + 64 * 1024}-byte limit",
            ),
            # An endpoint that never reads its body answers, and the rest is never drained.
            (f"{url}/v1/logout", {"content-type": "application/json"}, b"", 401, "login"),
        ]
        for target, headers, head, status, reason in cases:
            sent = [0]
            answer = httpx.post(target, content=stream(sent, head), headers=headers, timeout=60)
            assert answer.status_code == status and reason in answer.text, (target, answer.text)
            assert answer.headers["connection"] == "close"
            # The server stopped reading: the client got only socket buffers' worth out.
            assert sent[0] < 32 * MB, (target, sent[0])
        declared = httpx.post(
            f"{url}/v1/login", content=b"{}" * 40_000, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413 and "65536-byte limit" in declared.json()["detail"]
        assert rss_mb() - before < 100
        # Keep-alive and ordinary bodies are untouched.
        with httpx.Client(base_url=url) as client:
            for _ in range(2):
                answer = client.post("/v1/login", json={"username": "nobody", "password": "x" * 8})
                assert answer.status_code == 401 and "connection" not in answer.headers
        assert post(edge, png()).status_code == 200
