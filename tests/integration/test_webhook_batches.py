"""Webhook group commit: `receive_many` (one transaction for a batch of deliveries) answers and books exactly
what `receive` one by one does, and `GroupCommit` hands every submitter its own answer.

The property: Hypothesis draws a sequence of deliveries over a few accounts — closed and open trades,
redeliveries (same event id, same body), conflicts (same event id, other content), trades repeated under
new event ids, profits finer than cents, zero profits, a trade on an unknown account, daily snapshots,
balance updates, engine errors, malformed and invalid bodies. The sequence is rendered twice with
different names (accounts, trades, event ids); one copy goes through `receive` one delivery at a time,
the other through `receive_many` in one call. Answers, books, stored events and alerts must be the same
once the names are put back.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integration.intake import GroupCommit
from integration.signature import Verified
from integration.webhooks import Delivery, Outcome, WebhookProcessor
from ledger import Ledger

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()
ACCOUNTS = 3  # account index 3 is never opened: a trade on an unknown account
PNLS = ("12.50", "-3.00", "0", "0.001", "250.00")

TRADE = st.fixed_dictionaries({
    "kind": st.just("trade"), "account": st.integers(0, ACCOUNTS), "trade": st.integers(0, 4),
    "status": st.sampled_from(["closed", "closed", "open"]), "pnl": st.sampled_from(PNLS),
    "hours_ago": st.sampled_from([1, 30, 80]), "event": st.one_of(st.none(), st.integers(0, 5))})
PERFORMANCE = st.fixed_dictionaries({
    "kind": st.just("performance"), "account": st.integers(0, ACCOUNTS - 1), "days_ago": st.integers(1, 3),
    "closing": st.sampled_from(["1000.00", "1010.00", "990.00"]), "event": st.one_of(st.none(), st.integers(0, 5))})
BALANCE = st.fixed_dictionaries({
    "kind": st.just("balance"), "account": st.integers(0, ACCOUNTS - 1),
    "balance": st.sampled_from(["1000.00", "1500.00"]), "event": st.integers(0, 5)})
ERROR = st.fixed_dictionaries({"kind": st.just("error"), "account": st.integers(0, ACCOUNTS - 1),
                               "event": st.integers(0, 5)})
BROKEN = st.fixed_dictionaries({"kind": st.sampled_from(["malformed", "invalid"]), "n": st.integers(0, 2)})
DELIVERY = st.one_of(TRADE, TRADE, TRADE, PERFORMANCE, BALANCE, ERROR, BROKEN)
# Redeliveries: a drawn delivery sent again later in the same sequence, byte for byte.
SEQUENCE = st.lists(DELIVERY, min_size=1, max_size=14).flatmap(
    lambda plan: st.lists(st.integers(0, len(plan) - 1), max_size=4).map(lambda again: plan + [plan[i] for i in again]))


def _render(plan: dict[str, Any], names: dict[int, str], tag: str) -> bytes:
    """One delivery's body for one copy of the world (`tag` names its trades and events)."""
    kind = plan["kind"]
    if kind == "malformed":
        return f'{{"event_type": "trade.executed", "{tag}-{plan["n"]}": '.encode()
    if kind == "invalid":
        return msgspec.json.encode({"event_type": "trade.executed", "event_id": f"{tag}-bad-{plan['n']}",
                                    "data": {"account_id": names[0], "trade_id": "x"}})
    envelope: dict[str, Any] = {"occurred_at": NOW.isoformat()}
    if plan["event"] is not None:
        envelope["event_id"] = f"{tag}-e{plan['event']}"
    account = names[plan["account"]]
    if kind == "trade":
        data: dict[str, Any] = {
            "trade_id": f"{tag}-t{plan['trade']}", "account_id": account, "symbol": "BTCUSDT", "side": "buy",
            "quantity": "0.5", "entry_price": "100", "status": plan["status"],
            "executed_at": (NOW - timedelta(hours=plan["hours_ago"])).isoformat()}
        if plan["status"] == "closed":
            data |= {"exit_price": "101", "profit_loss": plan["pnl"]}
        return msgspec.json.encode({"event_type": "trade.executed", **envelope, "data": data})
    if kind == "performance":
        return msgspec.json.encode({"event_type": "daily.performance", **envelope, "data": {
            "account_id": account, "date": (TODAY - timedelta(days=plan["days_ago"])).isoformat(),
            "opening_balance": "1000.00", "closing_balance": plan["closing"], "daily_return": "0.01",
            "trades_executed": 1, "winning_trades": 1, "losing_trades": 0}})
    if kind == "balance":
        return msgspec.json.encode({"event_type": "account.balance_updated", **envelope, "data": {
            "account_id": account, "new_balance": plan["balance"], "reason": "engine correction"}})
    return msgspec.json.encode({"event_type": "account.error", **envelope, "data": {
        "account_id": account, "error_type": "warning", "error_message": "slow market data"}})


