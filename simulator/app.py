"""The simulator's HTTP app: the engine API of contract §7 under /api/v1, and /admin (never faulted, no key).

Around each engine-API route a middleware checks the API key, applies the faults, and honours
`Idempotency-Key` (the same key and request answer the first non-5xx answer again without applying
anything; the same key with another request is a 409). The routes decode, call the model under the
simulator's lock, and encode; what the model refuses is answered with its status.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Final

import anyio
import msgspec
from litestar import Litestar, Request, Response, get, post, put
from litestar.middleware.base import DefineMiddleware
from litestar.params import FromPath
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from integration import engine_api
from integration.engine_api import (
    AgentConfig,
    CapitalUpdate,
    CreateAccountRequest,
    PerformancePage,
    TradesPage,
    WithdrawalRequest,
)
from simulator.faults import COMMAND_ROUTES, Faults, Seconds
from simulator.model import STEP_DAYS_MAX, Refused

if TYPE_CHECKING:
    from simulator.engine import Simulator

API_PREFIX: Final[str] = "/api/v1"
REQUEST_BYTES_MAX: Final[int] = 1024 * 1024
IDEMPOTENCY_KEYS_MAX: Final[int] = 100_000
IDEMPOTENCY_WAIT_S: Final[float] = 30.0
HUGE_BODY_BYTES: Final[int] = 4 * 1024 * 1024
HUGE_CHUNK_BYTES: Final[int] = 64 * 1024
GARBAGE_BODY: Final[bytes] = b'<html><body>{"account_id": "oops", "balance": </body>'
SLEEP_SLICE_S: Final[float] = 0.05


@dataclass
class Stored:
    """An answer kept for its `Idempotency-Key`."""

    fingerprint: str
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _StepRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    days: Annotated[int, msgspec.Meta(ge=1, le=STEP_DAYS_MAX)] = 1
    wait: bool = False
    wait_timeout_s: Seconds = 30.0


class _BalanceRequest(msgspec.Struct, frozen=True, kw_only=True):
    new_balance: Decimal
    reason: str = "engine adjustment"


class _ErrorRequest(msgspec.Struct, frozen=True, kw_only=True):
    error_type: str = "critical"
    error_message: str = "simulated engine error"


class _FlushRequest(msgspec.Struct, frozen=True, kw_only=True):
    timeout_s: Seconds = 30.0


class _Invalid(Exception):
    """A request the engine cannot read: answered 422."""


def _json(value: object, status_code: int = 200) -> Response[bytes]:
    return Response(content=engine_api.encode(value), status_code=status_code, media_type="application/json")


def _error(status_code: int, code: str, detail: str) -> Response[bytes]:
    return _json({"error": code, "detail": detail}, status_code)


def build_app(sim: Simulator) -> Litestar:
    """The ASGI app of `sim`: its routes read and change `sim.model` under `sim.lock`."""
    model = sim.model

    def engine(route: str) -> dict[str, str]:
        return {"engine_route": route}

    async def read(request: Request, kind: type[Any]) -> Any:
        raw = await request.body()
        try:
            return engine_api.decode(raw or b"{}", kind)
        except msgspec.DecodeError as error:
            raise _Invalid(str(error)) from None

    def answer(command: Callable[..., Any], *args: Any, status_code: int = 200) -> Response[bytes]:
        """Run a command of the model under the lock and answer what it returns (`Refused`: its handler)."""
        with sim.lock:
            result = command(*args)
        return _json(result, status_code)

    @post(f"{API_PREFIX}/trading/accounts", opt=engine("create"))
    async def create_account(request: Request) -> Response[bytes]:
        return answer(model.create_account, await read(request, CreateAccountRequest), status_code=201)

    @post(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/capital", opt=engine("capital"))
    async def update_capital(account_id: FromPath[str], request: Request) -> Response[bytes]:
        return answer(model.update_capital, account_id, await read(request, CapitalUpdate))

    @post(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/withdrawal-requests", opt=engine("withdrawal_request"))
    async def withdrawal_request(account_id: FromPath[str], request: Request) -> Response[bytes]:
        body = await read(request, WithdrawalRequest)
        with sim.lock:
            ack, bodies = model.request_withdrawal(account_id, body)
        sim.publish(bodies)
        return _json(ack, 201)

    @post(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/withdrawal-requests/{{hold_id:int}}/cancel",
          opt=engine("withdrawal_cancel"))
    async def withdrawal_cancel(account_id: FromPath[str], hold_id: FromPath[int]) -> Response[bytes]:
        return answer(model.cancel_withdrawal, account_id, hold_id)

    def transition(account_id: str, target: str) -> Response[bytes]:
        with sim.lock:
            ack, bodies = model.transition(account_id, target)
        sim.publish(bodies)
        return _json(ack)

    @post(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/pause", opt=engine("pause"))
    async def pause(account_id: FromPath[str]) -> Response[bytes]:
        return transition(account_id, "paused")

    @post(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/resume", opt=engine("resume"))
    async def resume(account_id: FromPath[str]) -> Response[bytes]:
        return transition(account_id, "active")

    @post(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/close", opt=engine("close"))
    async def close(account_id: FromPath[str]) -> Response[bytes]:
        return transition(account_id, "closed")

    @get(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/status", opt=engine("status"))
    async def status(account_id: FromPath[str]) -> Response[bytes]:
        return answer(model.status, account_id, sim.faults.drift.get(account_id, Decimal(0)))

    def date_range(request: Request) -> tuple[date | None, date | None]:
        try:
            start, end = (request.query_params.get(name) for name in ("start_date", "end_date"))
            return (date.fromisoformat(start) if start else None, date.fromisoformat(end) if end else None)
        except ValueError:
            raise _Invalid("start_date and end_date must be dates like 2025-01-31") from None

    @get(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/trades", opt=engine("trades"))
    async def trades(account_id: FromPath[str], request: Request) -> Response[bytes]:
        start, end = date_range(request)
        wanted = request.query_params.get("status")
        if wanted not in (None, "open", "closed"):
            return _error(422, "invalid", "status must be open or closed")
        return answer(lambda: TradesPage(trades=model.trades(account_id, start, end, wanted)))

    @get(f"{API_PREFIX}/trading/accounts/{{account_id:str}}/performance", opt=engine("performance"))
    async def performance(account_id: FromPath[str], request: Request) -> Response[bytes]:
        start, end = date_range(request)
        return answer(lambda: PerformancePage(performance=model.performance(account_id, start, end)))

    @get(f"{API_PREFIX}/agents/{{agent_id:str}}/config", opt=engine("agent_config"))
    async def get_agent_config(agent_id: FromPath[str]) -> Response[bytes]:
        return answer(model.agent_config, agent_id)

    @put(f"{API_PREFIX}/agents/{{agent_id:str}}/config", opt=engine("agent_config"))
    async def put_agent_config(agent_id: FromPath[str], request: Request) -> Response[bytes]:
        return answer(model.put_agent_config, agent_id, await read(request, AgentConfig))

    @get(f"{API_PREFIX}/health", opt=engine("health"))
    async def health() -> Response[bytes]:
        return _json({"status": "ok"})

    # ---- admin: never faulted, no key --------------------------------------------------------------
    @post("/admin/step")
    async def admin_step(request: Request) -> Response[bytes]:
        body: _StepRequest = await read(request, _StepRequest)
        events = await anyio.to_thread.run_sync(sim.step, body.days)
        delivered = (await anyio.to_thread.run_sync(sim.flush, body.wait_timeout_s)) if body.wait else None
        return _json({"days": body.days, "events": events, "clock": sim.clock, "delivered": delivered})

    @post("/admin/flush")
    async def admin_flush(request: Request) -> Response[bytes]:
        body: _FlushRequest = await read(request, _FlushRequest)
        delivered = await anyio.to_thread.run_sync(sim.flush, body.timeout_s)
        return _json({"delivered": delivered})

    @get("/admin/faults")
    async def admin_get_faults() -> Response[bytes]:
        return _json(sim.faults)

    @post("/admin/faults")
    async def admin_set_faults(request: Request) -> Response[bytes]:
        faults: Faults = await read(request, Faults)
        sim.set_faults(faults)
        return _json(faults)

    @get("/admin/state")
    async def admin_state() -> Response[bytes]:
        return _json(sim.state())

    @post("/admin/accounts/{account_id:str}/balance")
    async def admin_balance(account_id: FromPath[str], request: Request) -> Response[bytes]:
        body: _BalanceRequest = await read(request, _BalanceRequest)
        try:
            sim.balance_updated(account_id, body.new_balance, body.reason)
        except ValueError as error:
            return _error(422, "invalid", str(error))
        return _json({"account_id": account_id, "capital": body.new_balance})

    @post("/admin/accounts/{account_id:str}/error")
    async def admin_error(account_id: FromPath[str], request: Request) -> Response[bytes]:
        body: _ErrorRequest = await read(request, _ErrorRequest)
        sim.account_error(account_id, body.error_type, body.error_message)
        return _json({"account_id": account_id, "error_type": body.error_type})

    def invalid(_: Request, error: Exception) -> Response[bytes]:
        return _error(422, "invalid", str(error))

    def refused(_: Request, error: Exception) -> Response[bytes]:
        assert isinstance(error, Refused)
        return _error(error.status, error.code, error.detail)

    return Litestar(
        route_handlers=[create_account, update_capital, withdrawal_request, withdrawal_cancel, pause, resume, close,
                        status, trades, performance,
                        get_agent_config, put_agent_config, health, admin_step, admin_flush,
                        admin_get_faults, admin_set_faults, admin_state, admin_balance, admin_error],
        middleware=[DefineMiddleware(_EngineMiddleware, simulator=sim)],
        exception_handlers={_Invalid: invalid, Refused: refused},
        openapi_config=None, logging_config=None, debug=False)


class _EngineMiddleware:
    """Around each engine-API route: API key, faults, and `Idempotency-Key` replay (in that order)."""

    def __init__(self, app: ASGIApp, simulator: Simulator) -> None:
        self.app = app
        self.sim = simulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler") if scope["type"] == "http" else None
        route = handler.opt.get("engine_route") if handler is not None else None
        if route is None:
            await self.app(scope, receive, send)
            return
        sim = self.sim
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        account_id = scope.get("path_params", {}).get("account_id")
        if route != "health" and not self._api_key_ok(headers.get("x-api-key")):
            await _send(send, 401, engine_api.encode({"error": "unauthorized", "detail": "bad X-API-Key"}))
            return
        kind, wait_s = sim.fault_for(route, account_id)
        if wait_s:
            await self._sleep(wait_s)
        if kind == "error":
            status = sim.faults.error_status
            await _send(send, status, engine_api.encode({"error": "injected", "detail": f"simulated {status}"}))
            return
        if kind == "redirect":
            await _send(send, 307, b"", [(b"location", f"{API_PREFIX}/redirected{scope['path']}".encode())])
            return
        if kind == "garbage":
            await _send(send, 200, GARBAGE_BODY)
            return
        if kind == "huge":
            await _send_huge(send)
            return

        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > REQUEST_BYTES_MAX:
                await _send(send, 413, engine_api.encode({"error": "too_large", "detail": "request body"}))
                return
        key = headers.get("idempotency-key") if scope["method"] in ("POST", "PUT") else None
        fingerprint = hashlib.sha256(f"{scope['method']} {scope['path']}\n".encode() + body).hexdigest()
        if key is not None:
            stored = await self._stored(key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    sim.count("idempotency_conflicts")
                    await _send(send, 409, engine_api.encode({
                        "error": "idempotency_conflict",
                        "detail": "this Idempotency-Key was used with another request"}))
                    return
                sim.count("idempotent_replays")
                await self._answer(send, route, stored.status, stored.headers, stored.body)
                return
            self.sim.inflight[key] = asyncio.Event()
        try:
            status, response_headers, response_body = await self._call(scope, body, receive)
            if key is not None and status < 500:
                with sim.lock:
                    sim.idempotency[key] = Stored(fingerprint, status, response_headers, response_body)
                    while len(sim.idempotency) > IDEMPOTENCY_KEYS_MAX:
                        sim.idempotency.popitem(last=False)
        finally:
            if key is not None:
                self.sim.inflight.pop(key).set()
        await self._answer(send, route, status, response_headers, response_body)

    def _api_key_ok(self, given: str | None) -> bool:
        expected = self.sim.api_key
        return expected is None or (given is not None and hmac.compare_digest(given, expected))

    async def _sleep(self, seconds: float) -> None:
        """Sleep on the event loop, cut short when the simulator stops (so shutdown is quick)."""
        deadline = time.monotonic() + seconds
        while not self.sim.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(SLEEP_SLICE_S, remaining))

    async def _stored(self, key: str) -> Stored | None:
        # A request with the same key still being handled: wait for its answer rather than apply twice.
        inflight = self.sim.inflight.get(key)
        if inflight is not None:
            try:
                await asyncio.wait_for(inflight.wait(), IDEMPOTENCY_WAIT_S)
            except TimeoutError:
                pass
        with self.sim.lock:
            return self.sim.idempotency.get(key)

    async def _call(self, scope: Scope, body: bytes, receive: Receive) -> tuple[int, list[Any], bytes]:
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        captured: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = [(k, v) for k, v in message.get("headers", [])
                                       if k.lower() != b"content-length"]
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")

        await self.app(scope, replay, capture)
        return captured["status"], captured["headers"], bytes(captured["body"])

    async def _answer(self, send: Send, route: str, status: int, headers: list[Any], body: bytes) -> None:
        if route in COMMAND_ROUTES and 200 <= status < 300 and self.sim.take_lost_response():
            status = self.sim.faults.error_status
            await _send(send, status, engine_api.encode({"error": "injected",
                                                         "detail": "applied, but the answer was lost"}))
            return
        await _send(send, status, body, headers)


async def _send(send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    names = {k.lower() for k, _ in headers}
    all_headers = list(headers)
    if b"content-type" not in names:
        all_headers.append((b"content-type", b"application/json"))
    all_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_huge(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"pad": "', "more_body": True})
    chunk = b"x" * HUGE_CHUNK_BYTES
    for _ in range(HUGE_BODY_BYTES // HUGE_CHUNK_BYTES):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b'"}', "more_body": False})
