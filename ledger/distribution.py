"""The monthly distribution: the performance fee with a high-water mark, per account and month, once.

The rule — the fee, the mark, what counts as a flow — is the pure `ledger.policies.fee` (its module docstring
defines every figure); this module reads what it needs and books what it says. For investment account A and UTC
month M (from its first instant `start` to its last `end`): the opening balance (at `start`, after the previous
month's fee), the closing balance (at `end`, before M's fee), the net flows effective in M
(`ledger.policies.flows`), the previous distribution's mark (for A's first, the net capital contributed before M,
at least 0), and A's balance now (the fee is capped at it).

Booking: one transaction per account and month that locks A, writes the `distribution` row with every
input and, when the fee is above zero, the fee's entry (`ledger.policies.fee.fee_entry`), plus the outbox
notification `account.capital_changed` (withdrawal) for the engine. `distribution` is unique per (A, M) and
append-only, and the entry's idempotency key is `fee:A:YYYY-MM`: one distribution per account and month,
whatever reruns.

Order and completeness: M is distributed only after M−1 (if A has an earlier distribution), and — unless
A is closed or the caller says otherwise — only once the engine's daily snapshot for M's last day is
booked, so M's closing balance is final (a snapshot arriving after the fee would otherwise true it up
again). Otherwise the account is `Deferred` with the reason, and a later run picks it up.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

import msgspec
import sqlalchemy as sa

from ledger import chart, holds
from ledger.book import Ledger, Tx
from ledger.errors import InvalidEntry
from ledger.money import Money
from ledger.policies import fee
from ledger.policies.flows import flow_sql
from ledger.times import ONE_MICROSECOND

# ------------------------------------------------------------------------------------------ periods

def month_of(text: str) -> date:
    """`YYYY-MM` → the first day of that month."""
    try:
        year, month = (int(part) for part in text.split("-"))
        return date(year, month, 1)
    except ValueError:
        raise InvalidEntry(f"month {text!r} is not YYYY-MM") from None


def month_key(month: date) -> str:
    return f"{month.year:04d}-{month.month:02d}"


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def previous_month(month: date) -> date:
    return date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """The first and the last instant (inclusive) of the UTC month."""
    start = datetime.combine(month.replace(day=1), time.min, UTC)
    return start, datetime.combine(next_month(month), time.min, UTC) - ONE_MICROSECOND


# ------------------------------------------------------------------------------------------ booking

class Distribution(msgspec.Struct, frozen=True, kw_only=True):
    """A booked distribution (a `distribution` row). `replayed`: it existed before this call."""

    account_id: str
    month: date
    currency: str
    opening_balance_minor: int
    closing_balance_minor: int
    net_flows_minor: int
    profit_minor: int
    opening_hwm_minor: int
    adjusted_hwm_minor: int
    rate: Decimal
    computed_fee_minor: int
    fee_minor: int
    new_hwm_minor: int
    entry_id: int | None
    created_at: datetime
    replayed: bool = False

    def money(self, field: str) -> Money:
        return Money(minor=getattr(self, field), currency=self.currency)


class Deferred(msgspec.Struct, frozen=True, kw_only=True):
    """Not distributed now (and nothing written): `reason` says what must happen first."""

    account_id: str
    month: date
    reason: str
    kind: Literal["previous_month", "snapshot_missing"]


_ROW = """account_id, month, currency, opening_balance_minor, closing_balance_minor, net_flows_minor, profit_minor,
          opening_hwm_minor, adjusted_hwm_minor, rate, computed_fee_minor, fee_minor, new_hwm_minor, entry_id,
          created_at"""


def _distribution(row: Any, *, replayed: bool) -> Distribution:
    return Distribution(**{k: row[k] for k in Distribution.__struct_fields__ if k != "replayed"}, replayed=replayed)


def distribute_account(tx: Tx, account_id: str, month: date, *, require_snapshot: bool = True,
                       now: datetime | None = None) -> Distribution | Deferred:
    """Book A's distribution for `month` in `tx`, or return the one booked before (see module docstring)."""
    month = month.replace(day=1)
    start, end = month_bounds(month)
    if end > (now or datetime.now(UTC)):
        raise InvalidEntry(f"month {month_key(month)} is not over yet")
    account = tx.lock_account(account_id)
    c = tx.connection
    existing = c.execute(sa.text(f"SELECT {_ROW} FROM distribution WHERE account_id = :a AND month = :m"),  # noqa: S608 — module constants
                         {"a": account_id, "m": month}).mappings().first()
    if existing is not None:
        return _distribution(existing, replayed=True)
    last = c.execute(sa.text("""
        SELECT month, new_hwm_minor FROM distribution WHERE account_id = :a AND month < :m
         ORDER BY month DESC LIMIT 1"""), {"a": account_id, "m": month}).first()
    if last is not None and last.month != previous_month(month):
        return Deferred(account_id=account_id, month=month, kind="previous_month",
                        reason=f"{month_key(next_month(last.month))} is not distributed yet for {account_id}; "
                               "months are distributed in order")
    last_day = end.date()
    if require_snapshot and account.status != "closed" and c.execute(sa.text(
            "SELECT 1 FROM daily_performance WHERE account_id = :a AND date = :d"),
            {"a": account_id, "d": last_day}).first() is None:
        return Deferred(account_id=account_id, month=month, kind="snapshot_missing",
                        reason=f"no engine snapshot (daily.performance) for {account_id} on {last_day} yet; "
                               "the month's closing balance is not final")
    investors = tx.resolve([chart.investors(account_id)])[chart.investors(account_id)]
    opening = tx.balance(account_id, as_of=start - ONE_MICROSECOND)
    closing = tx.balance(account_id, as_of=end)
    flows = _net_flows_minor(c, investors.id, start, end)
    if last is not None:
        opening_hwm = last.new_hwm_minor
    else:
        opening_hwm = max(0, _net_flows_minor(c, investors.id, None, start - ONE_MICROSECOND))
    computed = fee.compute_fee(fee.FeeInputs(currency=account.currency, opening_balance_minor=opening.minor,
                                             closing_balance_minor=closing.minor, net_flows_minor=flows,
                                             opening_hwm_minor=opening_hwm, rate=account.fee_rate))
    # At most what is available: open holds (ledger.holds) reserve part of the balance for withdrawals.
    available = holds.balances(tx, [account_id])[account_id].available
    fee_minor = fee.charged_fee_minor(computed.computed_fee_minor, available.minor)
    inputs = {"month": month_key(month), "opening_balance": str(opening), "closing_balance": str(closing),
              "net_flows": _text(flows, account.currency), "profit": _text(computed.profit_minor, account.currency),
              "opening_hwm": _text(opening_hwm, account.currency),
              "adjusted_hwm": _text(computed.adjusted_hwm_minor, account.currency), "rate": str(account.fee_rate),
              "computed_fee": _text(computed.computed_fee_minor, account.currency),
              "new_hwm": _text(computed.new_hwm_minor, account.currency)}
    entry_id = None
    if fee_minor > 0:
        charged = Money(minor=fee_minor, currency=account.currency)
        posted = tx.post(fee.fee_entry(account_id, charged, month=month_key(month), rate=account.fee_rate,
                                       effective_at=end, inputs=inputs))
        entry_id = posted.entry_id
        if not posted.replayed:
            tx.emit(account_id, "account.capital_changed", {
                "account_id": account_id, "operation": "withdrawal", "amount": str(charged),
                "new_total_capital": str(posted.balances_after[chart.investors(account_id)]),
                "entry_id": entry_id, "reason": "performance_fee", "month": month_key(month)})
    row = c.execute(sa.text(f"""
        INSERT INTO distribution (account_id, month, currency, opening_balance_minor, closing_balance_minor,
                                  net_flows_minor, profit_minor, opening_hwm_minor, adjusted_hwm_minor, rate,
                                  computed_fee_minor, fee_minor, new_hwm_minor, entry_id)
        VALUES (:a, :m, :cur, :o, :c, :f, :p, :h, :ah, :rate, :cf, :fee, :nh, :e)
        RETURNING {_ROW}"""), {  # noqa: S608 — built from module constants, never from input
        "a": account_id, "m": month, "cur": account.currency, "o": opening.minor, "c": closing.minor, "f": flows,
        "p": computed.profit_minor, "h": opening_hwm, "ah": computed.adjusted_hwm_minor, "rate": account.fee_rate,
        "cf": computed.computed_fee_minor, "fee": fee_minor, "nh": computed.new_hwm_minor,
        "e": entry_id}).mappings().one()
    return _distribution(row, replayed=False)


