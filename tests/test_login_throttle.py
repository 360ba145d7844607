"""Login throttling per name and per client address, with back-off, not a lock (issue 10,
defect 5; OWASP ASVS 4.0 V2.2.1). Clients come from distinct loopback addresses (127.0.0.x),
and the throttle's clock is the test's, so back-offs pass without sleeping."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from zerodefect.quality.app import create_app
from zerodefect.quality.auth import LoginThrottle
from zerodefect.settings import get_settings

from .people import PASSWORD, add_user
from .servers import serve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def record(data_dir: Path):
    app = create_app(get_settings())
    clock = Clock()
    app.state.login_throttle = LoginThrottle(clock=clock)
    add_user(app.state.sessions, "admin", "admin")
    with serve(app) as url:
        yield url, clock


def from_address(url: str, address: str) -> httpx.Client:
    return httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=address), timeout=30)


def test_guesses_at_the_admin_back_off_but_never_lock_the_real_admin_out(record) -> None:
    url, clock = record
    attacker, admin = from_address(url, "127.0.0.2"), from_address(url, "127.0.0.3")
    guess = {"username": "admin", "password": "wrong password"}
    # Five wrong guesses, each after its back-off: the delays double (0, 0, 0, 1, 2 s).
    for expected_wait in (0, 0, 0, 1, 2):
        if expected_wait:
            early = attacker.post("/v1/login", json=guess)
            assert early.status_code == 429 and early.headers["retry-after"] == str(expected_wait)
            clock.now += expected_wait
        assert attacker.post("/v1/login", json=guess).status_code == 401
    # The real admin, elsewhere, with the right password: a few seconds, not 300 s of lockout.
    right = {"username": "admin", "password": PASSWORD}
    refused = admin.post("/v1/login", json=right)
    assert refused.status_code == 429 and "try again in 4 s" in refused.json()["detail"]
    clock.now += 4
    assert admin.post("/v1/login", json=right).status_code == 200
    # The success starts the name afresh.
    assert attacker.post("/v1/login", json=guess).status_code == 401
    attacker.close()
    admin.close()


def test_spreading_guesses_over_names_from_one_address_is_throttled(record) -> None:
    url, clock = record
    sprayer, bystander = from_address(url, "127.0.0.4"), from_address(url, "127.0.0.5")
    for i in range(LoginThrottle.ADDRESS_FREE):
        answer = sprayer.post("/v1/login", json={"username": f"user-{i}", "password": "password1"})
        assert answer.status_code == 401
    fresh = sprayer.post("/v1/login", json={"username": "user-new", "password": "password1"})
    assert fresh.status_code == 429 and fresh.headers["retry-after"] == "1"
    # The back-off is the address's: another address trying the same new name is heard.
    other = bystander.post("/v1/login", json={"username": "user-new", "password": "password1"})
    assert other.status_code == 401
    # The right password of a real account does not reset the sprayer's address either.
    clock.now += 1
    assert sprayer.post("/v1/login", json={"username": "admin", "password": PASSWORD}).status_code == 200
    assert sprayer.post("/v1/login", json={"username": "user-x", "password": "password1"}).status_code == 401
    again = sprayer.post("/v1/login", json={"username": "user-y", "password": "password1"})
    assert again.status_code == 429 and again.headers["retry-after"] == "2"
    # The review app's login form answers the same way.
    form = sprayer.post("/login", data={"username": "user-z", "password": "password1", "next": "/review"})
    assert form.status_code == 429 and "too many failed logins" in form.text
    sprayer.close()
    bystander.close()


def test_a_name_sees_under_100_guesses_an_hour_and_memory_stays_bounded() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock, max_tracked=50)
    start, guesses = clock.now, 0
    while clock.now < start + 3600:
        wait = throttle.attempt("admin", f"10.0.{guesses // 250}.{guesses % 250}")  # a botnet
        if wait:
            clock.now += wait
            continue
        guesses += 1
    assert 20 < guesses < 100  # ASVS 2.2.1: no more than 100 failed attempts an hour per account
    for i in range(500):
        throttle.attempt(f"name-{i}", f"10.1.{i // 250}.{i % 250}")
    assert len(throttle._names) == 50 and len(throttle._addresses) == 50
    # An IPv6 client is its /64: rotating through its own range is one address.
    for i in range(LoginThrottle.ADDRESS_FREE):
        assert throttle.attempt(f"v6-{i}", f"2001:db8::{i:x}") == 0
    assert throttle.attempt("v6-next", "2001:db8::ffff") > 0
    assert throttle.attempt("v6-next", "2001:db8:0:1::1") == 0


def test_passwords_need_twelve_characters(data_dir: Path) -> None:
    from zerodefect.quality.auth import AuthError, create_user

    app = create_app(get_settings())
    with app.state.sessions() as session:
        for short in ("elevenchars", "ab" + " " * 12 + "cd"):  # ASVS 2.1.1: runs of spaces count once
            with pytest.raises(AuthError, match="at least 12 characters"):
                create_user(session, "short", short, "viewer")
        assert create_user(session, "long", "twelve chars", "viewer").username == "long"
