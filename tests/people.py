"""Logged-in HTTP clients for the record service: a user of a role, created in its database."""

from __future__ import annotations

import httpx

from zerodefect.quality.auth import create_user

PASSWORD = "correct horse battery"


def add_user(sessions, username: str, role: str) -> str:
    with sessions() as session:
        create_user(session, username, PASSWORD, role)
    return username


def logged_in(url: str, username: str) -> httpx.Client:
    """An httpx client holding the user's session cookie and CSRF header."""
    client = httpx.Client(base_url=url, timeout=30)
    answer = client.post("/v1/login", json={"username": username, "password": PASSWORD})
    answer.raise_for_status()
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    return client


def client_for(app, url: str, role: str = "viewer", username: str | None = None) -> httpx.Client:
    """Create a user of `role` in the app's database and log them in."""
    return logged_in(url, add_user(app.state.sessions, username or f"{role}-1", role))
