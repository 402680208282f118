"""As-of balances stop early: each ledger account remembers how late its latest-arriving posting was.

`ledger_account.max_lateness_us` is the largest lateness of any posting on the account, in
microseconds: for a late posting, the latest effective time among the postings recorded before it
minus its own effective time (0 while the account has none). It is a cache like `balance_minor`:
maintained by `posting_apply` alone, guarded against direct updates, re-proved by `invledger verify`.

Why: `ledger_balance_as_of(account, T)` adds the late postings recorded after Y (the last in-order
posting effective at or before T). Before this revision it scanned *every* late posting recorded after
Y, so an as-of time far in the past cost O(late postings since then). A late posting P effective at or
before T was recorded while the account's latest effective time was at most T + max_lateness; so P
was recorded before Z, the first in-order posting effective after T + max_lateness. The scan now stops
at Z: it reads only the late postings recorded in a window of max_lateness around T, whatever the
account's length (docs/design.md, "As-of balances").

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = r"""
ALTER TABLE ledger_account ADD COLUMN max_lateness_us bigint NOT NULL DEFAULT 0 CHECK (max_lateness_us >= 0);

-- What max_lateness_us must be, recomputed from the postings (accounts with a late posting only):
-- for the books that exist now, and for `invledger verify`.
CREATE VIEW ledger_account_lateness AS
SELECT ledger_account_id, max((extract(epoch FROM before - effective_at) * 1000000)::bigint) AS lateness_us
  FROM (SELECT ledger_account_id, effective_at,
               max(effective_at) OVER (PARTITION BY ledger_account_id ORDER BY seq
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
          FROM posting) p
 WHERE before > effective_at
 GROUP BY ledger_account_id;

-- Fill the cache once for the books that exist (the guard of 0001, still in place here, does not know
-- the new column; it is replaced below).
UPDATE ledger_account a SET max_lateness_us = l.lateness_us
  FROM ledger_account_lateness l WHERE l.ledger_account_id = a.id;

CREATE OR REPLACE FUNCTION posting_apply() RETURNS trigger LANGUAGE plpgsql AS $$
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
    NEW.seq := acc.posting_count;
    NEW.balance_after_minor := acc.balance_minor;
    NEW.late := acc.max_effective_at > NEW.effective_at;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION ledger_account_guard_cache() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 AND (
           NEW.balance_minor IS DISTINCT FROM OLD.balance_minor
        OR NEW.posting_count IS DISTINCT FROM OLD.posting_count
        OR NEW.max_effective_at IS DISTINCT FROM OLD.max_effective_at
        OR NEW.max_lateness_us IS DISTINCT FROM OLD.max_lateness_us
        OR NEW.currency IS DISTINCT FROM OLD.currency
        OR NEW.id IS DISTINCT FROM OLD.id OR NEW.name IS DISTINCT FROM OLD.name OR NEW.type IS DISTINCT FROM OLD.type
        OR NEW.investment_account_id IS DISTINCT FROM OLD.investment_account_id) THEN
        RAISE EXCEPTION 'ledger_account % balance is derived from postings and cannot be set directly; '
            'its id, name, type, currency and owner never change', OLD.id USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION ledger_account_new_is_empty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance_minor <> 0 OR NEW.posting_count <> 0 OR NEW.max_effective_at IS NOT NULL
       OR NEW.max_lateness_us <> 0 THEN
        RAISE EXCEPTION 'a new ledger account starts empty' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

-- Every ledger account's balance as of `at`, in one set-based query (reports join it; it is inlined, so a
-- filter on the account reaches the index). Per account:
-- - no posting effective after `at` (max_effective_at <= at): the cached balance, no posting read;
-- - otherwise Y = the last in-order posting at or before `at`, Z = the first in-order posting after
--   `at` + max_lateness (no late posting effective at or before `at` can be recorded after Z): Y's running
--   balance plus the late postings recorded between Y and Z that are effective at or before `at`; with
--   no late posting on the account at all (max_lateness 0), Y's running balance alone.
-- The lateness is added as microseconds, never as days, so no time zone can stretch it.
CREATE FUNCTION ledger_balances_as_of(at timestamptz)
RETURNS TABLE (ledger_account_id bigint, balance_minor bigint) LANGUAGE sql STABLE AS $$
    SELECT a.id,
           CASE WHEN a.max_effective_at IS NULL OR a.max_effective_at <= at THEN a.balance_minor
                ELSE COALESCE(y.balance_after_minor, 0) + COALESCE(l.minor, 0) END::bigint
      FROM ledger_account a
      LEFT JOIN LATERAL (
           SELECT p.seq, p.balance_after_minor FROM posting p
            WHERE a.max_effective_at > at
              AND p.ledger_account_id = a.id AND p.effective_at <= at AND NOT p.late
            ORDER BY p.effective_at DESC, p.seq DESC
            LIMIT 1) y ON true
      LEFT JOIN LATERAL (
           SELECT sum(CASE p.side WHEN 'D' THEN p.amount_minor ELSE -p.amount_minor END) AS minor
             FROM posting p
            WHERE a.max_effective_at > at AND a.max_lateness_us > 0
              AND p.ledger_account_id = a.id AND p.late AND p.effective_at <= at
              AND p.seq > COALESCE(y.seq, 0)
              AND p.seq < COALESCE((
                  SELECT z.seq FROM posting z
                   WHERE z.ledger_account_id = a.id AND NOT z.late
                     AND z.effective_at > at + a.max_lateness_us * interval '1 microsecond'
                   ORDER BY z.effective_at, z.seq
                   LIMIT 1), 9223372036854775807)) l ON true
$$;

-- One account's balance as of `at` (the same query, filtered to the account).
CREATE OR REPLACE FUNCTION ledger_balance_as_of(account bigint, at timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT b.balance_minor FROM ledger_balances_as_of(at) b WHERE b.ledger_account_id = account), 0)
$$;
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
