"""The accounting core: money, accounts, entries, posting rules, balances, invariants.

It knows nothing of HTTP, dramatiq or the ML Engine. Start from `ledger.book.Ledger`; the posting engine is
`ledger.posting`, investment accounts and capital `ledger.accounts`, reads `ledger.reads`.
"""

from ledger.book import Ledger, Tx
from ledger.errors import (
    AccountStateConflict,
    AlreadyReversed,
    DuplicateConflict,
    InsufficientFunds,
    IntegrityViolation,
    InvalidAmount,
    InvalidEntry,
    LedgerError,
    UnknownAccount,
    UnknownCurrency,
    UnknownEntry,
)
from ledger.model import AccountSpec, EntryDraft, Leg, Posted
from ledger.money import Money, parse_amount
from ledger.principal import acting_as

__all__ = [
    "AccountSpec", "AccountStateConflict", "AlreadyReversed", "DuplicateConflict", "EntryDraft",
    "InsufficientFunds", "IntegrityViolation", "InvalidAmount", "InvalidEntry", "Leg", "Ledger",
    "LedgerError", "Money", "Posted", "Tx", "UnknownAccount", "UnknownCurrency", "UnknownEntry",
    "acting_as", "parse_amount",
]
