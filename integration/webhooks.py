"""Signed ML Engine webhooks in: store every verified delivery and turn it into ledger entries, once.

A delivery is stored and applied in one transaction: the stored event, its entries, the trade or snapshot
rows and any alert commit together or not at all (then the engine gets a 5xx and retries). Deliveries
that arrive together share that transaction (`receive_many`, a group commit fed by `integration.intake`),
each answered as if it had come alone. Deliveries with the same dedup key are serialised by an advisory
lock on the key, then by the account's row lock.

This module decodes, deduplicates, batches and stores deliveries; what a delivery books is
`integration.booking` (the ledger's policies, the same code as the back-fill's). Each delivery gets an `Outcome` —
applied, review (kept for a person: an unknown account, a conflict with what was recorded), malformed or invalid
(stored as rejected) — and `api/` alone turns it into an HTTP answer.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Literal

import msgspec
import sqlalchemy as sa

from integration import alerts
from integration.booking import Booked, Bookkeeper, Review
from integration.events import Event, TradeExecuted, decode, dedup_key, event_type_of
from integration.signature import Verified
from ledger import Ledger, Tx, acting_as
from ledger.errors import InvalidAmount, InvalidEntry
from ledger.model import InvestmentAccount

log = logging.getLogger("integration.webhooks")
_canonical = msgspec.json.Encoder(order="deterministic")

# The statements of the batch path, made once (a TextClause parses its text for bind parameters when built).
_LOCK_KEYS = sa.text("""
    SELECT count(pg_advisory_xact_lock(h))
      FROM (SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest(CAST(:keys AS text[])) AS k
             ORDER BY h) AS ordered""")
_SEEN_KEYS = sa.text("SELECT DISTINCT dedup_key FROM webhook_event WHERE dedup_key = ANY(:keys)")
_PREVIOUS = sa.text("SELECT id, content_sha256, status, reason, entry_ids FROM webhook_event WHERE dedup_key = :k "
                    "ORDER BY id")
_STORE_EVENTS = sa.text("""
    INSERT INTO webhook_event (dedup_key, content_sha256, event_type, account_id, body, signature_scheme,
                               status, reason, entry_ids, occurred_at)
    SELECT k, decode(h, 'base64'), t, a, decode(b, 'base64'), s, st, r, e, o
      FROM ROWS FROM (json_to_recordset(CAST(:rows AS json))
                      AS (k text, h text, t text, a text, b text, s text, st text, r text, e bigint[], o timestamptz))
           WITH ORDINALITY AS r(k, h, t, a, b, s, st, r, e, o, n)
     ORDER BY n
    RETURNING dedup_key, id""")


Result = Literal["applied", "review", "malformed", "invalid"]
RESULTS: tuple[str, ...] = Result.__args__
# A delivery's stored status (webhook_event.status) by result: malformed and invalid ones are both kept as rejected.
_STORED_STATUS: dict[str, str] = {"applied": "applied", "review": "review", "malformed": "rejected",
                                  "invalid": "rejected"}


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What became of a delivery (contract §6); `api/` answers it.

    `result`: applied (booked, or already booked), review (stored and kept for a person, `reason` says why),
    malformed (not JSON), invalid (an unknown event type or data the ledger cannot book; `reason`).
    `duplicate`: delivered before (or its fact was booked before): nothing changed, `entry_ids` are the first's.
    """

    result: Result
    duplicate: bool = False
    entry_ids: tuple[int, ...] = ()
    reason: str = ""
    event_id: int | None = None
    event_type: str = "unknown"


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


