"""The review app: server-rendered pages on top of the record's JSON API.

Pages read with the logged-in user's session; every action (review, acknowledge, resolve) is a
call from app.js to the JSON API, which enforces roles and CSRF, so the pages add no second
path to the data. A page without a live session redirects to the login form.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from zerodefect.quality import charts
from zerodefect.quality.auth import SESSION_COOKIE, AuthError, LoginThrottled, login, session_for_token
from zerodefect.quality.dashboard import PARTS_PER_SUBGROUP, build_dashboard
from zerodefect.quality.deps import DB, set_session_cookie
from zerodefect.quality.models import Alert, Defect, Inspection, Line, Station, UserSession
from zerodefect.quality.store import to_out

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter(include_in_schema=False)
PAGE_SIZE = 60


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


class LoginRequired(Exception):
    """Raised by a page's dependency before the page does any work; answered by a redirect."""


def page_login(request: Request, session: DB) -> UserSession:
    login_row = session_for_token(session, request.cookies.get(SESSION_COOKIE))
    if login_row is None:
        raise LoginRequired()
    return login_row


PageLogin = Annotated[UserSession, Depends(page_login)]


def _render(
    request: Request, session: Session, login_row: UserSession, name: str, page: str, **context
) -> Response:
    open_alerts = session.scalar(select(func.count(Alert.id)).where(Alert.state == "open"))
    return templates.TemplateResponse(
        request,
        name,
        {
            "user": login_row.user,
            "csrf": login_row.csrf_token,
            "page": page,
            "title": context.pop("title", page),
            "open_alerts": open_alerts,
            **context,
        },
    )


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/review", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/review") -> Response:
    return templates.TemplateResponse(
        request, "login.html", {"user": None, "csrf": "", "title": "Log in", "next": next, "error": None}
    )


@router.post("/login")
def login_submit(
    request: Request,
    session: DB,
    username: str = Form(...),
    password: str = Form(...),
    next: str = Form("/review"),
) -> Response:
    address = request.client.host if request.client else None
    try:
        token, _ = login(session, username, password, request.app.state.login_throttle, address)
    except AuthError as exc:
        throttled = isinstance(exc, LoginThrottled)
        return templates.TemplateResponse(
            request,
            "login.html",
            {"user": None, "csrf": "", "title": "Log in", "next": next, "error": str(exc)},
            status_code=429 if throttled else 401,
            headers={"Retry-After": str(exc.retry_after)} if throttled else None,
        )
    target = next if next.startswith("/") and not next.startswith("//") else "/review"
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, request, token)
    return response


def _day(value: str | None, end: bool = False) -> datetime | None:
    """A date filter as a UTC time (the end of the day for `end`); None if absent or invalid."""
    try:
        day = date.fromisoformat(value) if value else None
        return datetime.combine(day + timedelta(days=1) if end else day, time(), tzinfo=UTC) if day else None
    except (ValueError, OverflowError):
        return None


