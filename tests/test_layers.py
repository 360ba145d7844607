"""The layers the developers' guide sets: a station runs without torch.

`inference/` and `edge/` never import torch, torchvision, timm or zerodefect.training, at the
top of a module or inside a function. Checked three ways: the import-linter contracts of
pyproject.toml (which also keep quality/ and edge/ apart, the wire schema in inference/ being
their only meeting point), every import statement of every file (so a lazy import in a function
is caught too), and by importing every module in a fresh interpreter where those packages
cannot be found, as on an `[edge]` install.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_FREE = ("inference", "edge")
FORBIDDEN = ("torch", "torchvision", "timm", "zerodefect.training")


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_no_torch_import_statement_in_the_station_side() -> None:
    files = [p for folder in TORCH_FREE for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) >= 10  # the folders are where this test thinks they are
    bad = [
        f"{path.relative_to(ROOT)}:{line}: import {name}"
        for path in files
        for line, name in _imports(path)
        if _forbidden(name)
    ]
    assert not bad, "the station side must not import torch or training code:\n" + "\n".join(bad)


def test_every_station_module_imports_without_torch() -> None:
    code = f"""
import importlib, pkgutil, sys

class Forbid:
    def find_spec(self, name, path=None, target=None):
        if any(name == f or name.startswith(f + ".") for f in {FORBIDDEN!r}):
            raise ImportError(f"forbidden on the station side: {{name}}")

sys.meta_path.insert(0, Forbid())
count = 0
for package in {tuple(f"zerodefect.{f}" for f in TORCH_FREE)!r}:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
        count += 1
print(count)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip().splitlines()[-1]) >= 10


def test_the_import_contracts_hold(tmp_path: Path) -> None:
    """`lint-imports` over the tree as installed. The folders are mapped into zerodefect.* by
    pyproject's package-dir, which import-linter cannot follow, so the test lays out a copy of
    the sources as the package they become; every contract must be found and kept."""
    config = ROOT / "pyproject.toml"
    settings = tomllib.loads(config.read_text())
    for package, folder in settings["tool"]["setuptools"]["package-dir"].items():
        target = tmp_path / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).glob("*.py"):
            shutil.copy2(source, target / source.name)
    contracts = settings["tool"]["importlinter"]["contracts"]
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache", str(config)],
        cwd=tmp_path,  # lint-imports imports the root package from here, never the checkout
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert len(contracts) >= 4 and f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout
