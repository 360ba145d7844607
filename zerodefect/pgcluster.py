"""A throw-away PostgreSQL server: Debian's `initdb` and `pg_ctl` in a temp dir, on a loopback port.

Why: the record runs on PostgreSQL in a plant, so the suite and the benchmarks run it on a real
server too, without touching the machine's own clusters, a system service or a password. Each
cluster lives in its own directory under the temp dir, listens on 127.0.0.1 only (its socket
file stays inside that directory), trusts local connections, and is deleted when it stops.

`initdb` refuses to run as root; run as root, every server command runs as the `postgres` user
that Debian's package creates (through `runuser`), and the directory belongs to that user.
Client access goes through psycopg, the driver the record uses (the `postgres` extra).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zerodefect.services import free_port

# Debian's layout: /usr/lib/postgresql/<major>/bin (the `postgresql` package).
DEBIAN_BINDIRS = Path("/usr/lib/postgresql")
SUPERUSER = "zd"
# Without durability a test cluster is several times faster; a benchmark asks for durable=True
# so its figures are the ones a plant's server would give.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
START_ATTEMPTS = 3  # another process may take the free port between the probe and the start


class PostgresError(RuntimeError):
    """PostgreSQL is not installed, or a server command failed (the message says which and why)."""


def find_bindir() -> Path:
    """The newest installed PostgreSQL's bin directory (ZD_PG_BINDIR overrides it)."""
    override = os.environ.get("ZD_PG_BINDIR")
    candidates = [Path(override)] if override else sorted(DEBIAN_BINDIRS.glob("*/bin"), key=_major)
    for bindir in reversed(candidates):
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresError(
        f"PostgreSQL's initdb and pg_ctl were not found in {override or DEBIAN_BINDIRS / '*/bin'}; "
        "install Debian's postgresql package (`make test` does: apt-get install postgresql)"
    )


def _major(bindir: Path) -> int:
    name = bindir.parent.name
    return int(name) if name.isdigit() else -1


def _as_server_user(args: list[str]) -> list[str]:
    """Run `args` as the `postgres` user when we are root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str], what: str, cwd: Path) -> None:
    """Run a server command from `cwd`, the cluster's directory: the caller's own may be closed to
    the `postgres` user (a checkout under /root)."""
    done = subprocess.run(_as_server_user(args), capture_output=True, text=True, timeout=120, cwd=cwd)
    if done.returncode != 0:
        raise PostgresError(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")


@dataclass(frozen=True)
class PostgresCluster:
    """A running throw-away server: its directory, port and binaries."""

    root: Path
    port: int
    bindir: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """The SQLAlchemy URL of `database` (driver "postgresql" gives a libpq URL for psycopg)."""
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as connection:
            connection.execute(sql)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database `name` (a copy of `template` if given) and return its SQLAlchemy URL."""
        _check_name(name)
        copy = ""
        if template:
            _check_name(template)
            copy = f' TEMPLATE "{template}"'
        self.execute(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop `name`, closing any connection still open to it (a test's leftover pool)."""
        _check_name(name)
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away) and delete its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                _run(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                    "pg_ctl stop",
                    self.root,
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _check_name(name: str) -> None:
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise PostgresError(f"database names here are letters, digits and '_', not {name!r}")


def start_cluster(durable: bool = False, bindir: Path | None = None) -> PostgresCluster:
    """initdb a new cluster in a fresh temp dir and start it on a free 127.0.0.1 port.

    `durable=False` turns fsync and synchronous commit off: right for tests, wrong for figures.
    The caller stops it (`stop()`), or uses `postgres_cluster()`, which always does.
    """
    bindir = bindir or find_bindir()
    root = Path(tempfile.mkdtemp(prefix="zd-pg-"))
    if os.geteuid() == 0:
        try:
            server_user = pwd.getpwnam("postgres")
        except KeyError:
            root.rmdir()
            raise PostgresError(
                "as root, the server runs as the `postgres` user, and there is none: install Debian's "
                "postgresql package, or run as another user"
            ) from None
        os.chown(root, server_user.pw_uid, server_user.pw_gid)
    cluster = None
    try:
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(root / "data"),
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
            root,
        )
        settings = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(root)}
        if not durable:
            settings |= FAST_SETTINGS
        failure = None
        for _ in range(START_ATTEMPTS):
            cluster = PostgresCluster(root=root, port=free_port(), bindir=bindir)
            with (cluster.data / "postgresql.conf").open("a") as conf:
                conf.writelines(
                    f"{key} = '{value}'\n" for key, value in {**settings, "port": cluster.port}.items()
                )
            start = [
                str(bindir / "pg_ctl"),
                "-D",
                str(cluster.data),
                "-l",
                str(cluster.log),
                "-w",
                "-t",
                "60",
            ]
            try:
                _run([*start, "start"], "pg_ctl start", root)
                return cluster
            except PostgresError as error:
                failure = error
        log = cluster.log.read_text(errors="replace")[-2000:] if cluster.log.exists() else ""
        raise PostgresError(f"{failure}; the server's log ends with:\n{log}")
    except BaseException:
        if cluster is not None:
            cluster.stop()
        else:
            shutil.rmtree(root, ignore_errors=True)
        raise


@contextmanager
def postgres_cluster(durable: bool = False) -> Iterator[PostgresCluster]:
    """A running throw-away cluster for the `with` block; stopped and deleted after it."""
    cluster = start_cluster(durable=durable)
    try:
        yield cluster
    finally:
        cluster.stop()
