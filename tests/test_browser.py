"""The review app in a real browser: Debian's headless Chromium driven by Playwright.

The app's Content-Security-Policy allows no eval, so the tests wait with Playwright's locators
(which run outside the page's scripts) rather than page.wait_for_function(string).
Screenshots go to test-artifacts/ (ZD_TEST_ARTIFACTS to move it); they are never committed.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect

from zerodefect.quality.andon import AndonConfig, Rules, evaluate_all
from zerodefect.quality.app import create_app
from zerodefect.quality.models import Alert, Inspection, Review
from zerodefect.quality.store import add_station
from zerodefect.settings import get_settings

from .parts import T0, post_parts
from .people import PASSWORD, add_user
from .servers import serve

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("ZD_TEST_ARTIFACTS", "test-artifacts"))
# No background traffic: this machine's network is closed (see the machine notes).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# What the browser reports as refused by the app's Content-Security-Policy: must stay empty.
CSP_VIOLATIONS: list[str] = []


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def site(data_dir: Path):
    app = create_app(get_settings())
    app.state.andon.stop()
    with app.state.sessions() as session:
        _, key = add_station(session, "st-01", line="L1")
    add_user(app.state.sessions, "rita", "reviewer")
    add_user(app.state.sessions, "victor", "viewer")
    CSP_VIOLATIONS.clear()
    with serve(app) as url:
        post_parts(url, key, "st-01", "rrppprrrrrrpprrrr", T0)  # 12 flagged parts
        post_parts(url, key, "st-01", "p" * 20, T0 + timedelta(hours=1))
        yield url, app
    assert CSP_VIOLATIONS == []


def open_as(browser, url: str, username: str, shot: str | None = None):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on(
        "console",
        lambda m: CSP_VIOLATIONS.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.goto(f"{url}/review")
    page.wait_for_selector("form.login")  # the queue sent us to log in first
    assert "/login?next=" in page.url
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/review")
    if shot:
        save(page, shot)
    return page


def save(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_reviewer_reviews_ten_flagged_parts_with_the_keyboard(browser, site) -> None:
    url, app = site
    page = open_as(browser, url, "rita", "review-queue")
    assert page.locator("li.part").count() == 12
    keys = ["c", "f"] * 5
    for n, key in enumerate(keys, start=1):
        page.keyboard.press(key)
        expect(page.locator("li.part.done")).to_have_count(n)
    save(page, "review-after-ten")
    assert "part" in page.locator("#status").inner_text()
    with app.state.sessions() as session:
        reviews = session.query(Review).order_by(Review.id).all()
        assert [r.decision for r in reviews] == ["confirmed", "false_reject"] * 5
        assert {r.user.username for r in reviews} == {"rita"}
    page.reload()
    assert page.locator("li.part").count() == 2  # reviewed parts left the queue
    page.close()


def test_the_dashboard_draws_its_charts(browser, site) -> None:
    url, _ = site
    page = open_as(browser, url, "victor")
    page.goto(f"{url}/dashboard")
    for kind in ("p-chart", "pareto", "lines", "timeline"):
        chart = page.locator(f'svg[data-chart="{kind}"]').first
        box = chart.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 50, kind
    assert page.locator('svg[data-chart="p-chart"] circle.point').count() == 1  # 37 parts: one subgroup of 50
    page.goto(f"{url}/dashboard?bucket=hour")
    assert page.locator('svg[data-chart="p-chart"] circle.point').count() == 2  # two hours
    assert page.locator('svg[data-chart="pareto"] rect.bar').count() == 1
    save(page, "dashboard")
    page.close()


def test_a_reviewer_acknowledges_an_alert(browser, site) -> None:
    url, app = site
    # The first hour (12 rejects in 17) is over its control limit: one alert.
    rules = AndonConfig(
        defaults=Rules(
            ucl_min_parts=10, consecutive_defects=None, silent_seconds=None, false_reject_rate_above=None
        )
    )
    with app.state.sessions() as session:
        (alert,) = evaluate_all(session, rules, T0 + timedelta(hours=2))
    page = open_as(browser, url, "rita")
    assert page.locator("#open-alerts").inner_text() == "1"
    page.goto(f"{url}/alerts")
    row = page.locator(f'tr.alert[data-id="{alert.id}"]')
    row.locator("button.ack").click()
    expect(row.locator(".state")).to_contain_text("acknowledged by rita")
    save(page, "alert-acknowledged")
    with app.state.sessions() as session:
        assert session.get(Alert, alert.id).state == "acknowledged"
    page.close()


def test_a_viewer_is_refused_a_review(browser, site) -> None:
    url, app = site
    page = open_as(browser, url, "victor")
    page.keyboard.press("c")
    expect(page.locator("#status")).to_have_class("error")
    message = page.locator("#status").inner_text()
    assert "not saved: 403" in message and "reviewer role" in message
    save(page, "viewer-refused")
    assert page.locator("li.part.done").count() == 0
    with app.state.sessions() as session:
        assert session.query(Review).count() == 0
    page.close()


def test_a_reviewer_redraws_a_box_with_the_mouse(browser, site) -> None:
    url, app = site
    page = open_as(browser, url, "rita")
    expect(page.locator("li.part.selected img")).to_have_js_property("naturalWidth", 40)  # loaded
    box = page.locator("li.part.selected .shot").bounding_box()
    # The stored images are 40 x 40 px shown at 200 x 200: a drag of 50 px is 10 image px.
    page.mouse.move(box["x"] + 50, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 100, box["y"] + 150, steps=4)
    page.mouse.up()
    page.keyboard.press("b")
    expect(page.locator("li.part.done")).to_have_count(1)
    save(page, "box-redrawn")
    with app.state.sessions() as session:
        (review,) = session.query(Review).all()
        assert review.decision == "confirmed" and review.label == "crack"
        label, *xyxy = json.loads(review.boxes_json)[0]
        assert label == "crack" and xyxy == pytest.approx([10, 20, 20, 30], abs=0.5)
    page.close()


@pytest.fixture
def generated_site(postgres, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """make(parts, stations, days): a record on the suite's PostgreSQL seeded by the generator
    (zerodefect/seed.py: real inspection rows, rejects, reviews, fail-safe and unread parts, a
    model roll-out), served by the record's app with a viewer; dropped afterwards."""
    from zerodefect.seed import seed_record

    from .conftest import RECORD_TEMPLATE, _databases

    made: list[str] = []

    def make(parts: int, stations: int, days: float):
        name = f"dashboard_{next(_databases)}"
        url = postgres.create_database(name, template=RECORD_TEMPLATE)
        made.append(name)
        seed_record(url, parts, stations=stations, days=days)
        monkeypatch.setenv("ZD_RECORD_URL", url)
        get_settings.cache_clear()
        app = create_app(get_settings())
        app.state.andon.stop()
        add_user(app.state.sessions, "victor", "viewer")
        return app

    yield make
    get_settings.cache_clear()
    for name in made:
        postgres.drop_database(name)


