"""The statement's figures as a pure function (ledger.statements.compute), property-tested: whatever the postings,
the summary adds up, the lines' running balance ends at the closing balance, each day's balance is the running
balance at its end, and the month's returns are those of the same days taken alone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.statements import DistributionFigures, StatementInputs, StatementPosting, compute, figures_out

MONTH = date(2026, 6, 1)
KINDS = ("deposit", "withdrawal", "trade", "true_up", "adjustment", "fee", "transfer")


@st.composite
def postings(draw) -> tuple[int, tuple[StatementPosting, ...]]:
    opening = draw(st.integers(min_value=0, max_value=10**9))
    n = draw(st.integers(min_value=0, max_value=60))
    made = []
    for seq in range(n):
        kind = draw(st.sampled_from(KINDS + ("reversal",)))
        reversed_kind = draw(st.sampled_from(KINDS)) if kind == "reversal" else None
        day = draw(st.integers(min_value=0, max_value=180))  # 1 January .. the end of June
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day, seconds=draw(st.integers(0, 86_399)))
        amount = draw(st.integers(min_value=-10**7, max_value=10**7).filter(bool))
        made.append((at, seq, kind, reversed_kind, amount))
    made.sort()
    return opening, tuple(StatementPosting(effective_at=at, seq=seq, entry_id=1000 + seq, kind=kind,
                                           reversed_kind=reversed_kind, memo=f"{kind} {seq}", amount_minor=amount)
                          for at, seq, kind, reversed_kind, amount in made)


@settings(max_examples=200, deadline=None)
@given(postings(), st.integers(min_value=0, max_value=10**9))
def test_the_figures_add_up_whatever_the_postings(made: tuple[int, tuple[StatementPosting, ...]], held: int) -> None:
    opening, posted = made
    inputs = StatementInputs(account_id="acc-1", currency="USD", month=MONTH, year_opening_minor=opening,
                             postings=posted, distribution=DistributionFigures(
                                 rate=Decimal("0.2"), opening_hwm_minor=0, adjusted_hwm_minor=0, computed_fee_minor=0,
                                 fee_minor=0, new_hwm_minor=0), held_at_close_minor=held)
    f = compute(inputs)
    assert (f.held_at_close.minor, f.available_at_close.minor) == (held, f.closing_balance.minor - held)
    # Each format shows its own figures: the first release's lack what format 2 added, and nothing else differs.
    first, second = figures_out(f, 1), figures_out(f)
    assert set(second) - set(first) == {"held_at_close", "available_at_close"}
    assert {k: v for k, v in second.items() if k in first} == first
    in_month = [p for p in posted if p.effective_at >= datetime(2026, 6, 1, tzinfo=UTC)]
    assert f.opening_balance.minor == opening + sum(p.amount_minor for p in posted) - sum(
        p.amount_minor for p in in_month)
    summary = (f.deposits, f.withdrawals, f.realised_trading_result, f.mark_to_market_true_ups, f.adjustments,
               f.performance_fee)
    assert f.opening_balance.minor + sum(m.minor for m in summary) == f.closing_balance.minor
    assert [line.entry_id for line in f.lines] == [p.entry_id for p in in_month]
    running = f.opening_balance.minor
    for line in f.lines:
        running += line.amount.minor
        assert line.balance.minor == running
    assert running == f.closing_balance.minor == f.daily_balances[-1].balance.minor
    assert [d.date for d in f.daily_balances] == [date(2026, 6, d) for d in range(1, 31)]
    for d in f.daily_balances:
        assert d.balance.minor == f.opening_balance.minor + sum(
            p.amount_minor for p in in_month if p.effective_at.date() <= d.date)
    assert f.trades_closed == sum(p.kind == "trade" for p in in_month)
    # The month's returns depend on the month's days alone: only June's postings, from June's opening, give them again.
    june = StatementInputs(account_id="acc-1", currency="USD", month=date(2026, 6, 1),
                           year_opening_minor=f.opening_balance.minor, postings=tuple(in_month), distribution=None)
    again = compute(june)
    assert (again.time_weighted_return_month, again.max_drawdown_month) == (f.time_weighted_return_month,
                                                                            f.max_drawdown_month)
    assert figures_out(f)["closing_balance"] == str(f.closing_balance)

