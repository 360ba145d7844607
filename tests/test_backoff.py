"""One back-off: the station's forwarder keeps retrying a record that has been down for days."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from zerodefect.backoff import backoff_delay
from zerodefect.edge.forwarder import Forwarder
from zerodefect.edge.outbox import Outbox
from zerodefect.services import free_port


def test_back_off_doubles_up_to_its_cap_for_any_number_of_attempts() -> None:
    assert [backoff_delay(a, 0.25, 30.0) for a in (0, 1, 2, 6, 7)] == [0.25, 0.5, 1.0, 16.0, 30.0]
    assert backoff_delay(5000, 0.25, 30.0) == 30.0  # 0.25 * 2**5000 would overflow a float


def test_a_result_retried_thousands_of_times_is_retried_again_at_the_cap(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.put("k-1", {"serial": "S1"}, {"verdict": "pass"})
    with sqlite3.connect(outbox.path) as db:
        db.execute("UPDATE outbox SET attempts = 5000 WHERE key = 'k-1'")
    forwarder = Forwarder(outbox, f"http://127.0.0.1:{free_port()}", "key", max_backoff=30.0)
    before = time.time()
    with httpx.Client(timeout=5) as client:
        assert forwarder.flush_once(client) == 0  # the record is down
    with sqlite3.connect(outbox.path) as db:
        attempts, next_try = db.execute("SELECT attempts, next_try FROM outbox WHERE key = 'k-1'").fetchone()
    assert attempts == 5001 and before + 30.0 <= next_try <= time.time() + 30.0
    assert forwarder.record_up is False
    outbox.close()