class WebhookProcessor:
    """Applies verified deliveries to the ledger. Thread-safe; one per process."""

    def __init__(self, ledger: Ledger, *, adjustment_alert_threshold: Decimal = Decimal("1000.00")) -> None:
        self.ledger = ledger
        self.bookkeeper = Bookkeeper(ledger, adjustment_alert_threshold=adjustment_alert_threshold)

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
                items.append(Outcome(result="invalid", reason=f"invalid event: {error}"))
                continue
            except msgspec.DecodeError as error:
                items.append(Outcome(result="malformed", reason=f"malformed JSON: {error}"))
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
            outcomes[i] = self._receive(tx, delivery, item, accounts, new=new)
        outcomes |= self._book_trade_deliveries(tx, run, accounts)
        return [outcomes[i] for i in range(len(items))]

    def _book_trade_deliveries(self, tx: Tx, run: list[tuple[int, Delivery, _Item]],
                               accounts: Mapping[str, InvestmentAccount]) -> dict[int, Outcome]:
        """Trade deliveries under new keys on locked accounts: their trades booked together (`Bookkeeper.trades`), their
        alerts raised, and their webhook_event rows stored in one statement. Outcomes by delivery index."""
        if not run:
            return {}
        trades = [item.event.data for _, _, item in run]
        currencies = {trade.account_id: accounts[trade.account_id].currency for trade in trades}
        answered: list[tuple[int, Delivery, _Item, Outcome]] = []
        answers = self.bookkeeper.trades(tx, currencies, trades, source="webhook")
        for (i, delivery, item), answer in zip(run, answers, strict=True):
            if isinstance(answer, Review):
                self._raise_review(tx.connection, item, answer)
                outcome = Outcome(result="review", reason=answer.reason, event_type=_TRADE)
            elif isinstance(answer, InvalidAmount | InvalidEntry):
                outcome = Outcome(result="invalid", reason=answer.detail, event_type=_TRADE)
            elif isinstance(answer, Exception):
                raise answer  # as the one-delivery path: the transaction fails and the engine retries
            else:
                entry_ids, duplicate = answer
                outcome = Outcome(result="applied", duplicate=duplicate, entry_ids=entry_ids, event_type=_TRADE)
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
                 "b": d.body, "s": d.signature_scheme, "st": _STORED_STATUS[o.result],
                 "r": o.reason[:2000], "e": o.entry_ids, "o": item.event.occurred_at} for d, item, o in stored]
        ids = dict(c.execute(_STORE_EVENTS, {"rows": _canonical.encode(rows).decode()}).all())
        return [ids[item.key] for _, item, _ in stored]

    @staticmethod
    def _raise_review(c: sa.Connection, item: _Item, review: Review) -> None:
        alerts.raise_alert(c, kind=review.kind, dedup_key=f"webhook:{item.key}:{item.content_sha256.hex()[:16]}",
                           message=review.reason, account_id=item.event.data.account_id, event_key=item.key)

    @staticmethod
    def _store_rejected(c: sa.Connection, delivery: Delivery, rejected: Outcome) -> Outcome:
        """An undecodable delivery is kept (under its body's hash, counted once per body) as rejected."""
        body_sha256 = hashlib.sha256(delivery.body).digest()
        event_id = c.execute(sa.text("""
            INSERT INTO webhook_event (dedup_key, content_sha256, event_type, body, signature_scheme, status, reason)
            VALUES (:k, :h, 'unknown', :b, :s, 'rejected', :r)
            ON CONFLICT (dedup_key, content_sha256) DO UPDATE
               SET delivery_count = webhook_event.delivery_count + 1, last_received_at = now()
            RETURNING id"""), {"k": "sha256:" + body_sha256.hex(), "h": body_sha256, "b": delivery.body,
                               "s": delivery.signature_scheme, "r": rejected.reason[:2000]}).scalar_one()
        return msgspec.structs.replace(rejected, event_id=event_id)

    def _receive(self, tx: Tx, delivery: Delivery, item: _Item, accounts: Mapping[str, InvestmentAccount], *,
                 new: bool) -> Outcome:
        """One delivery, its key's lock and its account's lock already held (`_receive_batch`). `new`: no event was
        stored under its key (`_SEEN_KEYS`, read under the key's lock, and none earlier in the batch), so there is no
        earlier delivery to read."""
        c = tx.connection
        event, key = item.event, item.key
        event_type = event_type_of(event)
        previous = [] if new else c.execute(_PREVIOUS, {"k": key}).all()
        same = next((row for row in previous if bytes(row.content_sha256) == item.content_sha256), None)
        if same is not None:  # a redelivery: answer as the first time, change nothing
            c.execute(sa.text("""UPDATE webhook_event SET delivery_count = delivery_count + 1, last_received_at = now()
                                 WHERE id = :id"""), {"id": same.id})
            result = {"applied": "applied", "review": "review"}.get(same.status, "invalid")  # decoded, so not malformed
            return Outcome(result=result, duplicate=True, entry_ids=tuple(same.entry_ids), reason=same.reason,
                           event_id=same.id, event_type=event_type)
        try:
            if previous:
                raise Review(f"dedup key {key!r} was first received (event {previous[0].id}) with other content",
                             "webhook_conflict")
            entry_ids, duplicate = self._apply(tx, event, key, accounts)
            outcome = Outcome(result="applied", duplicate=duplicate, entry_ids=tuple(entry_ids), event_type=event_type)
        except Review as review:
            self._raise_review(c, item, review)
            outcome = Outcome(result="review", reason=review.reason, event_type=event_type)
        except (InvalidAmount, InvalidEntry) as error:
            # Content the ledger cannot book (an amount finer than the currency's scale, a day not over yet).
            outcome = Outcome(result="invalid", reason=error.detail, event_type=event_type)
        [event_id] = self._store_events(c, [(delivery, item, outcome)])
        return msgspec.structs.replace(outcome, event_id=event_id)

    def _apply(self, tx: Tx, event: Event, key: str, accounts: Mapping[str, InvestmentAccount]) -> Booked:
        account_id = event.data.account_id
        account = accounts.get(account_id)  # locked by `_receive_batch`
        if account is None:
            raise Review(f"unknown account {account_id!r}", "unknown_account")
        return self.bookkeeper.apply(tx, event, key, account.currency)
