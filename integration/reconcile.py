"""Reconciliation: every open account's ledger balance and status against the engine's `status` (contract §5).

Per account the result is one of:
- `matched`: the engine shows the ledger's balance, or the ledger's less the in-flight capital changes it may
  not have applied yet (any of the newest ones: it applies them in order), within the tolerance; and the
  statuses agree (or the ledger's new status is still in flight);
- `break`: the balances differ by more than the tolerance (RECONCILIATION_TOLERANCE, default 0; exact
  decimal arithmetic, so 0.01 USD off is a break);
- `status_mismatch`: the balances agree but the statuses do not;
- `unknown_account`: the engine answers 404 for a ledger account; or the engine reported an account (in a
  webhook kept for review) that the ledger does not have;
- `engine_unavailable`: a timeout, 5xx, unreadable answer or open circuit — an outage, never a break.

Open withdrawal holds (ledger.holds) reserve part of a balance without moving it, and the engine's capital moves
only when a hold posts (its `account.capital_changed`, in flight like any other): the comparison is of balances,
and a line names what open holds reserve.

"In flight" is what the ledger has told the engine through the outbox but not yet seen acknowledged (capital
changes, status changes, the account's creation). The engine may not know it yet — or may have applied it
already, in the window between its answer and the delivery being marked: so in-flight changes explain a
difference, and never make a break of agreement. `difference` is always reported as engine − ledger, and
`in_flight` alongside it; a break names both readings (engine − ledger, and engine − (ledger − in flight)).

A break is read twice: after `recheck_delay_ms` both sides are read again, so a webhook that was on its
way while the account was compared does not make a break. The ledger is read before the engine (a fact
the engine applied and announced can then only be missing from the ledger, never the other way round).

Alerts, one open alert per account and problem (dedup key `reconciliation:<result>:<account>`): raised
the first night, not again while it is open or acknowledged, resolved by the first later run in which the
problem is gone. Past `UNAVAILABLE_ALERTS_MAX` unavailable accounts in one run, one run-wide alert is
raised instead of one per account (an engine outage is one problem).

Work is bounded: accounts are taken `CHUNK_SIZE` at a time, their engine calls made by at most
`concurrency` threads over the one (thread-safe) EngineClient, and each chunk's results and alerts written
in one transaction; a run interrupted halfway resumes after the last account it stored.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

import msgspec
import sqlalchemy as sa

from integration import alerts, runs
from integration.client import EngineClient, EngineError, EngineNotFound
from integration.engine_api import AccountStatus
from ledger import Ledger, chart
from ledger.errors import LedgerError
from ledger.money import Money, scale_of
from ledger.principal import PRINCIPAL

log = logging.getLogger("integration.reconcile")

RESULTS = ("matched", "break", "engine_unavailable", "unknown_account", "status_mismatch")
CONCURRENCY_MAX = 32
CHUNK_SIZE = 500
BREAK_RECHECK_DELAY_MS = 1000
UNAVAILABLE_ALERTS_MAX = 20
ENGINE_ONLY_ACCOUNTS_MAX = 1000
RESULTS_PAGE_MAX = 1000
_ALERT_KINDS = {"break": "reconciliation_break", "status_mismatch": "reconciliation_status_mismatch",
                "unknown_account": "reconciliation_unknown_account", "engine_unavailable": "engine_unavailable"}
_MANY_UNAVAILABLE_KEY = "reconciliation:engine_unavailable:*"
Progress = Callable[[int, int], None]


class LedgerSide(msgspec.Struct, frozen=True, kw_only=True):
    """What the ledger holds for an account, and what it has told the engine that has not arrived yet."""

    account_id: str
    currency: str
    balance_minor: int
    status: str
    in_flight_changes_minor: tuple[int, ...] = ()  # outbox capital changes not marked delivered, oldest first;
    # signed: deposits +, withdrawals −
    status_in_flight: bool = False
    creation_in_flight: bool = False
    held_minor: int = 0  # open withdrawal holds (ledger.holds): reserved, not withdrawn — neither the ledger balance
    open_holds: int = 0  # nor the engine's capital moves until a hold posts, so they are shown, never subtracted


class Line(msgspec.Struct, frozen=True, kw_only=True):
    """One account's result in a run (a reconciliation_result row)."""

    account_id: str
    result: str
    currency: str | None = None
    ledger_balance_minor: int | None = None
    engine_balance: Decimal | None = None
    difference: Decimal | None = None  # engine − ledger, exact
    in_flight: Decimal = Decimal(0)
    ledger_status: str | None = None
    engine_status: str | None = None
    detail: str = ""

    def out(self) -> dict[str, Any]:
        """The contract's shape: money as strings at the currency's scale (more places only if the engine
        sent more)."""
        return {"account_id": self.account_id, "currency": self.currency,
                "ledger_balance": (str(Money(minor=self.ledger_balance_minor, currency=self.currency))
                                   if self.ledger_balance_minor is not None and self.currency else None),
                "engine_balance": _amount(self.engine_balance, self.currency),
                "difference": _amount(self.difference, self.currency),
                "in_flight": _amount(self.in_flight, self.currency) if self.in_flight else None,
                "ledger_status": self.ledger_status, "engine_status": self.engine_status, "result": self.result,
                "detail": self.detail}


