"""The chart of accounts (contract §4): names, types and normal sides — the one place a name is spelled.

Per investment account A: `assets:custody:A` and `liabilities:investors:A`, in A's currency.
Platform-wide, one per currency C: `income:performance-fees:C`, `assets:platform-cash:C`,
`liabilities:suspense:C`. SQL that joins an investment account to its ledger accounts builds the name with
`custody_sql` / `investors_sql`, never by spelling the prefix.
"""

from __future__ import annotations

from typing import Final

from ledger.model import AccountType, LedgerAccount
from ledger.money import Money

TYPE_OF_ROOT: Final[dict[str, AccountType]] = {
    "assets": "asset", "liabilities": "liability", "equity": "equity", "income": "income",
    "expenses": "expense",
}
DEBIT_NORMAL: Final = frozenset({"asset", "expense"})
# A ledger account's name, as the CHECK on ledger_account.name has it (migration 0001; tests/ledger/test_limits.py
# holds the two equal): a root, a group, and an owner (an investment account id or a currency).
LEDGER_ACCOUNT_PATTERN: Final = rf"^({'|'.join(TYPE_OF_ROOT)}):[a-z-]+(:[A-Za-z0-9_.-]+)?$"
CUSTODY_PREFIX: Final = "assets:custody:"
INVESTORS_PREFIX: Final = "liabilities:investors:"


def custody(account_id: str) -> str:
    return CUSTODY_PREFIX + account_id


def investors(account_id: str) -> str:
    """What the platform owes A's investor: A's balance."""
    return INVESTORS_PREFIX + account_id


def is_investors(name: str) -> bool:
    return name.startswith(INVESTORS_PREFIX)


def custody_sql(account_id_sql: str) -> str:
    """SQL for the name of the custody account of the investment account id `account_id_sql` (an SQL expression)."""
    return f"'{CUSTODY_PREFIX}' || {account_id_sql}"


def investors_sql(account_id_sql: str) -> str:
    """SQL for the name of the investors account of the investment account id `account_id_sql` (an SQL expression)."""
    return f"'{INVESTORS_PREFIX}' || {account_id_sql}"


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


def normal_balance(balance_minor: int, account: LedgerAccount) -> Money:
    """A stored balance (debits minus credits) as the account's normal side sees it."""
    return Money(minor=balance_minor * normal_sign(account.type), currency=account.currency)


def accounts_for(account_id: str, currency: str) -> tuple[tuple[str, AccountType, str | None], ...]:
    """Every ledger account an investment account needs: (name, type, owning investment account)."""
    return (
        (custody(account_id), "asset", account_id),
        (investors(account_id), "liability", account_id),
        (performance_fees(currency), "income", None),
        (platform_cash(currency), "asset", None),
        (suspense(currency), "liability", None),
    )
