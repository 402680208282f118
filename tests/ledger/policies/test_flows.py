"""What counts as a flow (ledger.policies.flows): one definition, the same in Python and in SQL, and the fee and the
performance report agree on it — a refunded fee is a flow for both (the decision of issue 19)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import get_args

import sqlalchemy as sa

from ledger import Ledger, Money, rules
from ledger.distribution import high_water_mark
from ledger.model import EntryKind
from ledger.policies.flows import flow_sql, is_flow
from readside import reports

KINDS = get_args(EntryKind)


def test_flows_are_money_the_investor_moved() -> None:
    assert [k for k in KINDS if is_flow(k)] == ["deposit", "withdrawal", "transfer"]
    assert [k for k in KINDS if k != "reversal" and is_flow("reversal", k)] == ["deposit", "withdrawal", "fee",
                                                                                   "transfer"]
    for result in ("trade", "true_up", "adjustment"):
        assert not is_flow(result) and not is_flow("reversal", result)
    assert not is_flow("fee")  # the fee is the cost of the performance: a negative return


def test_the_sql_is_the_same_rule(engine: sa.Engine) -> None:
    pairs = [(k, None) for k in KINDS if k != "reversal"] + [("reversal", k) for k in KINDS if k != "reversal"]
    with engine.connect() as c:
        for kind, reversed_kind in pairs:
            found = c.execute(sa.text(f"""
                SELECT COALESCE({flow_sql("e", "r")}, false)
                  FROM (SELECT CAST(:k AS text) AS kind) AS e
                  LEFT JOIN (SELECT CAST(:r AS text) AS kind) AS r ON :r IS NOT NULL"""),  # noqa: S608 — constants
                {"k": kind, "r": reversed_kind}).scalar_one()
            assert found is is_flow(kind, reversed_kind), (kind, reversed_kind)


def test_a_refunded_fee_is_a_flow_for_the_fee_and_for_the_report(ledger: Ledger, open_account) -> None:
    """Before issue 19 the performance report counted a fee's reversal as a gain while the fee counted it as a
    flow; now both count it as money in, so the mark and the report agree on what the investor earned."""
    account_id = open_account(None)
    today = datetime.now(UTC).date()
    two_days_ago = datetime.combine(today - timedelta(days=2), time(9), UTC)
    ledger.post(rules.deposit(account_id, Money.from_decimal("1000", "USD"), idempotency_key=f"{account_id}:in",
                              effective_at=two_days_ago))
    fee = Money.from_decimal("12.50", "USD")
    charged = ledger.post(rules.performance_fee(account_id, fee, idempotency_key=f"{account_id}:fee",
                                                effective_at=reports.end_of_day(today - timedelta(days=1)))).entry_id
    assert str(high_water_mark(ledger, account_id)) == "1000.00"  # the fee is not a flow
    ledger.reverse(charged, reason="fee charged by mistake")

    assert str(high_water_mark(ledger, account_id)) == "1012.50"  # the refund lifts the mark by what it gives back
    days = reports.performance(ledger.engine, account_id, today - timedelta(days=2), today).days
    assert [(str(d.flows), str(d.profit)) for d in days] == [
        ("1000.00", "0.00"), ("0.00", "-12.50"), ("12.50", "0.00")]  # the fee a loss, its refund money in
