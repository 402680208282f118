"""Signed ML Engine webhooks in: store every verified delivery and turn it into ledger entries, once.

A delivery is stored and applied in one transaction: the stored event, its entries, the trade or snapshot
rows and any alert commit together or not at all (then the engine gets a 5xx and retries). Deliveries
that arrive together share that transaction (`receive_many`, a group commit fed by `integration.intake`),
each answered as if it had come alone. Deliveries with the same dedup key are serialised by an advisory
lock on the key, then by the account's row lock.

The accounting rules are the pure functions of `ledger.policies` — the trade booking (`trades`), the daily
true-up (`true_up`), the balance update as of its `occurred_at` (`balance_update`) and, under each, the late-fact
offset after a trued-up day (`late_facts`): this module reads what they need (what was recorded before, balances,
the trued-up days), calls them and posts the drafts they return.

Back-fill. `book_trade` and `book_performance` book a trade or a daily snapshot fetched from the engine
(the performance sync job) with exactly the rules above: the same trade and snapshot tables, the same
idempotency keys, the same late-fact offsets. So a fact booked by a webhook is not booked again by the
back-fill, and a webhook arriving after the back-fill is a duplicate.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
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
    decode,
    dedup_key,
    event_type_of,
)
from integration.signature import Verified
from ledger import EntryDraft, Ledger, Money, Tx, acting_as
from ledger.errors import InvalidAmount, InvalidEntry, LedgerError
from ledger.model import InvestmentAccount
from ledger.policies import balance_update, true_up
from ledger.policies.trades import RecordedTrade, TradeConflict, book_trade
from ledger.policies.true_up import RecordedSnapshot
from ledger.times import end_of_day

log = logging.getLogger("integration.webhooks")
_canonical = msgspec.json.Encoder(order="deterministic")

# The statements of the batch path, made once (a TextClause parses its text for bind parameters when built).
_LOCK_KEYS = sa.text("""
    SELECT count(pg_advisory_xact_lock(h))
      FROM (SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest(CAST(:keys AS text[])) AS k
             ORDER BY h) AS ordered""")
_SEEN_KEYS = sa.text("SELECT DISTINCT dedup_key FROM webhook_event WHERE dedup_key = ANY(:keys)")
_STORE_EVENTS = sa.text("""
    INSERT INTO webhook_event (dedup_key, content_sha256, event_type, account_id, body, signature_scheme,
                               status, reason, entry_ids, occurred_at)
    SELECT k, decode(h, 'base64'), t, a, decode(b, 'base64'), s, st, r, e, o
      FROM ROWS FROM (json_to_recordset(CAST(:rows AS json))
                      AS (k text, h text, t text, a text, b text, s text, st text, r text, e bigint[], o timestamptz))
           WITH ORDINALITY AS r(k, h, t, a, b, s, st, r, e, o, n)
     ORDER BY n
    RETURNING dedup_key, id""")
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


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What to answer the engine: status 200 (applied/duplicate), 202 (review), 400/422 (rejected)."""

    status_code: int
    duplicate: bool = False
    entry_ids: tuple[int, ...] = ()
    reason: str = ""
    event_id: int | None = None
    event_type: str = "unknown"
    result: str = "applied"  # applied | duplicate | review | rejected

    def body(self) -> dict[str, Any]:
        if self.status_code in (400, 422):
            return {"error": "malformed" if self.status_code == 400 else "invalid", "detail": self.reason}
        body: dict[str, Any] = {"received": True, "duplicate": self.duplicate, "entry_ids": list(self.entry_ids)}
        if self.status_code == 202:
            body["review"] = True
            body["reason"] = self.reason
        return body


def _rejected(status: int, reason: str) -> Outcome:
    return Outcome(status_code=status, reason=reason, result="rejected")