@router.get("/review", response_class=HTMLResponse)
def review_page(
    request: Request,
    session: DB,
    login_row: PageLogin,
    queue: Literal["flagged", "audit"] = "flagged",
    station: str | None = None,
    line: str | None = None,
    defect_class: str | None = None,
    model_version: str | None = None,
    since: str | None = None,
    until: str | None = None,
    reviewed: bool = False,
) -> Response:
    """The flagged queue (rejects, newest first) or the audit queue (sampled passes with a
    stored image), unreviewed parts only unless asked."""
    query = (
        select(Inspection)
        .join(Station)
        .outerjoin(Line, Station.line_id == Line.id)
        .where(Inspection.verdict == ("reject" if queue == "flagged" else "pass"))
        .options(
            selectinload(Inspection.defects), selectinload(Inspection.station).selectinload(Station.line)
        )
    )
    if queue == "audit":
        query = query.where(Inspection.image_path.is_not(None))
    if not reviewed:
        query = query.where(Inspection.review_status.is_(None))
    if station:
        query = query.where(Station.name == station)
    if line:
        query = query.where(Line.name == line)
    if model_version:
        query = query.where(Inspection.model_version == model_version)
    if defect_class:
        query = query.where(
            or_(
                Inspection.defects.any(Defect.class_name == defect_class),
                Inspection.review_label == defect_class,
            )
        )
    start, end = _day(since), _day(until, end=True)
    if start:
        query = query.where(Inspection.captured_at >= start)
    if end:
        query = query.where(Inspection.captured_at < end)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(
        query.order_by(Inspection.captured_at.desc(), Inspection.id.desc()).limit(PAGE_SIZE)
    ).all()
    classes = sorted(
        set(session.scalars(select(Defect.class_name).distinct()))
        | {c for c in session.scalars(select(Inspection.review_label).distinct()) if c}
    )
    choices = {
        "stations": session.scalars(select(Station.name).order_by(Station.name)).all(),
        "lines": session.scalars(select(Line.name).order_by(Line.name)).all(),
        "classes": classes,
        "versions": sorted(session.scalars(select(Inspection.model_version).distinct()).all()),
    }
    filters = {
        "station": station,
        "line": line,
        "defect_class": defect_class,
        "model_version": model_version,
        "since": since,
        "until": until,
        "reviewed": reviewed,
    }
    return _render(
        request,
        session,
        login_row,
        "review.html",
        "review" if queue == "flagged" else "audit",
        title="Flagged parts" if queue == "flagged" else "Audit of passed parts",
        items=[to_out(r) for r in rows],
        total=total,
        queue=queue,
        choices=choices,
        filters=filters,
    )


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(
    request: Request,
    session: DB,
    login_row: PageLogin,
    hours: Annotated[int, Query(ge=1, le=8784)] = 24,
    station: str | None = None,
    bucket: Literal["auto", "parts", "hour", "shift"] = "auto",
    parts: Annotated[int, Query(ge=2, le=10_000)] = PARTS_PER_SUBGROUP,
) -> Response:
    board = build_dashboard(session, hours, station, bucket, parts)
    per = f"per {board.subgroup}"
    return _render(
        request,
        session,
        login_row,
        "dashboard.html",
        "dashboard",
        title="Dashboard",
        hours=hours,
        bucket=bucket,
        parts=parts,
        board=board,
        p_charts=[
            (name, charts.p_chart_svg(chart, f"Reject rate {per}: {name}", f"waiting for a subgroup ({per})"))
            for name, chart in board.charts.items()
        ],
        pareto=charts.pareto_svg(
            board.pareto, "Defect classes (Pareto)", "no defective part in the window yet"
        ),
        rates=charts.bars_svg(
            board.rates,
            "Rates from reviews",
            waiting="waiting for reviews: no reviewed reject or audited pass in the window",
        ),
        throughput=charts.lines_svg(board.throughput, f"Parts per {board.unit}"),
        latency=charts.lines_svg(
            board.latency_p95,
            f"p95 latency per {board.unit} (ms)",
            waiting="waiting for parts that report their latency",
        ),
        timeline=charts.timeline_svg(board.versions, "Model versions"),
        drift=_drift_charts(request, session, list(board.charts)),
    )


def _drift_charts(request: Request, session: Session, stations: list[str]) -> list[tuple[str, str]]:
    """Each station's drift CUSUMs against their limit h, as the andon judges them now (read
    for every station in one batch: quality.andon.watch_stations)."""
    from zerodefect.quality.andon import DRIFT_SERIES, watch_stations

    config = request.app.state.andon.config
    rows = session.scalars(select(Station).where(Station.name.in_(stations))).all()
    by_name = {s.name: s for s in rows}
    watched = watch_stations(session, rows, lambda s: config.rules_for(s.name))
    out: list[tuple[str, str]] = []
    for name in stations:
        for rule in DRIFT_SERIES:
            for seen in watched.get((by_name[name].id, rule), []):
                title = f"{seen.label} CUSUM: {name}"
                out.append((title, charts.limit_svg(list(seen.result.cusum_path), seen.result.h, title)))
    if stations and not out:
        reference = config.defaults.drift_reference_parts
        waiting = f"waiting for the first {reference} parts of a station's model version (its reference)"
        out.append(("Drift watch", charts.empty("Drift watch", "limit", waiting)))
    return out


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, session: DB, login_row: PageLogin) -> Response:
    from zerodefect.quality.andon import alert_json

    rows = session.scalars(
        select(Alert).options(selectinload(Alert.station)).order_by(Alert.id.desc()).limit(200)
    )
    alerts = [alert_json(a) | {"acknowledged_by": a.acknowledged_by} for a in rows]
    return _render(request, session, login_row, "alerts.html", "alerts", title="Alerts", alerts=alerts)
