"""The mixed load several `serve` processes take in the multi-instance tests (tests/reliability/test_instances.py,
test_pooler.py): signed closed-trade webhooks, deposits and withdrawals, some of them sent again (a redelivery or
a replayed Idempotency-Key, which must change nothing), each to one of the URLs at random — and what every
acknowledged (2xx) request must have changed: the ledger balance, and the engine's capital for capital moves."""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx

from integration.signature import sign

ACKNOWLEDGED = (200, 201)
# The multi-instance tests' load (test_instances, test_pooler): accounts, concurrent senders, each account's capital.
ACCOUNTS = 6
SENDERS = 12
INITIAL = Decimal("5000.00")


class MixedLoad:
    def __init__(self, urls: Sequence[str], account_ids: Sequence[str], initial: Decimal, *, headers: dict[str, str],
                 secret: str, requests_per_sender: int, trade_share: float, trade_prefix: str) -> None:
        self.urls, self.account_ids, self.headers, self.secret = list(urls), list(account_ids), headers, secret
        self.requests_per_sender, self.trade_share, self.trade_prefix = requests_per_sender, trade_share, trade_prefix
        self.expected = dict.fromkeys(account_ids, initial)  # the ledger balance the 2xx answers promise
        self.capital = dict.fromkeys(account_ids, initial)   # what the engine must end with
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()

    def sender(self, n: int) -> None:
        """One client's requests (seeded by `n`), answers tallied as they come."""
        rng = random.Random(n)
        sent: list[tuple[str, bytes | dict, dict[str, str]]] = []
        with httpx.Client(timeout=30) as http:
            for i in range(self.requests_per_sender):
                account_id = rng.choice(self.account_ids)
                roll = rng.random()
                if sent and roll < 0.15:  # a redelivery or a replayed idempotency key: changes nothing
                    kind, payload, extra = rng.choice(sent)
                    effect = Decimal(0)
                elif roll < self.trade_share:
                    effect = Decimal(rng.randint(-500, 900)) / 100 or Decimal("0.01")
                    data = {"trade_id": f"{self.trade_prefix}-{n}-{i}-{uuid.uuid4().hex[:6]}",
                            "account_id": account_id, "symbol": "EURUSD", "side": "buy", "quantity": 1000,
                            "entry_price": "1.0841", "exit_price": "1.0853", "status": "closed",
                            "profit_loss": str(effect),
                            "executed_at": (datetime.now(UTC) - timedelta(seconds=rng.randint(1, 3600)))
                            .isoformat().replace("+00:00", "Z")}
                    body = json.dumps({"event_type": "trade.executed", "data": data}).encode()
                    kind, payload, extra = "webhook", body, {"X-ML-Signature": sign(self.secret, body),
                                                             "content-type": "application/json"}
                else:
                    amount = Decimal(rng.randint(1, 2000)) / 100
                    operation = "deposits" if roll < 0.85 else "withdrawals"
                    kind = f"/api/v1/accounts/{account_id}/{operation}"
                    payload = {"amount": str(amount), "reference": f"r-{n}-{i}"}
                    extra = {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
                    effect = amount if operation == "deposits" else -amount
                base = rng.choice(self.urls)
                if kind == "webhook":
                    answer = http.post(base + "/api/v1/webhooks/ml-engine", content=payload, headers=extra)
                else:
                    answer = http.post(base + kind, json=payload, headers=extra)
                with self._lock:
                    self.statuses[answer.status_code] += 1
                    if answer.status_code in ACKNOWLEDGED and effect:
                        target = kind.split("/")[4] if kind != "webhook" else account_id
                        self.expected[target] += effect
                        if kind != "webhook":
                            self.capital[target] += effect
                if answer.status_code in ACKNOWLEDGED:
                    sent.append((kind, payload, extra))

    def check_books(self, headers: dict[str, str], engine_accounts: dict[str, dict]) -> None:
        """Every acknowledged request is in the books: each account's ledger balance (asked of one of the URLs) is
        what the 2xx answers promised, and the engine's capital what the acknowledged deposits and withdrawals
        made it (`engine_accounts`: the simulator's state)."""
        for account_id in self.account_ids:
            balance = httpx.get(f"{random.choice(self.urls)}/api/v1/accounts/{account_id}/balance", headers=headers,
                                timeout=10).json()["balance"]
            assert Decimal(balance) == self.expected[account_id], account_id
            assert Decimal(str(engine_accounts[account_id]["capital"])) == self.capital[account_id], account_id

    @property
    def acknowledged(self) -> int:
        return sum(self.statuses[status] for status in ACKNOWLEDGED)


def open_accounts(urls: Sequence[str], headers: dict[str, str], prefix: str, count: int,
                  initial: Decimal) -> list[str]:
    """`count` USD investment accounts opened through the API (each at one of the URLs), `initial` capital each."""
    account_ids = [f"{prefix}-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for account_id in account_ids:
        answer = httpx.post(random.choice(urls) + "/api/v1/accounts", headers=headers, timeout=30, json={
            "account_id": account_id, "product_id": "p", "agent_type": "swing", "currency": "USD",
            "initial_capital": str(initial)})
        assert answer.status_code == 201, answer.text
    return account_ids
