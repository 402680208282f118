"""Tamper evidence: every ledger account's hash chain recomputed from the rows, and anchors that sign the heads.

The chains are made by the posting triggers (migration 0010): a posting's digest covers its own fields and its
entry's (key, content hash, kind, account, times, memo, metadata, what it reverses, who booked it — migration
0013); each statement that books on an account adds one link, SHA-256(previous head || its legs' digests in
posting order), stamped on those legs.
Here the digests are recomputed with this module's own SQL (never a function stored in the database, which
someone holding the credentials could replace) and the links with Python's hashlib.

A chain shows that rows changed since they were booked — unless whoever changed them also recomputed the chain
from that point on, which anyone holding the database's credentials can do. Anchors close that gap: an anchor is
the set of every account's (posting count, head), reduced to one root and signed with an Ed25519 key that the
database never holds (LEDGER_AUDIT_KEY). A rewrite of history before an anchor no longer reproduces the heads the
anchor signed. Ed25519 rather than an HMAC: checking an anchor needs only the public key, so auditors can check
without being able to sign. What happened after the newest anchor is covered by the chain only (docs/design.md).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
from collections.abc import Iterable, Iterator
from datetime import datetime

import msgspec
import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.times import rfc3339

CHAIN_START = bytes(32)
FINDINGS_MAX = 20
_SIGNED_PREFIX = b"invledger-anchor-v1\n"
HOLD_CHAIN_PREFIX = "hold:"  # the key under which an anchor signs a ledger account's hold chain (migration 0017)

# The digests, as migration 0010's ledger_entry_digest and ledger_posting_digest compute them.
_EPOCH_US = "(extract(epoch FROM {}) * 1000000)::bigint"
_ENTRY_FIELDS = (
    "e.id, e.idempotency_key, encode(e.content_hash, 'hex'), e.kind, "
    f"e.investment_account_id, {_EPOCH_US.format('e.effective_at')}, {_EPOCH_US.format('e.recorded_at')}, "
    "e.memo, e.metadata, e.reverses_entry_id")
# Who booked it is covered too (migration 0013); an entry booked before that has '' and its 0010 digest.
ENTRY_DIGEST = (
    f"sha256(convert_to(CASE WHEN e.recorded_by = '' THEN json_build_array({_ENTRY_FIELDS}) "
    f"ELSE json_build_array({_ENTRY_FIELDS}, e.recorded_by) END::text, 'UTF8'))")
POSTING_DIGEST = (
    "sha256(convert_to(json_build_array(p.ledger_account_id, p.seq, p.entry_id, p.side::text, p.amount_minor, "
    f"p.currency, {_EPOCH_US.format('p.effective_at')}, p.balance_after_minor, p.late)::text, 'UTF8') "
    f"|| {ENTRY_DIGEST})")
WEBHOOK_DIGEST = (
    "sha256(convert_to(json_build_array(w.id, w.dedup_key, encode(w.content_sha256, 'hex'), w.event_type, "
    "w.account_id, encode(sha256(w.body), 'hex'), w.signature_scheme, w.status, w.reason, w.entry_ids, "
    f"{_EPOCH_US.format('w.occurred_at')}, {_EPOCH_US.format('w.received_at')})::text, 'UTF8'))")
_WEBHOOKS = sa.text(f"""
    SELECT l.chain_key, l.seq, COALESCE(w.id, l.event_id) AS event_id, l.chain_hash, w.id IS NULL AS gone,
           l.event_id IS NULL AS unlinked, CASE WHEN w.id IS NOT NULL THEN {WEBHOOK_DIGEST} END AS digest
      FROM webhook_event w FULL JOIN webhook_chain_link l ON l.event_id = w.id
     ORDER BY l.chain_key NULLS LAST, l.seq, w.id""")  # noqa: S608 — constants only
_POSTINGS = sa.text(f"""
    SELECT p.ledger_account_id, p.seq, p.entry_id, p.chain_hash, {POSTING_DIGEST} AS digest
      FROM posting p LEFT JOIN journal_entry e ON e.id = p.entry_id
     ORDER BY p.ledger_account_id, p.seq""")  # noqa: S608 — constants only


class Anchor(msgspec.Struct, frozen=True, kw_only=True):
    """A signed root of every account's (posting count, chain head) at `made_at`."""

    id: int
    made_at: datetime
    root: bytes
    accounts: int
    postings: int
    events: int
    public_key: bytes
    signature: bytes
    made_by: str

    def message(self) -> bytes:
        return signed_message(self.made_at, self.root, self.accounts, self.postings, self.events)

    def line(self) -> dict[str, object]:
        """The anchor as one line of the anchors file (JSON)."""
        return {"id": self.id, "made_at": rfc3339(self.made_at), "root": self.root.hex(), "accounts": self.accounts,
                "postings": self.postings, "events": self.events, "public_key": self.public_key.hex(),
                "signature": self.signature.hex(), "made_by": self.made_by}


