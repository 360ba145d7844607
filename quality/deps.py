"""FastAPI dependencies of the record service: a database session, the calling station, and
the logged-in person with at least the role an endpoint needs."""

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, Response
from sqlalchemy.orm import Session

from zerodefect.quality.auth import SESSION_COOKIE, SESSION_HOURS, role_at_least, session_for_token
from zerodefect.quality.models import Station, User
from zerodefect.quality.store import station_for_key


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


DB = Annotated[Session, Depends(get_db)]


async def station_key(x_api_key: Annotated[str | None, Header(description="Station API key")] = None) -> str:
    """The calling station's API key, as sent; 401 without one (checked on the event loop)."""
    if not x_api_key:
        raise HTTPException(401, "missing API key (header X-API-Key)")
    return x_api_key


StationKey = Annotated[str, Depends(station_key)]


def authenticate_station(session: Session, api_key: str) -> Station:
    """The station that owns the API key; 403 with an unknown one."""
    found = station_for_key(session, api_key)
    if found is None:
        raise HTTPException(403, "unknown API key")
    return found


def get_station(session: DB, api_key: StationKey) -> Station:
    """The station that owns the API key; 401 without a key, 403 with an unknown one."""
    return authenticate_station(session, api_key)


CallingStation = Annotated[Station, Depends(get_station)]


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def require(role: str):
    """A dependency: the logged-in user if their role is at least `role`.

    401 without a live session, 403 with too small a role. A state-changing request must also
    carry the session's CSRF token in `X-CSRF-Token`: a page on another site cannot forge it.
    """

    def dependency(request: Request, session: DB) -> User:
        login = session_for_token(session, request.cookies.get(SESSION_COOKIE))
        if login is None:
            raise HTTPException(401, "log in first (POST /v1/login)")
        user = login.user
        if not role_at_least(user.role, role):
            raise HTTPException(403, f"this needs the {role} role; {user.username} is a {user.role}")
        sent = request.headers.get("x-csrf-token") or ""
        if request.method not in SAFE_METHODS and not hmac.compare_digest(sent, login.csrf_token):
            raise HTTPException(403, "missing or wrong CSRF token (header X-CSRF-Token)")
        request.state.login = login
        return user

    return dependency


Viewer = Annotated[User, Depends(require("viewer"))]
Reviewer = Annotated[User, Depends(require("reviewer"))]
Admin = Annotated[User, Depends(require("admin"))]


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    """The login cookie: HttpOnly (no script reads it), SameSite=Strict (no other site sends
    it), Secure over HTTPS, and as long-lived as the session."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_HOURS * 3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
