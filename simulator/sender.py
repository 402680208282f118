"""Webhook delivery: signed over the exact bytes sent, in queue order, retried with backoff until final.

2xx and 4xx answers are final; 5xx and transport errors are retried (the delay doubles up to a cap, with
jitter) until delivered or the sender stops. Each outcome is counted through `count`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Literal

import httpx

from integration import engine_api
from integration.engine_api import WebhookEnvelope
from integration.signature import sign, sign_standard

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_MS: Final[int] = 10_000
WEBHOOK_RETRY_DELAY_MS: Final[int] = 200
WEBHOOK_RETRY_DELAY_MAX_MS: Final[int] = 5_000
USER_AGENT: Final[str] = "invledger-engine-simulator/1"

SignatureScheme = Literal["ml", "standard", "both"]


def signed_headers(secret: str, scheme: SignatureScheme, body: bytes) -> dict[str, str]:
    """X-ML-Signature, the Standard Webhooks headers, or both, over `body` as it is sent."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if scheme in ("ml", "both"):
        headers["X-ML-Signature"] = sign(secret, body)
    if scheme in ("standard", "both"):
        webhook_id = engine_api.decode(body, WebhookEnvelope).event_id or ""
        timestamp = int(time.time())
        headers["webhook-id"] = webhook_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = sign_standard(secret, webhook_id, timestamp, body)
    return headers


class WebhookSender:
    """One background thread delivering webhooks in queue order, retrying each until it has a final answer."""

    def __init__(self, *, url: str, headers: Callable[[bytes], dict[str, str]], count: Callable[[str, int], None],
                 delay_s: Callable[[], float], timeout_ms: int = WEBHOOK_TIMEOUT_MS,
                 retry_delay_ms: int = WEBHOOK_RETRY_DELAY_MS,
                 retry_delay_max_ms: int = WEBHOOK_RETRY_DELAY_MAX_MS) -> None:
        self._url = url
        self._headers = headers
        self._count = count
        self._delay_s = delay_s  # the delay fault in force, read before each delivery
        self._retry_delay_ms = retry_delay_ms
        self._retry_delay_max_ms = retry_delay_max_ms
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._http = httpx.Client(timeout=timeout_ms / 1000, follow_redirects=False)
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
        """Wait until every queued webhook got a final answer; False if `timeout_s` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def stop(self, timeout_s: float) -> None:
        """Stop after the delivery in hand; what is still queued is abandoned (and counted)."""
        with self._cond:
            self._stopping = True
            abandoned = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout_s)
        self._http.close()
        self._count("webhooks_abandoned", abandoned)

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
        if (delay_s := self._delay_s()) and self._pause(delay_s):
            self._count("webhooks_abandoned", 1)
            return
        attempt = 0
        while True:
            attempt += 1
            self._count("webhooks_sent", 1)
            try:
                response = self._http.post(self._url, content=body, headers=self._headers(body))
                status: int | None = response.status_code
                problem = f"answered {status}: {response.text[:200]}"
            except httpx.HTTPError as error:
                status, problem = None, f"{type(error).__name__}: {error}"
            if status is not None and 200 <= status < 300:
                self._count("webhooks_delivered", 1)
                return
            if status is not None and 400 <= status < 500:
                self._count("webhooks_rejected", 1)
                log.warning("ledger refused a webhook for good: %s", problem)
                return
            self._count("webhooks_failed", 1)
            delay_ms = min(self._retry_delay_max_ms, self._retry_delay_ms * 2 ** min(attempt - 1, 20))
            log.info("webhook delivery attempt %d failed (%s); retrying in %d ms", attempt, problem, delay_ms)
            if self._pause(delay_ms / 1000 * (0.5 + random.random() / 2)):
                self._count("webhooks_abandoned", 1)
                return
