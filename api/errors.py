"""The one place where errors and webhook outcomes become HTTP answers (errors: {"error": CODE, "detail": TEXT})."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from psycopg import DataError as PsycopgDataError
from sqlalchemy.exc import DataError

from integration.webhooks import Outcome
from ledger import errors as ledger_errors
from ledger.db import is_transient, is_unavailable
from readside import errors as read_errors

log = logging.getLogger("api.errors")

STATUS_OF: dict[type[ledger_errors.LedgerError], int] = {
    ledger_errors.InvalidAmount: 422,
    ledger_errors.UnknownCurrency: 422,
    ledger_errors.InvalidEntry: 422,
    ledger_errors.UnknownAccount: 404,
    ledger_errors.UnknownEntry: 404,
    ledger_errors.DuplicateConflict: 409,
    ledger_errors.InsufficientFunds: 409,
    ledger_errors.AccountStateConflict: 409,
    ledger_errors.AlreadyReversed: 409,
    ledger_errors.IntegrityViolation: 500,
    read_errors.NotFound: 404,
    read_errors.InvalidQuery: 422,
}


class ApiError(Exception):
    """An HTTP-level refusal raised by a controller (bad header, auth, …)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def answer(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response({"error": code, "detail": detail}, status_code=status, headers=headers)


# A code for every status litestar itself may answer with; any other is named after its reason phrase.
_CODES = {400: "malformed", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          413: "too_large", 415: "unsupported_media_type", 429: "too_many_requests"}


def code_of(status: int) -> str:
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_" + str(status)


def status_of(error: ledger_errors.LedgerError) -> int:
    """The HTTP status of a ledger (or read side) error: the API's answers and the pages' error pages."""
    return next((s for cls, s in STATUS_OF.items() if isinstance(error, cls)), 400)


def on_ledger_error(_: Request, error: ledger_errors.LedgerError) -> Response:
    status = status_of(error)
    if status >= 500:
        log.error("integrity violation", extra={"detail": error.detail})
    return answer(status, error.code, error.detail)


def on_api_error(_: Request, error: ApiError) -> Response:
    return answer(error.status, error.code, error.detail)


def on_http_exception(_: Request, error: HTTPException) -> Response:
    status = error.status_code
    if isinstance(error, ValidationException):
        extra = error.extra if isinstance(error.extra, list) else []
        detail = "; ".join(f"{e.get('key', '')}: {e.get('message', '')}".strip(": ") for e in extra
                           if isinstance(e, dict)) or error.detail
        code = "malformed" if "JSON" in str(detail) or "decode" in str(detail).lower() else "invalid"
        return answer(400 if code == "malformed" else 422, code, str(detail))
    # The exception's headers go out with it: a 405 names the methods the resource has (Allow, RFC 9110 §15.5.6).
    return answer(status, code_of(status), str(error.detail), dict(error.headers or {}))


def on_unexpected(_: Request, error: Exception) -> Response:
    if isinstance(error, RecursionError):  # litestar's JSON decoder on a body nested thousands deep
        return answer(400, "malformed", "the JSON is nested too deeply")
    if isinstance(error, DataError) or isinstance(error, PsycopgDataError):
        # e.g. a NUL byte in a text field, a number out of the column's range: the input, not us.
        return answer(422, "invalid", "a field holds a value the ledger cannot store (NUL byte or out of range)")
    if is_transient(error):
        # A deadlock or serialization failure still there after run_with_retry's attempts: contention,
        # not a fault of the request — retrying later is the answer.
        log.warning("database contention outlasted the retries", extra={"error": type(error).__name__})
        return answer(503, "busy", "the ledger is busy; retry later")
    if is_unavailable(error):
        log.warning("database unavailable", extra={"error": type(error).__name__})
        return answer(503, "unavailable", "the database is unavailable; retry later")
    log.exception("unexpected error")
    return answer(500, "internal", "the server could not complete the request")


# A webhook delivery's outcome (integration.webhooks.Outcome.result) as the contract (§6) answers it.
WEBHOOK_STATUS: dict[str, int] = {"applied": 200, "review": 202, "malformed": 400, "invalid": 422}


def webhook_answer(outcome: Outcome) -> Response:
    """200 applied (or already applied: `duplicate`), 202 kept for review, 400 malformed, 422 invalid."""
    status = WEBHOOK_STATUS[outcome.result]
    if status >= 400:
        return answer(status, outcome.result, outcome.reason)
    body: dict[str, Any] = {"received": True, "duplicate": outcome.duplicate, "entry_ids": list(outcome.entry_ids)}
    if outcome.result == "review":
        body["review"] = True
        body["reason"] = outcome.reason
    return Response(body, status_code=status)


HANDLERS = {
    ledger_errors.LedgerError: on_ledger_error,
    ApiError: on_api_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}


# ------------------------------------------------------------------------------ the answers, documented

_ERROR_TEXT = {400: "Malformed request", 401: "No or unknown API key (or webhook signature)",
               403: "The key's role is too low", 404: "No such resource", 409: "Conflict with recorded state",
               413: "Body too large", 422: "Invalid value", 429: "Rate limit reached; retry after Retry-After seconds",
               503: "Database or job queue unavailable; retry later"}
_PUBLIC_PATHS = {"/api/v1/health", "/api/v1/ready", "/metrics", "/api/v1/metrics", "/api/v1/webhooks/ml-engine"}
_WEBHOOK_PATH = "/api/v1/webhooks/ml-engine"


def document_error_answers(openapi: Any) -> None:
    """Add the error answers each operation can give (all `{"error", "detail"}`) to the generated OpenAPI.

    litestar documents only the success answer; clients (and schemathesis) need the refusals too.
    """
    from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Schema
    from litestar.openapi.spec.enums import OpenAPIType

    error_schema = Schema(type=OpenAPIType.OBJECT, required=["error", "detail"],
                          properties={"error": Schema(type=OpenAPIType.STRING),
                                      "detail": Schema(type=OpenAPIType.STRING)})

    def error(status: int) -> OpenAPIResponse:
        return OpenAPIResponse(description=_ERROR_TEXT[status],
                               content={"application/json": OpenAPIMediaType(schema=error_schema)})

    for path, item in (openapi.paths or {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            responses = operation.responses = dict(operation.responses or {})
            if path in _PUBLIC_PATHS:
                operation.security = []
                codes: set[int] = set()
            else:
                codes = {400, 401, 403, 422, 503}
            if "{" in path:
                codes.add(404)
            if method == "post":
                codes |= {400, 409, 413, 422, 503}
            if path == "/api/v1/ready":
                codes.add(503)
            if path == _WEBHOOK_PATH:
                responses.pop("201", None)
                responses["200"] = OpenAPIResponse(description="Applied, or already applied (duplicate)")
                responses["202"] = OpenAPIResponse(description="Stored and kept for review")
                codes = {400, 401, 413, 422, 503}
            if path == "/api/v1/accounts" and method == "post":
                responses.setdefault("200", OpenAPIResponse(description="The account already exists as asked"))
            if path not in _PUBLIC_PATHS or path == "/login":
                codes.add(429)  # api.ratelimit
            for status in sorted(codes):
                responses[str(status)] = error(status)  # ours, not litestar's default 400 body
