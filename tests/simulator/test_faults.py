"""Fault injection without HTTP: which requests a target hits, and the countdowns of `fail_next`, `lose_responses`."""

from __future__ import annotations

from simulator.faults import FaultInjector, Faults, Target


def test_a_target_hits_its_routes_and_accounts() -> None:
    assert Target(routes=("status",)).hits("status", None)
    assert not Target(routes=("status",)).hits("trades", "acc-1")
    assert Target(accounts=("acc-1",)).hits("trades", "acc-1")
    assert not Target(accounts=("acc-1",)).hits("health", None)
    assert Target(routes=("*",)).hits("health", None) and Target(accounts=("*",)).hits("close", "acc-2")
    assert not Target().hits("status", "acc-1")


def test_no_faults_means_nothing_goes_wrong() -> None:
    injector = FaultInjector(seed=1)
    assert [injector.choose(route, "acc-1") for route in ("create", "status", "health")] == [(None, 0.0)] * 3
    assert not injector.take_lost_response()


def test_the_countdowns_run_out_and_restart_when_set_again() -> None:
    injector = FaultInjector(seed=1)
    faults = Faults(fail_next=2, lose_responses=1, slow_s=0.5, slow=Target(routes=("status",)))
    injector.set(faults)
    assert [injector.choose("status", None) for _ in range(3)] == [("error", 0.5), ("error", 0.5), (None, 0.5)]
    assert [injector.take_lost_response() for _ in range(2)] == [True, False]
    injector.set(faults)
    assert injector.choose("trades", None) == ("error", 0.0) and injector.take_lost_response()


def test_error_comes_before_redirect_garbage_and_huge() -> None:
    injector = FaultInjector(seed=1)
    every = Target(routes=("*",))
    injector.set(Faults(error=every, redirect=every, garbage=every, huge=every))
    assert injector.choose("status", None) == ("error", 0.0)
    injector.set(Faults(redirect=every, garbage=every, huge=every))
    assert injector.choose("status", None) == ("redirect", 0.0)
    injector.set(Faults(garbage=every, huge=every))
    assert injector.choose("status", None) == ("garbage", 0.0)
    injector.set(Faults(huge=every))
    assert injector.choose("status", None) == ("huge", 0.0)


def test_the_error_rate_is_seeded() -> None:
    def draws(seed: int) -> list[str | None]:
        injector = FaultInjector(seed=seed)
        injector.set(Faults(error_rate=0.5))
        return [injector.choose("status", None)[0] for _ in range(40)]

    assert draws(3) == draws(3)
    assert {"error", None} == set(draws(3))
