"""Read latency on long histories: as-of balances (core and raw SQL) and a statement page, at random times."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta

import sqlalchemy as sa

from bench.cpu import settle
from bench.history import History
from bench.report import Result, latency_summary_ms, progress
from ledger import Ledger, chart

CHECKS = 50  # as-of balances compared with a full sum of the postings, per history ...
CHECK_BUDGET_S = 15.0  # ... or fewer when a full sum is slow (a million postings: about a second each)
OLDEST_CALLS = 50  # as-of times in the oldest 1% of the history: the most late postings to add
STATEMENT_BUDGET_S = 30.0
STATEMENT_LIMIT = 100

_AS_OF = sa.text("SELECT ledger_balance_as_of(:id, :at)")
_FULL_SUM = sa.text("""
SELECT COALESCE(sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END), 0)
  FROM posting WHERE ledger_account_id = :id AND effective_at <= :at""")


def _random_times(history: History, count: int, rng: random.Random) -> list[datetime]:
    """Uniform over the history, and a day either side of it."""
    low, high = history.start - timedelta(days=1), history.end + timedelta(days=1)
    return [low + (high - low) * rng.random() for _ in range(count)]


def _percentile_results(prefix: str, summary: dict[str, float], params: dict[str, object]) -> list[Result]:
    return [Result(name=f"{prefix}.{key.removesuffix('_ms')}", value=summary[key], unit="ms",
                   params={**params, "calls": summary["calls"], "max_ms": summary["max_ms"]})
            for key in ("p50_ms", "p95_ms", "p99_ms")]


def check(engine: sa.Engine, history: History, rng: random.Random) -> Result:
    """The fast path (last in-order posting + late ones) against a full sum, at random and edge times."""
    times = _random_times(history, CHECKS, rng) + [history.start, history.end,
                                                    history.start - timedelta(microseconds=1)]
    mismatches = []
    checked = 0
    deadline = time.perf_counter() + CHECK_BUDGET_S
    with engine.connect() as connection:
        for at in times[-3:] + times[:-3]:
            if checked >= 5 and time.perf_counter() > deadline:
                break
            checked += 1
            fast = connection.execute(_AS_OF, {"id": history.investors_id, "at": at}).scalar_one()
            full = connection.execute(_FULL_SUM, {"id": history.investors_id, "at": at}).scalar_one()
            if fast != full:
                mismatches.append({"at": at.isoformat(), "as_of": fast, "full_sum": full})
    return Result(name=f"asof.mismatches.n{history.postings}", value=len(mismatches), unit="count", target=0,
                  met=not mismatches, params={"checked": checked, "examples": mismatches[:3],
                                               "against": "sum of all postings effective at or before T"})


def measure(ledger: Ledger, history: History, *, calls: int, statement_calls: int, seed: int) -> list[Result]:
    rng = random.Random(seed)
    engine = ledger.engine
    size = history.postings
    base = {"postings": size, "late": history.late, "times": "uniform over the history, +-1 day",
            "settle": settle()}
    results = [check(engine, history, rng)]

    ledger.balance(history.account_id)  # the first call resolves and caches the ledger account
    samples = []
    for at in _random_times(history, calls, rng):
        began = time.perf_counter()
        ledger.balance(history.account_id, as_of=at)
        samples.append(time.perf_counter() - began)
    core = latency_summary_ms(samples)
    results += _percentile_results(f"asof.balance.n{size}", core, {**base, "call": "Ledger.balance(id, as_of=T)"})

    samples = []
    with engine.connect() as connection:
        for at in _random_times(history, calls, rng):
            began = time.perf_counter()
            connection.execute(_AS_OF, {"id": history.investors_id, "at": at}).scalar_one()
            samples.append(time.perf_counter() - began)
            connection.rollback()
    raw = latency_summary_ms(samples)
    results += _percentile_results(f"asof.sql.n{size}", raw, {**base, "call": "SELECT ledger_balance_as_of(id, T)"})

    samples = []
    oldest = history.start + (history.end - history.start) / 100
    with engine.connect() as connection:
        for _ in range(OLDEST_CALLS):
            at = history.start + (oldest - history.start) * rng.random()
            began = time.perf_counter()
            connection.execute(_AS_OF, {"id": history.investors_id, "at": at}).scalar_one()
            samples.append(time.perf_counter() - began)
            connection.rollback()
    early = latency_summary_ms(samples)
    results.append(Result(
        name=f"asof.sql.n{size}.oldest.p50", value=early["p50_ms"], unit="ms",
        params={**base, **early, "times": "uniform over the oldest 1% of the history",
                "why": "the late postings recorded after the as-of point are all scanned"}))

    samples, short_pages = [], 0
    name = chart.investors(history.account_id)
    deadline = time.perf_counter() + STATEMENT_BUDGET_S
    for at in _random_times(history, statement_calls, rng):
        if time.perf_counter() > deadline:
            break
        began = time.perf_counter()
        page = ledger.statement(name, start=at, limit=STATEMENT_LIMIT)
        samples.append(time.perf_counter() - began)
        short_pages += len(page.lines) < STATEMENT_LIMIT
    page_summary = latency_summary_ms(samples)
    results.append(Result(
        name=f"statement.page.n{size}.p50", value=page_summary["p50_ms"], unit="ms",
        params={**base, "call": f"Ledger.statement(name, start=T, limit={STATEMENT_LIMIT})", **page_summary,
                "pages_shorter_than_limit": short_pages,
                "budget_s": STATEMENT_BUDGET_S}))
    progress(f"as-of n={size}: Ledger.balance p50 {core['p50_ms']} p99 {core['p99_ms']} ms; "
             f"SQL p50 {raw['p50_ms']} p99 {raw['p99_ms']} ms, oldest 1% p50 {early['p50_ms']} ms; "
             f"statement p50 {page_summary['p50_ms']} p99 {page_summary['p99_ms']} ms ({page_summary['calls']} pages)")
    return results


AS_OF_P50_TARGET_MS = 2.0  # issue 6: as-of balance at 1M postings: p50 <= 2 ms ...
AS_OF_GROWTH_MAX = 1.5  # ... and <= 1.5 x the p50 at 1k postings
STATEMENT_P50_TARGET_MS = 10.0  # account statement page (100 lines) at 1M postings


def targets(results: list[Result], sizes: tuple[int, ...]) -> list[Result]:
    """The issue-6 targets, on the largest history measured (1M in full mode) against the smallest."""
    by_name = {r.name: r for r in results}
    small, large = min(sizes), max(sizes)
    out = []
    for call, prefix in (("Ledger.balance", "asof.balance"), ("SQL ledger_balance_as_of", "asof.sql")):
        p50_small, p50_large = by_name[f"{prefix}.n{small}.p50"].value, by_name[f"{prefix}.n{large}.p50"].value
        growth = round(p50_large / p50_small, 2)
        slopes = {f"n{n}": by_name[f"{prefix}.n{n}.p50"].value for n in sizes}
        out.append(Result(name=f"{prefix}.n{large}.p50_target", value=p50_large, unit="ms",
                          target=AS_OF_P50_TARGET_MS, met=p50_large <= AS_OF_P50_TARGET_MS,
                          params={"call": call, "postings": large, "p50_by_size_ms": slopes,
                                  "target_is_for": "1,000,000 postings"}))
        out.append(Result(name=f"{prefix}.growth.n{large}_over_n{small}", value=growth, unit="ratio",
                          target=AS_OF_GROWTH_MAX, met=growth <= AS_OF_GROWTH_MAX,
                          params={"call": call, "p50_by_size_ms": slopes}))
    page = by_name[f"statement.page.n{large}.p50"]
    page.target, page.met = STATEMENT_P50_TARGET_MS, page.value <= STATEMENT_P50_TARGET_MS
    page.params["target_is_for"] = "1,000,000 postings"
    return out
