"""A real MQTT broker for tests: Debian's mosquitto on 127.0.0.1 and a free port.

`make test` installs mosquitto when it is missing (as it does Chromium). The broker persists
its sessions and queued messages in the test's folder, so a restart (`restart()`) keeps what a
persistent subscriber has not yet received, as a plant broker would.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from zerodefect.services import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
START_TIMEOUT = 10.0


class Broker:
    def __init__(self, folder: Path):
        if not Path(MOSQUITTO).exists() and shutil.which("mosquitto") is None:
            raise RuntimeError(
                "mosquitto is not installed: `make test` installs it (apt-get install mosquitto)"
            )
        self.folder = folder
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, mosquitto would switch to its own user, who cannot write here.
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            f"log_dest file {folder}/mosquitto.log\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (
                    (self.folder / "mosquitto.log").read_text()
                    if (self.folder / "mosquitto.log").exists()
                    else ""
                )
                raise RuntimeError(f"mosquitto did not start on port {self.port}: {log[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistent sessions on the way out."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def broker(folder: Path) -> Iterator[Broker]:
    running = Broker(folder)
    running.start()
    try:
        yield running
    finally:
        running.stop()


class Subscriber:
    """A QoS 1 subscriber, persistent by default (clean_session off): across a broker restart it
    keeps its subscription and gets what was queued for it. Collects (topic, payload, retained)."""

    def __init__(self, port: int, topic: str, client_id: str = "zd-test-mes", persistent: bool = True):
        self.messages: list[tuple[str, bytes, bool]] = []
        # Payloads the broker sent again with the DUP flag: QoS 1 redeliveries to this session.
        self.redelivered: list[bytes] = []
        self._lock = threading.Lock()
        self.topic = topic
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(START_TIMEOUT):
            raise RuntimeError(f"could not subscribe to {topic}")

    def _on_message(self, _client, _userdata, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))
            if message.dup:
                self.redelivered.append(message.payload)

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [payload for _, payload, _ in self.messages]

    def json(self) -> list[dict]:
        return [json.loads(p) for p in self.payloads()]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
