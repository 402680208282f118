"""The chart of accounts (contract §4): names, types and normal sides.

Per investment account A: `assets:custody:A` and `liabilities:investors:A`, in A's currency.
Platform-wide, one per currency C: `income:performance-fees:C`, `assets:platform-cash:C`,
`liabilities:suspense:C`.
"""

from __future__ import annotations

from typing import Final

from ledger.model import AccountType

TYPE_OF_ROOT: Final[dict[str, AccountType]] = {
    "assets": "asset", "liabilities": "liability", "equity": "equity", "income": "income",
    "expenses": "expense",
}
DEBIT_NORMAL: Final = frozenset({"asset", "expense"})


def custody(account_id: str) -> str:
    return f"assets:custody:{account_id}"


def investors(account_id: str) -> str:
    return f"liabilities:investors:{account_id}"


def performance_fees(currency: str) -> str:
    return f"income:performance-fees:{currency}"


def platform_cash(currency: str) -> str:
    return f"assets:platform-cash:{currency}"


def suspense(currency: str) -> str:
    return f"liabilities:suspense:{currency}"


def type_of(name: str) -> AccountType:
    return TYPE_OF_ROOT[name.split(":", 1)[0]]


def normal_sign(account_type: str) -> int:
    """+1 where a balance is a net debit (assets, expenses), −1 where it is a net credit."""
    return 1 if account_type in DEBIT_NORMAL else -1


def accounts_for(account_id: str, currency: str) -> tuple[tuple[str, AccountType, str | None], ...]:
    """Every ledger account an investment account needs: (name, type, owning investment account)."""
    return (
        (custody(account_id), "asset", account_id),
        (investors(account_id), "liability", account_id),
        (performance_fees(currency), "income", None),
        (platform_cash(currency), "asset", None),
        (suspense(currency), "liability", None),
    )
