"""A station installed without the `registry` extra (no MLflow client) serves bundle folders and
refuses a models:/ model at start, naming what to install."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from zerodefect.edge.model import ModelHolder
from zerodefect.inference.bundle import BundleError

from .bundles import TRUSTED_KEY


def test_a_models_uri_without_the_mlflow_client_is_refused_with_the_install_to_make(
    tmp_path: Path, monkeypatch
) -> None:
    from zerodefect.inference.signing import load_public_key

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails as in an [edge] install
    with pytest.raises(BundleError, match=r"pip install 'zerodefect\[edge,registry\]'"):
        ModelHolder("models:/elpv@champion", tmp_path, 1, trusted_keys=[load_public_key(TRUSTED_KEY)])
