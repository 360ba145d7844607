"""Read a YAML configuration file into a pydantic model, with errors that name the file.

Training configs, station configs and the andon rules are all YAML files that people edit by
hand; one loader gives them the same messages (`FILE: cannot read`, `FILE: not valid YAML`,
`FILE: key.path: problem; ...`) in each caller's own error type.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(ValueError):
    """A configuration file that cannot be used; the message names the file."""


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line: `key.path: problem; other.key: problem`."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def load_yaml_model(
    path: str | Path,
    model: type[M],
    error: type[Exception] = ConfigFileError,
    edit: Callable[[dict[str, Any]], None] | None = None,
    what: str = "",
) -> M:
    """Read `path` as YAML, let `edit` change the mapping (overrides), validate it as `model`.

    Every failure raises `error` with a message that starts with the path (and `what`, when
    given, e.g. "invalid andon configuration"); an empty file is an empty mapping.
    """
    path = Path(path)
    head = f"{path}: {what + ': ' if what else ''}"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise error(f"{head}not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{head}expected a mapping of settings, found a {type(data).__name__}")
    if edit is not None:
        edit(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{head}{describe(exc)}") from exc
