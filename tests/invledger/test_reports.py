"""`invledger report`: every report the command line prints is the API's, byte for byte in CSV and value for value
in JSON (both doors call `readside.views`), and its table shows the same rows."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from integration import alerts
from ledger import Ledger
from tests.api.conftest import auth
from tests.api.test_reports_api import CSV, get
from tests.api.test_webhooks import open_account, send, trade


def assert_same_as_the_api(client, keys, ledger: Ledger, args, url: str, fmt: str):
    """`invledger report` with `args` prints what GET `url` answers: the same CSV text, the same JSON value."""
    from invledger import cli, reporting

    out = io.StringIO()
    reporting.write_report(ledger, args, cli.emit_table, out)
    headers = {**auth(keys["finance"]), **(CSV if fmt == "csv" else {})}
    answer = client.get(url, headers=headers)
    if fmt == "csv":
        assert out.getvalue() == whole_csv(client, url, headers, answer), url
    else:
        assert json.loads(out.getvalue()) == whole_json(client, url, headers, answer.json()), url
    return answer


def _next_page(url: str, cursor: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}cursor={cursor}"


def whole_csv(client, url: str, headers: dict[str, str], answer) -> str:
    """The API's CSV over all its pages as one document (the CLI prints everything at once): the header once, and
    the trial balance's TOTAL rows, which every page carries, once at the end."""
    text, cursor = answer.text, answer.headers.get("x-next-cursor")
    while cursor:
        kept = [line for line in text.splitlines(keepends=True) if not line.startswith("TOTAL ")]
        answer = client.get(_next_page(url, cursor), headers=headers)
        text, cursor = "".join(kept) + answer.text.split("\n", 1)[1], answer.headers.get("x-next-cursor")
    return text


def whole_json(client, url: str, headers: dict[str, str], body: dict) -> dict:
    """The API's JSON over all its pages: the rows (or lines) of every page, the last page's cursor (None)."""
    listed = "rows" if "rows" in body else "lines"
    while body.get("next_cursor"):
        page = client.get(_next_page(url, body["next_cursor"]), headers=headers).json()
        body = {**page, listed: body[listed] + page[listed]}
    return body


def test_cli_reports_equal_the_api(client, keys, ledger: Ledger, tmp_path) -> None:
    from invledger import cli, reporting

    account_id = open_account(client, keys, "640.00", ledger=ledger)
    send(client, "trade.executed", trade(account_id, pnl="3.21"))
    week_ago = (datetime.now(UTC) - timedelta(days=7)).date().isoformat()
    today = datetime.now(UTC).date().isoformat()
    cases = [
        (["trial-balance", "--as-of", today], f"/api/v1/reports/trial-balance?as_of={today}"),
        # The CLI prints the whole trial balance; the API's pages of 3, joined, are the same document.
        (["trial-balance", "--as-of", today], f"/api/v1/reports/trial-balance?as_of={today}&limit=3"),
        (["balance-sheet"], "/api/v1/reports/balance-sheet?as_of=" + today),
        (["income-statement", "--from", week_ago, "--to", today],
         f"/api/v1/reports/income-statement?from={week_ago}&to={today}"),
        (["balance", account_id, "--as-of", week_ago], f"/api/v1/accounts/{account_id}/balance?as_of={week_ago}"),
        (["statement", account_id, "--from", week_ago, "--to", today],
         f"/api/v1/accounts/{account_id}/statement?from={week_ago}&to={today}"),
        (["performance", account_id, "--from", week_ago, "--to", today],
         f"/api/v1/accounts/{account_id}/performance?from={week_ago}&to={today}"),
    ]
    parser = cli.build_parser()
    for argv, url in cases:
        for fmt in ("csv", "json"):
            args = parser.parse_args(["report", *argv, "--format", fmt])
            if argv[0] == "balance-sheet":  # the API's as_of must be the same instant
                args.as_of = cli.parse_time(today, end_of_day=True)
            assert_same_as_the_api(client, keys, ledger, args, url, fmt)
        table = io.StringIO()
        reporting.write_report(ledger, parser.parse_args(["report", *argv]), cli.emit_table, table)
        assert "----" in table.getvalue(), argv
    performance_table = io.StringIO()
    reporting.write_report(ledger, parser.parse_args(["report", "performance", account_id]), cli.emit_table,
                           performance_table)
    assert "time-weighted return" in performance_table.getvalue().splitlines()[0]

    exported = tmp_path / "books.beancount"
    args = parser.parse_args(["export", "beancount", "--output", str(exported)])
    counts = reporting.export_beancount(ledger, args)
    assert exported.read_text().count("\n  entry_id: ") == counts["entries"]
    assert [p.name for p in tmp_path.iterdir()] == ["books.beancount"]  # no temporary file left


