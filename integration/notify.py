"""Outbox topics to ML Engine calls: what each notification the ledger owes the engine becomes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from integration.outbox import OutboxEvent, Sender


def sender(client) -> Sender:
    """A `send(event)` for outbox.deliver_pending that calls the engine with the row's idempotency key."""
    from integration import engine_api

    def send(event: OutboxEvent) -> None:
        p = event.payload
        key = event.idempotency_key
        if event.topic == "account.created":
            client.create_account(engine_api.CreateAccountRequest(
                account_id=p["account_id"], product_id=p["product_id"], agent_type=p["agent_type"],
                initial_capital=Decimal(p["initial_capital"]), agent_config=p.get("agent_config") or {}),
                idempotency_key=key)
        elif event.topic == "account.capital_changed":
            client.update_capital(p["account_id"], engine_api.CapitalUpdate(
                operation=p["operation"], amount=Decimal(p["amount"]),
                new_total_capital=Decimal(p["new_total_capital"])), idempotency_key=key)
        elif event.topic == "account.withdrawal_requested":
            client.request_withdrawal(p["account_id"], engine_api.WithdrawalRequest(
                hold_id=p["hold_id"], amount=Decimal(p["amount"]),
                expires_at=datetime.fromisoformat(p["expires_at"])), idempotency_key=key)
        elif event.topic == "account.withdrawal_cancelled":
            client.cancel_withdrawal(p["account_id"], p["hold_id"], idempotency_key=key)
        elif event.topic == "account.paused":
            client.pause(p["account_id"], idempotency_key=key)
        elif event.topic == "account.resumed":
            client.resume(p["account_id"], idempotency_key=key)
        elif event.topic == "account.closed":
            client.close(p["account_id"], idempotency_key=key)
        else:
            raise ValueError(f"no engine call for outbox topic {event.topic!r}")

    return send
