"""The long run (issue 7, item 6): `invledger serve` under a steady load for SOAK_SECONDS (600 by default;
CI runs it for 300), the simulator trading several accounts and delivering its webhooks with duplicates
and reordering, while a probe sends one signed trade every 100 ms and times each answer.

Afterwards: every account's ledger balance equals the engine's capital, every distinct webhook is stored
once, `verify` is clean, and the server's memory is flat (RSS at the end ≤ RSS after warm-up + 20%).
The probe's p99 latency per minute is printed, first and last, with the RSS figures, as one JSON line;
latency is reported, not asserted (speed goals live in bench/).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from integration.signature import sign
from ledger import AccountSpec, Ledger
from ledger.verify import verify
from simulator import Faults, Simulator
from tests import processes
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.soak,
              pytest.mark.timeout(float(os.environ.get("SOAK_SECONDS", "600")) + 400)]

SECRET = "soak-webhook-secret-0123456789"
ENGINE_KEY = "soak-engine-key"
ACCOUNTS = 8
TRADES_PER_DAY = 6
STEP_EVERY_S = 2.0
PROBE_EVERY_S = 0.1
WARM_UP_S = 30.0
RSS_GROWTH_MAX = 1.20
BIN = Path(sys.executable).parent


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def test_soak(db, tmp_path: Path) -> None:
    # A database of its own: the engine trades every account it hears of, so none of other tests' may leak in.
    engine, ledger = db.engine, Ledger(db.engine)
    duration = float(os.environ.get("SOAK_SECONDS", "600"))
    steps = int(duration / STEP_EVERY_S) + 5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    today = datetime.now(UTC).date()
    sim = Simulator(seed=17, api_key=ENGINE_KEY, webhook_secret=SECRET, ledger_url=base + "/api/v1/webhooks/ml-engine",
                    start_date=today - timedelta(days=steps), trades_per_day=TRADES_PER_DAY,
                    faults=Faults(webhook_duplicate_rate=0.2, webhook_reorder_window=8)).serve()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL",) and not k.startswith("ML_ENGINE_")}
    env.update(DATABASE_URL=db.url, ML_ENGINE_URL=sim.api_url, ML_ENGINE_API_KEY=ENGINE_KEY,
               ML_ENGINE_WEBHOOK_SECRET=SECRET, LEDGER_HOST="127.0.0.1", LEDGER_PORT=str(port),
               LEDGER_DATA_DIR=str(tmp_path / "data"), LOG_LEVEL="WARNING")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 — closed at the end
    server = subprocess.Popen([str(BIN / "invledger"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    stop = threading.Event()
    try:
        def up() -> bool:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            return httpx.get(base + "/api/v1/health", timeout=2).status_code == 200
        wait_until(up, timeout_s=60, what="serve to come up", interval_s=0.2, ignoring=(httpx.TransportError,))

        # Accounts funded before the first simulated day; the server's outbox tells the engine.
        value_date = datetime.combine(today - timedelta(days=steps + 5), datetime.min.time(), UTC)
        account_ids = [f"soak-{uuid.uuid4().hex[:8]}" for _ in range(ACCOUNTS + 1)]
        for account_id in account_ids:
            ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing",
                                            currency="USD", fee_rate=Decimal("0.2")))
            ledger.deposit(account_id, "25000.00", idempotency_key=f"{account_id}:seed", effective_at=value_date)
        traded, probe_account = account_ids[:-1], account_ids[-1]
        wait_until(lambda: set(account_ids) <= set(sim.account_ids()) and all(
            Decimal(str(sim.state()["accounts"][a]["capital"])) == Decimal("25000.00") for a in account_ids),
            timeout_s=60, what="the engine to hear of the accounts", interval_s=0.5)

        latencies: list[tuple[float, float]] = []  # (seconds since start, latency)
        errors: list[str] = []

        def probe() -> None:
            n = 0
            with httpx.Client(timeout=30) as http:
                started = time.monotonic()
                while not stop.is_set():
                    n += 1
                    body = json.dumps({"event_type": "trade.executed", "data": {
                        "trade_id": f"probe-{n}-{uuid.uuid4().hex[:6]}", "account_id": probe_account,
                        "symbol": "EURUSD", "side": "buy", "quantity": 10, "entry_price": "1.0841",
                        "exit_price": "1.0853", "status": "closed", "profit_loss": "0.01",
                        "executed_at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}}).encode()
                    t0 = time.perf_counter()
                    try:
                        answer = http.post(base + "/api/v1/webhooks/ml-engine", content=body, headers={
                            "X-ML-Signature": sign(SECRET, body), "content-type": "application/json"})
                    except httpx.HTTPError as error:
                        errors.append(repr(error))
                        continue
                    latencies.append((time.monotonic() - started, time.perf_counter() - t0))
                    if answer.status_code != 200:
                        errors.append(f"{answer.status_code} {answer.text[:200]}")
                    stop.wait(PROBE_EVERY_S)

        prober = threading.Thread(target=probe)
        prober.start()
        started = time.monotonic()
        rss_start = None
        days = 0
        while time.monotonic() - started < duration:
            sim.step(days=1)
            days += 1
            if rss_start is None and time.monotonic() - started >= WARM_UP_S:
                rss_start = _rss_mb(server.pid)
            assert server.poll() is None, "serve died"
            time.sleep(max(0.0, STEP_EVERY_S - ((time.monotonic() - started) % STEP_EVERY_S)))  # pacing: a day per step
        stop.set()
        prober.join()
        assert sim.flush(timeout_s=120), "the engine could not deliver every webhook"
        rss_end = _rss_mb(server.pid)

        assert not errors, errors[:5]
        assert latencies, "the probe got no answer"
        state = sim.state()
        for account_id in traded:
            assert ledger.balance(account_id).to_decimal() == Decimal(str(state["accounts"][account_id]["capital"]))
        with engine.connect() as c:
            stored = c.execute(sa.text("SELECT count(*) FROM webhook_event WHERE account_id = ANY(:ids)"),
                               {"ids": traded}).scalar_one()
        ours = {body for body in sim.events() if any(a.encode() in body for a in traded)}
        assert stored == len(ours)  # every distinct webhook stored exactly once
        assert state["counters"]["webhooks_duplicated"] > 0
        report = verify(engine)
        assert report.ok, report.findings

        minute = [lat for at, lat in latencies if at < 60]
        last = [lat for at, lat in latencies if at >= latencies[-1][0] - 60]
        figures = {"figure": "soak", "seconds": duration, "simulated_days": days,
                   "webhooks_stored": stored + len(latencies),
                   "duplicates_sent": state["counters"]["webhooks_duplicated"],
                   "probe_requests": len(latencies), "p99_ms_first_minute": round(_p99(minute), 1),
                   "p99_ms_last_minute": round(_p99(last), 1), "rss_mb_start": round(rss_start or 0, 1),
                   "rss_mb_end": round(rss_end, 1), "lost": 0, "duplicated": 0}
        print(json.dumps(figures))
        (tmp_path / "soak.json").write_text(json.dumps(figures))
        assert rss_start is not None
        assert rss_end <= rss_start * RSS_GROWTH_MAX, figures
    finally:
        stop.set()
        processes.stop(server)
        log.close()
        sim.stop()
