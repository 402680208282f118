"""Jobs: run records, reconciliation results, monthly distributions (with the high-water mark), engine health.

- `job_run`: one row per run of a periodic job, unique per `run_key` (e.g. "reconcile:2026-11-24"), so a
  second enqueue for the same period finds the first run instead of doing the work again.
- `reconciliation_result`: per run and account, the ledger against the engine (contract §5);
  `reconciliation_run` is a view of the reconciliation rows of `job_run`.
- `distribution`: the monthly performance fee per account and month (unique), with every input;
  the high-water mark lives here (`new_hwm_minor` of the latest row). Rows are append-only.
- `engine_health`: the last ML Engine health check (one row), for /ready and the health alert.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE TABLE job_run (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job             text NOT NULL CHECK (job IN ('sync_performance', 'reconcile', 'distribute')),
    run_key         text NOT NULL UNIQUE CHECK (length(run_key) BETWEEN 1 AND 255),
    period          text NOT NULL,                     -- "2026-11-24", "2026-11", or an on-demand time
    trigger         text NOT NULL CHECK (trigger IN ('schedule', 'cli', 'api')),
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'done', 'partial', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    parameters      jsonb NOT NULL DEFAULT '{}'::jsonb,
    counts          jsonb NOT NULL DEFAULT '{}'::jsonb,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    heartbeat_at    timestamptz,
    finished_at     timestamptz
);
CREATE INDEX job_run_job ON job_run (job, id);

CREATE TABLE reconciliation_result (
    run_id          bigint NOT NULL REFERENCES job_run (id),
    account_id      text NOT NULL,
    currency        text,
    ledger_balance_minor bigint,                       -- NULL: the ledger does not know the account
    engine_balance  numeric,                           -- NULL: the engine did not answer, or does not know it
    difference      numeric,                           -- engine − ledger, exact
    in_flight       numeric NOT NULL DEFAULT 0,        -- capital changes told to the engine but not yet delivered
    ledger_status   text,
    engine_status   text,
    result          text NOT NULL CHECK (result IN ('matched', 'break', 'engine_unavailable', 'unknown_account',
                                                    'status_mismatch')),
    detail          text NOT NULL DEFAULT '',
    checked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, account_id)
);
CREATE INDEX reconciliation_result_problems ON reconciliation_result (run_id, account_id) WHERE result <> 'matched';
CREATE INDEX reconciliation_result_account ON reconciliation_result (account_id, run_id);

CREATE VIEW reconciliation_run AS
    SELECT id AS run_id, run_key, period, trigger, status, parameters, counts, error, created_at, started_at,
           finished_at
      FROM job_run WHERE job = 'reconcile';

CREATE TABLE distribution (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      text NOT NULL REFERENCES investment_account (account_id),
    month           date NOT NULL CHECK (extract(day FROM month) = 1),
    currency        text NOT NULL,
    opening_balance_minor bigint NOT NULL,             -- investors:A at the end of the previous month
    closing_balance_minor bigint NOT NULL,             -- investors:A at the end of the month, before the fee
    net_flows_minor bigint NOT NULL,                   -- deposits − withdrawals effective in the month
    profit_minor    bigint NOT NULL,                   -- closing − opening − net flows
    opening_hwm_minor bigint NOT NULL,
    adjusted_hwm_minor bigint NOT NULL,                -- opening HWM + net flows
    rate            numeric(7, 6) NOT NULL CHECK (rate >= 0 AND rate <= 1),
    computed_fee_minor bigint NOT NULL CHECK (computed_fee_minor >= 0),
    fee_minor       bigint NOT NULL CHECK (fee_minor >= 0 AND fee_minor <= computed_fee_minor),
    new_hwm_minor   bigint NOT NULL,
    entry_id        bigint REFERENCES journal_entry (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, month),
    CHECK ((fee_minor > 0) = (entry_id IS NOT NULL))
);
CREATE TRIGGER distribution_append_only BEFORE UPDATE OR DELETE ON distribution
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER distribution_no_truncate BEFORE TRUNCATE ON distribution
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

CREATE TABLE engine_health (
    id              smallint PRIMARY KEY CHECK (id = 1),
    status          text NOT NULL CHECK (status IN ('unknown', 'ok', 'failing')),
    consecutive_failures integer NOT NULL DEFAULT 0,
    period          text,                              -- the 5-minute slot last checked (one check per slot)
    checked_at      timestamptz,
    last_ok_at      timestamptz,
    detail          text NOT NULL DEFAULT ''
);
INSERT INTO engine_health (id, status) VALUES (1, 'unknown');
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
