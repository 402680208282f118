"""Withdrawals with holds (two-phase): place a hold, then post it (book the withdrawal) or void it.

Modelled on TigerBeetle's pending transfers (pending → post or void, with a timeout), Blnk's inflight
transactions and Modern Treasury's pending entries. Guarantees:
- A hold reserves its amount at once: the **available** balance (ledger balance − open holds) drops, and every
  withdrawal, fee or reversal that must not overdraw sees it (`ledger_post_entry` subtracts the open holds from the
  balance it checks, under the investor ledger account's row lock: migration 0017). The ledger balance does not
  move until the hold is posted.
- Holds never overdraw: the database refuses a placement larger than the available balance, under the investor
  ledger account's row lock that postings take too (migration 0017, `hold_event_apply`).
- A hold is resolved once: posted (exactly one withdrawal entry, under the key `hold:<id>:post`), voided
  (cancelled) or expired (`expire_due`, after `expires_at`). Posting or voiding again is a replay that changes
  nothing; posting a voided hold, or voiding a posted one, is `HoldStateConflict`.
- Posting books the withdrawal with the contract's rule only — the ledger balance must not go below zero. The
  hold's own funds were reserved when it was placed, so other holds do not stand in its way (as a pending
  transfer posts in TigerBeetle); the engine's losses may still have taken the balance below the hold, and then
  the post is refused (409) and the hold stays open until voided or expired.
- Holds are facts: `hold_event` rows are append-only, each records its principal (who placed, posted or voided
  it) and is a link of its account's hash chain; `checks` recompute the totals, the chains and each posted hold's
  entry for `invledger verify`.
The engine hears of each hold through the outbox: `account.withdrawal_requested` when placed (free this much
capital), `account.withdrawal_cancelled` when voided or expired, and the usual `account.capital_changed` when
posted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from ledger import chart, rules
from ledger.accounts import ACCOUNT_FROM
from ledger.book import Ledger, Tx
from ledger.chain import CHAIN_START
from ledger.db import sqlstate
from ledger.errors import DuplicateConflict, HoldStateConflict, InsufficientFunds, InvalidAmount, UnknownHold
from ledger.model import EntryDraft, Posted
from ledger.money import Money, parse_amount
from ledger.principal import PRINCIPAL

HoldStatus = Literal["open", "posted", "voided", "expired"]
HOLD_STATUSES: tuple[str, ...] = HoldStatus.__args__
HOLD_EXPIRY_SECONDS_DEFAULT = 86_400
HOLD_EXPIRY_SECONDS_MAX = 90 * 86_400
EXPIRE_BATCH_MAX = 500
PAGE_LIMIT_MAX = 1000
_REFUSED = "IL001"  # hold_event_apply: the hold exceeds the available balance
_json = msgspec.json.Encoder(order="deterministic")


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    """A hold as it stands: placed, and maybe resolved (posted with its entry, voided or expired)."""

    hold_id: int
    account_id: str
    amount: Money
    status: HoldStatus
    reference: str
    idempotency_key: str
    placed_at: datetime
    expires_at: datetime
    placed_by: str
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    entry_id: int | None = None
    reason: str = ""
    replayed: bool = False


class Balances(msgspec.Struct, frozen=True, kw_only=True):
    """An investor's ledger balance, what open holds reserve, and what is available (balance − held)."""

    balance: Money
    held: Money
    available: Money
    open_holds: int


# ------------------------------------------------------------------------------------------------- SQL

_HOLD_COLUMNS = """p.id AS hold_id, p.investment_account_id, p.amount_minor, p.currency, p.reference,
       p.idempotency_key, p.content_hash, p.recorded_at AS placed_at, p.expires_at, p.recorded_by AS placed_by,
       r.kind AS resolution, r.recorded_at AS resolved_at, r.recorded_by AS resolved_by, r.entry_id, r.reason"""
