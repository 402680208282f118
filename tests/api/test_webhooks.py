"""The ML Engine webhook over ASGI on the real database: signatures, duplicates and the late-fact cases."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from api.errors import WEBHOOK_STATUS, webhook_answer
from integration.signature import sign, sign_standard
from integration.webhooks import RESULTS, Outcome
from ledger import Money, rules
from tests.api.conftest import ROTATED_SECRET, WEBHOOK_SECRET, auth
from tests.api.test_accounts import open_account as open_account_now


def open_account(client, keys, initial: str = "1000.00", *, ledger=None) -> str:
    """An account whose initial capital was deposited ten days ago, before any simulated trading day."""
    if ledger is None:
        return open_account_now(client, keys, initial)
    account_id = open_account_now(client, keys, None)
    ledger.post(rules.deposit(account_id, Money.from_decimal(initial, "USD"), idempotency_key=f"{account_id}:past",
                              effective_at=datetime.now(UTC) - timedelta(days=10), memo="initial capital"))
    return account_id

URL = "/api/v1/webhooks/ml-engine"


def send(client, event_type: str, data: dict, *, secret: str = WEBHOOK_SECRET, **envelope):
    body = json.dumps({"event_type": event_type, "data": data, **envelope}).encode()
    return client.post(URL, content=body, headers={"X-ML-Signature": sign(secret, body),
                                                   "content-type": "application/json"})


def trade(account_id: str, *, status: str = "closed", pnl: str | None = "12.50", at: datetime | None = None,
          trade_id: str | None = None) -> dict:
    data = {"trade_id": trade_id or f"t-{uuid.uuid4().hex[:8]}", "account_id": account_id, "symbol": "EURUSD",
            "side": "buy", "quantity": 1000, "entry_price": 1.0841, "status": status,
            "executed_at": (at or datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")}
    if status == "closed":
        data |= {"exit_price": 1.0853, "profit_loss": json.loads(pnl) if pnl is not None else None}
    return data


def performance(account_id: str, day: date, closing: str, opening: str = "1000.00") -> dict:
    return {"account_id": account_id, "date": day.isoformat(), "opening_balance": opening,
            "closing_balance": closing, "daily_return": "0.01", "trades_executed": 3, "winning_trades": 2,
            "losing_trades": 1}


def balance(client, keys, account_id: str, as_of: str | None = None) -> str:
    url = f"/api/v1/accounts/{account_id}/balance" + (f"?as_of={as_of}" if as_of else "")
    return client.get(url, headers=auth(keys["finance"])).json()["balance"]


def stored(engine: sa.Engine, account_id: str) -> list[sa.Row]:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT * FROM webhook_event WHERE account_id = :a ORDER BY id"),
                         {"a": account_id}).all()


# ------------------------------------------------------------------------------------------ signatures

def test_missing_or_wrong_signature_is_401_and_nothing_stored(client, keys, engine) -> None:
    account_id = open_account(client, keys)
    body = json.dumps({"event_type": "trade.executed", "data": trade(account_id)}).encode()
    assert client.post(URL, content=body).status_code == 401
    assert client.post(URL, content=body, headers={"X-ML-Signature": sign("wrong-secret-000000000", body)}
                       ).status_code == 401
    tampered = body.replace(b"12.5", b"99.5")
    assert client.post(URL, content=tampered, headers={"X-ML-Signature": sign(WEBHOOK_SECRET, body)}
                       ).status_code == 401
    reserialised = json.dumps(json.loads(body), indent=2).encode()
    assert client.post(URL, content=reserialised, headers={"X-ML-Signature": sign(WEBHOOK_SECRET, body)}
                       ).status_code == 401
    assert stored(engine, account_id) == []
    assert balance(client, keys, account_id) == "1000.00"


def test_rotated_secret_and_standard_webhooks(client, keys) -> None:
    account_id = open_account(client, keys)
    assert send(client, "trade.executed", trade(account_id), secret=ROTATED_SECRET).status_code == 200
    body = json.dumps({"event_type": "trade.executed", "data": trade(account_id, pnl="1.00")}).encode()
    now = int(time.time())
    headers = {"webhook-id": f"msg_{uuid.uuid4().hex}", "webhook-timestamp": str(now),
               "webhook-signature": sign_standard(WEBHOOK_SECRET, "x", now, body)}
    assert client.post(URL, content=body, headers=headers).status_code == 401  # signed for another id
    headers["webhook-signature"] = sign_standard(WEBHOOK_SECRET, headers["webhook-id"], now, body)
    assert client.post(URL, content=body, headers=headers).status_code == 200
    stale = now - 301
    headers = {"webhook-id": "msg_stale", "webhook-timestamp": str(stale),
               "webhook-signature": sign_standard(WEBHOOK_SECRET, "msg_stale", stale, body)}
    assert client.post(URL, content=body, headers=headers).status_code == 401
    assert balance(client, keys, account_id) == "1013.50"


def test_an_unsigned_webhook_id_never_makes_a_captured_delivery_new(client, keys, engine) -> None:
    """Issue 16: a captured X-ML delivery replayed with a made-up `webhook-id` rolled a balance back."""
    account_id = open_account(client, keys)
    first = send(client, "account.balance_updated",
                 {"account_id": account_id, "new_balance": "500.00", "reason": "engine correction"})
    assert first.status_code == 200
    assert send(client, "account.balance_updated",
                {"account_id": account_id, "new_balance": "2000.00", "reason": "engine correction"}
                ).status_code == 200
    captured = first.request.content
    for extra in ({}, {"webhook-id": "evil-1"}, {"webhook-id": "evil-2", "webhook-timestamp": str(int(time.time()))}):
        replay = client.post(URL, content=captured, headers={"X-ML-Signature": sign(WEBHOOK_SECRET, captured), **extra})
        assert replay.status_code == 200 and replay.json()["duplicate"] is True, (extra, replay.text)
    assert balance(client, keys, account_id) == "2000.00"
    assert len(stored(engine, account_id)) == 2
    # X-ML with a webhook-signature header that is not a valid one: judged by the Standard scheme alone, refused.
    forged = {"X-ML-Signature": sign(WEBHOOK_SECRET, captured), "webhook-id": "evil-3",
              "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1," + "A" * 44}
    assert client.post(URL, content=captured, headers=forged).status_code == 401
    assert balance(client, keys, account_id) == "2000.00"


def test_a_signed_webhook_id_keys_in_a_namespace_of_its_own(client, keys, engine) -> None:
    """A Standard Webhooks id dedups its redeliveries, but cannot claim a key a body's event_id uses later."""
    account_id = open_account(client, keys)

    def standard(body: bytes, webhook_id: str) -> dict[str, str]:
        now = int(time.time())
        return {"webhook-id": webhook_id, "webhook-timestamp": str(now),
                "webhook-signature": sign_standard(WEBHOOK_SECRET, webhook_id, now, body)}

    update = {"account_id": account_id, "new_balance": "700.00", "reason": "r"}
    body = json.dumps({"event_type": "account.balance_updated", "data": update}).encode()
    taken = f"evt-{uuid.uuid4().hex}"
    assert client.post(URL, content=body, headers=standard(body, taken)).json()["duplicate"] is False
    again = client.post(URL, content=body, headers=standard(body, taken))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert [row.dedup_key for row in stored(engine, account_id)] == [f"webhook:{taken}"]
    # The engine's own event_id equal to that header id is another event, not a duplicate of it.
    later = send(client, "account.balance_updated", {**update, "new_balance": "900.00"}, event_id=taken)
    assert later.status_code == 200 and later.json()["duplicate"] is False
    assert balance(client, keys, account_id) == "900.00"


