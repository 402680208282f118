"""The accounting core: investment accounts, ledger accounts, journal entries, postings, outbox.

The database enforces the invariants itself, so no writer (ours, a psql session, a bug) can break them:
- postings and journal entries are append-only (UPDATE, DELETE and TRUNCATE raise);
- every entry balances per currency and has at least two legs, checked at commit by a deferred
  constraint trigger on the entry (once per entry; an entry with no legs is caught too);
- legs may be added to an entry only in the transaction that created it;
- the cached balance of a ledger account is maintained by the posting trigger and nothing else:
  a direct UPDATE of it raises;
- amounts are positive with an explicit side; one entry per idempotency key; one reversal per entry.

Each posting carries `seq` (1, 2, … per account, in recording order), `balance_after_minor` (the
account's balance after it, debits minus credits) and `late` (its effective time is earlier than a
posting already recorded on the account). See docs/design.md for how as-of balances use them.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE TABLE investment_account (
    account_id      text PRIMARY KEY CHECK (account_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    product_id      text NOT NULL CHECK (length(product_id) BETWEEN 1 AND 128),
    agent_type      text NOT NULL CHECK (length(agent_type) BETWEEN 1 AND 64),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3,5}$'),
    fee_rate        numeric(7, 6) NOT NULL CHECK (fee_rate >= 0 AND fee_rate <= 1),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused', 'closed')),
    agent_config    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Status changes are events, kept forever; investment_account.status is their latest value.
CREATE TABLE account_event (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      text NOT NULL REFERENCES investment_account (account_id),
    kind            text NOT NULL CHECK (kind IN ('created', 'paused', 'resumed', 'closed')),
    reason          text NOT NULL DEFAULT '',
    source          text NOT NULL DEFAULT 'api',
    occurred_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_event_account ON account_event (account_id, id);

CREATE TABLE ledger_account (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^(assets|liabilities|equity|income|expenses):[a-z-]+(:[A-Za-z0-9_.-]+)?$'),
    type            text NOT NULL CHECK (type IN ('asset', 'liability', 'equity', 'income', 'expense')),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3,5}$'),
    investment_account_id text REFERENCES investment_account (account_id),
    -- Cache, maintained only by posting_apply(): debits minus credits of all postings, their count,
    -- and the latest effective time among them.
    balance_minor   bigint NOT NULL DEFAULT 0,
    posting_count   bigint NOT NULL DEFAULT 0,
    max_effective_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_account_investment ON ledger_account (investment_account_id);

CREATE TABLE journal_entry (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    content_hash    bytea NOT NULL CHECK (length(content_hash) = 32),
    kind            text NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'trade', 'true_up',
                        'adjustment', 'fee', 'reversal', 'transfer')),
    investment_account_id text REFERENCES investment_account (account_id),
    effective_at    timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    memo            text NOT NULL DEFAULT '' CHECK (length(memo) <= 1000),
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    reverses_entry_id bigint UNIQUE REFERENCES journal_entry (id),
    CHECK ((kind = 'reversal') = (reverses_entry_id IS NOT NULL))
);
CREATE INDEX journal_entry_account ON journal_entry (investment_account_id, effective_at, id);
CREATE INDEX journal_entry_effective ON journal_entry (effective_at, id);

CREATE TABLE posting (
    ledger_account_id bigint NOT NULL REFERENCES ledger_account (id),
    seq             bigint NOT NULL,
    entry_id        bigint NOT NULL REFERENCES journal_entry (id),
    side            char(1) NOT NULL CHECK (side IN ('D', 'C')),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    currency        text NOT NULL,
    effective_at    timestamptz NOT NULL,
    balance_after_minor bigint NOT NULL,
    late            boolean NOT NULL,
    PRIMARY KEY (ledger_account_id, seq)
);
CREATE INDEX posting_entry ON posting (entry_id);
CREATE INDEX posting_effective ON posting (ledger_account_id, effective_at, seq)
    INCLUDE (late, balance_after_minor);
CREATE INDEX posting_late ON posting (ledger_account_id, seq)
    INCLUDE (effective_at, side, amount_minor) WHERE late;

-- Notifications the ledger owes the outside world, written in the same transaction as the change.
CREATE TABLE outbox_event (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      text NOT NULL,
    topic           text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    delivered_at    timestamptz
);
CREATE INDEX outbox_event_pending ON outbox_event (account_id, id) WHERE status <> 'delivered';

-- ---------------------------------------------------------------- invariants, enforced here

CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is not allowed: the ledger is append-only; post a reversal instead',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER posting_append_only BEFORE UPDATE OR DELETE ON posting
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER posting_no_truncate BEFORE TRUNCATE ON posting
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journal_entry_append_only BEFORE UPDATE OR DELETE ON journal_entry
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journal_entry_no_truncate BEFORE TRUNCATE ON journal_entry
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER account_event_append_only BEFORE UPDATE OR DELETE ON account_event
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_account_no_delete BEFORE DELETE ON ledger_account
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_account_no_truncate BEFORE TRUNCATE ON ledger_account
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Applies a posting to its account: locks the account row (legs are inserted in account-id order,
-- so concurrent entries lock in one global order), updates the cached balance, and stamps the
-- posting with its sequence number, running balance and lateness.
CREATE FUNCTION posting_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    entry record;
    acc record;
BEGIN
    SELECT e.effective_at, e.xmin AS xmin INTO entry FROM journal_entry e WHERE e.id = NEW.entry_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'posting for unknown journal entry %', NEW.entry_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- "Created by this transaction" must include its savepoints (subtransactions), whose xids differ
    -- from the top-level one: widen the row's 32-bit xmin to an xid8 next to the current xid and ask
    -- pg_xact_status, which answers 'in progress' for this transaction and all its subtransactions
    -- (a row of another in-progress transaction is not visible here, so cannot be found above).
    IF pg_xact_status((pg_current_xact_id()::text::bigint
            + (((entry.xmin::text::bigint - (pg_current_xact_id()::text::bigint & 4294967295) + 2147483648)
                % 4294967296 + 4294967296) % 4294967296 - 2147483648))::text::xid8)
       IS DISTINCT FROM 'in progress' THEN
        RAISE EXCEPTION 'journal entry % is closed: legs may only be added in the transaction that created it',
            NEW.entry_id USING ERRCODE = 'restrict_violation';
    END IF;
    NEW.effective_at := entry.effective_at;
    UPDATE ledger_account
       SET balance_minor = balance_minor
                           + CASE NEW.side WHEN 'D' THEN NEW.amount_minor ELSE -NEW.amount_minor END,
           posting_count = posting_count + 1,
           max_effective_at = GREATEST(max_effective_at, NEW.effective_at)
     WHERE id = NEW.ledger_account_id
    RETURNING balance_minor, posting_count, max_effective_at, currency INTO acc;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'posting to unknown ledger account %', NEW.ledger_account_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF acc.currency <> NEW.currency THEN
        RAISE EXCEPTION 'posting in % to ledger account % kept in %', NEW.currency,
            NEW.ledger_account_id, acc.currency USING ERRCODE = 'check_violation';
    END IF;
    NEW.seq := acc.posting_count;
    NEW.balance_after_minor := acc.balance_minor;
    NEW.late := acc.max_effective_at > NEW.effective_at;
    RETURN NEW;
END $$;

CREATE TRIGGER posting_apply BEFORE INSERT ON posting
    FOR EACH ROW EXECUTE FUNCTION posting_apply();

-- The cache columns of ledger_account change only from inside posting_apply (trigger depth > 1);
-- its identity (id, name, type, owner) never changes at all.
CREATE FUNCTION ledger_account_guard_cache() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 AND (
           NEW.balance_minor IS DISTINCT FROM OLD.balance_minor
        OR NEW.posting_count IS DISTINCT FROM OLD.posting_count
        OR NEW.max_effective_at IS DISTINCT FROM OLD.max_effective_at
        OR NEW.currency IS DISTINCT FROM OLD.currency
        OR NEW.id IS DISTINCT FROM OLD.id OR NEW.name IS DISTINCT FROM OLD.name OR NEW.type IS DISTINCT FROM OLD.type
        OR NEW.investment_account_id IS DISTINCT FROM OLD.investment_account_id) THEN
        RAISE EXCEPTION 'ledger_account % balance is derived from postings and cannot be set directly; '
            'its id, name, type, currency and owner never change', OLD.id USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER ledger_account_guard_cache BEFORE UPDATE ON ledger_account
    FOR EACH ROW EXECUTE FUNCTION ledger_account_guard_cache();

CREATE FUNCTION ledger_account_new_is_empty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance_minor <> 0 OR NEW.posting_count <> 0 OR NEW.max_effective_at IS NOT NULL THEN
        RAISE EXCEPTION 'a new ledger account starts empty' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER ledger_account_new_is_empty BEFORE INSERT ON ledger_account
    FOR EACH ROW EXECUTE FUNCTION ledger_account_new_is_empty();

-- At commit: the entry has at least two legs and balances in every currency.
CREATE FUNCTION journal_entry_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    legs bigint;
    unbalanced text;
BEGIN
    SELECT count(*) INTO legs FROM posting WHERE entry_id = NEW.id;
    IF legs < 2 THEN
        RAISE EXCEPTION 'journal entry % has % legs; an entry needs at least two', NEW.id, legs
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT string_agg(currency, ', ') INTO unbalanced FROM (
        SELECT currency FROM posting WHERE entry_id = NEW.id GROUP BY currency
        HAVING sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) <> 0) AS u;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not balance in %', NEW.id, unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER journal_entry_balanced AFTER INSERT ON journal_entry
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_entry_check_balanced();
-- The balance (debits minus credits) of a ledger account as of an effective time, in two index reads:
-- the last in-order posting at or before `at` (everything recorded before it is effective before it),
-- plus the late postings recorded after it that are effective at or before `at`.
CREATE FUNCTION ledger_balance_as_of(account bigint, at timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    WITH y AS (
        SELECT seq, balance_after_minor FROM posting
         WHERE ledger_account_id = account AND effective_at <= at AND NOT late
         ORDER BY effective_at DESC, seq DESC
         LIMIT 1)
    SELECT (COALESCE((SELECT balance_after_minor FROM y), 0)
          + COALESCE((SELECT sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END)
                        FROM posting
                       WHERE ledger_account_id = account AND late
                         AND seq > COALESCE((SELECT seq FROM y), 0) AND effective_at <= at), 0))::bigint
$$;
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
