"""Investment accounts: opening, lifecycle (pause, resume, close) and the capital commands (deposit, withdraw,
reverse), each with its account event and outbox notification in the same unit of work.

An operation that reads before it writes (a status check, a replay check) first locks its investment account row
(`lock_account`), so two such operations on one account run one after the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa

from ledger import chart, rules
from ledger.errors import AccountStateConflict, AlreadyReversed, DuplicateConflict, InvalidAmount, UnknownAccount
from ledger.model import AccountSpec, InvestmentAccount, LedgerAccount, Posted
from ledger.money import Money, parse_amount, scale_of
from ledger.principal import PRINCIPAL

if TYPE_CHECKING:
    from ledger.book import Tx

REASON_LENGTH_MAX = 1000
_json = msgspec.json.Encoder(order="deterministic")

# An investment account with its balance: what the platform owes its investor (liabilities:investors:A).
ACCOUNT_COLUMNS = """a.account_id, a.product_id, a.agent_type, a.currency, a.fee_rate, a.status, a.agent_config,
       a.created_at, a.updated_at, -l.balance_minor AS balance_minor"""
ACCOUNT_FROM = f"investment_account a JOIN ledger_account l ON l.name = {chart.investors_sql('a.account_id')}"
_LOCK_ACCOUNTS = sa.text(f"SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_FROM} WHERE a.account_id = ANY(:ids)"  # noqa: S608 — module constants
                         " ORDER BY a.account_id FOR NO KEY UPDATE OF a")
_STATUS_OF_ACTION = {"pause": "paused", "resume": "active", "close": "closed"}
_EVENT_OF_ACTION = {"pause": "paused", "resume": "resumed", "close": "closed"}


def lock_account(tx: Tx, account_id: str) -> InvestmentAccount:
    """Lock A's row until commit (serialises read-then-write work on A) and return it."""
    account = lock_accounts(tx, [account_id]).get(account_id)
    if account is None:
        raise UnknownAccount(f"investment account {account_id!r} does not exist")
    return account


