"""The quality record service: stations post judged parts, other systems (MES/QMS) read them.

Writes need a station API key (header `X-API-Key`); the station is taken from the key, never
from the body, so one station cannot write another's record. Bad input is a 4xx with a reason.
"""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from zerodefect.inference.preprocess import ImageDecodeError
from zerodefect.quality.db import make_engine, migrate, session_factory
from zerodefect.quality.deps import DB, CallingStation
from zerodefect.quality.images import ImageStore, draw_overlay
from zerodefect.quality.schemas import InspectionIn, InspectionOut, InspectionPage
from zerodefect.quality.store import (
    RecordError,
    query_inspections,
    record_inspection,
    to_out,
)
from zerodefect.settings import Settings, get_settings

MAX_BODY_BYTES = 16 * 1024 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the record service over the configured database (migrated to head first)."""
    settings = settings or get_settings()
    url = settings.record_database_url
    migrate(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    images = ImageStore(settings.image_dir)
    app = FastAPI(title="zerodefect quality record", version="1")
    app.state.engine, app.state.sessions, app.state.images = engine, sessions, images

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

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
        responses={200: {"description": "Already recorded under this key (idempotent replay)"}},
    )
    def post_inspection(
        body: InspectionIn,
        response: Response,
        session: DB,
        who: CallingStation,
    ) -> InspectionOut:
        stored = record_inspection(session, who, body, images)
        if not stored.created:
            response.status_code = 200
        return to_out(stored.inspection)

    @app.get("/v1/inspections", response_model=InspectionPage)
    def list_inspections(
        session: DB,
        station: str | None = None,
        verdict: Literal["pass", "reject"] | None = None,
        serial: str | None = None,
        batch: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> InspectionPage:
        rows, total = query_inspections(session, station, verdict, serial, since, until, limit, offset, batch)
        return InspectionPage(items=[to_out(r) for r in rows], total=total, limit=limit, offset=offset)

    @app.get("/v1/inspections/{inspection_id}", response_model=InspectionOut)
    def get_inspection(inspection_id: int, session: DB) -> InspectionOut:
        from zerodefect.quality.models import Inspection

        row = session.get(Inspection, inspection_id)
        if row is None:
            raise HTTPException(404, f"no inspection {inspection_id}")
        return to_out(row)

    @app.get("/v1/inspections/{inspection_id}/overlay.png")
    def get_overlay(inspection_id: int, session: DB) -> Response:
        """The part's stored image with its defect boxes drawn, for reviewers."""
        from zerodefect.quality.models import Inspection

        row = session.get(Inspection, inspection_id)
        if row is None:
            raise HTTPException(404, f"no inspection {inspection_id}")
        path = images.find(row.image_sha256) if row.image_sha256 else None
        if path is None:
            raise HTTPException(404, f"inspection {inspection_id} has no stored image")
        boxes = [(d.class_name, d.score, [d.x1, d.y1, d.x2, d.y2]) for d in row.defects if d.x1 is not None]
        try:
            return Response(draw_overlay(path, boxes), media_type="image/png")
        except ImageDecodeError as exc:
            raise HTTPException(
                500, f"stored image of inspection {inspection_id} is unreadable: {exc}"
            ) from None

    @app.get("/v1/images/{sha256}")
    def get_image(sha256: str) -> FileResponse:
        path = images.find(sha256)
        if path is None:
            raise HTTPException(404, "no such image")
        return FileResponse(path)

    return app
