"""Signed bundles: a station serves only what a trusted key bundles, at start, at reload and when
an alias moves, and a refused bundle never replaces the model serving."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import mlflow
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from zerodefect.cli import app as cli
from zerodefect.edge.app import create_app as create_edge
from zerodefect.inference.bundle import FORMAT_VERSION, sha256_file
from zerodefect.inference.signing import (
    SIGNATURE_JSON,
    SigningKeyError,
    key_id,
    load_public_key,
    public_key_b64,
    sign_bundle,
    signing_key,
    verify_bundle,
)
from zerodefect.settings import get_settings

from .bundles import PASS_ALL, SIGNING_KEY, register
from .servers import serve
from .test_edge import ADMIN_KEY, KEY, png, post, station, wait_for

OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def swap_onnx(folder: Path, donor: Path) -> None:
    """The attack a hash alone misses: another model, with bundle.json's sha256 rewritten."""
    shutil.copyfile(donor / "model.onnx", folder / "model.onnx")
    meta = json.loads((folder / "bundle.json").read_text())
    meta["onnx_sha256"] = sha256_file(folder / "model.onnx")
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2))


def raise_threshold(folder: Path) -> None:
    meta = json.loads((folder / "bundle.json").read_text())
    meta["threshold"] = PASS_ALL  # every part would pass
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2))


# Each case: how the bundle is tampered with, and what the refusal must say.
CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "tampered ONNX": (swap_onnx, "bundle.json, model.onnx changed, added or removed since key"),
    "tampered bundle.json": (lambda f, _: raise_threshold(f), "bundle.json changed, added or removed"),
    "wrong key": (
        lambda f, _: sign_bundle(f, OTHER_KEY),
        f"signed by key {key_id(OTHER_KEY)}, which this station does not trust",
    ),
    "missing signature": (
        lambda f, _: (f / SIGNATURE_JSON).unlink(),
        "unsigned bundle (signature.json missing)",
    ),
    # Well signed, but written by a newer zerodefect (a way of scoring this station lacks).
    "newer format": (
        lambda f, _: newer_format(f),
        f"bundle format {FORMAT_VERSION + 1} is newer than this version of zerodefect reads",
    ),
}