_HOLD_FROM = """hold_event p LEFT JOIN hold_event r ON r.hold_id = p.id AND r.kind <> 'placed'"""
_HOLD_BY_ID = sa.text(f"SELECT {_HOLD_COLUMNS} FROM {_HOLD_FROM} WHERE p.id = :id AND p.kind = 'placed'")  # noqa: S608 — module constants
_HOLD_BY_KEY = sa.text(f"SELECT {_HOLD_COLUMNS} FROM {_HOLD_FROM} WHERE p.idempotency_key = :key")  # noqa: S608 — module constants
_BALANCES = sa.text(f"""
SELECT a.account_id, a.currency, -l.balance_minor AS balance_minor, COALESCE(s.held_minor, 0) AS held_minor,
       COALESCE(s.open_count, 0) AS open_count
  FROM {ACCOUNT_FROM} LEFT JOIN hold_state s ON s.ledger_account_id = l.id
 WHERE a.account_id = ANY(:ids)""")  # noqa: S608 — module constants


def _content_hash(account_id: str, amount: Money, reference: str) -> bytes:
    """What "the same request" means for a replayed placement (the expiry is not part: a retry comes later)."""
    return hashlib.sha256(_json.encode({"account": account_id, "currency": amount.currency, "minor": amount.minor,
                                        "reference": reference})).digest()


def _hold(row: Any, *, replayed: bool = False) -> Hold:
    return Hold(hold_id=row.hold_id, account_id=row.investment_account_id,
                amount=Money(minor=row.amount_minor, currency=row.currency),
                status="open" if row.resolution is None else row.resolution, reference=row.reference,
                idempotency_key=row.idempotency_key, placed_at=row.placed_at, expires_at=row.expires_at,
                placed_by=row.placed_by, resolved_at=row.resolved_at, resolved_by=row.resolved_by,
                entry_id=row.entry_id, reason=row.reason or "", replayed=replayed)


def _post_key(hold_id: int) -> str:
    return f"hold:{hold_id}:post"


# ------------------------------------------------------------------------------------- commands (in a Tx)

def place(tx: Tx, account_id: str, amount: object, *, idempotency_key: str, reference: str = "",
          expires_in: timedelta = timedelta(seconds=HOLD_EXPIRY_SECONDS_DEFAULT)) -> Hold:
    """Reserve `amount` of A's available balance until the hold is posted, voided or expires (`expires_in`).

    Same key and same request: the hold already placed (`replayed`); same key, other request: DuplicateConflict.
    Refused with InsufficientFunds when the available balance is smaller than `amount`."""
    if not timedelta(seconds=1) <= expires_in <= timedelta(seconds=HOLD_EXPIRY_SECONDS_MAX):
        raise InvalidAmount(f"a hold expires after 1 to {HOLD_EXPIRY_SECONDS_MAX} seconds")
    if not 1 <= len(idempotency_key) <= 255:
        raise InvalidAmount("the idempotency key must be 1 to 255 characters")
    if len(reference) > 1000:
        raise InvalidAmount("the reference must be at most 1000 characters")
    account = tx.lock_account(account_id)
    money = parse_amount(amount, account.currency)
    content_hash = _content_hash(account_id, money, reference)
    existing = tx.connection.execute(_HOLD_BY_KEY, {"key": idempotency_key}).first()
    if existing is not None:
        if bytes(existing.content_hash) != content_hash:
            raise DuplicateConflict(
                f"idempotency key {idempotency_key!r} was used for hold {existing.hold_id} with other content")
        return _hold(existing, replayed=True)
    investors = tx.resolve([chart.investors(account_id)])[chart.investors(account_id)]
    try:
        with tx.connection.begin_nested():
            hold_id = tx.connection.execute(sa.text("""
                INSERT INTO hold_event (hold_id, kind, investment_account_id, ledger_account_id, amount_minor,
                                        currency, idempotency_key, content_hash, reference, expires_at,
                                        recorded_by, chain_seq, chain_hash)
                VALUES (0, 'placed', :a, :l, :m, :c, :key, :hash, :ref, clock_timestamp() + :ttl, :by, 0, :zero)
                RETURNING id"""), {
                "a": account_id, "l": investors.id, "m": money.minor, "c": money.currency, "key": idempotency_key,
                "hash": content_hash, "ref": reference, "ttl": expires_in, "by": PRINCIPAL.get(),
                "zero": CHAIN_START}).scalar_one()
    except DBAPIError as error:
        if sqlstate(error) == _REFUSED:
            available = balances(tx, [account_id])[account_id].available
            raise InsufficientFunds(f"available balance of {account_id} is {available}, less than the hold of "
                                    f"{money}") from None
        if isinstance(error, IntegrityError) and "idempotency_key" in str(error.orig):
            raise DuplicateConflict(f"idempotency key {idempotency_key!r} is used by another hold") from None
        raise
    hold = get(tx, hold_id)
    tx.emit(account_id, "account.withdrawal_requested", {
        "account_id": account_id, "hold_id": hold_id, "amount": str(money), "reference": reference,
        "expires_at": hold.expires_at.astimezone(UTC).isoformat()})
    return hold


