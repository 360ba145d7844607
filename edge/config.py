"""A station's configuration (YAML): which model, which record, what budget, what limits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from zerodefect.configfile import load_yaml_model
from zerodefect.edge.codes import CodesConfig
from zerodefect.inference.signing import SigningKeyError, load_public_key
from zerodefect.mqtt import MqttConfig


class StationConfigError(ValueError):
    """A station config that cannot be used; names the file and the key."""


class PlcBase(BaseModel):
    """How verdicts reach the line's PLC; the protocol's own section says where."""

    model_config = ConfigDict(extra="forbid")

    # Signals waiting while the PLC is slow or down; beyond this the oldest is dropped (counted).
    queue_size: int = Field(default=256, ge=1, le=100_000)
    # A verdict older than this is never written: by then its part has left the reject gate,
    # and the PLC's own no-verdict rule must act on it, not a late signal for another part.
    max_age_seconds: float = Field(default=5.0, gt=0)
    heartbeat_seconds: float = Field(default=1.0, gt=0)
    timeout_seconds: float = Field(default=2.0, gt=0)
    reconnect_max_seconds: float = Field(default=10.0, gt=0)


class OpcUaPlc(PlcBase):
    """The station as an OPC UA client writing to the PLC's nodes (ns=2;s=... node ids)."""

    protocol: Literal["opcua"]
    url: str = Field(pattern=r"^opc\.tcp://")
    result_node: str
    part_id_node: str
    score_node: str | None = None
    # Handshake: ResultValid is set after the values; with an Ack node the station waits for the
    # PLC to raise Ack, clears ResultValid, and waits for Ack to drop before the next part.
    result_valid_node: str | None = None
    ack_node: str | None = None
    ack_timeout_ms: float = Field(default=500.0, gt=0)
    heartbeat_node: str | None = None


