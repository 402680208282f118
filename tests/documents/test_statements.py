"""Monthly investor statements on a real database: the figures, the PDF read back with poppler's pdftotext, issued
once and immutable, corrected (never changed) when a back-dated fact changes the month, checked by verify."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from documents import statements as issued
from ledger import AccountSpec, Ledger, Money, rules
from ledger.db import create_engine
from ledger.distribution import distribute_account
from ledger.statements import month_bounds
from ledger.verify import verify
from readside import reports
from readside import statements as reads

PDFTOTEXT = shutil.which("pdftotext")


def last_month() -> date:
    first = datetime.now(UTC).date().replace(day=1)
    return (first - timedelta(days=1)).replace(day=1)


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    assert PDFTOTEXT, "pdftotext is not installed (make install: poppler-utils)"
    path = tmp_path / "statement.pdf"
    path.write_bytes(pdf)
    done = subprocess.run([PDFTOTEXT, "-layout", str(path), "-"], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout


@pytest.fixture
def books(fresh_database: Callable[[], tuple[str, Callable[[], None]]]) -> Iterator[Ledger]:
    url, drop = fresh_database()
    engine = create_engine(url, pool_size=4)
    yield Ledger(engine)
    engine.dispose()
    drop()


def month_of_history(ledger: Ledger, account_id: str, month: date) -> None:
    """A month of an investor's life, every entry back-dated into `month`."""
    start, _ = month_bounds(month)

    def at(day: int, hour: int = 12) -> datetime:
        return start + timedelta(days=day, hours=hour)

    ledger.post(rules.deposit(account_id, Money.from_decimal("1000.00", "USD"), idempotency_key=f"{account_id}:d",
                              effective_at=at(0, 10), memo="wire from the investor"))
    ledger.post(rules.gain_or_loss("trade", account_id, Money.from_decimal("120.25", "USD"),
                                   idempotency_key=f"{account_id}:t1", effective_at=at(2), memo="buy EURUSD closed"))
    ledger.post(rules.gain_or_loss("true_up", account_id, Money.from_decimal("-20.10", "USD"),
                                   idempotency_key=f"{account_id}:u", effective_at=at(4, 23),
                                   memo="true-up to the engine's closing balance"))
    ledger.post(rules.withdrawal(account_id, Money.from_decimal("100.00", "USD"), idempotency_key=f"{account_id}:w",
                                 effective_at=at(9)))
    ledger.post(rules.gain_or_loss("trade", account_id, Money.from_decimal("-30.00", "USD"),
                                   idempotency_key=f"{account_id}:t2", effective_at=at(11), memo="sell BTCUSD closed"))
    ledger.post(rules.gain_or_loss("adjustment", account_id, Money.from_decimal("5.00", "USD"),
                                   idempotency_key=f"{account_id}:a", effective_at=at(14), memo="engine correction"))
    ledger.transact(lambda tx: distribute_account(tx, account_id, month, require_snapshot=False))


def open_plain(ledger: Ledger, account_id: str) -> None:
    ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                    fee_rate=Decimal("0.20")))


def test_statement_figures_pdf_and_ledger_agree(books: Ledger, tmp_path: Path) -> None:
    month = last_month()
    open_plain(books, "inv-1")
    month_of_history(books, "inv-1", month)
    assert reads.statement(books, "inv-1", month) is None
    stored, outcome = issued.issue(books, "inv-1", month)
    assert outcome == "issued" and stored.version == 1
    f = stored.body["figures"]
    assert (f["opening_balance"], f["deposits"], f["withdrawals"], f["realised_trading_result"],
            f["mark_to_market_true_ups"], f["adjustments"]) == ("0.00", "1000.00", "-100.00", "90.25", "-20.10", "5.00")
    # fee = 20 % of (975.15 − 900.00 net contributed) = 15.03; the mark rises to the balance after it.
    assert (f["performance_fee"], f["closing_balance"]) == ("-15.03", "960.12")
    assert (f["high_water_mark_before"], f["high_water_mark_after"]) == ("0.00", "960.12")
    assert Decimal(f["fee_rate"]) == Decimal("0.2")
    assert f["trades_closed"] == 2 and len(f["lines"]) == 7
    month_end = month_bounds(month)[1]
    assert f["lines"][-1]["balance"] == f["closing_balance"] == str(books.balance("inv-1", as_of=month_end))
    # The returns are the performance report's for the same days (one computation, two doors).
    start, end = month_bounds(month)
    perf = reports.performance(books.engine, "inv-1", start.date(), end.date())
    ytd = reports.performance(books.engine, "inv-1", date(month.year, 1, 1), end.date())
    assert f["time_weighted_return_month"] == f"{perf.time_weighted_return:f}"
    assert f["max_drawdown_month"] == f"{perf.max_drawdown:f}"
    assert f["time_weighted_return_year_to_date"] == f"{ytd.time_weighted_return:f}"
    assert [d["balance"] for d in f["daily_balances"]] == [str(d.closing_balance) for d in perf.days]

    text = pdf_text(stored.pdf, tmp_path)
    for figure in ("opening_balance", "deposits", "withdrawals", "realised_trading_result", "mark_to_market_true_ups",
                   "adjustments", "performance_fee", "closing_balance", "high_water_mark_before",
                   "high_water_mark_after", "time_weighted_return_month", "time_weighted_return_year_to_date",
                   "max_drawdown_month"):
        assert f[figure] in text, figure
    for line in f["lines"]:
        assert line["amount"] in text and line["balance"] in text
    assert f"Account inv-1 — {f['month']}" in text and "CORRECTED" not in text

    # Issued once: again is the same statement; the PDF is byte for byte reproducible from its document.
    again, outcome = issued.issue(books, "inv-1", month)
    assert outcome == "unchanged" and again.id == stored.id and again.digest == stored.digest
    from documents import pdf
    assert pdf.render(stored.body) == stored.pdf
    report = verify(books.engine)
    assert report.ok, report.findings