class Counts(msgspec.Struct, kw_only=True):
    total: int = 0
    accounts: int = 0
    matched: int = 0
    breaks: int = 0
    engine_unavailable: int = 0
    unknown_account: int = 0
    status_mismatch: int = 0
    alerts_raised: int = 0
    alerts_resolved: int = 0

    def count(self, result: str) -> None:
        self.accounts += 1
        name = "breaks" if result == "break" else result
        setattr(self, name, getattr(self, name) + 1)


def _amount(value: Decimal | None, currency: str | None) -> str | None:
    if value is None:
        return None
    if currency is not None:
        try:
            return str(Money.from_decimal(value, currency))
        except LedgerError:  # finer than the currency's scale (or out of range): show it as the engine sent it
            return format(value, "f")
    return format(value, "f")


# ------------------------------------------------------------------------------------------ judging

def judge(side: LedgerSide, answer: AccountStatus | EngineError, tolerance: Decimal) -> Line:
    """One account's result from the ledger's side and the engine's answer (pure)."""
    base: dict[str, Any] = {"account_id": side.account_id, "currency": side.currency,
                            "ledger_balance_minor": side.balance_minor, "ledger_status": side.status}
    if isinstance(answer, EngineNotFound):
        detail = "the engine does not know this account"
        if side.creation_in_flight:
            detail += " yet: its account.created notification is still in the outbox"
        return Line(result="unknown_account", detail=detail, **base)
    if isinstance(answer, EngineError):
        return Line(result="engine_unavailable", detail=answer.detail[:500], **base)
    scale = scale_of(side.currency)
    changes = side.in_flight_changes_minor
    with localcontext() as ctx:
        ctx.prec = 80  # exact: balances have at most 34 digits, scales at most 18 places
        ledger_balance = Decimal(side.balance_minor).scaleb(-scale)
        in_flight = Decimal(sum(changes)).scaleb(-scale)
        difference = answer.balance - ledger_balance
        # What the engine may rightly show: the ledger less the in-flight changes it has not applied yet. It applies
        # them in order and may already have applied any of the oldest (a delivery not yet marked delivered: the
        # crash window the outbox exists for), so each suffix of the queue is an explanation — none of it too.
        unapplied = [Decimal(sum(changes[k:])).scaleb(-scale) for k in range(len(changes) + 1)]
        explained = [u for u in unapplied if abs(difference + u) <= tolerance]
    line = {**base, "engine_balance": answer.balance, "difference": difference, "in_flight": in_flight,
            "engine_status": answer.status}
    notes = []
    if side.held_minor:
        notes.append(f"{Money(minor=side.held_minor, currency=side.currency)} held by {side.open_holds} open "
                     f"withdrawal hold{'s' if side.open_holds != 1 else ''} (balances move when a hold posts)")
    if in_flight:
        notes.append(f"{_amount(in_flight, side.currency)} of capital changes not yet marked delivered to the engine"
                     + ("" if not explained else " (the engine already shows them)" if explained[0] == 0
                        else f" (the engine has yet to apply {_amount(explained[0], side.currency)})"))
    if not explained:
        readings = [f"engine − ledger = {_amount(difference, side.currency)}"]
        if in_flight:
            readings.append(f"engine − (ledger − in flight) = {_amount(difference + in_flight, side.currency)}")
        return Line(result="break", detail="; ".join([*readings, f"tolerance {tolerance}", *notes]), **line)
    if answer.status != side.status:
        if side.status_in_flight:
            notes.append(f"status {side.status} not yet delivered to the engine")
        else:
            return Line(result="status_mismatch",
                        detail=f"ledger says {side.status}, engine says {answer.status}", **line)
    return Line(result="matched", detail="; ".join(notes), **line)


