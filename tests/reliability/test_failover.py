"""Failover under load (issue 18, point 1): a primary and a streaming standby (tests/replication.py), `invledger serve`
with a multi-host DATABASE_URL and `target_session_attrs=read-write`, and a load of deposits, withdrawals and signed
webhooks from several threads. Each round: kill -9 the primary (postmaster and every backend), `pg_ctl promote` the
standby, make a new standby from the new primary on the dead node's port. Meanwhile the service answers 503 (never
500, never a 2xx it does not keep) and comes back by itself.

Afterwards every acknowledged (2xx) request is in the books exactly once, every request that was not acknowledged
is sent again with its key (as clients do) and is then booked exactly once, the balances are what the books say,
and `invledger verify` (balances, invariants, the hash chains) is clean.

Every other round the primary's WAL sender is stopped (SIGSTOP) for a second before the kill: a standby that lags
(a slow network or disk; stopping the standby's receiver instead shows nothing, since what the sender had written
waits in the socket and is read after the kill). Synchronous, the primary does not acknowledge what the standby
has not flushed, so nothing acknowledged is lost; asynchronous (the second test), what the primary acknowledged in
that second is gone after the failover — the window a ledger does not accept, and why it defaults to synchronous.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from api.auth import create_key
from integration.signature import sign
from ledger import AccountSpec, Ledger, Money, rules
from ledger.db import CommitNotReplicated, create_engine
from service import database
from tests.api.test_webhooks import trade
from tests.processes import free_port, stop
from tests.reliability.conftest import report_figures
from tests.replication import Cluster
from tests.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SECRET = "failover-webhook-secret-0123456789"
LOAD_THREADS = 4
ACCOUNTS = 4
INITIAL = Decimal("100000.00")
CLIENT_TIMEOUT_S = 30  # longer than any wait of the server's own: an answer later than this is a hang
RECOVERY_TIMEOUT_S = 60
STALL_S = 1.0
BIN = Path(sys.executable).parent


@dataclass
class Request:
    kind: str  # deposit | withdrawal | webhook
    account_id: str
    key: str  # the journal entry's idempotency key it must produce
    effect: Decimal  # on the investor's balance
    path: str
    body: bytes
    headers: dict[str, str]
    answers: list[int] = field(default_factory=list)
    sent_at: float = 0.0
    acknowledged_at: float | None = None


def make_request(rng: random.Random, accounts: list[str], operator_key: str) -> Request:
    account_id = rng.choice(accounts)
    roll = rng.random()
    if roll < 0.6:
        kind = "deposit" if roll < 0.4 else "withdrawal"
        key = uuid.uuid4().hex
        amount = Decimal(rng.randint(1, 500)) / 100
        return Request(kind, account_id, f"api:{kind}:{account_id}:{key}", amount if kind == "deposit" else -amount,
                       f"/api/v1/accounts/{account_id}/{kind}s", json.dumps({"amount": str(amount)}).encode(),
                       {"Authorization": f"Bearer {operator_key}", "Idempotency-Key": key,
                        "content-type": "application/json"})
    pnl = Decimal(rng.randint(-2000, 2000) or 1) / 100
    data = trade(account_id, pnl=str(pnl), trade_id=f"fo-{uuid.uuid4().hex}")
    body = json.dumps({"event_type": "trade.executed", "data": data}).encode()
    return Request("webhook", account_id, f"trade:{data['trade_id']}", pnl, "/api/v1/webhooks/ml-engine", body,
                   {"X-ML-Signature": sign(SECRET, body), "content-type": "application/json"})


class Load:
    """Threads sending new requests until stopped; each answer's status and time kept."""

    def __init__(self, url: str, accounts: list[str], operator_key: str) -> None:
        self.url, self.accounts, self.operator_key = url, accounts, operator_key
        self.requests: list[Request] = []
        self.statuses: Counter[int | str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(LOAD_THREADS)]

    def _run(self, n: int) -> None:
        rng = random.Random(n * 7919 + int(time.time()))
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S) as client:
            while not self.stop.is_set():
                request = make_request(rng, self.accounts, self.operator_key)
                with self.lock:
                    self.requests.append(request)
                status = send(client, request)
                with self.lock:
                    self.statuses[status] += 1
                time.sleep(0.005)  # pacing: a steady load, not a spin

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=CLIENT_TIMEOUT_S + 10)

    def acknowledged(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.acknowledged_at is not None]

    def first_acknowledged_after(self, at: float) -> float | None:
        """When the first request sent after `at` was acknowledged (an answer to one sent before may still leave
        after it: its commit was done)."""
        with self.lock:
            times = [r.acknowledged_at for r in self.requests if r.acknowledged_at and r.sent_at > at]
        return min(times) if times else None


