"""Re-scoring the record's archived images with another bundle: what would change if it judged.

A challenger is trusted only after it has seen the parts the line has seen. The record keeps
the image of every flagged part and of the sampled passes, with the line's verdict and, for
reviewed parts, the truth. This module reads those parts in a time window, scores their
stored images with a bundle through the one inference path (`Engine.predict`, the station's
decoder and heads), and compares:

- escapes it would have caught: parts the line passed that a reviewer found defective, which
  the bundle rejects; and the escapes it would still miss;
- new false rejects: parts reviewed good that the line passed and the bundle rejects (a
  reviewed false reject it still rejects is kept, one it passes is fixed);
- new escapes: confirmed defects the line rejected and the bundle passes;
- disagreements with the line by station and by class, reviewed or not.

The local engine runs here (`rescore_local`); `zerodefect.quality.rescore_ray` runs the same
`score_parts` in Ray Data actors. A part whose image cannot be read or decoded is counted
with its reason, never a crash. Parts judged by the fail-safe (no model saw them) are left
out: there is no model verdict to compare with.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from zerodefect.inference.bundle import BundleMeta
from zerodefect.inference.engine import Engine
from zerodefect.inference.imagecheck import MAX_PIXELS, InputError, decode_checked
from zerodefect.inference.registry import resolve_alias
from zerodefect.inference.source import fetch_bundle
from zerodefect.quality.images import TYPES, ImageStore
from zerodefect.quality.models import Defect, Inspection, Line, Station
from zerodefect.quality.store import as_utc

# Part ids listed in the report per finding, so a reviewer can open them; counts are complete.
MAX_IDS = 1000
# Review decisions that say the part is good, and those that say it is defective.
REVIEWED_GOOD = ("good", "false_reject")
REVIEWED_DEFECTIVE = ("confirmed", "escape")


@dataclass(frozen=True)
class ArchivedPart:
    """A recorded part with a stored image: the line's verdict and, if reviewed, the truth."""

    id: int
    station: str
    line: str | None
    verdict: str
    defect_class: str | None
    review: str | None
    review_label: str | None
    path: str


@dataclass(frozen=True)
class Rescored:
    """The bundle's verdict on one part, or why it has none (`error`)."""

    id: int
    verdict: str | None
    score: float | None = None
    defect_class: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Source:
    """What to load: a bundle folder, or `models:/NAME/VERSION` with an alias pinned to its
    version once, so every worker of a run loads the same version even if the alias moves."""

    uri: str
    source: str
    name: str | None
    version: str | None


def pin(uri: str) -> Source:
    """Pin `models:/NAME@ALIAS` to its version now (the station's rule); other URIs as given."""
    pinned = resolve_alias(uri)
    if pinned is None:
        return Source(uri, uri, None, None)
    name, version = pinned
    return Source(uri, f"models:/{name}/{version}", name, version)


def load_engine(source: str, threads: int | None = None, cache_dir: Path | None = None) -> Engine:
    """An engine on a bundle folder or a registry URI (downloaded into `cache_dir`); the
    bundle's sha256 is checked on load, as everywhere."""
    if cache_dir is None:
        from zerodefect.settings import get_settings

        cache_dir = get_settings().data_dir / "registry-cache"
    return Engine.from_bundle(fetch_bundle(source, cache_dir), threads)


def archived_parts(
    session: Session,
    images: ImageStore,
    since: datetime | None = None,
    until: datetime | None = None,
    station: str | None = None,
) -> tuple[list[ArchivedPart], dict[str, int]]:
    """The window's parts that have a stored image, oldest first, and the counts of the parts
    left out, by reason. Columns only (no ORM objects): a window can hold millions."""
    first_defect = (
        select(Defect.class_name)
        .where(Defect.inspection_id == Inspection.id)
        .order_by(Defect.id)
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(
            Inspection.id,
            Station.name,
            Line.name,
            Inspection.verdict,
            first_defect,
            Inspection.review_status,
            Inspection.review_label,
            Inspection.image_path,
            Inspection.failsafe,
        )
        .join(Station, Inspection.station_id == Station.id)
        .outerjoin(Line, Station.line_id == Line.id)
        .order_by(Inspection.captured_at, Inspection.id)
    )
    if since:
        query = query.where(Inspection.captured_at >= as_utc(since))
    if until:
        query = query.where(Inspection.captured_at < as_utc(until))
    if station:
        query = query.where(Station.name == station)
    parts, skipped = [], Counter()
    for row in session.execute(query).yield_per(10_000):
        part_id, station_name, line, verdict, cls, review, label, image_path, failsafe = row
        if failsafe:
            skipped["fail-safe verdict (no model judged it)"] += 1
        elif not image_path:
            skipped["no stored image"] += 1
        else:
            path = str(images.root / image_path)
            parts.append(ArchivedPart(part_id, station_name, line, verdict, cls, review, label, path))
    return parts, dict(skipped)


