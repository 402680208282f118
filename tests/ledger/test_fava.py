"""Fava opens the Beancount export: its own loader finds no error and its balances equal the ledger's, account by
account; its web app serves the balance sheet of the file.

Fava (PyPI `fava`) is what finance teams use to browse Beancount books; it is a test-only dependency (pyproject's
`test` extra) and never part of the serving install (.ci/run checks).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from fava.application import create_app
from fava.core import FavaLedger

from ledger import Ledger, Money, beancount, rules
from ledger.distribution import distribute_account
from tests.readside.support import whole_trial_balance


def _fava_balances(path: Path) -> tuple[FavaLedger, dict[str, dict[str, Decimal]]]:
    """Each account's balance per currency as Fava computes it (its account tree of the whole file)."""
    fava = FavaLedger(str(path))
    tree = fava.get_filtered().root_tree
    balances = {name: {currency: number for (currency, _cost), number in node.balance.items()}
                for name, node in tree.items() if name}
    return fava, balances


def test_fava_loads_the_export_and_every_balance_equals_the_ledgers(ledger: Ledger, open_account,
                                                                     tmp_path: Path) -> None:
    account_id = open_account("1000.00")
    other = open_account("250.00", fee_rate="0.10")
    month_ago = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=20)
    ledger.post(rules.deposit(account_id, Money.from_decimal("250.50", "USD"), idempotency_key=f"{account_id}:d",
                              effective_at=month_ago, memo='a "quoted" memo \\ and a newline\nhere'))
    ledger.post(rules.gain_or_loss("trade", account_id, Money.from_decimal("120.25", "USD"),
                                   idempotency_key=f"{account_id}:t", effective_at=month_ago + timedelta(days=1)))
    ledger.post(rules.gain_or_loss("trade", other, Money.from_decimal("-10.25", "USD"),
                                   idempotency_key=f"{other}:t", effective_at=None))
    withdrawal = ledger.withdraw(other, "5.00", idempotency_key=f"{other}:w").entry_id
    ledger.reverse(withdrawal, reason="sent twice")
    # A performance fee through the real distribution (fee entry, platform cash, income).
    month = date(month_ago.year, month_ago.month, 1)
    ledger.transact(lambda tx: distribute_account(tx, account_id, month, require_snapshot=False))

    path = tmp_path / "books.beancount"
    with path.open("w", encoding="utf-8") as out:
        beancount.export(ledger, out)

    fava, balances = _fava_balances(path)
    assert list(fava.errors) == []
    rows = whole_trial_balance(ledger.engine).rows
    names = beancount.account_names([r.account for r in rows])
    ours = {names[r.account]: (r.debit - r.credit).to_decimal() for r in rows}
    assert len(ours) == len(names) >= 7
    # Every ledger account (the platform-wide ones — fees, cash — included, in every currency the books hold) as
    # Fava sums it, in the account's currency alone; zero where Fava has none.
    assert all(set(balances.get(names[r.account], {})) <= {r.currency} for r in rows)
    theirs = {names[r.account]: balances.get(names[r.account], {}).get(r.currency, Decimal(0)) for r in rows}
    assert theirs == ours
    assert theirs[names[f"liabilities:investors:{account_id}"]] == -ledger.balance(account_id).to_decimal()
    assert theirs[names["income:performance-fees:USD"]] < 0  # the fee reached Fava's income
    assert set(balances) - set(ours) <= {n.rsplit(":", 1)[0] for n in ours} | {"Assets", "Liabilities", "Income"}


def test_favas_web_app_serves_the_export(ledger: Ledger, open_account, tmp_path: Path) -> None:
    account_id = open_account("42.00")
    path = tmp_path / "books.beancount"
    with path.open("w", encoding="utf-8") as out:
        beancount.export(ledger, out)
    app = create_app([path], load=True, read_only=True)
    client = app.test_client()
    slug = app.config["LEDGERS"].first_slug()
    answer = client.get(f"/{slug}/balance_sheet/")
    assert answer.status_code == 200
    errors = client.get(f"/{slug}/api/errors")
    assert errors.status_code == 200 and errors.get_json()["data"] == []
    account = beancount.account_names([f"liabilities:investors:{account_id}"])[f"liabilities:investors:{account_id}"]
    page = client.get(f"/{slug}/account/{account}/")
    assert page.status_code == 200
