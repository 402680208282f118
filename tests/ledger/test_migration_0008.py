"""Migration 0008 on stored webhooks: keys that came from a `webhook-id` header move to namespaces of their own —
`webhook:` where the Standard Webhooks signature covered the id, `unsigned-header:` where only X-ML-Signature (the
body) was signed — and a body's own event_id keeps its key. After it, the engine's redelivery of a Standard
Webhooks delivery stored before the upgrade is still a duplicate."""

from __future__ import annotations

import hashlib
import json

import msgspec
import pytest
import sqlalchemy as sa

from integration.events import decode
from integration.signature import Verified
from integration.webhooks import WebhookProcessor
from ledger import Ledger
from ledger.db import create_engine
from service import database
from tests.ledger.conftest import open_account_as_before


@pytest.fixture
def url_at_0007(database_at) -> str:
    return database_at("0007")


def _content_sha256(body: bytes) -> bytes:
    """As the processor hashes a decoded event: its canonical encoding."""
    return hashlib.sha256(msgspec.json.Encoder(order="deterministic").encode(decode(body))).digest()


def _update(new_balance: str, **envelope: str) -> bytes:
    return json.dumps({"event_type": "account.balance_updated", **envelope,
                       "data": {"account_id": "mig-w", "new_balance": new_balance, "reason": "r"}}).encode()


def test_header_keys_move_to_their_own_namespaces(url_at_0007: str) -> None:
    engine = create_engine(url_at_0007, pool_size=2)
    try:
        ledger = Ledger(engine)
        open_account_as_before(engine, "mig-w")  # as the code of revision 0007 did
        rows = {  # key as the code before 0008 stored it -> (scheme, body)
            "event:msg_signed": ("standard", _update("10.00")),
            "event:evil-1": ("ml", _update("20.00")),
            "event:e-body": ("standard", _update("30.00", event_id="e-body")),
            "event:e-body-ml": ("ml", _update("40.00", event_id="e-body-ml")),
        }
        with engine.begin() as c:
            for key, (scheme, body) in rows.items():
                c.execute(sa.text("""
                    INSERT INTO webhook_event (dedup_key, content_sha256, event_type, account_id, body,
                                               signature_scheme, status)
                    VALUES (:k, :h, 'account.balance_updated', 'mig-w', :b, :s, 'applied')"""),
                          {"k": key, "h": _content_sha256(body), "b": body, "s": scheme})

        database.migrate(url_at_0007)

        with engine.connect() as c:
            keys = set(c.execute(sa.text("SELECT dedup_key FROM webhook_event")).scalars())
        assert keys == {"webhook:msg_signed", "unsigned-header:evil-1", "event:e-body", "event:e-body-ml"}
        # The engine redelivers the first one, as Standard Webhooks does, with the same id: still a duplicate.
        again = WebhookProcessor(ledger).receive(_update("10.00"),
                                                 Verified(scheme="standard", webhook_id="msg_signed"))
        assert (again.result, again.duplicate) == ("applied", True), again
        # The made-up header id claims nothing: an engine event with that id is new.
        new = WebhookProcessor(ledger).receive(_update("50.00", event_id="evil-1"), Verified(scheme="ml"))
        assert (new.result, new.duplicate) == ("applied", False), new
    finally:
        engine.dispose()
