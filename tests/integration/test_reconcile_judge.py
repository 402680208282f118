"""`reconcile.judge`, the pure rule of one account's result: in-flight notifications explain a difference and never
turn agreement into a break (issue 16, item 4)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from integration.engine_api import AccountStatus
from integration.reconcile import LedgerSide, judge

NONE = Decimal(0)


def side(balance_minor: int, *changes: int, status: str = "active", status_in_flight: bool = False) -> LedgerSide:
    return LedgerSide(account_id="A", currency="USD", balance_minor=balance_minor, status=status,
                      in_flight_changes_minor=changes, status_in_flight=status_in_flight)


def engine(balance: str, status: str = "active") -> AccountStatus:
    return AccountStatus(account_id="A", status=status, balance=Decimal(balance))


def test_equal_balances_with_the_initial_capital_still_in_the_outbox_match() -> None:
    """The case found by using it: ledger 1000.00, engine 1000.00, the 1000.00 notification not yet marked."""
    line = judge(side(100_000, 100_000), engine("1000.00"), NONE)
    assert line.result == "matched", line.detail
    assert line.difference == 0 and line.in_flight == Decimal("1000.00")
    assert "already shows them" in line.detail


def test_the_engine_not_told_yet_matches_and_says_what_it_has_to_apply() -> None:
    line = judge(side(125_000, 25_000), engine("1000.00"), NONE)
    assert line.result == "matched"
    assert "yet to apply 250.00" in line.detail


def test_the_engine_having_applied_the_older_of_two_changes_matches() -> None:
    ledger = side(100_000 + 20_000 - 5_000, 20_000, -5_000)  # a deposit of 200, then a withdrawal of 50
    assert judge(ledger, engine("1200.00"), NONE).result == "matched"  # applied the deposit only
    assert judge(ledger, engine("1000.00"), NONE).result == "matched"  # applied neither
    assert judge(ledger, engine("1150.00"), NONE).result == "matched"  # applied both
    # Only the withdrawal applied is not an order the engine can have seen: a break, naming both readings.
    line = judge(ledger, engine("950.00"), NONE)
    assert line.result == "break"
    assert "engine − ledger = -200.00" in line.detail and "engine − (ledger − in flight) = -50.00" in line.detail


def test_open_holds_are_named_and_never_subtracted() -> None:
    """A hold reserves without moving the balance, and the engine's capital moves when the hold posts."""
    held = LedgerSide(account_id="A", currency="USD", balance_minor=100_000, status="active", held_minor=25_000,
                      open_holds=1)
    line = judge(held, engine("1000.00"), NONE)
    assert line.result == "matched" and "250.00 held by 1 open withdrawal hold" in line.detail
    assert judge(held, engine("750.00"), NONE).result == "break"


def test_a_break_without_anything_in_flight_names_one_reading() -> None:
    line = judge(side(100_000), engine("999.99"), NONE)
    assert line.result == "break" and line.detail == "engine − ledger = -0.01; tolerance 0"
    assert judge(side(100_000), engine("999.99"), Decimal("0.01")).result == "matched"


def test_statuses_in_flight_never_make_a_mismatch_of_agreement() -> None:
    assert judge(side(100_000, status="paused", status_in_flight=True), engine("1000.00", "paused"),
                 NONE).result == "matched"
    assert judge(side(100_000, status="paused", status_in_flight=True), engine("1000.00", "active"),
                 NONE).result == "matched"
    assert judge(side(100_000, status="paused"), engine("1000.00", "active"), NONE).result == "status_mismatch"


@given(balance=st.integers(0, 10**12), changes=st.lists(st.integers(-10**9, 10**9).filter(bool), max_size=6),
       data=st.data())
def test_any_applied_prefix_matches_and_anything_else_breaks(balance: int, changes: list[int], data) -> None:
    applied = data.draw(st.integers(0, len(changes)), label="changes the engine applied")
    engine_minor = balance - sum(changes[applied:])
    line = judge(side(balance, *changes), engine(str(Decimal(engine_minor).scaleb(-2))), NONE)
    assert line.result == "matched", line.detail
    assert line.difference == Decimal(engine_minor - balance).scaleb(-2)
    off = data.draw(st.integers(-10**6, 10**6).filter(
        lambda d: all(engine_minor + d != balance - sum(changes[k:]) for k in range(len(changes) + 1))), label="off")
    assert judge(side(balance, *changes), engine(str(Decimal(engine_minor + off).scaleb(-2))), NONE).result == "break"
