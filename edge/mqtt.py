"""Results to the MES over MQTT: one QoS 1 message per part, from the station's durable outbox.

Topics, under zd/v1/{site}/{line}/{station}/:
- `result`: each part's result as JSON (the record's payload without the image and heatmap).
  Its `key` is the part's idempotency key: QoS 1 is at-least-once, so a broker that fails
  between storing a message and acknowledging it gets it again, and consumers count a part once
  by this key.
- `status`: `online` (retained) while the station is connected; `offline` (retained) when it
  stops, and the same as its last will when it dies or loses the network, so a subscriber that
  connects later still learns the station's state.

The outbox holds each result for this destination until the broker acknowledged it (PUBACK),
so a broker outage or a station restart loses nothing: results wait on disk and go out when the
broker is back. paho-mqtt reconnects by itself and resends what was in flight; results are
handed to it only while it is connected, so a long outage queues on disk, not in memory.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from zerodefect.edge.outbox import Outbox, light_result
from zerodefect.mqtt import MqttConfig, connect, make_client, topic_base

log = logging.getLogger(__name__)

DESTINATION = "mqtt"
# Results handed to paho and not yet acknowledged, at most: bounds memory in a slow broker.
MAX_IN_FLIGHT = 256


class MqttPublisher:
    """A background thread: publish the outbox's results for the MES, each until acknowledged."""

    def __init__(
        self,
        outbox: Outbox,
        config: MqttConfig,
        station: str,
        line: str,
        on_change: Callable[[bool, str], None] | None = None,
    ):
        """`on_change(up, detail)` is told when the broker connection goes up or down (as PlcLink's)."""
        if DESTINATION not in outbox.destinations:
            raise ValueError(f"the outbox does not queue results for {DESTINATION!r}")
        self.outbox = outbox
        self.config = config
        self.station, self.line = station, line
        base = topic_base(config.site, line, station)
        self.result_topic, self.status_topic = f"{base}/result", f"{base}/status"
        self._wakeup = outbox.wakeups[DESTINATION]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        # key -> paho's handle of its message, for results handed over and not yet acknowledged.
        self._in_flight: dict[str, mqtt.MQTTMessageInfo] = {}
        self.client = make_client(config, f"zd-{station}")
        self.client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = lambda *_args: self._tell(False, "cannot connect")
        self.on_change = on_change
        self._told: bool | None = None
        # An acknowledgement only wakes the loop, which reads the handles: no shared state
        # between paho's thread and ours.
        self.client.on_publish = lambda *_args: self._wakeup.set()

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    def start(self) -> None:
        connect(self.client, self.config)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Say `offline` (retained) and disconnect cleanly; what is unacknowledged stays queued."""
        self._stop.set()
        self._wakeup.set()
        self._thread.join(10)
        if self.client.is_connected():
            info = self.client.publish(self.status_topic, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("mqtt: could not say offline before stopping")
        self.client.disconnect()
        self.client.loop_stop()

    def _tell(self, up: bool, detail: str) -> None:
        if self.on_change is not None and self._told is not up and not self._stop.is_set():
            self._told = up
            self.on_change(up, f"{self.config.host}:{self.config.port} {detail}".strip())

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.warning(
                "mqtt broker %s:%s refused the station: %s", self.config.host, self.config.port, reason
            )
            self._tell(False, f"refused: {reason}")
            return
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        log.info("mqtt connected to %s:%s", self.config.host, self.config.port)
        self._tell(True, "")
        self._wakeup.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._tell(False, f"lost: {reason}")
        if not self._stop.is_set():
            log.warning(
                "mqtt broker %s:%s lost (%s); results wait in the outbox",
                self.config.host,
                self.config.port,
                reason,
            )

    def flush_once(self) -> int:
        """Record the acknowledged results, hand new ones to paho; returns how many were acknowledged."""
        acked = [key for key, info in self._in_flight.items() if info.is_published()]
        for key in acked:
            self.outbox.delivered_to(DESTINATION, key)
            del self._in_flight[key]
        if not self.client.is_connected():
            return len(acked)
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room > 0:
            for key, payload, _attempts in self.outbox.due_for(
                DESTINATION, limit=room + len(self._in_flight)
            ):
                if key in self._in_flight:
                    continue
                message = json.dumps(
                    light_result(payload, site=self.config.site, line=self.line, station=self.station),
                    separators=(",", ":"),
                ).encode()
                info = self.client.publish(self.result_topic, message, qos=1)
                if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                    break
                # Handed over (also if the connection dropped meanwhile: paho resends it on
                # reconnect), acknowledged when PUBACK comes.
                self._in_flight[key] = info
        return len(acked)

    def _run(self) -> None:
        while not self._stop.is_set():
            # Cleared before the flush: a result or an acknowledgement arriving during it wakes
            # the next round at once.
            self._wakeup.clear()
            try:
                self.flush_once()
            except Exception:  # the loop must outlive a bad row or a client error
                log.exception("mqtt publishing failed")
                self._stop.wait(1.0)
            self._wakeup.wait(0.5)

    def pending(self) -> int:
        return self.outbox.counts_for(DESTINATION)["pending"]
