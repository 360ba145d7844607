"""Verdicts to the line's PLC (OPC UA or Modbus TCP), never in the way of judging.

Judging puts a signal on a bounded queue and moves on; one writer task owns the connection,
writes each signal, and while the PLC is away it reconnects with back-off (zerodefect.backoff)
and drops what has grown too old for its part. So a dead PLC costs the line its reject signals
(which the PLC's own no-verdict rule must cover, and /readyz, /metrics and the log show) but
never a verdict or a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from zerodefect.backoff import backoff_delay
from zerodefect.edge.config import ModbusPlc, OpcUaPlc

log = logging.getLogger(__name__)

# The result code written to the PLC: a fail-safe verdict is told apart from a judged one.
RESULT_CODES = {("pass", False): 1, ("reject", False): 2, ("reject", True): 3, ("pass", True): 4}
PLC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0)


@dataclass(frozen=True)
class PlcSignal:
    part_id: str
    verdict: str
    score: float | None
    failsafe: bool
    sequence: int
    received_at: float  # time.perf_counter() when the station received the frame

    @property
    def code(self) -> int:
        return RESULT_CODES[(self.verdict, self.failsafe)]

    @property
    def reject(self) -> bool:
        return self.verdict == "reject"


class PlcWriter(Protocol):
    """One protocol's side of the link; PlcLink calls these from its single writer task."""

    async def connect(self) -> None: ...
    async def write(self, signal: PlcSignal) -> None: ...
    async def heartbeat(self, beat: int) -> None: ...
    async def close(self) -> None: ...


class OpcUaWriter:
    """The station as an OPC UA client: Result, PartId, Score, then the ResultValid/Ack handshake."""

    def __init__(self, config: OpcUaPlc):
        self.config = config
        self.client: Any = None
        self.nodes: dict[str, Any] = {}
        self.types: dict[str, Any] = {}

    async def connect(self) -> None:
        from asyncua import Client

        self.client = Client(self.config.url, timeout=self.config.timeout_seconds)
        await self.client.connect()
        wanted = {
            "result": self.config.result_node,
            "part_id": self.config.part_id_node,
            "score": self.config.score_node,
            "result_valid": self.config.result_valid_node,
            "ack": self.config.ack_node,
            "heartbeat": self.config.heartbeat_node,
        }
        self.nodes = {name: self.client.get_node(node) for name, node in wanted.items() if node}
        # Written with the PLC's own data types (Int16 or Int32 result, Float or Double score):
        # OPC UA refuses a write whose variant type differs from the variable's.
        self.types = {name: await node.read_data_type_as_variant_type() for name, node in self.nodes.items()}
        if "result_valid" in self.nodes:
            await self._write({"result_valid": False})

    def _value(self, name: str, value: Any) -> Any:
        from asyncua import ua

        kind = self.types[name]
        if kind == ua.VariantType.String:
            value = str(value)
        elif kind == ua.VariantType.Boolean:
            value = bool(value)
        return ua.DataValue(ua.Variant(value, kind))

    async def _write(self, values: dict[str, Any]) -> None:
        names = [name for name in values if name in self.nodes]
        await self.client.write_values(
            [self.nodes[name] for name in names], [self._value(name, values[name]) for name in names]
        )

    async def _wait_ack(self, raised: bool) -> bool:
        """Poll Ack until it reads `raised`: at once, then after 1, 2, 4... ms (at most 10 ms),
        so a PLC that answers on its next scan is not flooded with reads meanwhile, and the
        event loop that serves the station's HTTP keeps its turns."""
        deadline = time.monotonic() + self.config.ack_timeout_ms / 1000.0
        pause = 0.001
        while True:
            if bool(await self.nodes["ack"].read_value()) == raised:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(pause, left))
            pause = min(2 * pause, 0.010)

    async def write(self, signal: PlcSignal) -> None:
        result: Any = signal.verdict if self.types["result"].name == "String" else signal.code
        values = {"result": result, "part_id": signal.part_id, "score": _score(signal.score)}
        if "result_valid" not in self.nodes:
            await self._write(values)
            return
        if "ack" not in self.nodes:  # no Ack to wait for: one ResultValid edge per part
            await self._write({"result_valid": False})
        await self._write(values)
        await self._write({"result_valid": True})
        if "ack" not in self.nodes:
            return
        acked = await self._wait_ack(True)
        await self._write({"result_valid": False})
        if not acked or not await self._wait_ack(False):  # the PLC is not ready for the next part
            raise AckTimeout(
                f"the PLC did not acknowledge part {signal.part_id} in {self.config.ack_timeout_ms:g} ms"
            )

    async def heartbeat(self, beat: int) -> None:
        if "heartbeat" in self.nodes:
            await self._write({"heartbeat": beat})
        else:  # no heartbeat node: a read still tells a dead link from an idle one
            await self.nodes["result"].read_value()

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.disconnect()
            self.client = None


