"""The figures of a monthly investor statement: one pure function over the account's postings, and their reading.

For investment account A and UTC month M, from the postings of `liabilities:investors:A` (what the platform owes
A: every figure is a change of that balance, + to the investor, − from):
- opening balance: at the end of M−1; closing balance: at the end of M (after M's performance fee, which is
  effective at M's last instant);
- deposits, withdrawals: entries of those kinds effective in M (transfers by their sign; a reversal counts under
  the kind it reverses, so a reversed deposit lowers `deposits`);
- realised trading result: the closed trades (kind `trade`); mark-to-market true-ups: the engine's daily true-ups
  and the late-fact offsets (kind `true_up`); adjustments: balance updates (kind `adjustment`); performance fee:
  kind `fee`. opening + all of them = closing, always (checked).
- the high-water mark before and after M's fee and the fee rate: M's `distribution` row (ledger/distribution.py);
- time-weighted return of M and of the year to date (from 1 January), max drawdown within M: exactly as the
  performance report computes them (readside/reports.py: daily returns on the ledger's own end-of-day balances,
  flows as `ledger.policies.flows` says — taken to arrive at the start of the day), so a
  statement's returns equal `GET /accounts/A/performance` for the same days;
- the balance at each day's end of M (the chart) and M's lines with their running balance, in effective order;
- held at close: what A's open withdrawal holds (ledger.holds) reserved at M's end — holds are not effective-dated,
  so those placed and not yet resolved by then as recorded — and available at close: closing balance − held.

Figures formats. A stored statement names the format of its figures (`figures_format` in its issue; absent: 1),
and its figures are recomputed in that format by `verify` and compared in it before a correction is issued: a
figure added later (format 2 added held and available at close) never makes an issued statement unverifiable, nor
corrects one whose books did not change. New statements are issued in FIGURES_FORMAT.

`read_inputs(c, A, M, recorded_by=T)` reads only what was recorded at or before T: the books as they stood when
a statement was issued at T. `invledger verify` recomputes each stored statement's figures that way
(`statements_match`); the posting chains and anchors protect those books.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import sqlalchemy as sa

from ledger import holds
from ledger.chart import investors_sql
from ledger.errors import InvalidEntry, UnknownAccount
from ledger.money import Money
from ledger.policies.flows import is_flow
from ledger.returns import rounded
from ledger.times import ONE_MICROSECOND, rfc3339

CHAIN_START = bytes(32)
FIGURES_FORMAT = 2  # 1: the first release's figures; 2: + held_at_close, available_at_close
SUMMARY_KINDS = ("deposit", "withdrawal", "trade", "true_up", "adjustment", "fee")


class StatementPosting(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One posting on the investor's account: `amount_minor` signed (+ to the investor). `reversed_kind` is the
    kind of the entry a reversal reverses (None for anything else)."""

    effective_at: datetime
    seq: int
    entry_id: int
    kind: str
    reversed_kind: str | None
    memo: str
    amount_minor: int

    @property
    def effective_kind(self) -> str:
        """The kind it counts as on a statement: a reversal counts as what it reverses."""
        return self.reversed_kind or self.kind


class DistributionFigures(msgspec.Struct, frozen=True, kw_only=True):
    rate: Decimal
    opening_hwm_minor: int
    adjusted_hwm_minor: int
    computed_fee_minor: int
    fee_minor: int
    new_hwm_minor: int


class StatementInputs(msgspec.Struct, frozen=True, kw_only=True):
    """What the figures depend on: A's balance before 1 January of M's year and its postings from then to M's end,
    in effective order; M's distribution if there is one."""

    account_id: str
    currency: str
    month: date
    year_opening_minor: int
    postings: tuple[StatementPosting, ...]
    distribution: DistributionFigures | None
    held_at_close_minor: int = 0  # A's open holds at M's end (as recorded)


class StatementLine(msgspec.Struct, frozen=True, kw_only=True):
    effective_at: datetime
    entry_id: int
    kind: str
    memo: str
    amount: Money  # signed: + to the investor
    balance: Money  # the running balance after this line


