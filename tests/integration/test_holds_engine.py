"""A withdrawal hold end to end with the simulator over real HTTP: the outbox asks the engine to free capital, the
engine answers with a signed `withdrawal.confirmed`, which posts the hold; the capital change reaches the engine
once; a voided hold's request is cancelled at the engine."""

from __future__ import annotations

import json
from decimal import Decimal

from integration import outbox
from integration.notify import sender
from integration.signature import Verified
from integration.webhooks import WebhookProcessor
from ledger import holds
from tests.integration.test_outbox import engine_capital, open_account, statuses


def test_hold_confirmed_by_the_engine(ledger, engine, simulator, make_client) -> None:
    account_id = open_account(ledger)
    client = make_client()
    hold = holds.place_hold(ledger, account_id, "250.00", idempotency_key=f"{account_id}:h")
    assert outbox.deliver_pending(engine, sender(client), account_ids=[account_id]).delivered == 3
    assert engine_capital(simulator, account_id) == Decimal("1000.00")  # freed, not yet withdrawn
    confirmations = [body for body in simulator.events() if json.loads(body)["event_type"] == "withdrawal.confirmed"
                     and json.loads(body)["data"]["account_id"] == account_id]
    assert len(confirmations) == 1
    outcome = WebhookProcessor(ledger).receive(confirmations[0], Verified(scheme="ml"))
    assert outcome.result == "applied" and not outcome.duplicate and len(outcome.entry_ids) == 1
    assert holds.read(ledger, lambda tx: holds.get(tx, hold.hold_id)).status == "posted"
    assert ledger.balance(account_id).to_decimal() == Decimal("750.00")
    assert outbox.deliver_pending(engine, sender(client), account_ids=[account_id]).delivered == 1
    assert engine_capital(simulator, account_id) == Decimal("750.00")
    assert simulator.state()["accounts"][account_id]["capital_mismatches"] == 0
    assert WebhookProcessor(ledger).receive(confirmations[0], Verified(scheme="ml")).duplicate

    voided = holds.place_hold(ledger, account_id, "10.00", idempotency_key=f"{account_id}:v")
    holds.void_hold(ledger, voided.hold_id, reason="cancelled")
    assert outbox.deliver_pending(engine, sender(client), account_ids=[account_id]).delivered == 2
    assert statuses(engine, account_id) == ["delivered"] * 6
