"""The part's id read from its frame: generated DataMatrix/QR/1-D codes, read in the region of
interest, and the station's outcome for a frame whose code cannot be read."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import zxingcpp
from pydantic import ValidationError

from zerodefect.edge.app import create_app as create_edge
from zerodefect.edge.codes import CodeReader, CodesConfig
from zerodefect.edge.config import StationConfig

from .servers import serve
from .test_edge import post, station

H, W = 1024, 1280
# The code sits in the lower-right part of the frame, as on a fixtured part.
ROI = {"x": 0.5, "y": 0.5, "width": 0.45, "height": 0.45}


def code_image(text: str, fmt: zxingcpp.BarcodeFormat, module_px: int, angle: float) -> np.ndarray:
    """A code written by zxing-cpp, `module_px` pixels per module, rotated by `angle` degrees."""
    code = np.asarray(zxingcpp.create_barcode(text, fmt).to_image(scale=module_px, add_quiet_zones=True))
    h, w = code.shape
    cos, sin = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
    out_w, out_h = int(np.ceil(w * cos + h * sin)), int(np.ceil(w * sin + h * cos))
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    turn[:, 2] += ((out_w - w) / 2, (out_h - h) / 2)
    return cv2.warpAffine(code, turn, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=255)


def frame(rng: np.random.Generator, code: np.ndarray | None, at: tuple[int, int] | None = None) -> np.ndarray:
    """A textured 1280x1024 RGB frame (blurred noise, like a cast or machined surface) with the
    code pasted at `at`, or at a random place inside ROI."""
    texture = cv2.GaussianBlur(rng.integers(40, 200, (H, W), dtype=np.uint8), (0, 0), 3)
    image = cv2.cvtColor(texture, cv2.COLOR_GRAY2RGB)
    if code is not None:
        side_y, side_x = code.shape
        if at is None:
            x0, y0 = int(ROI["x"] * W), int(ROI["y"] * H)
            room_x, room_y = int(ROI["width"] * W) - side_x, int(ROI["height"] * H) - side_y
            assert room_x > 0 and room_y > 0, "the code must fit in the region of interest"
            at = (x0 + int(rng.integers(0, room_x)), y0 + int(rng.integers(0, room_y)))
        x, y = at
        image[y : y + side_y, x : x + side_x] = code[..., None]
    return image


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def test_codes_are_read_in_the_region_of_interest() -> None:
    """200 frames, DataMatrix and QR, 3 to 6 pixels a module, short and long texts (symbol
    sizes from 12x12 to 26x26 modules), turned by any angle: at least 99 % are read, each with
    its own text, and the time per frame is reported."""
    rng = np.random.default_rng(13)
    reader = CodeReader(CodesConfig(formats=["DataMatrix", "QRCode"], roi=ROI))
    formats = [zxingcpp.BarcodeFormat.DataMatrix, zxingcpp.BarcodeFormat.QRCode]
    read, misses, seconds = 0, [], 0.0
    for i in range(200):
        fmt = formats[i % 2]
        text = f"SN-{i:06d}" if i % 3 else f"LOT-2611-L1/SN-{i:06d}"
        module_px = 3 + (i // 2) % 4
        angle = float(rng.uniform(0, 360))
        image = frame(rng, code_image(text, fmt, module_px, angle))
        start = time.perf_counter()
        got = reader.read(image)
        seconds += time.perf_counter() - start
        if got.text == text:
            read += 1
            assert got.format == fmt.name
        else:
            assert got.text is None, f"frame {i} read as {got.text!r}, not {text!r}"  # never a wrong id
            misses.append((fmt.name, module_px, round(angle), got.reason))
    ms = seconds / 200 * 1000
    print(f"\ncodes: {read}/200 read in the region of interest, {ms:.2f} ms per frame; missed: {misses}")
    assert read >= 198, misses


def test_region_units_formats_and_what_is_not_a_serial() -> None:
    """A pixel region and a 1-D format read a Code 128; a code outside the region, a format
    not configured, two different codes, and bad region or format names are all told apart."""
    rng = np.random.default_rng(5)
    bar = code_image("SN-CODE128-42", zxingcpp.BarcodeFormat.Code128, 3, 0.0)
    image = frame(rng, bar, at=(20, 30))
    box = {"unit": "pixel", "x": 0, "y": 0, "width": 20 + bar.shape[1] + 10, "height": 30 + bar.shape[0] + 10}
    assert CodeReader(CodesConfig(formats=["Code128"], roi=box)).read(image).text == "SN-CODE128-42"
    # Only the configured formats are searched; only the region is searched.
    assert CodeReader(CodesConfig(formats=["QRCode"], roi=box)).read(image).text is None
    elsewhere = CodeReader(CodesConfig(formats=["Code128"], roi=ROI)).read(image)
    assert elsewhere.text is None and "no code" in elsewhere.reason
    # Two different codes in the region: no guess.
    qr_a = code_image("SN-A", zxingcpp.BarcodeFormat.QRCode, 3, 0.0)
    qr_b = code_image("SN-B", zxingcpp.BarcodeFormat.QRCode, 3, 0.0)
    both = frame(rng, qr_a, at=(700, 600))
    both[600 : 600 + qr_b.shape[0], 700 + qr_a.shape[1] : 700 + qr_a.shape[1] + qr_b.shape[1]] = qr_b[
        ..., None
    ]
    two = CodeReader(CodesConfig(formats=["QRCode"], roi=ROI)).read(both)
    assert two.text is None and "2 different codes" in two.reason
    # A pixel region beyond a smaller frame reads nothing rather than failing.
    far = {"unit": "pixel", "x": 2000, "y": 0, "width": 100, "height": 100}
    assert "outside" in CodeReader(CodesConfig(roi=far)).read(image).reason
    with pytest.raises(ValidationError, match="unknown code format 'QR'"):
        CodesConfig(formats=["QR"])
    with pytest.raises(ValidationError, match="inside the frame"):
        CodesConfig(roi={"x": 0.7, "width": 0.5})
    with pytest.raises(ValidationError, match="whole pixels"):
        CodesConfig(roi={"unit": "pixel", "x": 10.5, "width": 100})


def test_the_station_takes_the_code_as_serial_and_the_unread_outcome(tmp_path: Path, bundles) -> None:
    """Through the real station over HTTP: a read code becomes the serial (the posted one only
    stands in when reading is off); a frame with no code is rejected, or passed on to the
    model's verdict as UNREAD-<sha8>, as configured."""
    rng = np.random.default_rng(7)
    coded = png(frame(rng, code_image("SN-777001", zxingcpp.BarcodeFormat.DataMatrix, 4, 33.0)))
    blank = png(frame(rng, None))
    sha8 = hashlib.sha256(blank).hexdigest()[:8]
    reading = {"formats": ["DataMatrix", "QRCode"], "roi": ROI}

    config = station(tmp_path, str(bundles["pass"]), codes=reading | {"unread": "reject"})
    with serve(create_edge(config)) as url:
        read = post(url, coded, serial="TYPED-1")
        assert read.status_code == 200, read.text
        assert read.json()["serial"] == "SN-777001" and read.json()["code_read"] is True
        assert read.json()["verdict"] == "pass"
        # The camera need not post a serial at all when the station reads it.
        no_serial = post(url, coded, serial=None)
        assert no_serial.status_code == 200 and no_serial.json()["serial"] == "SN-777001"
        unread = post(url, blank, serial="TYPED-2").json()
        assert unread["serial"] == f"UNREAD-{sha8}" and unread["code_read"] is False
        assert unread["verdict"] == "reject" and not unread["failsafe"]  # the model passed it
        metrics = httpx.get(f"{url}/metrics").text
        assert 'zd_part_codes_total{result="read"} 2.0' in metrics
        assert 'zd_part_codes_total{result="unread"} 1.0' in metrics

    (tmp_path / "pass").mkdir()
    config = station(tmp_path / "pass", str(bundles["pass"]), codes=reading | {"unread": "pass"})
    with serve(create_edge(config)) as url:
        unread = post(url, blank, serial=None).json()
        assert unread["serial"] == f"UNREAD-{sha8}" and unread["verdict"] == "pass"

    (tmp_path / "off").mkdir()
    config = station(tmp_path / "off", str(bundles["pass"]))
    with serve(create_edge(config)) as url:
        typed = post(url, coded, serial="TYPED-3").json()
        assert typed["serial"] == "TYPED-3" and typed["code_read"] is None
        missing = post(url, coded, serial=None)
        assert missing.status_code == 422 and "serial is required" in missing.json()["detail"]


