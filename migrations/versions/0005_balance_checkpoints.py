"""Balance checkpoints: every ledger account's balance at chosen past instants (month ends), kept exact.

A report as of a past time T used to probe each ledger account's postings (three index reads per
account, ~2 s for 200k accounts whatever T). Now it starts from the checkpoint nearest to T (one row
per ledger account with a balance) and adds, or takes back, the postings effective between the two,
read in time order from a new index on `posting (effective_at)`: O(accounts + postings in between), no
per-account probe. When probing is cheaper (no checkpoint, or T is recent and few accounts moved since),
it answers as before.

A checkpoint is a cache like `ledger_account.balance_minor`: derived from postings, never set by hand.
- `ledger_checkpoint_make(at)` writes one, in time order (the `checkpoint_balances` job makes every month
  end). It holds an EXCLUSIVE lock on `ledger_account` while it works (under a second for 200k ledger
  accounts and a month of postings here): writers wait, readers do not, so it sees every posting committed before it and
  `posting_apply` sees the checkpoint for every posting after it.
- `posting_apply` keeps it exact: a posting effective at or before the latest checkpoint (a back-dated
  trade, a true-up, a fee for last month) is added to every checkpoint at or after its effective time.
  It reads the latest checkpoint time (`ledger_checkpoint_latest`, one row) after updating the account
  row, that is after any checkpoint being made has committed; the common posting pays that one read and
  a comparison. A writer in REPEATABLE READ or SERIALIZABLE, whose snapshot may predate a checkpoint,
  locks that row instead: if a checkpoint updated it since, the lock fails with a serialization error
  (retried by the caller) rather than the posting missing the checkpoint.
- Direct writes are refused; `invledger verify` recomputes every checkpoint (`checkpoints_match`).

Creating the index reads the whole posting table once (about 6 s per 10M postings, writers wait).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE INDEX posting_time ON posting (effective_at) INCLUDE (ledger_account_id, side, amount_minor);

CREATE TABLE ledger_checkpoint (
    at              timestamptz PRIMARY KEY,  -- postings effective at or before `at` are in it
    made_at         timestamptz NOT NULL DEFAULT now()
);

-- Debits minus credits of the ledger account's postings effective at or before `at`; no row: zero.
CREATE TABLE ledger_checkpoint_balance (
    at              timestamptz NOT NULL,
    ledger_account_id bigint NOT NULL,
    balance_minor   bigint NOT NULL,
    PRIMARY KEY (at, ledger_account_id)
);

-- The latest checkpoint, in a row every checkpoint updates (see the module docstring).
CREATE TABLE ledger_checkpoint_latest (
    one             boolean PRIMARY KEY DEFAULT true CHECK (one),
    at              timestamptz
);
INSERT INTO ledger_checkpoint_latest (one, at) VALUES (true, NULL);

-- Checkpoint rows are written by posting_apply (a nested trigger, depth 2) and by ledger_checkpoint_make
-- (which marks its own transaction while it writes); never deleted.
CREATE FUNCTION ledger_checkpoint_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') OR (pg_trigger_depth() < 2
           AND current_setting('invledger.making_checkpoint', true) IS DISTINCT FROM 'yes') THEN
        RAISE EXCEPTION '% on % is not allowed: checkpoints are derived from postings '
            '(ledger_checkpoint_make writes them, posting_apply keeps them exact)', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END $$;

-- Per statement: the check looks at who writes, not at the rows.
CREATE TRIGGER ledger_checkpoint_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON ledger_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_checkpoint_guard();
CREATE TRIGGER ledger_checkpoint_balance_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON ledger_checkpoint_balance FOR EACH STATEMENT EXECUTE FUNCTION ledger_checkpoint_guard();
CREATE TRIGGER ledger_checkpoint_latest_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON ledger_checkpoint_latest FOR EACH STATEMENT EXECUTE FUNCTION ledger_checkpoint_guard();

CREATE OR REPLACE FUNCTION posting_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    entry record;
    acc record;
    checkpointed timestamptz;
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
    -- In SET, the columns are the row's values before this posting.
    UPDATE ledger_account
       SET balance_minor = balance_minor
                           + CASE NEW.side WHEN 'D' THEN NEW.amount_minor ELSE -NEW.amount_minor END,
           posting_count = posting_count + 1,
           max_lateness_us = GREATEST(max_lateness_us, COALESCE(
               (extract(epoch FROM max_effective_at - NEW.effective_at) * 1000000)::bigint, 0)),
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
    -- The latest checkpoint, read after the account update (which waits while one is being made).
    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT l.at INTO checkpointed FROM ledger_checkpoint_latest l;
    ELSE  -- an older snapshot must not miss a newer checkpoint: locking its updated row fails instead
        SELECT l.at INTO checkpointed FROM ledger_checkpoint_latest l FOR KEY SHARE;
    END IF;
    IF NEW.effective_at <= checkpointed THEN
        -- Back-dated into checkpointed time: every checkpoint at or after it includes it.
        INSERT INTO ledger_checkpoint_balance AS c (at, ledger_account_id, balance_minor)
        SELECT k.at, NEW.ledger_account_id, CASE NEW.side WHEN 'D' THEN NEW.amount_minor ELSE -NEW.amount_minor END
          FROM ledger_checkpoint k WHERE k.at >= NEW.effective_at
            ON CONFLICT (at, ledger_account_id) DO UPDATE SET balance_minor = c.balance_minor + EXCLUDED.balance_minor;
    END IF;
    NEW.seq := acc.posting_count;
    NEW.balance_after_minor := acc.balance_minor;
    NEW.late := acc.max_effective_at > NEW.effective_at;
    RETURN NEW;
END $$;

-- The as-of method of 0004 (a few index reads per account) under its own name: it still answers for
-- one account, and for every account when no checkpoint is near.
ALTER FUNCTION ledger_balances_as_of(timestamptz) RENAME TO ledger_balances_probed;

CREATE OR REPLACE FUNCTION ledger_balance_as_of(account bigint, at timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT b.balance_minor FROM ledger_balances_probed(at) b WHERE b.ledger_account_id = account), 0)
$$;

-- Every ledger account's balance as of `at`, from the checkpoint at `k`: plus the postings effective in
-- (k, at] when `at` is later, minus those in (at, k] when it is earlier.
CREATE FUNCTION ledger_balances_from_checkpoint(k timestamptz, at timestamptz)
RETURNS TABLE (ledger_account_id bigint, balance_minor bigint) LANGUAGE sql STABLE AS $$
    SELECT a.id, (COALESCE(c.balance_minor, 0) + COALESCE(w.minor, 0))::bigint
      FROM ledger_account a
      LEFT JOIN ledger_checkpoint_balance c ON c.at = k AND c.ledger_account_id = a.id
      LEFT JOIN (
           SELECT p.ledger_account_id,
                  sum(CASE WHEN (p.side = 'D') = (at > k) THEN p.amount_minor ELSE -p.amount_minor END) AS minor
             FROM posting p
            WHERE p.effective_at > least(k, at) AND p.effective_at <= greatest(k, at)
            GROUP BY p.ledger_account_id) w ON w.ledger_account_id = a.id
$$;

-- Every ledger account's balance as of `at`: from the nearest checkpoint when the postings between the two
-- are fewer than the ledger accounts (reading a posting in time order costs about a sixth of probing an
-- account), unless `at` is later than it and six times fewer postings are effective after `at` (the
-- probed method answers every account with nothing after `at` from its cached balance). Else probed.
-- Either way the answer is exact; only the cost differs. The counts stop at what the choice needs.
CREATE FUNCTION ledger_balances_as_of(at timestamptz)
RETURNS TABLE (ledger_account_id bigint, balance_minor bigint) LANGUAGE plpgsql STABLE
ROWS 100000 SET work_mem = '64MB' AS $$
DECLARE
    k timestamptz;
    accounts bigint;
    between_count bigint;
    after_count bigint;
BEGIN
    SELECT n.at INTO k FROM (
        (SELECT c.at FROM ledger_checkpoint c WHERE c.at <= $1 ORDER BY c.at DESC LIMIT 1)
        UNION ALL
        (SELECT c.at FROM ledger_checkpoint c WHERE c.at > $1 ORDER BY c.at LIMIT 1)) n
     ORDER BY greatest(n.at - $1, $1 - n.at) LIMIT 1;
    IF k IS NOT NULL THEN
        SELECT count(*) INTO accounts FROM ledger_account;
        SELECT count(*) INTO between_count FROM (
            SELECT 1 FROM posting p WHERE p.effective_at > least(k, $1) AND p.effective_at <= greatest(k, $1)
             LIMIT accounts) w;
        IF between_count >= accounts THEN
            k := NULL;
        ELSIF $1 > k THEN
            SELECT count(*) INTO after_count FROM (
                SELECT 1 FROM posting p WHERE p.effective_at > $1 LIMIT between_count / 6 + 1) w;
            IF after_count * 6 < between_count THEN
                k := NULL;
            END IF;
        END IF;
    END IF;
    IF k IS NULL THEN
        RETURN QUERY SELECT * FROM ledger_balances_probed($1);
    ELSE
        RETURN QUERY SELECT * FROM ledger_balances_from_checkpoint(k, $1);
    END IF;
END $$;

-- Makes the checkpoint at `new_at` (after the latest one, before now); returns the balance rows written
-- (0 when `new_at` is the latest one already).
CREATE FUNCTION ledger_checkpoint_make(new_at timestamptz) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    last_at timestamptz;
    written bigint;
BEGIN
    IF new_at IS NULL OR new_at >= statement_timestamp() THEN
        RAISE EXCEPTION 'a checkpoint is made for a past time, not %', new_at USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Its reads must see what committed while it waited for the lock: a snapshot per statement.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'a checkpoint is made in a READ COMMITTED transaction' USING ERRCODE = 'invalid_transaction_state';
    END IF;
    -- Writers (posting_apply updates ledger_account) wait until this commits; readers do not.
    LOCK TABLE ledger_account IN EXCLUSIVE MODE;
    SELECT l.at INTO last_at FROM ledger_checkpoint_latest l FOR UPDATE;
    IF new_at = last_at THEN  -- made already (a second maker, a retry): nothing to do
        RETURN 0;
    END IF;
    IF new_at < last_at THEN
        RAISE EXCEPTION 'checkpoints are made in time order: % is not after the latest one, %', new_at, last_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('invledger.making_checkpoint', 'yes', true);
    PERFORM set_config('work_mem', '64MB', true);
    INSERT INTO ledger_checkpoint (at) VALUES (new_at);
    IF last_at IS NULL THEN
        INSERT INTO ledger_checkpoint_balance (at, ledger_account_id, balance_minor)
        SELECT new_at, b.ledger_account_id, b.balance_minor FROM ledger_balances_probed(new_at) b
         WHERE b.balance_minor <> 0;
    ELSE
        INSERT INTO ledger_checkpoint_balance (at, ledger_account_id, balance_minor)
        SELECT new_at, b.ledger_account_id, b.balance_minor FROM ledger_balances_from_checkpoint(last_at, new_at) b
         WHERE b.balance_minor <> 0;
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    UPDATE ledger_checkpoint_latest SET at = new_at;
    PERFORM set_config('invledger.making_checkpoint', '', true);
    RETURN written;
END $$;
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