# ------------------------------------------------------------------------------------------ reading

def ledger_sides(engine: sa.Engine, *, after: str | None = None, account_ids: list[str] | None = None,
                 limit: int = CHUNK_SIZE) -> list[LedgerSide]:
    """Open (not closed) accounts by id after `after` — or exactly `account_ids` — with what is in flight."""
    with engine.connect() as c:
        rows = c.execute(sa.text(f"""
            SELECT a.account_id, a.currency, a.status, -l.balance_minor AS balance_minor,
                   COALESCE(h.held_minor, 0) AS held_minor, COALESCE(h.open_count, 0) AS open_holds
              FROM investment_account a JOIN ledger_account l ON l.name = {chart.investors_sql("a.account_id")}
              LEFT JOIN hold_state h ON h.ledger_account_id = l.id
             WHERE a.status <> 'closed'
               AND (CAST(:ids AS text[]) IS NULL OR a.account_id = ANY(CAST(:ids AS text[])))
               AND (CAST(:after AS text) IS NULL OR a.account_id > :after)
             ORDER BY a.account_id LIMIT :limit"""),  # noqa: S608 — ledger.chart's constant
            {"ids": account_ids, "after": after, "limit": limit}).all()
        pending = c.execute(sa.text("""
            SELECT account_id, topic, payload->>'operation' AS operation, payload->>'amount' AS amount
              FROM outbox_event WHERE status <> 'delivered' AND account_id = ANY(:ids) ORDER BY id"""),
            {"ids": [r.account_id for r in rows]}).all()
    flights: dict[str, dict[str, Any]] = {}
    currency_of = {r.account_id: r.currency for r in rows}
    for p in pending:
        flight = flights.setdefault(p.account_id, {"in_flight_changes_minor": (), "status_in_flight": False,
                                                   "creation_in_flight": False})
        if p.topic == "account.capital_changed" and p.amount is not None:
            minor = Money.from_decimal(p.amount, currency_of[p.account_id]).minor
            flight["in_flight_changes_minor"] += (minor if p.operation == "deposit" else -minor,)
        elif p.topic in ("account.paused", "account.resumed", "account.closed"):
            flight["status_in_flight"] = True
        elif p.topic == "account.created":
            flight["creation_in_flight"] = True
    return [LedgerSide(account_id=r.account_id, currency=r.currency, balance_minor=r.balance_minor, status=r.status,
                       held_minor=r.held_minor, open_holds=r.open_holds, **flights.get(r.account_id, {}))
            for r in rows]


def engine_only_accounts(engine: sa.Engine) -> list[str]:
    """Accounts the engine sent webhooks for (kept for review) that the ledger does not have."""
    with engine.connect() as c:
        return list(c.execute(sa.text("""
            SELECT DISTINCT w.account_id FROM webhook_event w
             WHERE w.status = 'review' AND w.account_id IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM investment_account a WHERE a.account_id = w.account_id)
             ORDER BY w.account_id LIMIT :n"""), {"n": ENGINE_ONLY_ACCOUNTS_MAX}).scalars())


def _open_accounts(engine: sa.Engine, after: str | None) -> int:
    with engine.connect() as c:
        return c.execute(sa.text("""
            SELECT count(*) FROM investment_account
             WHERE status <> 'closed' AND (CAST(:after AS text) IS NULL OR account_id > :after)"""),
            {"after": after}).scalar_one()


# ------------------------------------------------------------------------------------------ the run