_TRADE = "trade.executed"


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One verified delivery as it came: the raw body, the signature scheme, and the webhook-id that signature covers
    (Standard Webhooks only; never an unsigned header)."""

    body: bytes
    webhook_id: str | None = None
    signature_scheme: str

    @classmethod
    def of(cls, body: bytes, verified: Verified) -> Delivery:
        """The delivery as its signature vouches for it: a webhook-id only where the signature covers it."""
        return cls(body=body, webhook_id=verified.webhook_id, signature_scheme=verified.scheme)


class _Item(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded delivery: the event, its dedup key and the hash of its canonical content."""

    event: Event
    key: str
    content_sha256: bytes


class Booking(msgspec.Struct, frozen=True, kw_only=True):
    """What booking one fact fetched from the engine did.

    `duplicate`: it was booked before (by a webhook or an earlier back-fill) and nothing changed;
    `review`: it conflicts with what was recorded (kept out of the books, with an alert) — the reason.
    """

    entry_ids: tuple[int, ...] = ()
    duplicate: bool = False
    review: str = ""


class _Review(Exception):
    """Keep the delivery for a person to look at (202), with an alert."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason, self.kind = reason, kind


class WebhookProcessor:
    """Applies verified deliveries to the ledger. Thread-safe; one per process."""

    def __init__(self, ledger: Ledger, *, adjustment_alert_threshold: Decimal = Decimal("1000.00")) -> None:
        self.ledger = ledger
        self.adjustment_alert_threshold = adjustment_alert_threshold

    def receive(self, body: bytes, verified: Verified) -> Outcome:
        """Store and apply one delivery whose signature has already been verified."""
        return self.receive_many([Delivery.of(body, verified)])[0]

    def receive_many(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Store and apply verified deliveries in ONE transaction (a group commit), answering each exactly as
        `receive` would have answered it had they arrived one by one in this order.

        Consecutive trade deliveries under new dedup keys, on known accounts, are booked set-based (a few
        statements for them all); anything else (a redelivery, a key seen earlier in the batch, another event
        type, an unknown account) goes through the one-delivery path at its place in the order. If the
        transaction fails, no delivery of the batch is stored.
        """
        items: list[_Item | Outcome] = []
        for delivery in deliveries:
            try:
                event = decode(delivery.body)
            except msgspec.ValidationError as error:
                items.append(_rejected(422, f"invalid event: {error}"))
                continue
            except msgspec.DecodeError as error:
                items.append(_rejected(400, f"malformed JSON: {error}"))
                continue
            # Same content = same canonical encoding: whitespace and key order do not make a conflict.
            items.append(_Item(event=event, key=dedup_key(event, delivery.body, delivery.webhook_id),
                               content_sha256=hashlib.sha256(_canonical.encode(event)).digest()))
        with acting_as("engine"):  # what a signed delivery books is the engine's doing
            return self.ledger.transact(lambda tx: self._receive_batch(tx, deliveries, items))

    def _receive_batch(self, tx: Tx, deliveries: Sequence[Delivery], items: list[_Item | Outcome]) -> list[Outcome]:
        c = tx.connection
        decoded = [item for item in items if isinstance(item, _Item)]
        keys = sorted({item.key for item in decoded})
        seen: set[str] = set()
        if keys:
            # Every key's lock up front, in the locks' own order (any two batches take them in the same order);
            # they serialise deliveries with the same key until commit.
            c.execute(_LOCK_KEYS, {"keys": keys})
            seen.update(c.execute(_SEEN_KEYS, {"keys": keys}).scalars())
        accounts = tx.lock_accounts(item.event.data.account_id for item in decoded)
        outcomes: dict[int, Outcome] = {}
        run: list[tuple[int, Delivery, _Item]] = []  # consecutive new trade deliveries, booked together
        for i, (delivery, item) in enumerate(zip(deliveries, items, strict=True)):
            if isinstance(item, Outcome):  # undecodable: stored as rejected, in order
                outcomes[i] = self._store_rejected(c, delivery, item)
                continue
            new = item.key not in seen
            seen.add(item.key)
            if new and isinstance(item.event, TradeExecuted) and item.event.data.account_id in accounts:
                run.append((i, delivery, item))
                continue
            outcomes |= self._book_trade_deliveries(tx, run, accounts)
            run = []
            outcomes[i] = self._receive(tx, delivery, item, accounts)
        outcomes |= self._book_trade_deliveries(tx, run, accounts)
        return [outcomes[i] for i in range(len(items))]

    def _book_trade_deliveries(self, tx: Tx, run: list[tuple[int, Delivery, _Item]],
                               accounts: Mapping[str, InvestmentAccount]) -> dict[int, Outcome]:
        """Trade deliveries under new keys on locked accounts: their trades booked together (`_trades`), their
        alerts raised, and their webhook_event rows stored in one statement. Outcomes by delivery index."""
        if not run:
            return {}
        trades = [item.event.data for _, _, item in run]
        currencies = {trade.account_id: accounts[trade.account_id].currency for trade in trades}
        answered: list[tuple[int, Delivery, _Item, Outcome]] = []
        answers = self._trades(tx, currencies, trades, source="webhook")
        for (i, delivery, item), answer in zip(run, answers, strict=True):
            if isinstance(answer, _Review):
                self._raise_review(tx.connection, item, answer)
                outcome = Outcome(status_code=202, reason=answer.reason, event_type=_TRADE, result="review")
            elif isinstance(answer, InvalidAmount | InvalidEntry):
                outcome = Outcome(status_code=422, reason=answer.detail, event_type=_TRADE, result="rejected")
            elif isinstance(answer, Exception):
                raise answer  # as the one-delivery path: the transaction fails and the engine retries
            else:
                entry_ids, duplicate = answer
                outcome = Outcome(status_code=200, duplicate=duplicate, entry_ids=entry_ids, event_type=_TRADE,
                                  result="duplicate" if duplicate else "applied")
            answered.append((i, delivery, item, outcome))
        event_ids = self._store_events(tx.connection, [(d, item, o) for _, d, item, o in answered])
        return {i: msgspec.structs.replace(outcome, event_id=event_id)
                for (i, _, _, outcome), event_id in zip(answered, event_ids, strict=True)}

    @staticmethod
    def _store_events(c: sa.Connection, stored: list[tuple[Delivery, _Item, Outcome]]) -> list[int]:
        """The webhook_event rows of decoded deliveries under distinct keys, in one statement; their ids, in order."""
        # The rows as one JSON document (bytes as base64, decoded back exactly by the statement): one parameter
        # instead of ten arrays, whose text-format dumping was a fifth of the batch's Python time.
        rows = [{"k": item.key, "h": item.content_sha256, "t": o.event_type, "a": item.event.data.account_id,
                 "b": d.body, "s": d.signature_scheme, "st": {"duplicate": "applied"}.get(o.result, o.result),
                 "r": o.reason[:2000], "e": o.entry_ids, "o": item.event.occurred_at} for d, item, o in stored]
        ids = dict(c.execute(_STORE_EVENTS, {"rows": _canonical.encode(rows).decode()}).all())
        return [ids[item.key] for _, item, _ in stored]

    @staticmethod
    def _raise_review(c: sa.Connection, item: _Item, review: _Review) -> None:
        alerts.raise_alert(c, kind=review.kind, dedup_key=f"webhook:{item.key}:{item.content_sha256.hex()[:16]}",
                           message=review.reason, account_id=item.event.data.account_id, event_key=item.key)

    @staticmethod
    def _store_rejected(c: sa.Connection, delivery: Delivery, rejected: Outcome) -> Outcome:
        """An undecodable delivery is kept (under its body's hash, counted once per body) and answered 400/422."""
        body_sha256 = hashlib.sha256(delivery.body).digest()
        event_id = c.execute(sa.text("""
            INSERT INTO webhook_event (dedup_key, content_sha256, event_type, body, signature_scheme, status, reason)
            VALUES (:k, :h, 'unknown', :b, :s, 'rejected', :r)
            ON CONFLICT (dedup_key, content_sha256) DO UPDATE
               SET delivery_count = webhook_event.delivery_count + 1, last_received_at = now()
            RETURNING id"""), {"k": "sha256:" + body_sha256.hex(), "h": body_sha256, "b": delivery.body,
                               "s": delivery.signature_scheme, "r": rejected.reason[:2000]}).scalar_one()
        return msgspec.structs.replace(rejected, event_id=event_id)

    def _receive(self, tx: Tx, delivery: Delivery, item: _Item,
                 accounts: Mapping[str, InvestmentAccount]) -> Outcome:
        """One delivery, its key's lock and its account's lock already held (`_receive_batch`)."""
        c = tx.connection
        event, key = item.event, item.key
        event_type = event_type_of(event)
        previous = c.execute(sa.text("""
            SELECT id, content_sha256, status, reason, entry_ids FROM webhook_event
             WHERE dedup_key = :k ORDER BY id"""),
            {"k": key}).all()
        same = next((row for row in previous if bytes(row.content_sha256) == item.content_sha256), None)
        if same is not None:  # a redelivery: answer as the first time, change nothing
            c.execute(sa.text("""UPDATE webhook_event SET delivery_count = delivery_count + 1, last_received_at = now()
                                 WHERE id = :id"""), {"id": same.id})
            status = {"applied": 200, "review": 202}.get(same.status, 422)
            return Outcome(status_code=status, duplicate=True, entry_ids=tuple(same.entry_ids), reason=same.reason,
                           event_id=same.id, event_type=event_type, result="duplicate")
        try:
            if previous:
                raise _Review(f"dedup key {key!r} was first received (event {previous[0].id}) with other content",
                              "webhook_conflict")
            entry_ids, duplicate = self._apply(tx, event, key, accounts)
            outcome = Outcome(status_code=200, duplicate=duplicate, entry_ids=tuple(entry_ids), event_type=event_type,
                              result="duplicate" if duplicate else "applied")
        except _Review as review:
            self._raise_review(c, item, review)
            outcome = Outcome(status_code=202, reason=review.reason, event_type=event_type, result="review")
        except (InvalidAmount, InvalidEntry) as error:
            # Content the ledger cannot book (an amount finer than the currency's scale, a day not over yet).
            outcome = Outcome(status_code=422, reason=error.detail, event_type=event_type, result="rejected")
        [event_id] = self._store_events(c, [(delivery, item, outcome)])
        return msgspec.structs.replace(outcome, event_id=event_id)

    # ------------------------------------------------------------------------------ back-fill

    def book_trade(self, trade: TradeData, *, source: str = "backfill") -> Booking:
        """Book a trade fetched from the engine exactly as its webhook would have been (see module doc)."""
        return self._book(trade.account_id, f"trade:{trade.trade_id}",
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
            for trade, answer in zip(trades, self._trades(tx, {account_id: account.currency}, trades,
                                                                   source=source),
                                     strict=True):
                if isinstance(answer, _Review):
                    key = f"trade:{trade.trade_id}"
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

    def _book(self, account_id: str, key: str,
              apply: Callable[[Tx, str], tuple[tuple[int, ...], bool]]) -> Booking:
        def work(tx: Tx) -> Booking:
            account = tx.lock_account(account_id)  # UnknownAccount propagates: the caller chose the account
            try:
                entry_ids, duplicate = apply(tx, account.currency)
            except _Review as review:
                alerts.raise_alert(tx.connection, kind=review.kind, dedup_key=f"backfill:{key}",
                                   message=f"back-fill: {review.reason}", account_id=account_id, event_key=key)
                return Booking(review=review.reason)
            return Booking(entry_ids=tuple(entry_ids), duplicate=duplicate)
        return self.ledger.transact(work)

    # ------------------------------------------------------------------------------ effects

    def _apply(self, tx: Tx, event: Event, key: str,
               accounts: Mapping[str, InvestmentAccount]) -> tuple[tuple[int, ...], bool]:
        account_id = event.data.account_id
        account = accounts.get(account_id)  # locked by `_receive_batch`
        if account is None:
            raise _Review(f"unknown account {account_id!r}", "unknown_account")
        if isinstance(event, TradeExecuted):
            return self._trade(tx, event.data, account.currency)
        if isinstance(event, DailyPerformance):
            return self._performance(tx, event.data, account.currency)
        if isinstance(event, BalanceUpdated):
            return self._balance_updated(tx, event, key, account.currency)
        return self._account_error(tx, event, key)

    def _trade(self, tx: Tx, trade: TradeData, currency: str, *,
               source: str = "webhook") -> tuple[tuple[int, ...], bool]:
        answer = self._trades(tx, {trade.account_id: currency}, [trade], source=source)[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _trades(self, tx: Tx, currencies: Mapping[str, str], trades: list[TradeData], *,
                source: str) -> list[tuple[tuple[int, ...], bool] | _Review | LedgerError]:
        """The trade rule for trades of the accounts in `currencies` (locked by the caller, with their currency),
        in order, in a few statements.

        Per trade: (its entry ids, whether it was booked before), or why it is not booked — `_Review` (it
        contradicts what was recorded) or a LedgerError (the ledger cannot book it). An open trade is
        recorded, not booked; an open after its close changes nothing; a close books the profit or loss
        (and an offset if a trued-up day already includes it, see the module doc); a close repeated with
        the same profit is a duplicate.
        """
        c = tx.connection
        recorded = {row.trade_id: RecordedTrade(row.account_id, row.status, row.profit_loss_minor, row.entry_id)
                    for row in c.execute(_KNOWN_TRADES, {"ids": [t.trade_id for t in trades]})}
        first_days: dict[str, date] = {}
        for t in trades:
            day = t.executed_at.astimezone(UTC).date()
            first_days[t.account_id] = min(day, first_days.get(t.account_id, day))
        snapshot_days = self._snapshot_days_of(c, {a: d for a, d in first_days.items() if a in currencies})
        answers: list[tuple[tuple[int, ...], bool] | _Review | LedgerError | None] = [None] * len(trades)
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
                booking = book_trade(trade, currency, recorded.get(trade.trade_id), snapshot_days[trade.account_id])
            except LedgerError as error:
                answers[i] = error
                continue
            if isinstance(booking, TradeConflict):
                answers[i] = _Review(booking.reason, "webhook_conflict")
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
                     source: str = "webhook") -> tuple[tuple[int, ...], bool]:
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
                raise _Review(replay.conflict, "webhook_conflict")
            return ((replay.true_up_entry_id,) if replay.true_up_entry_id else ()), True
        ledger_balance = tx.balance(perf.account_id, as_of=end_of_day(perf.date))
        booked = true_up.true_up(perf.account_id, perf.date, closing, ledger_balance, [row.date for row in days])
        entry_ids = [tx.post(draft).entry_id for draft in booked.drafts]  # the true-up, then its offset
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
                         currency: str) -> tuple[tuple[int, ...], bool]:
        data = event.data
        new_balance = Money.from_decimal(data.new_balance, currency)
        at = event.occurred_at.astimezone(UTC) if event.occurred_at else datetime.now(UTC)
        ledger_balance = tx.balance(data.account_id, as_of=at)
        days = self._snapshot_days_of(tx.connection, {data.account_id: at.date()})[data.account_id]
        booked = balance_update.adjustment(data.account_id, new_balance, ledger_balance, at=at,
                                           occurred=event.occurred_at is not None, reason=data.reason,
                                           event_key=key, snapshot_days=days)
        entry_ids = [tx.post(draft).entry_id for draft in booked.drafts]  # the adjustment, then its offset
        if entry_ids:
            self._alert_if_large(tx.connection, data.account_id, booked.difference,
                                 f"balance update ({data.reason})", key)
        return tuple(entry_ids), False

    def _account_error(self, tx: Tx, event: AccountError, key: str) -> tuple[tuple[int, ...], bool]:
        data = event.data
        if data.error_type == "critical":
            tx.change_status(data.account_id, "pause", reason=f"engine critical error: {data.error_message}",
                             source="engine", notify=False)
            alerts.raise_alert(tx.connection, kind="engine_critical_error", dedup_key=f"engine-error:{key}",
                               message=f"account {data.account_id} paused: {data.error_message}",
                               account_id=data.account_id, event_key=key)
        return (), False

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

