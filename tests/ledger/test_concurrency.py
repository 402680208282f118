"""Many writers at once on few accounts: threads and separate processes, each key booked exactly once,
totals exact, no overdraft, no deadlock or serialization failure reaching a caller."""

from __future__ import annotations

import multiprocessing
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ledger import DuplicateConflict, InsufficientFunds, Ledger, Money
from ledger.verify import verify
from tests.ledger.concurrency_ops import BARRIER_TIMEOUT_S, Op, Outcome, apply, run_process, run_thread

THREADS = 16
PROCESSES = 3
OPS_PER_THREAD = 25
OPS_PER_PROCESS = 40
DUPLICATE_SHARE = 0.15
CURRENCY = "CHF"  # the platform accounts of CHF are shared by every fee below
TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}


def _platform_balances(ledger: Ledger) -> tuple[Money, Money]:
    return (ledger.ledger_account_balance(f"income:performance-fees:{CURRENCY}"),
            ledger.ledger_account_balance(f"assets:platform-cash:{CURRENCY}"))


def _plan(rng: random.Random, run: str, accounts: list[str], drain: str) -> list[Op]:
    """Deposits, withdrawals (some too large), trades (some back-dated) and fees on a few accounts, plus
    30 withdrawals of 7.00 from `drain` (100.00: exactly 14 can succeed)."""
    ops = []
    now = datetime.now(UTC)
    for i in range(THREADS * OPS_PER_THREAD + PROCESSES * OPS_PER_PROCESS - 30):
        account_id = rng.choice(accounts)
        kind = rng.choices(["deposit", "withdrawal", "trade", "fee"], weights=[30, 35, 20, 15])[0]
        key = f"cc:{run}:{i}"
        if kind == "trade":
            change = rng.choice([-1, 1]) * rng.randint(1, 3000)
            back_dated = now - timedelta(seconds=rng.randint(1, 86_400)) if rng.random() < 0.5 else None
            ops.append(Op("trade", account_id, CURRENCY, change, key, effective_at=back_dated))
        else:
            limit = {"deposit": 5000, "withdrawal": 8000, "fee": 2000}[kind]
            ops.append(Op(kind, account_id, CURRENCY, rng.randint(1, limit), key))
    ops += [Op("withdrawal", drain, CURRENCY, 700, f"cc:{run}:drain:{i}") for i in range(30)]
    rng.shuffle(ops)
    return ops


def _deal(rng: random.Random, ops: list[Op]) -> list[list[Op]]:
    """Deal the ops to THREADS + PROCESSES workers; a share of them is sent again by another worker."""
    sizes = [OPS_PER_THREAD] * THREADS + [OPS_PER_PROCESS] * PROCESSES
    hands, start = [], 0
    for size in sizes:
        hands.append(ops[start:start + size])
        start += size
    for op in rng.sample(ops, int(len(ops) * DUPLICATE_SHARE)):
        owner = next(i for i, hand in enumerate(hands) if op in hand)
        other = rng.choice([i for i in range(len(hands)) if i != owner])
        hands[other].insert(rng.randint(0, len(hands[other])), op)
    return hands


def _run_everywhere(ledger: Ledger, url: str, hands: list[list[Op]]) -> list[Outcome]:
    """Threads of this process and spawned processes, all released at once."""
    context = multiprocessing.get_context("spawn")
    process_start = context.Barrier(PROCESSES + 1)
    process_results = context.Queue()
    processes = [context.Process(target=run_process, args=(url, f"process-{i}", hands[THREADS + i],
                                                            process_start, process_results), daemon=True)
                 for i in range(PROCESSES)]
    for process in processes:
        process.start()
    thread_start = threading.Barrier(THREADS + 1)
    thread_results: list[list[Outcome]] = [[] for _ in range(THREADS)]
    threads = [threading.Thread(target=run_thread, args=(ledger, f"thread-{i}", hands[i], thread_start,
                                                         thread_results[i]), daemon=True)
               for i in range(THREADS)]
    for thread in threads:
        thread.start()
    process_start.wait(timeout=BARRIER_TIMEOUT_S)  # every process is connected and waiting
    thread_start.wait(timeout=BARRIER_TIMEOUT_S)
    outcomes: list[Outcome] = []
    for _ in processes:
        name, result = process_results.get(timeout=BARRIER_TIMEOUT_S)
        assert not isinstance(result, str), f"{name} failed: {result}"
        outcomes += result
    for thread in threads:
        thread.join(timeout=BARRIER_TIMEOUT_S)
        assert not thread.is_alive()
    for process in processes:
        process.join(timeout=BARRIER_TIMEOUT_S)
        assert process.exitcode == 0
    return outcomes + [outcome for result in thread_results for outcome in result]


