"""The dramatiq broker, chosen by BROKER_URL: RabbitMQ (amqp://), Redis (redis://), or in-process.

In-process (BROKER_URL unset) uses dramatiq's StubBroker with a Worker inside `serve`, so a newcomer
needs nothing else; messages then live in memory, which is safe because the durable truth (outbox
rows, run records) is in PostgreSQL and every job re-reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit

from ledger.principal import PRINCIPAL

log = logging.getLogger("jobs.broker")
MESSAGE_AGE_LIMIT_MS = 60 * 60 * 1000
MESSAGE_TIME_LIMIT_MS = 30 * 60 * 1000


class ActingAsJob(dramatiq.Middleware):
    """What a job books is recorded as done by `job:<actor>` (ledger.principal.acting_as)."""

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        PRINCIPAL.set(f"job:{message.actor_name}")

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *, result=None,
                              exception=None) -> None:
        PRINCIPAL.set("")

    after_skip_message = after_process_message


def _middleware() -> list:
    return [AgeLimit(max_age=MESSAGE_AGE_LIMIT_MS), TimeLimit(time_limit=MESSAGE_TIME_LIMIT_MS),
            ShutdownNotifications(), Callbacks(), Pipelines(), Retries(max_retries=3, min_backoff=1000),
            ActingAsJob()]


def make_broker(url: str | None) -> dramatiq.Broker:
    if not url:
        return StubBroker(middleware=_middleware())
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, middleware=_middleware(), confirm_delivery=True)
    if url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, middleware=_middleware())
    raise ValueError("BROKER_URL must start with amqp://, amqps://, redis:// or rediss://")


def install(url: str | None) -> dramatiq.Broker:
    """Make the broker for `url` the global one and bind every actor of jobs.actors to it."""
    broker = make_broker(url)
    dramatiq.set_broker(broker)
    from jobs import actors

    for actor in actors.ALL:
        actor.broker = broker
        broker.declare_actor(actor)
    log.info("broker installed", extra={"broker": type(broker).__name__})
    return broker


def is_in_process(broker: dramatiq.Broker) -> bool:
    return isinstance(broker, StubBroker)


def probe(broker: dramatiq.Broker) -> str:
    """'ok' when the broker answers (for /ready)."""
    if is_in_process(broker):
        return "ok"
    # RabbitMQ: a round trip on this thread's connection (dramatiq keeps one per thread). Not a passive
    # declare of some queue: one that does not exist yet closes the channel and would say "unavailable".
    rabbitmq = type(broker).__name__ == "RabbitmqBroker"  # not hasattr: its properties connect
    try:
        if rabbitmq:
            broker.connection.process_data_events(time_limit=0)  # type: ignore[attr-defined]
        elif hasattr(broker, "client"):
            broker.client.ping()  # type: ignore[attr-defined]
        return "ok"
    except Exception as error:  # noqa: BLE001
        if rabbitmq:
            del broker.connection  # type: ignore[attr-defined]  # the next probe (or send) connects again
        return f"unavailable: {type(error).__name__}"


def readiness(broker: dramatiq.Broker) -> dict[str, Callable[[], str]]:
    """The checks `serve` adds to /ready: the broker answers, the engine client's circuit, the last health check."""
    from integration import health
    from jobs import context

    return {"broker": lambda: probe(broker),
            "engine_circuit": lambda: getattr(context.engine_client(), "breaker_state", "unknown"),
            "engine_health": lambda: health.readiness(context.runtime().engine)}