def timed_dashboard(page, url: str, query: str = "") -> float:
    """Load the dashboard twice and return the seconds from the request to the browser's load
    event of the second: the first pays the process's one-time costs (SQL compiled, templates
    loaded), which a serving record paid long ago."""
    page.goto(f"{url}/dashboard{query}")
    began = time.perf_counter()
    page.goto(f"{url}/dashboard{query}")
    return time.perf_counter() - began


def assert_every_chart_is_drawn(page) -> None:
    for chart in page.locator("svg.chart").all():
        box = chart.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 50, chart.get_attribute(
            "aria-label"
        )


def test_the_dashboard_with_one_hour_of_one_station(browser, generated_site) -> None:
    """The first hour after `make demo`: control chart per 50 parts (an hourly one would be a
    single point), single-hour lines drawn as visible points, honest Pareto labels, and the
    drift watch saying what it waits for."""
    app = generated_site(parts=150, stations=1, days=1 / 24)
    with app.state.sessions() as session:
        rejects = session.query(Inspection).filter_by(verdict="reject").count()
    with serve(app) as url:
        page = open_as(browser, url, "victor")
        took = timed_dashboard(page, url)
        save(page, "dashboard-1-hour-1-station")
        assert took < 2.0, f"the dashboard took {took:.2f} s"
        assert_every_chart_is_drawn(page)
        chart = page.locator('svg[data-chart="p-chart"]')
        assert chart.count() == 1 and "per 50 parts" in chart.get_attribute("aria-label")
        assert chart.locator("circle.point").count() == 3  # 150 parts
        for title in ("Parts per hour", "p95 latency per hour (ms)"):
            line = page.locator(f'svg[data-chart="lines"][aria-label="{title}"]')
            points = line.locator("circle.point")
            assert 1 <= points.count() <= 2 and points.first.bounding_box()["width"] >= 4, title
        bars = [t.text_content() for t in page.locator('svg[data-chart="pareto"] rect.bar title').all()]
        assert rejects > 0 and bars and not any(b.startswith("reject:") for b in bars)
        waiting = page.locator('svg[aria-label="Drift watch"] text.waiting').text_content()
        assert "waiting for the first 500 parts" in waiting
        page.close()


def test_the_dashboard_with_a_year_of_20_stations(browser, generated_site) -> None:
    """A year of 20 stations, asked for a year: counted per week (53 points a line, not 8,760
    hours), every station's control chart and line drawn, fail-safe and unreadable parts named
    in the Pareto, and the page in under 2 s."""
    app = generated_site(parts=20_000, stations=20, days=365)
    with serve(app) as url:
        page = open_as(browser, url, "victor")
        took = timed_dashboard(page, url, "?hours=8760")
        save(page, "dashboard-1-year-20-stations")
        assert took < 2.0, f"the dashboard took {took:.2f} s"
        assert_every_chart_is_drawn(page)
        charts = page.locator('svg[data-chart="p-chart"]')
        assert charts.count() == 20
        for chart in charts.all():
            assert "per week" in chart.get_attribute("aria-label")
            assert 52 <= chart.locator("circle.point").count() <= 54
        lines = page.locator('svg[data-chart="lines"][aria-label="Parts per week"] polyline.series')
        assert lines.count() == 20
        assert all(52 <= len(line.get_attribute("points").split()) <= 54 for line in lines.all())
        bars = {
            t.text_content().rsplit(":", 1)[0]
            for t in page.locator('svg[data-chart="pareto"] rect.bar title').all()
        }
        assert {"crack", "scratch", "fail-safe (no model verdict)", "unreadable code"} <= bars
        assert page.locator('svg[data-chart="timeline"] rect.version').count() >= 20
        page.close()
