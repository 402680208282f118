"""A batch of legs (`posting_batch`, migration 0006; `Tx.post_many`) is booked exactly as the same legs
posted one entry at a time through `posting_apply`: the same sequence numbers, running balances, effective
times and late flags, the same cached account columns, the same checkpoint balances. And it refuses what
`posting_apply` refuses, leaving nothing behind, while `posting_apply` still stamps every other insert."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import AccountSpec, EntryDraft, Ledger, Leg, Money, chart, checkpoints
from ledger.db import create_engine
from ledger.times import ONE_MICROSECOND
from ledger.verify import (
    cached_balances_match,
    checkpoints_match,
    lateness_bounds_match,
    no_orphan_legs,
    running_balances_match,
)

NOW = datetime.now(UTC)
CHECKPOINTS = [checkpoints.month_end((NOW - timedelta(days=days)).date()) for days in (95, 64)]
# Effective times around and between the two checkpoints, right at their edges too, and recent ones.
TIMES = st.one_of(
    st.datetimes(min_value=(CHECKPOINTS[0] - timedelta(days=20)).replace(tzinfo=None),
                 max_value=(NOW - timedelta(minutes=5)).replace(tzinfo=None), timezones=st.just(UTC)),
    st.builds(lambda at, edge: at + edge, st.sampled_from(CHECKPOINTS),
              st.sampled_from((timedelta(0), -ONE_MICROSECOND, ONE_MICROSECOND))))
# An entry: 1-2 transfers between the four ledger accounts of two investment accounts (an account may be
# debited and credited in one entry, or appear in two of its legs), at one effective time.
TRANSFER = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 10_000))
ENTRIES = st.lists(st.tuples(st.lists(TRANSFER, min_size=1, max_size=2), TIMES), min_size=1, max_size=25)

STAMPS = sa.text("""
    SELECT p.seq, p.side, p.amount_minor, p.effective_at, p.balance_after_minor, p.late
      FROM posting p WHERE p.ledger_account_id = :id ORDER BY p.seq""")
CACHE = sa.text("""
    SELECT balance_minor, posting_count, max_effective_at, max_lateness_us FROM ledger_account WHERE id = :id""")
CHECKPOINTED = sa.text("""
    SELECT at, balance_minor FROM ledger_checkpoint_balance WHERE ledger_account_id = :id ORDER BY at""")


@pytest.fixture(scope="module")
def books(fresh_database) -> Iterator[Ledger]:
    """A database of its own with two month-end checkpoints, made before anything is booked: every
    example's back-dated legs must then be added to them."""
    url, drop = fresh_database()
    engine = create_engine(url, pool_size=6, statement_timeout_ms=60_000)
    ledger = Ledger(engine)
    for at in CHECKPOINTS:
        checkpoints.make(ledger, at)
    yield ledger
    engine.dispose()
    drop()


def _open(ledger: Ledger, prefix: str) -> list[str]:
    """Two investment accounts; their four ledger accounts, in a fixed order."""
    names = []
    for n in (1, 2):
        account_id = f"{prefix}{n}-{uuid.uuid4().hex[:8]}"
        ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                        fee_rate=Decimal("0.2"), initial_capital=None))
        names += [chart.custody(account_id), chart.investors(account_id)]
    return names


def _drafts(names: list[str], entries: list[tuple[list[tuple[int, int, int]], datetime]]) -> list[EntryDraft]:
    drafts = []
    for n, (transfers, at) in enumerate(entries):
        legs = []
        for debit, credit, minor in transfers:
            amount = Money(minor=minor, currency="USD")
            legs += [Leg(account=names[debit], side="D", amount=amount),
                     Leg(account=names[credit], side="C", amount=amount)]
        drafts.append(EntryDraft(kind="adjustment", idempotency_key=f"{names[0]}:{n}", legs=tuple(legs),
                                 investment_account_id=names[0].split(":")[-1], effective_at=at))
    return drafts


def _state(connection: sa.Connection, ledger: Ledger, names: list[str]) -> list[object]:
    ids = [ledger.resolve([name])[name].id for name in names]
    return [(connection.execute(STAMPS, {"id": i}).all(), connection.execute(CACHE, {"id": i}).one(),
             connection.execute(CHECKPOINTED, {"id": i}).all()) for i in ids]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES)
def test_a_batch_is_booked_exactly_as_one_entry_at_a_time(books: Ledger, entries) -> None:
    one_by_one, batched = _open(books, "one"), _open(books, "many")
    singles = [books.post(draft) for draft in _drafts(one_by_one, entries)]
    together = books.post_many(_drafts(batched, entries))

    rename = dict(zip(batched, one_by_one, strict=True))
    assert [{rename[k]: v for k, v in p.balances_after.items()} for p in together] == \
        [p.balances_after for p in singles]
    assert [p.effective_at for p in together] == [p.effective_at for p in singles]
    with books.engine.connect() as c:
        assert _state(c, books, batched) == _state(c, books, one_by_one)
        for check in (running_balances_match, cached_balances_match, lateness_bounds_match, checkpoints_match,
                      no_orphan_legs):
            assert check(c) == [], check.__name__


def _pair(ledger: Ledger, prefix: str) -> tuple[str, int, int]:
    """A new investment account: its id, and the ids of its custody and investors ledger accounts."""
    names = _open(ledger, prefix)
    custody, investors = (ledger.resolve([n])[n].id for n in names[:2])
    return names[0].split(":")[-1], custody, investors