def _neutral(text: str, names: dict[int, str], tag: str) -> str:
    """`text` with one world's names made neutral: accounts, the tag of its trades and events, the hash of a
    body and the row id of an event (the two worlds' rows are numbered apart)."""
    for index, name in names.items():
        text = text.replace(name, f"A{index}")
    text = re.sub("sha256:[0-9a-f]{64}", "sha256:H", text.replace(tag, "T"))
    return re.sub(r"\(event \d+\)", "(event N)", text)


def _answer(outcome: Outcome, strip: Callable[[str], str]) -> tuple:
    return (outcome.result, outcome.duplicate, len(outcome.entry_ids), outcome.event_type,
            strip(outcome.reason), outcome.event_id is not None)


def _world(engine: sa.Engine, names: dict[int, str], tag: str) -> dict[str, list[tuple]]:
    """What one copy of the world holds: entries and postings of its accounts, trade rows, stored webhook
    events and alerts, with its names put back to neutral ones."""
    def strip(value: object) -> object:
        return _neutral(value, names, tag) if isinstance(value, str) else value

    accounts = list(names.values())
    with engine.connect() as c:
        entries = c.execute(sa.text("""
            SELECT a.name, e.kind, e.idempotency_key, CASE WHEN e.kind = 'deposit' THEN NULL ELSE e.effective_at END,
                   e.memo, p.side, p.amount_minor, p.seq, p.late, p.balance_after_minor
              FROM journal_entry e JOIN posting p ON p.entry_id = e.id
              JOIN ledger_account a ON a.id = p.ledger_account_id
             WHERE a.name = ANY(SELECT 'liabilities:investors:' || x FROM unnest(CAST(:a AS text[])) AS x)
             ORDER BY a.name, p.seq"""), {"a": accounts}).all()
        trades = c.execute(sa.text("""
            SELECT t.trade_id, t.account_id, t.status, t.profit_loss_minor, e.idempotency_key
              FROM trade t LEFT JOIN journal_entry e ON e.id = t.entry_id
             WHERE t.trade_id LIKE :tag ORDER BY t.trade_id"""), {"tag": f"{tag}-%"}).all()
        events = c.execute(sa.text("""
            SELECT w.dedup_key, w.event_type, w.account_id, w.status, w.reason, w.delivery_count,
                   cardinality(w.entry_ids),
                   (SELECT array_agg(e.idempotency_key ORDER BY e.idempotency_key) FROM journal_entry e
                     WHERE e.id = ANY(w.entry_ids))
              FROM webhook_event w WHERE position(:tag IN convert_from(w.body, 'UTF8')) > 0"""),
            {"tag": tag}).all()
        alerts = c.execute(sa.text("""
            SELECT kind, account_id, message FROM alert
             WHERE account_id = ANY(CAST(:a AS text[])) OR position(:tag IN coalesce(event_key, '')) > 0"""),
            {"a": accounts, "tag": tag}).all()
    return {name: sorted((tuple(strip(v) if not isinstance(v, list) else tuple(map(strip, v)) for v in row)
                          for row in rows), key=repr)
            for name, rows in (("entries", entries), ("trades", trades), ("events", events), ("alerts", alerts))}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=SEQUENCE)
def test_a_batch_answers_and_books_what_one_by_one_does(ledger: Ledger, engine: sa.Engine,
                                                         open_account: Callable[..., str],
                                                         plan: list[dict[str, Any]]) -> None:
    processor = WebhookProcessor(ledger)
    worlds = {}
    for mode in ("one_by_one", "batch"):
        tag = f"{mode[0]}{uuid.uuid4().hex[:10]}"
        names = {i: open_account("1000.00") for i in range(ACCOUNTS)} | {ACCOUNTS: f"{tag}-nobody"}
        deliveries = [Delivery(body=_render(p, names, tag), signature_scheme="ml") for p in plan]
        if mode == "one_by_one":
            outcomes = [processor.receive(d.body, Verified(scheme=d.signature_scheme)) for d in deliveries]
        else:
            outcomes = processor.receive_many(deliveries)

        worlds[mode] = ([_answer(o, lambda text, n=names, t=tag: _neutral(text, n, t)) for o in outcomes],
                        _world(engine, names, tag))
    answers, books = worlds["batch"]
    assert answers == worlds["one_by_one"][0]
    for part in ("entries", "trades", "events", "alerts"):
        assert books[part] == worlds["one_by_one"][1][part], part


