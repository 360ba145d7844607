"""An anomaly part's heatmap from the station to the reviewer and back into training data.

The station sends a flagged part's heatmap with its image; the record checks and stores it
beside the image and draws it under the boxes; the review app shows it with a toggle and takes
the true region drawn by the reviewer, in the image's own pixels; `datasets from-reviews`
turns false rejects into good parts and drawn regions into masks.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from playwright.sync_api import expect
from typer.testing import CliRunner

from zerodefect.cli import app as cli
from zerodefect.datasets.manifest import Manifest
from zerodefect.datasets.validate import validate
from zerodefect.edge.app import create_app as create_edge
from zerodefect.edge.outbox import Outbox
from zerodefect.inference.heatmap import decode_heatmap, encode_heatmap
from zerodefect.quality.app import create_app
from zerodefect.quality.models import Inspection, Review
from zerodefect.quality.store import add_station
from zerodefect.settings import get_settings

from .bundles import ANOMALY_SIZE, train_tiny_anomaly
from .people import client_for
from .servers import record_for_station, serve
from .test_browser import CSP_VIOLATIONS, browser, open_as, save  # noqa: F401 (browser: a fixture)
from .test_edge import post, station, wait_for

# A part whose image is wider than high, shown 200 x 200 in the review app.
WIDTH, HEIGHT = 320, 160


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def part_image(shade: int = 0) -> np.ndarray:
    """A grey gradient part (BGR), so a blended colour is visible anywhere on it; each shade
    is another part's image."""
    ramp = np.tile(np.linspace(60 + shade, 180 + shade, WIDTH).astype(np.uint8), (HEIGHT, 1))
    return cv2.merge([ramp, ramp, ramp])


def hot_square() -> np.ndarray:
    """A 64 x 64 display-scale heatmap: 0 everywhere but a square at 0.9 in its top-left
    quarter (x and y 8..24), the part's flagged region."""
    heat = np.zeros((64, 64), np.float32)
    heat[8:24, 8:24] = 0.9
    return heat


def anomaly_part(key: str, verdict: str = "reject", heatmap: bytes | None = None, shade: int = 0) -> dict:
    body = {
        "key": key,
        "serial": f"SN-{key}",
        "captured_at": datetime(2026, 11, 25, 8, 0, tzinfo=UTC).isoformat(),
        "model_name": "tiny-anomaly",
        "model_version": "1",
        "threshold": 2.5,
        "score": 3.1 if verdict == "reject" else 1.2,
        "verdict": verdict,
        "image_b64": base64.b64encode(png(part_image(shade))).decode(),
        "image_type": "image/png",
        # The hot square's region in the image's pixels (x times 5, y times 2.5).
        "defects": [{"class_name": "scratch", "score": 0.9, "box": [40, 20, 120, 60]}]
        if verdict == "reject"
        else [],
    }
    if heatmap is not None:
        body["heatmap_b64"] = base64.b64encode(heatmap).decode()
    return body


@pytest.fixture
def record(data_dir: Path):
    app = create_app(get_settings())
    app.state.andon.stop()
    with app.state.sessions() as session:
        _, key = add_station(session, "st-01", line="L1")
    with serve(app) as url:
        yield url, {"X-API-Key": key}, app