def score_parts(
    engine: Engine, parts: Sequence[tuple[int, str]], max_pixels: int = MAX_PIXELS
) -> list[Rescored]:
    """Judge stored images (id, path) with the bundle: the station's checked decoder, then
    `Engine.predict`. The one scoring path of both engines."""
    decoded, ids, out = [], [], {}
    for part_id, path in parts:
        file = Path(path)
        try:
            data = file.read_bytes()
            rgb, _ = decode_checked(data, TYPES.get(file.suffix.lstrip(".")), None, max_pixels)
        except OSError as exc:
            out[part_id] = Rescored(part_id, None, error=f"cannot read the stored image ({exc.strerror})")
            continue
        except InputError as exc:
            out[part_id] = Rescored(part_id, None, error=f"stored image refused: {exc.reason}")
            continue
        decoded.append(rgb)
        ids.append(part_id)
    for part_id, result in zip(ids, engine.predict(decoded), strict=True):
        out[part_id] = Rescored(part_id, result.verdict, result.score, result.defect_class)
    return [out[part_id] for part_id, _ in parts]


def rescore_local(
    source: str,
    parts: Sequence[ArchivedPart],
    threads: int | None = None,
    chunk: int = 256,
    max_pixels: int = MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Rescored], BundleMeta]:
    """Score every part in this process, `chunk` images in memory at a time."""
    engine = load_engine(source, threads)
    results: list[Rescored] = []
    for start in range(0, len(parts), chunk):
        batch = parts[start : start + chunk]
        results += score_parts(engine, [(p.id, p.path) for p in batch], max_pixels)
        if progress:
            progress(len(batch))
    return results, engine.meta


@dataclass
class Tally:
    """Counts of one group of parts (a station, a class)."""

    parts: int = 0
    disagree: int = 0
    newly_rejected: int = 0
    newly_passed: int = 0


@dataclass
class RescoreReport:
    """What would change if the bundle had judged the window's archived parts."""

    model: dict[str, Any]
    window: dict[str, Any]
    engine: dict[str, Any]
    parts: int
    unscored: dict[str, int]
    seconds: float
    parts_per_s: float
    agree: int
    disagree: int
    newly_rejected: int
    newly_passed: int
    # Reviewed escapes (passed, found defective): caught by the bundle, or still missed.
    escapes_reviewed: int
    escapes_caught: int
    escapes_still_missed: int
    # Parts reviewed good: the line passed them and the bundle rejects them (new), or the line
    # rejected them too (kept), or the bundle passes a reviewed false reject (fixed).
    reviewed_good: int
    false_rejects_new: int
    false_rejects_kept: int
    false_rejects_fixed: int
    # Confirmed defects (the line rejected them) that the bundle passes.
    confirmed_defects: int
    new_escapes: int
    by_station: dict[str, Tally] = field(default_factory=dict)
    by_class: dict[str, Tally] = field(default_factory=dict)
    ids: dict[str, list[int]] = field(default_factory=dict)

    @property
    def reviewed_errors(self) -> tuple[int, int]:
        """(the bundle's, the line's) wrong verdicts on the same reviewed parts: escapes and
        false rejects against the reviews. What the promotion gate weighs."""
        bundle = (
            self.escapes_still_missed + self.new_escapes + self.false_rejects_new + self.false_rejects_kept
        )
        line = self.escapes_reviewed + self.false_rejects_kept + self.false_rejects_fixed
        return bundle, line

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reviewed_errors"] = dict(zip(("bundle", "line"), self.reviewed_errors, strict=True))
        return out


