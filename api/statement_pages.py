"""Pages for the monthly investor statement and the open positions: the API's strings, in HTML (and the PDF).

They read what the API reads (readside.statements, readside.views.positions) and show it as `api.pages` shows the
other reports: same guard, same session, same headers. A month not issued yet shows what it would say now, marked
as a draft (not stored, not signed).
"""

from __future__ import annotations

from datetime import UTC, datetime

from litestar import Controller, Request, Response, get
from litestar.params import FromPath
from litestar.response import Template

from api.errors import ApiError
from api.pages import SECURITY_HEADERS, _page, balance_chart, page_guard
from api.params import LedgerDep, QueryInt
from ledger.statements import month_bounds, month_key, parse_month
from readside import positions as open_positions
from readside import statements as issued
from readside import views


class StatementPagesController(Controller):
    path = "/accounts"
    guards = [page_guard]
    include_in_schema = False

    @get("/{account_id:str}/statements/{month:str}", sync_to_thread=True)
    def statement(self, request: Request, ledger: LedgerDep, account_id: FromPath[str], month: FromPath[str],
                  version: QueryInt = None) -> Template:
        target = parse_month(month)
        account = ledger.account(account_id)
        stored = issued.statement(ledger, account_id, target, version=version)
        body = stored.body if stored is not None else issued.draft(ledger, account_id, target)
        over = month_bounds(target)[1] <= datetime.now(UTC)
        f = body["figures"]
        chart = balance_chart([{"date": d["date"], "closing_balance": d["balance"]} for d in f["daily_balances"]],
                              account.currency)
        return _page(request, "statement.html", title=f"Statement {account_id} {month_key(target)}",
                     account_id=account_id, month=month_key(target), statement=body, figures=f, chart=chart,
                     stored=stored, digest=stored.digest.hex() if stored else None,
                     versions=issued.versions(ledger, account_id, target), over=over)

    @get("/{account_id:str}/statements/{month:str}/pdf", sync_to_thread=True)
    def statement_pdf(self, ledger: LedgerDep, account_id: FromPath[str], month: FromPath[str],
                      version: QueryInt = None) -> Response:
        target = parse_month(month)
        stored = issued.statement(ledger, account_id, target, version=version)
        if stored is None:
            raise ApiError(404, "not_issued", f"the statement of {account_id} for {month} is not issued")
        return Response(stored.pdf, media_type="application/pdf", headers={
            **SECURITY_HEADERS, "Content-Disposition":
                f'inline; filename="statement-{account_id}-{month_key(target)}-v{stored.version}.pdf"'})

    @get("/{account_id:str}/positions", sync_to_thread=True)
    def positions(self, request: Request, ledger: LedgerDep, account_id: FromPath[str],
                  days: QueryInt = None) -> Template:
        report = views.positions(ledger, account_id, days=days or open_positions.DAYS_DEFAULT)
        return _page(request, "positions.html", title=f"Positions {account_id}", account_id=account_id,
                     report=report)
