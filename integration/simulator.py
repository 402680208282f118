"""The ML Engine simulator (contract §7): the engine's API, a seeded random walk, signed webhooks, faults.

What it guarantees, so tests can lean on it:
- The API of contract §7 under `/api/v1`, speaking the wire formats of `integration.engine_api`
  (Decimals as JSON numbers). Capital is Decimal at scale 2; a capital update applies its `amount`
  (never overwrites with `new_total_capital`; a mismatch is only counted).
- `Idempotency-Key` on POST/PUT: the same key and request answer the first (non-5xx) answer again
  without applying anything; the same key with another request is a 409.
- Trading is a random walk seeded by (seed, account id): the same seed and the same commands give
  the same trades, events and event ids, byte for byte. Simulated time moves only when told
  (`step(days)`, `POST /admin/step`, or `--days`); trades carry `executed_at` in simulated time and
  every day ends with `daily.performance` whose `closing_balance` is the account's capital and whose
  `daily_return` is the day's realized profit or loss (so opening + return = closing).
- Webhooks are signed over the exact bytes sent and retried with backoff on 5xx and transport errors
  until delivered (or the simulator stops); 2xx and 4xx answers are final.
- Faults (constructor, CLI flags, `POST /admin/faults`) change only what they say; `/admin/*` is never
  faulted. Money never passes through float: the walk is drawn in integer basis points.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import hmac
import logging
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Final, Literal

import anyio
import httpx
import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post, put
from litestar.middleware.base import DefineMiddleware
from litestar.params import FromPath
from litestar.types import ASGIApp, Message, Receive, Scope, Send

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
    PerformancePage,
    Trade,
    TradesPage,
)
from integration.signature import sign, sign_standard

log = logging.getLogger(__name__)

DEFAULT_LEDGER_URL: Final[str] = "http://127.0.0.1:8080/api/v1/webhooks/ml-engine"
DEFAULT_PORT: Final[int] = 8000
API_PREFIX: Final[str] = "/api/v1"
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
REQUEST_BYTES_MAX: Final[int] = 1024 * 1024
IDEMPOTENCY_KEYS_MAX: Final[int] = 100_000
IDEMPOTENCY_WAIT_S: Final[float] = 30.0
EVENT_LOG_MAX: Final[int] = 100_000
TRADES_PAGE_MAX: Final[int] = 10_000
HUGE_BODY_BYTES: Final[int] = 4 * 1024 * 1024
HUGE_CHUNK_BYTES: Final[int] = 64 * 1024
GARBAGE_BODY: Final[bytes] = b'<html><body>{"account_id": "oops", "balance": </body>'
SLEEP_SLICE_S: Final[float] = 0.05
WEBHOOK_TIMEOUT_MS: Final[int] = 10_000
WEBHOOK_RETRY_DELAY_MS: Final[int] = 200
WEBHOOK_RETRY_DELAY_MAX_MS: Final[int] = 5_000
SERVER_START_TIMEOUT_S: Final[float] = 10.0
SYMBOL_PRICES: Final[dict[str, Decimal]] = {
    "AAPL": Decimal("190.00"), "MSFT": Decimal("410.00"), "NVDA": Decimal("120.00"),
    "SPY": Decimal("520.00"), "BTC-USD": Decimal("64000.00"), "ETH-USD": Decimal("3100.00"),
    "EURUSD": Decimal("1.08"),
}
ROUTES: Final[tuple[str, ...]] = ("create", "capital", "pause", "resume", "close", "status", "trades",
                                  "performance", "agent_config", "health")
COMMAND_ROUTES: Final[frozenset[str]] = frozenset({"create", "capital", "pause", "resume", "close",
                                                   "agent_config"})
_EVENT_NAMESPACE: Final = uuid.UUID("6c1f3e52-3f0b-4d7e-9a43-5b8f0f1d2c11")

Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]
SignatureScheme = Literal["ml", "standard", "both"]


# ---- faults ----------------------------------------------------------------------------------------
class Target(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which engine-API requests a fault hits: a listed route name or account id; "*" means all."""

    routes: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()

    def hits(self, route: str, account_id: str | None) -> bool:
        return ("*" in self.routes or route in self.routes
                or (account_id is not None and ("*" in self.accounts or account_id in self.accounts)))


