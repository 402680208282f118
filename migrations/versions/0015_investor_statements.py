"""Monthly investor statements, issued once and never changed (issue 20).

`investor_statement`: one row per statement issued for an investment account and month — its figures as canonical
JSON (`document`), the PDF as sent to the investor, who issued it and when. A later correction of the month (a
back-dated trade, a reversal) is a new row with the next `version` that names the one it `corrects`; nothing is
ever updated or deleted (guards below; the application role gets SELECT and INSERT only, migration 0012).

Each account's statements form a hash chain in issue order: `digest` = SHA-256(`previous_digest` || SHA-256 of the
document || SHA-256 of the PDF), `previous_digest` being the digest of the account's statement issued before (32
zero bytes for its first). The insert trigger checks the digest (the issuer computes it; the database checks it:
two places) and that `previous_digest` is the account's latest; `invledger verify` recomputes every digest and
link, and the figures themselves from the books as they were recorded when the statement was issued, which the
posting chains and anchors of migrations 0010–0011 protect.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE TABLE investor_statement (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      text NOT NULL REFERENCES investment_account (account_id),
    month           date NOT NULL CHECK (extract(day FROM month) = 1),
    version         integer NOT NULL CHECK (version >= 1),
    corrects_id     bigint REFERENCES investor_statement (id),
    issued_at       timestamptz NOT NULL,
    issued_by       text NOT NULL DEFAULT '' CHECK (length(issued_by) <= 200),
    document        bytea NOT NULL,                  -- the figures, canonical JSON (UTF-8)
    pdf             bytea NOT NULL,
    previous_digest bytea NOT NULL CHECK (length(previous_digest) = 32),
    digest          bytea NOT NULL UNIQUE CHECK (length(digest) = 32),
    UNIQUE (account_id, month, version),
    CHECK ((version = 1) = (corrects_id IS NULL))
);
CREATE INDEX investor_statement_month ON investor_statement (month, account_id);
CREATE INDEX investor_statement_chain ON investor_statement (account_id, id);

CREATE FUNCTION investor_statement_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    latest bytea;
    corrected record;
BEGIN
    IF NEW.digest IS DISTINCT FROM sha256(NEW.previous_digest || sha256(NEW.document) || sha256(NEW.pdf)) THEN
        RAISE EXCEPTION 'statement of % for %: its digest does not cover its document and PDF', NEW.account_id, NEW.month
            USING ERRCODE = 'check_violation';
    END IF;
    -- One writer per account at a time (the issuer also holds the account's row), so "latest" is well defined.
    PERFORM pg_advisory_xact_lock(hashtextextended('invledger:statement:' || NEW.account_id, 0));
    SELECT s.digest INTO latest FROM investor_statement s WHERE s.account_id = NEW.account_id ORDER BY s.id DESC LIMIT 1;
    IF NEW.previous_digest IS DISTINCT FROM COALESCE(latest, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) THEN
        RAISE EXCEPTION 'statement of % for %: it does not link the account''s latest statement', NEW.account_id, NEW.month
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.corrects_id IS NOT NULL THEN
        SELECT s.account_id, s.month, s.version INTO corrected FROM investor_statement s WHERE s.id = NEW.corrects_id;
        IF corrected.account_id IS DISTINCT FROM NEW.account_id OR corrected.month IS DISTINCT FROM NEW.month
           OR corrected.version <> NEW.version - 1 THEN
            RAISE EXCEPTION 'statement of % for % version %: it must correct the version before it', NEW.account_id,
                NEW.month, NEW.version USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER investor_statement_check BEFORE INSERT ON investor_statement
    FOR EACH ROW EXECUTE FUNCTION investor_statement_check();
CREATE TRIGGER investor_statement_append_only BEFORE UPDATE OR DELETE ON investor_statement
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER investor_statement_no_truncate BEFORE TRUNCATE ON investor_statement
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
