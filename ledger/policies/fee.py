"""The monthly performance fee with a high-water mark (contract §4), for investment account A and UTC month M.

All in A's minor units (balances are liabilities:investors:A):
- opening O   = A's balance at the end of the previous month (after that month's fee);
- flows F     = money the investor moved in or out, effective in M (`ledger.policies.flows`);
- closing C   = A's balance at the end of M, before M's fee;
- profit P    = C − O − F (the month's result, recorded for the reader);
- HWM         = the mark after the previous month's distribution; for A's first, the net capital A contributed
                before M, at least 0;
- adjusted H' = HWM + F: a deposit raises the mark by what it brings, a withdrawal lowers it by what it takes, so
                moving money is never charged as profit nor forgiven as a loss;
- fee         = rate × max(0, C − H'), rounded half-even to the currency's scale (the one rounding);
- charged     = the fee capped at A's balance when it is booked (a fee never overdraws; the computed fee is kept);
- new HWM     = max(H', C − fee): the mark rises only to the balance after a charged fee, and never falls but by
                a withdrawal.
The fee entry: Dr investors:A / Cr income:performance-fees and Dr platform-cash / Cr custody:A, effective at the
month's last instant (the fee belongs to M), under the key `fee:A:YYYY-MM` — one per account and month.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from ledger import rules
from ledger.errors import InvalidEntry
from ledger.model import EntryDraft
from ledger.money import Money


class FeeInputs(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the fee depends on, in minor units of `currency`."""

    currency: str
    opening_balance_minor: int
    closing_balance_minor: int
    net_flows_minor: int
    opening_hwm_minor: int
    rate: Decimal


class FeeComputation(msgspec.Struct, frozen=True, kw_only=True):
    profit_minor: int
    adjusted_hwm_minor: int
    computed_fee_minor: int
    new_hwm_minor: int


def compute_fee(inputs: FeeInputs) -> FeeComputation:
    """The fee and the new mark (see the module docstring); the cap at the balance is `charged_fee_minor`."""
    if not (inputs.rate.is_finite() and Decimal(0) <= inputs.rate <= Decimal(1)):
        raise InvalidEntry(f"fee rate {inputs.rate} must be from 0 to 1")
    closing = inputs.closing_balance_minor
    adjusted = inputs.opening_hwm_minor + inputs.net_flows_minor
    above = max(0, closing - adjusted)
    fee = Money.from_decimal_rounded(inputs.rate * Money(minor=above, currency=inputs.currency).to_decimal(),
                                     inputs.currency).minor
    return FeeComputation(
        profit_minor=closing - inputs.opening_balance_minor - inputs.net_flows_minor,
        adjusted_hwm_minor=adjusted, computed_fee_minor=fee, new_hwm_minor=max(adjusted, closing - fee))


def charged_fee_minor(computed_fee_minor: int, balance_minor: int) -> int:
    """The fee booked: the computed fee, but never more than A's balance (a fee never overdraws)."""
    return min(computed_fee_minor, max(0, balance_minor))


def fee_entry(account_id: str, fee: Money, *, month: str, rate: Decimal, effective_at: datetime,
              inputs: dict[str, str]) -> EntryDraft:
    """The fee's entry for `month` (YYYY-MM), with every input of the computation in its metadata."""
    return rules.performance_fee(account_id, fee, idempotency_key=f"fee:{account_id}:{month}",
                                 effective_at=effective_at,
                                 memo=f"performance fee for {month} ({rate} above the high-water mark)",
                                 metadata=inputs)
