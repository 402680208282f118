"""readside.views: an account's balance and what is available come from one read, so they agree."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from ledger import Ledger, UnknownAccount
from readside import views


@contextmanager
def checkouts(engine: sa.Engine) -> Iterator[list[object]]:
    """The connections taken from `engine`'s pool meanwhile (one per read)."""
    taken: list[object] = []

    def count(*_: object) -> None:
        taken.append(None)

    sa.event.listen(engine.pool, "checkout", count)
    try:
        yield taken
    finally:
        sa.event.remove(engine.pool, "checkout", count)


def test_balance_now_is_one_read(ledger: Ledger, open_account) -> None:
    account_id = open_account("250.00")
    with checkouts(ledger.engine) as taken:
        body = views.balance(ledger, account_id)
    assert (body["balance"], body["available"], body["as_of"]) == ("250.00", "250.00", None)
    assert len(taken) == 1  # balance and available read together, never apart
    with pytest.raises(UnknownAccount, match="does not exist"):
        views.balance(ledger, "no-such-account")


def test_account_is_one_read_and_the_page_adds_the_holds(ledger: Ledger, open_account) -> None:
    account_id = open_account("250.00")
    with checkouts(ledger.engine) as taken:
        account = views.account(ledger, account_id, with_holds=True)
    assert (account["balance"], account["available"], account["held"], account["open_holds"]) == \
        ("250.00", "250.00", "0.00", 0)
    assert len(taken) == 1  # the account and its holds on one connection; the page read the holds twice
    assert "held" not in views.account(ledger, account_id)  # the API's body is unchanged


def test_a_page_size_beyond_the_bounds_is_read_as_the_bound(ledger: Ledger, open_account) -> None:
    """A listing compares its page with the size it read (1 to 1000): as asked, 0 was an IndexError on an empty
    listing and a one-row page with no next cursor on a longer one (`invledger outbox list --limit 0`)."""
    open_account("1.00")
    open_account("2.00")
    first = views.journal(ledger, limit=0)
    assert len(first["items"]) == 1 and first["next_cursor"] is not None  # more entries follow
    assert views.accounts(ledger, limit=-3)["next_cursor"] is not None
    # Past their last row (alerts and runs go newest first, below the cursor; the outbox oldest first, after it):
    # an empty page, not an error.
    for listing, cursor in ((views.alerts, 1), (views.reconciliation_runs, 1), (views.outbox_events, 2**62)):
        assert listing(ledger.engine, cursor=cursor, limit=0) == {"items": [], "next_cursor": None}


def test_a_statement_page_is_one_read(ledger: Ledger, open_account) -> None:
    """The statement no longer reads the investment account first: its ledger account exists exactly when it does."""
    account_id = open_account("75.00")
    views.statement(ledger, account_id)  # the ledger account's name is cached from here on, as in a running server
    with checkouts(ledger.engine) as taken:
        body = views.statement(ledger, account_id)
    assert (body["account"], body["closing_balance"], len(taken)) == (f"liabilities:investors:{account_id}", "75.00", 1)
    with pytest.raises(UnknownAccount, match="investment account 'no-such-account' does not exist"):
        views.statement(ledger, "no-such-account")


def test_the_reconciliation_overview_reads_every_run_s_problems_at_once(ledger: Ledger) -> None:
    """The reconciliations page: each run with its lines that are not matched (by account id, at most 200), read
    for the page of runs together — it was a read per run."""
    engine = ledger.engine
    with engine.begin() as c:
        run_ids = [c.execute(sa.text("""
            INSERT INTO job_run (job, run_key, period, trigger, status, started_at, finished_at)
            VALUES ('reconcile', :k, '2026-01-01', 'cli', 'done', now(), now()) RETURNING id"""),
            {"k": f"reconcile:test-overview:{uuid.uuid4().hex}"}).scalar_one() for _ in range(3)]
        lines = {run_ids[0]: [("b-acc", "break"), ("a-acc", "unknown_account"), ("c-acc", "matched")],
                 run_ids[1]: [(f"acc-{i:03}", "break") for i in range(views.PROBLEMS_SHOWN_MAX + 5)],
                 run_ids[2]: [("z-acc", "matched")]}
        for run_id, results in lines.items():
            for account_id, result in results:
                c.execute(sa.text("""
                    INSERT INTO reconciliation_result (run_id, account_id, currency, ledger_balance_minor,
                                                       engine_balance, difference, result)
                    VALUES (:r, :a, 'USD', 100, 1.01, 0.01, :res)"""), {"r": run_id, "a": account_id, "res": result})
    with checkouts(engine) as taken:
        shown = {int(run.run_id): run for run in views.reconciliation_overview(engine, limit=3)}
    assert len(taken) == 2  # the runs, then every run's problems
    assert [line.account_id for line in shown[run_ids[0]].problems] == ["a-acc", "b-acc"]
    assert shown[run_ids[0]].problems[1] == views.ReconciliationLine(
        account_id="b-acc", ledger_balance="1.00", engine_balance="1.01", difference="0.01", ledger_status=None,
        engine_status=None, result="break")
    assert len(shown[run_ids[1]].problems) == views.PROBLEMS_SHOWN_MAX
    assert shown[run_ids[2]].problems == ()
