"""The journal: entries are read and reversed, never edited (no PUT, PATCH or DELETE exists)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.params import FromPath, JSONBody, Parameter

from api.auth import require_role
from api.errors import ApiError
from api.params import LedgerDep, QueryText
from api.schemas import IdempotencyKey, PeriodStart, ReversalRequest, entry_out, parse_time


def _cursor(cursor: str | None):
    if not cursor:
        return None
    from datetime import UTC, datetime

    try:
        at, entry_id = cursor.rsplit("_", 1)
        return datetime.fromisoformat(at).astimezone(UTC), int(entry_id)
    except ValueError:
        raise ApiError(422, "invalid", f"cursor {cursor!r} is not one this API gave out") from None


class JournalController(Controller):
    path = "/api/v1/journal"
    tags = ["journal"]
    guards = [require_role]

    @get("/", sync_to_thread=True, summary="Entries in effective-time order")
    def list(self, ledger: LedgerDep, account: QueryText = None,
             from_: PeriodStart = None,
             to: QueryText = None, cursor: QueryText = None,
             limit: int = Parameter(default=100, ge=1, le=1000)) -> dict[str, Any]:
        entries = ledger.journal(account_id=account, start=parse_time(from_, "from"),
                                 end=parse_time(to, "to", end_of_day=True), after=_cursor(cursor), limit=limit)
        last = entries[-1] if len(entries) == limit else None
        return {"items": [entry_out(e) for e in entries],
                "next_cursor": f"{last.effective_at.isoformat()}_{last.id}" if last else None}

    @get("/{entry_id:int}", sync_to_thread=True)
    def read(self, entry_id: FromPath[int], ledger: LedgerDep) -> dict[str, Any]:
        return entry_out(ledger.entry(entry_id))

    @post("/{entry_id:int}/reversal", opt={"role": "operator"}, sync_to_thread=True,
          summary="Post the mirror entry (409 if already reversed)")
    def reverse(self, entry_id: FromPath[int], data: JSONBody[ReversalRequest], ledger: LedgerDep,
                idempotency_key: IdempotencyKey = None,
                ) -> Response[dict[str, Any]]:
        posted = ledger.reverse(entry_id, reason=data.reason,
                                idempotency_key=(f"api:reversal:{entry_id}:{idempotency_key}"
                                                 if idempotency_key else None))
        return Response({"entry_id": posted.entry_id, "reverses_entry_id": entry_id, "replayed": posted.replayed},
                        status_code=201)