class Reconciler:
    """One reconciliation run over all open accounts (see the module docstring)."""

    def __init__(self, ledger: Ledger, client: EngineClient, run_id: int, *, tolerance: Decimal = Decimal(0),
                 concurrency: int = CONCURRENCY_MAX, recheck_delay_ms: int | None = None,
                 progress: Progress | None = None) -> None:
        if not tolerance.is_finite() or tolerance < 0:
            raise ValueError("the tolerance must be a finite decimal ≥ 0")
        self.engine = ledger.engine
        self.client = client
        self.run_id = run_id
        self.tolerance = tolerance
        self.concurrency = max(1, concurrency)
        self.recheck_delay_ms = BREAK_RECHECK_DELAY_MS if recheck_delay_ms is None else recheck_delay_ms
        self.progress = progress
        self.counts = Counts()
        self._unavailable_seen = 0

    def _ask(self, account_id: str) -> AccountStatus | EngineError:
        try:
            return self.client.status(account_id)
        except EngineError as error:  # the engine's failures are results; a bug of ours is not an outage
            return error

    def run(self) -> Counts:
        resume_after = self._resume()
        self._unavailable_seen = self.counts.engine_unavailable
        self.counts.total = self.counts.accounts + _open_accounts(self.engine, resume_after)
        extra = engine_only_accounts(self.engine)
        self.counts.total += len(extra)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="reconcile") as pool:
            after = resume_after
            while sides := ledger_sides(self.engine, after=after):
                after = sides[-1].account_id
                answers = list(pool.map(self._ask, [s.account_id for s in sides]))
                lines = [judge(side, answer, self.tolerance) for side, answer in zip(sides, answers, strict=True)]
                lines = self._recheck(pool, lines)
                self._store(lines)
            if extra:
                answers = list(pool.map(self._ask, extra))
                self._store([_engine_only(account_id, answer) for account_id, answer in zip(extra, answers,
                                                                                           strict=True)
                             if not isinstance(answer, EngineNotFound)], alert=False)
        self._finish_alerts()
        return self.counts

    def _resume(self) -> str | None:
        """Counts of the results already stored by an interrupted attempt, and where to go on from."""
        with self.engine.connect() as c:
            for result, n in c.execute(sa.text("""
                    SELECT result, count(*) FROM reconciliation_result
                     WHERE run_id = :r AND ledger_balance_minor IS NOT NULL GROUP BY result"""), {"r": self.run_id}):
                for _ in range(n):
                    self.counts.count(result)
            return c.execute(sa.text("""
                SELECT max(account_id) FROM reconciliation_result
                 WHERE run_id = :r AND ledger_balance_minor IS NOT NULL"""), {"r": self.run_id}).scalar()

    def _recheck(self, pool: ThreadPoolExecutor, lines: list[Line]) -> list[Line]:
        suspects = [line.account_id for line in lines if line.result == "break"]
        if not suspects:
            return lines
        if self.recheck_delay_ms:
            time.sleep(self.recheck_delay_ms / 1000)
        sides = {s.account_id: s for s in ledger_sides(self.engine, account_ids=suspects, limit=len(suspects))}
        answers = dict(zip(suspects, pool.map(self._ask, suspects), strict=True))
        again = {account_id: judge(sides[account_id], answers[account_id], self.tolerance)
                 for account_id in suspects if account_id in sides}
        return [again.get(line.account_id, line) if line.result == "break" else line for line in lines]

    def _store(self, lines: list[Line], *, alert: bool = True) -> None:
        if not lines:
            return
        with self.engine.begin() as c:
            c.execute(sa.text("""
                INSERT INTO reconciliation_result (run_id, account_id, currency, ledger_balance_minor, engine_balance,
                                                   difference, in_flight, ledger_status, engine_status, result, detail)
                SELECT :run, * FROM unnest(CAST(:a AS text[]), CAST(:cur AS text[]), CAST(:lb AS bigint[]),
                                           CAST(:eb AS numeric[]), CAST(:d AS numeric[]), CAST(:f AS numeric[]),
                                           CAST(:ls AS text[]), CAST(:es AS text[]), CAST(:r AS text[]),
                                           CAST(:det AS text[]))
                ON CONFLICT (run_id, account_id) DO UPDATE
                   SET currency = EXCLUDED.currency, ledger_balance_minor = EXCLUDED.ledger_balance_minor,
                       engine_balance = EXCLUDED.engine_balance, difference = EXCLUDED.difference,
                       in_flight = EXCLUDED.in_flight, ledger_status = EXCLUDED.ledger_status,
                       engine_status = EXCLUDED.engine_status, result = EXCLUDED.result, detail = EXCLUDED.detail,
                       checked_at = now()"""), {
                "run": self.run_id, "a": [x.account_id for x in lines], "cur": [x.currency for x in lines],
                "lb": [x.ledger_balance_minor for x in lines], "eb": [x.engine_balance for x in lines],
                "d": [x.difference for x in lines], "f": [x.in_flight for x in lines],
                "ls": [x.ledger_status for x in lines], "es": [x.engine_status for x in lines],
                "r": [x.result for x in lines], "det": [x.detail[:2000] for x in lines]})
            if alert:
                self._alerts(c, lines)
        for line in lines:
            self.counts.count(line.result)
        runs.heartbeat(self.engine, self.run_id, msgspec.structs.asdict(self.counts))
        if self.progress is not None:
            self.progress(self.counts.accounts, self.counts.total)

    def _alerts(self, c: sa.Connection, lines: list[Line]) -> None:
        """Raise one alert per open problem, resolve the ones that went away (see the module docstring)."""
        resolve: list[str] = []
        for line in lines:
            keys = {result: f"reconciliation:{result}:{line.account_id}" for result in _ALERT_KINDS}
            gone = {"matched": ("break", "status_mismatch", "unknown_account", "engine_unavailable"),
                    "break": ("unknown_account", "engine_unavailable"),
                    "status_mismatch": ("break", "unknown_account", "engine_unavailable"),
                    "unknown_account": ("engine_unavailable",),
                    "engine_unavailable": ()}[line.result]
            resolve += [keys[result] for result in gone]
            if line.result == "matched":
                continue
            if line.result == "unknown_account" and "outbox" in line.detail:
                continue  # the engine has not been told yet: not a problem of its making
            if line.result == "engine_unavailable":
                self._unavailable_seen += 1
                if self._unavailable_seen > UNAVAILABLE_ALERTS_MAX:
                    continue  # one run-wide alert instead (see _finish_alerts)
            message = {"break": f"reconciliation break on {line.account_id}: {line.detail}",
                       "status_mismatch": f"status mismatch on {line.account_id}: {line.detail}",
                       "unknown_account": f"account {line.account_id} is unknown to the engine",
                       "engine_unavailable": f"the engine did not answer for {line.account_id}: {line.detail}",
                       }[line.result]
            raised = alerts.raise_alert(
                c, kind=_ALERT_KINDS[line.result], dedup_key=keys[line.result], message=message,
                account_id=line.account_id, event_key=f"reconciliation:{self.run_id}",
                details={"run_id": self.run_id, **{k: v for k, v in line.out().items() if k != "detail"}})
            if raised is not None:
                self.counts.alerts_raised += 1
        if resolve:
            self.counts.alerts_resolved += c.execute(sa.text("""
                UPDATE alert SET status = 'resolved', resolved_at = now(), updated_at = now()
                 WHERE status <> 'resolved' AND dedup_key = ANY(:keys)"""), {"keys": resolve}).rowcount

    def _finish_alerts(self) -> None:
        with self.engine.begin() as c:
            if self.counts.engine_unavailable > UNAVAILABLE_ALERTS_MAX:
                raised = alerts.raise_alert(
                    c, kind="engine_unavailable", dedup_key=_MANY_UNAVAILABLE_KEY,
                    message=f"the engine did not answer for {self.counts.engine_unavailable} of "
                            f"{self.counts.accounts} accounts in reconciliation run {self.run_id}",
                    event_key=f"reconciliation:{self.run_id}", details={"run_id": self.run_id})
                self.counts.alerts_raised += raised is not None
            elif self.counts.engine_unavailable == 0:
                self.counts.alerts_resolved += alerts.resolve_alert(c, _MANY_UNAVAILABLE_KEY)


