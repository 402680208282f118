"""A Hypothesis state machine against PostgreSQL: random ledger work, checked after every step against a
pure-Python model of what the balances must be (now, as of any time, and line by line in statements)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger import (
    AccountSpec,
    AlreadyReversed,
    DuplicateConflict,
    InsufficientFunds,
    InvalidEntry,
    Ledger,
    Money,
    Posted,
    rules,
)
from ledger import holds as h
from ledger.errors import HoldStateConflict
from ledger.verify import verify
from tests import strategies as s
from tests.readside.support import whole_trial_balance

ONE_MICROSECOND = timedelta(microseconds=1)
ACCOUNTS_MAX = 4


@dataclass
class ModelEntry:
    """One booked entry as the model sees it: its signed effect on the investor's balance."""

    entry_id: int
    account_id: str
    kind: str
    effective_at: datetime
    change_minor: int  # + credits the investor (deposit, gain), - debits (withdrawal, loss)
    order: int  # recording order, which breaks ties of effective time (the ledger's seq)
    reversed_by: int | None = None


@dataclass
class ModelAccount:
    account_id: str
    currency: str
    entries: list[ModelEntry] = field(default_factory=list)
    holds: dict[int, int] = field(default_factory=dict)  # open hold id -> amount
    resolved: dict[int, str] = field(default_factory=dict)  # hold id -> posted | voided | expired

    @property
    def balance_minor(self) -> int:
        return sum(e.change_minor for e in self.entries)

    @property
    def available_minor(self) -> int:
        return self.balance_minor - sum(self.holds.values())

    def balance_as_of(self, at: datetime) -> int:
        return sum(e.change_minor for e in self.entries if e.effective_at <= at)

    def in_statement_order(self) -> list[ModelEntry]:
        return sorted(self.entries, key=lambda e: (e.effective_at, e.order))

    def money(self, minor: int) -> Money:
        return Money(minor=minor, currency=self.currency)


@dataclass(frozen=True)
class Command:
    """A successful money command, kept to be replayed (same key) or contradicted (same key, other content)."""

    kind: str  # deposit | withdrawal | trade | reversal
    account_id: str
    key: str
    minor: int  # the amount (a signed change for trades)
    posted: Posted
    effective_at: datetime | None = None
    reverses: int | None = None
    reason: str = ""


def _investors(account_id: str) -> str:
    return f"liabilities:investors:{account_id}"


_STARTED = datetime.now(UTC)


