"""The root of the `zerodefect` command line: the app, its console, logging and user errors.

Every command module (datasets, train, models, serve, record, bench) imports `app`, `console`,
`fail` and `user_errors` from here, so they share one console and one way to report a user's
mistake (a message naming the file, exit code 2) instead of a traceback.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from zerodefect.settings import prepare_process_environment

app = typer.Typer(
    help="zerodefect: train defect models, export verified ONNX bundles, and version them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Lines are never broken at 80 columns: in a log file a wrapped path or number cannot be found.
console = Console(soft_wrap=True)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    prepare_process_environment()
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
        fmt = "%(message)s"
    else:  # nohup, CI, a log file: one plain line per record, with its time and level
        handler = logging.StreamHandler(console.file)
        fmt = "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, handlers=[handler])
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str) -> typer.Exit:
    """Print a user error unwrapped (paths stay whole, brackets stay literal); exit code 2."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=2)


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's input, reported as a message rather than a traceback."""
    from zerodefect.datasets.augment import AugmentationError
    from zerodefect.datasets.manifest import DatasetError
    from zerodefect.inference.bundle import BundleError
    from zerodefect.inference.preprocess import ImageDecodeError

    errors: list[type[Exception]] = [DatasetError, BundleError, ImageDecodeError, AugmentationError]
    try:
        from zerodefect.training.config import ConfigError

        errors.append(ConfigError)
    except ImportError:
        pass
    return tuple(errors)
