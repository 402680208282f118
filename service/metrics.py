"""Prometheus metrics, one registry per process; database-derived gauges are computed at scrape time."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOKS = Counter("invledger_webhooks_total", "Webhook deliveries by event type and result",
                   ["event_type", "result"], registry=REGISTRY)
ENTRIES = Counter("invledger_entries_posted_total", "Journal entries posted by this process", registry=REGISTRY)
REQUEST_SECONDS = Histogram("invledger_http_request_duration_seconds", "HTTP request latency",
                            ["method", "route", "status"], registry=REGISTRY,
                            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
OUTBOX_DELIVERIES = Counter("invledger_outbox_deliveries_total", "Outbox delivery attempts by result",
                            ["result"], registry=REGISTRY)


class DatabaseCollector:
    """Outbox depth and age, dead letters, open alerts — read from PostgreSQL when scraped."""

    def __init__(self, engine: sa.Engine, breaker_state: Callable[[], str] | None = None) -> None:
        self.engine = engine
        self.breaker_state = breaker_state

    def collect(self):
        try:
            with self.engine.connect() as connection:
                row = connection.execute(sa.text("""
                    SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                           count(*) FILTER (WHERE status = 'dead') AS dead,
                           COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 0)
                               AS oldest_s,
                           (SELECT count(*) FROM alert WHERE status = 'open') AS open_alerts
                      FROM outbox_event WHERE status <> 'delivered'""")).one()
        except Exception:  # noqa: BLE001 — a scrape must not fail because the database is down
            return
        yield GaugeMetricFamily("invledger_outbox_depth", "Outbox events waiting for delivery", value=row.pending)
        yield GaugeMetricFamily("invledger_outbox_oldest_age_seconds", "Age of the oldest pending outbox event",
                                value=float(row.oldest_s))
        yield GaugeMetricFamily("invledger_outbox_dead_letters", "Outbox events given up on", value=row.dead)
        yield GaugeMetricFamily("invledger_alerts_open", "Open alerts", value=row.open_alerts)
        if self.breaker_state is not None:
            state = self.breaker_state()
            family = GaugeMetricFamily("invledger_engine_circuit_state", "ML Engine circuit breaker (1 = current)",
                                       labels=["state"])
            for name in ("closed", "open", "half-open"):
                family.add_metric([name], 1.0 if state == name else 0.0)
            yield family


_database: DatabaseCollector | None = None


def register_database(engine: sa.Engine, breaker_state: Callable[[], str] | None = None) -> None:
    """Read the database gauges from `engine` (the latest app's: one process may build several apps, e.g. tests
    with a database each; the gauges' names must be registered once)."""
    global _database
    if _database is not None:
        if _database.engine is engine:
            return
        REGISTRY.unregister(_database)
    _database = DatabaseCollector(engine, breaker_state)
    REGISTRY.register(_database)


def render() -> bytes:
    return generate_latest(REGISTRY)
