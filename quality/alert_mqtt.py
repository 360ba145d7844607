"""Andon alerts to the MES over MQTT: each alert, as JSON, to zd/v1/{site}/{line}/{station}/alert.

An alert's MQTT delivery is a row like a webhook's (quality.andon AlertDelivery, its url the
broker's mqtt://host:port), so it is retried with the same back-off and survives a restart of
the record. One attempt publishes at QoS 1 and waits for the broker's PUBACK; QoS 1 is
at-least-once, so a consumer counts an alert once by its `id`.
"""

from __future__ import annotations

import json
import logging

from zerodefect.mqtt import MqttConfig, connect, make_client, topic_base

log = logging.getLogger(__name__)

# How long one attempt waits for the broker's acknowledgement.
ACK_SECONDS = 5.0


class AlertPublisher:
    """The record's connection to the broker; paho keeps it up (reconnecting) in its thread."""

    def __init__(self, config: MqttConfig):
        self.config = config
        self.url = config.url()
        self.client = make_client(config, "zd-record-andon")

    def start(self) -> None:
        connect(self.client, self.config)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def topic(self, station: str, line: str | None) -> str:
        return f"{topic_base(self.config.site, line or '', station)}/alert"

    def publish(self, alert: dict, line: str | None) -> tuple[bool, str]:
        """One attempt: True once the broker acknowledged it, else False and why."""
        if not self.client.is_connected():
            return False, f"not connected to the MQTT broker {self.url}"
        body = json.dumps({"alert": alert}, separators=(",", ":")).encode()
        info = self.client.publish(self.topic(alert["station"], line), body, qos=1)
        try:
            info.wait_for_publish(ACK_SECONDS)
        except (RuntimeError, ValueError) as exc:  # paho: not queued, or the connection dropped
            return False, f"MQTT publish failed: {exc}"
        if not info.is_published():
            return False, f"no acknowledgement from {self.url} within {ACK_SECONDS:g} s"
        return True, "PUBACK"
