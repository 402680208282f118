"""The simulator's command line: `python -m simulator` (or `invledger simulate-engine`), with `--help`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Final

import msgspec

from simulator.engine import Simulator
from simulator.faults import Faults
from simulator.model import STEP_DAYS_MAX, TRADES_PER_DAY_MAX

DEFAULT_LEDGER_URL: Final[str] = "http://127.0.0.1:8080/api/v1/webhooks/ml-engine"
DEFAULT_PORT: Final[int] = 8000


def _drift(value: str) -> tuple[str, Decimal]:
    account_id, sep, amount = value.rpartition("=")
    try:
        number = Decimal(amount)
    except ArithmeticError:
        number = Decimal("NaN")
    if not sep or not account_id or not number.is_finite():
        raise argparse.ArgumentTypeError(f"expected ACCOUNT=AMOUNT, e.g. acc-1=12.50, got {value!r}")
    return account_id, number


def _probability(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError("must be from 0 to 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invledger simulate-engine",
        description="Run the ML Engine simulator: the engine API of contract §7 under /api/v1, a seeded random "
                    "walk per account, signed webhooks to the ledger, and fault injection. Admin: POST "
                    "/admin/step {days}, POST /admin/faults, GET /admin/state.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (default %(default)s)")
    parser.add_argument("--ledger-url", default=DEFAULT_LEDGER_URL, help="where webhooks go (default %(default)s)")
    parser.add_argument("--no-webhooks", action="store_true", help="generate events but send nothing")
    parser.add_argument("--webhook-secret", help="HMAC key (default: first of ML_ENGINE_WEBHOOK_SECRET)")
    parser.add_argument("--signature", choices=("ml", "standard", "both"), default="ml",
                        help="X-ML-Signature, Standard Webhooks headers, or both (default %(default)s)")
    parser.add_argument("--api-key", help="require this X-API-Key (default: ML_ENGINE_API_KEY; empty = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--days", type=int, default=0,
                        help="simulate this many days as fast as possible once accounts exist")
    parser.add_argument("--trades-per-day", type=int, default=10)
    parser.add_argument("--start-date", type=date.fromisoformat,
                        help="first simulated day (default: today minus --days, so the run ends yesterday)")
    parser.add_argument("--accounts-wait-s", type=float, default=60.0,
                        help="with --days: how long to wait for the first account (default %(default)s)")
    parser.add_argument("--day-interval-s", type=float, default=0.0,
                        help="afterwards, advance one simulated day every this many seconds (0 = never)")
    parser.add_argument("--exit-when-done", action="store_true", help="with --days: exit after the run")
    faults = parser.add_argument_group("faults (also POST /admin/faults)")
    faults.add_argument("--error-rate", type=_probability, default=0.0, help="chance of a 5xx per request")
    faults.add_argument("--error-status", type=int, default=503)
    faults.add_argument("--error-route", action="append", default=[], help="always 5xx on this route ('*' = all)")
    faults.add_argument("--error-account", action="append", default=[], help="always 5xx for this account")
    faults.add_argument("--slow-s", type=float, default=0.0, help="delay for --slow-route/--slow-account")
    faults.add_argument("--slow-route", action="append", default=[])
    faults.add_argument("--slow-account", action="append", default=[],
                        help="with a --slow-s above the client timeout: stop answering for this account")
    faults.add_argument("--garbage-route", action="append", default=[], help="answer 200 with a non-JSON body")
    faults.add_argument("--huge-route", action="append", default=[], help="answer 200 with a 4 MiB body")
    faults.add_argument("--redirect-route", action="append", default=[], help="answer 307 elsewhere")
    faults.add_argument("--duplicate-rate", type=_probability, default=0.0, help="chance a webhook is sent twice")
    faults.add_argument("--reorder-window", type=int, default=0, help="shuffle webhooks within windows of N")
    faults.add_argument("--delay-s", type=float, default=0.0, help="wait before each webhook delivery")
    faults.add_argument("--drift", type=_drift, action="append", default=[], metavar="ACCOUNT=AMOUNT",
                        help="status reports balance + AMOUNT for ACCOUNT")
    return parser


def faults_from_args(args: argparse.Namespace) -> Faults:
    try:
        return msgspec.convert({
            "error_rate": args.error_rate, "error_status": args.error_status,
            "error": {"routes": args.error_route, "accounts": args.error_account},
            "slow_s": args.slow_s, "slow": {"routes": args.slow_route, "accounts": args.slow_account},
            "garbage": {"routes": args.garbage_route}, "huge": {"routes": args.huge_route},
            "redirect": {"routes": args.redirect_route}, "drift": dict(args.drift),
            "webhook_duplicate_rate": args.duplicate_rate, "webhook_reorder_window": args.reorder_window,
            "webhook_delay_s": args.delay_s}, Faults)
    except msgspec.ValidationError as error:
        raise ValueError(f"bad fault settings: {error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """`invledger simulate-engine`: serve the simulator until interrupted (or `--exit-when-done`)."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--"]:  # as passed on by an argparse.REMAINDER in the parent command
        arguments = arguments[1:]
    args = parser.parse_args(arguments)
    try:
        faults = faults_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.days < 0 or args.days > STEP_DAYS_MAX:
        parser.error(f"--days must be from 0 to {STEP_DAYS_MAX}")
    if not 0 <= args.trades_per_day <= TRADES_PER_DAY_MAX:
        parser.error(f"--trades-per-day must be from 0 to {TRADES_PER_DAY_MAX}")
    secret = args.webhook_secret
    if secret is None:
        secret = next((s.strip() for s in os.environ.get("ML_ENGINE_WEBHOOK_SECRET", "").split(",") if s.strip()),
                      None)
    ledger_url = None if args.no_webhooks else args.ledger_url
    if ledger_url and not secret:
        parser.error("webhooks need a secret: set ML_ENGINE_WEBHOOK_SECRET or --webhook-secret "
                     "(or pass --no-webhooks)")
    api_key = args.api_key if args.api_key is not None else os.environ.get("ML_ENGINE_API_KEY", "")
    today = datetime.now(UTC).date()
    start = args.start_date or (today - timedelta(days=args.days))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    sim = Simulator(seed=args.seed, webhook_secret=secret, ledger_url=ledger_url, api_key=api_key,
                    start_date=start, trades_per_day=args.trades_per_day, faults=faults,
                    signature_scheme=args.signature)
    try:
        sim.serve(args.host, args.port)
    except OSError as error:
        print(f"simulate-engine: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    print(f"ML Engine simulator serving {sim.api_url} (admin at {sim.url}/admin); "
          f"webhooks → {ledger_url or 'nowhere'}", file=sys.stderr, flush=True)
    done = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: done.set()) if in_main_thread else None
    try:
        if args.days:
            deadline = time.monotonic() + args.accounts_wait_s
            while not sim.account_ids() and time.monotonic() < deadline and not done.is_set():
                time.sleep(0.2)
            print(f"simulating {args.days} days from {start} for {len(sim.account_ids())} account(s) …",
                  file=sys.stderr, flush=True)
            for number in range(1, args.days + 1):
                day = sim.clock
                events = sim.step(1)
                print(f"  day {number}/{args.days} ({day}): {events} events", file=sys.stderr, flush=True)
            if not sim.flush(timeout_s=max(60.0, args.accounts_wait_s)):
                print("simulate-engine: some webhooks are still undelivered", file=sys.stderr)
            counters = sim.state()["counters"]
            print(f"done: {counters['webhooks_delivered']} webhooks delivered, {counters['webhooks_failed']} "
                  f"failed attempts, {counters['webhooks_rejected']} refused", file=sys.stderr, flush=True)
            if args.exit_when_done:
                return 0
        while not done.wait(args.day_interval_s or None):
            sim.step(1)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    return 0
