"""The durable outbox: every accepted result is on disk before the camera gets its answer.

A local SQLite file (WAL, synchronous=FULL) holds results until the quality record confirms
them. Keys are idempotency keys, so a result is written once however often a camera retries,
and the record stores it once however often the forwarder delivers it. Killing the process at
any moment loses nothing that was acknowledged.

The record is the outbox's first destination (the columns of `outbox`); other destinations
(the MES over MQTT) each get a row in `forwarding`, written in the same transaction as the
result, so every destination has its own delivery state and none waits for another.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The most results one commit holds: a burst of cameras is written in a few commits, and no
# answer waits behind an unbounded transaction.
MAX_GROUP = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    payload TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    delivered REAL,
    dead TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered, dead, next_try);
CREATE TABLE IF NOT EXISTS station_secret (id INTEGER PRIMARY KEY CHECK (id = 1), value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS forwarding (
    destination TEXT NOT NULL,
    key TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    delivered REAL,
    PRIMARY KEY (destination, key)
);
CREATE INDEX IF NOT EXISTS forwarding_due ON forwarding (destination, delivered, next_try);
"""


# What the other destinations get of a result: the record's fields but not the image nor the
# heatmap (megabytes), which stay with the record.
HEAVY_FIELDS = ("image_b64", "heatmap_b64", "image_type")


def light_result(payload: dict[str, Any], **where: str | None) -> dict[str, Any]:
    """A part's result for an MES or a QMS: the record's payload without the heavy fields, plus
    where it came from (site, line, station)."""
    body = {k: v for k, v in payload.items() if k not in HEAVY_FIELDS}
    body.update(where)
    return body


