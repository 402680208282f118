"""The ML Engine simulator: deterministic walk, consistent books, signed webhooks, delivery faults, admin API."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal

import httpx
import msgspec
import pytest

from integration.client import EngineClient
from integration.engine_api import (
    CapitalUpdate,
    Performance,
    Trade,
    WebhookEnvelope,
    decode,
    decode_event_data,
)
from integration.signature import Verified, verify
from integration.simulator import Faults, Simulator, main
from tests.integration.support import API_KEY, SECRET, START, Receiver, new_account

ServeSimulator = Callable[..., Simulator]
CENTS = Decimal("0.01")


def open_accounts(sim: Simulator, *account_ids: str, capital: str = "1000.00") -> None:
    with EngineClient(sim.api_url, sim.api_key or "", timeout_ms=2000, retry_attempts=1) as client:
        for account_id in account_ids:
            client.create_account(new_account(account_id, capital), idempotency_key=f"create-{account_id}")


def envelopes(bodies: list[bytes]) -> list[WebhookEnvelope]:
    return [decode(body, WebhookEnvelope) for body in bodies]


def test_a_seeded_run_is_deterministic(serve_simulator: ServeSimulator) -> None:
    runs = []
    for seed in (42, 42, 43):
        sim = serve_simulator(seed=seed)
        open_accounts(sim, "acc-a", "acc-b")
        sim.step(4)
        runs.append(sim.events())
    assert runs[0] == runs[1]
    assert len(runs[0]) > 8
    assert runs[0] != runs[2]


def test_an_accounts_walk_does_not_depend_on_other_accounts(serve_simulator: ServeSimulator) -> None:
    alone, crowded = serve_simulator(seed=5), serve_simulator(seed=5)
    open_accounts(alone, "acc-x")
    open_accounts(crowded, "acc-w", "acc-x", "acc-z")
    alone.step(3)
    crowded.step(3)

    def of_x(sim: Simulator) -> list[bytes]:
        return [body for body, env in zip(sim.events(), envelopes(sim.events()), strict=True)
                if json.loads(bytes(env.data))["account_id"] == "acc-x"]

    assert of_x(alone) == of_x(crowded)


def test_the_books_add_up(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=3, trades_per_day=8)
    open_accounts(sim, "acc-1", "acc-2", capital="5000.00")
    sim.step(6)
    trades: dict[str, list[Trade]] = {"acc-1": [], "acc-2": []}
    performance: dict[str, list[Performance]] = {"acc-1": [], "acc-2": []}
    for envelope in envelopes(sim.events()):
        data = decode_event_data(envelope)
        if isinstance(data, Trade):
            trades[data.account_id].append(data)
            assert envelope.occurred_at == data.executed_at
            assert START <= data.executed_at.date() < START + timedelta(days=6)
        elif isinstance(data, Performance):
            performance[data.account_id].append(data)
    for account_id in trades:
        closed = [t for t in trades[account_id] if t.status == "closed"]
        assert closed and all(t.profit_loss == t.profit_loss.quantize(CENTS) for t in closed)  # type: ignore[union-attr]
        opened = {t.trade_id for t in trades[account_id] if t.status == "open"}
        assert {t.trade_id for t in closed} <= opened
        days = performance[account_id]
        assert [p.date for p in days] == [START + timedelta(days=n) for n in range(6)]
        for p in days:
            assert p.opening_balance + p.daily_return == p.closing_balance
            day_results = [t.profit_loss for t in closed if t.executed_at.date() == p.date]
            assert sum(day_results, Decimal(0)) == p.daily_return
            assert p.trades_executed == len(day_results)
        for earlier, later in zip(days, days[1:], strict=False):
            assert earlier.closing_balance == later.opening_balance
        final = sim.state()["accounts"][account_id]["capital"]
        assert final == Decimal("5000.00") + sum((t.profit_loss for t in closed), Decimal(0))  # type: ignore[misc]
        assert final == days[-1].closing_balance


def test_positions_can_stay_open_overnight_and_filter_by_status(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=11, trades_per_day=12)
    open_accounts(sim, "acc-open")
    sim.step(2)
    with EngineClient(sim.api_url, "", timeout_ms=2000) as client:
        open_now = client.trades("acc-open", status="open")
        closed = client.trades("acc-open", status="closed")
    assert open_now and closed
    assert sim.state()["accounts"]["acc-open"]["open_positions"] == len(open_now)
    assert not {t.trade_id for t in open_now} & {t.trade_id for t in closed}


def test_pause_stops_new_trades_and_close_liquidates_flat(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=2)
    open_accounts(sim, "acc-p")
    sim.step(1)
    with EngineClient(sim.api_url, "", timeout_ms=2000) as client:
        client.pause("acc-p", idempotency_key="p")
        before = len(client.trades("acc-p"))
        sim.step(2)
        assert len(client.trades("acc-p")) == before  # carried positions close; nothing new opens
        assert client.trades("acc-p", status="open") == []
        client.resume("acc-p", idempotency_key="r")
        sim.step(1)
        open_positions = client.trades("acc-p", status="open")
        capital = client.status("acc-p").balance
        before = len(sim.events())
        client.close("acc-p", idempotency_key="c")
        assert client.trades("acc-p", status="open") == []
        assert client.status("acc-p").balance == capital
    liquidated = [decode_event_data(e) for e in envelopes(sim.events()[before:])]
    assert {t.trade_id for t in liquidated} == {t.trade_id for t in open_positions}  # type: ignore[union-attr]
    assert all(isinstance(t, Trade) and t.status == "closed" and t.profit_loss == 0 for t in liquidated)
    count = len(sim.events())
    sim.step(1)
    assert len(sim.events()) == count  # a closed account is not traded nor reported


def test_webhooks_are_signed_over_the_exact_bytes(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url)
    open_accounts(sim, "acc-signed")
    sim.step(2)
    assert sim.flush(10)
    assert receiver.bodies() == sim.events()
    for body, headers in receiver.deliveries:
        assert verify([SECRET], body, headers) == Verified(scheme="ml")
        envelope = decode(body, WebhookEnvelope)
        assert envelope.event_id and envelope.occurred_at is not None
        assert set(json.loads(body)) == {"event_id", "occurred_at", "event_type", "data"}
        with pytest.raises(Exception, match="does not match"):
            verify(["another-secret-0123456789"], body, headers)
    types = Counter(e.event_type for e in envelopes(receiver.bodies()))
    assert types["daily.performance"] == 2 and types["trade.executed"] > 0
    counters = sim.state()["counters"]
    assert counters["webhooks_delivered"] == len(sim.events()) == counters["webhooks_sent"]


def test_standard_webhooks_signature(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url, signature_scheme="standard")
    open_accounts(sim, "acc-std")
    sim.step(1)
    assert sim.flush(10)
    for body, headers in receiver.deliveries:
        assert "x-ml-signature" not in headers
        webhook_id = decode(body, WebhookEnvelope).event_id
        assert headers["webhook-id"] == webhook_id
        assert verify([SECRET], body, headers) == Verified(scheme="standard", webhook_id=webhook_id)


def test_numbers_on_the_wire_are_json_numbers(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=1)
    open_accounts(sim, "acc-num")
    sim.step(1)
    performance = [json.loads(b) for b in sim.events() if b'"daily.performance"' in b][0]
    assert b'"closing_balance":' + str(performance["data"]["closing_balance"]).encode() in sim.events()[-1]
    raw = sim.events()[-1]
    assert b'"closing_balance":"' not in raw
    reparsed = json.loads(raw, parse_float=Decimal)
    assert isinstance(reparsed["data"]["closing_balance"], Decimal | int)


def test_duplicate_fault_delivers_every_event_twice(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url,
                          faults=Faults(webhook_duplicate_rate=1.0))
    open_accounts(sim, "acc-dup")
    sim.step(1)
    assert sim.flush(10)
    received = Counter(receiver.bodies())
    assert set(received) == set(sim.events())
    assert all(count == 2 for count in received.values())
    assert sim.state()["counters"]["webhooks_duplicated"] == len(sim.events())


def test_reorder_fault_shuffles_within_the_window(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url, trades_per_day=10,
                          faults=Faults(webhook_reorder_window=6))
    open_accounts(sim, "acc-shuffle")
    sim.step(2)
    assert sim.flush(10)
    generated, received = sim.events(), receiver.bodies()
    assert Counter(received) == Counter(generated)
    assert received != generated
    for start in range(0, len(generated), 6):  # never further than the window
        assert set(received[start:start + 6]) == set(generated[start:start + 6])


def test_delivery_is_retried_until_accepted_and_4xx_is_final(
        serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 200, 422]
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url, trades_per_day=1)
    open_accounts(sim, "acc-retry")
    sim.step(1)
    assert sim.flush(10)
    bodies = receiver.bodies()
    events = sim.events()
    assert bodies[:3] == [events[0]] * 3  # the first event: two failures, then delivered
    counters = sim.state()["counters"]
    assert counters["webhooks_failed"] == 2
    assert counters["webhooks_rejected"] == 1
    assert counters["webhooks_delivered"] == len(events) - 1
    assert len(bodies) == len(events) + 2


def test_delay_fault_slows_each_delivery(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url, trades_per_day=0,
                          faults=Faults(webhook_delay_s=0.2))
    open_accounts(sim, "acc-late")
    sim.step(2)  # no trades: one daily.performance per day
    assert not sim.flush(0.1)
    assert sim.flush(5)
    assert receiver.bodies() == sim.events() and len(sim.events()) == 2


def test_nothing_is_dropped_while_the_ledger_is_down(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url="http://127.0.0.1:9/hook", trades_per_day=1)
    open_accounts(sim, "acc-down")
    sim.step(1)
    assert not sim.flush(0.3)  # still retrying
    counters = sim.state()["counters"]
    assert counters["webhooks_failed"] >= 1 and counters["webhooks_delivered"] == 0
    assert counters["webhooks_pending"] == len(sim.events())


def test_balance_updated_and_account_error(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url)
    open_accounts(sim, "acc-events")
    answer = httpx.post(f"{sim.url}/admin/accounts/acc-events/balance",
                        json={"new_balance": 1234.56, "reason": "fee correction"})
    assert answer.status_code == 200, answer.text
    answer = httpx.post(f"{sim.url}/admin/accounts/acc-events/error",
                        json={"error_type": "critical", "error_message": "broker disconnected"})
    assert answer.status_code == 200, answer.text
    assert httpx.post(f"{sim.url}/admin/accounts/nope/error", json={}).status_code == 404
    assert httpx.post(f"{sim.url}/admin/accounts/acc-events/balance",
                      json={"new_balance": "1.234"}).status_code == 422
    assert sim.flush(10)
    balance, error = envelopes(receiver.bodies())
    assert balance.event_type == "account.balance_updated"
    assert json.loads(bytes(balance.data)) == {"account_id": "acc-events", "new_balance": 1234.56,
                                               "reason": "fee correction"}
    assert decode_event_data(balance).new_balance == Decimal("1234.56")  # type: ignore[union-attr]
    assert error.event_type == "account.error"
    assert json.loads(bytes(error.data))["error_type"] == "critical"
    state = sim.state()["accounts"]["acc-events"]
    assert (state["status"], state["capital"]) == ("paused", Decimal("1234.56"))


def test_admin_api(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=1, api_key=API_KEY)
    open_accounts(sim, "acc-admin")
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        faults = {"error": {"routes": ["trades"]}, "drift": {"acc-admin": "5.00"}, "webhook_reorder_window": 3}
        assert http.post("/admin/faults", json=faults).status_code == 200
        assert http.get("/admin/faults").json()["drift"] == {"acc-admin": 5.0}
        assert http.post("/admin/faults", json={"no_such_fault": 1}).status_code == 422
        assert http.post("/admin/faults", json={"error_rate": 2}).status_code == 422
        stepped = http.post("/admin/step", json={"days": 2, "wait": True})
        assert stepped.status_code == 200, stepped.text
        assert stepped.json()["clock"] == (START + timedelta(days=2)).isoformat()
        assert stepped.json()["delivered"] is True
        assert http.post("/admin/step", json={"days": 0}).status_code == 422
        state = http.get("/admin/state").json()
        assert state["accounts"]["acc-admin"]["status"] == "active"
        assert Decimal(str(state["accounts"]["acc-admin"]["drift"])) == Decimal("5.00")
        assert {"webhooks_sent", "webhooks_failed", "webhooks_duplicated"} <= set(state["counters"])
        assert http.post("/admin/faults", json={}).status_code == 200
        assert http.post("/admin/flush", json={"timeout_s": 1}).json() == {"delivered": True}
        # Faults never touch /admin, and the engine API wants its key.
        assert http.get("/api/v1/trading/accounts/acc-admin/status").status_code == 401
        assert http.get("/api/v1/health").status_code == 200


def test_capital_updates_honour_idempotency_keys_over_raw_http(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=1)
    open_accounts(sim, "acc-raw")
    body = msgspec.json.encode({"operation": "deposit", "amount": "10.00", "new_total_capital": "1010.00"})
    url = f"{sim.api_url}/trading/accounts/acc-raw/capital"

    def post(key: str, content: bytes = body) -> httpx.Response:
        return httpx.post(url, content=content, headers={"Idempotency-Key": key})

    answers = []
    threads = [threading.Thread(target=lambda: answers.append(post("same"))) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * 5
    assert len({a.content for a in answers}) == 1
    assert sim.state()["accounts"]["acc-raw"]["capital"] == Decimal("1010.00")
    assert post("other").status_code == 200
    assert post("same", body.replace(b"10.00", b"11.00")).status_code == 409
    assert post("bad", b'{"operation": "deposit", "amount": 0.001, "new_total_capital": 1}').status_code == 422
    assert post("neg", b'{"operation": "deposit", "amount": -1, "new_total_capital": 1}').status_code == 422
    assert sim.state()["accounts"]["acc-raw"]["capital"] == Decimal("1020.00")
    update = CapitalUpdate(operation="deposit", amount=Decimal("10.00"), new_total_capital=Decimal("1010.00"))
    assert decode(body, CapitalUpdate) == update


def test_cli_help_and_a_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--trades-per-day" in capsys.readouterr().out
    code = main(["--port", "0", "--no-webhooks", "--days", "2", "--accounts-wait-s", "0", "--exit-when-done",
                 "--start-date", "2025-03-01", "--drift", "acc-1=2.50", "--error-route", "status"])
    assert code == 0
    assert "day 2/2 (2025-03-02)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--drift", "no-amount"])
    with pytest.raises(SystemExit):
        main(["--port", "0", "--ledger-url", "http://127.0.0.1:9/hook", "--webhook-secret", ""])


def test_step_advances_the_simulated_clock() -> None:
    sim = Simulator(start_date=date(2025, 5, 30))
    sim.step(3)
    assert sim.clock == date(2025, 6, 2)
