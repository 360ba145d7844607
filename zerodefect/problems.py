"""The error answers of both services (the station and the record), as one contract.

Every refusal is JSON `{"detail": ...}`: a sentence for a refusal the app decides (401, 404,
409, ...), and for a request that does not fit the schema (422) the list of what is wrong
and where, without echoing the input (a refused Infinity, or an image's bytes, cannot or should
not be written back). Each route names its 4xx answers with `errors(...)`, so the OpenAPI
description lists what a client can really get.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

# The largest id, count or offset either service takes: ids are INTEGER columns, 32-bit on
# PostgreSQL, and SQLite overflows past 2**63 - 1. A bigger number is a 422, never a 500.
MAX_INT = 2**31 - 1


class Problem(BaseModel):
    """A refusal with its reason."""

    detail: str


class Issue(BaseModel):
    """One part of a request that does not fit the schema."""

    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    """A 422: the schema's issues, or the app's own reason (a body that fits the schema but
    not the record, such as an image that does not match its hash)."""

    detail: list[Issue] | str


REASONS = {
    400: "The request is malformed (an unreadable image or body)",
    401: "No credentials (API key, or login session)",
    403: "Wrong credentials, too small a role, or a missing CSRF token",
    404: "No such resource",
    409: "Conflicts with what is recorded",
    413: "The body is over the size limit",
    415: "The image is not of its declared type",
    422: "The request does not fit the schema or is refused",
    429: "Too many failed logins: try again after Retry-After seconds",
    503: "Not ready",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer with these codes."""
    return {
        code: {"model": Invalid if code == 422 else Problem, "description": REASONS[code]} for code in codes
    }


async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """Where and why, without echoing the input."""
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)
