"""The simulator's HTTP app: the admin API, engine events on demand, `Idempotency-Key` over raw HTTP."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from decimal import Decimal

import httpx
import msgspec

from integration.engine_api import CapitalUpdate, decode, decode_event_data
from tests.integration.support import API_KEY, SECRET, START, Receiver
from tests.simulator.conftest import ServeSimulator, envelopes, open_accounts


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
