"""The hash chains' cost (issue 17): posting with and without the chain in the same run, and verify's speed.

"Without" is a database of the same server at the head revision whose two posting trigger functions are put back
as they were before migration 0010 (everything else alike: the chains' work alone is taken out). The same
workloads alternate between
the two databases — without, with, without, with — and each keeps its best run, so a neighbour's load on the
machine touches both alike:
- `one`: 8 writer threads, one entry per transaction, 10,000 accounts (the API's deposits and withdrawals);
- `batch`: one thread, `post_many` of 200 entries per transaction (the webhook group commit and the back-fill).
Verify's speed: `ledger.chain.check` over every posting the runs made, then over a history of a million
postings (or the quick plan's 100,000) built through the triggers, in milliseconds per million postings.
"""

from __future__ import annotations

import importlib
import time
import uuid

import sqlalchemy as sa

from bench import history, throughput
from bench.report import Result, progress
from ledger import Ledger, Money, chain, rules
from ledger.db import create_engine
from service import database

WRITERS = 8
ACCOUNTS = 10_000
BATCH_ENTRIES = 200
ROUNDS = 2
TARGET_RATIO = 0.9  # issue 17: at most 10% lower


def _function(module: str, name: str) -> str:
    """A posting trigger function as an earlier migration defined it (before the chains)."""
    text = importlib.import_module(f"migrations.versions.{module}").SCHEMA
    start = text.index(f"FUNCTION {name}()")
    start = text.rindex("CREATE", 0, start)
    return text[start:text.index("END $$;", start) + len("END $$;")].replace("CREATE FUNCTION",
                                                                               "CREATE OR REPLACE FUNCTION")


def _without_chains(url: str) -> tuple[str, sa.Engine]:
    """A database at the head revision whose posting triggers are the ones before migration 0010: the same code and
    schema, the chains' work alone taken out."""
    admin = sa.make_url(url)
    name = f"invledger_bench_nochain_{uuid.uuid4().hex[:8]}"
    with sa.create_engine(admin, isolation_level="AUTOCOMMIT").connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    other = admin.set(database=name).render_as_string(hide_password=False)
    database.migrate(other)
    bare = create_engine(other, pool_size=WRITERS + 4)
    with bare.begin() as c:  # as DDL text, not through a driver that reads % as a placeholder
        raw = c.connection.driver_connection
        raw.execute(_function("0005_balance_checkpoints", "posting_apply"))
        raw.execute(_function("0006_post_legs", "posting_batch_apply"))
    return name, bare


def _batch_rate(ledger: Ledger, ids: list[str], duration_s: float, tag: str) -> float:
    deadline, entries, n = time.perf_counter() + duration_s, 0, 0
    began = time.perf_counter()
    while time.perf_counter() < deadline:
        drafts = [rules.gain_or_loss("trade", ids[(n + i) % len(ids)], Money(minor=1 + i % 97, currency="USD"),
                                     idempotency_key=f"{tag}:{n + i}", effective_at=None)
                  for i in range(BATCH_ENTRIES)]
        ledger.post_many(drafts)
        n += BATCH_ENTRIES
        entries += BATCH_ENTRIES
    return entries / (time.perf_counter() - began)


def measure(url: str, engine: sa.Engine, *, duration_s: float, history_postings: int) -> list[Result]:
    name, bare = _without_chains(url)
    try:
        books = {"with": Ledger(engine), "without": Ledger(bare)}
        ids = throughput.account_ids("chain", ACCOUNTS)
        for ledger in books.values():
            throughput.open_accounts(ledger, ids)
            throughput.warm(ledger, ids, WRITERS)
        best: dict[tuple[str, str], float] = {}
        for round_ in range(ROUNDS):
            for side in ("without", "with"):
                ledger = books[side]
                with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    c.exec_driver_sql("ANALYZE posting, journal_entry, ledger_account")
                figures = throughput.run_threads(ledger, ids, writers=WRITERS, duration_s=duration_s,
                                                 tag=f"chain-{side}-{round_}")
                one = sum(f.posted for f in figures) / duration_s
                batch = _batch_rate(ledger, ids, duration_s, f"chain-batch-{side}-{round_}")
                progress(f"  chain {side} round {round_ + 1}: one {one:.0f}/s, batch {batch:.0f} entries/s")
                best[(side, "one")] = max(best.get((side, "one"), 0.0), one)
                best[(side, "batch")] = max(best.get((side, "batch"), 0.0), batch)
    finally:
        bare.dispose()
        with sa.create_engine(sa.make_url(url), isolation_level="AUTOCOMMIT").connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    results = []
    for mode, what in (("one", f"{WRITERS} threads, one entry per transaction, {ACCOUNTS} accounts"),
                       ("batch", f"post_many of {BATCH_ENTRIES} entries per transaction, one thread")):
        with_, without = best[("with", mode)], best[("without", mode)]
        ratio = with_ / without if without else None
        results.append(Result(name=f"chain.post.{mode}.ratio", value=round(ratio, 3) if ratio else None, unit="x",
                              target=TARGET_RATIO, met=ratio is not None and ratio >= TARGET_RATIO,
                              params={"with_entries_per_s": round(with_), "without_entries_per_s": round(without),
                                      "rounds": ROUNDS, "duration_s": duration_s, "what": what,
                                      "without": "the same server, posting triggers as before migration 0010"}))
    results.append(_verify_speed(engine, "chain.verify.after_posting"))
    progress(f"chain: a history of {history_postings} entries through the triggers")
    history.generate(engine, history_postings, bulk=False)
    results.append(_verify_speed(engine, "chain.verify"))
    return results


def _verify_speed(engine: sa.Engine, name: str) -> Result:
    with engine.connect() as c:
        c.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        postings = c.execute(sa.text("SELECT count(*) FROM posting")).scalar_one()
        began = time.perf_counter()
        checked = chain.check(c)
        elapsed_s = time.perf_counter() - began
        c.rollback()
    per_million = elapsed_s * 1000 / (postings / 1_000_000) if postings else None
    progress(f"  {name}: {postings} postings in {elapsed_s:.2f}s, {len(checked.findings)} findings")
    return Result(name=name, value=round(per_million, 1) if per_million else None, unit="ms per 1M postings",
                  params={"postings": postings, "elapsed_s": round(elapsed_s, 2), "findings": len(checked.findings),
                          "what": "ledger.chain.check: every posting's digest recomputed in SQL, links in hashlib"})



