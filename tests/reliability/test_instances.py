"""Several instances at once (issue 7, item 4): two `serve`, two `worker` and two `scheduler` processes on
RabbitMQ against one PostgreSQL.

Webhooks, deposits and withdrawals go to either server at random from many threads, with redeliveries and
replayed idempotency keys mixed in. Afterwards: every balance equals what the 2xx answers acknowledged
(exactly once), no client saw a 5xx (a deadlock or serialization failure is retried, never surfaced),
the engine got every capital notification exactly once (its capital equals the acknowledged deposits and
withdrawals), a job enqueued for the same period by two processes ran once, and `verify` is clean.

Each test run gets a RabbitMQ virtual host of its own (made with `rabbitmqctl`, removed at the end), so the
processes' default queue cannot meet another run's messages. It needs a real broker: it runs when
BROKER_URL is an amqp:// URL (CI's second pass), and says so when skipped in the embedded pass.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy as sa

from api.auth import create_key
from ledger.verify import verify
from simulator import Simulator
from tests.load import ACCOUNTS, INITIAL, SENDERS, MixedLoad, open_accounts
from tests.processes import stop
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]

SECRET = "instances-webhook-secret-0123456789"
ENGINE_KEY = "instances-engine-key"
REQUESTS_PER_SENDER = 60
BIN = Path(sys.executable).parent


def _amqp_url() -> str:
    url = os.environ.get("BROKER_URL", "")
    if not url.startswith("amqp://"):
        pytest.skip("several instances need a shared broker: runs when BROKER_URL=amqp://… (CI's services pass)")
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("BROKER_URL is RabbitMQ but rabbitmqctl is not on PATH (needed for a vhost of our own)")
    return url


@pytest.fixture
def vhost_url() -> Iterator[str]:
    base = _amqp_url()
    vhost = f"invledger-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True, timeout=60)
    parts = urlsplit(base)
    yield urlunsplit((parts.scheme, parts.netloc, "/" + vhost, "", ""))
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """`invledger` subprocesses with one environment; logs kept under the test's tmp dir."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str, **extra_env: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 — closed with the process
        process = subprocess.Popen([str(BIN / "invledger"), *args], env={**self.env, **extra_env},
                                   stdout=log, stderr=subprocess.STDOUT)
        self.running.append((name, process))
        return process

    def stop_all(self) -> None:
        stop(*(process for _, process in self.running))

    def log_text(self) -> str:
        return "".join((self.logs / f"{name}.log").read_text(errors="replace") for name, _ in self.running)


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    def up() -> bool:
        assert process.poll() is None, f"server exited with {process.returncode}"
        return httpx.get(url + "/api/v1/health", timeout=2).status_code == 200
    wait_until(up, timeout_s=timeout_s, what=f"{url} to come up", interval_s=0.2, ignoring=(httpx.TransportError,))