def test_a_back_dated_trade_issues_a_corrected_statement_never_a_changed_one(books: Ledger, tmp_path: Path) -> None:
    month = last_month()
    open_plain(books, "inv-2")
    month_of_history(books, "inv-2", month)
    first, _ = issued.issue(books, "inv-2", month)
    assert issued.corrections_due(books) == []
    late_at = month_bounds(month)[0] + timedelta(days=20)
    books.post(rules.gain_or_loss("trade", "inv-2", Money.from_decimal("10.00", "USD"), idempotency_key="inv-2:late",
                                  effective_at=late_at, memo="a trade the engine reported late"))
    assert issued.corrections_due(books) == [("inv-2", month)]
    counts = issued.issue_corrections(books)
    assert (counts.corrected, counts.issued, counts.failed) == (1, 0, 0)
    second = reads.statement(books, "inv-2", month)
    assert second is not None and second.version == 2
    assert second.body["statement"]["corrects"] == first.id
    assert "realised trading result was 90.25, now 100.25" in second.body["statement"]["correction"]
    assert second.body["figures"]["closing_balance"] == "970.12"  # the fee of the month stays as booked
    text = pdf_text(second.pdf, tmp_path)
    assert "CORRECTED STATEMENT" in text and "replaces version 1" in text and "100.25" in text
    # The first version is kept exactly as issued, and says it was superseded when asked for.
    kept = reads.statement(books, "inv-2", month, version=1)
    assert kept is not None and kept.digest == first.digest and kept.pdf == first.pdf
    assert kept.superseded_by == second.id
    assert [v["version"] for v in reads.versions(books, "inv-2", month)] == [1, 2]
    # The API's JSON answer and the page read the statement and its versions together, as the two reads say.
    for version in (None, 1, 3):
        together = reads.statement_with_versions(books, "inv-2", month, version=version)
        assert together == (reads.statement(books, "inv-2", month, version=version),
                            reads.versions(books, "inv-2", month))
    assert reads.statement_with_versions(books, "inv-2", month)[0].id == second.id
    # `invledger statements --out` writes the latest version of each account, read in one go.
    assert list(reads.latest_of_month(books, month, ["inv-2", "nobody"])) == [reads.statement(books, "inv-2", month)]
    every = {s.account_id: s for s in reads.latest_of_month(books, month)}
    assert every["inv-2"].id == second.id and list(every) == sorted(every)
    assert issued.corrections_due(books) == []
    report = verify(books.engine)
    assert report.ok, report.findings


