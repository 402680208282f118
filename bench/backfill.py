"""Trades from the engine's history booked in bulk, against the cost of merely storing the same rows.

Three runs, each `threads` threads for the same time on the same database:
- `backfill.book_trades`: `Bookkeeper.book_trades`, BACKFILL_BATCH trades of one account per
  transaction — the sync job's path, and the one the issue's target (0.1 × COPY rows/s, in postings) is for;
- `backfill.book_trade`: one transaction per trade, the fallback when a batch is refused (for comparison);
- `backfill.rows_floor`: what any import path costs at least here — the same rows (per trade one journal
  entry, its two postings and the trade row) inserted by one INSERT ... SELECT per BACKFILL_BATCH trades into
  copies of the three tables with the same columns, CHECKs and indexes (`CREATE TABLE ... (LIKE ...
  INCLUDING ALL)`), but no triggers and no foreign keys: no balance stamped, no reference or balance checked,
  nothing read back. The copies are dropped afterwards; the ledger's tables are not touched.

`book_trades`' ratio to the floor says how much of the budget the ledger's guarantees take; the floor's
own ratio to COPY says how far any path that keeps these rows and indexes could go on this machine.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import sqlalchemy as sa

from bench.cpu import settle
from bench.history import open_bulk
from bench.report import Result, progress
from bench.server import analyze
from integration.booking import Booking, Bookkeeper
from integration.events import TradeData
from ledger import Ledger

RATIO_TARGET = 0.1  # issue 6: bulk back-fill / import >= 0.1 x COPY rows/s, counted in postings
BATCH = 500  # trades of one account per book_trades call: a busy account's day at the engine
FLOOR_TABLES = ("journal_entry", "posting", "trade")

# One statement per batch: BATCH entries, their two postings each (custody debit, investor credit: a gain)
# and BATCH trade rows, shaped as book_trades writes them (keys, hashes, metadata, memo, numerics).
_FLOOR_BATCH = sa.text("""
WITH e AS (
    INSERT INTO floor_journal_entry (idempotency_key, content_hash, kind, investment_account_id, effective_at,
                                     recorded_at, memo, metadata)
    SELECT 'trade:' || CAST(:tag AS text) || '-' || i, sha256(convert_to(CAST(:tag AS text) || '-' || i, 'UTF8')),
           'trade', CAST(:account AS text), CAST(:at AS timestamptz), clock_timestamp(), 'sell ETHUSDT closed',
           jsonb_build_object('trade_id', CAST(:tag AS text) || '-' || i, 'symbol', 'ETHUSDT')
      FROM generate_series(1, CAST(:n AS int)) AS i
    RETURNING id, idempotency_key, effective_at),
t AS (
    INSERT INTO floor_trade (trade_id, account_id, symbol, side, quantity, entry_price, exit_price,
                             profit_loss_minor, status, executed_at, trade_date, entry_id, source)
    SELECT substr(e.idempotency_key, 7), CAST(:account AS text), 'ETHUSDT', 'sell', 2, 2500.00, 2490.00,
           1 + e.id % 99999, 'closed', e.effective_at, CAST(e.effective_at AT TIME ZONE 'UTC' AS date), e.id,
           'backfill'
      FROM e)
INSERT INTO floor_posting (ledger_account_id, seq, entry_id, side, amount_minor, currency, effective_at,
                           balance_after_minor, late)
SELECT CASE WHEN l.custody THEN CAST(:custody AS bigint) ELSE CAST(:investors AS bigint) END, 2 * e.id + l.leg,
       e.id, CASE WHEN l.custody THEN 'D' ELSE 'C' END, 1 + e.id % 99999, 'USD', e.effective_at, 0, false
  FROM e CROSS JOIN (VALUES (true, 0), (false, 1)) AS l(custody, leg)
