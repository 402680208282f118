"""Monthly investor statements (PDF with `Accept: application/pdf`, JSON otherwise) and open positions; role finance.

A statement is read as issued (readside.statements): the latest version, or `?version=N`; never recomputed here.
Both read where the reports do (`reports_ledger`: the replica when REPORTS_DATABASE_URL is set, and the reply then
says how far behind it was: `replica_lag_ms` in JSON, `X-Replica-Lag-Ms` on the PDF too).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.params import FromPath, Parameter

from api.auth import require_role
from api.errors import ApiError
from api.formats import as_json, lag_header
from api.params import ReportsLedgerDep
from ledger.statements import Stored, parse_month
from ledger.times import rfc3339
from readside import positions as open_positions
from readside import statements as issued
from readside import views

PDF = "application/pdf"
JSON = "application/json"
MONTH_PATTERN = r"^2[0-9]{3}-(0[1-9]|1[0-2])$"
VERSION_MAX = 2**31 - 1


def wants_pdf(request: Request) -> bool:
    return request.accept.best_match([JSON, PDF], default=JSON) == PDF


def statement_out(stored: Stored, versions: list[dict[str, Any]]) -> dict[str, Any]:
    """The issued document as stored, with its id, digest, whether it was superseded, and every version."""
    return {"id": stored.id, **stored.body, "digest": stored.digest.hex(), "superseded_by": stored.superseded_by,
            "versions": [{"id": v["id"], "version": v["version"], "issued_at": rfc3339(v["issued_at"]),
                          "corrects": v["corrects_id"], "digest": v["digest"]} for v in versions]}


class StatementController(Controller):
    path = "/api/v1/accounts"
    tags = ["accounts"]
    guards = [require_role]

    @get("/{account_id:str}/statements/{month:str}", sync_to_thread=True,
         summary="A monthly investor statement as issued: PDF with Accept: application/pdf, JSON otherwise",
         description="The latest version (or `version`) of the statement issued for the account and month (YYYY-MM) "
                     "after its distribution. A correction of the month is a new version that names the one it "
                     "corrects; issued versions never change. 404 `not_issued` until the month's statement is "
                     "issued (`invledger statements --month`, or the job after the distribution).")
    def statement(self, request: Request, reports_ledger: ReportsLedgerDep, account_id: FromPath[str],
                  month: FromPath[str],
                  version: Annotated[int | None, Parameter(ge=1, le=VERSION_MAX)] = None) -> Response:
        target = parse_month(month)
        pdf = wants_pdf(request)
        stored, versions = ((issued.statement(reports_ledger, account_id, target, version=version), []) if pdf
                            else issued.statement_with_versions(reports_ledger, account_id, target, version=version))
        if stored is None:
            which = f"version {version} of " if version else ""
            raise ApiError(404, "not_issued", f"{which}the statement of {account_id} for {month} is not issued")
        if pdf:
            name = f"statement-{account_id}-{month}-v{stored.version}.pdf"
            return Response(stored.pdf, media_type=PDF, headers={
                "Content-Disposition": f'inline; filename="{name}"', "X-Statement-Digest": stored.digest.hex(),
                "X-Statement-Version": str(stored.version), **lag_header(request)})
        return as_json(request, statement_out(stored, versions))

    @get("/{account_id:str}/positions", sync_to_thread=True,
         summary="Open positions per symbol and side from the engine's open trades, and the true-ups' split")
    def positions(self, request: Request, reports_ledger: ReportsLedgerDep, account_id: FromPath[str],
                  days: Annotated[int, Parameter(ge=1, le=open_positions.DAYS_MAX)] = open_positions.DAYS_DEFAULT,
                  ) -> Response[dict[str, Any]]:
        return as_json(request, views.positions(reports_ledger, account_id, days=days))
