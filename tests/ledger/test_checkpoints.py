"""Balance checkpoints (migration 0005, ledger/checkpoints.py) are exact caches: whatever is booked around
them — back-dated into checkpointed months, to accounts opened after them, concurrently with their
making — every checkpoint equals the sum of the postings it covers, and every as-of balance computed from
any checkpoint equals a plain sum. Each test (and each Hypothesis example) gets a database of its own,
because checkpoints are made in time order for the whole ledger."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ledger import AccountSpec, InvalidEntry, Ledger, Money, checkpoints, rules
from ledger.db import create_engine
from ledger.times import ONE_MICROSECOND
from ledger.verify import checkpoints_match, verify

NOW = datetime.now(UTC)
FIRST_MONTH = checkpoints.month_end((NOW - timedelta(days=200)).date())  # some six month ends to checkpoint
MONTH_ENDS = [end for end in (checkpoints.month_end((FIRST_MONTH + timedelta(days=31 * i)).date())
                              for i in range(7)) if end < NOW]
SPAN_START = FIRST_MONTH - timedelta(days=20)

# Times in the span, often right at a month end's edge (where a checkpoint's "at or before" is decided).
EDGES = (timedelta(0), -ONE_MICROSECOND, ONE_MICROSECOND, timedelta(hours=-3), timedelta(hours=5))
TIMES = st.one_of(
    st.datetimes(min_value=SPAN_START.replace(tzinfo=None), max_value=(NOW - timedelta(hours=1)).replace(tzinfo=None),
                 timezones=st.just(UTC)),
    st.builds(lambda end, edge: end + edge, st.sampled_from(MONTH_ENDS), st.sampled_from(EDGES)))

PLAIN_SUMS = sa.text("""
    SELECT a.id, COALESCE(sum(CASE p.side WHEN 'D' THEN p.amount_minor ELSE -p.amount_minor END)
                          FILTER (WHERE p.effective_at <= :t), 0)::bigint AS minor
      FROM ledger_account a LEFT JOIN posting p ON p.ledger_account_id = a.id GROUP BY a.id""")


@pytest.fixture
def books(fresh_database) -> Iterator[Ledger]:
    url, drop = fresh_database()
    engine = create_engine(url, pool_size=12, statement_timeout_ms=60_000)
    yield Ledger(engine)
    engine.dispose()
    drop()


def _open(ledger: Ledger, account_id: str) -> str:
    ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                    fee_rate=Decimal("0.2"), initial_capital=None))
    return account_id


def _trade(ledger: Ledger, account_id: str, key: str, minor: int, at: datetime) -> None:
    ledger.post(rules.gain_or_loss("trade", account_id, Money(minor=minor, currency="USD"), idempotency_key=key,
                                   effective_at=at))


def _assert_exact(engine: sa.Engine, times: list[datetime]) -> int:
    """From every checkpoint, and through ledger_balances_as_of, each account's balance at each time equals
    the plain sum of its postings; and every checkpoint equals its recomputation. Returns comparisons made."""
    compared = 0
    with engine.connect() as c:
        made = [row.at for row in c.execute(sa.text("SELECT at FROM ledger_checkpoint ORDER BY at"))]
        assert checkpoints_match(c) == []
        for t in times:
            expected = dict(c.execute(PLAIN_SUMS, {"t": t}).all())
            assert dict(c.execute(sa.text("SELECT * FROM ledger_balances_as_of(:t)"), {"t": t}).all()) == expected, t
            assert dict(c.execute(sa.text("SELECT * FROM ledger_balances_probed(:t)"), {"t": t}).all()) == expected
            for k in made:
                got = dict(c.execute(sa.text("SELECT * FROM ledger_balances_from_checkpoint(:k, :t)"),
                                     {"k": k, "t": t}).all())
                assert got == expected, (k, t)
                compared += 1
    return compared


# ------------------------------------------------------------------------------------ the state machine

class CheckpointMachine(RuleBasedStateMachine):
    """Accounts opened, trades at any time in the span (so back-dated ones land in checkpointed months and
    before the first checkpoint), replays, and month-end checkpoints made in order, interleaved."""

    fresh: Callable[[], tuple[str, Callable[[], None]]]
    accounts = Bundle("accounts")

    def __init__(self) -> None:
        super().__init__()
        url, self.drop = self.fresh()
        self.engine = create_engine(url, pool_size=2, statement_timeout_ms=60_000)
        self.ledger = Ledger(self.engine)
        self.keys: list[tuple[str, str, int, datetime]] = []
        self.times: set[datetime] = {SPAN_START, NOW}
        self.next_month = 0

    def teardown(self) -> None:
        self.engine.dispose()
        self.drop()

    @initialize(target=accounts)
    def first_account(self) -> str:
        return _open(self.ledger, f"ck-{uuid.uuid4().hex[:8]}")

    @rule(target=accounts)
    def open_account(self) -> str:
        return _open(self.ledger, f"ck-{uuid.uuid4().hex[:8]}")

    @rule(account_id=accounts, minor=st.integers(-5_000, 5_000).filter(bool), at=TIMES)
    def trade(self, account_id: str, minor: int, at: datetime) -> None:
        key = f"{account_id}:{len(self.keys)}"
        _trade(self.ledger, account_id, key, minor, at)
        self.keys.append((account_id, key, minor, at))
        self.times.update({at - ONE_MICROSECOND, at})

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        if self.keys:
            account_id, key, minor, at = data.draw(st.sampled_from(self.keys))
            _trade(self.ledger, account_id, key, minor, at)  # the same event again changes nothing

    @rule(skip=st.integers(0, 2))
    def checkpoint(self, skip: int) -> None:
        self.next_month += skip
        if self.next_month < len(MONTH_ENDS):
            at = MONTH_ENDS[self.next_month]
            checkpoints.make(self.ledger, at)
            assert checkpoints.make(self.ledger, at) == 0  # made already: nothing to do
            self.times.update({at - ONE_MICROSECOND, at, at + ONE_MICROSECOND})
            self.next_month += 1

    @invariant()
    def exact(self) -> None:
        sample = sorted(self.times)
        _assert_exact(self.engine, sample[:: max(1, len(sample) // 8)] + [sample[-1]])


def test_checkpoint_state_machine(fresh_database) -> None:
    CheckpointMachine.fresh = staticmethod(fresh_database)
    run_state_machine_as_test(CheckpointMachine, settings=settings(
        max_examples=12, stateful_step_count=20, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


# ---------------------------------------------------------------------------------------- concurrency

def test_checkpoints_made_while_writers_book_back_dated_trades_miss_nothing(books: Ledger) -> None:
    """Four writers book trades at random times of the span (about half of them into months already
    checkpointed) while checkpoints for six month ends are made one after another."""
    ids = [_open(books, f"cc-{i}") for i in range(5)]
    rng = random.Random(7)
    span_s = int((NOW - timedelta(hours=1) - SPAN_START).total_seconds())
    plan = [[(rng.choice(ids), rng.randrange(-900, 900) or 1,
              rng.choice(MONTH_ENDS) + rng.choice(EDGES) if rng.random() < 0.5
              else SPAN_START + timedelta(seconds=rng.randrange(span_s))) for _ in range(60)] for _ in range(4)]
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i, (account_id, minor, at) in enumerate(plan[n]):
                _trade(books, account_id, f"w{n}:{i}", minor, at)
        except BaseException as error:  # noqa: BLE001 — reported below
            errors.append(error)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for w in writers:
        w.start()
    made = []
    for at in MONTH_ENDS:
        made.append(checkpoints.make(books, at))
    for w in writers:
        w.join()
    assert not errors, errors
    assert len(made) == len(MONTH_ENDS)
    times = [SPAN_START, *MONTH_ENDS, *(m - ONE_MICROSECOND for m in MONTH_ENDS),
             *(m + timedelta(days=9) for m in MONTH_ENDS), NOW]
    assert _assert_exact(books.engine, times) == len(times) * len(MONTH_ENDS)
    assert verify(books.engine).ok


# ----------------------------------------------------------------------------------- refusals, RR, verify

def test_checkpoints_refuse_what_would_make_them_wrong(books: Ledger) -> None:
    account_id = _open(books, "rf")
    _trade(books, account_id, "rf:1", 500, MONTH_ENDS[0] - timedelta(days=3))
    assert checkpoints.make(books, MONTH_ENDS[1]) == 2  # custody and investors
    assert checkpoints.latest(books) == MONTH_ENDS[1]
    with pytest.raises(InvalidEntry, match="time order"):
        checkpoints.make(books, MONTH_ENDS[0])
    with pytest.raises(InvalidEntry, match="past time"):
        checkpoints.make(books, NOW + timedelta(days=1))
    with pytest.raises(InvalidEntry, match="time zone"):
        checkpoints.make(books, MONTH_ENDS[2].replace(tzinfo=None))
    for statement in ("INSERT INTO ledger_checkpoint (at) VALUES ('2020-01-31')",
                      "UPDATE ledger_checkpoint_balance SET balance_minor = balance_minor + 1",
                      "DELETE FROM ledger_checkpoint_balance",
                      "TRUNCATE ledger_checkpoint_balance",
                      "UPDATE ledger_checkpoint_latest SET at = NULL",
                      "INSERT INTO ledger_checkpoint_balance VALUES ('2020-01-31', 1, 5)"):
        with pytest.raises(sa.exc.DBAPIError, match="checkpoints are derived from postings"), books.engine.begin() as c:
            c.exec_driver_sql(statement)
    with books.engine.connect() as c:
        c.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(sa.exc.DBAPIError, match="READ COMMITTED"):
            c.execute(sa.text("SELECT ledger_checkpoint_make(:at)"), {"at": MONTH_ENDS[2]})
        c.rollback()
    # Damage done on purpose (with the maker's mark set by hand) is what verify finds.
    with books.engine.begin() as c:
        c.exec_driver_sql("SET LOCAL invledger.making_checkpoint = 'yes'")
        c.exec_driver_sql("UPDATE ledger_checkpoint_balance SET balance_minor = balance_minor + 1 "
                          "WHERE ledger_account_id = (SELECT min(ledger_account_id) FROM ledger_checkpoint_balance)")
    report = verify(books.engine)
    assert not report.ok and report.checks["checkpoints_match"] == 1
    assert "stored" in report.findings[0].detail and "recomputed" in report.findings[0].detail


def test_a_repeatable_read_writer_cannot_miss_a_checkpoint(books: Ledger) -> None:
    """A writer whose snapshot predates a checkpoint and books into it fails (serialization), is not lost."""
    account_id = _open(books, "rr")
    _trade(books, account_id, "rr:1", 500, MONTH_ENDS[0] - timedelta(days=3))
    custody, investors = (books.resolve([f"{k}:{account_id}"])[f"{k}:{account_id}"].id
                          for k in ("assets:custody", "liabilities:investors"))
    with books.engine.connect() as writer:
        writer.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        writer.exec_driver_sql("SELECT 1").all()  # the snapshot is taken here
        checkpoints.make(books, MONTH_ENDS[0])
        entry = writer.execute(sa.text("""
            INSERT INTO journal_entry (idempotency_key, content_hash, kind, investment_account_id, effective_at)
            VALUES ('rr:late', decode(repeat('ab', 32), 'hex'), 'trade', :a, :at) RETURNING id"""),
            {"a": account_id, "at": MONTH_ENDS[0] - timedelta(days=1)}).scalar_one()
        with pytest.raises(sa.exc.OperationalError) as raised:
            writer.execute(sa.text("""
                INSERT INTO posting (ledger_account_id, entry_id, side, amount_minor, currency)
                VALUES (:c, :e, 'D', 70, 'USD'), (:i, :e, 'C', 70, 'USD')"""),
                {"c": custody, "i": investors, "e": entry})
        assert isinstance(raised.value.orig, psycopg.errors.SerializationFailure)
        writer.rollback()
    _trade(books, account_id, "rr:late", 70, MONTH_ENDS[0] - timedelta(days=1))  # retried: now it counts
    with books.engine.connect() as c:
        assert c.execute(sa.text("SELECT balance_minor FROM ledger_checkpoint_balance WHERE ledger_account_id = :i"),
                         {"i": investors}).scalar_one() == -570
    assert verify(books.engine).ok


def test_reports_as_of_a_past_time_are_the_same_with_checkpoints(books: Ledger) -> None:
    from readside import reports
    from tests.readside.support import whole_trial_balance

    ids = [_open(books, f"rp-{i}") for i in range(3)]
    for i, account_id in enumerate(ids):
        for day in range(0, 150, 11):
            _trade(books, account_id, f"{account_id}:{day}", (day % 7 - 3) * 10 + i + 1,
                   SPAN_START + timedelta(days=day, hours=i))
    past = [MONTH_ENDS[1] - timedelta(days=5), MONTH_ENDS[2], MONTH_ENDS[3] + timedelta(days=4)]

    def read(t: datetime) -> tuple:
        return reports.trial_balance(books.engine, t), reports.balance_sheet(books.engine, t), \
            whole_trial_balance(books.engine, t).rows

    before = {t: read(t) for t in past}  # no checkpoint yet: every account probed
    assert before[past[1]][0].rows and before[past[1]][0].balanced
    checkpoints.make_due(books)
    assert checkpoints.latest(books) == MONTH_ENDS[-1]
    for t in past:
        assert read(t) == before[t]
