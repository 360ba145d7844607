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


class Forwarder:
    """A background thread: deliver due results; 2xx marks delivered, a 4xx refusing the content
    parks it as dead, anything else (down, 5xx, timeout, RETRIED_4XX) retries with backoff."""

    def __init__(
        self,
        outbox: Outbox,
        record_url: str,
        api_key: str | None,
        max_backoff: float = 30.0,
        metrics: EdgeMetrics | None = None,
    ):
        self.outbox = outbox
        self.base = record_url.rstrip("/")
        self.url = self.base + "/v1/inspections"
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
        """Try every due result once; returns how many were delivered."""
        sent = 0
        for key, payload, attempts in self.outbox.due():
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
                if self.metrics:
                    self.metrics.refused.labels(str(response.status_code)).inc()
                log.error(
                    "ALERT: the record refused part %s (serial %r) with %s, parked as dead: %s",
                    key,
                    payload.get("serial"),
                    response.status_code,
                    response.text[:300],
                )
            else:
                # 5xx, or a key problem an operator can fix: keep retrying, never drop.
                self.record_up = response.status_code < 500
                self.outbox.retry(key, backoff_delay(attempts, 0.25, self.max_backoff))
                log.warning("record answered %s for %s; retrying", response.status_code, key)
        return sent

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
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                sent = self.flush_once(client) + self.flush_links(client)
                if not sent:
                    self.outbox.wakeup.wait(0.5)
                    self.outbox.wakeup.clear()
