"""Least privilege: what the application's role may do, granted by the owner (issue 17, part 2).

`invledger_grant_app(role)` gives the role that `serve`, `worker`, `scheduler` and the daily CLI commands connect
as exactly what they need: read everything; append to the books, the stored deliveries, the anchors and the
job tables; update only the rows that are state, not history (alerts, outbox, job runs, statuses, the ledger
accounts' caches through the posting triggers — guarded by them) and, of a stored delivery, only its redelivery
count and time; of an API key, only when it was last used. No DELETE, no TRUNCATE, no UPDATE of postings,
entries, events, distributions or anchors, no new API keys (the owner's `invledger apikey`), and as a role that
owns nothing it can neither ALTER a table, nor disable a trigger, nor set `session_replication_role`.

`invledger migrate` (as the owner) calls it after every upgrade, so tables added later are granted too. The
embedded database makes the role `invledger_app`; on another server, `DATABASE_URL` names the application role
and `MIGRATION_DATABASE_URL` the owner (README, Configuration).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SCHEMA = r"""
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

CREATE FUNCTION invledger_grant_app(app name) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', app);
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %I', app);
    EXECUTE format('GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO %I', app);
    EXECUTE format('REVOKE INSERT ON api_key, alembic_version FROM %I', app);
    EXECUTE format('GRANT UPDATE ON alert, outbox_event, job_run, engine_health, trade, investment_account, '
                   'reconciliation_result, daily_performance, api_idempotency, page_session, ledger_account, '
                   'ledger_checkpoint, ledger_checkpoint_balance, ledger_checkpoint_latest, webhook_chain_head '
                   'TO %I', app);
    EXECUTE format('GRANT UPDATE (delivery_count, last_received_at) ON webhook_event TO %I', app);
    EXECUTE format('GRANT UPDATE (last_used_at) ON api_key TO %I', app);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I', app);
END $$;
REVOKE ALL ON FUNCTION invledger_grant_app(name) FROM PUBLIC;
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