class ChainCheck(msgspec.Struct, frozen=True, kw_only=True):
    findings: list[str]
    anchors_checked: int = 0
    notes: list[str] = []


def signed_message(made_at: datetime, root: bytes, accounts: int, postings: int, events: int) -> bytes:
    body = {"made_at": rfc3339(made_at), "root": root.hex(), "accounts": accounts, "postings": postings,
            "events": events}
    return _SIGNED_PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def root_of(state: dict[int, tuple[int, bytes]], webhooks: dict[str, tuple[int, bytes]]) -> bytes:
    """One digest of every ledger account's (posting count, head), in account order, then every webhook chain's
    (delivery count, head), in key order."""
    digest = hashlib.sha256()
    for account in sorted(state):
        count, head = state[account]
        digest.update(struct.pack(">qq", account, count) + head)
    digest.update(b"webhooks")
    for key in sorted(webhooks):
        count, head = webhooks[key]
        name = key.encode()
        digest.update(struct.pack(">I", len(name)) + name + struct.pack(">q", count) + head)
    return digest.digest()


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


# ------------------------------------------------------------------------------------------ anchoring

def make_anchor(engine: sa.Engine, key: Ed25519PrivateKey, made_by: str) -> Anchor:
    """Sign every account's current (posting count, head) and store it: the anchor row and a head row for each
    account that changed since the anchor before."""
    with engine.begin() as c:
        # Anchors are made one at a time, each reading after the one before committed (READ COMMITTED: the
        # previous anchor's heads are seen once its lock is released). Each (count, head) read is a point its
        # chain really passed through, whatever commits between the statements.
        c.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended('invledger:anchor', 0))"))
        made_at = c.execute(sa.text("SELECT now()")).scalar_one()
        current = {r.id: (r.posting_count, bytes(r.chain_head)) for r in c.execute(sa.text(
            "SELECT id, posting_count, chain_head FROM ledger_account WHERE posting_count > 0"))}
        webhooks = {r.chain_key: (r.event_count, bytes(r.head)) for r in c.execute(sa.text(
            "SELECT chain_key, event_count, head FROM webhook_chain_head"))}
        # The withdrawal holds' chains (ledger/holds.py) are signed as chains of their own beside the deliveries',
        # under keys no delivery chain can have (an investment account id has no colon).
        webhooks |= {f"{HOLD_CHAIN_PREFIX}{r.ledger_account_id}": (r.event_count, bytes(r.head)) for r in c.execute(
            sa.text("SELECT ledger_account_id, event_count, head FROM hold_state WHERE event_count > 0"))}
        anchored, anchored_webhooks = _anchored_state(c)
        changed = {a: v for a, v in current.items() if anchored.get(a) != v}
        changed_webhooks = {k: v for k, v in webhooks.items() if anchored_webhooks.get(k) != v}
        root = root_of(current, webhooks)
        postings = sum(count for count, _ in current.values())
        events = sum(count for count, _ in webhooks.values())
        signature = key.sign(signed_message(made_at, root, len(current), postings, events))
        anchor_id = c.execute(sa.text("""
            INSERT INTO ledger_anchor (made_at, root, accounts, postings, events, public_key, signature, made_by)
            VALUES (:at, :root, :n, :p, :e, :pk, :sig, :by) RETURNING id"""),
            {"at": made_at, "root": root, "n": len(current), "p": postings, "e": events, "pk": public_key_bytes(key),
             "sig": signature, "by": made_by}).scalar_one()
        if changed:
            c.execute(sa.text("""
                INSERT INTO ledger_anchor_head (anchor_id, ledger_account_id, posting_count, head)
                SELECT :a, * FROM unnest(CAST(:ids AS bigint[]), CAST(:counts AS bigint[]),
                                         CAST(:heads AS bytea[]))"""),
                {"a": anchor_id, "ids": list(changed), "counts": [v[0] for v in changed.values()],
                 "heads": [v[1] for v in changed.values()]})
        if changed_webhooks:
            c.execute(sa.text("""
                INSERT INTO ledger_anchor_webhook_head (anchor_id, chain_key, event_count, head)
                SELECT :a, * FROM unnest(CAST(:keys AS text[]), CAST(:counts AS bigint[]), CAST(:heads AS bytea[]))"""),
                {"a": anchor_id, "keys": list(changed_webhooks),
                 "counts": [v[0] for v in changed_webhooks.values()],
                 "heads": [v[1] for v in changed_webhooks.values()]})
    return Anchor(id=anchor_id, made_at=made_at, root=root, accounts=len(current), postings=postings, events=events,
                  public_key=public_key_bytes(key), signature=signature, made_by=made_by)


