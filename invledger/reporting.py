"""`invledger report …` and `invledger export beancount`: the API's reports on a terminal or in a file.

JSON is the API's body, CSV is the API's CSV byte for byte (both come from `api.tabular`); a table is
the same rows aligned for a terminal. Paginated reports are read page by page to the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import msgspec

from api import tabular
from api.schemas import statement_out
from ledger import Ledger, beancount, chart, reports

REPORTS = ("trial-balance", "balance-sheet", "income-statement", "balance", "statement", "performance")
NEEDS_ACCOUNT = ("balance", "statement", "performance")
STATEMENT_PAGE = 1000


class ReportError(Exception):
    """A usage problem to print as one line."""


def body_of(ledger: Ledger, args: argparse.Namespace) -> tuple[dict[str, Any], Callable[..., list], list[str]]:
    """The report's JSON body, its row function and its CSV headers."""
    kind = args.report
    if kind in NEEDS_ACCOUNT and not args.account:
        raise ReportError(f"report {kind} needs an ACCOUNT (an investment account id)")
    if kind == "trial-balance":
        page = reports.trial_balance(ledger, args.as_of)
        body = tabular.trial_balance_out(page)
        while page.next_cursor:
            page = reports.trial_balance(ledger, args.as_of, after=page.next_cursor)
            body["rows"] += tabular.trial_balance_out(page)["rows"]
        body["next_cursor"] = None
        return body, tabular.trial_balance_rows, tabular.TRIAL_BALANCE_HEADERS
    if kind == "balance-sheet":
        return (tabular.balance_sheet_out(reports.balance_sheet(ledger, args.as_of)), tabular.balance_sheet_rows,
                tabular.BALANCE_SHEET_HEADERS)
    if kind == "income-statement":
        return (tabular.income_statement_out(reports.income_statement(ledger, args.start, args.end)),
                tabular.income_statement_rows, tabular.INCOME_STATEMENT_HEADERS)
    if kind == "balance":
        at = args.as_of or args.end
        return (tabular.balance_out(args.account, ledger.balance(args.account, as_of=at), at), tabular.balance_rows,
                tabular.BALANCE_HEADERS)
    if kind == "statement":
        name = args.account if ":" in args.account else chart.investors(args.account)
        if ":" not in args.account:
            ledger.account(args.account)
        end = args.end or args.as_of
        page = ledger.statement(name, start=args.start, end=end, limit=STATEMENT_PAGE)
        body = statement_out(page)
        while page.next_cursor:
            page = ledger.statement(name, start=args.start, end=end, cursor=page.next_cursor, limit=STATEMENT_PAGE)
            more = statement_out(page)
            body["lines"] += more["lines"]
            body["closing_balance"] = more["closing_balance"]
        body["next_cursor"] = None
        return body, tabular.statement_rows, tabular.STATEMENT_HEADERS
    if kind == "performance":
        result = reports.performance(ledger, args.account, args.start.date() if args.start else None,
                                     args.end.date() if args.end else None)
        return tabular.performance_out(result), tabular.performance_rows, tabular.PERFORMANCE_HEADERS
    raise ReportError(f"unknown report {kind}")  # pragma: no cover — argparse restricts the choices


def _title(kind: str, body: Mapping[str, Any]) -> list[str]:
    if kind == "trial-balance":
        return [f"Trial balance as of {body['as_of']} — books balance: {'yes' if body['balanced'] else 'NO'}"]
    if kind == "balance-sheet":
        return [f"Balance sheet as of {body['as_of']} — assets = liabilities + equity: "
                f"{'yes' if body['balanced'] else 'NO'}"]
    if kind == "income-statement":
        return [f"Income statement {body['from'] or 'from the start'} to {body['to']}"]
    if kind == "statement":
        return [f"Statement of {body['account']} ({body['currency']}) {body['from'] or 'from the start'} to "
                f"{body['to']}"]
    if kind == "performance":
        return [f"Performance of {body['account_id']} ({body['currency']}) {body['from']} to {body['to']}: "
                f"time-weighted return {body['time_weighted_return']}, max drawdown {body['max_drawdown']}"]
    return []


def write_report(ledger: Ledger, args: argparse.Namespace, emit_table: Callable[..., None],
                 out: TextIO | None = None) -> None:
    out = out or sys.stdout
    body, rows_of, headers = body_of(ledger, args)
    if args.format == "json":
        out.write(msgspec.json.encode(body).decode() + "\n")
    elif args.format == "csv":
        out.write(tabular.to_csv(rows_of(body), headers))
    else:
        for line in _title(args.report, body):
            out.write(line + "\n")
        if args.report == "performance":
            headers = tabular.PERFORMANCE_TABLE_HEADERS
        emit_table([{h: "" if row.get(h) is None else row[h] for h in headers} for row in rows_of(body)], "table",
                   out)


def export_beancount(ledger: Ledger, args: argparse.Namespace) -> dict[str, int]:
    """To --output (written whole, then renamed into place, so a reader never sees half a file) or stdout."""
    def progress(entries: int) -> None:
        print(f"exported {entries} entries …", file=sys.stderr)

    if not args.output or args.output == "-":
        return beancount.export(ledger, sys.stdout, args.as_of, progress)
    target = Path(args.output)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            counts = beancount.export(ledger, out, args.as_of, progress)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return counts
