"""Least privilege (issue 17, part 2): the role the service connects as can read and append, and cannot change what
must not change — not even by switching the guards off. A fresh embedded database set up exactly as `serve` sets it
up (the owner migrates and grants; the application connects as `invledger_app`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg.errors
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from api.auth import KeyStore, create_key, revoke_key
from documents import statements
from integration import anchors
from integration.signature import Verified
from integration.webhooks import WebhookProcessor
from ledger import AccountSpec, Money, checkpoints, rules
from ledger.chain import public_key_bytes
from ledger.distribution import distribute_account
from ledger.verify import verify
from service import config, database, runtime

FORBIDDEN = {
    "disable a guard": "ALTER TABLE posting DISABLE TRIGGER posting_append_only",
    "disable every trigger": "ALTER TABLE posting DISABLE TRIGGER ALL",
    "switch the guards off": "SET session_replication_role = replica",
    "edit a posting": "UPDATE posting SET amount_minor = amount_minor",
    "edit an entry's memo": "UPDATE journal_entry SET memo = 'edited'",
    "delete an entry": "DELETE FROM journal_entry",
    "truncate the postings": "TRUNCATE posting",
    "delete a stored delivery": "DELETE FROM webhook_event",
    "edit a stored delivery's body": "UPDATE webhook_event SET body = body",
    "edit an anchor": "UPDATE ledger_anchor SET root = root",
    "insert an API key": "INSERT INTO api_key (prefix, secret_hash, role) VALUES ('x', sha256('x'), 'admin')",
    "raise an API key's role": "UPDATE api_key SET role = 'admin'",
    "create a table": "CREATE TABLE sneaky (x int)",
    "drop a guard": "DROP TRIGGER posting_append_only ON posting",
    "replace a digest function": "CREATE OR REPLACE FUNCTION ledger_chain_start() RETURNS bytea LANGUAGE sql "
                                 "AS $$ SELECT sha256('x') $$",
    "change the schema version": "UPDATE alembic_version SET version_num = 'x'",
    "edit an issued statement": "UPDATE investor_statement SET pdf = pdf",
    "delete an issued statement": "DELETE FROM investor_statement",
    "replace the posting function": "CREATE OR REPLACE FUNCTION ledger_post_entry(text, bytea, text, text, "
                                    "timestamptz, text, jsonb, bigint, text, bigint[], text[], bigint[], text[], "
                                    "bigint[], int[]) RETURNS void LANGUAGE sql AS $$ SELECT $$",
}
POST_ENTRY = ("ledger_post_entry(text, bytea, text, text, timestamptz, text, jsonb, bigint, text, bigint[], text[], "
              "bigint[], text[], bigint[], int[])")


@pytest.fixture(scope="module")
def app_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[runtime.Runtime]:
    data_dir: Path = tmp_path_factory.mktemp("least-privilege")
    rt = runtime.start(config.load({"LEDGER_DATA_DIR": str(data_dir)}))
    yield rt
    rt.close()
    database.stop_embedded(data_dir)


def test_the_service_connects_as_the_application_role(app_runtime: runtime.Runtime) -> None:
    with app_runtime.engine.connect() as c:
        role = c.execute(sa.text("SELECT current_user")).scalar()
        superuser = c.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()
    assert (role, superuser) == (database.APP_ROLE, False)
    assert sa.make_url(app_runtime.owner_url).username != database.APP_ROLE


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_the_application_role_cannot(app_runtime: runtime.Runtime, what: str) -> None:
    with app_runtime.engine.connect() as c, pytest.raises(DBAPIError) as refused:
        c.execute(sa.text(FORBIDDEN[what]))
    assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege), (what, refused.value.orig)


def test_the_posting_function_grants_nothing_more(app_runtime: runtime.Runtime) -> None:
    """ledger_post_entry (migration 0016) runs as its caller (SECURITY INVOKER: the role's own INSERTs, and every
    guard); the application role may execute it, a role it was not granted to may not (no EXECUTE for PUBLIC)."""
    owner = app_runtime.owner_engine()
    try:
        with owner.begin() as c:
            c.exec_driver_sql("DROP ROLE IF EXISTS invledger_nobody")
            c.exec_driver_sql("CREATE ROLE invledger_nobody NOLOGIN")
            definer, app, nobody = c.execute(sa.text(
                "SELECT p.prosecdef, has_function_privilege(:app, CAST(:f AS regprocedure), 'EXECUTE'),"
                "       has_function_privilege('invledger_nobody', CAST(:f AS regprocedure), 'EXECUTE')"
                "  FROM pg_proc p WHERE p.oid = CAST(:f AS regprocedure)"),
                {"app": database.APP_ROLE, "f": POST_ENTRY}).one()
            c.exec_driver_sql("DROP ROLE invledger_nobody")
    finally:
        owner.dispose()
    assert (definer, app, nobody) == (False, True, False)


def test_the_application_role_does_its_work(app_runtime: runtime.Runtime) -> None:
    """Everything the service does day to day, as the application role: accounts, money, a webhook, a checkpoint,
    an anchor, verify."""
    ledger, engine, data_dir = app_runtime.ledger, app_runtime.engine, app_runtime.settings.data_dir
    ledger.open_account(AccountSpec(account_id="lp-1", product_id="p", agent_type="swing", currency="USD",
                                    fee_rate=Decimal("0.2"),
                                    initial_capital=Money.from_decimal("100", "USD")))
    ledger.deposit("lp-1", "5.00", idempotency_key="lp-1:d")
    ledger.change_status("lp-1", "pause")
    ledger.change_status("lp-1", "resume")
    body = json.dumps({"event_type": "trade.executed", "data": {
        "trade_id": "lp-t1", "account_id": "lp-1", "symbol": "EURUSD", "side": "buy", "quantity": 1,
        "entry_price": "1.1", "exit_price": "1.2", "status": "closed", "profit_loss": "1.50",
        "executed_at": "2026-11-02T10:00:00Z"}}).encode()
    processor = WebhookProcessor(ledger)
    assert processor.receive(body, Verified(scheme="ml")).result == "applied"
    assert processor.receive(body, Verified(scheme="ml")).duplicate  # a redelivery updates its count
    checkpoints.make_due(ledger)
    # Last month distributed and its statement issued (a correction would be another insert).
    month = (datetime.now(UTC).date().replace(day=1) - timedelta(days=1)).replace(day=1)
    ledger.post(rules.deposit("lp-1", Money.from_decimal("7.00", "USD"), idempotency_key="lp-1:past",
                              effective_at=datetime(month.year, month.month, 2, tzinfo=UTC)))
    ledger.transact(lambda tx: distribute_account(tx, "lp-1", month, require_snapshot=False))
    stored, outcome = statements.issue(ledger, "lp-1", month)
    assert outcome == "issued" and stored.body["figures"]["deposits"] == "7.00"
    key = anchors.audit_key(None, data_dir)
    anchors.anchor(engine, key, data_dir=data_dir, alert_url=None, made_by="test")
    report = verify(engine, public_key=public_key_bytes(key))
    assert report.ok, report.findings
    # Keys: the owner makes them; the application checks them, records their use and holds page sessions.
    owner = sa.create_engine(app_runtime.owner_url, poolclass=sa.pool.NullPool)
    api_key = create_key(owner, "operator", "least privilege")
    store = KeyStore(engine, ttl_s=0)
    assert store.role_of(api_key) == ("operator", api_key.split("_")[1])
    session_id = store.open_session(api_key, 60)
    assert store.session(session_id) is not None
    store.close_session(session_id)
    assert store.session(session_id) is None
    assert revoke_key(owner, api_key.split("_")[1]) and store.role_of(api_key) is None
    owner.dispose()
