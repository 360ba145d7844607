"""The quality record's tables: lines, stations, one inspection row per part, its defects.

Each inspection names the model version and threshold that judged it and the sha256 of the
image it saw, so any verdict can be traced and replayed. `key` is the edge's idempotency key,
unique per station: a result forwarded twice is stored once, and a station cannot reach or
block another station's row by using its key.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from zerodefect.inference.wire import DefectIn


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Line(Base):
    __tablename__ = "lines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Station(Base):
    __tablename__ = "stations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    line_id: Mapped[int | None] = mapped_column(ForeignKey("lines.id"))
    # sha256 of the station's API key; the key itself is shown once, at creation.
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    line: Mapped[Line | None] = relationship()


class StationLink(Base):
    """The last reported state of one of a station's links to the line (its PLC, its MQTT
    broker): the andon's `link_down` rule alerts on a link down for too long."""

    __tablename__ = "station_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    station_id: Mapped[int] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    link: Mapped[str] = mapped_column(String(32))
    up: Mapped[bool] = mapped_column(Boolean)
    # When this state began, by the station's clock.
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    detail: Mapped[str] = mapped_column(String(300), default="")
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("station_id", "link", name="uq_station_link"),)


# The parts a Pareto counts come from: rejects, and parts a reviewer judged.
FLAGGED = "verdict = 'reject' OR review_status IS NOT NULL"


class Inspection(Base):
    __tablename__ = "inspections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    station_id: Mapped[int] = mapped_column(ForeignKey("stations.id"))
    serial: Mapped[str] = mapped_column(String(100))
    batch: Mapped[str | None] = mapped_column(String(100))
    camera: Mapped[str | None] = mapped_column(String(100))
    frame_id: Mapped[str | None] = mapped_column(String(100))
    captured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(100))
    threshold: Mapped[float] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(16))
    # True when the part was not judged within its budget and got the fail-safe verdict.
    failsafe: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    image_path: Mapped[str | None] = mapped_column(String(300))
    # An anomaly model's heatmap (8-bit grayscale PNG), stored content-addressed beside the image.
    heatmap_sha256: Mapped[str | None] = mapped_column(String(64))
    # What the camera saw (inference.wire.ImageStatsIn), watched for drift by the andon.
    image_brightness: Mapped[float | None] = mapped_column(Float)
    image_contrast: Mapped[float | None] = mapped_column(Float)
    image_sharpness: Mapped[float | None] = mapped_column(Float)
    review_status: Mapped[str | None] = mapped_column(String(32))
    review_label: Mapped[str | None] = mapped_column(String(100))
    reviewed_by: Mapped[str | None] = mapped_column(String(100))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    station: Mapped[Station] = relationship()
    defects: Mapped[list[Defect]] = relationship(
        back_populates="inspection", cascade="all, delete-orphan", order_by="Defect.id"
    )

    __table_args__ = (
        Index("ix_inspections_station_time_verdict", "station_id", "captured_at", "verdict"),
        Index("ix_inspections_serial", "serial"),
        Index("ix_inspections_verdict_time", "verdict", "captured_at"),
        # Retention (quality.retention) reads the oldest parts first through ix_inspections_time
        # (below), and whether an image or heatmap is still used by a part that stays (partial:
        # most parts have none).
        Index(
            "ix_inspections_image_sha256",
            "image_sha256",
            postgresql_where=text("image_sha256 IS NOT NULL"),
            sqlite_where=text("image_sha256 IS NOT NULL"),
        ),
        Index(
            "ix_inspections_heatmap_sha256",
            "heatmap_sha256",
            postgresql_where=text("heatmap_sha256 IS NOT NULL"),
            sqlite_where=text("heatmap_sha256 IS NOT NULL"),
        ),
        # The dashboard's and the andon's aggregation (migration 0012).
        Index(
            "ix_inspections_time",
            "captured_at",
            postgresql_include=["station_id", "verdict", "review_status", "model_version", "latency_ms"],
        ),
        Index("ix_inspections_station_id", "station_id", "id", "verdict"),
        Index("ix_inspections_station_model", "station_id", "model_name", "model_version", "id"),
        Index(
            "ix_inspections_station_reviewed",
            "station_id",
            "reviewed_at",
            postgresql_where=text("reviewed_at IS NOT NULL"),
            sqlite_where=text("reviewed_at IS NOT NULL"),
        ),
        # The Pareto's rejects and reviewed parts of a window (migration 0013; partial: ~5 % of parts).
        Index(
            "ix_inspections_flagged_time",
            "captured_at",
            postgresql_include=["id", "verdict", "review_status", "review_label", "failsafe", "serial"],
            postgresql_where=text(FLAGGED),
            sqlite_where=text(FLAGGED),
        ),
        UniqueConstraint("station_id", "key", name="uq_inspection_station_key"),
    )


class Defect(Base):
    __tablename__ = "defects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id", ondelete="CASCADE"), index=True)
    class_name: Mapped[str] = mapped_column(String(100))
    score: Mapped[float] = mapped_column(Float)
    x1: Mapped[float | None] = mapped_column(Float)
    y1: Mapped[float | None] = mapped_column(Float)
    x2: Mapped[float | None] = mapped_column(Float)
    y2: Mapped[float | None] = mapped_column(Float)
    inspection: Mapped[Inspection] = relationship(back_populates="defects")

    @property
    def box(self) -> list[float] | None:
        """[x1, y1, x2, y2] in image pixels, or None for a classifier's class-only defect: the
        wire's shape of a box (inference.wire.DefectIn), so a row converts like one."""
        return None if self.x1 is None else [self.x1, self.y1, self.x2, self.y2]


