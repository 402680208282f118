"""The core's basic promises, one by one, against the real database."""

from ledger import Ledger


def test_open_deposit_withdraw(ledger: Ledger, open_account) -> None:
    account_id = open_account("100.00")
    posted = ledger.deposit(account_id, "25.50", idempotency_key=f"{account_id}:d1")
    assert str(posted.balances_after[f"liabilities:investors:{account_id}"]) == "125.50"
    assert str(ledger.balance(account_id)) == "125.50"
