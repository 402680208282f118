"""Monthly investor statements for N accounts: seconds and peak memory of issuing them all, and of verifying them.

A database of its own: N accounts, each with last month's life booked in batches (a deposit, `TRADES` closed trades
and `TRUE_UPS` true-ups, back-dated into the month) and distributed. Then a fresh process (multiprocessing
"spawn") issues every statement of the month as the job does (`documents.statements.issue_month`: figures, PDF,
digest, one transaction per account) and reports its wall time and peak RSS; a second issue of the month (every
statement unchanged: the job's daily catch-up) and `verify`'s statement check (digests, links, and every
statement's figures recomputed from the books as recorded when it was issued) are timed too.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from bench.report import Result, progress
from bench.server import bench_database
from bench.throughput import open_accounts
from ledger import Ledger, Money, rules
from ledger.db import create_engine
from ledger.distribution import distribute_account

TRADES = 20
TRUE_UPS = 20
BOOK_BATCH = 500  # entries per post_many
BOOK_THREADS = 4
TARGET_S_PER_10K = 600.0  # a night's job: 10 minutes for 10,000 accounts
TARGET_RSS_MB = 300.0


def last_month() -> date:
    return (datetime.now(UTC).date().replace(day=1) - timedelta(days=1)).replace(day=1)


def _book(ledger: Ledger, ids: list[str], month: date) -> None:
    """Each account's month: a deposit on the 1st, trades and true-ups through the month (one a day or so)."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC)

    def drafts(account_id: str, n: int) -> list:
        out = [rules.deposit(account_id, Money(minor=50_000 + n % 997, currency="USD"),
                             idempotency_key=f"{account_id}:d", effective_at=start + timedelta(hours=9))]
        for i in range(TRADES):
            pnl = ((n * 31 + i * 17) % 4001) - 1800
            out.append(rules.gain_or_loss("trade", account_id, Money(minor=pnl or 1, currency="USD"),
                                          idempotency_key=f"{account_id}:t{i}",
                                          effective_at=start + timedelta(days=i % 27, hours=12), memo="trade closed"))
        for i in range(TRUE_UPS):
            change = ((n * 13 + i * 7) % 801) - 400
            out.append(rules.gain_or_loss("true_up", account_id, Money(minor=change or 1, currency="USD"),
                                          idempotency_key=f"{account_id}:u{i}",
                                          effective_at=start + timedelta(days=i % 27, hours=23, minutes=59),
                                          memo="true-up"))
        return out

    per_batch = max(1, BOOK_BATCH // (1 + TRADES + TRUE_UPS))
    batches = [ids[i:i + per_batch] for i in range(0, len(ids), per_batch)]

    def book(batch: list[str]) -> None:
        ledger.post_many([d for n, a in enumerate(batch) for d in drafts(a, hash(a) % 10_000 + n)])

    with ThreadPoolExecutor(BOOK_THREADS) as pool:
        for done, _ in enumerate(pool.map(book, batches), 1):
            if done % 50 == 0:
                progress(f"statements: booked {done * per_batch}/{len(ids)} accounts' months")

    def distribute(account_id: str) -> None:
        ledger.transact(lambda tx: distribute_account(tx, account_id, month, require_snapshot=False))

    with ThreadPoolExecutor(BOOK_THREADS) as pool:
        list(pool.map(distribute, ids))


def _issue(url: str, month: date, out: multiprocessing.Queue) -> None:
    """In a fresh process: issue the month's statements, then again (all unchanged); then verify's check."""
    from documents import statements
    from ledger.statements import statements_match

    engine = create_engine(url, pool_size=4)
    ledger = Ledger(engine)
    started = time.perf_counter()
    counts = statements.issue_month(ledger, month)
    first_s = time.perf_counter() - started
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    again = statements.issue_month(ledger, month)
    again_s = time.perf_counter() - started
    started = time.perf_counter()
    with engine.connect() as c:
        c.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        findings = statements_match(c)
    verify_s = time.perf_counter() - started
    with engine.connect() as c:
        pdf_bytes = c.execute(sa.text("SELECT avg(length(pdf))::bigint FROM investor_statement")).scalar()
    out.put((first_s, rss_kib, again_s, verify_s, findings, counts.issued, again.unchanged, int(pdf_bytes or 0)))
    engine.dispose()


def measure(accounts: int) -> list[Result]:
    month = last_month()
    with bench_database() as db:
        engine = create_engine(db.url, pool_size=BOOK_THREADS + 2)
        try:
            ledger = Ledger(engine)
            prefix = f"stm-{uuid.uuid4().hex[:6]}"
            ids = [f"{prefix}-{i:05d}" for i in range(accounts)]
            progress(f"statements: opening {accounts} accounts and booking their month {month:%Y-%m}")
            began = time.perf_counter()
            open_accounts(ledger, ids)
            _book(ledger, ids, month)
            with engine.begin() as c:
                c.exec_driver_sql("ANALYZE")
            progress(f"statements: books ready in {time.perf_counter() - began:.0f}s; issuing in a fresh process")
        finally:
            engine.dispose()
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        child = context.Process(target=_issue, args=(db.url, month, out))
        child.start()
        first_s, rss_kib, again_s, verify_s, findings, issued, unchanged, pdf_bytes = out.get(timeout=7200)
        child.join()
    if issued != accounts or unchanged != accounts or findings:
        raise RuntimeError(f"statements bench: issued {issued}, unchanged {unchanged} of {accounts}; {findings[:3]}")
    params = {"accounts": accounts, "postings_per_account_month": 1 + TRADES + TRUE_UPS + 1,
              "statements_per_s": round(accounts / first_s, 1), "average_pdf_bytes": pdf_bytes}
    target_s = TARGET_S_PER_10K * accounts / 10_000
    rss_mb = rss_kib / 1024
    return [
        Result(name=f"statements.issue.a{accounts}", value=round(first_s, 1), unit="s", target=target_s,
               met=first_s <= target_s, params=params),
        Result(name=f"statements.peak_rss.a{accounts}", value=round(rss_mb, 1), unit="MB", target=TARGET_RSS_MB,
               met=rss_mb <= TARGET_RSS_MB, params=params),
        Result(name=f"statements.reissue_unchanged.a{accounts}", value=round(again_s, 1), unit="s", target=target_s,
               met=again_s <= target_s, params=params),
        Result(name=f"statements.verify.a{accounts}", value=round(verify_s, 1), unit="s", target=target_s,
               met=verify_s <= target_s, params=params)]
