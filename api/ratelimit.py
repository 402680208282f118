"""Rate limits (issue 17): per API key, per client address, and on failed credentials (unknown keys and failed
sign-ins) per address — moving windows of the well-kept `limits` package, in this process's memory.

Checked in front of the app, before any database work: a flood of made-up keys from one address costs a dictionary
look-up each once the address has failed `auth_failures` times, and never reaches PostgreSQL again while the
window lasts (a key whose prefix this process has seen valid still gets through, so a real client behind the same
address is not locked out with the attacker). The webhook route is not limited here: HMAC decides who may send,
and the engine's rate is the ledger's throughput; /health, /ready and /metrics are not limited either.

Several `serve` processes each count for themselves: with N of them behind a balancer, a client gets up to N
times the limit. Answers over a limit are 429 with Retry-After (whole seconds) and the usual error body.
"""

from __future__ import annotations

import math
import time
from typing import Any

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

UNLIMITED_PATHS = frozenset({"/api/v1/webhooks/ml-engine", "/api/v1/health", "/api/v1/ready", "/metrics",
                             "/api/v1/metrics"})
SIGN_IN_PATH = "/login"


class RateLimits:
    def __init__(self, *, per_key: str, per_address: str, auth_failures: str, sign_in: str) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_key: RateLimitItem = parse(per_key)
        self.per_address: RateLimitItem = parse(per_address)
        self.auth_failures: RateLimitItem = parse(auth_failures)
        self.sign_in: RateLimitItem = parse(sign_in)

    def _refused(self, item: RateLimitItem, *identifiers: str) -> float | None:
        """None when the hit is allowed; else seconds until the window lets one through again."""
        if self._limiter.hit(item, *identifiers):
            return None
        reset_at = self._limiter.get_window_stats(item, *identifiers).reset_time
        return max(1.0, reset_at - time.time())

    def check(self, *, address: str, key_prefix: str | None, key_known: bool, path: str,
              method: str) -> float | None:
        """Count a request; the Retry-After in seconds if it is over a limit."""
        if path in UNLIMITED_PATHS:
            return None
        if (key_prefix is not None or (path == SIGN_IN_PATH and method == "POST")) and not key_known and \
                not self._limiter.test(self.auth_failures, "failures", address):
            reset_at = self._limiter.get_window_stats(self.auth_failures, "failures", address).reset_time
            return max(1.0, reset_at - time.time())
        if path == SIGN_IN_PATH and method == "POST":
            refused = self._refused(self.sign_in, "sign-in", address)
            if refused:
                return refused
        refused = self._refused(self.per_address, "address", address)
        if refused is None and key_prefix is not None:
            refused = self._refused(self.per_key, "key", key_prefix)
        return refused

    def failed(self, address: str) -> None:
        """A request from `address` came with credentials nobody issued (401) or a failed sign-in."""
        self._limiter.hit(self.auth_failures, "failures", address)


def middleware(app: Any) -> Any:
    """The ASGI middleware: refuse over the limits with 429, and count 401s as failed credentials."""

    async def limited(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await app(scope, receive, send)
            return
        state = scope["app"].state
        limits: RateLimits | None = state.get("rate_limits")
        if limits is None:
            await app(scope, receive, send)
            return
        address = (scope.get("client") or ("unknown", 0))[0]
        token = _bearer(scope)
        prefix = _prefix(token) if token else None
        known = token is not None and state.key_store.seen_valid(token)
        retry_after = limits.check(address=address, key_prefix=prefix if token else None, key_known=known,
                                   path=scope.get("path", ""), method=scope.get("method", ""))
        if retry_after is not None:
            await _too_many(send, retry_after)
            return

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and (
                    (message["status"] == 401 and token is not None) or
                    (scope.get("path") == SIGN_IN_PATH and scope.get("method") == "POST" and message["status"] == 401)):
                limits.failed(address)
            await send(message)

        await app(scope, receive, watch)
    return limited


def _bearer(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


def _prefix(token: str) -> str:
    parts = token.split("_")
    return parts[1][:32] if len(parts) >= 3 and parts[0] == "ilk" else "malformed"


async def _too_many(send: Any, retry_after_s: float) -> None:
    body = b'{"error":"too_many_requests","detail":"rate limit reached; retry after the Retry-After seconds"}'
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(math.ceil(retry_after_s)).encode())]})
    await send({"type": "http.response.body", "body": body})
