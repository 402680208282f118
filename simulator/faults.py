"""What the simulator does wrong, and on which requests: the fault settings and the choice per request."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Annotated, Final, Literal

import msgspec

ROUTES: Final[tuple[str, ...]] = ("create", "capital", "pause", "resume", "close", "status", "trades",
                                  "performance", "agent_config", "health", "withdrawal_request", "withdrawal_cancel")
COMMAND_ROUTES: Final[frozenset[str]] = frozenset({"create", "capital", "pause", "resume", "close",
                                                   "agent_config", "withdrawal_request", "withdrawal_cancel"})

Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]
FaultKind = Literal["error", "redirect", "garbage", "huge"]


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


class FaultInjector:
    """The faults in force and their countdowns (`fail_next`, `lose_responses`), seeded per simulator.

    Not thread-safe by itself: the simulator calls it under its lock.
    """

    def __init__(self, seed: int) -> None:
        self.faults = Faults()
        self._fail_next = 0
        self._lose_responses = 0
        self._rng = random.Random(f"{seed}/faults")

    def set(self, faults: Faults) -> None:
        """Replace the faults (the countdowns restart from the given values)."""
        self.faults = faults
        self._fail_next = faults.fail_next
        self._lose_responses = faults.lose_responses

    def choose(self, route: str, account_id: str | None) -> tuple[FaultKind | None, float]:
        """Which fault (if any) this request gets, and how long it waits before answering."""
        faults = self.faults
        wait_s = faults.slow_s if faults.slow.hits(route, account_id) else 0.0
        kind: FaultKind | None = None
        if self._fail_next > 0:
            self._fail_next -= 1
            kind = "error"
        elif faults.error.hits(route, account_id) or (faults.error_rate and self._rng.random() < faults.error_rate):
            kind = "error"
        elif faults.redirect.hits(route, account_id):
            kind = "redirect"
        elif faults.garbage.hits(route, account_id):
            kind = "garbage"
        elif faults.huge.hits(route, account_id):
            kind = "huge"
        return kind, wait_s

    def take_lost_response(self) -> bool:
        """True (and one fewer to lose) while `lose_responses` has answers left to lose."""
        if self._lose_responses > 0:
            self._lose_responses -= 1
            return True
        return False
