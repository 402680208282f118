"""Helpers for the ML Engine tests: a webhook receiver that records raw deliveries, and sample data."""

from __future__ import annotations

import threading
from datetime import date
from decimal import Decimal

from litestar import Litestar, Request, Response, post

from integration.engine_api import CreateAccountRequest
from simulator import BackgroundServer

SECRET = "test-webhook-secret-0123456789"
API_KEY = "test-engine-key"
START = date(2025, 1, 1)


class Receiver:
    """A tiny webhook endpoint that records raw bodies and headers; can answer some statuses first."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[bytes, dict[str, str]]] = []
        self.statuses: list[int] = []  # answered first, one per delivery, then 200
        self._lock = threading.Lock()

        @post("/hook")
        async def hook(request: Request) -> Response[bytes]:
            body = await request.body()
            with self._lock:
                self.deliveries.append((body, dict(request.headers)))
                status = self.statuses.pop(0) if self.statuses else 200
            return Response(content=b'{"received": true}', status_code=status, media_type="application/json")

        self.server = BackgroundServer(Litestar(route_handlers=[hook], openapi_config=None, logging_config=None))

    def __enter__(self) -> Receiver:
        self.server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url + "/hook"

    def bodies(self) -> list[bytes]:
        with self._lock:
            return [body for body, _ in self.deliveries]


def new_account(account_id: str, capital: str = "1000.00") -> CreateAccountRequest:
    return CreateAccountRequest(account_id=account_id, product_id="prod-1", agent_type="swing",
                                initial_capital=Decimal(capital), agent_config={"risk": "low"})
