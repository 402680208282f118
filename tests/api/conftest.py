"""An API client over ASGI against the real app and database, with keys for each role."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from api.app import create_app
from api.auth import create_key
from ledger import Ledger
from service import config

WEBHOOK_SECRET = "test-webhook-secret-0123456789"
ROTATED_SECRET = "old-webhook-secret-9876543210"


@pytest.fixture(scope="session")
def settings() -> config.Settings:
    # Every test of the session shares one app and one client address: the failed-credentials limit would
    # otherwise carry the abuse tests' made-up keys into the next tests (tests/api/test_rate_limits.py has its own).
    return config.load({"ML_ENGINE_WEBHOOK_SECRET": f"{WEBHOOK_SECRET},{ROTATED_SECRET}",
                        "ADJUSTMENT_ALERT_THRESHOLD": "1000.00", "RATE_LIMIT_AUTH_FAILURES": "100000/minute",
                        "RATE_LIMIT_SIGN_IN": "100000/minute"})


@pytest.fixture(scope="session")
def keys(engine: sa.Engine) -> dict[str, str]:
    return {role: create_key(engine, role, f"test {role}") for role in ("finance", "operator", "admin")}


@pytest.fixture(scope="session")
def app(ledger: Ledger, settings: config.Settings):
    return create_app(ledger, settings)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app=app, raise_server_exceptions=False) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