def _anchored_state(c: sa.Connection) -> tuple[dict[int, tuple[int, bytes]], dict[str, tuple[int, bytes]]]:
    accounts = {r.ledger_account_id: (r.posting_count, bytes(r.head)) for r in c.execute(sa.text("""
        SELECT DISTINCT ON (ledger_account_id) ledger_account_id, posting_count, head
          FROM ledger_anchor_head ORDER BY ledger_account_id, anchor_id DESC"""))}
    webhooks = {r.chain_key: (r.event_count, bytes(r.head)) for r in c.execute(sa.text("""
        SELECT DISTINCT ON (chain_key) chain_key, event_count, head
          FROM ledger_anchor_webhook_head ORDER BY chain_key, anchor_id DESC"""))}
    return accounts, webhooks


def anchors(c: sa.Connection) -> list[Anchor]:
    return [Anchor(id=r.id, made_at=r.made_at, root=bytes(r.root), accounts=r.accounts, postings=r.postings,
                   events=r.events, public_key=bytes(r.public_key), signature=bytes(r.signature), made_by=r.made_by)
            for r in c.execute(sa.text("SELECT * FROM ledger_anchor ORDER BY id"))]


# ------------------------------------------------------------------------------------------ checking

def check(c: sa.Connection, *, public_key: bytes | None = None,
          outside: Iterable[dict[str, object]] | None = None) -> ChainCheck:
    """Recompute every chain and check every anchor (its root, its signature with `public_key`, its heads against
    the recomputed chains) and, given the lines of an outside copy of the anchors file, that each is in the
    database unchanged. Run inside one snapshot."""
    findings: list[str] = []
    notes: list[str] = []
    stored = anchors(c)
    heads_by_anchor: dict[int, list[tuple[int, int, bytes]]] = {}
    for r in c.execute(sa.text("SELECT * FROM ledger_anchor_head ORDER BY anchor_id, ledger_account_id")):
        heads_by_anchor.setdefault(r.anchor_id, []).append((r.ledger_account_id, r.posting_count, bytes(r.head)))
    webhook_heads_by_anchor: dict[int, list[tuple[str, int, bytes]]] = {}
    for r in c.execute(sa.text("SELECT * FROM ledger_anchor_webhook_head ORDER BY anchor_id, chain_key")):
        webhook_heads_by_anchor.setdefault(r.anchor_id, []).append((r.chain_key, r.event_count, bytes(r.head)))
    wanted = {(account, count) for rows in heads_by_anchor.values() for account, count, _ in rows}
    wanted_webhooks = {(key, count) for rows in webhook_heads_by_anchor.values() for key, count, _ in rows}
    names = dict(c.execute(sa.text("SELECT id, name FROM ledger_account")).all())
    link_ends = _check_chains(c, names, wanted, findings)
    webhook_ends = _check_webhook_chains(c, {w for w in wanted_webhooks if not w[0].startswith(HOLD_CHAIN_PREFIX)},
                                         findings)
    from ledger import holds  # holds builds on this module

    hold_ends = holds.chain_ends(c, {(int(key.removeprefix(HOLD_CHAIN_PREFIX)), count)
                                     for key, count in wanted_webhooks if key.startswith(HOLD_CHAIN_PREFIX)})
    webhook_ends |= {(f"{HOLD_CHAIN_PREFIX}{account}", count): head for (account, count), head in hold_ends.items()}

    state: dict[int, tuple[int, bytes]] = {}
    webhook_state: dict[str, tuple[int, bytes]] = {}
    signer = Ed25519PublicKey.from_public_bytes(public_key) if public_key else None
    for anchor in stored:
        for account, count, head in heads_by_anchor.get(anchor.id, []):
            state[account] = (count, head)
        for key, count, head in webhook_heads_by_anchor.get(anchor.id, []):
            webhook_state[key] = (count, head)
        when = f"anchor {anchor.id} ({rfc3339(anchor.made_at)})"
        if root_of(state, webhook_state) != anchor.root or len(state) != anchor.accounts:
            findings.append(f"{when}: its stored heads do not give its signed root — anchor rows were changed")
        if signer is not None:
            try:
                signer.verify(anchor.signature, anchor.message())
            except InvalidSignature:
                findings.append(f"{when}: its signature does not verify with the audit key")
        for account, count, head in heads_by_anchor.get(anchor.id, []):
            if link_ends.get((account, count)) != head:
                findings.append(f"{names.get(account, account)}: the postings up to #{count} are not the ones "
                                f"{when} signed — history before that anchor was changed")
        for key, count, head in webhook_heads_by_anchor.get(anchor.id, []):
            if webhook_ends.get((key, count)) != head and key.startswith(HOLD_CHAIN_PREFIX):
                account = int(key.removeprefix(HOLD_CHAIN_PREFIX))
                findings.append(f"{names.get(account, account)}: the hold events up to #{count} are not the ones "
                                f"{when} signed — withdrawal holds before that anchor were changed")
            elif webhook_ends.get((key, count)) != head:
                findings.append(f"webhook chain {key or '(unknown accounts)'}: the deliveries up to #{count} are not "
                                f"the ones {when} signed — stored deliveries before that anchor were changed")
    if stored and signer is None:
        notes.append(f"{len(stored)} anchors' signatures not checked: no audit key or public key given")
    if outside is not None:
        by_id = {a.id: a for a in stored}
        for line in outside:
            anchor = by_id.get(int(line["id"]))  # type: ignore[call-overload]
            if anchor is None:
                findings.append(f"anchor {line['id']} of the outside copy is missing from the database")
            elif anchor.root.hex() != line["root"] or anchor.signature.hex() != line["signature"]:
                findings.append(f"anchor {line['id']} differs from the outside copy")
    return ChainCheck(findings=findings[:FINDINGS_MAX], anchors_checked=len(stored), notes=notes)