def test_two_servers_two_workers_two_schedulers(db, vhost_url: str, tmp_path: Path) -> None:
    # A database of its own: the workers deliver every pending notification and reconcile every account.
    engine = db.engine
    sim = Simulator(seed=5, api_key=ENGINE_KEY, start_date=datetime.now(UTC).date()).serve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "ML_ENGINE_"))}
    env.update(DATABASE_URL=db.url, BROKER_URL=vhost_url, ML_ENGINE_URL=sim.api_url,
               ML_ENGINE_API_KEY=ENGINE_KEY, ML_ENGINE_WEBHOOK_SECRET=SECRET, LEDGER_DATA_DIR=str(tmp_path / "data"),
               ML_ENGINE_TIMEOUT_MS="3000", ML_ENGINE_RETRY_DELAY_MS="50", LOG_LEVEL="WARNING")
    procs = Processes(env, tmp_path)
    try:
        servers = []
        for i in range(2):
            port = _free_port()
            servers.append((f"http://127.0.0.1:{port}",
                            procs.start(f"serve-{i}", "serve", LEDGER_HOST="127.0.0.1", LEDGER_PORT=str(port))))
        for i in range(2):
            procs.start(f"worker-{i}", "worker")
            procs.start(f"scheduler-{i}", "scheduler")
        for url, process in servers:
            _wait_ready(url, process)
        urls = [url for url, _ in servers]
        operator = create_key(engine, "operator", "instances-test")
        headers = {"Authorization": f"Bearer {operator}"}

        account_ids = open_accounts(urls, headers, "inst", ACCOUNTS, INITIAL)

        load = MixedLoad(urls, account_ids, INITIAL, headers=headers, secret=SECRET,
                         requests_per_sender=REQUESTS_PER_SENDER, trade_share=0.65, trade_prefix="t")
        statuses = load.statuses

        threads = [threading.Thread(target=load.sender, args=(n,)) for n in range(SENDERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not [s for s in statuses if s >= 500], f"a server error surfaced: {dict(statuses)}"
        assert set(statuses) <= {200, 201}, dict(statuses)  # small withdrawals: no overdraft expected

        # Every capital notification reaches the engine exactly once (two workers, two schedulers).
        def outbox_drained() -> bool:
            with engine.connect() as c:
                pending = sa.text("SELECT count(*) FROM outbox_event WHERE status <> 'delivered'")
                return c.execute(pending).scalar_one() == 0
        wait_until(outbox_drained, timeout_s=90, what="the outbox to drain", interval_s=0.5)
        load.check_books(headers, sim.state()["accounts"])

        # A job enqueued for one period by two processes at once runs once.
        period = f"instances-{uuid.uuid4().hex[:6]}"
        senders = [subprocess.Popen([sys.executable, "-c", (
            "import sys; from jobs import broker; broker.install(sys.argv[1]); from jobs import actors; "
            "actors.reconcile.send(period=sys.argv[2])"), vhost_url, period], env=env) for _ in range(2)]
        assert [p.wait(timeout=60) for p in senders] == [0, 0]

        def reconciled() -> bool:
            with engine.connect() as c:
                return c.execute(sa.text("SELECT count(*) FROM job_run WHERE run_key = :k AND status = 'done'"),
                                 {"k": f"reconcile:{period}"}).scalar_one() == 1
        wait_until(reconciled, timeout_s=120, what="the reconciliation run", interval_s=0.5)
        time.sleep(3)  # the second message, were it to start the work again, has had its chance
        with engine.connect() as c:
            runs = c.execute(sa.text("SELECT status, attempts FROM job_run WHERE run_key = :k"),
                             {"k": f"reconcile:{period}"}).all()
        assert [(r.status, r.attempts) for r in runs] == [("done", 1)]  # one record, worked on once

        report = verify(engine)
        assert report.ok, report.findings
        acknowledged = statuses[200] + statuses[201]
        print(json.dumps({"figure": "several_instances", "servers": 2, "workers": 2, "schedulers": 2,
                          "requests": sum(statuses.values()), "acknowledged": acknowledged, "lost": 0,
                          "duplicated": 0, "server_errors": 0}))
    finally:
        procs.stop_all()
        sim.stop()


def test_kill_9_of_a_separate_worker_mid_delivery(db, vhost_url: str, tmp_path: Path) -> None:
    """`invledger worker` on RabbitMQ (not the in-process one inside `serve`), killed with SIGKILL while the
    engine is answering a capital notification: the row stays pending, RabbitMQ hands the unacknowledged
    message (or the scheduler the next one) to a new worker, which delivers it again under the same
    Idempotency-Key. The engine's capital moves once per deposit."""
    from simulator import Faults, Target

    sim = Simulator(seed=9, api_key=ENGINE_KEY, start_date=datetime.now(UTC).date()).serve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "ML_ENGINE_"))}
    env.update(DATABASE_URL=db.url, BROKER_URL=vhost_url, ML_ENGINE_URL=sim.api_url, ML_ENGINE_API_KEY=ENGINE_KEY,
               ML_ENGINE_WEBHOOK_SECRET=SECRET, LEDGER_DATA_DIR=str(tmp_path / "data"), LOG_LEVEL="WARNING")
    procs = Processes(env, tmp_path)
    rounds = 3
    try:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, procs.start("serve", "serve", LEDGER_HOST="127.0.0.1", LEDGER_PORT=str(port)))
        procs.start("scheduler", "scheduler")
        worker = procs.start("worker-0", "worker")
        headers = {"Authorization": f"Bearer {create_key(db.engine, 'operator', 'worker-kill')}"}
        account_id = f"wk-{uuid.uuid4().hex[:8]}"
        answer = httpx.post(url + "/api/v1/accounts", headers=headers, timeout=30, json={
            "account_id": account_id, "product_id": "p", "agent_type": "swing", "initial_capital": "1000.00"})
        assert answer.status_code == 201, answer.text

        def pending() -> int:
            with db.engine.connect() as c:
                return c.execute(sa.text("SELECT count(*) FROM outbox_event WHERE status <> 'delivered'")).scalar_one()

        wait_until(lambda: pending() == 0, timeout_s=90, what="the account's creation to reach the engine",
                   interval_s=0.5)
        sim.set_faults(Faults(slow=Target(routes=("capital",)), slow_s=1.0))
        for i in range(rounds):
            seen = sim.state()["requests"].get("capital", 0)
            answer = httpx.post(f"{url}/api/v1/accounts/{account_id}/deposits", json={"amount": "1.00"},
                                headers={**headers, "Idempotency-Key": f"wk-{i}"}, timeout=30)
            assert answer.status_code == 201, answer.text
            wait_until(lambda: sim.state()["requests"].get("capital", 0) > seen,  # noqa: B023
                       timeout_s=60, what="the worker to start delivering", interval_s=0.5)
            worker.kill()
            worker.wait(timeout=10)
            assert pending() == 1
            worker = procs.start(f"worker-{i + 1}", "worker")
            wait_until(lambda: pending() == 0, timeout_s=90, what="a new worker to deliver", interval_s=0.5)
        state = sim.state()
        assert Decimal(str(state["accounts"][account_id]["capital"])) == Decimal("1000.00") + rounds
        assert state["requests"]["capital"] >= 2 * rounds  # each killed delivery was sent again
        print(json.dumps({"figure": "worker_kill", "kills": rounds, "delivered": rounds, "lost": 0,
                          "duplicated": 0, "engine_capital_requests": state["requests"]["capital"]}))
    finally:
        procs.stop_all()
        sim.stop()
