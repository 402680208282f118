"""Run records for periodic jobs: at most one run per period does the work, on any number of machines.

Guarantees:
- A run is identified by its `run_key` (e.g. "reconcile:2026-11-24"); `job_run.run_key` is unique, so
  there is one record per period whatever the number of schedulers that enqueue it.
- While a run works it holds a PostgreSQL transaction advisory lock on its key, in a transaction of its own
  on a connection of its own that stays open (and writes nothing) until the run ends. A second worker that
  gets the same message does not wait: it finds the lock taken and skips. If the worker dies, PostgreSQL
  drops the connection, the transaction ends and the lock with it, so the next attempt takes over the record
  (status `running` without a lock holder means "interrupted"). A transaction lock, not a session one: behind
  a pooler in transaction mode (PgBouncer) a session lock would stay on whichever server connection took it,
  and its unlock could run on another; a transaction keeps one server connection until it ends.
- A run that ended `done` is not repeated (unless forced: the work below is idempotent per item anyway);
  `partial` and `failed` runs are taken up again by the next attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec
import sqlalchemy as sa

log = logging.getLogger("integration.runs")
_json = msgspec.json.Encoder(order="deterministic")

Job = Literal["sync_performance", "reconcile", "distribute"]
Trigger = Literal["schedule", "cli", "api"]
FinalStatus = Literal["done", "partial"]


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """A job_run row. `counts` says what the run did (per job: accounts, results, fills, fees…)."""

    id: int
    job: str
    run_key: str
    period: str
    trigger: str
    status: str
    attempts: int
    parameters: dict[str, Any]
    counts: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What `execute` did: `run` is the record after the attempt; `skipped` says why nothing was done."""

    run: Run | None
    skipped: Literal["running", "done"] | None = None


Work = Callable[[Run], tuple[FinalStatus, dict[str, Any]]]

_COLUMNS = ("id, job, run_key, period, trigger, status, attempts, parameters, counts, error, created_at, started_at, "
            "heartbeat_at, finished_at")


def _run(row: Any) -> Run:
    return Run(**{k: row[k] for k in Run.__struct_fields__})


def get(engine: sa.Engine, run_key: str) -> Run | None:
    with engine.connect() as c:
        row = c.execute(sa.text(f"SELECT {_COLUMNS} FROM job_run WHERE run_key = :k"),  # noqa: S608 — module constants
                        {"k": run_key}).mappings().first()
    return _run(row) if row else None


def by_id(engine: sa.Engine, run_id: int) -> Run | None:
    with engine.connect() as c:
        row = c.execute(sa.text(f"SELECT {_COLUMNS} FROM job_run WHERE id = :id"), {"id": run_id}).mappings().first()  # noqa: S608 — module constants
    return _run(row) if row else None


def listing(engine: sa.Engine, job: Job, *, before: int | None = None, limit: int = 50) -> list[Run]:
    """Runs of `job`, newest first, `limit` at a time below the id `before` (a cursor)."""
    with engine.connect() as c:
        rows = c.execute(sa.text(f"""
            SELECT {_COLUMNS} FROM job_run WHERE job = :job AND (CAST(:before AS bigint) IS NULL OR id < :before)
             ORDER BY id DESC LIMIT :limit"""), {"job": job, "before": before, "limit": max(1, min(limit, 1000))})  # noqa: S608 — module constants
        return [_run(row) for row in rows.mappings()]


def enqueue_record(engine: sa.Engine, *, job: Job, run_key: str, period: str, trigger: Trigger,
                   parameters: dict[str, Any] | None = None) -> Run:
    """Create the record of a run that a worker will do (status `queued`); the existing one if any."""
    with engine.begin() as c:
        c.execute(sa.text("""
            INSERT INTO job_run (job, run_key, period, trigger, status, parameters)
            VALUES (:job, :key, :period, :trigger, 'queued', CAST(:parameters AS jsonb))
            ON CONFLICT (run_key) DO NOTHING"""), {
            "job": job, "key": run_key, "period": period, "trigger": trigger,
            "parameters": _json.encode(parameters or {}).decode()})
    run = get(engine, run_key)
    assert run is not None
    return run


def stale_queued(engine: sa.Engine, job: Job, *, trigger: Trigger, older_than: timedelta) -> list[Run]:
    """Runs still `queued` long after they were recorded: their message may have been lost by the broker.
    Sending it again is safe: a run is done once whatever the number of messages (see `execute`)."""
    with engine.connect() as c:
        rows = c.execute(sa.text(f"""
            SELECT {_COLUMNS} FROM job_run
             WHERE job = :job AND trigger = :trigger AND status = 'queued' AND created_at < now() - :age
             ORDER BY id LIMIT 100"""), {"job": job, "trigger": trigger, "age": older_than})  # noqa: S608 — module constants
        return [_run(row) for row in rows.mappings()]


def heartbeat(engine: sa.Engine, run_id: int, counts: dict[str, Any]) -> None:
    """Record progress (readable over the API while the run works)."""
    with engine.begin() as c:
        c.execute(sa.text("UPDATE job_run SET counts = CAST(:counts AS jsonb), heartbeat_at = now() WHERE id = :id"),
                  {"id": run_id, "counts": _json.encode(counts).decode()})


def execute(engine: sa.Engine, *, job: Job, run_key: str, period: str, trigger: Trigger, work: Work,
            parameters: dict[str, Any] | None = None, force: bool = False) -> Outcome:
    """Do `work` once for `run_key` (see the module docstring); exceptions mark the run failed and propagate."""
    lock = engine.connect()
    try:
        held = lock.execute(sa.text("SELECT pg_try_advisory_xact_lock(hashtextextended(:k, 0))"),
                            {"k": "invledger-run:" + run_key}).scalar_one()
        if not held:
            log.info("run already in progress elsewhere", extra={"run_key": run_key})
            return Outcome(run=get(engine, run_key), skipped="running")
        existing = get(engine, run_key)
        if existing is not None and existing.status == "done" and not force:
            return Outcome(run=existing, skipped="done")
        with engine.begin() as c:
            run_id = c.execute(sa.text("""
                INSERT INTO job_run (job, run_key, period, trigger, status, attempts, parameters, started_at,
                                     heartbeat_at)
                VALUES (:job, :key, :period, :trigger, 'running', 1, CAST(:parameters AS jsonb), now(), now())
                ON CONFLICT (run_key) DO UPDATE
                   SET status = 'running', attempts = job_run.attempts + 1, started_at = now(),
                       heartbeat_at = now(), finished_at = NULL, error = NULL
                RETURNING id"""), {
                "job": job, "key": run_key, "period": period, "trigger": trigger,
                "parameters": _json.encode(parameters or {}).decode()}).scalar_one()
        run = by_id(engine, run_id)
        assert run is not None
        try:
            status, counts = work(run)
        except BaseException as error:
            _finish(engine, run_id, "failed", None, f"{type(error).__name__}: {error}"[:2000])
            raise
        _finish(engine, run_id, status, counts, None)
        return Outcome(run=by_id(engine, run_id))
    finally:
        lock.close()  # the transaction rolls back (it wrote nothing) and the lock goes with it


def _finish(engine: sa.Engine, run_id: int, status: str, counts: dict[str, Any] | None, error: str | None) -> None:
    with engine.begin() as c:
        c.execute(sa.text("""
            UPDATE job_run SET status = :status, counts = COALESCE(CAST(:counts AS jsonb), counts), error = :error,
                   finished_at = now(), heartbeat_at = now()
             WHERE id = :id"""), {"id": run_id, "status": status, "error": error,
                                  "counts": None if counts is None else _json.encode(counts).decode()})
