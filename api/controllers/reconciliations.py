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

from api.auth import require_role
from api.errors import ApiError
from api.formats import respond
from api.params import AccountIdQuery, IdCursorQuery, LedgerDep, QueryText, SettingsDep
from integration import reconcile
from readside import tabular, views

RUNS_PAGE_DEFAULT = 20
RESULTS_PAGE_DEFAULT = 100


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
        return respond(request, views.reconciliation_runs(ledger.engine, cursor=cursor, limit=limit), tabular.run_rows,
                       headers=tabular.RUN_HEADERS, filename="reconciliations")

    @get("/{run_id:int}", sync_to_thread=True,
         summary="One run with its per-account results (result=matched|break|engine_unavailable|…; JSON or CSV)")
    def detail(self, request: Request, ledger: LedgerDep, run_id: FromPath[int], result: QueryText = None,
               cursor: AccountIdQuery = None, limit: int = Parameter(default=RESULTS_PAGE_DEFAULT, ge=1, le=1000),
               ) -> Response:
        body = views.reconciliation_run(ledger.engine, run_id, result=result, cursor=cursor, limit=limit)
        return respond(request, body, tabular.result_rows,
                       headers=tabular.RESULT_HEADERS, filename=f"reconciliation-{run_id}")
