"""Integration and operations: API keys, API idempotency, webhook events, trades, daily performance, alerts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE TABLE api_key (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prefix          text NOT NULL UNIQUE,              -- the public part, shown in listings
    secret_hash     bytea NOT NULL,                    -- sha256 of the whole key; the key itself is never stored
    role            text NOT NULL CHECK (role IN ('finance', 'operator', 'admin')),
    name            text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);

-- Same Idempotency-Key + same body = the first answer again; another body = 409.
CREATE TABLE api_idempotency (
    scope           text NOT NULL,                     -- e.g. "deposit:ACCOUNT"
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash    bytea NOT NULL,
    status_code     integer NOT NULL,
    response        jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, idempotency_key)
);

-- Every verified webhook delivery, stored as received, once per (dedup key, content).
CREATE TABLE webhook_event (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedup_key       text NOT NULL,
    content_sha256  bytea NOT NULL,                    -- SHA-256 of the canonical event (raw body if undecodable)
    event_type      text NOT NULL,
    account_id      text,
    body            bytea NOT NULL,
    signature_scheme text NOT NULL,
    status          text NOT NULL CHECK (status IN ('applied', 'review', 'rejected')),
    reason          text NOT NULL DEFAULT '',
    entry_ids       bigint[] NOT NULL DEFAULT '{}',
    occurred_at     timestamptz,
    received_at     timestamptz NOT NULL DEFAULT now(),
    last_received_at timestamptz NOT NULL DEFAULT now(),
    delivery_count  integer NOT NULL DEFAULT 1,
    UNIQUE (dedup_key, content_sha256)
);
CREATE INDEX webhook_event_account ON webhook_event (account_id, id);
CREATE INDEX webhook_event_review ON webhook_event (status, id) WHERE status <> 'applied';

-- Trades as the engine reported them. A closed trade's P&L is booked once (entry_id).
CREATE TABLE trade (
    trade_id        text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES investment_account (account_id),
    symbol          text NOT NULL,
    side            text NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity        numeric NOT NULL,
    entry_price     numeric NOT NULL,
    exit_price      numeric,
    profit_loss_minor bigint,
    status          text NOT NULL CHECK (status IN ('open', 'closed')),
    executed_at     timestamptz NOT NULL,
    trade_date      date NOT NULL,
    entry_id        bigint REFERENCES journal_entry (id),
    source          text NOT NULL DEFAULT 'webhook',   -- webhook | backfill
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX trade_account_date ON trade (account_id, trade_date);

-- The engine's daily snapshot per account and day, and the true-up it caused.
CREATE TABLE daily_performance (
    account_id      text NOT NULL REFERENCES investment_account (account_id),
    date            date NOT NULL,
    opening_balance_minor bigint NOT NULL,
    closing_balance_minor bigint NOT NULL,
    daily_return    numeric NOT NULL,
    trades_executed integer NOT NULL,
    winning_trades  integer NOT NULL,
    losing_trades   integer NOT NULL,
    ledger_balance_minor bigint NOT NULL,              -- the ledger's balance at the end of the day, before the true-up
    true_up_entry_id bigint REFERENCES journal_entry (id),
    source          text NOT NULL DEFAULT 'webhook',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, date)
);

CREATE TABLE alert (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL,
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'acknowledged', 'resolved')),
    account_id      text,
    event_key       text,
    dedup_key       text NOT NULL,                     -- one open (or acknowledged) alert per dedup key
    message         text NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    acknowledged_by text,
    resolved_at     timestamptz,
    notified_at     timestamptz
);
CREATE UNIQUE INDEX alert_one_open ON alert (dedup_key) WHERE status <> 'resolved';
CREATE INDEX alert_status ON alert (status, id);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