class Outbox:
    def __init__(self, path: Path, destinations: tuple[str, ...] = ()):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        # The station's key secret: made once with the outbox and kept beside the results it
        # names, so a frame's idempotency key is stable across restarts yet not computable by
        # anyone who only knows the frame (zerodefect.edge.station.idempotency_key).
        self._db.execute(
            "INSERT OR IGNORE INTO station_secret (id, value) VALUES (1, ?)", (secrets.token_hex(32),)
        )
        self.secret: bytes = bytes.fromhex(
            self._db.execute("SELECT value FROM station_secret WHERE id = 1").fetchone()[0]
        )
        self.wakeup = threading.Event()
        # Other destinations than the record: each result is queued for each of them, and each
        # has its own wake-up, so one consumer clearing its event never hides a result from another.
        self.destinations = destinations
        self.wakeups = {name: threading.Event() for name in destinations}
        # The group-commit writer (submit), started with the first result submitted.
        self._pending: queue.Queue[tuple[str, dict[str, Any], dict[str, Any], Future] | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        # Told each group's size after its commit (the station's zd_outbox_group_size).
        self.on_group: Callable[[int], None] | None = None

    def put(self, key: str, payload: dict[str, Any], response: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Persist a result; returns (created, the response stored under this key).

        A repeated key (a camera retrying a frame) returns the first answer unchanged.
        """
        return self.put_many([(key, payload, response)])[0]

    def put_many(
        self, items: Sequence[tuple[str, dict[str, Any], dict[str, Any]]]
    ) -> list[tuple[bool, dict[str, Any]]]:
        """Persist results in one transaction, so one fsync (the commit's) for all of them;
        returns (created, stored response) per item, in order. Nothing is returned before the
        commit: a caller that answers after this never answers for a result not on disk."""
        rows = [(key, json.dumps(payload), json.dumps(response)) for key, payload, response in items]
        now = time.time()
        outcomes: list[tuple[bool, dict[str, Any]]] = []
        with self._lock:
            # One transaction: a result is never on disk without its entries for the other
            # destinations.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for (key, payload_json, response_json), (_, _, response) in zip(rows, items, strict=True):
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO outbox (key, payload, response, created) VALUES (?, ?, ?, ?)",
                        (key, payload_json, response_json, now),
                    )
                    if cursor.rowcount == 1:
                        self._db.executemany(
                            "INSERT OR IGNORE INTO forwarding (destination, key) VALUES (?, ?)",
                            [(name, key) for name in self.destinations],
                        )
                        outcomes.append((True, response))
                    else:
                        stored = self._db.execute(
                            "SELECT response FROM outbox WHERE key = ?", (key,)
                        ).fetchone()
                        outcomes.append((False, json.loads(stored[0])))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if any(created for created, _ in outcomes):
            self.wakeup.set()
            for event in self.wakeups.values():
                event.set()
        return outcomes

    def submit(self, key: str, payload: dict[str, Any], response: dict[str, Any]) -> Future:
        """Queue a result for the group-commit writer; the future resolves to `put`'s answer
        once the transaction holding it has committed (its fsync done), or to its error.

        Results that arrive while the writer is committing wait for the next commit and share
        it: one fsync per group instead of one per part, with the same guarantee, since no
        future resolves before its own commit returned."""
        future: Future = Future()
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="outbox-writer", daemon=True)
                self._writer.start()
        self._pending.put((key, payload, response, future))
        return future

    def _write(self) -> None:
        """The group-commit writer: take what is waiting (up to MAX_GROUP), commit it, resolve."""
        while True:
            first = self._pending.get()
            if first is None:
                return
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._pending.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._pending.put(None)
                    break
                group.append(nxt)
            # A request cancelled meanwhile (its camera gone) still has its judged result written,
            # as a retry of its frame will find it; only its future is left unresolved.
            waiting = [future.set_running_or_notify_cancel() for *_, future in group]
            try:
                outcomes = self.put_many([(key, payload, response) for key, payload, response, _ in group])
            except Exception as exc:  # nothing of the group is on disk: every request fails
                log.exception("outbox commit of %d results failed", len(group))
                for (*_, future), live in zip(group, waiting, strict=True):
                    if live:
                        future.set_exception(exc)
                continue
            for (*_, future), outcome, live in zip(group, outcomes, waiting, strict=True):
                if live:
                    future.set_result(outcome)
            if self.on_group is not None:
                try:
                    self.on_group(len(group))
                except Exception:  # a metric must never stop the writer
                    log.exception("outbox group hook failed")

    def due(self, limit: int = 32) -> list[tuple[str, dict[str, Any], int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, payload, attempts FROM outbox WHERE delivered IS NULL AND dead IS NULL "
                "AND next_try <= ? ORDER BY created LIMIT ?",
                (time.time(), limit),
            ).fetchall()
        return [(k, json.loads(p), a) for k, p, a in rows]

    def delivered(self, key: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET delivered = ?, attempts = attempts + 1 WHERE key = ?", (time.time(), key)
            )

    def due_count(self, limit: int) -> int:
        """How many results are due, counted up to `limit` (the forwarder's batch fill check)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM outbox WHERE delivered IS NULL AND dead IS NULL "
                "AND next_try <= ? LIMIT ?)",
                (time.time(), limit),
            ).fetchone()
        return int(row[0])

    def settle(
        self,
        delivered: Sequence[str] = (),
        retried: Sequence[tuple[str, float]] = (),
        dead: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A batch's outcomes in one transaction: one fsync for the batch, not one per result."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE outbox SET delivered = ?, attempts = attempts + 1 WHERE key = ?",
                    [(now, key) for key in delivered],
                )
                self._db.executemany(
                    "UPDATE outbox SET attempts = attempts + 1, next_try = ? WHERE key = ?",
                    [(now + delay, key) for key, delay in retried],
                )
                self._db.executemany(
                    "UPDATE outbox SET dead = ?, attempts = attempts + 1 WHERE key = ?",
                    [(reason[:500], key) for key, reason in dead],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def retry(self, key: str, delay: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_try = ? WHERE key = ?",
                (time.time() + delay, key),
            )

    def dead(self, key: str, reason: str) -> None:
        """Park a result the record refuses (a 4xx): kept, counted, never silently dropped."""
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET dead = ?, attempts = attempts + 1 WHERE key = ?", (reason[:500], key)
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), SUM(delivered IS NOT NULL), SUM(dead IS NOT NULL) FROM outbox"
            ).fetchone()
        total, delivered, dead = (int(v or 0) for v in row)
        return {"total": total, "delivered": delivered, "dead": dead, "pending": total - delivered - dead}

    def due_for(self, destination: str, limit: int = 32) -> list[tuple[str, dict[str, Any], int]]:
        """Results not yet delivered to `destination` (not the record), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.key, o.payload, f.attempts FROM forwarding f JOIN outbox o ON o.key = f.key "
                "WHERE f.destination = ? AND f.delivered IS NULL AND f.next_try <= ? "
                "ORDER BY o.created LIMIT ?",
                (destination, time.time(), limit),
            ).fetchall()
        return [(k, json.loads(p), a) for k, p, a in rows]

    def delivered_to(self, destination: str, key: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE forwarding SET delivered = ?, attempts = attempts + 1 WHERE destination = ? AND key = ?",
                (time.time(), destination, key),
            )

    def retry_for(self, destination: str, key: str, delay: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE forwarding SET attempts = attempts + 1, next_try = ? WHERE destination = ? AND key = ?",
                (time.time() + delay, destination, key),
            )

    def counts_for(self, destination: str) -> dict[str, int]:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), SUM(delivered IS NOT NULL) FROM forwarding WHERE destination = ?",
                (destination,),
            ).fetchone()
        total, delivered = (int(v or 0) for v in row)
        return {"total": total, "delivered": delivered, "pending": total - delivered}

    def close(self) -> None:
        """Commit what the writer holds, then close the database."""
        if self._writer is not None:
            self._pending.put(None)
            self._writer.join(10)
        with self._lock:
            self._db.close()