class DayBalance(msgspec.Struct, frozen=True, kw_only=True):
    date: date
    balance: Money


class StatementFigures(msgspec.Struct, frozen=True, kw_only=True):
    """A statement's figures (see the module docstring). Money signed as changes of the investor's balance."""

    account_id: str
    currency: str
    month: str  # YYYY-MM
    period_start: date
    period_end: date
    opening_balance: Money
    deposits: Money
    withdrawals: Money
    realised_trading_result: Money
    mark_to_market_true_ups: Money
    adjustments: Money
    performance_fee: Money
    closing_balance: Money
    held_at_close: Money  # open withdrawal holds at M's end (format 2)
    available_at_close: Money  # closing balance − held at close (format 2)
    fee_rate: Decimal | None  # None: M not distributed (no fee computed yet)
    high_water_mark_before: Money | None
    high_water_mark_after: Money | None
    time_weighted_return_month: Decimal
    time_weighted_return_year_to_date: Decimal
    max_drawdown_month: Decimal
    trades_closed: int
    daily_balances: tuple[DayBalance, ...]
    lines: tuple[StatementLine, ...]


# ------------------------------------------------------------------------------------------ periods

def month_bounds(month: date) -> tuple[datetime, datetime]:
    """The first and the last instant (inclusive) of the UTC month."""
    start = datetime.combine(month.replace(day=1), time.min, UTC)
    following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    return start, datetime.combine(following, time.min, UTC) - ONE_MICROSECOND


def parse_month(text: str) -> date:
    """`YYYY-MM` → the first day of that month; anything else is refused."""
    if len(text) != 7 or text[4] != "-" or not (text[:4].isdigit() and text[5:].isdigit()):
        raise InvalidEntry(f"month {text!r} is not YYYY-MM")
    try:
        month = date(int(text[:4]), int(text[5:]), 1)
    except ValueError:
        raise InvalidEntry(f"month {text!r} is not YYYY-MM") from None
    if month.year < 2000:
        raise InvalidEntry(f"month {text!r} is before 2000")
    return month


def month_key(month: date) -> str:
    return f"{month.year:04d}-{month.month:02d}"


# ------------------------------------------------------------------------------------------ pure part

