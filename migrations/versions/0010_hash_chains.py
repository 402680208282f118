"""Hash chains over the books: every posting, and through it every entry, is covered by its ledger account's chain.

Each ledger account has a chain head (`ledger_account.chain_head`, 32 bytes, all zero when it is new). A posting's
digest is SHA-256 of its own fields and of its entry's digest (which covers the entry's key, content hash, kind,
account, times, memo, metadata and what it reverses); each statement that books legs on an account extends the
chain by one link, SHA-256(head || the digests of its legs on that account, in posting order), and stamps the link
on those legs (`posting.chain_hash`). The link is made by the posting triggers under the account's row lock, which
they already hold: writers on different accounts never wait for each other (no global chain, no advisory lock).

Postings booked before this migration keep chain_hash NULL and form each account's first link, computed here.
`ledger.chain` recomputes the chains from the rows with its own copy of these digests (never trusting a function
stored in the database), and anchors sign the heads with a key the database never holds. `chain_head` joins the
derived columns that only the posting triggers may change.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE FUNCTION ledger_chain_start() RETURNS bytea LANGUAGE sql IMMUTABLE AS $$ SELECT decode(repeat('00', 32), 'hex') $$;

-- Times as whole microseconds since 1970 (no time zone, no formatting): the same bytes wherever it is computed.
CREATE FUNCTION ledger_epoch_us(at timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT (extract(epoch FROM at) * 1000000)::bigint $$;

-- The digests (ledger/chain.py has the same expressions; a clean `invledger verify` proves they agree).
CREATE FUNCTION ledger_entry_digest(e journal_entry) RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT sha256(convert_to(json_build_array(e.id, e.idempotency_key, encode(e.content_hash, 'hex'), e.kind,
        e.investment_account_id, ledger_epoch_us(e.effective_at), ledger_epoch_us(e.recorded_at), e.memo,
        e.metadata, e.reverses_entry_id)::text, 'UTF8')) $$;

CREATE FUNCTION ledger_posting_digest(account bigint, seq bigint, entry_id bigint, side text, amount bigint,
                                      currency text, effective_at timestamptz, balance_after bigint, late boolean,
                                      entry_digest bytea) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(convert_to(json_build_array(account, seq, entry_id, side, amount, currency,
        ledger_epoch_us(effective_at), balance_after, late)::text, 'UTF8') || entry_digest) $$;

ALTER TABLE ledger_account ADD COLUMN chain_head bytea NOT NULL DEFAULT decode(repeat('00', 32), 'hex')
    CHECK (length(chain_head) = 32);
ALTER TABLE posting ADD COLUMN chain_hash bytea CHECK (length(chain_hash) = 32);

-- The books so far: each account's postings are its first link (the guard below does not know chain_head yet).
UPDATE ledger_account a SET chain_head = g.link
  FROM (SELECT p.ledger_account_id AS id,
               sha256(ledger_chain_start() || string_agg(ledger_posting_digest(p.ledger_account_id, p.seq,
                   p.entry_id, p.side::text, p.amount_minor, p.currency, p.effective_at, p.balance_after_minor,
                   p.late, ledger_entry_digest(e)), ''::bytea ORDER BY p.seq)) AS link
          FROM posting p JOIN journal_entry e ON e.id = p.entry_id GROUP BY p.ledger_account_id) g
 WHERE a.id = g.id;

CREATE OR REPLACE FUNCTION ledger_account_guard_cache() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 AND (
           NEW.balance_minor IS DISTINCT FROM OLD.balance_minor
        OR NEW.posting_count IS DISTINCT FROM OLD.posting_count
        OR NEW.max_effective_at IS DISTINCT FROM OLD.max_effective_at
        OR NEW.max_lateness_us IS DISTINCT FROM OLD.max_lateness_us
        OR NEW.chain_head IS DISTINCT FROM OLD.chain_head
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
       OR NEW.max_lateness_us <> 0 OR NEW.chain_head <> ledger_chain_start() THEN
        RAISE EXCEPTION 'a new ledger account starts empty' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION posting_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    entry record;
    acc record;
    checkpointed timestamptz;
BEGIN
    SELECT e.effective_at, e.xmin AS xmin, ledger_entry_digest(e) AS digest INTO entry
      FROM journal_entry e WHERE e.id = NEW.entry_id;
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
           max_effective_at = GREATEST(max_effective_at, NEW.effective_at),
           -- The account's hash chain, extended under this row lock: in SET the columns are the values before
           -- this posting, so its seq is posting_count + 1 and its running balance balance_minor + the leg.
           chain_head = sha256(chain_head || ledger_posting_digest(
               NEW.ledger_account_id, posting_count + 1, NEW.entry_id, NEW.side::text, NEW.amount_minor, NEW.currency,
               NEW.effective_at,
               balance_minor + CASE NEW.side WHEN 'D' THEN NEW.amount_minor ELSE -NEW.amount_minor END,
               COALESCE(max_effective_at > NEW.effective_at, false), entry.digest))
     WHERE id = NEW.ledger_account_id
    RETURNING balance_minor, posting_count, max_effective_at, currency, chain_head INTO acc;
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
    NEW.chain_hash := acc.chain_head;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION posting_batch_apply() RETURNS trigger LANGUAGE plpgsql AS $$
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
               CASE l.side WHEN 'D' THEN l.amount ELSE -l.amount END AS signed, ledger_entry_digest(e) AS entry_digest
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
    -- Each account's hash chain gains one link for this batch: its legs' digests in posting order, after the
    -- head before the batch (a.chain_head: this statement's snapshot). Every leg of the link carries it.
    links AS (
        SELECT s.account, sha256(a.chain_head || string_agg(ledger_posting_digest(
                   s.account, s.seq, s.entry_id, s.side, s.amount, s.currency, s.effective_at, s.balance_after::bigint,
                   COALESCE(s.before > s.effective_at, false), s.entry_digest), ''::bytea ORDER BY s.seq)) AS link
          FROM stamped s JOIN ledger_account a ON a.id = s.account
         GROUP BY s.account, a.chain_head),
    inserted AS (
        INSERT INTO posting (ledger_account_id, seq, entry_id, side, amount_minor, currency, effective_at,
                             balance_after_minor, late, chain_hash)
        SELECT s.account, s.seq, s.entry_id, s.side, s.amount, s.currency, s.effective_at, s.balance_after,
               COALESCE(s.before > s.effective_at, false), k.link
          FROM stamped s JOIN links k ON k.account = s.account ORDER BY s.ord),
    moved AS (
        UPDATE ledger_account a
           SET balance_minor = a.balance_minor + m.total, posting_count = a.posting_count + m.n,
               max_lateness_us = GREATEST(a.max_lateness_us, m.lateness_us),
               max_effective_at = GREATEST(a.max_effective_at, m.latest), chain_head = m.link
          FROM (SELECT s.account, sum(s.signed) AS total, count(*) AS n, max(s.effective_at) AS latest,
                       COALESCE(max((extract(epoch FROM s.before - s.effective_at) * 1000000)::bigint), 0)
                           AS lateness_us, (array_agg(k.link))[1] AS link  -- one link per account; no min(bytea) before PostgreSQL 17
                  FROM stamped s JOIN links k ON k.account = s.account GROUP BY s.account) m
         WHERE a.id = m.account)
    INSERT INTO ledger_checkpoint_balance AS c (at, ledger_account_id, balance_minor)
    SELECT k.at, s.account, sum(s.signed)
      FROM stamped s JOIN ledger_checkpoint k ON k.at >= s.effective_at
     WHERE s.effective_at <= checkpointed
     GROUP BY k.at, s.account
        ON CONFLICT (at, ledger_account_id) DO UPDATE SET balance_minor = c.balance_minor + EXCLUDED.balance_minor;
    RETURN NULL;  -- the batch row itself is not kept
END $$;

-- Anchors: the chain heads, signed outside the database (ledger/chain.py). A head row is kept for each account
-- whose posting count changed since the anchor before; an anchor's full set is the latest row of every account
-- up to it. Append-only, as the books are.
CREATE TABLE ledger_anchor (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    made_at         timestamptz NOT NULL DEFAULT now(),
    root            bytea NOT NULL CHECK (length(root) = 32),
    accounts        bigint NOT NULL,
    postings        bigint NOT NULL,
    public_key      bytea NOT NULL CHECK (length(public_key) = 32),
    signature       bytea NOT NULL CHECK (length(signature) = 64),
    made_by         text NOT NULL
);
CREATE TABLE ledger_anchor_head (
    anchor_id       bigint NOT NULL REFERENCES ledger_anchor (id),
    ledger_account_id bigint NOT NULL REFERENCES ledger_account (id),
    posting_count   bigint NOT NULL CHECK (posting_count > 0),
    head            bytea NOT NULL CHECK (length(head) = 32),
    PRIMARY KEY (anchor_id, ledger_account_id)
);
CREATE INDEX ledger_anchor_head_account ON ledger_anchor_head (ledger_account_id, anchor_id);
CREATE TRIGGER ledger_anchor_append_only BEFORE UPDATE OR DELETE ON ledger_anchor
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_anchor_no_truncate BEFORE TRUNCATE ON ledger_anchor
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_anchor_head_append_only BEFORE UPDATE OR DELETE ON ledger_anchor_head
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_anchor_head_no_truncate BEFORE TRUNCATE ON ledger_anchor_head
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
