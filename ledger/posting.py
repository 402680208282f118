"""The posting engine: book an entry draft (or many) in a unit of work, once per idempotency key.

The core checks a draft before the write (`validate`); the database checks the same again at commit (the balance
trigger, the hash chains, the append-only guards). Legs are inserted in ascending ledger-account id — the global
lock order — and the posting trigger stamps each with its sequence, running balance and lateness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from ledger import chart
from ledger.db import sqlstate
from ledger.errors import (
    AlreadyReversed,
    DuplicateConflict,
    InsufficientFunds,
    IntegrityViolation,
    InvalidAmount,
    InvalidEntry,
)
from ledger.model import IDEMPOTENCY_KEY_LENGTH_MAX, MEMO_LENGTH_MAX, EntryDraft, LedgerAccount, Leg, Posted
from ledger.money import Money
from ledger.principal import PRINCIPAL
from ledger.times import aware

if TYPE_CHECKING:
    from ledger.book import Tx

LEGS_MAX = 64
EFFECTIVE_SKEW_MAX = timedelta(minutes=5)
EFFECTIVE_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_json = msgspec.json.Encoder(order="deterministic")

# One entry, one call (migration 0016): locks the legs' accounts in id order, answers a replay or a no-overdraft
# refusal without writing, else inserts the entry and its legs (the posting triggers stamp and chain them).
# Sent as the driver's own statement (no SQL compilation per call); the arrays travel as array literals of ids,
# amounts, sides and currency codes — text the driver passes through, where dumping each list cost more.
_POST_ENTRY = """
SELECT entry_id, replayed, refused, content_hash, effective_at, recorded_at, ledger_account_id, balance_after_minor
  FROM ledger_post_entry(%(key)s::text, %(hash)s::bytea, %(kind)s::text, %(account_id)s::text,
                         %(effective_at)s::timestamptz, %(memo)s::text, %(metadata)s::jsonb, %(reverses)s::bigint,
                         %(by)s::text, %(accounts)s::bigint[], %(sides)s::text[], %(amounts)s::bigint[],
                         %(currencies)s::text[], %(guarded)s::bigint[], %(signs)s::int[])
"""

# Many entries at once (post_many): one call of ledger_post_entries (migration 0006) locks every leg account in id
# order, inserts the entries, stamps all their legs set-based and answers each new entry's legs. Entries and legs
# travel as JSON documents (msgspec encodes them in a fraction of what binding one array per column costs: a
# 500-item bytea array alone took 10 ms).
_POST_ENTRIES = sa.text("""
SELECT idempotency_key, entry_id, effective_at, recorded_at, ledger_account_id, balance_after_minor
  FROM ledger_post_entries(CAST(:accounts AS bigint[]), CAST(:entries AS json), CAST(:legs AS json))
""")

_EXISTING = sa.text("""
SELECT e.id, e.content_hash, e.effective_at, e.recorded_at FROM journal_entry e WHERE e.idempotency_key = :key
""")

_BALANCES_AFTER = sa.text("""
SELECT DISTINCT ON (p.ledger_account_id) p.ledger_account_id, p.balance_after_minor
  FROM posting p WHERE p.entry_id = :entry_id ORDER BY p.ledger_account_id, p.seq DESC
""")


def post(tx: Tx, draft: EntryDraft) -> Posted:
    """Book `draft` (or return the entry already booked under its key). See EntryDraft.

    One statement (`ledger_post_entry`): in autocommit it is a transaction of its own (`Ledger.post`); a refusal
    writes nothing, so inside a caller's transaction it needs no savepoint either."""
    accounts = tx.resolve([*(leg.account for leg in draft.legs), *draft.no_overdraft])
    validate(draft, accounts)
    content_hash = content_hash_of(draft)
    legs = _in_lock_order(draft, accounts)
    guarded = [accounts[name] for name in draft.no_overdraft]
    with write_errors():
        rows = tx.connection.exec_driver_sql(_POST_ENTRY, {
            "key": draft.idempotency_key, "hash": content_hash, "kind": draft.kind,
            "account_id": draft.investment_account_id, "effective_at": draft.effective_at,
            "memo": draft.memo, "metadata": _json.encode(draft.metadata).decode(),
            "reverses": draft.reverses_entry_id, "by": PRINCIPAL.get(),
            "accounts": _array(accounts[leg.account].id for leg in legs), "sides": _array(leg.side for leg in legs),
            "amounts": _array(leg.amount.minor for leg in legs),
            "currencies": _array(leg.amount.currency for leg in legs),
            "guarded": _array(account.id for account in guarded),
            "signs": _array(chart.normal_sign(account.type) for account in guarded)}).all()
    first = rows[0]
    if first.refused:
        account = tx.account_by_id(first.ledger_account_id)
        balance = chart.normal_balance(first.balance_after_minor, account)
        raise InsufficientFunds(f"{account.name} would fall to {balance}; the balance may not go below zero")
    if first.replayed and bytes(first.content_hash) != content_hash:
        raise DuplicateConflict(
            f"idempotency key {draft.idempotency_key!r} was used for entry {first.entry_id} with other content")
    return Posted(entry_id=first.entry_id, replayed=first.replayed, effective_at=first.effective_at,
                  recorded_at=first.recorded_at, balances_after=_balances_after(tx, rows))


