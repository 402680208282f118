"""Several `serve` and worker processes behind PgBouncer in transaction pooling (issue 18, point 4).

PgBouncer (Debian's, `make pgbouncer`) hands each transaction whichever server connection is free, so nothing may
outlive a transaction: every process runs with DB_POOL_MODE=transaction (no startup `options`, no prepared
statements, the timeouts and time zone `SET LOCAL` in each transaction: ledger.db) and the advisory locks are
transaction locks (integration/runs.py, api/idempotency.py, integration/webhooks.py). Migrations go straight to the
primary (MIGRATION_DATABASE_URL), as DDL and alembic's session lock need.

Two `serve` processes take deposits, withdrawals, replayed idempotency keys and signed webhooks from many threads
at once; the jobs run in two worker processes on RabbitMQ when it answers on 127.0.0.1:5672 (a virtual host of the
test's own), else in each `serve` (the in-process broker: one worker per serve, still separate processes going
through the pooler) — the test needs no broker. Afterwards the totals are exact (every balance is what the 2xx
answers promised, the engine's capital what the acknowledged deposits and withdrawals made it), the outbox has
drained, `invledger verify` through the pooler is clean, and a job run taken by two processes at once through the
pooler runs once.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from api.auth import create_key
from integration import runs
from ledger.db import create_engine
from service import database
from simulator import Simulator
from tests.load import ACCOUNTS, INITIAL, SENDERS, MixedLoad, open_accounts
from tests.processes import free_port, stop
from tests.reliability.conftest import report_figures
from tests.replication import Cluster, PgBouncer
from tests.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SECRET = "pooler-webhook-secret-0123456789"
ENGINE_KEY = "pooler-engine-key"
REQUESTS_PER_SENDER = 50
SERVER_POOL_SIZE = 6  # server connections PgBouncer keeps for all the processes together
BIN = Path(sys.executable).parent


def rabbitmq_vhost() -> str | None:
    """A RabbitMQ virtual host of the test's own when RabbitMQ answers here, else None (in-process jobs)."""
    if shutil.which("rabbitmqctl") is None:
        return None
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return None
    vhost = f"invledger-pooler-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], capture_output=True, timeout=60)
    if made.returncode != 0:
        return None
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True, timeout=60)
    return vhost


