"""The PLC rows of `make bench`: from the frame a camera sends to its verdict at the PLC.

Issue 13's bar is the HTTP verdict's: p99 at 2 cameras x 15 fps within 2x the bundle's
model-only median. The station runs in its own process (`zerodefect serve edge`) with a `plc:`
section; the PLC is a simulator in this process (zerodefect/plcsim.py: asyncua's server for OPC
UA, pymodbus's for Modbus TCP, over loopback), which stamps each verdict's arrival with the same
clock (perf_counter) as the camera's send. So a part's time covers the whole path: HTTP upload,
decode, batched inference, the outbox write, the hand-over to the PLC writer task and its
protocol round trips, up to the moment the PLC holds the verdict:
- OPC UA: the station writes Result, PartId and Score, then raises ResultValid; the PLC latches
  the part when ResultValid arrives and raises Ack in the same scan (the station then waits for
  Ack, drops ResultValid and waits for Ack to drop before the next part);
- Modbus TCP: the result block (code, sequence, part id) in one write-registers request, which
  the PLC acknowledges in its response (then the reject coil's pulse for a reject).
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zerodefect.bench import _percentile, _serving, bench_work, load, station_config
from zerodefect.plcsim import (
    PART_ID_REGISTERS,
    RESULT_REGISTER,
    ModbusPlcSim,
    OpcUaPlcSim,
    modbus_section,
    opcua_section,
)
from zerodefect.services import free_port

if TYPE_CHECKING:
    from rich.console import Console

PLC_CAMERAS = 2
PLC_FPS = 15.0
PROTOCOLS = {"opcua": "OPC UA", "modbus": "Modbus TCP"}


def _wait_seen(serials: list[str], arrivals: Callable[[], dict[str, float]], seconds: float = 10.0) -> None:
    """Until every part answered over HTTP is at the PLC, or `seconds` (the writer drains its
    queue after the last answer; a part that never arrives counts as missing, not as a hang)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not set(serials) <= arrivals().keys():
        time.sleep(0.05)


def _station_counters(url: str) -> dict[str, float]:
    """The station's own PLC counters from /metrics: ack timeouts, drops, and its mean time
    from the frame received to the write done (the OPC UA handshake complete)."""
    from prometheus_client.parser import text_string_to_metric_families

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    samples: dict[str, float] = {}
    dropped = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "zd_plc_dropped_total":  # one per reason
                dropped += sample.value
            elif sample.name.startswith("zd_plc"):
                samples[sample.name] = sample.value
    count = samples.get("zd_plc_write_seconds_count", 0.0)
    return {
        "station_ack_timeouts": samples.get("zd_plc_ack_timeouts_total", 0.0),
        "station_dropped": dropped,
        "station_write_mean_ms": samples.get("zd_plc_write_seconds_sum", 0.0) / count * 1000
        if count
        else None,
    }


@contextmanager
def simulated_plc(protocol: str) -> Iterator[tuple[dict[str, Any], Callable[[], dict[str, float]]]]:
    """A simulated PLC of `protocol` on a free loopback port: the station's `plc:` section for
    it, and the arrival time (perf_counter) of each part's verdict by part id; stopped after."""
    if protocol == "opcua":
        opcua = OpcUaPlcSim(f"opc.tcp://127.0.0.1:{free_port()}/zd/")
        opcua.start()  # about 3 s
        try:
            yield opcua_section(opcua), lambda: dict(opcua.arrivals)
        finally:
            opcua.stop()
        return
    modbus = ModbusPlcSim(free_port())
    modbus.start()
    try:
        yield (
            modbus_section(modbus.port),
            lambda: {part: at for _, part, at in modbus.timed_results(RESULT_REGISTER, PART_ID_REGISTERS)},
        )
    finally:
        modbus.close()


def writer_alone(
    protocol: str, section: dict[str, Any], arrivals: Callable[[], dict[str, float]], parts: int = 200
) -> dict[str, float]:
    """The PLC link's own cost, without a station or its load: the station's writer for
    `protocol` (edge/plc.py) writing `parts` verdicts (one in five a reject) back to back from
    this process: p50/p99 of a write (OPC UA: the whole handshake) and of the PLC's arrival."""
    import asyncio

    from zerodefect.edge.config import ModbusPlc, OpcUaPlc
    from zerodefect.edge.plc import PlcSignal, make_writer

    config = OpcUaPlc(**section) if protocol == "opcua" else ModbusPlc(**section)
    writes: list[float] = []
    to_plc: list[float] = []

    async def write_all() -> None:
        writer = make_writer(config)
        await writer.connect()
        try:
            for i in range(parts):
                serial = f"A{i}"
                tick = time.perf_counter()
                verdict = "reject" if i % 5 == 0 else "pass"
                await writer.write(PlcSignal(serial, verdict, 0.5, False, i + 1, tick))
                writes.append((time.perf_counter() - tick) * 1000)
                if serial in (seen := arrivals()):
                    to_plc.append((seen[serial] - tick) * 1000)
        finally:
            await writer.close()

    asyncio.run(write_all())
    return {
        "alone_write_p50_ms": _percentile(writes, 50),
        "alone_write_p99_ms": _percentile(writes, 99),
        "alone_to_plc_p50_ms": _percentile(to_plc, 50),
        "alone_to_plc_p99_ms": _percentile(to_plc, 99),
    }


