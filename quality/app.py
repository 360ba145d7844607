"""The quality record service: stations post judged parts, people review and read them.

A station writes with its API key (header `X-API-Key`); the station is taken from the key, never
from the body, so one station cannot write another's record. People (and MES/QMS clients) log
in (POST /v1/login) and need a role for everything else: viewer to read, reviewer to review,
admin to manage users. Bad input is a 4xx with a reason.
"""

from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders

from zerodefect.http_limits import BodyLimit
from zerodefect.inference.imagecheck import InputError
from zerodefect.inference.result import Detections
from zerodefect.inference.wire import LINK_PATTERN, InspectionIn, LinkStateIn
from zerodefect.problems import MAX_INT, errors, invalid_request
from zerodefect.quality import fleet, promotions, shadow, web
from zerodefect.quality.andon import AndonWorker, alert_json, load_config
from zerodefect.quality.auth import (
    SESSION_COOKIE,
    AuthError,
    LoginThrottle,
    LoginThrottled,
    create_user,
    login,
    logout,
)
from zerodefect.quality.db import make_engine, migrate, session_factory
from zerodefect.quality.deps import (
    DB,
    Admin,
    CallingStation,
    Reviewer,
    StationKey,
    Viewer,
    authenticate_station,
    set_session_cookie,
)
from zerodefect.quality.images import ImageStore, draw_overlay
from zerodefect.quality.models import Alert, Station
from zerodefect.quality.schemas import (
    BatchItemOut,
    InspectionBatchIn,
    InspectionBatchOut,
    InspectionOut,
    InspectionPage,
    LoginIn,
    LoginOut,
    ReviewIn,
    ReviewOut,
    StationIn,
    UserIn,
    UtcTime,
)
from zerodefect.quality.store import (
    RecordError,
    add_review,
    add_station,
    as_utc,
    query_inspections,
    record_batch,
    record_inspection,
    record_link,
    review_history,
    rotate_station_key,
    to_out,
)
from zerodefect.settings import Settings, get_settings

MAX_BODY_BYTES = 16 * 1024 * 1024
# The review app loads its script and styles from /static only: no inline code, no other
# origin, never framed (clickjacking), nothing sniffed into another type. The OpenAPI pages
# (/docs, /redoc) load Swagger UI from its CDN with an inline start script, so they get the
# headers without the CSP.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
DOCS_PATHS = ("/docs", "/redoc")
# A row id in a path: bounded, so a huge number is a 422 rather than an overflow in the database.
RowId = Annotated[int, Path(ge=1, le=MAX_INT)]


def _handled(alert: Alert) -> dict:
    return {
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": alert.acknowledged_at.isoformat() if alert.acknowledged_at else None,
        "resolved_by": alert.resolved_by,
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }


class SecurityHeaders:
    """Adds SECURITY_HEADERS (and the CSP, but on the API docs) to every HTTP response.

    A pure ASGI middleware rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware
    runs each request through an extra task and memory streams, measured here at about a fifth
    of a small request's CPU in the record (50 stations post 20 batches a second each)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = not scope["path"].startswith(DOCS_PATHS)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.update(SECURITY_HEADERS)
                if csp:
                    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the record service over the configured database (migrated to head first)."""
    settings = settings or get_settings()
    url = settings.record_database_url
    migrate(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    images = ImageStore(settings.image_dir, settings.record_max_image_pixels)
    andon = AndonWorker(sessions, load_config(settings.andon_config))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        andon.start()
        yield
        andon.stop()

    app = FastAPI(title="zerodefect quality record", version="1", lifespan=lifespan)
    app.state.andon = andon
    app.state.engine, app.state.sessions, app.state.images = engine, sessions, images
    app.state.login_throttle = LoginThrottle()

    # Bytes counted as they stream: JSON endpoints get a small limit, posted parts their image.
    app.add_middleware(
        BodyLimit,
        routes={
            "/v1/inspections": MAX_BODY_BYTES,
            "/v1/inspections/batch": MAX_BODY_BYTES,
            "/v1/shadow-verdicts": 1024 * 1024,
        },
    )

    app.add_middleware(SecurityHeaders)

    app.include_router(web.router)
    app.include_router(promotions.router)
    app.include_router(shadow.router)
    app.include_router(fleet.router)

    @app.exception_handler(web.LoginRequired)
    async def to_login(request: Request, _exc: web.LoginRequired) -> Response:
        return web.login_redirect(request)

    app.mount("/static", StaticFiles(directory=str(FsPath(web.__file__).parent / "static")), name="static")

    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.exception_handler(RecordError)
    async def record_error(_request: Request, exc: RecordError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/v1/inspections",
        response_model=InspectionOut,
        status_code=201,
        responses={
            200: {"description": "Already recorded under this key (idempotent replay)"},
            **errors(400, 401, 403, 409, 413, 422),
        },
    )
    async def post_inspection(body: InspectionIn, response: Response, api_key: StationKey) -> InspectionOut:
        def store() -> tuple[bool, InspectionOut]:
            with sessions() as session:
                stored = record_inspection(session, authenticate_station(session, api_key), body, images)
                return stored.created, to_out(stored.inspection)

        created, out = await run_in_threadpool(store)
        if not created:
            response.status_code = 200
        return out

    @app.post(
        "/v1/inspections/batch",
        response_model=InspectionBatchOut,
        responses=errors(400, 401, 403, 413, 422),
    )
    async def post_inspection_batch(body: InspectionBatchIn, api_key: StationKey) -> InspectionBatchOut:
        """Up to MAX_BATCH_ITEMS parts in one transaction, each judged as POST /v1/inspections
        would judge it: the answer has one outcome per item, in order (201, 200 for a replay, or
        that item's 4xx and reason), so a refused part never refuses its neighbours.

        The two ingest routes are async with their database work in one worker-thread call:
        as sync routes with the session and station as dependencies, each request crossed to
        the thread pool four times (session in, station, route, session out), and those
        hand-offs were the largest share of a small batch's CPU with 50 stations posting."""

        def store() -> list:
            with sessions() as session:
                return record_batch(session, authenticate_station(session, api_key), body.items, images)

        outcomes = await run_in_threadpool(store)
        statuses = [o.status for o in outcomes]
        return InspectionBatchOut(
            items=[BatchItemOut(**vars(o)) for o in outcomes],
            created=statuses.count(201),
            replayed=statuses.count(200),
            refused=sum(s >= 400 for s in statuses),
        )

    @app.put("/v1/links/{link}", status_code=204, responses=errors(400, 401, 403, 413, 422))
    def put_link(
        link: Annotated[str, Path(pattern=LINK_PATTERN)], body: LinkStateIn, session: DB, who: CallingStation
    ) -> None:
        """A station's link to the line (PLC, MQTT) went down or came back (andon `link_down`)."""
        if body.link != link:
            raise RecordError(f"the body is about link {body.link!r}, the path about {link!r}", 422)
        record_link(session, who, body)

    @app.post("/v1/login", response_model=LoginOut, responses=errors(400, 401, 413, 422, 429))
    def post_login(body: LoginIn, request: Request, response: Response, session: DB) -> LoginOut:
        address = request.client.host if request.client else None
        try:
            token, row = login(
                session, body.username, body.password, request.app.state.login_throttle, address
            )
        except LoginThrottled as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        except AuthError as exc:
            raise HTTPException(401, str(exc)) from None
        set_session_cookie(response, request, token)
        return LoginOut(username=row.user.username, role=row.user.role, csrf_token=row.csrf_token)

    @app.post("/v1/logout", status_code=204, responses=errors(401, 403))
    def post_logout(request: Request, response: Response, session: DB, _user: Viewer) -> None:
        logout(session, request.cookies.get(SESSION_COOKIE))
        response.delete_cookie(SESSION_COOKIE)

    @app.post("/v1/users", status_code=201, responses=errors(400, 401, 403, 409, 413, 422))
    def post_user(body: UserIn, session: DB, _admin: Admin) -> dict[str, str]:
        try:
            user = create_user(session, body.username, body.password, body.role)
        except AuthError as exc:
            raise HTTPException(409 if "exists" in str(exc) else 422, str(exc)) from None
        return {"username": user.username, "role": user.role}

    @app.get("/v1/stations", responses=errors(401, 403))
    def list_stations(session: DB, _user: Viewer) -> list[dict]:
        rows = session.scalars(select(Station).order_by(Station.name)).all()
        return [
            {
                "name": s.name,
                "line": s.line.name if s.line else None,
                "last_seen_at": as_utc(s.last_seen_at).isoformat() if s.last_seen_at else None,
            }
            for s in rows
        ]

    @app.post("/v1/stations", status_code=201, responses=errors(400, 401, 403, 409, 413, 422))
    def post_station(body: StationIn, session: DB, _admin: Admin) -> dict:
        """Create a station; its API key is in this answer only (the record keeps its hash)."""
        station, key = add_station(session, body.name, body.line)
        return {"name": station.name, "line": body.line, "api_key": key}

    @app.post("/v1/stations/{name}/rotate-key", responses=errors(401, 403, 404, 422))
    def rotate_key(name: str, session: DB, _admin: Admin) -> dict:
        return {"name": name, "api_key": rotate_station_key(session, name)}

    @app.post(
        "/v1/inspections/{inspection_id}/reviews",
        response_model=ReviewOut,
        status_code=201,
        responses=errors(400, 401, 403, 404, 413, 422),
    )
    def post_review(inspection_id: RowId, body: ReviewIn, session: DB, user: Reviewer) -> ReviewOut:
        entry = add_review(session, inspection_id, user, body)
        return next(r for r in review_history(session, inspection_id) if r.id == entry.id)

    @app.get(
        "/v1/inspections/{inspection_id}/reviews",
        response_model=list[ReviewOut],
        responses=errors(401, 403, 404, 422),
    )
    def get_reviews(inspection_id: RowId, session: DB, _user: Viewer) -> list[ReviewOut]:
        return review_history(session, inspection_id)

    @app.get("/v1/alerts", responses=errors(401, 403, 422))
    def list_alerts(
        session: DB,
        _user: Viewer,
        state: Literal["open", "acknowledged", "resolved"] | None = None,
        station: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[dict]:
        query = select(Alert).join(Station).order_by(Alert.id.desc()).limit(limit)
        if state:
            query = query.where(Alert.state == state)
        if station:
            query = query.where(Station.name == station)
        return [alert_json(a) | _handled(a) for a in session.scalars(query)]

    @app.post("/v1/alerts/{alert_id}/{action}", responses=errors(401, 403, 404, 409, 422))
    def act_on_alert(
        alert_id: RowId, action: Literal["acknowledge", "resolve"], session: DB, user: Reviewer
    ) -> dict:
        alert = session.get(Alert, alert_id)
        if alert is None:
            raise HTTPException(404, f"no alert {alert_id}")
        now = datetime.now(UTC)
        # One conditional UPDATE: of two people acting at once, one wins, the other gets a 409,
        # and a resolved alert never goes back to acknowledged.
        if action == "acknowledge":
            allowed, values = (
                ("open",),
                {"state": "acknowledged", "acknowledged_by": user.username, "acknowledged_at": now},
            )
        else:
            allowed, values = (
                ("open", "acknowledged"),
                {"state": "resolved", "resolved_by": user.username, "resolved_at": now},
            )
        changed = session.execute(
            update(Alert).where(Alert.id == alert_id, Alert.state.in_(allowed)).values(**values)
        ).rowcount
        session.commit()
        session.refresh(alert)
        if not changed:
            raise HTTPException(409, f"alert {alert_id} is {alert.state}; cannot {action} it")
        return alert_json(alert) | _handled(alert)

    @app.get("/v1/inspections", response_model=InspectionPage, responses=errors(401, 403, 422))
    def list_inspections(
        session: DB,
        _user: Viewer,
        station: str | None = None,
        verdict: Literal["pass", "reject"] | None = None,
        serial: str | None = None,
        batch: str | None = None,
        since: UtcTime | None = None,
        until: UtcTime | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    ) -> InspectionPage:
        rows, total = query_inspections(session, station, verdict, serial, since, until, limit, offset, batch)
        return InspectionPage(items=[to_out(r) for r in rows], total=total, limit=limit, offset=offset)

    @app.get(
        "/v1/inspections/{inspection_id}", response_model=InspectionOut, responses=errors(401, 403, 404, 422)
    )
    def get_inspection(inspection_id: RowId, session: DB, _user: Viewer) -> InspectionOut:
        from zerodefect.quality.models import Inspection

        row = session.get(Inspection, inspection_id)
        if row is None:
            raise HTTPException(404, f"no inspection {inspection_id}")
        return to_out(row)

    @app.get(
        "/v1/inspections/{inspection_id}/overlay.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **errors(401, 403, 404, 422)},
    )
    def get_overlay(
        inspection_id: RowId,
        session: DB,
        _user: Viewer,
        heatmap: Annotated[bool, Query(description="Draw the anomaly heatmap, when the part has one")] = True,
    ) -> Response:
        """The part's stored image with its defect boxes drawn over its heatmap, for reviewers."""
        from zerodefect.quality.models import Inspection

        row = session.get(Inspection, inspection_id)
        if row is None:
            raise HTTPException(404, f"no inspection {inspection_id}")
        path = images.find(row.image_sha256) if row.image_sha256 else None
        if path is None:
            raise HTTPException(404, f"inspection {inspection_id} has no stored image")
        classes = sorted({d.class_name for d in row.defects})
        det = Detections.from_defects(row.defects, classes)
        heat = images.find(row.heatmap_sha256) if heatmap and row.heatmap_sha256 else None
        try:
            return Response(draw_overlay(path, det, classes, images.max_pixels, heat), media_type="image/png")
        except InputError as exc:
            raise HTTPException(
                422, f"stored image of inspection {inspection_id} cannot be drawn: {exc.reason}"
            ) from None

    @app.get(
        "/v1/images/{sha256}",
        response_class=FileResponse,
        responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, **errors(401, 403, 404, 422)},
    )
    def get_image(sha256: str, _user: Viewer) -> FileResponse:
        path = images.find(sha256)
        if path is None:
            raise HTTPException(404, "no such image")
        return FileResponse(path)

    return app
