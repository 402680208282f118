"""API keys that expire and say when they were last used; page sessions held by the server.

- `api_key.expires_at` (optional) and `api_key.last_used_at` (set when a key is checked, at most once per
  `api.auth.KEY_CACHE_TTL_S` per process).
- `page_session`: a signed-in browser's session. The cookie carries a random session id (256 bits), never the
  API key; only its SHA-256 is stored. A session ends at `expires_at`, at sign-out (`revoked_at`), or when its
  key is revoked or expires.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SCHEMA = r"""
ALTER TABLE api_key ADD COLUMN expires_at timestamptz, ADD COLUMN last_used_at timestamptz;

CREATE TABLE page_session (
    id_sha256       bytea PRIMARY KEY CHECK (length(id_sha256) = 32),
    api_key_id      bigint NOT NULL REFERENCES api_key (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz
);
CREATE INDEX page_session_key ON page_session (api_key_id);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
