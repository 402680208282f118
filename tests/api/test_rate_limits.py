"""Rate limits (issue 17, part 4): per key, per address, on failed credentials and sign-ins; 429 with Retry-After;
a flood of made-up keys never reaches the database once its address is over the limit. Over ASGI, real database."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from api.app import create_app
from api.auth import create_key
from integration.signature import sign
from service import config
from tests.api.conftest import WEBHOOK_SECRET, auth


@pytest.fixture
def limited(ledger) -> Iterator[TestClient]:
    settings = config.load({"ML_ENGINE_WEBHOOK_SECRET": WEBHOOK_SECRET, "RATE_LIMIT_PER_KEY": "5/minute",
                            "RATE_LIMIT_PER_ADDRESS": "40/minute", "RATE_LIMIT_AUTH_FAILURES": "3/minute",
                            "RATE_LIMIT_SIGN_IN": "4/minute"})
    with TestClient(app=create_app(ledger, settings), raise_server_exceptions=False) as client:
        yield client


def test_per_key_limit_answers_429_with_retry_after(limited: TestClient, engine: sa.Engine) -> None:
    busy, other = create_key(engine, "finance", "busy"), create_key(engine, "finance", "other")
    answers = [limited.get("/api/v1/accounts", headers=auth(busy)).status_code for _ in range(6)]
    assert answers == [200] * 5 + [429]
    refused = limited.get("/api/v1/accounts", headers=auth(busy))
    assert refused.json()["error"] == "too_many_requests" and 1 <= int(refused.headers["retry-after"]) <= 60
    assert limited.get("/api/v1/accounts", headers=auth(other)).status_code == 200  # another key is not held up


def test_made_up_keys_are_shut_out_without_a_database_lookup(limited: TestClient, engine: sa.Engine,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = create_key(engine, "finance", "real")
    assert limited.get("/api/v1/accounts", headers=auth(real)).status_code == 200  # seen valid: cached
    store = limited.app.state.key_store
    lookups = []
    original = store.engine
    monkeypatch.setattr(store, "engine", _Counting(original, lookups))
    statuses = [limited.get("/api/v1/accounts", headers=auth(f"ilk_{i:08x}_forged")).status_code for i in range(20)]
    assert statuses[:3] == [401] * 3 and set(statuses[3:]) == {429}
    assert len(lookups) == 3  # after the third failure, no made-up key reaches PostgreSQL
    assert limited.get("/api/v1/accounts", headers=auth(real)).status_code == 200  # the real client goes on


def test_sign_in_attempts_are_limited(limited: TestClient) -> None:
    statuses = [limited.post("/login", data={"api_key": f"ilk_{i}_nope", "next": "/"},
                             follow_redirects=False).status_code for i in range(6)]
    assert statuses[:3] == [401] * 3 and set(statuses[3:]) == {429}


def test_the_webhook_route_and_health_are_not_limited(limited: TestClient, engine: sa.Engine) -> None:
    body = json.dumps({"event_type": "account.error", "data": {"account_id": "nobody-rl", "error_type": "warning",
                                                               "error_message": "x"}}).encode()
    for _ in range(50):
        answer = limited.post("/api/v1/webhooks/ml-engine", content=body,
                              headers={"X-ML-Signature": sign(WEBHOOK_SECRET, body)})
        assert answer.status_code in (200, 202), answer.text
        assert limited.get("/api/v1/health").status_code == 200


class _Counting:
    """The KeyStore's engine, counting connections: a fault we cannot observe otherwise (said so)."""

    def __init__(self, engine: sa.Engine, calls: list[int]) -> None:
        self._engine, self._calls = engine, calls

    def begin(self):
        self._calls.append(1)
        return self._engine.begin()

    def connect(self):
        self._calls.append(1)
        return self._engine.connect()
