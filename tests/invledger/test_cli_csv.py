"""The command line's CSV (every `--format csv`, `invledger outbox list` included) is the reports' formula-safe
writer: text a spreadsheet would run — an engine's error message, say — is quoted, numbers are left alone."""

from __future__ import annotations

import io

from invledger.cli import emit_table


def test_cli_csv_quotes_formulas_and_keeps_numbers() -> None:
    out = io.StringIO()
    emit_table([{"id": 1, "last_error": '=HYPERLINK("http://evil.example","click")', "amount": "-12.50"},
                {"id": 2, "last_error": "@SUM(A1)", "amount": "+3"}], "csv", out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "id,last_error,amount"
    assert lines[1] == '1,"\'=HYPERLINK(""http://evil.example"",""click"")",-12.50'
    assert lines[2] == "2,'@SUM(A1),+3"


def test_a_table_shows_nothing_for_a_missing_value() -> None:
    """`invledger reconcile`'s problems: an account the ledger lacks has no ledger balance — an empty cell, as in
    the CSV, not the word None."""
    out = io.StringIO()
    emit_table([{"account_id": "acc-1", "ledger_balance": None, "engine_balance": "5.00"}], "table", out)
    assert "None" not in out.getvalue() and out.getvalue().splitlines()[2].split() == ["acc-1", "5.00"]
