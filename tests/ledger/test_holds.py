"""Withdrawals with holds on the real database: place, post, void, expire; the available balance; holds under
concurrency never overdraw; the database guards the hold events; verify checks them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from ledger import DuplicateConflict, InsufficientFunds, Ledger, Money, acting_as, rules
from ledger import holds as h
from ledger.db import sqlstate
from ledger.errors import HoldStateConflict, UnknownHold
from ledger.verify import verify


def usd(text: str) -> Money:
    return Money.from_decimal(text, "USD")


def available(ledger: Ledger, account_id: str) -> h.Balances:
    return h.account_balances(ledger, [account_id])[account_id]


def test_a_hold_reserves_then_posts_exactly_once(ledger: Ledger, open_account: Callable[..., str]) -> None:
    a = open_account("100.00")
    with acting_as("test:placer"):
        hold = h.place_hold(ledger, a, "60.00", idempotency_key=f"{a}:w1", reference="wire 1")
    assert hold.status == "open" and hold.amount == usd("60.00") and hold.placed_by == "test:placer"
    b = available(ledger, a)
    assert (b.balance, b.held, b.available, b.open_holds) == (usd("100.00"), usd("60.00"), usd("40.00"), 1)
    assert ledger.balance(a) == usd("100.00")  # the ledger balance moves only when the hold posts

    # Other withdrawals and holds see the reservation.
    with pytest.raises(InsufficientFunds):
        ledger.withdraw(a, "40.01", idempotency_key=f"{a}:plain")
    with pytest.raises(InsufficientFunds):
        h.place_hold(ledger, a, "40.01", idempotency_key=f"{a}:w2")
    ledger.withdraw(a, "10.00", idempotency_key=f"{a}:plain-ok")
    assert available(ledger, a).available == usd("30.00")

    with acting_as("test:poster"):
        posted_hold, posted = h.post_hold(ledger, hold.hold_id, account_id=a)
    assert posted_hold.status == "posted" and posted_hold.entry_id == posted.entry_id
    assert posted_hold.resolved_by == "test:poster" and not posted.replayed
    assert posted.balances_after[f"liabilities:investors:{a}"] == usd("30.00")
    b = available(ledger, a)
    assert (b.balance, b.held, b.available, b.open_holds) == (usd("30.00"), usd("0.00"), usd("30.00"), 0)

    again, replay = h.post_hold(ledger, hold.hold_id)
    assert again.replayed and replay.replayed and replay.entry_id == posted.entry_id
    assert ledger.balance(a) == usd("30.00")
    entry = ledger.entry(posted.entry_id)
    assert entry.kind == "withdrawal" and entry.metadata["hold_id"] == hold.hold_id
    assert entry.recorded_by == "test:poster"
    with pytest.raises(HoldStateConflict):
        h.void_hold(ledger, hold.hold_id)
    assert verify(ledger.engine).ok


def test_void_and_expiry_release_the_funds(ledger: Ledger, open_account: Callable[..., str]) -> None:
    a = open_account("100.00")
    first = h.place_hold(ledger, a, "70.00", idempotency_key=f"{a}:1")
    second = h.place_hold(ledger, a, "30.00", idempotency_key=f"{a}:2", expires_in=timedelta(seconds=60))
    assert available(ledger, a).available == usd("0.00")
    voided = h.void_hold(ledger, first.hold_id, reason="investor cancelled", account_id=a)
    assert voided.status == "voided" and voided.reason == "investor cancelled"
    assert h.void_hold(ledger, first.hold_id).replayed  # voiding again changes nothing
    with pytest.raises(HoldStateConflict):
        h.post_hold(ledger, first.hold_id)
    assert available(ledger, a).available == usd("70.00")

    assert h.expire_due(ledger, account_id=a) == []  # not yet
    expired = h.expire_due(ledger, now=datetime.now(UTC) + timedelta(seconds=61), account_id=a)
    assert [x.hold_id for x in expired] == [second.hold_id]
    assert h.read(ledger, lambda tx: h.get(tx, second.hold_id)).status == "expired"
    b = available(ledger, a)
    assert (b.balance, b.available, b.open_holds) == (usd("100.00"), usd("100.00"), 0)
    assert ledger.balance(a) == usd("100.00")
    topics = [r.topic for r in ledger.engine.connect().execute(sa.text(
        "SELECT topic FROM outbox_event WHERE account_id = :a ORDER BY id"), {"a": a})]
    assert topics.count("account.withdrawal_requested") == 2 and topics.count("account.withdrawal_cancelled") == 2
    assert verify(ledger.engine).ok


def test_idempotent_placement(ledger: Ledger, open_account: Callable[..., str]) -> None:
    a = open_account("100.00")
    first = h.place_hold(ledger, a, "10.00", idempotency_key=f"{a}:k", reference="r")
    again = h.place_hold(ledger, a, "10.00", idempotency_key=f"{a}:k", reference="r")
    assert again.replayed and again.hold_id == first.hold_id
    with pytest.raises(DuplicateConflict):
        h.place_hold(ledger, a, "10.01", idempotency_key=f"{a}:k", reference="r")
    assert available(ledger, a).held == usd("10.00")
    with pytest.raises(UnknownHold):
        h.post_hold(ledger, first.hold_id, account_id=open_account("1.00"))


def test_posting_is_refused_when_losses_took_the_balance_below_the_hold(ledger: Ledger,
                                                                         open_account: Callable[..., str]) -> None:
    a = open_account("100.00")
    hold = h.place_hold(ledger, a, "80.00", idempotency_key=f"{a}:k")
    ledger.post(rules.gain_or_loss("trade", a, usd("-50.00"), idempotency_key=f"{a}:loss", effective_at=None))
    assert available(ledger, a).available == usd("-30.00")  # engine facts are never refused
    with pytest.raises(InsufficientFunds):
        h.post_hold(ledger, hold.hold_id)
    assert h.read(ledger, lambda tx: h.get(tx, hold.hold_id)).status == "open"
    h.void_hold(ledger, hold.hold_id)
    assert available(ledger, a).available == usd("50.00")
    assert verify(ledger.engine).ok


def test_holds_and_withdrawals_at_once_never_overdraw(ledger: Ledger, open_account: Callable[..., str]) -> None:
    """16 threads place holds and withdraw 7.00 each from 100.00: at most 14 succeed in all, whatever the order;
    then posting every hold leaves the balance at 100 − 7 × successes and never below zero."""
    a = open_account("100.00")
    barrier = threading.Barrier(16, timeout=30)
    outcomes: list[tuple[str, object]] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        barrier.wait()
        for j in range(3):
            key = f"{a}:{i}:{j}"
            try:
                result: object = (h.place_hold(ledger, a, "7.00", idempotency_key=key) if (i + j) % 2
                                  else ledger.withdraw(a, "7.00", idempotency_key=key))
                kind = "hold" if (i + j) % 2 else "withdrawal"
            except InsufficientFunds:
                result, kind = None, "refused"
            with lock:
                outcomes.append((kind, result))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok = [o for o in outcomes if o[0] != "refused"]
    assert len(outcomes) == 48 and len(ok) == 14
    placed = [o[1] for o in ok if o[0] == "hold"]
    b = available(ledger, a)
    assert b.available == usd("2.00") and b.held.minor == 700 * len(placed)
    for hold in placed:
        h.post_hold(ledger, hold.hold_id)  # type: ignore[attr-defined]
    assert ledger.balance(a) == usd("2.00") and available(ledger, a).open_holds == 0
    assert verify(ledger.engine).ok


def test_a_fee_sees_the_holds(ledger: Ledger, open_account: Callable[..., str]) -> None:
    a = open_account("100.00")
    h.place_hold(ledger, a, "95.00", idempotency_key=f"{a}:k")
    with pytest.raises(InsufficientFunds):
        ledger.post(rules.performance_fee(a, usd("6.00"), idempotency_key=f"{a}:fee", effective_at=None))
    ledger.post(rules.performance_fee(a, usd("5.00"), idempotency_key=f"{a}:fee", effective_at=None))
    assert available(ledger, a).available == usd("0.00")


def test_the_database_guards_the_holds(ledger: Ledger, engine: sa.Engine, open_account: Callable[..., str]) -> None:
    a = open_account("100.00")
    hold = h.place_hold(ledger, a, "10.00", idempotency_key=f"{a}:k")
    # Another open hold keeps held_minor above what a second resolution takes off, so that resolution meets the
    # one-resolution index rather than hold_state's CHECK (held_minor >= 0) on the way to it.
    other = h.place_hold(ledger, a, "20.00", idempotency_key=f"{a}:other")
    # Each refused for its own reason (the SQLSTATE), not for any error a typo in the statement would raise too.
    statements = [
        ("UPDATE hold_event SET amount_minor = 1 WHERE id = :id", "23001"),  # append-only
        ("DELETE FROM hold_event WHERE id = :id", "23001"),
        ("UPDATE hold_state SET held_minor = 0 WHERE ledger_account_id = (SELECT ledger_account_id FROM hold_event"
         " WHERE id = :id)", "23001"),  # derived from the events
        # A placement written by hand is still checked against the available balance.
        ("INSERT INTO hold_event (hold_id, kind, investment_account_id, ledger_account_id, amount_minor, currency,"
         " idempotency_key, content_hash, expires_at, chain_seq, chain_hash)"
         " SELECT 0, 'placed', investment_account_id, ledger_account_id, 10001, currency, :id || '-x',"
         " content_hash, now(), 0, content_hash FROM hold_event WHERE id = :id", "IL001"),
        # A second resolution of one hold.
        ("INSERT INTO hold_event (hold_id, kind, investment_account_id, ledger_account_id, amount_minor, currency,"
         " chain_seq, chain_hash) VALUES (:id, 'voided', '', 0, 1, '', 0, '\\x00'::bytea)", "23505"),
    ]
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO hold_event (hold_id, kind, investment_account_id, ledger_account_id,"
                          " amount_minor, currency, chain_seq, chain_hash)"
                          " VALUES (:id, 'expired', '', 0, 1, '', 0, '\\x00'::bytea)"), {"id": hold.hold_id})
    for statement, refused_with in statements:
        with pytest.raises(DBAPIError) as refused, engine.begin() as c:
            c.execute(sa.text(statement), {"id": hold.hold_id})
        assert sqlstate(refused.value) == refused_with, (statement, refused.value)
    h.void_hold(ledger, other.hold_id)
    assert available(ledger, a).available == usd("100.00")
    assert verify(ledger.engine).ok


@contextmanager
def books_with_a_hold(fresh_database: Callable[..., tuple[str, Callable[[], None]]],
                      account_id: str) -> Iterator[tuple[sa.Engine, Ledger, h.Hold]]:
    """A database of its own (an insider's changes stay there) with one account of 100.00 and a hold of 10.00."""
    from ledger import AccountSpec
    from ledger.db import create_engine

    url, drop = fresh_database()
    engine = create_engine(url)
    try:
        ledger = Ledger(engine)
        ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                        fee_rate=Decimal("0.2"), initial_capital=usd("100.00")))
        yield engine, ledger, h.place_hold(ledger, account_id, "10.00", idempotency_key=f"{account_id}:k")
    finally:
        engine.dispose()
        drop()


