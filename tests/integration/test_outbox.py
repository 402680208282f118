"""Outbox delivery to the simulator over real HTTP: the crash windows, per-account order, dead letters.

The faults come from the simulator itself (`lose_responses`: the engine applies a command and then
answers 5xx, exactly what a crash between the engine's apply and our commit looks like to us).
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import sqlalchemy as sa

from integration import outbox
from integration.notify import sender
from ledger import AccountSpec, Ledger
from simulator import Faults, Target


def open_account(ledger: Ledger, initial: str = "1000.00") -> str:
    account_id = f"ob-{uuid.uuid4().hex[:10]}"
    ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                    fee_rate=Decimal("0.2"), initial_capital=None))
    if initial:
        ledger.deposit(account_id, initial, idempotency_key=f"{account_id}:initial")
    return account_id


def engine_capital(simulator, account_id: str) -> Decimal:
    return Decimal(simulator.state()["accounts"][account_id]["capital"])


def statuses(engine: sa.Engine, account_id: str) -> list[str]:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT status FROM outbox_event WHERE account_id = :a ORDER BY id"),
                         {"a": account_id}).scalars().all()


def make_due(engine: sa.Engine, account_id: str) -> None:
    with engine.begin() as c:
        c.execute(sa.text("UPDATE outbox_event SET next_attempt_at = now() WHERE account_id = :a"), {"a": account_id})


def test_crash_after_commit_before_delivery_still_delivers(ledger, engine, simulator, make_client) -> None:
    account_id = open_account(ledger)
    ledger.deposit(account_id, "250.00", idempotency_key=f"{account_id}:d")
    # The process that committed died here. A new process (new client) finds the rows pending.
    assert statuses(engine, account_id) == ["pending", "pending", "pending"]
    stats = outbox.deliver_pending(engine, sender(make_client()), account_ids=[account_id])
    assert stats.delivered == 3 and statuses(engine, account_id) == ["delivered"] * 3
    assert engine_capital(simulator, account_id) == Decimal("1250.00")
    assert simulator.state()["accounts"][account_id]["capital_mismatches"] == 0


def test_crash_after_delivery_before_marking_does_not_double_apply(ledger, engine, simulator, make_client) -> None:
    account_id = open_account(ledger)
    client = make_client(retry_attempts=1)
    assert outbox.deliver_pending(engine, sender(client), account_ids=[account_id]).delivered == 2
    ledger.deposit(account_id, "100.00", idempotency_key=f"{account_id}:d")
    simulator.set_faults(Faults(lose_responses=1))  # the engine applies the capital update, the answer is lost
    assert outbox.deliver_one(engine, sender(client), account_ids=[account_id]) == "failed"
    assert engine_capital(simulator, account_id) == Decimal("1100.00")  # applied once already
    simulator.set_faults(Faults())
    make_due(engine, account_id)
    assert outbox.deliver_one(engine, sender(client), account_ids=[account_id]) == "delivered"
    assert engine_capital(simulator, account_id) == Decimal("1100.00")  # the redelivery did not apply again
    assert simulator.state()["accounts"][account_id]["capital_mismatches"] == 0


def test_order_per_account_and_dead_letters(ledger, engine, simulator, make_client) -> None:
    blocked = open_account(ledger)
    flowing = open_account(ledger)
    client = make_client(retry_attempts=1)
    simulator.set_faults(Faults(error=Target(accounts=(blocked,)), error_status=503))
    ledger.deposit(blocked, "50.00", idempotency_key=f"{blocked}:second")
    simulator_requests_before = sum(simulator.state()["requests"].values())
    # Creation carries the account in its body, which the fault does not see; the capital updates fail.
    for _ in range(3):
        outbox.deliver_pending(engine, sender(client), attempts_max=2, account_ids=[blocked, flowing])
        make_due(engine, blocked)
    assert statuses(engine, flowing) == ["delivered", "delivered"]
    assert statuses(engine, blocked) == ["delivered", "dead", "pending"]  # the second waits behind the dead one
    assert sum(simulator.state()["requests"].values()) > simulator_requests_before
    with engine.connect() as c:
        alert = c.execute(sa.text("SELECT kind, status FROM alert WHERE account_id = :a"), {"a": blocked}).one()
    assert tuple(alert) == ("outbox_dead_letter", "open")

    simulator.set_faults(Faults())
    assert outbox.retry_dead(engine) >= 1
    outbox.deliver_pending(engine, sender(client), account_ids=[blocked])
    assert statuses(engine, blocked) == ["delivered", "delivered", "delivered"]
    assert engine_capital(simulator, blocked) == Decimal("1050.00")
    with engine.connect() as c:
        alert_status = c.execute(sa.text("SELECT status FROM alert WHERE account_id = :a"), {"a": blocked}).scalar()
    assert alert_status == "resolved"


def test_status_changes_reach_the_engine_in_order(ledger, engine, simulator, make_client) -> None:
    account_id = open_account(ledger)
    ledger.change_status(account_id, "pause", reason="investor asked")
    ledger.change_status(account_id, "resume")
    ledger.withdraw(account_id, "1000.00", idempotency_key=f"{account_id}:w")
    ledger.change_status(account_id, "close")
    outbox.deliver_pending(engine, sender(make_client()), account_ids=[account_id])
    assert set(statuses(engine, account_id)) == {"delivered"}
    account = simulator.state()["accounts"][account_id]
    assert account["status"] == "closed" and Decimal(account["capital"]) == Decimal("0.00")
