"""readside.tabular's CSV: text a spreadsheet would run as a formula (a memo, a reference, a message that starts
with =, +, -, @, a tab or a carriage return) is prefixed with ', and numbers — negative ones too — are left alone."""

from __future__ import annotations

import csv
import io

import pytest

from readside import tabular

FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1+1", "\r=1+1", "-", "+",
            "=1", "-cmd|' /C calc'!A0"]


@pytest.mark.parametrize("text", FORMULAS)
def test_a_memo_that_a_spreadsheet_would_run_is_quoted(text: str) -> None:
    body = {"from": None, "to": "2026-01-31T23:59:59.999999Z", "opening_balance": "0.00", "closing_balance": "-5.00",
            "lines": [{"effective_at": "2026-01-02T00:00:00Z", "entry_id": 7, "kind": "adjustment", "memo": text,
                       "debit": "5.00", "credit": None, "balance": "-5.00", "recorded_by": text}]}
    out = tabular.to_csv(tabular.statement_rows(body), tabular.STATEMENT_HEADERS)
    [_, _, line, _] = list(csv.DictReader(io.StringIO(out), fieldnames=tabular.STATEMENT_HEADERS))
    quoted = "'" + text.replace("\r", "\n")  # a carriage return is written as a line feed (inside quotes)
    assert line["memo"] == quoted and line["recorded_by"] == quoted
    assert line["balance"] == "-5.00" and line["credit"] == ""  # a number stays a number, None an empty cell


@pytest.mark.parametrize("number", ["-12.50", "+3", "-0.01", "0.00000000", "-1E+3"])
def test_numbers_are_left_alone(number: str) -> None:
    assert tabular.to_csv([{"amount": number, "reference": "ok"}]) == f"amount,reference\n{number},ok\n"


def test_an_empty_report_is_its_header_line() -> None:
    assert tabular.to_csv([], tabular.TRIAL_BALANCE_HEADERS) == "account,type,currency,debit,credit\n"
    assert tabular.to_csv([]) == ""


@pytest.mark.parametrize("memo", ["paid\r=1+1", "paid\r\n@SUM(A1)", "paid\n-2+3"])
def test_a_line_break_inside_a_memo_stays_inside_its_quoted_cell(memo: str) -> None:
    """A bare carriage return was written unquoted and ended the row for a spreadsheet, its rest a formula."""
    out = tabular.to_csv([{"entry_id": 1, "memo": memo, "balance": "-1.00"}])
    assert "\r" not in out
    [row] = list(csv.DictReader(io.StringIO(out, newline="")))
    assert row == {"entry_id": "1", "memo": memo.replace("\r\n", "\n").replace("\r", "\n"), "balance": "-1.00"}
