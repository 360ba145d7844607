"""Process-wide settings, read from the environment (prefix ``ZD_``) with embedded defaults.

The defaults are the embedded set-up that `make demo` uses: everything lives under one data
directory (SQLite MLflow store, runs, bundles), so nothing is written into the user's home.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZD_", extra="ignore")

    data_dir: Path = Path("var")
    # MLFLOW_TRACKING_URI (MLflow's own variable) wins over this default, so a real server
    # is selected exactly the way MLflow users expect.
    mlflow_tracking_uri: str | None = None
    # The quality record: SQLite (WAL) in the data dir by default, PostgreSQL by URL.
    record_url: str | None = None
    # Andon rules and webhooks (YAML, see configs/andon.yaml); without it the default rules
    # run and alerts show only in the app.
    andon_config: Path | None = None
    # The largest image the record stores or draws (a station's max_pixels should not exceed it).
    record_max_image_pixels: int = 25_000_000
    # The private key (PEM) that export signs bundles with; stations trust its public half.
    # Unset: DATA_DIR/keys/bundle-signing.key, created on first use (single-machine set-up).
    signing_key: Path | None = None

    @property
    def record_database_url(self) -> str:
        return self.record_url or f"sqlite:///{(self.data_dir / 'record.db').resolve()}"

    @property
    def default_signing_key(self) -> Path:
        return (self.data_dir / "keys" / "bundle-signing.key").resolve()

    @property
    def image_dir(self) -> Path:
        return (self.data_dir / "images").resolve()

    @property
    def tracking_uri(self) -> str:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or self.mlflow_tracking_uri
        if uri:
            return uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.data_dir / "mlartifacts").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()


def prepare_process_environment(settings: Settings | None = None) -> None:
    """Set the environment a zerodefect process expects, before heavy libraries load.

    Offline by construction (no telemetry, no hub), caches inside the data directory, and a
    malloc that keeps freed memory: glibc's default trimming costs about half of the CPU time
    in torch and ONNX Runtime on small machines.
    """
    settings = settings or get_settings()
    cache = (settings.data_dir / "cache").resolve()
    defaults = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "TORCH_HOME": str(cache / "torch"),
        "MPLBACKEND": "Agg",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # OpenMP threads that wait at a barrier sleep instead of spinning: on a machine shared
        # with other work, a spinning thread burns the core its partner needs. Measured on 2
        # cores with one competing process: 3.3 s per training step spinning, 2.2 s passive
        # (docs/results/README.md, "Threads"). Read when torch loads, so set before it does.
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    tune_malloc()


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds from inside the process.

    The environment variables MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ do the same when
    set before start (the Makefile exports them); this covers a plain `zerodefect` call.
    Measured at 224 px, batch 32 on 2 cores: 125 s/epoch untuned, 80 s with 2e9 (as with the
    environment variables), but 106 s with a 32 MiB threshold, since one batch's stem
    activations alone are about 51 MB. Returns False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok_mmap = libc.mallopt(m_mmap_threshold, 2_000_000_000)
    ok_trim = libc.mallopt(m_trim_threshold, 2_000_000_000)
    return bool(ok_mmap and ok_trim)


def configure_mlflow(settings: Settings | None = None) -> str:
    """Point MLflow (full or skinny) at the configured store; returns the tracking URI.

    Lives here, not in training, because the edge follows registry aliases without torch.
    """
    import mlflow

    settings = settings or get_settings()
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri
