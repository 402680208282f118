"""Signed `trade.executed` webhooks over real HTTP: `invledger serve` in a subprocess, concurrent senders.

The server is the production command (uvicorn, jobs in-process) on the bench database; the senders are
asyncio tasks in this process (hand-written HTTP/1.1 over keep-alive connections), each sending its next
delivery when the previous answer arrives (closed loop). Every body is a distinct closed trade with a
profit or loss, so each 200 is one entry booked and committed; the count of applied webhook_event rows
afterwards must equal the 200s counted here.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import sqlalchemy as sa

from bench.cpu import CpuMeter, cores_used, settle
from bench.history import open_bulk
from bench.report import Result, latency_summary_ms, progress
from bench.server import analyze
from integration import engine_api, signature

SECRET = "bench-webhook-secret"
PATH = "/api/v1/webhooks/ml-engine"
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0
P99_TARGET_MS = 50.0
RATIO_TARGET = 0.4  # issue 6: >= 0.4 x pgbench journal tps at 32 senders
RSS_GROWTH_MAX = 0.20  # issue 6: end RSS <= start RSS + 20%
CLOSED_PORT_URL = "http://127.0.0.1:9/api/v1"  # the outbox must not reach a real engine from a benchmark


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Served:
    """`invledger serve` on the bench database, on a free local port; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, database_url: str, *, pool_size: int = 40, extra_env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.pool_size = pool_size
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"invledger-bench-serve-{self.port}.log"
        env = {**os.environ, "DATABASE_URL": database_url, "ML_ENGINE_WEBHOOK_SECRET": SECRET,
               "ML_ENGINE_URL": CLOSED_PORT_URL, "LEDGER_HOST": "127.0.0.1", "LEDGER_PORT": str(self.port),
               "DB_POOL_SIZE": str(pool_size), "LOG_LEVEL": "WARNING", **(extra_env or {})}
        env.pop("BROKER_URL", None)
        self._log = self.log_path.open("wb")
        script = Path(sys.executable).parent / "invledger"  # the console script, as `make run` starts it
        command = [str(script), "serve"] if script.exists() else [
            sys.executable, "-c", "import sys; from invledger.cli import main; sys.exit(main())", "serve"]
        self.process = subprocess.Popen(command, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"invledger serve exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.base_url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"invledger serve did not answer within {START_TIMEOUT_S}s; see {self.log_path}")

    def rss_mb(self) -> float:
        """Resident memory of the server process and its children, MB."""
        try:
            process = psutil.Process(self.process.pid)
            return round(sum(p.memory_info().rss for p in [process, *process.children(True)]) / 2**20, 1)
        except psutil.NoSuchProcess:
            return float("nan")

    def stop(self, *, keep_log: bool = True) -> None:
        """Stop the server; its log is removed unless asked to keep it (a failed run points at it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)


class Deliveries:
    """Signed, distinct closed-trade deliveries for a set of accounts, made before the timed window."""

    def __init__(self, account_ids: list[str], seed: int) -> None:
        self.account_ids = account_ids
        self.rng = random.Random(seed)
        self.made = 0

    def next(self) -> tuple[bytes, dict[str, str]]:
        self.made += 1
        now = datetime.now(UTC)
        profit = Decimal(self.rng.randint(-50_000, 50_000) or 1).scaleb(-2)
        trade = engine_api.Trade(
            trade_id=f"bench-{uuid.uuid4().hex}", account_id=self.rng.choice(self.account_ids), symbol="BTCUSDT",
            side="buy", quantity=Decimal("0.5"), entry_price=Decimal("42000.00"), status="closed",
            executed_at=now - timedelta(seconds=1), exit_price=Decimal("42100.00"), profit_loss=profit)
        body = engine_api.encode({"event_id": str(uuid.uuid4()), "occurred_at": now, "event_type": "trade.executed",
                                  "data": trade})
        return body, {"content-type": "application/json", "x-ml-signature": signature.sign(SECRET, body)}


class LoadFigures(msgspec.Struct, kw_only=True):
    ok: int = 0
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    latencies_s: list[float] = []
    elapsed_s: float = 0.0

    @property
    def failures(self) -> int:
        """Answers other than 200, and connection errors."""
        return sum(count for status, count in self.statuses.items() if status != "200") + sum(self.errors.values())


class _Connection:
    """One keep-alive HTTP/1.1 connection, written by hand: httpx's async pool costs the sender ~5 ms of CPU per
    request at 32 connections (measured), which on two cores starves the server being measured."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.writer.write(f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n{head}"
                          f"content-length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        if "content-length" not in fields:
            raise RuntimeError(f"answer without content-length: {status_line} {fields}")
        await self.reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return int(status_line.split()[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _load(base_url: str | list[str], deliveries: Deliveries, *, senders: int,
                duration_s: float) -> LoadFigures:
    """`senders` closed-loop senders for `duration_s`; with several servers, sender i sends to server i mod n."""
    figures = LoadFigures()
    addresses = [httpx.URL(url) for url in ([base_url] if isinstance(base_url, str) else base_url)]
    began = time.perf_counter()
    deadline = began + duration_s

    async def sender(i: int) -> None:
        address = addresses[i % len(addresses)]
        connection = _Connection(address.host, address.port)
        try:
            while time.perf_counter() < deadline:
                body, headers = deliveries.next()
                start = time.perf_counter()
                try:
                    status = await asyncio.wait_for(connection.post(PATH, body, headers), REQUEST_TIMEOUT_S)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, RuntimeError) as error:
                    figures.errors[type(error).__name__] = figures.errors.get(type(error).__name__, 0) + 1
                    await connection.close()
                    continue
                ended = time.perf_counter()
                figures.statuses[str(status)] = figures.statuses.get(str(status), 0) + 1
                if status == 200 and ended <= deadline:
                    figures.ok += 1
                    figures.latencies_s.append(ended - start)
        finally:
            await connection.close()

    await asyncio.gather(*(sender(i) for i in range(senders)))
    figures.elapsed_s = time.perf_counter() - began
    return figures


def _applied(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM webhook_event"
                                          " WHERE event_type = 'trade.executed' AND status = 'applied'")).scalar_one()


def run(database_url: str, engine: sa.Engine, *, duration_s: float, senders_set: tuple[int, ...], accounts: int,
        memory_s: float, reference: dict[str, float]) -> list[Result]:
    ids = [f"bench-wh-{i:05d}" for i in range(accounts)]
    open_bulk(engine, ids)
    deliveries = Deliveries(ids, seed=6)
    served = Served(database_url)
    results: list[Result] = []
    journal_tps = reference.get("journal_tps")
    failures = 0
    finished = False
    try:
        asyncio.run(_load(served.base_url, deliveries, senders=4, duration_s=2.0))  # warm: imports, pools, caches
        def measure(servers: list[Served], senders: int) -> tuple[LoadFigures, dict[str, Any]]:
            """One timed load on `servers` (senders split evenly), with CPU, latency and committed rows."""
            nonlocal failures
            analyze(engine)
            quiet = settle()
            meter = CpuMeter(engine, [server.process.pid for server in servers])
            before, applied_before = meter.snapshot(), _applied(engine)
            figures = asyncio.run(_load([server.base_url for server in servers], deliveries, senders=senders,
                                        duration_s=duration_s))
            cores = cores_used(before, meter.snapshot(), figures.elapsed_s)
            committed = _applied(engine) - applied_before
            latency = latency_summary_ms(figures.latencies_s)
            rate = figures.ok / duration_s
            ratio = round(rate / journal_tps, 3) if journal_tps else None
            progress(f"webhooks, {senders} senders, {len(servers)} serve process(es): {rate:.0f}/s booked "
                     f"(committed rows {committed}), p50 {latency['p50_ms']} p99 {latency['p99_ms']} ms, "
                     f"statuses {figures.statuses}, cpu {cores}")
            failures += figures.failures
            if committed < figures.ok:
                results.append(Result(name=f"webhook.trade.s{senders}.servers{len(servers)}.uncommitted",
                                      value=figures.ok - committed, unit="count", target=0, met=False,
                                      params={"what": "200 answers without an applied webhook_event row"}))
            return figures, {
                "senders": senders, "servers": len(servers), "accounts": accounts, "duration_s": duration_s,
                "ok_200": figures.ok, "applied_rows_committed": committed, "statuses": figures.statuses,
                "errors": figures.errors, "latency": latency, "pgbench_journal_tps": journal_tps,
                "ratio_to_pgbench": ratio, "db_pool_size": servers[0].pool_size,
                "client": "asyncio streams, hand-written HTTP/1.1, closed loop, keep-alive", "cpu": cores,
                "settle": quiet}

        for senders in senders_set:
            figures, params = measure([served], senders)
            params["server"] = ("invledger serve: uvicorn + uvloop + httptools, 1 process, jobs in-process; "
                                 "webhooks group-committed (2 committer threads, up to 64 per transaction)")
            rate, ratio, latency = figures.ok / duration_s, params["ratio_to_pgbench"], params["latency"]
            top = senders == max(senders_set)
            results.append(Result(
                name=f"webhook.trade.s{senders}", value=round(rate, 1), unit="webhooks/s",
                target=round(RATIO_TARGET * journal_tps, 1) if top and journal_tps else None,
                met=(ratio >= RATIO_TARGET) if top and ratio is not None else None, params=params))
            results.append(Result(name=f"webhook.trade.s{senders}.p50", value=latency["p50_ms"], unit="ms",
                                  params={"senders": senders}))
            results.append(Result(name=f"webhook.trade.s{senders}.p99", value=latency["p99_ms"], unit="ms",
                                  target=P99_TARGET_MS if top else None,
                                  met=latency["p99_ms"] <= P99_TARGET_MS if top else None,
                                  params={"senders": senders}))
        # Scaling out: a second `serve` process on the same database (each with its own pool and in-process
        # jobs), the senders split between the two; the machine's two cores are shared by both servers,
        # PostgreSQL and the senders.
        second = Served(database_url, pool_size=served.pool_size // 2)
        try:
            asyncio.run(_load(second.base_url, deliveries, senders=4, duration_s=2.0))
            figures, params = measure([served, second], max(senders_set))
            params["server"] = "2 x invledger serve on one database, senders split evenly"
            results.append(Result(name=f"webhook.trade.s{max(senders_set)}.serve2",
                                  value=round(figures.ok / duration_s, 1), unit="webhooks/s", params=params))
        finally:
            second.stop(keep_log=False)
        results.append(Result(name="webhook.trade.failures", value=failures, unit="count", target=0,
                              met=failures == 0, params={"what": "answers other than 200, and connection errors, "
                                                                 "over the runs above"}))
        if memory_s > 0:
            results += _sustained(served, engine, deliveries, senders=max(senders_set), memory_s=memory_s,
                                  journal_tps=journal_tps)
        finished = True
    finally:
        served.stop(keep_log=not finished)
    return results


MEMORY_WINDOWS = 5


def _jobs_running(engine: sa.Engine, start: datetime, end: datetime) -> list[str]:
    """The job runs (reconciliation, sync, distribution) that worked at some time between `start` and `end`: the
    server runs the schedule in-process, and an hourly catch-up on this fresh database reconciles every account."""
    with engine.connect() as connection:
        rows = connection.execute(sa.text("""
            SELECT job, trigger, status, started_at, finished_at FROM job_run
             WHERE started_at <= :end AND coalesce(finished_at, now()) >= :start ORDER BY id"""),
            {"start": start, "end": end}).all()
    return [f"{row.job} ({row.trigger}, {row.status}) {row.started_at:%H:%M:%S}-"
            + (f"{row.finished_at:%H:%M:%S}" if row.finished_at else "") for row in rows]


def _sustained(served: Served, engine: sa.Engine, deliveries: Deliveries, *, senders: int, memory_s: float,
               journal_tps: float | None) -> list[Result]:
    """`memory_s` of load in MEMORY_WINDOWS windows: the server's RSS after each (the target: end <= start + 20%)
    and the rate in each, as the webhook, trade, entry and posting tables grow (how the intake's cost grows),
    with the jobs that ran in the server meanwhile."""
    start_rss = served.rss_mb()
    windows: list[dict[str, Any]] = []
    for n in range(MEMORY_WINDOWS):
        began = datetime.now(UTC)
        figures = asyncio.run(_load(served.base_url, deliveries, senders=senders,
                                    duration_s=memory_s / MEMORY_WINDOWS))
        windows.append({"window": n + 1, "booked": figures.ok, "elapsed_s": round(figures.elapsed_s, 2),
                        "per_s": round(figures.ok / figures.elapsed_s, 1),
                        "p99_ms": latency_summary_ms(figures.latencies_s)["p99_ms"], "rss_mb": served.rss_mb(),
                        "failures": figures.failures,
                        "jobs_running": _jobs_running(engine, began, datetime.now(UTC))})
        progress(f"sustained webhook load, window {n + 1}/{MEMORY_WINDOWS}: {windows[-1]}")
    end_rss = windows[-1]["rss_mb"]
    growth = (end_rss - start_rss) / start_rss
    booked = sum(w["booked"] for w in windows)
    elapsed_s = sum(w["elapsed_s"] for w in windows)
    progress(f"server RSS under {memory_s:.0f}s of webhook load ({booked} booked): "
             f"{start_rss} -> {end_rss} MB ({100 * growth:+.1f}%)")
    params = {"senders": senders, "duration_s": memory_s, "booked": booked, "windows": windows,
              "start": "after the throughput runs above (warm)"}
    first, last = windows[0]["per_s"], windows[-1]["per_s"]
    failures = sum(w["failures"] for w in windows)
    return [
        Result(name="webhook.serve_rss_growth", value=round(100 * growth, 1), unit="%", target=100 * RSS_GROWTH_MAX,
               met=growth <= RSS_GROWTH_MAX, params={**params, "start_rss_mb": start_rss, "end_rss_mb": end_rss,
                                                     "target_is_for": "5 minutes of load"}),
        Result(name=f"webhook.trade.s{senders}.sustained", value=round(booked / elapsed_s, 1), unit="webhooks/s",
               params={**params, "ratio_to_pgbench": round(booked / elapsed_s / journal_tps, 3) if journal_tps
                       else None}),
        Result(name=f"webhook.trade.s{senders}.sustained.last_over_first", value=round(last / first, 3),
               unit="ratio", params={"first_window_per_s": first, "last_window_per_s": last,
                                     "window_s": memory_s / MEMORY_WINDOWS}),
        Result(name="webhook.sustained.failures", value=failures, unit="count", target=0, met=failures == 0,
               params={"what": "answers other than 200, and connection errors, under the sustained load"}),
    ]
