"""Issue 5's "done means": a finance user answers four questions with the `invledger` command alone.

What is investor A owed as of last month's end? How did A perform this quarter? Do the books balance?
Did last night's reconciliation find anything? Trading comes from the simulator over real HTTP (signed
webhooks into the served ledger); the CLI runs as a separate process against the same database; every
figure it prints equals the served API's (JSON and CSV) and Beancount's own sums of the exported file,
which `bean-check` accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from api.auth import create_key
from integration import outbox, reconcile
from integration.notify import sender
from ledger import AccountSpec, Ledger, beancount
from simulator import Faults
from tests.ledger.test_beancount import bean_check, beancount_sums
from tests.readside.support import whole_trial_balance

INVLEDGER = shutil.which("invledger", path=str(Path(sys.executable).parent)) or shutil.which("invledger")
DRIFT = Decimal("12.34")


def quarter_start(day: date) -> date:
    return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


class Cli:
    """`invledger …` as a finance user runs it: its own process, configured by DATABASE_URL alone."""

    def __init__(self, database_url: str) -> None:
        assert INVLEDGER, "the invledger command is not installed (pip install -e .)"
        self.env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "ML_ENGINE_URL")}
        self.env["DATABASE_URL"] = database_url

    def __call__(self, *argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([INVLEDGER, *argv], capture_output=True, text=True, env=self.env, timeout=120)
        if ok:
            assert done.returncode == 0, f"invledger {' '.join(argv)}: {done.stderr}"
        return done

    def json(self, *argv: str) -> dict:
        return json.loads(self(*argv, "--format", "json").stdout)

    def csv(self, *argv: str) -> str:
        return self(*argv, "--format", "csv").stdout


class Api:
    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.Client(base_url=f"{base_url}/api/v1", headers={"Authorization": f"Bearer {key}"},
                                 timeout=30)

    def json(self, path: str) -> dict:
        response = self.http.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    def csv(self, path: str) -> str:
        response = self.http.get(path, headers={"Accept": "text/csv"})
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
        return response.text

    def every_page(self, path: str, key: str) -> dict:
        """The body with the list under `key` read to the end by its cursor (as the CLI reads it)."""
        body = self.json(path)
        while body["next_cursor"] is not None:
            more = self.json(f"{path}{'&' if '?' in path else '?'}cursor={body['next_cursor']}")
            body = {**more, key: body[key] + more[key]}
        return body


@pytest.mark.slow
def test_finance_questions_from_the_cli(ledger: Ledger, engine: sa.Engine, engine_pair, ledger_server,
                                        migrated_url: str, tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    month_end = today.replace(day=1) - timedelta(days=1)
    quarter = quarter_start(today)
    first_day = min(quarter, month_end.replace(day=1)) - timedelta(days=3)

    # A quarter of trading for investors A and B, through yesterday, over real HTTP.
    sim, client = engine_pair(seed=5, start_date=first_day, trades_per_day=2)
    a, b = (f"fin-{name}-{uuid.uuid4().hex[:8]}" for name in ("a", "b"))
    for account_id, capital in ((a, "25000.00"), (b, "8000.00")):
        ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                        fee_rate=Decimal("0.2")))
        ledger.deposit(account_id, capital, idempotency_key=f"{account_id}:seed", reference="initial wire",
                       effective_at=datetime.combine(first_day - timedelta(days=2), datetime.min.time(), UTC))
    stats = outbox.deliver_pending(engine, sender(client), account_ids=[a, b])
    assert (stats.delivered, stats.dead) == (4, 0)
    assert sim.step(days=(today - first_day).days) > 0
    assert sim.flush(timeout_s=120)

    # Last night's reconciliation: the engine reports 12.34 more for B than the ledger holds.
    sim.set_faults(Faults(drift={b: DRIFT}))
    outcome = reconcile.run(ledger, client, run_key=f"reconcile:{yesterday.isoformat()}:{uuid.uuid4().hex[:6]}",
                            period=yesterday.isoformat(), trigger="schedule", recheck_delay_ms=0)
    assert outcome.run is not None and outcome.run.status == "done"

    cli = Cli(migrated_url)
    api = Api(ledger_server.url, create_key(engine, "finance", "e2e finance"))
    exported = tmp_path / "books.beancount"
    cli("export", "beancount", "--output", str(exported))
    bean_check(exported)
    names = beancount.account_names([r.account for r in whole_trial_balance(ledger.engine).rows])
    now_sums = beancount_sums(exported)

    def bean(ledger_name: str, sums: dict[str, Decimal] = now_sums) -> Decimal:
        """Beancount's own sum of the exported postings of a ledger account."""
        return sums.get(names[ledger_name], Decimal(0))

    # 1. What is A owed as of last month's end?
    owed = cli.json("report", "balance", a, "--as-of", month_end.isoformat())
    assert owed == api.json(f"/accounts/{a}/balance?as_of={month_end}")
    assert cli.csv("report", "balance", a, "--as-of", month_end.isoformat()) == \
        api.csv(f"/accounts/{a}/balance?as_of={month_end}")
    assert owed["as_of"] == f"{month_end}T23:59:59.999999Z" and owed["currency"] == "USD"
    table = cli("report", "balance", a, "--as-of", month_end.isoformat()).stdout
    assert owed["balance"] in table and "----" in table
    statement = cli.json("report", "statement", a, "--to", month_end.isoformat())
    assert statement["closing_balance"] == owed["balance"]
    at_month_end = tmp_path / "month-end.beancount"
    cli("export", "beancount", "--as-of", month_end.isoformat(), "--output", str(at_month_end))
    bean_check(at_month_end)
    month_end_sums = beancount_sums(at_month_end)
    assert -bean(f"liabilities:investors:{a}", month_end_sums) == Decimal(owed["balance"])  # a credit balance
    assert bean(f"assets:custody:{a}", month_end_sums) == Decimal(owed["balance"])

    # 2. How did A perform this quarter?
    period = ["--from", quarter.isoformat(), "--to", today.isoformat()]
    perf = cli.json("report", "performance", a, *period)
    url = f"/accounts/{a}/performance?from={quarter}&to={today}"
    assert perf == api.json(url)
    assert cli.csv("report", "performance", a, *period) == api.csv(url)
    assert (perf["from"], perf["to"]) == (quarter.isoformat(), today.isoformat())
    assert len(perf["days"]) == (today - quarter).days + 1
    profits = sum(Decimal(d["profit"]) for d in perf["days"])
    assert profits == Decimal(perf["profit"]) == (Decimal(perf["closing_balance"]) - Decimal(perf["opening_balance"])
                                                  - Decimal(perf["net_flows"]))
    assert Decimal(perf["closing_balance"]) == -bean(f"liabilities:investors:{a}")
    assert Decimal(perf["max_drawdown"]) >= 0
    if month_end >= quarter:  # the daily series passes through last month's end
        assert next(d for d in perf["days"] if d["date"] == month_end.isoformat())["closing_balance"] \
            == owed["balance"]
    headline = cli("report", "performance", a, *period).stdout.splitlines()[0]
    assert perf["time_weighted_return"] in headline and perf["max_drawdown"] in headline

    # 3. Do the books balance?
    as_of = ["--as-of", today.isoformat()]
    trial = cli.json("report", "trial-balance", *as_of)
    assert trial == api.every_page(f"/reports/trial-balance?as_of={today}", "rows")
    assert trial["balanced"] is True and trial["next_cursor"] is None
    for row in trial["rows"]:  # every ledger account: the ledger's figure is Beancount's sum of its postings
        assert Decimal(row["debit"]) - Decimal(row["credit"]) == bean(row["account"]), row["account"]
    sheet = cli.json("report", "balance-sheet", *as_of)
    assert sheet == api.json(f"/reports/balance-sheet?as_of={today}") and sheet["balanced"] is True
    assert "books balance: yes" in cli("report", "trial-balance", *as_of).stdout
    verified = cli("verify")
    assert verified.returncode == 0 and "books are sound" in verified.stdout
    mixed = cli("report", "trial-balance", "--from", quarter.isoformat(), ok=False)  # contract §3: as-of XOR period
    assert mixed.returncode == 1 and mixed.stderr.strip().splitlines()[-1] == \
        "invledger: report trial-balance is as of a time: give --as-of, not --from/--to"  # after the JSON log lines

    # 4. Did last night's reconciliation find anything?
    runs = cli.json("report", "reconciliations")
    assert runs == api.every_page("/reconciliations?limit=100", "items")
    assert cli.csv("report", "reconciliations").splitlines()[:2] == api.csv("/reconciliations").splitlines()[:2]
    last_night = next(r for r in runs["items"] if r["period"] == yesterday.isoformat())
    assert last_night["run_id"] == outcome.run.id and last_night["counts"]["break"] >= 1
    run_id = str(last_night["run_id"])
    breaks = cli.json("report", "reconciliations", run_id, "--result", "break")
    assert breaks == api.json(f"/reconciliations/{run_id}?result=break&limit=1000")
    assert cli.csv("report", "reconciliations", run_id, "--result", "break") == \
        api.csv(f"/reconciliations/{run_id}?result=break&limit=1000")
    line = next(r for r in breaks["results"] if r["account_id"] == b)
    assert line["difference"] == str(DRIFT)
    assert Decimal(line["ledger_balance"]) == -bean(f"liabilities:investors:{b}")
    assert Decimal(line["engine_balance"]) == Decimal(line["ledger_balance"]) + DRIFT
    assert a not in [r["account_id"] for r in breaks["results"]]
    matched = cli.json("report", "reconciliations", run_id, "--result", "matched")
    assert next(r for r in matched["results"] if r["account_id"] == a)["ledger_balance"] == perf["closing_balance"]
    table = cli("report", "reconciliations", run_id, "--result", "break").stdout
    assert table.startswith(f"Reconciliation run {run_id}") and b in table
    alerts = cli.json("report", "alerts", "--status", "open")
    assert any(x["kind"] == "reconciliation_break" and x["account_id"] == b for x in alerts["items"])
    assert alerts == api.every_page("/alerts?status=open&limit=100", "items")
    assert cli.csv("report", "alerts", "--status", "open").splitlines()[:101] == \
        api.csv("/alerts?status=open&limit=100").splitlines()