def test_reconciliation_runs_as_json_csv_and_from_the_cli(client, keys, ledger: Ledger, engine: sa.Engine) -> None:
    from integration import outbox, reconcile
    from integration.client import EngineClient
    from integration.notify import sender
    from invledger import cli, reporting
    from simulator import Faults, Simulator

    account_id = open_account(client, keys, "500.00")  # the engine hears of it through the outbox
    with Simulator(seed=1) as sim:
        sim.serve()
        engine_client = EngineClient(sim.api_url, "", timeout_ms=3000, retry_attempts=2, retry_delay_ms=5)
        try:
            outbox.deliver_pending(engine, sender(engine_client), account_ids=[account_id])
            sim.set_faults(Faults(drift={account_id: Decimal("-0.01")}))
            outcome = reconcile.run(ledger, engine_client, run_key=f"reconcile:test:{uuid.uuid4().hex}",
                                    period="2026-01-01", trigger="cli", recheck_delay_ms=0)
        finally:
            engine_client.shutdown()
    run_id = outcome.run.id

    runs = get(client, keys, "/api/v1/reconciliations?limit=1")
    assert runs["items"][0]["run_id"] == run_id and runs["items"][0]["counts"]["break"] >= 1
    first = client.get("/api/v1/reconciliations?limit=1", headers={**auth(keys["finance"]), **CSV})
    [row] = list(csv.DictReader(io.StringIO(first.text)))
    assert (row["run_id"], row["break"], row["status"]) == (str(run_id), str(runs["items"][0]["counts"]["break"]),
                                                            "done")
    assert first.headers.get("X-Next-Cursor") == (str(runs["next_cursor"]) if runs["next_cursor"] else None)

    url = f"/api/v1/reconciliations/{run_id}?result=break&limit=1000"
    body = get(client, keys, url)
    line = next(r for r in body["results"] if r["account_id"] == account_id)
    assert (line["ledger_balance"], line["engine_balance"], line["difference"]) == ("500.00", "499.99", "-0.01")
    rows = get(client, keys, url, as_csv=True)
    assert [r["account_id"] for r in rows] == [r["account_id"] for r in body["results"]]
    assert next(r for r in rows if r["account_id"] == account_id)["difference"] == "-0.01"  # a number, not '-0.01
    assert client.get("/api/v1/reconciliations/999999999", headers=auth(keys["finance"])).status_code == 404

    with engine.begin() as c:  # a message over two lines stays on one table row
        alerts.raise_alert(c, kind="integrity", dedup_key=f"test:{uuid.uuid4().hex}", account_id=account_id,
                           message="first line\nsecond line")
    parser = cli.build_parser()
    for argv, api_url in ((["reconciliations", str(run_id), "--result", "break"], url),
                          (["alerts", "--status", "open"], "/api/v1/alerts?status=open&limit=1000")):
        for fmt in ("json", "csv"):
            answer = assert_same_as_the_api(client, keys, ledger, parser.parse_args(["report", *argv, "--format", fmt]),
                                            api_url, fmt)
            assert answer.json()["next_cursor"] is None if fmt == "json" else "X-Next-Cursor" not in answer.headers
        table = io.StringIO()
        reporting.write_report(ledger, parser.parse_args(["report", *argv]), cli.emit_table, table)
        assert "----" in table.getvalue() and account_id in table.getvalue(), argv
        header, rule, *lines = table.getvalue().splitlines()[1:]
        gaps = [i for i, ch in enumerate(rule) if ch == " "]
        assert all(line[i:i + 1] in ("", " ") for line in [header, *lines] for i in gaps), argv  # aligned columns
    assert "first line second line" in table.getvalue()
    listing = io.StringIO()
    reporting.write_report(ledger, parser.parse_args(["report", "reconciliations", "--format", "json"]), cli.emit_table,
                           listing)
    assert json.loads(listing.getvalue())["items"][0] == runs["items"][0]
    for argv, message in ((["reconciliations", "999999999"], "does not exist"),
                          (["reconciliations", "last-night"], "is not a run id"),
                          (["alerts", "--as-of", "2026-01-01"], "takes no --as-of"),
                          (["performance", account_id, "--as-of", "2026-01-01"], "covers a period"),
                          (["balance", account_id, "--to", "2026-01-01"], "is as of a time")):
        with pytest.raises(reporting.ReportError, match=message):
            reporting.write_report(ledger, parser.parse_args(["report", *argv]), cli.emit_table, io.StringIO())