def test_the_standard_webhooks_reference_library_and_ours_agree(ledger, keys, engine) -> None:
    """Deliveries the reference library signs are accepted; what we sign, the reference library verifies."""
    from litestar.testing import TestClient
    from standardwebhooks import Webhook

    from api.app import create_app
    from service import config

    secret = "whsec_" + base64.b64encode(b"reference-library-secret-0123456").decode()
    app = create_app(ledger, config.load({"ML_ENGINE_WEBHOOK_SECRET": secret,
                                          "ML_ENGINE_WEBHOOK_SCHEMES": "standard"}))
    reference = Webhook(secret)
    with TestClient(app=app, raise_server_exceptions=False) as client:
        account_id = open_account(client, keys)
        body = json.dumps({"event_type": "trade.executed", "data": trade(account_id, pnl="5.00")}).encode()
        webhook_id, at = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
        headers = {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())),
                   "webhook-signature": reference.sign(webhook_id, at, body.decode())}
        assert client.post(URL, content=body, headers=headers).status_code == 200
        assert reference.verify(body, {**headers, "webhook-signature": sign_standard(
            secret, webhook_id, int(at.timestamp()), body)}) is not None
        # Standard only: X-ML-Signature alone is refused, whatever it signs.
        other = json.dumps({"event_type": "trade.executed", "data": trade(account_id, pnl="7.00")}).encode()
        refused = client.post(URL, content=other, headers={"X-ML-Signature": sign(secret, other)})
        assert refused.status_code == 401 and "Standard Webhooks" in refused.json()["detail"]
        assert balance(client, keys, account_id) == "1005.00"
    assert [row.signature_scheme for row in stored(engine, account_id)] == ["standard"]