def test_station_config_takes_a_codes_section(tmp_path: Path) -> None:
    """The YAML section (as in the README) loads; an unknown key in it is refused by name."""
    from zerodefect.edge.config import StationConfigError, load_station_config

    path = tmp_path / "station.yaml"
    path.write_text(
        "station: st-01\nmodel: bundle\ncodes:\n  formats: [DataMatrix, QRCode]\n"
        "  roi: {unit: fraction, x: 0.5, y: 0.5, width: 0.45, height: 0.45}\n  unread: reject\n"
    )
    config = load_station_config(path)
    assert isinstance(config, StationConfig) and config.codes.roi.width == 0.45
    path.write_text("station: st-01\nmodel: bundle\ncodes:\n  region: {x: 0}\n")
    with pytest.raises(StationConfigError, match="region"):
        load_station_config(path)


def test_unread_parts_reach_the_record_and_raise_the_andon(
    tmp_path: Path, data_dir: Path, bundles, monkeypatch
) -> None:
    """Station to record over HTTP: read parts are stored under their code, unread ones under
    UNREAD-<sha8> with their frame, and the record's unread_rate rule raises one alert on them."""
    from zerodefect.quality.andon import AndonConfig, Rules, evaluate_all

    from .people import client_for
    from .servers import record_for_station
    from .test_edge import wait_for

    rng = np.random.default_rng(11)
    texts = [f"SN-88{i:04d}" for i in range(7)]
    frames = [
        png(frame(rng, code_image(t, zxingcpp.BarcodeFormat.QRCode, 4, 20.0 * i)))
        for i, t in enumerate(texts)
    ]
    frames += [png(frame(rng, None)) for _ in range(3)]
    record_app = record_for_station(monkeypatch)
    record_app.state.andon.stop()  # evaluated by hand below
    with serve(record_app) as record_url:
        codes = {"roi": ROI, "unread": "pass"}
        config = station(
            tmp_path, str(bundles["pass"]), record_url=record_url, codes=codes, pass_sample_rate=0.0
        )
        with serve(create_edge(config)) as url:
            answers = [post(url, image, serial=None).json() for image in frames]
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["outbox"]["pending"] == 0)
        assert [a["serial"] for a in answers[:7]] == texts
        assert all(a["serial"].startswith("UNREAD-") and a["verdict"] == "pass" for a in answers[7:])
        page = client_for(record_app, record_url).get("/v1/inspections", params={"limit": 100}).json()
        assert sorted(r["serial"] for r in page["items"]) == sorted(a["serial"] for a in answers)
        # Passed parts' images stay at the station (pass_sample_rate 0), but not an unread frame's.
        stored = {r["serial"] for r in page["items"] if r.get("image_url")}
        assert stored == {a["serial"] for a in answers[7:]}
    off = {"ucl": False, "consecutive_defects": None, "false_reject_rate_above": None, "silent_seconds": None}
    rules = AndonConfig(defaults=Rules(**off, unread_rate_above=0.2, unread_window_parts=10))
    with record_app.state.sessions() as session:
        raised = evaluate_all(session, rules)
        assert [(a.rule, a.value) for a in raised] == [("unread_rate", 0.3)]
