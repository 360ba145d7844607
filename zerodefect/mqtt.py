"""The MQTT broker both sides publish to: the station its results and status, the record its
andon alerts. One configuration, one topic layout, one way to set up paho's client.

Topics, under zd/v1/{site}/{line}/{station}/: `result` (each part, from the station), `status`
(the station's online/offline, retained), `alert` (each andon alert about the station, from the
record). A subscriber to zd/v1/{site}/# sees the whole site.
"""

from __future__ import annotations

import os

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, Field


class MqttConfig(BaseModel):
    """A broker, and the site the topics are under."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    # The topic is zd/v1/{site}/{line}/{station}/...; the line is the station's `line`.
    site: str = Field(min_length=1, max_length=100, pattern=r"^[^/#+]+$")
    client_id: str | None = None
    username: str | None = None
    # The broker password is a secret: read from this environment variable, never from YAML.
    password_env: str = "ZD_MQTT_PASSWORD"
    keepalive_seconds: int = Field(default=30, ge=5, le=3600)
    tls: bool = False
    # paho reconnects by itself, waiting 1, 2, 4... s up to this.
    reconnect_max_seconds: int = Field(default=30, ge=1, le=3600)

    def password(self) -> str | None:
        return os.environ.get(self.password_env)

    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def topic_base(site: str, line: str, station: str) -> str:
    return f"zd/v1/{site}/{line}/{station}"


def make_client(config: MqttConfig, client_id: str) -> mqtt.Client:
    """paho's client for this broker (credentials, TLS, reconnect back-off), not yet connected.
    `config.client_id`, when set, overrides `client_id`."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=config.client_id or client_id, clean_session=True
    )
    if config.username:
        client.username_pw_set(config.username, config.password())
    if config.tls:
        client.tls_set()
    client.reconnect_delay_set(min_delay=1, max_delay=config.reconnect_max_seconds)
    return client


def connect(client: mqtt.Client, config: MqttConfig) -> None:
    """Connect in the background: paho's loop thread connects, and reconnects after a loss."""
    client.connect_async(config.host, config.port, keepalive=config.keepalive_seconds)
    client.loop_start()
