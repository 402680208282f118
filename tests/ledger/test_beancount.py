"""Beancount export: bean-check accepts it, and Beancount's own sums equal the ledger's balances."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from beancount import loader  # a test dependency (pyproject `test` extra): bean-check comes with it
from beancount.core import data

from ledger import Ledger, Money, beancount, rules
from tests.readside.support import whole_trial_balance

BEAN_CHECK = shutil.which("bean-check", path=str(Path(sys.executable).parent)) or shutil.which("bean-check")
ACCOUNT_NAME = re.compile(r"^(Assets|Liabilities|Equity|Income|Expenses)(:[A-Z0-9][A-Za-z0-9-]*)+$")


def export(ledger: Ledger, path: Path, as_of: datetime | None = None) -> dict[str, int]:
    with path.open("w", encoding="utf-8") as out:
        return beancount.export(ledger, out, as_of)


def bean_check(path: Path) -> None:
    assert BEAN_CHECK, "bean-check is not installed"
    result = subprocess.run([BEAN_CHECK, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def beancount_sums(path: Path) -> dict[str, Decimal]:
    """Each account's sum of postings, computed by Beancount's own parser from the file."""
    entries, errors, _ = loader.load_file(str(path))
    assert errors == []
    sums: dict[str, Decimal] = {}
    for entry in entries:
        if isinstance(entry, data.Transaction):
            for posting in entry.postings:
                sums[posting.account] = sums.get(posting.account, Decimal(0)) + posting.units.number
    return sums


def ledger_balances(ledger: Ledger, names: dict[str, str], as_of: datetime | None) -> dict[str, Decimal]:
    tb = whole_trial_balance(ledger.engine, as_of)
    return {names[r.account]: (r.debit - r.credit).to_decimal() for r in tb.rows if r.account in names}


def assert_same(sums: dict[str, Decimal], balances: dict[str, Decimal]) -> None:
    """Every ledger account's balance equals Beancount's sum of its postings (zero where it has none)."""
    assert set(sums) <= set(balances)
    assert {name: sums.get(name, Decimal(0)) for name in balances} == balances


def test_account_names_are_valid_and_one_to_one() -> None:
    names = ["assets:custody:acc-1", "assets:custody:Acc-1", "assets:custody:acc_1", "assets:custody:a.b_c",
             "liabilities:investors:9lives", "income:performance-fees:USD", "assets:platform-cash:USD",
             "liabilities:suspense:USD", "assets:custody:zeta"]
    mapped = beancount.account_names(names)
    assert mapped["assets:custody:zeta"] == "Assets:Custody:Zeta"
    assert mapped["income:performance-fees:USD"] == "Income:Performance-Fees:USD"
    assert mapped["liabilities:investors:9lives"] == "Liabilities:Investors:9lives"
    assert len(set(mapped.values())) == len(names)  # one-to-one, even where the readable form collides
    assert mapped["assets:custody:acc-1"].startswith("Assets:Custody:Acc-1-H")
    assert all(ACCOUNT_NAME.match(n) for n in mapped.values())
    assert beancount.account_names(list(reversed(names))) == mapped  # deterministic


def test_export_passes_bean_check_and_balances_equal_the_ledger(ledger: Ledger, open_account, tmp_path: Path) -> None:
    account_id = open_account("1000.00")
    odd = open_account("5.00")
    past = datetime.now(UTC) - timedelta(days=3)
    ledger.post(rules.deposit(account_id, Money.from_decimal("250.50", "USD"), idempotency_key=f"{account_id}:d",
                              effective_at=past, memo='a "quoted" memo \\ with a backslash\nand a newline'))
    ledger.post(rules.gain_or_loss("trade", account_id, Money.from_decimal("-10.25", "USD"),
                                   idempotency_key=f"{account_id}:t", effective_at=None))
    ledger.post(rules.performance_fee(account_id, Money.from_decimal("3.10", "USD"),
                                      idempotency_key=f"{account_id}:f", effective_at=None))
    entry = ledger.deposit(odd, "1.00", idempotency_key=f"{odd}:d").entry_id
    ledger.reverse(entry, reason="typo")

    path = tmp_path / "ledger.beancount"
    counts = export(ledger, path)
    assert counts["entries"] >= 6 and counts["postings"] >= 2 * counts["entries"]
    bean_check(path)
    text = path.read_text()
    names = beancount.account_names([r.account for r in whole_trial_balance(ledger.engine).rows])
    assert f"open {names[f'liabilities:investors:{account_id}']} USD" in text
    assert_same(beancount_sums(path), ledger_balances(ledger, names, None))
    assert str(ledger.balance(account_id)) == "1237.15"


def test_export_as_of_a_past_time(ledger: Ledger, open_account, tmp_path: Path) -> None:
    account_id = open_account(None)
    long_ago = datetime.now(UTC) - timedelta(days=30)
    ledger.post(rules.deposit(account_id, Money.from_decimal("40.00", "USD"), idempotency_key=f"{account_id}:old",
                              effective_at=long_ago))
    ledger.post(rules.deposit(account_id, Money.from_decimal("2.00", "USD"), idempotency_key=f"{account_id}:new",
                              effective_at=None))
    cut = long_ago + timedelta(hours=1)
    path = tmp_path / "as-of.beancount"
    export(ledger, path, cut)
    bean_check(path)
    names = beancount.account_names([r.account for r in whole_trial_balance(ledger.engine, cut).rows])
    sums = beancount_sums(path)
    assert sums[names[f"liabilities:investors:{account_id}"]] == Decimal("-40.00")
    assert_same(sums, ledger_balances(ledger, names, cut))
    text = path.read_text()  # other tests' accounts are in the file too: look at this account's lines only
    investor = re.escape(names[f"liabilities:investors:{account_id}"])
    assert f"{account_id}:new" not in text
    assert not re.search(rf"\n  {investor}\s+-2\.00 USD", text)


def test_a_wrong_balance_fails_bean_check(ledger: Ledger, open_account, tmp_path: Path) -> None:
    """The assertions are real: tamper with one posting and bean-check refuses the file."""
    open_account("77.00")
    out = io.StringIO()
    beancount.export(ledger, out)
    tampered = re.sub(r"(\n  Assets:Custody:\S+  )77\.00 USD", r"\g<1>77.01 USD", out.getvalue(), count=1)
    tampered = re.sub(r"(\n  Liabilities:Investors:\S+  )-77\.00 USD", r"\g<1>-77.01 USD", tampered, count=1)
    assert tampered != out.getvalue()
    path = tmp_path / "tampered.beancount"
    path.write_text(tampered)
    result = subprocess.run([BEAN_CHECK, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Balance failed" in (result.stdout + result.stderr)