def post(tx: Tx, hold_id: int, *, account_id: str | None = None) -> tuple[Hold, Posted]:
    """Book the hold's withdrawal (once: posting again returns the same entry) and release the hold."""
    hold = _locked(tx, hold_id, account_id)
    draft = withdrawal_of(hold)
    if hold.status == "posted":
        replay = tx.existing(draft)
        assert replay is not None, f"posted hold {hold_id} has no entry under {_post_key(hold_id)}"
        return msgspec.structs.replace(hold, replayed=True), replay
    if hold.status != "open":
        raise HoldStateConflict(f"hold {hold_id} is {hold.status} and cannot be posted")
    posted = tx.post(draft)  # InsufficientFunds if the ledger balance would go below zero; the hold stays open
    tx.connection.execute(sa.text("""
        INSERT INTO hold_event (hold_id, kind, investment_account_id, ledger_account_id, amount_minor, currency,
                                entry_id, recorded_by, chain_seq, chain_hash)
        VALUES (:h, 'posted', '', 0, 1, '', :e, :by, 0, :zero)"""),
        {"h": hold_id, "e": posted.entry_id, "by": PRINCIPAL.get(), "zero": CHAIN_START})
    tx.emit(hold.account_id, "account.capital_changed", {
        "account_id": hold.account_id, "operation": "withdrawal", "amount": str(hold.amount),
        "new_total_capital": str(posted.balances_after[chart.investors(hold.account_id)]),
        "entry_id": posted.entry_id, "hold_id": hold_id})
    return get(tx, hold_id), posted


def void(tx: Tx, hold_id: int, *, reason: str = "", account_id: str | None = None) -> Hold:
    """Release the hold (cancelled). Voiding a voided or expired hold changes nothing."""
    if len(reason) > 1000:
        raise InvalidAmount("the reason must be at most 1000 characters")
    hold = _locked(tx, hold_id, account_id)
    if hold.status in ("voided", "expired"):
        return msgspec.structs.replace(hold, replayed=True)
    if hold.status == "posted":
        raise HoldStateConflict(f"hold {hold_id} was posted (entry {hold.entry_id}) and cannot be voided")
    return _release(tx, hold, "voided", reason)


