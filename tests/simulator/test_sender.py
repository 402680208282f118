"""The webhook sender: signed over the exact bytes, duplicated, reordered, delayed, retried until final."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from integration.engine_api import WebhookEnvelope, decode
from integration.signature import Verified, verify
from simulator import Faults
from tests.integration.support import SECRET, Receiver
from tests.simulator.conftest import ServeSimulator, envelopes, open_accounts
from tests.waiting import wait_until


def test_webhooks_are_signed_over_the_exact_bytes(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url)
    open_accounts(sim, "acc-signed")
    sim.step(2)
    assert sim.flush(10)
    assert receiver.bodies() == sim.events()
    for body, headers in receiver.deliveries:
        assert verify([SECRET], body, headers) == Verified(scheme="ml")
        envelope = decode(body, WebhookEnvelope)
        assert envelope.event_id and envelope.occurred_at is not None
        assert set(json.loads(body)) == {"event_id", "occurred_at", "event_type", "data"}
        with pytest.raises(Exception, match="does not match"):
            verify(["another-secret-0123456789"], body, headers)
    types = Counter(e.event_type for e in envelopes(receiver.bodies()))
    assert types["daily.performance"] == 2 and types["trade.executed"] > 0
    counters = sim.state()["counters"]
    assert counters["webhooks_delivered"] == len(sim.events()) == counters["webhooks_sent"]


def test_standard_webhooks_signature(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url, signature_scheme="standard")
    open_accounts(sim, "acc-std")
    sim.step(1)
    assert sim.flush(10)
    for body, headers in receiver.deliveries:
        assert "x-ml-signature" not in headers
        webhook_id = decode(body, WebhookEnvelope).event_id
        assert headers["webhook-id"] == webhook_id
        assert verify([SECRET], body, headers) == Verified(scheme="standard", webhook_id=webhook_id)


def test_duplicate_fault_delivers_every_event_twice(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url,
                          faults=Faults(webhook_duplicate_rate=1.0))
    open_accounts(sim, "acc-dup")
    sim.step(1)
    assert sim.flush(10)
    received = Counter(receiver.bodies())
    assert set(received) == set(sim.events())
    assert all(count == 2 for count in received.values())
    assert sim.state()["counters"]["webhooks_duplicated"] == len(sim.events())


def test_reorder_fault_shuffles_within_the_window(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url, trades_per_day=10,
                          faults=Faults(webhook_reorder_window=6))
    open_accounts(sim, "acc-shuffle")
    sim.step(2)
    assert sim.flush(10)
    generated, received = sim.events(), receiver.bodies()
    assert Counter(received) == Counter(generated)
    assert received != generated
    for start in range(0, len(generated), 6):  # never further than the window
        assert set(received[start:start + 6]) == set(generated[start:start + 6])


def test_delivery_is_retried_until_accepted_and_4xx_is_final(
        serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 200, 422]
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url, trades_per_day=1)
    open_accounts(sim, "acc-retry")
    sim.step(1)
    assert sim.flush(10)
    bodies = receiver.bodies()
    events = sim.events()
    assert bodies[:3] == [events[0]] * 3  # the first event: two failures, then delivered
    counters = sim.state()["counters"]
    assert counters["webhooks_failed"] == 2
    assert counters["webhooks_rejected"] == 1
    assert counters["webhooks_delivered"] == len(events) - 1
    assert len(bodies) == len(events) + 2


def test_delay_fault_slows_each_delivery(serve_simulator: ServeSimulator, receiver: Receiver) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url=receiver.url, trades_per_day=0,
                          faults=Faults(webhook_delay_s=0.2))
    open_accounts(sim, "acc-late")
    started = time.monotonic()
    sim.step(2)  # no trades: one daily.performance per day
    assert sim.flush(10)
    assert time.monotonic() - started >= 2 * 0.2  # one delay before each delivery, one delivery at a time
    assert receiver.bodies() == sim.events() and len(sim.events()) == 2


def test_nothing_is_dropped_while_the_ledger_is_down(serve_simulator: ServeSimulator) -> None:
    sim = serve_simulator(seed=1, webhook_secret=SECRET, ledger_url="http://127.0.0.1:9/hook", trades_per_day=1)
    open_accounts(sim, "acc-down")
    sim.step(1)
    wait_until(lambda: sim.state()["counters"]["webhooks_failed"] >= 1, timeout_s=10, interval_s=0.01,
               what="a first delivery attempt to fail (it retries from then on)")
    assert not sim.flush(0)  # still retrying
    counters = sim.state()["counters"]
    assert counters["webhooks_failed"] >= 1 and counters["webhooks_delivered"] == 0
    assert counters["webhooks_pending"] == len(sim.events())