ROLES = ("viewer", "reviewer", "admin")


class User(Base):
    """A person using the review app. Roles are ordered: viewer < reviewer < admin."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    # scrypt, salted, with its parameters (zerodefect.quality.auth); never the password.
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserSession(Base):
    """A login. Only the sha256 of the cookie's token is stored: a leaked table opens nothing."""

    __tablename__ = "user_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user: Mapped[User] = relationship()


class Review(Base):
    """One reviewer's verdict on one part. Append-only: a later review supersedes an earlier
    one on the inspection row (review_status...), and both stay here as its history."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    # confirmed (a true defect), false_reject (a good part rejected), escape (a passed part
    # that is defective, found in the audit queue), good (a passed part confirmed good).
    decision: Mapped[str] = mapped_column(String(32))
    label: Mapped[str | None] = mapped_column(String(100))
    # Corrected boxes as JSON [[label, x1, y1, x2, y2], ...] when the reviewer redrew them.
    boxes_json: Mapped[str | None] = mapped_column(String(20000))
    note: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    user: Mapped[User] = relationship()

    @property
    def boxes(self) -> list[DefectIn] | None:
        """The redrawn boxes as wire defects (a reviewer's box has score 1), or None."""
        if self.boxes_json is None:
            return None
        return [DefectIn(class_name=b[0], score=1.0, box=b[1:] or None) for b in json.loads(self.boxes_json)]

    @staticmethod
    def boxes_to_json(boxes: list[DefectIn] | None) -> str | None:
        """`boxes_json` for a review's boxes (the inverse of `boxes`)."""
        return None if boxes is None else json.dumps([[b.class_name, *(b.box or [])] for b in boxes])


class Alert(Base):
    """An andon alert: a rule breached at a station.

    `breach` names the first breach (the hour over the control limit, the start of a streak...).
    A rule that keeps breaching while its alert is active (not cleared, not resolved) counts
    each further breach here (`occurrences`, `last_seen_at`) instead of raising a new alert
    (ISA-18.2 / EEMUA 191 flood suppression: quality.andon); every breach is in AlertBreach,
    where (station, rule, breach) is unique, so evaluating again never counts one twice.
    """

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    station_id: Mapped[int] = mapped_column(ForeignKey("stations.id"))
    rule: Mapped[str] = mapped_column(String(32))
    breach: Mapped[str] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(String(500))
    value: Mapped[float | None] = mapped_column(Float)
    limit: Mapped[float | None] = mapped_column(Float)
    # open -> acknowledged -> resolved (resolving an open alert is allowed too).
    state: Mapped[str] = mapped_column(String(16), default="open")
    raised_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # For conditions that last (a false-reject rate above its limit): when it went back under.
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Breaches counted by this alert (the first included), and when the last was seen.
    occurrences: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    station: Mapped[Station] = relationship()

    __table_args__ = (UniqueConstraint("station_id", "rule", "breach", name="uq_alert_breach"),)


class AlertBreach(Base):
    """One breach of a rule at a station, and the alert that counts it."""

    __tablename__ = "alert_breaches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    station_id: Mapped[int] = mapped_column(ForeignKey("stations.id"))
    rule: Mapped[str] = mapped_column(String(32))
    breach: Mapped[str] = mapped_column(String(100))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("station_id", "rule", "breach", name="uq_alert_breaches"),)


class AlertDelivery(Base):
    """One alert to one webhook: retried with back-off until delivered or given up."""

    __tablename__ = "alert_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gave_up: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(String(500))
    alert: Mapped[Alert] = relationship()


# A promotion's reason as the record keeps it (a VARCHAR of this length on PostgreSQL): the
# registry refuses a longer --reason before it promotes, so the audit copy can always be written.
PROMOTION_REASON_MAX = 1000


class ModelPromotion(Base):
    """A move of a registry alias (champion) to a model version, as the promotion gate decided.

    The audit trail of which model was allowed to judge parts, and why: a FORCED promotion
    over a failed gate keeps its user's reason here and on the version in MLflow.
    """

    __tablename__ = "model_promotions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    model_version: Mapped[str] = mapped_column(String(100))
    alias: Mapped[str] = mapped_column(String(100))
    previous_version: Mapped[str | None] = mapped_column(String(100))
    gate: Mapped[str] = mapped_column(String(16))  # passed | FORCED
    reason: Mapped[str | None] = mapped_column(String(PROMOTION_REASON_MAX))
    promoted_by: Mapped[str] = mapped_column(String(100))
    promoted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The gate's rows: metric, challenger, champion, floor, ok, note.
    gate_rows_json: Mapped[str] = mapped_column(String(4000), default="[]")


class ShadowVerdict(Base):
    """A challenger's verdict on a part, scored beside the serving model in shadow mode.

    Apart from `inspections` on purpose: it never was the line's verdict. Joined to the part by
    (station, key); it may arrive before the part itself, so there is no foreign key to it.
    """

    __tablename__ = "shadow_verdicts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    station_id: Mapped[int] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(100))
    verdict: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    defect_class: Mapped[str | None] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("station_id", "key", "model_version", name="uq_shadow_station_key_version"),
        Index("ix_shadow_model_version", "model_name", "model_version"),
    )


class StationStatus(Base):
    """A station's latest periodic report (model, shadow, outbox backlog): one row per station."""

    __tablename__ = "station_status"
    station_id: Mapped[int] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(100))
    shadow_version: Mapped[str | None] = mapped_column(String(100))
    outbox_pending: Mapped[int] = mapped_column(Integer)
    outbox_dead: Mapped[int] = mapped_column(Integer)
    every_seconds: Mapped[float] = mapped_column(Float)
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
