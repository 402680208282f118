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

from bench import cpu, history, latency, reference, report, throughput
from bench.report import Result, progress
from bench.server import bench_database, server_facts
from ledger import Ledger
from ledger.db import create_engine

GROUPS = ("pgbench", "post", "asof")
ENGINE_POOL_SIZE = 40
STATEMENT_TIMEOUT_MS = 600_000  # VACUUM of a few million postings must not be cut short


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    reference_s: int
    post_s: float
    writers: tuple[int, ...] = (1, 8, 32)
    accounts: tuple[int, ...] = (10, 10_000)
    processes: bool = True
    history_sizes: tuple[int, ...]
    as_of_calls: int
    statement_calls: int
    settle_budget_s: float  # waiting for a neighbour's load to pass, all runs together


QUICK = Plan(reference_s=4, post_s=4, history_sizes=(1_000, 100_000), as_of_calls=300, statement_calls=100,
             settle_budget_s=40)
FULL = Plan(reference_s=10, post_s=10, history_sizes=(1_000, 100_000, 1_000_000), as_of_calls=500,
            statement_calls=300, settle_budget_s=90)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, histories up to 100k postings")
    parser.add_argument("--only", metavar="NAME", action="append", choices=GROUPS,
                        help=f"run only this group ({', '.join(GROUPS)}); may be repeated")
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
            if "pgbench" in groups:
                progress("pgbench reference")
                found, reference_tps = reference.run(db, engine, duration_s=plan.reference_s,
                                                     clients_set=plan.writers, accounts_set=plan.accounts)
                results.extend(found)
            if "post" in groups:
                progress("posting throughput through Ledger.post")
                results.extend(throughput.run(db.url, engine, duration_s=plan.post_s, writers_set=plan.writers,
                                              accounts_set=plan.accounts, reference_tps=reference_tps,
                                              with_processes=plan.processes))
            if "asof" in groups:
                progress("as-of balance latency: generating histories")
                ledger = Ledger(engine)
                histories = []
                for size in plan.history_sizes:
                    made, result = history.generate(ledger, size)
                    histories.append(made)
                    results.append(result)
                progress(f"VACUUM ANALYZE took {history.vacuum_analyze(engine):.1f}s")
                for seed, made in enumerate(histories):
                    results.extend(latency.measure(ledger, made, calls=plan.as_of_calls,
                                                   statement_calls=plan.statement_calls, seed=seed))
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
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
