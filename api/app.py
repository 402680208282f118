"""The litestar application: routes under /api/v1, OpenAPI at /schema, errors in one place."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from litestar import Litestar, Request, Response, get
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute

from api import pages, ratelimit
from api.auth import KeyStore
from api.controllers.accounts import AccountController
from api.controllers.alerts import AlertController
from api.controllers.holds import HoldController
from api.controllers.journal import JournalController
from api.controllers.outbox import OutboxController
from api.controllers.reconciliations import ReconciliationController
from api.controllers.reports import ReportController
from api.controllers.statements import StatementController
from api.controllers.webhooks import ml_engine_webhook
from api.errors import HANDLERS, document_error_answers
from api.openapi import state_the_rules
from api.params import LedgerDep
from api.ratelimit import RateLimits
from api.requests import ExactJsonRequest
from integration.intake import GroupCommit
from integration.webhooks import WebhookProcessor
from ledger import Ledger
from service import __version__, metrics
from service.config import Settings
from service.replica import lag_ms as replica_lag_ms

access_log = logging.getLogger("invledger.access")
REQUEST_BODY_MAX_BYTES = 1024 * 1024
# Webhook group commit (integration.intake): committer threads, and the most deliveries one transaction takes.
WEBHOOK_COMMITTERS = 2
WEBHOOK_BATCH_MAX = 64


@get("/api/v1/health", tags=["operations"], summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/api/v1/ready", tags=["operations"], summary="Readiness: database, broker, engine circuit",
     sync_to_thread=True)
def ready(ledger: LedgerDep, state: State) -> Response[dict[str, Any]]:
    checks: dict[str, Any] = {}
    try:
        with ledger.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:  # noqa: BLE001 — any failure means "not ready"
        checks["database"] = f"unavailable: {type(error).__name__}"
    for name, probe in state.get("readiness", {}).items():
        checks[name] = probe()
    ok = checks["database"] == "ok" and checks.get("broker", "ok") == "ok"
    return Response({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


# litestar adds "; charset=utf-8" to text/* itself; the route's media type is what the OpenAPI documents.
PROMETHEUS_MEDIA_TYPE = "text/plain; version=0.0.4"


@get("/metrics", tags=["operations"], summary="Prometheus metrics", sync_to_thread=True, include_in_schema=True,
     media_type=PROMETHEUS_MEDIA_TYPE)
def prometheus_metrics() -> Response[bytes]:
    return Response(metrics.render(), media_type=PROMETHEUS_MEDIA_TYPE)


@get("/api/v1/metrics", tags=["operations"], summary="Prometheus metrics", sync_to_thread=True,
     media_type=PROMETHEUS_MEDIA_TYPE)
def prometheus_metrics_v1() -> Response[bytes]:
    return prometheus_metrics.fn()


def _allow_middleware(app: Any) -> Any:
    """Answer OPTIONS with every method of the resource in `Allow`. litestar makes a path's OPTIONS handler when the
    first of its routes is registered and merges the others in afterwards, so its Allow listed only some of them
    (OPTIONS /api/v1/reconciliations: "GET, OPTIONS", without POST)."""
    methods: dict[str, str] = {}

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "OPTIONS":
            await app(scope, receive, send)
            return
        if not methods:
            methods.update({route.path_format: ", ".join(sorted(route.methods)) for route in scope["app"].routes
                            if isinstance(route, HTTPRoute)})

        async def send_wrapper(message: dict[str, Any]) -> None:
            allow = methods.get(scope.get("path_template", ""))
            if message["type"] == "http.response.start" and message["status"] == 204 and allow:
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message["headers"].append((b"allow", allow.encode()))
            await send(message)

        await app(scope, receive, send_wrapper)
    return middleware


def _timing_middleware(app: Any) -> Any:
    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            elapsed_s = time.perf_counter() - started
            route = scope.get("path_template") or ("other" if status["code"] == 404 else scope.get("path", ""))
            metrics.REQUEST_SECONDS.labels(scope.get("method", ""), route, str(status["code"])).observe(elapsed_s)
            # The access log: who asked what and how it went. No query string, headers or body (no secrets: a
            # key travels only in Authorization); the principal is the key's public prefix and role.
            client = scope.get("client") or ("", 0)
            access_log.info("request", extra={
                "method": scope.get("method"), "path": scope.get("path"), "status": status["code"],
                "duration_ms": round(elapsed_s * 1000, 2), "client": client[0],
                "principal": (scope.get("state") or {}).get("principal", "")})
    return middleware


def create_app(ledger: Ledger, settings: Settings, *, readiness: dict[str, Callable[[], str]] | None = None,
               route_handlers: list[Any] | None = None, on_startup: list[Any] | None = None,
               on_shutdown: list[Any] | None = None, jobs: Callable[..., None] | None = None,
               reports_engine: sa.Engine | None = None) -> Litestar:
    """The app. `readiness` adds checks to /ready (e.g. broker, engine circuit); `jobs(actor_name, **kwargs)`
    enqueues a job (POST /reconciliations needs it; without it that route answers 503); `reports_engine` is a
    streaming replica that reports, statements and pages read from (REPORTS_DATABASE_URL): each such reply then
    says how far behind the primary it was (`replica_lag_ms`, api.formats)."""
    processor = WebhookProcessor(ledger, adjustment_alert_threshold=settings.adjustment_alert_threshold)
    webhooks = GroupCommit(processor.receive_many, max_batch=WEBHOOK_BATCH_MAX, committers=WEBHOOK_COMMITTERS,
                           name="webhook-commit")
    metrics.register_database(ledger.engine)

    def constant(value: Any) -> Provide:
        return Provide(lambda: value, sync_to_thread=False)

    if reports_engine is None:
        reports_ledger = constant(ledger)
    else:
        replica = Ledger(reports_engine)

        def on_the_replica(request: Request) -> Ledger:
            # Measured before the report's own snapshot: the reply's lag bounds the report's.
            request.state["replica_lag_ms"] = replica_lag_ms(reports_engine)
            return replica

        reports_ledger = Provide(on_the_replica, sync_to_thread=True)

    app = Litestar(
        route_handlers=[health, ready, prometheus_metrics, prometheus_metrics_v1, ml_engine_webhook,
                        AccountController, JournalController, OutboxController, ReportController, AlertController,
                        ReconciliationController, StatementController, HoldController, pages.ROUTER,
                        *(route_handlers or [])],
        dependencies={"ledger": constant(ledger), "reports_ledger": reports_ledger, "settings": constant(settings)},
        state=State({"key_store": KeyStore(ledger.engine), "readiness": readiness or {}, "settings": settings,
                     "jobs": jobs, "webhooks": webhooks,
                     "rate_limits": RateLimits(per_key=settings.rate_limit_per_key,
                                               per_address=settings.rate_limit_per_address,
                                               auth_failures=settings.rate_limit_auth_failures,
                                               sign_in=settings.rate_limit_sign_in)}),
        exception_handlers=HANDLERS,
        logging_config=None,  # logs are JSON lines, configured once by service.logs
        middleware=[_timing_middleware, ratelimit.middleware, _allow_middleware],
        template_config=pages.TEMPLATE_CONFIG,
        request_max_body_size=REQUEST_BODY_MAX_BYTES,
        request_class=ExactJsonRequest,
        on_startup=on_startup or [],
        on_shutdown=[*(on_shutdown or []), lambda: webhooks.close()],
        openapi_config=OpenAPIConfig(
            title="invledger", version=__version__, path="/schema",
            description="Double-entry ledger for investment accounts traded by an ML Engine. "
                        "Money is a decimal string at the currency's scale; times are RFC 3339 UTC.",
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            security=[{"bearer": []}]),
    )
    document_error_answers(app.openapi_schema)
    # The document as served is the plugin's cached dict of that object: the rules are stated there, once.
    state_the_rules(app.plugins.get(OpenAPIPlugin).provide_openapi_schema())
    return app
