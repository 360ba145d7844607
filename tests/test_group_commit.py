"""Group commit keeps the outbox's promise: a part is answered only after the commit that holds
it, however many parts share that commit (one fsync for the group, not one per part)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from zerodefect.edge.outbox import Outbox
from zerodefect.services import start_zerodefect

from .test_durability import line_in_processes, post_until_killed, wait_healthy
from .test_edge import png


def stored_keys(path: Path) -> set[str]:
    """The keys committed to an outbox file, read by a connection of its own."""
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT key FROM outbox")}


def test_no_result_resolves_before_the_commit_that_holds_it(tmp_path: Path) -> None:
    """Another writer holds the database: 40 results queue, none resolves; once it lets go,
    they commit in groups, and each is on disk (seen by another connection) when it resolves."""
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    groups: list[int] = []
    outbox.on_group = groups.append
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock: the outbox's writer must wait for it
    futures = [outbox.submit(f"k{i}", {"key": f"k{i}"}, {"key": f"k{i}", "n": i}) for i in range(40)]
    futures.append(outbox.submit("k3", {"key": "k3"}, {"key": "k3", "n": "retry"}))  # a camera's retry
    assert not any(f.done() for f in futures)
    assert stored_keys(path) == set()
    other.execute("COMMIT")
    other.close()
    for i, future in enumerate(futures[:40]):
        created, response = future.result(timeout=30)
        assert created and response["n"] == i
        assert f"k{i}" in stored_keys(path)  # committed before its answer
    assert futures[40].result(timeout=30) == (False, {"key": "k3", "n": 3})  # the first answer
    outbox.close()
    assert sum(groups) == 41 and max(groups) > 1, groups  # shared commits, not one per result


def test_sigkill_under_load_loses_no_answered_part_from_the_outbox(tmp_path: Path) -> None:
    """4 cameras against a station whose record is down; killed after 60 answers: every answered
    key is in the outbox file, and commits were shared (zd_outbox_group_size) before the kill."""
    line = line_in_processes(tmp_path, store_images="none")
    edge = start_zerodefect(line.edge_args, line.log, line.env)
    wait_healthy(line.edge_url, edge, line.log)
    metrics: list[str] = []

    def scrape() -> None:
        metrics.append(httpx.get(f"{line.edge_url}/metrics", timeout=10).text)

    answered = post_until_killed(line.edge_url, edge, png(90), "g", 60, 600, scrape)
    assert len(answered) >= 60
    missing = set(answered) - stored_keys(tmp_path / "outbox.db")
    assert not missing, f"{len(missing)} answered parts are not in the outbox"
    samples = {
        line.split()[0]: float(line.split()[1])
        for line in metrics[0].splitlines()
        if line.startswith("zd_outbox_group_size_")
    }
    assert samples["zd_outbox_group_size_sum"] >= 60
    assert samples["zd_outbox_group_size_count"] < samples["zd_outbox_group_size_sum"], "no commit was shared"


def test_a_cancelled_request_still_has_its_result_written_and_the_writer_goes_on(tmp_path: Path) -> None:
    """A future cancelled before its commit (the request gone) never stops the writer: its
    result is written all the same, and the results after it are committed and answered."""
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    first = outbox.submit("first", {"key": "first"}, {"key": "first"})
    deadline = time.monotonic() + 30
    while not first.running():  # the writer took its group and waits for the database
        assert time.monotonic() < deadline
        time.sleep(0.01)  # polling a thread's state, not a timing assumption
    gone = outbox.submit("gone", {"key": "gone"}, {"key": "gone"})
    assert gone.cancel()  # queued behind the blocked group: still pending
    other.execute("COMMIT")
    other.close()
    assert first.result(timeout=30) == (True, {"key": "first"})
    assert outbox.submit("next", {"key": "next"}, {"key": "next"}).result(timeout=30)[0]
    assert stored_keys(path) == {"first", "gone", "next"}
    outbox.close()
