"""Backup and point-in-time restore of a book of N postings (issue 18): how long a base backup takes, and a restore
split into its phases — check (pg_verifybackup), copy, replay (the WAL archive up to T), verify (`ledger.verify` on
the restored books, every check and chain, as `invledger restore` runs it).

A server of its own (an embedded PostgreSQL that archives its WAL, whatever DATABASE_URL says): half the postings
go in before the base backup and half after it, through the posting triggers (chains and all, 250 entries per
transaction), so the replay has half the book's WAL to apply."""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from bench import history
from bench.report import Result, progress
from ledger import verify
from ledger.db import create_engine
from service import backup, database

ENTRIES_PER_ACCOUNT = 500  # two postings each; verify's as-of recomputation is quadratic in an account's postings


def _wal_bytes(engine: sa.Engine, since: str) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.text("SELECT pg_current_wal_lsn() - CAST(:lsn AS pg_lsn)"), {"lsn": since}).scalar())


def _archive_all(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        switched = c.execute(sa.text("SELECT pg_walfile_name(pg_switch_wal())")).scalar_one()
        deadline = time.monotonic() + 600
        while (c.execute(sa.text("SELECT last_archived_wal FROM pg_stat_archiver")).scalar() or "")[:24] < switched:
            if time.monotonic() > deadline:
                raise RuntimeError(f"WAL {switched} not archived within 600 s")
            time.sleep(0.1)


def measure(postings: int) -> list[Result]:
    root = Path(tempfile.mkdtemp(prefix="invledger-bench-restore-"))
    data_dir, backup_dir, restored = root / "ledger", root / "backups", root / "restored"
    accounts = max(2, postings // (2 * ENTRIES_PER_ACCOUNT))
    half = accounts // 2
    try:
        url = database.embedded_url(data_dir, archive_dir=backup.archive_dir(backup_dir))
        database.migrate(url)
        engine = create_engine(url, pool_size=2, statement_timeout_ms=0)
        try:
            ids = [f"bench-restore-{i:05d}" for i in range(accounts)]
            custody, investors = history.open_bulk(engine, ids)
            progress(f"restore: {half} accounts x {ENTRIES_PER_ACCOUNT} entries before the base backup")
            before_s = history.fill(engine, ids[:half], custody[:half], investors[:half], ENTRIES_PER_ACCOUNT,
                                    bulk=False, label="before the backup")
            taken = backup.take(url, backup_dir, progress=progress)
            progress(f"restore: base backup {taken.bytes / 2**20:.0f} MiB in {taken.seconds:.1f}s; "
                     f"{accounts - half} accounts after it")
            after_s = history.fill(engine, ids[half:], custody[half:], investors[half:], ENTRIES_PER_ACCOUNT,
                                   bulk=False, label="after the backup")
            wal_after = _wal_bytes(engine, taken.end_lsn)
            with engine.connect() as c:
                target: datetime = c.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
                total = c.execute(sa.text("SELECT count(*) FROM posting")).scalar_one()
                # Recovery to T stops at the first commit after T: an archive with none after T does not show that
                # it reaches T, and PostgreSQL refuses to end there. In service the next entry is that commit.
                c.execute(sa.text("CREATE TABLE bench_after_target (x int)"))
                c.commit()
            _archive_all(engine)
        finally:
            engine.dispose()
            database.stop_embedded(data_dir)
        done = backup.restore(backup_dir, target, restored, progress=progress)
        began = time.perf_counter()
        restored_url = database.embedded_url(restored)
        engine = create_engine(restored_url, pool_size=2, statement_timeout_ms=0)
        try:
            report = verify.verify(engine)
            with engine.connect() as c:
                restored_postings = c.execute(sa.text("SELECT count(*) FROM posting")).scalar_one()
        finally:
            engine.dispose()
            database.stop_embedded(restored)
        verify_s = time.perf_counter() - began
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if restored_postings != total or not report.ok:
        raise RuntimeError(f"restore: {restored_postings} postings restored of {total}; verify ok={report.ok} "
                           f"{[f.detail for f in report.findings[:3]]}")
    restore_s = done.check_s + done.copy_s + done.replay_s + verify_s
    size = f"n{total}"
    base = {"postings": total, "postings_before_backup": 2 * half * ENTRIES_PER_ACCOUNT,
            "postings_replayed": total - 2 * half * ENTRIES_PER_ACCOUNT, "accounts": accounts,
            "backup_mib": round(taken.bytes / 2**20, 1), "wal_replayed_mib": round(wal_after / 2**20, 1),
            "wal_files_restored": done.wal_files_restored,
            "posting_s": {"before_backup": round(before_s, 1), "after_backup": round(after_s, 1)}}
    progress(f"restore: backup {taken.seconds:.1f}s; restore {restore_s:.1f}s (check {done.check_s:.1f}, copy "
             f"{done.copy_s:.1f}, replay {done.replay_s:.1f}, verify {verify_s:.1f})")
    return [
        Result(name=f"restore.backup_s.{size}", value=round(taken.seconds, 2), unit="s",
               params={**base, "pg_verifybackup_s": taken.verify_seconds,
                       "what": "pg_basebackup -X stream -c fast of the book before the second half"}),
        Result(name=f"restore.total_s.{size}", value=round(restore_s, 2), unit="s",
               params={**base, "what": "invledger restore: check + copy + replay + verify"}),
        Result(name=f"restore.check_s.{size}", value=done.check_s, unit="s",
               params={"what": "pg_verifybackup of the stored base backup"}),
        Result(name=f"restore.copy_s.{size}", value=done.copy_s, unit="s",
               params={"what": "the base backup copied into the new data directory"}),
        Result(name=f"restore.replay_s.{size}", value=done.replay_s, unit="s",
               params={"wal_replayed_mib": base["wal_replayed_mib"],
                       "what": "PostgreSQL replays the archive to T, promotes, checkpoints, stops"}),
        Result(name=f"restore.verify_s.{size}", value=round(verify_s, 2), unit="s",
               params={"findings": len(report.findings),
                       "what": "ledger.verify on the restored books: every check and hash chain"}),
    ]
