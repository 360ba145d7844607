"""A line simulator: plays a folder or a manifest split to a station at N parts per minute.

It posts each image as a camera would (multipart, serial, frame id) and, when the images carry
labels, tallies what the line would have done: escapes and false rejects as observed.
"""

from __future__ import annotations

import mimetypes
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Part:
    path: Path
    serial: str
    defective: bool | None = None


@dataclass
class LineTally:
    verdicts: Counter = field(default_factory=Counter)
    escapes: int = 0
    false_rejects: int = 0
    defective: int = 0
    good: int = 0
    failsafe: int = 0
    errors: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, part: Part, response: dict) -> None:
        self.verdicts[response["verdict"]] += 1
        self.failsafe += bool(response["failsafe"])
        self.versions[response["model_version"]] += 1
        self.latencies_ms.append(response["latency_ms"])
        if part.defective is None:
            return
        if part.defective:
            self.defective += 1
            self.escapes += response["verdict"] == "pass"
        else:
            self.good += 1
            self.false_rejects += response["verdict"] == "reject"

    @property
    def escape_rate(self) -> float | None:
        return self.escapes / self.defective if self.defective else None

    @property
    def false_reject_rate(self) -> float | None:
        return self.false_rejects / self.good if self.good else None


def parts_from_folder(folder: Path) -> list[Part]:
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return [Part(p, f"SIM-{i:06d}") for i, p in enumerate(images)]


def parts_from_manifest(manifest_path: Path, split: str) -> list[Part]:
    from zerodefect.datasets.manifest import Manifest

    manifest = Manifest.read(manifest_path)
    return [
        Part(manifest.resolve(s), f"SIM-{i:06d}", manifest.is_defective(s))
        for i, s in enumerate(manifest.split(split))
    ]


def play(
    parts: Iterable[Part],
    url: str,
    api_key: str,
    station: str,
    per_minute: float | None = None,
    cameras: int = 1,
    batch: str = "SIM",
    on_part: Callable[[Part, dict], None] | None = None,
) -> LineTally:
    """Post parts to `url` (the edge service) from `cameras` concurrent cameras.

    With per_minute, parts are released on the line's clock (no faster than that rate).
    """
    tally = LineTally()
    parts = list(parts)
    interval = 60.0 / per_minute if per_minute else 0.0
    start = time.perf_counter()

    def send(args: tuple[int, Part]) -> None:
        i, part = args
        if interval:
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # the line's clock, not a test wait
        kind = mimetypes.guess_type(part.path.name)[0] or "application/octet-stream"
        files = {"image": (part.path.name, part.path.read_bytes(), kind)}
        data = {
            "serial": part.serial,
            "station": station,
            "batch": batch,
            "camera": f"cam{i % cameras}",
            "frame_id": f"{batch}-{i}",
        }
        response = client.post(f"{url}/v1/inspect", files=files, data=data, headers={"X-API-Key": api_key})
        if response.status_code != 200:
            tally.errors[f"{response.status_code}: {response.json().get('detail')}"] += 1
            return
        body = response.json()
        tally.add(part, body)
        if on_part:
            on_part(part, body)

    with httpx.Client(timeout=30.0) as client, ThreadPoolExecutor(cameras) as pool:
        list(pool.map(send, enumerate(parts)))
    return tally
