"""The throw-away PostgreSQL server (zerodefect/pgcluster.py) the suite and the benchmarks use:
loopback only, durable when asked, and gone (process and directory) once stopped."""

from __future__ import annotations

import socket

import psycopg
import pytest

from zerodefect.pgcluster import PostgresError, find_bindir, start_cluster


def test_a_cluster_listens_on_loopback_and_leaves_nothing_behind() -> None:
    cluster = start_cluster(durable=True)
    try:
        url = cluster.create_database("probe")
        assert url == f"postgresql+psycopg://zd@127.0.0.1:{cluster.port}/probe"
        with psycopg.connect(cluster.url("probe", driver="postgresql")) as db:
            settings = dict(
                db.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'listen_addresses', 'unix_socket_directories')"
                ).fetchall()
            )
        assert settings == {
            "fsync": "on",
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(cluster.root),
        }
        with pytest.raises(PostgresError, match="letters, digits"):
            cluster.create_database('x"; DROP DATABASE probe; --')
    finally:
        cluster.stop()
    assert not cluster.root.exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", cluster.port)) != 0  # the server is gone


def test_the_session_cluster_is_fast_and_not_durable(postgres) -> None:
    with psycopg.connect(postgres.url(driver="postgresql")) as db:
        assert db.execute("SHOW fsync").fetchone() == ("off",)
        assert db.execute("SHOW synchronous_commit").fetchone() == ("off",)


def test_a_missing_postgresql_is_named_with_its_fix(monkeypatch) -> None:
    monkeypatch.setenv("ZD_PG_BINDIR", "/nonexistent/bin")
    with pytest.raises(PostgresError, match="install Debian's postgresql package"):
        find_bindir()