def test_concurrent_threads_and_processes_book_exactly(ledger: Ledger, engine: sa.Engine, migrated_url: str,
                                                      open_account: Callable[..., str]) -> None:
    rng = random.Random(20261124)
    run = uuid.uuid4().hex[:10]
    accounts = [open_account("500.00", CURRENCY) for _ in range(3)]
    drain = open_account("100.00", CURRENCY)
    initial = {a: ledger.balance(a).minor for a in [*accounts, drain]}
    fees_before, cash_before = _platform_balances(ledger)
    ops = _plan(rng, run, accounts, drain)
    hands = _deal(rng, ops)

    outcomes = _run_everywhere(ledger, migrated_url, hands)

    # nothing but InsufficientFunds reached a caller: no deadlock, serialization failure or other error
    errors = [o for o in outcomes if o.error]
    assert not errors, errors[:5]
    assert not [o for o in outcomes if o.sqlstate in TRANSIENT_SQLSTATES]
    assert len(outcomes) == sum(len(hand) for hand in hands)

    # every key: booked at most once, every success of it names the same entry
    by_key: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_key[outcome.op.key].append(outcome)
    booked: dict[str, int] = {}
    for key, results in by_key.items():
        successes = [o for o in results if o.entry_id is not None]
        if successes:
            assert len({o.entry_id for o in successes}) == 1, results
            assert [o.replayed for o in successes].count(False) == 1, results
            booked[key] = successes[0].entry_id
    assert sum(len(r) > 1 for r in by_key.values()) >= int(len(ops) * DUPLICATE_SHARE) - 1  # duplicates ran
    with engine.connect() as connection:
        in_database = dict(connection.execute(sa.text("""
            SELECT idempotency_key, min(id) FROM journal_entry WHERE idempotency_key = ANY(:keys)
             GROUP BY idempotency_key HAVING count(*) = 1"""), {"keys": list(by_key)}).all())
        entries = connection.execute(sa.text("SELECT count(*) FROM journal_entry WHERE idempotency_key = ANY(:keys)"),
                                     {"keys": list(by_key)}).scalar_one()
    assert in_database == booked and entries == len(booked)

    # exact totals: the initial balances plus every booked op, nothing else
    expected = dict(initial)
    fees = 0
    for op in {o.op for o in outcomes if o.op.key in booked}:
        expected[op.account_id] += op.change_minor()
        fees += op.minor if op.kind == "fee" else 0
    for account_id, minor in expected.items():
        assert ledger.balance(account_id).minor == minor
        assert ledger.ledger_account_balance(f"assets:custody:{account_id}").minor == minor
    fees_after, cash_after = _platform_balances(ledger)
    assert (fees_after - fees_before).minor == fees and (cash_after - cash_before).minor == fees
    refused = {o.op.kind for o in outcomes if o.refused}
    assert refused <= {"withdrawal", "fee"} and "withdrawal" in refused  # only guarded ops are refused

    # no withdrawal or fee overdrew, in recording order (the order the check was made in)
    assert all(o.investor_balance_minor >= 0 for o in outcomes
               if o.entry_id is not None and o.op.kind in ("withdrawal", "fee"))
    with engine.connect() as connection:
        overdrawn = connection.execute(sa.text("""
            SELECT e.idempotency_key, -p.balance_after_minor FROM posting p
              JOIN journal_entry e ON e.id = p.entry_id JOIN ledger_account a ON a.id = p.ledger_account_id
             WHERE a.name = ANY(:names) AND e.kind IN ('withdrawal', 'fee') AND p.balance_after_minor > 0"""),
            {"names": [f"liabilities:investors:{a}" for a in expected]}).all()
    assert not overdrawn

    # the withdrawals-only account: exactly 14 of 30 × 7.00 fit in 100.00, and it never went below zero
    drained = [key for key in booked if ":drain:" in key]
    assert len(drained) == 14 and str(ledger.balance(drain)) == "2.00"
    statement = ledger.statement(f"liabilities:investors:{drain}", limit=100)
    balances = [line.balance.minor for line in statement.lines]
    assert balances == sorted(balances, reverse=True) and min(balances) == 200

    report = verify(engine)
    assert report.ok, report.findings


