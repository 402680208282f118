"""Withdrawal holds through the jobs and the command line: the expire_holds job (a real dramatiq worker) voids a hold
past its expiry, as `job:expire_holds`; `invledger holds list|post|void|expire` in a process of its own."""

from __future__ import annotations

import json
import time
from datetime import timedelta

from jobs import actors
from ledger import holds
from ledger.verify import verify
from tests.jobs.conftest import Db, Jobs, cli, open_account

EXPIRY_WAIT_S = 10.0


def _wait_until_due(db: Db, hold: holds.Hold) -> None:
    """Poll the database's clock (bounded) until the hold's expiry has passed."""
    deadline = time.monotonic() + EXPIRY_WAIT_S
    while not db.scalar("SELECT clock_timestamp() > :at", at=hold.expires_at):
        assert time.monotonic() < deadline, "the hold's expiry never came"
        time.sleep(0.05)


def test_the_job_expires_a_hold_past_its_time(db: Db, jobs: Jobs) -> None:
    account_id = open_account(db.ledger)
    short = holds.place_hold(db.ledger, account_id, "100.00", idempotency_key=f"{account_id}:short",
                             expires_in=timedelta(seconds=1))
    long = holds.place_hold(db.ledger, account_id, "50.00", idempotency_key=f"{account_id}:long")
    _wait_until_due(db, short)
    actors.expire_holds.send()
    jobs.drain()
    expired = holds.read(db.ledger, lambda tx: holds.get(tx, short.hold_id))
    assert expired.status == "expired" and expired.resolved_by == "job:expire_holds"
    assert holds.read(db.ledger, lambda tx: holds.get(tx, long.hold_id)).status == "open"
    balances = holds.account_balances(db.ledger, [account_id])[account_id]
    assert balances.held.minor == 5000 and balances.available.minor == balances.balance.minor - 5000
    assert verify(db.engine).ok


def test_the_holds_command(db: Db) -> None:
    account_id = open_account(db.ledger)
    first = holds.place_hold(db.ledger, account_id, "10.00", idempotency_key=f"{account_id}:1", reference="wire 1")
    second = holds.place_hold(db.ledger, account_id, "20.00", idempotency_key=f"{account_id}:2")
    third = holds.place_hold(db.ledger, account_id, "5.00", idempotency_key=f"{account_id}:3",
                             expires_in=timedelta(seconds=1))

    listed = cli(db, None, "holds", "list", "--account", account_id, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["hold_id"], r["amount"], r["status"]) for r in rows] == [
        (first.hold_id, "10.00", "open"), (second.hold_id, "20.00", "open"), (third.hold_id, "5.00", "open")]

    posted = cli(db, None, "holds", "post", "--id", str(first.hold_id))
    assert posted.returncode == 0 and f"hold {first.hold_id} posted: entry" in posted.stdout, posted.stderr
    voided = cli(db, None, "holds", "void", "--id", str(second.hold_id), "--reason", "investor cancelled")
    assert voided.returncode == 0 and f"hold {second.hold_id} voided" in voided.stdout
    refused = cli(db, None, "holds", "void", "--id", str(first.hold_id))
    assert refused.returncode != 0 and "posted" in refused.stderr
    _wait_until_due(db, third)
    assert "1 holds expired" in cli(db, None, "holds", "expire").stdout

    statuses = json.loads(cli(db, None, "holds", "list", "--account", account_id, "--format", "json").stdout)
    assert [(r["status"], r["resolved_by"].split(":")[0]) for r in statuses] == [
        ("posted", "cli"), ("voided", "cli"), ("expired", "cli")]
    still_open = cli(db, None, "holds", "list", "--status", "open", "--account", account_id, "--format", "json")
    assert (still_open.returncode, still_open.stdout.strip()) == (0, "[]"), still_open.stderr  # "" was a crash
    assert verify(db.engine).ok
