"""The statement and positions pages in a real headless Chromium, and the statement's PDF page as a picture.

Signs in through the form, reads the figures off each page and compares them with the API's; renders the issued
PDF's first page to PNG with poppler's pdftoppm. With `INVLEDGER_DOCS_IMAGES=DIR` (`make docs-images`) the pictures
are also written there: docs/finance.md shows them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from documents import statements as issued
from ledger import AccountSpec, Ledger, Money, acting_as, rules
from ledger.distribution import distribute_account
from ledger.statements import month_bounds, month_key
from readside import statements as reads
from tests.api.test_pages import Browser, api, browser, server  # noqa: F401 — the fixtures
from tests.api.test_statements_api import last_month
from tests.api.test_webhooks import performance, send, trade

PDFTOPPM = shutil.which("pdftoppm")


def investor_month(ledger: Ledger) -> tuple[str, str]:
    """An investor's last month as the engine would have made it: a deposit, a trade most days, a true-up at each
    day's end, a withdrawal; distributed and issued."""
    account_id = f"inv-{uuid.uuid4().hex[:6]}"
    month = last_month()
    ledger.open_account(AccountSpec(account_id=account_id, product_id="growth-fund", agent_type="swing",
                                    currency="USD", fee_rate=Decimal("0.20")))
    start, end = month_bounds(month)
    rng = random.Random(20)
    drafts = [rules.deposit(account_id, Money.from_decimal("25000.00", "USD"), idempotency_key=f"{account_id}:d",
                            effective_at=start + timedelta(hours=9), memo="wire from the investor")]
    for day in range(end.day):
        noon = start + timedelta(days=day, hours=14)
        if day % 4 != 3:
            pnl = Money(minor=rng.randint(-14_000, 30_000) or 1, currency="USD")
            drafts.append(rules.gain_or_loss("trade", account_id, pnl, idempotency_key=f"{account_id}:t{day}",
                                             effective_at=noon, memo=rng.choice(
                                                 ["buy EURUSD closed", "sell BTCUSD closed", "buy XAUUSD closed"])))
        drafts.append(rules.gain_or_loss("true_up", account_id, Money(minor=rng.randint(-4_000, 5_000) or 1,
                                                                      currency="USD"),
                                         idempotency_key=f"{account_id}:u{day}",
                                         effective_at=start + timedelta(days=day, hours=23, minutes=59, seconds=59),
                                         memo="true-up to the engine's closing balance"))
        if day == 19:
            drafts.append(rules.withdrawal(account_id, Money.from_decimal("1500.00", "USD"),
                                           idempotency_key=f"{account_id}:w", effective_at=noon + timedelta(hours=1),
                                           memo="withdrawal to the investor's bank"))
    ledger.post_many(drafts)
    ledger.transact(lambda tx: distribute_account(tx, account_id, month, require_snapshot=False))
    with acting_as("job:issue_statements"):
        outcome = issued.issue(ledger, account_id, month)
    assert not isinstance(outcome, issued.NotIssued)
    return account_id, month_key(month)


def test_statement_and_positions_in_a_real_browser(client, keys, ledger: Ledger, server: str,  # noqa: F811
                                                   browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    account_id, month = investor_month(ledger)
    # Open positions from the engine's trades, and yesterday's snapshot for the true-up split.
    now = datetime.now(UTC)
    day = (now - timedelta(days=1)).date()
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    for data in (trade(account_id, status="open", at=noon - timedelta(hours=6)),
                 trade(account_id, status="open", at=noon - timedelta(hours=2)) | {"quantity": 2500,
                                                                                   "entry_price": 1.0912},
                 trade(account_id, status="open", at=noon - timedelta(hours=5)) | {
                     "symbol": "XAUUSD", "side": "sell", "quantity": 12, "entry_price": 2391.4},
                 trade(account_id, status="open", at=noon - timedelta(hours=1)) | {
                     "symbol": "BTCUSD", "quantity": 0.35, "entry_price": 96420.5},
                 trade(account_id, pnl="84.20", at=noon)):
        assert send(client, "trade.executed", data).status_code == 200
    balance = str(ledger.balance(account_id, as_of=noon - timedelta(hours=12)))
    assert send(client, "daily.performance", performance(account_id, day, str(Decimal(balance) + Decimal("131.75")),
                                                         opening=balance)).status_code == 200
    shots = tmp_path / "shots"
    shots.mkdir()

    browser.open(f"{server}/accounts/{account_id}/positions", "/login")
    browser.js(f"document.querySelector('#api_key').value = {json.dumps(keys['finance'])}")
    browser.click("#sign-in")
    browser.wait_loaded(f"/accounts/{account_id}/positions")
    positions = api(server, keys["finance"], f"/api/v1/accounts/{account_id}/positions")
    eurusd = next(p for p in positions["positions"] if p["symbol"] == "EURUSD")
    assert browser.text("[data-testid=positions] tr[data-symbol=EURUSD] [data-field=quantity]") == eurusd["quantity"]
    assert browser.text("[data-testid=positions] tr[data-symbol=EURUSD] [data-field=average_entry_price]") == \
        eurusd["average_entry_price"] == "1.08917143"  # (1000 × 1.0841 + 2500 × 1.0912) / 3500
    split = next(d for d in positions["true_ups"] if d["date"] == day.isoformat())
    row = f"[data-testid=true-ups] tr[data-date='{day.isoformat()}']"
    assert (browser.text(f"{row} [data-field=realised]"), browser.text(f"{row} [data-field=unrealised]")) == (
        split["realised"], split["unrealised"]) == ("84.20", "47.55")
    browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=760, deviceScaleFactor=1, mobile=False)
    browser.screenshot(shots / "positions-page.png")

    browser.open(f"{server}/accounts/{account_id}/statements/{month}", f"/accounts/{account_id}/statements")
    body = api(server, keys["finance"], f"/api/v1/accounts/{account_id}/statements/{month}")
    for field in ("opening_balance", "deposits", "withdrawals", "realised_trading_result", "mark_to_market_true_ups",
                  "performance_fee", "closing_balance", "high_water_mark_before", "high_water_mark_after",
                  "time_weighted_return_month", "time_weighted_return_year_to_date", "max_drawdown_month"):
        assert browser.text(f"[data-testid=statement-figures] [data-field={field}]") == body["figures"][field], field
    assert browser.text("[data-testid=version]") == "version 1"
    browser.screenshot(shots / "statement-page.png")

    stored = reads.statement(ledger, account_id, last_month())
    assert stored is not None and PDFTOPPM, "pdftoppm is not installed (make install: poppler-utils)"
    (tmp_path / "statement.pdf").write_bytes(stored.pdf)
    subprocess.run([PDFTOPPM, "-r", "110", "-f", "1", "-l", "1", "-png", "-singlefile", str(tmp_path / "statement.pdf"),
                    str(shots / "statement-pdf")], check=True, timeout=60)
    assert (shots / "statement-pdf.png").stat().st_size > 20_000  # a rendered page, not an empty one
    target = os.environ.get("INVLEDGER_DOCS_IMAGES")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for name in ("positions-page.png", "statement-pdf.png"):
            shutil.copyfile(shots / name, Path(target) / name)