@pytest.mark.parametrize("header", ["X-ML-Signature", "webhook-signature", "webhook-id"])
def test_a_non_ascii_signature_header_is_401(client, keys, engine, header) -> None:
    account_id = open_account(client, keys)
    body = json.dumps({"event_type": "trade.executed", "data": trade(account_id)}).encode()
    now = int(time.time())
    headers = {"X-ML-Signature": sign(WEBHOOK_SECRET, body)} if header == "X-ML-Signature" else {
        "webhook-id": "msg_1", "webhook-timestamp": str(now),
        "webhook-signature": sign_standard(WEBHOOK_SECRET, "msg_1", now, body)}
    headers[header] = "é" + headers[header][1:]
    answer = client.post(URL, content=body, headers={k: v.encode("latin-1") for k, v in headers.items()})
    assert answer.status_code == 401 and answer.json()["error"] == "unauthorized", answer.text
    assert stored(engine, account_id) == []


# ------------------------------------------------------------------------------------------ trades

def test_trade_open_then_closed_then_redelivered(client, keys) -> None:
    account_id = open_account(client, keys)
    data = trade(account_id, status="open")
    opened = send(client, "trade.executed", data)
    assert opened.status_code == 200 and opened.json() == {"received": True, "duplicate": False, "entry_ids": []}
    closed = send(client, "trade.executed", trade(account_id, trade_id=data["trade_id"], pnl="-20.25"))
    assert closed.status_code == 200 and len(closed.json()["entry_ids"]) == 1
    closed_data = json.loads(closed.request.content)["data"]
    again = send(client, "trade.executed", closed_data)
    assert again.status_code == 200 and again.json() == {**closed.json(), "duplicate": True}
    # The same event serialised differently (whitespace, key order) is the same content: a duplicate.
    body = json.dumps({"data": dict(reversed(list(closed_data.items()))), "event_type": "trade.executed"},
                      indent=1).encode()
    reformatted = client.post(URL, content=body, headers={"X-ML-Signature": sign(WEBHOOK_SECRET, body)})
    assert reformatted.status_code == 200 and reformatted.json()["duplicate"] is True
    assert balance(client, keys, account_id) == "979.75"


def test_exact_redelivery_repeats_the_first_answer(client, keys, engine) -> None:
    account_id = open_account(client, keys)
    data = trade(account_id)
    first = send(client, "trade.executed", data, event_id="evt-" + uuid.uuid4().hex)
    body = json.loads(first.request.content)
    second = send(client, "trade.executed", data, event_id=body["event_id"])
    assert first.json()["duplicate"] is False
    assert second.json() == {**first.json(), "duplicate": True}
    rows = stored(engine, account_id)
    assert len(rows) == 1 and rows[0].delivery_count == 2
    assert balance(client, keys, account_id) == "1012.50"


def test_closed_before_open(client, keys) -> None:
    account_id = open_account(client, keys)
    data = trade(account_id, pnl="5.00")
    assert len(send(client, "trade.executed", data).json()["entry_ids"]) == 1
    late_open = send(client, "trade.executed", trade(account_id, status="open", trade_id=data["trade_id"]))
    assert late_open.status_code == 200 and late_open.json()["entry_ids"] == []
    assert balance(client, keys, account_id) == "1005.00"


def test_same_trade_closed_twice_is_one_entry_and_conflict_is_reviewed(client, keys, engine) -> None:
    account_id = open_account(client, keys)
    data = trade(account_id, pnl="7.00")
    first = send(client, "trade.executed", data, event_id="a-" + uuid.uuid4().hex)
    again = send(client, "trade.executed", data, event_id="b-" + uuid.uuid4().hex)  # another delivery id
    assert again.json()["duplicate"] is True and again.json()["entry_ids"] == first.json()["entry_ids"]
    conflict = send(client, "trade.executed", trade(account_id, trade_id=data["trade_id"], pnl="8.00"))
    assert conflict.status_code == 202 and conflict.json()["review"] is True
    assert balance(client, keys, account_id) == "1007.00"
    alerts = client.get("/api/v1/alerts?status=open", headers=auth(keys["finance"]))
    if alerts.status_code == 200:  # the alerts route arrives with the jobs work
        assert any(a["account_id"] == account_id for a in alerts.json()["items"])
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM alert WHERE account_id = :a AND kind = 'webhook_conflict'"),
                         {"a": account_id}).scalar() == 1