def decode_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_the_record_stores_a_checked_heatmap_beside_the_image_and_draws_it(record) -> None:
    url, station_key, app = record
    heat_png = encode_heatmap(hot_square())
    answer = httpx.post(
        f"{url}/v1/inspections", json=anomaly_part("k-heat-0001", heatmap=heat_png), headers=station_key
    )
    assert answer.status_code == 201, answer.text
    row = answer.json()
    assert row["heatmap_url"] == f"/v1/images/{row['heatmap_sha256']}" and row["overlay_url"]
    reader = client_for(app, url)
    # Stored content-addressed, byte for byte, and on the inspection row.
    stored = reader.get(row["heatmap_url"])
    assert stored.status_code == 200 and stored.content == heat_png
    assert np.array_equal(decode_heatmap(stored.content), np.round(hot_square() * 255) / 255)
    assert app.state.images.find(row["heatmap_sha256"]).read_bytes() == heat_png
    with app.state.sessions() as session:
        assert session.get(Inspection, row["id"]).heatmap_sha256 == row["heatmap_sha256"]
    # A retry of the same part is the same row; the same key with another heatmap is refused.
    again = httpx.post(
        f"{url}/v1/inspections", json=anomaly_part("k-heat-0001", heatmap=heat_png), headers=station_key
    )
    assert again.status_code == 200 and again.json()["id"] == row["id"]
    other = anomaly_part("k-heat-0001", heatmap=encode_heatmap(hot_square() / 2))
    assert httpx.post(f"{url}/v1/inspections", json=other, headers=station_key).status_code == 409

    # The overlay: the heatmap resized to the image and blended where it is hot, under the box.
    with_heat = decode_png(reader.get(row["overlay_url"]).content)
    boxes_only = decode_png(reader.get(row["overlay_url"], params={"heatmap": "0"}).content)
    assert with_heat.shape == boxes_only.shape == (HEIGHT, WIDTH, 3)
    changed = np.abs(with_heat.astype(int) - boxes_only.astype(int)).sum(axis=2) > 0
    assert changed[25:55, 45:115].all()  # inside the hot square (away from the box's edges)
    assert not changed[80:, :].any() and not changed[:, 140:].any()  # cold: the part as it is
    assert np.array_equal(boxes_only, decode_png(boxes_only_overlay(reader, url, station_key)))
    reader.close()


def boxes_only_overlay(reader: httpx.Client, url: str, station_key: dict) -> bytes:
    """The overlay of the same part recorded without a heatmap (as before heatmaps existed)."""
    plain = httpx.post(f"{url}/v1/inspections", json=anomaly_part("k-plain-0001"), headers=station_key)
    assert plain.status_code == 201 and plain.json()["heatmap_url"] is None
    overlay = reader.get(plain.json()["overlay_url"])
    assert overlay.content == reader.get(plain.json()["overlay_url"], params={"heatmap": "1"}).content
    return overlay.content


@pytest.mark.parametrize(
    ("heatmap_b64", "reason"),
    [
        ("not base64!", "heatmap_b64 is not valid base64"),
        (
            base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode(),
            "heatmap_b64: corrupt image/png header",
        ),
        (
            base64.b64encode(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1]).decode(),
            "heatmap_b64: content is",
        ),
        (base64.b64encode(png(np.zeros((8, 8, 3), np.uint8))).decode(), "8-bit grayscale PNG, not mode RGB"),
        (base64.b64encode(png(np.zeros((8, 8), np.uint16))).decode(), "8-bit grayscale PNG, not mode I;16"),
        (base64.b64encode(png(np.zeros((1500, 1500), np.uint8))).decode(), "over the 2000000-pixel limit"),
    ],
)
def test_a_bad_heatmap_is_refused_with_its_reason(record, heatmap_b64: str, reason: str) -> None:
    url, station_key, app = record
    body = anomaly_part("k-bad-0001") | {"heatmap_b64": heatmap_b64}
    answer = httpx.post(f"{url}/v1/inspections", json=body, headers=station_key)
    assert 400 <= answer.status_code < 500 and reason in answer.json()["detail"], answer.text
    with app.state.sessions() as session:
        assert session.query(Inspection).count() == 0


def test_a_heatmap_without_its_image_is_refused(record) -> None:
    url, station_key, _ = record
    body = anomaly_part("k-alone-0001", heatmap=encode_heatmap(hot_square()))
    del body["image_b64"], body["image_type"]
    answer = httpx.post(f"{url}/v1/inspections", json=body, headers=station_key)
    assert answer.status_code == 422 and "heatmap_b64 needs the image" in answer.text


@pytest.fixture
def site(record):
    url, station_key, app = record
    flagged = httpx.post(
        f"{url}/v1/inspections",
        json=anomaly_part("k-site-0001", heatmap=encode_heatmap(hot_square())),
        headers=station_key,
    )
    assert flagged.status_code == 201
    CSP_VIOLATIONS.clear()
    client_for(app, url, "reviewer", "rita").close()
    yield url, app, flagged.json()["id"]
    assert CSP_VIOLATIONS == []


