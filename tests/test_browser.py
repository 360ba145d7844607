"""The review app in a real browser: Debian's headless Chromium driven by Playwright.

The app's Content-Security-Policy allows no eval, so the tests wait with Playwright's locators
(which run outside the page's scripts) rather than page.wait_for_function(string).
Screenshots go to test-artifacts/ (ZD_TEST_ARTIFACTS to move it); they are never committed.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect

from zerodefect.quality.andon import AndonConfig, Rules, evaluate_all
from zerodefect.quality.app import create_app
from zerodefect.quality.models import Alert, Review
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
