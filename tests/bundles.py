"""Small verified bundles for service tests: a random-init Lite0 at 64 px, exported with parity.

Their threshold fixes their behaviour: 0.0 rejects every part, 1.01 passes every part. They are
signed with a fixed test key (never the data dir's), which test stations trust as TRUSTED_KEY.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zerodefect.inference.bundle import BundleMeta, InputSpec
from zerodefect.inference.signing import public_key_b64
from zerodefect.models.classifier import build_classifier
from zerodefect.training.export import export_bundle
from zerodefect.training.train import predict

REJECT_ALL = 0.0
PASS_ALL = 1.01
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TRUSTED_KEY = public_key_b64(SIGNING_KEY)


def make_bundle(
    folder: Path,
    threshold: float,
    name: str = "test-model",
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, str] = ("good", "crack"),
) -> Path:
    torch.manual_seed(seed)
    model, _ = build_classifier("tf_efficientnet_lite0", list(classes), "good", None)
    images = np.random.default_rng(seed).integers(0, 255, (4, size, size, 3), dtype=np.uint8)
    probs = predict(model, images, torch.device("cpu"))
    meta = BundleMeta(
        name=name,
        task="classification",
        classes=list(classes),
        good_class="good",
        input=InputSpec(height=size, width=size, mean=[0.5] * 3, std=[0.5] * 3),
        outputs={"probabilities": "[N, C]"},
        threshold=threshold,
    )
    export_bundle(model, meta, folder, images, probs, signing_key=SIGNING_KEY)
    return folder


def register(folder: Path, name: str, alias: str) -> str:
    """Log a bundle to a run of the current MLflow store and point `alias` at the new version."""
    import mlflow

    from zerodefect.settings import configure_mlflow
    from zerodefect.training.registry import experiment_id, register_bundle

    configure_mlflow()
    with mlflow.start_run(experiment_id=experiment_id("tests")) as run:
        mlflow.log_artifacts(str(folder), "bundle")
    return register_bundle(run.info.run_id, name, alias, {})


def evaluate_with_cli(outcome, out: Path) -> tuple[str, dict]:
    """`zerodefect evaluate` on a training outcome's bundle and manifest (its test split), as a
    user runs it: the printed output and the JSON report it wrote to `out`."""
    import json

    from typer.testing import CliRunner

    from zerodefect.cli import app

    manifest = outcome.run_dir / "manifest.jsonl"
    result = CliRunner().invoke(
        app, ["evaluate", str(outcome.bundle_dir), "--manifest", str(manifest), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


def train_from(folder: Path, config: dict, console=None):
    """Write `config` as `folder`/config.yaml and train it through the one pipeline, as
    `zerodefect train` does: (the loaded config, the run's outcome). `console` (rich) receives
    what the run prints."""
    import yaml

    from zerodefect.training.config import load_config
    from zerodefect.training.pipeline import run_training

    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    return cfg, run_training(cfg, path, console=console)


ANOMALY_SIZE = 128


def make_anomaly_dataset(root: Path, seed: int = 0) -> Path:
    """Good textured parts for train and val (good only: no defect to calibrate on), and a test
    split of good parts and parts with a planted scratch and its mask."""
    import cv2

    from zerodefect.datasets.manifest import Manifest, Sample

    from .synthetic import part_image

    size = ANOMALY_SIZE
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    samples = []
    plan = [("train", False)] * 24 + [("val", False)] * 8 + [("test", False)] * 8 + [("test", True)] * 8
    for i, (split, defective) in enumerate(plan):
        image, _ = part_image(rng, size, False)
        name = f"images/part_{i:03d}.png"
        sample = Sample(name, ["scratch" if defective else "good"], split)
        if defective:
            mask = np.zeros_like(image)
            x1, y1 = (int(v) for v in rng.integers(8, size // 2, 2))
            x2, y2 = x1 + int(rng.integers(size // 4, size // 2 - 8)), y1 + int(rng.integers(4, size // 3))
            cv2.line(image, (x1, y1), (x2, y2), 20, 6)
            cv2.line(mask, (x1, y1), (x2, y2), 255, 6)
            sample.mask = f"masks/part_{i:03d}.png"
            cv2.imwrite(str(root / sample.mask), mask)
        cv2.imwrite(str(root / name), image)
        samples.append(sample)
    manifest = Manifest("anomaly", ["good", "scratch"], samples, root, "good", "generated-parts")
    return manifest.write(root / "manifest.jsonl")


def train_tiny_anomaly(folder: Path):
    """PatchCore fitted on the generated good parts of `make_anomaly_dataset` (in `folder`), as
    `zerodefect train` does: (the loaded config, the run's outcome). Needs an MLflow store (the
    module_store fixture)."""
    manifest = make_anomaly_dataset(folder / "parts")
    return train_from(folder, tiny_anomaly_config(manifest))


def tiny_anomaly_config(manifest: Path, name: str = "tiny-anomaly", **anomaly) -> dict:
    """The tiny anomaly run's config on `manifest`; `anomaly` overrides model.anomaly fields."""
    return {
        "name": name,
        "task": "anomaly",
        "data": {"manifest": str(manifest)},
        "model": {"input_size": ANOMALY_SIZE, "anomaly": {"coreset_ratio": 0.1, **anomaly}},
        "train": {"epochs": 1, "batch_size": 8},
        "calibration": {"target_false_reject_rate": 0.0},
        "mlflow": {"experiment": "tests-anomaly", "registered_model": name},
    }


def hand_made_anomaly_meta(size: int = 32, **postprocess):
    """An anomaly bundle's metadata without a model (threshold 1.0, region class "scratch"),
    for tests of what the head and the plots make of hand-made heatmaps."""
    from zerodefect.inference.bundle import BundleMeta, InputSpec

    return BundleMeta(
        name="hand-made",
        task="anomaly",
        classes=["good", "scratch"],
        good_class="good",
        input=InputSpec(height=size, width=size),
        outputs={"scores": "[N]", "heatmap": "[N, H, W]"},
        threshold=1.0,
        postprocess={"region_class": "scratch", **postprocess},
    )
