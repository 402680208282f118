"""Statements and positions over the API, the pages and the CLI, on the real database: the PDF the API serves, read
back with poppler's pdftotext, shows the JSON's figures; positions follow the contract's rules for trades."""

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

import pytest
import sqlalchemy as sa

from documents import statements as issued
from ledger import AccountSpec, Ledger, Money, rules
from ledger.distribution import distribute_account
from ledger.statements import month_bounds, month_key
from readside import statements as reads
from tests.api.conftest import auth
from tests.api.test_pages import login
from tests.api.test_webhooks import open_account, performance, send, trade

PDFTOTEXT = shutil.which("pdftotext")
SUMMARY = ("opening_balance", "deposits", "withdrawals", "realised_trading_result", "mark_to_market_true_ups",
           "adjustments", "performance_fee", "closing_balance", "high_water_mark_before", "high_water_mark_after",
           "time_weighted_return_month", "time_weighted_return_year_to_date", "max_drawdown_month")


def last_month() -> date:
    return (datetime.now(UTC).date().replace(day=1) - timedelta(days=1)).replace(day=1)


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    assert PDFTOTEXT, "pdftotext is not installed (make install: poppler-utils)"
    path = tmp_path / f"{uuid.uuid4().hex}.pdf"
    path.write_bytes(pdf)
    return subprocess.run([PDFTOTEXT, "-layout", str(path), "-"], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def cli_env(ledger: Ledger, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "ALERT_WEBHOOK_URL")}
    return env | {"DATABASE_URL": ledger.engine.url.render_as_string(hide_password=False),
                  "LEDGER_DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"}


def issued_account(ledger: Ledger) -> tuple[str, date]:
    """An account with last month's history, distributed and its statement issued."""
    account_id = f"stm-{uuid.uuid4().hex[:10]}"
    month = last_month()
    ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                    fee_rate=Decimal("0.25")))
    start, _ = month_bounds(month)
    history = [("deposit", "2000.00", 0), ("trade", "310.40", 3), ("true_up", "-12.05", 3), ("trade", "-45.10", 8),
               ("withdrawal", "250.00", 12)]
    for n, (kind, amount, day) in enumerate(history):
        at = start + timedelta(days=day, hours=9 + n)
        if kind in ("deposit", "withdrawal"):
            draft = getattr(rules, kind)(account_id, Money.from_decimal(amount, "USD"),
                                         idempotency_key=f"{account_id}:{n}", effective_at=at)
        else:
            draft = rules.gain_or_loss(kind, account_id, Money.from_decimal(amount, "USD"),
                                       idempotency_key=f"{account_id}:{n}", effective_at=at)
        ledger.post(draft)
    ledger.transact(lambda tx: distribute_account(tx, account_id, month, require_snapshot=False))
    stored = issued.issue(ledger, account_id, month)
    assert not isinstance(stored, issued.NotIssued)
    return account_id, month


