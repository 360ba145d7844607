"""Shared fixtures: a private data dir and MLflow store per test module, generated data, and the
record's database on SQLite and on a throw-away PostgreSQL server."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from zerodefect.services import free_port
from zerodefect.settings import get_settings, prepare_process_environment

from .plcsims import ModbusPlcSim, OpcUaPlcSim
from .synthetic import make_folder_dataset


def _isolate(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZD_DATA_DIR", str(tmp / "var"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'var' / 'mlflow.db'}")
    get_settings.cache_clear()
    prepare_process_environment()
    return tmp / "var"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh data dir and embedded MLflow store for one test."""
    yield _isolate(tmp_path, monkeypatch)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory):
    """A data dir and MLflow store shared by one module's tests (training is the slow part)."""
    monkeypatch = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("store")
    yield _isolate(tmp, monkeypatch)
    import mlflow

    if mlflow.active_run():
        mlflow.end_run()
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good/ and scratch/ folders of 64x64 generated parts."""
    return make_folder_dataset(tmp_path_factory.mktemp("parts") / "images")


os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small signed classifier bundles for the station's tests, made once: "reject" rejects
    every part, "pass" passes every part. Read-only: copy one before changing it."""
    from .bundles import PASS_ALL, REJECT_ALL, make_bundle

    root = tmp_path_factory.mktemp("bundles")
    return {
        "reject": make_bundle(root / "reject", REJECT_ALL),
        "pass": make_bundle(root / "pass", PASS_ALL, seed=1),
    }


@pytest.fixture(scope="session")
def opcua_plc() -> Iterator[OpcUaPlcSim]:
    """asyncua's server (tests/plcsims.py) takes about 3 s to start: one per session, shared by
    the PLC and line tests. Tests clear its `seen` list before use."""
    sim = OpcUaPlcSim(f"opc.tcp://127.0.0.1:{free_port()}/zd/")
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def modbus_plc() -> Iterator[ModbusPlcSim]:
    """pymodbus's TCP server on a free loopback port, recording every write (tests/plcsims.py)."""
    sim = ModbusPlcSim(free_port())
    sim.start()
    yield sim
    sim.close()


# The record's test databases on PostgreSQL: a copy of one migrated at the session's start, so a
# test pays a CREATE DATABASE (tens of ms), not the migrations (tests/test_migrations.py runs those).
BACKENDS = ["sqlite", "postgresql"]
RECORD_TEMPLATE = "record_head"
_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator:
    """A throw-away PostgreSQL cluster for the session (zerodefect/pgcluster.py), with an empty
    record migrated to head as the template of every test's database; deleted at the end."""
    from zerodefect.pgcluster import postgres_cluster
    from zerodefect.quality.db import migrate

    with postgres_cluster() as cluster:
        migrate(cluster.create_database(RECORD_TEMPLATE))
        yield cluster


@pytest.fixture(params=BACKENDS)
def empty_db(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    """The SQLAlchemy URL of an empty database, once on SQLite and once on PostgreSQL, for tests
    that run the migrations themselves. Not ZD_RECORD_URL: nothing else of the test sees it."""
    if request.param == "sqlite":
        yield f"sqlite:///{data_dir / 'empty.db'}"
        return
    cluster = request.getfixturevalue("postgres")
    name = f"empty_{next(_databases)}"
    yield cluster.create_database(name)
    cluster.drop_database(name)


@contextmanager
def _record_database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """ZD_RECORD_URL for the backend in request.param: the data dir's SQLite file, or a new
    PostgreSQL database (a copy of the migrated template), dropped afterwards."""
    monkeypatch.delenv("ZD_RECORD_URL", raising=False)  # never a developer's own record
    get_settings.cache_clear()
    if request.param == "sqlite":
        yield get_settings().record_database_url
        return
    cluster = request.getfixturevalue("postgres")
    name = f"record_{next(_databases)}"
    url = cluster.create_database(name, template=RECORD_TEMPLATE)
    monkeypatch.setenv("ZD_RECORD_URL", url)
    get_settings.cache_clear()
    try:
        yield url
    finally:
        cluster.drop_database(name)


@pytest.fixture(params=BACKENDS)
def record_db(
    request: pytest.FixtureRequest, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The record's database for one test, once on SQLite (in its data dir) and once on
    PostgreSQL: set as ZD_RECORD_URL, so every app, CLI command and store call of the test uses
    it. A test or fixture asks for it to run on both backends."""
    with _record_database(request, monkeypatch) as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def module_record_db(request: pytest.FixtureRequest, module_store: Path) -> Iterator[str]:
    """record_db shared by one module's tests (beside module_store): for a module whose tests
    read one slow-to-build record, built once per backend."""
    monkeypatch = pytest.MonkeyPatch()
    with _record_database(request, monkeypatch) as url:
        yield url
    monkeypatch.undo()
    get_settings.cache_clear()
