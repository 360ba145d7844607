"""Results to the MES over MQTT, against a real mosquitto: none lost across a broker restart,
a retained status, and the last will when the station dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from zerodefect.edge.app import create_app as create_edge
from zerodefect.edge.config import MqttConfig, StationConfig
from zerodefect.edge.mqtt import MqttPublisher
from zerodefect.edge.outbox import Outbox

from .mosquitto import Subscriber, broker
from .servers import serve
from .test_edge import png, post, station, wait_for

TOPIC = "zd/v1/plant1/L1/st-01"


def mqtt_section(port: int) -> dict:
    return {"host": "127.0.0.1", "port": port, "site": "plant1", "reconnect_max_seconds": 1}


def status_now(port: int) -> tuple[bytes, bool]:
    """What a subscriber connecting now learns of the station: the retained status."""
    fresh = Subscriber(port, f"{TOPIC}/status", client_id="zd-test-status", persistent=False)
    try:
        wait_for(lambda: fresh.messages, 10)
        _, payload, retained = fresh.messages[-1]
        return payload, retained
    finally:
        fresh.close()


def test_every_result_reaches_the_broker_once_across_a_broker_restart(
    tmp_path: Path, data_dir: Path, bundles
) -> None:
    (tmp_path / "broker").mkdir()
    with broker(tmp_path / "broker") as mosquitto:
        mes = Subscriber(mosquitto.port, f"{TOPIC}/result")
        config = station(tmp_path, str(bundles["reject"]), line="L1", mqtt=mqtt_section(mosquitto.port))
        answers: dict[str, str] = {}

        def shoot(first: int, count: int) -> None:
            for i in range(first, first + count):
                answer = post(url, png(60 + i), serial=f"SN-{i}", frame_id=f"f{i}")
                assert answer.status_code == 200, answer.text
                answers[answer.json()["key"]] = f"SN-{i}"

        with serve(create_edge(config)) as url:
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["mqtt"]["connected"])
            assert status_now(mosquitto.port) == (b"online", True)
            shoot(0, 20)
            mosquitto.stop()
            # The broker is down: parts are still judged at once, and wait in the outbox.
            shoot(20, 20)
            wait_for(lambda: not httpx.get(f"{url}/readyz").json()["mqtt"]["connected"])
            assert httpx.get(f"{url}/readyz").json()["mqtt"]["pending"] >= 20
            mosquitto.start()
            shoot(40, 20)
            wait_for(lambda: len({m["key"] for m in mes.json()}) >= 60)
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["mqtt"]["pending"] == 0)
        received = mes.json()
        mes.close()
        counts = Counter(m["key"] for m in received)
        # Every part arrived, none unknown; QoS 1 may repeat a message the broker stored but did
        # not acknowledge before it went down: the MES counts by key, so each part counts once.
        assert set(counts) == set(answers)
        assert {m["key"]: m["serial"] for m in received} == answers
        duplicates = sum(counts.values()) - len(counts)
        print(f"mqtt: {len(counts)} parts, {duplicates} repeated deliveries across the restart")
        assert all(
            m["site"] == "plant1"
            and m["line"] == "L1"
            and m["station"] == "st-01"
            and m["verdict"] == "reject"
            for m in received
        )
        assert not any("image_b64" in m for m in received)
        # A clean stop says offline, retained.
        assert status_now(mosquitto.port) == (b"offline", True)


STATION_PROCESS = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path

    from zerodefect.edge.config import MqttConfig
    from zerodefect.edge.mqtt import MqttPublisher
    from zerodefect.edge.outbox import Outbox

    outbox = Outbox(Path(sys.argv[1]), destinations=("mqtt",))
    config = MqttConfig(host="127.0.0.1", port=int(sys.argv[2]), site="plant1", keepalive_seconds=60)
    publisher = MqttPublisher(outbox, config, "st-01", "L1")
    publisher.start()
    for _ in range(200):  # bounded: 10 s
        if publisher.connected:
            print("up", flush=True)
            break
        time.sleep(0.05)
    sys.stdin.read()
    """
)


def test_the_last_will_says_offline_when_the_station_dies(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    with broker(tmp_path / "broker") as mosquitto:
        watcher = Subscriber(mosquitto.port, f"{TOPIC}/status", client_id="zd-test-watcher")
        process = subprocess.Popen(
            [sys.executable, "-c", STATION_PROCESS, str(tmp_path / "outbox.db"), str(mosquitto.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout.readline().strip() == b"up"
            wait_for(lambda: b"online" in watcher.payloads(), 10)
            os.kill(process.pid, signal.SIGKILL)  # no goodbye: only the broker can tell
            process.wait(10)
            # keepalive is 60 s: the will comes from the broker seeing the connection drop.
            wait_for(lambda: watcher.payloads()[-1:] == [b"offline"], 10)
        finally:
            if process.poll() is None:
                process.kill()
            watcher.close()
        assert status_now(mosquitto.port) == (b"offline", True)


def test_the_mqtt_section_is_strict() -> None:
    base = {"station": "st-01", "model": "m", "line": "L1"}
    StationConfig(**base, mqtt={"host": "h", "site": "plant1"})
    with pytest.raises(ValidationError, match="line"):
        StationConfig(**(base | {"line": None}), mqtt={"host": "h", "site": "plant1"})
    with pytest.raises(ValidationError, match="topic"):
        StationConfig(**(base | {"station": "st/01"}), mqtt={"host": "h", "site": "plant1"})
    with pytest.raises(ValidationError, match="extra"):
        StationConfig(**base, mqtt={"host": "h", "site": "plant1", "qos": 2})


def test_results_queued_while_the_station_was_down_go_out_when_it_starts(tmp_path: Path) -> None:
    """The outbox keeps each destination's state apart: the record having a result does not
    take it from the MES, and what a stopped station had not published goes out on its start."""
    outbox = Outbox(tmp_path / "outbox.db", destinations=("mqtt",))
    for i in range(5):
        outbox.put(f"k{i}", {"key": f"k{i}", "serial": f"SN-{i}", "image_b64": "AAAA"}, {"key": f"k{i}"})
    outbox.delivered("k0")  # the record has it; the MES not yet
    assert outbox.counts()["pending"] == 4 and outbox.counts_for("mqtt") == {
        "total": 5,
        "delivered": 0,
        "pending": 5,
    }
    outbox.close()
    (tmp_path / "broker").mkdir()
    with broker(tmp_path / "broker") as mosquitto:
        mes = Subscriber(mosquitto.port, f"{TOPIC}/result", client_id="zd-test-restart", persistent=False)
        outbox = Outbox(tmp_path / "outbox.db", destinations=("mqtt",))  # the station starts again
        publisher = MqttPublisher(outbox, MqttConfig(**mqtt_section(mosquitto.port)), "st-01", "L1")
        publisher.start()
        try:
            wait_for(lambda: publisher.pending() == 0, 10)
            wait_for(lambda: len(mes.messages) >= 5, 10)
        finally:
            publisher.stop()
            mes.close()
            outbox.close()
    assert sorted(m["key"] for m in mes.json()) == [f"k{i}" for i in range(5)]
    assert all("image_b64" not in m and m["site"] == "plant1" for m in mes.json())
