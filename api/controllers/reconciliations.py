"""Reconciliation runs (contract §5): start one now (operator), list them, read one with its per-account results.

A run is done by the jobs (a dramatiq actor), not in the request: `POST` records the run as `queued` and
enqueues it through the `jobs` callable the app was given (`create_app(jobs=…)`; `serve` passes the
broker's). The run's record and its results are read from PostgreSQL, so they survive any broker.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath, Parameter

from api import tabular, views
from api.auth import require_role
from api.errors import ApiError
from api.formats import respond
from api.params import AccountIdQuery, IdCursorQuery, LedgerDep, QueryText, SettingsDep
from integration import reconcile, runs
from ledger import Ledger

RUNS_PAGE_DEFAULT = 20
RESULTS_PAGE_DEFAULT = 100


def _reader(engine: Any, limit: int) -> list[views.ReconciliationRun]:
    """The pages' reader (api.views): the latest runs with their problem lines."""
    out = []
    for run in runs.listing(engine, "reconcile", limit=limit):
        lines = [views.ReconciliationLine(**{k: v for k, v in line.out().items()
                                             if k in views.ReconciliationLine.__struct_fields__})
                 for line in reconcile.problems(engine, run.id, limit=200)]
        out.append(views.ReconciliationRun(run_id=str(run.id), started_at=run.started_at or run.created_at,
                                           finished_at=run.finished_at, status=run.status,
                                           counts=tabular.run_out(run)["counts"], problems=tuple(lines)))
    return out


views.use_reconciliation_reader(_reader)


def runs_page(ledger: Ledger, cursor: int | None, limit: int) -> dict[str, Any]:
    """A page of runs, newest first: the body of GET /reconciliations (and `invledger report reconciliations`)."""
    found = runs.listing(ledger.engine, "reconcile", before=cursor or None, limit=limit)  # 0: the newest first
    return {"items": [tabular.run_out(r) for r in found], "next_cursor": found[-1].id if len(found) == limit else None}


def run_page(ledger: Ledger, run_id: int, result: str | None, cursor: str | None, limit: int) -> dict[str, Any]:
    """A run with a page of its per-account results: the body of GET /reconciliations/{run_id}."""
    run = runs.by_id(ledger.engine, run_id)
    if run is None or run.job != "reconcile":
        raise ApiError(404, "not_found", f"reconciliation run {run_id} does not exist")
    if result is not None and result not in reconcile.RESULTS:
        raise ApiError(422, "invalid", f"result must be one of {', '.join(reconcile.RESULTS)}")
    lines = reconcile.results(ledger.engine, run_id, result=result, after=cursor, limit=limit)
    return {**tabular.run_out(run), "results": [line.out() for line in lines],
            "next_cursor": lines[-1].account_id if len(lines) == limit else None}


class ReconciliationController(Controller):
    path = "/api/v1/reconciliations"
    tags = ["reconciliation"]
    guards = [require_role]

    @post("/", sync_to_thread=True, opt={"role": "operator"}, status_code=202,
          summary="Start a reconciliation run now (done by the jobs; poll GET /reconciliations/{run_id})")
    def start(self, ledger: LedgerDep, settings: SettingsDep, state: State) -> dict[str, Any]:
        enqueue = state.get("jobs")
        if enqueue is None:
            raise ApiError(503, "unavailable", "no job queue in this process: run `invledger reconcile` instead")
        run = reconcile.request_run(ledger.engine, enqueue, tolerance=settings.reconciliation_tolerance, trigger="api")
        return tabular.run_out(run)

    @get("/", sync_to_thread=True, summary="Reconciliation runs, newest first (JSON or CSV)")
    def list(self, request: Request, ledger: LedgerDep, cursor: IdCursorQuery = 0,
             limit: int = Parameter(default=RUNS_PAGE_DEFAULT, ge=1, le=100)) -> Response:
        return respond(request, runs_page(ledger, cursor, limit), tabular.run_rows, headers=tabular.RUN_HEADERS,
                       filename="reconciliations")

    @get("/{run_id:int}", sync_to_thread=True,
         summary="One run with its per-account results (result=matched|break|engine_unavailable|…; JSON or CSV)")
    def detail(self, request: Request, ledger: LedgerDep, run_id: FromPath[int], result: QueryText = None,
               cursor: AccountIdQuery = None, limit: int = Parameter(default=RESULTS_PAGE_DEFAULT, ge=1, le=1000),
               ) -> Response:
        return respond(request, run_page(ledger, run_id, result, cursor, limit), tabular.result_rows,
                       headers=tabular.RESULT_HEADERS, filename=f"reconciliation-{run_id}")
