"""The simulated ML Engine as a whole: one lock around its model and faults, its webhook sender, its server."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import OrderedDict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Final

from simulator.app import API_PREFIX, Stored, build_app
from simulator.faults import ROUTES, FaultInjector, FaultKind, Faults
from simulator.model import STEP_DAYS_MAX, TRADES_PER_DAY_MAX, Model, has_cents_only
from simulator.sender import (
    WEBHOOK_RETRY_DELAY_MAX_MS,
    WEBHOOK_RETRY_DELAY_MS,
    WEBHOOK_TIMEOUT_MS,
    SignatureScheme,
    WebhookSender,
    signed_headers,
)
from simulator.server import BackgroundServer

COUNTERS: Final[tuple[str, ...]] = (
    "events_generated", "webhooks_queued", "webhooks_sent", "webhooks_delivered", "webhooks_rejected",
    "webhooks_failed", "webhooks_duplicated", "webhooks_abandoned", "idempotent_replays", "idempotency_conflicts",
    "responses_lost", "faults_injected")


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
        self.lock = threading.RLock()  # around `model`, the faults, the counters and the idempotency store
        self.model = Model(seed=seed, trades_per_day=trades_per_day, start_date=start_date or datetime.now(UTC).date())
        self.stopping = threading.Event()
        self.idempotency: OrderedDict[str, Stored] = OrderedDict()  # answers by Idempotency-Key, oldest first
        self.inflight: dict[str, asyncio.Event] = {}  # requests being answered, by Idempotency-Key
        self._faults = FaultInjector(seed)
        self._webhook_rng = random.Random(f"{seed}/webhooks")
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._requests: dict[str, int] = dict.fromkeys(ROUTES, 0)
        self._sender: WebhookSender | None = None
        self._server: BackgroundServer | None = None
        self.set_faults(faults or Faults())
        self.app = build_app(self)

    # ---- control ------------------------------------------------------------------------------------
    @property
    def clock(self) -> date:
        """The next simulated day to run; every day before it has been simulated."""
        with self.lock:
            return self.model.clock

    @property
    def faults(self) -> Faults:
        with self.lock:
            return self._faults.faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults (counters `fail_next` and `lose_responses` restart from the given values)."""
        with self.lock:
            self._faults.set(faults)

    def events(self) -> list[bytes]:
        """Every generated webhook body, in generation order (before duplicate/reorder faults)."""
        with self.lock:
            return list(self.model.events)

    def state(self) -> dict[str, Any]:
        """Accounts (status, capital, drift, positions), counters, requests per route (`GET /admin/state`)."""
        with self.lock:
            drift = self._faults.faults.drift
            accounts = {
                a.account_id: {"status": a.status, "capital": a.capital,
                               "drift": drift.get(a.account_id, Decimal(0)),
                               "open_positions": len(a.positions), "trades": len(a.trades),
                               "capital_mismatches": a.capital_mismatches}
                for a in self.model.accounts.values()}
            counters = dict(self._counters, events_generated=self.model.event_count)
            if self._sender is not None:
                counters["webhooks_pending"] = self._sender.pending()
            return {"clock": self.model.clock, "accounts": accounts, "counters": counters,
                    "requests": dict(self._requests), "idempotency_keys": len(self.idempotency)}

    def account_ids(self) -> list[str]:
        with self.lock:
            return sorted(self.model.accounts)

    def step(self, days: int = 1) -> int:
        """Simulate `days` days for every open account; returns how many events were generated."""
        if not 1 <= days <= STEP_DAYS_MAX:
            raise ValueError(f"days must be from 1 to {STEP_DAYS_MAX}")
        total = 0
        for _ in range(days):
            with self.lock:
                bodies = self.model.simulate_day()
            self.publish(bodies)
            total += len(bodies)
        return total

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued webhook got a final answer; False if `timeout_s` passed first."""
        sender = self._sender
        return True if sender is None else sender.flush(timeout_s)

    def balance_updated(self, account_id: str, new_balance: Decimal, reason: str) -> None:
        """Set the account's capital and send `account.balance_updated` (as an engine correction would).

        ValueError for a negative amount or one finer than cents; `Refused` (404) for an unknown account.
        """
        if not new_balance.is_finite() or new_balance < 0 or not has_cents_only(new_balance):
            raise ValueError("new_balance must be a non-negative amount with at most 2 decimals")
        with self.lock:
            body = self.model.balance_updated(account_id, new_balance, reason)
        self.publish([body])

    def account_error(self, account_id: str, error_type: str, error_message: str) -> None:
        """Send `account.error`; a `critical` error also pauses the account here. `Refused` (404): unknown account."""
        with self.lock:
            body = self.model.account_error(account_id, error_type, error_message)
        self.publish([body])

    # ---- serving ------------------------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Simulator:
        """Start serving on a background thread (port 0 = a free port); see `url`, `api_url`, `stop()`."""
        if self._server is not None:
            raise RuntimeError("already serving")
        self.stopping.clear()
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
        self.stopping.set()
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

    # ---- webhooks -----------------------------------------------------------------------------------
    def publish(self, bodies: list[bytes]) -> None:
        """Queue events for the ledger, through the duplicate and reorder faults (nothing without a ledger_url)."""
        if not bodies or not self.ledger_url:
            return
        with self.lock:
            faults = self._faults.faults
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
                self._sender = WebhookSender(
                    url=self.ledger_url, headers=self._signed_headers, count=self.count,
                    delay_s=lambda: self.faults.webhook_delay_s, timeout_ms=self.webhook_timeout_ms,
                    retry_delay_ms=self.webhook_retry_delay_ms, retry_delay_max_ms=self.webhook_retry_delay_max_ms)
            sender = self._sender
        sender.publish(out)

    def count(self, name: str, by: int = 1) -> None:
        with self.lock:
            self._counters[name] += by

    def _signed_headers(self, body: bytes) -> dict[str, str]:
        assert self.webhook_secret is not None
        return signed_headers(self.webhook_secret, self.signature_scheme, body)

    # ---- used by the app's middleware ---------------------------------------------------------------
    def fault_for(self, route: str, account_id: str | None) -> tuple[FaultKind | None, float]:
        """Count the request; which fault (if any) it gets, and how long it waits first."""
        with self.lock:
            self._requests[route] += 1
            kind, wait_s = self._faults.choose(route, account_id)
            if kind is not None or wait_s:
                self._counters["faults_injected"] += 1
            return kind, wait_s

    def take_lost_response(self) -> bool:
        """True when this command's answer is to be lost (`lose_responses`), counted."""
        with self.lock:
            if self._faults.take_lost_response():
                self._counters["responses_lost"] += 1
                return True
            return False
