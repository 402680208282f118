"""Fixtures for the ML Engine side: a served simulator and clients against it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from integration.client import EngineClient
from simulator import Simulator
from tests.integration.support import API_KEY, START


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A served simulator that wants API_KEY (stopped at the end of the test)."""
    sim = Simulator(seed=7, api_key=API_KEY, start_date=START).serve()
    yield sim
    sim.stop()


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