class LedgerMachine(RuleBasedStateMachine):
    """Each run opens its own accounts, so runs never see each other's balances."""

    ledger: Ledger
    engine: sa.Engine
    seen: Counter[str] = Counter()  # what the runs exercised, so a vacuous run is noticed

    accounts = Bundle("accounts")
    commands = Bundle("commands")

    def __init__(self) -> None:
        super().__init__()
        self.run_id = uuid.uuid4().hex[:10]
        self.model: dict[str, ModelAccount] = {}
        self.entries: dict[int, ModelEntry] = {}
        self.order = 0
        self.steps = 0
        self.started = _STARTED  # fixed: the bounds of a strategy must not move between examples
        self.trades: list[tuple[str, int, datetime, Any]] = []  # (account, change, time, draft) booked

    # ------------------------------------------------------------------------------ helpers

    def _key(self, what: str) -> str:
        self.order += 1
        return f"sm:{self.run_id}:{what}:{self.order}"

    def _record(self, account_id: str, kind: str, posted: Posted, change_minor: int) -> ModelEntry:
        self.order += 1
        entry = ModelEntry(entry_id=posted.entry_id, account_id=account_id, kind=kind,
                           effective_at=posted.effective_at, change_minor=change_minor, order=self.order)
        assert posted.entry_id not in self.entries, "a new booking must be a new entry"
        self.model[account_id].entries.append(entry)
        self.entries[posted.entry_id] = entry
        account = self.model[account_id]
        assert not posted.replayed
        assert posted.balances_after[_investors(account_id)] == account.money(account.balance_minor)
        assert posted.balances_after[f"assets:custody:{account_id}"] == account.money(account.balance_minor)
        return entry

    def _amount_form(self, data: st.DataObject, currency: str, minor: int) -> object:
        """The same amount in any form a caller may send it (all must mean the same content)."""
        exact = s.decimal_of(minor, currency)
        forms: list[object] = [exact, format(exact, "f"), f"{minor}E-{s.SCALES[currency]}"]
        if minor % 10 ** s.SCALES[currency] == 0:
            forms.append(minor // 10 ** s.SCALES[currency])
        return data.draw(st.sampled_from(forms), label="amount form")

    def _unchanged(self, account_id: str, key: str) -> None:
        """After a refusal: the key is not booked and the balance is what the model says."""
        with self.engine.connect() as connection:
            booked = connection.execute(sa.text("SELECT count(*) FROM journal_entry WHERE idempotency_key = :k"),
                                        {"k": key}).scalar_one()
        assert booked == 0, f"a refused command booked {key}"
        account = self.model[account_id]
        assert self.ledger.balance(account_id) == account.money(account.balance_minor)

    # -------------------------------------------------------------------------------- rules

    @initialize(target=accounts, currency=s.ledger_currencies(), initial=st.booleans(), data=st.data())
    def first_account(self, currency: str, initial: bool, data: st.DataObject) -> str:
        return self._open(currency, initial, data)

    @precondition(lambda self: len(self.model) < ACCOUNTS_MAX)
    @rule(target=accounts, currency=s.ledger_currencies(), initial=st.booleans(), data=st.data())
    def open_account(self, currency: str, initial: bool, data: st.DataObject) -> str:
        return self._open(currency, initial, data)

    def _open(self, currency: str, initial: bool, data: st.DataObject) -> str:
        account_id = f"sm-{self.run_id}-{len(self.model)}"
        minor = data.draw(s.deposit_minor(currency), label="initial capital") if initial else None
        spec = AccountSpec(account_id=account_id, product_id="prod-sm", agent_type="swing", currency=currency,
                           fee_rate=Decimal("0.2"),
                           initial_capital=Money(minor=minor, currency=currency) if minor else None)
        opened, created = self.ledger.open_account(spec)
        assert created and opened.balance == Money(minor=minor or 0, currency=currency)
        self.model[account_id] = ModelAccount(account_id, currency)
        if minor:
            entry = self.ledger.journal(account_id=account_id)[0]
            posted = Posted(entry_id=entry.id, replayed=False, effective_at=entry.effective_at,
                            recorded_at=entry.recorded_at,
                            balances_after={p.account: p.balance_after for p in entry.postings})
            self._record(account_id, "deposit", posted, minor)
        again, created_again = self.ledger.open_account(spec)  # opening is idempotent per id
        assert not created_again and again.balance == opened.balance
        return account_id

    @rule(target=commands, account_id=accounts, data=st.data())
    def deposit(self, account_id: str, data: st.DataObject) -> Command:
        account = self.model[account_id]
        minor = data.draw(s.deposit_minor(account.currency), label="deposit")
        key = self._key("deposit")
        posted = self.ledger.deposit(account_id, self._amount_form(data, account.currency, minor), idempotency_key=key)
        self._record(account_id, "deposit", posted, minor)
        return Command("deposit", account_id, key, minor, posted)

    @rule(target=commands, account_id=accounts, data=st.data())
    def withdraw(self, account_id: str, data: st.DataObject) -> Any:
        account = self.model[account_id]
        balance = account.balance_minor
        # around the balance: exactly it, a little less or more, and anything up to twice it
        minor = data.draw(st.one_of(
            st.integers(min_value=1, max_value=max(1, 2 * balance)),
            st.sampled_from(sorted({max(1, balance), max(1, balance - 1), max(1, balance + 1),
                                    max(1, account.available_minor), max(1, account.available_minor + 1)}))),
            label="withdrawal")
        key = self._key("withdrawal")
        amount = self._amount_form(data, account.currency, minor)
        if minor > account.available_minor:  # open holds reserve part of the balance
            try:
                self.ledger.withdraw(account_id, amount, idempotency_key=key)
            except InsufficientFunds:
                self._unchanged(account_id, key)
                self.seen["overdraft refused"] += 1
                return multiple()
            pytest.fail(f"withdrew {minor} from a balance of {balance}")
        posted = self.ledger.withdraw(account_id, amount, idempotency_key=key)
        self._record(account_id, "withdrawal", posted, -minor)
        assert posted.balances_after[_investors(account_id)].minor >= 0
        return Command("withdrawal", account_id, key, minor, posted)

    @rule(target=commands, account_id=accounts, data=st.data())
    def trade(self, account_id: str, data: st.DataObject) -> Command:
        """A closed trade's gain or loss, at an effective time in the past: often before postings already
        booked (a "late" posting), sometimes exactly at another entry's time."""
        account = self.model[account_id]
        change = data.draw(s.signed_changes(account.currency), label="profit/loss")
        known = [e.effective_at for e in account.entries]
        times = s.past_times(self.started, timedelta(days=10))
        at = data.draw(st.one_of(times, st.sampled_from(known)) if known else times, label="executed_at")
        key = self._key("trade")
        posted = self.ledger.post(self._trade_draft(account_id, key, change, at))
        assert posted.effective_at == at
        self.seen["late trade" if any(e.effective_at > at for e in account.entries) else "trade"] += 1
        self._record(account_id, "trade", posted, change)
        self.trades.append((account_id, change, at, self._trade_draft(account_id, key, change, at)))
        return Command("trade", account_id, key, change, posted, effective_at=at)

    @rule(data=st.data(), size=st.integers(min_value=1, max_value=6), repeat=st.booleans())
    def trades_in_one_batch(self, data: st.DataObject, size: int, repeat: bool) -> None:
        """Several trades (any accounts, any times, late ones too) through `post_many`, with a key repeated
        inside the batch and one booked before: the same books as posting them one by one, in order."""
        drafts: list[tuple[str, int, datetime, Any]] = []
        for _ in range(size):
            account_id = data.draw(st.sampled_from(sorted(self.model)), label="account")
            change = data.draw(s.signed_changes(self.model[account_id].currency), label="profit/loss")
            at = data.draw(s.past_times(self.started, timedelta(days=10)), label="executed_at")
            key = self._key("batch-trade")
            drafts.append((account_id, change, at, self._trade_draft(account_id, key, change, at)))
        if repeat:  # the first draft again, and a trade booked by an earlier step
            drafts.append(drafts[0])
            if self.trades:
                drafts.append(data.draw(st.sampled_from(self.trades), label="booked before"))
        results = self.ledger.post_many([draft for *_, draft in drafts])
        assert len(results) == len(drafts)
        new = set()
        for (account_id, change, at, draft), posted in zip(drafts, results, strict=True):
            if posted.replayed:
                assert posted.entry_id in self.entries or posted.entry_id in new, "a replay of nothing"
                self.seen["batch replay"] += 1
                continue
            assert posted.effective_at == at
            self._record(account_id, "trade", posted, change)
            new.add(posted.entry_id)
            self.trades.append((account_id, change, at, draft))
        self.seen["batch"] += 1

    def _trade_draft(self, account_id: str, key: str, change: int, at: datetime) -> Any:
        currency = self.model[account_id].currency
        return rules.gain_or_loss("trade", account_id, Money(minor=change, currency=currency),
                                  idempotency_key=key, effective_at=at, memo="trade closed",
                                  metadata={"trade_id": key})

    def _reversible(self) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.reversed_by is None and e.kind != "reversal"]

    @precondition(lambda self: bool(self._reversible()))
    @rule(target=commands, data=st.data(), reason=s.reasons())
    def reverse(self, data: st.DataObject, reason: str) -> Any:
        original = data.draw(st.sampled_from(self._reversible()), label="entry to reverse")
        account = self.model[original.account_id]
        key = self._key("reversal")
        # a reversal that debits the investor may not overdraw (one that credits is never refused)
        if original.change_minor > 0 and account.available_minor - original.change_minor < 0:
            with pytest.raises(InsufficientFunds):
                self.ledger.reverse(original.entry_id, reason=reason, idempotency_key=key)
            self._unchanged(original.account_id, key)
            self.seen["reversal refused"] += 1
            return multiple()
        posted = self.ledger.reverse(original.entry_id, reason=reason, idempotency_key=key)
        reversal = self._record(original.account_id, "reversal", posted, -original.change_minor)
        original.reversed_by = reversal.entry_id
        self.seen["reversal"] += 1
        entry = self.ledger.entry(original.entry_id)
        assert entry.reversed_by_entry_id == posted.entry_id
        assert self.ledger.entry(posted.entry_id).reverses_entry_id == original.entry_id
        return Command("reversal", original.account_id, key, original.change_minor, posted,
                       reverses=original.entry_id, reason=reason)

    @precondition(lambda self: any(e.reversed_by for e in self.entries.values()))
    @rule(data=st.data(), with_new_key=st.booleans())
    def reverse_again(self, data: st.DataObject, with_new_key: bool) -> None:
        original = data.draw(st.sampled_from([e for e in self.entries.values() if e.reversed_by]))
        key = self._key("second-reversal") if with_new_key else None
        with pytest.raises(AlreadyReversed):
            self.ledger.reverse(original.entry_id, reason="again", idempotency_key=key)
        if key:
            self._unchanged(original.account_id, key)
        self.seen["second reversal refused"] += 1

    @precondition(lambda self: any(e.kind == "reversal" for e in self.entries.values()))
    @rule(data=st.data())
    def reverse_a_reversal(self, data: st.DataObject) -> None:
        reversal = data.draw(st.sampled_from([e for e in self.entries.values() if e.kind == "reversal"]))
        key = self._key("reversal-of-reversal")
        with pytest.raises(InvalidEntry):
            self.ledger.reverse(reversal.entry_id, reason="undo the undo", idempotency_key=key)
        self._unchanged(reversal.account_id, key)

    def _send(self, command: Command, data: st.DataObject, *, minor: int | None = None,
              account_id: str | None = None, kind: str | None = None, at: datetime | None = None,
              reason: str | None = None) -> Posted:
        """Send `command` again under its key, with whatever is overridden."""
        minor = command.minor if minor is None else minor
        account_id = account_id or command.account_id
        kind = kind or command.kind
        currency = self.model[account_id].currency
        if kind == "deposit":
            return self.ledger.deposit(account_id, self._amount_form(data, currency, minor),
                                       idempotency_key=command.key)
        if kind == "withdrawal":
            return self.ledger.withdraw(account_id, self._amount_form(data, currency, minor),
                                        idempotency_key=command.key)
        if kind == "trade":
            return self.ledger.post(self._trade_draft(account_id, command.key, minor, at or command.effective_at))
        assert command.reverses is not None
        return self.ledger.reverse(command.reverses, reason=command.reason if reason is None else reason,
                                   idempotency_key=command.key)

    # ------------------------------------------------------------------------ holds (two-phase)

    @rule(account_id=accounts, data=st.data())
    def place_hold(self, account_id: str, data: st.DataObject) -> None:
        account = self.model[account_id]
        free = account.available_minor
        minor = data.draw(st.one_of(st.integers(min_value=1, max_value=max(1, 2 * free)),
                                    st.sampled_from(sorted({max(1, free), max(1, free + 1)}))), label="hold")
        key = self._key("hold")
        if minor > free:
            with pytest.raises(InsufficientFunds):
                h.place_hold(self.ledger, account_id, s.decimal_of(minor, account.currency), idempotency_key=key)
            self.seen["hold refused"] += 1
            return
        hold = h.place_hold(self.ledger, account_id, self._amount_form(data, account.currency, minor),
                            idempotency_key=key)
        assert hold.status == "open" and hold.amount.minor == minor and not hold.replayed
        again = h.place_hold(self.ledger, account_id, s.decimal_of(minor, account.currency), idempotency_key=key)
        assert again.replayed and again.hold_id == hold.hold_id
        account.holds[hold.hold_id] = minor
        self.seen["hold"] += 1
        # Resolving it at once too: swarm testing often disables the post and void rules, and a hold's whole life in
        # one step keeps posting, voiding, expiry and a second resolution exercised in every run.
        then = data.draw(st.sampled_from(["keep", "post", "void", "expire"]), label="then")
        if then == "post":
            self._post(account_id, hold.hold_id, data)
        elif then != "keep":
            self._void(account_id, hold.hold_id, data, expire=then == "expire")

    def _open_holds(self) -> list[tuple[str, int]]:
        return [(a, hold_id) for a, account in self.model.items() for hold_id in account.holds]

    @precondition(lambda self: bool(self._open_holds()))
    @rule(data=st.data())
    def post_hold(self, data: st.DataObject) -> None:
        self._post(*data.draw(st.sampled_from(self._open_holds()), label="hold to post"), data)

    def _post(self, account_id: str, hold_id: int, data: st.DataObject) -> None:
        account = self.model[account_id]
        minor = account.holds[hold_id]
        if account.balance_minor < minor:  # losses took the balance below the hold: refused, the hold stays
            with pytest.raises(InsufficientFunds):
                h.post_hold(self.ledger, hold_id, account_id=account_id)
            self.seen["hold post refused"] += 1
            return
        before = account.available_minor
        hold, posted = h.post_hold(self.ledger, hold_id, account_id=account_id)
        assert hold.status == "posted" and hold.entry_id == posted.entry_id
        del account.holds[hold_id]
        account.resolved[hold_id] = "posted"
        self._record(account_id, "withdrawal", posted, -minor)
        assert account.available_minor == before  # posting moves the balance, not what is available
        self.seen["hold posted"] += 1
        self._maybe_again(account_id, hold_id, data)

    @precondition(lambda self: bool(self._open_holds()))
    @rule(data=st.data(), expire=st.booleans())
    def void_hold(self, data: st.DataObject, expire: bool) -> None:
        self._void(*data.draw(st.sampled_from(self._open_holds()), label="hold to void"), data, expire=expire)

    def _void(self, account_id: str, hold_id: int, data: st.DataObject, *, expire: bool) -> None:
        account = self.model[account_id]
        if expire:  # its time is up: the expiry job's work, for this account
            expired = h.expire_due(self.ledger, now=datetime.now(UTC) + timedelta(days=2), account_id=account_id)
            assert sorted(x.hold_id for x in expired) == sorted(account.holds)
            for x in expired:
                account.resolved[x.hold_id] = "expired"
            account.holds.clear()
            self.seen["hold expired"] += 1
        else:
            hold = h.void_hold(self.ledger, hold_id, reason="cancelled", account_id=account_id)
            assert hold.status == "voided"
            del account.holds[hold_id]
            account.resolved[hold_id] = "voided"
            self.seen["hold voided"] += 1
        self._maybe_again(account_id, hold_id, data)

    def _maybe_again(self, account_id: str, hold_id: int, data: st.DataObject) -> None:
        if data.draw(st.booleans(), label="resolve again"):
            self._again(hold_id, self.model[account_id].resolved[hold_id], post=data.draw(st.booleans(), label="post"))

    @precondition(lambda self: any(account.resolved for account in self.model.values()))
    @rule(data=st.data(), post=st.booleans())
    def resolve_again(self, data: st.DataObject, post: bool) -> None:
        """Posting a posted hold returns its entry; voiding a voided one changes nothing; any other second
        resolution is refused. The balances do not move (the invariants check it)."""
        _, hold_id, status = data.draw(st.sampled_from(sorted(
            (a, hold_id, status) for a, account in self.model.items() for hold_id, status in account.resolved.items())))
        self._again(hold_id, status, post=post)

    def _again(self, hold_id: int, status: str, *, post: bool) -> None:
        if post and status == "posted":
            hold, posted = h.post_hold(self.ledger, hold_id)
            assert hold.replayed and posted.replayed and posted.entry_id == hold.entry_id
        elif not post and status != "posted":
            assert h.void_hold(self.ledger, hold_id).replayed
        else:
            with pytest.raises(HoldStateConflict):
                (h.post_hold if post else h.void_hold)(self.ledger, hold_id)
        self.seen["hold resolved again"] += 1

    @rule(account_id=accounts, data=st.data(), workers=st.integers(min_value=2, max_value=8), hold=st.booleans())
    def holds_or_withdrawals_at_once(self, account_id: str, data: st.DataObject, workers: int, hold: bool) -> None:
        """Several threads place holds (or withdraw) the same amount at once: exactly as many succeed as the
        available balance allows, whatever the interleaving. (One kind per step: which of a mix succeeds depends on
        the interleaving, and the balances the later steps draw from would too. tests/ledger/test_holds.py races
        holds against withdrawals.)"""
        account = self.model[account_id]
        minor = data.draw(st.integers(min_value=1, max_value=max(1, account.available_minor // 2 + 1)), label="each")
        kinds = [hold] * workers
        keys = [self._key("at-once") for _ in range(workers)]
        barrier = threading.Barrier(workers, timeout=30)
        results: list[Any] = [None] * workers

        def work(i: int) -> None:
            barrier.wait()
            try:
                if kinds[i]:
                    results[i] = h.place_hold(self.ledger, account_id, s.decimal_of(minor, account.currency),
                                              idempotency_key=keys[i])
                else:
                    results[i] = self.ledger.withdraw(account_id, s.decimal_of(minor, account.currency),
                                                      idempotency_key=keys[i])
            except Exception as error:  # noqa: BLE001 — kept and checked below
                results[i] = error

        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        expected = min(workers, max(0, account.available_minor) // minor)
        assert all(r is not None and not isinstance(r, Exception) or isinstance(r, InsufficientFunds)
                   for r in results), results
        done = [(i, r) for i, r in enumerate(results) if not isinstance(r, InsufficientFunds)]
        assert len(done) == expected, (results, account.available_minor, minor)
        for i, result in done:
            if kinds[i]:
                account.holds[result.hold_id] = minor
        # The withdrawals in the order the database booked them (entry ids ascend with it, under the account lock).
        for _, result in sorted(((r.entry_id, r) for i, r in done if not kinds[i]), key=lambda pair: pair[0]):
            self._record_unordered(account_id, result, -minor)
        self.seen["at once"] += 1

    def _record_unordered(self, account_id: str, posted: Posted, change_minor: int) -> None:
        """A withdrawal booked concurrently: its balance after depends on the interleaving, so only the entry is
        recorded, in the order the database booked it (the statements' order among equal times)."""
        self.order += 1
        entry = ModelEntry(entry_id=posted.entry_id, account_id=account_id, kind="withdrawal",
                           effective_at=posted.effective_at, change_minor=change_minor, order=self.order)
        self.model[account_id].entries.append(entry)
        self.entries[posted.entry_id] = entry
        assert posted.balances_after[_investors(account_id)].minor >= 0

    @rule(command=commands, data=st.data())
    def replay(self, command: Command, data: st.DataObject) -> None:
        """The same command under the same key: the first answer again, nothing booked."""
        again = self._send(command, data)
        assert again.replayed
        assert again.entry_id == command.posted.entry_id
        assert (again.effective_at, again.recorded_at) == (command.posted.effective_at, command.posted.recorded_at)
        assert again.balances_after == command.posted.balances_after
        self.seen[f"{command.kind} replayed"] += 1

    @rule(command=commands, data=st.data())
    def conflicting_replay(self, command: Command, data: st.DataObject) -> None:
        """The same key with other content is a conflict, never a second booking."""
        changes: list[dict[str, Any]] = []
        if command.kind in ("deposit", "withdrawal"):
            changes += [{"minor": command.minor + 1},
                        {"kind": "withdrawal" if command.kind == "deposit" else "deposit"}]
            others = [a for a, m in self.model.items() if a != command.account_id]
            changes += [{"account_id": other} for other in others]
            if command.minor > 1:
                changes.append({"minor": command.minor - 1})
        elif command.kind == "trade":
            changes += [{"minor": -command.minor}, {"minor": command.minor + 1},
                        {"at": command.effective_at - ONE_MICROSECOND}]
        else:
            changes.append({"reason": command.reason + " (edited)"})
        change = data.draw(st.sampled_from(changes), label="conflicting change")
        with pytest.raises(DuplicateConflict):
            self._send(command, data, **change)
        self._unchanged_key(command)
        self.seen["conflict"] += 1

    def _unchanged_key(self, command: Command) -> None:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id FROM journal_entry WHERE idempotency_key = :k"),
                                      {"k": command.key}).scalars().all()
        assert rows == [command.posted.entry_id]

    @rule(command=consumes(commands))
    def forget(self, command: Command) -> None:
        """Drop a command from the replay pool, so the pool is not dominated by early commands."""

    # --------------------------------------------------------------------------- invariants

    @invariant()
    def books_balance(self) -> None:
        trial = whole_trial_balance(self.ledger.engine)
        assert trial.balanced, trial.totals
        totals: dict[str, int] = {}
        for row in trial.rows:
            assert row.debit.minor >= 0 and row.credit.minor >= 0 and not (row.debit.minor and row.credit.minor)
            totals[row.currency] = totals.get(row.currency, 0) + row.debit.minor - row.credit.minor
        assert all(total == 0 for total in totals.values()), totals
        rows = {row.account: row for row in trial.rows}
        for account_id, account in self.model.items():
            row = rows[_investors(account_id)]
            assert row.credit.minor - row.debit.minor == account.balance_minor

    @invariant()
    def balances_match_the_model(self) -> None:
        for account_id, account in self.model.items():
            expected = account.money(account.balance_minor)
            assert self.ledger.balance(account_id) == expected
            assert self.ledger.ledger_account_balance(f"assets:custody:{account_id}") == expected
            assert self.ledger.account(account_id).balance == expected

    @invariant()
    def no_withdrawal_overdrew(self) -> None:
        """In recording order (the order the check is made in), no withdrawal and no reversal that debits
        the investor left the balance below zero; only reported losses may."""
        with self.engine.connect() as connection:
            overdrawn = connection.execute(sa.text("""
                SELECT e.id, e.kind, -p.balance_after_minor FROM posting p
                  JOIN journal_entry e ON e.id = p.entry_id JOIN ledger_account a ON a.id = p.ledger_account_id
                 WHERE a.name = ANY(:names) AND p.balance_after_minor > 0
                   AND (e.kind = 'withdrawal' OR (e.kind = 'reversal' AND p.side = 'D'))"""),
                {"names": [_investors(a) for a in self.model]}).all()
        assert not overdrawn

    @invariant()
    def available_matches_the_model(self) -> None:
        """available = balance − open holds, and the open holds are the model's."""
        got = h.account_balances(self.ledger, list(self.model))
        for account_id, account in self.model.items():
            b = got[account_id]
            assert (b.balance.minor, b.held.minor, b.available.minor, b.open_holds) == (
                account.balance_minor, sum(account.holds.values()), account.available_minor, len(account.holds))
        open_ids = h.read(self.ledger, lambda tx: [
            x.hold_id for a in self.model for x in h.listing(tx, account_id=a, status="open", limit=1000)])
        assert sorted(open_ids) == sorted(i for account in self.model.values() for i in account.holds)

    @invariant()
    def balances_as_of_match_the_model(self) -> None:
        """Every entry's time, just before it, and between entries: one SQL round trip per account for all
        of them, and `Ledger.balance(as_of=…)` itself for a few that change from step to step."""
        self.steps += 1
        for account_id, account in self.model.items():
            times = sorted({e.effective_at for e in account.entries})
            probes = {self.started - timedelta(days=30), datetime.now(UTC) + timedelta(days=1)}
            probes |= {at for t in times for at in (t, t - ONE_MICROSECOND)}
            probes |= {before + (after - before) / 2 for before, after in pairwise(times)}
            ordered = sorted(probes)
            with self.engine.connect() as connection:
                got = connection.execute(sa.text("""
                    SELECT t.at, -ledger_balance_as_of(a.id, t.at) AS minor
                      FROM ledger_account a, unnest(CAST(:times AS timestamptz[])) AS t(at)
                     WHERE a.name = :name"""), {"times": ordered, "name": _investors(account_id)}).all()
            assert {row.at: row.minor for row in got} == {t: account.balance_as_of(t) for t in ordered}
            for i in {0, len(ordered) - 1, (self.steps * 7) % len(ordered), (self.steps * 13 + 5) % len(ordered)}:
                at = ordered[i]
                assert self.ledger.balance(account_id, as_of=at) == account.money(account.balance_as_of(at)), at

    @invariant()
    def statements_match_the_model(self) -> None:
        for account_id, account in self.model.items():
            statement = self.ledger.statement(_investors(account_id), limit=1000)
            expected = account.in_statement_order()
            assert [line.entry_id for line in statement.lines] == [e.entry_id for e in expected]
            running = statement.opening_balance.minor
            assert running == 0
            for line, entry in zip(statement.lines, expected, strict=True):
                running += line.amount.minor if line.side == "C" else -line.amount.minor
                assert line.balance.minor == running
                assert (line.side == "C") == (entry.change_minor > 0) and line.amount.minor == abs(entry.change_minor)
                assert line.effective_at == entry.effective_at
            assert statement.closing_balance.minor == running == account.balance_as_of(statement.end)
            assert statement.closing_balance == self.ledger.balance(account_id, as_of=statement.end)
            self._window(account_id, account, expected)

    def _window(self, account_id: str, account: ModelAccount, expected: list[ModelEntry]) -> None:
        """A statement between two entries' times: opens and closes at the as-of balances there."""
        if len(expected) < 2:
            return
        start = expected[self.steps % len(expected)].effective_at
        end = expected[(self.steps * 3) % len(expected)].effective_at
        start, end = min(start, end), max(start, end)
        statement = self.ledger.statement(_investors(account_id), start=start, end=end, limit=1000)
        assert statement.opening_balance.minor == account.balance_as_of(start - ONE_MICROSECOND)
        assert statement.opening_balance == self.ledger.balance(account_id, as_of=start - ONE_MICROSECOND)
        assert [line.entry_id for line in statement.lines] == [
            e.entry_id for e in expected if start <= e.effective_at <= end]
        assert statement.closing_balance.minor == account.balance_as_of(end)


def test_ledger_state_machine(ledger: Ledger, engine: sa.Engine) -> None:
    LedgerMachine.ledger = ledger
    LedgerMachine.engine = engine
    LedgerMachine.seen.clear()
    exercised = ("late trade", "overdraft refused", "conflict", "reversal", "second reversal refused",
                 "batch", "batch replay", "hold", "hold refused", "hold posted", "hold voided", "hold expired",
                 "hold resolved again", "at once")
    seen = LedgerMachine.seen
    # Random runs leave a rare behaviour out now and then (at 30 steps about one run in four): a run that missed one
    # is followed by another, at most three in all — every run checks every invariant, so more runs only add checks.
    for _ in range(3):
        run_state_machine_as_test(LedgerMachine, settings=settings(
            max_examples=25, stateful_step_count=50, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
        if all(seen[what] for what in exercised):
            break
    report = verify(engine)
    assert report.ok, report.findings
    assert [what for what in exercised if not seen[what]] == [], seen
    assert sum(n for what, n in seen.items() if what.endswith("replayed")), seen


def test_machine_finds_a_model_mismatch(ledger: Ledger, engine: sa.Engine, open_account: Callable[..., str]) -> None:
    """The invariants can fail: a model that forgets one deposit is caught by the first check."""
    machine = LedgerMachine()
    machine.ledger, machine.engine = ledger, engine
    account_id = open_account("10.00")
    machine.model[account_id] = ModelAccount(account_id, "USD")
    with pytest.raises(AssertionError):
        machine.balances_match_the_model()
    with pytest.raises(AssertionError):
        machine.statements_match_the_model()
