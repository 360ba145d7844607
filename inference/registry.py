"""The MLflow model registry, read the one way training, the station and the CLI all use.

Versions move through aliases (`challenger`, `champion`). A station pins an alias to the version
it points at before downloading, so the version it records is exactly the one it serves. Only
the MLflow client is needed (mlflow-skinny is enough), never torch. Writing to the registry
(registering, promoting) is training's: see zerodefect.training.registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zerodefect.inference.bundle import BUNDLE_JSON, BundleError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

PREFIX = "models:/"


class UnknownModel(LookupError):
    """A registered model name (or alias) the registry does not know."""


@dataclass(frozen=True)
class VersionInfo:
    """One registered version: its aliases, tags (test metrics, signature...) and run."""

    version: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None


def require_mlflow() -> None:
    """Refuse a models:/ URI clearly where the MLflow client is not installed (a station's
    `[edge]` install without the `registry` extra): a BundleError names what to install."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise BundleError(
            "models:/ URIs need the MLflow client, which this install lacks: "
            "pip install 'zerodefect[edge,registry]' (or serve a bundle folder)"
        ) from None


def client() -> MlflowClient:
    """A client of the configured store (zerodefect.settings)."""
    require_mlflow()
    import mlflow

    from zerodefect.settings import configure_mlflow

    configure_mlflow()
    return mlflow.MlflowClient()


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The model version behind an alias, or None when the alias (or the model) is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def canary_aliases(alias: str, scopes: Sequence[str]) -> list[str]:
    """The aliases a station tries, most specific first: `ALIAS-<scope>` for each of its scopes
    (its station name, then its line), then ALIAS itself. A canary promotion moves
    `champion-line2` before `champion`, so one line or station serves a version first."""
    return [f"{alias}-{scope}" for scope in scopes if scope] + [alias]


def resolve_alias(uri: str, scopes: Sequence[str] = ()) -> tuple[str, str] | None:
    """(name, version) an alias URI `models:/NAME@ALIAS` points at now; None for other URIs.
    With `scopes` (a station's name and line), a canary alias `ALIAS-<scope>` wins over ALIAS.
    Raises the client's error when the alias is unknown or the registry cannot be reached."""
    if not (uri.startswith(PREFIX) and "@" in uri):
        return None
    name, alias = uri.removeprefix(PREFIX).split("@", 1)
    if not scopes:
        return name, str(client().get_model_version_by_alias(name, alias).version)
    aliases = client().get_registered_model(name).aliases  # one call, every alias of the model
    for candidate in canary_aliases(alias, scopes):
        if candidate in aliases:
            return name, str(aliases[candidate])
    raise UnknownModel(f"{uri}: model {name!r} has no alias {alias!r}")


def download_bundle(uri: str, cache_dir: Path | None = None) -> Path:
    """The bundle folder of `models:/NAME@ALIAS|VERSION`, downloaded (into `cache_dir` when
    given). The sha256 and signature checks happen when the bundle is loaded."""
    require_mlflow()
    import mlflow

    client()  # configures the store
    dst = None
    if cache_dir is not None:
        dst = cache_dir / uri.removeprefix(PREFIX).replace("@", "_at_").replace("/", "_")
        dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None)
        )
    except Exception as exc:  # MLflow raises several types for unknown names and aliases
        raise BundleError(f"{uri}: cannot fetch from the registry ({exc})") from exc
    if (local / BUNDLE_JSON).is_file():
        return local
    nested = sorted(p.parent for p in local.rglob(BUNDLE_JSON))
    if not nested:
        raise BundleError(f"{uri}: the registered artifact holds no {BUNDLE_JSON}")
    return nested[0]


def list_versions(name: str) -> list[VersionInfo]:
    """Every version of a registered model, oldest first, with its aliases; UnknownModel for a
    name the registry does not know."""
    from mlflow.exceptions import MlflowException

    registry = client()
    try:
        model = registry.get_registered_model(name)
    except MlflowException:
        raise UnknownModel(f"no registered model {name!r}") from None
    aliases: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    versions = sorted(registry.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    return [
        VersionInfo(str(v.version), aliases.get(str(v.version), []), dict(v.tags), v.run_id or None)
        for v in versions
    ]


@dataclass(frozen=True)
class ModelInfo:
    """One registered model: its name, newest versions (newest first) and aliases."""

    name: str
    versions: int
    latest: list[str]
    aliases: dict[str, str]


def list_models(latest: int = 3) -> list[ModelInfo]:
    """Every registered model of the store, by name, with its `latest` newest versions and its
    aliases: what `zerodefect models list` shows when no name is given."""
    registry = client()
    models, token = [], None
    while True:
        page = registry.search_registered_models(max_results=1000, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            break
    out = []
    for model in sorted(models, key=lambda m: m.name):
        numbers = sorted(
            (int(v.version) for v in registry.search_model_versions(f"name='{model.name}'")), reverse=True
        )
        aliases = {alias: str(version) for alias, version in sorted(model.aliases.items())}
        out.append(ModelInfo(model.name, len(numbers), [str(n) for n in numbers[:latest]], aliases))
    return out
