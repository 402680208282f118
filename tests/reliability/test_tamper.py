"""Tamper evidence (issue 17, part 1): real books — entries booked one by one and in batches, a reversal, signed
webhook deliveries, an anchor, and more entries after it — then changed as an insider holding the database
superuser would: with the guards off (`session_replication_role = replica`) and every derived column re-fixed so
the consistency checks pass. `verify` must name each change; clean books must verify."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from integration import anchors
from integration.signature import Verified
from integration.webhooks import WebhookProcessor
from ledger import AccountSpec, Ledger, Money, rules
from ledger.chain import public_key_bytes
from ledger.db import create_engine
from ledger.verify import Report, verify


class Books:
    def __init__(self, url: str, engine: sa.Engine, key: Ed25519PrivateKey, data_dir: Path) -> None:
        self.url, self.engine, self.ledger, self.key, self.data_dir = url, engine, Ledger(engine), key, data_dir

    def verify(self, *, outside: bool = False) -> Report:
        lines = anchors.read_anchors_file(self.data_dir / anchors.ANCHORS_FILE) if outside else None
        return verify(self.engine, public_key=public_key_bytes(self.key), outside_anchors=lines)

    def as_superuser(self, *statements: str, **params: object) -> None:
        with self.engine.begin() as c:
            if not c.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar():
                pytest.skip("needs a superuser, as the insider of this test is")
            c.execute(sa.text("SET LOCAL session_replication_role = replica"))
            for statement in statements:
                c.execute(sa.text(statement), params)

    def scalar(self, sql: str, **params: object) -> object:
        with self.engine.connect() as c:
            return c.execute(sa.text(sql), params).scalar()


def _trade(account_id: str, pnl: str, n: int) -> bytes:
    return json.dumps({"event_type": "trade.executed", "data": {
        "trade_id": f"{account_id}-t{n}", "account_id": account_id, "symbol": "EURUSD", "side": "buy",
        "quantity": 1000, "entry_price": "1.0841", "exit_price": "1.0853", "status": "closed",
        "profit_loss": pnl, "executed_at": "2026-11-02T10:00:00Z"}}).encode()


@pytest.fixture
def books(fresh_database: Callable[[], tuple[str, Callable[[], None]]], tmp_path: Path) -> Iterator[Books]:
    url, drop = fresh_database()
    engine = create_engine(url, pool_size=4)
    key = Ed25519PrivateKey.generate()
    b = Books(url, engine, key, tmp_path)
    ledger = b.ledger
    for account_id in ("tam-a", "tam-b"):
        ledger.open_account(AccountSpec(account_id=account_id, product_id="p", agent_type="swing", currency="USD",
                                        fee_rate=Decimal("0.2"), initial_capital=Money.from_decimal("1000", "USD")))
    ledger.deposit("tam-a", "250.00", idempotency_key="tam-a:d1", reference="wire 1")
    ledger.withdraw("tam-b", "100.00", idempotency_key="tam-b:w1")
    ledger.post_many([rules.gain_or_loss("trade", a, Money.from_decimal(v, "USD"), idempotency_key=f"{a}:g{i}",
                                         effective_at=None)
                      for i, (a, v) in enumerate([("tam-a", "12.50"), ("tam-b", "-3.25"), ("tam-a", "7.00")])])
    wrong = ledger.deposit("tam-b", "9.99", idempotency_key="tam-b:d-wrong")
    ledger.reverse(wrong.entry_id, reason="wrong account")
    processor = WebhookProcessor(ledger)
    for n, body in enumerate([_trade("tam-a", "4.20", 1), _trade("tam-nobody", "1.00", 2)]):
        assert processor.receive(body, Verified(scheme="ml")).result in ("applied", "review"), n
    anchors.anchor(engine, key, data_dir=tmp_path, alert_url=None, made_by="test")
    ledger.deposit("tam-a", "30.00", idempotency_key="tam-a:d-after")  # after the anchor
    processor.receive(_trade("tam-b", "2.00", 3), Verified(scheme="ml"))
    yield b
    engine.dispose()
    drop()


def _entry(books: Books, key: str) -> int:
    return int(books.scalar("SELECT id FROM journal_entry WHERE idempotency_key = :k", k=key))  # type: ignore[arg-type]


def _findings(report: Report) -> list[str]:
    return [f"{f.check}: {f.detail}" for f in report.findings]


def test_clean_books_verify(books: Books) -> None:
    report = books.verify(outside=True)
    assert report.ok, _findings(report)
    assert report.counts["anchors"] == 1 and report.notes == []


def test_a_posting_amount_with_every_derived_column_refixed(books: Books) -> None:
    """The newest deposit raised by 1.00 on both legs, running balances and cached balances moved to match:
    every consistency check passes; the chain does not."""
    entry = _entry(books, "tam-a:d-after")
    books.as_superuser(
        "UPDATE posting SET amount_minor = amount_minor + 100, balance_after_minor = balance_after_minor "
        "+ CASE side WHEN 'D' THEN 100 ELSE -100 END WHERE entry_id = :e",
        "UPDATE ledger_account a SET balance_minor = balance_minor + CASE p.side WHEN 'D' THEN 100 ELSE -100 END "
        "FROM posting p WHERE p.entry_id = :e AND p.ledger_account_id = a.id", e=entry)
    report = books.verify()
    assert set(report.checks) and {f.check for f in report.findings} == {"hash_chains_and_anchors"}, _findings(report)
    assert any(f"(entry {entry})" in detail for detail in _findings(report)), _findings(report)


@pytest.mark.parametrize(("what", "sql"), [
    ("memo", "UPDATE journal_entry SET memo = 'nothing to see' WHERE id = :e"),
    ("metadata", "UPDATE journal_entry SET metadata = metadata || '{\"approved_by\": \"cfo\"}' WHERE id = :e"),
    ("kind", "UPDATE journal_entry SET kind = 'adjustment' WHERE id = :e"),
    ("who booked it", "UPDATE journal_entry SET recorded_by = 'apikey:someone:admin' WHERE id = :e"),
])
def test_an_entry_edited_before_the_anchor(books: Books, what: str, sql: str) -> None:
    entry = _entry(books, "tam-a:d1")
    books.as_superuser(sql, e=entry)
    report = books.verify()
    details = _findings(report)
    assert not report.ok and any("hash_chains_and_anchors" in d and f"(entry {entry})" in d for d in details), details
    assert any("anchor 1" in d for d in details), details  # and the anchor says it was before it


def test_an_entry_deleted_with_its_legs(books: Books) -> None:
    entry = _entry(books, "tam-a:d-after")
    books.as_superuser(
        "UPDATE ledger_account a SET balance_minor = balance_minor - CASE p.side WHEN 'D' THEN p.amount_minor "
        "ELSE -p.amount_minor END, posting_count = posting_count - 1 "
        "FROM posting p WHERE p.entry_id = :e AND p.ledger_account_id = a.id",
        "DELETE FROM posting WHERE entry_id = :e", "DELETE FROM journal_entry WHERE id = :e",
        "UPDATE ledger_account a SET max_effective_at = (SELECT max(effective_at) FROM posting p "
        "WHERE p.ledger_account_id = a.id)", e=entry)
    report = books.verify()
    details = _findings(report)
    assert [f.check for f in report.findings] == ["hash_chains_and_anchors"] * len(report.findings), details
    assert any("assets:custody:tam-a: its chain head does not match" in d for d in details), details


def test_a_forged_balanced_entry(books: Books) -> None:
    """A deposit nobody made: an entry and two legs with the right sequence numbers and running balances, the
    cached balances moved — but no chain link the triggers would have made."""
    books.as_superuser("""
        WITH e AS (INSERT INTO journal_entry (idempotency_key, content_hash, kind, investment_account_id, effective_at,
                                              memo) VALUES ('forged', sha256('x'), 'deposit', 'tam-b', now(), 'forged')
                   RETURNING id, effective_at),
             legs AS (SELECT a.id, a.posting_count + 1 AS seq, a.currency, a.max_effective_at,
                             CASE WHEN a.name LIKE 'assets:%' THEN 'D' ELSE 'C' END AS side,
                             a.balance_minor + CASE WHEN a.name LIKE 'assets:%' THEN 50000 ELSE -50000 END AS after
                        FROM ledger_account a WHERE a.name IN ('assets:custody:tam-b', 'liabilities:investors:tam-b')),
             p AS (INSERT INTO posting (ledger_account_id, seq, entry_id, side, amount_minor, currency, effective_at,
                                        balance_after_minor, late, chain_hash)
                   SELECT legs.id, legs.seq, e.id, legs.side, 50000, legs.currency, e.effective_at, legs.after, false,
                          sha256('made up') FROM legs CROSS JOIN e)
        UPDATE ledger_account a SET balance_minor = legs.after, posting_count = legs.seq,
               max_effective_at = (SELECT effective_at FROM e) FROM legs WHERE a.id = legs.id""")
    report = books.verify()
    details = _findings(report)
    assert [f.check for f in report.findings] == ["hash_chains_and_anchors"] * len(report.findings), details
    assert any("custody:tam-b" in d for d in details) and any("investors:tam-b" in d for d in details), details


def test_a_stored_webhook_body_changed(books: Books) -> None:
    event = books.scalar("SELECT id FROM webhook_event WHERE account_id = 'tam-a' ORDER BY id LIMIT 1")
    books.as_superuser("UPDATE webhook_event SET body = convert_to(replace(convert_from(body, 'UTF8'), '4.20', "
                       "'42.0'), 'UTF8') WHERE id = :w", w=event)
    assert b"42.0" in bytes(books.scalar("SELECT body FROM webhook_event WHERE id = :w", w=event))  # type: ignore
    details = _findings(books.verify())
    assert any(f"webhook chain tam-a: delivery {event}" in d for d in details), details
    assert any("webhook chain tam-a" in d and "anchor 1" in d for d in details), details


def test_a_stored_webhook_deleted(books: Books) -> None:
    event = books.scalar("SELECT id FROM webhook_event WHERE account_id = 'tam-nobody'")
    books.as_superuser("DELETE FROM webhook_event WHERE id = :w", w=event)
    details = _findings(books.verify())
    assert any("webhook chain (unknown accounts)" in d and "gone" in d for d in details), details


def test_the_whole_chain_rewritten_from_a_point_is_caught_by_the_anchor(books: Books) -> None:
    """The strongest insider: an early deposit changed, every running balance after it moved, and every chain link
    after it recomputed with the ledger's own digest functions, heads included — the chains are consistent again.
    Only the anchor, signed with a key the database never held, still tells."""
    entry = _entry(books, "tam-a:d1")
    books.as_superuser(
        "UPDATE posting SET amount_minor = amount_minor + 100 WHERE entry_id = :e",
        "UPDATE posting q SET balance_after_minor = q.balance_after_minor "
        "+ CASE p.side WHEN 'D' THEN 100 ELSE -100 END FROM posting p "
        "WHERE p.entry_id = :e AND q.ledger_account_id = p.ledger_account_id AND q.seq >= p.seq",
        "UPDATE ledger_account a SET balance_minor = balance_minor + CASE p.side WHEN 'D' THEN 100 ELSE -100 END "
        "FROM posting p WHERE p.entry_id = :e AND p.ledger_account_id = a.id", e=entry)
    with books.engine.begin() as c:  # recompute both accounts' chains, one link per posting
        c.execute(sa.text("SET LOCAL session_replication_role = replica"))
        accounts = c.execute(sa.text("SELECT ledger_account_id FROM posting WHERE entry_id = :e"), {"e": entry})
        for (account,) in accounts.all():
            head = bytes(32)
            rows = c.execute(sa.text("""
                SELECT p.seq, ledger_posting_digest(p.ledger_account_id, p.seq, p.entry_id, p.side::text,
                       p.amount_minor, p.currency, p.effective_at, p.balance_after_minor, p.late,
                       ledger_entry_digest(e)) AS digest
                  FROM posting p JOIN journal_entry e ON e.id = p.entry_id
                 WHERE p.ledger_account_id = :a ORDER BY p.seq"""), {"a": account}).all()
            for seq, digest in rows:
                head = hashlib.sha256(head + bytes(digest)).digest()
                c.execute(sa.text("UPDATE posting SET chain_hash = :h WHERE ledger_account_id = :a AND seq = :s"),
                          {"h": head, "a": account, "s": seq})
            c.execute(sa.text("UPDATE ledger_account SET chain_head = :h WHERE id = :a"), {"h": head, "a": account})
    report = books.verify()
    details = _findings(report)
    assert [f.check for f in report.findings] == ["hash_chains_and_anchors"] * 2, details
    assert all("anchor 1" in d and "history before that anchor was changed" in d for d in details), details


def test_an_anchor_removed_or_forged(books: Books) -> None:
    books.as_superuser("UPDATE ledger_anchor SET root = sha256(root)")
    details = _findings(books.verify(outside=True))
    assert any("anchor 1" in d and "signed root" in d for d in details), details
    assert any("anchor 1 differs from the outside copy" in d for d in details), details
    books.as_superuser("DELETE FROM ledger_anchor_head", "DELETE FROM ledger_anchor")
    details = _findings(books.verify(outside=True))
    assert details == ["hash_chains_and_anchors: anchor 1 of the outside copy is missing from the database"], details


def test_an_anchor_signed_with_another_key(books: Books) -> None:
    other = Ed25519PrivateKey.generate()
    anchors.anchor(books.engine, other, data_dir=books.data_dir / str(uuid.uuid4()), alert_url=None, made_by="x")
    details = _findings(books.verify())
    assert details == ["hash_chains_and_anchors: anchor 2 ("
                       f"{details[0].split('(')[1].split(')')[0]}): its signature does not verify with the audit key"]


def test_a_guard_switched_off(books: Books) -> None:
    books.as_superuser("ALTER TABLE posting DISABLE TRIGGER posting_append_only")
    assert _findings(books.verify()) == [
        "guards_enabled: trigger posting_append_only on posting is disabled ('D')"]


def test_the_verify_command_exits_1_and_names_the_change(books: Books) -> None:
    import os
    import subprocess
    import sys

    env = {**{k: v for k, v in os.environ.items() if k != "BROKER_URL"}, "DATABASE_URL": books.url,
           "LEDGER_DATA_DIR": str(books.data_dir), "LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "invledger.cli", "verify", "--public-key", public_key_bytes(books.key).hex(),
               "--anchors", str(books.data_dir / anchors.ANCHORS_FILE)]
    clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0 and "books are sound" in clean.stdout, clean.stdout + clean.stderr
    books.as_superuser("UPDATE journal_entry SET memo = 'edited' WHERE id = :e", e=_entry(books, "tam-b:w1"))
    damaged = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert damaged.returncode == 1 and "FAIL  hash_chains_and_anchors" in damaged.stdout, damaged.stdout
