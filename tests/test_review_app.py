"""The review app's pages over real HTTP: login, queues and filters, dashboard charts, alerts.

Every test here runs twice: on SQLite and on PostgreSQL (the `module_record_db` fixture)."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from zerodefect.quality.app import create_app
from zerodefect.quality.store import add_station
from zerodefect.settings import get_settings

from .parts import T0, post_parts
from .people import PASSWORD, add_user
from .servers import serve


@pytest.fixture(scope="module")
def app_with_parts(module_record_db: str):
    """One record per backend for the module (posting its parts is the slow part). The tests read
    it; the one review they post confirms a reject, which changes none of the others' counts."""
    app = create_app(get_settings())
    with app.state.sessions() as session:
        _, key1 = add_station(session, "st-01", line="L1")
        _, key2 = add_station(session, "st-02", line="L2")
    add_user(app.state.sessions, "rita", "reviewer")
    with serve(app) as url:
        for hour in range(3):  # 1 reject in 20 an hour...
            post_parts(url, key1, "st-01", "r" + "p" * 19, T0 + timedelta(hours=hour))
        post_parts(url, key1, "st-01", "r" * 10 + "p" * 10, T0 + timedelta(hours=3), cls="hole")  # ...then 10
        post_parts(url, key2, "st-02", "pprp", T0 + timedelta(hours=1))
        yield url, app


def browser_login(url: str, username: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    answer = client.post("/login", data={"username": username, "password": PASSWORD, "next": "/review"})
    assert answer.status_code == 303 and answer.headers["location"] == "/review"
    return client


def test_pages_need_a_login(app_with_parts) -> None:
    url, _ = app_with_parts
    answer = httpx.get(f"{url}/dashboard?hours=12")
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=/dashboard%3Fhours%3D12"
    wrong = httpx.post(f"{url}/login", data={"username": "rita", "password": "nope", "next": "/review"})
    assert wrong.status_code == 401 and "wrong username or password" in wrong.text
    # A page checks the login before it does any work; its parameters are bounded.
    assert httpx.get(f"{url}/dashboard?hours=100000000").status_code == 303
    assert browser_login(url, "rita").get("/dashboard", params={"hours": 100000000}).status_code == 422
    # An open redirect through `next` is refused.
    client = httpx.Client(base_url=url)
    answer = client.post("/login", data={"username": "rita", "password": PASSWORD, "next": "//evil.example"})
    assert answer.headers["location"] == "/review"
    client.close()


def test_review_queue_filters_and_shows_traceability(app_with_parts) -> None:
    url, _ = app_with_parts
    client = browser_login(url, "rita")
    page = client.get("/review").text
    assert page.count('class="part') == 14  # every reject, newest first
    assert "st-01-4" in page and "threshold 0.500" in page and 'name="csrf-token" content="' in page
    items = page.split('<ol id="queue"')[1]
    assert items.index("hole 0.90") < items.index("crack 0.90")  # the later hour's parts come first
    assert client.get("/review", params={"station": "st-02"}).text.count('class="part') == 1
    assert client.get("/review", params={"line": "L1"}).text.count('class="part') == 13
    assert client.get("/review", params={"defect_class": "hole"}).text.count('class="part') == 10
    assert client.get("/review", params={"model_version": "1"}).text.count('class="part') == 3
    day = client.get("/review", params={"since": "2026-11-26"}).text
    assert day.count('class="part') == 0 and "Nothing to review here." in day
    audit = client.get("/review", params={"queue": "audit"}).text
    # 70 passes with a stored image; a page shows 60.
    assert audit.count('class="part') == 60 and "60 of 70 shown" in audit and "<kbd>g</kbd> good" in audit
    item = client.get("/v1/inspections", params={"verdict": "reject", "limit": 1}).json()["items"][0]
    assert f'src="{item["overlay_url"]}"' in page
    csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
    reviewed = client.post(
        f"/v1/inspections/{item['id']}/reviews",
        json={"decision": "confirmed"},
        headers={"X-CSRF-Token": csrf},
    )
    assert reviewed.status_code == 201
    assert client.get("/review").text.count('class="part') == 13  # reviewed parts leave the queue
    assert client.get("/review", params={"reviewed": 1}).text.count('class="part') == 14
    client.close()


def test_dashboard_draws_its_charts(app_with_parts) -> None:
    url, _ = app_with_parts
    client = browser_login(url, "rita")
    page = client.get("/dashboard", params={"bucket": "hour"}).text  # hourly subgroups asked for
    for kind in ("p-chart", "pareto", "lines", "timeline"):
        assert f'data-chart="{kind}"' in page, kind
    assert page.count('data-chart="p-chart"') == 2  # one per station
    # st-01: p̄ = 13/80; UCL(n=20) = 0.1625 + 3 sqrt(0.1625 * 0.8375 / 20) = 0.410 < 10/20.
    st01 = page.split("Reject rate per hour: st-01", 1)[1].split("</svg>")[0]
    assert st01.count('class="point out"') == 1 and "2026-11-25T09:00Z: 10/20 = 0.500 (UCL 0.410)" in st01
    assert "hole: 10" in page and "crack: 4" in page  # the Pareto bars
    client.close()
