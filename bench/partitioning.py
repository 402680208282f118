"""`python -m bench.partitioning [--rows N]`: native partitioning of postings by time, measured on a scratch database
(issue 18, part 5; docs/scaling.md). Not the production schema: two copies of the `posting` table with its columns
(`LIKE posting`, the scratch database migrated) and every index it has (migrations 0001 and 0005) — one plain, one
`PARTITION BY RANGE (effective_at)` in monthly partitions — filled with the same N rows (default 10M: 100k ledger
accounts x 100 postings over three years, 5% late), then the same work on each, alternating:

- insert: new postings at "now" in batches of 500 (the group-commit path) and one row per statement (the posting
  trigger's path), µs per posting;
- as-of: the as-of function's core read (the last in-order posting of an account at or before T, migration 0004)
  at random accounts and times, p50/p99;
- report: what a report as of T reads after its month-end checkpoint (every posting effective between the checkpoint
  and T, summed per account, through `posting (effective_at)`, migration 0005), and a whole-history sum per account;
- upkeep: index sizes (what an insert keeps hot), VACUUM after the inserts, detaching the oldest month.

Prints one JSON document and writes it to bench/partitioning.json."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from bench.report import latency_summary_ms, progress
from service import database

SPAN_DAYS = 3 * 365
ACCOUNTS = 100_000
INSERT_BATCH = 500
INSERT_BATCHES = 40
SINGLE_INSERTS = 2_000
AS_OF_CALLS = 2_000
REPORT_RUNS = 5
ROUNDS = 3
RESULTS_PATH = Path(__file__).parent / "partitioning.json"

# The posting table's columns and CHECKs as the migrations define them (the scratch database is migrated), without
# its triggers and keys: the measure is of the table and its indexes.
COLUMNS = "LIKE posting INCLUDING DEFAULTS INCLUDING CONSTRAINTS"


def _indexes(table: str, partitioned: bool) -> list[str]:
    # A unique index on a partitioned table must hold the partition key: (account, seq) is no longer declared
    # unique per account across months (the posting trigger's posting_count under the row lock still makes it so).
    key = "(ledger_account_id, seq, effective_at)" if partitioned else "(ledger_account_id, seq)"
    return [f"ALTER TABLE {table} ADD PRIMARY KEY {key}",
            f"CREATE INDEX ON {table} (entry_id)",
            f"CREATE INDEX ON {table} (ledger_account_id, effective_at, seq) INCLUDE (late, balance_after_minor)",
            f"CREATE INDEX ON {table} (ledger_account_id, seq) INCLUDE (effective_at, side, amount_minor) WHERE late",
            f"CREATE INDEX ON {table} (effective_at) INCLUDE (ledger_account_id, side, amount_minor)"]


def _months(start: datetime, end: datetime) -> list[datetime]:
    months, at = [], start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while at <= end:
        months.append(at)
        at = (at + timedelta(days=32)).replace(day=1)
    return months


def build(c: psycopg.Connection, rows: int, start: datetime, end: datetime) -> dict[str, float]:
    per_account = max(1, rows // ACCOUNTS)
    spacing_us = int((end - start) / timedelta(microseconds=1)) // per_account
    took: dict[str, float] = {}
    began = time.perf_counter()
    c.execute(f"CREATE TABLE x_plain ({COLUMNS})")
    c.execute(f"CREATE TABLE x_part ({COLUMNS}) PARTITION BY RANGE (effective_at)")
    months = _months(start - timedelta(days=40), end + timedelta(days=62))
    for low, high in zip(months, months[1:], strict=False):
        c.execute(f"CREATE TABLE x_part_{low:%Y%m} PARTITION OF x_part FOR VALUES FROM ('{low.isoformat()}') "
                  f"TO ('{high.isoformat()}')")
    # Account a's i-th posting: effective at start + i * spacing (+ up to a day of jitter); 5% late by up to 3 days.
    c.execute("""
        INSERT INTO x_plain
        SELECT a, i, a::bigint * 1000 + i, CASE WHEN (a + i) %% 2 = 0 THEN 'D' ELSE 'C' END,
               1 + (a * 7919 + i * 104729) %% 100000, 'USD',
               %(start)s + (i * %(spacing)s + (a * 37 %% 86400)::bigint * 1000000) * interval '1 microsecond'
                 - CASE WHEN late
                        THEN interval '3 days' * ((a + i) %% 100) / 100.0 + %(spacing)s * interval '1 microsecond'
                        ELSE interval '0' END,
               (a * 31 + i * 17) %% 1000000, late, NULL
          FROM generate_series(1, %(accounts)s) a, generate_series(1, %(per)s) i,
               LATERAL (SELECT i > 1 AND (a * 13 + i * 7) %% 20 = 0 AS late) l""",
              {"start": start, "spacing": spacing_us, "accounts": ACCOUNTS, "per": per_account})
    took["load_plain_s"] = time.perf_counter() - began
    progress(f"partitioning: {rows} rows in x_plain in {took['load_plain_s']:.0f}s")
    began = time.perf_counter()
    c.execute("INSERT INTO x_part SELECT * FROM x_plain")
    took["load_part_s"] = time.perf_counter() - began
    for table, partitioned in (("x_plain", False), ("x_part", True)):
        began = time.perf_counter()
        for statement in _indexes(table, partitioned):
            c.execute(statement)
        took[f"index_{table}_s"] = time.perf_counter() - began
        progress(f"partitioning: indexes on {table} in {took[f'index_{table}_s']:.0f}s")
    c.execute("VACUUM (ANALYZE) x_plain")
    c.execute("VACUUM (ANALYZE) x_part")
    return {k: round(v, 1) for k, v in took.items()}


def _size_mb(c: psycopg.Connection, table: str) -> dict[str, float]:
    row = c.execute("""
        SELECT sum(pg_table_size(r.oid)), sum(pg_indexes_size(r.oid))
          FROM pg_class r WHERE r.oid = %(t)s::regclass OR r.oid IN (SELECT inhrelid FROM pg_inherits
                                                                 WHERE inhparent = %(t)s::regclass)""",
                    {"t": table}).fetchone()
    return {"table_mb": round(float(row[0]) / 2**20, 1), "indexes_mb": round(float(row[1]) / 2**20, 1)}


def insert_batches(c: psycopg.Connection, table: str, next_seq: list[int], now: datetime) -> float:
    """µs per posting: INSERT_BATCHES statements of INSERT_BATCH postings at now, random accounts."""
    began = time.perf_counter()
    for _ in range(INSERT_BATCHES):
        first = next_seq[0]
        next_seq[0] += INSERT_BATCH
        with c.transaction():
            c.execute(f"""
                INSERT INTO {table}
                SELECT 1 + (g * 7907) %% {ACCOUNTS}, %(first)s + g, %(first)s + g, 'D', 100, 'USD',
                       %(now)s - (g %% 60) * interval '1 second', 0, false, NULL
                  FROM generate_series(1, {INSERT_BATCH}) g""", {"first": first, "now": now})  # noqa: S608
    return (time.perf_counter() - began) * 1e6 / (INSERT_BATCHES * INSERT_BATCH)


def insert_single(c: psycopg.Connection, table: str, next_seq: list[int], now: datetime) -> float:
    """µs per posting: one INSERT statement per posting (prepared), SINGLE_INSERTS in one transaction."""
    rows = []
    for i in range(SINGLE_INSERTS):
        next_seq[0] += 1
        rows.append((1 + (i * 7907) % ACCOUNTS, next_seq[0], next_seq[0], now - timedelta(seconds=i % 60)))
    began = time.perf_counter()
    with c.transaction(), c.cursor() as cur:
        for row in rows:
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s, %s, 'D', 100, 'USD', %s, 0, false, NULL)",  # noqa: S608
                        row, prepare=True)
    return (time.perf_counter() - began) * 1e6 / SINGLE_INSERTS


def as_of(c: psycopg.Connection, table: str, probes: list[tuple[int, datetime]]) -> dict[str, float]:
    samples = []
    with c.cursor() as cur:
        for account, at in probes:
            began = time.perf_counter()
            cur.execute(f"""SELECT seq, balance_after_minor FROM {table}
                             WHERE ledger_account_id = %s AND effective_at <= %s AND NOT late
                             ORDER BY effective_at DESC, seq DESC LIMIT 1""", (account, at),  # noqa: S608
                        prepare=True)
            cur.fetchall()
            samples.append(time.perf_counter() - began)
    return latency_summary_ms(samples)


def report(c: psycopg.Connection, table: str, low: datetime, high: datetime) -> float:
    """ms: every posting effective in (low, high] summed per account (a report's walk from its checkpoint)."""
    runs = []
    for _ in range(REPORT_RUNS):
        began = time.perf_counter()
        c.execute(f"""SELECT ledger_account_id, sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END)
                        FROM {table} WHERE effective_at > %s AND effective_at <= %s
                       GROUP BY ledger_account_id""", (low, high)).fetchall()  # noqa: S608
        runs.append(time.perf_counter() - began)
    return round(statistics.median(runs) * 1000, 1)


def whole_history(c: psycopg.Connection, table: str) -> float:
    began = time.perf_counter()
    c.execute(f"""SELECT ledger_account_id, sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END)
                    FROM {table} GROUP BY ledger_account_id""").fetchall()  # noqa: S608
    return round((time.perf_counter() - began) * 1000, 1)


def plan_of(c: psycopg.Connection, table: str, low: datetime, high: datetime) -> str:
    lines = c.execute(f"""EXPLAIN (COSTS OFF) SELECT ledger_account_id, sum(amount_minor) FROM {table}
                           WHERE effective_at > %s AND effective_at <= %s GROUP BY 1""",  # noqa: S608
                      (low, high)).fetchall()
    return " / ".join(line[0].strip() for line in lines[:6])


def run(rows: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="invledger-partitioning-"))
    try:
        url = database.embedded_url(root)
        database.migrate(url)
        conninfo = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(conninfo, autocommit=True) as c:
            c.execute("SET statement_timeout = 0")
            c.execute("SET work_mem = '64MB'")  # as the report transactions run
            version = c.execute("SHOW server_version").fetchone()[0]
            end = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
            start = end - timedelta(days=SPAN_DAYS)
            built = build(c, rows, start, end)
            sizes = {t: _size_mb(c, t) for t in ("x_plain", "x_part")}
            partitions = c.execute("SELECT count(*) FROM pg_inherits "
                                   "WHERE inhparent = 'x_part'::regclass").fetchone()[0]
            newest = c.execute("SELECT pg_indexes_size(%s::regclass)",
                               (f"x_part_{end:%Y%m}",)).fetchone()[0] / 2**20
            randomly = random.Random(18)
            probes_now = [(randomly.randint(1, ACCOUNTS), end - timedelta(hours=randomly.randint(0, 48)))
                          for _ in range(AS_OF_CALLS)]
            probes_past = [(randomly.randint(1, ACCOUNTS), end - timedelta(days=randomly.randint(300, 430)))
                           for _ in range(AS_OF_CALLS)]
            checkpoint = (end - timedelta(days=365)).replace(day=1, hour=0, minute=0, second=0)
            as_of_t = checkpoint + timedelta(days=15)
            found: dict[str, dict[str, list]] = {t: {} for t in ("x_plain", "x_part")}
            next_seq = [10**9]
            now = end + timedelta(hours=12)
            for round_ in range(ROUNDS):
                progress(f"partitioning: round {round_ + 1}/{ROUNDS}")
                for table in (("x_plain", "x_part") if round_ % 2 == 0 else ("x_part", "x_plain")):
                    f = found[table]
                    f.setdefault("insert_batch_us", []).append(insert_batches(c, table, next_seq, now))
                    f.setdefault("insert_single_us", []).append(insert_single(c, table, next_seq, now))
                    f.setdefault("as_of_recent", []).append(as_of(c, table, probes_now))
                    f.setdefault("as_of_year_ago", []).append(as_of(c, table, probes_past))
                    f.setdefault("report_as_of_year_ago_ms", []).append(report(c, table, checkpoint, as_of_t))
                    f.setdefault("report_last_day_ms", []).append(
                        report(c, table, end - timedelta(days=1), end))
            for table in ("x_plain", "x_part"):
                found[table]["whole_history_ms"] = [whole_history(c, table)]
            upkeep = {}
            for table in ("x_plain", "x_part"):
                began = time.perf_counter()
                c.execute(f"VACUUM {table}")
                upkeep[f"vacuum_{table}_s"] = round(time.perf_counter() - began, 2)
            began = time.perf_counter()
            oldest = c.execute("SELECT min(inhrelid::regclass::text) FROM pg_inherits "
                               "WHERE inhparent = 'x_part'::regclass").fetchone()[0]
            c.execute(f"ALTER TABLE x_part DETACH PARTITION {oldest}")
            upkeep["detach_oldest_month_s"] = round(time.perf_counter() - began, 3)
            plans = {t: plan_of(c, t, checkpoint, as_of_t) for t in ("x_plain", "x_part")}
        summary = {}
        for table, f in found.items():
            summary[table] = {
                "insert_batch_us_per_posting": round(min(f["insert_batch_us"]), 2),
                "insert_single_us_per_posting": round(min(f["insert_single_us"]), 2),
                "as_of_recent_p50_ms": min(r["p50_ms"] for r in f["as_of_recent"]),
                "as_of_recent_p99_ms": min(r["p99_ms"] for r in f["as_of_recent"]),
                "as_of_year_ago_p50_ms": min(r["p50_ms"] for r in f["as_of_year_ago"]),
                "as_of_year_ago_p99_ms": min(r["p99_ms"] for r in f["as_of_year_ago"]),
                "report_as_of_year_ago_ms": min(f["report_as_of_year_ago_ms"]),
                "report_last_day_ms": min(f["report_last_day_ms"]),
                "whole_history_ms": f["whole_history_ms"][0],
                "rounds": {k: v for k, v in f.items() if k.startswith(("insert", "report"))},
            }
        ratios = {k: round(summary["x_part"][k] / summary["x_plain"][k], 3)
                  for k in summary["x_plain"] if isinstance(summary["x_plain"][k], (int, float))
                  and summary["x_plain"][k]}
        return {"rows": rows, "accounts": ACCOUNTS, "span_days": SPAN_DAYS, "partitions": partitions,
                "postgres": version, "built": built, "sizes_mb": sizes,
                "newest_partition_indexes_mb": round(newest, 1), "plain": summary["x_plain"],
                "partitioned": summary["x_part"], "partitioned_over_plain": ratios, "upkeep": upkeep,
                "report_plans": plans, "as_of_checkpoint": checkpoint.isoformat(), "as_of": as_of_t.isoformat(),
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
    finally:
        database.stop_embedded(root)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.partitioning", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="postings in each table (default 10M)")
    args = parser.parse_args(argv)
    doc = run(args.rows)
    text = json.dumps(doc, indent=1, default=str)
    RESULTS_PATH.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
