"""Long posting histories written with SQL (generate_series), through the ledger's own triggers.

`Ledger.post` books ~1k entries/s here, so a million-posting account is generated in the database
instead. The rows still obey every invariant: each batch inserts its journal entries and their two legs
in one statement of one transaction (legs only in the entry's own transaction), `posting_apply` stamps
seq, balance_after and late, and the deferred check proves each entry balances at commit.

Batches are small on purpose: each posting updates its account's row, and N updates of one row in one
transaction leave N row versions that later statements in that transaction walk again, so the cost of
a batch grows with its square (measured: 6.2k entries/s at 250 per transaction, 2.4k at 5k, 0.9k at 20k).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import sqlalchemy as sa

from bench.report import Result, progress
from ledger import AccountSpec, Ledger, chart

BATCH_ENTRIES = 250
HISTORY_SPAN = timedelta(days=3 * 365)
LATE_PROBABILITY = 0.05
LATE_BY_MAX = timedelta(days=3)  # beyond the gap to the previous entry, so a late one is always late
AMOUNT_MINOR_MAX = 100_000

# Entry i happens at start + i * spacing; about 5% of them are recorded late: effective one spacing plus
# up to three days earlier than the entry before them. Amounts and directions derive from the entry id.
_BATCH = sa.text("""
WITH g AS (
    SELECT i, CAST(:start AS timestamptz) + i * CAST(:spacing_us AS bigint) * interval '1 microsecond' AS base,
           i > 0 AND random() < :late_probability AS is_late
      FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i),
e AS (
    INSERT INTO journal_entry (idempotency_key, content_hash, kind, investment_account_id, effective_at, memo)
    SELECT CAST(:key_prefix AS text) || i, sha256(convert_to(CAST(:key_prefix AS text) || i, 'UTF8')),
           'trade', CAST(:account_id AS text),
           CASE WHEN is_late
                THEN base - (CAST(:spacing_us AS bigint) + 1000000 + random() * :late_by_us) * interval '1 microsecond'
                ELSE base END,
           'bench history'
      FROM g ORDER BY i
    RETURNING id)
INSERT INTO posting (ledger_account_id, entry_id, side, amount_minor, currency, seq, effective_at,
                     balance_after_minor, late)
SELECT l.account, e.id,
       CASE WHEN (e.id % 2 = 0) = (l.account = CAST(:custody AS bigint)) THEN 'D' ELSE 'C' END,
       1 + (e.id * 7919) % CAST(:amount_max AS bigint), CAST(:currency AS text), 0, now(), 0, false
  FROM e CROSS JOIN (VALUES (CAST(:custody AS bigint)), (CAST(:investors AS bigint))) AS l(account)
 ORDER BY e.id, l.account
""")


class History(msgspec.Struct, frozen=True, kw_only=True):
    """An investment account whose investor ledger account has exactly `postings` postings."""

    account_id: str
    investors_id: int
    postings: int
    late: int
    start: datetime
    end: datetime


def generate(ledger: Ledger, postings: int, *, currency: str = "USD") -> tuple[History, Result]:
    account_id = f"bench-history-{postings}"
    ledger.open_account(AccountSpec(account_id=account_id, product_id="bench", agent_type="bench",
                                    currency=currency, fee_rate=Decimal("0.20")))
    names = [chart.custody(account_id), chart.investors(account_id)]
    accounts = ledger.resolve(names)
    custody_id, investors_id = accounts[names[0]].id, accounts[names[1]].id
    start = datetime.now(UTC).replace(microsecond=0) - HISTORY_SPAN
    spacing_us = int(HISTORY_SPAN / timedelta(microseconds=1)) // postings
    params = {"start": start, "spacing_us": spacing_us, "late_probability": LATE_PROBABILITY,
              "late_by_us": LATE_BY_MAX / timedelta(microseconds=1), "key_prefix": f"bench:history:{account_id}:",
              "account_id": account_id, "custody": custody_id, "investors": investors_id,
              "amount_max": AMOUNT_MINOR_MAX, "currency": currency}
    began = time.perf_counter()
    reported = began
    for first in range(0, postings, BATCH_ENTRIES):
        last = min(postings, first + BATCH_ENTRIES) - 1
        with ledger.engine.begin() as connection:
            connection.execute(_BATCH, {**params, "first": first, "last": last})
        if time.perf_counter() - reported > 15:
            reported = time.perf_counter()
            progress(f"  history {account_id}: {last + 1}/{postings} entries "
                     f"({(last + 1) / (reported - began):.0f} entries/s)")
    elapsed_s = time.perf_counter() - began
    with ledger.engine.connect() as connection:
        row = connection.execute(sa.text("""
            SELECT count(*) AS postings, count(*) FILTER (WHERE late) AS late,
                   min(effective_at) AS start, max(effective_at) AS end
              FROM posting WHERE ledger_account_id = :id"""), {"id": investors_id}).one()
    history = History(account_id=account_id, investors_id=investors_id, postings=row.postings, late=row.late,
                      start=row.start, end=row.end)
    if history.postings != postings:
        raise RuntimeError(f"history for {account_id}: {history.postings} postings, expected {postings}")
    progress(f"history {account_id}: {postings} entries in {elapsed_s:.1f}s "
             f"({postings / elapsed_s:.0f} entries/s), {history.late} late")
    return history, Result(
        name=f"history.sql_insert.n{postings}", value=round(postings / elapsed_s, 1), unit="entries/s",
        params={"entries": postings, "posting_rows": 2 * postings, "batch_entries": BATCH_ENTRIES,
                "late": history.late, "span_days": HISTORY_SPAN.days, "elapsed_s": round(elapsed_s, 1),
                "what": "INSERT ... SELECT generate_series through posting_apply and the deferred balance "
                        "check (not Ledger.post)"})


def vacuum_analyze(engine: sa.Engine) -> float:
    """What autovacuum would do eventually, done now so every size is measured in the same state."""
    began = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM (ANALYZE) posting, journal_entry, ledger_account")
    return time.perf_counter() - began
