"""Investment accounts: open, list, read, move money, pause/resume/close, balances and statements."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, JSONBody, Parameter

from api import idempotency
from api.auth import require_role
from api.errors import ApiError
from api.formats import respond
from api.params import AccountIdQuery, LedgerDep, QueryText, ReportsLedgerDep, SettingsDep
from api.schemas import (
    CreateAccount,
    IdempotencyKey,
    MoneyMovement,
    PeriodStart,
    StatusChange,
    WithdrawalRequest,
    parse_time,
    posted_out,
)
from ledger import AccountSpec, Ledger, Money, holds
from ledger.money import parse_amount
from readside import tabular, views
from readside.tabular import account_out, hold_out

LIMIT_DEFAULT = 100


class AccountController(Controller):
    path = "/api/v1/accounts"
    tags = ["accounts"]
    guards = [require_role]

    @post("/", opt={"role": "operator"}, sync_to_thread=True, summary="Open an investment account")
    def create(self, data: JSONBody[CreateAccount], ledger: LedgerDep,
               settings: SettingsDep) -> Response[dict[str, Any]]:
        fee_rate = data.fee_rate if data.fee_rate is not None else settings.default_fee_rate
        if not fee_rate.is_finite() or not Decimal(0) <= fee_rate <= Decimal(1) or fee_rate.as_tuple().exponent < -6:
            raise ApiError(422, "invalid", "fee_rate must be a decimal from 0 to 1 with at most 6 places")
        initial = None
        if data.initial_capital is not None:
            initial = Money.from_decimal(data.initial_capital, data.currency)
            if initial.minor < 0:
                raise ApiError(422, "invalid_amount", "initial_capital may not be negative")
        account, created = ledger.open_account(AccountSpec(
            account_id=data.account_id, product_id=data.product_id, agent_type=data.agent_type,
            currency=data.currency, fee_rate=fee_rate, initial_capital=initial, agent_config=data.agent_config))
        return Response(account_out(account), status_code=201 if created else 200)

    @get("/", sync_to_thread=True, summary="List investment accounts (cursor pagination by account id)")
    def list(self, ledger: LedgerDep, status: QueryText = None, cursor: AccountIdQuery = None,
             limit: int = Parameter(default=LIMIT_DEFAULT, ge=1, le=1000)) -> dict[str, Any]:
        return views.accounts(ledger, status=status, cursor=cursor, limit=limit)

    @get("/{account_id:str}", sync_to_thread=True,
         summary="One account: status, balance (ledger), available (balance − open holds), currency")
    def read(self, account_id: FromPath[str], ledger: LedgerDep) -> dict[str, Any]:
        return views.account(ledger, account_id)

    def _move(self, ledger: Ledger, account_id: str, data: MoneyMovement, key: str | None,
              kind: str) -> Response[dict[str, Any]]:
        key = idempotency.require_key(key)
        currency = ledger.account(account_id).currency
        amount = parse_amount(data.amount, currency)

        def work(tx) -> tuple[int, dict[str, Any]]:
            move = tx.deposit if kind == "deposit" else tx.withdraw
            posted = move(account_id, amount.to_decimal(), idempotency_key=f"api:{kind}:{account_id}:{key}",
                          reference=data.reference)
            return 201, posted_out(posted, account_id, amount)

        status, body = idempotency.once(ledger, f"{kind}:{account_id}", key,
                                        {"amount": str(amount), "reference": data.reference}, work)
        return Response(body, status_code=status)

    @post("/{account_id:str}/deposits", opt={"role": "operator"}, sync_to_thread=True,
          summary="Deposit (Idempotency-Key required)")
    def deposit(self, account_id: FromPath[str], data: JSONBody[MoneyMovement], ledger: LedgerDep,
                idempotency_key: IdempotencyKey = None,
                ) -> Response[dict[str, Any]]:
        return self._move(ledger, account_id, data, idempotency_key, "deposit")

    @post("/{account_id:str}/withdrawals", opt={"role": "operator"}, sync_to_thread=True,
          summary="Withdraw (Idempotency-Key required; 409 if it would overdraw the available balance); "
                  "\"mode\": \"hold\" places a hold instead (two-phase: posted or voided later)")
    def withdraw(self, account_id: FromPath[str], data: JSONBody[WithdrawalRequest], ledger: LedgerDep,
                 settings: SettingsDep, idempotency_key: IdempotencyKey = None,
                 ) -> Response[dict[str, Any]]:
        if data.mode == "immediate":
            if data.expires_in_s is not None:
                raise ApiError(422, "invalid", "expires_in_s is for \"mode\": \"hold\" only")
            return self._move(ledger, account_id, MoneyMovement(amount=data.amount, reference=data.reference),
                              idempotency_key, "withdrawal")
        key = idempotency.require_key(idempotency_key)
        amount = parse_amount(data.amount, ledger.account(account_id).currency)
        expires_in_s = data.expires_in_s or settings.hold_expiry_seconds

        def work(tx) -> tuple[int, dict[str, Any]]:
            hold = holds.place(tx, account_id, amount.to_decimal(), idempotency_key=f"api:hold:{account_id}:{key}",
                               reference=data.reference, expires_in=timedelta(seconds=expires_in_s))
            return 201, hold_out(hold, holds.balances(tx, [account_id])[account_id])

        status, body = idempotency.once(ledger, f"withdrawal:{account_id}", key, {
            "amount": str(amount), "reference": data.reference, "mode": "hold", "expires_in_s": expires_in_s}, work)
        return Response(body, status_code=status)

    def _status(self, ledger: Ledger, account_id: str, action: str, data: StatusChange | None) -> dict[str, Any]:
        account = ledger.change_status(account_id, action, reason=data.reason if data else "")
        return account_out(account, holds.account_balances(ledger, [account_id]).get(account_id))

    @post("/{account_id:str}/pause", opt={"role": "operator"}, sync_to_thread=True, status_code=200)
    def pause(self, account_id: FromPath[str], ledger: LedgerDep,
                   data: JSONBody[StatusChange | None] = None) -> dict[str, Any]:
        return self._status(ledger, account_id, "pause", data)

    @post("/{account_id:str}/resume", opt={"role": "operator"}, sync_to_thread=True, status_code=200)
    def resume(self, account_id: FromPath[str], ledger: LedgerDep,
                    data: JSONBody[StatusChange | None] = None) -> dict[str, Any]:
        return self._status(ledger, account_id, "resume", data)

    @post("/{account_id:str}/close", opt={"role": "operator"}, sync_to_thread=True, status_code=200)
    def close(self, account_id: FromPath[str], ledger: LedgerDep,
                   data: JSONBody[StatusChange | None] = None) -> dict[str, Any]:
        return self._status(ledger, account_id, "close", data)

    @get("/{account_id:str}/balance", sync_to_thread=True, summary="Balance now or as of a time (JSON or CSV)")
    def balance(self, request: Request, account_id: FromPath[str], reports_ledger: ReportsLedgerDep,
                as_of: QueryText = None) -> Response:
        body = views.balance(reports_ledger, account_id, parse_time(as_of, "as_of", end_of_day=True))
        return respond(request, body, tabular.balance_rows,
                       headers=tabular.BALANCE_HEADERS, filename=f"balance-{account_id}")

    @get("/{account_id:str}/statement", sync_to_thread=True,
         summary="Opening balance, lines with running balance, closing balance (JSON or CSV)")
    def statement(self, account_id: FromPath[str], reports_ledger: ReportsLedgerDep, from_: PeriodStart = None,
                  to: QueryText = None, cursor: QueryText = None,
                  limit: int = Parameter(default=LIMIT_DEFAULT, ge=1, le=1000), *, request: Request) -> Response:
        body = views.statement(reports_ledger, account_id, start=parse_time(from_, "from"),
                               end=parse_time(to, "to", end_of_day=True), cursor=cursor, limit=limit)
        return respond(request, body, tabular.statement_rows,
                       headers=tabular.STATEMENT_HEADERS, filename=f"statement-{account_id}")
