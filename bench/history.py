"""Long posting histories and large books, built in bulk with SQL, in the ledger's own schema.

`Ledger.post` books ~1k entries/s here and the posting trigger ~6k/s (every posting updates its
account's row, and N updates of one row in one transaction leave N row versions to walk), so a
million-posting account or a ten-million-posting book is built in bulk instead: one INSERT ... SELECT
from generate_series per chunk, with the triggers off (`session_replication_role = replica`, superuser
only) and what `posting_apply` would have stamped — seq, balance_after, late — computed by window
functions in recording (entry id) order, then the cached balances set from the postings.

Nothing here is trusted: after building, `ledger/verify.py`'s checks recompute every balance, running
balance, sequence, late flag and entry balance from the postings (see `verify_built`). Without
superuser rights (a DATABASE_URL role) the triggers stay on and the rows go through `posting_apply`
and the deferred balance check, in small batches (slower, same rows).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import msgspec
import sqlalchemy as sa

from bench.report import Result, progress
from ledger import verify

HISTORY_SPAN = timedelta(days=3 * 365)
LATE_PROBABILITY = 0.05
LATE_BY_MAX = timedelta(days=3)  # beyond the gap to the previous entry, so a late one is always late
AMOUNT_MINOR_MAX = 100_000
CHUNK_ENTRIES_MAX = 500_000  # per statement in bulk mode: bounds the sort memory of the window functions
TRIGGER_BATCH_ENTRIES = 250  # per transaction through the triggers (the cost of a batch grows with its square)
CURRENCY = "USD"

# Entry i of account A happens at start + i * spacing; about 5% are recorded late: effective one spacing
# plus up to three days earlier than the entry before them. Amounts and directions derive from the entry id.
_ENTRIES = """
WITH acc AS (
    SELECT * FROM unnest(CAST(:account_ids AS text[]), CAST(:custody_ids AS bigint[]),
                         CAST(:investors_ids AS bigint[])) AS a(account_id, custody, investors)),
g AS (
    SELECT a.account_id, i,
           CAST(:start AS timestamptz) + i * CAST(:spacing_us AS bigint) * interval '1 microsecond' AS base,
           i > 0 AND random() < :late_probability AS is_late
      FROM acc a CROSS JOIN generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i),
e AS (
    INSERT INTO journal_entry (idempotency_key, content_hash, kind, investment_account_id, effective_at, memo)
    SELECT 'bench:' || account_id || ':' || i, sha256(convert_to('bench:' || account_id || ':' || i, 'UTF8')),
           'trade', account_id,
           CASE WHEN is_late
                THEN base - (CAST(:spacing_us AS bigint) + 1000000 + random() * :late_by_us) * interval '1 microsecond'
                ELSE base END,
           'bench history'
      FROM g ORDER BY account_id, i
    RETURNING id, investment_account_id, effective_at),
legs AS (
    SELECT CASE WHEN l.custody_leg THEN a.custody ELSE a.investors END AS account, e.id AS entry_id,
           e.effective_at, CASE WHEN (e.id % 2 = 0) = l.custody_leg THEN 'D' ELSE 'C' END AS side,
           1 + (e.id * 7919) % CAST(:amount_max AS bigint) AS amount
      FROM e JOIN acc a ON a.account_id = e.investment_account_id
     CROSS JOIN (VALUES (true), (false)) AS l(custody_leg))
"""

# Bulk: what posting_apply stamps, for accounts that are empty when the chunk starts (one chunk per account set).
_BULK = sa.text(_ENTRIES + """
INSERT INTO posting (ledger_account_id, seq, entry_id, side, amount_minor, currency, effective_at,
                     balance_after_minor, late)
SELECT l.account, la.posting_count + row_number() OVER w, l.entry_id, l.side, l.amount, CAST(:currency AS text),
       l.effective_at,
       la.balance_minor + sum(CASE l.side WHEN 'D' THEN l.amount ELSE -l.amount END) OVER w,
       COALESCE(l.effective_at < GREATEST(
                    la.max_effective_at, max(l.effective_at) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)),
                false)
  FROM legs l JOIN ledger_account la ON la.id = l.account
WINDOW w AS (PARTITION BY l.account ORDER BY l.entry_id)
""")

_CACHE = sa.text("""
UPDATE ledger_account a SET balance_minor = s.total, posting_count = s.n, max_effective_at = s.latest,
       max_lateness_us = COALESCE((SELECT l.lateness_us FROM ledger_account_lateness l
                                    WHERE l.ledger_account_id = a.id), 0)
  FROM (SELECT ledger_account_id, count(*) AS n, max(effective_at) AS latest,
               sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) AS total
          FROM posting WHERE ledger_account_id = ANY(CAST(:ids AS bigint[])) GROUP BY ledger_account_id) s
 WHERE a.id = s.ledger_account_id
""")

# Through the triggers: posting_apply stamps seq, balance_after and late; the deferred check runs at commit.
_TRIGGERED = sa.text(_ENTRIES + """
INSERT INTO posting (ledger_account_id, entry_id, side, amount_minor, currency, seq, effective_at,
                     balance_after_minor, late)
SELECT account, entry_id, side, amount, CAST(:currency AS text), 0, now(), 0, false FROM legs
 ORDER BY entry_id, account
""")

_OPEN = sa.text("""
WITH ids AS (SELECT unnest(CAST(:account_ids AS text[])) AS account_id),
inv AS (
    INSERT INTO investment_account (account_id, product_id, agent_type, currency, fee_rate)
    SELECT account_id, 'bench', 'bench', CAST(:currency AS text), 0.2 FROM ids RETURNING account_id)
INSERT INTO ledger_account (name, type, currency, investment_account_id)
SELECT k.prefix || inv.account_id, k.type, CAST(:currency AS text), inv.account_id
  FROM inv CROSS JOIN (VALUES ('assets:custody:', 'asset'), ('liabilities:investors:', 'liability')) AS k(prefix, type)
RETURNING id, name, investment_account_id
""")


class History(msgspec.Struct, frozen=True, kw_only=True):
    """An investment account whose investor ledger account has exactly `postings` postings."""

    account_id: str
    investors_id: int
    postings: int
    late: int
    start: datetime
    end: datetime


class Book(msgspec.Struct, frozen=True, kw_only=True):
    accounts: int
    ledger_accounts: int
    postings: int
    mode: str
    elapsed_s: float


def is_superuser(engine: sa.Engine) -> bool:
    with engine.connect() as connection:
        return connection.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar_one()


def open_bulk(engine: sa.Engine, account_ids: list[str]) -> tuple[list[int], list[int]]:
    """Investment accounts with their custody and investor ledger accounts, in one statement (no initial capital,
    no 'created' event or outbox row: the chart rows are what the books need)."""
    with engine.begin() as connection:
        rows = connection.execute(_OPEN, {"account_ids": account_ids, "currency": CURRENCY}).all()
    ids = {(r.investment_account_id, r.name.split(":", 1)[0]): r.id for r in rows}
    return [ids[(a, "assets")] for a in account_ids], [ids[(a, "liabilities")] for a in account_ids]


def _params(account_ids: list[str], custody: list[int], investors: list[int], entries: int) -> dict[str, object]:
    start = datetime.now(UTC).replace(microsecond=0) - HISTORY_SPAN
    return {"account_ids": account_ids, "custody_ids": custody, "investors_ids": investors, "start": start,
            "spacing_us": int(HISTORY_SPAN / timedelta(microseconds=1)) // entries,
            "late_probability": LATE_PROBABILITY, "late_by_us": LATE_BY_MAX / timedelta(microseconds=1),
            "amount_max": AMOUNT_MINOR_MAX, "currency": CURRENCY}


def fill(engine: sa.Engine, account_ids: list[str], custody: list[int], investors: list[int], entries: int, *,
         bulk: bool, label: str) -> float:
    """`entries` two-leg entries on each of the (empty) accounts; returns the seconds it took."""
    params = _params(account_ids, custody, investors, entries)
    began = reported = time.perf_counter()
    if bulk:
        accounts_per_chunk = max(1, min(len(account_ids), CHUNK_ENTRIES_MAX // entries))
        for at in range(0, len(account_ids), accounts_per_chunk):
            part = slice(at, at + accounts_per_chunk)
            # A single account with more than a chunk's entries is still one statement: its running balance
            # must be computed in one window.
            with engine.begin() as connection:
                connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
                connection.execute(_BULK, {**params, "account_ids": account_ids[part], "custody_ids": custody[part],
                                           "investors_ids": investors[part], "first": 0, "last": entries - 1})
                connection.execute(_CACHE, {"ids": custody[part] + investors[part]})
            if time.perf_counter() - reported > 15:
                reported = time.perf_counter()
                progress(f"  {label}: {at + accounts_per_chunk}/{len(account_ids)} accounts")
    else:
        for at in range(len(account_ids)):
            one = {**params, "account_ids": account_ids[at:at + 1], "custody_ids": custody[at:at + 1],
                   "investors_ids": investors[at:at + 1]}
            for first in range(0, entries, TRIGGER_BATCH_ENTRIES):
                with engine.begin() as connection:
                    connection.execute(_TRIGGERED, {**one, "first": first,
                                                    "last": min(entries, first + TRIGGER_BATCH_ENTRIES) - 1})
                if time.perf_counter() - reported > 15:
                    reported = time.perf_counter()
                    progress(f"  {label}: account {at + 1}/{len(account_ids)}, {first}/{entries} entries")
    return time.perf_counter() - began


def generate(engine: sa.Engine, postings: int, *, bulk: bool) -> tuple[History, Result]:
    """One investment account whose investor ledger account gets exactly `postings` postings."""
    account_id = f"bench-history-{postings}"
    custody, investors = open_bulk(engine, [account_id])
    elapsed_s = fill(engine, [account_id], custody, investors, postings, bulk=bulk, label=account_id)
    with engine.connect() as connection:
        row = connection.execute(sa.text("""
            SELECT count(*) AS postings, count(*) FILTER (WHERE late) AS late,
                   min(effective_at) AS start, max(effective_at) AS end
              FROM posting WHERE ledger_account_id = :id"""), {"id": investors[0]}).one()
    history = History(account_id=account_id, investors_id=investors[0], postings=row.postings, late=row.late,
                      start=row.start, end=row.end)
    if history.postings != postings:
        raise RuntimeError(f"history for {account_id}: {history.postings} postings, expected {postings}")
    progress(f"history {account_id}: {postings} entries in {elapsed_s:.1f}s "
             f"({postings / elapsed_s:.0f} entries/s, {'bulk' if bulk else 'triggers'}), {history.late} late")
    return history, Result(
        name=f"history.build.n{postings}", value=round(2 * postings / elapsed_s, 1), unit="postings/s",
        params={"entries": postings, "posting_rows": 2 * postings, "late": history.late,
                "span_days": HISTORY_SPAN.days, "elapsed_s": round(elapsed_s, 1),
                "mode": "bulk SQL, triggers off, stamps computed, verified after" if bulk else
                        f"INSERT ... SELECT through posting_apply, {TRIGGER_BATCH_ENTRIES} entries per transaction",
                "what": "set-up for the read benchmarks, not a ledger write path"})


def build_book(engine: sa.Engine, accounts: int, entries_per_account: int, *, bulk: bool) -> Book:
    """A large book: `accounts` investment accounts, each with `entries_per_account` two-leg entries."""
    ids = [f"bench-book-{i:06d}" for i in range(accounts)]
    began = time.perf_counter()
    custody: list[int] = []
    investors: list[int] = []
    for at in range(0, accounts, 20_000):
        made = open_bulk(engine, ids[at:at + 20_000])
        custody += made[0]
        investors += made[1]
    fill(engine, ids, custody, investors, entries_per_account, bulk=bulk, label="book")
    elapsed_s = time.perf_counter() - began
    return Book(accounts=accounts, ledger_accounts=2 * accounts, postings=2 * accounts * entries_per_account,
                mode="bulk" if bulk else "triggers", elapsed_s=round(elapsed_s, 1))


# verify.as_of_matches_recomputation evaluates every distinct effective time of the 50 largest accounts against
# a full sum: quadratic in a million-posting account. latency.check does the same comparison at sampled times.
VERIFY_SKIPPED = ("as_of_matches_recomputation",)


def verify_built(engine: sa.Engine) -> Result:
    """ledger/verify.py's checks (all but the quadratic one) over the whole bench database, in one snapshot."""
    began = time.perf_counter()
    findings: list[str] = []
    checks: dict[str, int] = {}
    with engine.connect() as connection:
        connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
        for check in verify.CHECKS:
            if check.__name__ in VERIFY_SKIPPED:
                continue
            found = check(connection)
            checks[check.__name__] = len(found)
            findings += [f"{check.__name__}: {detail}" for detail in found]
        postings = connection.execute(sa.text("SELECT count(*) FROM posting")).scalar_one()
        connection.rollback()
    elapsed_s = time.perf_counter() - began
    progress(f"verify over {postings} postings: {len(findings)} findings in {elapsed_s:.1f}s")
    return Result(name="verify.findings", value=len(findings), unit="count", target=0, met=not findings,
                  params={"postings": postings, "checks": checks, "skipped": list(VERIFY_SKIPPED),
                          "examples": findings[:5], "elapsed_s": round(elapsed_s, 1),
                          "what": "ledger/verify.py checks over every posting the benchmark built or posted"})


def vacuum_analyze(engine: sa.Engine) -> float:
    """What autovacuum would do eventually, done now so every size is measured in the same state."""
    began = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM (ANALYZE) posting, journal_entry, ledger_account")
    return time.perf_counter() - began
