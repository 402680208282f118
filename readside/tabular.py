"""What the read side shows, as JSON bodies and as rows (for CSV and terminal tables): the one place that
shapes them.

The API, the pages and `invledger report` all use these, so a figure is the same string everywhere:
money at the currency's scale, returns with `reports.RETURN_PLACES` decimals, times RFC 3339 UTC.
Nothing here touches HTTP; `api/formats.py` chooses JSON or CSV from the Accept header.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from integration import reconcile
from ledger.holds import Balances, Hold
from ledger.model import Entry, InvestmentAccount, Statement
from ledger.money import Money
from ledger.times import rfc3339
from readside.reports import BalanceSheet, IncomeStatement, Performance, SheetLine, TrialBalancePage

Row = dict[str, Any]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def ratio(value: Decimal | None) -> str | None:
    """A return or ratio as a plain decimal string ("0.00000000", never "0E-8")."""
    return None if value is None else f"{value:f}"


# ----------------------------------------------------------------------------------------------- csv

def _cell(value: object) -> str:
    """A CSV cell; text that a spreadsheet would run as a formula is prefixed with ' (numbers are left).

    A carriage return is written as a line feed: csv.writer quotes a field for the line terminator's "\n" but not
    for a bare "\r", which a spreadsheet reads as the end of the row — a memo "x\r=cmd" started a row of its own
    with a formula. A line feed keeps the line break inside the quoted field.
    """
    if value is None:
        return ""
    text = str(value)
    if text.startswith(_FORMULA_START):
        try:
            Decimal(text)
        except ArithmeticError:
            text = "'" + text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def to_csv(rows: list[Row], headers: list[str] | None = None) -> str:
    """RFC 4180 text with a header line; `headers` for an empty report."""
    out = io.StringIO()
    fields = headers or (list(rows[0]) if rows else [])
    if not fields:
        return ""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    writer.writerows([_cell(row.get(f)) for f in fields] for row in rows)
    return out.getvalue()


# ------------------------------------------------------------------------------------- trial balance

TRIAL_BALANCE_HEADERS = ["account", "type", "currency", "debit", "credit"]


def trial_balance_out(tb: TrialBalancePage) -> dict[str, Any]:
    return {"as_of": rfc3339(tb.as_of), "balanced": tb.balanced,
            "rows": [{"account": r.account, "type": r.type, "currency": r.currency, "debit": str(r.debit),
                      "credit": str(r.credit)} for r in tb.rows],
            "totals": {c: {"debit": str(d), "credit": str(cr)} for c, (d, cr) in sorted(tb.totals.items())},
            "next_cursor": tb.next_cursor}


def trial_balance_rows(body: Mapping[str, Any]) -> list[Row]:
    return list(body["rows"]) + [{"account": f"TOTAL {c}", "type": "", "currency": c, **t}
                           for c, t in body["totals"].items()]


# ------------------------------------------------------------------------------------- balance sheet

BALANCE_SHEET_HEADERS = ["currency", "section", "line", "accounts", "balance"]


def _sheet_lines(lines: tuple[SheetLine, ...]) -> list[Row]:
    return [{"group": line.group, "accounts": line.accounts, "balance": str(line.balance)} for line in lines]


def balance_sheet_out(sheet: BalanceSheet) -> dict[str, Any]:
    return {"as_of": rfc3339(sheet.as_of), "balanced": sheet.balanced, "currencies": [{
        "currency": c.currency, "assets": _sheet_lines(c.assets), "liabilities": _sheet_lines(c.liabilities),
        "equity": _sheet_lines(c.equity), "retained_earnings": str(c.retained_earnings),
        "total_assets": str(c.total_assets), "total_liabilities": str(c.total_liabilities),
        "total_equity": str(c.total_equity),
        "total_liabilities_and_equity": str(c.total_liabilities + c.total_equity), "balanced": c.balanced}
        for c in sheet.currencies]}


def balance_sheet_rows(body: Mapping[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for c in body["currencies"]:
        currency = c["currency"]
        for section in ("assets", "liabilities", "equity"):
            rows += [{"currency": currency, "section": section, "line": line["group"], "accounts": line["accounts"],
                      "balance": line["balance"]} for line in c[section]]
        rows.append({"currency": currency, "section": "equity", "line": "retained earnings (income − expenses)",
                     "accounts": "", "balance": c["retained_earnings"]})
        rows += [{"currency": currency, "section": "total", "line": name.replace("_", " "), "accounts": "",
                  "balance": c[name]}
                 for name in ("total_assets", "total_liabilities", "total_equity", "total_liabilities_and_equity")]
    return rows


# ---------------------------------------------------------------------------------- income statement

INCOME_STATEMENT_HEADERS = ["currency", "section", "account", "amount"]


def income_statement_out(statement: IncomeStatement) -> dict[str, Any]:
    return {"from": rfc3339(statement.start), "to": rfc3339(statement.end), "currencies": [{
        "currency": c.currency,
        "income": [{"account": line.account, "amount": str(line.amount)} for line in c.income],
        "expenses": [{"account": line.account, "amount": str(line.amount)} for line in c.expenses],
        "total_income": str(c.total_income), "total_expenses": str(c.total_expenses),
        "net_income": str(c.net_income)} for c in statement.currencies]}


def income_statement_rows(body: Mapping[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for c in body["currencies"]:
        currency = c["currency"]
        for section in ("income", "expenses"):
            rows += [{"currency": currency, "section": section, **line} for line in c[section]]
        rows += [{"currency": currency, "section": "total", "account": name.replace("_", " "), "amount": c[name]}
                 for name in ("total_income", "total_expenses", "net_income")]
    return rows


# ------------------------------------------------------------------------------------------ balances

BALANCE_HEADERS = ["account_id", "currency", "balance", "as_of"]


def balance_out(account_id: str, money: Money, as_of: datetime | None) -> dict[str, Any]:
    return {"account_id": account_id, "currency": money.currency, "balance": str(money), "as_of": rfc3339(as_of)}


def balance_rows(body: Mapping[str, Any]) -> list[Row]:
    return [dict(body)]


# ------------------------------------------------------------------------------- accounts, journal

def account_out(account: InvestmentAccount, balances: Balances | None = None) -> dict[str, Any]:
    """`balance` is the ledger balance; `available` what may still be withdrawn (balance − open holds,
    ledger/holds.py)."""
    return {"account_id": account.account_id, "product_id": account.product_id, "agent_type": account.agent_type,
            "currency": account.currency, "fee_rate": str(account.fee_rate), "status": account.status,
            "balance": str(account.balance),
            "available": str(balances.available if balances is not None else account.balance),
            "agent_config": account.agent_config,
            "created_at": rfc3339(account.created_at), "updated_at": rfc3339(account.updated_at)}


def hold_out(hold: Hold, balances: Balances | None = None) -> dict[str, Any]:
    """A withdrawal hold; with the account's `balance` (ledger) and `available` (balance − open holds) when given."""
    out: dict[str, Any] = {
        "hold_id": hold.hold_id, "account_id": hold.account_id, "amount": str(hold.amount),
        "currency": hold.amount.currency, "status": hold.status, "reference": hold.reference,
        "placed_at": rfc3339(hold.placed_at), "expires_at": rfc3339(hold.expires_at), "placed_by": hold.placed_by,
        "resolved_at": rfc3339(hold.resolved_at), "resolved_by": hold.resolved_by, "entry_id": hold.entry_id,
        "reason": hold.reason}
    if balances is not None:
        out["balance"], out["available"] = str(balances.balance), str(balances.available)
    return out


