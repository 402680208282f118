"""`serve --demo`: an in-process ML Engine simulator, three demo accounts and a week of trading.

Each run opens three new accounts (`demo-<run>-<n>`), value-dates their capital a week back, lets the
outbox tell the simulator about them, and has the simulator trade the past week and send its signed
webhooks to this server; then it has the simulator misreport one account and runs a reconciliation. A
newcomer then sees entries, statements, reports and a reconciliation with a break and its alert within a
minute.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import sqlalchemy as sa

from ledger import acting_as
from service.config import Settings

log = logging.getLogger("invledger.demo")
DEMO_DAYS = 7
DEMO_ACCOUNTS = (("swing", "25000.00"), ("day", "10000.00"), ("scalping", "5000.00"))
DEMO_DRIFT = Decimal("12.34")  # what the simulator adds to the last demo account's balance once the week is traded


def prepare(settings: Settings) -> tuple[Settings, object]:
    """Start the simulator; return settings pointing the ledger at it (and a webhook secret both share)."""
    from simulator import Simulator

    secret = settings.ml_engine_webhook_secrets[0] if settings.ml_engine_webhook_secrets else secrets.token_hex(16)
    today = datetime.now(UTC).date()
    ledger_url = f"http://{settings.host}:{settings.port}/api/v1/webhooks/ml-engine"
    sim = Simulator(seed=int(time.time()) % 10_000, webhook_secret=secret, ledger_url=ledger_url,
                    start_date=today - timedelta(days=DEMO_DAYS), trades_per_day=8).serve()
    settings = msgspec.structs.replace(settings, ml_engine_url=sim.api_url,
                                       ml_engine_webhook_secrets=(secret, *settings.ml_engine_webhook_secrets[1:]))
    log.info("demo engine simulator started", extra={"engine_url": sim.api_url})
    return settings, sim


def feed(ledger, engine: sa.Engine, sim, client, key: str, reconcile_now: Callable[[], Any]) -> None:
    """Open the demo accounts, deliver their notifications, trade a week, then make the engine misreport one
    account (a drift of DEMO_DRIFT) and reconcile: the newcomer sees matched accounts, a break and its alert."""
    from integration import outbox
    from integration.notify import sender
    from ledger import AccountSpec
    from simulator import Faults

    run = secrets.token_hex(2)
    value_date = datetime.now(UTC) - timedelta(days=DEMO_DAYS + 1)
    ids = []
    for n, (agent, capital) in enumerate(DEMO_ACCOUNTS, start=1):
        account_id = f"demo-{run}-{n}"
        ledger.open_account(AccountSpec(account_id=account_id, product_id="demo", agent_type=agent, currency="USD",
                                        fee_rate=Decimal("0.20")))
        ledger.deposit(account_id, capital, idempotency_key=f"{account_id}:capital", effective_at=value_date,
                       reference="demo capital")
        ids.append(account_id)
    outbox.deliver_pending(engine, sender(client), account_ids=ids)
    generated = sim.step(days=DEMO_DAYS)
    sim.flush(timeout_s=60)
    log.info("demo week traded", extra={"accounts": ids, "webhooks": generated})
    sim.set_faults(Faults(drift={ids[-1]: DEMO_DRIFT}))
    run = reconcile_now()
    log.info("demo reconciliation started", extra={"run_id": run.id, "drifting_account": ids[-1],
                                                   "drift": str(DEMO_DRIFT)})
    print(f"\ndemo ready: accounts {', '.join(ids)}; reconciliation run {run.id} started (the engine misreports "
          f"{ids[-1]} by {DEMO_DRIFT} on purpose: a break and its alert). Admin API key for this demo:\n{key}\n",
          flush=True)


def start_feeder(ledger, engine: sa.Engine, sim, client, key: str,
                 reconcile_now: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        time.sleep(1.0)  # let the server start listening for the simulator's webhooks
        try:
            with acting_as("demo"):
                feed(ledger, engine, sim, client, key, reconcile_now)
        except Exception:  # noqa: BLE001 — the demo must never take the server down
            log.exception("demo feeder failed")

    thread = threading.Thread(target=run, name="demo-feeder", daemon=True)
    thread.start()
    return thread