def _check_chains(c: sa.Connection, names: dict[int, str], wanted: set[tuple[int, int]],
                  findings: list[str]) -> dict[tuple[int, int], bytes]:
    """Recompute every account's links (always from the recomputed link before, never a stored one); report the
    first link per account that differs from the one stamped, and a head that differs from the recomputed end.
    Return the recomputed link at each (account, posting count) in `wanted` (what anchors signed)."""
    heads = {r.id: (bytes(r.chain_head), r.posting_count) for r in c.execute(sa.text(
        "SELECT id, chain_head, posting_count FROM ledger_account"))}
    found: dict[tuple[int, int], bytes] = {}
    seen: set[int] = set()
    for account, rows in _by_account(c.execution_options(stream_results=True, yield_per=5000).execute(_POSTINGS)):
        seen.add(account)
        name = names.get(account, str(account))
        previous, problem = CHAIN_START, None
        for link, stored, first, last in _links(rows):
            value = hashlib.sha256(previous + b"".join(link)).digest()
            if problem is None and stored is None and previous != CHAIN_START:
                problem = f"{name}: posting #{first[0]} (entry {first[1]}) has no chain link after chained ones"
            elif problem is None and stored is not None and stored != value:
                problem = (f"{name}: posting #{first[0]} (entry {first[1]}), or one after it up to #{last[0]}, is "
                           "not as it was booked (its chain link does not match)")
            if (account, last[0]) in wanted:
                found[(account, last[0])] = value
            previous = value
        if problem is None and previous != heads.get(account, (None, 0))[0]:
            problem = f"{name}: its chain head does not match its postings (a posting was removed, added or changed)"
        if problem:
            findings.append(problem)
    for account, (head, count) in heads.items():
        if account not in seen and (head != CHAIN_START or count != 0):
            findings.append(f"{names.get(account, account)}: no postings, but its chain head or count says otherwise")
    return found