def entry_out(entry: Entry) -> dict[str, Any]:
    return {"entry_id": entry.id, "kind": entry.kind, "account_id": entry.investment_account_id,
            "effective_at": rfc3339(entry.effective_at), "recorded_at": rfc3339(entry.recorded_at),
            "memo": entry.memo, "metadata": entry.metadata, "idempotency_key": entry.idempotency_key,
            "reverses_entry_id": entry.reverses_entry_id, "reversed_by_entry_id": entry.reversed_by_entry_id,
            "recorded_by": entry.recorded_by,
            "postings": [{"account": p.account, "side": "debit" if p.side == "D" else "credit",
                          "amount": str(p.amount), "currency": p.amount.currency} for p in entry.postings]}


# ----------------------------------------------------------------------------------------- statement

def statement_out(statement: Statement) -> dict[str, Any]:
    return {"account": statement.account, "currency": statement.currency,
            "from": rfc3339(statement.start) if statement.start else None, "to": rfc3339(statement.end),
            "opening_balance": str(statement.opening_balance),
            "lines": [{"entry_id": line.entry_id, "effective_at": rfc3339(line.effective_at),
                       "recorded_at": rfc3339(line.recorded_at), "kind": line.kind, "memo": line.memo,
                       "debit": str(line.amount) if line.side == "D" else None,
                       "credit": str(line.amount) if line.side == "C" else None,
                       "balance": str(line.balance), "recorded_by": line.recorded_by} for line in statement.lines],
            "closing_balance": str(statement.closing_balance), "next_cursor": statement.next_cursor}


STATEMENT_HEADERS = ["effective_at", "recorded_at", "entry_id", "kind", "memo", "debit", "credit", "balance",
                     "recorded_by"]


def statement_rows(body: Mapping[str, Any]) -> list[Row]:
    """Opening balance first, then the lines with their running balance, then the closing balance."""
    return ([{"effective_at": body["from"], "kind": "opening", "balance": body["opening_balance"]}]
            + list(body["lines"])
            + [{"effective_at": body["to"], "kind": "closing", "balance": body["closing_balance"]}])


# --------------------------------------------------------------------------------------- performance

PERFORMANCE_TABLE_HEADERS = ["date", "opening_balance", "flows", "profit", "closing_balance", "daily_return",
                             "drawdown", "trades_executed", "winning_trades", "losing_trades"]  # for a terminal
PERFORMANCE_HEADERS = ["date", "opening_balance", "flows", "profit", "closing_balance", "daily_return", "index",
                       "drawdown", "trades_executed", "winning_trades", "losing_trades", "trades_source",
                       "engine_closing_balance", "engine_daily_return"]


