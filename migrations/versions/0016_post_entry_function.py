"""One entry, one call: `ledger_post_entry(...)` books an entry (or answers its replay, or its refusal) in one
statement, so `Ledger.post` sends it alone in autocommit — one round trip where it took four (pool pre-ping,
BEGIN, the statement, COMMIT).

What it does, under the same locks and triggers as before:
- locks the legs' ledger accounts in id order (the global lock order), and only then takes the time: a defaulted
  effective time is monotone per account;
- answers a replay: the entry already booked under the key, with its content hash (the caller compares it) and
  each leg account's balance after it;
- checks the no-overdraft accounts *before* it writes — the locked balance plus the entry's legs, in the
  account's normal sign — and answers a refusal without writing anything, so no savepoint is needed (the
  savepoint cost two round trips, and in autocommit there is no transaction to protect anyway);
- inserts the entry (ON CONFLICT DO NOTHING: a concurrent writer of the same key wins and is answered as a
  replay) and its legs into `posting` in lock order, so `posting_apply` stamps them and every guard of
  migrations 0001-0015 fires exactly as for any insert: balances, hash chains, who-did-what, append-only, and the
  deferred balance check at commit.

It is SECURITY INVOKER: the caller needs its own INSERT on journal_entry and posting, so it grants nothing the
application role (migration 0012) does not already have. EXECUTE is revoked from PUBLIC and granted to the
application role by `invledger_grant_app`, extended here.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- Answer rows: one per leg account of the entry (its balance after the entry, raw: debits minus credits);
-- `replayed` when the key was booked before (then `content_hash` is the stored one); a single row with
-- `refused` (entry_id NULL) naming the first no-overdraft account that would go below zero and that balance.
CREATE FUNCTION ledger_post_entry(
    p_key text, p_hash bytea, p_kind text, p_account_id text, p_effective_at timestamptz, p_memo text,
    p_metadata jsonb, p_reverses bigint, p_by text,
    p_accounts bigint[], p_sides text[], p_amounts bigint[], p_currencies text[],
    p_guarded bigint[], p_guarded_signs int[])
RETURNS TABLE (entry_id bigint, replayed boolean, refused boolean, content_hash bytea, effective_at timestamptz,
               recorded_at timestamptz, ledger_account_id bigint, balance_after_minor bigint)
LANGUAGE plpgsql SECURITY INVOKER AS $$
#variable_conflict use_column
DECLARE
    held timestamptz;
    new_id bigint;
    new_effective timestamptz;
BEGIN
    PERFORM 1 FROM ledger_account WHERE id = ANY(p_accounts) ORDER BY id FOR NO KEY UPDATE;
    RETURN QUERY
        SELECT e.id, true, false, e.content_hash, e.effective_at, e.recorded_at, b.ledger_account_id,
               b.balance_after_minor
          FROM journal_entry e
          CROSS JOIN LATERAL (
              SELECT DISTINCT ON (p.ledger_account_id) p.ledger_account_id, p.balance_after_minor
                FROM posting p WHERE p.entry_id = e.id ORDER BY p.ledger_account_id, p.seq DESC) b
         WHERE e.idempotency_key = p_key;
    IF FOUND THEN
        RETURN;
    END IF;
    -- A second reversal of an entry is refused by the insert (journal_entry_reverses_entry_id_key), whatever the
    -- balances: the same answer as before this function.
    IF cardinality(p_guarded) > 0 AND NOT (p_reverses IS NOT NULL AND EXISTS (
            SELECT 1 FROM journal_entry r WHERE r.reverses_entry_id = p_reverses)) THEN
        RETURN QUERY
            SELECT NULL::bigint, false, true, NULL::bytea, NULL::timestamptz, NULL::timestamptz, a.id,
                   a.balance_minor + d.delta
              FROM unnest(p_guarded, p_guarded_signs) AS g(id, sign)
              JOIN ledger_account a ON a.id = g.id
              CROSS JOIN LATERAL (
                  SELECT COALESCE(sum(CASE l.side WHEN 'D' THEN l.amount ELSE -l.amount END), 0)::bigint AS delta
                    FROM unnest(p_accounts, p_sides, p_amounts) AS l(account, side, amount)
                   WHERE l.account = g.id) d
             WHERE g.sign * (a.balance_minor + d.delta) < 0
             LIMIT 1;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    held := clock_timestamp();
    INSERT INTO journal_entry (idempotency_key, content_hash, kind, investment_account_id, effective_at,
                               recorded_at, memo, metadata, reverses_entry_id, recorded_by)
    VALUES (p_key, p_hash, p_kind, p_account_id, COALESCE(p_effective_at, held), held, p_memo, p_metadata,
            p_reverses, p_by)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, effective_at INTO new_id, new_effective;
    IF new_id IS NULL THEN  -- a concurrent writer of this key committed first: answer its entry
        RETURN QUERY
            SELECT e.id, true, false, e.content_hash, e.effective_at, e.recorded_at, b.ledger_account_id,
                   b.balance_after_minor
              FROM journal_entry e
              CROSS JOIN LATERAL (
                  SELECT DISTINCT ON (p.ledger_account_id) p.ledger_account_id, p.balance_after_minor
                    FROM posting p WHERE p.entry_id = e.id ORDER BY p.ledger_account_id, p.seq DESC) b
             WHERE e.idempotency_key = p_key;
        RETURN;
    END IF;
    RETURN QUERY
        INSERT INTO posting (ledger_account_id, entry_id, side, amount_minor, currency,
                             seq, effective_at, balance_after_minor, late)
        SELECT l.account, new_id, l.side, l.amount, l.currency, 0, new_effective, 0, false
          FROM unnest(p_accounts, p_sides, p_amounts, p_currencies) WITH ORDINALITY AS l(account, side, amount,
                                                                                        currency, ord)
         ORDER BY l.ord
        RETURNING entry_id, false, false, NULL::bytea, effective_at, held, ledger_account_id, balance_after_minor;
END $$;
REVOKE ALL ON FUNCTION ledger_post_entry(text, bytea, text, text, timestamptz, text, jsonb, bigint, text, bigint[],
                                         text[], bigint[], text[], bigint[], int[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION invledger_grant_app(app name) RETURNS void LANGUAGE plpgsql AS $$
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
    EXECUTE format('GRANT EXECUTE ON FUNCTION ledger_post_entry(text, bytea, text, text, timestamptz, text, jsonb, '
                   'bigint, text, bigint[], text[], bigint[], text[], bigint[], int[]) TO %I', app);
END $$;
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
