"""Verdicts to the PLC over loopback: asyncua's and pymodbus's own servers play the PLC."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from zerodefect.edge.app import create_app as create_edge
from zerodefect.edge.config import StationConfig
from zerodefect.edge.plc import part_id_words

from . import plcsims
from .plcsims import ModbusPlcSim, opcua_section
from .servers import serve
from .test_edge import png, post, station, wait_for


def modbus_section(port: int, **changes) -> dict:
    """The simulated Modbus PLC's section, with a link that notices a lost PLC quickly."""
    quick = {"heartbeat_seconds": 0.2, "reconnect_max_seconds": 0.2, "timeout_seconds": 1.0}
    return plcsims.modbus_section(port, **(quick | changes))


def post_parts(url: str, serials: list[str]) -> list[dict]:
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda s: post(url, png(), serial=s, frame_id=f"f-{s}"), serials))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return [a.json() for a in answers]


def test_opcua_verdicts_reach_the_plc_with_their_part_ids(
    tmp_path: Path, data_dir: Path, bundles, opcua_plc
) -> None:
    sim = opcua_plc
    plc = opcua_section(sim)
    sim.seen.clear()
    with serve(create_edge(station(tmp_path, str(bundles["pass"]), plc=plc, pass_sample_rate=0.0))) as url:
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["plc"]["connected"])
        serials = [f"OPC-{i}" for i in range(6)]
        answers = post_parts(url, serials)
        assert {a["verdict"] for a in answers} == {"pass"}
        wait_for(lambda: len(sim.seen) == len(serials))
        # Each part once, with its own id, code 1 (pass) and its score, all handshakes completed.
        assert sorted(part for part, _, _ in sim.seen) == serials
        scores = {a["serial"]: a["score"] for a in answers}
        assert all(
            code == 1 and score == pytest.approx(scores[part], rel=1e-6) for part, code, score in sim.seen
        )
        metrics = httpx.get(f"{url}/metrics").text
        assert (
            'zd_plc_writes_total{verdict="pass"} 6.0' in metrics
            and "zd_plc_ack_timeouts_total 0.0" in metrics
        )
        assert "zd_plc_connected 1.0" in metrics


def test_a_missed_opcua_handshake_is_counted_and_the_link_stays_up(
    tmp_path: Path, data_dir: Path, bundles, opcua_plc
) -> None:
    plc = opcua_section(opcua_plc, score_node=None, ack_node=opcua_plc.node("NoAck"), ack_timeout_ms=30)
    with serve(create_edge(station(tmp_path, str(bundles["reject"]), plc=plc))) as url:
        post_parts(url, ["NOACK-1", "NOACK-2"])
        wait_for(lambda: "zd_plc_ack_timeouts_total 2.0" in httpx.get(f"{url}/metrics").text)
        assert httpx.get(f"{url}/readyz").json()["plc"] == {
            "protocol": "opcua",
            "connected": True,
            "queued": 0,
        }
        assert 'zd_plc_writes_total{verdict="reject"} 2.0' in httpx.get(f"{url}/metrics").text


def test_modbus_reject_coil_pulses_for_rejects_and_failsafe_rejects(
    tmp_path: Path, data_dir: Path, bundles, modbus_plc: ModbusPlcSim
) -> None:
    config = station(tmp_path, str(bundles["reject"]), plc=modbus_section(modbus_plc.port))
    with serve(create_edge(config)) as url:
        serials = [f"MB-{i}" for i in range(5)]
        post_parts(url, serials)
        wait_for(lambda: len(modbus_plc.results(10, 10)) == 5)
        assert sorted(modbus_plc.results(10, 10)) == [(2, s) for s in serials]
        wait_for(lambda: modbus_plc.coil_edges(3) == 5)
        # Each pulse ends: the coil is released after pulse_ms.
        wait_for(lambda: modbus_plc.writes[-1][0] != 5 or modbus_plc.writes[-1][2] == [False])
    # A part not judged in time: the fail-safe reject pulses the coil too (code 3).
    modbus_plc.writes.clear()
    config = station(tmp_path, str(bundles["pass"]), budget_ms=0.001, plc=modbus_section(modbus_plc.port))
    with serve(create_edge(config)) as url:
        answer = post_parts(url, ["MB-LATE"])[0]
        assert answer["failsafe"] is True and answer["verdict"] == "reject"
        wait_for(lambda: modbus_plc.results(10, 10) == [(3, "MB-LATE")] and modbus_plc.coil_edges(3) == 1)


