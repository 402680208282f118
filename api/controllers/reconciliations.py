"""Reconciliation runs (contract §5): start one now (operator), list them, read one with its per-account results.

A run is done by the jobs (a dramatiq actor), not in the request: `POST` records the run as `queued` and
enqueues it through the `jobs` callable the app was given (`create_app(jobs=…)`; `serve` passes the
broker's). The run's record and its results are read from PostgreSQL, so they survive any broker.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.params import Parameter

from api import views
from api.auth import require_role
from api.errors import ApiError
from api.schemas import rfc3339
from integration import reconcile, runs
from invledger.config import Settings
from ledger import Ledger

RUNS_PAGE_DEFAULT = 20
RESULTS_PAGE_DEFAULT = 100


def _counts(run: runs.Run) -> dict[str, int]:
    """Accounts per result (contract names), from the run's counts."""
    c = run.counts
    return {"matched": c.get("matched", 0), "break": c.get("breaks", 0),
            "engine_unavailable": c.get("engine_unavailable", 0), "unknown_account": c.get("unknown_account", 0),
            "status_mismatch": c.get("status_mismatch", 0)}


def run_out(run: runs.Run) -> dict[str, Any]:
    c = run.counts
    return {"run_id": run.id, "run_key": run.run_key, "period": run.period, "trigger": run.trigger,
            "status": run.status, "attempts": run.attempts, "tolerance": run.parameters.get("tolerance"),
            "accounts": c.get("accounts", 0), "accounts_total": c.get("total"), "counts": _counts(run),
            "alerts_raised": c.get("alerts_raised", 0), "alerts_resolved": c.get("alerts_resolved", 0),
            "created_at": rfc3339(run.created_at), "started_at": rfc3339(run.started_at) if run.started_at else None,
            "finished_at": rfc3339(run.finished_at) if run.finished_at else None, "error": run.error}


def _reader(engine: Any, limit: int) -> list[views.ReconciliationRun]:
    """The pages' reader (api.views): the latest runs with their problem lines."""
    out = []
    for run in runs.listing(engine, "reconcile", limit=limit):
        lines = [views.ReconciliationLine(**{k: v for k, v in line.out().items()
                                             if k in views.ReconciliationLine.__struct_fields__})
                 for line in reconcile.problems(engine, run.id, limit=200)]
        out.append(views.ReconciliationRun(run_id=str(run.id), started_at=run.started_at or run.created_at,
                                           finished_at=run.finished_at, status=run.status, counts=_counts(run),
                                           problems=tuple(lines)))
    return out


views.use_reconciliation_reader(_reader)


class ReconciliationController(Controller):
    path = "/api/v1/reconciliations"
    tags = ["reconciliation"]
    guards = [require_role]

    @post("/", sync_to_thread=True, opt={"role": "operator"}, status_code=202,
          summary="Start a reconciliation run now (done by the jobs; poll GET /reconciliations/{run_id})")
    def start(self, ledger: Ledger, settings: Settings, state: State) -> dict[str, Any]:
        enqueue = state.get("jobs")
        if enqueue is None:
            raise ApiError(503, "unavailable", "no job queue in this process: run `invledger reconcile` instead")
        run_key, period = reconcile.on_demand_key()
        run = runs.enqueue_record(ledger.engine, job="reconcile", run_key=run_key, period=period, trigger="api",
                                  parameters={"tolerance": str(settings.reconciliation_tolerance)})
        enqueue("reconcile", period=period, run_key=run_key, trigger="api")
        return run_out(run)

    @get("/", sync_to_thread=True, summary="Reconciliation runs, newest first")
    def list(self, ledger: Ledger, cursor: int | None = None,
             limit: int = Parameter(default=RUNS_PAGE_DEFAULT, ge=1, le=100)) -> dict[str, Any]:
        found = runs.listing(ledger.engine, "reconcile", before=cursor, limit=limit)
        return {"items": [run_out(r) for r in found], "next_cursor": found[-1].id if len(found) == limit else None}

    @get("/{run_id:int}", sync_to_thread=True,
         summary="One run with its per-account results (result=matched|break|engine_unavailable|…)")
    def detail(self, ledger: Ledger, run_id: int, result: str | None = None, cursor: str | None = None,
               limit: int = Parameter(default=RESULTS_PAGE_DEFAULT, ge=1, le=1000)) -> dict[str, Any]:
        run = runs.by_id(ledger.engine, run_id)
        if run is None or run.job != "reconcile":
            raise ApiError(404, "not_found", f"reconciliation run {run_id} does not exist")
        if result is not None and result not in reconcile.RESULTS:
            raise ApiError(422, "invalid", f"result must be one of {', '.join(reconcile.RESULTS)}")
        lines = reconcile.results(ledger.engine, run_id, result=result, after=cursor, limit=limit)
        return {**run_out(run), "results": [line.out() for line in lines],
                "next_cursor": lines[-1].account_id if len(lines) == limit else None}
