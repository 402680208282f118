"""The ledger: the one module that reads and writes the ledger tables.

`Ledger.transact(work)` runs `work(tx)` as one unit of work: it commits as a whole or not at all, and
is retried as a whole on a deadlock or serialization failure. Callers that must write their own rows
in the same transaction as an entry (webhook deliveries, run records) use `tx.connection`.

Locking, so concurrent writers neither lose updates nor deadlock: an operation that reads before it
writes (status checks, true-ups) first locks its investment account row (`tx.lock_account`); the legs
of an entry are inserted in ascending ledger-account id, and each insert locks its account row in
the posting trigger — one global order, so no cycle of waits can form.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from ledger import chart, rules
from ledger.db import run_with_retry, sqlstate
from ledger.errors import (
    AccountStateConflict,
    AlreadyReversed,
    DuplicateConflict,
    InsufficientFunds,
    IntegrityViolation,
    InvalidAmount,
    InvalidEntry,
    UnknownAccount,
    UnknownEntry,
)
from ledger.model import (
    IDEMPOTENCY_KEY_LENGTH_MAX,
    MEMO_LENGTH_MAX,
    AccountSpec,
    Entry,
    EntryDraft,
    InvestmentAccount,
    Leg,
    Posted,
    PostingView,
    Statement,
    StatementLine,
    TrialBalance,
    TrialBalanceRow,
)
from ledger.money import Money, parse_amount, scale_of
from ledger.times import ONE_MICROSECOND, just_before

T = TypeVar("T")

# Who is acting: recorded on every entry and account status change (migration 0013). The doors set it — the API
# from the request's key, the webhook intake "engine", a job "job:<actor>", the command line "cli:<user>" — and
# everything booked in that context carries it. Principals are at most PRINCIPAL_LENGTH_MAX characters.
PRINCIPAL: contextvars.ContextVar[str] = contextvars.ContextVar("invledger_principal", default="")
PRINCIPAL_LENGTH_MAX = 200


def as_caller(function: Callable[[Any], T]) -> Callable[[Any], T]:
    """`function` to run in a pool's threads as the caller (a new thread starts with no principal)."""
    caller = contextvars.copy_context()
    return lambda argument: caller.copy().run(function, argument)


@contextmanager
def acting_as(principal: str) -> Iterator[None]:
    """Book what is booked inside as `principal`."""
    token = PRINCIPAL.set(principal[:PRINCIPAL_LENGTH_MAX])
    try:
        yield
    finally:
        PRINCIPAL.reset(token)

LEGS_MAX = 64
PAGE_LIMIT_MAX = 1000
EFFECTIVE_SKEW_MAX = timedelta(minutes=5)
EFFECTIVE_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_json = msgspec.json.Encoder(order="deterministic")


class _LedgerAccount(msgspec.Struct, frozen=True):
    id: int
    name: str
    type: str
    currency: str


# --------------------------------------------------------------------------------------------- SQL

_POST = sa.text("""
WITH locked AS (
    -- Lock the legs' accounts first, in id order (the global lock order), and only then take the time:
    -- a defaulted effective time is then monotone per account, so only back-dated entries are "late".
    SELECT id FROM ledger_account WHERE id = ANY(CAST(:accounts AS bigint[])) ORDER BY id FOR NO KEY UPDATE),
e AS (
    INSERT INTO journal_entry (idempotency_key, content_hash, kind, investment_account_id, effective_at,
                               recorded_at, memo, metadata, reverses_entry_id, recorded_by)
    SELECT :key, :hash, :kind, :account_id, COALESCE(CAST(:effective_at AS timestamptz), held.at), held.at,
           :memo, CAST(:metadata AS jsonb), :reverses, :by
      FROM (SELECT clock_timestamp() AS at, count(*) FROM locked) AS held
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, effective_at, recorded_at)
INSERT INTO posting (ledger_account_id, entry_id, side, amount_minor, currency,
                     seq, effective_at, balance_after_minor, late)
SELECT l.account, e.id, l.side, l.amount, l.currency, 0, e.effective_at, 0, false
  FROM e CROSS JOIN unnest(CAST(:accounts AS bigint[]), CAST(:sides AS text[]), CAST(:amounts AS bigint[]),
                           CAST(:currencies AS text[])) WITH ORDINALITY AS l(account, side, amount, currency, ord)
 ORDER BY l.ord
RETURNING entry_id, ledger_account_id, balance_after_minor, effective_at, (SELECT recorded_at FROM e) AS recorded_at
""")

# Many entries at once (Tx.post_many): one call of ledger_post_entries (migration 0006) locks every leg account
# in id order, inserts the entries, stamps all their legs set-based and answers each new entry's legs. Entries
# and legs travel as JSON documents (msgspec encodes them in a fraction of what binding one array per column
# costs: a 500-item bytea array alone took 10 ms).
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