def compare(
    parts: Sequence[ArchivedPart],
    rescored: Sequence[Rescored],
    *,
    model: dict[str, Any],
    window: dict[str, Any],
    engine: dict[str, Any],
    seconds: float,
    skipped: dict[str, int] | None = None,
) -> RescoreReport:
    """The report: the bundle's verdicts against the line's and the reviews (module docstring)."""
    found = {r.id: r for r in rescored}
    unscored: Counter[str] = Counter(skipped or {})
    counts: Counter[str] = Counter()
    ids: dict[str, list[int]] = defaultdict(list)
    by_station: dict[str, Tally] = defaultdict(Tally)
    by_class: dict[str, Tally] = defaultdict(Tally)
    for part in parts:
        new = found.get(part.id)
        if new is None or new.verdict is None:
            unscored[new.error if new and new.error else "not scored"] += 1
            continue
        counts["parts"] += 1
        flip = {("pass", "reject"): "newly_rejected", ("reject", "pass"): "newly_passed"}.get(
            (part.verdict, new.verdict)
        )
        part_class = part.review_label or part.defect_class or new.defect_class or "(none)"
        for tally in (by_station[part.station], by_class[part_class]):
            tally.parts += 1
            if flip:
                tally.disagree += 1
                setattr(tally, flip, getattr(tally, flip) + 1)
        counts[flip or "agree"] += 1
        if flip and len(ids[flip]) < MAX_IDS:
            ids[flip].append(part.id)
        finding = _finding(part, new.verdict)
        if finding:
            counts[finding] += 1
            if len(ids[finding]) < MAX_IDS:
                ids[finding].append(part.id)
        review = part.review
        counts["escapes_reviewed"] += review == "escape"
        counts["reviewed_good"] += review in REVIEWED_GOOD
        counts["confirmed_defects"] += review == "confirmed"
    scored = counts["parts"]
    return RescoreReport(
        model=model,
        window=window,
        engine=engine,
        parts=scored,
        unscored=dict(unscored),
        seconds=round(seconds, 3),
        parts_per_s=round(scored / seconds, 1) if seconds > 0 else 0.0,
        agree=counts["agree"],
        disagree=counts["newly_rejected"] + counts["newly_passed"],
        newly_rejected=counts["newly_rejected"],
        newly_passed=counts["newly_passed"],
        escapes_reviewed=counts["escapes_reviewed"],
        escapes_caught=counts["escapes_caught"],
        escapes_still_missed=counts["escapes_still_missed"],
        reviewed_good=counts["reviewed_good"],
        false_rejects_new=counts["false_rejects_new"],
        false_rejects_kept=counts["false_rejects_kept"],
        false_rejects_fixed=counts["false_rejects_fixed"],
        confirmed_defects=counts["confirmed_defects"],
        new_escapes=counts["new_escapes"],
        by_station=dict(sorted(by_station.items())),
        by_class=dict(sorted(by_class.items())),
        ids=dict(ids),
    )


def _finding(part: ArchivedPart, verdict: str) -> str | None:
    """What the bundle's verdict on a reviewed part means, by its review (None: unreviewed,
    or nothing changes for the worse or better)."""
    return {
        ("escape", "reject"): "escapes_caught",
        ("escape", "pass"): "escapes_still_missed",
        ("good", "reject"): "false_rejects_new",
        ("false_reject", "reject"): "false_rejects_kept",
        ("false_reject", "pass"): "false_rejects_fixed",
        ("confirmed", "pass"): "new_escapes",
    }.get((part.review or "", verdict))


def read_report(path: Path) -> dict[str, Any]:
    """A report written by `zerodefect rescore --out`; ValueError naming the file otherwise."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable re-score report ({exc})") from None
    needed = ("model", "parts", "reviewed_errors", "escapes_caught", "false_rejects_new", "new_escapes")
    if not isinstance(data, dict) or any(k not in data for k in needed):
        raise ValueError(f"{path}: not a re-score report (it needs {', '.join(needed)})")
    return data
