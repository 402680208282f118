"""The core's values: frozen, validated on construction where it is cheap, no database types."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec

from ledger.money import Money

# An investment account's fields as the database's CHECKs on investment_account have them (migration 0001). The
# API's and the engine's schemas take them from here; tests/ledger/test_limits.py holds them to the live CHECKs.
ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PRODUCT_ID_LENGTH_MAX = 128
AGENT_TYPE_LENGTH_MAX = 64
# A journal entry's fields, as the CHECKs on journal_entry have them (migration 0001): the core refuses longer ones
# before the write (ledger.posting), the API and the engine's events take them from here.
IDEMPOTENCY_KEY_LENGTH_MAX = 255
MEMO_LENGTH_MAX = 1000

Side = Literal["D", "C"]
AccountStatus = Literal["active", "paused", "closed"]
ACCOUNT_STATUSES: tuple[str, ...] = AccountStatus.__args__
EntryKind = Literal["deposit", "withdrawal", "trade", "true_up", "adjustment", "fee", "reversal", "transfer"]
AccountType = Literal["asset", "liability", "equity", "income", "expense"]


class LedgerAccount(msgspec.Struct, frozen=True):
    """A ledger account's identity: once committed, its id, name, type and currency never change (so it is cached)."""

    id: int
    name: str
    type: AccountType
    currency: str


class Leg(msgspec.Struct, frozen=True, kw_only=True):
    """One side of an entry: `amount` (positive) debited or credited to the ledger account `account`."""

    account: str
    side: Side
    amount: Money


class EntryDraft(msgspec.Struct, frozen=True, kw_only=True):
    """What a caller asks the ledger to book.

    Guarantees once posted: immutable; exactly one entry per `idempotency_key`; posting the same
    draft again returns that entry; another draft under the same key is a `DuplicateConflict`.
    `effective_at` None means "now", and then it is not part of the content compared on replay.
    `no_overdraft` names ledger accounts whose normal balance must not go below zero by this entry.
    """

    kind: EntryKind
    idempotency_key: str
    legs: tuple[Leg, ...]
    investment_account_id: str | None = None
    effective_at: datetime | None = None
    memo: str = ""
    metadata: dict[str, Any] = {}
    reverses_entry_id: int | None = None
    no_overdraft: tuple[str, ...] = ()


class Posted(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a post: the entry, whether it was a replay, and the balances right after it."""

    entry_id: int
    replayed: bool
    effective_at: datetime
    recorded_at: datetime
    balances_after: dict[str, Money]


class PostingView(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    side: Side
    amount: Money
    seq: int
    balance_after: Money


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    idempotency_key: str
    kind: EntryKind
    investment_account_id: str | None
    effective_at: datetime
    recorded_at: datetime
    memo: str
    metadata: dict[str, Any]
    reverses_entry_id: int | None
    reversed_by_entry_id: int | None
    postings: tuple[PostingView, ...]
    recorded_by: str = ""  # who booked it (ledger.principal.acting_as): an API key, the engine, a job, the CLI


class AccountSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An investment account to open. `initial_capital`, when given, is booked as the first deposit."""

    account_id: str
    product_id: str
    agent_type: str
    currency: str
    fee_rate: Decimal
    initial_capital: Money | None = None
    agent_config: dict[str, Any] = {}


class InvestmentAccount(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    product_id: str
    agent_type: str
    currency: str
    fee_rate: Decimal
    status: AccountStatus
    agent_config: dict[str, Any]
    balance: Money
    created_at: datetime
    updated_at: datetime


class StatementLine(msgspec.Struct, frozen=True, kw_only=True):
    entry_id: int
    seq: int
    effective_at: datetime
    recorded_at: datetime
    kind: EntryKind
    memo: str
    side: Side
    amount: Money
    balance: Money  # running balance (normal sign) after this line, in effective-time order
    recorded_by: str = ""  # who booked the entry


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    currency: str
    start: datetime | None
    end: datetime
    opening_balance: Money
    lines: tuple[StatementLine, ...]
    closing_balance: Money  # of this page: the running balance after its last line
    next_cursor: str | None
