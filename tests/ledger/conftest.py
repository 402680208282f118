"""Fixtures of the core's tests: a database at an older migration, with books written as that revision wrote them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from alembic import command

from service import database


@pytest.fixture
def database_at(database_url: str) -> Iterator[Callable[[str], str]]:
    """A maker of fresh databases migrated up to a given revision (and no further); dropped at the end."""
    admin = sa.create_engine(sa.make_url(database.sqlalchemy_url(database_url)), isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make(revision: str) -> str:
        name = f"invledger_mig_{uuid.uuid4().hex[:10]}"
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        made.append(name)
        url = sa.make_url(database.sqlalchemy_url(database_url)).set(database=name)
        rendered = url.render_as_string(hide_password=False)
        command.upgrade(database.alembic_config(rendered), revision)
        return rendered

    yield make
    with admin.connect() as c:
        for name in made:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def open_account_as_before(engine: sa.Engine, account_id: str) -> None:
    """An investment account with its two ledger accounts, as the code of the first revisions opened one (plain SQL:
    today's code writes columns later migrations added)."""
    with engine.begin() as c:
        c.execute(sa.text("""
            INSERT INTO investment_account (account_id, product_id, agent_type, currency, fee_rate)
            VALUES (:a, 'p', 'swing', 'USD', 0.2)"""), {"a": account_id})
        c.execute(sa.text("""
            INSERT INTO ledger_account (name, type, currency, investment_account_id)
            VALUES ('assets:custody:' || :a, 'asset', 'USD', :a),
                   ('liabilities:investors:' || :a, 'liability', 'USD', :a)"""), {"a": account_id})
