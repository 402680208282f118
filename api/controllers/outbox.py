"""Notifications owed to the ML Engine: see what waits or died, and retry dead ones."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, post
from litestar.params import FromPath, Parameter

from api.auth import require_role
from api.errors import ApiError
from api.params import IdCursorQuery, LedgerDep, QueryText
from integration import outbox
from readside import views


class OutboxController(Controller):
    path = "/api/v1/outbox"
    tags = ["operations"]
    guards = [require_role]

    @get("/", sync_to_thread=True, opt={"role": "operator"}, summary="Outbox rows (status pending|delivered|dead)")
    def list(self, ledger: LedgerDep, status: QueryText = None, cursor: IdCursorQuery = 0,
             limit: int = Parameter(default=100, ge=1, le=1000)) -> dict[str, Any]:
        return views.outbox_events(ledger.engine, status=status, cursor=cursor, limit=limit)

    @post("/{outbox_id:int}/retry", sync_to_thread=True, opt={"role": "operator"}, status_code=200,
          summary="Queue a dead notification again")
    def retry(self, outbox_id: FromPath[int], ledger: LedgerDep) -> dict[str, Any]:
        if outbox.retry_dead(ledger.engine, outbox_id) == 0:
            raise ApiError(409, "not_dead", f"outbox row {outbox_id} is not dead (or does not exist)")
        return {"id": outbox_id, "status": "pending"}
