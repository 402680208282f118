"""The core's read side: statement pages add up to the whole statement, the trial balance as of any time
is the as-of balances, and verify finds nothing on sound books but does find each kind of damage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import AccountSpec, Ledger, Money, chain, rules
from ledger import verify as verify_module
from ledger.model import Statement
from ledger.verify import verify
from tests import strategies as s

ONE_MICROSECOND = timedelta(microseconds=1)
DB_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _open(ledger: Ledger, currency: str = "USD", initial_minor: int | None = 100_000) -> str:
    account_id = f"rc-{uuid.uuid4().hex[:12]}"
    ledger.open_account(AccountSpec(
        account_id=account_id, product_id="prod-rc", agent_type="swing", currency=currency, fee_rate=Decimal("0.1"),
        initial_capital=Money(minor=initial_minor, currency=currency) if initial_minor else None))
    return account_id


def _history(ledger: Ledger, account_id: str, currency: str, changes: list[tuple[int, datetime]]) -> None:
    """Book signed changes at their effective times, in the given (recording) order."""
    for i, (minor, at) in enumerate(changes):
        ledger.post(rules.gain_or_loss("trade", account_id, Money(minor=minor, currency=currency),
                                       idempotency_key=f"{account_id}:h{i}", effective_at=at))


def _pages(ledger: Ledger, name: str, limit: int, **window: Any) -> Iterator[Statement]:
    cursor = None
    for _ in range(10_000):
        page = ledger.statement(name, cursor=cursor, limit=limit, **window)
        yield page
        cursor = page.next_cursor
        if cursor is None:
            return
    pytest.fail("the cursor never ran out")


def _line_tuples(statement: Statement) -> list[tuple[Any, ...]]:
    return [(line.entry_id, line.seq, line.effective_at, line.side, line.amount, line.balance)
            for line in statement.lines]


_NOW = datetime.now(UTC)  # fixed for the session: a strategy's bounds must not move between examples


@st.composite
def histories(draw: st.DrawFn) -> tuple[str, list[tuple[int, datetime]]]:
    """A currency and 1–25 signed changes at times from a small pool (so effective times tie) in any
    recording order (so postings are late)."""
    currency = draw(s.ledger_currencies())
    pool = draw(st.lists(s.past_times(_NOW, timedelta(days=5)), min_size=1, max_size=6, unique=True))
    changes = draw(st.lists(st.tuples(s.signed_changes(currency), st.sampled_from(pool)), min_size=1, max_size=25))
    return currency, changes


# -------------------------------------------------------------------------------- statements

@DB_SETTINGS
@given(history=histories(), limit=st.integers(min_value=1, max_value=6), data=st.data())
def test_statement_pages_are_the_whole_statement(ledger: Ledger, history: tuple[str, list[Any]], limit: int,
                                                 data: st.DataObject) -> None:
    currency, changes = history
    account_id = _open(ledger, currency)
    _history(ledger, account_id, currency, changes)
    times = sorted({at for _, at in changes})
    windows = [{}, {"start": data.draw(st.sampled_from(times)), "end": data.draw(st.sampled_from(times))},
               {"start": times[0] - timedelta(days=1)}, {"end": times[-1] - ONE_MICROSECOND}]
    for name in (f"liabilities:investors:{account_id}", f"assets:custody:{account_id}"):
        for window in windows:
            whole = ledger.statement(name, limit=1000, **window)
            assert whole.next_cursor is None
            pages = list(_pages(ledger, name, limit, **window))
            assert all(len(page.lines) <= limit for page in pages)
            assert [t for page in pages for t in _line_tuples(page)] == _line_tuples(whole)
            assert pages[0].opening_balance == whole.opening_balance
            for previous, page in pairwise(pages):
                assert page.opening_balance == previous.closing_balance
            assert pages[-1].closing_balance == whole.closing_balance
            running = whole.opening_balance.minor
            sign = 1 if name.startswith("assets:") else -1
            for line in whole.lines:
                running += sign * (line.amount.minor if line.side == "D" else -line.amount.minor)
                assert line.balance.minor == running
            keys = [(line.effective_at, line.seq) for line in whole.lines]
            assert keys == sorted(keys)
            if "start" in window:
                start = window["start"]
                assert whole.opening_balance == ledger.ledger_account_balance(name, as_of=start - ONE_MICROSECOND)
            if "end" in window and window.get("start", window["end"]) <= window["end"]:
                assert whole.closing_balance == ledger.ledger_account_balance(name, as_of=window["end"])


def test_statement_cursor_inside_a_tie(ledger: Ledger) -> None:
    """Five postings at one effective time, paged two at a time: the cursor must split the tie exactly."""
    account_id = _open(ledger, initial_minor=None)
    at = datetime.now(UTC) - timedelta(hours=1)
    _history(ledger, account_id, "USD", [(100 * (i + 1), at) for i in range(5)])
    pages = list(_pages(ledger, f"liabilities:investors:{account_id}", 2))
    assert [[str(line.balance) for line in page.lines] for page in pages] == [
        ["1.00", "3.00"], ["6.00", "10.00"], ["15.00"]]
    assert [str(page.opening_balance) for page in pages] == ["0.00", "3.00", "10.00"]


def test_a_statement_to_now_holds_only_lines_up_to_now(ledger: Ledger) -> None:
    """An entry may be effective up to EFFECTIVE_SKEW_MAX (5 min) ahead, for clock skew. A statement
    without `end` says it ends now, so it may not list that entry, and its closing balance must be the
    as-of balance at its end. Today the open-ended query lists it: closing 101.00 but end = now,
    balance(as_of=end) = 100.00, and the line's effective time is after the statement's end."""
    account_id = _open(ledger, initial_minor=10_000)
    ahead = datetime.now(UTC) + timedelta(minutes=2)
    _history(ledger, account_id, "USD", [(100, ahead)])
    statement = ledger.statement(f"liabilities:investors:{account_id}")
    assert all(line.effective_at <= statement.end for line in statement.lines)
    assert statement.closing_balance == ledger.balance(account_id, as_of=statement.end)


# ------------------------------------------------------------------------------------ verify

def test_verify_finds_nothing_on_healthy_books(ledger: Ledger, engine: sa.Engine) -> None:
    account_id = _open(ledger)
    ledger.withdraw(account_id, "100.00", idempotency_key=f"{account_id}:w")
    entry = ledger.deposit(account_id, "5.00", idempotency_key=f"{account_id}:d")
    ledger.reverse(entry.entry_id, reason="healthy")
    report = verify(engine)
    assert report.ok, report.findings
    assert report.findings == [] and set(report.checks) == {c.__name__ for c in verify_module.CHECKS} | {
        "hash_chains_and_anchors"}
    assert all(n == 0 for n in report.checks.values())
    with engine.connect() as connection:
        entries = connection.execute(sa.text("SELECT count(*) FROM journal_entry")).scalar_one()
    assert report.counts["entries"] == entries > 0


def _damage_cases() -> list[tuple[str, str, set[str]]]:
    """(what, SQL on entry :entry / account :account, checks that must notice)."""
    return [
        ("cached balance off", "UPDATE ledger_account SET balance_minor = balance_minor + 1 WHERE id = :account",
         {"cached_balances_match", "books_balance", "custody_equals_investors"}),
        ("posting amount edited", "UPDATE posting SET amount_minor = amount_minor + 1 "
         "WHERE entry_id = :entry AND ledger_account_id = :account",
         {"entries_balance", "cached_balances_match", "running_balances_match", "hash_chains_and_anchors"}),
        ("a leg deleted", "DELETE FROM posting WHERE entry_id = :entry AND ledger_account_id = :account",
         {"entries_have_two_legs", "entries_balance", "cached_balances_match", "running_balances_match",
          "hash_chains_and_anchors"}),
        ("late flag flipped",
         "UPDATE posting SET late = NOT late WHERE entry_id = :entry AND ledger_account_id = :account",
         {"running_balances_match", "hash_chains_and_anchors"}),
        ("running balance edited", "UPDATE posting SET balance_after_minor = balance_after_minor + 7 "
         "WHERE entry_id = :entry AND ledger_account_id = :account",
         {"running_balances_match", "hash_chains_and_anchors"}),  # the as-of check samples only the 50 busiest accounts
        ("as-of lateness bound lowered", "UPDATE ledger_account SET max_lateness_us = max_lateness_us + 5 "
         "WHERE id = :account", {"lateness_bounds_match"}),
        ("posting moved in time", "UPDATE posting SET effective_at = effective_at - interval '1 day' "
         "WHERE entry_id = :entry AND ledger_account_id = :account", {"no_orphan_legs", "hash_chains_and_anchors"}),
        ("reversal no longer a mirror", "UPDATE posting SET amount_minor = amount_minor + 1 "
         "WHERE entry_id = (SELECT id FROM journal_entry WHERE reverses_entry_id = :entry)",
         {"reversals_mirror", "hash_chains_and_anchors"}),
    ]


@pytest.mark.parametrize(("what", "sql", "noticed_by"), _damage_cases(), ids=[c[0] for c in _damage_cases()])
def test_verify_notices_damage(ledger: Ledger, engine: sa.Engine, what: str, sql: str, noticed_by: set[str]) -> None:
    """Verify must be able to fail: damage the books with the guards switched off (superuser only,
    `session_replication_role = replica`), run every check inside that transaction, roll back."""
    account_id = _open(ledger)
    ledger.deposit(account_id, "10.00", idempotency_key=f"{account_id}:d1")
    entry = ledger.deposit(account_id, "20.00", idempotency_key=f"{account_id}:d2")
    ledger.reverse(entry.entry_id, reason="to mirror")
    custody = ledger.resolve([f"assets:custody:{account_id}"])[f"assets:custody:{account_id}"]
    with engine.connect() as connection:
        if not connection.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar():
            pytest.skip("needs a superuser to switch the guards off")
        try:
            connection.execute(sa.text("SET LOCAL session_replication_role = replica"))
            connection.execute(sa.text(sql), {"entry": entry.entry_id, "account": custody.id})
            found = {check.__name__: check(connection) for check in verify_module.CHECKS}
            found["hash_chains_and_anchors"] = chain.check(connection).findings
        finally:
            connection.rollback()
    noticed = {name for name, findings in found.items() if findings}
    assert noticed_by <= noticed, (what, found)
    assert verify(engine).ok  # and the damage is gone again