def test_the_review_app_toggles_the_heatmap_and_stores_a_drawn_region_in_image_pixels(browser, site) -> None:  # noqa: F811
    url, app, inspection_id = site
    page = open_as(browser, url, "rita")
    part = page.locator(f'li.part[data-id="{inspection_id}"]')
    img, toggle = part.locator(".shot img"), part.locator("input.heat-toggle")
    expect(img).to_have_attribute("src", f"/v1/inspections/{inspection_id}/overlay.png")
    expect(img).to_have_js_property("naturalWidth", WIDTH)
    with_heat = img.screenshot()
    save(page, "anomaly-heatmap-on")
    toggle.click()
    expect(img).to_have_attribute("src", re.compile(r"overlay\.png\?heatmap=0$"))
    expect(img).to_have_js_property("complete", True)
    expect(img).to_have_js_property("naturalWidth", WIDTH)
    without = img.screenshot()
    save(page, "anomaly-heatmap-off")
    assert not toggle.is_checked() and without != with_heat
    page.keyboard.press("h")  # the key does what the checkbox does
    expect(img).to_have_attribute("src", f"/v1/inspections/{inspection_id}/overlay.png")
    assert toggle.is_checked()

    # The true region, drawn on the 200 x 200 display of a 320 x 160 image.
    shot = part.locator(".shot").bounding_box()
    assert (round(shot["width"]), round(shot["height"])) == (200, 200)
    page.mouse.move(shot["x"] + 20, shot["y"] + 40)
    page.mouse.down()
    page.mouse.move(shot["x"] + 120, shot["y"] + 140, steps=4)
    page.mouse.up()
    expect(page.locator("#status")).to_contain_text("1 box(es) drawn")
    page.keyboard.press("b")
    expect(part).to_have_class(re.compile(r"\bdone\b"))
    page.close()
    with app.state.sessions() as session:
        review = session.query(Review).one()
        assert review.decision == "confirmed" and review.label == "scratch"
        # x times 320/200, y times 160/200: in the image's own pixels (within the half CSS
        # pixel the browser rounds a mouse position to: 0.8 image px across, 0.4 down).
        (box,) = [b.box for b in review.boxes]
        assert box[0::2] == pytest.approx([32, 192], abs=0.8) and box[1::2] == pytest.approx(
            [32, 112], abs=0.4
        )


def test_reviews_of_anomaly_parts_become_good_parts_and_masks(record, tmp_path: Path) -> None:
    url, station_key, app = record
    heat = encode_heatmap(hot_square())
    ids = {}
    parts = [("false", "reject"), ("drawn", "reject"), ("plain", "reject"), ("audit", "pass")]
    for shade, (name, verdict) in enumerate(parts):
        body = anomaly_part(f"k-{name}-0001", verdict, heat if verdict == "reject" else None, shade)
        answer = httpx.post(f"{url}/v1/inspections", json=body, headers=station_key)
        assert answer.status_code == 201, answer.text
        ids[name] = answer.json()["id"]
    reviewer = client_for(app, url, "reviewer")
    region = {"class_name": "scratch", "score": 1, "box": [32, 32.4, 192, 111.5]}
    for name, review in [
        ("false", {"decision": "false_reject"}),
        ("drawn", {"decision": "confirmed", "label": "scratch", "boxes": [region]}),
        ("plain", {"decision": "confirmed"}),
        ("audit", {"decision": "good"}),
    ]:
        assert reviewer.post(f"/v1/inspections/{ids[name]}/reviews", json=review).status_code == 201
    reviewer.close()

    out = tmp_path / "export" / "reviews.jsonl"
    result = CliRunner().invoke(cli, ["datasets", "from-reviews", "--out", str(out), "--task", "anomaly"])
    assert result.exit_code == 0, result.output
    assert "1 defective parts without a drawn region" in result.output
    manifest = Manifest.read(out)
    assert (
        manifest.task == "anomaly"
        and manifest.classes == ["good", "scratch"]
        and manifest.good_class == "good"
    )
    rows = {s.meta["inspection_id"]: s for s in manifest.samples}
    assert rows[ids["false"]].labels == rows[ids["audit"]].labels == ["good"]
    assert rows[ids["false"]].mask is None and rows[ids["audit"]].mask is None
    assert rows[ids["plain"]].labels == ["scratch"] and rows[ids["plain"]].mask is None
    drawn = rows[ids["drawn"]]
    assert drawn.labels == ["scratch"] and Path(drawn.mask).parent == tmp_path / "export" / "reviews-masks"
    # The drawn box filled, in the image's own size: every pixel it touches, nothing else.
    mask = cv2.imread(drawn.mask, cv2.IMREAD_UNCHANGED)
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[32:112, 32:192] = 255
    assert np.array_equal(mask, expected)
    # The manifest validates (masks of their image's size, binary), with the CLI too.
    assert validate(manifest).images == 4
    checked = CliRunner().invoke(cli, ["datasets", "validate", str(out)])
    assert checked.exit_code == 0, checked.output


