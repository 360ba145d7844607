"""Shadow mode: a challenger scores each part beside the serving model, and only the record hears it.

The line's verdict is answered, in the outbox and on its way to the PLC before the part is
handed here, so the challenger can never delay or change it. The challenger has its own
ModelHolder (it follows its alias, e.g. `models:/NAME@challenger`, signature checks and all)
and its own MicroBatcher, the station's one scoring path. Its verdicts go to the record's
POST /v1/shadow-verdicts in batches, retried while the record is away.

What it costs: one more inference per part, on one core, at the lowest CPU priority (nice 19)
so the serving model comes first. What it may lose: parts that
arrive while the challenger is `queue_size` parts behind, and verdicts not yet delivered when
the station stops or more than `max_pending` wait for the record; all counted in
zd_shadow_dropped_total. Evidence for a promotion, not a record of the line: a lost shadow
verdict loses a comparison, never a part.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future

import httpx
import numpy as np
from prometheus_client import CollectorRegistry, Counter

from zerodefect.backoff import backoff_delay
from zerodefect.edge.batcher import MicroBatcher, Scored
from zerodefect.edge.model import ModelHolder
from zerodefect.inference.wire import ShadowVerdictIn

log = logging.getLogger(__name__)

SEND_BATCH = 500  # the record's limit per request (ShadowBatchIn)


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
        self._pending: deque[dict] = deque()
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
                self._pending.append(verdict.model_dump(mode="json"))
                if len(self._pending) > self.max_pending:
                    self._pending.popleft()
                    self.dropped.labels("record_away").inc()
            try:
                item = self._scoring.get_nowait()
            except queue.Empty:
                item = None

    def _send(self, client: httpx.Client) -> bool:
        """Post the pending verdicts in batches; False when the record did not take them."""
        while self._pending:
            batch = [self._pending[i] for i in range(min(SEND_BATCH, len(self._pending)))]
            try:
                response = client.post(self.url, json={"items": batch}, headers=self.headers)
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
            for _ in batch:
                self._pending.popleft()
        return True

    def _run(self) -> None:
        attempts, next_try = 0, 0.0
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                self._collect(timeout=0.2)
                if self._pending and time.monotonic() >= next_try:
                    if self._send(client):
                        attempts = 0
                    else:
                        attempts += 1
                        next_try = time.monotonic() + backoff_delay(attempts, 0.25, self.max_backoff)
            self.dropped.labels("stopped").inc(len(self._pending) + self._scoring.qsize())