# ------------------------------------------------------------------------------------------ late facts

def test_trade_arriving_after_its_days_true_up_is_not_counted_twice(client, keys, ledger) -> None:
    account_id = open_account(client, keys, ledger=ledger)
    day = date.today() - timedelta(days=2)
    at = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=10)
    assert len(send(client, "trade.executed", trade(account_id, pnl="10.00", at=at)).json()["entry_ids"]) == 1
    # The engine's snapshot already includes a second trade (+5) the ledger has not seen yet: true-up +5.
    perf = send(client, "daily.performance", performance(account_id, day, "1015.00"))
    assert perf.status_code == 200 and len(perf.json()["entry_ids"]) == 1
    assert balance(client, keys, account_id, day.isoformat()) == "1015.00"
    late = send(client, "trade.executed", trade(account_id, pnl="5.00", at=at + timedelta(hours=1)))
    assert late.status_code == 200 and len(late.json()["entry_ids"]) == 2  # the trade and its offset
    assert balance(client, keys, account_id, day.isoformat()) == "1015.00"
    assert balance(client, keys, account_id) == "1015.00"


def test_out_of_order_daily_performance(client, keys, ledger) -> None:
    account_id = open_account(client, keys, ledger=ledger)
    day1 = date.today() - timedelta(days=3)
    day2 = day1 + timedelta(days=1)
    assert send(client, "daily.performance", performance(account_id, day2, "1030.00")).status_code == 200
    assert send(client, "daily.performance", performance(account_id, day1, "1010.00")).status_code == 200
    assert balance(client, keys, account_id, day1.isoformat()) == "1010.00"
    assert balance(client, keys, account_id, day2.isoformat()) == "1030.00"
    assert balance(client, keys, account_id) == "1030.00"
    same = send(client, "daily.performance", performance(account_id, day1, "1010.00"))
    assert same.json()["duplicate"] is True
    other = send(client, "daily.performance", performance(account_id, day1, "1011.00"))
    assert other.status_code == 202
    assert balance(client, keys, account_id, day1.isoformat()) == "1010.00"


def test_late_balance_update_does_not_roll_back(client, keys, ledger) -> None:
    account_id = open_account(client, keys, ledger=ledger)
    t1 = datetime.now(UTC) - timedelta(minutes=30)
    t2 = t1 + timedelta(minutes=10)
    # Engine: balance set to 900.00 at t1; a +50 trade at t2. The trade arrives first.
    assert send(client, "trade.executed", trade(account_id, pnl="50.00", at=t2)).status_code == 200
    update = send(client, "account.balance_updated", {"account_id": account_id, "new_balance": "900.00",
                                                      "reason": "broker fee correction"},
                  occurred_at=t1.isoformat().replace("+00:00", "Z"))
    assert update.status_code == 200 and len(update.json()["entry_ids"]) == 1
    assert balance(client, keys, account_id) == "950.00"


def test_balance_update_without_time_applies_now_and_alerts_when_large(client, keys, engine) -> None:
    account_id = open_account(client, keys)
    assert send(client, "account.balance_updated", {"account_id": account_id, "new_balance": 2500.5,
                                                    "reason": "recount"}).status_code == 200
    assert balance(client, keys, account_id) == "2500.50"
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM alert WHERE account_id = :a AND kind = 'large_adjustment'"),
                         {"a": account_id}).scalar() == 1


# ------------------------------------------------------------------------------------------ the rest

def test_unknown_account_is_kept_for_review(client, engine) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    response = send(client, "trade.executed", trade(ghost))
    assert response.status_code == 202 and response.json()["review"] is True
    rows = stored(engine, ghost)
    assert len(rows) == 1 and rows[0].status == "review"
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM alert WHERE account_id = :a AND kind = 'unknown_account'"),
                         {"a": ghost}).scalar() == 1