_ACCOUNT_COLUMNS = """a.account_id, a.product_id, a.agent_type, a.currency, a.fee_rate, a.status, a.agent_config,
       a.created_at, a.updated_at, -l.balance_minor AS balance_minor"""
_ACCOUNT_FROM = f"investment_account a JOIN ledger_account l ON l.name = {chart.investors_sql('a.account_id')}"
_LOCK_ACCOUNTS = sa.text(f"SELECT {_ACCOUNT_COLUMNS} FROM {_ACCOUNT_FROM} WHERE a.account_id = ANY(:ids)"  # noqa: S608 — module constants
                         " ORDER BY a.account_id FOR NO KEY UPDATE OF a")
_LEDGER_ACCOUNTS_NAMED = sa.text("SELECT id, name, type, currency FROM ledger_account WHERE name = ANY(:names)")


class Tx:
    """One unit of work on the ledger (see the module docstring). Not shared between threads."""

    def __init__(self, ledger: Ledger, connection: sa.Connection) -> None:
        self.ledger = ledger
        self.connection = connection
        self._locked: set[str] = set()
        self._created: dict[str, _LedgerAccount] = {}  # made in this transaction: not cached until commit

    def resolve(self, names: Iterable[str]) -> dict[str, _LedgerAccount]:
        """Ledger accounts by name, seen through this transaction (so accounts it created count too)."""
        names = set(names)
        known = {n: self._created.get(n) or self.ledger._accounts.get(n) for n in names}
        missing = sorted(n for n, a in known.items() if a is None)
        if missing:
            for row in self.connection.execute(_LEDGER_ACCOUNTS_NAMED, {"names": missing}):
                known[row.name] = self.ledger._remember(_LedgerAccount(row.id, row.name, row.type, row.currency))
            unknown = sorted(n for n, a in known.items() if a is None)
            if unknown:
                raise UnknownAccount(f"ledger account {unknown[0]!r} does not exist")
        return known  # type: ignore[return-value]

    def account_by_id(self, ledger_account_id: int) -> _LedgerAccount:
        account = self.ledger._accounts_by_id.get(ledger_account_id)
        if account is None:
            account = next((a for a in self._created.values() if a.id == ledger_account_id), None)
        if account is None:
            row = self.connection.execute(sa.text(
                "SELECT id, name, type, currency FROM ledger_account WHERE id = :id"),
                {"id": ledger_account_id}).one()
            account = self.ledger._remember(_LedgerAccount(row.id, row.name, row.type, row.currency))
        return account

    # ------------------------------------------------------------------ investment accounts

    def lock_account(self, account_id: str) -> InvestmentAccount:
        """Lock A's row until commit (serialises read-then-write work on A) and return it."""
        account = self.lock_accounts([account_id]).get(account_id)
        if account is None:
            raise UnknownAccount(f"investment account {account_id!r} does not exist")
        return account

    def lock_accounts(self, account_ids: Iterable[str]) -> dict[str, InvestmentAccount]:
        """Lock several accounts in one statement, in account id order (the order every batch uses, so two
        batches wait for each other instead of deadlocking); the ones that exist, by id."""
        ids = sorted(set(account_ids))
        if not ids:
            return {}
        rows = self.connection.execute(_LOCK_ACCOUNTS, {"ids": ids}).mappings().all()
        self._locked.update(row["account_id"] for row in rows)
        return {row["account_id"]: _account(row) for row in rows}

    def open_account(self, spec: AccountSpec) -> tuple[InvestmentAccount, bool]:
        """Open A with its chart, record the event and notify; (account, created). Idempotent per id."""
        if spec.initial_capital is not None and spec.initial_capital.currency != spec.currency:
            raise InvalidAmount("initial_capital must be in the account's currency")
        scale_of(spec.currency)
        inserted = self.connection.execute(sa.text("""
            INSERT INTO investment_account (account_id, product_id, agent_type, currency, fee_rate, agent_config)
            VALUES (:account_id, :product_id, :agent_type, :currency, :fee_rate, CAST(:agent_config AS jsonb))
            ON CONFLICT (account_id) DO NOTHING RETURNING account_id"""), {
            "account_id": spec.account_id, "product_id": spec.product_id, "agent_type": spec.agent_type,
            "currency": spec.currency, "fee_rate": spec.fee_rate,
            "agent_config": _json.encode(spec.agent_config).decode()}).first()
        if inserted is None:
            existing = self.lock_account(spec.account_id)
            if not _same_opening(existing, spec, self._initial_capital(spec.account_id)):
                raise DuplicateConflict(f"investment account {spec.account_id!r} exists with other details")
            return existing, False
        self._locked.add(spec.account_id)
        created = self.connection.execute(sa.text("""
            INSERT INTO ledger_account (name, type, currency, investment_account_id)
            SELECT * FROM unnest(CAST(:names AS text[]), CAST(:types AS text[]), CAST(:currencies AS text[]),
                                 CAST(:owners AS text[]))
            ON CONFLICT (name) DO NOTHING RETURNING id, name, type, currency"""), _columns(
            ("names", "types", "currencies", "owners"),
            [(name, kind, spec.currency, owner) for name, kind, owner in chart.accounts_for(
                spec.account_id, spec.currency)]))
        for row in created:
            self._created[row.name] = _LedgerAccount(row.id, row.name, row.type, row.currency)
        self._event(spec.account_id, "created", "", "api")
        initial = spec.initial_capital
        if initial is not None and initial.is_positive():
            self.post(rules.deposit(spec.account_id, initial, idempotency_key=_initial_key(spec.account_id),
                                    memo="initial capital"))
        self.emit(spec.account_id, "account.created", {
            "account_id": spec.account_id, "product_id": spec.product_id, "agent_type": spec.agent_type,
            "currency": spec.currency,
            "initial_capital": str(initial or Money.zero(spec.currency)),
            "agent_config": spec.agent_config})
        return self.lock_account(spec.account_id), True

    def _initial_capital(self, account_id: str) -> Money | None:
        row = self.connection.execute(sa.text("""
            SELECT p.amount_minor, p.currency FROM journal_entry e JOIN posting p ON p.entry_id = e.id
             WHERE e.idempotency_key = :key AND p.side = 'C' LIMIT 1"""),
            {"key": _initial_key(account_id)}).first()
        return None if row is None else Money(minor=row.amount_minor, currency=row.currency)

    def change_status(self, account_id: str, action: str, *, reason: str = "", source: str = "api",
                      notify: bool = True) -> InvestmentAccount:
        """pause | resume | close. Repeating the current state is a no-op; a closed account stays closed."""
        target = {"pause": "paused", "resume": "active", "close": "closed"}[action]
        account = self.lock_account(account_id)
        if account.status == target:
            return account
        if account.status == "closed":
            raise AccountStateConflict(f"account {account_id!r} is closed and cannot {action}")
        if action == "resume" and account.status != "paused":
            raise AccountStateConflict(f"account {account_id!r} is {account.status}, not paused")
        self.connection.execute(sa.text(
            "UPDATE investment_account SET status = :status, updated_at = now() WHERE account_id = :id"),
            {"status": target, "id": account_id})
        kind = {"pause": "paused", "resume": "resumed", "close": "closed"}[action]
        self._event(account_id, kind, reason, source)
        if notify:
            self.emit(account_id, f"account.{kind}", {"account_id": account_id, "reason": reason})
        return self.lock_account(account_id)

    def _event(self, account_id: str, kind: str, reason: str, source: str) -> None:
        self.connection.execute(sa.text(
            "INSERT INTO account_event (account_id, kind, reason, source, recorded_by) VALUES (:a, :k, :r, :s, :by)"),
            {"a": account_id, "k": kind, "r": reason[:1000], "s": source, "by": PRINCIPAL.get()})

    # ------------------------------------------------------------------ money movements

    def deposit(self, account_id: str, amount: object, *, idempotency_key: str, reference: str = "",
                source: str = "api", effective_at: datetime | None = None) -> Posted:
        """`effective_at`: the value date when it is not now (a wire booked after it arrived)."""
        account = self.lock_account(account_id)
        draft = rules.deposit(account_id, parse_amount(amount, account.currency),
                              idempotency_key=idempotency_key, memo=reference, effective_at=effective_at,
                              metadata={"reference": reference, "source": source} if reference else {"source": source})
        replay = self.existing(draft)
        if replay is not None:
            return replay
        if account.status == "closed":
            raise AccountStateConflict(f"account {account_id!r} is closed; deposits are refused")
        posted = self.post(draft)
        self._capital_changed(account_id, "deposit", draft.legs[0].amount, posted)
        return posted

    def withdraw(self, account_id: str, amount: object, *, idempotency_key: str, reference: str = "",
                 source: str = "api", effective_at: datetime | None = None) -> Posted:
        """`effective_at`: the value date when it is not now (a wire booked after it arrived)."""
        account = self.lock_account(account_id)
        draft = rules.withdrawal(account_id, parse_amount(amount, account.currency),
                                 idempotency_key=idempotency_key, memo=reference, effective_at=effective_at,
                                 metadata={"reference": reference, "source": source} if reference
                                 else {"source": source})
        replay = self.existing(draft)
        if replay is not None:
            return replay
        posted = self.post(draft)
        self._capital_changed(account_id, "withdrawal", draft.legs[0].amount, posted)
        return posted

    def reverse(self, entry_id: int, *, reason: str, idempotency_key: str | None = None) -> Posted:
        original = self.entry(entry_id)
        if original.reversed_by_entry_id is not None and idempotency_key is None:
            raise AlreadyReversed(f"entry {entry_id} was already reversed by entry {original.reversed_by_entry_id}")
        if original.investment_account_id:
            self.lock_account(original.investment_account_id)
        key = idempotency_key or f"reversal:{entry_id}"
        posted = self.post(rules.reversal(original, reason=reason, idempotency_key=key))
        if not posted.replayed and original.kind in ("deposit", "withdrawal", "fee") \
                and original.investment_account_id:
            account_id = original.investment_account_id
            amount = next(p.amount for p in original.postings if p.account == chart.investors(account_id))
            operation = "withdrawal" if original.kind == "deposit" else "deposit"
            self._capital_changed(account_id, operation, amount, posted)
        return posted

    def _capital_changed(self, account_id: str, operation: str, amount: Money, posted: Posted) -> None:
        if posted.replayed:
            return
        self.emit(account_id, "account.capital_changed", {
            "account_id": account_id, "operation": operation, "amount": str(amount),
            "new_total_capital": str(posted.balances_after[chart.investors(account_id)]),
            "entry_id": posted.entry_id})

    def post(self, draft: EntryDraft) -> Posted:
        """Book `draft` (or return the entry already booked under its key). See EntryDraft."""
        accounts = self.resolve(leg.account for leg in draft.legs)
        _validate(draft, accounts)
        content_hash = content_hash_of(draft)
        legs = _in_lock_order(draft, accounts)
        params = {
            "key": draft.idempotency_key, "hash": content_hash, "kind": draft.kind,
            "account_id": draft.investment_account_id, "effective_at": draft.effective_at,
            "memo": draft.memo, "metadata": _json.encode(draft.metadata).decode(),
            "reverses": draft.reverses_entry_id, "by": PRINCIPAL.get(),
            "accounts": [accounts[leg.account].id for leg in legs], "sides": [leg.side for leg in legs],
            "amounts": [leg.amount.minor for leg in legs], "currencies": [leg.amount.currency for leg in legs],
        }
        with _write_errors():
            if draft.no_overdraft:  # a refusal must leave nothing behind in the caller's transaction
                with self.connection.begin_nested() as savepoint:
                    rows = self.connection.execute(_POST, params).all()
                    refusal = self._overdraft(draft, rows, accounts)
                    if refusal is not None:
                        savepoint.rollback()
                        raise refusal
            else:
                rows = self.connection.execute(_POST, params).all()
        if not rows:
            replay = self.existing(draft, content_hash)
            if replay is None:  # the conflicting writer rolled back between our insert and our read
                return self.post(draft)
            return replay
        first = rows[0]
        return Posted(entry_id=first.entry_id, replayed=False, effective_at=first.effective_at,
                      recorded_at=first.recorded_at, balances_after=_balances_after(rows, accounts))

    def post_many(self, drafts: Sequence[EntryDraft]) -> list[Posted]:
        """Book several drafts in this transaction with one statement in all (bulk import, back-fill).

        The same rules as `post`, draft by draft and in the given order: validation, one entry per
        idempotency key (a key seen before — in the books or earlier in `drafts` — is a replay if the
        content is the same, DuplicateConflict if not), legs stamped in order — set-based by
        `ledger_post_entries`, exactly as the posting trigger stamps them one by one (migration 0006).
        Drafts with a no-overdraft rule need a savepoint each, so a list holding one is posted one by one;
        so is a list of one (`post` books it with a cheaper statement).
        """
        if len(drafts) == 1 or any(draft.no_overdraft for draft in drafts):
            return [self.post(draft) for draft in drafts]
        accounts = self.resolve(leg.account for draft in drafts for leg in draft.legs)
        hashes: list[bytes] = []
        first_of: dict[str, int] = {}  # idempotency key -> index of its first draft
        for i, draft in enumerate(drafts):
            _validate(draft, accounts)
            hashes.append(content_hash_of(draft))
            first = first_of.setdefault(draft.idempotency_key, i)
            if hashes[first] != hashes[i]:
                raise DuplicateConflict(f"idempotency key {draft.idempotency_key!r} is used twice with other content")
        if not first_of:
            return []
        unique = sorted(first_of.values())
        by = PRINCIPAL.get()
        with _write_errors():
            rows = self.connection.execute(_POST_ENTRIES, {
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
                posted[key] = self.existing(drafts[i], hashes[i]) or self.post(drafts[i])
            else:
                posted[key] = Posted(entry_id=legs[0].entry_id, replayed=False, effective_at=legs[0].effective_at,
                                     recorded_at=legs[0].recorded_at, balances_after=_balances_after(legs, accounts))
        return [posted[draft.idempotency_key] if first_of[draft.idempotency_key] == i
                else msgspec.structs.replace(posted[draft.idempotency_key], replayed=True)
                for i, draft in enumerate(drafts)]

    @staticmethod
    def _overdraft(draft: EntryDraft, rows: Sequence[Any], accounts: dict[str, _LedgerAccount]) -> Exception | None:
        if not rows:
            return None
        balances = _balances_after(rows, accounts)
        for name in draft.no_overdraft:
            if balances[name].minor < 0:
                return InsufficientFunds(f"{name} would fall to {balances[name]}; the balance may not go below zero")
        return None

    def existing(self, draft: EntryDraft, content_hash: bytes | None = None) -> Posted | None:
        """The entry already booked under the draft's key (a replay), None if there is none."""
        row = self.connection.execute(_EXISTING, {"key": draft.idempotency_key}).first()
        if row is None:
            return None
        if bytes(row.content_hash) != (content_hash or content_hash_of(draft)):
            raise DuplicateConflict(
                f"idempotency key {draft.idempotency_key!r} was used for entry {row.id} with other content")
        balances = {}
        for account_id, balance_minor in self.connection.execute(_BALANCES_AFTER, {"entry_id": row.id}):
            account = self.account_by_id(account_id)
            balances[account.name] = _normal(balance_minor, account)
        return Posted(entry_id=row.id, replayed=True, effective_at=row.effective_at,
                      recorded_at=row.recorded_at, balances_after=balances)

    def emit(self, account_id: str, topic: str, payload: dict[str, Any]) -> None:
        """Queue a notification in the outbox, in this transaction: it leaves only if this commits."""
        self.connection.execute(sa.text(
            "INSERT INTO outbox_event (account_id, topic, payload) VALUES (:a, :t, CAST(:p AS jsonb))"),
            {"a": account_id, "t": topic, "p": _json.encode(payload).decode()})

    # ------------------------------------------------------------------ reads inside the unit of work

    def balance(self, account_id: str, as_of: datetime | None = None) -> Money:
        try:
            return self.ledger_account_balance(chart.investors(account_id), as_of)
        except UnknownAccount:  # investors:A exists exactly when A does
            raise UnknownAccount(f"investment account {account_id!r} does not exist") from None

    def ledger_account_balance(self, name: str, as_of: datetime | None = None) -> Money:
        account = self.resolve([name])[name]
        if as_of is None:
            minor = self.connection.execute(sa.text(
                "SELECT balance_minor FROM ledger_account WHERE id = :id"), {"id": account.id}).scalar_one()
        else:
            minor = self.connection.execute(sa.text("SELECT ledger_balance_as_of(:id, :at)"),
                                            {"id": account.id, "at": _aware(as_of)}).scalar_one()
        return _normal(minor, account)

    def entry(self, entry_id: int) -> Entry:
        entries = self._entries([entry_id])
        if not entries:
            raise UnknownEntry(f"journal entry {entry_id} does not exist")
        return entries[0]

    def _entries(self, ids: list[int]) -> list[Entry]:
        if not ids:
            return []
        heads = self.connection.execute(sa.text("""
            SELECT e.id, e.idempotency_key, e.kind, e.investment_account_id, e.effective_at, e.recorded_at,
                   e.memo, e.metadata, e.reverses_entry_id, r.id AS reversed_by, e.recorded_by
              FROM journal_entry e LEFT JOIN journal_entry r ON r.reverses_entry_id = e.id
             WHERE e.id = ANY(:ids)"""), {"ids": ids}).mappings().all()
        legs: dict[int, list[PostingView]] = {i: [] for i in ids}
        for row in self.connection.execute(sa.text("""
                SELECT entry_id, ledger_account_id, side, amount_minor, currency, seq, balance_after_minor
                  FROM posting WHERE entry_id = ANY(:ids) ORDER BY entry_id, ledger_account_id, seq"""),
                {"ids": ids}):
            account = self.account_by_id(row.ledger_account_id)
            legs[row.entry_id].append(PostingView(
                account=account.name, side=row.side, amount=Money(minor=row.amount_minor, currency=row.currency),
                seq=row.seq, balance_after=_normal(row.balance_after_minor, account)))
        order = {entry_id: i for i, entry_id in enumerate(ids)}
        return sorted((Entry(id=h["id"], idempotency_key=h["idempotency_key"], kind=h["kind"],
                             investment_account_id=h["investment_account_id"], effective_at=h["effective_at"],
                             recorded_at=h["recorded_at"], memo=h["memo"], metadata=h["metadata"],
                             reverses_entry_id=h["reverses_entry_id"], reversed_by_entry_id=h["reversed_by"],
                             recorded_by=h["recorded_by"], postings=tuple(legs[h["id"]])) for h in heads),
                      key=lambda e: order[e.id])


class Ledger:
    """The accounting core's entry point. Thread-safe; one per process is enough."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._accounts: dict[str, _LedgerAccount] = {}
        self._accounts_by_id: dict[int, _LedgerAccount] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ units of work

    def transact(self, work: Callable[[Tx], T]) -> T:
        """Run `work(tx)` in one transaction, retried as a whole on transient conflicts."""
        try:
            return run_with_retry(self.engine, lambda connection: work(Tx(self, connection)))
        except IntegrityError as error:  # raised at commit by the deferred balance check
            raise _integrity_error(error) from error

    def open_account(self, spec: AccountSpec) -> tuple[InvestmentAccount, bool]:
        return self.transact(lambda tx: tx.open_account(spec))

    def change_status(self, account_id: str, action: str, **kwargs: Any) -> InvestmentAccount:
        return self.transact(lambda tx: tx.change_status(account_id, action, **kwargs))

    def deposit(self, account_id: str, amount: object, *, idempotency_key: str, reference: str = "",
                source: str = "api", effective_at: datetime | None = None) -> Posted:
        return self.transact(lambda tx: tx.deposit(account_id, amount, idempotency_key=idempotency_key,
                                                   reference=reference, source=source, effective_at=effective_at))

    def withdraw(self, account_id: str, amount: object, *, idempotency_key: str, reference: str = "",
                 source: str = "api", effective_at: datetime | None = None) -> Posted:
        return self.transact(lambda tx: tx.withdraw(account_id, amount, idempotency_key=idempotency_key,
                                                    reference=reference, source=source, effective_at=effective_at))

    def post(self, draft: EntryDraft) -> Posted:
        return self.transact(lambda tx: tx.post(draft))

    def post_many(self, drafts: Sequence[EntryDraft]) -> list[Posted]:
        """All of `drafts` in one transaction (see Tx.post_many): all booked, or none."""
        return self.transact(lambda tx: tx.post_many(drafts))

    def reverse(self, entry_id: int, *, reason: str, idempotency_key: str | None = None) -> Posted:
        return self.transact(lambda tx: tx.reverse(entry_id, reason=reason, idempotency_key=idempotency_key))

    def _read(self, work: Callable[[Tx], T]) -> T:
        with self.engine.connect() as connection:
            result = work(Tx(self, connection))
            connection.rollback()
            return result

    # ------------------------------------------------------------------ reads

    def account(self, account_id: str) -> InvestmentAccount:
        with self.engine.connect() as connection:
            row = connection.execute(sa.text(
                f"SELECT {_ACCOUNT_COLUMNS} FROM {_ACCOUNT_FROM} WHERE a.account_id = :id"),  # noqa: S608 — module constants
                {"id": account_id}).mappings().first()
        if row is None:
            raise UnknownAccount(f"investment account {account_id!r} does not exist")
        return _account(row)

    def accounts(self, *, status: str | None = None, after: str | None = None,
                 limit: int = 100) -> list[InvestmentAccount]:
        """Investment accounts by id, `limit` at a time after the id `after` (a cursor)."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.text(f"""
                SELECT {_ACCOUNT_COLUMNS} FROM {_ACCOUNT_FROM}
                 WHERE (CAST(:status AS text) IS NULL OR a.status = :status)
                   AND (CAST(:after AS text) IS NULL OR a.account_id > :after)
                 ORDER BY a.account_id LIMIT :limit"""),  # noqa: S608 — built from module constants, never from input
                {"status": status, "after": after, "limit": _limit(limit)}).mappings().all()
        return [_account(row) for row in rows]

    def account_ids_open_since(self, start: datetime) -> list[str]:
        """Investment accounts that were open at some time from `start` on: not closed, or closed at or after
        `start` (the accounts a day's sync or a month's distribution must look at), by id."""
        with self.engine.connect() as connection:
            return list(connection.execute(sa.text("""
                SELECT a.account_id FROM investment_account a
                 WHERE a.status <> 'closed' OR EXISTS (
                           SELECT 1 FROM account_event ev
                            WHERE ev.account_id = a.account_id AND ev.kind = 'closed' AND ev.occurred_at >= :start)
                 ORDER BY a.account_id"""), {"start": _aware(start)}).scalars())

    def balance(self, account_id: str, as_of: datetime | None = None) -> Money:
        """What the platform owes A's investor (liabilities:investors:A), now or as of an effective time."""
        return self._read(lambda tx: tx.balance(account_id, as_of))

    def ledger_account_balance(self, name: str, as_of: datetime | None = None) -> Money:
        return self._read(lambda tx: tx.ledger_account_balance(name, as_of))

    def entry(self, entry_id: int) -> Entry:
        return self._read(lambda tx: tx.entry(entry_id))

    def journal(self, *, account_id: str | None = None, start: datetime | None = None,
                end: datetime | None = None, after: tuple[datetime, int] | None = None,
                limit: int = 100) -> list[Entry]:
        """Entries in effective-time order (ties by id), optionally for one investment account."""
        def read(tx: Tx) -> list[Entry]:
            ids = [row.id for row in tx.connection.execute(sa.text("""
                SELECT id FROM journal_entry
                 WHERE (CAST(:account AS text) IS NULL OR investment_account_id = :account)
                   AND (CAST(:start AS timestamptz) IS NULL OR effective_at >= :start)
                   AND (CAST(:end AS timestamptz) IS NULL OR effective_at <= :end)
                   AND (CAST(:after_at AS timestamptz) IS NULL OR (effective_at, id) > (:after_at, :after_id))
                 ORDER BY effective_at, id LIMIT :limit"""), {
                "account": account_id, "start": _aware_or_none(start), "end": _aware_or_none(end),
                "after_at": _aware_or_none(after[0]) if after else None, "after_id": after[1] if after else 0,
                "limit": _limit(limit)})]
            return tx._entries(ids)
        return self._read(read)

    def statement(self, name: str, *, start: datetime | None = None, end: datetime | None = None,
                  cursor: str | None = None, limit: int = 100) -> Statement:
        """Opening balance, lines with running balance in effective-time order, closing balance.

        `cursor` (from a previous page's `next_cursor`) continues after that page's last line; the
        new page's opening balance is the previous page's closing balance.
        """
        account = self.resolve([name])[name]
        # An open-ended statement ends now: an entry dated a little ahead (clock skew) is not in it yet.
        end = _aware(end) if end is not None else datetime.now(UTC)
        after = decode_cursor(cursor) if cursor else None

        def read(tx: Tx) -> Statement:
            c = tx.connection
            if after is not None:
                at, seq = after
                opening_minor = c.execute(sa.text("""
                    SELECT ledger_balance_as_of(:id, :before) + COALESCE((
                        SELECT sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END)::bigint FROM posting
                         WHERE ledger_account_id = :id AND effective_at = :at AND seq <= :seq), 0)"""),
                    {"id": account.id, "before": at - ONE_MICROSECOND, "at": at, "seq": seq}).scalar_one()
            elif start is not None:
                opening_minor = c.execute(sa.text("SELECT ledger_balance_as_of(:id, :at)"),
                                          {"id": account.id, "at": just_before(_aware(start))}).scalar_one()
            else:
                opening_minor = 0
            rows = c.execute(sa.text("""
                SELECT p.entry_id, p.seq, p.effective_at, e.recorded_at, e.kind, e.memo, p.side, p.amount_minor,
                       e.recorded_by
                  FROM posting p JOIN journal_entry e ON e.id = p.entry_id
                 WHERE p.ledger_account_id = :id
                   AND (CAST(:start AS timestamptz) IS NULL OR p.effective_at >= :start)
                   AND (CAST(:end AS timestamptz) IS NULL OR p.effective_at <= :end)
                   AND (CAST(:after_at AS timestamptz) IS NULL OR (p.effective_at, p.seq) > (:after_at, :after_seq))
                 ORDER BY p.effective_at, p.seq LIMIT :limit"""), {
                "id": account.id, "start": _aware_or_none(start), "end": end,
                "after_at": after[0] if after else None, "after_seq": after[1] if after else 0,
                "limit": _limit(limit) + 1}).all()
            more = len(rows) > _limit(limit)
            rows = rows[:_limit(limit)]
            sign = chart.normal_sign(account.type)
            running = opening_minor * sign
            lines = []
            for row in rows:
                running += (row.amount_minor if row.side == "D" else -row.amount_minor) * sign
                lines.append(StatementLine(
                    entry_id=row.entry_id, seq=row.seq, effective_at=row.effective_at,
                    recorded_at=row.recorded_at, kind=row.kind, memo=row.memo, side=row.side,
                    amount=Money(minor=row.amount_minor, currency=account.currency),
                    balance=Money(minor=running, currency=account.currency), recorded_by=row.recorded_by))
            next_cursor = encode_cursor(rows[-1].effective_at, rows[-1].seq) if more else None
            return Statement(account=name, currency=account.currency, start=_aware_or_none(start),
                             end=end or datetime.now(UTC),
                             opening_balance=Money(minor=opening_minor * sign, currency=account.currency),
                             lines=tuple(lines), closing_balance=Money(minor=running, currency=account.currency),
                             next_cursor=next_cursor)
        return self._read(read)

    def trial_balance(self, as_of: datetime | None = None) -> TrialBalance:
        """Every ledger account's balance as debit or credit, with per-currency totals (equal when sound)."""
        at = _aware(as_of) if as_of is not None else None
        with self.engine.connect() as connection:
            if at is None:
                rows = connection.execute(sa.text(
                    "SELECT name, type, currency, balance_minor FROM ledger_account ORDER BY name")).all()
            else:
                rows = connection.execute(sa.text("""
                    SELECT a.name, a.type, a.currency, b.balance_minor
                      FROM ledger_account a JOIN ledger_balances_as_of(:at) b ON b.ledger_account_id = a.id
                     ORDER BY a.name"""), {"at": at}).all()
        out, totals = [], {}
        for row in rows:
            zero = Money.zero(row.currency)
            debit = Money(minor=max(row.balance_minor, 0), currency=row.currency)
            credit = Money(minor=max(-row.balance_minor, 0), currency=row.currency)
            out.append(TrialBalanceRow(account=row.name, type=row.type, currency=row.currency,
                                       debit=debit, credit=credit))
            total_debit, total_credit = totals.get(row.currency, (zero, zero))
            totals[row.currency] = (total_debit + debit, total_credit + credit)
        return TrialBalance(as_of=at or datetime.now(UTC), rows=tuple(out), totals=totals)

    # ------------------------------------------------------------------ ledger account names <-> ids

    def resolve(self, names: Iterable[str]) -> dict[str, _LedgerAccount]:
        """Ledger accounts by name (cached: a committed ledger account's id, type and currency never change)."""
        return self._read(lambda tx: tx.resolve(names))

    def _remember(self, account: _LedgerAccount) -> _LedgerAccount:
        """Cache a ledger account read from the database (visible to us, so committed or ours)."""
        with self._lock:
            self._accounts[account.name] = account
            self._accounts_by_id[account.id] = account
        return account


# ------------------------------------------------------------------------------------------ helpers

def content_hash_of(draft: EntryDraft) -> bytes:
    """What "the same content" means for a replay: everything the caller chose, in a canonical form."""
    canonical = {
        "kind": draft.kind, "account": draft.investment_account_id,
        "legs": sorted((leg.account, leg.side, leg.amount.currency, leg.amount.minor) for leg in draft.legs),
        "effective_at": _aware(draft.effective_at).isoformat() if draft.effective_at else None,
        "memo": draft.memo, "metadata": draft.metadata, "reverses": draft.reverses_entry_id,
    }
    return hashlib.sha256(_json.encode(canonical)).digest()


def _validate(draft: EntryDraft, accounts: dict[str, _LedgerAccount]) -> None:
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
        at = _aware(draft.effective_at)
        if at < EFFECTIVE_EARLIEST or at > datetime.now(UTC) + EFFECTIVE_SKEW_MAX:
            raise InvalidEntry(f"effective time {at.isoformat()} is before 2000 or in the future")


@contextmanager
def _write_errors() -> Iterator[None]:
    """The database's refusals of a write, as the core's errors."""
    try:
        yield
    except IntegrityError as error:
        raise _integrity_error(error) from error
    except DBAPIError as error:
        if sqlstate(error) == "22003":
            raise InvalidAmount("the resulting balance is out of range") from error
        raise


def _integrity_error(error: IntegrityError) -> Exception:
    message = str(getattr(error, "orig", error)).split("\n")[0]
    if "journal_entry_reverses_entry_id_key" in message:
        return AlreadyReversed("the entry was already reversed")
    return IntegrityViolation(f"the database refused the write: {message}")


def _in_lock_order(draft: EntryDraft, accounts: dict[str, _LedgerAccount]) -> list[Leg]:
    """The draft's legs by ledger account id: the global lock order, and the order their postings are stamped."""
    return sorted(draft.legs, key=lambda leg: accounts[leg.account].id)


def _normal(balance_minor: int, account: _LedgerAccount) -> Money:
    return Money(minor=balance_minor * chart.normal_sign(account.type), currency=account.currency)


def _balances_after(rows: Sequence[Any], accounts: dict[str, _LedgerAccount]) -> dict[str, Money]:
    """Each leg account's balance after the entry (rows come in insertion order: the last one wins)."""
    by_id = {a.id: a for a in accounts.values()}
    balances = {}
    for row in rows:
        account = by_id[row.ledger_account_id]
        balances[account.name] = _normal(row.balance_after_minor, account)
    return balances


def _account(row: Any) -> InvestmentAccount:
    return InvestmentAccount(
        account_id=row["account_id"], product_id=row["product_id"], agent_type=row["agent_type"],
        currency=row["currency"], fee_rate=Decimal(row["fee_rate"]), status=row["status"],
        agent_config=row["agent_config"], balance=Money(minor=row["balance_minor"], currency=row["currency"]),
        created_at=row["created_at"], updated_at=row["updated_at"])


def _same_opening(existing: InvestmentAccount, spec: AccountSpec, initial: Money | None) -> bool:
    wanted_initial = spec.initial_capital if spec.initial_capital and spec.initial_capital.is_positive() else None
    return (existing.product_id == spec.product_id and existing.agent_type == spec.agent_type
            and existing.currency == spec.currency and existing.fee_rate == spec.fee_rate
            and existing.agent_config == spec.agent_config and initial == wanted_initial)


def _initial_key(account_id: str) -> str:
    return f"account:{account_id}:initial-capital"


def _columns(names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise InvalidEntry(f"time {at.isoformat()} has no time zone; give it in UTC")
    return at.astimezone(UTC)


def _aware_or_none(at: datetime | None) -> datetime | None:
    return None if at is None else _aware(at)


def _limit(limit: int) -> int:
    return max(1, min(int(limit), PAGE_LIMIT_MAX))


def encode_cursor(at: datetime, seq: int) -> str:
    """A page cursor: `<microseconds since 1970>.<sequence>` (opaque to clients; api.openapi states its pattern)."""
    micros = int((at - datetime(1970, 1, 1, tzinfo=UTC)) / ONE_MICROSECOND)
    return f"{micros}.{seq}"


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        micros, seq = (int(part) for part in cursor.split("."))
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros), seq
    except (ValueError, OverflowError):
        raise InvalidEntry(f"cursor {cursor!r} is not one this ledger gave out") from None