def performance_out(p: Performance) -> dict[str, Any]:
    return {"account_id": p.account_id, "currency": p.currency, "from": p.start.isoformat(),
            "to": p.end.isoformat(), "opening_balance": str(p.opening_balance), "net_flows": str(p.net_flows),
            "profit": str(p.profit), "closing_balance": str(p.closing_balance),
            "time_weighted_return": ratio(p.time_weighted_return), "max_drawdown": ratio(p.max_drawdown),
            "days": [{"date": d.date.isoformat(), "opening_balance": str(d.opening_balance), "flows": str(d.flows),
                      "profit": str(d.profit), "closing_balance": str(d.closing_balance),
                      "daily_return": ratio(d.daily_return), "index": ratio(d.index), "drawdown": ratio(d.drawdown),
                      "trades_executed": d.trades_executed, "winning_trades": d.winning_trades,
                      "losing_trades": d.losing_trades, "trades_source": d.trades_source,
                      "engine_closing_balance": _text(d.engine_closing_balance),
                      "engine_daily_return": ratio(d.engine_daily_return)} for d in p.days]}


def performance_rows(body: Mapping[str, Any]) -> list[Row]:
    """The daily rows, then a PERIOD row: its daily_return is the time-weighted return and its drawdown
    the maximum drawdown of the period."""
    days = list(body["days"])
    won = [d["winning_trades"] for d in days if d["winning_trades"] is not None]
    lost = [d["losing_trades"] for d in days if d["losing_trades"] is not None]
    executed = [d["trades_executed"] for d in days if d["trades_executed"] is not None]
    return days + [{
        "date": f"PERIOD {body['from']}..{body['to']}", "opening_balance": body["opening_balance"],
        "flows": body["net_flows"], "profit": body["profit"], "closing_balance": body["closing_balance"],
        "daily_return": body["time_weighted_return"], "index": days[-1]["index"] if days else "",
        "drawdown": body["max_drawdown"], "trades_executed": sum(executed) if executed else None,
        "winning_trades": sum(won) if won else None, "losing_trades": sum(lost) if lost else None}]


# -------------------------------------------------------------------------------------------- alerts

ALERT_HEADERS = ["id", "kind", "status", "account_id", "event_key", "message", "created_at", "updated_at",
                 "acknowledged_at", "acknowledged_by", "resolved_at"]


def alert_rows(body: Mapping[str, Any]) -> list[Row]:
    return list(body["items"])


def alert_out(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "kind": row["kind"], "status": row["status"], "account_id": row["account_id"],
            "event_key": row["event_key"], "message": row["message"], "details": row.get("details") or {},
            "created_at": rfc3339(row["created_at"]), "updated_at": rfc3339(row["updated_at"]),
            "acknowledged_at": rfc3339(row["acknowledged_at"]), "acknowledged_by": row["acknowledged_by"],
            "resolved_at": rfc3339(row["resolved_at"])}


def outbox_out(row: Mapping[str, Any]) -> dict[str, Any]:
    times = ("created_at", "next_attempt_at", "delivered_at")
    return {**row, **{k: rfc3339(row[k]) if row[k] else None for k in times}}


# ------------------------------------------------------------------------------------ reconciliation

RECONCILIATION_RESULTS = reconcile.RESULTS  # matched, break, engine_unavailable, unknown_account, status_mismatch
RUN_HEADERS = ["run_id", "run_key", "period", "trigger", "status", "accounts", *RECONCILIATION_RESULTS,
               "alerts_raised", "alerts_resolved", "created_at", "started_at", "finished_at", "error"]
RESULT_HEADERS = ["account_id", "currency", "result", "ledger_balance", "engine_balance", "difference", "in_flight",
                  "ledger_status", "engine_status", "detail"]


def run_out(run: Any) -> dict[str, Any]:
    """A reconciliation run (an `integration.runs.Run`): accounts per result under the contract's names."""
    c = run.counts
    counts = {result: c.get("breaks" if result == "break" else result, 0) for result in RECONCILIATION_RESULTS}
    return {"run_id": run.id, "run_key": run.run_key, "period": run.period, "trigger": run.trigger,
            "status": run.status, "attempts": run.attempts, "tolerance": run.parameters.get("tolerance"),
            "accounts": c.get("accounts", 0), "accounts_total": c.get("total"), "counts": counts,
            "alerts_raised": c.get("alerts_raised", 0), "alerts_resolved": c.get("alerts_resolved", 0),
            "created_at": rfc3339(run.created_at), "started_at": rfc3339(run.started_at),
            "finished_at": rfc3339(run.finished_at), "error": run.error}


def run_rows(body: Mapping[str, Any]) -> list[Row]:
    """One row per run, its counts flattened into columns."""
    return [{**{k: v for k, v in run.items() if k != "counts"}, **run["counts"]} for run in body["items"]]


def result_rows(body: Mapping[str, Any]) -> list[Row]:
    """A run's per-account lines (the run itself is in the JSON body and the file name)."""
    return list(body["results"])