def test_a_batch_of_new_trades_is_booked_together(ledger: Ledger, engine: sa.Engine,
                                                  open_account: Callable[..., str]) -> None:
    """Sixteen trades on eight accounts in one call: all 200, one entry each, every event stored once, and the
    balances are the sums (the set-based path, not only the one-delivery path, is what ran: one statement
    stores all the events)."""
    processor = WebhookProcessor(ledger)
    accounts = [open_account("1000.00") for _ in range(8)]
    tag = uuid.uuid4().hex[:10]
    plans = [{"kind": "trade", "account": i % 8, "trade": i, "status": "closed", "pnl": "12.50", "hours_ago": 1,
              "event": i} for i in range(16)]
    names = dict(enumerate(accounts))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        outcomes = processor.receive_many([Delivery(body=_render(p, names, tag), signature_scheme="ml")
                                           for p in plans])
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert [o.result for o in outcomes] == ["applied"] * 16
    assert all(len(o.entry_ids) == 1 and o.event_id for o in outcomes)
    assert sum("INSERT INTO webhook_event" in s for s in statements) == 1
    with engine.connect() as c:
        for account_id in accounts:
            assert c.execute(sa.text("SELECT -balance_minor FROM ledger_account WHERE name = :n"),
                             {"n": f"liabilities:investors:{account_id}"}).scalar_one() == 100_000 + 2 * 1250


def test_a_batch_stores_each_event_as_received(ledger: Ledger, engine: sa.Engine,
                                               open_account: Callable[..., str]) -> None:
    """The set-based store keeps each body byte for byte (non-ASCII text, odd spacing and key order, escapes),
    with its content hash, entry ids (none for an open trade) and occurred_at."""
    processor = WebhookProcessor(ledger)
    account = open_account("1000.00")
    tag = uuid.uuid4().hex[:10]
    at = NOW - timedelta(hours=1)
    bodies = [
        (f'{{ "data" : {{"trade_id":"{tag}-1","account_id":"{account}","symbol":"BTCUSDT","side":"buy",'
         f'"quantity":"0.5","entry_price":"100","status":"closed","executed_at":"{at.isoformat()}",'
         f'"exit_price":"101","profit_loss":"12.50"}},\n\t"event_type":"trade.executed", "event_id": "{tag}-a", '
         r'"note": "caf\u00e9 € 漢字 \\ \"q\""}').encode(),
        msgspec.json.encode({"event_type": "trade.executed", "event_id": f"{tag}-b", "occurred_at": NOW.isoformat(),
                             "data": {"trade_id": f"{tag}-2", "account_id": account, "symbol": "ETHUSDT",
                                      "side": "sell", "quantity": "1", "entry_price": "10", "status": "open",
                                      "executed_at": at.isoformat()}}),
    ]
    outcomes = processor.receive_many([Delivery(body=b, signature_scheme="ml") for b in bodies])
    assert [o.result for o in outcomes] == ["applied", "applied"]
    assert len(outcomes[0].entry_ids) == 1 and outcomes[1].entry_ids == ()
    with engine.connect() as c:
        rows = c.execute(sa.text("""
            SELECT id, body, content_sha256, entry_ids, occurred_at, status, signature_scheme FROM webhook_event
             WHERE id = ANY(:ids) ORDER BY id"""), {"ids": [o.event_id for o in outcomes]}).all()
    assert [bytes(row.body) for row in rows] == bodies
    assert [row.id for row in rows] == [o.event_id for o in outcomes]  # ids in delivery order
    assert [list(row.entry_ids) for row in rows] == [list(outcomes[0].entry_ids), []]
    assert [row.occurred_at for row in rows] == [None, NOW]
    assert {row.status for row in rows} == {"applied"} and {row.signature_scheme for row in rows} == {"ml"}
    hashes = [bytes(row.content_sha256) for row in rows]
    assert len(set(hashes)) == 2 and all(len(h) == 32 for h in hashes)
    # The same content sent again (reformatted) is a duplicate of the stored hash: the hash was kept exactly.
    again = msgspec.json.encode(msgspec.json.decode(bodies[0]))
    assert processor.receive(again, Verified(scheme="ml")).duplicate


# ------------------------------------------------------------------------------------------ GroupCommit

