"""Withdrawal holds (two-phase, ledger.holds): list and read an account's holds, post one (the engine confirmed),
void one (cancelled). A hold is placed by `POST /accounts/{id}/withdrawals` with `"mode": "hold"`."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.params import FromPath, JSONBody, Parameter

from api.auth import require_role
from api.params import LedgerDep, QueryText
from api.schemas import VoidRequest
from ledger import holds
from readside import views
from readside.tabular import hold_out

LIMIT_DEFAULT = 100


class HoldController(Controller):
    path = "/api/v1/accounts/{account_id:str}/holds"
    tags = ["holds"]
    guards = [require_role]

    @get("/", sync_to_thread=True, summary="An account's withdrawal holds (cursor: the last hold id seen)")
    def list(self, account_id: FromPath[str], ledger: LedgerDep, status: QueryText = None,
             cursor: int | None = Parameter(default=None, ge=0),
             limit: int = Parameter(default=LIMIT_DEFAULT, ge=1, le=1000)) -> dict[str, Any]:
        return views.account_holds(ledger, account_id, status=status, cursor=cursor, limit=limit)

    @get("/{hold_id:int}", sync_to_thread=True, summary="One hold, with the account's balance and available")
    def read(self, account_id: FromPath[str], hold_id: FromPath[int], ledger: LedgerDep) -> dict[str, Any]:
        return views.account_hold(ledger, account_id, hold_id)

    @post("/{hold_id:int}/post", opt={"role": "operator"}, sync_to_thread=True, status_code=200,
          summary="Post the hold: book its withdrawal (once; again returns the same entry)")
    def post_hold(self, account_id: FromPath[str], hold_id: FromPath[int],
                  ledger: LedgerDep) -> Response[dict[str, Any]]:
        def work(tx: Any) -> dict[str, Any]:
            hold, _ = holds.post(tx, hold_id, account_id=account_id)
            return hold_out(hold, holds.balances(tx, [account_id])[account_id])
        return Response(ledger.transact(work), status_code=200)

    @post("/{hold_id:int}/void", opt={"role": "operator"}, sync_to_thread=True, status_code=200,
          summary="Void the hold: release its funds (again: no change)")
    def void_hold(self, account_id: FromPath[str], hold_id: FromPath[int], ledger: LedgerDep,
                  data: JSONBody[VoidRequest | None] = None) -> Response[dict[str, Any]]:
        reason = data.reason if data else ""

        def work(tx: Any) -> dict[str, Any]:
            hold = holds.void(tx, hold_id, reason=reason, account_id=account_id)
            return hold_out(hold, holds.balances(tx, [account_id])[account_id])
        return Response(ledger.transact(work), status_code=200)
