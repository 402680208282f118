"""Reconciliation time and peak memory for N accounts against the simulator with 20 ms of engine latency.

The simulator runs in a process of its own (so it neither shares the GIL with the reconciliation nor adds to
its memory), answering every `status` call after `latency_ms`. The ledger's accounts and the engine's are
created first; then a fresh process (multiprocessing "spawn") does one reconciliation run, as a worker
would, and reports its wall time and its peak RSS — the process's own, not this harness's.
"""

from __future__ import annotations

import multiprocessing
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import IO

import sqlalchemy as sa

from bench.report import Result, progress
from bench.server import bench_database
from bench.throughput import open_accounts
from integration import reconcile
from integration.client import EngineClient
from integration.engine_api import CreateAccountRequest
from ledger import Ledger
from ledger.db import create_engine

LATENCY_MS = 20
TARGET_S_PER_10K = 30.0
TARGET_RSS_MB = 300.0
ENGINE_SETUP_THREADS = 16
SIMULATOR_START_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_MS = 10_000


def _start_simulator(latency_ms: int, log: IO[str]) -> tuple[subprocess.Popen[bytes], str]:
    """`invledger simulate-engine` on a free port, with `latency_ms` on every status call; (process, API URL).
    Its log goes to the file `log` (a pipe nobody reads would fill up and stall it)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", "0", "--no-webhooks", "--api-key", "",
         "--trades-per-day", "0", "--slow-route", "status", "--slow-s", str(latency_ms / 1000)],
        stderr=log, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + SIMULATOR_START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r"serving (http://\S+/api/v1)", Path(log.name).read_text())
        if found:
            return process, found.group(1)
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the simulator did not start: " + Path(log.name).read_text()[-500:])


def _prepare(ledger: Ledger, api_url: str, accounts: int) -> None:
    """N ledger accounts with 1,000.00 each, known to the engine with the same capital (outbox settled)."""
    prefix = f"rec-{uuid.uuid4().hex[:6]}"
    ids = [f"{prefix}-{i:05d}" for i in range(accounts)]
    open_accounts(ledger, ids)
    progress(f"reconciliation: {accounts} ledger accounts open; creating them in the engine")
    with ledger.engine.begin() as c:  # the engine is told below, directly: nothing is in flight
        c.execute(sa.text("UPDATE outbox_event SET status = 'delivered', delivered_at = now() "
                          "WHERE status <> 'delivered' AND account_id LIKE :p"), {"p": prefix + "-%"})
    with EngineClient(api_url, "", timeout_ms=CLIENT_TIMEOUT_MS) as client, ThreadPoolExecutor(
            ENGINE_SETUP_THREADS) as pool:
        list(pool.map(lambda account_id: client.create_account(CreateAccountRequest(
            account_id=account_id, product_id="bench", agent_type="bench", initial_capital=Decimal("1000.00")),
            idempotency_key=f"bench-{account_id}"), ids))


def _measure(url: str, api_url: str, out: multiprocessing.Queue) -> None:
    """In a fresh process: one reconciliation run over every open account; (seconds, peak RSS in KiB, CPU
    seconds, counts)."""
    engine = create_engine(url, pool_size=8)
    client = EngineClient(api_url, "", timeout_ms=CLIENT_TIMEOUT_MS, retry_attempts=2, retry_delay_ms=50)
    started = time.perf_counter()
    outcome = reconcile.run(Ledger(engine), client, run_key=f"bench:{uuid.uuid4().hex}", period="bench",
                            trigger="cli")
    elapsed_s = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((elapsed_s, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, outcome.run.counts))
    client.shutdown()
    engine.dispose()


def run(url: str, engine: sa.Engine, *, accounts: int, latency_ms: int = LATENCY_MS) -> list[Result]:
    """Measure one reconciliation of `accounts` accounts (a ledger with no other open accounts)."""
    log = tempfile.NamedTemporaryFile("w", prefix="invledger-bench-simulator-", suffix=".log")  # noqa: SIM115
    simulator, api_url = _start_simulator(latency_ms, log)
    try:
        progress(f"reconciliation: opening {accounts} accounts in the ledger and the engine")
        _prepare(Ledger(engine), api_url, accounts)
        progress(f"reconciliation: one run over {accounts} accounts, {latency_ms} ms engine latency")
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        child = context.Process(target=_measure, args=(url, api_url, out))
        child.start()
        elapsed_s, peak_rss_kib, cpu_s, counts = out.get(timeout=3600)
        child.join()
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
        log.close()
    if counts.get("matched") != counts.get("accounts"):
        raise RuntimeError(f"the benchmark's reconciliation did not match every account: {counts}")
    target_s = TARGET_S_PER_10K * accounts / 10_000
    peak_rss_mb = peak_rss_kib / 1024
    params = {"accounts": accounts, "engine_latency_ms": latency_ms, "concurrency": reconcile.CONCURRENCY_MAX,
              "chunk_size": reconcile.CHUNK_SIZE, "accounts_per_s": round(accounts / elapsed_s, 1),
              "reconciling_process_cpu_s": round(cpu_s, 1)}
    return [Result(name=f"reconcile.time.a{accounts}", value=round(elapsed_s, 2), unit="s", target=target_s,
                   met=elapsed_s <= target_s, params=params),
            Result(name=f"reconcile.peak_rss.a{accounts}", value=round(peak_rss_mb, 1), unit="MB", target=TARGET_RSS_MB,
                   met=peak_rss_mb <= TARGET_RSS_MB, params=params)]


def measure(accounts: int, latency_ms: int = LATENCY_MS) -> list[Result]:
    """`run` on a database of its own (reconciliation covers every open account, so none of the other
    benchmarks' accounts may be there)."""
    with bench_database() as db:
        engine = create_engine(db.url, pool_size=ENGINE_SETUP_THREADS)
        try:
            return run(db.url, engine, accounts=accounts, latency_ms=latency_ms)
        finally:
            engine.dispose()


def growth(results: list[Result], sizes: tuple[int, ...]) -> list[Result]:
    """Time and peak RSS of the largest run over the smallest's (nothing when only one size ran)."""
    if len(sizes) < 2:
        return []
    by_name = {r.name: r for r in results}
    small, large = min(sizes), max(sizes)
    out = []
    for what in ("time", "peak_rss"):
        before, after = by_name[f"reconcile.{what}.a{small}"], by_name[f"reconcile.{what}.a{large}"]
        out.append(Result(name=f"reconcile.{what}.growth.a{large}_over_a{small}",
                          value=round(after.value / before.value, 2), unit="ratio",
                          params={"by_accounts": {str(n): by_name[f"reconcile.{what}.a{n}"].value for n in sizes},
                                  "unit": before.unit, "accounts_ratio": large / small}))
    return out
