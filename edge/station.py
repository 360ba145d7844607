"""Judging one part: decode, score within the budget, record durably, answer.

Push mode (HTTP) and pull mode (a camera or folder source) both call `Inspector.inspect`, so a
part is judged and recorded the same way whichever way it arrived.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import ValidationError

from zerodefect.edge.batcher import MicroBatcher, Scored
from zerodefect.edge.codes import CodeRead, CodeReader, unread_serial
from zerodefect.edge.config import StationConfig
from zerodefect.edge.metrics import EdgeMetrics
from zerodefect.edge.model import ModelHolder
from zerodefect.edge.outbox import Outbox
from zerodefect.edge.plc import PlcLink
from zerodefect.edge.shadow import ShadowScorer
from zerodefect.inference.heatmap import encode_heatmap
from zerodefect.inference.imagecheck import InputError, decode_checked
from zerodefect.inference.imagestats import image_stats
from zerodefect.inference.wire import DefectIn, ImageStatsIn, InspectionIn, check_text

log = logging.getLogger(__name__)


@dataclass
class PartMeta:
    # None when the camera leaves it to the station to read the part's code from the frame.
    serial: str | None
    station: str
    batch: str | None = None
    camera: str | None = None
    frame_id: str | None = None
    captured_at: datetime | None = None


# The record's limits on a part's text fields (its wire schema), checked before the outbox.
TEXT_LIMITS = {"serial": 100, "station": 100, "batch": 100, "camera": 100, "frame_id": 100}


def check_meta(meta: PartMeta, max_skew_seconds: float, now: datetime | None = None) -> None:
    """Refuse, with a 422 and the reason, what the record would refuse: text with control
    characters or over its length, and a capture time outside the window around the station
    clock. Checked before the outbox, so a bad value never becomes a part stuck in it."""
    for name, limit in TEXT_LIMITS.items():
        value = getattr(meta, name)
        if value is None:
            continue
        if len(value) > limit:
            raise InputError(422, f"{name} is {len(value)} characters long; at most {limit}")
        try:
            check_text(value)
        except ValueError as exc:
            raise InputError(422, f"{name}: {exc}") from None
    if meta.captured_at is None:
        return
    if meta.captured_at.utcoffset() is None:
        raise InputError(422, "captured_at needs a time zone")
    skew = (meta.captured_at - (now or datetime.now(UTC))).total_seconds()
    if abs(skew) > max_skew_seconds:
        raise InputError(
            422,
            f"captured_at {meta.captured_at.isoformat()} is {skew / 3600:+.1f} h from the station "
            f"clock; at most {max_skew_seconds / 3600:g} h either way",
        )


def idempotency_key(meta: PartMeta, secret: bytes) -> str:
    """The same camera frame always maps to the same key; without a frame id, a fresh one.

    Keyed with the station's secret (kept in its outbox): whoever knows a frame's fields cannot
    compute its key, so cannot post it to the record ahead of the station."""
    if meta.frame_id:
        raw = f"{meta.station}|{meta.camera}|{meta.frame_id}|{meta.serial}"
        return hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest()[:40]
    return uuid.uuid4().hex


class Inspector:
    def __init__(
        self,
        config: StationConfig,
        holder: ModelHolder,
        batcher: MicroBatcher,
        outbox: Outbox,
        metrics: EdgeMetrics,
        plc: PlcLink | None = None,
        shadow: ShadowScorer | None = None,
    ):
        self.config = config
        self.shadow = shadow
        self.plc = plc
        self.holder = holder
        self.batcher = batcher
        self.outbox = outbox
        self.metrics = metrics
        codes = config.codes
        self.reader = CodeReader(codes) if codes is not None and codes.enabled else None

    def decode(self, data: bytes, content_type: str | None) -> tuple[np.ndarray, str, ImageStatsIn]:
        """The checked image, its type, and its statistics for the record's drift alerts (in the
        same executor call: they cost a fraction of the decode)."""
        image, kind = decode_checked(
            data, content_type, self.config.max_request_bytes, self.config.max_pixels
        )
        return image, kind, image_stats(image)

    def decode_and_read(
        self, data: bytes, content_type: str | None
    ) -> tuple[np.ndarray, str, ImageStatsIn, CodeRead | None]:
        """Decode the image, its statistics and the part's code (when configured) in one
        executor call: all are CPU work that must stay off the event loop."""
        image, kind, stats = self.decode(data, content_type)
        return image, kind, stats, self.reader.read(image) if self.reader is not None else None

    async def inspect(
        self, data: bytes, content_type: str | None, meta: PartMeta, started: float
    ) -> dict[str, Any]:
        """Judge one part; raises InputError for bad input. The result is in the outbox before
        this returns. A part not judged within the budget gets the fail-safe verdict."""
        if meta.station != self.config.station:
            raise InputError(
                422, f"unknown station {meta.station!r}; this edge serves {self.config.station!r}"
            )
        if meta.serial is None and self.reader is None:
            raise InputError(422, "serial is required: this station does not read the part's code (codes:)")
        check_meta(meta, self.config.max_clock_skew_seconds)
        loop = asyncio.get_running_loop()
        image, kind, stats, code = await loop.run_in_executor(None, self.decode_and_read, data, content_type)
        if code is not None:
            # The code on the part is its id; the posted serial only stands in when reading is off.
            if code.text is None:
                log.warning("part code not read (%s): outcome %s", code.reason, self.config.codes.unread)
            meta = replace(meta, serial=code.text or unread_serial(hashlib.sha256(data).hexdigest()))
        budget = self.config.budget_ms / 1000.0
        remaining = budget - (time.perf_counter() - started)
        scored: Scored | None = None
        if remaining > 0:
            future = self.batcher.submit(image)
            try:
                scored = await asyncio.wait_for(asyncio.wrap_future(future), timeout=remaining)
            except TimeoutError:
                future.cancel()
        latency_ms = (time.perf_counter() - started) * 1000.0
        key = idempotency_key(meta, self.outbox.secret)
        payload, response = self._result(key, meta, data, kind, scored, latency_ms, code, stats)
        # Group commit: parts answered together share one fsync, and none is answered before
        # the commit that holds it returned (zerodefect.edge.outbox.Outbox.submit).
        created, response = await asyncio.wrap_future(self.outbox.submit(key, payload, response))
        # The verdict is final once recorded; a camera's retry of a frame is not a second part.
        if self.plc is not None and created:
            self.plc.signal(response, started)
        if self.shadow is not None and created and scored is not None:
            self.shadow.submit(image, key, response["verdict"])  # after the line has its verdict
        self.metrics.observe(response, latency_ms, scored.batch_size if scored else None)
        return response

    def _result(
        self,
        key: str,
        meta: PartMeta,
        data: bytes,
        kind: str,
        scored: Scored | None,
        latency_ms: float,
        code: CodeRead | None = None,
        stats: ImageStatsIn | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The record's payload, validated against the wire contract here (InputError 422 for
        what the client sent, 500 for the station's own values), and the client's answer."""
        model = scored.model if scored else self.holder.current
        threshold = model.engine.meta.threshold
        defects: list[DefectIn] = []
        if scored is not None:
            result = scored.result
            verdict, score, defect_class, failsafe = result.verdict, result.score, result.defect_class, False
            threshold = result.threshold
        else:
            verdict, score, defect_class, failsafe = self.config.failsafe_verdict, None, None, True
            log.warning(
                "part %s not judged within %.0f ms: fail-safe %s", meta.serial, self.config.budget_ms, verdict
            )
        unread = code is not None and code.text is None
        if unread and self.config.codes.unread == "reject":
            verdict = "reject"  # a part without a readable id cannot be traced: off the line
        image_sha = hashlib.sha256(data).hexdigest()
        keep = (
            self.config.store_images == "all"
            or (
                self.config.store_images == "flagged"
                and (
                    verdict == "reject"
                    # an unread code's frame shows why (a dirty code, a moved part): kept even if passed
                    or unread
                    or int(image_sha[:8], 16) / 0xFFFFFFFF < self.config.pass_sample_rate
                )
            )
        )
        # An anomaly model's heatmap goes with the image it was computed on, never alone.
        heatmap = scored.result.heatmap if keep and scored is not None else None
        try:
            if scored is not None:
                defects = scored.result.defects(model.engine.meta.classes)
            part = InspectionIn(
                key=key,
                serial=meta.serial,
                batch=meta.batch,
                camera=meta.camera,
                frame_id=meta.frame_id,
                captured_at=meta.captured_at or datetime.now(UTC),
                model_name=model.name,
                model_version=model.version,
                threshold=threshold,
                score=score,
                verdict=verdict,
                failsafe=failsafe,
                latency_ms=round(latency_ms, 3),
                image_sha256=image_sha,
                image_b64=base64.b64encode(data).decode() if keep else None,
                image_type=kind if keep else None,
                defects=defects,
                image_stats=stats,
                heatmap_b64=base64.b64encode(encode_heatmap(heatmap)).decode()
                if heatmap is not None
                else None,
            )
        except ValidationError as exc:
            raise wire_refusal(exc) from None
        payload = part.model_dump(mode="json", exclude_none=True)
        response = {
            "key": key,
            "serial": meta.serial,
            "verdict": verdict,
            "score": score,
            "threshold": threshold,
            "defect_class": defect_class,
            "defects": payload["defects"],
            "failsafe": failsafe,
            "model_name": model.name,
            "model_version": model.version,
            "latency_ms": part.latency_ms,
            # None when the station does not read codes; else whether it read this part's.
            "code_read": None if code is None else not unread,
        }
        return payload, response


# The payload fields a client sends: the record refusing one of them is the client's error.
CLIENT_FIELDS = {"serial", "batch", "camera", "frame_id", "captured_at"}


def wire_refusal(exc: ValidationError) -> InputError:
    """A part the record would refuse, as the error of this request: 422 when a field the
    client sent is at fault, else 500 (the station's model or config gives values the record
    cannot take). Logged either way; the part never reaches the outbox."""
    where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    client = all(e["loc"] and e["loc"][0] in CLIENT_FIELDS for e in exc.errors())
    log.error("part refused before the outbox, the record would not take it: %s", where)
    return InputError(422 if client else 500, f"the quality record would refuse this part: {where}")