def _release(tx: Tx, hold: Hold, kind: Literal["voided", "expired"], reason: str) -> Hold:
    """Resolve an open `hold`, read under its investment account's lock (`_locked`), as voided or expired."""
    hold_id = hold.hold_id
    tx.connection.execute(sa.text("""
        INSERT INTO hold_event (hold_id, kind, investment_account_id, ledger_account_id, amount_minor, currency,
                                reason, recorded_by, chain_seq, chain_hash)
        VALUES (:h, :k, '', 0, 1, '', :r, :by, 0, :zero)"""),
        {"h": hold_id, "k": kind, "r": reason, "by": PRINCIPAL.get(), "zero": CHAIN_START})
    tx.emit(hold.account_id, "account.withdrawal_cancelled", {
        "account_id": hold.account_id, "hold_id": hold_id, "amount": str(hold.amount), "reason": reason or kind,
        "status": kind})
    return get(tx, hold_id)


def withdrawal_of(hold: Hold) -> EntryDraft:
    """The withdrawal entry a hold books when posted: effective when posted, keyed by the hold."""
    return rules.withdrawal(hold.account_id, hold.amount, idempotency_key=_post_key(hold.hold_id),
                            memo=hold.reference or f"withdrawal (hold {hold.hold_id})",
                            metadata={"hold_id": hold.hold_id, "reference": hold.reference, "source": "hold"})


def _locked(tx: Tx, hold_id: int, account_id: str | None) -> Hold:
    """The hold, read again after locking its investment account (every resolution takes that lock first)."""
    row = tx.connection.execute(_HOLD_BY_ID, {"id": hold_id}).first()
    if row is None or (account_id is not None and row.investment_account_id != account_id):
        raise UnknownHold(f"hold {hold_id} does not exist" + (f" on account {account_id!r}" if account_id else ""))
    tx.lock_account(row.investment_account_id)
    return get(tx, hold_id)


# ----------------------------------------------------------------------------------------------- reads

def get(tx: Tx, hold_id: int) -> Hold:
    row = tx.connection.execute(_HOLD_BY_ID, {"id": hold_id}).first()
    if row is None:
        raise UnknownHold(f"hold {hold_id} does not exist")
    return _hold(row)


def balances(tx: Tx, account_ids: Iterable[str]) -> dict[str, Balances]:
    """Ledger balance, held and available of each account that exists, by id."""
    out = {}
    for r in tx.connection.execute(_BALANCES, {"ids": sorted(set(account_ids))}):
        out[r.account_id] = Balances(
            balance=Money(minor=r.balance_minor, currency=r.currency),
            held=Money(minor=r.held_minor, currency=r.currency),
            available=Money(minor=r.balance_minor - r.held_minor, currency=r.currency), open_holds=r.open_count)
    return out


def listing(tx: Tx, *, account_id: str | None = None, status: str | None = None, after: int | None = None,
            limit: int = 100) -> list[Hold]:
    """Holds by id (newest last), `limit` at a time after the hold id `after`; of one account, in one status."""
    rows = tx.connection.execute(sa.text(f"""
        SELECT {_HOLD_COLUMNS} FROM {_HOLD_FROM}
         WHERE p.kind = 'placed'
           AND (CAST(:account AS text) IS NULL OR p.investment_account_id = :account)
           AND (CAST(:status AS text) IS NULL OR COALESCE(r.kind, 'open') = :status)
           AND p.id > :after
         ORDER BY p.id LIMIT :limit"""),  # noqa: S608 — module constants, never input
        {"account": account_id, "status": status, "after": after or 0,
         "limit": max(1, min(int(limit), PAGE_LIMIT_MAX))}).all()
    return [_hold(row) for row in rows]


def due(tx: Tx, now: datetime, limit: int = EXPIRE_BATCH_MAX, account_id: str | None = None) -> list[int]:
    """Open holds whose time is up (of one account, if given), oldest expiry first."""
    return list(tx.connection.execute(sa.text("""
        SELECT p.id FROM hold_event p
         WHERE p.kind = 'placed' AND p.expires_at <= :now
           AND (CAST(:account AS text) IS NULL OR p.investment_account_id = :account)
           AND NOT EXISTS (SELECT 1 FROM hold_event r WHERE r.hold_id = p.id AND r.kind <> 'placed')
         ORDER BY p.expires_at, p.id LIMIT :limit"""), {"now": now, "limit": limit, "account": account_id}).scalars())


