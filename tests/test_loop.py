"""The closed loop end to end: the line judges parts, a reviewer corrects the false rejects,
the corrections train the next version, the gate promotes it, and the station serves it."""

from __future__ import annotations

from pathlib import Path

import cv2
import httpx
import numpy as np
from typer.testing import CliRunner

from zerodefect.cli import app as cli
from zerodefect.datasets.manifest import Manifest
from zerodefect.edge.app import create_app as create_edge
from zerodefect.edge.simulator import Part, parts_from_manifest, play
from zerodefect.inference.signing import public_key_b64, signing_key
from zerodefect.training.config import load_config
from zerodefect.training.pipeline import run_training
from zerodefect.training.registry import promote

from .people import client_for
from .servers import record_for_station, serve
from .synthetic import part_image
from .test_edge import KEY, station, wait_for
from .test_pipeline import MODEL, tiny_config


def test_reviews_retrain_promote_and_serve_the_next_version(
    data_dir: Path, folder_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    # The loop's mechanics are under test, not a 9-step model's quality: the second model may
    # trade false rejects for the marks it learns, so its gate floors are opened (the gate's
    # floors have their own tests in test_pipeline.py).
    config = tiny_config(tmp_path, folder_dataset, gate__max_false_reject_rate=1.0)
    first = run_training(load_config(config), config)
    assert promote(MODEL, force=True, reason="the loop test's first line model").promoted
    manifest = Manifest.read(first.run_dir / "manifest.jsonl")
    parts = [
        p
        for split in ("test", "val", "train")
        for p in parts_from_manifest(first.run_dir / "manifest.jsonl", split)
    ]
    # Parts with a harmless mark that looks like a scratch: QA passes them, the model cannot
    # know that yet. These are the known false rejects the reviewer will correct.
    rng = np.random.default_rng(7)
    (tmp_path / "marks").mkdir()
    for i in range(8):
        image, _ = part_image(rng, 64, defective=True)
        cv2.imwrite(str(tmp_path / "marks" / f"mark_{i}.png"), image)
        parts.append(Part(tmp_path / "marks" / f"mark_{i}.png", f"MARK-{i:03d}", False))
    parts = [Part(p.path, f"P-{i:04d}", p.defective) for i, p in enumerate(parts)]  # one serial each
    truth = {p.serial: p.defective for p in parts}

    record_app = record_for_station(monkeypatch)
    with serve(record_app) as record_url:
        edge_config = station(
            tmp_path,
            f"models:/{MODEL}@champion",
            record_url=record_url,
            store_images="all",
            model_poll_seconds=0.2,  # follow the alias (a plant polls about once a minute)
            trusted_keys=[public_key_b64(signing_key())],  # the key training signed with
        )
        with serve(create_edge(edge_config)) as edge_url:
            tally = play(parts, edge_url, KEY, "st-01", batch="LOT-1")
            assert tally.false_rejects > 0, "the first model must make mistakes for the loop to fix"
            reviewer = client_for(record_app, record_url, "reviewer")
            _drain(edge_url)
            rejected = reviewer.get("/v1/inspections", params={"verdict": "reject", "limit": 500}).json()[
                "items"
            ]
            marked = 0
            for row in rejected:  # the reviewer knows each part: the generated labels are the truth
                decision = "confirmed" if truth[row["serial"]] else "false_reject"
                marked += decision == "false_reject"
                answer = reviewer.post(f"/v1/inspections/{row['id']}/reviews", json={"decision": decision})
                assert answer.status_code == 201
            assert marked == tally.false_rejects

            reviews = tmp_path / "reviews.jsonl"
            exported = CliRunner().invoke(cli, ["datasets", "from-reviews", "--out", str(reviews)])
            assert exported.exit_code == 0, exported.output
            extra = Manifest.read(reviews)
            assert sum(s.labels == ["good"] for s in extra.samples) == marked
            assert extra.classes == manifest.classes  # the reviews speak the model's classes

            second = run_training(load_config(config), config, extra_data=reviews)
            assert second.version != first.version
            gate = promote(MODEL, tolerance=1.0)  # the gate decides; here it is set to let it pass
            assert gate.passed and gate.promoted, [r.as_dict() for r in gate.rows]
            assert gate.challenger == second.version

            # The station notices the moved alias by itself: no restart, no reload call.
            wait_for(lambda: httpx.get(f"{edge_url}/readyz").json()["model_version"] == second.version)
            play(parts[:5], edge_url, KEY, "st-01", batch="LOT-2")
            _drain(edge_url)
            lot2 = reviewer.get("/v1/inspections", params={"batch": "LOT-2"}).json()["items"]
            lot1 = reviewer.get("/v1/inspections", params={"batch": "LOT-1", "limit": 1}).json()["items"]
            reviewer.close()
    assert len(lot2) == 5 and {r["model_version"] for r in lot2} == {second.version}
    assert lot1[0]["model_version"] == first.version


def _drain(edge_url: str) -> None:
    wait_for(lambda: httpx.get(f"{edge_url}/readyz").json()["outbox"]["pending"] == 0)
