"""Schemathesis against our own OpenAPI over ASGI, every operation, with an admin key: no 5xx, no schema violation.

The operations are driven with plain Hypothesis (`operation.as_strategy()`) rather than schemathesis' pytest
plugin, whose lazy fixture loader does not run under pytest 9.
"""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.auth import create_key

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
EXAMPLES_PER_OPERATION = 30


@pytest.mark.slow
def test_every_operation_keeps_its_promises(db, settings) -> None:
    """On a database of its own (`db`): the fuzzer reverses entries and acknowledges alerts it finds by id."""
    # POST /reconciliations only enqueues a job; the queue here records what was asked (no broker in this test).
    enqueued: list[str] = []
    app = create_app(db.ledger, settings, jobs=lambda actor, **_: enqueued.append(actor))
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, "the OpenAPI lists fewer operations than the app serves"
    headers = {"Authorization": f"Bearer {create_key(db.engine, 'admin', 'schemathesis')}"}
    failures: dict[str, str] = {}
    for operation, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
        @given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
                             suppress_health_check=list(HealthCheck),
                             database=None)
        def run(case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:  # an operation with no parameters and no body has no invalid input to send
            assert mode == GenerationMode.NEGATIVE
        except BaseException as error:  # noqa: BLE001 — FailureGroup is a BaseExceptionGroup; collect them all
            if isinstance(error, KeyboardInterrupt):
                raise
            failures[f"{operation.label} ({mode})"] = str(error)[:2000]
    assert set(enqueued) == {"reconcile"}
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
