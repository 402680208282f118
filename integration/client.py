"""The ML Engine client (contract §7): typed calls with timeouts, bounded retries and a circuit breaker.

Guarantees:
- Every call has a deadline (`timeout_ms` for connect, read, write, pool and for the whole body), reads
  at most `response_bytes_max` bytes, follows no redirect, and decodes the answer into a typed struct;
  anything else is an `EngineUnavailable` naming what went wrong.
- Retries (`retry_attempts` in all, exponential backoff from `retry_delay_ms`, jittered, capped at
  `retry_delay_max_ms`, at least any `Retry-After`) happen only on transport errors, timeouts, 5xx and
  429 — never on another 4xx, a garbage answer or an open circuit. Every POST/PUT carries the
  caller's `Idempotency-Key` and each retry reuses it, so a retried command cannot apply twice.
- The circuit breaker counts each failed attempt that means "the engine is unwell" (not 404/4xx);
  after `breaker_failures_max` in a row it opens for `breaker_reset_timeout_ms`, then lets a trial
  call through. `breaker_state` is "closed", "open" or "half-open" (for /ready).

Why these libraries: tenacity is the de-facto standard retry library (stop/wait/retry policies as
small composable values, well tested); pybreaker is synchronous, small, thread-safe and reports its
state by name. pybreaker's `call()` holds its lock for the whole guarded call, which would serialize
concurrent engine calls behind one slow request, so we use its `calling()` context manager, which
only takes the lock to check and update the state.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import date
from email.utils import parsedate_to_datetime
from typing import Any, Final, TypeVar
from urllib.parse import quote

import httpx
import msgspec
import pybreaker
import tenacity

from integration import engine_api
from integration.engine_api import (
    AccountAck,
    AccountStatus,
    AgentConfig,
    CapitalUpdate,
    CreateAccountRequest,
    Health,
    Performance,
    PerformancePage,
    Trade,
    TradesPage,
    TradeStatus,
    WithdrawalRequest,
)

log = logging.getLogger(__name__)

RESPONSE_BYTES_MAX: Final[int] = 1024 * 1024
RETRY_DELAY_MAX_MS: Final[int] = 30_000
BREAKER_FAILURES_MAX: Final[int] = 5
CONNECTIONS_MAX: Final[int] = 64
BREAKER_RESET_TIMEOUT_MS: Final[int] = 60_000
IDEMPOTENCY_KEY_LENGTH_MAX: Final[int] = 255
ERROR_DETAIL_LENGTH_MAX: Final[int] = 300
_IDEMPOTENCY_KEY_RE: Final = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: safe in a header

T = TypeVar("T")


class EngineError(Exception):
    """Base of every ML Engine error. `status_code` is the engine's HTTP status, None if it gave none."""

    def __init__(self, detail: str, *, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code


class EngineUnavailable(EngineError):
    """No usable answer: transport error, timeout, 5xx, 429, redirect, garbage, oversize, open circuit."""

    def __init__(self, detail: str, *, status_code: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None, circuit_open: bool = False) -> None:
        super().__init__(detail, status_code=status_code)
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.circuit_open = circuit_open


class EngineNotFound(EngineError):
    """The engine answered 404: it does not know the account (or agent)."""


class EngineRejected(EngineError):
    """The engine refused the request with a 4xx other than 404 (and 429); retrying will not help."""


def _retryable(error: BaseException) -> bool:
    return isinstance(error, EngineUnavailable) and error.retryable


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _detail(raw: bytes) -> str:
    text = raw[:ERROR_DETAIL_LENGTH_MAX].decode("utf-8", "replace")
    return " ".join(text.split()) or "(empty body)"


class EngineClient:
    """Synchronous, thread-safe client for the ML Engine API (contract §7). One instance per process.

    Commands (POST/PUT) take a required `idempotency_key`: pass a key that is stable for the logical
    operation (e.g. the outbox message id) so that redelivery after a crash cannot apply it twice.
    `close()` is the engine's *close account* call; release connections with `shutdown()` or `with`.
    """

    def __init__(self, base_url: str, api_key: str, timeout_ms: int = 30_000, retry_attempts: int = 3,
                 retry_delay_ms: int = 1000, *, retry_delay_max_ms: int = RETRY_DELAY_MAX_MS,
                 breaker_failures_max: int = BREAKER_FAILURES_MAX,
                 breaker_reset_timeout_ms: int = BREAKER_RESET_TIMEOUT_MS,
                 response_bytes_max: int = RESPONSE_BYTES_MAX,
                 transport: httpx.BaseTransport | None = None) -> None:
        if timeout_ms <= 0 or retry_attempts < 1 or retry_delay_ms < 0 or retry_delay_max_ms < 0:
            raise ValueError("timeout_ms and retry_attempts must be positive, delays not negative")
        if breaker_failures_max < 1 or breaker_reset_timeout_ms <= 0 or response_bytes_max < 1:
            raise ValueError("breaker and response limits must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout_ms = timeout_ms
        self.retry_attempts = retry_attempts
        self.retry_delay_ms = retry_delay_ms
        self.retry_delay_max_ms = retry_delay_max_ms
        self.response_bytes_max = response_bytes_max
        timeout_s = timeout_ms / 1000
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            headers={**({"X-API-Key": api_key} if api_key else {}), "Accept": "application/json",
                     "User-Agent": "invledger-engine-client/1"},
            timeout=httpx.Timeout(connect=timeout_s, read=timeout_s, write=timeout_s, pool=timeout_s),
            follow_redirects=False,
            transport=transport,
            # Keep a connection per concurrent caller (reconciliation asks with up to 32 threads): httpx's
            # default keeps 20 alive, and every call beyond that would open and close a TCP connection.
            limits=httpx.Limits(max_connections=CONNECTIONS_MAX, max_keepalive_connections=CONNECTIONS_MAX),
        )
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=breaker_failures_max, reset_timeout=breaker_reset_timeout_ms / 1000,
            exclude=[EngineNotFound, EngineRejected], throw_new_error_on_trip=False,
            name="ml-engine")
        # Exponential from retry_delay_ms plus up to retry_delay_ms of jitter (capped in _wait_for).
        self._backoff = (tenacity.wait_exponential(multiplier=retry_delay_ms / 1000, max=retry_delay_max_ms / 1000)
                         + tenacity.wait_random(0, retry_delay_ms / 1000))

    # ---- lifecycle and state -------------------------------------------------------------------
    @property
    def breaker_state(self) -> str:
        """The circuit breaker's state: "closed", "open" or "half-open".

        It stays "open" after the reset timeout until the next call, which is the trial: success closes
        the circuit, failure opens it for another `breaker_reset_timeout_ms`.
        """
        return self._breaker.current_state

    def shutdown(self) -> None:
        """Release pooled connections. (Not `close`: that is the engine's close-account call.)"""
        self._http.close()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # ---- the engine's API ------------------------------------------------------------------------
    def create_account(self, request: CreateAccountRequest, *, idempotency_key: str) -> AccountAck:
        return self._command("POST", "trading/accounts", request, idempotency_key, request.account_id)

    def update_capital(self, account_id: str, update: CapitalUpdate, *, idempotency_key: str) -> AccountAck:
        return self._command("POST", f"{_account_path(account_id)}/capital", update, idempotency_key,
                             account_id)

    def request_withdrawal(self, account_id: str, request: WithdrawalRequest, *, idempotency_key: str) -> AccountAck:
        """Ask the engine to free capital for a withdrawal hold (ledger.holds); it confirms by webhook."""
        return self._command("POST", f"{_account_path(account_id)}/withdrawal-requests", request, idempotency_key,
                             account_id)

    def cancel_withdrawal(self, account_id: str, hold_id: int, *, idempotency_key: str) -> AccountAck:
        return self._command("POST", f"{_account_path(account_id)}/withdrawal-requests/{int(hold_id)}/cancel", None,
                             idempotency_key, account_id)

    def pause(self, account_id: str, *, idempotency_key: str) -> AccountAck:
        return self._command("POST", f"{_account_path(account_id)}/pause", None, idempotency_key, account_id)

    def resume(self, account_id: str, *, idempotency_key: str) -> AccountAck:
        return self._command("POST", f"{_account_path(account_id)}/resume", None, idempotency_key,
                             account_id)

    def close(self, account_id: str, *, idempotency_key: str) -> AccountAck:
        """Close the account at the engine (not the HTTP client: see `shutdown`)."""
        return self._command("POST", f"{_account_path(account_id)}/close", None, idempotency_key, account_id)

    def status(self, account_id: str) -> AccountStatus:
        """The engine's balance and status for the account; EngineNotFound if it does not know it."""
        answer = self._call("GET", f"{_account_path(account_id)}/status", AccountStatus)
        if answer.account_id != account_id:
            raise EngineUnavailable(
                f"engine answered status for account {answer.account_id!r} when asked for {account_id!r}")
        return answer

    def trades(self, account_id: str, start_date: date | None = None, end_date: date | None = None,
               status: TradeStatus | None = None) -> list[Trade]:
        params = _params(start_date=start_date, end_date=end_date, status=status)
        page = self._call("GET", f"{_account_path(account_id)}/trades", TradesPage, params=params)
        return page.trades

    def performance(self, account_id: str, start_date: date | None = None,
                    end_date: date | None = None) -> list[Performance]:
        params = _params(start_date=start_date, end_date=end_date)
        page = self._call("GET", f"{_account_path(account_id)}/performance", PerformancePage, params=params)
        return page.performance

    def get_agent_config(self, agent_id: str) -> AgentConfig:
        return self._call("GET", f"agents/{_segment(agent_id)}/config", AgentConfig)

    def put_agent_config(self, agent_id: str, config: AgentConfig, *, idempotency_key: str) -> AgentConfig:
        return self._call("PUT", f"agents/{_segment(agent_id)}/config", AgentConfig,
                          body=engine_api.encode(config), idempotency_key=idempotency_key)

    def health(self) -> Health:
        """Raises EngineUnavailable unless the engine answers its health check with 2xx JSON."""
        return self._call("GET", "health", Health)

    # ---- machinery -------------------------------------------------------------------------------
    def _command(self, method: str, path: str, payload: msgspec.Struct | None, idempotency_key: str,
                 account_id: str) -> AccountAck:
        body = engine_api.encode(payload) if payload is not None else b"{}"
        ack = self._call(method, path, AccountAck, body=body, idempotency_key=idempotency_key,
                         empty=AccountAck(account_id=account_id))
        if ack.account_id != account_id:
            raise EngineUnavailable(
                f"engine acknowledged account {ack.account_id!r} when told about {account_id!r}")
        return ack

    def _call(self, method: str, path: str, kind: type[T], *, params: dict[str, str] | None = None,
              body: bytes | None = None, idempotency_key: str | None = None, empty: T | None = None) -> T:
        headers: dict[str, str] = {}
        if method in ("POST", "PUT"):
            if (not idempotency_key or len(idempotency_key) > IDEMPOTENCY_KEY_LENGTH_MAX
                    or not _IDEMPOTENCY_KEY_RE.match(idempotency_key)):
                raise ValueError(f"{method} needs an idempotency_key of 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} "
                                 "visible ASCII characters")
            headers["Idempotency-Key"] = idempotency_key
            headers["Content-Type"] = "application/json"
        label = f"{method} /{path}"

        def decode(raw: bytes) -> T:
            if not raw.strip() and empty is not None:
                return empty
            try:
                return engine_api.decode(raw, kind)
            except msgspec.DecodeError as error:
                # Counts against the breaker but is not retried: the engine answered, not usefully.
                raise EngineUnavailable(f"{label}: unreadable answer from the engine ({error}): "
                                        f"{_detail(raw)}") from None

        failures: list[EngineUnavailable] = []

        def attempt() -> T:
            try:
                with self._breaker.calling():
                    return decode(self._exchange(method, path, label, params, body, headers))
            except EngineUnavailable as error:
                failures.append(error)
                raise
            except pybreaker.CircuitBreakerError:
                cause = f"; last failure: {failures[-1].detail}" if failures else ""
                raise EngineUnavailable(f"{label}: circuit breaker is open (engine failing), not calling"
                                        f"{cause}", circuit_open=True) from None

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retry_attempts),
            wait=self._wait_for,
            retry=tenacity.retry_if_exception(_retryable),
            before_sleep=lambda state: log.warning(
                "ML Engine %s failed (attempt %d of %d): %s; retrying", label, state.attempt_number,
                self.retry_attempts, state.outcome.exception() if state.outcome else "?"),
            reraise=True,
        )
        return retrying(attempt)

    def _wait_for(self, state: tenacity.RetryCallState) -> float:
        cap_s = self.retry_delay_max_ms / 1000
        delay = min(self._backoff(state), cap_s)
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, EngineUnavailable) and error.retry_after_s is not None:
            delay = max(delay, min(error.retry_after_s, cap_s))
        return delay

    def _exchange(self, method: str, path: str, label: str, params: dict[str, str] | None,
                  body: bytes | None, headers: dict[str, str]) -> bytes:
        """One HTTP exchange: the body of a 2xx answer, or the fitting EngineError."""
        deadline = time.monotonic() + self.timeout_ms / 1000
        try:
            with self._http.stream(method, path, params=params, content=body, headers=headers) as response:
                raw = self._read_bounded(response, label, deadline)
                status = response.status_code
                location = response.headers.get("location", "")
                retry_after = _retry_after_s(response.headers.get("retry-after"))
        except httpx.TimeoutException:
            raise EngineUnavailable(f"{label}: timed out after {self.timeout_ms} ms",
                                    retryable=True) from None
        except httpx.TransportError as error:
            raise EngineUnavailable(f"{label}: {type(error).__name__}: {error}", retryable=True) from None
        except httpx.HTTPError as error:  # e.g. a body that does not decompress: an answer, but garbage
            raise EngineUnavailable(f"{label}: {type(error).__name__}: {error}") from None
        if 200 <= status < 300:
            return raw
        if 300 <= status < 400:
            raise EngineUnavailable(f"{label}: engine answered {status} redirect to {location!r}; "
                                    "redirects are not followed (check ML_ENGINE_URL)", status_code=status)
        if status == 404:
            raise EngineNotFound(f"{label}: not found at the engine: {_detail(raw)}", status_code=status)
        if status == 429 or status >= 500:
            raise EngineUnavailable(f"{label}: engine answered {status}: {_detail(raw)}", status_code=status,
                                    retryable=True, retry_after_s=retry_after)
        if 400 <= status < 500:
            raise EngineRejected(f"{label}: engine refused with {status}: {_detail(raw)}", status_code=status)
        raise EngineUnavailable(f"{label}: unexpected status {status}", status_code=status)

    def _read_bounded(self, response: httpx.Response, label: str, deadline: float) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.response_bytes_max:
            raise EngineUnavailable(f"{label}: answer of {declared} bytes exceeds the "
                                    f"{self.response_bytes_max}-byte limit")
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():  # decoded bytes: a compressed bomb is bounded too
            size += len(chunk)
            if size > self.response_bytes_max:
                raise EngineUnavailable(f"{label}: answer exceeds the {self.response_bytes_max}-byte "
                                        "limit; stopped reading")
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"{label}: answer still arriving after {self.timeout_ms} ms",
                                        retryable=True)
            chunks.append(chunk)
        return b"".join(chunks)


def _segment(value: str) -> str:
    if not value or len(value) > engine_api.ACCOUNT_ID_LENGTH_MAX:
        raise ValueError(f"an id must have 1 to {engine_api.ACCOUNT_ID_LENGTH_MAX} characters")
    return quote(value, safe="")


def _account_path(account_id: str) -> str:
    return f"trading/accounts/{_segment(account_id)}"


def _params(**values: Any) -> dict[str, str]:
    return {name: value.isoformat() if isinstance(value, date) else str(value)
            for name, value in values.items() if value is not None}


__all__ = ["EngineClient", "EngineError", "EngineUnavailable", "EngineNotFound", "EngineRejected",
           "AccountAck", "AccountStatus", "AgentConfig", "CapitalUpdate", "CreateAccountRequest",
           "Health", "Performance", "Trade"]
