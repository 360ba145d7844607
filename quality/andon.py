"""Andon alerts: rules per station, raised once per breach, sent to webhooks and MQTT, retried.

Rules (configs/andon.yaml, defaults below, overridable per station):
- `ucl`: an hour's reject rate above its p-chart upper control limit (zerodefect.quality.spc);
- `consecutive_defects`: N rejects in a row;
- `false_reject_rate_above`: reviewed rejects that were false, above X (with enough reviews);
- `silent_seconds`: the station has posted nothing for T seconds;
- `unread_rate_above`: parts whose code the station could not read (serial UNREAD-...), above X
  of its last parts.
- `failsafe_rate_above`: parts the station gave the fail-safe verdict (not judged within its
  budget: an overloaded station, a budget too tight for its machine), above X of its last parts.
- `score_drift` / `image_drift`: the passed parts' scores, or the images' brightness, contrast
  or sharpness, drifted from the first parts of the current model version (quality.drift).
- `link_down_seconds`: a link the station reported down (its PLC, its MQTT broker: PUT
  /v1/links/{link}) has stayed down for T seconds; the alert clears when the link is back.

Each rule is one function that returns its breaches; RULES maps the name an alert carries to its
rule, and the evaluator iterates it, so a new rule is one function and one entry.

Every breach has a name (the hour, the first part of the streak, the moment silence began...),
and (station, rule, breach) is unique (alert_breaches): evaluating again, from any number of
processes, never counts the same breach twice. Alarm floods (ISA-18.2 / EEMUA 191: more than 10
alarms in 10 minutes) are kept out: a rule that keeps breaching at one station counts each new
breach on its one active alert (count, last seen) instead of raising another; an acknowledged
alert keeps counting silently and re-arms only once its condition has cleared (SELF_CLEARING),
and the webhooks hear of a growing count at most once per `update_interval_seconds` (120 s). Each alert is delivered to every
webhook as JSON, and published to the MES's MQTT broker when one is configured
(quality.alert_mqtt); a failing delivery is retried with exponential back-off, and the delivery
state lives in the database, so a restart does not lose or repeat an alert. A webhook given with
a secret gets each request signed (HMAC-SHA256, zerodefect.webhooks), so a QMS can tell it is ours.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator
from sqlalchemy import case, func, literal, literal_column, select, union_all, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from zerodefect.backoff import backoff_delay
from zerodefect.configfile import load_yaml_model
from zerodefect.inference.wire import UNREAD_PREFIX
from zerodefect.mqtt import MqttConfig
from zerodefect.quality.alert_mqtt import AlertPublisher
from zerodefect.quality.buckets import count_where, dialect_of, hour_bucket, hour_end
from zerodefect.quality.drift import DriftCheck, check
from zerodefect.quality.models import Alert, AlertBreach, AlertDelivery, Inspection, Station, StationLink
from zerodefect.quality.spc import p_chart
from zerodefect.quality.store import as_utc
from zerodefect.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
# Parts scanned for runs of rejects at each evaluation (covers a fast line between evaluations).
CONSECUTIVE_SCAN = 2000
# Finished hours judged against their control limit (more than one, in case of a pause).
UCL_LOOKBACK_HOURS = 3
MAX_BACKOFF_SECONDS = 300


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ucl: bool = True
    # Hours of history that set the p-chart's centre line.
    ucl_window_hours: int = Field(default=24, ge=1)
    # Only finished hours with at least this many parts are judged: one reject among the first
    # two parts of an hour is no signal.
    ucl_min_parts: int = Field(default=20, ge=1)
    consecutive_defects: int | None = Field(default=5, ge=2)
    false_reject_rate_above: float | None = Field(default=0.5, gt=0, lt=1)
    min_reviews: int = Field(default=20, ge=1)
    review_window_hours: int = Field(default=24, ge=1)
    silent_seconds: float | None = Field(default=300, gt=0)
    # Parts whose code was not read (a dirty code, a moved fixture, a failing light), over this
    # share of the station's last `unread_window_parts` (judged once that many have been seen).
    unread_rate_above: float | None = Field(default=0.05, gt=0, lt=1)
    unread_window_parts: int = Field(default=200, ge=10)
    # Parts given the fail-safe verdict (not judged within the station's budget_ms), over this
    # share of the station's last `failsafe_window_parts`: the model is not what judges them.
    failsafe_rate_above: float | None = Field(default=0.02, gt=0, lt=1)
    failsafe_window_parts: int = Field(default=200, ge=10)
    # A link down this long: a reconnect within it (a PLC restarting) raises nothing.
    link_down_seconds: float | None = Field(default=30, gt=0)
    # An event rule's alert (a streak, an hour over the limit) counts further breaches while
    # active; it clears, and the rule re-arms, after this long without one (EEMUA 191's flood
    # window is 10 minutes: a station flapping inside it is one alert, not one per breach).
    clear_after_seconds: float = Field(default=600, gt=0)

    # Drift (quality.drift): the reference is a station's first parts under its current model
    # version; the recent parts after it are watched with a two-sided CUSUM (k, h in sigmas) and
    # an EWMA (lambda, L). Chosen on 100 simulated runs (normal scores, a 500-part reference):
    # no false alarm in 5,000 parts in any; a 1 sigma shift caught after 21 parts (median;
    # 38 at p95, 3 runs over 50). CUSUM h=5 raised 20 false alarms per 5,000, h=10 0.2.
    score_drift: bool = True
    image_drift: bool = True
    drift_reference_parts: int = Field(default=500, ge=20)
    drift_window: int = Field(default=500, ge=20)
    drift_cusum_k: float = Field(default=0.5, gt=0)
    drift_cusum_h: float = Field(default=12.0, gt=0)
    drift_ewma_lambda: float = Field(default=0.05, gt=0, le=1)
    drift_ewma_l: float = Field(default=5.5, gt=0)


class WebhookTarget(BaseModel):
    """A webhook whose requests are signed (zerodefect.webhooks) with its own secret."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    # The signing secret is read from this environment variable when sending, never from YAML.
    secret_env: str = Field(min_length=1)


class AndonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A URL (unsigned) or {url, secret_env} (HMAC-SHA256 signed with that target's secret).
    webhooks: list[HttpUrl | WebhookTarget] = Field(default_factory=list)
    # The MES's broker: each alert also goes to zd/v1/{site}/{line}/{station}/alert (QoS 1).
    mqtt: MqttConfig | None = None
    defaults: Rules = Field(default_factory=Rules)
    # Per station: only the rules that differ from the defaults.
    stations: dict[str, dict] = Field(default_factory=dict)
    interval_seconds: float = Field(default=10, gt=0)
    # An open alert's new count reaches each webhook (and MQTT) at most this often: the raise at
    # once, then at most one update per interval however often the rule breaches (with the
    # default, at most 6 calls per alert and target in EEMUA 191's 10-minute flood window).
    update_interval_seconds: float = Field(default=120, gt=0)

    def targets(self) -> list[str]:
        """Where each alert goes: every webhook's URL, and the broker's mqtt://host:port."""
        urls = [str(w.url) if isinstance(w, WebhookTarget) else str(w) for w in self.webhooks]
        return urls + ([self.mqtt.url()] if self.mqtt else [])

    def webhook_secret_envs(self) -> dict[str, str]:
        """URL -> the environment variable holding its signing secret, for the signed targets."""
        return {str(w.url): w.secret_env for w in self.webhooks if isinstance(w, WebhookTarget)}

    def rules_for(self, station: str) -> Rules:
        return Rules.model_validate(self.defaults.model_dump() | self.stations.get(station, {}))

    @model_validator(mode="after")
    def _station_rules_are_valid(self) -> AndonConfig:
        for station in self.stations:
            self.rules_for(station)
        return self


def load_config(path: Path | None) -> AndonConfig:
    """The andon configuration from YAML, or the defaults when there is no file."""
    if path is None or not path.exists():
        return AndonConfig()
    return load_yaml_model(path, AndonConfig, ValueError, what="invalid andon configuration")


@dataclass(frozen=True)
class Breach:
    """One breach of a rule at one station. `name` identifies it within the rule (the hour, the
    first part of a streak, the moment silence began...), so it is raised once however often
    the rules are evaluated; `value` is what was measured against `limit`."""

    name: str
    message: str
    value: float | None = None
    limit: float | None = None


# A rule looks at one station's record at `now` and returns its breaches (usually none or one;
# a scan may find several streaks or hours at once). Rules only read, except where a rule keeps
# its own state (false_reject_rate clears its episode).
Rule = Callable[[Session, Station, Rules, datetime], list[Breach]]


def consecutive_defects(session: Session, station: Station, rules: Rules, now: datetime) -> list[Breach]:
    """Every run of N or more rejects among the recent parts, even one that a pass ended between
    two evaluations; a run is named by its first part, so it is raised once.

    The runs are found in the database (a running count of passes numbers each run of rejects),
    so only the runs long enough leave it, not the CONSECUTIVE_SCAN parts."""
    if not rules.consecutive_defects:
        return []
    n = rules.consecutive_defects
    recent = (
        select(Inspection.id, Inspection.verdict)
        .where(Inspection.station_id == station.id)
        .order_by(Inspection.id.desc())
        .limit(CONSECUTIVE_SCAN)
        .subquery()
    )
    passes_before = func.sum(case((recent.c.verdict != "reject", 1), else_=0)).over(order_by=recent.c.id)
    runs = select(recent.c.id, recent.c.verdict, passes_before.label("run")).subquery()
    first = func.min(runs.c.id)
    starts = session.scalars(
        select(first)
        .where(runs.c.verdict == "reject")
        .group_by(runs.c.run)
        .having(func.count() >= n)
        .order_by(first)
    ).all()
    return [
        Breach(
            f"streak from inspection {start}",
            f"{n} rejects in a row (from inspection {start})",
            float(n),
            float(n),
        )
        for start in starts
    ]


def above_control_limit(session: Session, station: Station, rules: Rules, now: datetime) -> list[Breach]:
    """Finished, recent hours whose reject rate is above the p-chart's upper control limit."""
    if not rules.ucl:
        return []
    since = now - timedelta(hours=rules.ucl_window_hours)
    hour = hour_bucket(Inspection.captured_at, dialect_of(session))
    rows = session.execute(
        select(hour.label, func.count(), count_where(Inspection.verdict == "reject"))
        .where(Inspection.station_id == station.id, Inspection.captured_at >= since)
        .group_by(hour.key)
        .order_by(hour.key)
    ).all()
    chart = p_chart([(label, int(n), int(d)) for label, n, d in rows])
    breaches: list[Breach] = []
    for point in chart.points:
        ended = hour_end(point.label)
        # A finished hour, judged while it is recent: a drifting centre line must not
        # raise stale alerts about hours long gone.
        recent = now - timedelta(hours=UCL_LOOKBACK_HOURS) < ended <= now
        if point.above_ucl and recent and point.n >= rules.ucl_min_parts:
            breaches.append(
                Breach(
                    point.label,
                    f"reject rate {point.p:.3f} in the hour {point.label} is above the upper control "
                    f"limit {point.ucl:.3f} (centre {chart.center:.3f}, {point.n} parts)",
                    point.p,
                    point.ucl,
                )
            )
    return breaches


def false_reject_rate(session: Session, station: Station, rules: Rules, now: datetime) -> list[Breach]:
    """Reviewed rejects that were false, above the limit (with enough reviews): one alert per
    episode above the limit; the episode clears (and the next may start) once the rate is back."""
    if rules.false_reject_rate_above is None:
        return []
    since = now - timedelta(hours=rules.review_window_hours)
    reviewed, false = session.execute(
        select(func.count(), count_where(Inspection.review_status == "false_reject")).where(
            Inspection.station_id == station.id,
            Inspection.verdict == "reject",
            Inspection.review_status.in_(("confirmed", "false_reject")),
            Inspection.reviewed_at >= since,
        )
    ).one()
    rate = false / reviewed if reviewed else 0.0
    return episode(
        session,
        station,
        "false_reject_rate",
        reviewed >= rules.min_reviews and rate > rules.false_reject_rate_above,
        lambda: (
            f"false-reject rate {rate:.3f} over the last {reviewed} reviewed rejects is "
            f"above {rules.false_reject_rate_above}"
        ),
        rate,
        rules.false_reject_rate_above,
        now,
    )


def episode(
    session: Session,
    station: Station,
    rule: str,
    breached: bool,
    message: Callable[[], str],
    value: float,
    limit: float,
    now: datetime,
) -> list[Breach]:
    """A rate rule's breach, one per episode: while the rate stays above its limit the open
    episode is not raised again; once it is back under, the episode clears and the next may start."""
    episodes = session.scalars(select(Alert).where(Alert.station_id == station.id, Alert.rule == rule)).all()
    if breached:
        if all(a.cleared_at is not None for a in episodes):
            return [Breach(f"episode {len(episodes) + 1}", message(), value, limit)]
        return []
    for alert in episodes:
        if alert.cleared_at is None:
            alert.cleared_at = now
    session.commit()
    return []


def _share_of_last(session: Session, station: Station, column, is_hit, window: int) -> tuple[int, int]:
    """How many of the station's last `window` parts there are (up to `window`), and how many
    of them `is_hit` (a SQL condition on `column`): counted in the database."""
    last = (
        select(column)
        .where(Inspection.station_id == station.id)
        .order_by(Inspection.id.desc())
        .limit(window)
        .subquery()
    )
    return tuple(session.execute(select(func.count(), count_where(is_hit(last.c[column.key])))).one())


def unread_rate(session: Session, station: Station, rules: Rules, now: datetime) -> list[Breach]:
    """Parts whose code the station could not read, above the limit among its last parts."""
    if rules.unread_rate_above is None:
        return []
    # substr, not LIKE: SQLite's LIKE ignores case, and a serial "unread-..." was read.
    seen, unread = _share_of_last(
        session,
        station,
        Inspection.serial,
        lambda serial: func.substr(serial, 1, len(UNREAD_PREFIX)) == UNREAD_PREFIX,
        rules.unread_window_parts,
    )
    rate = unread / seen if seen else 0.0
    return episode(
        session,
        station,
        "unread_rate",
        seen >= rules.unread_window_parts and rate > rules.unread_rate_above,
        lambda: (
            f"{unread} of the last {seen} parts had no readable code ({rate:.3f}, "
            f"limit {rules.unread_rate_above})"
        ),
        rate,
        rules.unread_rate_above,
        now,
    )


def failsafe_rate(session: Session, station: Station, rules: Rules, now: datetime) -> list[Breach]:
    """Parts that got the fail-safe verdict, above the limit among the station's last parts."""
    if rules.failsafe_rate_above is None:
        return []
    seen, failsafe = _share_of_last(
        session, station, Inspection.failsafe, lambda flag: flag.is_(True), rules.failsafe_window_parts
    )
    rate = failsafe / seen if seen else 0.0
    return episode(
        session,
        station,
        "failsafe_rate",
        seen >= rules.failsafe_window_parts and rate > rules.failsafe_rate_above,
        lambda: (
            f"{failsafe} of the last {seen} parts got the fail-safe verdict, not judged within the "
            f"station's budget ({rate:.3f}, limit {rules.failsafe_rate_above})"
        ),
        rate,
        rules.failsafe_rate_above,
        now,
    )


def silent(session: Session, station: Station, rules: Rules, now: datetime) -> list[Breach]:
    """The station has posted nothing for longer than the limit."""
    if not rules.silent_seconds or station.last_seen_at is None:
        return []
    seen = as_utc(station.last_seen_at)
    quiet = (now - seen).total_seconds()
    if quiet <= rules.silent_seconds:
        # Posting again: the silence's alert clears (silent clears its own: SELF_CLEARING).
        session.execute(
            update(Alert)
            .where(Alert.station_id == station.id, Alert.rule == "silent", Alert.cleared_at.is_(None))
            .values(cleared_at=now)
        )
        session.commit()
        return []
    return [
        Breach(
            f"silent since {seen.isoformat(timespec='seconds')}",
            f"no part from {station.name} for {int(quiet)} s (limit {rules.silent_seconds:g} s)",
            quiet,
            rules.silent_seconds,
        )
    ]


def link_down(session: Session, station: Station, rules: Rules, now: datetime) -> list[Breach]:
    """Each link the station reported down longer than the limit, once per outage (named by
    when it went down); the outage's alert clears once the station reports the link back."""
    if not rules.link_down_seconds:
        return []
    links = session.scalars(select(StationLink).where(StationLink.station_id == station.id)).all()
    breaches: list[Breach] = []
    for link in links:
        since = as_utc(link.since)
        down_for = (now - since).total_seconds()
        if not link.up and down_for > rules.link_down_seconds:
            breaches.append(
                Breach(
                    f"{link.link} down since {since.isoformat(timespec='seconds')}",
                    f"{station.name} lost its {link.link} link {int(down_for)} s ago "
                    f"(limit {rules.link_down_seconds:g} s): {link.detail}",
                    down_for,
                    rules.link_down_seconds,
                )
            )
        elif link.up:
            for alert in session.scalars(
                select(Alert).where(
                    Alert.station_id == station.id,
                    Alert.rule == "link_down",
                    Alert.breach.startswith(f"{link.link} down since "),
                    Alert.cleared_at.is_(None),
                )
            ):
                alert.cleared_at = since
    session.commit()
    return breaches


@dataclass(frozen=True)
class Watched:
    """One drift series of a station now: its check against the reference, and what it covers."""

    label: str
    result: DriftCheck
    reference_parts: int
    model: str
    recent_ids: list[int]


# The columns each drift rule watches, and which parts count.
DRIFT_SERIES: dict[str, tuple[dict, tuple]] = {
    "score_drift": (
        {"score": Inspection.score},
        (Inspection.verdict == "pass", Inspection.failsafe.is_(False)),
    ),
    "image_drift": (
        {
            "brightness": Inspection.image_brightness,
            "contrast": Inspection.image_contrast,
            "sharpness": Inspection.image_sharpness,
        },
        (),
    ),
}


# The evaluation's drift series, read for every station at once (evaluate_all sets it in the
# session's info for the duration of one pass; a rule called on its own reads its station alone).
_WATCHED = "zd_andon_watched"
# Members per statement: SQLite allows 500 in a compound SELECT.
_MEMBERS_PER_STATEMENT = 240
# A complete reference (the first parts of a model version, in id order) never changes: kept
# per (record, station, model, version, series, size), so a pass reads only the recent parts.
_REFERENCES: dict[tuple, np.ndarray] = {}
_REFERENCES_KEPT = 4096


def watch(session: Session, station: Station, rules: Rules, rule: str) -> list[Watched]:
    """Each series of a drift rule (DRIFT_SERIES) at one station, judged against the first
    parts of its current model version; a series whose reference is not complete is skipped."""
    cached = session.info.get(_WATCHED)
    if cached is not None and (station.id, rule) in cached:
        return cached[station.id, rule]
    return watch_stations(session, [station], lambda _: rules, (rule,)).get((station.id, rule), [])


def watch_stations(
    session: Session,
    stations: list[Station],
    rules_for: Callable[[Station], Rules],
    rules: tuple[str, ...] = tuple(DRIFT_SERIES),
) -> dict[tuple[int, str], list[Watched]]:
    """Every station's drift series (watch) in two statements, not two per series: the latest
    model of each station, then each series' reference and recent parts as one UNION ALL of
    small index reads (each an `ORDER BY id [DESC] LIMIT n` on ix_inspections_station_model). On 10
    million parts the dashboard paid about 180 round trips for 20 stations: docs/query-plans.md.
    Returns {(station id, rule): [Watched, ...]} for the rules enabled at each station."""
    wanted = {s.id: s for s in stations}
    if not wanted:
        return {}
    latest_of = (
        select(Inspection.model_name, Inspection.model_version)
        .where(Inspection.station_id == Station.id)
        .order_by(Inspection.id.desc())
        .limit(1)
        .correlate(Station)
    )
    latest = {
        sid: (name, version)
        for sid, name, version in session.execute(
            select(
                Station.id,
                latest_of.with_only_columns(Inspection.model_name).scalar_subquery(),
                latest_of.with_only_columns(Inspection.model_version).scalar_subquery(),
            ).where(Station.id.in_(wanted))
        )
        if name is not None
    }
    record = str(session.get_bind().url)
    series: list[tuple[int, str, str, Rules, tuple]] = []
    parts: list = []
    for sid, (name, version) in latest.items():
        station_rules = rules_for(wanted[sid])
        for rule in rules:
            if not getattr(station_rules, rule):
                continue
            columns, where = DRIFT_SERIES[rule]
            for label, column in columns.items():
                k = len(series)
                size = station_rules.drift_reference_parts
                key = (record, sid, name, version, label, size)
                series.append((sid, rule, label, station_rules, key))
                base = select(Inspection.id.label("id"), column.label("v")).where(
                    Inspection.station_id == sid,
                    Inspection.model_name == name,
                    Inspection.model_version == version,
                    column.is_not(None),
                    *where,
                )
                if key not in _REFERENCES:
                    parts.append((k, 0, base.order_by(Inspection.id).limit(size).subquery()))
                # The newest parts, cut after the reference below: with the reference's last id
                # as a bound, PostgreSQL walked the primary key back through every station's parts.
                parts.append(
                    (k, 1, base.order_by(Inspection.id.desc()).limit(station_rules.drift_window).subquery())
                )
    values: dict[tuple[int, int], np.ndarray] = {}
    for i in range(0, len(parts), _MEMBERS_PER_STATEMENT):
        values |= _series_values(session, parts[i : i + _MEMBERS_PER_STATEMENT])
    out: dict[tuple[int, str], list[Watched]] = {}
    for k, (sid, rule, label, station_rules, key) in enumerate(series):
        watched = out.setdefault((sid, rule), [])
        reference = _REFERENCES.get(key)
        if reference is None:
            reference = values.get((k, 0), np.empty((0, 2)))
            if len(reference) < station_rules.drift_reference_parts:
                continue  # still learning what this model version sees
            if len(_REFERENCES) >= _REFERENCES_KEPT:
                _REFERENCES.clear()
            _REFERENCES[key] = reference
        recent = values.get((k, 1), np.empty((0, 2)))
        recent = recent[recent[:, 0] > reference[-1, 0]]
        if not len(recent):
            continue  # nothing new since the reference
        result = check(
            reference[:, 1],
            recent[:, 1],
            station_rules.drift_cusum_k,
            station_rules.drift_cusum_h,
            station_rules.drift_ewma_lambda,
            station_rules.drift_ewma_l,
        )
        name, version = latest[sid]
        ids = [int(i) for i in recent[:, 0]]
        watched.append(Watched(label, result, len(reference), f"{name} v{version}", ids))
    return out


def _series_values(session: Session, parts: list) -> dict[tuple[int, int], np.ndarray]:
    """The (id, value) rows of each (k, kind, subquery) in `parts`, in id order, as arrays, from
    one UNION ALL. PostgreSQL sends each member as two arrays (one row, not 500: building
    80,000 result rows in Python cost more than the query); SQLite, which has no arrays, rows."""
    out: dict[tuple[int, int], np.ndarray] = {}
    if dialect_of(session) == "postgresql":
        members = [
            select(
                literal(k).label("k"),
                literal(kind).label("kind"),
                func.array_agg(aggregate_order_by(q.c.id, q.c.id)),
                func.array_agg(aggregate_order_by(q.c.v, q.c.id)),
            )
            for k, kind, q in parts
        ]
        for k, kind, ids, vs in session.execute(union_all(*members)).all():
            if ids:
                out[k, kind] = np.column_stack([np.asarray(ids, float), np.asarray(vs, float)])
        return out
    members = [
        select(literal(k).label("k"), literal(kind).label("kind"), q.c.id, q.c.v) for k, kind, q in parts
    ]
    order = [literal_column(c) for c in ("k", "kind", "id")]
    found = session.execute(union_all(*members).order_by(*order)).all()
    rows = np.array([tuple(r) for r in found], dtype=float).reshape(-1, 4)
    cuts = np.flatnonzero(np.diff(rows[:, 0] * 2 + rows[:, 1])) + 1
    for chunk in np.split(rows, cuts) if len(rows) else []:
        out[int(chunk[0, 0]), int(chunk[0, 1])] = chunk[:, 2:]
    return out


def _drift(session: Session, station: Station, rules: Rules, now: datetime, rule: str) -> list[Breach]:
    """One alert per drift episode of each watched series: raised when its last part is out of
    control against the reference, cleared once the last part is back in control."""
    breaches: list[Breach] = []
    for seen in watch(session, station, rules, rule):
        result = seen.result
        episodes = session.scalars(
            select(Alert).where(
                Alert.station_id == station.id,
                Alert.rule == rule,
                Alert.breach.startswith(f"{seen.label} "),
                Alert.cleared_at.is_(None),
            )
        ).all()
        if not result.alarm:
            for alert in episodes:
                alert.cleared_at = now
            session.commit()
            continue
        if episodes:
            continue  # the episode goes on: raised once
        first = seen.recent_ids[result.since]
        breaches.append(
            Breach(
                f"{seen.label} from inspection {first}",
                f"{seen.label} drifted {result.shift_sigma:+.2f} sigma from the first {seen.reference_parts} "
                f"parts of model {seen.model} (from inspection {first}; CUSUM "
                f"{result.cusum:.1f} / h {result.h:g}, EWMA {result.ewma:+.2f} / {result.ewma_limit:.2f}, "
                f"PSI {result.psi:.2f}, KS D {result.ks_d:.2f} p {result.ks_p:.2g}, "
                f"{len(seen.recent_ids)} parts)",
                result.cusum,
                result.h,
            )
        )
    return breaches


def score_drift(session: Session, station: Station, rules: Rules, now: datetime) -> list[Breach]:
    """The scores of the parts the model passed (fail-safe verdicts aside) drifted."""
    if not rules.score_drift:
        return []
    return _drift(session, station, rules, now, "score_drift")


def image_drift(session: Session, station: Station, rules: Rules, now: datetime) -> list[Breach]:
    """The images' brightness, contrast or sharpness drifted: a light, a lens, the focus."""
    if not rules.image_drift:
        return []
    return _drift(session, station, rules, now, "image_drift")


# The rules by the name their alerts carry, in the order they are evaluated.
RULES: dict[str, Rule] = {
    "consecutive_defects": consecutive_defects,
    "ucl": above_control_limit,
    "false_reject_rate": false_reject_rate,
    "silent": silent,
    "link_down": link_down,
    "unread_rate": unread_rate,
    "failsafe_rate": failsafe_rate,
    "score_drift": score_drift,
    "image_drift": image_drift,
}


# Rules that clear their own alerts when their condition ends (a rate back under its limit, a
# drift back in control, a link back up, a station posting again): each raises once per episode.
# The others (a streak of rejects, an hour over its control limit, a rule added to RULES) are
# events: while such a rule's alert is active (neither cleared nor resolved), each further breach
# is counted on it; it clears, and the rule re-arms, once no breach came for clear_after_seconds.
SELF_CLEARING = frozenset(
    {"false_reject_rate", "unread_rate", "score_drift", "image_drift", "link_down", "silent"}
)


def _raise(
    session: Session,
    station: Station,
    rule: str,
    breach: Breach,
    targets: list[str],
    now: datetime,
    update_every: float = 120.0,
) -> Alert | None:
    """Record the breach unless it is known: on the rule's active alert (occurrences, last seen)
    when it has one, else as a new alert with its deliveries (webhooks, MQTT). Returns the alert
    newly raised, None for a breach known or counted on an active alert."""
    known = session.scalar(
        select(AlertBreach.id).where(
            AlertBreach.station_id == station.id, AlertBreach.rule == rule, AlertBreach.breach == breach.name
        )
    )
    if known is not None:
        return None
    active = None
    if rule not in SELF_CLEARING:
        active = session.scalars(
            select(Alert)
            .where(
                Alert.station_id == station.id,
                Alert.rule == rule,
                Alert.cleared_at.is_(None),
                Alert.state != "resolved",
            )
            .order_by(Alert.id.desc())
            .limit(1)
        ).first()
    alert = active or Alert(
        station_id=station.id,
        rule=rule,
        breach=breach.name,
        message=breach.message,
        value=breach.value,
        limit=breach.limit,
        raised_at=now,
        last_seen_at=now,
        occurrences=1,
    )
    try:
        if active is None:
            session.add(alert)
            session.flush()
        session.add(
            AlertBreach(alert_id=alert.id, station_id=station.id, rule=rule, breach=breach.name, seen_at=now)
        )
        session.flush()
    except IntegrityError:  # another process recorded this breach first
        session.rollback()
        return None
    if active is not None:
        session.execute(
            update(Alert)
            .where(Alert.id == active.id)
            .values(
                occurrences=Alert.occurrences + 1, last_seen_at=now, value=breach.value, limit=breach.limit
            )
        )
        if active.state == "open":  # an acknowledged alert is known: its count is not announced
            _queue_update(session, active.id, targets, now, update_every)
        session.commit()
        return None
    for url in targets:
        session.add(AlertDelivery(alert_id=alert.id, url=str(url), next_attempt_at=now))
    session.commit()
    log.warning("andon %s at %s: %s", rule, station.name, breach.message)
    return alert


def _queue_update(session: Session, alert_id: int, targets: list[str], now: datetime, every: float) -> None:
    """Tell each target of the alert's new count, at most once every `every` seconds: a delivery
    still waiting carries the newest count when it goes (the alert is read as it is sent), so
    nothing is queued beside it; otherwise the next goes `every` seconds after the last one sent."""
    for url in targets:
        deliveries = session.scalars(
            select(AlertDelivery).where(AlertDelivery.alert_id == alert_id, AlertDelivery.url == str(url))
        ).all()
        if any(d.delivered_at is None and not d.gave_up for d in deliveries):
            continue
        sent = [as_utc(d.delivered_at or d.next_attempt_at) for d in deliveries]
        due = max([now, *(t + timedelta(seconds=every) for t in sent)])
        session.add(AlertDelivery(alert_id=alert_id, url=str(url), next_attempt_at=due))


def evaluate_station(
    session: Session,
    station: Station,
    rules: Rules,
    targets: list[str],
    now: datetime,
    update_every: float = 120.0,
) -> list[Alert]:
    """Check one station's rules at `now`; returns the alerts newly raised. Event rules' alerts
    with no breach for clear_after_seconds clear first (see SELF_CLEARING)."""
    quiet = now - timedelta(seconds=rules.clear_after_seconds)
    session.execute(
        update(Alert)
        .where(
            Alert.station_id == station.id,
            Alert.rule.not_in(SELF_CLEARING),
            Alert.cleared_at.is_(None),
            func.coalesce(Alert.last_seen_at, Alert.raised_at) < quiet,
        )
        .values(cleared_at=now)
    )
    session.commit()
    raised: list[Alert] = []
    for name, rule in RULES.items():
        for breach in rule(session, station, rules, now):
            alert = _raise(session, station, name, breach, targets, now, update_every)
            if alert is not None:
                raised.append(alert)
    return raised


def evaluate_all(session: Session, config: AndonConfig, now: datetime | None = None) -> list[Alert]:
    """Check every station's rules at `now`; returns the alerts newly raised. The drift series
    of all stations are read up front in one batch (watch_stations), not per station."""
    now = now or datetime.now(UTC)
    out: list[Alert] = []
    stations = session.scalars(select(Station).order_by(Station.id)).all()
    session.info[_WATCHED] = watch_stations(session, stations, lambda s: config.rules_for(s.name))
    try:
        for station in stations:
            rules = config.rules_for(station.name)
            out += evaluate_station(
                session, station, rules, config.targets(), now, config.update_interval_seconds
            )
    finally:
        session.info.pop(_WATCHED, None)
    return out


def alert_json(alert: Alert) -> dict:
    """The alert as webhooks, MQTT and the API see it: an update of a counted alert is the same
    id with a larger `count` and a later `last_seen_at`."""
    return {
        "id": alert.id,
        "station": alert.station.name,
        "rule": alert.rule,
        "breach": alert.breach,
        "message": alert.message,
        "value": alert.value,
        "limit": alert.limit,
        "state": alert.state,
        "raised_at": as_utc(alert.raised_at).isoformat(),
        "count": alert.occurrences,
        "last_seen_at": as_utc(alert.last_seen_at or alert.raised_at).isoformat(),
        "cleared_at": as_utc(alert.cleared_at).isoformat() if alert.cleared_at else None,
    }


def _post(client: httpx.Client, delivery: AlertDelivery, secret_env: str | None) -> tuple[bool, str]:
    """One attempt: the alert as JSON, signed afresh (a retry hours later is still fresh) when
    the target has a secret; a signed target whose secret is missing is not sent unsigned."""
    body = json.dumps({"alert": alert_json(delivery.alert)}, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", DELIVERY_HEADER: str(delivery.id)}
    if secret_env is not None:
        secret = os.environ.get(secret_env)
        if not secret:
            return False, f"no signing secret: ${secret_env} is not set"
        headers[SIGNATURE_HEADER] = sign(body, secret)
    try:
        answer = client.post(delivery.url, content=body, headers=headers, timeout=5)
    except Exception as exc:  # any failure is this delivery's, never the loop's
        return False, f"{type(exc).__name__}: {exc}"
    return answer.is_success, f"HTTP {answer.status_code}"


def _send(
    client: httpx.Client,
    delivery: AlertDelivery,
    secret_envs: Mapping[str, str],
    publisher: AlertPublisher | None,
) -> tuple[bool, str]:
    """One attempt at one delivery: to the broker for the mqtt:// target, else a webhook."""
    if publisher is not None and delivery.url == publisher.url:
        station = delivery.alert.station
        return publisher.publish(alert_json(delivery.alert), station.line.name if station.line else None)
    if delivery.url.startswith("mqtt://"):
        return False, f"the andon configuration has no MQTT broker {delivery.url} (any more)"
    return _post(client, delivery, secret_envs.get(delivery.url))


def deliver_due(
    session: Session,
    client: httpx.Client,
    now: datetime | None = None,
    secret_envs: Mapping[str, str] | None = None,
    publisher: AlertPublisher | None = None,
) -> int:
    """Send every due delivery once; failures wait 2, 4, 8... s (at most 5 min) and are retried
    up to MAX_ATTEMPTS times. `secret_envs` (AndonConfig.webhook_secret_envs) names the
    webhooks that are signed; `publisher` is the broker, when alerts go to MQTT too. Returns
    the number delivered."""
    now = now or datetime.now(UTC)
    secret_envs = secret_envs or {}
    due = session.scalars(
        select(AlertDelivery).where(
            AlertDelivery.delivered_at.is_(None),
            AlertDelivery.gave_up.is_(False),
            AlertDelivery.next_attempt_at <= now,
        )
    ).all()
    delivered = 0
    for delivery in due:
        delivery.attempts += 1
        ok, error = _send(client, delivery, secret_envs, publisher)
        if ok:
            delivery.delivered_at, delivery.last_error = now, None
            delivered += 1
        else:
            delivery.last_error = error[:500]
            delivery.next_attempt_at = now + timedelta(
                seconds=backoff_delay(delivery.attempts, 1.0, MAX_BACKOFF_SECONDS)
            )
            if delivery.attempts >= MAX_ATTEMPTS:
                delivery.gave_up = True
                log.error(
                    "andon delivery to %s gave up after %d attempts: %s",
                    delivery.url,
                    delivery.attempts,
                    error,
                )
        session.commit()
    return delivered


class AndonWorker:
    """The record service's background loop: evaluate every station's rules, deliver each alert
    to the webhooks and the MQTT broker."""

    def __init__(self, sessions: sessionmaker, config: AndonConfig):
        self.sessions = sessions
        self.config = config
        self.publisher = AlertPublisher(config.mqtt) if config.mqtt else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="andon", daemon=True)

    def start(self) -> None:
        if self.publisher:
            self.publisher.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop (also before it started: then it never runs)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self.publisher:
            self.publisher.stop()

    def run_once(self, client: httpx.Client) -> None:
        with self.sessions() as session:
            evaluate_all(session, self.config)
            deliver_due(
                session, client, secret_envs=self.config.webhook_secret_envs(), publisher=self.publisher
            )

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                try:
                    self.run_once(client)
                except Exception:  # the loop must outlive a bad evaluation
                    log.exception("andon evaluation failed")
                self._stop.wait(self.config.interval_seconds)