def test_verify_finds_a_changed_hold(fresh_database: Callable[..., tuple[str, Callable[[], None]]]) -> None:
    with books_with_a_hold(fresh_database, "v1") as (engine, ledger, hold):
        h.post_hold(ledger, hold.hold_id)
        assert verify(engine).ok
        with engine.begin() as c:  # an insider with the guards off
            c.exec_driver_sql("SET session_replication_role = replica")
            c.execute(sa.text("UPDATE hold_event SET amount_minor = 5 WHERE id = :id"), {"id": hold.hold_id})
        report = verify(engine)
        assert not report.ok
        failed = {f.check for f in report.findings}
        assert {"hold_chains_match", "posted_holds_match_entries"} <= failed


def test_an_anchor_signs_the_hold_chains(fresh_database: Callable[..., tuple[str, Callable[[], None]]]) -> None:
    """An insider rewrites a hold event and recomputes its chain, head and totals (so every hold check passes):
    the anchor made before catches it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ledger import chain

    with books_with_a_hold(fresh_database, "an1") as (engine, _, hold):
        key = Ed25519PrivateKey.generate()
        chain.make_anchor(engine, key, "test")
        public = chain.public_key_bytes(key)
        assert verify(engine, public_key=public).ok
        with engine.begin() as c:
            c.exec_driver_sql("SET session_replication_role = replica")
            c.execute(sa.text("UPDATE hold_event SET amount_minor = 500 WHERE id = :id"), {"id": hold.hold_id})
            c.execute(sa.text("UPDATE hold_event h SET chain_hash ="
                              " sha256(ledger_chain_start() || hold_event_digest(h)) WHERE id = :id"),
                      {"id": hold.hold_id})
            c.execute(sa.text("UPDATE hold_state s SET held_minor = 500, head = h.chain_hash FROM hold_event h"
                              " WHERE h.id = :id AND s.ledger_account_id = h.ledger_account_id"), {"id": hold.hold_id})
        report = verify(engine, public_key=public)
        failed = {f.check for f in report.findings}
        assert failed == {"hash_chains_and_anchors"}, report.findings
        assert any("hold events up to #1" in f.detail for f in report.findings)
