"""Who did what: every entry, account status change, outbox retry and reconciliation request records its principal.

`journal_entry.recorded_by` and `account_event.recorded_by`: the API key (`apikey:<prefix>:<role>`), `engine` for
a webhook, `job:<actor>` for a job, `cli:<user>` for the command line (ledger.principal.acting_as). The entry's digest
(the hash chains of migration 0010) covers it, so who booked an entry is as tamper-evident as the entry; an
entry booked before this migration has '' and keeps the digest it was chained with. `outbox_event.retried_by`
says who sent a dead notification again.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SCHEMA = r"""
ALTER TABLE journal_entry ADD COLUMN recorded_by text NOT NULL DEFAULT '' CHECK (length(recorded_by) <= 200);
ALTER TABLE account_event ADD COLUMN recorded_by text NOT NULL DEFAULT '' CHECK (length(recorded_by) <= 200);
ALTER TABLE outbox_event ADD COLUMN retried_by text;

-- The entry's digest with its principal; without one ('', every entry booked before this migration), exactly the
-- digest of migration 0010, so the chains made then still verify.
CREATE OR REPLACE FUNCTION ledger_entry_digest(e journal_entry) RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT sha256(convert_to(CASE WHEN e.recorded_by = '' THEN
        json_build_array(e.id, e.idempotency_key, encode(e.content_hash, 'hex'), e.kind, e.investment_account_id,
            ledger_epoch_us(e.effective_at), ledger_epoch_us(e.recorded_at), e.memo, e.metadata, e.reverses_entry_id)
        ELSE json_build_array(e.id, e.idempotency_key, encode(e.content_hash, 'hex'), e.kind, e.investment_account_id,
            ledger_epoch_us(e.effective_at), ledger_epoch_us(e.recorded_at), e.memo, e.metadata, e.reverses_entry_id,
            e.recorded_by) END::text, 'UTF8')) $$;

CREATE OR REPLACE FUNCTION ledger_post_entries(accounts bigint[], entries json, legs json)
RETURNS TABLE (idempotency_key text, entry_id bigint, effective_at timestamptz, recorded_at timestamptz,
               ledger_account_id bigint, balance_after_minor bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    made bigint[];
BEGIN
    WITH locked AS (
        SELECT a.id FROM ledger_account a WHERE a.id = ANY(ledger_post_entries.accounts) ORDER BY a.id
           FOR NO KEY UPDATE),
    held AS (SELECT clock_timestamp() AS at, count(*) FROM locked),
    e AS (
        INSERT INTO journal_entry (idempotency_key, content_hash, kind, investment_account_id, effective_at,
                                   recorded_at, memo, metadata, reverses_entry_id, recorded_by)
        SELECT d.key, decode(d.hash, 'hex'), d.kind, d.account_id, COALESCE(d.effective_at, held.at), held.at,
               d.memo, d.metadata, d.reverses, COALESCE(d.by, '')
          FROM held CROSS JOIN ROWS FROM (json_to_recordset(ledger_post_entries.entries)
                   AS (key text, hash text, kind text, account_id text, effective_at timestamptz, memo text,
                       metadata jsonb, reverses bigint, by text))
               WITH ORDINALITY AS d(key, hash, kind, account_id, effective_at, memo, metadata, reverses, by, ord)
         ORDER BY d.ord
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING journal_entry.id)
    SELECT array_agg(e.id) INTO made FROM e;
    INSERT INTO posting_batch
    SELECT array_agg(j.id ORDER BY l.ord), array_agg(l.a ORDER BY l.ord), array_agg(l.s ORDER BY l.ord),
           array_agg(l.m ORDER BY l.ord), array_agg(l.c ORDER BY l.ord)
      FROM ROWS FROM (json_to_recordset(ledger_post_entries.legs) AS (k text, a bigint, s text, m bigint, c text))
           WITH ORDINALITY AS l(k, a, s, m, c, ord)
      JOIN journal_entry j ON j.idempotency_key = l.k AND j.id = ANY(made)
    HAVING count(*) > 0;
    RETURN QUERY
    SELECT j.idempotency_key, j.id, j.effective_at, j.recorded_at, p.ledger_account_id, p.balance_after_minor
      FROM journal_entry j JOIN posting p ON p.entry_id = j.id
     WHERE j.id = ANY(made) ORDER BY p.ledger_account_id, p.seq;
END $$;
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
