"""Tests serve apps through the package's own runner: real uvicorn on a loopback port."""

from __future__ import annotations

from fastapi import FastAPI

from zerodefect.services import serve_in_thread as serve

__all__ = ["record_for_station", "serve"]


def record_for_station(monkeypatch, name: str = "st-01", line: str = "L1") -> FastAPI:
    """A record app (on the test's settings) with station `name` registered, and that station's
    API key in ZD_RECORD_API_KEY, where a station started by the test reads it."""
    from zerodefect.quality.app import create_app
    from zerodefect.quality.store import add_station
    from zerodefect.settings import get_settings

    app = create_app(get_settings())
    with app.state.sessions() as session:
        _, key = add_station(session, name, line=line)
    monkeypatch.setenv("ZD_RECORD_API_KEY", key)
    return app