def test_statements_are_append_only_and_tampering_is_found(books: Ledger) -> None:
    month = last_month()
    open_plain(books, "inv-3")
    month_of_history(books, "inv-3", month)
    stored, _ = issued.issue(books, "inv-3", month)
    for change in ("UPDATE investor_statement SET issued_by = 'me' WHERE id = :id",
                   "DELETE FROM investor_statement WHERE id = :id", "TRUNCATE investor_statement"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only|cannot|refuse"), books.engine.begin() as c:
            c.execute(sa.text(change), {"id": stored.id})
    # A forged row (digest not covering it) is refused on insert.
    with pytest.raises(sa.exc.DBAPIError, match="digest"), books.engine.begin() as c:
        c.execute(sa.text("""
            INSERT INTO investor_statement (account_id, month, version, corrects_id, issued_at, document, pdf,
                                            previous_digest, digest)
            VALUES ('inv-3', :m, 2, :id, now(), '{}', '', :d, :d)"""), {"m": month, "id": stored.id, "d": bytes(32)})

    def as_insider(sql: str, **params: object) -> None:
        with books.engine.begin() as c:
            c.execute(sa.text("SET LOCAL session_replication_role = replica"))
            c.execute(sa.text(sql), params)

    # An insider changes the closing balance and recomputes the digest: verify recomputes the figures from the books.
    forged = stored.body | {"figures": stored.body["figures"] | {"closing_balance": "9960.12"}}
    from ledger.statements import encode
    data = encode(forged)
    digest = hashlib.sha256(bytes(32) + hashlib.sha256(data).digest() + hashlib.sha256(stored.pdf).digest()).digest()
    as_insider("UPDATE investor_statement SET document = :d, digest = :g WHERE id = :id", d=data, g=digest,
               id=stored.id)
    report = verify(books.engine)
    found = [f.detail for f in report.findings if f.check == "statements_match"]
    assert found and "closing balance was 9960.12, now 960.12" in found[0], report.findings
    # The PDF swapped without the digest: found as well.
    as_insider("UPDATE investor_statement SET pdf = :p WHERE id = :id", p=b"%PDF-1.4 forged", id=stored.id)
    found = [f.detail for f in verify(books.engine).findings if f.check == "statements_match"]
    assert any("digest does not cover" in f for f in found)


def test_held_and_available_at_close_and_a_first_format_statement_still_verifies(
        books: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Format 2 shows what open withdrawal holds reserved at the month's end and what was available; a statement
    issued in format 1 (as the first release issued them: FIGURES_FORMAT patched to 1 for its issue, the one
    stand-in here) still verifies, is not "corrected" for the figures it lacks, and its correction is in format 2.
    Holds are recorded, not effective-dated, so the month is this one, issued as if it were over."""
    import ledger.statements as figures
    from ledger import holds

    month = datetime.now(UTC).date().replace(day=1)
    after_it = month_bounds(month)[1] + timedelta(days=1)
    open_plain(books, "inv-4")
    books.deposit("inv-4", "1000.00", idempotency_key="inv-4:d")
    hold = holds.place_hold(books, "inv-4", "250.00", idempotency_key="inv-4:h")
    books.transact(lambda tx: distribute_account(tx, "inv-4", month, require_snapshot=False, now=after_it))
    with monkeypatch.context() as patched:
        patched.setattr(figures, "FIGURES_FORMAT", 1)
        first, _ = issued.issue(books, "inv-4", month, now=after_it)
    assert first.body["statement"]["figures_format"] == 1 and "held_at_close" not in first.body["figures"]
    assert "Available at close" not in pdf_text(first.pdf, tmp_path)
    report = verify(books.engine)
    assert report.ok, report.findings
    again, outcome = issued.issue(books, "inv-4", month, now=after_it)
    assert outcome == "unchanged" and again.id == first.id  # a figure added since is no correction

    books.deposit("inv-4", "50.00", idempotency_key="inv-4:d2")  # the month's books change: a correction
    holds.void_hold(books, hold.hold_id)  # released after the first issue: the second shows none held
    second, outcome = issued.issue(books, "inv-4", month, now=after_it)
    assert outcome == "corrected" and second.body["statement"]["figures_format"] == 2
    f = second.body["figures"]
    assert (f["closing_balance"], f["held_at_close"], f["available_at_close"]) == ("1050.00", "0.00", "1050.00")
    assert second.body["statement"]["correction"] == [
        "deposits was 1000.00, now 1050.00", "closing balance was 1000.00, now 1050.00", "entries added: #"
        + str(second.body["figures"]["lines"][-1]["entry_id"])]
    report = verify(books.engine)
    assert report.ok, report.findings

    holds.place_hold(books, "inv-4", "300.00", idempotency_key="inv-4:h2")
    books.deposit("inv-4", "1.00", idempotency_key="inv-4:d3")
    third, _ = issued.issue(books, "inv-4", month, now=after_it)
    f = third.body["figures"]
    assert (f["closing_balance"], f["held_at_close"], f["available_at_close"]) == ("1051.00", "300.00", "751.00")
    text = pdf_text(third.pdf, tmp_path)
    assert "Held for withdrawals at close" in text and "300.00" in text and "751.00" in text
    draft = reads.draft(books, "inv-4", month)["figures"]
    assert (draft["held_at_close"], draft["available_at_close"]) == ("300.00", "751.00")
    report = verify(books.engine)
    assert report.ok, report.findings
