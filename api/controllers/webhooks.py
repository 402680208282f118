"""POST /api/v1/webhooks/ml-engine: verify the signature over the raw bytes, then store and apply — with the
deliveries that arrive meanwhile, in one transaction (integration.intake); the answer waits for the commit."""

from __future__ import annotations

import asyncio
import logging

from litestar import Request, Response, post

from api.errors import ApiError, webhook_answer
from integration import signature
from integration.events import WEBHOOK_BODY_MAX_BYTES
from integration.webhooks import Delivery, Outcome
from service import metrics

log = logging.getLogger("api.webhooks")


@post("/api/v1/webhooks/ml-engine", tags=["webhooks"], summary="ML Engine events (HMAC-signed)",
      request_max_body_size=WEBHOOK_BODY_MAX_BYTES)
async def ml_engine_webhook(request: Request) -> Response:
    # The settings and the group commit come from the app's state, not as dependencies: litestar resolves two
    # or more dependencies in a task group, which was a fifth of this route's CPU under load (py-spy).
    settings, webhooks = request.app.state.settings, request.app.state.webhooks
    body = await request.body()
    if len(body) > WEBHOOK_BODY_MAX_BYTES:
        raise ApiError(413, "too_large", f"webhook bodies are limited to {WEBHOOK_BODY_MAX_BYTES} bytes")
    try:
        verified = signature.verify(settings.ml_engine_webhook_secrets, body, request.headers,
                                    schemes=settings.ml_engine_webhook_schemes)
    except signature.SignatureError as error:
        metrics.WEBHOOKS.labels(event_type="unknown", result="unauthorized").inc()
        raise ApiError(401, "unauthorized", str(error)) from None
    outcome: Outcome = await asyncio.wrap_future(webhooks.submit(Delivery.of(body, verified)))
    rejected = outcome.result in ("malformed", "invalid")
    metrics.WEBHOOKS.labels(event_type=outcome.event_type, result="duplicate" if outcome.duplicate
                            else "rejected" if rejected else outcome.result).inc()
    if outcome.entry_ids and not outcome.duplicate:
        metrics.ENTRIES.inc(len(outcome.entry_ids))
    if not outcome.duplicate and (rejected or outcome.result == "review"):
        log.warning("webhook rejected" if rejected else "webhook kept for review",
                    extra={"event_type": outcome.event_type, "stored_event_id": outcome.event_id,
                           "reason": outcome.reason})
    return webhook_answer(outcome)
