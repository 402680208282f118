"""kill -9 of a served `invledger serve` (jobs in-process) under a load of signed webhooks and deposits.

After each restart every request that got a 2xx is in the ledger exactly once; at the end every request
that did not get one is sent again with the same key (as the engine and API clients do) and then every
request is in the ledger exactly once, `invledger verify` is clean and the outbox has delivered what it
owed to the engine, each notification applied once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import msgspec
import psutil
import pytest

from api.auth import create_key
from integration.signature import sign
from simulator import Faults, Simulator, Target
from tests.api.test_webhooks import trade
from tests.jobs.conftest import API_KEY, SINCE, Db, engine_client, open_known_account
from tests.reliability.conftest import report_figures
from tests.waiting import wait_until

SECRET = "crash-test-webhook-secret-0123456"
KILLS = 20
LOAD_THREADS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Request:
    """One logical request (deposit or webhook) with the key that makes a resend the same request."""
    kind: str
    account_id: str
    key: str  # the journal entry's idempotency key it must produce
    amount: Decimal  # its effect on the balance
    path: str
    body: bytes
    headers: dict[str, str]
    acknowledged: bool = False


@dataclass
class Server:
    db: Db
    sim: Simulator
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    rss_mb: list[float] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # extra settings for `serve`

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "ALERT_WEBHOOK_URL")}
        env.update({"DATABASE_URL": self.db.url, "ML_ENGINE_URL": self.sim.api_url, "ML_ENGINE_API_KEY": API_KEY,
                    "ML_ENGINE_WEBHOOK_SECRET": SECRET, "ML_ENGINE_TIMEOUT_MS": "2000",
                    "ML_ENGINE_RETRY_ATTEMPTS": "2", "ML_ENGINE_RETRY_DELAY_MS": "10", "LOG_LEVEL": "WARNING",
                    **self.env})
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "invledger.cli", "serve", "--port", str(self.port)],
                                            env=env, stdout=log, stderr=log)
        wait_until(self._up, timeout_s=60, what="the server to answer /health")

    def _up(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log_path.read_text()[-3000:]
        try:
            return httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        try:
            self.rss_mb.append(psutil.Process(self.process.pid).memory_info().rss / 2**20)
        except psutil.Error:
            pass
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def make_requests(accounts: list[str], operator_key: str, count: int) -> list[Request]:
    rng = random.Random(7)
    requests = []
    for i in range(count):
        account_id = rng.choice(accounts)
        if i % 3 == 0:
            key = f"crash-{uuid.uuid4().hex}"
            amount = Decimal(rng.randint(1, 5000)) / 100
            body = json.dumps({"amount": str(amount)}).encode()
            requests.append(Request("deposit", account_id, f"api:deposit:{account_id}:{key}", amount,
                                    f"/api/v1/accounts/{account_id}/deposits", body,
                                    {"Authorization": f"Bearer {operator_key}", "Idempotency-Key": key,
                                     "content-type": "application/json"}))
        else:
            pnl = Decimal(rng.randint(-2000, 2000) or 1) / 100
            data = trade(account_id, pnl=str(pnl))
            body = json.dumps({"event_type": "trade.executed", "data": data}).encode()
            requests.append(Request("webhook", account_id, f"trade:{data['trade_id']}", pnl,
                                    "/api/v1/webhooks/ml-engine", body,
                                    {"X-ML-Signature": sign(SECRET, body), "content-type": "application/json"}))
    return requests


def send(client: httpx.Client, request: Request, latencies: list[float], refused: list[str]) -> bool:
    """False when the server did not answer (it died under the request: not acknowledged)."""
    started = time.perf_counter()
    try:
        answer = client.post(request.path, content=request.body, headers=request.headers)
    except httpx.HTTPError:
        return False
    if 200 <= answer.status_code < 300:
        latencies.append(time.perf_counter() - started)
        request.acknowledged = True
    elif answer.status_code < 500:  # a valid request is never refused, whatever happened before
        refused.append(f"{request.kind} {answer.status_code} {answer.text[:200]}")
    return True


def booked(db: Db, keys: list[str]) -> dict[str, int]:
    rows = db.rows("SELECT idempotency_key, count(*) AS n FROM journal_entry WHERE idempotency_key = ANY(:k) "
                   "GROUP BY idempotency_key", k=keys)
    return {row.idempotency_key: row.n for row in rows}


def p99_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1) if ordered else 0.0


@pytest.mark.slow
def test_kill_9_under_load_loses_and_duplicates_nothing(db: Db, sim: Simulator, tmp_path) -> None:
    setup = engine_client(sim)
    accounts = [open_known_account(db, setup, since=SINCE) for _ in range(4)]
    setup.shutdown()
    operator_key = create_key(db.engine, "operator", "crash")
    requests = make_requests(accounts, operator_key, 3000)
    # The engine answers capital notifications slowly, so kills often land while one is in flight.
    httpx.post(sim.url + "/admin/faults", content=msgspec.json.encode(
        Faults(slow=Target(routes=("capital",)), slow_s=0.05)), timeout=5).raise_for_status()
    server = Server(db, sim, tmp_path / "serve.log")
    latencies: list[float] = []
    refused: list[str] = []
    queue = iter(requests)
    lock = threading.Lock()
    rng = random.Random(11)

    def load(stop: threading.Event) -> None:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            while not stop.is_set():
                with lock:
                    request = next(queue, None)
                if request is None:
                    return
                if not send(client, request, latencies, refused):
                    return  # the server is down until the next start

    kills = 0
    try:
        server.start()
        for _ in range(KILLS):
            stop = threading.Event()
            threads = [threading.Thread(target=load, args=(stop,)) for _ in range(LOAD_THREADS)]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.3, 1.5))  # the point: kill -9 at a random moment of the load
            server.kill()
            kills += 1
            stop.set()
            for thread in threads:
                thread.join()
            server.start()
            acknowledged = [r.key for r in requests if r.acknowledged]
            counts = booked(db, acknowledged)
            assert set(counts) == set(acknowledged) and set(counts.values()) <= {1}, f"after kill {kills}"
        offered = next(queue, None)
        sent = requests[:requests.index(offered)] if offered is not None else requests
        acknowledged_under_fire = sum(r.acknowledged for r in sent)
        with httpx.Client(base_url=server.url, timeout=10) as client:  # retry what was never acknowledged
            for request in sent:
                if not request.acknowledged:
                    send(client, request, [], refused)
                    assert request.acknowledged, request.kind
        assert not refused
        counts = booked(db, [r.key for r in sent])
        assert counts == {r.key: 1 for r in sent}
        expected = {a: Decimal("1000.00") + sum((r.amount for r in sent if r.account_id == a), Decimal(0))
                    for a in accounts}
        assert {a: db.ledger.account(a).balance.to_decimal() for a in accounts} == expected
        entries = {a: db.scalar("SELECT count(*) FROM journal_entry WHERE investment_account_id = :a", a=a)
                   for a in accounts}
        assert entries == {a: 1 + sum(r.account_id == a for r in sent) for a in accounts}
        # The outbox delivers what it owed: the engine's capital is the initial capital plus every deposit,
        # each notification applied once (a resend after a kill reuses its Idempotency-Key).
        httpx.post(sim.url + "/admin/faults", content=msgspec.json.encode(Faults()), timeout=5).raise_for_status()
        wait_until(lambda: db.scalar("SELECT count(*) FROM outbox_event WHERE status <> 'delivered'") == 0,
                   timeout_s=60, what="the outbox to drain")
        capital = {a: Decimal("1000.00") + sum((r.amount for r in sent if r.account_id == a and r.kind == "deposit"),
                                               Decimal(0)) for a in accounts}
        state = sim.state()["accounts"]
        assert {a: state[a]["capital"] for a in accounts} == capital
    finally:
        server.stop()
    verify = subprocess.run([sys.executable, "-m", "invledger.cli", "verify"], capture_output=True, text=True,
                            env={**os.environ, "DATABASE_URL": db.url, "LOG_LEVEL": "WARNING"}, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report_figures(tmp_path, "crash: kill -9 serve", {
        "kills": kills, "requests": len(sent), "acknowledged_before_kill": acknowledged_under_fire,
        "acknowledged": len(sent), "lost": 0, "duplicated": 0, "p99_ms": p99_ms(latencies),
        "rss_mb_max": round(max(server.rss_mb), 1) if server.rss_mb else None})


@pytest.mark.slow
def test_kill_9_mid_outbox_delivery_applies_each_notification_once(db: Db, sim: Simulator, tmp_path) -> None:
    """The outbox worker runs inside `serve` (no BROKER_URL): kill -9 it while the engine is handling a capital
    notification; after the restart the row is delivered again with the same Idempotency-Key and applied once."""
    setup = engine_client(sim)
    account_id = open_known_account(db, setup, since=SINCE)
    setup.shutdown()
    operator = {"Authorization": f"Bearer {create_key(db.engine, 'operator', 'crash-outbox')}"}
    httpx.post(sim.url + "/admin/faults", content=msgspec.json.encode(
        Faults(slow=Target(routes=("capital",)), slow_s=1.0)), timeout=5).raise_for_status()
    server = Server(db, sim, tmp_path / "serve.log")
    rounds = 3
    try:
        server.start()
        for i in range(rounds):
            seen = sim.state()["requests"].get("capital", 0)
            answer = httpx.post(f"{server.url}/api/v1/accounts/{account_id}/deposits", json={"amount": "1.00"},
                                headers={**operator, "Idempotency-Key": f"mid-{i}"}, timeout=10)
            assert answer.status_code == 201, answer.text
            wait_until(lambda: sim.state()["requests"].get("capital", 0) > seen, timeout_s=30,  # noqa: B023
                       what="the worker to start delivering")
            server.kill()
            assert db.scalar("SELECT count(*) FROM outbox_event WHERE status <> 'delivered'") == 1
            server.start()
            wait_until(lambda: db.scalar("SELECT count(*) FROM outbox_event WHERE status <> 'delivered'") == 0,
                       timeout_s=60, what="the restarted worker to deliver")
    finally:
        server.stop()
    state = sim.state()
    assert state["accounts"][account_id]["capital"] == Decimal("1000.00") + rounds
    assert db.ledger.account(account_id).balance.to_decimal() == Decimal("1000.00") + rounds
    report_figures(tmp_path, "crash: kill -9 worker mid-delivery", {
        "kills": rounds, "notifications": rounds, "delivered": rounds, "lost": 0, "duplicated": 0,
        "engine_capital_requests": state["requests"]["capital"],
        "replayed_by_idempotency_key": state["counters"]["idempotent_replays"]})

