"""A central MLflow server, for real: `zerodefect serve mlflow` runs `mlflow server` in its own
process, on a PostgreSQL backend store as in a plant (the suite's throw-away cluster); training logs to it, the gate promotes through it (a canary line first, then every
line), stations follow the alias from it, and a rollback moves them back."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import mlflow
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from zerodefect.cli import app as cli
from zerodefect.edge.app import create_app as create_edge
from zerodefect.inference.signing import public_key_b64, signing_key
from zerodefect.mlflow_server import answers
from zerodefect.quality.db import record_session
from zerodefect.quality.models import ModelPromotion
from zerodefect.services import free_port, start_zerodefect, stop_process, wait_ready
from zerodefect.settings import get_settings
from zerodefect.training.config import load_config
from zerodefect.training.pipeline import run_training
from zerodefect.training.registry import promote

from .bundles import PASS_ALL, TRUSTED_KEY, make_bundle, register
from .servers import serve
from .test_edge import png, post, station, wait_for
from .test_pipeline import MODEL, tiny_config

POLL = 0.2  # seconds between a station's alias checks (a plant polls about once a minute)


def test_a_real_mlflow_server_trains_promotes_a_canary_and_rolls_back(
    data_dir: Path, tmp_path: Path, folder_dataset: Path, monkeypatch, postgres
) -> None:
    server = tmp_path / "mlflow-server"
    url = f"http://127.0.0.1:{free_port()}"
    backend = postgres.create_database("mlflow_server_test")
    args = ["serve", "mlflow", "--backend-store-uri", backend]
    args += ["--artifacts-destination", str(server / "artifacts"), "--port", url.rsplit(":", 1)[1]]
    started = time.monotonic()
    proc = start_zerodefect([*args, "--workers", "1"], server / "server.log")
    try:
        wait_ready(proc, lambda: answers(url), "mlflow server", server / "server.log", timeout=240)
        print(f"mlflow server answered after {time.monotonic() - started:.1f} s")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        get_settings.cache_clear()

        # The line's model before: a signed bundle that passes every part, @champion.
        v1 = register(
            make_bundle(tmp_path / "v1", PASS_ALL, name=MODEL, classes=("good", "scratch")), MODEL, "champion"
        )
        config = tiny_config(tmp_path, folder_dataset)
        v2 = run_training(load_config(config), config)  # logs to the server, registers @challenger
        assert v2.version != v1
        run = mlflow.MlflowClient().get_run(v2.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server...
        assert list((server / "artifacts").rglob("model.onnx"))  # ...into its artifact store

        trusted = [TRUSTED_KEY, public_key_b64(signing_key())]
        (tmp_path / "s1").mkdir()
        (tmp_path / "s2").mkdir()
        line1 = create_edge(
            station(
                tmp_path / "s1",
                f"models:/{MODEL}@champion",
                line="L1",
                model_poll_seconds=POLL,
                trusted_keys=trusted,
            )
        )
        line2 = create_edge(
            station(
                tmp_path / "s2",
                f"models:/{MODEL}@champion",
                station="st-02",
                line="L2",
                model_poll_seconds=POLL,
                trusted_keys=trusted,
            )
        )
        with serve(line1) as url1, serve(line2) as url2:
            assert served(url1) == served(url2) == v1

            # Canary: the gate (evaluated through the server) moves @champion-L2 only.
            canary = promote(MODEL, tolerance=1.0, canary="L2")
            assert canary.promoted and canary.alias == "champion-L2" and canary.challenger == v2.version
            took = follow_time(url2, v2.version)
            assert line1.state.station["holder"].follow() is None  # line 1 keeps v1
            assert served(url1) == v1
            print(f"canary: st-02 on L2 served v{v2.version} {took:.2f} s after the promotion")

            # Then every line; the canary alias has done its job and is removed.
            everyone = promote(MODEL, tolerance=1.0)
            assert everyone.promoted and everyone.champion == v1
            took = follow_time(url1, v2.version)
            aliases = mlflow.MlflowClient().get_registered_model(MODEL).aliases
            assert aliases == {"champion": v2.version, "challenger": v2.version}, aliases
            print(f"promotion: st-01 on L1 served v{v2.version} {took:.2f} s after the promotion")

            # Rollback: one command, and both stations follow within a few polls.
            before = time.monotonic()
            result = CliRunner().invoke(cli, ["models", "rollback", MODEL, "--reason", "escapes on L1"])
            assert result.exit_code == 0, result.output
            assert f"@champion: v{v2.version} -> v{v1}" in result.output
            took = max(follow_time(url1, v1, before), follow_time(url2, v1, before))
            print(f"rollback: both stations served v{v1} {took:.2f} s after the command (poll {POLL} s)")
            verdict = post(url1, png(), serial="RB-1", frame_id="rb1").json()
            assert (verdict["verdict"], verdict["model_version"]) == ("pass", v1)

            # No earlier champion than v1: a second rollback is refused, naming why.
            again = CliRunner().invoke(cli, ["models", "rollback", MODEL])
            assert again.exit_code == 2 and f"v{v1} has no previous @champion" in again.output

        with record_session(get_settings().record_database_url) as session:
            trail = [
                (p.alias, p.model_version, p.previous_version, p.gate, p.reason)
                for p in session.query(ModelPromotion).order_by(ModelPromotion.id)
            ]
        assert trail == [
            ("champion-L2", v2.version, v1, "passed", None),
            ("champion", v2.version, v1, "passed", None),
            ("champion", v1, v2.version, "ROLLBACK", "escapes on L1"),
        ]
        # The registry the stations followed is the PostgreSQL store's, read there directly.
        engine = create_engine(backend)
        with engine.connect() as db:
            aliases = db.execute(
                text("SELECT alias, version FROM registered_model_aliases WHERE name = :n"), {"n": MODEL}
            )
            assert dict(aliases.all()).get("champion") == int(v1)
        engine.dispose()
    finally:
        stop_process(proc)


def served(url: str) -> str:
    return httpx.get(f"{url}/readyz").json()["model_version"]


def follow_time(url: str, version: str, since: float | None = None) -> float:
    """Seconds from `since` (now) until the station at `url` serves `version`."""
    since = time.monotonic() if since is None else since
    wait_for(lambda: served(url) == version, timeout=60)
    return time.monotonic() - since