""")


def _trade_stream(seed: int, account_ids: list[str], day: datetime) -> Iterator[TradeData]:
    """Distinct closed trades (a gain each) on accounts drawn from `account_ids`, without end."""
    rng = random.Random(seed)
    for sequence in itertools.count(1):
        yield TradeData(trade_id=f"bf-{seed}-{sequence}", account_id=rng.choice(account_ids), symbol="ETHUSDT",
                        side="sell", quantity=Decimal("2"), entry_price=Decimal("2500.00"),
                        exit_price=Decimal("2490.00"), profit_loss=Decimal(rng.randint(1, 99_999)).scaleb(-2),
                        status="closed", executed_at=day)


def backfill(engine: sa.Engine, *, threads: int, duration_s: float, accounts: int,
             copy_rows_per_s: float | None) -> list[Result]:
    """The three runs of the module docstring; each result's value is postings per second."""
    ids = [f"bench-bf-{i:05d}" for i in range(accounts)]
    custody, investors = open_bulk(engine, ids)
    bookkeeper = Bookkeeper(Ledger(engine))
    day = datetime.now(UTC) - timedelta(hours=1)

    def one_by_one(seed: int, deadline: float) -> tuple[int, int]:
        booked = errors = 0
        stream = _trade_stream(seed, ids, day)
        while time.perf_counter() < deadline:
            try:
                booked += len(bookkeeper.book_trade(next(stream)).entry_ids)
            except Exception:  # noqa: BLE001 — counted and reported
                errors += 1
        return booked, errors

    def batched(seed: int, deadline: float) -> tuple[int, int]:
        booked = errors = 0
        mine = ids[seed::threads]  # each thread its own accounts: a batch locks its account for its transaction
        stream = _trade_stream(1000 + seed, mine, day)
        for n in itertools.count():
            if time.perf_counter() >= deadline:
                break
            account_id = mine[n % len(mine)]
            batch = [msgspec.structs.replace(next(stream), account_id=account_id) for _ in range(BATCH)]
            try:
                answers = bookkeeper.book_trades(account_id, batch)
            except Exception:  # noqa: BLE001 — counted and reported
                errors += len(batch)
                continue
            booked += sum(len(a.entry_ids) for a in answers if isinstance(a, Booking))
            errors += sum(1 for a in answers if not isinstance(a, Booking))
        return booked, errors

    def floor(seed: int, deadline: float) -> tuple[int, int]:
        written = 0
        for n in itertools.count():
            if time.perf_counter() >= deadline:
                break
            at = (seed + n * threads) % accounts
            with engine.begin() as connection:
                connection.execute(_FLOOR_BATCH, {"tag": f"{seed}-{n}", "account": ids[at], "at": day,
                                                  "custody": custody[at], "investors": investors[at], "n": BATCH})
            written += BATCH
        return written, 0

    runs: list[tuple[str, Callable[[int, float], tuple[int, int]], str]] = [
        ("backfill.book_trades", batched,
         f"Bookkeeper.book_trades: {BATCH} trades of one account per transaction "
         "(Tx.post_many: entries and legs in one call of ledger_post_entries, the legs stamped set-based; "
         "the trade rows from one JSON document); the sync job's path"),
        ("backfill.book_trade", one_by_one,
         "Bookkeeper.book_trade: one transaction per trade (the fallback when a batch is refused)"),
        ("backfill.rows_floor", floor,
         f"the same rows ({BATCH} entries, their postings and trades per statement) into copies of the tables "
         "with their CHECKs and indexes but no triggers or foreign keys: the least any import path pays")]
    with engine.begin() as connection:
        for table in FLOOR_TABLES:
            connection.exec_driver_sql(f"CREATE TABLE floor_{table} (LIKE {table} INCLUDING ALL)")
    results: list[Result] = []
    try:
        for name, work, path in runs:
            analyze(engine)
            quiet = settle()
            began = time.perf_counter()
            deadline = began + duration_s
            with ThreadPoolExecutor(threads) as pool:
                outcomes = list(pool.map(work, range(threads), [deadline] * threads))
            elapsed_s = time.perf_counter() - began  # a batch in flight at the deadline finishes: count its time
            entries, errors = sum(o[0] for o in outcomes), sum(o[1] for o in outcomes)
            postings_per_s = 2 * entries / elapsed_s
            ratio = round(postings_per_s / copy_rows_per_s, 4) if copy_rows_per_s else None
            target = name == "backfill.book_trades"
            progress(f"back-fill through {name.split('.')[1]}, {threads} threads: {postings_per_s:.0f} postings/s "
                     f"(ratio to COPY {ratio}), errors {errors}")
            results.append(Result(
                name=name, value=round(postings_per_s, 1), unit="postings/s",
                target=round(RATIO_TARGET * copy_rows_per_s, 1) if copy_rows_per_s and target else None,
                met=ratio >= RATIO_TARGET if ratio is not None and target else None,
                params={"threads": threads, "accounts": accounts, "duration_s": round(elapsed_s, 1),
                        "entries": entries, "errors": errors, "copy_rows_per_s": copy_rows_per_s,
                        "ratio_to_copy": ratio, "settle": quiet, "path": path}))
    finally:
        with engine.begin() as connection:
            for table in FLOOR_TABLES:
                connection.exec_driver_sql(f"DROP TABLE IF EXISTS floor_{table}")
    by_name = {result.name: result for result in results}
    floor_rate = by_name["backfill.rows_floor"].value
    for result in results:
        result.params["ratio_to_rows_floor"] = round(result.value / floor_rate, 3) if floor_rate else None
    return results
