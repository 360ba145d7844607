"""Ships outbox results to the quality record, retrying with backoff while it is down, and the
state of the station's links to the line (PLC, MQTT broker) for the record's andon."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import httpx

from zerodefect.backoff import backoff_delay
from zerodefect.edge.metrics import EdgeMetrics
from zerodefect.edge.outbox import Outbox
from zerodefect.inference.wire import CONTROL, LinkStateIn

log = logging.getLogger(__name__)

# 4xx answers that say nothing about the part, so it is retried until an operator fixes the
# cause: a missing or revoked key (401, 403), a record_url that points at the wrong service
# (404, 405: the record never answers them to a well-addressed POST /v1/inspections), a timeout
# (408) or throttling (429). Every other 4xx is the record refusing this part's content, which
# no retry can change: the part goes to the dead state at once, kept in the outbox, counted in
# /metrics (zd_outbox_dead, zd_record_refusals_total) and /readyz, and logged at ERROR.
RETRIED_4XX = frozenset({401, 403, 404, 405, 408, 429})


# A batch request carries at most about this much JSON (images are base64 in it); a single
# result bigger than this still goes, alone (the record takes 16 MiB per request).
BATCH_BYTES = 8 * 1024 * 1024


def _weight(payload: dict) -> int:
    """A result's rough size on the wire: its image and heatmap, plus its other fields."""
    return 1024 + len(payload.get("image_b64") or "") + len(payload.get("heatmap_b64") or "")


