"""Stored webhook keys taken from a `webhook-id` header move to a namespace of their own.

Until now a delivery without a body `event_id` was keyed `event:<webhook-id header>`, whichever scheme had
signed it — and X-ML-Signature covers the body alone, so a captured delivery replayed with a made-up
`webhook-id` was booked again (issue 16). From this version a header id keys a delivery only when the
Standard Webhooks signature covered it, as `webhook:<id>` (`integration.events.dedup_key`). Rows keyed the
old way are re-keyed so the keys mean what they say:
- Standard Webhooks rows whose body has no `event_id`: `webhook:<id>`, so the engine's redelivery of one of
  them is still recognised as a duplicate;
- X-ML rows whose body has no `event_id`: the key came from a header nothing signed, so it is moved out of
  every namespace a later delivery can reach (`unsigned-header:<id>`); the rows, their entries and their
  bodies stay exactly as they are, for an operator to look at.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE FUNCTION pg_temp.body_event_id(body bytea) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RETURN convert_from(body, 'UTF8')::jsonb ->> 'event_id';
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

UPDATE webhook_event
   SET dedup_key = CASE signature_scheme WHEN 'standard' THEN 'webhook:' ELSE 'unsigned-header:' END
                   || substr(dedup_key, length('event:') + 1)
 WHERE dedup_key LIKE 'event:%'
   AND pg_temp.body_event_id(body) IS DISTINCT FROM substr(dedup_key, length('event:') + 1);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("ledger migrations are forward-only")