# --------------------------------------------------------------------------------- on the Ledger (own tx)

def place_hold(ledger: Ledger, account_id: str, amount: object, **kwargs: Any) -> Hold:
    return ledger.transact(lambda tx: place(tx, account_id, amount, **kwargs))


def post_hold(ledger: Ledger, hold_id: int, *, account_id: str | None = None) -> tuple[Hold, Posted]:
    return ledger.transact(lambda tx: post(tx, hold_id, account_id=account_id))


def void_hold(ledger: Ledger, hold_id: int, *, reason: str = "", account_id: str | None = None) -> Hold:
    return ledger.transact(lambda tx: void(tx, hold_id, reason=reason, account_id=account_id))


def expire_due(ledger: Ledger, *, now: datetime | None = None, limit: int = EXPIRE_BATCH_MAX,
               account_id: str | None = None) -> list[Hold]:
    """Expire every open hold whose time is up at `now` (default: the database's clock), each in a transaction of
    its own (one account's lock at a time); a hold posted or voided meanwhile is left as it is."""
    def expire(tx: Tx, hold_id: int) -> Hold | None:
        hold = _locked(tx, hold_id, None)
        if hold.status != "open":
            return None
        return _release(tx, hold, "expired", "expired")

    at = now or ledger.read_only(lambda tx: tx.connection.execute(sa.text("SELECT clock_timestamp()")).scalar_one())
    expired = []
    for hold_id in ledger.read_only(lambda tx: due(tx, at, limit, account_id)):
        hold = ledger.transact(lambda tx, h=hold_id: expire(tx, h))
        if hold is not None:
            expired.append(hold)
    return expired


def read(ledger: Ledger, work: Any) -> Any:
    """`work(tx)` in a read-only unit (a door's read)."""
    return ledger.read_only(work)


def account_balances(ledger: Ledger, account_ids: Sequence[str]) -> dict[str, Balances]:
    return ledger.read_only(lambda tx: balances(tx, account_ids))


# ---------------------------------------------------------------------------------- checks for verify

FINDINGS_MAX = 20
# The digest as migration 0017's hold_event_digest computes it — recomputed here with this module's own SQL, never
# the stored function (which someone holding the owner's credentials could replace).
_EPOCH_US = "(extract(epoch FROM {}) * 1000000)::bigint"
HOLD_DIGEST = (
    "sha256(convert_to(json_build_array(h.id, h.hold_id, h.kind, h.investment_account_id, h.ledger_account_id, "
    "h.amount_minor, h.currency, h.idempotency_key, encode(h.content_hash, 'hex'), h.reference, "
    f"{_EPOCH_US.format('h.expires_at')}, h.entry_id, h.reason, {_EPOCH_US.format('h.recorded_at')}, "
    "h.recorded_by)::text, 'UTF8'))")


_HELD_AT = sa.text("""
    SELECT COALESCE(sum(p.amount_minor), 0)::bigint FROM hold_event p
     WHERE p.investment_account_id = :a AND p.kind = 'placed' AND p.recorded_at <= :at
       AND NOT EXISTS (SELECT 1 FROM hold_event r
                        WHERE r.hold_id = p.id AND r.kind <> 'placed' AND r.recorded_at <= :at)""")


def held_at(c: sa.Connection, account_id: str, at: datetime) -> int:
    """What A's open holds reserved at `at` (minor units), from the hold events as recorded: holds are not
    effective-dated, so those placed by then and not yet posted, voided or expired by then (a statement's close)."""
    return int(c.execute(_HELD_AT, {"a": account_id, "at": at}).scalar_one())


