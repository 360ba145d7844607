"""The `zerodefect` command line: datasets, train, evaluate, export, models, serve, record, bench.

One small module per group of commands; this package only assembles them under the root app
(zerodefect.cli.root). Heavy libraries (torch, mlflow) are imported inside the commands that
need them, so `--help` is instant and an edge install without torch can still run the commands
it has.
"""

from __future__ import annotations

from zerodefect.cli import bench, bench_ingest, rescore, serve, train  # noqa: F401  (their commands register on `app`)
from zerodefect.cli.datasets import datasets_app
from zerodefect.cli.fleet import fleet_app
from zerodefect.cli.models import models_app
from zerodefect.cli.record import keys_app, record_app, users_app
from zerodefect.cli.root import app
from zerodefect.cli.serve import serve_app

app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(serve_app, name="serve")
app.add_typer(record_app, name="record")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(fleet_app, name="fleet")

__all__ = ["app"]