def test_two_servers_and_two_workers_behind_pgbouncer_keep_exact_totals(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster", synchronous=False, standby=False)
    owner_url = cluster.primary.url()
    database.migrate(owner_url, app_role=database.APP_ROLE, create_role=True)
    bouncer = PgBouncer(tmp_path / "pgbouncer", cluster.primary.port, pool_size=SERVER_POOL_SIZE)
    direct = create_engine(owner_url, pool_size=2)
    pooled_url = database.sqlalchemy_url(bouncer.url(database.APP_ROLE))
    sim = Simulator(seed=18, api_key=ENGINE_KEY, start_date=datetime.now(UTC).date()).serve()
    vhost = rabbitmq_vhost()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LEDGER_", "ML_ENGINE_")) and k not in ("BROKER_URL", "DATABASE_URL")}
    env.update(DATABASE_URL=bouncer.url(database.APP_ROLE), DB_POOL_MODE="transaction",
               MIGRATION_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{cluster.primary.port}/postgres",
               ML_ENGINE_URL=sim.api_url, ML_ENGINE_API_KEY=ENGINE_KEY, ML_ENGINE_WEBHOOK_SECRET=SECRET,
               ML_ENGINE_TIMEOUT_MS="3000", ML_ENGINE_RETRY_DELAY_MS="50", LOG_LEVEL="WARNING",
               LEDGER_DATA_DIR=str(tmp_path / "data"), LEDGER_HOST="127.0.0.1", DB_POOL_SIZE="5")
    if vhost:
        env["BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("ab")
        process = subprocess.Popen([str(BIN / "invledger"), *args], env={**env, **extra}, stdout=log, stderr=log)
        processes.append((name, process))
        return process

    try:
        urls = []
        for i in range(2):
            port = free_port()
            start(f"serve-{i}", "serve", LEDGER_PORT=str(port))
            urls.append(f"http://127.0.0.1:{port}")
        if vhost:
            for i in range(2):
                start(f"worker-{i}", "worker")
            start("scheduler", "scheduler")
        for (name, process), url in zip(processes, urls, strict=False):
            def up(url: str = url, process: subprocess.Popen[bytes] = process, name: str = name) -> bool:
                assert process.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
                try:
                    return httpx.get(url + "/api/v1/ready", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False
            wait_until(up, timeout_s=60, what=f"{name} to be ready", interval_s=0.3)
        operator = {"Authorization": f"Bearer {create_key(direct, 'operator', 'pooler')}"}
        account_ids = open_accounts(urls, operator, "pool", ACCOUNTS, INITIAL)

        load = MixedLoad(urls, account_ids, INITIAL, headers=operator, secret=SECRET,
                         requests_per_sender=REQUESTS_PER_SENDER, trade_share=0.6, trade_prefix="p")
        statuses = load.statuses
        server_connections: list[int] = []
        done = threading.Event()

        def watch() -> None:  # how many server connections the application really had, sampled
            while not done.is_set():
                server_connections.append(int(cluster.primary.scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = :u", u=database.APP_ROLE)))  # type: ignore[arg-type]
                time.sleep(0.2)  # sampling: a count every 0.2 s while the load runs

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(SENDERS) as pool:
            list(pool.map(load.sender, range(SENDERS)))
        elapsed_s = time.perf_counter() - started
        done.set()
        watcher.join()
        assert set(statuses) <= {200, 201}, dict(statuses)  # no 5xx, and no overdraft with these amounts

        def outbox_drained() -> bool:
            with direct.connect() as c:
                return c.execute(sa.text("SELECT count(*) FROM outbox_event WHERE status <> 'delivered'")
                                 ).scalar_one() == 0
        wait_until(outbox_drained, timeout_s=120, what="the outbox to drain through the pooler", interval_s=0.3)
        finance = {"Authorization": f"Bearer {create_key(direct, 'finance', 'pooler')}"}
        load.check_books(finance, sim.state()["accounts"])

        # A run taken by two processes' engines at once, through the pooler: one does the work, one skips. With a
        # session lock, the second could land on the server connection that holds it and take it again.
        pooled = [create_engine(pooled_url, pool_size=2, transaction_pooling=True) for _ in range(2)]
        try:
            for _ in range(3):
                run_key = f"pooler-{uuid.uuid4().hex[:8]}"
                worked = Counter[str]()

                def work(run: runs.Run, worked: Counter[str] = worked) -> tuple[str, dict[str, int]]:
                    worked[run.run_key] += 1
                    time.sleep(1.0)  # the point: a run long enough for the second to try while it works
                    return "done", {"worked": 1}

                with ThreadPoolExecutor(2) as pool:
                    outcomes = list(pool.map(lambda e, key=run_key: runs.execute(
                        e, job="reconcile", run_key=key, period=key, trigger="cli", work=work), pooled))
                assert worked[run_key] == 1, outcomes
                assert sorted(str(o.skipped) for o in outcomes) == ["None", "running"], outcomes
        finally:
            for engine in pooled:
                engine.dispose()

        verified = subprocess.run([str(BIN / "invledger"), "verify"], env=env, capture_output=True, text=True,
                                  timeout=300)
        assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
        acknowledged = statuses[200] + statuses[201]
        report_figures(tmp_path, "pgbouncer: transaction pooling", {
            "serve": 2, "workers": 2 if vhost else "in-process, one per serve", "broker": "rabbitmq" if vhost
            else "in-process", "requests": sum(statuses.values()), "acknowledged": acknowledged, "lost": 0,
            "doubled": 0, "server_errors": 0, "requests_per_s": round(sum(statuses.values()) / elapsed_s),
            "server_connections_max": max(server_connections), "server_pool_size": SERVER_POOL_SIZE})
        assert max(server_connections) <= SERVER_POOL_SIZE  # the watcher counts as postgres, not the application
    finally:
        stop(*(process for _, process in processes))
        sim.stop()
        direct.dispose()
        bouncer.stop()
        cluster.stop()
        if vhost:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)
