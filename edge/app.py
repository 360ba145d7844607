"""The station service (FastAPI): POST /v1/inspect, health, readiness, metrics, hot swap."""

import asyncio
import hashlib
import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel, Field

from zerodefect.edge.batcher import MicroBatcher
from zerodefect.edge.config import StationConfig, StationConfigError
from zerodefect.edge.forwarder import Forwarder
from zerodefect.edge.metrics import EdgeMetrics
from zerodefect.edge.model import ModelHolder
from zerodefect.edge.mqtt import MqttPublisher
from zerodefect.edge.outbox import Outbox
from zerodefect.edge.plc import PlcLink
from zerodefect.edge.shadow import ShadowScorer
from zerodefect.edge.station import Inspector, PartMeta
from zerodefect.edge.status import report_status
from zerodefect.edge.webhooks import WebhookSender, destination
from zerodefect.http_limits import BodyLimit
from zerodefect.inference.bundle import BundleError
from zerodefect.inference.imagecheck import InputError
from zerodefect.inference.wire import DefectIn
from zerodefect.problems import errors, invalid_request
from zerodefect.settings import get_settings

log = logging.getLogger(__name__)


class Verdict(BaseModel):
    key: str
    serial: str
    verdict: str
    score: float | None
    threshold: float
    defect_class: str | None
    # A detector's boxes over threshold (pixels of the posted image), or a classifier's class.
    defects: list[DefectIn] = Field(default_factory=list)
    failsafe: bool
    model_name: str
    model_version: str
    latency_ms: float
    # None when the station does not read part codes (codes: in its config).
    code_read: bool | None = None


async def follow_alias(holder: ModelHolder, metrics: EdgeMetrics | None, every: float) -> None:
    """Swap to the version an alias points at once it moves (a promotion), without a restart.
    A registry that cannot be reached leaves the current model serving."""
    while True:
        await asyncio.sleep(every)
        try:
            new = await run_in_threadpool(holder.follow)
            if new is not None and metrics is not None:
                metrics.set_model(holder.current.name, new)
        except BundleError:  # refused (unsigned, tampered...) and logged by the holder
            if metrics is not None:
                metrics.model_refusals.inc()
        except Exception as exc:  # the line keeps running on the model it has
            log.warning("could not check %s for a new version: %s", holder.uri, exc)


def start_shadow(config: StationConfig, cache_dir, metrics: EdgeMetrics) -> ShadowScorer | None:
    """The challenger beside the serving model, started; None (logged) when it cannot load:
    a shadow never keeps a station from serving."""
    try:
        holder = ModelHolder(
            config.shadow,
            cache_dir,
            1,  # one ONNX Runtime thread: the shadow batcher's own, which runs niced
            trusted_keys=config.trusted_public_keys(),
            scopes=(config.station, config.line or ""),
        )
    except Exception as exc:
        log.error(
            "station %s: shadow model %s not loaded, serving without it: %s",
            config.station,
            config.shadow,
            exc,
        )
        return None
    # Its pending verdicts in a file beside the outbox: they outlive a restart of the station.
    pending = config.outbox.with_name(config.outbox.stem + "-shadow.db")
    shadow = ShadowScorer(
        holder, config.record_url, config.record_api_key(), metrics.registry, pending_path=pending
    )
    shadow.start()
    log.info(
        "station %s: shadow mode with %s v%s", config.station, holder.current.name, holder.current.version
    )
    return shadow