def writer_costs(parts: int = 200) -> dict[str, dict[str, float]]:
    """writer_alone for each protocol against a fresh simulated PLC, without a station: a
    quick look at the link's own cost (seconds; `make bench` measures it in its PLC rows)."""
    costs = {}
    for name in PROTOCOLS:
        with simulated_plc(name) as (section, arrivals):
            costs[name] = writer_alone(name, section, arrivals, parts)
    return costs


def measure_protocol(
    name: str,
    section: dict[str, Any],
    arrivals: Callable[[], dict[str, float]],
    bundle: Path,
    jpegs: list[bytes],
    threads: int,
    seconds: float,
    out_dir: Path,
) -> dict[str, Any]:
    """One protocol's rows: a station with `section` loaded at 2 cameras x 15 fps for `seconds`
    after a warm-up whose parts must reach the PLC first (the link is up, its queue empty)."""
    work, env, log = bench_work(out_dir)
    config = station_config(bundle, threads, work, f"station-{name}", plc=section)
    with _serving(["serve", "edge", "--config", str(config)], env, log) as url:
        warm: dict[str, tuple[float, float]] = {}
        load(url, jpegs, PLC_CAMERAS, 2.0, fps=PLC_FPS, serial_prefix="W", timings=warm)
        _wait_seen(list(warm), arrivals)
        timings: dict[str, tuple[float, float]] = {}
        run = load(url, jpegs, PLC_CAMERAS, seconds, fps=PLC_FPS, serial_prefix="P", timings=timings)
        _wait_seen(list(timings), arrivals)
        counters = _station_counters(url)
    at = arrivals()
    seen = [serial for serial in timings if serial in at]
    to_plc = [(at[s] - timings[s][0]) * 1000 for s in seen]
    after_http = [(at[s] - timings[s][1]) * 1000 for s in seen]
    http_ms = [(answered - sent) * 1000 for sent, answered in timings.values()]
    return {
        "parts_sent": run["requests"] + run["errors"],
        "parts_answered": run["requests"],
        "parts_seen_at_plc": len(seen),
        "p50_ms": _percentile(to_plc, 50),
        "p99_ms": _percentile(to_plc, 99),
        "max_ms": max(to_plc, default=float("nan")),
        "http_p50_ms": _percentile(http_ms, 50),
        "http_p99_ms": _percentile(http_ms, 99),
        # What the PLC path adds on top of the HTTP verdict, part by part: its arrival at the
        # PLC after the camera had its HTTP answer (negative when the PLC had it first).
        "added_p50_ms": _percentile(after_http, 50),
        "added_p99_ms": _percentile(after_http, 99),
        **counters,
    }


def measure_plc(
    bundle: Path,
    jpegs: list[bytes],
    result: dict[str, Any],
    out_dir: Path,
    threads: int = 2,
    seconds: float = 10.0,
    console: Console | None = None,
) -> dict[str, Any]:
    """The PLC rows of `bundle`, over OPC UA then Modbus TCP, as ratios to the model-only median
    that `result` (the same run's A and B of the same bundle) measured."""
    say = console.print if console is not None else (lambda *_: None)
    model_ms = result["model_median_ms"]
    plc: dict[str, Any] = {
        "bundle": str(bundle),
        "cameras": PLC_CAMERAS,
        "fps": PLC_FPS,
        "seconds": seconds,
        "threads": threads,
        "model_median_ms": model_ms,
        # B at 2 x 15 fps in the same run, without a PLC: the HTTP verdict's bar, for comparison.
        "http_p99_ms": result["paced_2x15fps"]["p99_ms"],
        "http_p99_over_model_median": result["paced_2x15fps"]["p99_ms"] / model_ms,
    }
    for name, label in PROTOCOLS.items():
        say(f"PLC rows: {label}, {PLC_CAMERAS} cameras x {PLC_FPS:g} fps for {seconds:g} s")
        with simulated_plc(name) as (section, arrivals):
            rows = measure_protocol(name, section, arrivals, bundle, jpegs, threads, seconds, out_dir)
            rows |= writer_alone(name, section, arrivals)
        plc[name] = rows
        plc[f"{name}_p50_ms"] = rows["p50_ms"]
        plc[f"{name}_p99_ms"] = rows["p99_ms"]
        plc[f"{name}_p50_over_model_median"] = rows["p50_ms"] / model_ms
        plc[f"{name}_p99_over_model_median"] = rows["p99_ms"] / model_ms
        say(
            f"  {rows['parts_seen_at_plc']}/{rows['parts_sent']} parts at the PLC, p50 {rows['p50_ms']:.1f} ms, "
            f"p99 {rows['p99_ms']:.1f} ms ({plc[f'{name}_p99_over_model_median']:.2f} x the model median)"
        )
    return plc