class Forwarder:
    """A background thread: deliver due results; 2xx marks delivered, a 4xx refusing the content
    parks it as dead, anything else (down, 5xx, timeout, RETRIED_4XX) retries with backoff.

    Results go in batches of up to `batch_size` (POST /v1/inspections/batch, one transaction at
    the record), after waiting up to `batch_wait_ms` for a batch to fill; each item's own outcome
    settles it, so a refused part is parked dead alone. `batch_size=1` posts each result to
    POST /v1/inspections, as does a record that has no batch endpoint (it answers 404 or 405)."""

    def __init__(
        self,
        outbox: Outbox,
        record_url: str,
        api_key: str | None,
        max_backoff: float = 30.0,
        metrics: EdgeMetrics | None = None,
        batch_size: int = 200,
        batch_wait_ms: float = 50.0,
    ):
        self.outbox = outbox
        self.base = record_url.rstrip("/")
        self.url = self.base + "/v1/inspections"
        self.batch_url = self.base + "/v1/inspections/batch"
        self.batch_size = batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.headers = {"X-API-Key": api_key or ""}
        self.max_backoff = max_backoff
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self.record_up = False
        # Each link's latest state not yet acknowledged by the record (only the latest matters:
        # a link that went down and came back while the record was away is reported up).
        self._links: dict[str, dict] = {}
        self._links_lock = threading.Lock()
        self._links_attempts = 0
        self._links_next_try = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.outbox.wakeup.set()
        self._thread.join(10)

    def flush_once(self, client: httpx.Client) -> int:
        """Try every due result (up to one batch) once; returns how many were delivered."""
        due = self.outbox.due(self.batch_size)
        if self.batch_size == 1:
            return self._post_each(client, due)
        sent = 0
        for chunk in _chunks(due):
            delivered = self._post_batch(client, chunk)
            if delivered is None:  # the record is away: the rest waits for the back-off too
                self.outbox.settle(
                    retried=[
                        (key, backoff_delay(attempts, 0.25, self.max_backoff)) for key, _, attempts in chunk
                    ]
                )
                break
            sent += delivered
        return sent

    def _post_batch(self, client: httpx.Client, chunk: list[tuple[str, dict, int]]) -> int | None:
        """Post one batch and settle each result by its own outcome; None if the record did not
        take the batch (down, 5xx, RETRIED_4XX): the caller retries it all later."""
        try:
            response = client.post(
                self.batch_url, json={"items": [p for _, p, _ in chunk]}, headers=self.headers
            )
        except httpx.HTTPError as exc:
            self.record_up = False
            log.debug("record unreachable (%s); %d results retried later", exc, len(chunk))
            return None
        status = response.status_code
        if status in (404, 405):
            log.warning(
                "the record at %s has no batch endpoint (%s): posting one result per request",
                self.base,
                status,
            )
            self.batch_size = 1
            return self._post_each(client, chunk)
        if 400 <= status < 500 and status not in RETRIED_4XX:
            # The batch as a whole was refused (too big, not JSON): each result alone, so the
            # one at fault is parked dead and its neighbours are stored.
            log.warning("the record refused a batch of %d (%s); posting them one by one", len(chunk), status)
            return self._post_each(client, chunk)
        outcomes = None
        if status == 200:
            try:
                outcomes = response.json().get("items")
            except (ValueError, AttributeError):
                outcomes = None
        if not isinstance(outcomes, list) or len(outcomes) != len(chunk):
            self.record_up = status < 500
            log.warning("record answered %s to a batch of %d; retrying", status, len(chunk))
            return None
        self.record_up = True
        delivered, retried, dead = [], [], []
        for (key, payload, attempts), outcome in zip(chunk, outcomes, strict=True):
            code = outcome.get("status") if isinstance(outcome, dict) else None
            if code in (200, 201):
                delivered.append(key)
            elif isinstance(code, int) and 400 <= code < 500 and code not in RETRIED_4XX:
                dead.append((key, f"{code}: {outcome.get('detail')}"))
                self._refused(key, payload, code, str(outcome.get("detail")))
            else:
                retried.append((key, backoff_delay(attempts, 0.25, self.max_backoff)))
        self.outbox.settle(delivered, retried, dead)
        return len(delivered)

    def _post_each(self, client: httpx.Client, due: list[tuple[str, dict, int]]) -> int:
        """One result per request (POST /v1/inspections); returns how many were delivered."""
        sent = 0
        for key, payload, attempts in due:
            try:
                response = client.post(self.url, json=payload, headers=self.headers)
            except httpx.HTTPError as exc:
                self.record_up = False
                self.outbox.retry(key, backoff_delay(attempts, 0.25, self.max_backoff))
                log.debug("record unreachable (%s); %s retried later", exc, key)
                break
            if response.status_code in (200, 201):
                self.outbox.delivered(key)
                self.record_up = True
                sent += 1
            elif 400 <= response.status_code < 500 and response.status_code not in RETRIED_4XX:
                self.outbox.dead(key, f"{response.status_code}: {response.text}")
                self.record_up = True
                self._refused(key, payload, response.status_code, response.text)
            else:
                # 5xx, or a key problem an operator can fix: keep retrying, never drop.
                self.record_up = response.status_code < 500
                self.outbox.retry(key, backoff_delay(attempts, 0.25, self.max_backoff))
                log.warning("record answered %s for %s; retrying", response.status_code, key)
        return sent

    def _refused(self, key: str, payload: dict, status: int, reason: str) -> None:
        if self.metrics:
            self.metrics.refused.labels(str(status)).inc()
        log.error(
            "ALERT: the record refused part %s (serial %r) with %s, parked as dead: %s",
            key,
            payload.get("serial"),
            status,
            reason[:300],
        )

    def _fill(self) -> None:
        """Wait up to batch_wait for a batch to fill, once a result is due: fewer, fuller requests
        without holding a lone part longer than that."""
        if self.batch_size == 1 or self.batch_wait <= 0:
            return
        deadline = time.monotonic() + self.batch_wait
        count = self.outbox.due_count(self.batch_size)
        while 0 < count < self.batch_size and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.outbox.wakeup.wait(left)
            self.outbox.wakeup.clear()
            count = self.outbox.due_count(self.batch_size)

    def report_link(self, link: str, up: bool, detail: str = "") -> None:
        """A link's new state, from any thread (the PLC's event loop, paho's); never waits."""
        report = LinkStateIn(
            link=link, up=up, since=datetime.now(UTC), detail=CONTROL.sub(" ", detail)[:300]
        ).model_dump(mode="json")
        with self._links_lock:
            self._links[link] = report
            self._links_next_try = 0.0
        self.outbox.wakeup.set()

    def flush_links(self, client: httpx.Client) -> int:
        """Report each changed link (PUT /v1/links/{link}); returns how many the record took.
        While the record is away, retried with back-off like a part."""
        if time.monotonic() < self._links_next_try:
            return 0
        with self._links_lock:
            pending = list(self._links.items())
        done = 0
        for link, report in pending:
            try:
                response = client.put(f"{self.base}/v1/links/{link}", json=report, headers=self.headers)
            except httpx.HTTPError:
                response = None
            refused = response is not None and 400 <= response.status_code < 500
            if response is not None and (
                response.is_success or refused and response.status_code not in RETRIED_4XX
            ):
                if refused:
                    log.error("the record refused the %s link report: %s", link, response.text[:300])
                with self._links_lock:
                    if self._links.get(link) is report:  # not replaced by a newer state meanwhile
                        del self._links[link]
                done += 1
                continue
            self._links_attempts += 1
            self._links_next_try = time.monotonic() + backoff_delay(
                self._links_attempts, 0.25, self.max_backoff
            )
            return done
        self._links_attempts = 0
        return done

    def _run(self) -> None:
        with httpx.Client(timeout=30.0) as client:
            while not self._stop.is_set():
                self._fill()
                sent = self.flush_once(client) + self.flush_links(client)
                if not sent:
                    self.outbox.wakeup.wait(0.5)
                    self.outbox.wakeup.clear()


def _chunks(due: list[tuple[str, dict, int]]) -> list[list[tuple[str, dict, int]]]:
    """`due` in order, cut so that no request carries much over BATCH_BYTES."""
    chunks: list[list[tuple[str, dict, int]]] = []
    size = BATCH_BYTES
    for item in due:
        weight = _weight(item[1])
        if size + weight > BATCH_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += weight
    return chunks
