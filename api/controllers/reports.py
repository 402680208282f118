"""Finance reports (contract §5): trial balance, balance sheet, income statement, investor performance.

JSON by default, CSV with `Accept: text/csv`; role finance. Every figure comes from `readside.views`, read through
`reports_ledger` (the replica's when there is one; the reply then says `replica_lag_ms`).
"""

from __future__ import annotations

from datetime import date

from litestar import Controller, Request, Response, get
from litestar.params import FromPath, Parameter

from api.auth import require_role
from api.formats import respond
from api.params import LedgerAccountQuery, QueryText, ReportsLedgerDep
from api.schemas import PeriodStart, parse_time
from readside import reports, tabular, views

PAGE_LIMIT_DEFAULT = 1000


def parse_day(text: str | None, name: str) -> date | None:
    """A date, or the UTC day of an RFC 3339 time."""
    at = parse_time(text, name)
    return None if at is None else at.date()


class ReportController(Controller):
    path = "/api/v1"
    tags = ["reports"]
    guards = [require_role]

    @get("/reports/trial-balance", sync_to_thread=True,
         summary="Every ledger account's debit or credit balance as of a time, with per-currency totals")
    def trial_balance(self, request: Request, reports_ledger: ReportsLedgerDep, as_of: QueryText = None,
                      cursor: LedgerAccountQuery = None,
                      limit: int = Parameter(default=PAGE_LIMIT_DEFAULT, ge=1, le=reports.PAGE_LIMIT_MAX),
                      ) -> Response:
        body = views.trial_balance(reports_ledger.engine, parse_time(as_of, "as_of", end_of_day=True), after=cursor,
                                   limit=limit)
        return respond(request, body, tabular.trial_balance_rows,
                       headers=tabular.TRIAL_BALANCE_HEADERS, filename="trial-balance")

    @get("/reports/balance-sheet", sync_to_thread=True,
         summary="Assets = liabilities + equity (retained income − expenses), per currency, as of a time")
    def balance_sheet(self, request: Request, reports_ledger: ReportsLedgerDep, as_of: QueryText = None) -> Response:
        body = views.balance_sheet(reports_ledger.engine, parse_time(as_of, "as_of", end_of_day=True))
        return respond(request, body, tabular.balance_sheet_rows,
                       headers=tabular.BALANCE_SHEET_HEADERS, filename="balance-sheet")

    @get("/reports/income-statement", sync_to_thread=True,
         summary="Income and expenses of a period (from/to inclusive), per currency")
    def income_statement(self, request: Request, reports_ledger: ReportsLedgerDep,
                         from_: PeriodStart = None, to: QueryText = None,
                         ) -> Response:
        body = views.income_statement(reports_ledger.engine, parse_time(from_, "from"),
                                      parse_time(to, "to", end_of_day=True))
        return respond(request, body, tabular.income_statement_rows,
                       headers=tabular.INCOME_STATEMENT_HEADERS, filename="income-statement")

    @get("/accounts/{account_id:str}/performance", sync_to_thread=True, tags=["accounts"],
         summary="Daily series (balances, flows, return, trades won/lost), time-weighted return, max drawdown")
    def performance(self, request: Request, reports_ledger: ReportsLedgerDep, account_id: FromPath[str],
                    from_: PeriodStart = None, to: QueryText = None) -> Response:
        body = views.performance(reports_ledger.engine, account_id, parse_day(from_, "from"), parse_day(to, "to"))
        return respond(request, body, tabular.performance_rows,
                       headers=tabular.PERFORMANCE_HEADERS, filename=f"performance-{account_id}")
