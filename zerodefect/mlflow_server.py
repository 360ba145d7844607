"""The central MLflow tracking server: the `mlflow server` command zerodefect runs, and a check
that one answers.

A plant runs one server for every training machine and station: the backend store holds runs
and the model registry (PostgreSQL there, the data dir's SQLite by default), and the server
proxies artifacts, so clients need only its URL (MLFLOW_TRACKING_URI=http://HOST:PORT).
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from zerodefect.settings import Settings, get_settings


def server_command(
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 2,
    allowed_hosts: str | None = None,
    settings: Settings | None = None,
) -> list[str]:
    """The argv of `mlflow server` (this interpreter's MLflow) for the given stores; the
    defaults are the embedded store's, so a single machine's runs carry over to its server.
    `allowed_hosts` feeds MLflow's DNS-rebinding check: without it, only loopback and private
    addresses may name the server in their Host header."""
    settings = settings or get_settings()
    backend = backend_store_uri or f"sqlite:///{(settings.data_dir / 'mlflow.db').resolve()}"
    if backend.startswith("sqlite:///"):
        Path(backend.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    artifacts = artifacts_destination or str(settings.artifact_root)
    extra = ["--allowed-hosts", allowed_hosts] if allowed_hosts else []
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        *extra,
    ]


def answers(url: str) -> bool:
    """Whether an MLflow server at `url` answers its /health check."""
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
