"""The one error mapper on faults that cannot be produced on demand (a fake exception, said so here)."""

from __future__ import annotations

import psycopg.errors
from sqlalchemy.exc import OperationalError

from api.errors import on_unexpected


def test_contention_that_outlasts_the_retries_is_503_not_500() -> None:
    # Constructed, not provoked: a deadlock that survives run_with_retry's attempts cannot be forced.
    for cause in (psycopg.errors.DeadlockDetected(), psycopg.errors.SerializationFailure()):
        response = on_unexpected(None, OperationalError("INSERT …", {}, cause))  # type: ignore[arg-type]
        assert response.status_code == 503
        assert response.content["error"] == "busy"