def hold_totals_match(c: sa.Connection) -> list[str]:
    """What each account's open holds reserve (hold_state), recomputed from the hold events."""
    return [f"{r.name}: holds cached {r.held_minor}/{r.open_count} open, recomputed {r.total}/{r.n}"
            for r in c.execute(sa.text("""
        SELECT l.name, COALESCE(s.held_minor, 0) AS held_minor, COALESCE(s.open_count, 0) AS open_count,
               COALESCE(o.total, 0) AS total, COALESCE(o.n, 0) AS n
          FROM hold_state s FULL JOIN (
               SELECT p.ledger_account_id, sum(p.amount_minor) AS total, count(*) AS n FROM hold_event p
                WHERE p.kind = 'placed'
                  AND NOT EXISTS (SELECT 1 FROM hold_event r WHERE r.hold_id = p.id AND r.kind <> 'placed')
                GROUP BY p.ledger_account_id) o ON o.ledger_account_id = s.ledger_account_id
          LEFT JOIN ledger_account l ON l.id = COALESCE(s.ledger_account_id, o.ledger_account_id)
         WHERE COALESCE(s.held_minor, 0) <> COALESCE(o.total, 0) OR COALESCE(s.open_count, 0) <> COALESCE(o.n, 0)
         LIMIT :n"""), {"n": FINDINGS_MAX})]


def posted_holds_match_entries(c: sa.Connection) -> list[str]:
    """A posted hold has exactly its entry: a withdrawal of its account under `hold:<id>:post`, Dr investors /
    Cr custody of its amount; and every entry under such a key belongs to a posted hold; a resolution matches its
    hold's account, amount and currency."""
    return [f"hold {r.hold_id}: {r.problem}" for r in c.execute(sa.text(f"""
        WITH posted AS (
            SELECT r.hold_id, r.entry_id, p.investment_account_id, p.amount_minor, p.currency
              FROM hold_event r JOIN hold_event p ON p.id = r.hold_id AND p.kind = 'placed' WHERE r.kind = 'posted'),
        legs AS (
            SELECT x.hold_id,
                   count(q.*) AS n,
                   bool_and(q.amount_minor = x.amount_minor AND q.currency = x.currency) AS amounts,
                   bool_or(q.side = 'D' AND l.name = {chart.investors_sql('x.investment_account_id')}) AS debit,
                   bool_or(q.side = 'C' AND l.name = {chart.custody_sql('x.investment_account_id')}) AS credit
              FROM posted x JOIN posting q ON q.entry_id = x.entry_id
              JOIN ledger_account l ON l.id = q.ledger_account_id
             GROUP BY x.hold_id)
        SELECT x.hold_id, CASE
                 WHEN e.id IS NULL THEN 'its entry ' || x.entry_id || ' does not exist'
                 WHEN e.idempotency_key <> 'hold:' || x.hold_id || :suffix OR e.kind <> 'withdrawal'
                      OR e.investment_account_id IS DISTINCT FROM x.investment_account_id
                   THEN 'entry ' || e.id || ' is not its withdrawal'
                 ELSE 'entry ' || e.id || ' does not move exactly its amount out of the investor''s balance' END
                 AS problem
          FROM posted x LEFT JOIN journal_entry e ON e.id = x.entry_id LEFT JOIN legs g ON g.hold_id = x.hold_id
         WHERE e.id IS NULL OR e.idempotency_key <> 'hold:' || x.hold_id || :suffix OR e.kind <> 'withdrawal'
            OR e.investment_account_id IS DISTINCT FROM x.investment_account_id
            OR g.n IS DISTINCT FROM 2 OR NOT g.amounts OR NOT g.debit OR NOT g.credit
        UNION ALL
        SELECT CAST(substring(e.idempotency_key FROM '^hold:([0-9]+)' || :suffix || '$') AS bigint),
               'entry ' || e.id || ' was booked for it, but the hold is not posted with it'
          FROM journal_entry e
         WHERE e.idempotency_key LIKE 'hold:%' || :suffix
           AND NOT EXISTS (SELECT 1 FROM hold_event r WHERE r.kind = 'posted' AND r.entry_id = e.id)
        UNION ALL
        SELECT r.hold_id, 'its ' || r.kind || ' event differs from the hold in account, amount or currency'
          FROM hold_event r JOIN hold_event p ON p.id = r.hold_id
         WHERE r.kind <> 'placed' AND (p.kind <> 'placed' OR r.investment_account_id <> p.investment_account_id
               OR r.ledger_account_id <> p.ledger_account_id OR r.amount_minor <> p.amount_minor
               OR r.currency <> p.currency)
         LIMIT :n"""), {"n": FINDINGS_MAX, "suffix": ":post"})]  # noqa: S608 — module constants