def lock_accounts(tx: Tx, account_ids: Iterable[str]) -> dict[str, InvestmentAccount]:
    """Lock several accounts in one statement, in account id order (the order every batch uses, so two
    batches wait for each other instead of deadlocking); the ones that exist, by id."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    rows = tx.connection.execute(_LOCK_ACCOUNTS, {"ids": ids}).mappings().all()
    return {row["account_id"]: account_of(row) for row in rows}


def open_account(tx: Tx, spec: AccountSpec) -> tuple[InvestmentAccount, bool]:
    """Open A with its chart, record the event and notify; (account, created). Idempotent per id."""
    if spec.initial_capital is not None and spec.initial_capital.currency != spec.currency:
        raise InvalidAmount("initial_capital must be in the account's currency")
    scale_of(spec.currency)
    inserted = tx.connection.execute(sa.text("""
        INSERT INTO investment_account (account_id, product_id, agent_type, currency, fee_rate, agent_config)
        VALUES (:account_id, :product_id, :agent_type, :currency, :fee_rate, CAST(:agent_config AS jsonb))
        ON CONFLICT (account_id) DO NOTHING RETURNING account_id"""), {
        "account_id": spec.account_id, "product_id": spec.product_id, "agent_type": spec.agent_type,
        "currency": spec.currency, "fee_rate": spec.fee_rate,
        "agent_config": _json.encode(spec.agent_config).decode()}).first()
    if inserted is None:
        existing = lock_account(tx, spec.account_id)
        if not _same_opening(existing, spec, _initial_capital(tx, spec.account_id)):
            raise DuplicateConflict(f"investment account {spec.account_id!r} exists with other details")
        return existing, False
    chart_rows = chart.accounts_for(spec.account_id, spec.currency)
    created = tx.connection.execute(sa.text("""
        INSERT INTO ledger_account (name, type, currency, investment_account_id)
        SELECT * FROM unnest(CAST(:names AS text[]), CAST(:types AS text[]), CAST(:currencies AS text[]),
                             CAST(:owners AS text[]))
        ON CONFLICT (name) DO NOTHING RETURNING id, name, type, currency"""), {
        "names": [name for name, _, _ in chart_rows], "types": [kind for _, kind, _ in chart_rows],
        "currencies": [spec.currency] * len(chart_rows), "owners": [owner for _, _, owner in chart_rows]})
    tx.created(LedgerAccount(row.id, row.name, row.type, row.currency) for row in created)
    _event(tx, spec.account_id, "created", "", "api")
    initial = spec.initial_capital
    if initial is not None and initial.is_positive():
        tx.post(rules.deposit(spec.account_id, initial, idempotency_key=_initial_key(spec.account_id),
                              memo="initial capital"))
    emit(tx, spec.account_id, "account.created", {
        "account_id": spec.account_id, "product_id": spec.product_id, "agent_type": spec.agent_type,
        "currency": spec.currency,
        "initial_capital": str(initial or Money.zero(spec.currency)),
        "agent_config": spec.agent_config})
    return lock_account(tx, spec.account_id), True


def change_status(tx: Tx, account_id: str, action: str, *, reason: str = "", source: str = "api",
                  notify: bool = True) -> InvestmentAccount:
    """pause | resume | close. Repeating the current state is a no-op; a closed account stays closed."""
    target = _STATUS_OF_ACTION[action]
    account = lock_account(tx, account_id)
    if account.status == target:
        return account
    if account.status == "closed":
        raise AccountStateConflict(f"account {account_id!r} is closed and cannot {action}")
    if action == "resume" and account.status != "paused":
        raise AccountStateConflict(f"account {account_id!r} is {account.status}, not paused")
    tx.connection.execute(sa.text(
        "UPDATE investment_account SET status = :status, updated_at = now() WHERE account_id = :id"),
        {"status": target, "id": account_id})
    kind = _EVENT_OF_ACTION[action]
    _event(tx, account_id, kind, reason, source)
    if notify:
        emit(tx, account_id, f"account.{kind}", {"account_id": account_id, "reason": reason})
    return lock_account(tx, account_id)


def deposit(tx: Tx, account_id: str, amount: object, *, idempotency_key: str, reference: str = "",
            source: str = "api", effective_at: datetime | None = None) -> Posted:
    """`effective_at`: the value date when it is not now (a wire booked after it arrived). A closed account
    refuses deposits (a replay of one booked before it closed is still answered)."""
    return _move_capital(tx, "deposit", account_id, amount, idempotency_key=idempotency_key, reference=reference,
                         source=source, effective_at=effective_at)


def withdraw(tx: Tx, account_id: str, amount: object, *, idempotency_key: str, reference: str = "",
             source: str = "api", effective_at: datetime | None = None) -> Posted:
    """`effective_at`: the value date when it is not now (a wire booked after it arrived)."""
    return _move_capital(tx, "withdrawal", account_id, amount, idempotency_key=idempotency_key, reference=reference,
                         source=source, effective_at=effective_at)


def _move_capital(tx: Tx, operation: str, account_id: str, amount: object, *, idempotency_key: str, reference: str,
                  source: str, effective_at: datetime | None) -> Posted:
    account = lock_account(tx, account_id)
    rule = rules.deposit if operation == "deposit" else rules.withdrawal
    draft = rule(account_id, parse_amount(amount, account.currency), idempotency_key=idempotency_key,
                 memo=reference, effective_at=effective_at, metadata=_capital_metadata(reference, source))
    if operation == "deposit" and account.status == "closed":  # refused, unless it is a replay of an earlier one
        replay = tx.existing(draft)
        if replay is None:
            raise AccountStateConflict(f"account {account_id!r} is closed; deposits are refused")
        return replay
    posted = tx.post(draft)  # answers a replay itself (or DuplicateConflict), before any overdraft check
    _capital_changed(tx, account_id, operation, draft.legs[0].amount, posted)
    return posted


def reverse(tx: Tx, entry_id: int, *, reason: str, idempotency_key: str | None = None) -> Posted:
    original = tx.entry(entry_id)
    if original.reversed_by_entry_id is not None and idempotency_key is None:
        raise AlreadyReversed(f"entry {entry_id} was already reversed by entry {original.reversed_by_entry_id}")
    if original.investment_account_id:
        lock_account(tx, original.investment_account_id)
    key = idempotency_key or f"reversal:{entry_id}"
    posted = tx.post(rules.reversal(original, reason=reason, idempotency_key=key))
    if not posted.replayed and original.kind in ("deposit", "withdrawal", "fee") and original.investment_account_id:
        account_id = original.investment_account_id
        amount = next(p.amount for p in original.postings if p.account == chart.investors(account_id))
        operation = "withdrawal" if original.kind == "deposit" else "deposit"
        _capital_changed(tx, account_id, operation, amount, posted)
    return posted


def emit(tx: Tx, account_id: str, topic: str, payload: dict[str, Any]) -> None:
    """Queue a notification in the outbox, in this transaction: it leaves only if this commits."""
    tx.connection.execute(sa.text(
        "INSERT INTO outbox_event (account_id, topic, payload) VALUES (:a, :t, CAST(:p AS jsonb))"),
        {"a": account_id, "t": topic, "p": _json.encode(payload).decode()})


def account_of(row: Any) -> InvestmentAccount:
    """An investment account from a row of ACCOUNT_COLUMNS."""
    return InvestmentAccount(
        account_id=row["account_id"], product_id=row["product_id"], agent_type=row["agent_type"],
        currency=row["currency"], fee_rate=Decimal(row["fee_rate"]), status=row["status"],
        agent_config=row["agent_config"], balance=Money(minor=row["balance_minor"], currency=row["currency"]),
        created_at=row["created_at"], updated_at=row["updated_at"])


def _capital_changed(tx: Tx, account_id: str, operation: str, amount: Money, posted: Posted) -> None:
    if posted.replayed:
        return
    emit(tx, account_id, "account.capital_changed", {
        "account_id": account_id, "operation": operation, "amount": str(amount),
        "new_total_capital": str(posted.balances_after[chart.investors(account_id)]),
        "entry_id": posted.entry_id})


def _capital_metadata(reference: str, source: str) -> dict[str, str]:
    return {"reference": reference, "source": source} if reference else {"source": source}


def _event(tx: Tx, account_id: str, kind: str, reason: str, source: str) -> None:
    tx.connection.execute(sa.text(
        "INSERT INTO account_event (account_id, kind, reason, source, recorded_by) VALUES (:a, :k, :r, :s, :by)"),
        {"a": account_id, "k": kind, "r": reason[:REASON_LENGTH_MAX], "s": source, "by": PRINCIPAL.get()})


def _initial_capital(tx: Tx, account_id: str) -> Money | None:
    row = tx.connection.execute(sa.text("""
        SELECT p.amount_minor, p.currency FROM journal_entry e JOIN posting p ON p.entry_id = e.id
         WHERE e.idempotency_key = :key AND p.side = 'C' LIMIT 1"""), {"key": _initial_key(account_id)}).first()
    return None if row is None else Money(minor=row.amount_minor, currency=row.currency)


def _same_opening(existing: InvestmentAccount, spec: AccountSpec, initial: Money | None) -> bool:
    wanted_initial = spec.initial_capital if spec.initial_capital and spec.initial_capital.is_positive() else None
    return (existing.product_id == spec.product_id and existing.agent_type == spec.agent_type
            and existing.currency == spec.currency and existing.fee_rate == spec.fee_rate
            and existing.agent_config == spec.agent_config and initial == wanted_initial)


def _initial_key(account_id: str) -> str:
    return f"account:{account_id}:initial-capital"
