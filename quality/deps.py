"""FastAPI dependencies of the record service: a database session and the calling station."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.orm import Session

from zerodefect.quality.models import Station
from zerodefect.quality.store import station_for_key


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


DB = Annotated[Session, Depends(get_db)]


def get_station(
    session: DB, x_api_key: Annotated[str | None, Header(description="Station API key")] = None
) -> Station:
    """The station that owns the API key; 401 without a key, 403 with an unknown one."""
    if not x_api_key:
        raise HTTPException(401, "missing API key (header X-API-Key)")
    found = station_for_key(session, x_api_key)
    if found is None:
        raise HTTPException(403, "unknown API key")
    return found


CallingStation = Annotated[Station, Depends(get_station)]
