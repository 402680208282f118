"""Fixtures for the simulator's tests: served simulators with fast webhook retries, a webhook receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from integration.client import EngineClient
from integration.engine_api import WebhookEnvelope, decode
from simulator import Simulator
from tests.integration.support import START, Receiver, new_account

ServeSimulator = Callable[..., Simulator]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def serve_simulator() -> Iterator[ServeSimulator]:
    """Make served simulators (stopped at the end of the test)."""
    started: list[Simulator] = []

    def make(**options: Any) -> Simulator:
        options.setdefault("start_date", START)
        options.setdefault("webhook_retry_delay_ms", 10)
        options.setdefault("webhook_retry_delay_max_ms", 50)
        sim = Simulator(**options).serve()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


def open_accounts(sim: Simulator, *account_ids: str, capital: str = "1000.00") -> None:
    with EngineClient(sim.api_url, sim.api_key or "", timeout_ms=2000, retry_attempts=1) as client:
        for account_id in account_ids:
            client.create_account(new_account(account_id, capital), idempotency_key=f"create-{account_id}")


def envelopes(bodies: list[bytes]) -> list[WebhookEnvelope]:
    return [decode(body, WebhookEnvelope) for body in bodies]
