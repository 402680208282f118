"""`python -m bench [--quick] [--only GROUP]`: run the benchmarks, print one JSON document, save it."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from bench import backfill, books, chain, cpu, flood, history, latency, reference, report, restore, throughput, webhooks
from bench import reconcile as reconciliation
from bench import statements as statements_bench
from bench.report import Result, progress
from bench.server import bench_database, server_facts
from ledger import Ledger
from ledger.db import create_engine

GROUPS = ("pgbench", "post", "chain", "flood", "asof", "books", "webhooks", "backfill", "reconcile", "statements",
          "restore")
ENGINE_POOL_SIZE = 40
STATEMENT_TIMEOUT_MS = 600_000  # VACUUM of a few million postings must not be cut short


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    reference_s: int
    post_s: float
    writers: tuple[int, ...] = (1, 8, 32)
    accounts: tuple[int, ...] = (10, 10_000)
    processes: bool = True
    copy_rows: int
    history_sizes: tuple[int, ...]
    as_of_calls: int
    statement_calls: int
    book_accounts: int  # the large book for trial balance and balance sheet ...
    book_entries_per_account: int  # ... two postings per entry
    small_book_accounts: int  # the same reports on a book this size first (a database of its own): the slope
    webhook_s: float
    webhook_accounts: int = 1_000
    memory_s: float  # server RSS under webhook load (issue 6: 5 minutes), and the intake's rate over that time
    settle_budget_s: float  # waiting for a neighbour's load to pass, all runs together
    reconcile_accounts: tuple[int, ...] = (1_000, 10_000)  # one reconciliation run of each size, 20 ms latency
    statements_accounts: tuple[int, ...] = (10_000,)  # a month's investor statements for this many accounts
    restore_postings: int = 1_000_000  # backup and point-in-time restore of a book this size (half replayed)


QUICK = Plan(reference_s=4, post_s=4, processes=False, copy_rows=300_000, history_sizes=(1_000, 100_000),
             as_of_calls=300, statement_calls=100, book_accounts=10_000, book_entries_per_account=50,
             small_book_accounts=1_000, webhook_s=5, memory_s=15, settle_budget_s=15, reconcile_accounts=(1_000,),
             statements_accounts=(1_000,), restore_postings=100_000)
FULL = Plan(reference_s=10, post_s=10, processes=False, copy_rows=1_000_000, history_sizes=(1_000, 100_000, 1_000_000),
            as_of_calls=500, statement_calls=300, book_accounts=100_000, book_entries_per_account=50,
            small_book_accounts=10_000, webhook_s=10, memory_s=300, settle_budget_s=60)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, histories up to 100k postings")
    parser.add_argument("--only", metavar="NAME", action="append", choices=GROUPS,
                        help=f"run only this group ({', '.join(GROUPS)}); may be repeated")
    parser.add_argument("--markdown", action="store_true",
                        help="print the README's table from bench/results.json and exit (runs nothing)")
    return parser.parse_args(argv)


def _git(*args: str) -> str | None:
    """A read-only git query about the code under test (None outside a checkout)."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _run(plan: Plan, groups: tuple[str, ...], results: list[Result], facts: dict[str, object]) -> None:
    with bench_database() as db:
        facts["database"] = db.origin
        engine = create_engine(db.url, pool_size=ENGINE_POOL_SIZE, statement_timeout_ms=STATEMENT_TIMEOUT_MS)
        try:
            version, settings = server_facts(engine)
            facts["postgres_version"], facts["postgres_settings"] = version, settings
            reference_tps: dict[tuple[int, int], float] = {}
            limits: dict[str, float] = {}
            if "pgbench" in groups:
                progress("pgbench reference")
                found, reference_tps, limits = reference.run(db, engine, duration_s=plan.reference_s,
                                                             clients_set=plan.writers, accounts_set=plan.accounts,
                                                             copy_rows=plan.copy_rows)
                results.extend(found)
            if "post" in groups:
                progress("posting throughput through Ledger.post")
                results.extend(throughput.run(db.url, engine, duration_s=plan.post_s, writers_set=plan.writers,
                                              accounts_set=plan.accounts, reference_tps=reference_tps,
                                              journal_tps=limits.get("journal_tps"), with_processes=plan.processes))
            if "chain" in groups:
                progress("the hash chains' cost: posting with and without them, and verify's speed")
                results.extend(chain.measure(db.url, engine, duration_s=plan.post_s,
                                             history_postings=plan.history_sizes[-1]))
            if "flood" in groups:
                progress("a flood of made-up API keys against one legitimate client")
                results.extend(flood.measure(db.url, engine, duration_s=plan.webhook_s))
            ledger = Ledger(engine)
            bulk = history.is_superuser(engine)
            if "asof" in groups:
                progress("as-of balance latency: generating histories")
                histories = []
                for size in plan.history_sizes:
                    made, result = history.generate(engine, size, bulk=bulk)
                    histories.append(made)
                    results.append(result)
                progress(f"VACUUM ANALYZE took {history.vacuum_analyze(engine):.1f}s")
                found = []
                for seed, made in enumerate(histories):
                    found += latency.measure(ledger, made, calls=plan.as_of_calls,
                                             statement_calls=plan.statement_calls, seed=seed)
                results.extend(found + latency.targets(found, plan.history_sizes))
            if "books" in groups:
                small_book, small = _small_book(plan)
                progress(f"large book: {plan.book_accounts} accounts x {plan.book_entries_per_account} entries")
                book = history.build_book(engine, plan.book_accounts, plan.book_entries_per_account, bulk=bulk)
                progress(f"book of {book.postings} postings built in {book.elapsed_s}s; VACUUM ANALYZE took "
                         f"{history.vacuum_analyze(engine):.1f}s")
                large = books.measure(ledger, book, target_size="10M postings, 100k accounts")
                results.extend(small + large + books.growth(small, large, small_book, book))
            if "asof" in groups or "books" in groups:
                progress("verify: ledger/verify.py checks over the built histories and book")
                results.append(history.verify_built(engine))
            if "webhooks" in groups:
                progress("signed trade.executed webhooks over HTTP")
                results.extend(webhooks.run(db.url, engine, duration_s=plan.webhook_s, senders_set=plan.writers,
                                            accounts=plan.webhook_accounts, memory_s=plan.memory_s,
                                            reference=limits))
            if "backfill" in groups:
                progress("trade back-fill: the ledger's batch path, one by one, and the rows' own floor")
                results.extend(backfill.backfill(engine, threads=4, duration_s=plan.webhook_s,
                                                 accounts=plan.webhook_accounts,
                                                 copy_rows_per_s=limits.get("copy_rows_per_s")))
        finally:
            engine.dispose()
    if "reconcile" in groups:  # on a database of its own: it reconciles every open account
        progress("reconciliation time and peak RSS")
        found = []
        for accounts in plan.reconcile_accounts:
            found += reconciliation.measure(accounts)
        results.extend(found + reconciliation.growth(found, plan.reconcile_accounts))
    if "statements" in groups:  # on a database of its own: it issues a statement for every distributed account
        progress("monthly investor statements: issue time and peak RSS")
        for accounts in plan.statements_accounts:
            results.extend(statements_bench.measure(accounts))
    if "restore" in groups:  # on a server of its own: it archives its WAL
        progress(f"backup and point-in-time restore of {plan.restore_postings} postings")
        results.extend(restore.measure(plan.restore_postings))


