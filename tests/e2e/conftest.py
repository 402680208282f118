"""The ledger served over real HTTP, the engine simulator over real HTTP, and a client between them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api.app import create_app
from integration.client import EngineClient
from ledger import Ledger
from service import config
from simulator import BackgroundServer, Simulator

SECRET = "e2e-webhook-secret-0123456789"


@pytest.fixture(scope="module")
def ledger_server(ledger: Ledger) -> Iterator[BackgroundServer]:
    settings = config.load({"ML_ENGINE_WEBHOOK_SECRET": SECRET})
    server = BackgroundServer(create_app(ledger, settings)).start()
    yield server
    server.stop()


@pytest.fixture
def engine_pair(ledger_server: BackgroundServer) -> Iterator[Callable[..., tuple[Simulator, EngineClient]]]:
    """Make a simulator that sends signed webhooks to the served ledger, and a client to it."""
    made: list[tuple[Simulator, EngineClient]] = []

    def make(**options: Any) -> tuple[Simulator, EngineClient]:
        options.setdefault("webhook_retry_delay_ms", 20)
        options.setdefault("webhook_retry_delay_max_ms", 200)
        sim = Simulator(webhook_secret=SECRET, ledger_url=f"{ledger_server.url}/api/v1/webhooks/ml-engine",
                        **options).serve()
        client = EngineClient(sim.api_url, "", timeout_ms=3000, retry_attempts=3, retry_delay_ms=5,
                              retry_delay_max_ms=50)
        made.append((sim, client))
        return sim, client

    yield make
    for sim, client in made:
        client.shutdown()
        sim.stop()