def _entry(c: sa.Connection, key: str, account_id: str, at: datetime | None = None) -> int:
    return c.execute(sa.text("""
        INSERT INTO journal_entry (idempotency_key, content_hash, kind, investment_account_id, effective_at)
        VALUES (:k, decode(repeat('cd', 32), 'hex'), 'adjustment', :a, COALESCE(:at, now())) RETURNING id"""),
        {"k": key, "a": account_id, "at": at}).scalar_one()


POST_LEGS = sa.text("INSERT INTO posting_batch VALUES (CAST(:e AS bigint[]), CAST(:a AS bigint[]), "
                    "CAST(:s AS text[]), CAST(:m AS bigint[]), CAST(:c AS text[]))")


def _legs(c: sa.Connection, entry_ids: list[int], accounts: list[int], minor: int,
          currencies: tuple[str, ...] = ("USD", "USD")) -> None:
    """A debit and a credit of `minor` through posting_batch."""
    c.execute(POST_LEGS, {"e": entry_ids, "a": accounts, "s": ["D", "C"], "m": [minor, minor], "c": list(currencies)})


def test_a_batch_refuses_what_posting_apply_refuses_and_leaves_nothing(books: Ledger) -> None:
    account_id, custody, investors = _pair(books, "refuse")
    with books.engine.begin() as c:
        closed = _entry(c, f"{account_id}:closed", account_id)
        _legs(c, [closed, closed], [custody, investors], 5)
    with books.engine.connect() as c:
        before = c.execute(sa.text("SELECT count(*) FROM posting")).scalar_one()
    cases = [  # (which legs, the error class, the message)
        (lambda e: ([e, e + 10**9], [custody, investors], ["USD", "USD"]), psycopg.errors.ForeignKeyViolation,
         "unknown journal entry"),
        (lambda e: ([e, closed], [custody, investors], ["USD", "USD"]), psycopg.errors.RestrictViolation,
         f"journal entry {closed} is closed"),
        (lambda e: ([e, e], [custody, 10**12], ["USD", "USD"]), psycopg.errors.ForeignKeyViolation,
         "unknown ledger account"),
        (lambda e: ([e, e], [custody, investors], ["USD", "EUR"]), psycopg.errors.CheckViolation,
         "posting in EUR to ledger account"),
        (lambda e: ([e], [custody, investors], ["USD", "USD"]), psycopg.errors.InvalidParameterValue,
         "arrays of one length"),
    ]
    for n, (legs, error, message) in enumerate(cases):
        with books.engine.connect() as c:
            entry = _entry(c, f"{account_id}:refused:{n}", account_id)
            entry_ids, accounts, currencies = legs(entry)
            with pytest.raises(sa.exc.DBAPIError, match=message) as raised:
                _legs(c, entry_ids, accounts, 7, currencies)
            assert isinstance(raised.value.orig, error)
            c.rollback()
    with books.engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM posting")).scalar_one() == before
        assert c.execute(sa.text("SELECT count(*) FROM posting_batch")).scalar_one() == 0


def test_the_batch_path_opens_no_way_around_the_posting_trigger(books: Ledger) -> None:
    """After a batch, in the same transaction, a direct insert is still stamped by posting_apply (whatever
    stamps it brings), the cached balance still cannot be set, and the batch row itself is never kept."""
    account_id, custody, investors = _pair(books, "around")
    with books.engine.begin() as c:
        first = _entry(c, f"{account_id}:1", account_id)
        _legs(c, [first, first], [custody, investors], 30)
        second = _entry(c, f"{account_id}:2", account_id)
        c.execute(sa.text("""
            INSERT INTO posting (ledger_account_id, entry_id, side, amount_minor, currency, seq, effective_at,
                                 balance_after_minor, late)
            VALUES (:c, :e, 'D', 12, 'USD', 99, '2001-01-01', 123456, true),
                   (:i, :e, 'C', 12, 'USD', 99, '2001-01-01', 123456, true)"""),
                  {"c": custody, "i": investors, "e": second})
        assert c.execute(sa.text("SELECT count(*) FROM posting_batch")).scalar_one() == 0
    with books.engine.connect() as c:
        rows = c.execute(STAMPS, {"id": custody}).all()
        assert [(r.seq, r.balance_after_minor, r.late) for r in rows] == [(1, 30, False), (2, 42, False)]
    with pytest.raises(sa.exc.DBAPIError, match="derived from postings"), books.engine.begin() as c:
        c.execute(sa.text("UPDATE ledger_account SET balance_minor = 0 WHERE id = :c"), {"c": custody})


def test_a_repeatable_read_batch_cannot_miss_a_checkpoint(fresh_database) -> None:
    """As for posting_apply (test_checkpoints): a batch whose snapshot predates a checkpoint it books into
    fails with a serialization error (the caller retries), rather than leaving the checkpoint short."""
    url, drop = fresh_database()
    engine = create_engine(url, pool_size=3, statement_timeout_ms=60_000)
    try:
        ledger = Ledger(engine)
        account_id, custody, investors = _pair(ledger, "rr")
        with engine.connect() as writer:
            writer.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            writer.exec_driver_sql("SELECT 1").all()  # the snapshot is taken here
            checkpoints.make(ledger, CHECKPOINTS[0])
            entry = _entry(writer, "rr:late", account_id, CHECKPOINTS[0] - timedelta(days=1))
            with pytest.raises(sa.exc.OperationalError) as raised:
                _legs(writer, [entry, entry], [custody, investors], 70)
            assert isinstance(raised.value.orig, psycopg.errors.SerializationFailure)
            writer.rollback()
        with engine.connect() as c:
            assert checkpoints_match(c) == []
    finally:
        engine.dispose()
        drop()