def _small_book(plan: Plan) -> tuple[history.Book, list[Result]]:
    """The reports on a smaller book, in a database of its own (reports read every account there is): the first
    size of their slope."""
    with bench_database() as db:
        engine = create_engine(db.url, pool_size=4, statement_timeout_ms=STATEMENT_TIMEOUT_MS)
        try:
            progress(f"small book: {plan.small_book_accounts} accounts x {plan.book_entries_per_account} entries")
            book = history.build_book(engine, plan.small_book_accounts, plan.book_entries_per_account,
                                      bulk=history.is_superuser(engine))
            history.vacuum_analyze(engine)
            return book, books.measure(Ledger(engine), book, target_size="10M postings, 100k accounts",
                                       suffix=books.size_suffix(book))
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.markdown:
        print(report.markdown_table(msgspec.json.decode(report.RESULTS_PATH.read_bytes())))
        return 0
    plan = QUICK if args.quick else FULL
    groups = tuple(args.only) if args.only else GROUPS
    results: list[Result] = []
    facts: dict[str, object] = {}
    run = {"mode": "quick" if args.quick else "full", "groups": list(groups), "plan": plan,
           "commit": _git("rev-parse", "--short", "HEAD"),
           "core_changed_since_commit": bool(_git("status", "--porcelain", "--", "ledger", "migrations")),
           "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "load_average_before": report.load_average()}
    cpu.set_settle_budget(plan.settle_budget_s)
    began = time.perf_counter()
    failure = None
    try:
        _run(plan, groups, results, facts)
    except Exception as error:  # noqa: BLE001 — still report what was measured, then fail
        traceback.print_exc(file=sys.stderr)
        failure = f"{type(error).__name__}: {error}"
    run.update({"duration_s": round(time.perf_counter() - began, 1), "load_average_after": report.load_average(),
                "database": facts.get("database"), "error": failure})
    machine = report.machine(str(facts.get("postgres_version")), facts.get("postgres_settings") or {})
    report.write(report.document(machine, results, run))
    progress(f"done in {run['duration_s']}s; wrote {report.RESULTS_PATH}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