class AckTimeout(Exception):
    """The PLC did not complete the handshake in time; counted, the link stays up."""


def _score(score: float | None) -> float:
    return math.nan if score is None else float(score)


def part_id_words(part_id: str, registers: int) -> list[int]:
    """The part id as ASCII (UTF-8) bytes, two per big-endian register, zero padded and cut to
    `registers` registers: the usual string layout of PLC tag tables."""
    raw = part_id.encode()[: registers * 2].ljust(registers * 2, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


class ModbusWriter:
    """Modbus TCP: the result block, then a reject coil pulse; a heartbeat register."""

    def __init__(self, config: ModbusPlc):
        self.config = config
        self.client: Any = None
        self.lock = asyncio.Lock()  # the pulse's release and the next write share one client
        self._release: asyncio.Task | None = None
        self._coil_on = False

    async def connect(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        self.client = AsyncModbusTcpClient(
            self.config.host, port=self.config.port, timeout=self.config.timeout_seconds, retries=0
        )
        if not await self.client.connect():
            raise ConnectionError(f"no Modbus TCP server at {self.config.host}:{self.config.port}")
        await self._coil(False)  # a coil left on by a lost connection is released first

    async def _call(self, method: str, *args: Any) -> None:
        async with self.lock:
            response = await getattr(self.client, method)(*args, device_id=self.config.device_id)
        if response.isError():
            raise ConnectionError(f"the PLC refused {method}{args}: {response}")

    async def _coil(self, on: bool) -> None:
        await self._call("write_coil", self.config.reject_coil, on)
        self._coil_on = on

    async def _release_later(self) -> None:
        await asyncio.sleep(self.config.pulse_ms / 1000.0)
        with contextlib.suppress(Exception):  # a broken link shows on the next write
            await self._coil(False)

    async def write(self, signal: PlcSignal) -> None:
        block = [
            signal.code,
            signal.sequence & 0xFFFF,
            *part_id_words(signal.part_id, self.config.part_id_registers),
        ]
        await self._call("write_registers", self.config.result_register, block)
        if not signal.reject:
            return
        if self._release is not None:
            self._release.cancel()
        if self._coil_on:  # one rising edge per reject, even for back-to-back rejects
            await self._coil(False)
        await self._coil(True)
        self._release = asyncio.create_task(self._release_later())

    async def heartbeat(self, beat: int) -> None:
        if self.config.heartbeat_register is not None:
            await self._call("write_register", self.config.heartbeat_register, beat & 0xFFFF)
        else:
            await self._call("read_coils", self.config.reject_coil)

    async def close(self) -> None:
        if self._release is not None:
            self._release.cancel()
            self._release = None
        if self.client is not None:
            self.client.close()
            self.client = None


def make_writer(config: OpcUaPlc | ModbusPlc) -> PlcWriter:
    return OpcUaWriter(config) if isinstance(config, OpcUaPlc) else ModbusWriter(config)


class PlcLink:
    """The bounded queue and the one task that writes it to the PLC, reconnecting with back-off."""

    def __init__(
        self,
        config: OpcUaPlc | ModbusPlc,
        registry: CollectorRegistry,
        on_change: Callable[[bool, str], None] | None = None,
    ):
        """`on_change(up, detail)` is told each time the link goes up or down (and its first
        state): the station reports it to the record, whose andon alerts on a lasting loss."""
        self.config = config
        self.writer = make_writer(config)
        self.queue: asyncio.Queue[PlcSignal] = asyncio.Queue(config.queue_size)
        self.connected = False
        self.on_change = on_change
        self._told: bool | None = None
        self.sequence = 0
        self._task: asyncio.Task | None = None
        # The signal being written when the link failed: retried first after the reconnect.
        self._pending: PlcSignal | None = None
        self.connected_gauge = Gauge("zd_plc_connected", "1 while the PLC link is up", registry=registry)
        Gauge("zd_plc_queued", "Verdicts waiting for the PLC", registry=registry).set_function(
            self.queue.qsize
        )
        self.written = Counter("zd_plc_writes", "Verdicts written to the PLC", ["verdict"], registry=registry)
        self.dropped = Counter(
            "zd_plc_dropped", "Verdicts never written to the PLC, by reason", ["reason"], registry=registry
        )
        self.ack_timeouts = Counter(
            "zd_plc_ack_timeouts", "Verdicts the PLC did not acknowledge in time", registry=registry
        )
        self.reconnects = Counter("zd_plc_connects", "Connections made to the PLC", registry=registry)
        self.latency = Histogram(
            "zd_plc_write_seconds",
            "Time from the frame received to the PLC acknowledging its verdict",
            buckets=PLC_BUCKETS,
            registry=registry,
        )

    def signal(self, response: dict[str, Any], received_at: float) -> None:
        """Hand a final verdict over; never waits. A full queue drops its oldest signal.
        `received_at` (perf_counter) is when the frame arrived: the part's age counts from there."""
        self.sequence = self.sequence % 0xFFFF + 1
        item = PlcSignal(
            response["serial"],
            response["verdict"],
            response["score"],
            bool(response["failsafe"]),
            self.sequence,
            received_at,
        )
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped.labels("queue_full").inc()
        self.queue.put_nowait(item)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="plc-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.writer.close()

    def state(self) -> dict[str, Any]:
        return {"protocol": self.config.protocol, "connected": self.connected, "queued": self.queue.qsize()}

    def _set_connected(self, up: bool, detail: str = "") -> None:
        self.connected = up
        self.connected_gauge.set(1 if up else 0)
        if self.on_change is not None and self._told is not up:
            self._told = up
            self.on_change(up, f"{self.config.protocol}: {detail}" if detail else self.config.protocol)

    async def _run(self) -> None:
        attempts = 0
        while True:
            try:
                await asyncio.wait_for(self.writer.connect(), self.config.timeout_seconds)
                self._set_connected(True)
                self.reconnects.inc()
                attempts = 0
                log.info("PLC link up (%s)", self.config.protocol)
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected or attempts == 0:
                    log.error(
                        "ALERT: PLC link down (%s): %s; judging goes on, reconnecting",
                        self.config.protocol,
                        exc,
                    )
                self._set_connected(False, f"{type(exc).__name__}: {exc}")
                await self.writer.close()
                await asyncio.sleep(backoff_delay(attempts, 0.05, self.config.reconnect_max_seconds))
                attempts += 1

    async def _serve(self) -> None:
        """Write signals (and a heartbeat when idle) until the link fails; raises with the
        signal being written kept in `self._pending` so it is retried after the reconnect."""
        beat = 0
        next_beat = time.monotonic() + self.config.heartbeat_seconds
        timeout = self.config.timeout_seconds
        while True:
            if self._pending is None:
                try:
                    self._pending = await asyncio.wait_for(
                        self.queue.get(), max(0.0, next_beat - time.monotonic())
                    )
                except TimeoutError:
                    self._pending = None
            if time.monotonic() >= next_beat:
                beat += 1
                await asyncio.wait_for(self.writer.heartbeat(beat), timeout)
                next_beat = time.monotonic() + self.config.heartbeat_seconds
            if self._pending is None:
                continue
            if time.perf_counter() - self._pending.received_at > self.config.max_age_seconds:
                self.dropped.labels("too_old").inc()
                self._pending = None
                continue
            try:
                await asyncio.wait_for(self.writer.write(self._pending), timeout)
            except AckTimeout as exc:
                self.ack_timeouts.inc()
                log.warning("%s", exc)
            self.latency.observe(time.perf_counter() - self._pending.received_at)
            self.written.labels(self._pending.verdict).inc()
            self._pending = None
