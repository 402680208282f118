"""The engine's books and its seeded random walk: accounts, agents, the simulated clock, the events it makes.

No HTTP, no threads: the simulator holds its lock around every call. A command the engine refuses raises
`Refused` with the status, code and detail the app answers with.
"""

from __future__ import annotations

import heapq
import logging
import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Any, Final

import msgspec

from integration import engine_api
from integration.engine_api import (
    AccountAck,
    AccountErrorEvent,
    AccountStatus,
    AgentConfig,
    BalanceUpdated,
    CapitalUpdate,
    CreateAccountRequest,
    Performance,
    Trade,
    WithdrawalConfirmedEvent,
    WithdrawalRequest,
)

log = logging.getLogger(__name__)

CENT: Final[Decimal] = Decimal("0.01")
QUANTITY_STEP: Final[Decimal] = Decimal("0.0001")
DAY_S: Final[int] = 86_400
HOLD_MIN_S: Final[int] = 5 * 60
HOLD_MAX_S: Final[int] = 20 * 3600  # long holds carry positions over to the next day
POSITION_PERCENT_MIN: Final[int] = 5
POSITION_PERCENT_MAX: Final[int] = 20
MOVE_BP_STEP_MIN: Final[int] = -80  # a trade's price move is the sum of three integer steps, in bp
MOVE_BP_STEP_MAX: Final[int] = 85  # a slight upward drift
TRADES_PER_DAY_MAX: Final[int] = 1000
STEP_DAYS_MAX: Final[int] = 3660
EVENT_LOG_MAX: Final[int] = 100_000
TRADES_PAGE_MAX: Final[int] = 10_000
SYMBOL_PRICES: Final[dict[str, Decimal]] = {
    "AAPL": Decimal("190.00"), "MSFT": Decimal("410.00"), "NVDA": Decimal("120.00"),
    "SPY": Decimal("520.00"), "BTC-USD": Decimal("64000.00"), "ETH-USD": Decimal("3100.00"),
    "EURUSD": Decimal("1.08"),
}
_EVENT_NAMESPACE: Final = uuid.UUID("6c1f3e52-3f0b-4d7e-9a43-5b8f0f1d2c11")


