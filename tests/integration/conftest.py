"""Fixtures for the ML Engine side: served simulators, clients against them, a webhook receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from integration.client import EngineClient
from integration.simulator import Simulator
from tests.integration.support import API_KEY, START, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.server.start()
    yield r
    r.server.stop()


@pytest.fixture
def serve_simulator() -> Iterator[Callable[..., Simulator]]:
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


@pytest.fixture
def simulator(serve_simulator: Callable[..., Simulator]) -> Simulator:
    return serve_simulator(seed=7, api_key=API_KEY)


@pytest.fixture
def make_client(simulator: Simulator) -> Iterator[Callable[..., EngineClient]]:
    """Clients against `simulator` with fast retries; override any constructor argument."""
    clients: list[EngineClient] = []

    def make(**options: Any) -> EngineClient:
        settings: dict[str, Any] = {"timeout_ms": 2000, "retry_attempts": 3, "retry_delay_ms": 1,
                                    "retry_delay_max_ms": 5}
        settings.update(options)
        client = EngineClient(simulator.api_url, settings.pop("api_key", API_KEY), **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.shutdown()