def post_many(tx: Tx, drafts: Sequence[EntryDraft]) -> list[Posted]:
    """Book several drafts in this transaction with one statement in all (bulk import, back-fill).

    The same rules as `post`, draft by draft and in the given order: validation, one entry per
    idempotency key (a key seen before — in the books or earlier in `drafts` — is a replay if the
    content is the same, DuplicateConflict if not), legs stamped in order — set-based by
    `ledger_post_entries`, exactly as the posting trigger stamps them one by one (migration 0006).
    Drafts with a no-overdraft rule are checked one by one, so a list holding one is posted one by one (`post`);
    so is a list of one (`post` books it with a cheaper statement). Either way every draft is validated before the
    first is written: a draft the core refuses leaves none of the others booked in the caller's transaction.
    """
    accounts = tx.resolve(leg.account for draft in drafts for leg in draft.legs)
    if len(drafts) == 1 or any(draft.no_overdraft for draft in drafts):
        for draft in drafts:
            validate(draft, accounts)
        return [post(tx, draft) for draft in drafts]
    hashes: list[bytes] = []
    first_of: dict[str, int] = {}  # idempotency key -> index of its first draft
    for i, draft in enumerate(drafts):
        validate(draft, accounts)
        hashes.append(content_hash_of(draft))
        first = first_of.setdefault(draft.idempotency_key, i)
        if hashes[first] != hashes[i]:
            raise DuplicateConflict(f"idempotency key {draft.idempotency_key!r} is used twice with other content")
    if not first_of:
        return []
    unique = sorted(first_of.values())
    by = PRINCIPAL.get()
    with write_errors():
        rows = tx.connection.execute(_POST_ENTRIES, {
            "accounts": sorted({accounts[leg.account].id for draft in drafts for leg in draft.legs}),
            "entries": _json.encode([{
                "key": drafts[i].idempotency_key, "hash": hashes[i].hex(), "kind": drafts[i].kind,
                "account_id": drafts[i].investment_account_id, "effective_at": drafts[i].effective_at,
                "memo": drafts[i].memo, "metadata": drafts[i].metadata, "reverses": drafts[i].reverses_entry_id,
                "by": by}
                for i in unique]).decode(),
            "legs": _json.encode([{
                "k": drafts[i].idempotency_key, "a": accounts[leg.account].id, "s": leg.side,
                "m": leg.amount.minor, "c": leg.amount.currency}
                for i in unique for leg in _in_lock_order(drafts[i], accounts)]
            ).decode()}).all()
    legs_of: dict[str, list[Any]] = {}  # idempotency key -> the new entry's legs
    for row in rows:
        legs_of.setdefault(row.idempotency_key, []).append(row)
    posted: dict[str, Posted] = {}
    for i in unique:
        key = drafts[i].idempotency_key
        legs = legs_of.get(key)
        if legs is None:  # booked before this call: a replay (or a conflict)
            posted[key] = existing(tx, drafts[i], hashes[i]) or post(tx, drafts[i])
        else:
            posted[key] = Posted(entry_id=legs[0].entry_id, replayed=False, effective_at=legs[0].effective_at,
                                 recorded_at=legs[0].recorded_at, balances_after=_balances_after(tx, legs))
    return [posted[draft.idempotency_key] if first_of[draft.idempotency_key] == i
            else msgspec.structs.replace(posted[draft.idempotency_key], replayed=True)
            for i, draft in enumerate(drafts)]