class Refused(Exception):
    """A command the engine refuses: answered `status` with `{"error": code, "detail": detail}`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass
class Position:
    trade: Trade  # the open trade
    close_at: datetime
    exit_price: Decimal
    move_bp: int


@dataclass
class Account:
    account_id: str
    product_id: str
    agent_type: str
    agent_config: dict[str, Any]
    capital: Decimal
    rng: random.Random
    status: str = "active"
    trade_count: int = 0
    prices: dict[str, Decimal] = field(default_factory=lambda: dict(SYMBOL_PRICES))
    positions: list[Position] = field(default_factory=list)
    trades: dict[str, Trade] = field(default_factory=dict)  # latest state per trade id
    performance: dict[date, Performance] = field(default_factory=dict)
    capital_mismatches: int = 0
    withdrawal_requests: dict[int, str] = field(default_factory=dict)  # hold id -> confirmed | cancelled


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def has_cents_only(value: Decimal) -> bool:
    return value == value.quantize(CENT, rounding=ROUND_DOWN)


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Model:
    """The engine's state. The same seed and the same commands give the same trades, events and event ids."""

    def __init__(self, *, seed: int, trades_per_day: int, start_date: date) -> None:
        self.seed = seed
        self.trades_per_day = trades_per_day
        self.clock = start_date  # the next simulated day to run
        self.accounts: dict[str, Account] = {}
        self.agents: dict[str, AgentConfig] = {}
        self.event_count = 0
        self.events: deque[bytes] = deque(maxlen=EVENT_LOG_MAX)

    # ---- commands (the engine API's) -----------------------------------------------------------------
    def create_account(self, body: CreateAccountRequest) -> AccountAck:
        if not has_cents_only(body.initial_capital):
            raise Refused(422, "invalid", "initial_capital has more than 2 decimals")
        if body.account_id in self.accounts:
            raise Refused(409, "account_exists", f"account {body.account_id!r} already exists")
        self.accounts[body.account_id] = Account(
            account_id=body.account_id, product_id=body.product_id, agent_type=body.agent_type,
            agent_config=dict(body.agent_config), capital=cents(body.initial_capital),
            rng=random.Random(f"{self.seed}/{body.account_id}"))
        self.agents.setdefault(body.agent_type, AgentConfig(
            agent_id=body.agent_type, agent_type=body.agent_type,
            parameters=dict(body.agent_config), updated_at=utc_now()))
        return AccountAck(account_id=body.account_id, status="active", capital=cents(body.initial_capital))

    def update_capital(self, account_id: str, body: CapitalUpdate) -> AccountAck:
        """Apply the update's `amount` (never `new_total_capital`: a mismatch is only counted)."""
        if not has_cents_only(body.amount):
            raise Refused(422, "invalid", "amount has more than 2 decimals")
        account = self.known(account_id)
        if account.status == "closed":
            raise Refused(409, "account_closed", f"account {account_id!r} is closed")
        if body.operation == "withdrawal" and body.amount > account.capital:
            raise Refused(409, "insufficient_capital", f"withdrawal of {body.amount} exceeds capital {account.capital}")
        account.capital += body.amount if body.operation == "deposit" else -body.amount
        if account.capital != body.new_total_capital:
            account.capital_mismatches += 1
            log.info("capital of %s is %s after %s; the ledger says %s", account_id, account.capital,
                     body.operation, body.new_total_capital)
        return AccountAck(account_id=account_id, status=account.status, capital=account.capital)  # type: ignore[arg-type]

    def request_withdrawal(self, account_id: str, body: WithdrawalRequest) -> tuple[AccountAck, list[bytes]]:
        """Free the capital at once and confirm with `withdrawal.confirmed` (a real engine would close positions
        first); a repeated request is confirmed again (the ledger posts a hold once). Returns the event to send."""
        account = self.known(account_id)
        if body.amount > account.capital:
            raise Refused(409, "insufficient_capital", f"withdrawal of {body.amount} exceeds capital {account.capital}")
        if account.withdrawal_requests.get(body.hold_id) == "cancelled":
            raise Refused(409, "withdrawal_cancelled", f"withdrawal request {body.hold_id} was cancelled")
        account.withdrawal_requests[body.hold_id] = "confirmed"
        event = self.event(f"withdrawal/{account_id}/{body.hold_id}", self.now(), "withdrawal.confirmed",
                           WithdrawalConfirmedEvent(account_id=account_id, hold_id=body.hold_id, amount=body.amount))
        return AccountAck(account_id=account_id, status=account.status, capital=account.capital), [event]  # type: ignore[arg-type]

    def cancel_withdrawal(self, account_id: str, hold_id: int) -> AccountAck:
        account = self.known(account_id)
        account.withdrawal_requests.setdefault(hold_id, "cancelled")
        return AccountAck(account_id=account_id, status=account.status, capital=account.capital)  # type: ignore[arg-type]

    def transition(self, account_id: str, target: str) -> tuple[AccountAck, list[bytes]]:
        """Pause, resume or close; closing liquidates open positions flat. Returns the events to send."""
        account = self.known(account_id)
        if account.status == "closed" and target != "closed":
            raise Refused(409, "account_closed", f"account {account_id!r} is closed")
        bodies: list[bytes] = []
        if target == "closed" and account.status != "closed":
            now = self.now()
            for position in list(account.positions):  # liquidate flat
                trade = self.close(account, position, now, position.trade.entry_price)
                bodies.append(self.event(f"trade/{trade.trade_id}/closed", now, "trade.executed", trade))
        account.status = target
        ack = AccountAck(account_id=account_id, status=account.status, capital=account.capital)  # type: ignore[arg-type]
        return ack, bodies

    def status(self, account_id: str, drift: Decimal) -> AccountStatus:
        account = self.known(account_id)
        balance = account.capital + drift
        return AccountStatus(account_id=account_id, status=account.status,  # type: ignore[arg-type]
                             balance=balance, equity=balance, as_of=utc_now())

    def trades(self, account_id: str, start: date | None, end: date | None, wanted: str | None) -> list[Trade]:
        account = self.known(account_id)
        found = [t for t in account.trades.values()
                 if (start is None or t.executed_at.date() >= start)
                 and (end is None or t.executed_at.date() <= end)
                 and (wanted is None or t.status == wanted)]
        if len(found) > TRADES_PAGE_MAX:
            raise Refused(422, "too_many", f"more than {TRADES_PAGE_MAX} trades: narrow the dates")
        found.sort(key=lambda t: (t.executed_at, t.trade_id))
        return found

    def performance(self, account_id: str, start: date | None, end: date | None) -> list[Performance]:
        account = self.known(account_id)
        return [p for d, p in sorted(account.performance.items())
                if (start is None or d >= start) and (end is None or d <= end)]

    def agent_config(self, agent_id: str) -> AgentConfig:
        config = self.agents.get(agent_id)
        if config is None:
            raise Refused(404, "unknown_agent", f"no agent {agent_id!r}")
        return config

    def put_agent_config(self, agent_id: str, body: AgentConfig) -> AgentConfig:
        if body.agent_id != agent_id:
            raise Refused(422, "invalid", f"agent_id {body.agent_id!r} does not match the path")
        config = msgspec.structs.replace(body, updated_at=utc_now())
        self.agents[agent_id] = config
        return config

    # ---- what the engine does of itself ----------------------------------------------------------------
    def balance_updated(self, account_id: str, new_balance: Decimal, reason: str) -> bytes:
        """Set the account's capital; the `account.balance_updated` event to send."""
        account = self.known(account_id)
        account.capital = new_balance
        data = BalanceUpdated(account_id=account_id, new_balance=new_balance, reason=reason)
        return self.event(f"balance/{account_id}/{self.event_count}", self.now(), "account.balance_updated", data)

    def account_error(self, account_id: str, error_type: str, error_message: str) -> bytes:
        """The `account.error` event to send; a `critical` error also pauses the account."""
        account = self.known(account_id)
        if error_type == "critical" and account.status == "active":
            account.status = "paused"
        data = AccountErrorEvent(account_id=account_id, error_type=error_type, error_message=error_message)
        return self.event(f"error/{account_id}/{self.event_count}", self.now(), "account.error", data)

    # ---- the walk ------------------------------------------------------------------------------------
    def now(self) -> datetime:
        # Admin-driven events happen "now", but never before the simulated days already run.
        return max(utc_now(), datetime.combine(self.clock, datetime.min.time(), UTC))

    def known(self, account_id: str) -> Account:
        account = self.accounts.get(account_id)
        if account is None:
            raise Refused(404, "unknown_account", f"no account {account_id!r}")
        return account

    def event(self, key: str, occurred_at: datetime, event_type: str, data: msgspec.Struct) -> bytes:
        self.event_count += 1
        event_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"{self.seed}/{key}"))
        body = engine_api.encode({"event_id": event_id, "occurred_at": occurred_at, "event_type": event_type,
                                  "data": data})  # a webhook body (contract §6), its keys in this order
        self.events.append(body)
        return body

    def simulate_day(self) -> list[bytes]:
        """Run the next day for every open account: its trades in time order, then each `daily.performance`."""
        day = self.clock
        day_start = datetime.combine(day, datetime.min.time(), UTC)
        timeline: list[tuple[datetime, int, str, Trade]] = []
        performances: list[Performance] = []
        for index, account in enumerate(sorted(self.accounts.values(), key=lambda a: a.account_id)):
            if account.status == "closed":
                continue
            opening = account.capital
            trades = self._trade_day(account, day_start)
            for trade in trades:
                timeline.append((trade.executed_at, index, trade.trade_id + trade.status, trade))
            results = [t.profit_loss for t in trades if t.status == "closed" and t.profit_loss is not None]
            performance = Performance(
                account_id=account.account_id, date=day, opening_balance=opening,
                closing_balance=account.capital, daily_return=account.capital - opening,
                trades_executed=len(results), winning_trades=sum(1 for r in results if r > 0),
                losing_trades=sum(1 for r in results if r < 0))
            account.performance[day] = performance
            performances.append(performance)
        timeline.sort(key=lambda item: (item[0], item[1], item[2]))
        bodies = [self.event(f"trade/{trade.trade_id}/{trade.status}", trade.executed_at, "trade.executed", trade)
                  for _, _, _, trade in timeline]
        day_end = day_start + timedelta(days=1)
        bodies += [self.event(f"performance/{p.account_id}/{day.isoformat()}", day_end, "daily.performance", p)
                   for p in performances]
        self.clock = day + timedelta(days=1)
        return bodies

    def _trade_day(self, account: Account, day_start: datetime) -> list[Trade]:
        """Run one account's day in time order; returns its trade events (open and closed states)."""
        rng = account.rng
        day_end = day_start + timedelta(days=1)
        queue: list[tuple[datetime, int, str, Any]] = []
        order = 0
        for position in account.positions:
            if position.close_at < day_end:
                queue.append((position.close_at, order, "close", position))
                order += 1
        if account.status == "active":
            for _ in range(self.trades_per_day):
                plan = {
                    "open_at": day_start + timedelta(seconds=rng.randrange(DAY_S)),
                    "hold_s": rng.randint(HOLD_MIN_S, HOLD_MAX_S),
                    "symbol": rng.choice(sorted(SYMBOL_PRICES)),
                    "side": rng.choice(("buy", "sell")),
                    "percent": rng.randint(POSITION_PERCENT_MIN, POSITION_PERCENT_MAX),
                    "move_bp": sum(rng.randint(MOVE_BP_STEP_MIN, MOVE_BP_STEP_MAX) for _ in range(3)),
                }
                queue.append((plan["open_at"], order, "open", plan))
                order += 1
        heapq.heapify(queue)
        events: list[Trade] = []
        while queue:
            at, _, kind, item = heapq.heappop(queue)
            if kind == "open":
                position = self._open(account, at, item)
                if position is None:
                    continue
                events.append(position.trade)
                if position.close_at < day_end:
                    heapq.heappush(queue, (position.close_at, order, "close", position))
                    order += 1
            else:
                events.append(self.close(account, item, at, item.exit_price))
        return events

    def _open(self, account: Account, at: datetime, plan: dict[str, Any]) -> Position | None:
        symbol = plan["symbol"]
        entry = account.prices[symbol]
        quantity = (account.capital * plan["percent"] / 100 / entry).quantize(QUANTITY_STEP, rounding=ROUND_DOWN)
        if quantity <= 0:
            return None
        account.trade_count += 1
        trade_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"{self.seed}/{account.account_id}/trade/{account.trade_count}"))
        trade = Trade(trade_id=trade_id, account_id=account.account_id, symbol=symbol, side=plan["side"],
                      quantity=quantity, entry_price=entry, status="open", executed_at=at)
        exit_price = max(CENT, cents(entry * (10_000 + plan["move_bp"]) / 10_000))
        position = Position(trade=trade, close_at=at + timedelta(seconds=plan["hold_s"]),
                            exit_price=exit_price, move_bp=plan["move_bp"])
        account.positions.append(position)
        account.trades[trade_id] = trade
        return position

    def close(self, account: Account, position: Position, at: datetime, exit_price: Decimal) -> Trade:
        opened = position.trade
        direction = 1 if opened.side == "buy" else -1
        profit_loss = cents((exit_price - opened.entry_price) * opened.quantity * direction)
        profit_loss = max(profit_loss, -account.capital)  # the engine cannot lose more than it holds
        account.capital += profit_loss
        account.prices[opened.symbol] = exit_price
        account.positions.remove(position)
        trade = msgspec.structs.replace(opened, status="closed", executed_at=at, exit_price=exit_price,
                                        profit_loss=profit_loss)
        account.trades[opened.trade_id] = trade
        return trade
