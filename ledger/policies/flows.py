"""What counts as a flow — money the investor moved in or out — as opposed to a return. Declared here once.

Every rule that separates the two takes it from here: the performance fee (a flow moves the high-water mark,
it is never profit: `ledger.policies.fee`, read by `ledger.distribution`) and the performance report (a flow
is not a return: `readside.reports.performance`).

- deposits, withdrawals and transfers are flows;
- trades, true-ups and adjustments are returns: what the engine's trading made or lost;
- a fee is not a flow: it is the cost of the performance, a negative return on the day it is charged (the
  report is net of fees); it is effective at its month's last instant, so no later month counts it either way;
- a reversal is what it reverses: reversing a deposit is a flow out, reversing a trade is a loss;
- **except a fee's reversal, which is a flow** (decided in issue 19; before, the fee counted it as a flow and
  the report as a gain): a refunded fee is money the platform gives back, not something the trading earned.
  Counted as profit, the next distribution would charge a fee on the refund (it lifts the balance above the mark
  the refunded fee set: the investor pays rate × fee back), and the report would show a gain on the day of the
  refund, which can be months after the fee. As a flow it lifts the mark by what it gives back — the mark is
  then where it would have been without the fee — and the report shows it as money in.
"""

from __future__ import annotations

from typing import Final

from ledger.model import EntryKind

FLOW_KINDS: Final[frozenset[str]] = frozenset({"deposit", "withdrawal", "transfer"})
# A reversal of one of these is a flow (the reversal of a fee too: see the module docstring).
REVERSED_FLOW_KINDS: Final[frozenset[str]] = FLOW_KINDS | {"fee"}


def is_flow(kind: EntryKind, reversed_kind: EntryKind | None = None) -> bool:
    """Whether an entry of `kind` (a reversal: of an entry of `reversed_kind`) is a flow, not a return."""
    if kind == "reversal":
        return reversed_kind in REVERSED_FLOW_KINDS
    return kind in FLOW_KINDS


def _sql_list(kinds: frozenset[str]) -> str:
    return ", ".join(f"'{kind}'" for kind in sorted(kinds))


def flow_sql(entry: str, reversed_entry: str) -> str:
    """`is_flow` in SQL: true when the journal entry aliased `entry` is a flow, `reversed_entry` being the entry it
    reverses (LEFT JOINed on `entry.reverses_entry_id`, so NULL for anything but a reversal)."""
    return (f"({entry}.kind IN ({_sql_list(FLOW_KINDS)})"
            f" OR {reversed_entry}.kind IN ({_sql_list(REVERSED_FLOW_KINDS)}))")