def test_group_commit_batches_what_queues_behind_a_commit_and_answers_each() -> None:
    release = threading.Event()
    batches: list[list[int]] = []

    def apply_many(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            release.wait(10)  # the first batch "commits" slowly: the others queue behind it
        return [item * 10 for item in items]

    group = GroupCommit(apply_many, max_batch=8, committers=1)
    try:
        first = group.submit(0)
        while not batches:
            threading.Event().wait(0.001)
        futures = [group.submit(i) for i in range(1, 12)]
        release.set()
        assert first.result(10) == 0
        assert [f.result(10) for f in futures] == [i * 10 for i in range(1, 12)]
    finally:
        group.close()
    assert batches == [[0], list(range(1, 9)), list(range(9, 12))]


def test_a_failed_batch_is_applied_again_one_by_one() -> None:
    release = threading.Event()
    calls: list[list[str]] = []

    def apply_many(items: Sequence[str]) -> list[str]:
        calls.append(list(items))
        if items == ["first"]:
            release.wait(10)  # the others queue behind it and form the next batch
        if "poison" in items:
            raise ValueError("refused: poison")
        return [item.upper() for item in items]

    group = GroupCommit(apply_many, max_batch=8, committers=1)
    try:
        first = group.submit("first")
        while not calls:
            threading.Event().wait(0.001)
        futures = {item: group.submit(item) for item in ("a", "poison", "b")}
        release.set()
        assert first.result(10) == "FIRST"
        assert futures["a"].result(10) == "A" and futures["b"].result(10) == "B"
        with pytest.raises(ValueError, match="poison"):
            futures["poison"].result(10)
    finally:
        group.close()
    assert calls == [["first"], ["a", "poison", "b"], ["a"], ["poison"], ["b"]]


def test_close_applies_what_is_queued_and_a_later_submit_starts_again() -> None:
    applied: list[int] = []
    group = GroupCommit(lambda items: [applied.append(i) or i for i in items], committers=2)
    futures = [group.submit(i) for i in range(50)]
    group.close()
    assert sorted(applied) == list(range(50)) and all(f.done() for f in futures)
    assert group.submit(7).result(10) == 7
    group.close()


def test_a_new_key_reads_no_earlier_delivery(ledger: Ledger, engine: sa.Engine,
                                             open_account: Callable[..., str]) -> None:
    """The one-delivery path reads the events stored under a key only when the batch's read of the seen keys found
    it (or an earlier delivery of the batch had it): a new snapshot costs no such read; its redelivery, in the same
    batch and in a later one, does, and is answered as the first."""
    processor = WebhookProcessor(ledger)
    names = {0: open_account("1000.00")}
    tag = uuid.uuid4().hex[:10]
    body = _render({"kind": "performance", "account": 0, "days_ago": 1, "closing": "1010.00", "event": 1}, names, tag)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def reads_of_earlier_deliveries() -> int:
        return sum("FROM webhook_event WHERE dedup_key = %(k)s" in " ".join(s.split()) for s in statements)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        first = processor.receive_many([Delivery(body=body, signature_scheme="ml")])
        assert reads_of_earlier_deliveries() == 0
        again = processor.receive_many([Delivery(body=body, signature_scheme="ml")] * 2)
        assert reads_of_earlier_deliveries() == 2
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert first[0].result == "applied" and not first[0].duplicate and len(first[0].entry_ids) == 1
    assert [(o.result, o.duplicate, o.entry_ids, o.event_id) for o in again] == [
        ("applied", True, first[0].entry_ids, first[0].event_id)] * 2


def test_open_trades_read_no_trued_up_days(ledger: Ledger, engine: sa.Engine,
                                           open_account: Callable[..., str]) -> None:
    """Only a close books an entry that may need a late-fact offset: a batch of open trades does not read the
    trued-up days; closing them does (once for the batch), and books each close."""
    processor = WebhookProcessor(ledger)
    names = {0: open_account("1000.00")}
    tag = uuid.uuid4().hex[:10]
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def deliver(status: str) -> list[Outcome]:
        plans = [{"kind": "trade", "account": 0, "trade": n, "status": status, "pnl": "12.50", "hours_ago": 1,
                  "event": None} for n in range(3)]
        return processor.receive_many([Delivery(body=_render(p, names, tag), signature_scheme="ml") for p in plans])

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        opened = deliver("open")
        reads_when_open = sum("JOIN daily_performance" in s for s in statements)
        closed = deliver("closed")
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert [(o.result, o.entry_ids) for o in opened] == [("applied", ())] * 3
    assert reads_when_open == 0
    assert sum("JOIN daily_performance" in s for s in statements) == 1
    assert [(o.result, len(o.entry_ids)) for o in closed] == [("applied", 1)] * 3