def _check_webhook_chains(c: sa.Connection, wanted: set[tuple[str, int]],
                          findings: list[str]) -> dict[tuple[str, int], bytes]:
    """The stored deliveries' chains, as `_check_chains` does the postings'; every delivery must have its link."""
    heads = {r.chain_key: (r.event_count, bytes(r.head)) for r in c.execute(sa.text(
        "SELECT chain_key, event_count, head FROM webhook_chain_head"))}
    found: dict[tuple[str, int], bytes] = {}
    seen: set[str] = set()
    rows = c.execution_options(stream_results=True, yield_per=5000).execute(_WEBHOOKS)
    for key, group in itertools.groupby(rows, key=lambda r: r.chain_key):
        if key is None:  # deliveries without a link come last
            findings.extend(f"stored delivery {row.event_id} has no chain link (stored with the guards off)"
                            for row in itertools.islice(group, FINDINGS_MAX))
            continue
        seen.add(key)
        label = f"webhook chain {key or '(unknown accounts)'}"
        previous, problem, count = CHAIN_START, None, 0
        for link, stored, first, last in _links(group, order="seq", entry="event_id"):
            value = hashlib.sha256(previous + b"".join(link)).digest()
            count = last[0]
            if problem is None and any(not digest for digest in link):
                problem = f"{label}: delivery {first[1]} (#{first[0]}) or one after it up to #{last[0]} is gone"
            elif problem is None and stored != value:
                problem = (f"{label}: delivery {first[1]} (#{first[0]}), or one after it up to #{last[0]}, is not as "
                           "it was stored (its chain link does not match)")
            if (key, last[0]) in wanted:
                found[(key, last[0])] = value
            previous = value
        if problem is None and (count, previous) != heads.get(key):
            problem = f"{label}: its head does not match its deliveries (a delivery was removed, added or changed)"
        if problem:
            findings.append(problem)
    findings.extend(f"webhook chain {key or '(unknown accounts)'}: a head without deliveries"
                    for key in heads.keys() - seen)
    return found


def _by_account(rows: Iterable[sa.Row]) -> Iterator[tuple[int, Iterator[sa.Row]]]:
    yield from itertools.groupby(rows, key=lambda r: r.ledger_account_id)


def _links(rows: Iterable[sa.Row], *, order: str = "seq", entry: str = "entry_id",
           ) -> Iterator[tuple[list[bytes], bytes | None, tuple[int, int], tuple[int, int]]]:
    """Consecutive rows stamped with the same link: (their digests, the stored link, first and last (seq, id))."""
    digests: list[bytes] = []
    stored: bytes | None = None
    first = last = (0, 0)
    for row in rows:
        link = bytes(row.chain_hash) if row.chain_hash is not None else None
        if digests and link != stored:
            yield digests, stored, first, last
            digests = []
        if not digests:
            stored, first = link, (getattr(row, order), getattr(row, entry))
        digests.append(bytes(row.digest) if row.digest is not None else b"")
        last = (getattr(row, order), getattr(row, entry))
    if digests:
        yield digests, stored, first, last
