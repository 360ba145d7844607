"""Shared fixtures: a private data dir and MLflow store per test module, and generated data."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
