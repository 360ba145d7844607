"""Ships outbox results to the quality record, retrying with backoff while it is down."""

from __future__ import annotations

import logging
import threading

import httpx

from zerodefect.edge.outbox import Outbox

log = logging.getLogger(__name__)


class Forwarder:
    """A background thread: deliver due results; 2xx marks delivered, a 4xx (the record refuses
    the content) parks it as dead, anything else (down, 5xx, timeout) retries with backoff."""

    def __init__(self, outbox: Outbox, record_url: str, api_key: str | None, max_backoff: float = 30.0):
        self.outbox = outbox
        self.url = record_url.rstrip("/") + "/v1/inspections"
        self.headers = {"X-API-Key": api_key or ""}
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self.record_up = False

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
                self.outbox.retry(key, min(self.max_backoff, 0.25 * 2**attempts))
                log.debug("record unreachable (%s); %s retried later", exc, key)
                break
            if response.status_code in (200, 201):
                self.outbox.delivered(key)
                self.record_up = True
                sent += 1
            elif 400 <= response.status_code < 500 and response.status_code not in (401, 403, 408, 429):
                self.outbox.dead(key, f"{response.status_code}: {response.text}")
                log.error("record refused %s: %s %s", key, response.status_code, response.text[:200])
            else:
                # 5xx, or a key problem an operator can fix: keep retrying, never drop.
                self.record_up = response.status_code < 500
                self.outbox.retry(key, min(self.max_backoff, 0.25 * 2**attempts))
                log.warning("record answered %s for %s; retrying", response.status_code, key)
        return sent

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                sent = self.flush_once(client)
                if not sent:
                    self.outbox.wakeup.wait(0.5)
                    self.outbox.wakeup.clear()
