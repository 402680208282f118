"""Backups and point-in-time restore, proven (issue 18, part 2): books with history made through the API and the
ledger on an embedded server that archives its WAL; `invledger backup take`; more entries, webhooks, a reversal and
an anchor; a time T; more entries and another anchor; `invledger restore --to T --into NEW`. The restored books verify
clean (chains and the anchors made up to T) and equal, table by table and row by row, the books as they stood at T:
every entry committed before T is there, none after. The anchor made after T names what the restore left out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from api.app import create_app
from api.auth import create_key
from integration import anchors
from ledger.chain import public_key_bytes
from service import config, database, runtime
from tests.api.conftest import WEBHOOK_SECRET, auth
from tests.api.test_webhooks import send, trade
from tests.reliability.conftest import report_figures

pytestmark = [pytest.mark.restore, pytest.mark.slow]

ARCHIVE_WAIT_S = 60
# State that is not the books: when a key was last used (written by the requests after T as well) and sessions.
NOT_BOOKS = {"api_key": "last_used_at"}


def _cli(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([str(Path(sys.executable).parent / "invledger"), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == expect, (args, done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    return done


def _books(url: str) -> dict[str, list[tuple]]:
    """Every table of the ledger's schema, every row in primary-key order, in one snapshot."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as c:
            c.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            tables = c.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                       "ORDER BY tablename")).scalars().all()
            found = {}
            for table in tables:
                columns = [r for r in c.execute(sa.text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                    "AND table_name = :t ORDER BY ordinal_position"), {"t": table}).scalars()
                    if r != NOT_BOOKS.get(table)]
                listed = ", ".join(f'"{name}"' for name in columns)
                found[table] = [tuple(row) for row in c.execute(sa.text(
                    f'SELECT {listed} FROM "{table}" ORDER BY {listed}'))]  # noqa: S608 — names from the catalog
            c.rollback()
        return found
    finally:
        engine.dispose()


def _server_now(engine: sa.Engine) -> datetime:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT clock_timestamp()")).scalar_one()


