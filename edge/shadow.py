"""Shadow mode: a challenger scores each part beside the serving model, and only the record hears it.

The line's verdict is answered, in the outbox and on its way to the PLC before the part is
handed here, so the challenger can never delay or change it. The challenger has its own
ModelHolder (it follows its alias, e.g. `models:/NAME@challenger`, signature checks and all)
and its own MicroBatcher, the station's one scoring path. Its verdicts go to the record's
POST /v1/shadow-verdicts in batches, retried while the record is away.

What it costs: one more inference per part, on one core, at the lowest CPU priority (nice 19)
so the serving model comes first. Verdicts waiting for the record are kept in a small SQLite
file beside the outbox (`PendingVerdicts`), so a station stopped or restarted while the record
is away still delivers them. What it may lose: parts that arrive while the challenger is
`queue_size` parts behind, parts still being scored when the station stops, and the oldest
verdicts when more than `max_pending` wait; all counted in zd_shadow_dropped_total. Evidence
for a promotion, not a record of the line: a lost shadow verdict loses a comparison, never a part.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
from prometheus_client import CollectorRegistry, Counter

from zerodefect.backoff import backoff_delay
from zerodefect.edge.batcher import MicroBatcher, Scored
from zerodefect.edge.model import ModelHolder
from zerodefect.inference.wire import ShadowVerdictIn

log = logging.getLogger(__name__)

SEND_BATCH = 500  # the record's limit per request (ShadowBatchIn)


class PendingVerdicts:
    """Shadow verdicts not yet taken by the record, oldest first, in a SQLite file of their own.

    Why not the outbox: the outbox holds the line's results under its durability rule (one
    fsync before the answer); a shadow verdict is evidence, not a part, so it is written without
    an fsync of its own (WAL, synchronous=NORMAL: it survives the process stopping, and at worst
    the last moments are lost on a power cut), and the two never queue behind each other."""

    def __init__(self, path: Path | None, cap: int):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.cap = cap
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path) if path else ":memory:", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)"
        )

    def add(self, items: list[dict]) -> int:
        """Keep `items`; returns how many of the oldest were dropped to stay within the cap."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO pending (body) VALUES (?)", [(json.dumps(i),) for i in items])
            over = self._db.execute("SELECT count(*) FROM pending").fetchone()[0] - self.cap
            if over > 0:
                self._db.execute(
                    "DELETE FROM pending WHERE id IN (SELECT id FROM pending ORDER BY id LIMIT ?)", (over,)
                )
            self._db.execute("COMMIT")
        return max(over, 0)

    def head(self, n: int) -> list[tuple[int, dict]]:
        with self._lock:
            rows = self._db.execute("SELECT id, body FROM pending ORDER BY id LIMIT ?", (n,)).fetchall()
        return [(row_id, json.loads(body)) for row_id, body in rows]

    def remove_through(self, row_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE id <= ?", (row_id,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM pending").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ShadowScorer:
    def __init__(
        self,
        holder: ModelHolder,
        record_url: str,
        api_key: str | None,
        registry: CollectorRegistry,
        queue_size: int = 64,
        max_pending: int = 10_000,
        max_backoff: float = 30.0,
        pending_path: Path | None = None,
    ):
        self.holder = holder
        self.url = record_url.rstrip("/") + "/v1/shadow-verdicts"
        self.headers = {"X-API-Key": api_key or ""}
        self.queue_size = queue_size
        self.max_pending = max_pending
        self.max_backoff = max_backoff
        # Niced, with a one-thread engine (start_shadow): ONNX Runtime then computes in this
        # thread alone, and the line's model takes the CPU whenever it needs it.
        self.batcher = MicroBatcher(holder, max_batch=8, wait_ms=0.0, nice=19)
        self._scoring: queue.Queue[tuple[str, str, Future]] = queue.Queue()
        self._pending = PendingVerdicts(pending_path, max_pending)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self.verdicts = Counter(
            "zd_shadow_verdicts",
            "Challenger verdicts in shadow mode, by agreement with the line's verdict",
            ["agrees"],
            registry=registry,
        )
        self.dropped = Counter(
            "zd_shadow_dropped",
            "Parts without a shadow verdict at the record, by reason",
            ["reason"],
            registry=registry,
        )
        self.delivered = 0

    def start(self) -> None:
        self.batcher.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.batcher.stop()
        self._pending.close()

    def submit(self, image: np.ndarray, key: str, verdict: str) -> None:
        """Queue a part the line has its verdict for; never waits. Dropped when the challenger
        is `queue_size` parts behind: the line's pace is not the challenger's to set."""
        if self._scoring.qsize() >= self.queue_size:
            self.dropped.labels("busy").inc()
            return
        self._scoring.put((key, verdict, self.batcher.submit(image)))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _collect(self, timeout: float) -> None:
        """Move scored parts into the pending verdicts (waits up to `timeout` for the first)."""
        try:
            item = self._scoring.get(timeout=timeout)
        except queue.Empty:
            return
        scored_verdicts: list[dict] = []
        while item is not None:
            key, line_verdict, future = item
            try:
                scored: Scored = future.result(timeout=60)
            except Exception as exc:  # a challenger that fails costs its verdicts, never the line
                self.dropped.labels("error").inc()
                log.warning("shadow model failed on part %s: %s", key, exc)
            else:
                verdict = ShadowVerdictIn(
                    key=key,
                    model_name=scored.model.name,
                    model_version=scored.model.version,
                    verdict=scored.result.verdict,
                    score=scored.result.score,
                    defect_class=scored.result.defect_class,
                )
                self.verdicts.labels(str(verdict.verdict == line_verdict).lower()).inc()
                scored_verdicts.append(verdict.model_dump(mode="json"))
            try:
                item = self._scoring.get_nowait()
            except queue.Empty:
                item = None
        if scored_verdicts:
            dropped = self._pending.add(scored_verdicts)
            if dropped:
                self.dropped.labels("record_away").inc(dropped)

    def _send(self, client: httpx.Client) -> bool:
        """Post the pending verdicts in batches; False when the record did not take them."""
        while batch := self._pending.head(SEND_BATCH):
            try:
                response = client.post(self.url, json={"items": [b for _, b in batch]}, headers=self.headers)
            except httpx.HTTPError as exc:
                log.debug("record unreachable for shadow verdicts: %s", exc)
                return False
            if response.status_code >= 500 or response.status_code in (401, 403, 404, 408, 429):
                log.warning("record answered %s to shadow verdicts; retrying", response.status_code)
                return False
            if response.status_code >= 400:  # refused content: no retry can change it
                self.dropped.labels("refused").inc(len(batch))
                log.error("the record refused %d shadow verdicts: %s", len(batch), response.text[:300])
            else:
                self.delivered += len(batch)
            self._pending.remove_through(batch[-1][0])
        return True

    def _run(self) -> None:
        attempts, next_try = 0, 0.0
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                self._collect(timeout=0.2)
                if time.monotonic() >= next_try and len(self._pending):
                    if self._send(client):
                        attempts = 0
                    else:
                        attempts += 1
                        next_try = time.monotonic() + backoff_delay(attempts, 0.25, self.max_backoff)
            # Pending verdicts stay in their file for the next start; parts still being scored go.
            self.dropped.labels("stopped").inc(self._scoring.qsize())
