"""Fixtures for the jobs: a fresh database per test, the simulator over real HTTP, a real dramatiq worker.

The broker is in-process (dramatiq's StubBroker) unless BROKER_URL is set (CI: RabbitMQ, then Redis), and
then the actors are bound to a queue of this run's own (`ledger-test-<random>`), deleted at the end, so
parallel runs on one broker never take each other's messages.

Each test gets a database of its own (a copy of a migrated template: fast), because reconciliation and
distribution work on *every* account and must not see the accounts of other tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import dramatiq
import pytest
import sqlalchemy as sa
from dramatiq import Worker

from integration.client import EngineClient
from integration.engine_api import CreateAccountRequest
from jobs import actors, context
from jobs import broker as job_broker
from ledger import AccountSpec, Ledger, Money, rules
from ledger.db import create_engine
from service import config
from service.runtime import Runtime
from simulator import Simulator

API_KEY = "jobs-test-engine-key"
BROKER_URL = os.environ.get("BROKER_URL") or None
JOIN_TIMEOUT_MS = 60_000


# ------------------------------------------------------------------------------------------ databases

class Db:
    def __init__(self, url: str, engine: sa.Engine) -> None:
        self.url, self.engine, self.ledger = url, engine, Ledger(engine)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as c:
            return c.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[sa.Row]:
        with self.engine.connect() as c:
            return c.execute(sa.text(sql), params).all()


@pytest.fixture
def db(fresh_database: Callable[[], tuple[str, Callable[[], None]]]) -> Iterator[Db]:
    url, drop = fresh_database()
    engine = create_engine(url, pool_size=20, statement_timeout_ms=60_000)
    yield Db(url, engine)
    engine.dispose()
    drop()


# ------------------------------------------------------------------------------------------ the engine

SIM_START = date(2025, 3, 1)  # the simulator's first day: over long ago, so it can be synced and distributed
SINCE = datetime(2025, 2, 1, tzinfo=UTC)  # when test accounts got their capital: before any simulated day


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(seed=11, api_key=API_KEY, trades_per_day=6, start_date=SIM_START).serve()
    yield simulator
    simulator.stop()


def engine_client(sim: Simulator, **options: Any) -> EngineClient:
    settings: dict[str, Any] = {"timeout_ms": 400, "retry_attempts": 2, "retry_delay_ms": 1, "retry_delay_max_ms": 5}
    settings.update(options)
    return EngineClient(sim.api_url, API_KEY, **settings)


@pytest.fixture
def runtime(db: Db, sim: Simulator) -> Iterator[Runtime]:
    """What the actors use in this test (the worker threads read jobs.context at each message)."""
    settings = config.load({"DATABASE_URL": db.url, "ML_ENGINE_URL": sim.api_url, "ML_ENGINE_API_KEY": API_KEY,
                            "RECONCILIATION_TOLERANCE": "0"})
    rt = Runtime(settings=settings, url=db.url, engine=db.engine, ledger=db.ledger)
    client = engine_client(sim)
    context.install(rt, client)
    yield rt
    client.shutdown()
    context.reset()


# ------------------------------------------------------------------------------------------ broker and worker

class Jobs:
    """The broker, a running worker, and a way to wait until every sent message has been handled."""

    def __init__(self, broker: dramatiq.Broker, queue: str) -> None:
        self.broker, self.queue = broker, queue
        self.workers: list[Worker] = []

    def start_worker(self, threads: int = 4) -> Worker:
        worker = Worker(self.broker, worker_threads=threads, worker_timeout=100)
        worker.start()
        self.workers.append(worker)
        return worker

    def drain(self) -> None:
        """Wait until the queue is empty and every worker is idle."""
        if job_broker.is_in_process(self.broker):
            self.broker.join(self.queue, timeout=JOIN_TIMEOUT_MS, fail_fast=True)
        elif type(self.broker).__name__ == "RedisBroker":  # counts queued, delayed and unacknowledged messages
            self.broker.join(self.queue, interval=20, timeout=JOIN_TIMEOUT_MS)
        else:
            self.broker.join(self.queue, min_successes=3, idle_time=50, timeout=JOIN_TIMEOUT_MS)
        for worker in self.workers:
            worker.join()


@pytest.fixture(scope="session")
def _jobs() -> Iterator[Jobs]:
    queue = f"ledger-test-{uuid.uuid4().hex[:8]}" if BROKER_URL else "ledger"
    names = {a.actor_name: a.queue_name for a in actors.ALL}
    for actor in actors.ALL:
        actor.queue_name = queue
    broker = job_broker.install(BROKER_URL)
    jobs = Jobs(broker, queue)
    jobs.start_worker()
    yield jobs
    for worker in jobs.workers:
        worker.stop()
    if type(broker).__name__ == "RedisBroker":
        keys = list(broker.client.scan_iter(f"{broker.namespace}:{queue}*"))  # type: ignore[attr-defined]
        if keys:
            broker.client.delete(*keys)  # type: ignore[attr-defined]
    elif not job_broker.is_in_process(broker):
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            try:
                broker.channel.queue_delete(name)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 — best effort
                pass
    broker.close()
    for actor in actors.ALL:
        actor.queue_name = names[actor.actor_name]
    job_broker.install(None)


@pytest.fixture
def jobs(_jobs: Jobs, runtime: Runtime) -> Iterator[Jobs]:
    yield _jobs
    _jobs.drain()  # nothing of this test may run into the next one
    for worker in _jobs.workers[1:]:
        worker.stop()
    del _jobs.workers[1:]


# ------------------------------------------------------------------------------------------ helpers

def open_account(ledger: Ledger, account_id: str | None = None, capital: str = "1000.00",
                 fee_rate: str = "0.20") -> str:
    """An account opened the normal way: the engine hears of it through the outbox."""
    account_id = account_id or f"acc-{uuid.uuid4().hex[:10]}"
    ledger.open_account(AccountSpec(account_id=account_id, product_id="prod-1", agent_type="swing", currency="USD",
                                    fee_rate=Decimal(fee_rate), initial_capital=Money.from_decimal(capital, "USD")))
    return account_id


def open_known_account(db: Db, client: EngineClient, *, capital: str = "1000.00", since: Any,
                       fee_rate: str = "0.20", engine: bool = True, account_id: str | None = None) -> str:
    """An account whose capital was deposited at `since` (before any simulated day) and that the engine
    already knows with that capital (told directly, so its outbox rows are marked delivered). A given
    `account_id` makes the simulator's walk for it the same on every run."""
    account_id = account_id or f"acc-{uuid.uuid4().hex[:10]}"
    db.ledger.open_account(AccountSpec(account_id=account_id, product_id="prod-1", agent_type="swing",
                                       currency="USD", fee_rate=Decimal(fee_rate)))
    db.ledger.post(rules.deposit(account_id, Money.from_decimal(capital, "USD"), idempotency_key=f"{account_id}:cap",
                                 effective_at=since, memo="initial capital"))
    if engine:
        client.create_account(CreateAccountRequest(account_id=account_id, product_id="prod-1", agent_type="swing",
                                                   initial_capital=Decimal(capital)),
                              idempotency_key=f"test-create-{account_id}")
    with db.engine.begin() as c:
        c.execute(sa.text("UPDATE outbox_event SET status = 'delivered', delivered_at = now() WHERE account_id = :a"),
                  {"a": account_id})
    return account_id


def alerts_of(db: Db, **where: str) -> list[sa.Row]:
    clause = " AND ".join(f"{k} = :{k}" for k in where) or "true"
    return db.rows(f"SELECT * FROM alert WHERE {clause} ORDER BY id", **where)


def cli(db: Db, sim: Simulator | None, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`invledger ARGS` in a process of its own, configured by environment variables like any deployment."""
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "ALERT_WEBHOOK_URL")}
    env.update({"DATABASE_URL": db.url, "LOG_LEVEL": "WARNING"})
    if sim is not None:
        env.update({"ML_ENGINE_URL": sim.api_url, "ML_ENGINE_API_KEY": API_KEY, "ML_ENGINE_TIMEOUT_MS": "2000",
                    "ML_ENGINE_RETRY_ATTEMPTS": "2", "ML_ENGINE_RETRY_DELAY_MS": "10"})
    return subprocess.run([sys.executable, "-m", "invledger.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s)