def test_statement_as_json_and_as_pdf(client, keys, ledger: Ledger, tmp_path: Path) -> None:
    account_id, month = issued_account(ledger)
    url = f"/api/v1/accounts/{account_id}/statements/{month_key(month)}"
    answer = client.get(url, headers=auth(keys["finance"]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    f = body["figures"]
    assert body["statement"]["version"] == 1 and body["superseded_by"] is None and len(body["versions"]) == 1
    assert (f["deposits"], f["withdrawals"], f["realised_trading_result"], f["mark_to_market_true_ups"]) == (
        "2000.00", "-250.00", "265.30", "-12.05")
    # fee 25 % of (2003.25 − 1750.00) = 63.31 (half-even); closing = the ledger's balance at the month's end.
    assert (f["performance_fee"], f["closing_balance"]) == ("-63.31", "1939.94")
    assert f["closing_balance"] == str(ledger.balance(account_id, as_of=month_bounds(month)[1]))

    pdf = client.get(url, headers=auth(keys["finance"]) | {"Accept": "application/pdf"})
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-") and pdf.headers["x-statement-digest"] == body["digest"]
    text = pdf_text(pdf.content, tmp_path)
    for figure in SUMMARY:
        assert f[figure] in text, figure
    assert all(line["balance"] in text for line in f["lines"])

    # Errors: {"error", "detail"}.
    for path, status, code in ((f"/api/v1/accounts/{account_id}/statements/2000-01", 404, "not_issued"),
                               (f"/api/v1/accounts/{account_id}/statements/2026-13", 422, "invalid_entry"),
                               (f"/api/v1/accounts/nobody-{uuid.uuid4().hex[:6]}/statements/2026-01", 404, None),
                               (url + "?version=2", 404, "not_issued")):
        refused = client.get(path, headers=auth(keys["finance"]))
        assert refused.status_code == status, (path, refused.text)
        assert set(refused.json()) == {"error", "detail"} and (code is None or refused.json()["error"] == code)
    assert client.get(url).status_code == 401
    document = client.get("/schema/openapi.json").json()
    operation = document["paths"]["/api/v1/accounts/{account_id}/statements/{month}"]["get"]
    assert "application/pdf" in operation["responses"]["200"]["content"]


def test_statement_and_positions_pages(client, keys, ledger: Ledger) -> None:
    account_id, month = issued_account(ledger)
    login(client, keys["finance"])
    page = client.get(f"/accounts/{account_id}/statements/{month_key(month)}")
    assert page.status_code == 200, page.text
    body = client.get(f"/api/v1/accounts/{account_id}/statements/{month_key(month)}",
                      headers=auth(keys["finance"])).json()
    for figure in SUMMARY:
        assert f'data-field="{figure}">{body["figures"][figure]}<' in page.text, figure
    assert body["digest"][:16] in page.text
    assert 'data-testid="balance-chart"' in page.text and "<title>Balance at each day" in page.text
    pdf = client.get(f"/accounts/{account_id}/statements/{month_key(month)}/pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
    draft = client.get(f"/accounts/{account_id}/statements/{month_key(datetime.now(UTC).date())}")
    assert draft.status_code == 200 and "draft" in draft.text and "the month is not over" in draft.text
    positions = client.get(f"/accounts/{account_id}/positions")
    assert positions.status_code == 200 and "no open position" in positions.text


def test_positions_follow_the_contracts_trade_rules(client, keys, ledger: Ledger, tmp_path: Path) -> None:
    account_id = open_account(client, keys, "1000.00", ledger=ledger)
    now = datetime.now(UTC)
    day = (now - timedelta(days=2)).date()
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    opened = [trade(account_id, status="open", at=noon - timedelta(hours=3)),
              trade(account_id, status="open", at=noon - timedelta(hours=1)) | {"quantity": 3000, "entry_price": 1.09},
              trade(account_id, status="open", at=now - timedelta(hours=5)) | {
                  "symbol": "BTCUSD", "side": "sell", "quantity": 0.5, "entry_price": 65000}]
    for data in opened:
        assert send(client, "trade.executed", data).status_code == 200
    # Opened then closed: no longer a position. Closed twice: one entry, closed. Closed before its open arrived:
    # the late open changes nothing.
    later = trade(account_id, status="open", at=noon - timedelta(hours=2))
    assert send(client, "trade.executed", later).status_code == 200
    closed = trade(account_id, pnl="12.50", at=noon, trade_id=later["trade_id"])
    assert send(client, "trade.executed", closed).status_code == 200
    assert send(client, "trade.executed", closed).json()["duplicate"] is True
    early = trade(account_id, pnl="-2.50", at=noon + timedelta(hours=1))
    assert send(client, "trade.executed", early).status_code == 200
    assert send(client, "trade.executed", early | {"status": "open", "executed_at": (noon - timedelta(hours=4))
                                                   .isoformat().replace("+00:00", "Z")}).status_code == 200
    # The engine's snapshot of the day: 1000.00 → 1030.00 with 10.00 of closed trades: 20.00 is unrealised.
    assert send(client, "daily.performance", performance(account_id, day, "1030.00")).status_code == 200

    answer = client.get(f"/api/v1/accounts/{account_id}/positions", headers=auth(keys["finance"]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["open_trades"] == 3
    assert [(p["symbol"], p["side"], p["quantity"], p["average_entry_price"], p["trades"]) for p in
            body["positions"]] == [("BTCUSD", "short", "0.5", "65000.00000000", 1),
                                   ("EURUSD", "long", "4000", "1.08852500", 2)]  # (1000 × 1.0841 + 3000 × 1.09) / 4000
    assert body["positions"][1]["opened_at"] == opened[0]["executed_at"]
    split = next(d for d in body["true_ups"] if d["date"] == day.isoformat())
    assert (split["engine_result"], split["realised"], split["unrealised"]) == ("30.00", "10.00", "20.00")
    assert (split["true_up"], split["carried"]) == ("20.00", "0.00")  # the ledger opened the day where the engine did
    assert Decimal(split["true_up"]) == Decimal(split["unrealised"]) + Decimal(split["carried"])
    assert client.get(f"/api/v1/accounts/{account_id}/positions?days=0", headers=auth(keys["finance"])).status_code \
        == 422

    # The same from the CLI, as JSON (the API's body).
    env = cli_env(ledger, tmp_path)
    done = subprocess.run([sys.executable, "-m", "invledger.cli", "report", "positions", account_id, "--format",
                           "json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cli_body = json.loads(done.stdout)
    assert cli_body["positions"] == body["positions"] and cli_body["true_ups"] == body["true_ups"]
    table = subprocess.run([sys.executable, "-m", "invledger.cli", "report", "positions", account_id], env=env,
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "EURUSD" in table.stdout and "1.08852500" in table.stdout, table.stderr


@pytest.mark.parametrize("month", ["2026-1", "26-01", "2026-00"])
def test_a_month_not_yyyy_mm_is_refused(client, keys, ledger: Ledger, month: str) -> None:
    account_id, _ = issued_account(ledger)
    refused = client.get(f"/api/v1/accounts/{account_id}/statements/{month}", headers=auth(keys["finance"]))
    assert refused.status_code == 422 and refused.json()["error"] == "invalid_entry"


def test_cli_statements_issues_and_writes(ledger: Ledger, tmp_path: Path) -> None:
    account_id, month = issued_account(ledger)
    env = cli_env(ledger, tmp_path)
    done = subprocess.run([sys.executable, "-m", "invledger.cli", "statements", "--month", month_key(month),
                           "--account", account_id, "--out", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "0 issued, 0 corrected, 1 unchanged" in done.stdout and "1 written" in done.stdout
    written = tmp_path / "out" / f"statement-{account_id}-{month_key(month)}-v1.pdf"
    stored = reads.statement(ledger, account_id, month)
    assert stored is not None and written.read_bytes() == stored.pdf
    assert json.loads(written.with_suffix(".json").read_text())["digest"] == stored.digest.hex()
    future = subprocess.run([sys.executable, "-m", "invledger.cli", "statements", "--month", "2999-01"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert future.returncode == 1 and "not over" in future.stderr
    with ledger.engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM investor_statement WHERE account_id = :a"),
                         {"a": account_id}).scalar() == 1
