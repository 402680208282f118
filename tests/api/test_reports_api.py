"""Reports over HTTP: JSON and CSV say the same, and agree with the postings and verify (the CLI: tests/invledger)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from integration import alerts
from ledger import Ledger, Money
from ledger.verify import verify
from readside import reports
from tests.api.conftest import auth
from tests.api.test_webhooks import open_account, performance, send, trade
from tests.readside.support import totals_as_of

CSV = {"Accept": "text/csv"}


def get(client, keys, url: str, *, as_csv: bool = False, role: str = "finance"):
    response = client.get(url, headers={**auth(keys[role]), **(CSV if as_csv else {})})
    assert response.status_code == 200, response.text
    if as_csv:
        assert response.headers["content-type"].startswith("text/csv")
        return list(csv.DictReader(io.StringIO(response.text)))
    return response.json()


def test_reports_need_a_key_and_refuse_bad_times(client, keys) -> None:
    assert client.get("/api/v1/reports/trial-balance").status_code == 401
    bad = client.get("/api/v1/reports/balance-sheet?as_of=yesterday", headers=auth(keys["finance"]))
    assert bad.status_code == 422 and set(bad.json()) == {"error", "detail"}
    naive = client.get("/api/v1/reports/trial-balance?as_of=2026-01-01T00:00:00", headers=auth(keys["finance"]))
    assert naive.status_code == 422
    missing = client.get("/api/v1/accounts/nope-none/performance", headers=auth(keys["finance"]))
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_account"
    reversed_period = client.get("/api/v1/reports/income-statement?from=2026-02-01&to=2026-01-01",
                                 headers=auth(keys["finance"]))
    assert reversed_period.status_code == 422


@pytest.mark.parametrize("query", [
    "performance?to=0001-01-01", "performance?from=0001-01-01&to=0001-01-31", "statement?from=0001-01-01",
    "statement?to=9999-12-31", "balance?as_of=9999-12-31", "balance?as_of=0001-01-01T00:00:00%2B01:00",
    "balance?as_of=9999-12-31T23:59:59-01:00", "balance?as_of=2026-01-01t00:00:00z"])
def test_the_edges_of_time_are_answers_not_500s(client, keys, query) -> None:
    """Found by schemathesis: the day before 0001-01-01 and the instant after 9999-12-31 do not exist (issue 16)."""
    account_id = open_account(client, keys)
    answer = client.get(f"/api/v1/accounts/{account_id}/{query}", headers=auth(keys["finance"]))
    assert answer.status_code == 200, answer.text
    for report in ("income-statement?from=0001-01-01", "trial-balance?as_of=9999-12-31",
                   "balance-sheet?as_of=0001-01-01"):
        assert client.get(f"/api/v1/reports/{report}", headers=auth(keys["finance"])).status_code == 200, report


def test_trial_balance_json_csv_and_the_postings_agree(client, keys, ledger: Ledger, engine: sa.Engine) -> None:
    open_account(client, keys, "321.09")
    body = get(client, keys, "/api/v1/reports/trial-balance")
    rows = get(client, keys, "/api/v1/reports/trial-balance", as_csv=True)
    core = totals_as_of(engine)
    assert body["balanced"] is True and body["next_cursor"] is None
    assert body["totals"] == {c: {"debit": str(Money(minor=d, currency=c)), "credit": str(Money(minor=cr, currency=c))}
                              for c, (d, cr) in sorted(core.items())}
    assert [{k: r[k] for k in ("account", "type", "currency", "debit", "credit")} for r in rows[:len(body["rows"])]] \
        == body["rows"]
    assert [(r["account"], r["debit"], r["credit"]) for r in rows[len(body["rows"]):]] == [
        (f"TOTAL {c}", t["debit"], t["credit"]) for c, t in body["totals"].items()]
    assert verify(engine).ok

    first = client.get("/api/v1/reports/trial-balance?limit=2", headers={**auth(keys["finance"]), **CSV})
    cursor = first.headers["X-Next-Cursor"]
    second = get(client, keys, f"/api/v1/reports/trial-balance?limit=2&cursor={cursor}")
    assert second["rows"][0]["account"] > cursor and second["totals"] == body["totals"]

    past = datetime.now(UTC) - timedelta(days=2)
    then = get(client, keys, f"/api/v1/reports/trial-balance?as_of={past.isoformat().replace('+00:00', 'Z')}")
    assert then["as_of"] == past.isoformat().replace("+00:00", "Z")
    assert then["totals"] == {c: {"debit": str(Money(minor=d, currency=c)), "credit": str(Money(minor=cr, currency=c))}
                              for c, (d, cr) in sorted(totals_as_of(engine, past).items())}


def test_balance_sheet_and_income_statement(client, keys, ledger: Ledger) -> None:
    sheet = get(client, keys, "/api/v1/reports/balance-sheet")
    assert sheet["balanced"] is True
    for c in sheet["currencies"]:
        assert c["total_assets"] == c["total_liabilities_and_equity"]
    rows = get(client, keys, "/api/v1/reports/balance-sheet", as_csv=True)
    totals = {(r["currency"], r["line"]): r["balance"] for r in rows if r["section"] == "total"}
    for c in sheet["currencies"]:
        assert totals[(c["currency"], "total assets")] == c["total_assets"]
        assert totals[(c["currency"], "total liabilities and equity")] == c["total_liabilities_and_equity"]
    income = get(client, keys, "/api/v1/reports/income-statement?from=2000-01-01&to=2100-01-01")
    for c in income["currencies"]:
        retained = next(s["retained_earnings"] for s in sheet["currencies"] if s["currency"] == c["currency"])
        assert c["net_income"] == retained
    income_rows = get(client, keys, "/api/v1/reports/income-statement?from=2000-01-01", as_csv=True)
    assert {(r["currency"], r["amount"]) for r in income_rows if r["account"] == "net income"} == {
        (c["currency"], c["net_income"]) for c in income["currencies"]}
    assert income["from"] == "2000-01-01T00:00:00Z"


def test_account_balance_and_statement_as_csv(client, keys, ledger: Ledger) -> None:
    account_id = open_account(client, keys, "1000.00", ledger=ledger)  # deposited ten days ago
    send(client, "trade.executed", trade(account_id, pnl="-20.25"))
    url = f"/api/v1/accounts/{account_id}"
    five_days_ago = (datetime.now(UTC) - timedelta(days=5)).date().isoformat()
    assert get(client, keys, f"{url}/balance?as_of={five_days_ago}")["balance"] == "1000.00"
    assert get(client, keys, f"{url}/balance?as_of={five_days_ago}", as_csv=True) == [
        {"account_id": account_id, "currency": "USD", "balance": "1000.00",
         "as_of": f"{five_days_ago}T23:59:59.999999Z"}]
    body = get(client, keys, f"{url}/statement")
    rows = get(client, keys, f"{url}/statement", as_csv=True)
    assert rows[0]["kind"] == "opening" and rows[0]["balance"] == body["opening_balance"] == "0.00"
    assert rows[-1]["kind"] == "closing" and rows[-1]["balance"] == body["closing_balance"] == "979.75"
    assert [(r["entry_id"], r["debit"], r["credit"], r["balance"]) for r in rows[1:-1]] == [
        (str(line["entry_id"]), line["debit"] or "", line["credit"] or "", line["balance"]) for line in body["lines"]]
    paged = client.get(f"{url}/statement?limit=1", headers={**auth(keys["finance"]), **CSV})
    assert paged.headers["X-Next-Cursor"]


def test_performance_from_webhooks_json_and_csv(client, keys, ledger: Ledger) -> None:
    account_id = open_account(client, keys, "1000.00", ledger=ledger)
    day = (datetime.now(UTC) - timedelta(days=5)).date()
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    assert send(client, "trade.executed", trade(account_id, pnl="12.50", at=noon)).status_code == 200
    snapshot = send(client, "daily.performance", performance(account_id, day, "1012.50"))
    assert snapshot.status_code == 200 and snapshot.json()["entry_ids"] == []  # the ledger already agreed
    url = f"/api/v1/accounts/{account_id}/performance?from={day - timedelta(days=1)}&to={day + timedelta(days=1)}"
    body = get(client, keys, url)
    assert [d["closing_balance"] for d in body["days"]] == ["1000.00", "1012.50", "1012.50"]
    assert [d["daily_return"] for d in body["days"]] == ["0.00000000", "0.01250000", "0.00000000"]
    assert body["time_weighted_return"] == "0.01250000" and body["max_drawdown"] == "0.00000000"
    middle = body["days"][1]
    assert (middle["trades_executed"], middle["winning_trades"], middle["losing_trades"], middle["trades_source"],
            middle["engine_closing_balance"]) == (3, 2, 1, "engine", "1012.50")
    rows = get(client, keys, url, as_csv=True)
    assert [r["closing_balance"] for r in rows[:-1]] == ["1000.00", "1012.50", "1012.50"]
    period = rows[-1]
    assert period["date"].startswith("PERIOD ") and period["daily_return"] == body["time_weighted_return"]
    assert (period["profit"], period["winning_trades"], period["losing_trades"]) == ("12.50", "2", "1")
    same = reports.performance(ledger.engine, account_id, day - timedelta(days=1), day + timedelta(days=1))
    assert f"{same.time_weighted_return:f}" == body["time_weighted_return"]
    for d in body["days"]:  # the daily closing is the balance the API gives as of that day's end
        assert get(client, keys, f"/api/v1/accounts/{account_id}/balance?as_of={d['date']}")["balance"] \
            == d["closing_balance"]


def test_alerts_list_and_acknowledge(client, keys, engine: sa.Engine) -> None:
    key = f"test:{uuid.uuid4().hex}"
    with engine.begin() as c:
        alert_id = alerts.raise_alert(c, kind="reconciliation_break", dedup_key=key, message="=1+1 looks off",
                                      account_id="acc-x", event_key=key)
    listed = get(client, keys, "/api/v1/alerts?status=open&limit=1000")
    assert alert_id in [a["id"] for a in listed["items"]]
    rows = get(client, keys, "/api/v1/alerts?status=open&limit=1000", as_csv=True)
    assert next(r for r in rows if r["id"] == str(alert_id))["message"] == "'=1+1 looks off"  # no formula
    url = f"/api/v1/alerts/{alert_id}/ack"
    assert client.post(url, headers=auth(keys["finance"])).status_code == 403
    acked = client.post(url, headers=auth(keys["operator"]))
    assert acked.status_code == 200 and acked.json()["status"] == "acknowledged"
    by = acked.json()["acknowledged_by"]
    assert by.startswith("apikey:") and by.endswith(":operator")
    again = client.post(url, headers=auth(keys["admin"]))
    assert again.json()["acknowledged_by"] == acked.json()["acknowledged_by"]  # the first one is kept
    assert alert_id not in [a["id"] for a in get(client, keys, "/api/v1/alerts?status=open&limit=1000")["items"]]
    assert client.post("/api/v1/alerts/999999999/ack", headers=auth(keys["operator"])).status_code == 404
    assert client.get("/api/v1/alerts?status=bogus", headers=auth(keys["finance"])).status_code == 422


def test_the_api_declares_no_deprecated_parameters() -> None:
    """Litestar's Parameter(query=…)/Parameter(header=…) warn at import; the app imports without one."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", "import api.app"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