def _net_flows_minor(c: sa.Connection, investors_id: int, start: datetime | None, end: datetime) -> int:
    """Deposits − withdrawals (credit-normal: a credit to investors:A is money in) effective in [start, end]."""
    return -int(c.execute(sa.text(f"""
        SELECT COALESCE(sum(CASE p.side WHEN 'D' THEN p.amount_minor ELSE -p.amount_minor END), 0)::bigint
          FROM posting p JOIN journal_entry e ON e.id = p.entry_id
          LEFT JOIN journal_entry r ON r.id = e.reverses_entry_id
         WHERE p.ledger_account_id = :id
           AND (CAST(:start AS timestamptz) IS NULL OR p.effective_at >= :start) AND p.effective_at <= :end
           AND {flow_sql("e", "r")}"""),  # noqa: S608 — ledger.policies.flows' constants
        {"id": investors_id, "start": start, "end": end}).scalar_one())


def _text(minor: int, currency: str) -> str:
    return str(Money(minor=minor, currency=currency))


# ------------------------------------------------------------------------------------------ reads

def distributions(ledger: Ledger, account_id: str) -> list[Distribution]:
    """A's distributions, oldest first."""
    with ledger.engine.connect() as c:
        rows = c.execute(sa.text(f"SELECT {_ROW} FROM distribution WHERE account_id = :a ORDER BY month"),  # noqa: S608 — module constants
                         {"a": account_id}).mappings().all()
    return [_distribution(row, replayed=True) for row in rows]


def high_water_mark(ledger: Ledger, account_id: str) -> Money:
    """A's high-water mark now: the last distribution's new mark adjusted by the flows since its month
    ended (or, before any distribution, the net capital contributed, at least 0)."""
    account = ledger.account(account_id)

    def read(tx: Tx) -> Money:
        investors = tx.resolve([chart.investors(account_id)])[chart.investors(account_id)]
        last = tx.connection.execute(sa.text("""
            SELECT month, new_hwm_minor FROM distribution WHERE account_id = :a ORDER BY month DESC LIMIT 1"""),
            {"a": account_id}).first()
        now = datetime.now(UTC) + timedelta(days=1)
        if last is None:
            return Money(minor=max(0, _net_flows_minor(tx.connection, investors.id, None, now)),
                         currency=account.currency)
        _, end = month_bounds(last.month)
        flows = _net_flows_minor(tx.connection, investors.id, end + ONE_MICROSECOND, now)
        return Money(minor=last.new_hwm_minor + flows, currency=account.currency)
    return ledger.read_only(read)