def create_app(config: StationConfig, source: str | None = None, serial_prefix: str = "PART") -> FastAPI:
    """Build the service; the model loads and the threads start with the app's lifespan.

    With `source`, frames are also pulled from it (see zerodefect.edge.sources).
    """
    settings = get_settings()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            holder = ModelHolder(
                config.model,
                settings.data_dir / "registry-cache",
                config.threads,
                trusted_keys=config.trusted_public_keys(),
                scopes=(config.station, config.line or ""),
            )
        except (BundleError, StationConfigError) as exc:
            log.error("station %s cannot start: %s", config.station, exc)
            raise
        hooks = [destination(target) for target in config.webhooks]
        outbox = Outbox(config.outbox, destinations=(("mqtt",) if config.mqtt else ()) + tuple(hooks))
        batcher = MicroBatcher(holder, config.max_batch, config.batch_wait_ms)
        metrics = EdgeMetrics(
            lambda: batcher.depth, lambda: outbox.counts()["pending"], lambda: outbox.counts()["dead"]
        )
        metrics.set_model(holder.current.name, holder.current.version)
        outbox.on_group = metrics.outbox_group.observe
        batcher.start()
        forwarder = None
        if config.record_url:
            forwarder = Forwarder(
                outbox,
                config.record_url,
                config.record_api_key(),
                metrics=metrics,
                batch_size=config.record_batch_size,
                batch_wait_ms=config.record_batch_wait_ms,
            )
            forwarder.start()
        plc = None
        if config.plc is not None:
            report = (lambda up, detail: forwarder.report_link("plc", up, detail)) if forwarder else None
            plc = PlcLink(config.plc, metrics.registry, on_change=report)
            plc.start()
        publisher = None
        if config.mqtt:
            report = (lambda up, detail: forwarder.report_link("mqtt", up, detail)) if forwarder else None
            publisher = MqttPublisher(
                outbox, config.mqtt, config.station, config.line or "", on_change=report
            )
            publisher.start()
        senders = [WebhookSender(outbox, target, config.station, config.line) for target in config.webhooks]
        for sender in senders:
            sender.start()
        shadow = (
            start_shadow(config, settings.data_dir / "registry-cache", metrics) if config.shadow else None
        )
        state.update(
            shadow=shadow,
            plc=plc,
            mqtt=publisher,
            holder=holder,
            outbox=outbox,
            batcher=batcher,
            metrics=metrics,
            forwarder=forwarder,
            inspector=Inspector(config, holder, batcher, outbox, metrics, plc, shadow),
        )
        log.info("station %s serving %s v%s", config.station, holder.current.name, holder.current.version)
        poller = None
        if config.model_poll_seconds and config.model.startswith("models:/"):
            poller = asyncio.create_task(follow_alias(holder, metrics, config.model_poll_seconds))
        if shadow is not None and config.model_poll_seconds and config.shadow.startswith("models:/"):
            state["shadow_poller"] = asyncio.create_task(
                follow_alias(shadow.holder, None, config.model_poll_seconds)
            )
        if config.record_url and config.status_seconds:
            state["status_reporter"] = asyncio.create_task(
                report_status(
                    config.record_url,
                    config.record_api_key(),
                    holder,
                    outbox,
                    shadow.holder if shadow else None,
                    config.status_seconds,
                )
            )
        puller = None
        if source:
            from zerodefect.edge.sources import pull_loop

            puller = asyncio.create_task(pull_loop(state["inspector"], source, serial_prefix))
            state["puller"] = puller
        yield
        for task in (puller, poller, state.get("shadow_poller"), state.get("status_reporter")):
            if task and not task.done():
                task.cancel()
        if plc:
            await plc.stop()
        if forwarder:
            forwarder.stop()
        if publisher:
            publisher.stop()
        for sender in senders:
            sender.stop()
        if shadow:
            shadow.stop()
        batcher.stop()
        outbox.close()

    app = FastAPI(title=f"zerodefect edge: {config.station}", version="1", lifespan=lifespan)
    app.state.station = state

    def check_key(x_api_key: str | None, hashes: list[str], refusal: str) -> None:
        if not x_api_key:
            raise HTTPException(401, "missing API key (header X-API-Key)")
        digest = hashlib.sha256(x_api_key.encode()).hexdigest()
        if not any(hmac.compare_digest(digest, h) for h in hashes):
            raise HTTPException(403, refusal)

    async def require_key(
        x_api_key: Annotated[str | None, Header(description="Station API key")] = None,
    ) -> None:
        """Async, so checking a key (one sha256) costs no trip to the thread pool per part."""
        check_key(x_api_key, config.api_key_hashes, "unknown API key")

    def require_admin(
        x_api_key: Annotated[str | None, Header(description="Station-admin API key")] = None,
    ) -> None:
        """Station-admin scope (model reload): a camera's key is not enough."""
        check_key(
            x_api_key,
            config.admin_key_hashes,
            "a station-admin key is needed (admin_key_hashes in the station config)",
        )

    # Bytes counted as they stream; the upload's limit leaves room for the form around the image.
    app.add_middleware(BodyLimit, routes={"/v1/inspect": config.max_request_bytes + 64 * 1024})

    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.exception_handler(InputError)
    async def input_error(_request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=exc.status)

    @app.post(
        "/v1/inspect",
        response_model=Verdict,
        dependencies=[Depends(require_key)],
        responses=errors(400, 401, 403, 413, 415, 422),
    )
    async def inspect(
        image: Annotated[UploadFile, File(description="The part's image, JPEG or PNG")],
        station: Annotated[str, Form(min_length=1, max_length=100)],
        # Optional when the station reads the part's code from the frame (codes:).
        serial: Annotated[str | None, Form(min_length=1, max_length=100)] = None,
        batch: Annotated[str | None, Form(max_length=100)] = None,
        camera: Annotated[str | None, Form(max_length=100)] = None,
        frame_id: Annotated[str | None, Form(max_length=100)] = None,
        captured_at: Annotated[AwareDatetime | None, Form()] = None,
    ) -> dict:
        """Judge one part and record it durably before answering."""
        started = time.perf_counter()
        data = await image.read(config.max_request_bytes + 1)
        meta = PartMeta(serial, station, batch, camera, frame_id, captured_at)
        return await state["inspector"].inspect(data, image.content_type, meta, started)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "The model is not loaded yet"}})
    def readyz() -> JSONResponse:
        """Open to anyone (probes): names the model, never a file path of this machine."""
        holder, forwarder = state.get("holder"), state.get("forwarder")
        ready = holder is not None
        body = {
            "ready": ready,
            "model": holder.current.name if holder else None,
            "model_version": holder.current.version if holder else None,
            "outbox": state["outbox"].counts() if ready else None,
            "record_reachable": forwarder.record_up if forwarder else None,
            # A PLC link that is down never makes the station unready: it judges and records on.
            "plc": state["plc"].state() if state.get("plc") else None,
        }
        if ready and state.get("shadow"):
            shadow = state["shadow"]
            body["shadow"] = {"model_version": shadow.holder.current.version, "pending": shadow.pending}
        if ready and state.get("mqtt"):
            body["mqtt"] = {"connected": state["mqtt"].connected, "pending": state["mqtt"].pending()}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        return Response(generate_latest(state["metrics"].registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/model/reload",
        dependencies=[Depends(require_admin)],
        responses={
            **errors(401, 403, 422),
            409: {"description": "The bundle was refused; the previous model keeps serving"},
        },
    )
    async def reload() -> dict:
        """Reload the model from its URI (an alias may have moved) without dropping requests.

        A bundle that is unsigned, signed by an untrusted key, tampered or malformed is refused
        with a 409 naming the reason, and the model serving before keeps serving."""
        holder = state["holder"]
        try:
            old, new = await run_in_threadpool(holder.reload)
        except BundleError as exc:
            state["metrics"].model_refusals.inc()
            raise HTTPException(
                409, f"model not reloaded, still serving version {holder.current.version}: {exc}"
            ) from None
        state["metrics"].set_model(state["holder"].current.name, new)
        return {"previous_version": old, "version": new}

    return app
