"""The performance fee with the high-water mark (ledger.policies.fee): examples by hand, and its properties —
never negative, never more than rate × the profit above the mark, the mark never falls (but by a withdrawal),
flows never count as profit, and a fee is never charged twice for the same gain."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import InvalidEntry, Money
from ledger.policies.fee import FeeInputs, charged_fee_minor, compute_fee, fee_entry
from tests.ledger.policies.support import balanced, investors_change_minor
from tests.strategies import balances_minor, currencies, fee_rates, flows_minor


def inputs(**given_values: object) -> FeeInputs:
    values: dict[str, object] = {"currency": "USD", "opening_balance_minor": 100_000, "closing_balance_minor": 100_000,
                                 "net_flows_minor": 0, "opening_hwm_minor": 100_000, "rate": Decimal("0.20")}
    return FeeInputs(**(values | given_values))  # type: ignore[arg-type]


def test_by_hand() -> None:
    # 1000.00 → 1100.00 with the mark at 1000.00: 20% of 100.00; the mark rises to the balance after the fee.
    fee = compute_fee(inputs(closing_balance_minor=110_000))
    assert (fee.profit_minor, fee.adjusted_hwm_minor, fee.computed_fee_minor, fee.new_hwm_minor) == (
        10_000, 100_000, 2_000, 108_000)
    # A deposit of 500.00 is not profit: the mark moves with it.
    fee = compute_fee(inputs(closing_balance_minor=160_000, net_flows_minor=50_000))
    assert (fee.profit_minor, fee.adjusted_hwm_minor, fee.computed_fee_minor) == (10_000, 150_000, 2_000)
    # Below the mark: no fee, the mark stays.
    fee = compute_fee(inputs(closing_balance_minor=90_000, opening_balance_minor=95_000))
    assert (fee.profit_minor, fee.computed_fee_minor, fee.new_hwm_minor) == (-5_000, 0, 100_000)
    # The one rounding, half-even to the scale: 0.5 × 0.01 = 0.005 → 0.00, 0.5 × 0.03 = 0.015 → 0.02.
    assert compute_fee(inputs(closing_balance_minor=100_001, rate=Decimal("0.5"))).computed_fee_minor == 0
    assert compute_fee(inputs(closing_balance_minor=100_003, rate=Decimal("0.5"))).computed_fee_minor == 2


@pytest.mark.parametrize("rate", ["-0.01", "1.01", "NaN", "Infinity"])
def test_a_rate_outside_0_to_1_is_refused(rate: str) -> None:
    with pytest.raises(InvalidEntry):
        compute_fee(inputs(rate=Decimal(rate)))


def test_the_fee_entry() -> None:
    end = datetime(2026, 10, 31, 23, 59, 59, 999999, tzinfo=UTC)
    draft = fee_entry("a-1", Money(minor=2_000, currency="USD"), month="2026-10", rate=Decimal("0.20"),
                      effective_at=end, inputs={"month": "2026-10"})
    assert (draft.kind, draft.idempotency_key, draft.effective_at, draft.metadata) == (
        "fee", "fee:a-1:2026-10", end, {"month": "2026-10"})
    assert balanced(draft) and investors_change_minor([draft], "a-1") == -2_000
    assert draft.no_overdraft == ("liabilities:investors:a-1",)


fee_inputs = st.builds(FeeInputs, currency=currencies(), opening_balance_minor=balances_minor(),
                       closing_balance_minor=balances_minor(), net_flows_minor=flows_minor(),
                       opening_hwm_minor=balances_minor(), rate=fee_rates())


@given(fee_inputs)
def test_never_negative_and_never_more_than_the_rate_of_the_profit_above_the_mark(given_inputs: FeeInputs) -> None:
    fee = compute_fee(given_inputs)
    above = max(0, given_inputs.closing_balance_minor - given_inputs.opening_hwm_minor - given_inputs.net_flows_minor)
    assert fee.computed_fee_minor >= 0
    assert Decimal(fee.computed_fee_minor) <= given_inputs.rate * above + Decimal("0.5")  # the one rounding
    if above == 0 or given_inputs.rate == 0:
        assert fee.computed_fee_minor == 0


@given(fee_inputs)
def test_the_mark_never_falls_but_by_a_withdrawal(given_inputs: FeeInputs) -> None:
    fee = compute_fee(given_inputs)
    assert fee.new_hwm_minor >= fee.adjusted_hwm_minor == given_inputs.opening_hwm_minor + given_inputs.net_flows_minor
    if given_inputs.net_flows_minor >= 0:
        assert fee.new_hwm_minor >= given_inputs.opening_hwm_minor


@given(fee_inputs, flows_minor())
def test_flows_never_count_as_profit(given_inputs: FeeInputs, flow: int) -> None:
    """The same month with `flow` more moved in (or out): the same profit and fee, the mark moved by the flow."""
    moved = FeeInputs(currency=given_inputs.currency, opening_balance_minor=given_inputs.opening_balance_minor,
                      closing_balance_minor=given_inputs.closing_balance_minor + flow,
                      net_flows_minor=given_inputs.net_flows_minor + flow,
                      opening_hwm_minor=given_inputs.opening_hwm_minor, rate=given_inputs.rate)
    before, after = compute_fee(given_inputs), compute_fee(moved)
    assert (after.profit_minor, after.computed_fee_minor) == (before.profit_minor, before.computed_fee_minor)
    assert after.new_hwm_minor == before.new_hwm_minor + flow


@given(fee_inputs)
def test_a_gain_is_charged_once(given_inputs: FeeInputs) -> None:
    """The next month, at the balance this one's fee left and with no flows, charges nothing."""
    fee = compute_fee(given_inputs)
    after_fee = given_inputs.closing_balance_minor - fee.computed_fee_minor
    again = compute_fee(FeeInputs(currency=given_inputs.currency, opening_balance_minor=after_fee,
                                  closing_balance_minor=after_fee, net_flows_minor=0,
                                  opening_hwm_minor=fee.new_hwm_minor, rate=given_inputs.rate))
    assert (again.computed_fee_minor, again.profit_minor, again.new_hwm_minor) == (0, 0, fee.new_hwm_minor)


@given(balances_minor(), st.integers(min_value=-10**9, max_value=10**13))
def test_the_charged_fee_never_overdraws(computed: int, balance: int) -> None:
    charged = charged_fee_minor(computed, balance)
    assert 0 <= charged <= computed and charged <= max(0, balance)
    assert charged == computed or charged == max(0, balance)
