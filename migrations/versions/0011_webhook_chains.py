"""Hash chains over the stored webhook deliveries, and guards on them.

Every stored delivery (`webhook_event`) is a link of a chain: the chain of its investment account, or one chain
for the deliveries whose account the ledger does not have (or that named none). A delivery's digest covers what
never changes once stored — its id, dedup key, content hash, type, account, the SHA-256 of its body as received,
signature scheme, status, reason, entry ids and times. The link is made by an AFTER INSERT trigger (so a delivery
an `INSERT … ON CONFLICT` did not insert makes no link) and kept in `webhook_chain_link`; each chain's head is in
`webhook_chain_head`. Deliveries under one account are already serialised by the webhook path's account lock;
the unknown-account chain serialises only those deliveries.

Deliveries stored before this migration form each chain's first link. `webhook_event` rows may change only their
redelivery count and time from now on (BEFORE UPDATE guard), and are never deleted. `ledger.chain` recomputes
these chains too, and anchors sign their heads with the ledger accounts' (as chain keys of their own).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE FUNCTION webhook_event_digest(w webhook_event) RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT sha256(convert_to(json_build_array(w.id, w.dedup_key, encode(w.content_sha256, 'hex'), w.event_type,
        w.account_id, encode(sha256(w.body), 'hex'), w.signature_scheme, w.status, w.reason, w.entry_ids,
        ledger_epoch_us(w.occurred_at), ledger_epoch_us(w.received_at))::text, 'UTF8')) $$;

-- '' for a delivery whose account the ledger does not have: one chain for them all.
CREATE FUNCTION webhook_chain_key(account_id text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT a.account_id FROM investment_account a WHERE a.account_id = webhook_chain_key.account_id),
                    '') $$;

CREATE TABLE webhook_chain_head (
    chain_key       text PRIMARY KEY,
    event_count     bigint NOT NULL,
    head            bytea NOT NULL CHECK (length(head) = 32)
);
CREATE TABLE webhook_chain_link (
    event_id        bigint PRIMARY KEY REFERENCES webhook_event (id),
    chain_key       text NOT NULL,
    seq             bigint NOT NULL,
    chain_hash      bytea NOT NULL CHECK (length(chain_hash) = 32),
    UNIQUE (chain_key, seq)
);

-- The deliveries so far: each chain's first link, in id order.
WITH keyed AS (
    SELECT w.id, webhook_chain_key(w.account_id) AS chain_key, webhook_event_digest(w) AS digest FROM webhook_event w),
heads AS (
    SELECT chain_key, count(*) AS n,
           sha256(ledger_chain_start() || string_agg(digest, ''::bytea ORDER BY id)) AS head
      FROM keyed GROUP BY chain_key),
h AS (INSERT INTO webhook_chain_head (chain_key, event_count, head) SELECT chain_key, n, head FROM heads)
INSERT INTO webhook_chain_link (event_id, chain_key, seq, chain_hash)
SELECT k.id, k.chain_key, row_number() OVER (PARTITION BY k.chain_key ORDER BY k.id), heads.head
  FROM keyed k JOIN heads USING (chain_key);

CREATE FUNCTION webhook_event_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    key text := webhook_chain_key(NEW.account_id);
    link record;
BEGIN
    INSERT INTO webhook_chain_head AS h (chain_key, event_count, head)
    VALUES (key, 1, sha256(ledger_chain_start() || webhook_event_digest(NEW)))
        ON CONFLICT (chain_key) DO UPDATE
       SET event_count = h.event_count + 1, head = sha256(h.head || webhook_event_digest(NEW))
    RETURNING h.event_count, h.head INTO link;
    INSERT INTO webhook_chain_link (event_id, chain_key, seq, chain_hash) VALUES (NEW.id, key, link.event_count, link.head);
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_event_chain AFTER INSERT ON webhook_event FOR EACH ROW EXECUTE FUNCTION webhook_event_chain();

-- A stored delivery changes only its redelivery count and time; it is never deleted.
CREATE FUNCTION webhook_event_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (to_jsonb(NEW) - 'delivery_count' - 'last_received_at') IS DISTINCT FROM
       (to_jsonb(OLD) - 'delivery_count' - 'last_received_at') THEN
        RAISE EXCEPTION 'webhook_event % is stored as received: only its redelivery count and time change', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER webhook_event_guard BEFORE UPDATE ON webhook_event FOR EACH ROW EXECUTE FUNCTION webhook_event_guard();
CREATE TRIGGER webhook_event_no_delete BEFORE DELETE ON webhook_event
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER webhook_event_no_truncate BEFORE TRUNCATE ON webhook_event
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- The chain tables: links are append-only; a head moves only inside the chain trigger (trigger depth 2).
CREATE TRIGGER webhook_chain_link_append_only BEFORE UPDATE OR DELETE ON webhook_chain_link
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER webhook_chain_link_no_truncate BEFORE TRUNCATE ON webhook_chain_link
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE FUNCTION webhook_chain_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'webhook chain heads are derived from the stored deliveries and cannot be set directly'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER webhook_chain_head_guard BEFORE INSERT OR UPDATE OR DELETE ON webhook_chain_head
    FOR EACH ROW EXECUTE FUNCTION webhook_chain_head_guard();
CREATE TRIGGER webhook_chain_head_no_truncate BEFORE TRUNCATE ON webhook_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Anchors sign the webhook chains' heads too: (chain key, count, head) beside the ledger accounts'.
ALTER TABLE ledger_anchor ADD COLUMN events bigint NOT NULL DEFAULT 0;
CREATE TABLE ledger_anchor_webhook_head (
    anchor_id       bigint NOT NULL REFERENCES ledger_anchor (id),
    chain_key       text NOT NULL,
    event_count     bigint NOT NULL CHECK (event_count > 0),
    head            bytea NOT NULL CHECK (length(head) = 32),
    PRIMARY KEY (anchor_id, chain_key)
);
CREATE TRIGGER ledger_anchor_webhook_head_append_only BEFORE UPDATE OR DELETE ON ledger_anchor_webhook_head
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_anchor_webhook_head_no_truncate BEFORE TRUNCATE ON ledger_anchor_webhook_head
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
