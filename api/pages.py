"""Pages for people (contract §5): server-rendered HTML at /, with the API's figures and the API's roles.

Sign-in: the login form takes an API key, checks it, and sets it as the `invledger_key` cookie —
HttpOnly (no script can read it), SameSite=Strict (no other site's page can send it), Secure on HTTPS,
8 hours. Pages without a valid cookie redirect to /login.

Every POST (acknowledge, sign out, sign in) is refused unless it comes from our own origin
(`Sec-Fetch-Site` / `Origin`), and the signed-in ones must also carry a CSRF token: an HMAC of the
session key, so it is bound to the session, needs no server-side state, and cannot be computed without
the HttpOnly cookie. Responses carry a strict Content-Security-Policy (no scripts at all), no framing
and no caching. Pages show the bodies the API returns (`readside.views`), so the figures agree.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from anyio import to_thread
from litestar import Controller, Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import ResponseHeader
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from api.auth import RANK, KeyStore, principal_of
from api.controllers.alerts import acknowledge, principal
from api.controllers.reports import parse_day
from api.errors import ApiError, status_of
from api.params import LedgerDep, QueryInt, QueryText, ReportsLedgerDep, SettingsDep
from api.schemas import PeriodStart, parse_time
from integration import reconcile
from ledger import times
from ledger.errors import LedgerError
from ledger.principal import PRINCIPAL
from ledger.statements import month_bounds, month_key, parse_month
from ledger.times import rfc3339
from readside import positions as open_positions
from readside import statements as issued
from readside import views

HERE = Path(__file__).parent
COOKIE = "invledger_session"  # a server-side session's random id (api.auth.KeyStore.open_session), never the key
SESSION_MAX_AGE_S = 8 * 3600
ACCOUNTS_PAGE_SIZE = 50
TRIAL_BALANCE_PAGE_SIZE = 200
STATEMENT_PAGE_SIZE = 100
ALERTS_PAGE_SIZE = 100
CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 760, 260, 48
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _percent(value: str | Decimal | None, places: int = 4) -> str:
    """A return as a percentage for people ("0.01234567" → "1.2346 %"); the API keeps the fraction."""
    if value is None or value == "":
        return "—"
    return f"{(Decimal(value) * 100).quantize(Decimal(1).scaleb(-places))} %"


def _rfc3339(value: datetime | str | None) -> str:
    return "" if value is None else value if isinstance(value, str) else rfc3339(value)


def _configure(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["percent"] = _percent
    engine.engine.filters["rfc3339"] = _rfc3339


TEMPLATE_CONFIG = TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine,
                                 engine_callback=_configure)


# ------------------------------------------------------------------------------------- sign-in, CSRF

class LoginRequired(Exception):
    """No valid session: send the person to the login form."""


class PageForbidden(Exception):
    def __init__(self, needed: str, role: str) -> None:
        super().__init__(f"this needs the {needed} role; you are signed in as {role}")


def csrf_token(session_id: str) -> str:
    return hmac.new(hashlib.sha256(session_id.encode()).digest(), b"invledger-pages-csrf-v1",
                    hashlib.sha256).hexdigest()


def _same_origin(request: Request) -> bool:
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


async def _check_post(request: Request) -> dict[str, Any]:
    """The form of a signed-in POST, after the origin and CSRF checks."""
    form = await request.form()
    token = str(form.get("csrf_token", ""))
    expected = csrf_token(request.cookies.get(COOKIE, ""))
    # Compared as bytes: compare_digest refuses a non-ASCII str (a TypeError, once a 500, not the 403 it is).
    if not _same_origin(request) or not hmac.compare_digest(token.encode("utf-8", "replace"), expected.encode()):
        raise ApiError(403, "csrf", "this form was not sent from this site's page; reload the page and try again")
    return dict(form)


async def page_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    session_id = connection.cookies.get(COOKIE)
    if not session_id:
        raise LoginRequired()
    store: KeyStore = connection.app.state.key_store
    found = await to_thread.run_sync(store.session, session_id)
    if found is None:
        raise LoginRequired()
    role, prefix = found
    needed = handler.opt.get("role", "finance")
    if RANK[role] < RANK[needed]:
        raise PageForbidden(needed, role)
    state = connection.scope.setdefault("state", {})
    state.update(principal=principal_of(role, prefix), role=role, csrf_token=csrf_token(session_id))
    PRINCIPAL.set(principal_of(role, prefix))


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no //host, no scheme): no open redirect."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> Template:
    state = request.scope.get("state", {})
    return Template(template_name=name, status_code=status_code, headers=SECURITY_HEADERS, context={
        "role": state.get("role"), "principal": state.get("principal"), "csrf_token": state.get("csrf_token"),
        "can_write": RANK.get(state.get("role") or "", 0) >= RANK["operator"], "path": request.url.path,
        "replica_lag_ms": state.get("replica_lag_ms"),  # read on a replica (REPORTS_DATABASE_URL): how far behind
        **context})


def _on_login_required(request: Request, _: LoginRequired) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return Redirect(path=f"/login?next={quote(target, safe='')}", status_code=303, headers=SECURITY_HEADERS)


def _on_forbidden(request: Request, error: PageForbidden) -> Template:
    return _page(request, "error.html", 403, title="Not allowed", message=str(error))


def _on_api_error(request: Request, error: ApiError) -> Template:
    return _page(request, "error.html", error.status, title="Cannot show this", message=error.detail)


def _on_ledger_error(request: Request, error: LedgerError) -> Template:
    return _page(request, "error.html", status_of(error), title="Cannot show this", message=error.detail)


@get("/login", sync_to_thread=False, include_in_schema=False)
def login_form(request: Request, next_: Annotated[str | None, QueryParameter(name="next")] = None) -> Template:
    return _page(request, "login.html", next=_safe_next(next_), error=None)


@post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    form = await request.form()
    key = str(form.get("api_key", "")).strip()
    target = _safe_next(str(form.get("next", "")))
    if not _same_origin(request):
        raise ApiError(403, "csrf", "sign in from this site's login page")
    store: KeyStore = request.app.state.key_store
    session_id = await to_thread.run_sync(store.open_session, key, SESSION_MAX_AGE_S) if key else None
    if session_id is None:
        return _page(request, "login.html", 401, next=target, error="That key is unknown, expired or revoked.")
    response = Redirect(path=target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(key=COOKIE, value=session_id, max_age=SESSION_MAX_AGE_S, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@post("/logout", include_in_schema=False, guards=[page_guard])
async def logout(request: Request) -> Response:
    await _check_post(request)
    store: KeyStore = request.app.state.key_store
    await to_thread.run_sync(store.close_session, request.cookies.get(COOKIE, ""))
    response = Redirect(path="/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(key=COOKIE, path="/")
    return response


# -------------------------------------------------------------------------------------------- chart

def _minor(text: str) -> int:
    """"1250.50" → 125050: a wire amount back to minor units, exact (every amount has the currency's scale)."""
    return int(text.replace(".", "", 1))


def balance_chart(days: list[dict[str, Any]], currency: str) -> dict[str, Any] | None:
    """The closing-balance curve as SVG coordinates, in integers (money never passes through float)."""
    if not days:
        return None
    values = [_minor(d["closing_balance"]) for d in days]
    low, high = min(values), max(values)
    span = max(high - low, 1)
    width, height = CHART_WIDTH - 2 * CHART_PAD, CHART_HEIGHT - 2 * CHART_PAD
    bottom = CHART_PAD + height
    steps = max(len(values) - 1, 1)
    points = [(CHART_PAD + i * width // steps, CHART_PAD + (high - v) * height // span) for i, v in enumerate(values)]
    line = " ".join(f"{x},{y}" for x, y in points)
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "pad": CHART_PAD, "bottom": bottom,
            "right": CHART_PAD + width, "points": line,
            "area": f"{points[0][0]},{bottom} {line} {points[-1][0]},{bottom}",
            "dots": [{"x": x, "y": y, "date": d["date"], "balance": d["closing_balance"]}
                     for (x, y), d in zip(points, days, strict=True)] if len(days) <= 120 else [],
            "high": days[values.index(high)]["closing_balance"], "low": days[values.index(low)]["closing_balance"],
            "first": days[0]["date"], "last": days[-1]["date"], "currency": currency}


# -------------------------------------------------------------------------------------------- pages

class PagesController(Controller):
    path = "/"
    guards = [page_guard]
    include_in_schema = False

    @get("/", sync_to_thread=True)
    def accounts(self, request: Request, ledger: LedgerDep, reports_ledger: ReportsLedgerDep,
                 cursor: QueryText = None) -> Template:
        listed = views.accounts(reports_ledger, cursor=cursor, limit=ACCOUNTS_PAGE_SIZE)
        open_alerts = views.alerts(ledger.engine, status="open", limit=ALERTS_PAGE_SIZE)["items"]
        runs = views.reconciliation_overview(ledger.engine, limit=1)
        return _page(request, "accounts.html", title="Accounts", accounts=listed["items"],
                     next_cursor=listed["next_cursor"], books=views.trial_balance(reports_ledger.engine, limit=1),
                     open_alerts=len(open_alerts), open_alerts_more=len(open_alerts) == ALERTS_PAGE_SIZE,
                     latest_run=(runs or [None])[0])

    @get("/accounts/{account_id:str}", sync_to_thread=True)
    def account(self, request: Request, reports_ledger: ReportsLedgerDep, account_id: FromPath[str],
                from_: PeriodStart = None, to: QueryText = None,
                as_of: QueryText = None, cursor: QueryText = None) -> Template:
        account = views.account(reports_ledger, account_id, with_holds=True)
        at = parse_time(as_of, "as_of", end_of_day=True)
        balance_as_of = views.balance(reports_ledger, account_id, at) if at else None
        perf = views.performance(reports_ledger.engine, account_id, parse_day(from_, "from"), parse_day(to, "to"))
        statement = views.statement(
            reports_ledger, account_id, start=times.start_of_day(date.fromisoformat(perf["from"])),
            end=times.end_of_day(date.fromisoformat(perf["to"])), cursor=cursor, limit=STATEMENT_PAGE_SIZE)
        return _page(request, "account.html", title=f"Account {account_id}", account=account,
                     balance_as_of=balance_as_of, as_of=as_of or "", performance=perf, statement=statement,
                     chart=balance_chart(perf["days"], account["currency"]))

    @get("/trial-balance", sync_to_thread=True)
    def trial_balance(self, request: Request, reports_ledger: ReportsLedgerDep, as_of: QueryText = None,
                      cursor: QueryText = None) -> Template:
        report = views.trial_balance(reports_ledger.engine, parse_time(as_of, "as_of", end_of_day=True), after=cursor,
                                     limit=TRIAL_BALANCE_PAGE_SIZE)
        return _page(request, "trial_balance.html", title="Trial balance", report=report, as_of=as_of or "")

    @get("/balance-sheet", sync_to_thread=True)
    def balance_sheet(self, request: Request, reports_ledger: ReportsLedgerDep, as_of: QueryText = None) -> Template:
        report = views.balance_sheet(reports_ledger.engine, parse_time(as_of, "as_of", end_of_day=True))
        return _page(request, "balance_sheet.html", title="Balance sheet", report=report, as_of=as_of or "")

    @get("/income-statement", sync_to_thread=True)
    def income_statement(self, request: Request, reports_ledger: ReportsLedgerDep,
                         from_: PeriodStart = None,
                         to: QueryText = None) -> Template:
        report = views.income_statement(reports_ledger.engine, parse_time(from_, "from"),
                                        parse_time(to, "to", end_of_day=True))
        return _page(request, "income_statement.html", title="Income statement", report=report, from_=from_ or "",
                     to=to or "")

    @get("/reconciliations", sync_to_thread=True)
    def reconciliations(self, request: Request, ledger: LedgerDep, started: QueryInt = None) -> Template:
        runs = views.reconciliation_overview(ledger.engine)
        return _page(request, "reconciliations.html", title="Reconciliation", runs=runs, started=started,
                     can_run=request.app.state.get("jobs") is not None)

    @post("/reconciliations", opt={"role": "operator"})
    async def run_reconciliation(self, request: Request, ledger: LedgerDep, settings: SettingsDep) -> Response:
        """"Run now": the same run as POST /api/v1/reconciliations, done by the jobs; the page shows it when done."""
        await _check_post(request)
        enqueue = request.app.state.get("jobs")
        if enqueue is None:
            raise ApiError(503, "unavailable", "no job queue in this process: run `invledger reconcile` instead")
        run = await to_thread.run_sync(lambda: reconcile.request_run(
            ledger.engine, enqueue, tolerance=settings.reconciliation_tolerance, trigger="api"))
        return Redirect(path=f"/reconciliations?started={run.id}", status_code=303, headers=SECURITY_HEADERS)

    @get("/alerts", sync_to_thread=True)
    def alerts(self, request: Request, ledger: LedgerDep, status: QueryText = "open", cursor: QueryInt = None,
               acknowledged: QueryInt = None) -> Template:
        status = status if status in views.ALERT_STATUSES else None
        listed = views.alerts(ledger.engine, status=status, cursor=cursor, limit=ALERTS_PAGE_SIZE)
        return _page(request, "alerts.html", title="Alerts", status=status or "all", alerts=listed["items"],
                     acknowledged=acknowledged, next_cursor=listed["next_cursor"])

    @post("/alerts/{alert_id:int}/ack", opt={"role": "operator"})
    async def acknowledge_alert(self, request: Request, ledger: LedgerDep, alert_id: FromPath[int]) -> Response:
        await _check_post(request)
        await to_thread.run_sync(acknowledge, ledger, alert_id, f"{principal(request)} (page)")
        return Redirect(path=f"/alerts?acknowledged={alert_id}", status_code=303, headers=SECURITY_HEADERS)


# ------------------------------------------------------------------- monthly statements and positions

# The monthly investor statement (as issued; a month not issued yet as a marked draft) and its PDF, and the open
# positions: what the API reads (readside.statements, readside.views.positions), in HTML.
class StatementPagesController(Controller):
    path = "/accounts"
    guards = [page_guard]
    include_in_schema = False

    @get("/{account_id:str}/statements/{month:str}", sync_to_thread=True)
    def statement(self, request: Request, reports_ledger: ReportsLedgerDep, account_id: FromPath[str],
                  month: FromPath[str], version: QueryInt = None) -> Template:
        target = parse_month(month)
        account = reports_ledger.account(account_id)
        stored, versions = issued.statement_with_versions(reports_ledger, account_id, target, version=version)
        body = stored.body if stored is not None else issued.draft(reports_ledger, account_id, target)
        over = month_bounds(target)[1] <= datetime.now(UTC)
        f = body["figures"]
        chart = balance_chart([{"date": d["date"], "closing_balance": d["balance"]} for d in f["daily_balances"]],
                              account.currency)
        return _page(request, "statement.html", title=f"Statement {account_id} {month_key(target)}",
                     account_id=account_id, month=month_key(target), statement=body, figures=f, chart=chart,
                     stored=stored, digest=stored.digest.hex() if stored else None,
                     versions=versions, over=over)

    @get("/{account_id:str}/statements/{month:str}/pdf", sync_to_thread=True)
    def statement_pdf(self, reports_ledger: ReportsLedgerDep, account_id: FromPath[str], month: FromPath[str],
                      version: QueryInt = None) -> Response:
        target = parse_month(month)
        stored = issued.statement(reports_ledger, account_id, target, version=version)
        if stored is None:
            raise ApiError(404, "not_issued", f"the statement of {account_id} for {month} is not issued")
        return Response(stored.pdf, media_type="application/pdf", headers={
            **SECURITY_HEADERS, "Content-Disposition":
                f'inline; filename="statement-{account_id}-{month_key(target)}-v{stored.version}.pdf"'})

    @get("/{account_id:str}/positions", sync_to_thread=True)
    def positions(self, request: Request, reports_ledger: ReportsLedgerDep, account_id: FromPath[str],
                  days: QueryInt = None) -> Template:
        report = views.positions(reports_ledger, account_id, days=days or open_positions.DAYS_DEFAULT)
        return _page(request, "positions.html", title=f"Positions {account_id}", account_id=account_id,
                     report=report)



ROUTER = Router(
    path="/", route_handlers=[login_form, login, logout, PagesController, StatementPagesController,
                              create_static_files_router(path="/static", directories=[HERE / "static"],
                                                         include_in_schema=False)],
    exception_handlers={LoginRequired: _on_login_required, PageForbidden: _on_forbidden, ApiError: _on_api_error,
                        LedgerError: _on_ledger_error},
    response_headers=[ResponseHeader(name=k, value=v) for k, v in SECURITY_HEADERS.items()])