def send(client: httpx.Client, request: Request) -> int | str:
    request.sent_at = time.monotonic()
    try:
        answer = client.post(request.path, content=request.body, headers=request.headers)
    except httpx.HTTPError as error:  # no answer at all: the server hung or died (neither may happen here)
        request.answers.append(0)
        return type(error).__name__
    request.answers.append(answer.status_code)
    if 200 <= answer.status_code < 300:
        request.acknowledged_at = time.monotonic()
    return answer.status_code


def booked(engine: sa.Engine, keys: list[str]) -> Counter[str]:
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT idempotency_key, count(*) FROM journal_entry "
                                 "WHERE idempotency_key = ANY(:k) GROUP BY idempotency_key"), {"k": keys}).all()
    return Counter({key: n for key, n in rows})


def walsender_pid(cluster: Cluster) -> int:
    assert cluster.standby is not None
    pid = cluster.primary.scalar("SELECT pid FROM pg_stat_replication WHERE application_name = :n",
                                 n=cluster.standby.name)
    assert pid, "the primary has no WAL sender for its standby"
    return int(pid)  # type: ignore[arg-type]


def run_failovers(tmp_path: Path, *, synchronous: bool, failovers: int) -> dict[str, object]:
    cluster = Cluster(tmp_path / "cluster", synchronous=synchronous)
    owner_url = cluster.url("postgres", driver=True)
    app_url = cluster.url(database.APP_ROLE)
    database.migrate(owner_url, app_role=database.APP_ROLE, create_role=True)
    engine = create_engine(owner_url, pool_size=2)  # the test's own reads, through the same multi-host URL
    ledger = Ledger(engine)
    accounts = [f"fo-{i}-{uuid.uuid4().hex[:6]}" for i in range(ACCOUNTS)]
    for account_id in accounts:
        ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                        fee_rate=Decimal("0.2"),
                                        initial_capital=Money.from_decimal(str(INITIAL), "USD")))
    operator_key = create_key(engine, "operator", "failover")
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "ALERT_WEBHOOK_URL", "DATABASE_URL")}
    port = free_port()
    env.update(DATABASE_URL=app_url, MIGRATION_DATABASE_URL=cluster.url("postgres"),
               ML_ENGINE_URL="http://127.0.0.1:9/api/v1", ML_ENGINE_WEBHOOK_SECRET=SECRET,
               ML_ENGINE_TIMEOUT_MS="500", ML_ENGINE_RETRY_ATTEMPTS="1", LOG_LEVEL="WARNING",
               LEDGER_DATA_DIR=str(tmp_path / "data"), LEDGER_HOST="127.0.0.1", LEDGER_PORT=str(port))
    log = (tmp_path / "serve.log").open("ab")
    server = subprocess.Popen([str(BIN / "invledger"), "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    rounds: list[dict[str, object]] = []
    load = Load(url, accounts, operator_key)
    try:

        def ready() -> bool:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            return httpx.get(url + "/api/v1/ready", timeout=2).status_code == 200
        wait_until(ready, timeout_s=60, interval_s=0.2, what="serve to be ready", ignoring=(httpx.HTTPError,))
        load.start()
        rng = random.Random(18)
        lost_so_far: set[str] = set()
        for n in range(failovers):
            time.sleep(rng.uniform(2.0, 4.0))  # the point: the load runs a while before the primary dies
            stalled = n % 2 == 1
            if stalled:  # the standby lags: the primary's WAL sender stops for a second before the primary dies
                os.kill(walsender_pid(cluster), signal.SIGSTOP)
                time.sleep(STALL_S)  # the point: the standby falls STALL_S behind
            acknowledged_before = len(load.acknowledged())
            killed_at = time.monotonic()
            dead_port = cluster.primary.port
            cluster.primary.kill()  # the stopped sender with it
            dead = cluster.primary
            cluster.primary, cluster.standby = cluster.standby, None  # type: ignore[assignment]
            cluster.retired.append(dead)
            cluster.primary.promote()
            promoted_at = time.monotonic()
            cluster.make_standby(dead_port)
            standby_at = time.monotonic()

            def recovered(killed_at: float = killed_at) -> float | None:
                assert server.poll() is None, "serve died"
                return load.first_acknowledged_after(killed_at)
            first = wait_until(recovered, timeout_s=RECOVERY_TIMEOUT_S - (time.monotonic() - killed_at),
                               what="the service to recover by itself (an acknowledged request)")
            acknowledged = load.acknowledged()
            counts = booked(engine, [r.key for r in acknowledged])
            lost = {r.key for r in acknowledged if counts[r.key] == 0}
            rounds.append({"stalled_standby": stalled, "unavailable_s": round(first - killed_at, 2),
                           "promote_s": round(promoted_at - killed_at, 2),
                           "new_standby_s": round(standby_at - promoted_at, 2),
                           "acknowledged_before_kill": acknowledged_before,
                           "acknowledged_and_lost": len(lost - lost_so_far),
                           "doubled": sum(1 for n in counts.values() if n > 1)})
            lost_so_far |= lost
        time.sleep(1)  # the point: a second of load after the last recovery
        load.finish()
        statuses = dict(load.statuses)
        assert set(statuses) <= {200, 201, 503}, f"an answer other than 2xx or 503 (or none at all): {statuses}"
        assert statuses.get(503, 0) > 0, "no 503 during any failover: the test did not see the gap"
        acknowledged = load.acknowledged()
        lost_keys = {r.key for r in acknowledged if booked(engine, [r.key])[r.key] == 0}
        # Every request not acknowledged is sent again with its key, as the engine and API clients do.
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
            for request in load.requests:
                if request.acknowledged_at is None:
                    for _ in range(20):
                        send(client, request)
                        if request.acknowledged_at is not None:
                            break
                        time.sleep(0.5)  # pacing: a client's resend, at most 20 of them
                    assert request.acknowledged_at is not None, f"{request.kind} never acknowledged on resend"
        counts = booked(engine, [r.key for r in load.requests])
        doubled = [k for k, n in counts.items() if n > 1]
        assert not doubled, doubled
        missing = [r.key for r in load.requests if counts[r.key] == 0]
        assert set(missing) == lost_keys  # only what was acknowledged and then lost with the old primary
        for account_id in accounts:
            want = INITIAL + sum((r.effect for r in load.requests if r.account_id == account_id
                                  and r.key not in lost_keys), Decimal(0))
            assert ledger.account(account_id).balance.to_decimal() == want, account_id
        verified = subprocess.run([str(BIN / "invledger"), "verify"], env=env, capture_output=True, text=True,
                                  timeout=300)
        assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
        cluster.wait_replayed()  # and the standby holds the same books
        assert cluster.standby is not None
        standby = create_engine(cluster.standby.url(), pool_size=1)
        try:
            assert sum(booked(standby, [r.key for r in load.requests]).values()) == len(counts)
        finally:
            standby.dispose()
        unavailable = [r["unavailable_s"] for r in rounds]
        return {"replication": "synchronous" if synchronous else "asynchronous", "failovers": failovers,
                "requests": len(load.requests), "acknowledged": len(acknowledged), "answers": statuses,
                "status_500": statuses.get(500, 0), "acknowledged_and_lost": len(lost_keys),
                "lost_in_stalled_rounds": sum(r["acknowledged_and_lost"] for r in rounds if r["stalled_standby"]),
                "doubled": len(doubled), "unavailable_s_max": max(unavailable),
                "unavailable_s_mean": round(sum(unavailable) / len(unavailable), 2), "rounds": rounds}
    finally:
        load.stop.set()
        stop(server)
        log.close()
        engine.dispose()
        cluster.stop()


def test_synchronous_failover_loses_and_doubles_nothing(tmp_path: Path) -> None:
    figures = run_failovers(tmp_path, synchronous=True, failovers=6)
    report_figures(tmp_path, "failover: synchronous standby", figures)
    assert figures["acknowledged_and_lost"] == 0
    assert figures["doubled"] == 0


def test_asynchronous_failover_loses_what_the_standby_had_not_received(tmp_path: Path) -> None:
    figures = run_failovers(tmp_path, synchronous=False, failovers=4)
    report_figures(tmp_path, "failover: asynchronous standby", figures)
    assert figures["doubled"] == 0
    # The window: with the standby a second behind, what the primary acknowledged in that second is gone.
    assert figures["lost_in_stalled_rounds"] > 0, figures



def test_a_commit_no_standby_confirmed_is_answered_503_and_found_on_resend(tmp_path: Path) -> None:
    """No standby: the primary's commits wait for one, for as long as it takes (the statement timeout does not apply
    to that wait; the waiting transaction stays invisible and keeps its locks). If someone cancels the wait
    (`pg_cancel_backend`, as an operator or a failover tool may), PostgreSQL keeps the transaction on the primary
    alone and reports success with a warning. The service must not call that acknowledged: it answers 503
    (ledger.db.CommitNotReplicated), and the resend with the same key finds the entry — booked once."""
    cluster = Cluster(tmp_path / "cluster", synchronous=True)
    owner_url = cluster.url("postgres", driver=True)
    database.migrate(owner_url, app_role=database.APP_ROLE, create_role=True)
    engine = create_engine(owner_url, pool_size=2)
    ledger = Ledger(engine)
    account_id = f"nr-{uuid.uuid4().hex[:6]}"
    ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                    fee_rate=Decimal("0.2"), initial_capital=Money.from_decimal("1000.00", "USD")))
    operator_key = create_key(engine, "operator", "unreplicated")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "ALERT_WEBHOOK_URL", "DATABASE_URL")}
    env.update(DATABASE_URL=cluster.url(database.APP_ROLE), MIGRATION_DATABASE_URL=cluster.url("postgres"),
               ML_ENGINE_URL="http://127.0.0.1:9/api/v1", ML_ENGINE_WEBHOOK_SECRET=SECRET, LOG_LEVEL="WARNING",
               LEDGER_DATA_DIR=str(tmp_path / "data"), LEDGER_HOST="127.0.0.1", LEDGER_PORT=str(port))
    log = (tmp_path / "serve.log").open("ab")
    server = subprocess.Popen([str(BIN / "invledger"), "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(3)
    waiting = ("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND usename = :u "
               "AND application_name = 'invledger-serve'")
    try:

        def up() -> bool:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            return httpx.get(url + "/api/v1/health", timeout=2).status_code == 200
        wait_until(up, timeout_s=60, interval_s=0.2, what="serve to come up", ignoring=(httpx.HTTPError,))
        assert cluster.standby is not None
        cluster.standby.stop()
        requests = [make_request(rng, [account_id], operator_key) for _ in range(8)]
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
            for request in requests:
                sender = threading.Thread(target=send, args=(client, request))
                sender.start()
                probe = sa.create_engine(cluster.primary.url(), poolclass=sa.pool.NullPool)
                try:
                    # Every wait of the request is cancelled as it comes (an API key's last use is a commit too).
                    with probe.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                        deadline = time.monotonic() + 20
                        while sender.is_alive():
                            assert time.monotonic() < deadline, "the request did not end"
                            for pid in c.execute(sa.text(waiting), {"u": database.APP_ROLE}).scalars().all():
                                c.execute(sa.text("SELECT pg_cancel_backend(:p)"), {"p": pid})
                            time.sleep(0.05)  # a bounded loop that cancels each new wait as it comes
                finally:
                    probe.dispose()
                sender.join(timeout=CLIENT_TIMEOUT_S + 5)
                assert request.answers == [503], (request.kind, request.answers)
            kept = booked(engine, [r.key for r in requests])
            # Kept on the primary alone (or, if a commit before it was the one refused, never made): not acknowledged.
            assert all(n <= 1 for n in kept.values()), kept
            cluster.standby.start()
            cluster.wait_streaming()
            for request in requests:
                assert send(client, request) in (200, 201), request.answers
        after = booked(engine, [r.key for r in requests])
        assert after == Counter({r.key: 1 for r in requests})  # each booked once: found, or made, never twice
        want = Decimal("1000.00") + sum((r.effect for r in requests), Decimal(0))
        assert ledger.account(account_id).balance.to_decimal() == want
        report_figures(tmp_path, "failover: a commit no standby confirmed", {
            "requests": len(requests), "answered_503": len(requests), "kept_on_the_primary_alone": sum(kept.values()),
            "booked_once_after_resend": len(after)})
    finally:
        stop(server)
        log.close()
        engine.dispose()
        cluster.stop()


def test_one_entry_in_autocommit_is_not_acknowledged_without_the_standby(tmp_path: Path) -> None:
    """`Ledger.post` commits as its one statement ends (autocommit, no COMMIT of ours): a cancelled wait for the
    synchronous standby comes as that statement's warning, and is CommitNotReplicated as for a COMMIT; the post
    again, once the standby is back, finds the entry — booked once."""
    cluster = Cluster(tmp_path / "cluster", synchronous=True)
    owner_url = cluster.url("postgres", driver=True)
    database.migrate(owner_url, app_role=database.APP_ROLE, create_role=True)
    engine = create_engine(owner_url, pool_size=2, application_name="one-entry-sync")
    ledger = Ledger(engine)
    account_id = f"oe-{uuid.uuid4().hex[:6]}"
    ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                    fee_rate=Decimal("0.2"), initial_capital=Money.from_decimal("1000.00", "USD")))
    draft = rules.deposit(account_id, Money.from_decimal("5.00", "USD"), idempotency_key=f"{account_id}:once")
    outcome: dict[str, object] = {}

    def post() -> None:
        try:
            outcome["posted"] = ledger.post(draft)
        except Exception as error:  # noqa: BLE001 — the outcome is asserted below
            outcome["error"] = error

    probe = sa.create_engine(cluster.primary.url(), poolclass=sa.pool.NullPool)
    try:
        assert cluster.standby is not None
        cluster.standby.stop()
        poster = threading.Thread(target=post)
        poster.start()
        with probe.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            deadline = time.monotonic() + 20
            while poster.is_alive():
                assert time.monotonic() < deadline, "the post did not end"
                for pid in c.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
                                             "AND application_name = 'one-entry-sync'")).scalars().all():
                    c.execute(sa.text("SELECT pg_cancel_backend(:p)"), {"p": pid})
                time.sleep(0.05)
        poster.join()
        assert isinstance(outcome.get("error"), CommitNotReplicated), outcome
        cluster.standby.start()
        cluster.wait_streaming()
        again = ledger.post(draft)
        assert again.replayed  # kept on the primary alone, not acknowledged; found by the same key
        assert ledger.balance(account_id) == Money.from_decimal("1005.00", "USD")
    finally:
        probe.dispose()
        engine.dispose()
        cluster.stop()
