"""Webhook deliveries at the edge of what the ledger can book: one it refuses books nothing (a balance update whose
late-fact offset cannot be posted must not leave the adjustment booked under a delivery stored as rejected), one it
cannot act on fully is still stored and answered (a critical error on a closed account), and the withdrawal
confirmation has one definition."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest
import sqlalchemy as sa

from integration.booking import Bookkeeper
from integration.events import PerformanceData
from integration.webhooks import Delivery, WebhookProcessor
from ledger import Ledger


def test_a_refused_balance_update_leaves_no_entry(ledger: Ledger, engine: sa.Engine,
                                                  open_account: Callable[..., str]) -> None:
    account_id = open_account("1000.00")
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    Bookkeeper(ledger).book_performance(PerformanceData(
        account_id=account_id, date=yesterday, opening_balance=Decimal("1000.00"),
        closing_balance=Decimal("1000.00"), daily_return=Decimal("0"), trades_executed=0, winning_trades=0,
        losing_trades=0))  # yesterday is trued up: an update effective in it needs an offset
    balance_before = ledger.balance(account_id)
    with engine.connect() as c:
        entries_before = c.execute(sa.text("SELECT count(*) FROM journal_entry WHERE investment_account_id = :a"),
                                   {"a": account_id}).scalar_one()
    # A signed webhook-id short enough for the adjustment's key ("adjustment:webhook:…", 255 at most) but not for the
    # offset's ("offset:ACCOUNT:webhook:…").
    webhook_id = "w" * (255 - len("adjustment:webhook:"))
    body = msgspec.json.encode({"event_type": "account.balance_updated",
                                "occurred_at": datetime.combine(yesterday, datetime.min.time(), UTC).isoformat(),
                                "data": {"account_id": account_id, "new_balance": "1500.00", "reason": "fix"}})
    [outcome] = WebhookProcessor(ledger).receive_many(
        [Delivery(body=body, webhook_id=webhook_id, signature_scheme="standard")])
    assert outcome.result == "invalid" and outcome.entry_ids == (), outcome
    with engine.connect() as c:
        entries_after = c.execute(sa.text("SELECT count(*) FROM journal_entry WHERE investment_account_id = :a"),
                                  {"a": account_id}).scalar_one()
        stored = c.execute(sa.text("SELECT status FROM webhook_event WHERE id = :id"),
                           {"id": outcome.event_id}).scalar_one()
    assert (entries_after, stored) == (entries_before, "rejected")
    assert ledger.balance(account_id) == balance_before


@pytest.mark.parametrize(("event_type", "webhook", "engine", "refused"), [
    ("account.balance_updated", "BalanceUpdatedData", "BalanceUpdated",
     ({"account_id": "a-1", "new_balance": "-0.01", "reason": "r"},
      {"account_id": "a-1", "new_balance": "1.00", "reason": "r" * 1001})),
    ("account.error", "AccountErrorData", "AccountErrorEvent",
     ({"account_id": "a-1", "error_type": "e" * 65, "error_message": "m"},
      {"account_id": "a-1", "error_type": "", "error_message": "m"})),
])
def test_balance_updates_and_errors_have_one_definition(event_type: str, webhook: str, engine: str,
                                                        refused: tuple[dict, ...]) -> None:
    """As for withdrawal confirmations: the engine API's structs (the simulator builds them) are the webhook's, so
    the simulator cannot send what the ledger refuses — a negative new balance (the engine cannot lose more than it
    holds), a reason longer than a memo, an error type longer than 64 characters or empty."""
    from integration import engine_api, events

    assert getattr(events, webhook) is getattr(engine_api, engine)
    for data in refused:
        envelope = engine_api.WebhookEnvelope(event_type=event_type, data=msgspec.Raw(msgspec.json.encode(data)))
        with pytest.raises(msgspec.ValidationError):
            engine_api.decode_event_data(envelope)


def test_a_withdrawal_confirmation_has_one_definition() -> None:
    """The webhook's data and the engine API's (the simulator sends it) are one struct: what one refuses, so does the
    other — a hold id past bigint (else a 500 at its query) and an amount not above zero."""
    from integration import engine_api, events

    assert events.WithdrawalConfirmedData is engine_api.WithdrawalConfirmedEvent
    for data in ({"account_id": "a-1", "hold_id": 2**63, "amount": "1.00"},
                 {"account_id": "a-1", "hold_id": 1, "amount": "0"}):
        envelope = engine_api.WebhookEnvelope(event_type="withdrawal.confirmed",
                                              data=msgspec.Raw(msgspec.json.encode(data)))
        with pytest.raises(msgspec.ValidationError):
            engine_api.decode_event_data(envelope)


def test_a_critical_error_on_a_closed_account_is_stored_and_alerted(ledger: Ledger, engine: sa.Engine,
                                                                    open_account: Callable[..., str]) -> None:
    """A closed account cannot be paused (AccountStateConflict): the engine's critical error for one is stored,
    applied (the account stays closed) and alerted — it failed the whole group commit before, went unstored and was
    answered 409."""
    closed = open_account(None)
    ledger.change_status(closed, "close", reason="investor left")
    body = msgspec.json.encode({"event_type": "account.error", "event_id": f"{closed}-critical",
                                "data": {"account_id": closed, "error_type": "critical", "error_message": "halt"}})
    [outcome] = WebhookProcessor(ledger).receive_many([Delivery(body=body, signature_scheme="ml")])
    assert outcome.result == "applied" and outcome.event_id is not None, outcome
    assert ledger.account(closed).status == "closed"
    with engine.connect() as c:
        alerts = c.execute(sa.text("SELECT kind, message FROM alert WHERE account_id = :a"), {"a": closed}).all()
    assert [tuple(a) for a in alerts] == [("engine_critical_error", f"account {closed} is closed, not paused: halt")]