@pytest.fixture(scope="module")
def trained(module_store: Path, tmp_path_factory: pytest.TempPathFactory):
    return train_tiny_anomaly(tmp_path_factory.mktemp("anomaly"))


def test_a_served_anomaly_bundle_sends_a_flagged_part_with_its_heatmap(
    trained, module_store: Path, data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    _, outcome = trained
    manifest = Manifest.read(outcome.run_dir / "manifest.jsonl")
    sample = next(s for s in manifest.split("test") if s.mask)
    data = manifest.resolve(sample).read_bytes()
    truth = cv2.imread(str(manifest.resolve_mask(sample)), cv2.IMREAD_GRAYSCALE) > 0
    bundle, trusted = str(outcome.bundle_dir), [str(module_store / "keys" / "bundle-signing.pub")]
    # The record is down: the station judges the part and keeps it, heatmap and all, in its outbox.
    with serve(create_edge(station(tmp_path, bundle, trusted_keys=trusted))) as url:
        answer = post(url, data, serial="SN-H1", frame_id="h1")
        assert answer.status_code == 200 and answer.json()["verdict"] == "reject", answer.text
    outbox = Outbox(tmp_path / "outbox.db")
    ((_, buffered, _),) = outbox.due()
    outbox.close()
    assert decode_heatmap(base64.b64decode(buffered["heatmap_b64"])).shape == (ANOMALY_SIZE, ANOMALY_SIZE)
    # The record is back: the station delivers what it kept.
    record_app = record_for_station(monkeypatch)
    with serve(record_app) as record_url:
        config = station(tmp_path, bundle, record_url=record_url, trusted_keys=trusted)
        with serve(create_edge(config)) as url:
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["outbox"]["pending"] == 0)
        reader = client_for(record_app, record_url)
        row = reader.get("/v1/inspections", params={"serial": "SN-H1"}).json()["items"][0]
        assert [d["box"] for d in row["defects"]] == [d["box"] for d in answer.json()["defects"]]
        assert row["defects"] and row["heatmap_url"] and row["overlay_url"]
        # The heatmap at the model's input size, over the threshold (128) on the planted scratch.
        stored = reader.get(row["heatmap_url"]).content
        assert stored == base64.b64decode(buffered["heatmap_b64"])
        heat = decode_heatmap(stored)
        assert heat.shape == (ANOMALY_SIZE, ANOMALY_SIZE) and heat.max() >= 0.5
        near = cv2.dilate(truth.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0  # 4 px around it
        assert heat[truth].min() >= 0.5  # the whole scratch is over the threshold...
        assert heat[truth].mean() > 2 * heat[~near].mean()  # ...and far hotter than the rest
        with_heat = reader.get(row["overlay_url"]).content
        without = reader.get(row["overlay_url"], params={"heatmap": "false"}).content
        assert decode_png(with_heat).shape == decode_png(without).shape == (*truth.shape, 3)
        assert with_heat != without
        reader.close()
