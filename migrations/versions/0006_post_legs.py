"""Batches of legs stamped set-based: `posting_batch` books a batch's postings in one statement.

`posting_apply` stamps one posting at a time and updates the posting's ledger account row each time, so a
batch of N postings on one account leaves N versions of that row in the transaction and every later
posting walks them (a back-fill of 500 trades of one account spent ~55 µs per posting there).
A row (entry_ids, accounts, sides, amounts, currencies) inserted into `posting_batch` books the same rows as
inserting the legs one by one through `posting_apply`, in the given order, with the same checks and errors:
its BEFORE trigger does the work and returns NULL (no row is kept):

- it locks the legs' ledger accounts in id order, then reads the latest checkpoint (as posting_apply does
  after its update: a checkpoint being made holds the accounts' table, so it has committed by then; in
  REPEATABLE READ or SERIALIZABLE the row is locked, and a newer checkpoint fails the batch with 40001);
- it refuses the batch if a leg names an unknown entry or ledger account, an entry created by another
  transaction, or a currency the account is not kept in;
- one statement then stamps every leg — seq, running balance, effective time, late — with window
  functions over each account's legs in batch order, inserts them, moves each account's cached columns
  once (balance, count, latest effective time, largest lateness), and adds back-dated legs to every
  checkpoint at or after their effective time.

The postings it inserts are at trigger depth 1, and `posting_apply` now fires at depth 0 only (its WHEN
clause): a statement cannot skip the stamping, only a trigger can, and this is the only trigger that
inserts postings. The ledger-account and checkpoint guards already let depth 2 write the caches (that
is where posting_apply's own writes run). Entries still balance at commit (the deferred check is
untouched), and `invledger verify` recomputes every stamp and cache from the postings.

The commit-time balance check of each entry now reads the entry's legs once instead of twice (about 13%
less commit time for a 500-entry batch).

`ledger_post_entries(accounts, entries, legs)` is what `Tx.post_many` calls: the entries and their legs
(JSON documents) in one round trip, so a batch holds its account locks for one call and the commit.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- Where a batch of legs is handed to the ledger: a row inserted here is stamped and booked by the trigger
-- below and never stored.
CREATE TABLE posting_batch (
    entry_ids       bigint[] NOT NULL,
    accounts        bigint[] NOT NULL,
    sides           text[] NOT NULL,
    amounts         bigint[] NOT NULL,
    currencies      text[] NOT NULL
);

-- posting_apply stamps the postings a statement inserts (trigger depth 0); the batch trigger stamps its own.
DROP TRIGGER posting_apply ON posting;
CREATE TRIGGER posting_apply BEFORE INSERT ON posting
    FOR EACH ROW WHEN (pg_trigger_depth() = 0) EXECUTE FUNCTION posting_apply();

-- The commit-time check of each entry (migration 0001) reads the entry's legs once instead of twice: how
-- many, and the currencies they do not balance in. Same refusals, same messages.
CREATE OR REPLACE FUNCTION journal_entry_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    legs bigint;
    unbalanced text;
BEGIN
    SELECT COALESCE(sum(c.n), 0), string_agg(c.currency, ', ' ORDER BY c.currency) FILTER (WHERE c.total <> 0)
      INTO legs, unbalanced
      FROM (SELECT p.currency, count(*) AS n,
                   sum(CASE p.side WHEN 'D' THEN p.amount_minor ELSE -p.amount_minor END) AS total
              FROM posting p WHERE p.entry_id = NEW.id GROUP BY p.currency) c;
    IF legs < 2 THEN
        RAISE EXCEPTION 'journal entry % has % legs; an entry needs at least two', NEW.id, legs
            USING ERRCODE = 'check_violation';
    END IF;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not balance in %', NEW.id, unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- posting_apply's test (migration 0001) of "this journal entry was created by this transaction", by the row's
-- xmin: its 32-bit xid widened to an xid8 next to the current one, which pg_xact_status reports 'in progress'
-- for this transaction and its savepoints only. (posting_apply keeps its inline copy: replacing it to call
-- this would restate it whole once more.)
CREATE FUNCTION journal_entry_created_here(entry_xmin xid) RETURNS boolean LANGUAGE sql AS $$
    SELECT pg_xact_status((pg_current_xact_id()::text::bigint
        + (((entry_xmin::text::bigint - (pg_current_xact_id()::text::bigint & 4294967295) + 2147483648)
            % 4294967296 + 4294967296) % 4294967296 - 2147483648))::text::xid8) IS NOT DISTINCT FROM 'in progress'
$$;

CREATE FUNCTION posting_batch_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    checkpointed timestamptz;
    bad record;
BEGIN
    IF cardinality(NEW.entry_ids) <> cardinality(NEW.accounts) OR cardinality(NEW.entry_ids) <> cardinality(NEW.sides)
       OR cardinality(NEW.entry_ids) <> cardinality(NEW.amounts)
       OR cardinality(NEW.entry_ids) <> cardinality(NEW.currencies) THEN
        RAISE EXCEPTION 'a posting batch needs arrays of one length' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The accounts first, in id order (the global lock order), then the latest checkpoint: one being made
    -- holds the accounts' table until it commits (see posting_apply, migration 0005).
    PERFORM 1 FROM ledger_account a WHERE a.id = ANY(NEW.accounts) ORDER BY a.id FOR NO KEY UPDATE;
    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT l.at INTO checkpointed FROM ledger_checkpoint_latest l;
    ELSE
        SELECT l.at INTO checkpointed FROM ledger_checkpoint_latest l FOR KEY SHARE;
    END IF;
    -- posting_apply's refusals, for the whole batch; the first offending leg is named.
    SELECT * INTO bad FROM (
        SELECT l.ord, l.entry_id, l.account, l.currency, e.id IS NULL AS no_entry,
               e.id IS NOT NULL AND journal_entry_created_here(e.xmin) AS open,
               a.id IS NULL AS no_account, a.currency AS kept_in
          FROM unnest(NEW.entry_ids, NEW.accounts, NEW.currencies) WITH ORDINALITY AS l(entry_id, account, currency, ord)
          LEFT JOIN journal_entry e ON e.id = l.entry_id
          LEFT JOIN ledger_account a ON a.id = l.account) leg
     WHERE leg.no_entry OR NOT leg.open OR leg.no_account OR leg.kept_in IS DISTINCT FROM leg.currency
     ORDER BY leg.ord LIMIT 1;
    IF FOUND THEN
        IF bad.no_entry THEN
            RAISE EXCEPTION 'posting for unknown journal entry %', bad.entry_id USING ERRCODE = 'foreign_key_violation';
        ELSIF NOT bad.open THEN
            RAISE EXCEPTION 'journal entry % is closed: legs may only be added in the transaction that created it',
                bad.entry_id USING ERRCODE = 'restrict_violation';
        ELSIF bad.no_account THEN
            RAISE EXCEPTION 'posting to unknown ledger account %', bad.account USING ERRCODE = 'foreign_key_violation';
        ELSE
            RAISE EXCEPTION 'posting in % to ledger account % kept in %', bad.currency, bad.account, bad.kept_in
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    -- One statement: every leg stamped as posting_apply would stamp it, one after another in batch order;
    -- each account's cache moved once; back-dated legs added to the checkpoints at or after them.
    WITH leg AS (
        SELECT l.entry_id, l.account, l.side, l.amount, l.currency, l.ord, e.effective_at,
               CASE l.side WHEN 'D' THEN l.amount ELSE -l.amount END AS signed
          FROM unnest(NEW.entry_ids, NEW.accounts, NEW.sides, NEW.amounts, NEW.currencies)
               WITH ORDINALITY AS l(entry_id, account, side, amount, currency, ord)
          JOIN journal_entry e ON e.id = l.entry_id),
    stamped AS (
        SELECT leg.*, a.posting_count + row_number() OVER w AS seq,
               a.balance_minor + sum(leg.signed) OVER w AS balance_after,
               -- the account's latest effective time before this leg (max_effective_at in posting_apply)
               GREATEST(a.max_effective_at,
                        max(leg.effective_at) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS before
          FROM leg JOIN ledger_account a ON a.id = leg.account
        WINDOW w AS (PARTITION BY leg.account ORDER BY leg.ord)),
    inserted AS (
        INSERT INTO posting (ledger_account_id, seq, entry_id, side, amount_minor, currency, effective_at,
                             balance_after_minor, late)
        SELECT s.account, s.seq, s.entry_id, s.side, s.amount, s.currency, s.effective_at, s.balance_after,
               COALESCE(s.before > s.effective_at, false)
          FROM stamped s ORDER BY s.ord),
    moved AS (
        UPDATE ledger_account a
           SET balance_minor = a.balance_minor + m.total, posting_count = a.posting_count + m.n,
               max_lateness_us = GREATEST(a.max_lateness_us, m.lateness_us),
               max_effective_at = GREATEST(a.max_effective_at, m.latest)
          FROM (SELECT s.account, sum(s.signed) AS total, count(*) AS n, max(s.effective_at) AS latest,
                       COALESCE(max((extract(epoch FROM s.before - s.effective_at) * 1000000)::bigint), 0)
                           AS lateness_us
                  FROM stamped s GROUP BY s.account) m
         WHERE a.id = m.account)
    INSERT INTO ledger_checkpoint_balance AS c (at, ledger_account_id, balance_minor)
    SELECT k.at, s.account, sum(s.signed)
      FROM stamped s JOIN ledger_checkpoint k ON k.at >= s.effective_at
     WHERE s.effective_at <= checkpointed
     GROUP BY k.at, s.account
        ON CONFLICT (at, ledger_account_id) DO UPDATE SET balance_minor = c.balance_minor + EXCLUDED.balance_minor;
    RETURN NULL;  -- the batch row itself is not kept
END $$;

CREATE TRIGGER posting_batch_apply BEFORE INSERT ON posting_batch
    FOR EACH ROW EXECUTE FUNCTION posting_batch_apply();

-- A list of entries and their legs in one call (Tx.post_many): every leg account locked in id order (the
-- global lock order) before the clock is read, so a defaulted effective time is monotone per account; the
-- entries inserted in list order (a key booked before is skipped: the caller reads it as a replay); the
-- legs of the new ones booked through posting_batch, in list order; each new entry's legs answered with
-- their running balances (per account in posting order). One round trip: the locks are held for this call
-- and the commit only.
CREATE FUNCTION ledger_post_entries(accounts bigint[], entries json, legs json)
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
                                   recorded_at, memo, metadata, reverses_entry_id)
        SELECT d.key, decode(d.hash, 'hex'), d.kind, d.account_id, COALESCE(d.effective_at, held.at), held.at,
               d.memo, d.metadata, d.reverses
          FROM held CROSS JOIN ROWS FROM (json_to_recordset(ledger_post_entries.entries)
                   AS (key text, hash text, kind text, account_id text, effective_at timestamptz, memo text,
                       metadata jsonb, reverses bigint))
               WITH ORDINALITY AS d(key, hash, kind, account_id, effective_at, memo, metadata, reverses, ord)
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
