"""Distributed training (torch DDP on gloo, 2 CPU processes): `zerodefect train --nproc 2` trains
one model (every process ends with the same weights) and registers it once; the shared `fit`
gives the same weights in 2 processes as in 1; what DDP cannot run is refused before starting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from zerodefect.cli import app
from zerodefect.services import free_port
from zerodefect.settings import configure_mlflow
from zerodefect.training import distributed

from .ddp_fit import fit_rank, net, train_tiny
from .test_pipeline import MODEL, tiny_config


def test_two_processes_train_one_model_and_register_it_once(data_dir: Path, folder_dataset: Path) -> None:
    config = tiny_config(data_dir.parent, folder_dataset, train__epochs=2)
    done = subprocess.run(
        [sys.executable, "-m", "zerodefect", "train", str(config), "--nproc", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Every process checked in with a digest of its final weights; they are equal, and they are
    # the weights rank 0 saved as the run's last checkpoint.
    (run_dir,) = (data_dir / "runs" / "tiny").iterdir()
    ddp = json.loads((run_dir / "ddp.json").read_text())
    assert ddp["processes"] == 2 and ddp["backend"] == "gloo"
    saved = torch.load(run_dir / "last.pt", weights_only=False)
    assert ddp["weights_sha256"] == [distributed.weights_digest(saved["model"])] * 2
    assert len(saved["history"]) == 2

    # Rank 0 alone logged, exported and registered: one MLflow run, one version, said once.
    client = mlflow.MlflowClient(configure_mlflow())  # this test's store, not an earlier module's
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["processes"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert "ddp.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    (version,) = client.search_model_versions(f"name='{MODEL}'")
    assert version.run_id == run.info.run_id
    assert client.get_model_version_by_alias(MODEL, "challenger").version == version.version
    assert done.stdout.count(f"registered {MODEL} version 1") == 1
    assert done.stdout.count("epoch   2") == 1


def test_one_process_and_two_train_the_same_weights(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = train_tiny(tmp_path / "one")
    torch.multiprocessing.spawn(fit_rank, args=(free_port(), tmp_path / "two"), nprocs=2)
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    # The two processes hold the same model, bit for bit.
    for key in ("best", "final"):
        assert distributed.weights_digest(ranks[0][key]) == distributed.weights_digest(ranks[1][key])
    # And it is the one-process model, up to float rounding of the averaged gradients.
    two = ranks[0]
    assert set(one["best"]) == set(one["final"]) == set(two["best"])  # EMA weights, kept at an epoch
    for key in ("best", "final"):
        for name, tensor in one[key].items():
            torch.testing.assert_close(two[key][name], tensor, rtol=1e-4, atol=1e-5)
    assert [r["train_loss"] for r in two["history"]] == pytest.approx(
        [r["train_loss"] for r in one["history"]], rel=1e-5
    )
    # Training moved the weights (an equality of untouched weights would prove nothing).
    assert not torch.equal(one["final"]["4.weight"], net()[4].weight.detach())
    # Rank 0 alone wrote the checkpoints.
    assert (tmp_path / "two" / "last.pt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "task=anomaly", "--nproc", "2"], "fitted in one pass"),
        (["--nproc", "3"], "train.batch_size 8 does not split evenly over 3 processes"),
        (["--nproc", "2", "--nnodes", "2"], "--nnodes above 1 needs --master-addr"),
    ],
)
def test_what_ddp_cannot_run_is_refused_before_starting(
    data_dir: Path, folder_dataset: Path, args: list[str], message: str
) -> None:
    config = tiny_config(data_dir.parent, folder_dataset)
    result = CliRunner().invoke(app, ["train", str(config), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (data_dir / "runs").exists()


def test_the_multi_node_command_is_torchrun_with_a_static_rendezvous() -> None:
    args = distributed.torchrun_args(4, ["train", "c.yaml"], 2, 1, "10.0.0.5", 29501)
    assert args == [
        "--nproc-per-node=4", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.5",
        "--master-port=29501", "-m", "zerodefect", "train", "c.yaml",
    ]  # fmt: skip
    assert "--standalone" in distributed.torchrun_args(2, ["train", "c.yaml"])
