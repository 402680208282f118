"""The ML Engine simulator (contract §7): the engine's API, a seeded random walk, signed webhooks, faults.

A test and demo tool, never on the production path (tests/test_architecture.py checks nothing there imports it).
Its rooms: `model` (the engine's books and the walk), `faults` (what it does wrong), `app` (the HTTP app),
`sender` (webhook delivery), `server` (uvicorn on a thread), `engine` (the `Simulator` that holds them under
one lock) and `cli` (`python -m simulator --help`, also `invledger simulate-engine`).

What it guarantees, so tests can lean on it:
- The API of contract §7 under `/api/v1`, speaking the wire formats of `integration.engine_api`
  (Decimals as JSON numbers). Capital is Decimal at scale 2; a capital update applies its `amount`
  (never overwrites with `new_total_capital`; a mismatch is only counted).
- `Idempotency-Key` on POST/PUT: the same key and request answer the first (non-5xx) answer again
  without applying anything; the same key with another request is a 409.
- Trading is a random walk seeded by (seed, account id): the same seed and the same commands give
  the same trades, events and event ids, byte for byte. Simulated time moves only when told
  (`step(days)`, `POST /admin/step`, or `--days`); trades carry `executed_at` in simulated time and
  every day ends with `daily.performance` whose `closing_balance` is the account's capital and whose
  `daily_return` is the day's realized profit or loss (so opening + return = closing).
- Webhooks are signed over the exact bytes sent and retried with backoff on 5xx and transport errors
  until delivered (or the simulator stops); 2xx and 4xx answers are final.
- Faults (constructor, CLI flags, `POST /admin/faults`) change only what they say; `/admin/*` is never
  faulted. Money never passes through float: the walk is drawn in integer basis points.
"""

from simulator.cli import main
from simulator.engine import Simulator
from simulator.faults import Faults, Target
from simulator.server import BackgroundServer

__all__ = ["BackgroundServer", "Faults", "Simulator", "Target", "main"]
