"""Ledger operations for the concurrency tests: plain data and one function per worker, importable by
spawned processes (which build their own engine from the database URL)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger import InsufficientFunds, Ledger, Money, rules
from ledger.db import create_engine

BARRIER_TIMEOUT_S = 120


@dataclass(frozen=True)
class Op:
    """One money command. The same Op sent twice (same key, same content) must book once."""

    kind: str  # deposit | withdrawal | trade | fee
    account_id: str
    currency: str
    minor: int  # positive, except a trade's signed profit or loss
    key: str
    effective_at: datetime | None = None  # trades only: None is "now"

    def change_minor(self) -> int:
        """The change of the investor's balance when this op is booked."""
        return self.minor if self.kind in ("deposit", "trade") else -self.minor


@dataclass(frozen=True)
class Outcome:
    op: Op
    worker: str
    entry_id: int | None = None
    replayed: bool = False
    refused: bool = False  # InsufficientFunds
    error: str | None = None  # anything else escaped to the caller: a failure of the test
    sqlstate: str | None = None
    investor_balance_minor: int | None = None  # right after the entry, as the ledger answered


def apply(ledger: Ledger, op: Op, worker: str) -> Outcome:
    money = Money(minor=op.minor, currency=op.currency)
    try:
        if op.kind == "deposit":
            posted = ledger.deposit(op.account_id, str(money), idempotency_key=op.key)
        elif op.kind == "withdrawal":
            posted = ledger.withdraw(op.account_id, str(money), idempotency_key=op.key)
        elif op.kind == "trade":
            posted = ledger.post(rules.gain_or_loss("trade", op.account_id, money, idempotency_key=op.key,
                                                    effective_at=op.effective_at, memo="concurrent trade"))
        elif op.kind == "fee":
            posted = ledger.post(rules.performance_fee(op.account_id, money, idempotency_key=op.key,
                                                       effective_at=None, memo="concurrent fee"))
        else:
            raise ValueError(op.kind)
    except InsufficientFunds:
        return Outcome(op=op, worker=worker, refused=True)
    except Exception as error:  # noqa: BLE001 — every other escape is reported, with its SQLSTATE
        orig = getattr(error, "orig", None)
        return Outcome(op=op, worker=worker, error=f"{type(error).__name__}: {error}"[:500],
                       sqlstate=getattr(orig, "sqlstate", None))
    balance = posted.balances_after[f"liabilities:investors:{op.account_id}"]
    return Outcome(op=op, worker=worker, entry_id=posted.entry_id, replayed=posted.replayed,
                   investor_balance_minor=balance.minor)


BATCH_MAX = 4


def apply_all(ledger: Ledger, ops: list[Op], worker: str) -> list[Outcome]:
    """One op at a time; workers named "...-1" book runs of consecutive trades with `Ledger.post_many`
    (up to BATCH_MAX entries on several accounts in one transaction), racing the one-at-a-time workers."""
    if not worker.endswith("-1"):
        return [apply(ledger, op, worker) for op in ops]
    outcomes: list[Outcome] = []
    i = 0
    while i < len(ops):
        batch = []
        while i < len(ops) and ops[i].kind == "trade" and len(batch) < BATCH_MAX:
            batch.append(ops[i])
            i += 1
        if not batch:
            outcomes.append(apply(ledger, ops[i], worker))
            i += 1
            continue
        try:
            posted = ledger.post_many([rules.gain_or_loss(
                "trade", op.account_id, Money(minor=op.minor, currency=op.currency), idempotency_key=op.key,
                effective_at=op.effective_at, memo="concurrent trade") for op in batch])
        except Exception as error:  # noqa: BLE001 — reported like apply's
            orig = getattr(error, "orig", None)
            outcomes += [Outcome(op=op, worker=worker, error=f"{type(error).__name__}: {error}"[:500],
                                 sqlstate=getattr(orig, "sqlstate", None)) for op in batch]
            continue
        outcomes += [Outcome(op=op, worker=worker, entry_id=p.entry_id, replayed=p.replayed,
                             investor_balance_minor=p.balances_after[f"liabilities:investors:{op.account_id}"].minor)
                     for op, p in zip(batch, posted, strict=True)]
    return outcomes


def run_thread(ledger: Ledger, name: str, ops: list[Op], start: threading.Barrier,
               results: list[Outcome]) -> None:
    start.wait(timeout=BARRIER_TIMEOUT_S)
    results.extend(apply_all(ledger, ops, name))


def run_process(url: str, name: str, ops: list[Op], start: Any, results: Any) -> None:
    """A separate process: its own engine and Ledger, released together with the threads."""
    engine = create_engine(url, pool_size=2, application_name=f"invledger-test-{name}")
    try:
        ledger = Ledger(engine)
        with engine.connect():  # connect before the start line, so the race is the work, not the start-up
            pass
        start.wait(timeout=BARRIER_TIMEOUT_S)
        results.put((name, apply_all(ledger, ops, name)))
    except BaseException as error:  # the parent must hear of it rather than wait for a result
        results.put((name, f"{type(error).__name__}: {error}"))
        raise
    finally:
        engine.dispose()
