"""`invledger report …` and `invledger export beancount`: the API's reports on a terminal or in a file.

Every report is a read of `readside.views`, the one the API and the pages call: JSON is the API's body, CSV
is the API's CSV byte for byte (`readside.tabular`); a table is the same rows aligned for a terminal.
Paginated reports are read page by page to the end.
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

from ledger import Ledger, beancount
from readside import tabular, views
from readside.errors import ReadError

REPORTS = ("trial-balance", "balance-sheet", "income-statement", "balance", "statement", "performance",
           "positions", "reconciliations", "alerts")
NEEDS_ACCOUNT = ("balance", "statement", "performance", "positions")
POSITION_HEADERS = ["symbol", "side", "quantity", "average_entry_price", "opened_at", "trades"]
AS_OF_ONLY = ("trial-balance", "balance-sheet", "balance")  # contract §3: [--as-of T | --from D --to D]
PERIOD_ONLY = ("income-statement", "performance")  # a statement takes either (--as-of is its --to)
STATEMENT_PAGE = 1000
OPERATIONS_PAGE = 100  # runs and alerts per round trip (the API's largest page of runs)
RESULTS_PAGE = 1000
TABLE_HEADERS = {  # CSV columns -> the narrower set a terminal table shows (the CSV and JSON have them all)
    tuple(tabular.PERFORMANCE_HEADERS): tabular.PERFORMANCE_TABLE_HEADERS,
    tuple(tabular.RUN_HEADERS): ["run_id", "period", "trigger", "status", "accounts", *tabular.RECONCILIATION_RESULTS,
                                 "finished_at"],
    tuple(tabular.RESULT_HEADERS): ["account_id", "result", "ledger_balance", "engine_balance", "difference",
                                    "ledger_status", "engine_status"],
    tuple(tabular.ALERT_HEADERS): ["id", "kind", "status", "account_id", "created_at", "message"],
}


class ReportError(Exception):
    """A usage problem to print as one line."""


def body_of(ledger: Ledger, args: argparse.Namespace) -> tuple[dict[str, Any], Callable[..., list], list[str]]:
    """The report's JSON body, its row function and its CSV headers."""
    kind = args.report
    if kind in NEEDS_ACCOUNT and not args.account:
        raise ReportError(f"report {kind} needs an ACCOUNT (an investment account id)")
    if kind in AS_OF_ONLY and (args.start or args.end):
        raise ReportError(f"report {kind} is as of a time: give --as-of, not --from/--to")
    if kind in PERIOD_ONLY and args.as_of:
        raise ReportError(f"report {kind} covers a period: give --from/--to, not --as-of")
    if kind in ("reconciliations", "alerts", "positions") and (args.as_of or args.start or args.end):
        raise ReportError(f"report {kind} takes no --as-of, --from or --to")
    engine = ledger.engine
    if kind == "trial-balance":
        # One read, not page by page: each page recomputed every account's balance (as of a time, the costly part)
        # for its totals, and a later page read the books at another moment than the totals kept from the first.
        body = views.trial_balance(engine, args.as_of, limit=None)
        return body, tabular.trial_balance_rows, tabular.TRIAL_BALANCE_HEADERS
    if kind == "balance-sheet":
        return views.balance_sheet(engine, args.as_of), tabular.balance_sheet_rows, tabular.BALANCE_SHEET_HEADERS
    if kind == "income-statement":
        return (views.income_statement(engine, args.start, args.end), tabular.income_statement_rows,
                tabular.INCOME_STATEMENT_HEADERS)
    if kind == "balance":
        return views.balance(ledger, args.account, args.as_of), tabular.balance_rows, tabular.BALANCE_HEADERS
    if kind == "statement":  # an investment account's, or any ledger account's by its name (a:b:c)
        read = views.ledger_account_statement if ":" in args.account else views.statement
        end = args.end or args.as_of
        body = _all_pages(lambda cursor: read(ledger, args.account, start=args.start, end=end, cursor=cursor,
                                              limit=STATEMENT_PAGE), "lines", keep_first=True)
        return body, tabular.statement_rows, tabular.STATEMENT_HEADERS
    if kind == "performance":
        body = views.performance(engine, args.account, args.start.date() if args.start else None,
                                 args.end.date() if args.end else None)
        return body, tabular.performance_rows, tabular.PERFORMANCE_HEADERS
    if kind == "positions":
        return views.positions(ledger, args.account), lambda body: body["positions"], POSITION_HEADERS
    if kind == "reconciliations" and args.account:  # one run with every per-account result
        if not args.account.isdigit():
            raise ReportError(f"{args.account!r} is not a run id (the run_id column of `report reconciliations`)")
        body = _all_pages(lambda cursor: views.reconciliation_run(
            engine, int(args.account), result=args.result, cursor=cursor, limit=RESULTS_PAGE), "results")
        return body, tabular.result_rows, tabular.RESULT_HEADERS
    if kind == "reconciliations":
        return (_all_pages(lambda cursor: views.reconciliation_runs(engine, cursor=cursor, limit=OPERATIONS_PAGE),
                           "items"), tabular.run_rows, tabular.RUN_HEADERS)
    if kind == "alerts":
        return (_all_pages(lambda cursor: views.alerts(engine, status=args.status, cursor=cursor,
                                                       limit=OPERATIONS_PAGE), "items"),
                tabular.alert_rows, tabular.ALERT_HEADERS)
    raise ReportError(f"unknown report {kind}")  # pragma: no cover — argparse restricts the choices


def _all_pages(page: Callable[[Any], dict[str, Any]], key: str, *, keep_first: bool = False) -> dict[str, Any]:
    """The body with the list under `key` read to the end (next_cursor then None). The rest of the body is the
    last page's, or with `keep_first` the first page's but for a statement's closing balance."""
    try:
        body = page(None)
        while body["next_cursor"] is not None:
            more = page(body["next_cursor"])
            if keep_first:
                body[key] += more[key]
                body["next_cursor"] = more["next_cursor"]
                if "closing_balance" in more:
                    body["closing_balance"] = more["closing_balance"]
            else:
                body = {**more, key: body[key] + more[key]}
    except ReadError as error:
        raise ReportError(error.detail) from None
    return body


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
    if kind == "positions":
        split = [f"  {d['date']}: true-up {d['true_up']} = unrealised {d['unrealised']} + carried {d['carried']} "
                 f"(engine result {d['engine_result']}, realised {d['realised']})" for d in body["true_ups"]]
        return [f"Open positions of {body['account_id']} ({body['currency']}) as of {body['as_of']}: "
                f"{body['open_trades']} open trades", *(["True-ups of the last days with an engine snapshot:", *split]
                                                        if split else [])]
    if kind == "reconciliations" and "results" in body:
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in body["counts"].items())
        return [f"Reconciliation run {body['run_id']} ({body['run_key']}), {body['status']}, finished "
                f"{body['finished_at'] or '-'}: {counts}"]
    if kind == "reconciliations":
        return ["Reconciliation runs, newest first (counts are accounts per result)"]
    if kind == "alerts":
        return [f"Alerts, newest first: {len(body['items'])}"]
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
        headers = TABLE_HEADERS.get(tuple(headers), headers)
        emit_table([{h: _one_line(row.get(h)) for h in headers} for row in rows_of(body)], "table", out)


def _one_line(value: object) -> str:
    """A table cell: a message's line breaks and tabs would break the columns."""
    return "" if value is None else " ".join(str(value).split())


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