def compute(inputs: StatementInputs) -> StatementFigures:
    """The statement's figures from its inputs. Pure."""
    currency = inputs.currency

    def money(minor: int) -> Money:
        return Money(minor=minor, currency=currency)

    start, end = month_bounds(inputs.month)
    year_start = date(inputs.month.year, 1, 1)
    days = [year_start + timedelta(days=i) for i in range((end.date() - year_start).days + 1)]
    balance = inputs.year_opening_minor
    postings = iter(inputs.postings)
    pending = next(postings, None)
    ytd_index = Decimal(1)
    month_index = peak = Decimal(1)
    max_drawdown = Decimal(0)
    opening = None
    sums = dict.fromkeys(SUMMARY_KINDS, 0)
    trades_closed = 0
    lines: list[StatementLine] = []
    daily: list[DayBalance] = []
    for day in days:
        in_month = day >= start.date()
        if in_month and opening is None:
            opening = balance
        day_opening, flow = balance, 0
        while pending is not None and pending.effective_at.astimezone(UTC).date() <= day:
            if pending.effective_at.astimezone(UTC).date() < year_start:
                raise InvalidEntry("a statement's postings start on 1 January of its year")
            balance += pending.amount_minor
            if is_flow(pending.kind, pending.reversed_kind):  # type: ignore[arg-type]
                flow += pending.amount_minor
            if in_month:
                kind = pending.effective_kind
                if kind == "transfer":
                    kind = "deposit" if pending.amount_minor > 0 else "withdrawal"
                if kind not in sums:
                    raise InvalidEntry(f"entry {pending.entry_id} of kind {pending.kind} has no place on a statement")
                sums[kind] += pending.amount_minor
                trades_closed += pending.kind == "trade"
                lines.append(StatementLine(effective_at=pending.effective_at, entry_id=pending.entry_id,
                                           kind=pending.kind, memo=pending.memo, amount=money(pending.amount_minor),
                                           balance=money(balance)))
            pending = next(postings, None)
        # The daily return as readside.reports.performance computes it, operation for operation.
        profit, capital = balance - day_opening - flow, day_opening + flow
        daily_return = Decimal(profit) / Decimal(capital) if capital > 0 else None
        ytd_index *= 1 + (daily_return or 0)
        if in_month:
            month_index *= 1 + (daily_return or 0)
            peak = max(peak, month_index)
            max_drawdown = max(max_drawdown, (peak - month_index) / peak)
            daily.append(DayBalance(date=day, balance=money(balance)))
    if pending is not None:
        raise InvalidEntry("a statement's postings end with its month")
    assert opening is not None
    if opening + sum(sums.values()) != balance:  # the identity a reader checks by hand
        raise AssertionError("statement figures do not add up")
    d = inputs.distribution
    return StatementFigures(
        account_id=inputs.account_id, currency=currency, month=month_key(inputs.month), period_start=start.date(),
        period_end=end.date(), opening_balance=money(opening), deposits=money(sums["deposit"]),
        withdrawals=money(sums["withdrawal"]), realised_trading_result=money(sums["trade"]),
        mark_to_market_true_ups=money(sums["true_up"]), adjustments=money(sums["adjustment"]),
        performance_fee=money(sums["fee"]), closing_balance=money(balance),
        held_at_close=money(inputs.held_at_close_minor), available_at_close=money(balance - inputs.held_at_close_minor),
        fee_rate=d.rate if d else None,
        high_water_mark_before=money(d.opening_hwm_minor) if d else None,
        high_water_mark_after=money(d.new_hwm_minor) if d else None,
        time_weighted_return_month=rounded(month_index - 1), time_weighted_return_year_to_date=rounded(ytd_index - 1),
        max_drawdown_month=rounded(max_drawdown), trades_closed=trades_closed, daily_balances=tuple(daily),
        lines=tuple(lines))


SUMMARY_FIELDS = ("opening_balance", "deposits", "withdrawals", "realised_trading_result", "mark_to_market_true_ups",
                  "adjustments", "performance_fee", "closing_balance", "held_at_close", "available_at_close",
                  "fee_rate", "high_water_mark_before", "high_water_mark_after", "time_weighted_return_month",
                  "time_weighted_return_year_to_date", "max_drawdown_month", "trades_closed")
ADDED_IN_FORMAT = {"held_at_close": 2, "available_at_close": 2}  # a field not listed is in every format


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return f"{value:f}"
    return str(value)


def figures_out(f: StatementFigures, figures_format: int | None = None) -> dict[str, Any]:
    """The figures as JSON in `figures_format` (the module docstring): money at the currency's scale, returns as
    decimal strings, times RFC 3339 UTC — the API's body, the stored document and the PDF all show these strings."""
    body: dict[str, Any] = {"account_id": f.account_id, "currency": f.currency, "month": f.month,
                            "period_start": f.period_start.isoformat(), "period_end": f.period_end.isoformat()}
    body.update({field: _text(getattr(f, field)) for field in SUMMARY_FIELDS
                 if field != "trades_closed" and ADDED_IN_FORMAT.get(field, 1) <= (figures_format or FIGURES_FORMAT)})
    body["trades_closed"] = f.trades_closed
    body["daily_balances"] = [{"date": d.date.isoformat(), "balance": str(d.balance)} for d in f.daily_balances]
    body["lines"] = [{"effective_at": rfc3339(line.effective_at), "entry_id": line.entry_id, "kind": line.kind,
                      "memo": line.memo, "amount": str(line.amount), "balance": str(line.balance)} for line in f.lines]
    return body


