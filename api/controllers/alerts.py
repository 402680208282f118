"""Alerts (contract §5): list them (finance), acknowledge one (operator)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, Parameter

from api.auth import require_role
from api.errors import ApiError
from api.formats import respond
from api.params import IdCursorQuery, LedgerDep, QueryText
from integration import alerts
from ledger import Ledger
from readside import tabular, views


def principal(request: Request) -> str:
    return request.scope.get("state", {}).get("principal", "unknown")


def acknowledge(ledger: Ledger, alert_id: int, by: str) -> dict[str, Any]:
    with ledger.engine.begin() as connection:
        row = alerts.acknowledge(connection, alert_id, by)
    if row is None:
        raise ApiError(404, "not_found", f"alert {alert_id} does not exist")
    return tabular.alert_out(row)


class AlertController(Controller):
    path = "/api/v1/alerts"
    tags = ["operations"]
    guards = [require_role]

    @get("/", sync_to_thread=True, summary="Alerts, newest first (status open|acknowledged|resolved)")
    def list(self, request: Request, ledger: LedgerDep, status: QueryText = None, cursor: IdCursorQuery = 0,
             limit: int = Parameter(default=100, ge=1, le=1000)) -> Response:
        body = views.alerts(ledger.engine, status=status, cursor=cursor, limit=limit)
        return respond(request, body, tabular.alert_rows, headers=tabular.ALERT_HEADERS, filename="alerts")

    @post("/{alert_id:int}/ack", sync_to_thread=True, opt={"role": "operator"}, status_code=200,
          summary="Acknowledge an alert (idempotent: the first acknowledgement is kept)")
    def ack(self, request: Request, ledger: LedgerDep, alert_id: FromPath[int]) -> dict[str, Any]:
        return acknowledge(ledger, alert_id, principal(request))
