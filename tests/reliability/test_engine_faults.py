"""The ML Engine misbehaving, end to end (API over ASGI, real dramatiq worker, simulator over real HTTP).

For each fault (5xx, timeout, garbage, huge body, redirect, refused connection): money moves and webhooks
are still acknowledged at once, the circuit breaker opens, the owed notifications wait in the outbox,
reconciliation says `engine_unavailable` (never a break); after recovery the breaker closes, every
notification arrives exactly once and reconciliation matches.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from decimal import Decimal

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.auth import create_key
from integration.client import EngineClient
from integration.signature import sign
from jobs import actors, context
from service import config
from simulator import Faults, Simulator, Target
from tests.api.test_webhooks import trade
from tests.jobs.conftest import API_KEY, SINCE, Db, Jobs, open_known_account
from tests.reliability.conftest import report_figures
from tests.waiting import wait_until

SECRET = "engine-faults-webhook-secret-0123"
EVERYTHING = Target(routes=("*",))
FAULTS = {
    "5xx": Faults(error=EVERYTHING, error_status=503),
    "timeout": Faults(slow=EVERYTHING, slow_s=3.0),
    "garbage": Faults(garbage=EVERYTHING),
    "huge body": Faults(huge=EVERYTHING),
    "redirect": Faults(redirect=EVERYTHING),
    "refused": Faults(),  # the client is pointed at a port where nothing listens
}
BREAKER_FAILURES_MAX = 3
BREAKER_RESET_MS = 300


def set_faults(sim: Simulator, faults: Faults) -> None:
    httpx.post(sim.url + "/admin/faults", content=msgspec.json.encode(faults), timeout=5).raise_for_status()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1"  # bound then released: connections are refused


def p99_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1)


@pytest.mark.slow
def test_engine_faults_end_to_end(db: Db, sim: Simulator, runtime, jobs: Jobs, tmp_path) -> None:
    def make_client(url: str) -> EngineClient:
        return EngineClient(url, API_KEY, timeout_ms=1000, retry_attempts=2, retry_delay_ms=1, retry_delay_max_ms=5,
                            breaker_failures_max=BREAKER_FAILURES_MAX, breaker_reset_timeout_ms=BREAKER_RESET_MS)

    healthy = make_client(sim.api_url)
    settings = config.load({"DATABASE_URL": db.url, "ML_ENGINE_WEBHOOK_SECRET": SECRET})
    current = {"client": healthy}
    app = create_app(db.ledger, settings, jobs=actors.enqueue,
                     readiness={"engine_circuit": lambda: current["client"].breaker_state})
    operator = {"Authorization": f"Bearer {create_key(db.engine, 'operator', 'faults')}"}
    accounts = [open_known_account(db, healthy, since=SINCE) for _ in range(3)]
    latencies: list[float] = []
    figures = {"faults": 0, "deposits_acknowledged": 0, "webhooks_acknowledged": 0, "notifications_delivered": 0}

    def pending() -> int:
        return db.scalar("SELECT count(*) FROM outbox_event WHERE status <> 'delivered'")

    def deliver() -> None:
        actors.deliver_outbox.send()
        jobs.drain()

    with TestClient(app=app, raise_server_exceptions=False) as api:
        def reconcile() -> dict:
            started = api.post("/api/v1/reconciliations", headers=operator)
            assert started.status_code == 202, started.text
            jobs.drain()
            return api.get(f"/api/v1/reconciliations/{started.json()['run_id']}", headers=operator).json()

        for name, faults in FAULTS.items():
            broken = make_client(closed_port_url()) if name == "refused" else healthy
            current["client"] = broken
            context.install(runtime, broken)
            set_faults(sim, faults)
            for account_id in accounts:  # money still moves: the notification waits in the outbox
                answer = api.post(f"/api/v1/accounts/{account_id}/deposits", json={"amount": "10.00"},
                                  headers={**operator, "Idempotency-Key": f"{name}-{account_id}"})
                assert answer.status_code == 201, (name, answer.text)
                figures["deposits_acknowledged"] += 1
                for _ in range(5):  # the webhook path does not wait on the engine
                    body = json.dumps({"event_type": "trade.executed", "event_id": uuid.uuid4().hex,
                                       "data": trade(account_id, status="open")}).encode()
                    started = time.perf_counter()
                    answer = api.post("/api/v1/webhooks/ml-engine", content=body,
                                      headers={"X-ML-Signature": sign(SECRET, body)})
                    latencies.append(time.perf_counter() - started)
                    assert answer.status_code == 200, (name, answer.text)
                    figures["webhooks_acknowledged"] += 1
            owed = pending()
            assert owed == len(accounts)
            for _ in range(BREAKER_FAILURES_MAX):
                deliver()
                # Each failure pushes the row's next attempt into the future; bring it back to now (the
                # clock, not the logic, is what this test would otherwise wait for).
                db.scalar("UPDATE outbox_event SET next_attempt_at = now() WHERE status = 'pending' RETURNING 1")
            assert broken.breaker_state == "open", name
            assert pending() == owed, name  # nothing delivered, nothing dropped, nothing dead yet
            assert api.get("/api/v1/ready").json()["checks"]["engine_circuit"] == "open"
            outage = reconcile()
            assert outage["counts"]["engine_unavailable"] == len(accounts), (name, outage)
            assert outage["counts"]["break"] == 0 and outage["counts"]["matched"] == 0, (name, outage)

            set_faults(sim, Faults())
            current["client"] = healthy
            context.install(runtime, healthy)
            broken.shutdown() if broken is not healthy else None
            # The point: let the breaker's reset time run out (its state reads "open" until the next call, the
            # trial, so there is nothing to poll).
            time.sleep(BREAKER_RESET_MS / 1000 + 0.1)
            db.scalar("UPDATE outbox_event SET next_attempt_at = now() WHERE status = 'pending' RETURNING 1")
            wait_until(lambda: (deliver(), pending() == 0)[1], timeout_s=30, what=f"outbox drained after {name}")
            figures["notifications_delivered"] += owed
            assert healthy.breaker_state == "closed"
            after = reconcile()
            assert after["counts"]["matched"] == len(accounts), (name, after)
            figures["faults"] += 1

    state = sim.state()["accounts"]
    ledger_balances = {a: db.ledger.account(a).balance.to_decimal() for a in accounts}
    # Each account got one 10.00 deposit per fault and the engine applied each notification exactly once.
    assert ledger_balances == {a: Decimal("1000.00") + 10 * len(FAULTS) for a in accounts}
    assert {a: state[a]["capital"] for a in accounts} == ledger_balances
    assert all(state[a]["capital_mismatches"] == 0 for a in accounts)
    assert db.scalar("SELECT count(*) FROM outbox_event WHERE status = 'dead'") == 0
    healthy.shutdown()
    report_figures(tmp_path, "engine faults", {**figures, "lost": 0, "duplicated": 0,
                                               "webhook_p99_ms_during_faults": p99_ms(latencies)})