def test_invalid_events_are_stored_as_rejected(client, keys, engine) -> None:
    account_id = open_account(client, keys)
    assert send(client, "trade.settled", {"account_id": account_id}).status_code == 422
    assert send(client, "trade.executed", {**trade(account_id), "side": "hold"}).status_code == 422
    assert send(client, "trade.executed", trade(account_id, pnl="1.005")).status_code == 422  # finer than cents
    assert send(client, "trade.executed", {**trade(account_id), "profit_loss": "NaN"}).status_code == 422
    body = b'{"event_type": "trade.executed", "data": '
    malformed = client.post(URL, content=body, headers={"X-ML-Signature": sign(WEBHOOK_SECRET, body)})
    assert malformed.status_code == 400 and set(malformed.json()) == {"error", "detail"}
    huge = b'{"event_type": "x", "data": "' + b"a" * (1024 * 1024) + b'"}'
    assert client.post(URL, content=huge, headers={"X-ML-Signature": sign(WEBHOOK_SECRET, huge)}
                       ).status_code == 413
    with engine.connect() as c:
        rejected = c.execute(sa.text("SELECT count(*) FROM webhook_event WHERE status = 'rejected' "
                                     "AND position(convert_to(:a, 'UTF8') in body) > 0"), {"a": account_id}).scalar()
    assert rejected >= 3
    assert balance(client, keys, account_id) == "1000.00"


def test_critical_account_error_pauses_and_alerts(client, keys, engine) -> None:
    account_id = open_account(client, keys)
    response = send(client, "account.error", {"account_id": account_id, "error_type": "critical",
                                              "error_message": "margin call"})
    assert response.status_code == 200
    assert client.get(f"/api/v1/accounts/{account_id}", headers=auth(keys["finance"])).json()["status"] == "paused"
    warning = send(client, "account.error", {"account_id": account_id, "error_type": "warning",
                                             "error_message": "slow fills"})
    assert warning.status_code == 200
    with engine.connect() as c:
        kinds = c.execute(sa.text("SELECT kind FROM alert WHERE account_id = :a"), {"a": account_id}).scalars().all()
    assert kinds == ["engine_critical_error"]


@pytest.mark.parametrize("where", ["trade_id", "symbol", "event_id", "reason", "error_message"])
def test_a_nul_in_a_text_field_is_rejected_and_stored_as_received(client, keys, engine, where) -> None:
    """PostgreSQL text cannot hold NUL: refused at decode (422) and kept as rejected, not a 5xx that stores
    nothing and that the engine would retry for ever."""
    account_id = open_account(client, keys)
    if where in ("trade_id", "symbol", "event_id"):
        data, envelope = trade(account_id), {}
        if where == "event_id":
            envelope["event_id"] = f"e-{uuid.uuid4().hex[:8]}\u0000x"
        else:
            data[where] += "\u0000x"
        event_type = "trade.executed"
    elif where == "reason":
        event_type, envelope = "account.balance_updated", {}
        data = {"account_id": account_id, "new_balance": "1000.00", "reason": "fix\u0000"}
    else:
        event_type, envelope = "account.error", {}
        data = {"account_id": account_id, "error_type": "warning", "error_message": "slow\u0000"}
    body = json.dumps({"event_type": event_type, "data": data, **envelope}).encode()
    answer = client.post(URL, content=body, headers={"X-ML-Signature": sign(WEBHOOK_SECRET, body),
                                                     "content-type": "application/json"})
    assert answer.status_code == 422 and answer.json()["error"] == "invalid", answer.text
    with engine.connect() as c:
        kept = c.execute(sa.text("SELECT status, reason FROM webhook_event WHERE body = :b"), {"b": body}).all()
    assert [row.status for row in kept] == ["rejected"] and where in kept[0].reason
    assert balance(client, keys, account_id) == "1000.00"


def test_every_webhook_outcome_has_one_answer() -> None:
    """The webhook path chooses no status: api.errors maps each outcome as contract §6 says, in one place."""
    assert set(WEBHOOK_STATUS) == set(RESULTS)
    answers = {result: webhook_answer(Outcome(result=result, reason="why", entry_ids=(7,), duplicate=True))
               for result in RESULTS}
    assert {result: a.status_code for result, a in answers.items()} == {
        "applied": 200, "review": 202, "malformed": 400, "invalid": 422}
    assert answers["applied"].content == {"received": True, "duplicate": True, "entry_ids": [7]}
    assert answers["review"].content == {"received": True, "duplicate": True, "entry_ids": [7], "review": True,
                                         "reason": "why"}
    assert answers["malformed"].content == {"error": "malformed", "detail": "why"}
    assert answers["invalid"].content == {"error": "invalid", "detail": "why"}
