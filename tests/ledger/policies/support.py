"""What a set of drafts does to an investor's balance, computed from their legs (not by the code under test)."""

from __future__ import annotations

from collections.abc import Iterable

from ledger.model import EntryDraft


def investors_change_minor(drafts: Iterable[EntryDraft], account_id: str) -> int:
    """The change of liabilities:investors:A (credit-normal: a credit raises what the platform owes)."""
    name = f"liabilities:investors:{account_id}"
    return sum(leg.amount.minor if leg.side == "C" else -leg.amount.minor
               for draft in drafts for leg in draft.legs if leg.account == name)


def balanced(draft: EntryDraft) -> bool:
    return sum(leg.amount.minor if leg.side == "D" else -leg.amount.minor for leg in draft.legs) == 0
