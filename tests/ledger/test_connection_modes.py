"""The engine's two connection modes (ledger.db.create_engine) and the replica lag probe, on the real database of
the session: behind a transaction-pooling PgBouncer every transaction carries its own settings (no startup options,
no prepared statements); directly they are startup options. The cluster tests (make test-cluster) run the same
through PgBouncer and on a real standby; these keep the modes honest in `make test`."""

from __future__ import annotations

import sqlalchemy as sa

from ledger.db import create_engine
from service import config, replica


def _settings(engine: sa.Engine) -> tuple[str, str, str]:
    with engine.connect() as c:
        return tuple(c.exec_driver_sql(  # type: ignore[return-value]
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
            "current_setting('TimeZone')").one())


def test_transaction_pooling_sets_each_transaction_and_prepares_nothing(migrated_url: str) -> None:
    engine = create_engine(migrated_url, pool_size=1, statement_timeout_ms=4321, transaction_pooling=True)
    try:
        for _ in range(3):  # every transaction, not only the first on a connection
            assert _settings(engine) == ("4321ms", "4321ms", "UTC")
        with engine.connect() as c:
            # The session itself carries nothing (a pooler hands it to others between transactions) …
            c.rollback()
            c.connection.dbapi_connection.autocommit = True
            assert c.connection.dbapi_connection.execute("SHOW statement_timeout").fetchone()[0] == "0"
            c.connection.dbapi_connection.autocommit = False
        with engine.connect() as c:
            # … and a transaction may still choose its isolation after the settings (verify, reports do).
            c.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            assert c.exec_driver_sql("SHOW transaction_isolation").scalar() == "repeatable read"
            for _ in range(5):
                c.exec_driver_sql("SELECT count(*) FROM journal_entry WHERE id > %(n)s", {"n": 0})
            assert c.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar() == 0
    finally:
        engine.dispose()


def test_directly_the_settings_are_startup_options(migrated_url: str) -> None:
    engine = create_engine(migrated_url, pool_size=1, statement_timeout_ms=4321)
    try:
        with engine.connect() as c:
            c.connection.dbapi_connection.autocommit = True
            assert c.connection.dbapi_connection.execute("SHOW statement_timeout").fetchone()[0] == "4321ms"
    finally:
        engine.dispose()


def test_a_primary_has_no_replica_lag(engine: sa.Engine) -> None:
    assert replica.lag_ms(engine) == 0


def test_pool_mode_and_reports_url_are_checked_at_start() -> None:
    assert config.load({}).db_pool_mode == "session" and config.load({}).reports_database_url is None
    settings = config.load({"DB_POOL_MODE": "Transaction", "REPORTS_DATABASE_URL": "postgresql://r@replica/ledger"})
    assert settings.db_pool_mode == "transaction"
    assert settings.reports_database_url == "postgresql://r@replica/ledger"
    try:
        config.load({"DB_POOL_MODE": "statement", "REPORTS_DATABASE_URL": "mysql://x"})
    except config.ConfigError as error:
        assert [p.split(":")[0] for p in error.problems] == ["REPORTS_DATABASE_URL", "DB_POOL_MODE"]
        assert "mysql" not in str(error)  # a URL may carry a password: never echoed
    else:
        raise AssertionError("bad values were accepted")
