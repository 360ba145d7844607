"""`zerodefect record / users / keys / new-key`: administer the quality record, its people,
stations' API keys, and the keys that sign model bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zerodefect.cli.root import app, console, fail, user_errors

record_app = typer.Typer(
    help="Administer the quality record: lines, stations, API keys.", no_args_is_help=True
)
users_app = typer.Typer(help="People of the review app and their roles.", no_args_is_help=True)
keys_app = typer.Typer(help="Ed25519 keys that sign model bundles.", no_args_is_help=True)


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[
        str, typer.Option(help="viewer (read), reviewer (review parts) or admin (users, stations).")
    ],
    password_env: Annotated[
        str | None,
        typer.Option(help="Read the password from this environment variable instead of a prompt."),
    ] = None,
) -> None:
    """Create a user of the review app (the first admin comes from here)."""
    import os

    from zerodefect.quality.auth import AuthError, create_user
    from zerodefect.quality.db import record_session

    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise fail(f"environment variable {password_env} is empty or not set")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with record_session() as session:
        try:
            user = create_user(session, username, password, role)
        except AuthError as exc:
            raise fail(str(exc)) from None
    console.print(f"user {user.username} created with role {user.role}")


@record_app.command("add-station")
def record_add_station(
    name: Annotated[str, typer.Argument(help="Station name, e.g. line1-st01.")],
    line: Annotated[str | None, typer.Option(help="Line the station belongs to.")] = None,
) -> None:
    """Create a station and print its API key (shown once; only its hash is stored)."""
    from zerodefect.quality.db import record_session
    from zerodefect.quality.store import RecordError, add_station

    with record_session() as session:
        try:
            station, key = add_station(session, name, line)
        except RecordError as exc:
            raise fail(str(exc)) from None
    console.print(f"station {station.name} created; API key (store it now, it is not shown again):")
    print(key)


@record_app.command("rotate-key")
def record_rotate_key(name: Annotated[str, typer.Argument(help="Existing station name.")]) -> None:
    """Give a station a new API key (printed once); its old key is refused from now on."""
    from zerodefect.quality.db import record_session
    from zerodefect.quality.store import RecordError, rotate_station_key

    with record_session() as session:
        try:
            key = rotate_station_key(session, name)
        except RecordError as exc:
            raise fail(str(exc)) from None
    console.print(f"station {name}: new API key (store it now, it is not shown again):")
    print(key)


@record_app.command("prune")
def record_prune(
    older_than: Annotated[
        str, typer.Option(help="Retention: parts captured longer ago go, e.g. 90d, 12h, 6w.")
    ],
    dry_run: Annotated[bool, typer.Option(help="Only say what would be deleted.")] = False,
    batch: Annotated[int, typer.Option(min=1, max=50_000, help="Parts per transaction.")] = 2000,
) -> None:
    """Delete parts captured before the retention window, with their defects, reviews and images
    (those no remaining part names), in short transactions that never hold up ingest."""
    from datetime import UTC, datetime

    from zerodefect.quality.db import make_engine, migrate, session_factory
    from zerodefect.quality.images import ImageStore
    from zerodefect.quality.retention import parse_age, prune, survey
    from zerodefect.settings import get_settings

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise fail(f"--older-than: {exc}") from None
    settings = get_settings()
    cutoff = datetime.now(UTC) - age
    migrate(settings.record_database_url)
    engine = make_engine(settings.record_database_url)
    try:
        sessions = session_factory(engine)
        if dry_run:
            with sessions() as session:
                report = survey(session, cutoff)
        else:
            report = prune(sessions, ImageStore(settings.image_dir), cutoff, batch)
    finally:
        engine.dispose()
    oldest = f", the oldest captured {report.oldest:%Y-%m-%d %H:%M}" if report.oldest else ""
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{verb} {report.parts:,} parts captured before {cutoff:%Y-%m-%d %H:%M} UTC ({older_than} ago){oldest}; "
        f"{report.images:,} of them with an image"
    )
    if not dry_run:
        console.print(
            f"{report.batches} transactions; {report.files_deleted:,} image files deleted, "
            f"{len(report.files_kept)} kept (still named by a newer part)"
        )


@keys_app.command("new")
def keys_new(
    out: Annotated[Path, typer.Option(help="Folder for NAME.key (private, mode 0600) and NAME.pub.")],
    name: Annotated[str, typer.Option(help="File name of the pair.")] = "bundle-signing",
) -> None:
    """Make a bundle-signing key pair: training signs with NAME.key (ZD_SIGNING_KEY), stations
    list NAME.pub (or its base64 line) in trusted_keys."""
    from zerodefect.inference.signing import (
        SigningKeyError,
        key_id,
        public_key_b64,
        read_private_key,
        write_key_pair,
    )

    try:
        private, public = write_key_pair(out, name)
    except SigningKeyError as exc:
        raise fail(str(exc)) from None
    key = read_private_key(private)
    console.print(f"private key {private} (id {key_id(key)}): export ZD_SIGNING_KEY={private}")
    console.print(f"public key  {public}: add it (or the line below) to each station's trusted_keys")
    print(public_key_b64(key))


@keys_app.command("sign")
def keys_sign(bundle: Annotated[Path, typer.Argument(help="A bundle folder.")]) -> None:
    """Sign a bundle with the configured key (ZD_SIGNING_KEY, else the data dir's): for bundles
    made before signing, which stations refuse. Sign only bundles you vouch for."""
    from zerodefect.inference.bundle import load_bundle
    from zerodefect.inference.signing import sign_bundle

    try:
        load_bundle(bundle)  # a model that does not match its sha256 is not signed
        record = sign_bundle(bundle)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    console.print(f"{bundle}: signed by key {record['key_id']} ({len(record['files'])} files)")


@app.command("new-key")
def new_key() -> None:
    """Make an API key for a station's own endpoints: prints the key, then the sha256 for its config."""
    from zerodefect.apikeys import hash_key, mint_key

    key = mint_key()
    print(key)
    print(hash_key(key))
