"""The engine's facts booked by the ledger's policies: read what a policy needs, call it, post its drafts.

One fact at a time or many trades at once, inside the caller's transaction (`Bookkeeper.apply`,
`Bookkeeper.trades`: the webhook path, `integration.webhooks`), or in a transaction of its own for a fact fetched
from the engine (`book_trade`, `book_trades`, `book_performance`: the performance sync's back-fill,
`integration.sync`). Both go through the same code, so a trade or a snapshot has the same rows, idempotency keys
and late-fact offsets whichever way it came: a fact booked by a webhook is not booked again by the back-fill, and a
webhook arriving after the back-fill is a duplicate.

The rules are the pure functions of `ledger.policies`:
- `trade.executed` → `ledger.policies.trades.book_trade` (closed, open, closed twice; the late-fact offset);
- `daily.performance` → `ledger.policies.true_up` (the replay check, the true-up and its offset);
- `account.balance_updated` → `ledger.policies.balance_update.adjustment` (as of `occurred_at`; its offset);
- `account.error` (critical) → the account paused (`Tx.change_status`; a closed one stays closed) and an alert.
What this module adds is I/O: what was recorded before (trade and daily_performance rows), balances as of a time,
the trued-up days, posting, the trade and snapshot rows, and an alert for a true-up or adjustment above
ADJUSTMENT_ALERT_THRESHOLD. It chooses no answer: a conflict is a `Review` (with the alert kind), a fact the ledger
cannot book a LedgerError; the caller decides what that means to whom.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import msgspec
import sqlalchemy as sa

from integration import alerts
from integration.events import (
    AccountError,
    BalanceUpdated,
    DailyPerformance,
    Event,
    PerformanceData,
    TradeData,
    TradeExecuted,
    WithdrawalConfirmed,
)
from ledger import EntryDraft, Ledger, Money, Tx, holds
from ledger.errors import AccountStateConflict, InsufficientFunds, InvalidEntry, LedgerError, UnknownHold
from ledger.policies import balance_update, true_up
from ledger.policies.trades import RecordedTrade, TradeConflict, book_trade, trade_key
from ledger.policies.true_up import RecordedSnapshot
from ledger.times import end_of_day

Booked = tuple[tuple[int, ...], bool]  # a fact's entry ids, and whether it was booked before (a duplicate)
_canonical = msgspec.json.Encoder(order="deterministic")

_KNOWN_TRADES = sa.text("""
    SELECT trade_id, status, profit_loss_minor, entry_id, account_id FROM trade WHERE trade_id = ANY(:ids)""")
_INSERT_TRADES = sa.text("""
    INSERT INTO trade (trade_id, account_id, symbol, side, quantity, entry_price, exit_price,
                       profit_loss_minor, status, executed_at, trade_date, entry_id, source)
    SELECT t, a, sym, side, q, ep, xp, pnl, status, at, day, e, CAST(:src AS text)
      FROM json_to_recordset(CAST(:rows AS json))
           AS r(t text, a text, sym text, side text, q numeric, ep numeric, xp numeric, pnl bigint,
                status text, at timestamptz, day date, e bigint)""")
_UPDATE_TRADE = sa.text("""
    UPDATE trade SET status = :status, exit_price = :xp, profit_loss_minor = :pnl, entry_id = :e,
           executed_at = :at, trade_date = :day, updated_at = now() WHERE trade_id = :t""")
_SNAPSHOTS_FROM = sa.text("""
    SELECT date, closing_balance_minor, true_up_entry_id FROM daily_performance
     WHERE account_id = :a AND date >= :d ORDER BY date""")
_SNAPSHOT_DAYS = sa.text("""
    SELECT p.account_id, p.date
      FROM unnest(CAST(:a AS text[]), CAST(:d AS date[])) AS f(a, d)
      JOIN daily_performance p ON p.account_id = f.a AND p.date >= f.d
     ORDER BY p.account_id, p.date""")


class Booking(msgspec.Struct, frozen=True, kw_only=True):
    """What booking one fact fetched from the engine did.

    `duplicate`: it was booked before (by a webhook or an earlier back-fill) and nothing changed;
    `review`: it conflicts with what was recorded (kept out of the books, with an alert) — the reason.
    """

    entry_ids: tuple[int, ...] = ()
    duplicate: bool = False
    review: str = ""


class Review(Exception):
    """The fact conflicts with what was recorded (or names an account the ledger lacks): kept out of the books, for
    a person to look at, with an alert of `kind`."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason, self.kind = reason, kind