def figures_format_of(body: dict[str, Any]) -> int:
    """The format of a stored document's figures (1 when it names none: issued before formats were named)."""
    return int(body["statement"].get("figures_format", 1))


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed between two statements' figures (as `figures_out` gives them, in one format), one phrase per
    figure."""
    changed = [f"{field.replace('_', ' ')} was {before.get(field) or 'none'}, now {after.get(field) or 'none'}"
               for field in SUMMARY_FIELDS if before.get(field) != after.get(field)]
    old_lines = {(line["entry_id"], line["effective_at"]) for line in before.get("lines", [])}
    new_lines = {(line["entry_id"], line["effective_at"]) for line in after.get("lines", [])}
    added, removed = sorted(e for e, _ in new_lines - old_lines), sorted(e for e, _ in old_lines - new_lines)
    if added:
        changed.append("entries added: " + ", ".join(f"#{e}" for e in added))
    if removed:
        changed.append("entries no longer in the month: " + ", ".join(f"#{e}" for e in removed))
    if not changed and before != after:
        changed.append("the lines' details")
    return changed


# ------------------------------------------------------------------------------------------ reading

_HEAD = sa.text(f"""
    SELECT a.account_id, a.currency, l.id AS ledger_id
      FROM investment_account a JOIN ledger_account l ON l.name = {investors_sql("a.account_id")}
     WHERE a.account_id = :a""")  # noqa: S608 — ledger.chart's constants
_SIGNED = "CASE p.side WHEN 'C' THEN p.amount_minor ELSE -p.amount_minor END"
_OPENING_RECORDED = sa.text(f"""
    SELECT COALESCE(sum({_SIGNED}), 0)::bigint FROM posting p JOIN journal_entry e ON e.id = p.entry_id
     WHERE p.ledger_account_id = :id AND p.effective_at < :start AND e.recorded_at <= :t""")  # noqa: S608 — constants
_POSTINGS = sa.text(f"""
    SELECT p.effective_at, p.seq, p.entry_id, e.kind, r.kind AS reversed_kind, e.memo,
           {_SIGNED} AS amount_minor
      FROM posting p JOIN journal_entry e ON e.id = p.entry_id LEFT JOIN journal_entry r ON r.id = e.reverses_entry_id
     WHERE p.ledger_account_id = :id AND p.effective_at >= :start AND p.effective_at <= :end
       AND (CAST(:t AS timestamptz) IS NULL OR e.recorded_at <= :t)
     ORDER BY p.effective_at, p.seq""")  # noqa: S608 — constants
_DISTRIBUTION = sa.text("""
    SELECT rate, opening_hwm_minor, adjusted_hwm_minor, computed_fee_minor, fee_minor, new_hwm_minor
      FROM distribution
     WHERE account_id = :a AND month = :m AND (CAST(:t AS timestamptz) IS NULL OR created_at <= :t)""")


def read_inputs(c: sa.Connection, account_id: str, month: date, *,
                recorded_by: datetime | None = None) -> StatementInputs:
    """A's inputs for `month` from the books as recorded at or before `recorded_by` (None: everything committed)."""
    head = c.execute(_HEAD, {"a": account_id}).first()
    if head is None:
        raise UnknownAccount(f"investment account {account_id!r} does not exist")
    year_start = datetime(month.year, 1, 1, tzinfo=UTC)
    _, end = month_bounds(month)
    if recorded_by is None:
        # Everything booked: the balance as of the year's start from the as-of shortcuts (migrations 0004-0005).
        opening = -int(c.execute(sa.text("SELECT ledger_balance_as_of(:id, :at)"),
                                 {"id": head.ledger_id, "at": year_start - ONE_MICROSECOND}).scalar_one())
    else:
        opening = int(c.execute(_OPENING_RECORDED, {"id": head.ledger_id, "start": year_start,
                                                    "t": recorded_by}).scalar_one())
    postings = tuple(StatementPosting(effective_at=r.effective_at, seq=r.seq, entry_id=r.entry_id, kind=r.kind,
                                      reversed_kind=r.reversed_kind, memo=r.memo, amount_minor=int(r.amount_minor))
                     for r in c.execute(_POSTINGS, {"id": head.ledger_id, "start": year_start, "end": end,
                                                    "t": recorded_by}))
    row = c.execute(_DISTRIBUTION, {"a": account_id, "m": month, "t": recorded_by}).first()
    distribution = DistributionFigures(**row._asdict()) if row is not None else None
    held = holds.held_at(c, account_id, min(end, recorded_by) if recorded_by else end)
    return StatementInputs(account_id=account_id, currency=head.currency, month=month, year_opening_minor=opening,
                           postings=postings, distribution=distribution, held_at_close_minor=held)


