"""The journal: entries are read and reversed, never edited (no PUT, PATCH or DELETE exists)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.params import FromPath, JSONBody, Parameter

from api import idempotency
from api.auth import require_role
from api.params import AccountIdQuery, LedgerDep, QueryText
from api.schemas import IdempotencyKey, PeriodStart, ReversalRequest, parse_time
from readside import views


class JournalController(Controller):
    path = "/api/v1/journal"
    tags = ["journal"]
    guards = [require_role]

    @get("/", sync_to_thread=True, summary="Entries in effective-time order")
    def list(self, ledger: LedgerDep, account: AccountIdQuery = None,
             from_: PeriodStart = None,
             to: QueryText = None, cursor: QueryText = None,
             limit: int = Parameter(default=100, ge=1, le=1000)) -> dict[str, Any]:
        return views.journal(ledger, account_id=account, start=parse_time(from_, "from"),
                             end=parse_time(to, "to", end_of_day=True), cursor=cursor, limit=limit)

    @get("/{entry_id:int}", sync_to_thread=True)
    def read(self, entry_id: FromPath[int], ledger: LedgerDep) -> dict[str, Any]:
        return views.entry(ledger, entry_id)

    @post("/{entry_id:int}/reversal", opt={"role": "operator"}, sync_to_thread=True,
          summary="Post the mirror entry (409 if already reversed)")
    def reverse(self, entry_id: FromPath[int], data: JSONBody[ReversalRequest], ledger: LedgerDep,
                idempotency_key: IdempotencyKey = None,
                ) -> Response[dict[str, Any]]:
        key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
        posted = ledger.reverse(entry_id, reason=data.reason,
                                idempotency_key=f"api:reversal:{entry_id}:{key}" if key else None)
        return Response({"entry_id": posted.entry_id, "reverses_entry_id": entry_id, "replayed": posted.replayed},
                        status_code=201)