def _archive_everything(owner_url: str) -> str:
    """Close the current WAL file and wait (bounded) until the archiver has it: a restore reads only the archive."""
    engine = sa.create_engine(owner_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            switched = c.execute(sa.text("SELECT pg_walfile_name(pg_switch_wal())")).scalar_one()
            deadline = time.monotonic() + ARCHIVE_WAIT_S
            while True:
                last = c.execute(sa.text("SELECT last_archived_wal FROM pg_stat_archiver")).scalar()
                if last and last[:24] >= switched:
                    return switched
                assert time.monotonic() < deadline, f"WAL {switched} not archived within {ARCHIVE_WAIT_S}s"
                time.sleep(0.05)
    finally:
        engine.dispose()


def test_restore_to_a_time_gives_exactly_the_books_then(tmp_path: Path) -> None:
    data_dir, restored_dir = tmp_path / "ledger", tmp_path / "restored"
    environ = {"LEDGER_DATA_DIR": str(data_dir), "ML_ENGINE_WEBHOOK_SECRET": WEBHOOK_SECRET,
               "RATE_LIMIT_PER_KEY": "100000/second", "RATE_LIMIT_PER_ADDRESS": "100000/second"}
    env = {**{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MIGRATION_DATABASE_URL")},
           **environ}
    settings = config.load(environ)
    rt = runtime.start(settings)
    key = anchors.audit_key(None, data_dir, create=True)
    public_key = public_key_bytes(key).hex()
    owner = rt.owner_engine()
    admin = create_key(owner, "admin", "restore test")
    app = create_app(rt.ledger, settings)
    figures: dict[str, object] = {}
    try:
        with TestClient(app=app, raise_server_exceptions=False) as client:
            tag = uuid.uuid4().hex[:6]

            def open_account(name: str) -> str:
                account_id = f"r-{tag}-{name}"
                answer = client.post("/api/v1/accounts", headers=auth(admin), json={
                    "account_id": account_id, "product_id": "p", "agent_type": "swing", "currency": "USD",
                    "initial_capital": "1000.00"})
                assert answer.status_code == 201, answer.text
                return account_id

            def money(account_id: str, kind: str, amount: str, idem: str) -> None:
                answer = client.post(f"/api/v1/accounts/{account_id}/{kind}", json={"amount": amount},
                                     headers={**auth(admin), "Idempotency-Key": idem})
                assert answer.status_code == 201, answer.text

            def webhooks(account_id: str, count: int, phase: str) -> None:
                for i in range(count):
                    answer = send(client, "trade.executed",
                                  trade(account_id, pnl=f"{i + 1}.25", trade_id=f"{phase}-{account_id}-{i}"))
                    assert answer.status_code in (200, 202), answer.text

            # History, then the base backup.
            accounts = [open_account(f"a{i}") for i in range(4)]
            for n, account_id in enumerate(accounts):
                for i in range(10):
                    money(account_id, "deposits", f"{10 + i}.00", f"before-backup:{account_id}:{i}")
                money(account_id, "withdrawals", "3.00", f"before-backup:{account_id}:w")
                webhooks(account_id, 5 + n, "before-backup")
            anchors.anchor(rt.engine, key, data_dir=data_dir, alert_url=None, made_by="test")
            taken = json.loads(_cli(env, "backup", "take", "--format", "json").stdout)
            figures["backup_s"] = taken["seconds"]

            # After the backup and before T: entries, webhooks, a reversal, a new account, an anchor.
            late = open_account("late")
            for account_id in [*accounts, late]:
                for i in range(5):
                    money(account_id, "deposits", f"{i + 1}.50", f"before-t:{account_id}:{i}")
                webhooks(account_id, 4, "before-t")
            reversed_ = rt.ledger.deposit(accounts[0], "77.00", idempotency_key=f"before-t:{tag}:to-reverse")
            rt.ledger.reverse(reversed_.entry_id, reason="booked twice by the operator")
            anchors.anchor(rt.engine, key, data_dir=data_dir, alert_url=None, made_by="test")
            anchors_at_t = tmp_path / "anchors-at-t.jsonl"
            anchors_at_t.write_text((data_dir / anchors.ANCHORS_FILE).read_text())

            at_t = _books(rt.owner_url)
            target = _server_now(rt.engine)
            while _server_now(rt.engine) <= target:  # the next commit's time is after T, not equal to it
                pass

            # After T: more of everything, and an anchor that covers them.
            after = open_account("after")
            for account_id in [*accounts, late, after]:
                for i in range(3):
                    money(account_id, "deposits", f"{i + 2}.75", f"after-t:{account_id}:{i}")
                webhooks(account_id, 3, "after-t")
            rt.ledger.reverse(rt.ledger.deposit(accounts[1], "5.00", idempotency_key=f"after-t:{tag}:r").entry_id,
                              reason="after T")
            anchors.anchor(rt.engine, key, data_dir=data_dir, alert_url=None, made_by="test")
            now = _books(rt.owner_url)
        _archive_everything(rt.owner_url)
    finally:
        owner.dispose()
        rt.close()
        database.stop_embedded(data_dir)  # the original books' server: the restore needs only the archive
    later_entries = len(now["journal_entry"]) - len(at_t["journal_entry"])
    assert later_entries > 0 and len(now["webhook_event"]) > len(at_t["webhook_event"])

    began = time.perf_counter()
    answer = json.loads(_cli(env, "restore", "--to", target.isoformat(), "--into", str(restored_dir),
                             "--anchors", str(anchors_at_t), "--public-key", public_key, "--format", "json").stdout)
    restore_s = time.perf_counter() - began
    verified = answer["verify"]
    assert verified["ok"] and not verified["findings"], verified
    assert verified["counts"]["anchors"] == 2  # the two made before T; the third is after it
    assert answer["restored"]["backup"] == taken["label"]

    restored_url = database.embedded_url(restored_dir)
    try:
        restored = _books(restored_url)
        with psycopg.connect(sa.make_url(restored_url).set(drivername="postgresql").render_as_string(False)) as c:
            after_keys = c.execute("SELECT count(*) FROM journal_entry WHERE idempotency_key LIKE '%after-t:%'") \
                .fetchone()[0]
    finally:
        database.stop_embedded(restored_dir)
    assert after_keys == 0
    differing = sorted(table for table in at_t if restored.get(table) != at_t[table])
    assert differing == [], {t: (len(at_t[t]), len(restored.get(t, []))) for t in differing}
    assert set(restored) == set(at_t)

    # The anchors file as it is now holds an anchor made after T: verify names it missing from the restored books.
    restored_env = {**env, "LEDGER_DATA_DIR": str(restored_dir)}
    full = _cli(restored_env, "verify", "--anchors", str(data_dir / anchors.ANCHORS_FILE), "--public-key",
                public_key, expect=1)
    assert "of the outside copy is missing from the database" in full.stdout, full.stdout
    database.stop_embedded(restored_dir)

    phases = answer["restored"]
    figures.update(entries_at_t=len(at_t["journal_entry"]), postings_at_t=len(at_t["posting"]),
                   webhooks_at_t=len(at_t["webhook_event"]), entries_after_t_left_out=later_entries,
                   tables_compared=len(at_t), check_s=phases["check_s"], copy_s=phases["copy_s"],
                   replay_s=phases["replay_s"], verify_s=answer["verify_s"], wal_files=phases["wal_files_restored"],
                   restore_command_s=round(restore_s, 2), differing_tables=0)
    report_figures(tmp_path, "restore", figures)