class Faults(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the simulator does wrong. The default does nothing wrong.

    Route names: create, capital, pause, resume, close, status, trades, performance, agent_config, health.
    To make the engine stop answering for one account: `slow=Target(accounts=[A])` with a large
    `slow_s` (clients time out), or `error=Target(accounts=[A])` (5xx).
    """

    error_rate: Probability = 0.0  # chance that any engine-API request answers `error_status`
    error_status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 503  # 429 and 4xx too
    error: Target = Target()  # these always answer `error_status`
    fail_next: Annotated[int, msgspec.Meta(ge=0)] = 0  # the next N requests answer `error_status`
    lose_responses: Annotated[int, msgspec.Meta(ge=0)] = 0  # next N commands apply, then answer 5xx
    slow_s: Seconds = 0.0  # how long `slow` requests wait before answering
    slow: Target = Target()
    garbage: Target = Target()  # 200 with a body that is not JSON
    huge: Target = Target()  # 200 with a body of HUGE_BODY_BYTES, chunked (no Content-Length)
    redirect: Target = Target()  # 307 to another path
    drift: dict[str, Decimal] = {}  # account -> amount added to the balance that `status` reports
    webhook_duplicate_rate: Probability = 0.0  # chance each webhook is delivered twice
    webhook_reorder_window: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0  # shuffle within windows
    webhook_delay_s: Seconds = 0.0  # wait before each webhook delivery


# ---- state ----------------------------------------------------------------------------------------
@dataclass
class _Position:
    trade: Trade  # the open trade
    close_at: datetime
    exit_price: Decimal
    move_bp: int


@dataclass
class _Account:
    account_id: str
    product_id: str
    agent_type: str
    agent_config: dict[str, Any]
    capital: Decimal
    rng: random.Random
    status: str = "active"
    trade_count: int = 0
    prices: dict[str, Decimal] = field(default_factory=lambda: dict(SYMBOL_PRICES))
    positions: list[_Position] = field(default_factory=list)
    trades: dict[str, Trade] = field(default_factory=dict)  # latest state per trade id
    performance: dict[date, Performance] = field(default_factory=dict)
    capital_mismatches: int = 0


@dataclass
class _Stored:
    fingerprint: str
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Envelope(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    occurred_at: datetime
    event_type: str
    data: Any


class _StepRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    days: Annotated[int, msgspec.Meta(ge=1, le=STEP_DAYS_MAX)] = 1
    wait: bool = False
    wait_timeout_s: Seconds = 30.0


class _BalanceRequest(msgspec.Struct, frozen=True, kw_only=True):
    new_balance: Decimal
    reason: str = "engine adjustment"


class _ErrorRequest(msgspec.Struct, frozen=True, kw_only=True):
    error_type: str = "critical"
    error_message: str = "simulated engine error"


class _FlushRequest(msgspec.Struct, frozen=True, kw_only=True):
    timeout_s: Seconds = 30.0


def _cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def _has_cents_only(value: Decimal) -> bool:
    return value == value.quantize(CENT, rounding=ROUND_DOWN)


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _json(value: object, status_code: int = 200) -> Response[bytes]:
    return Response(content=engine_api.encode(value), status_code=status_code, media_type="application/json")


def _error(status_code: int, code: str, detail: str) -> Response[bytes]:
    return _json({"error": code, "detail": detail}, status_code)


class Simulator:
    """An in-process ML Engine. `app` is its ASGI app; `serve()` runs it on a background thread.

    Thread-safe: the API (on the server's event loop), `step()` and the webhook sender share one lock.
    With `ledger_url=None` nothing is sent; every generated event is still kept in `events()`.
    """

    def __init__(self, *, seed: int = 0, webhook_secret: str | None = None, ledger_url: str | None = None,
                 api_key: str | None = None, start_date: date | None = None, trades_per_day: int = 10,
                 faults: Faults | None = None, signature_scheme: SignatureScheme = "ml",
                 webhook_timeout_ms: int = WEBHOOK_TIMEOUT_MS,
                 webhook_retry_delay_ms: int = WEBHOOK_RETRY_DELAY_MS,
                 webhook_retry_delay_max_ms: int = WEBHOOK_RETRY_DELAY_MAX_MS) -> None:
        if ledger_url and not webhook_secret:
            raise ValueError("a webhook_secret is needed to sign webhooks to the ledger")
        if not 0 <= trades_per_day <= TRADES_PER_DAY_MAX:
            raise ValueError(f"trades_per_day must be from 0 to {TRADES_PER_DAY_MAX}")
        self.seed = seed
        self.webhook_secret = webhook_secret
        self.ledger_url = ledger_url
        self.api_key = api_key or None
        self.trades_per_day = trades_per_day
        self.signature_scheme = signature_scheme
        self.webhook_timeout_ms = webhook_timeout_ms
        self.webhook_retry_delay_ms = webhook_retry_delay_ms
        self.webhook_retry_delay_max_ms = webhook_retry_delay_max_ms
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._clock = start_date or datetime.now(UTC).date()
        self._accounts: dict[str, _Account] = {}
        self._agents: dict[str, AgentConfig] = {}
        self._faults = Faults()
        self._fail_next = 0
        self._lose_responses = 0
        self._fault_rng = random.Random(f"{seed}/faults")
        self._webhook_rng = random.Random(f"{seed}/webhooks")
        self._event_count = 0
        self._events: deque[bytes] = deque(maxlen=EVENT_LOG_MAX)
        self._idempotency: OrderedDict[str, _Stored] = OrderedDict()
        self._inflight: dict[str, asyncio.Event] = {}
        self._counters: dict[str, int] = dict.fromkeys((
            "events_generated", "webhooks_queued", "webhooks_sent", "webhooks_delivered",
            "webhooks_rejected", "webhooks_failed", "webhooks_duplicated", "webhooks_abandoned",
            "idempotent_replays", "idempotency_conflicts", "responses_lost", "faults_injected"), 0)
        self._requests: dict[str, int] = dict.fromkeys(ROUTES, 0)
        self._sender: _WebhookSender | None = None
        self._server: BackgroundServer | None = None
        self.set_faults(faults or Faults())
        self.app = self._build_app()

    # ---- control ------------------------------------------------------------------------------------
    @property
    def clock(self) -> date:
        """The next simulated day to run; every day before it has been simulated."""
        with self._lock:
            return self._clock

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults (counters `fail_next` and `lose_responses` restart from the given values)."""
        with self._lock:
            self._faults = faults
            self._fail_next = faults.fail_next
            self._lose_responses = faults.lose_responses

    def events(self) -> list[bytes]:
        """Every generated webhook body, in generation order (before duplicate/reorder faults)."""
        with self._lock:
            return list(self._events)

    def state(self) -> dict[str, Any]:
        """Accounts (status, capital, drift, positions), counters, requests per route (`GET /admin/state`)."""
        with self._lock:
            accounts = {
                a.account_id: {"status": a.status, "capital": a.capital,
                               "drift": self._faults.drift.get(a.account_id, Decimal(0)),
                               "open_positions": len(a.positions), "trades": len(a.trades),
                               "capital_mismatches": a.capital_mismatches}
                for a in self._accounts.values()}
            counters = dict(self._counters)
            if self._sender is not None:
                counters["webhooks_pending"] = self._sender.pending()
            return {"clock": self._clock, "accounts": accounts, "counters": counters,
                    "requests": dict(self._requests), "idempotency_keys": len(self._idempotency)}

    def account_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._accounts)

    def step(self, days: int = 1) -> int:
        """Simulate `days` days for every open account; returns how many events were generated."""
        if not 1 <= days <= STEP_DAYS_MAX:
            raise ValueError(f"days must be from 1 to {STEP_DAYS_MAX}")
        total = 0
        for _ in range(days):
            with self._lock:
                bodies = self._simulate_day()
            self._publish(bodies)
            total += len(bodies)
        return total

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued webhook got a final answer; False if `timeout_s` passed first."""
        sender = self._sender
        return True if sender is None else sender.flush(timeout_s)

    def balance_updated(self, account_id: str, new_balance: Decimal, reason: str) -> None:
        """Set the account's capital and send `account.balance_updated` (as an engine correction would)."""
        if not new_balance.is_finite() or new_balance < 0 or not _has_cents_only(new_balance):
            raise ValueError("new_balance must be a non-negative amount with at most 2 decimals")
        with self._lock:
            account = self._account(account_id)
            account.capital = new_balance
            data = BalanceUpdated(account_id=account_id, new_balance=new_balance, reason=reason)
            body = self._event(f"balance/{account_id}/{self._event_count}", self._now(),
                               "account.balance_updated", data)
        self._publish([body])

    def account_error(self, account_id: str, error_type: str, error_message: str) -> None:
        """Send `account.error`; a `critical` error also pauses the account here."""
        with self._lock:
            account = self._account(account_id)
            if error_type == "critical" and account.status == "active":
                account.status = "paused"
            data = AccountErrorEvent(account_id=account_id, error_type=error_type, error_message=error_message)
            body = self._event(f"error/{account_id}/{self._event_count}", self._now(), "account.error", data)
        self._publish([body])

    # ---- serving ------------------------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Simulator:
        """Start serving on a background thread (port 0 = a free port); see `url`, `api_url`, `stop()`."""
        if self._server is not None:
            raise RuntimeError("already serving")
        self._stopping.clear()
        self._server = BackgroundServer(self.app, host=host, port=port).start()
        return self

    @property
    def url(self) -> str:
        """The server's root, e.g. http://127.0.0.1:54321 (admin routes live here)."""
        if self._server is None:
            raise RuntimeError("not serving: call serve() first")
        return self._server.url

    @property
    def api_url(self) -> str:
        """The engine's base URL for clients (ML_ENGINE_URL), e.g. http://127.0.0.1:54321/api/v1."""
        return self.url + API_PREFIX

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server and the webhook sender; undelivered webhooks are abandoned (and counted)."""
        self._stopping.set()
        if self._server is not None:
            self._server.stop(timeout_s)
            self._server = None
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.stop(timeout_s)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- the walk -----------------------------------------------------------------------------------
    def _now(self) -> datetime:
        # Admin-driven events happen "now", but never before the simulated days already run.
        return max(_utc_now(), datetime.combine(self._clock, datetime.min.time(), UTC))

    def _account(self, account_id: str) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            raise KeyError(account_id)
        return account

    def _event(self, key: str, occurred_at: datetime, event_type: str, data: msgspec.Struct) -> bytes:
        self._event_count += 1
        self._counters["events_generated"] += 1
        event_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"{self.seed}/{key}"))
        body = engine_api.encode(_Envelope(event_id=event_id, occurred_at=occurred_at,
                                           event_type=event_type, data=data))
        self._events.append(body)
        return body

    def _simulate_day(self) -> list[bytes]:
        day = self._clock
        day_start = datetime.combine(day, datetime.min.time(), UTC)
        timeline: list[tuple[datetime, int, str, Trade]] = []
        performances: list[Performance] = []
        for index, account in enumerate(sorted(self._accounts.values(), key=lambda a: a.account_id)):
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
        bodies = [self._event(f"trade/{trade.trade_id}/{trade.status}", trade.executed_at, "trade.executed",
                              trade) for _, _, _, trade in timeline]
        day_end = day_start + timedelta(days=1)
        bodies += [self._event(f"performance/{p.account_id}/{day.isoformat()}", day_end, "daily.performance", p)
                   for p in performances]
        self._clock = day + timedelta(days=1)
        return bodies

    def _trade_day(self, account: _Account, day_start: datetime) -> list[Trade]:
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
                events.append(self._close(account, item, at, item.exit_price))
        return events

    def _open(self, account: _Account, at: datetime, plan: dict[str, Any]) -> _Position | None:
        symbol = plan["symbol"]
        entry = account.prices[symbol]
        quantity = (account.capital * plan["percent"] / 100 / entry).quantize(QUANTITY_STEP, rounding=ROUND_DOWN)
        if quantity <= 0:
            return None
        account.trade_count += 1
        trade_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"{self.seed}/{account.account_id}/trade/{account.trade_count}"))
        trade = Trade(trade_id=trade_id, account_id=account.account_id, symbol=symbol, side=plan["side"],
                      quantity=quantity, entry_price=entry, status="open", executed_at=at)
        exit_price = max(CENT, _cents(entry * (10_000 + plan["move_bp"]) / 10_000))
        position = _Position(trade=trade, close_at=at + timedelta(seconds=plan["hold_s"]),
                             exit_price=exit_price, move_bp=plan["move_bp"])
        account.positions.append(position)
        account.trades[trade_id] = trade
        return position

    def _close(self, account: _Account, position: _Position, at: datetime, exit_price: Decimal) -> Trade:
        opened = position.trade
        direction = 1 if opened.side == "buy" else -1
        profit_loss = _cents((exit_price - opened.entry_price) * opened.quantity * direction)
        profit_loss = max(profit_loss, -account.capital)  # the engine cannot lose more than it holds
        account.capital += profit_loss
        account.prices[opened.symbol] = exit_price
        account.positions.remove(position)
        trade = msgspec.structs.replace(opened, status="closed", executed_at=at, exit_price=exit_price,
                                        profit_loss=profit_loss)
        account.trades[opened.trade_id] = trade
        return trade

    # ---- webhooks -----------------------------------------------------------------------------------
    def _publish(self, bodies: list[bytes]) -> None:
        if not bodies or not self.ledger_url:
            return
        with self._lock:
            faults = self._faults
            out: list[bytes] = []
            for body in bodies:
                out.append(body)
                if faults.webhook_duplicate_rate and self._webhook_rng.random() < faults.webhook_duplicate_rate:
                    out.append(body)
                    self._counters["webhooks_duplicated"] += 1
            window = faults.webhook_reorder_window
            if window > 1:
                for start in range(0, len(out), window):
                    chunk = out[start:start + window]
                    self._webhook_rng.shuffle(chunk)
                    out[start:start + window] = chunk
            self._counters["webhooks_queued"] += len(out)
            if self._sender is None:
                self._sender = _WebhookSender(self)
            sender = self._sender
        sender.publish(out)

    def _count(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counters[name] += by

    def _signed_headers(self, body: bytes) -> dict[str, str]:
        assert self.webhook_secret is not None
        headers = {"Content-Type": "application/json", "User-Agent": "invledger-engine-simulator/1"}
        if self.signature_scheme in ("ml", "both"):
            headers["X-ML-Signature"] = sign(self.webhook_secret, body)
        if self.signature_scheme in ("standard", "both"):
            webhook_id = msgspec.json.decode(body, type=_Envelope).event_id
            timestamp = int(time.time())
            headers["webhook-id"] = webhook_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign_standard(self.webhook_secret, webhook_id, timestamp, body)
        return headers

    # ---- the API ------------------------------------------------------------------------------------
    def _build_app(self) -> Litestar:
        sim = self

        def engine(route: str) -> dict[str, str]:
            return {"engine_route": route}

        async def read(request: Request, kind: type[Any]) -> Any:
            raw = await request.body()
            try:
                return engine_api.decode(raw or b"{}", kind)
            except msgspec.DecodeError as error:
                raise _Invalid(str(error)) from None

        @post(f"{API_PREFIX}/trading/accounts", opt=engine("create"))
        async def create_account(request: Request) -> Response[bytes]:
            body: CreateAccountRequest = await read(request, CreateAccountRequest)
            if not _has_cents_only(body.initial_capital):
                return _error(422, "invalid", "initial_capital has more than 2 decimals")
            with sim._lock:
                if body.account_id in sim._accounts:
                    return _error(409, "account_exists", f"account {body.account_id!r} already exists")
                sim._accounts[body.account_id] = _Account(
                    account_id=body.account_id, product_id=body.product_id, agent_type=body.agent_type,
                    agent_config=dict(body.agent_config), capital=_cents(body.initial_capital),
                    rng=random.Random(f"{sim.seed}/{body.account_id}"))
                sim._agents.setdefault(body.agent_type, AgentConfig(
                    agent_id=body.agent_type, agent_type=body.agent_type,
                    parameters=dict(body.agent_config), updated_at=_utc_now()))
                ack = AccountAck(account_id=body.account_id, status="active", capital=_cents(body.initial_capital))
            return _json(ack, 201)

        @post(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/capital", opt=engine("capital"))
        async def update_capital(account_id: FromPath[str], request: Request) -> Response[bytes]:
            body: CapitalUpdate = await read(request, CapitalUpdate)
            if not _has_cents_only(body.amount):
                return _error(422, "invalid", "amount has more than 2 decimals")
            with sim._lock:
                account = sim._accounts.get(account_id)
                if account is None:
                    return _error(404, "unknown_account", f"no account {account_id!r}")
                if account.status == "closed":
                    return _error(409, "account_closed", f"account {account_id!r} is closed")
                if body.operation == "withdrawal" and body.amount > account.capital:
                    return _error(409, "insufficient_capital",
                                  f"withdrawal of {body.amount} exceeds capital {account.capital}")
                account.capital += body.amount if body.operation == "deposit" else -body.amount
                if account.capital != body.new_total_capital:
                    account.capital_mismatches += 1
                    log.info("capital of %s is %s after %s; the ledger says %s", account_id, account.capital,
                             body.operation, body.new_total_capital)
                ack = AccountAck(account_id=account_id, status=account.status, capital=account.capital)  # type: ignore[arg-type]
            return _json(ack)

        def transition(account_id: str, target: str) -> Response[bytes]:
            with sim._lock:
                account = sim._accounts.get(account_id)
                if account is None:
                    return _error(404, "unknown_account", f"no account {account_id!r}")
                if account.status == "closed" and target != "closed":
                    return _error(409, "account_closed", f"account {account_id!r} is closed")
                bodies: list[bytes] = []
                if target == "closed" and account.status != "closed":
                    now = sim._now()
                    for position in list(account.positions):  # liquidate flat
                        trade = sim._close(account, position, now, position.trade.entry_price)
                        bodies.append(sim._event(f"trade/{trade.trade_id}/closed", now, "trade.executed", trade))
                account.status = target
                ack = AccountAck(account_id=account_id, status=account.status, capital=account.capital)  # type: ignore[arg-type]
            sim._publish(bodies)
            return _json(ack)

        @post(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/pause", opt=engine("pause"))
        async def pause(account_id: FromPath[str]) -> Response[bytes]:
            return transition(account_id, "paused")

        @post(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/resume", opt=engine("resume"))
        async def resume(account_id: FromPath[str]) -> Response[bytes]:
            return transition(account_id, "active")

        @post(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/close", opt=engine("close"))
        async def close(account_id: FromPath[str]) -> Response[bytes]:
            return transition(account_id, "closed")

        @get(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/status", opt=engine("status"))
        async def status(account_id: FromPath[str]) -> Response[bytes]:
            with sim._lock:
                account = sim._accounts.get(account_id)
                if account is None:
                    return _error(404, "unknown_account", f"no account {account_id!r}")
                balance = account.capital + sim._faults.drift.get(account_id, Decimal(0))
                answer = AccountStatus(account_id=account_id, status=account.status,  # type: ignore[arg-type]
                                       balance=balance, equity=balance, as_of=_utc_now())
            return _json(answer)

        def date_range(request: Request) -> tuple[date | None, date | None]:
            try:
                start, end = (request.query_params.get(name) for name in ("start_date", "end_date"))
                return (date.fromisoformat(start) if start else None, date.fromisoformat(end) if end else None)
            except ValueError:
                raise _Invalid("start_date and end_date must be dates like 2025-01-31") from None

        @get(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/trades", opt=engine("trades"))
        async def trades(account_id: FromPath[str], request: Request) -> Response[bytes]:
            start, end = date_range(request)
            wanted = request.query_params.get("status")
            if wanted not in (None, "open", "closed"):
                return _error(422, "invalid", "status must be open or closed")
            with sim._lock:
                account = sim._accounts.get(account_id)
                if account is None:
                    return _error(404, "unknown_account", f"no account {account_id!r}")
                found = [t for t in account.trades.values()
                         if (start is None or t.executed_at.date() >= start)
                         and (end is None or t.executed_at.date() <= end)
                         and (wanted is None or t.status == wanted)]
            if len(found) > TRADES_PAGE_MAX:
                return _error(422, "too_many", f"more than {TRADES_PAGE_MAX} trades: narrow the dates")
            found.sort(key=lambda t: (t.executed_at, t.trade_id))
            return _json(TradesPage(trades=found))

        @get(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/performance", opt=engine("performance"))
        async def performance(account_id: FromPath[str], request: Request) -> Response[bytes]:
            start, end = date_range(request)
            with sim._lock:
                account = sim._accounts.get(account_id)
                if account is None:
                    return _error(404, "unknown_account", f"no account {account_id!r}")
                found = [p for d, p in sorted(account.performance.items())
                         if (start is None or d >= start) and (end is None or d <= end)]
            return _json(PerformancePage(performance=found))

        @get(f"{API_PREFIX}/agents/{{agent_id:str}}/config", opt=engine("agent_config"))
        async def get_agent_config(agent_id: FromPath[str]) -> Response[bytes]:
            with sim._lock:
                config = sim._agents.get(agent_id)
            if config is None:
                return _error(404, "unknown_agent", f"no agent {agent_id!r}")
            return _json(config)

        @put(f"{API_PREFIX}/agents/{{agent_id:str}}/config", opt=engine("agent_config"))
        async def put_agent_config(agent_id: FromPath[str], request: Request) -> Response[bytes]:
            body: AgentConfig = await read(request, AgentConfig)
            if body.agent_id != agent_id:
                return _error(422, "invalid", f"agent_id {body.agent_id!r} does not match the path")
            config = msgspec.structs.replace(body, updated_at=_utc_now())
            with sim._lock:
                sim._agents[agent_id] = config
            return _json(config)

        @get(f"{API_PREFIX}/health", opt=engine("health"))
        async def health() -> Response[bytes]:
            return _json({"status": "ok"})

        # ---- admin: never faulted, no key --------------------------------------------------------
        @post("/admin/step")
        async def admin_step(request: Request) -> Response[bytes]:
            body: _StepRequest = await read(request, _StepRequest)
            events = await anyio.to_thread.run_sync(sim.step, body.days)
            delivered = (await anyio.to_thread.run_sync(sim.flush, body.wait_timeout_s)) if body.wait else None
            return _json({"days": body.days, "events": events, "clock": sim.clock, "delivered": delivered})

        @post("/admin/flush")
        async def admin_flush(request: Request) -> Response[bytes]:
            body: _FlushRequest = await read(request, _FlushRequest)
            delivered = await anyio.to_thread.run_sync(sim.flush, body.timeout_s)
            return _json({"delivered": delivered})

        @get("/admin/faults")
        async def admin_get_faults() -> Response[bytes]:
            return _json(sim.faults)

        @post("/admin/faults")
        async def admin_set_faults(request: Request) -> Response[bytes]:
            faults: Faults = await read(request, Faults)
            sim.set_faults(faults)
            return _json(faults)

        @get("/admin/state")
        async def admin_state() -> Response[bytes]:
            return _json(sim.state())

        @post("/admin/accounts/{account_id:str}/balance")
        async def admin_balance(account_id: FromPath[str], request: Request) -> Response[bytes]:
            body: _BalanceRequest = await read(request, _BalanceRequest)
            try:
                sim.balance_updated(account_id, body.new_balance, body.reason)
            except KeyError:
                return _error(404, "unknown_account", f"no account {account_id!r}")
            except ValueError as error:
                return _error(422, "invalid", str(error))
            return _json({"account_id": account_id, "capital": body.new_balance})

        @post("/admin/accounts/{account_id:str}/error")
        async def admin_error(account_id: FromPath[str], request: Request) -> Response[bytes]:
            body: _ErrorRequest = await read(request, _ErrorRequest)
            try:
                sim.account_error(account_id, body.error_type, body.error_message)
            except KeyError:
                return _error(404, "unknown_account", f"no account {account_id!r}")
            return _json({"account_id": account_id, "error_type": body.error_type})

        def invalid(_: Request, error: Exception) -> Response[bytes]:
            return _error(422, "invalid", str(error))

        return Litestar(
            route_handlers=[create_account, update_capital, pause, resume, close, status, trades, performance,
                            get_agent_config, put_agent_config, health, admin_step, admin_flush,
                            admin_get_faults, admin_set_faults, admin_state, admin_balance, admin_error],
            middleware=[DefineMiddleware(_EngineMiddleware, simulator=self)],
            exception_handlers={_Invalid: invalid},
            openapi_config=None, logging_config=None, debug=False)

    # ---- used by the middleware ---------------------------------------------------------------------
    def _api_key_ok(self, given: str | None) -> bool:
        return self.api_key is None or (given is not None and hmac.compare_digest(given, self.api_key))

    def _pre_fault(self, route: str, account_id: str | None) -> tuple[str | None, float]:
        """Decide, under the lock, which fault (if any) this request gets, and how long it waits first."""
        with self._lock:
            self._requests[route] += 1
            faults = self._faults
            wait_s = faults.slow_s if faults.slow.hits(route, account_id) else 0.0
            kind: str | None = None
            if self._fail_next > 0:
                self._fail_next -= 1
                kind = "error"
            elif faults.error.hits(route, account_id) or (
                    faults.error_rate and self._fault_rng.random() < faults.error_rate):
                kind = "error"
            elif faults.redirect.hits(route, account_id):
                kind = "redirect"
            elif faults.garbage.hits(route, account_id):
                kind = "garbage"
            elif faults.huge.hits(route, account_id):
                kind = "huge"
            if kind is not None or wait_s:
                self._counters["faults_injected"] += 1
            return kind, wait_s

    def _take_lost_response(self) -> bool:
        with self._lock:
            if self._lose_responses > 0:
                self._lose_responses -= 1
                self._counters["responses_lost"] += 1
                return True
            return False

    async def _sleep(self, seconds: float) -> None:
        """Sleep on the event loop, cut short when the simulator stops (so shutdown is quick)."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(SLEEP_SLICE_S, remaining))


class _Invalid(Exception):
    """A request the engine cannot read: answered 422."""


class _EngineMiddleware:
    """Around each engine-API route: API key, faults, and `Idempotency-Key` replay (in that order)."""

    def __init__(self, app: ASGIApp, simulator: Simulator) -> None:
        self.app = app
        self.sim = simulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler") if scope["type"] == "http" else None
        route = handler.opt.get("engine_route") if handler is not None else None
        if route is None:
            await self.app(scope, receive, send)
            return
        sim = self.sim
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        account_id = scope.get("path_params", {}).get("account_id")
        if route != "health" and not sim._api_key_ok(headers.get("x-api-key")):
            await _send(send, 401, engine_api.encode({"error": "unauthorized", "detail": "bad X-API-Key"}))
            return
        kind, wait_s = sim._pre_fault(route, account_id)
        if wait_s:
            await sim._sleep(wait_s)
        if kind == "error":
            status = sim.faults.error_status
            await _send(send, status, engine_api.encode({"error": "injected", "detail": f"simulated {status}"}))
            return
        if kind == "redirect":
            await _send(send, 307, b"", [(b"location", f"{API_PREFIX}/redirected{scope['path']}".encode())])
            return
        if kind == "garbage":
            await _send(send, 200, GARBAGE_BODY)
            return
        if kind == "huge":
            await _send_huge(send)
            return

        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > REQUEST_BYTES_MAX:
                await _send(send, 413, engine_api.encode({"error": "too_large", "detail": "request body"}))
                return
        key = headers.get("idempotency-key") if scope["method"] in ("POST", "PUT") else None
        fingerprint = hashlib.sha256(f"{scope['method']} {scope['path']}\n".encode() + body).hexdigest()
        if key is not None:
            stored = await self._stored(key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    sim._count("idempotency_conflicts")
                    await _send(send, 409, engine_api.encode({
                        "error": "idempotency_conflict",
                        "detail": "this Idempotency-Key was used with another request"}))
                    return
                sim._count("idempotent_replays")
                await self._answer(send, route, stored.status, stored.headers, stored.body)
                return
            sim._inflight[key] = asyncio.Event()
        try:
            status, response_headers, response_body = await self._call(scope, body, receive)
            if key is not None and status < 500:
                with sim._lock:
                    sim._idempotency[key] = _Stored(fingerprint, status, response_headers, response_body)
                    while len(sim._idempotency) > IDEMPOTENCY_KEYS_MAX:
                        sim._idempotency.popitem(last=False)
        finally:
            if key is not None:
                sim._inflight.pop(key).set()
        await self._answer(send, route, status, response_headers, response_body)

    async def _stored(self, key: str) -> _Stored | None:
        # A request with the same key still being handled: wait for its answer rather than apply twice.
        inflight = self.sim._inflight.get(key)
        if inflight is not None:
            try:
                await asyncio.wait_for(inflight.wait(), IDEMPOTENCY_WAIT_S)
            except TimeoutError:
                pass
        with self.sim._lock:
            return self.sim._idempotency.get(key)

    async def _call(self, scope: Scope, body: bytes, receive: Receive) -> tuple[int, list[Any], bytes]:
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        captured: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = [(k, v) for k, v in message.get("headers", [])
                                       if k.lower() != b"content-length"]
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")

        await self.app(scope, replay, capture)
        return captured["status"], captured["headers"], bytes(captured["body"])

    async def _answer(self, send: Send, route: str, status: int, headers: list[Any], body: bytes) -> None:
        if route in COMMAND_ROUTES and 200 <= status < 300 and self.sim._take_lost_response():
            status = self.sim.faults.error_status
            await _send(send, status, engine_api.encode({"error": "injected",
                                                         "detail": "applied, but the answer was lost"}))
            return
        await _send(send, status, body, headers)


async def _send(send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    names = {k.lower() for k, _ in headers}
    all_headers = list(headers)
    if b"content-type" not in names:
        all_headers.append((b"content-type", b"application/json"))
    all_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_huge(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"pad": "', "more_body": True})
    chunk = b"x" * HUGE_CHUNK_BYTES
    for _ in range(HUGE_BODY_BYTES // HUGE_CHUNK_BYTES):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b'"}', "more_body": False})


class _WebhookSender:
    """One background thread delivering webhooks in queue order, retrying each until it has a final answer."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._http = httpx.Client(timeout=sim.webhook_timeout_ms / 1000, follow_redirects=False)
        self._thread = threading.Thread(target=self._run, name="simulator-webhooks", daemon=True)
        self._thread.start()

    def publish(self, bodies: list[bytes]) -> None:
        with self._cond:
            self._queue.extend(bodies)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def flush(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def stop(self, timeout_s: float) -> None:
        with self._cond:
            self._stopping = True
            abandoned = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout_s)
        self._http.close()
        self._sim._count("webhooks_abandoned", abandoned)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                body = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(body)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds` unless stopping; True if stopping."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopping, seconds)

    def _deliver(self, body: bytes) -> None:
        sim = self._sim
        if (delay_s := sim.faults.webhook_delay_s) and self._pause(delay_s):
            sim._count("webhooks_abandoned")
            return
        attempt = 0
        while True:
            attempt += 1
            sim._count("webhooks_sent")
            try:
                response = self._http.post(sim.ledger_url or "", content=body, headers=sim._signed_headers(body))
                status: int | None = response.status_code
                problem = f"answered {status}: {response.text[:200]}"
            except httpx.HTTPError as error:
                status, problem = None, f"{type(error).__name__}: {error}"
            if status is not None and 200 <= status < 300:
                sim._count("webhooks_delivered")
                return
            if status is not None and 400 <= status < 500:
                sim._count("webhooks_rejected")
                log.warning("ledger refused a webhook for good: %s", problem)
                return
            sim._count("webhooks_failed")
            delay_ms = min(sim.webhook_retry_delay_max_ms, sim.webhook_retry_delay_ms * 2 ** min(attempt - 1, 20))
            log.info("webhook delivery attempt %d failed (%s); retrying in %d ms", attempt, problem, delay_ms)
            if self._pause(delay_ms / 1000 * (0.5 + random.random() / 2)):
                sim._count("webhooks_abandoned")
                return


class BackgroundServer:
    """Serve an ASGI app with uvicorn on a daemon thread, on a free port when `port` is 0."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.app = app
        self.host = host
        self.port = port
        self.log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> BackgroundServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self.log_level, log_config=None, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout_s)
        self._server = self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ---- command line ------------------------------------------------------------------------------------
def _drift(value: str) -> tuple[str, Decimal]:
    account_id, sep, amount = value.rpartition("=")
    try:
        number = Decimal(amount)
    except ArithmeticError:
        number = Decimal("NaN")
    if not sep or not account_id or not number.is_finite():
        raise argparse.ArgumentTypeError(f"expected ACCOUNT=AMOUNT, e.g. acc-1=12.50, got {value!r}")
    return account_id, number


def _probability(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError("must be from 0 to 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invledger simulate-engine",
        description="Run the ML Engine simulator: the engine API of contract §7 under /api/v1, a seeded random "
                    "walk per account, signed webhooks to the ledger, and fault injection. Admin: POST "
                    "/admin/step {days}, POST /admin/faults, GET /admin/state.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (default %(default)s)")
    parser.add_argument("--ledger-url", default=DEFAULT_LEDGER_URL, help="where webhooks go (default %(default)s)")
    parser.add_argument("--no-webhooks", action="store_true", help="generate events but send nothing")
    parser.add_argument("--webhook-secret", help="HMAC key (default: first of ML_ENGINE_WEBHOOK_SECRET)")
    parser.add_argument("--signature", choices=("ml", "standard", "both"), default="ml",
                        help="X-ML-Signature, Standard Webhooks headers, or both (default %(default)s)")
    parser.add_argument("--api-key", help="require this X-API-Key (default: ML_ENGINE_API_KEY; empty = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--days", type=int, default=0,
                        help="simulate this many days as fast as possible once accounts exist")
    parser.add_argument("--trades-per-day", type=int, default=10)
    parser.add_argument("--start-date", type=date.fromisoformat,
                        help="first simulated day (default: today minus --days, so the run ends yesterday)")
    parser.add_argument("--accounts-wait-s", type=float, default=60.0,
                        help="with --days: how long to wait for the first account (default %(default)s)")
    parser.add_argument("--day-interval-s", type=float, default=0.0,
                        help="afterwards, advance one simulated day every this many seconds (0 = never)")
    parser.add_argument("--exit-when-done", action="store_true", help="with --days: exit after the run")
    faults = parser.add_argument_group("faults (also POST /admin/faults)")
    faults.add_argument("--error-rate", type=_probability, default=0.0, help="chance of a 5xx per request")
    faults.add_argument("--error-status", type=int, default=503)
    faults.add_argument("--error-route", action="append", default=[], help="always 5xx on this route ('*' = all)")
    faults.add_argument("--error-account", action="append", default=[], help="always 5xx for this account")
    faults.add_argument("--slow-s", type=float, default=0.0, help="delay for --slow-route/--slow-account")
    faults.add_argument("--slow-route", action="append", default=[])
    faults.add_argument("--slow-account", action="append", default=[],
                        help="with a --slow-s above the client timeout: stop answering for this account")
    faults.add_argument("--garbage-route", action="append", default=[], help="answer 200 with a non-JSON body")
    faults.add_argument("--huge-route", action="append", default=[], help="answer 200 with a 4 MiB body")
    faults.add_argument("--redirect-route", action="append", default=[], help="answer 307 elsewhere")
    faults.add_argument("--duplicate-rate", type=_probability, default=0.0, help="chance a webhook is sent twice")
    faults.add_argument("--reorder-window", type=int, default=0, help="shuffle webhooks within windows of N")
    faults.add_argument("--delay-s", type=float, default=0.0, help="wait before each webhook delivery")
    faults.add_argument("--drift", type=_drift, action="append", default=[], metavar="ACCOUNT=AMOUNT",
                        help="status reports balance + AMOUNT for ACCOUNT")
    return parser


def faults_from_args(args: argparse.Namespace) -> Faults:
    try:
        return msgspec.convert({
            "error_rate": args.error_rate, "error_status": args.error_status,
            "error": {"routes": args.error_route, "accounts": args.error_account},
            "slow_s": args.slow_s, "slow": {"routes": args.slow_route, "accounts": args.slow_account},
            "garbage": {"routes": args.garbage_route}, "huge": {"routes": args.huge_route},
            "redirect": {"routes": args.redirect_route}, "drift": dict(args.drift),
            "webhook_duplicate_rate": args.duplicate_rate, "webhook_reorder_window": args.reorder_window,
            "webhook_delay_s": args.delay_s}, Faults)
    except msgspec.ValidationError as error:
        raise ValueError(f"bad fault settings: {error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """`invledger simulate-engine`: serve the simulator until interrupted (or `--exit-when-done`)."""
    import os

    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--"]:  # as passed on by an argparse.REMAINDER in the parent command
        arguments = arguments[1:]
    args = parser.parse_args(arguments)
    try:
        faults = faults_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.days < 0 or args.days > STEP_DAYS_MAX:
        parser.error(f"--days must be from 0 to {STEP_DAYS_MAX}")
    if not 0 <= args.trades_per_day <= TRADES_PER_DAY_MAX:
        parser.error(f"--trades-per-day must be from 0 to {TRADES_PER_DAY_MAX}")
    secret = args.webhook_secret
    if secret is None:
        secret = next((s.strip() for s in os.environ.get("ML_ENGINE_WEBHOOK_SECRET", "").split(",") if s.strip()),
                      None)
    ledger_url = None if args.no_webhooks else args.ledger_url
    if ledger_url and not secret:
        parser.error("webhooks need a secret: set ML_ENGINE_WEBHOOK_SECRET or --webhook-secret "
                     "(or pass --no-webhooks)")
    api_key = args.api_key if args.api_key is not None else os.environ.get("ML_ENGINE_API_KEY", "")
    today = datetime.now(UTC).date()
    start = args.start_date or (today - timedelta(days=args.days))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    sim = Simulator(seed=args.seed, webhook_secret=secret, ledger_url=ledger_url, api_key=api_key,
                    start_date=start, trades_per_day=args.trades_per_day, faults=faults,
                    signature_scheme=args.signature)
    try:
        sim.serve(args.host, args.port)
    except OSError as error:
        print(f"simulate-engine: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    print(f"ML Engine simulator serving {sim.api_url} (admin at {sim.url}/admin); "
          f"webhooks → {ledger_url or 'nowhere'}", file=sys.stderr, flush=True)
    done = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: done.set()) if in_main_thread else None
    try:
        if args.days:
            deadline = time.monotonic() + args.accounts_wait_s
            while not sim.account_ids() and time.monotonic() < deadline and not done.is_set():
                time.sleep(0.2)
            print(f"simulating {args.days} days from {start} for {len(sim.account_ids())} account(s) …",
                  file=sys.stderr, flush=True)
            for number in range(1, args.days + 1):
                day = sim.clock
                events = sim.step(1)
                print(f"  day {number}/{args.days} ({day}): {events} events", file=sys.stderr, flush=True)
            if not sim.flush(timeout_s=max(60.0, args.accounts_wait_s)):
                print("simulate-engine: some webhooks are still undelivered", file=sys.stderr)
            counters = sim.state()["counters"]
            print(f"done: {counters['webhooks_delivered']} webhooks delivered, {counters['webhooks_failed']} "
                  f"failed attempts, {counters['webhooks_rejected']} refused", file=sys.stderr, flush=True)
            if args.exit_when_done:
                return 0
        while not done.wait(args.day_interval_s or None):
            sim.step(1)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
