"""Withdrawals with holds (two-phase, issue 20): a hold reserves part of an investor's balance until it is posted
(the withdrawal entry is booked) or voided (cancelled, or expired).

`hold_event` is append-only: a hold is its `placed` row (`hold_id = id`); at most one `posted`, `voided` or `expired`
row resolves it (a unique index), a posted one naming its withdrawal entry (unique: a hold books one entry, an
entry settles one hold). `hold_state` keeps, per investor ledger account, what the open holds reserve
(`held_minor`, `open_count`) and the head of the account's hold chain; only `hold_event_apply` moves it.

`hold_event_apply` (BEFORE INSERT) does everything under the investor ledger account's row lock — the lock every
posting on that account takes — so a placement and a posting (a withdrawal, a fee) are serialised on one row:
- a resolution copies the account, amount and currency of its hold (the caller cannot change them); a posting
  must name a withdrawal entry of the same investment account;
- a placement is refused (SQLSTATE IL001) when the available balance, ledger balance − open holds, is smaller
  than its amount: holds never overdraw, whatever runs concurrently;
- every event is a link of its account's hold chain: SHA-256(previous head || the event's digest), stamped on the
  row (`chain_seq`, `chain_hash`), as the posting chains of migration 0010 are.
The row cannot be written with `INSERT … ON CONFLICT DO NOTHING` usefully (a BEFORE trigger runs before the
conflict is known), so callers look the key up first, under the investment account's lock.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE TABLE hold_event (
    id                      bigserial PRIMARY KEY,
    hold_id                 bigint NOT NULL,
    kind                    text NOT NULL CHECK (kind IN ('placed', 'posted', 'voided', 'expired')),
    investment_account_id   text NOT NULL REFERENCES investment_account (account_id),
    ledger_account_id       bigint NOT NULL REFERENCES ledger_account (id),
    amount_minor            bigint NOT NULL CHECK (amount_minor > 0),
    currency                text NOT NULL,
    idempotency_key         text UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    content_hash            bytea CHECK (length(content_hash) = 32),
    reference               text NOT NULL DEFAULT '' CHECK (length(reference) <= 1000),
    expires_at              timestamptz,
    entry_id                bigint UNIQUE REFERENCES journal_entry (id),
    reason                  text NOT NULL DEFAULT '' CHECK (length(reason) <= 1000),
    recorded_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    recorded_by             text NOT NULL DEFAULT '' CHECK (length(recorded_by) <= 200),
    chain_seq               bigint NOT NULL,
    chain_hash              bytea NOT NULL CHECK (length(chain_hash) = 32),
    FOREIGN KEY (hold_id) REFERENCES hold_event (id),
    UNIQUE (ledger_account_id, chain_seq),
    CHECK ((kind = 'placed') = (hold_id = id)),
    CHECK ((kind = 'placed') = (idempotency_key IS NOT NULL AND content_hash IS NOT NULL AND expires_at IS NOT NULL)),
    CHECK ((kind = 'posted') = (entry_id IS NOT NULL))
);
CREATE UNIQUE INDEX hold_event_one_resolution ON hold_event (hold_id) WHERE kind <> 'placed';
CREATE INDEX hold_event_by_account ON hold_event (investment_account_id, hold_id);
CREATE INDEX hold_event_expiry ON hold_event (expires_at) WHERE kind = 'placed';

CREATE TABLE hold_state (
    ledger_account_id   bigint PRIMARY KEY REFERENCES ledger_account (id),
    held_minor          bigint NOT NULL DEFAULT 0 CHECK (held_minor >= 0),
    open_count          bigint NOT NULL DEFAULT 0 CHECK (open_count >= 0),
    event_count         bigint NOT NULL DEFAULT 0,
    head                bytea NOT NULL DEFAULT ledger_chain_start() CHECK (length(head) = 32)
);

CREATE FUNCTION hold_event_digest(h hold_event) RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT sha256(convert_to(json_build_array(h.id, h.hold_id, h.kind, h.investment_account_id, h.ledger_account_id,
        h.amount_minor, h.currency, h.idempotency_key, encode(h.content_hash, 'hex'), h.reference,
        ledger_epoch_us(h.expires_at), h.entry_id, h.reason, ledger_epoch_us(h.recorded_at), h.recorded_by)::text,
        'UTF8')) $$;

CREATE FUNCTION hold_event_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    hold hold_event;
    account ledger_account;
    state hold_state;
BEGIN
    IF NEW.kind = 'placed' THEN
        NEW.hold_id := NEW.id;
    ELSE
        SELECT * INTO hold FROM hold_event WHERE id = NEW.hold_id AND kind = 'placed';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'hold % does not exist', NEW.hold_id USING ERRCODE = 'foreign_key_violation';
        END IF;
        NEW.investment_account_id := hold.investment_account_id;
        NEW.ledger_account_id := hold.ledger_account_id;
        NEW.amount_minor := hold.amount_minor;
        NEW.currency := hold.currency;
        IF NEW.kind = 'posted' AND NOT EXISTS (
                SELECT 1 FROM journal_entry e WHERE e.id = NEW.entry_id AND e.kind = 'withdrawal'
                   AND e.investment_account_id = hold.investment_account_id) THEN
            RAISE EXCEPTION 'hold % must be posted with a withdrawal entry of %', NEW.hold_id,
                hold.investment_account_id USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    -- The investor's ledger account row: the lock every posting on it takes, so holds and postings take turns.
    SELECT * INTO account FROM ledger_account WHERE id = NEW.ledger_account_id FOR NO KEY UPDATE;
    IF account.name IS DISTINCT FROM 'liabilities:investors:' || NEW.investment_account_id
            OR account.currency <> NEW.currency THEN
        RAISE EXCEPTION 'a hold of % is kept on liabilities:investors:% in its currency', NEW.investment_account_id,
            NEW.investment_account_id USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO hold_state (ledger_account_id) VALUES (NEW.ledger_account_id) ON CONFLICT DO NOTHING;
    SELECT * INTO state FROM hold_state WHERE ledger_account_id = NEW.ledger_account_id FOR UPDATE;
    IF NEW.kind = 'placed' AND -account.balance_minor - state.held_minor < NEW.amount_minor THEN
        RAISE EXCEPTION 'available balance of % is %, less than the hold of %', account.name,
            -account.balance_minor - state.held_minor, NEW.amount_minor USING ERRCODE = 'IL001';
    END IF;
    NEW.chain_seq := state.event_count + 1;
    NEW.chain_hash := sha256(state.head || hold_event_digest(NEW));
    UPDATE hold_state
       SET held_minor = held_minor + CASE NEW.kind WHEN 'placed' THEN NEW.amount_minor ELSE -NEW.amount_minor END,
           open_count = open_count + CASE NEW.kind WHEN 'placed' THEN 1 ELSE -1 END,
           event_count = NEW.chain_seq, head = NEW.chain_hash
     WHERE ledger_account_id = NEW.ledger_account_id;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_event_apply BEFORE INSERT ON hold_event FOR EACH ROW EXECUTE FUNCTION hold_event_apply();

-- Facts: never changed, never deleted.
CREATE TRIGGER hold_event_append_only BEFORE UPDATE OR DELETE ON hold_event
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER hold_event_no_truncate BEFORE TRUNCATE ON hold_event
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- The state is derived from the events: it moves only inside hold_event_apply (trigger depth 2).
CREATE FUNCTION hold_state_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'hold totals and chain heads are derived from hold events and cannot be set directly'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_state_guard BEFORE INSERT OR UPDATE OR DELETE ON hold_state
    FOR EACH ROW EXECUTE FUNCTION hold_state_guard();
CREATE TRIGGER hold_state_no_truncate BEFORE TRUNCATE ON hold_state
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Withdrawals, fees and reversals that must not overdraw see the open holds: ledger_post_entry (migration 0016)
-- checks a guarded account's balance after the entry less what its open holds reserve, read under the account's
-- row lock that it takes first and that every hold event takes too.
CREATE OR REPLACE FUNCTION ledger_post_entry(
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
                   a.balance_minor + d.delta - g.sign * reserved.minor  -- what would be available
              FROM unnest(p_guarded, p_guarded_signs) AS g(id, sign)
              JOIN ledger_account a ON a.id = g.id
              CROSS JOIN LATERAL (
                  SELECT COALESCE(sum(CASE l.side WHEN 'D' THEN l.amount ELSE -l.amount END), 0)::bigint AS delta
                    FROM unnest(p_accounts, p_sides, p_amounts) AS l(account, side, amount)
                   WHERE l.account = g.id) d
             CROSS JOIN LATERAL (
                  -- what open holds reserve (hold_state moves under this same row lock, taken above); the posting
                  -- of a hold of this account (keyed by the hold) is held to the balance alone
                  SELECT CASE WHEN own.id IS NOT NULL THEN 0
                              ELSE COALESCE((SELECT s.held_minor FROM hold_state s WHERE s.ledger_account_id = a.id), 0)
                         END AS minor
                    FROM (SELECT (SELECT h.id FROM hold_event h
                                   WHERE p_key LIKE 'hold:%\:post'
                                     AND h.id = CAST(substring(p_key FROM '^hold:([0-9]{1,18})\:post$') AS bigint)
                                     AND h.kind = 'placed' AND h.investment_account_id = p_account_id) AS id) own
              ) reserved
             WHERE g.sign * (a.balance_minor + d.delta) - reserved.minor < 0
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

-- The application role may update hold_state (through the trigger only, as guarded above).
CREATE OR REPLACE FUNCTION invledger_grant_app(app name) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', app);
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %I', app);
    EXECUTE format('GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO %I', app);
    EXECUTE format('REVOKE INSERT ON api_key, alembic_version FROM %I', app);
    EXECUTE format('GRANT UPDATE ON alert, outbox_event, job_run, engine_health, trade, investment_account, '
                   'reconciliation_result, daily_performance, api_idempotency, page_session, ledger_account, '
                   'ledger_checkpoint, ledger_checkpoint_balance, ledger_checkpoint_latest, webhook_chain_head, '
                   'hold_state TO %I', app);
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
