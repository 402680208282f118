"""EngineClient against the real simulator over loopback: round trips, failures, retries, breaker, idempotency."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date
from decimal import Decimal

import pytest

from integration.client import EngineClient, EngineNotFound, EngineRejected, EngineUnavailable
from integration.engine_api import AgentConfig, CapitalUpdate
from simulator import Faults, Simulator, Target
from tests.integration.support import new_account

MakeClient = Callable[..., EngineClient]


def deposit(amount: str, total: str) -> CapitalUpdate:
    return CapitalUpdate(operation="deposit", amount=Decimal(amount), new_total_capital=Decimal(total))


def test_every_endpoint_round_trips(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client()
    assert client.health().status == "ok"

    ack = client.create_account(new_account("acc-1"), idempotency_key="create-acc-1")
    assert (ack.account_id, ack.status, ack.capital) == ("acc-1", "active", Decimal("1000.00"))

    ack = client.update_capital("acc-1", deposit("250.10", "1250.10"), idempotency_key="dep-1")
    assert ack.capital == Decimal("1250.10")
    withdrawal = CapitalUpdate(operation="withdrawal", amount=Decimal("0.10"), new_total_capital=Decimal("1250.00"))
    assert client.update_capital("acc-1", withdrawal, idempotency_key="wd-1").capital == Decimal("1250.00")

    status = client.status("acc-1")
    assert (status.account_id, status.status, status.balance) == ("acc-1", "active", Decimal("1250.00"))
    assert status.as_of is not None and status.as_of.utcoffset() is not None

    simulator.step(3)
    trades = client.trades("acc-1")
    assert trades and all(t.account_id == "acc-1" for t in trades)
    closed = client.trades("acc-1", status="closed")
    assert closed and all(t.status == "closed" and t.profit_loss is not None for t in closed)
    first_day = client.trades("acc-1", start_date=date(2025, 1, 1), end_date=date(2025, 1, 1))
    assert first_day and all(t.executed_at.date() == date(2025, 1, 1) for t in first_day)

    performance = client.performance("acc-1", start_date=date(2025, 1, 2), end_date=date(2025, 1, 3))
    assert [p.date for p in performance] == [date(2025, 1, 2), date(2025, 1, 3)]
    assert client.status("acc-1").balance == performance[-1].closing_balance

    assert client.pause("acc-1", idempotency_key="pause-1").status == "paused"
    assert client.status("acc-1").status == "paused"
    assert client.resume("acc-1", idempotency_key="resume-1").status == "active"
    assert client.close("acc-1", idempotency_key="close-1").status == "closed"
    assert client.status("acc-1").status == "closed"

    config = client.get_agent_config("swing")
    assert config.agent_id == "swing" and config.parameters == {"risk": "low"}
    updated = client.put_agent_config(
        "swing", AgentConfig(agent_id="swing", agent_type="swing", parameters={"risk": Decimal("0.25")}),
        idempotency_key="cfg-1")
    assert updated.parameters == {"risk": Decimal("0.25")}
    assert client.get_agent_config("swing").parameters == {"risk": Decimal("0.25")}


def test_money_travels_exactly(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client()
    client.create_account(new_account("acc-exact", "0.10"), idempotency_key="c")
    client.update_capital("acc-exact", deposit("0.20", "0.30"), idempotency_key="d1")
    client.update_capital("acc-exact", deposit("12345678901234.56", "12345678901234.86"), idempotency_key="d2")
    balance = client.status("acc-exact").balance
    assert isinstance(balance, Decimal) and balance == Decimal("12345678901234.86")
    assert simulator.state()["accounts"]["acc-exact"]["capital_mismatches"] == 0


def test_5xx_is_retried_then_unavailable(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(retry_attempts=3)
    client.create_account(new_account("acc-5xx"), idempotency_key="c")
    simulator.set_faults(Faults(error=Target(routes=("status",))))
    with pytest.raises(EngineUnavailable) as raised:
        client.status("acc-5xx")
    assert raised.value.status_code == 503
    assert simulator.state()["requests"]["status"] == 3


def test_transient_5xx_and_429_recover(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(retry_attempts=3)
    client.create_account(new_account("acc-flaky"), idempotency_key="c")
    simulator.set_faults(Faults(fail_next=2))
    assert client.status("acc-flaky").balance == Decimal("1000.00")
    simulator.set_faults(Faults(fail_next=2, error_status=429))
    assert client.status("acc-flaky").balance == Decimal("1000.00")
    assert simulator.state()["requests"]["status"] == 6


def test_4xx_is_never_retried(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(retry_attempts=5)
    client.create_account(new_account("acc-4xx"), idempotency_key="c")
    too_much = CapitalUpdate(operation="withdrawal", amount=Decimal("5000.00"), new_total_capital=Decimal("0"))
    with pytest.raises(EngineRejected) as raised:
        client.update_capital("acc-4xx", too_much, idempotency_key="w")
    assert raised.value.status_code == 409
    simulator.set_faults(Faults(error=Target(routes=("status",)), error_status=400))
    with pytest.raises(EngineRejected):
        client.status("acc-4xx")
    requests = simulator.state()["requests"]
    assert (requests["capital"], requests["status"]) == (1, 1)


def test_404_is_not_found_not_unavailable(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(retry_attempts=3, breaker_failures_max=1)
    for _ in range(3):
        with pytest.raises(EngineNotFound) as raised:
            client.status("no-such-account")
        assert not isinstance(raised.value, EngineUnavailable)
    with pytest.raises(EngineNotFound):
        client.pause("no-such-account", idempotency_key="p")
    assert simulator.state()["requests"]["status"] == 3  # one request each: a 404 is an answer
    assert client.breaker_state == "closed"  # and it is not a failure of the engine


def test_wrong_api_key_is_rejected(make_client: MakeClient) -> None:
    with pytest.raises(EngineRejected) as raised:
        make_client(api_key="wrong").status("anything")
    assert raised.value.status_code == 401


def test_timeout_is_unavailable(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(timeout_ms=200, retry_attempts=2)
    client.create_account(new_account("acc-slow"), idempotency_key="c")
    simulator.set_faults(Faults(slow_s=1.5, slow=Target(routes=("status",))))
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="timed out after 200 ms"):
        client.status("acc-slow")
    assert time.monotonic() - started < 1.4
    assert simulator.state()["requests"]["status"] == 2


def test_one_silent_account_does_not_stop_the_others(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(timeout_ms=200, retry_attempts=1)
    client.create_account(new_account("acc-silent"), idempotency_key="c1")
    client.create_account(new_account("acc-fine"), idempotency_key="c2")
    simulator.set_faults(Faults(slow_s=1.0, slow=Target(accounts=("acc-silent",)),
                                error=Target(accounts=("acc-broken",))))
    with pytest.raises(EngineUnavailable, match="timed out"):
        client.status("acc-silent")
    assert client.status("acc-fine").status == "active"


def test_garbage_answer_is_unavailable_and_not_retried(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(retry_attempts=3)
    client.create_account(new_account("acc-garbage"), idempotency_key="c")
    simulator.set_faults(Faults(garbage=Target(routes=("status", "trades"))))
    with pytest.raises(EngineUnavailable, match="unreadable answer"):
        client.status("acc-garbage")
    with pytest.raises(EngineUnavailable, match="unreadable answer"):
        client.trades("acc-garbage")
    assert simulator.state()["requests"]["status"] == 1


def test_huge_answer_is_cut_off(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(response_bytes_max=64 * 1024)
    client.create_account(new_account("acc-huge"), idempotency_key="c")
    simulator.set_faults(Faults(huge=Target(routes=("performance",))))
    with pytest.raises(EngineUnavailable, match="exceeds the 65536-byte limit"):
        client.performance("acc-huge")


def test_redirect_is_not_followed(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client()
    client.create_account(new_account("acc-redirect"), idempotency_key="c")
    simulator.set_faults(Faults(redirect=Target(routes=("status",))))
    with pytest.raises(EngineUnavailable, match="307 redirect") as raised:
        client.status("acc-redirect")
    assert raised.value.status_code == 307
    assert simulator.state()["requests"]["status"] == 1


def test_breaker_opens_then_closes_after_recovery(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(retry_attempts=1, breaker_failures_max=3, breaker_reset_timeout_ms=300)
    simulator.set_faults(Faults(error=Target(routes=("health",))))
    for _ in range(3):
        with pytest.raises(EngineUnavailable):
            client.health()
    assert client.breaker_state == "open"
    with pytest.raises(EngineUnavailable, match="circuit breaker is open") as raised:
        client.health()
    assert raised.value.circuit_open
    assert simulator.state()["requests"]["health"] == 3  # the open circuit did not call

    simulator.set_faults(Faults())
    time.sleep(0.35)  # the point: the reset time (300 ms) runs out; the state reads "open" until the trial call
    assert client.health().status == "ok"  # the trial call
    assert client.breaker_state == "closed"


def test_breaker_reopens_when_the_trial_fails(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(retry_attempts=1, breaker_failures_max=2, breaker_reset_timeout_ms=200)
    simulator.set_faults(Faults(error=Target(routes=("health",))))
    for _ in range(2):
        with pytest.raises(EngineUnavailable):
            client.health()
    time.sleep(0.25)  # the point: the reset time (200 ms) runs out, so the next call is the trial
    with pytest.raises(EngineUnavailable):
        client.health()
    assert client.breaker_state == "open"


def test_retry_reuses_the_idempotency_key_so_capital_applies_once(
        simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(retry_attempts=3)
    client.create_account(new_account("acc-once"), idempotency_key="c")
    simulator.set_faults(Faults(lose_responses=1))  # applied, then the answer is lost: the client retries
    ack = client.update_capital("acc-once", deposit("100.00", "1100.00"), idempotency_key="dep-once")
    assert ack.capital == Decimal("1100.00")
    state = simulator.state()
    assert state["requests"]["capital"] == 2
    assert state["counters"]["responses_lost"] == 1
    assert state["counters"]["idempotent_replays"] == 1
    assert client.status("acc-once").balance == Decimal("1100.00")

    # A redelivery later (say, by the outbox after a crash) with the same key changes nothing either.
    again = client.update_capital("acc-once", deposit("100.00", "1100.00"), idempotency_key="dep-once")
    assert again == ack
    assert client.status("acc-once").balance == Decimal("1100.00")


def test_same_key_with_another_body_is_refused(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client()
    client.create_account(new_account("acc-key"), idempotency_key="c")
    client.update_capital("acc-key", deposit("1.00", "1001.00"), idempotency_key="dep")
    with pytest.raises(EngineRejected) as raised:
        client.update_capital("acc-key", deposit("2.00", "1003.00"), idempotency_key="dep")
    assert raised.value.status_code == 409
    assert client.status("acc-key").balance == Decimal("1001.00")


def test_commands_need_an_idempotency_key(make_client: MakeClient) -> None:
    client = make_client()
    for key in ("", "has space", "x" * 256):
        with pytest.raises(ValueError, match="idempotency_key"):
            client.pause("acc", idempotency_key=key)


def test_drift_shows_in_status(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client()
    client.create_account(new_account("acc-drift"), idempotency_key="c")
    simulator.set_faults(Faults(drift={"acc-drift": Decimal("-12.34")}))
    assert client.status("acc-drift").balance == Decimal("987.66")
    assert simulator.state()["accounts"]["acc-drift"]["capital"] == Decimal("1000.00")


def test_unreachable_engine_is_unavailable() -> None:
    with EngineClient("http://127.0.0.1:9/api/v1", "k", timeout_ms=500, retry_attempts=2,
                      retry_delay_ms=1) as client:
        with pytest.raises(EngineUnavailable) as raised:
            client.health()
        assert raised.value.status_code is None


def test_breaker_tripping_mid_retries_stops_calling(simulator: Simulator, make_client: MakeClient) -> None:
    client = make_client(retry_attempts=5, breaker_failures_max=2)
    simulator.set_faults(Faults(error=Target(routes=("health",))))
    with pytest.raises(EngineUnavailable, match="circuit breaker is open.*last failure.*503") as raised:
        client.health()
    assert raised.value.circuit_open
    assert simulator.state()["requests"]["health"] == 2