class ModbusPlc(PlcBase):
    """Modbus TCP: a reject coil pulsed per reject, a result block of holding registers
    ([result code, sequence, part id as ASCII, 2 characters per register]) and a heartbeat."""

    protocol: Literal["modbus"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    device_id: int = Field(default=1, ge=0, le=255)
    reject_coil: int = Field(ge=0, le=65535)
    pulse_ms: float = Field(default=100.0, gt=0, le=10_000)
    result_register: int = Field(ge=0, le=65535)
    part_id_registers: int = Field(default=10, ge=0, le=50)
    heartbeat_register: int | None = Field(default=None, ge=0, le=65535)


class WebhookConfig(BaseModel):
    """A QMS / no-code endpoint that gets each result as signed JSON (zerodefect.edge.webhooks)."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    # The signing secret is read from this environment variable, never from YAML; None sends
    # unsigned.
    secret_env: str | None = Field(default=None, min_length=1)


class StationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    station: str = Field(min_length=1, max_length=100)
    line: str | None = None
    # A bundle folder, or models:/NAME@ALIAS to follow an alias (hot-swapped on reload).
    model: str
    # How often to check whether the alias moved (a promotion), and swap to its new version
    # without a restart; None checks only on POST /v1/model/reload.
    model_poll_seconds: float | None = Field(default=60.0, gt=0)
    # Shadow mode: a challenger (e.g. models:/NAME@challenger) scores each part after the
    # line's verdict is given; its verdicts go to the record only (zerodefect.edge.shadow).
    shadow: str | None = None
    # How often the station reports its model and outbox backlog to the record (fleet status);
    # None: never.
    status_seconds: float | None = Field(default=30.0, gt=0)
    # Base URL of the quality record service; None keeps results in the outbox only.
    record_url: str | None = None
    # The forwarder ships up to this many results per request (POST /v1/inspections/batch, one
    # transaction at the record), waiting up to record_batch_wait_ms for a batch to fill. A plant
    # of 50 stations needs it: PostgreSQL takes ~520 rows/s one commit each, ~11,000 in batches.
    # 1 posts each result alone to POST /v1/inspections (what records before the batch endpoint take).
    record_batch_size: int = Field(default=200, ge=1, le=1000)
    record_batch_wait_ms: float = Field(default=50.0, ge=0, le=10_000)
    # The record API key is a secret: read from this environment variable, never from YAML.
    record_api_key_env: str = "ZD_RECORD_API_KEY"
    # sha256 hashes of the keys that cameras use on this service's write endpoints.
    api_key_hashes: list[str] = Field(default_factory=list)
    # sha256 hashes of station-admin keys: only these may POST /v1/model/reload (camera keys may not).
    admin_key_hashes: list[str] = Field(default_factory=list)
    # Public keys whose signatures this station accepts on model bundles: paths of .pub files
    # (one base64 line) or inline base64 keys. Unsigned or otherwise signed bundles are refused.
    trusted_keys: list[str] = Field(default_factory=list)
    budget_ms: float = Field(default=250.0, gt=0)
    failsafe_verdict: Literal["reject", "pass"] = "reject"
    max_batch: int = Field(default=8, ge=1, le=64)
    # Extra wait for batch partners. 0 (greedy): a batch is whatever queued while the model was
    # busy; measured with `make bench`'s load: 87 against 62-68 img/s at one camera, none lost at four.
    batch_wait_ms: float = Field(default=0.0, ge=0)
    threads: int | None = None
    outbox: Path = Path("var/edge/outbox.db")
    store_images: Literal["flagged", "all", "none"] = "flagged"
    pass_sample_rate: float = Field(default=0.02, ge=0, le=1)
    max_request_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 25_000_000
    # A camera's captured_at further than this from the station clock is refused (422): a
    # camera with a dead clock battery must not write year 0001 or 9999 into the record, which
    # itself refuses times before 2000 or more than a day ahead of its own clock.
    max_clock_skew_seconds: float = Field(default=86400.0, gt=0)
    # Each verdict (and fail-safe verdict) written to the line's PLC; None: HTTP answers only.
    plc: OpcUaPlc | ModbusPlc | None = Field(default=None, discriminator="protocol")
    # Read the part's id (DataMatrix, QR, 1-D) from the frame (zerodefect.edge.codes); None
    # keeps the serial the camera posts.
    codes: CodesConfig | None = None
    # Results to the MES over MQTT, from the same outbox as the record's; None publishes nothing.
    mqtt: MqttConfig | None = None
    # Results to QMS / no-code webhooks, each from the same outbox.
    webhooks: list[WebhookConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shadow_needs_a_record(self) -> StationConfig:
        if self.shadow and not self.record_url:
            raise ValueError("shadow needs record_url: the challenger's verdicts go to the record only")
        return self

    @model_validator(mode="after")
    def _mqtt_topic_is_valid(self) -> StationConfig:
        """The MQTT topic names the line and the station: both must exist and be topic-safe."""
        if self.mqtt is not None:
            if not self.line:
                raise ValueError(
                    "mqtt needs the station's `line` (its topic is zd/v1/{site}/{line}/{station})"
                )
            for name, value in (("line", self.line), ("station", self.station)):
                if any(c in value for c in "/#+"):
                    raise ValueError(f"mqtt: {name} {value!r} cannot be part of a topic (no '/', '#', '+')")
        return self

    def record_api_key(self) -> str | None:
        return os.environ.get(self.record_api_key_env)

    def trusted_public_keys(self) -> list[Ed25519PublicKey]:
        """The keys of `trusted_keys`, read now; a station without any cannot serve a model."""
        if not self.trusted_keys:
            raise StationConfigError(
                f"station {self.station}: no trusted_keys; a station serves only signed bundles, so list "
                "the public key(s) of the training side (a .pub file from `zerodefect keys new`, or "
                "var/keys/bundle-signing.pub on a single machine)"
            )
        try:
            return [load_public_key(entry) for entry in self.trusted_keys]
        except SigningKeyError as exc:
            raise StationConfigError(f"station {self.station}: trusted_keys: {exc}") from exc


def load_station_config(path: str | Path, overrides: dict | None = None) -> StationConfig:
    return load_yaml_model(path, StationConfig, StationConfigError, lambda data: data.update(overrides or {}))