def _engine_only(account_id: str, answer: AccountStatus | Exception) -> Line:
    if isinstance(answer, AccountStatus):
        return Line(account_id=account_id, result="unknown_account", engine_balance=answer.balance,
                    engine_status=answer.status, detail="the engine reports this account; the ledger has none")
    return Line(account_id=account_id, result="unknown_account",
                detail="the engine sent webhooks for this account; the ledger has none (the engine did not "
                       "answer for it now)")


def run(ledger: Ledger, client: EngineClient, *, run_key: str, period: str, trigger: runs.Trigger = "schedule",
        tolerance: Decimal = Decimal(0), concurrency: int = CONCURRENCY_MAX,
        recheck_delay_ms: int | None = None, progress: Progress | None = None) -> runs.Outcome:
    """A reconciliation as a run (integration.runs): once per `run_key`, resumed if interrupted."""
    def work(run: runs.Run) -> tuple[runs.FinalStatus, dict[str, object]]:
        counts = Reconciler(ledger, client, run.id, tolerance=tolerance, concurrency=concurrency,
                            recheck_delay_ms=recheck_delay_ms, progress=progress).run()
        return "done", msgspec.structs.asdict(counts)

    return runs.execute(ledger.engine, job="reconcile", run_key=run_key, period=period, trigger=trigger, work=work,
                        parameters={"tolerance": str(tolerance), "concurrency": concurrency})


def on_demand_key(now: datetime | None = None) -> tuple[str, str]:
    """(run_key, period) for a run asked for now (by an operator), unique per request."""
    at = (now or datetime.now(UTC)).astimezone(UTC)
    return f"reconcile:on-demand:{at:%Y%m%dT%H%M%S}:{uuid.uuid4().hex[:8]}", at.isoformat().replace("+00:00", "Z")


def request_run(engine: sa.Engine, enqueue: Callable[..., None], *, tolerance: Decimal,
                trigger: runs.Trigger) -> runs.Run:
    """Record a run asked for now (`queued`) and hand it to the jobs through `enqueue(actor_name, **kwargs)`:
    what the API's `POST /reconciliations`, the reconciliation page's "Run now" and the demo all do."""
    run_key, period = on_demand_key()
    run = runs.enqueue_record(engine, job="reconcile", run_key=run_key, period=period, trigger=trigger,
                              parameters={"tolerance": str(tolerance), "requested_by": PRINCIPAL.get()})
    enqueue("reconcile", period=period, run_key=run_key, trigger=trigger)
    return run


# ------------------------------------------------------------------------------------------ reads

def results(engine: sa.Engine, run_id: int, *, result: str | None = None, after: str | None = None,
            limit: int = 100) -> list[Line]:
    """A run's per-account lines by account id, `limit` at a time after `after` (a cursor)."""
    with engine.connect() as c:
        rows = c.execute(sa.text("""
            SELECT account_id, result, currency, ledger_balance_minor, engine_balance, difference, in_flight,
                   ledger_status, engine_status, detail
              FROM reconciliation_result
             WHERE run_id = :run AND (CAST(:result AS text) IS NULL OR result = :result)
               AND (CAST(:after AS text) IS NULL OR account_id > :after)
             ORDER BY account_id LIMIT :limit"""), {"run": run_id, "result": result, "after": after,
                                                    "limit": max(1, min(limit, RESULTS_PAGE_MAX))}).mappings()
        return [Line(**row) for row in rows]


def problems(engine: sa.Engine, run_id: int, *, limit: int = 100) -> list[Line]:
    """A run's lines that are not `matched`, by account id."""
    return problems_of_runs(engine, [run_id], limit=limit)[run_id]


def problems_of_runs(engine: sa.Engine, run_ids: list[int], *, limit: int = 100) -> dict[int, list[Line]]:
    """Each run's first `limit` lines that are not `matched`, by account id: one read for a page of runs."""
    with engine.connect() as c:
        rows = c.execute(sa.text("""
            SELECT r.run_id, l.* FROM unnest(CAST(:runs AS bigint[])) AS r(run_id) CROSS JOIN LATERAL (
                SELECT account_id, result, currency, ledger_balance_minor, engine_balance, difference, in_flight,
                       ledger_status, engine_status, detail
                  FROM reconciliation_result WHERE run_id = r.run_id AND result <> 'matched'
                 ORDER BY account_id LIMIT :limit) l"""),
            {"runs": list(run_ids), "limit": max(1, min(limit, RESULTS_PAGE_MAX))})
        found: dict[int, list[Line]] = {run_id: [] for run_id in run_ids}
        for row in rows.mappings():
            found[row["run_id"]].append(Line(**{k: v for k, v in row.items() if k != "run_id"}))
        return found