@pytest.mark.parametrize("kind", ["deposit", "trade"])
@pytest.mark.parametrize("same_content", [True, False], ids=["same-content", "other-content"])
def test_one_key_sent_by_many_threads_at_once(ledger: Ledger, engine: sa.Engine, open_account: Callable[..., str],
                                               kind: str, same_content: bool) -> None:
    """Eight threads send one key at the same instant (deposits serialise on the account lock, trades meet
    in the INSERT … ON CONFLICT): one booking; the others replay it, or conflict when their content differs."""
    account_id = open_account("100.00", CURRENCY)
    key = f"{account_id}:one-key"
    ops = [Op(kind, account_id, CURRENCY, 500 if same_content else 500 + i, key) for i in range(8)]
    start = threading.Barrier(len(ops))
    outcomes: list[Outcome] = []

    def send(i: int) -> None:
        start.wait(timeout=BARRIER_TIMEOUT_S)
        outcomes.append(apply(ledger, ops[i], f"thread-{i}"))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(ops))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=BARRIER_TIMEOUT_S)
    assert len(outcomes) == len(ops)
    conflicts = [o for o in outcomes if o.error and o.error.startswith(f"{DuplicateConflict.__name__}:")]
    assert not [o for o in outcomes if o.error and o not in conflicts]
    booked = [o for o in outcomes if o.entry_id is not None]
    first = [o for o in booked if not o.replayed]
    assert len(first) == 1
    if same_content:
        assert len(booked) == len(ops) and {o.entry_id for o in booked} == {first[0].entry_id}
    else:
        assert booked == first  # everyone else was told of the conflict
        assert len(conflicts) == len(ops) - 1
    winner = first[0].op
    assert ledger.balance(account_id).minor == 10_000 + winner.minor
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM journal_entry WHERE idempotency_key = :k"),
                                  {"k": key}).scalar_one() == 1


def test_two_threads_withdrawing_more_than_the_balance(ledger: Ledger, open_account: Callable[..., str]) -> None:
    """1000.00, and two threads each asking ten times for 60.00: exactly 16 withdrawals succeed."""
    account_id = open_account("1000.00")
    start = threading.Barrier(2)
    results: dict[str, list[str]] = {"a": [], "b": []}

    def withdraw(name: str) -> None:
        start.wait(timeout=BARRIER_TIMEOUT_S)
        for i in range(10):
            try:
                ledger.withdraw(account_id, "60.00", idempotency_key=f"{account_id}:{name}:{i}")
                results[name].append("ok")
            except InsufficientFunds:
                results[name].append("refused")

    threads = [threading.Thread(target=withdraw, args=(name,)) for name in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=BARRIER_TIMEOUT_S)
    assert [len(r) for r in results.values()] == [10, 10]
    assert sum(r.count("ok") for r in results.values()) == 16
    assert str(ledger.balance(account_id)) == "40.00"
    lines = ledger.statement(f"liabilities:investors:{account_id}").lines
    assert [line.kind for line in lines].count("withdrawal") == 16
    assert all(line.balance.minor >= 0 for line in lines)


def test_a_withdrawal_is_never_dated_before_the_deposit_it_spends(ledger: Ledger,
                                                                  open_account: Callable[..., str]) -> None:
    """Two requests at once: a withdrawal whose unit of work started first (the API's `once()` takes its
    idempotency lock before `tx.withdraw`) and a deposit that commits while it waits. The withdrawal
    spends the deposit, so it must be effective after it: were its effective time its transaction's
    start, the investor would be overdrawn as of that time and the statement would show -20.00
    (100.00, deposit 50.00, withdraw 120.00)."""
    account_id = open_account("100.00")
    started, deposited = threading.Event(), threading.Event()

    def deposit() -> None:
        assert started.wait(timeout=BARRIER_TIMEOUT_S)
        ledger.deposit(account_id, "50.00", idempotency_key=f"{account_id}:deposit")
        deposited.set()

    def withdraw(tx: Any) -> Any:
        tx.connection.execute(sa.text("SELECT 1"))  # the unit of work has begun (e.g. its idempotency lock)
        started.set()
        assert deposited.wait(timeout=BARRIER_TIMEOUT_S)
        return tx.withdraw(account_id, "120.00", idempotency_key=f"{account_id}:withdrawal")

    depositor = threading.Thread(target=deposit)
    depositor.start()
    posted = ledger.transact(withdraw)
    depositor.join(timeout=BARRIER_TIMEOUT_S)
    assert str(ledger.balance(account_id)) == "30.00"
    assert ledger.balance(account_id, as_of=posted.effective_at).minor >= 0
    assert all(line.balance.minor >= 0 for line in ledger.statement(f"liabilities:investors:{account_id}").lines)