# ------------------------------------------------------------------------------------------ stored statements

def document(figures: StatementFigures, *, version: int, issued_at: datetime, issued_by: str,
             corrects: int | None = None, correction: list[str] | None = None) -> dict[str, Any]:
    """What is stored, signed and answered: the issue (who, when, which version, what it corrects and why) and the
    figures."""
    return {"statement": {"account_id": figures.account_id, "month": figures.month, "version": version,
                          "issued_at": rfc3339(issued_at), "issued_by": issued_by, "corrects": corrects,
                          "correction": list(correction or []), "figures_format": FIGURES_FORMAT},
            "figures": figures_out(figures)}


def encode(body: dict[str, Any]) -> bytes:
    """Canonical JSON (sorted keys, no whitespace): the bytes the digest covers."""
    return msgspec.json.encode(body, order="sorted")


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """An issued statement as stored: its id, the document (issue and figures, as JSON), the PDF and the digest;
    `superseded_by` the id of the version that corrected it, when read with its versions."""

    id: int
    account_id: str
    month: date
    version: int
    issued_at: datetime
    body: dict[str, Any]
    pdf: bytes
    digest: bytes
    superseded_by: int | None = None


STORED_COLUMNS = "id, account_id, month, version, issued_at, document, pdf, digest"


def stored(row: Any, superseded_by: int | None = None) -> Stored:
    """A row of `investor_statement` (its STORED_COLUMNS) as a Stored."""
    return Stored(id=row.id, account_id=row.account_id, month=row.month, version=row.version,
                  issued_at=row.issued_at, body=msgspec.json.decode(bytes(row.document)), pdf=bytes(row.pdf),
                  digest=bytes(row.digest), superseded_by=superseded_by)


def statements_match(c: sa.Connection, limit: int = 20) -> list[str]:
    """`invledger verify`: every stored statement's digest covers its document and PDF, links the account's
    statement before it, and its figures are those of the books as they were recorded when it was issued."""
    findings: list[str] = []
    previous: dict[str, bytes] = {}
    rows = c.execution_options(stream_results=True, yield_per=500).execute(sa.text("""
        SELECT id, account_id, month, version, issued_at, document, pdf, previous_digest, digest
          FROM investor_statement ORDER BY account_id, id"""))
    for row in rows:
        label = f"statement {row.id} ({row.account_id} {month_key(row.month)} v{row.version})"
        stored_document, pdf = bytes(row.document), bytes(row.pdf)
        digest = hashlib.sha256(bytes(row.previous_digest) + hashlib.sha256(stored_document).digest()
                                + hashlib.sha256(pdf).digest()).digest()
        if digest != bytes(row.digest):
            findings.append(f"{label}: its digest does not cover its document and PDF — changed after it was issued")
        elif bytes(row.previous_digest) != previous.get(row.account_id, CHAIN_START):
            findings.append(f"{label}: it does not link the account's statement before it — one was removed or "
                            "changed")
        previous[row.account_id] = bytes(row.digest)
        try:
            body = msgspec.json.decode(stored_document)
            issue, stored = body["statement"], body["figures"]
            if (issue["version"] != row.version or issue["issued_at"] != rfc3339(row.issued_at)
                    or issue["account_id"] != row.account_id or issue["month"] != month_key(row.month)):
                findings.append(f"{label}: its document names another statement")
            recomputed = figures_out(compute(read_inputs(c, row.account_id, row.month, recorded_by=row.issued_at)),
                                     figures_format_of(body))
            if recomputed != stored:
                findings.append(f"{label}: its figures are not the books' as recorded when it was issued ("
                                + "; ".join(differences(stored, recomputed)[:3]) + ")")
        except (msgspec.DecodeError, KeyError, TypeError) as error:
            findings.append(f"{label}: its document cannot be read ({error!r})")
        if len(findings) >= limit:
            break
    return findings
