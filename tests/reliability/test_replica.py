"""Reports from a streaming replica (issue 18, point 3): `serve` with REPORTS_DATABASE_URL on a real standby
(tests/replication.py) reads reports, statements and balances there and writes only on the primary; each report says
how far behind the primary the replica was (`replica_lag_ms` in JSON, `X-Replica-Lag-Ms` in both formats), and a
report as of a time before that lag equals the primary's to the byte. A second `serve` without a replica is the
primary's word.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from api.auth import create_key
from documents import statements as issuing
from ledger import AccountSpec, Ledger, Money, rules
from ledger.db import create_engine
from ledger.statements import month_bounds, month_key
from service import database
from tests.api.test_statements_api import issued_account
from tests.processes import free_port, stop
from tests.reliability.conftest import report_figures
from tests.replication import Cluster
from tests.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BIN = Path(sys.executable).parent
PAUSE_S = 1.5


def start_serve(tmp_path: Path, name: str, env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    log = (tmp_path / f"{name}.log").open("ab")
    process = subprocess.Popen([str(BIN / "invledger"), "serve"], env={**env, "LEDGER_PORT": str(port)},
                               stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
        return httpx.get(url + "/api/v1/health", timeout=2).status_code == 200
    wait_until(up, timeout_s=60, what=f"{name} to come up", interval_s=0.2, ignoring=(httpx.HTTPError,))
    return url, process


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_reports_read_on_the_replica_say_its_lag_and_match_the_primary_before_it(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster", synchronous=False)
    assert cluster.standby is not None
    database.migrate(cluster.primary.url(), app_role=database.APP_ROLE, create_role=True)
    primary = create_engine(cluster.primary.url(), pool_size=2)
    ledger = Ledger(primary)
    account_id = f"rep-{uuid.uuid4().hex[:8]}"
    ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                    fee_rate=Decimal("0.2"), initial_capital=Money.from_decimal("1000.00", "USD")))
    finance_key = create_key(primary, "finance", "replica")
    finance = {"Authorization": f"Bearer {finance_key}"}
    operator = {"Authorization": f"Bearer {create_key(primary, 'operator', 'replica')}"}
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "ALERT_WEBHOOK_URL", "DATABASE_URL")}
    env.update(DATABASE_URL=f"postgresql://{database.APP_ROLE}@127.0.0.1:{cluster.primary.port}/postgres",
               MIGRATION_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{cluster.primary.port}/postgres",
               ML_ENGINE_URL="http://127.0.0.1:9/api/v1", LOG_LEVEL="WARNING", LEDGER_HOST="127.0.0.1",
               LEDGER_DATA_DIR=str(tmp_path / "data"))
    replica_url = f"postgresql://{database.APP_ROLE}@127.0.0.1:{cluster.standby.port}/postgres"
    on_replica, replica_serve = start_serve(tmp_path, "serve-replica", {**env, "REPORTS_DATABASE_URL": replica_url})
    on_primary, primary_serve = start_serve(tmp_path, "serve-primary", env)
    paused = False
    try:
        def deposit(n: int) -> None:
            answer = httpx.post(f"{on_replica}/api/v1/accounts/{account_id}/deposits", json={"amount": "10.00"},
                                headers={**operator, "Idempotency-Key": f"rep-{n}"}, timeout=30)
            assert answer.status_code == 201, answer.text  # writes go to the primary: the replica would refuse

        def get(base: str, path: str, **headers: str) -> httpx.Response:
            answer = httpx.get(base + path, headers={**finance, **headers}, timeout=30)
            assert answer.status_code == 200, answer.text
            return answer

        for n in range(5):
            deposit(n)
        cluster.wait_replayed()
        caught_up = get(on_replica, f"/api/v1/accounts/{account_id}/balance").json()
        assert caught_up["balance"] == "1050.00"
        assert isinstance(caught_up["replica_lag_ms"], int) and caught_up["replica_lag_ms"] >= 0
        assert "replica_lag_ms" not in get(on_primary, f"/api/v1/accounts/{account_id}/balance").json()

        # Issued statements and positions are read there too, and say so.
        statement_account, month = issued_account(ledger)
        cluster.wait_replayed()
        statement_path = f"/api/v1/accounts/{statement_account}/statements/{month_key(month)}"
        positions_path = f"/api/v1/accounts/{statement_account}/positions"
        for path in (statement_path, positions_path):
            replica_body, primary_body = get(on_replica, path).json(), get(on_primary, path).json()
            assert isinstance(replica_body.pop("replica_lag_ms"), int)
            if path == positions_path:  # as of the moment each was read
                assert replica_body.pop("as_of") <= primary_body.pop("as_of")
            assert replica_body == primary_body, path
        replica_pdf = get(on_replica, statement_path, accept="application/pdf")
        assert replica_pdf.content == get(on_primary, statement_path, accept="application/pdf").content
        assert int(replica_pdf.headers["x-replica-lag-ms"]) >= 0

        # The replica falls behind: it receives the WAL but replays none of it.
        cluster.standby.scalar("SELECT pg_wal_replay_pause()")
        paused = True
        for n in range(5, 10):
            deposit(n)
        time.sleep(PAUSE_S)  # the point: the replica falls PAUSE_S behind, and its lag must say so
        behind = get(on_replica, f"/api/v1/accounts/{account_id}/balance").json()
        assert behind["balance"] == "1050.00"  # what the replica has: the reply says how old it may be
        assert get(on_primary, f"/api/v1/accounts/{account_id}/balance").json()["balance"] == "1100.00"
        assert behind["replica_lag_ms"] >= PAUSE_S * 1000, behind
        trial = get(on_replica, "/api/v1/reports/trial-balance").json()
        assert trial["replica_lag_ms"] >= PAUSE_S * 1000
        csv = get(on_replica, "/api/v1/reports/trial-balance", accept="text/csv")
        assert csv.headers["content-type"].startswith("text/csv")
        assert int(csv.headers["x-replica-lag-ms"]) >= PAUSE_S * 1000
        assert "x-replica-lag-ms" not in get(on_primary, "/api/v1/reports/trial-balance", accept="text/csv").headers

        # As of a time before the lag, the replica's reports are the primary's, in JSON and CSV.
        asked_at = datetime.now(UTC)
        lag_ms = get(on_replica, "/api/v1/reports/balance-sheet").json()["replica_lag_ms"]
        before_the_lag = asked_at - timedelta(milliseconds=lag_ms)  # everything committed by then has been replayed
        as_of = rfc3339(before_the_lag)
        compared = 0
        for path in (f"/api/v1/reports/trial-balance?as_of={as_of}", f"/api/v1/reports/balance-sheet?as_of={as_of}",
                     f"/api/v1/accounts/{account_id}/balance?as_of={as_of}",
                     f"/api/v1/accounts/{account_id}/statement?to={as_of}"):
            replica_body = get(on_replica, path).json()
            assert replica_body.pop("replica_lag_ms") >= PAUSE_S * 1000
            assert replica_body == get(on_primary, path).json(), path
            assert get(on_replica, path, accept="text/csv").text == get(on_primary, path, accept="text/csv").text
            compared += 1
        # … and now differs (the primary has five more deposits) until the replica catches up.
        now_path = f"/api/v1/accounts/{account_id}/statement"
        assert len(get(on_replica, now_path).json()["lines"]) < len(get(on_primary, now_path).json()["lines"])
        # A back-dated trade (after the as-of reports, which it changes) corrects the issued statement on the primary;
        # the replica has not replayed it.
        ledger.post(rules.gain_or_loss("trade", statement_account, Money.from_decimal("7.00", "USD"),
                                       idempotency_key=f"{statement_account}:late",
                                       effective_at=month_bounds(month)[0] + timedelta(days=20)))
        corrected = issuing.issue(ledger, statement_account, month)
        assert not isinstance(corrected, issuing.NotIssued) and corrected[1] == "corrected"
        assert get(on_primary, statement_path).json()["statement"]["version"] == 2
        replica_statement = get(on_replica, statement_path).json()
        assert replica_statement["statement"]["version"] == 1 and replica_statement["superseded_by"] is None
        assert replica_statement["replica_lag_ms"] >= PAUSE_S * 1000

        # The CLI's reports read there too (REPORTS_DATABASE_URL, as `serve` does).
        def cli_balance(extra: dict[str, str]) -> str:
            done = subprocess.run([str(BIN / "invledger"), "report", "statement", account_id, "--format", "json"],
                                  env={**env, **extra}, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            return done.stdout
        assert '"1050.00"' in cli_balance({"REPORTS_DATABASE_URL": replica_url})
        assert '"1100.00"' not in cli_balance({"REPORTS_DATABASE_URL": replica_url})
        assert '"1100.00"' in cli_balance({})

        # The pages say it too.
        for base, shown in ((on_replica, True), (on_primary, False)):
            with httpx.Client(base_url=base, timeout=30, follow_redirects=True) as browser:
                signed_in = browser.post("/login", data={"api_key": finance_key, "next": "/trial-balance"})
                assert signed_in.status_code == 200, signed_in.text[:500]
                assert ('data-testid="replica-lag"' in signed_in.text) is shown
                assert ("Read on a replica" in browser.get(f"/accounts/{account_id}").text) is shown

        # Reads there, writes never: the report engine's sessions are on the standby, the application's on the
        # primary (and a standby refuses any write, so a misrouted one would have been a 500 above).
        sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"
        assert cluster.standby.scalar(sessions, n="invledger-serve-reports") >= 1
        assert cluster.standby.scalar(sessions, n="invledger-serve") == 0
        assert cluster.primary.scalar(sessions, n="invledger-serve-reports") == 0
        assert cluster.standby.scalar("SELECT pg_is_in_recovery()") is True

        cluster.standby.scalar("SELECT pg_wal_replay_resume()")
        paused = False
        cluster.wait_replayed()
        def caught_up_again() -> dict | None:
            body = get(on_replica, f"/api/v1/accounts/{account_id}/balance").json()
            return body if body["balance"] == "1100.00" else None
        caught = wait_until(caught_up_again, timeout_s=30, interval_s=0.1, what="the replica to catch up (1100.00)")
        report_figures(tmp_path, "reports from a replica", {
            "lag_caught_up_ms": caught_up["replica_lag_ms"], "lag_paused_ms": behind["replica_lag_ms"],
            "paused_s": PAUSE_S, "as_of_reports_equal": compared, "lag_after_resume_ms": caught["replica_lag_ms"]})
    finally:
        if paused:
            cluster.standby.scalar("SELECT pg_wal_replay_resume()")
        stop(replica_serve, primary_serve)
        primary.dispose()
        cluster.stop()