def newer_format(folder: Path) -> None:
    meta = json.loads((folder / "bundle.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (folder / "bundle.json").write_text(json.dumps(meta))
    sign_bundle(folder, SIGNING_KEY)


def tampered(bundles: dict[str, Path], folder: Path, case: str) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(bundles["reject"], folder)
    CASES[case][0](folder, bundles["pass"])
    return folder


def test_a_station_refuses_to_start_on_a_bundle_it_cannot_verify(
    data_dir: Path, tmp_path: Path, bundles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "zerodefect.edge.app")
    for case, (_, reason) in CASES.items():
        caplog.clear()
        folder = tampered(bundles, tmp_path / case.replace(" ", "-"), case)
        with (
            pytest.raises(RuntimeError, match="failed to start"),
            serve(create_edge(station(tmp_path, str(folder)))),
        ):
            pass
        refusals = [r.getMessage() for r in caplog.records if "cannot start" in r.getMessage()]
        assert len(refusals) == 1 and reason in refusals[0], (case, refusals)
    # Without any trusted key a station cannot serve even a well-signed bundle.
    caplog.clear()
    with (
        pytest.raises(RuntimeError),
        serve(create_edge(station(tmp_path, str(bundles["reject"]), trusted_keys=[]))),
    ):
        pass
    assert any("no trusted_keys" in r.getMessage() for r in caplog.records)


def test_reload_refuses_a_tampered_bundle_with_a_409_and_the_old_model_keeps_serving(
    data_dir: Path, tmp_path: Path, bundles
) -> None:
    live = tmp_path / "live"
    shutil.copytree(bundles["reject"], live)
    with serve(create_edge(station(tmp_path, str(live)))) as url:
        first = post(url, png(), serial="SN-0", frame_id="f0").json()
        assert first["verdict"] == "reject"
        version = first["model_version"]
        for i, (case, (_, reason)) in enumerate(CASES.items(), start=1):
            tampered(bundles, live, case)
            answer = httpx.post(f"{url}/v1/model/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=60)
            assert answer.status_code == 409, (case, answer.text)
            detail = answer.json()["detail"]
            assert reason in detail and f"still serving version {version}" in detail, (case, detail)
            verdict = post(url, png(), serial=f"SN-{i}", frame_id=f"f{i}").json()
            assert (verdict["verdict"], verdict["model_version"]) == ("reject", version), case
        assert f"zd_model_refusals_total {len(CASES)}.0" in httpx.get(f"{url}/metrics").text
        # The same bundle, untouched, reloads: the refusals were the signature's doing.
        shutil.rmtree(live)
        shutil.copytree(bundles["reject"], live)
        answer = httpx.post(f"{url}/v1/model/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=60)
        assert answer.status_code == 200 and answer.json() == {
            "previous_version": version,
            "version": version,
        }


def test_a_station_following_an_alias_skips_versions_it_cannot_verify(
    data_dir: Path, tmp_path: Path, bundles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "zerodefect.edge.model")
    v1 = register(bundles["reject"], "signed-line", "champion")
    version = mlflow.MlflowClient().get_model_version("signed-line", v1)
    signature = json.loads((bundles["reject"] / SIGNATURE_JSON).read_text())
    # The registry keeps the signature with the version: in the artifact and as tags.
    assert version.tags["signing_key_id"] == key_id(SIGNING_KEY) == signature["key_id"]
    assert version.tags["signature"] == signature["signature"]

    config = station(tmp_path, "models:/signed-line@champion", model_poll_seconds=0.1)
    app = create_edge(config)
    with serve(app) as url:
        assert post(url, png(), serial="A-0", frame_id="a0").json()["model_version"] == v1
        holder = app.state.station["holder"]
        for n, case in enumerate(("tampered bundle.json", "wrong key", "tampered ONNX"), start=1):
            bad = register(tampered(bundles, tmp_path / f"bad-{n}", case), "signed-line", "champion")
            wait_for(lambda n=n: f"zd_model_refusals_total {n}.0" in httpx.get(f"{url}/metrics").text)
            verdict = post(url, png(), serial=f"A-{n}", frame_id=f"a{n}").json()
            assert (verdict["verdict"], verdict["model_version"]) == ("reject", v1), case
            assert httpx.get(f"{url}/readyz").json()["model_version"] == v1
            # A refused version is not tried again until the alias moves once more.
            assert holder.follow() is None
            logged = [r.getMessage() for r in caplog.records if f"version {bad} refused" in r.getMessage()]
            assert len(logged) == 1 and CASES[case][1] in logged[0], logged
        reload = httpx.post(f"{url}/v1/model/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=60)
        assert reload.status_code == 409 and f"still serving version {v1}" in reload.json()["detail"]
        # A properly signed promotion is still followed.
        good = register(bundles["pass"], "signed-line", "champion")
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["model_version"] == good)
        verdict = post(url, png(), serial="A-9", frame_id="a9").json()
        assert (verdict["verdict"], verdict["model_version"]) == ("pass", good)


def test_model_reload_needs_a_station_admin_key(data_dir: Path, tmp_path: Path, bundles) -> None:
    with serve(create_edge(station(tmp_path, str(bundles["pass"])))) as url:
        reload = f"{url}/v1/model/reload"
        assert httpx.post(reload).status_code == 401
        camera = httpx.post(reload, headers={"X-API-Key": KEY})
        assert camera.status_code == 403 and "station-admin key" in camera.json()["detail"]
        assert httpx.post(reload, headers={"X-API-Key": ADMIN_KEY}, timeout=60).status_code == 200
        # The scopes are separate: the admin key is no camera key.
        assert post(url, png(), key=ADMIN_KEY).status_code == 403
        assert post(url, png(), key=KEY).status_code == 200


def test_keys_are_made_and_used_from_the_cli_and_on_first_use(
    data_dir: Path, tmp_path: Path, bundles, caplog, monkeypatch
) -> None:
    result = CliRunner().invoke(cli, ["keys", "new", "--out", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "keys" / "bundle-signing.key", tmp_path / "keys" / "bundle-signing.pub"
    assert private.stat().st_mode & 0o077 == 0
    assert public.read_text().strip() == result.output.strip().splitlines()[-1]
    again = CliRunner().invoke(cli, ["keys", "new", "--out", str(tmp_path / "keys")])
    assert again.exit_code != 0 and "already exists" in again.output

    # Without ZD_SIGNING_KEY, training's key is made once in the data dir, and said so.
    caplog.set_level(logging.WARNING, "zerodefect.inference.signing")
    key = signing_key()
    assert (data_dir / "keys" / "bundle-signing.pub").read_text().strip() == public_key_b64(key)
    assert public_key_b64(signing_key()) == public_key_b64(key)
    assert sum("created" in r.getMessage() for r in caplog.records) == 1

    # A configured key is never made up: a missing file is named.
    monkeypatch.setenv("ZD_SIGNING_KEY", str(tmp_path / "nowhere.key"))
    get_settings.cache_clear()
    with pytest.raises(SigningKeyError, match="nowhere.key: no such key file"):
        signing_key()
    monkeypatch.setenv("ZD_SIGNING_KEY", str(private))
    get_settings.cache_clear()
    assert public_key_b64(signing_key()) == public.read_text().strip()

    # A bundle from before signing is signed by hand with the configured key, and then served.
    legacy = shutil.copytree(bundles["reject"], tmp_path / "legacy")
    (legacy / SIGNATURE_JSON).unlink()
    result = CliRunner().invoke(cli, ["keys", "sign", str(legacy)])
    assert result.exit_code == 0 and key_id(signing_key()) in result.output, result.output
    assert verify_bundle(legacy, [load_public_key(str(public))]) == key_id(signing_key())
