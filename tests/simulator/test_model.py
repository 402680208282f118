"""The simulator's model: a deterministic walk, books that add up, positions, pause and close, the event bytes."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal

from integration.client import EngineClient
from integration.engine_api import Performance, Trade, decode_event_data
from simulator import Simulator
from tests.integration.support import START
from tests.simulator.conftest import ServeSimulator, envelopes, open_accounts

CENTS = Decimal("0.01")


def test_a_seeded_run_is_deterministic(serve_simulator: ServeSimulator) -> None:
    runs = []
    for seed in (42, 42, 43):
        sim = serve_simulator(seed=seed)
        open_accounts(sim, "acc-a", "acc-b")
        sim.step(4)
        runs.append(sim.events())
    assert runs[0] == runs[1]
    assert len(runs[0]) > 8
    assert runs[0] != runs[2]


def test_an_accounts_walk_does_not_depend_on_other_accounts(serve_simulator: ServeSimulator) -> None:
    alone, crowded = serve_simulator(seed=5), serve_simulator(seed=5)
    open_accounts(alone, "acc-x")
    open_accounts(crowded, "acc-w", "acc-x", "acc-z")
    alone.step(3)
    crowded.step(3)

    def of_x(sim: Simulator) -> list[bytes]:
        return [body for body, env in zip(sim.events(), envelopes(sim.events()), strict=True)
                if json.loads(bytes(env.data))["account_id"] == "acc-x"]

    assert of_x(alone) == of_x(crowded)


def test_the_books_add_up(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=3, trades_per_day=8)
    open_accounts(sim, "acc-1", "acc-2", capital="5000.00")
    sim.step(6)
    trades: dict[str, list[Trade]] = {"acc-1": [], "acc-2": []}
    performance: dict[str, list[Performance]] = {"acc-1": [], "acc-2": []}
    for envelope in envelopes(sim.events()):
        data = decode_event_data(envelope)
        if isinstance(data, Trade):
            trades[data.account_id].append(data)
            assert envelope.occurred_at == data.executed_at
            assert START <= data.executed_at.date() < START + timedelta(days=6)
        elif isinstance(data, Performance):
            performance[data.account_id].append(data)
    for account_id in trades:
        closed = [t for t in trades[account_id] if t.status == "closed"]
        assert closed and all(t.profit_loss == t.profit_loss.quantize(CENTS) for t in closed)  # type: ignore[union-attr]
        opened = {t.trade_id for t in trades[account_id] if t.status == "open"}
        assert {t.trade_id for t in closed} <= opened
        days = performance[account_id]
        assert [p.date for p in days] == [START + timedelta(days=n) for n in range(6)]
        for p in days:
            assert p.opening_balance + p.daily_return == p.closing_balance
            day_results = [t.profit_loss for t in closed if t.executed_at.date() == p.date]
            assert sum(day_results, Decimal(0)) == p.daily_return
            assert p.trades_executed == len(day_results)
        for earlier, later in zip(days, days[1:], strict=False):
            assert earlier.closing_balance == later.opening_balance
        final = sim.state()["accounts"][account_id]["capital"]
        assert final == Decimal("5000.00") + sum((t.profit_loss for t in closed), Decimal(0))  # type: ignore[misc]
        assert final == days[-1].closing_balance


def test_positions_can_stay_open_overnight_and_filter_by_status(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=11, trades_per_day=12)
    open_accounts(sim, "acc-open")
    sim.step(2)
    with EngineClient(sim.api_url, "", timeout_ms=2000) as client:
        open_now = client.trades("acc-open", status="open")
        closed = client.trades("acc-open", status="closed")
    assert open_now and closed
    assert sim.state()["accounts"]["acc-open"]["open_positions"] == len(open_now)
    assert not {t.trade_id for t in open_now} & {t.trade_id for t in closed}


def test_pause_stops_new_trades_and_close_liquidates_flat(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=2)
    open_accounts(sim, "acc-p")
    sim.step(1)
    with EngineClient(sim.api_url, "", timeout_ms=2000) as client:
        client.pause("acc-p", idempotency_key="p")
        before = len(client.trades("acc-p"))
        sim.step(2)
        assert len(client.trades("acc-p")) == before  # carried positions close; nothing new opens
        assert client.trades("acc-p", status="open") == []
        client.resume("acc-p", idempotency_key="r")
        sim.step(1)
        open_positions = client.trades("acc-p", status="open")
        capital = client.status("acc-p").balance
        before = len(sim.events())
        client.close("acc-p", idempotency_key="c")
        assert client.trades("acc-p", status="open") == []
        assert client.status("acc-p").balance == capital
    liquidated = [decode_event_data(e) for e in envelopes(sim.events()[before:])]
    assert {t.trade_id for t in liquidated} == {t.trade_id for t in open_positions}  # type: ignore[union-attr]
    assert all(isinstance(t, Trade) and t.status == "closed" and t.profit_loss == 0 for t in liquidated)
    count = len(sim.events())
    sim.step(1)
    assert len(sim.events()) == count  # a closed account is not traded nor reported


def test_numbers_on_the_wire_are_json_numbers(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=1)
    open_accounts(sim, "acc-num")
    sim.step(1)
    performance = [json.loads(b) for b in sim.events() if b'"daily.performance"' in b][0]
    assert b'"closing_balance":' + str(performance["data"]["closing_balance"]).encode() in sim.events()[-1]
    raw = sim.events()[-1]
    assert b'"closing_balance":"' not in raw
    reparsed = json.loads(raw, parse_float=Decimal)
    assert isinstance(reparsed["data"]["closing_balance"], Decimal | int)


def test_step_advances_the_simulated_clock() -> None:
    sim = Simulator(start_date=date(2025, 5, 30))
    sim.step(3)
    assert sim.clock == date(2025, 6, 2)
