"""The station service over real HTTP: verdicts, the record, bad input, deadlines, hot swap."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from zerodefect.edge.app import create_app as create_edge
from zerodefect.edge.config import StationConfig
from zerodefect.inference.imagestats import image_stats
from zerodefect.inference.preprocess import decode_image
from zerodefect.quality.models import Inspection

from .bundles import REJECT_ALL, TRUSTED_KEY, register
from .corpus import png_bomb
from .people import client_for
from .servers import record_for_station, serve

KEY = "zd_test_camera_key"
ADMIN_KEY = "zd_test_station_admin_key"


def key_hash(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def png(value: int = 120, size: int = 80) -> bytes:
    image = np.full((size, size, 3), value, np.uint8)
    cv2.circle(image, (size // 2, size // 2), size // 4, (20, 20, 20), -1)
    return cv2.imencode(".png", image)[1].tobytes()


def jpeg(value: int = 120, size: int = 80) -> bytes:
    return cv2.imencode(".jpg", np.full((size, size, 3), value, np.uint8))[1].tobytes()


def post(url: str, data: bytes, kind: str = "image/png", key: str | None = KEY, **fields) -> httpx.Response:
    form = {"serial": "SN-1", "station": "st-01", "frame_id": None, **fields}
    form = {k: v for k, v in form.items() if v is not None}
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(
        f"{url}/v1/inspect", files={"image": ("part", data, kind)}, data=form, headers=headers, timeout=30
    )


def station(tmp_path: Path, model: str, **changes) -> StationConfig:
    base = {
        "station": "st-01",
        "model": model,
        "api_key_hashes": [key_hash(KEY)],
        "admin_key_hashes": [key_hash(ADMIN_KEY)],
        "trusted_keys": [TRUSTED_KEY],
        "outbox": tmp_path / "outbox.db",
    }
    return StationConfig(**(base | changes))


def wait_for(condition, timeout: float = 30.0) -> None:
    """Wait for a background condition (delivery by the forwarder), failing after `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_parts_are_judged_and_reach_the_record(data_dir: Path, tmp_path: Path, bundles, monkeypatch) -> None:
    record_app = record_for_station(monkeypatch)
    with serve(record_app) as record_url:
        config = station(tmp_path, str(bundles["reject"]), record_url=record_url, pass_sample_rate=0.0)
        with serve(create_edge(config)) as url:
            images = [png(v) for v in (60, 90, 120, 150, 180)] + [jpeg(200)]
            kinds = ["image/png"] * 5 + ["image/jpeg"]
            with ThreadPoolExecutor(4) as pool:
                answers = list(
                    pool.map(
                        lambda i: post(
                            url,
                            images[i],
                            kinds[i],
                            serial=f"SN-{i}",
                            frame_id=f"f{i}",
                            camera="c1",
                            batch="B1",
                        ),
                        range(len(images)),
                    )
                )
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            body = answers[0].json()
            assert body["verdict"] == "reject" and body["threshold"] == REJECT_ALL and not body["failsafe"]
            assert body["model_name"] == "test-model" and body["model_version"].startswith("sha-")
            # A camera retrying a frame gets the same answer, and the record stores it once.
            again = post(url, images[0], serial="SN-0", frame_id="f0", camera="c1", batch="B1").json()
            assert again["key"] == body["key"] and again["latency_ms"] == body["latency_ms"]
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["outbox"]["pending"] == 0)
            ready = httpx.get(f"{url}/readyz").json()
            assert ready["outbox"] == {"total": 6, "delivered": 6, "dead": 0, "pending": 0}
            assert ready["record_reachable"] is True
            metrics = httpx.get(f"{url}/metrics").text
            assert 'zd_verdicts_total{failsafe="false",verdict="reject"} 7.0' in metrics
            assert (
                'zd_model_info{name="test-model"' in metrics
                and "zd_inspection_latency_seconds_bucket" in metrics
            )
        reader = client_for(record_app, record_url)
        page = reader.get("/v1/inspections", params={"limit": 100}).json()
        assert page["total"] == 6
        row = next(r for r in page["items"] if r["serial"] == "SN-3")
        assert (
            row["station"] == "st-01"
            and row["line"] == "L1"
            and row["batch"] == "B1"
            and row["camera"] == "c1"
        )
        assert row["verdict"] == "reject" and row["model_version"] == body["model_version"]
        assert row["defects"][0]["class_name"] == "crack"
        stored = reader.get(row["image_url"])
        assert stored.status_code == 200 and stored.content == images[3]
        # The station measured the image for the record's drift alerts (quality.drift).
        with record_app.state.sessions() as session:
            part = session.get(Inspection, row["id"])
            expected = image_stats(decode_image(images[3]))
            assert (part.image_brightness, part.image_contrast, part.image_sharpness) == (
                expected.brightness,
                expected.contrast,
                expected.sharpness,
            )
            assert 100 < part.image_brightness < 150 and part.image_sharpness > 0


def test_bad_input_gets_a_4xx_and_the_service_keeps_serving(tmp_path: Path, data_dir: Path, bundles) -> None:
    config = station(tmp_path, str(bundles["pass"]), max_request_bytes=200_000, max_pixels=4_000_000)
    with serve(create_edge(config)) as url:
        cases = {
            "zero bytes": (post(url, b""), 400, "empty image"),
            "corrupt jpeg": (post(url, jpeg()[:40] + b"\x00" * 200, "image/jpeg"), 400, "corrupt"),
            "wrong declared type": (post(url, jpeg(), "image/png"), 415, "declared image/png"),
            "not an image type": (post(url, b"hello", "text/plain"), 415, "unsupported content type"),
            "garbage with image type": (post(url, b"GIF89a....", "image/png"), 415, "content is image/gif"),
            "decompression bomb": (post(url, png_bomb()), 413, "20000x20000"),
            "too many bytes": (post(url, b"\x89PNG\r\n\x1a\n" + b"\x00" * 300_000), 413, "over"),
            "missing serial": (post(url, png(), serial=None), 422, "serial"),
            "unknown station": (post(url, png(), station="st-99"), 422, "unknown station 'st-99'"),
            "no API key": (post(url, png(), key=None), 401, "missing API key"),
            "wrong API key": (post(url, png(), key="zd_nope"), 403, "unknown API key"),
        }
        for name, (response, status, reason) in cases.items():
            assert response.status_code == status, (name, response.text)
            assert reason in response.text, (name, response.text)
        assert post(url, png()).status_code == 200
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{url}/readyz").json()["outbox"]["total"] == 1
        assert httpx.post(f"{url}/v1/model/reload").status_code == 401
        assert "/v1/inspect" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_a_part_the_record_would_refuse_fails_its_request_before_the_outbox(
    tmp_path: Path, data_dir: Path, bundles
) -> None:
    """The station validates each payload against the wire contract (inference/wire.py) before
    its outbox: a mismatch is this request's error, never a part parked dead by the forwarder."""
    import shutil

    from zerodefect.inference.bundle import update_meta

    from .bundles import SIGNING_KEY

    # A 300-year skew window lets through a capture time the record refuses: the client's fault.
    config = station(tmp_path, str(bundles["pass"]), max_clock_skew_seconds=1e10)
    with serve(create_edge(config)) as url:
        refused = post(url, png(), captured_at="1999-12-31T23:00:00+00:00")
        assert refused.status_code == 422, refused.text
        assert "captured_at" in refused.text and "is before 2000-01-01" in refused.text
        assert httpx.get(f"{url}/readyz").json()["outbox"]["total"] == 0
        assert post(url, png()).status_code == 200
    # A model whose name the record cannot store: the station's fault, a 500 that says so.
    long_name = shutil.copytree(bundles["pass"], tmp_path / "long-name")
    update_meta(long_name, SIGNING_KEY, name="m" * 201)
    config = station(tmp_path / "b", str(long_name))
    with serve(create_edge(config)) as url:
        refused = post(url, png())
        assert refused.status_code == 500 and "model_name" in refused.json()["detail"], refused.text
        assert httpx.get(f"{url}/readyz").json()["outbox"]["total"] == 0


def test_a_part_over_budget_gets_the_failsafe_verdict(tmp_path: Path, data_dir: Path, bundles) -> None:
    config = station(tmp_path, str(bundles["pass"]), budget_ms=0.001)
    with serve(create_edge(config)) as url:
        body = post(url, png(), frame_id="late").json()
        assert body["verdict"] == "reject" and body["failsafe"] is True and body["score"] is None
        assert 'zd_verdicts_total{failsafe="true",verdict="reject"} 1.0' in httpx.get(f"{url}/metrics").text
    from zerodefect.edge.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox.db")
    ((key, payload, _),) = outbox.due()
    assert payload["failsafe"] is True and payload["verdict"] == "reject" and "image_b64" in payload


def test_hot_swap_by_alias_drops_no_request(tmp_path: Path, data_dir: Path, bundles) -> None:
    v1 = register(bundles["reject"], "line-model", "champion")
    config = station(tmp_path, "models:/line-model@champion", max_batch=4)
    with serve(create_edge(config)) as url:

        def shoot(i: int) -> httpx.Response:
            return post(url, png(i % 200), frame_id=f"hs-{i}", serial=f"HS-{i}")

        with ThreadPoolExecutor(6) as pool:
            first = list(pool.map(shoot, range(12)))
            v2 = register(bundles["pass"], "line-model", "champion")
            reload = pool.submit(
                lambda: httpx.post(f"{url}/v1/model/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=60)
            )
            during = list(pool.map(shoot, range(12, 40)))
            assert reload.result().json() == {"previous_version": v1, "version": v2}
            after = list(pool.map(shoot, range(40, 46)))
    answers = [r.json() for r in first + during + after]
    assert all(r.status_code == 200 for r in first + during + after)
    # Every answer names the version that judged it, and that version's behaviour matches.
    for a in answers:
        assert (a["model_version"], a["verdict"]) in {(v1, "reject"), (v2, "pass")}, a
    assert {a["model_version"] for a in answers[:12]} == {v1}
    assert {a["model_version"] for a in answers[40:]} == {v2}


def test_pull_mode_judges_every_frame_of_a_folder(tmp_path: Path, data_dir: Path, bundles) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(7):
        (frames / f"{i:03d}.png").write_bytes(png(40 + 20 * i))
    config = station(tmp_path, str(bundles["reject"]))
    with serve(create_edge(config, source=str(frames), serial_prefix="PULL")) as url:
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["outbox"]["total"] == 7)
    from zerodefect.edge.outbox import Outbox

    serials = sorted(p["serial"] for _, p, _ in Outbox(tmp_path / "outbox.db").due(100))
    assert serials == [f"PULL-{i:06d}" for i in range(7)]


def test_the_registry_module_lists_and_resolves_versions(data_dir: Path, bundles) -> None:
    """inference/registry.py: the one lookup of the registry (station, training and CLI)."""
    from zerodefect.inference.registry import UnknownModel, alias_version, list_versions, resolve_alias

    v1 = register(bundles["reject"], "listed", "champion")
    v2 = register(bundles["pass"], "listed", "challenger")
    versions = list_versions("listed")
    assert [(v.version, v.aliases) for v in versions] == [(v1, ["champion"]), (v2, ["challenger"])]
    assert all(v.run_id and v.tags["signing_key_id"] for v in versions)
    assert resolve_alias("models:/listed@challenger") == ("listed", v2)
    assert resolve_alias("models:/listed/1") is None and resolve_alias("/a/bundle") is None
    assert str(alias_version("listed", "champion").version) == v1 and alias_version("listed", "nope") is None
    with pytest.raises(UnknownModel, match="no registered model 'nothing'"):
        list_versions("nothing")
    # `zerodefect models list` prints the same listing.
    from typer.testing import CliRunner

    from zerodefect.cli import app as cli

    listed = CliRunner().invoke(cli, ["models", "list", "listed"])
    assert listed.exit_code == 0, listed.output
    assert all(v.version in listed.output for v in versions) and "challenger" in listed.output
    unknown = CliRunner().invoke(cli, ["models", "list", "nothing"])
    assert unknown.exit_code == 2 and "no registered model 'nothing'" in unknown.output