class Bookkeeper:
    """Books the engine's facts by the ledger's policies (see the module docstring). Thread-safe; one per process."""

    def __init__(self, ledger: Ledger, *, adjustment_alert_threshold: Decimal = Decimal("1000.00")) -> None:
        self.ledger = ledger
        self.adjustment_alert_threshold = adjustment_alert_threshold

    # ------------------------------------------------------------------------------ in the caller's transaction

    def apply(self, tx: Tx, event: Event, key: str, currency: str) -> Booked:
        """Book one event (dedup key `key`) of an account locked by the caller, in `currency`. Raises Review or a
        LedgerError when it is not booked."""
        if isinstance(event, TradeExecuted):
            return self._trade(tx, event.data, currency)
        if isinstance(event, DailyPerformance):
            return self._performance(tx, event.data, currency)
        if isinstance(event, BalanceUpdated):
            return self._balance_updated(tx, event, key, currency)
        if isinstance(event, WithdrawalConfirmed):
            return self._withdrawal_confirmed(tx, event, currency)
        return self._account_error(tx, event, key)

    @staticmethod
    def _withdrawal_confirmed(tx: Tx, event: WithdrawalConfirmed, currency: str) -> Booked:
        """The engine freed the capital: post the hold (once; docs/holds.md). What cannot be posted is kept for
        review: an unknown hold, another amount, a hold already voided or expired, a balance losses took below it."""
        data = event.data
        try:
            hold = holds.get(tx, data.hold_id)
            if hold.account_id != data.account_id:
                raise UnknownHold(f"hold {data.hold_id} is not on account {data.account_id!r}")
        except UnknownHold as error:
            raise Review(error.detail, "hold_unknown") from None
        if Money.from_decimal(data.amount, currency) != hold.amount:
            raise Review(f"hold {hold.hold_id} is for {hold.amount}, the engine confirmed {data.amount}",
                         "hold_mismatch")
        if hold.status in ("voided", "expired"):
            raise Review(f"the engine confirmed hold {hold.hold_id}, which was {hold.status} "
                         f"({hold.reason or hold.status}); the freed capital is not withdrawn", "hold_not_open")
        try:
            hold, posted = holds.post(tx, hold.hold_id, account_id=data.account_id)
        except InsufficientFunds as error:
            raise Review(f"hold {data.hold_id} cannot post: {error.detail}", "hold_refused") from None
        return (posted.entry_id,), posted.replayed

    def _trade(self, tx: Tx, trade: TradeData, currency: str, *, source: str = "webhook") -> Booked:
        answer = self.trades(tx, {trade.account_id: currency}, [trade], source=source)[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def trades(self, tx: Tx, currencies: Mapping[str, str], trades: list[TradeData], *,
               source: str) -> list[Booked | Review | LedgerError]:
        """The trade rule for trades of the accounts in `currencies` (locked by the caller, with their currency),
        in order, in a few statements.

        Per trade: (its entry ids, whether it was booked before), or why it is not booked — `Review` (it
        contradicts what was recorded) or a LedgerError (the ledger cannot book it). An open trade is
        recorded, not booked; an open after its close changes nothing; a close books the profit or loss
        (and an offset if a trued-up day already includes it); a close repeated with the same profit is a
        duplicate (`ledger.policies.trades`).
        """
        c = tx.connection
        recorded = {row.trade_id: RecordedTrade(row.account_id, row.status, row.profit_loss_minor, row.entry_id)
                    for row in c.execute(_KNOWN_TRADES, {"ids": [t.trade_id for t in trades]})}
        first_days: dict[str, date] = {}
        for t in trades:
            if t.status == "closed":  # only a close books an entry, and so may need an offset: open trades read none
                day = t.executed_at.astimezone(UTC).date()
                first_days[t.account_id] = min(day, first_days.get(t.account_id, day))
        snapshot_days = self._snapshot_days_of(c, {a: d for a, d in first_days.items() if a in currencies})
        answers: list[Booked | Review | LedgerError | None] = [None] * len(trades)
        closed_at: dict[str, int] = {}  # trade id -> index of the trade that closed it in this batch
        duplicates: dict[int, int] = {}  # index -> index of that trade
        drafts: list[tuple[int, EntryDraft]] = []  # (trade index, draft), in booking order
        rows: list[tuple[TradeData, int | None, int, bool]] = []  # (trade, pnl, index, update) to store
        for i, trade in enumerate(trades):
            try:
                currency = currencies.get(trade.account_id)
                if currency is None:
                    raise InvalidEntry(f"trade {trade.trade_id} belongs to {trade.account_id}, "
                                       f"not {' or '.join(currencies)}")
                booking = book_trade(trade, currency, recorded.get(trade.trade_id),
                                     snapshot_days.get(trade.account_id, []))
            except LedgerError as error:
                answers[i] = error
                continue
            if isinstance(booking, TradeConflict):
                answers[i] = Review(booking.reason, "webhook_conflict")
            elif booking.duplicate:
                if trade.status == "closed" and trade.trade_id in closed_at:  # closed earlier in this batch
                    duplicates[i] = closed_at[trade.trade_id]  # its entry, once posted
                else:
                    answers[i] = ((booking.entry_id,) if booking.entry_id else (), True)
            else:
                rows.append((trade, booking.profit_loss_minor, i, trade.trade_id in recorded))
                recorded[trade.trade_id] = RecordedTrade(trade.account_id, trade.status, booking.profit_loss_minor,
                                                         None)
                drafts += [(i, draft) for draft in booking.drafts]
                if trade.status == "closed":
                    closed_at[trade.trade_id] = i
        entry_ids: dict[int, list[int]] = {}
        for (i, _), posted in zip(drafts, tx.post_many([draft for _, draft in drafts]), strict=True):
            entry_ids.setdefault(i, []).append(posted.entry_id)
        self._store_trades(c, [(trade, pnl, (entry_ids.get(i) or [None])[0], update)
                               for trade, pnl, i, update in rows], source=source)
        for i, first in duplicates.items():
            answers[i] = (tuple(entry_ids.get(first, ())[:1]), True)
        return [answer if answer is not None else (tuple(entry_ids.get(i, ())), False)
                for i, answer in enumerate(answers)]

    @staticmethod
    def _store_trades(c: sa.Connection, rows: list[tuple[Any, int | None, int | None, bool]], *,
                      source: str) -> None:
        """(trade, profit/loss in minor units, its entry, update?) rows: new trades inserted (one statement),
        then the ones known as open updated, in order (psycopg pipelines the parameter sets)."""
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for trade, pnl_minor, entry_id, update in rows:
            (updates if update else inserts).append({
                "t": trade.trade_id, "a": trade.account_id, "sym": trade.symbol, "side": trade.side,
                "q": trade.quantity, "ep": trade.entry_price, "xp": trade.exit_price, "pnl": pnl_minor,
                "status": trade.status, "at": trade.executed_at, "day": trade.executed_at.astimezone(UTC).date(),
                "e": entry_id})
        if inserts:  # one statement for them all, the rows as one JSON document (Decimals as exact strings)
            c.execute(_INSERT_TRADES, {"rows": _canonical.encode(inserts).decode(), "src": source})
        if updates:
            c.execute(_UPDATE_TRADE, updates)

    def _performance(self, tx: Tx, perf: PerformanceData, currency: str, *,
                     source: str = "webhook") -> Booked:
        c = tx.connection
        closing = Money.from_decimal(perf.closing_balance, currency)
        opening = Money.from_decimal(perf.opening_balance, currency)
        true_up.refuse_unfinished_day(perf.date, datetime.now(UTC))
        # This day's snapshot if it was booked before, and the later days already trued up, in one read.
        days = c.execute(_SNAPSHOTS_FROM, {"a": perf.account_id, "d": perf.date}).all()
        if days and days[0].date == perf.date:
            replay = true_up.replayed(perf.account_id, perf.date, closing,
                                      RecordedSnapshot(days[0].closing_balance_minor, days[0].true_up_entry_id))
            if replay.conflict:
                raise Review(replay.conflict, "webhook_conflict")
            return ((replay.true_up_entry_id,) if replay.true_up_entry_id else ()), True
        ledger_balance = tx.balance(perf.account_id, as_of=end_of_day(perf.date))
        booked = true_up.true_up(perf.account_id, perf.date, closing, ledger_balance, [row.date for row in days])
        entry_ids = [p.entry_id for p in tx.post_many(booked.drafts)]  # the true-up, then its offset: all or none
        if entry_ids:
            self._alert_if_large(c, perf.account_id, booked.difference, f"true-up of {perf.date}",
                                 f"performance:{perf.account_id}:{perf.date.isoformat()}")
        c.execute(sa.text("""
            INSERT INTO daily_performance (account_id, date, opening_balance_minor, closing_balance_minor, daily_return,
                trades_executed, winning_trades, losing_trades, ledger_balance_minor, true_up_entry_id, source)
            VALUES (:a, :d, :o, :c, :r, :n, :w, :l, :lb, :e, :src)"""), {
            "a": perf.account_id, "d": perf.date, "o": opening.minor, "c": closing.minor, "r": perf.daily_return,
            "n": perf.trades_executed, "w": perf.winning_trades, "l": perf.losing_trades,
            "lb": ledger_balance.minor, "e": entry_ids[0] if entry_ids else None, "src": source})
        return tuple(entry_ids), False

    def _balance_updated(self, tx: Tx, event: BalanceUpdated, key: str,
                         currency: str) -> Booked:
        data = event.data
        new_balance = Money.from_decimal(data.new_balance, currency)
        at = event.occurred_at.astimezone(UTC) if event.occurred_at else datetime.now(UTC)
        ledger_balance = tx.balance(data.account_id, as_of=at)
        days = self._snapshot_days_of(tx.connection, {data.account_id: at.date()})[data.account_id]
        booked = balance_update.adjustment(data.account_id, new_balance, ledger_balance, at=at,
                                           occurred=event.occurred_at is not None, reason=data.reason,
                                           event_key=key, snapshot_days=days)
        entry_ids = [p.entry_id for p in tx.post_many(booked.drafts)]  # the adjustment, then its offset: all or none
        if entry_ids:
            self._alert_if_large(tx.connection, data.account_id, booked.difference,
                                 f"balance update ({data.reason})", key)
        return tuple(entry_ids), False

    def _account_error(self, tx: Tx, event: AccountError, key: str) -> Booked:
        data = event.data
        if data.error_type == "critical":
            try:
                tx.change_status(data.account_id, "pause", reason=f"engine critical error: {data.error_message}",
                                 source="engine", notify=False)
                done = "paused"
            except AccountStateConflict:  # closed (refused before any write): it stays closed, stopped more than paused
                done = "is closed, not paused"
            alerts.raise_alert(tx.connection, kind="engine_critical_error", dedup_key=f"engine-error:{key}",
                               message=f"account {data.account_id} {done}: {data.error_message}",
                               account_id=data.account_id, event_key=key)
        return (), False

    # ------------------------------------------------------------------------------ back-fill: a transaction each

    def book_trade(self, trade: TradeData, *, source: str = "backfill") -> Booking:
        """Book a trade fetched from the engine exactly as its webhook would have been."""
        return self._book(trade.account_id, trade_key(trade.trade_id),
                          lambda tx, currency: self._trade(tx, trade, currency, source=source))

    def book_trades(self, account_id: str, trades: list[TradeData], *,
                    source: str = "backfill") -> list[Booking | LedgerError]:
        """Many trades of one account fetched from the engine, in one transaction and a few statements: the
        same rows, entries, idempotency keys and late-fact offsets as `book_trade` one by one, in order.

        A trade the ledger cannot book (e.g. a profit finer than the currency's scale) is answered with its
        error and the others are booked; an error of the batch itself (the database refusing it) raises,
        and nothing of it is booked — the caller may then book the trades one by one.
        """
        def work(tx: Tx) -> list[Booking | LedgerError]:
            account = tx.lock_account(account_id)
            out: list[Booking | LedgerError] = []
            answers = self.trades(tx, {account_id: account.currency}, trades, source=source)
            for trade, answer in zip(trades, answers, strict=True):
                if isinstance(answer, Review):
                    key = trade_key(trade.trade_id)
                    alerts.raise_alert(tx.connection, kind=answer.kind, dedup_key=f"backfill:{key}",
                                       message=f"back-fill: {answer.reason}", account_id=account_id, event_key=key)
                    out.append(Booking(review=answer.reason))
                elif isinstance(answer, LedgerError):
                    out.append(answer)
                else:
                    out.append(Booking(entry_ids=answer[0], duplicate=answer[1]))
            return out
        return self.ledger.transact(work)

    def book_performance(self, performance: PerformanceData, *, source: str = "backfill") -> Booking:
        """Book a daily snapshot fetched from the engine exactly as its webhook would have been."""
        return self._book(performance.account_id,
                          f"performance:{performance.account_id}:{performance.date.isoformat()}",
                          lambda tx, currency: self._performance(tx, performance, currency, source=source))

    def _book(self, account_id: str, key: str, apply: Callable[[Tx, str], Booked]) -> Booking:
        def work(tx: Tx) -> Booking:
            account = tx.lock_account(account_id)  # UnknownAccount propagates: the caller chose the account
            try:
                entry_ids, duplicate = apply(tx, account.currency)
            except Review as review:
                alerts.raise_alert(tx.connection, kind=review.kind, dedup_key=f"backfill:{key}",
                                   message=f"back-fill: {review.reason}", account_id=account_id, event_key=key)
                return Booking(review=review.reason)
            return Booking(entry_ids=tuple(entry_ids), duplicate=duplicate)
        return self.ledger.transact(work)

    # ------------------------------------------------------------------------------ reads for the policies

    @staticmethod
    def _snapshot_days_of(c: sa.Connection, first_days: Mapping[str, date]) -> dict[str, list[date]]:
        """The trued-up days (engine snapshots booked) of each account from its given day on, in order."""
        days: dict[str, list[date]] = {account_id: [] for account_id in first_days}
        if first_days:
            for account_id, day in c.execute(_SNAPSHOT_DAYS, {"a": list(first_days), "d": list(first_days.values())}):
                days[account_id].append(day)
        return days

    def _alert_if_large(self, c: sa.Connection, account_id: str, difference: Money, what: str, key: str) -> None:
        if abs(difference.to_decimal()) > self.adjustment_alert_threshold:
            alerts.raise_alert(c, kind="large_adjustment", dedup_key=f"adjustment:{key}",
                               message=f"{what} moved account {account_id} by {difference} "
                                       f"(threshold {self.adjustment_alert_threshold})",
                               account_id=account_id, event_key=key, details={"difference": str(difference)})

