"""Wiring: settings -> database URL -> migrations -> engine -> Ledger. Used by the CLI and tests."""

from __future__ import annotations

import msgspec
import sqlalchemy as sa

from ledger import Ledger
from ledger.db import create_engine
from service import backup, config, database


class Runtime(msgspec.Struct, kw_only=True):
    settings: config.Settings
    url: str  # the application's role: what the engine connects as
    engine: sa.Engine
    ledger: Ledger
    owner_url: str | None = None  # the owner's, for what the application's role may not do (API keys)
    # Where reports, statements, pages and exports read: a streaming replica (REPORTS_DATABASE_URL; nothing is
    # ever written there), else None and they read through `engine`, the primary.
    reports_engine: sa.Engine | None = None
    reports_ledger: Ledger | None = None

    @property
    def reports(self) -> Ledger:
        """The ledger reports read from: over the replica when there is one, else the primary's."""
        return self.reports_ledger or self.ledger

    def close(self) -> None:
        self.engine.dispose()
        if self.reports_engine is not None:
            self.reports_engine.dispose()

    def owner_engine(self) -> sa.Engine:
        """A connection as the owner, for what the application's role may not do (API keys); dispose of it."""
        return sa.create_engine(self.owner_url or self.url, poolclass=sa.pool.NullPool)


def start(settings: config.Settings | None = None, *, migrate: bool = True,
          application_name: str = "invledger") -> Runtime:
    settings = settings or config.load()
    where = database.urls(settings.database_url, settings.migration_database_url, settings.data_dir,
                          archive_dir=backup.archive_dir(settings.backup_dir))
    if migrate:
        database.migrate(where.owner, app_role=where.app_role, create_role=where.create_role)
    url = where.app
    pooling = settings.db_pool_mode == "transaction"
    engine = create_engine(url, pool_size=settings.db_pool_size,
                           statement_timeout_ms=settings.db_statement_timeout_ms,
                           application_name=application_name, transaction_pooling=pooling)
    reports_engine = None
    if settings.reports_database_url:
        reports_engine = create_engine(database.sqlalchemy_url(settings.reports_database_url),
                                       pool_size=settings.db_pool_size,
                                       statement_timeout_ms=settings.db_statement_timeout_ms,
                                       application_name=f"{application_name}-reports", transaction_pooling=pooling)
    return Runtime(settings=settings, url=url, engine=engine, ledger=Ledger(engine), owner_url=where.owner,
                   reports_engine=reports_engine,
                   reports_ledger=Ledger(reports_engine) if reports_engine is not None else None)
