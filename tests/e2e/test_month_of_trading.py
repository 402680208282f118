"""A month of simulated trading over real HTTP, with duplicated and reordered webhooks.

Issue 3's proof: afterwards every account's ledger balance equals the engine's capital, `verify` is
clean, and every distinct webhook is stored exactly once (redeliveries only count).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from integration import outbox
from integration.notify import sender
from ledger import AccountSpec, Ledger
from ledger.verify import verify
from simulator import Faults

DAYS = 30
ACCOUNTS = 4


def test_month_with_duplicates_and_reordering(ledger: Ledger, engine: sa.Engine, engine_pair) -> None:
    today = datetime.now(UTC).date()
    sim, client = engine_pair(seed=11, start_date=today - timedelta(days=DAYS), trades_per_day=6,
                              faults=Faults(webhook_duplicate_rate=0.3, webhook_reorder_window=8))
    account_ids = [f"e2e-{uuid.uuid4().hex[:8]}" for _ in range(ACCOUNTS)]
    value_date = datetime.combine(today - timedelta(days=DAYS + 5), datetime.min.time(), UTC)
    for i, account_id in enumerate(account_ids):
        ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing",
                                        currency="USD", fee_rate=Decimal("0.2")))
        ledger.deposit(account_id, f"{10_000 + 2_500 * i}.00", idempotency_key=f"{account_id}:seed",
                       effective_at=value_date, reference="initial wire")

    stats = outbox.deliver_pending(engine, sender(client), account_ids=account_ids)
    assert (stats.delivered, stats.failed, stats.dead) == (2 * ACCOUNTS, 0, 0)
    assert set(account_ids) <= set(sim.account_ids())

    generated = sim.step(days=DAYS)
    assert sim.flush(timeout_s=120)
    state = sim.state()
    assert state["counters"].get("webhooks_duplicated", 0) > 0, state["counters"]

    for account_id in account_ids:
        engine_capital = Decimal(state["accounts"][account_id]["capital"])
        assert ledger.balance(account_id).to_decimal() == engine_capital, account_id
        # Each day's closing balance in the ledger equals the engine's snapshot of that day.
        for day in (today - timedelta(days=DAYS), today - timedelta(days=DAYS // 2), today - timedelta(days=1)):
            snapshot = client.performance(account_id, start_date=day, end_date=day)
            if snapshot:
                at = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) - timedelta(microseconds=1)
                assert ledger.balance(account_id, as_of=at).to_decimal() == snapshot[0].closing_balance

    with engine.connect() as c:
        rows = c.execute(sa.text("""
            SELECT count(*) AS stored, sum(delivery_count) AS deliveries,
                   count(*) FILTER (WHERE status <> 'applied') AS not_applied
              FROM webhook_event WHERE account_id = ANY(:ids)"""), {"ids": account_ids}).one()
    ours = [body for body in sim.events() if any(a.encode() in body for a in account_ids)]
    assert len(ours) == generated
    assert rows.stored == len(ours)  # every distinct webhook stored exactly once
    assert rows.deliveries > rows.stored  # the duplicates arrived, and only counted
    assert rows.not_applied == 0
    report = verify(engine)
    assert report.ok, report.findings


def test_first_day_of_an_account_needs_no_true_up_when_books_agree(ledger: Ledger, engine_pair) -> None:
    """Trades and snapshots in order: the true-ups are all zero, so no true-up entries at all."""
    today = date.today()
    sim, client = engine_pair(seed=3, start_date=today - timedelta(days=3), trades_per_day=4)
    account_id = f"e2e-{uuid.uuid4().hex[:8]}"
    ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="day", currency="USD",
                                    fee_rate=Decimal("0.1")))
    ledger.deposit(account_id, "5000.00", idempotency_key=f"{account_id}:seed",
                   effective_at=datetime.now(UTC) - timedelta(days=10))
    outbox.deliver_pending(ledger.engine, sender(client), account_ids=[account_id])
    sim.step(days=3)
    assert sim.flush(timeout_s=60)
    kinds = {e.kind for e in ledger.journal(account_id=account_id, limit=1000)}
    assert "trade" in kinds and "true_up" not in kinds
    assert ledger.balance(account_id).to_decimal() == Decimal(sim.state()["accounts"][account_id]["capital"])