def existing(tx: Tx, draft: EntryDraft, content_hash: bytes | None = None) -> Posted | None:
    """The entry already booked under the draft's key (a replay), None if there is none."""
    row = tx.connection.execute(_EXISTING, {"key": draft.idempotency_key}).first()
    if row is None:
        return None
    if bytes(row.content_hash) != (content_hash or content_hash_of(draft)):
        raise DuplicateConflict(
            f"idempotency key {draft.idempotency_key!r} was used for entry {row.id} with other content")
    balances = {}
    for account_id, balance_minor in tx.connection.execute(_BALANCES_AFTER, {"entry_id": row.id}):
        account = tx.account_by_id(account_id)
        balances[account.name] = chart.normal_balance(balance_minor, account)
    return Posted(entry_id=row.id, replayed=True, effective_at=row.effective_at,
                  recorded_at=row.recorded_at, balances_after=balances)


def content_hash_of(draft: EntryDraft) -> bytes:
    """What "the same content" means for a replay: everything the caller chose, in a canonical form."""
    canonical = {
        "kind": draft.kind, "account": draft.investment_account_id,
        "legs": sorted((leg.account, leg.side, leg.amount.currency, leg.amount.minor) for leg in draft.legs),
        "effective_at": aware(draft.effective_at).isoformat() if draft.effective_at else None,
        "memo": draft.memo, "metadata": draft.metadata, "reverses": draft.reverses_entry_id,
    }
    return hashlib.sha256(_json.encode(canonical)).digest()


def validate(draft: EntryDraft, accounts: dict[str, LedgerAccount]) -> None:
    """The core's check before the write; the database checks the same again at commit."""
    if not 2 <= len(draft.legs) <= LEGS_MAX:
        raise InvalidEntry(f"an entry needs 2 to {LEGS_MAX} legs, got {len(draft.legs)}")
    if not 1 <= len(draft.idempotency_key) <= IDEMPOTENCY_KEY_LENGTH_MAX:
        raise InvalidEntry(f"the idempotency key must be 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} characters")
    if len(draft.memo) > MEMO_LENGTH_MAX:
        raise InvalidEntry(f"the memo must be at most {MEMO_LENGTH_MAX} characters")
    sums: dict[str, int] = {}
    for leg in draft.legs:
        if leg.amount.minor <= 0:
            raise InvalidEntry(f"leg on {leg.account}: amounts are positive; the side carries the direction")
        if leg.amount.currency != accounts[leg.account].currency:
            raise InvalidEntry(f"leg on {leg.account} is in {leg.amount.currency}, the account keeps "
                               f"{accounts[leg.account].currency}")
        sums[leg.amount.currency] = sums.get(leg.amount.currency, 0) + (
            leg.amount.minor if leg.side == "D" else -leg.amount.minor)
    unbalanced = sorted(currency for currency, total in sums.items() if total)
    if unbalanced:
        raise InvalidEntry(f"the entry does not balance in {', '.join(unbalanced)}")
    if draft.effective_at is not None:
        at = aware(draft.effective_at)
        if at < EFFECTIVE_EARLIEST or at > datetime.now(UTC) + EFFECTIVE_SKEW_MAX:
            raise InvalidEntry(f"effective time {at.isoformat()} is before 2000 or in the future")


@contextmanager
def write_errors() -> Iterator[None]:
    """The database's refusals of a write, as the core's errors."""
    try:
        yield
    except IntegrityError as error:
        raise integrity_error(error) from error
    except DBAPIError as error:
        if sqlstate(error) == "22003":
            raise InvalidAmount("the resulting balance is out of range") from error
        raise


def integrity_error(error: IntegrityError) -> Exception:
    message = str(getattr(error, "orig", error)).split("\n")[0]
    if "journal_entry_reverses_entry_id_key" in message:
        return AlreadyReversed("the entry was already reversed")
    return IntegrityViolation(f"the database refused the write: {message}")


def _array(values: Iterable[object]) -> str:
    """A PostgreSQL array literal of integers, sides or currency codes (none holds a comma, quote or brace)."""
    return "{" + ",".join(map(str, values)) + "}"


def _in_lock_order(draft: EntryDraft, accounts: dict[str, LedgerAccount]) -> list[Leg]:
    """The draft's legs by ledger account id: the global lock order, and the order their postings are stamped."""
    return sorted(draft.legs, key=lambda leg: accounts[leg.account].id)


def _balances_after(tx: Tx, rows: Sequence[Any]) -> dict[str, Money]:
    """Each leg account's balance after the entry (rows come in insertion order: the last one wins)."""
    balances = {}
    for row in rows:
        account = tx.account_by_id(row.ledger_account_id)
        balances[account.name] = chart.normal_balance(row.balance_after_minor, account)
    return balances
