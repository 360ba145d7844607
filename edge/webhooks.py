"""Results to QMS / no-code webhooks: one signed JSON POST per part, from the durable outbox.

Each target is its own outbox destination (`webhook:<url>`), so a target that is down waits on
disk without holding back the record, the MES or another target. A request carries the part's
result as {"result": {...}} (the record's fields without the image), `X-ZD-Delivery: <the
part's key>` (the same on every retry, so a receiver counts a part once) and, when the target
has a secret, `X-ZD-Signature` (zerodefect.webhooks: HMAC-SHA256 over the timestamp and the
body, checked by the receiver with `verify`). Anything but a 2xx is retried with back-off.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import httpx

from zerodefect.backoff import backoff_delay
from zerodefect.edge.config import WebhookConfig
from zerodefect.edge.outbox import Outbox, light_result
from zerodefect.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)


def destination(target: WebhookConfig) -> str:
    """The outbox destination of a target: its URL names it, so it survives restarts."""
    return f"webhook:{target.url}"


class WebhookSender:
    """A background thread per target: POST each due result until the target answers 2xx."""

    def __init__(
        self,
        outbox: Outbox,
        target: WebhookConfig,
        station: str,
        line: str | None,
        max_backoff: float = 300.0,
    ):
        self.outbox = outbox
        self.target = target
        self.url = str(target.url)
        self.destination = destination(target)
        if self.destination not in outbox.destinations:
            raise ValueError(f"the outbox does not queue results for {self.destination!r}")
        self.station, self.line = station, line
        self.max_backoff = max_backoff
        self._wakeup = outbox.wakeups[self.destination]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"webhook:{self.url}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wakeup.set()
        self._thread.join(10)

    def flush_once(self, client: httpx.Client) -> int:
        """Try every due result once; returns how many the target took."""
        sent = 0
        for key, payload, attempts in self.outbox.due_for(self.destination):
            body = json.dumps(
                {"result": light_result(payload, line=self.line, station=self.station)}, separators=(",", ":")
            ).encode()
            headers = {"Content-Type": "application/json", DELIVERY_HEADER: key}
            if self.target.secret_env is not None:
                secret = os.environ.get(self.target.secret_env)
                if not secret:  # never sent unsigned to a target that expects a signature
                    log.error("webhook %s: $%s is not set; results wait", self.url, self.target.secret_env)
                    self.outbox.retry_for(
                        self.destination, key, backoff_delay(attempts, 0.25, self.max_backoff)
                    )
                    continue
                headers[SIGNATURE_HEADER] = sign(body, secret)
            try:
                answer = client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                self.outbox.retry_for(self.destination, key, backoff_delay(attempts, 0.25, self.max_backoff))
                log.debug("webhook %s unreachable (%s); %s retried later", self.url, exc, key)
                break
            if answer.is_success:
                self.outbox.delivered_to(self.destination, key)
                sent += 1
            else:
                self.outbox.retry_for(self.destination, key, backoff_delay(attempts, 0.25, self.max_backoff))
                log.warning("webhook %s answered %s for %s; retrying", self.url, answer.status_code, key)
        return sent

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                self._wakeup.clear()
                try:
                    self.flush_once(client)
                except Exception:  # the loop must outlive a bad row
                    log.exception("webhook %s failed", self.url)
                self._wakeup.wait(0.5)