def hold_chains_match(c: sa.Connection) -> list[str]:
    """Each account's hold chain recomputed from its events (digests in this module's SQL, links with hashlib):
    the first event whose link differs, and a head or count that differs from the recomputed end."""
    findings: list[str] = []
    heads = {r.ledger_account_id: (r.event_count, bytes(r.head)) for r in c.execute(sa.text(
        "SELECT ledger_account_id, event_count, head FROM hold_state"))}
    rows = c.execute(sa.text(f"""
        SELECT h.ledger_account_id, h.id, h.chain_seq, h.chain_hash, {HOLD_DIGEST} AS digest
          FROM hold_event h ORDER BY h.ledger_account_id, h.chain_seq"""))  # noqa: S608 — module constants
    current: int | None = None
    previous, count, broken = CHAIN_START, 0, False
    ends: dict[int, tuple[int, bytes]] = {}
    for r in rows:
        if r.ledger_account_id != current:
            if current is not None:
                ends[current] = (count, previous)
            current, previous, count, broken = r.ledger_account_id, CHAIN_START, 0, False
        count += 1
        previous = hashlib.sha256(previous + bytes(r.digest)).digest()
        if not broken and (r.chain_seq != count or bytes(r.chain_hash) != previous):
            broken = True
            findings.append(f"hold event {r.id} (ledger account {r.ledger_account_id}): its link does not match "
                            "(an event was changed, removed or inserted)")
    if current is not None:
        ends[current] = (count, previous)
    for account, end in ends.items():
        if heads.get(account) != end:
            findings.append(f"ledger account {account}: its hold chain head does not match its hold events")
    findings.extend(f"ledger account {account}: a hold chain head without hold events"
                    for account, (n, _) in heads.items() if account not in ends and n != 0)
    return findings[:FINDINGS_MAX]


def chain_ends(c: sa.Connection, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The recomputed link of each (ledger account, event count) in `wanted` (what anchors signed), from the events
    themselves; a (account, count) the events no longer reach is absent."""
    if not wanted:
        return {}
    accounts = sorted({account for account, _ in wanted})
    rows = c.execute(sa.text(f"""
        SELECT h.ledger_account_id, {HOLD_DIGEST} AS digest
          FROM hold_event h WHERE h.ledger_account_id = ANY(:a)
         ORDER BY h.ledger_account_id, h.chain_seq"""), {"a": accounts})  # noqa: S608 — module constants
    ends: dict[tuple[int, int], bytes] = {}
    current, previous, count = None, CHAIN_START, 0
    for r in rows:
        if r.ledger_account_id != current:
            current, previous, count = r.ledger_account_id, CHAIN_START, 0
        count += 1
        previous = hashlib.sha256(previous + bytes(r.digest)).digest()
        if (current, count) in wanted:
            ends[(current, count)] = previous
    return ends


CHECKS = (hold_totals_match, posted_holds_match_entries, hold_chains_match)
GUARD_TRIGGERS = {
    "hold_event": ("hold_event_apply", "hold_event_append_only", "hold_event_no_truncate"),
    "hold_state": ("hold_state_guard", "hold_state_no_truncate"),
}
