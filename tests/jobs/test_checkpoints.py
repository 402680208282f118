"""The month-end balance checkpoints are made by the daily job and by `invledger checkpoint`, each month
end once, in order, from the earliest posting's month to the last month end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobs import actors
from ledger import Money, checkpoints, rules
from ledger.verify import verify
from tests.jobs.conftest import Db, Jobs, cli, open_account


def test_the_cli_and_the_daily_job_make_each_month_end_once(db: Db, jobs: Jobs) -> None:
    account_id = open_account(db.ledger)
    now = datetime.now(UTC)
    first = (now - timedelta(days=100)).replace(day=10, hour=12)  # the late trade below is in its month too
    db.ledger.post(rules.gain_or_loss("trade", account_id, Money(minor=1234, currency="USD"),
                                      idempotency_key=f"{account_id}:old", effective_at=first))
    expected = []
    end = checkpoints.month_end(first.date())
    while end < now:
        expected.append(end)
        end = checkpoints.month_end((end + timedelta(days=1)).date())
    assert len(expected) >= 3

    made = cli(db, None, "checkpoint")
    assert made.returncode == 0, made.stderr
    assert f"{len(expected)} checkpoint(s) made; latest: {expected[-1].isoformat()}" in made.stdout
    assert f"{len(expected)} month-end checkpoint(s) due" in made.stderr
    assert [r.at for r in db.rows("SELECT at FROM ledger_checkpoint ORDER BY at")] == expected

    # A back-dated trade into a checkpointed month, then the job: nothing more to make, every checkpoint exact.
    db.ledger.post(rules.gain_or_loss("trade", account_id, Money(minor=-34, currency="USD"),
                                      idempotency_key=f"{account_id}:late", effective_at=first + timedelta(days=1)))
    actors.checkpoint_balances.send()
    jobs.drain()
    assert db.scalar("SELECT count(*) FROM ledger_checkpoint") == len(expected)
    assert db.scalar("""SELECT b.balance_minor FROM ledger_checkpoint_balance b JOIN ledger_account a
                          ON a.id = b.ledger_account_id WHERE a.name = :n AND b.at = :at""",
                     n=f"liabilities:investors:{account_id}", at=expected[0]) == -1200
    assert verify(db.engine).ok
    again = cli(db, None, "checkpoint")
    assert again.returncode == 0 and "0 checkpoint(s) made" in again.stdout
    assert "usage: invledger checkpoint" in cli(db, None, "checkpoint", "--help").stdout