def test_a_lost_plc_never_blocks_judging_and_the_link_comes_back(
    tmp_path: Path, data_dir: Path, bundles, modbus_plc: ModbusPlcSim
) -> None:
    modbus_plc.stop()  # the PLC is off before the station starts
    config = station(tmp_path, str(bundles["reject"]), plc=modbus_section(modbus_plc.port))
    with serve(create_edge(config)) as url:
        started = time.perf_counter()
        answers = post_parts(url, [f"DOWN-{i}" for i in range(4)])
        assert all(a["verdict"] == "reject" and not a["failsafe"] for a in answers)
        assert time.perf_counter() - started < 10  # judged at once, not after PLC timeouts
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200 and ready.json()["plc"]["connected"] is False
        assert "zd_plc_connected 0.0" in httpx.get(f"{url}/metrics").text
        modbus_plc.start()  # the PLC comes back on the same port
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["plc"]["connected"])
        post_parts(url, ["BACK-1"])
        wait_for(lambda: (2, "BACK-1") in modbus_plc.results(10, 10))
        # The verdicts given while it was down were kept (younger than max_age_seconds).
        assert {p for _, p in modbus_plc.results(10, 10)} == {
            "DOWN-0",
            "DOWN-1",
            "DOWN-2",
            "DOWN-3",
            "BACK-1",
        }
        wait_for(lambda: "zd_plc_connected 1.0" in httpx.get(f"{url}/metrics").text)
        # An idle link keeps beating: the heartbeat register counts up.
        beats = len([w for w in modbus_plc.writes if w[0] == 6 and w[1] == 0])
        wait_for(lambda: len([w for w in modbus_plc.writes if w[0] == 6 and w[1] == 0]) > beats)


def test_verdicts_over_the_queue_or_too_old_for_their_part_are_dropped_not_written_late(
    tmp_path: Path, data_dir: Path, bundles, modbus_plc: ModbusPlcSim
) -> None:
    modbus_plc.stop()
    config = station(
        tmp_path,
        str(bundles["reject"]),
        plc=modbus_section(modbus_plc.port, max_age_seconds=1.0, queue_size=2),
    )
    with serve(create_edge(config)) as url:
        post_parts(url, ["OLD-1", "OLD-2", "OLD-3"])  # judged all the same: the queue never waits
        posted = time.perf_counter()
        assert httpx.get(f"{url}/readyz").json()["plc"] == {
            "protocol": "modbus",
            "connected": False,
            "queued": 2,
        }
        assert 'zd_plc_dropped_total{reason="queue_full"} 1.0' in httpx.get(f"{url}/metrics").text
        # The PLC returns only once those parts are past max_age_seconds (a fresh part, judged
        # and written within a second, is not): the rule is about age, so the clock is the test.
        wait_for(lambda: time.perf_counter() - posted > 1.1)
        modbus_plc.start()
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["plc"]["connected"])
        post_parts(url, ["NEW-1"])
        wait_for(lambda: modbus_plc.results(10, 10) == [(2, "NEW-1")])
        assert 'zd_plc_dropped_total{reason="too_old"} 2.0' in httpx.get(f"{url}/metrics").text
        assert modbus_plc.coil_edges(3) == 1


def test_part_ids_are_packed_two_characters_per_register_and_cut_to_fit() -> None:
    assert part_id_words("AB-1", 3) == [0x4142, 0x2D31, 0]
    assert part_id_words("ABCDEFG", 2) == [0x4142, 0x4344]
    assert part_id_words("anything", 0) == []


def test_a_plc_section_is_checked_strictly(tmp_path: Path) -> None:
    base = {"station": "st-01", "model": "x"}
    with pytest.raises(ValidationError, match="reject_coil"):
        StationConfig(**base, plc={"protocol": "modbus", "host": "h", "result_register": 1})
    with pytest.raises(ValidationError, match="extra"):
        StationConfig(**base, plc=modbus_section(502, tag="x"))
    with pytest.raises(ValidationError, match="profinet"):
        StationConfig(**base, plc={"protocol": "profinet"})
    assert StationConfig(**base, plc=modbus_section(502)).plc.pulse_ms == 20


def test_the_readme_plc_examples_are_valid_station_config() -> None:
    import re

    import yaml

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = re.split(r"\n##+ ", readme.split("### PLC (OPC UA, Modbus TCP)", 1)[1], maxsplit=1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    protocols = [
        StationConfig(station="st-01", model="x", **yaml.safe_load(block)).plc.protocol for block in blocks
    ]
    assert protocols == ["opcua", "modbus"]
